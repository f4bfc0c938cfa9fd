"""``@cached``: memoization into volatile memory, recomputing what the kernel purged."""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import math
import os
import random
import threading
import weakref
from collections import deque
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any, NamedTuple, ParamSpec, TypeVar, overload

from cachetools import keys as cachekeys

from .budget import MemoryBudget
from .cache import _MISSING, VolatileCache
from .flight import SingleFlight, await_check, await_done
from .hotpath import MemoHit, count_of
from .keys import C_HASHED, hashed, hashkey, typedkey
from .tiers.bound import MISSING as TIER_MISSING
from .wrappers import CacheInfo as CacheInfo  # the wrappers' cache_info(), from here as before

if TYPE_CHECKING:
    from .wrappers import CachedFunction

_P = ParamSpec("_P")
_R = TypeVar("_R")

_SCALAR = object()  # in a shared method cache's key: a key function's non-tuple key follows
_SWEEP_AFTER = 64  # dead instances, or a 64th of the shared cache, before their entries go


@overload
def cached(cache: Callable[_P, _R], /) -> CachedFunction[_P, _R]: ...
@overload
def cached(
    cache: MutableMapping[Any, Any] | None = None,
    *,
    key: Callable[..., Any] | None = None,
    typed: bool = False,
    per_instance: bool = False,
    backend: str = "auto",
    ttl_jitter: float = 0.0,
    cache_if: Callable[[Any], bool] | None = None,
    shared: str | None = None,
    **cache_options: Any,
) -> Callable[[Callable[_P, _R]], CachedFunction[_P, _R]]: ...
def cached(
    cache: Any = None,
    *,
    key: Callable[..., Any] | None = None,
    typed: bool = False,
    per_instance: bool = False,
    backend: str = "auto",
    ttl_jitter: float = 0.0,
    cache_if: Callable[[Any], bool] | None = None,
    shared: str | None = None,
    **cache_options: Any,
) -> Any:
    """Memoize a function, method or ``async def`` in volatile memory.

    Use it bare (``@cached``) or with options. A result the kernel purged is
    computed again by calling the function with the same arguments; results
    that are buffers (``bytes``, ``bytearray``, numpy arrays) are stored
    without pickling. Concurrent calls with the same arguments, in threads or
    in asyncio tasks, compute once; an exception reaches every waiting caller
    and is not cached.

    Args:
        cache: a :class:`~volcache.VolatileCache` to use (default: a new one
            per function, made with ``backend`` and ``cache_options``).
        key: the key function (default ``cachetools.keys.hashkey``, or
            ``typedkey`` if ``typed``; ``methodkey`` variants for methods).
        typed: arguments of different types are cached apart (``1`` and ``1.0``).
        per_instance: for methods, a cache per instance instead of one shared.
            Either way the cache does not keep ``self`` alive: an instance's
            entries go when it does. The instances' caches share one
            ``memory_budget`` (the process's default one unless given).
        backend: the backend of the caches made here.
        ttl_jitter: with a ``ttl`` (a cache option), each result lives up to
            this fraction less (0 to below 1, at random), so that results stored
            together do not expire together.
        cache_if: ``cache_if(result)``: a result it refuses is returned and not
            stored (the call counts as a miss).
        shared: memoize into the :class:`~volcache.SharedVolatileCache` of this
            name, shared by every process that names it (each function in a
            part of its own); ``cache_options`` are then that class's
            (``size``, ``maxsize``, ``codec``, ``pressure``...).
        cache_options: other :class:`~volcache.VolatileCache` arguments
            (``maxsize``, ``ttl``, ``on_evict``, ``tier``, ...).

    The wrapper has ``cache_info()``, ``cache_clear()``, ``cache_parameters()``,
    ``cache`` and ``__wrapped__``, as ``functools.lru_cache`` has, and
    ``cache_invalidate(*args, **kwargs)``, which removes one call's result.
    To a type checker it is a :class:`~volcache.CachedFunction` with the
    function's parameters and return type (``cache_invalidate`` takes the
    same parameters); a method taken from an instance loses ``self``.
    """
    if _decoratable(cache) and not isinstance(cache, MutableMapping):
        bare: Any = cache
        return cached()(bare)  # used bare: @cached
    if shared is not None:
        if cache is not None or per_instance:
            raise TypeError("shared= makes the cache: not with cache= or per_instance")
        return _shared(shared, key, typed, cache_if, cache_options)
    if cache is not None:
        if not isinstance(cache, MutableMapping):
            raise TypeError(f"cache must be a VolatileCache (or a mapping), got {cache!r}")
        if cache_options or per_instance:
            raise TypeError("cache options and per_instance go with cache=None, not with a cache")
    if key is not None and not callable(key):
        raise TypeError(f"key must be callable, got {key!r}")
    if cache_if is not None and not callable(cache_if):
        raise TypeError(f"cache_if must be callable or None, got {cache_if!r}")
    if not isinstance(ttl_jitter, int | float) or not 0 <= ttl_jitter < 1:
        raise ValueError(f"ttl_jitter must be within [0, 1), got {ttl_jitter!r}")
    if ttl_jitter and cache_options.get("ttl") is not None:
        cache_options["ttl"] = _Jittered(cache_options["ttl"], ttl_jitter)
    maxsize = cache_options.get("maxsize", math.inf)
    if maxsize is None:  # as functools: unbounded
        cache_options["maxsize"] = math.inf
    elif isinstance(maxsize, int | float) and maxsize < 0:  # as functools: caches nothing
        cache_options["maxsize"] = 0
    options = {"backend": backend, **cache_options}

    def decorator(func: Callable[..., Any]) -> Any:
        if isinstance(func, staticmethod):
            if per_instance:
                raise TypeError("per_instance is for methods: a staticmethod has no instance")
            return _StaticMemoized(_as_memoized(decorator(func.__func__)))
        if isinstance(func, classmethod):
            memoized = _as_memoized(decorator(func.__func__))
            memoized._method = True  # its first argument, the class, is bound
            return _ClassMemoized(memoized)
        if not callable(func):
            raise TypeError(f"@cached decorates callables, got {func!r}")
        made = options
        if options.get("tier") is not None:
            if per_instance:
                raise TypeError(
                    "a tier is shared by processes and per_instance caches are an "
                    "instance's own: use one or the other"
                )
            if not options.get("namespace") and not getattr(options["tier"], "namespace", None):
                name = getattr(func, "__qualname__", None) or type(func).__qualname__
                made = {**options, "namespace": f"{func.__module__}.{name}"}
        memoized = Memoized(func, cache, key, typed, per_instance, made)
        memoized._cache_if = cache_if
        if key is None and not typed and _plain_function(memoized):
            return _function_of(memoized)
        return memoized

    return decorator


def _shared(
    name: str,
    key: Callable[..., Any] | None,
    typed: bool,
    cache_if: Callable[[Any], bool] | None,
    options: dict[str, Any],
) -> Callable[[Callable[..., Any]], Any]:
    from .shared import SharedVolatileCache
    from .shared.cache import SharedNamespace

    allowed = {"size", "maxsize", "codec", "pressure", "cgroup", "headroom"}
    if not set(options) <= allowed:
        raise TypeError(
            "with shared=, cache options are SharedVolatileCache's "
            f"({', '.join(sorted(allowed))}), got {', '.join(sorted(set(options) - allowed))}"
        )
    segment = SharedVolatileCache(name, **options)

    def decorator(func: Callable[..., Any]) -> Any:
        qualname = getattr(func, "__qualname__", None) or type(func).__qualname__
        part = SharedNamespace(segment, f"{getattr(func, '__module__', '')}.{qualname}")
        return cached(part, key=key, typed=typed, cache_if=cache_if)(func)

    return decorator


@overload
def lru_cache(maxsize: Callable[_P, _R], /) -> CachedFunction[_P, _R]: ...
@overload
def lru_cache(
    maxsize: int | None = 128, typed: bool = False, **options: Any
) -> Callable[[Callable[_P, _R]], CachedFunction[_P, _R]]: ...
def lru_cache(maxsize: Any = 128, typed: bool = False, **options: Any) -> Any:
    """``functools.lru_cache``'s signature and defaults, over :func:`cached`.

    ``maxsize=None`` is unbounded (the memory budget and purges are the
    bound), a negative ``maxsize`` caches nothing, and ``@lru_cache`` works
    bare. Other keyword ``options`` are :func:`cached`'s.
    """
    if _decoratable(maxsize) and isinstance(typed, bool):  # used bare: @lru_cache
        bare: Any = maxsize
        return lru_cache(128, typed, **options)(bare)
    if maxsize is not None and not isinstance(maxsize, int):
        raise TypeError(f"maxsize must be an int, a callable or None, got {maxsize!r}")
    return cached(maxsize=maxsize, typed=typed, **options)


_ALL: weakref.WeakSet[Memoized] = weakref.WeakSet()


def _new_locks_in_child() -> None:
    # As the cache's: a lock or flight held at fork() by another thread would hang the child.
    for memoized in list(_ALL):
        memoized._lock = threading.Lock()
        memoized._flight = SingleFlight(reentrant=True)


os.register_at_fork(after_in_child=_new_locks_in_child)


class Memoized:
    """A memoized callable; also a descriptor, so that it works as a method.

    A method called through its class, ``Class.method(obj, x)``, is the call
    ``obj.method(x)``: the same entry, and ``obj`` is not kept alive either.
    """

    __qualname__: str  # the function's, from functools.update_wrapper

    def __init__(
        self,
        func: Callable[..., Any],
        cache: MutableMapping | None,
        key: Callable[..., Any] | None,
        typed: bool,
        per_instance: bool,
        options: dict[str, Any],
    ) -> None:
        functools.update_wrapper(self, func)
        if "__qualname__" not in self.__dict__:  # a partial, a callable object: errors name it so
            self.__qualname__ = getattr(func, "__name__", None) or type(func).__qualname__
        self._func = func
        self._typed = typed
        self._per_instance = per_instance
        self._cache_if: Callable[[Any], bool] | None = None  # cached() sets it
        budget = options.get("memory_budget")
        if per_instance and budget is not None and not isinstance(budget, MemoryBudget):
            # One limit for all the instances' caches, not one each.
            options = {**options, "memory_budget": MemoryBudget(budget)}
        self._options = options
        if key is None:
            self._key = typedkey if typed else hashkey
        else:
            self._key = lambda *args, **kwargs: hashed(key(*args, **kwargs))
        self._method_key = key or (cachekeys.typedmethodkey if typed else cachekeys.methodkey)
        self._is_async = inspect.iscoroutinefunction(func)
        # A method: called through its class, the first argument is the instance (set
        # here for per_instance, which only methods have, and by __set_name__).
        self._method = per_instance
        self.cache: MutableMapping | None = None
        if not per_instance:
            self.cache = cache if cache is not None else VolatileCache(**options)
        hot = getattr(self.cache, "_hot_value", None)
        self._hot_value: Callable[[Any], Any] = hot if hot is not None else _no_hot_value
        self._lock = threading.Lock()
        _ALL.add(self)
        self._hits = itertools.count(1)  # next() is atomic: hits counted without the lock
        self._hits_cleared = 0  # hits counted before the last cache_clear()
        self._memo_hits: Callable[[], int] = _no_hits  # a plain function's hits (MemoHit)
        self._memo_misses: Callable[[], int] = _no_hits  # and the misses it made
        self._misses_cleared = 0
        self._misses = self._purged = self._regenerated = 0
        self._stores = 0  # results stored: a call that saw none since its miss need not look again
        self._flight = SingleFlight(reentrant=True)
        self._tasks: dict[tuple[int, int, Any], Any] = {}  # asyncio tasks
        self._tokens: dict[int, int] = {}  # id(instance) -> token, while it lives
        self._next_token = itertools.count(1)
        self._instance_caches: dict[int, VolatileCache] = {}  # token -> cache (per_instance)
        # Tokens of instances that died, appended by their finalizers (which
        # may run inside any allocation, even one made under self._lock, so
        # they take no lock and touch no cache) and drained by the next call.
        self._dead: deque[int] = deque()
        self._dead_tokens: set[int] = set()  # their entries still in the shared cache

    # -- calling ------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._method:  # Class.method(obj, x): obj.method(x), as with functools.lru_cache
            instance, args = self._split(args)
            return self._call_method(instance, args, kwargs)
        if kwargs or self._key is not hashkey:
            key = self._key(*args, **kwargs)
        else:  # hashkey inline: a call less on every hit
            key = args
            for part in args:
                if type(part) not in C_HASHED:
                    key = hashed(args)
                    break
        if self._is_async:
            return self._acall(self.cache, key, args, kwargs)
        value = self._hot_value(key)  # the common hit: one lock-free lookup
        if value is not _MISSING:
            next(self._hits)
            return value
        return self._call(self.cache, key, args, kwargs)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return _BoundMemoized(self, instance)

    def __set_name__(self, owner: type, name: str) -> None:
        # Only a function defined in this class's body is its method: a memoized
        # function assigned to a class attribute stays a function when called directly.
        qualname = getattr(self._func, "__qualname__", None)
        if isinstance(qualname, str) and qualname.rpartition(".")[0] == owner.__qualname__:
            self._method = True

    def _split(self, args: tuple) -> tuple[Any, tuple]:
        """A method called through its class: (the instance, the other arguments)."""
        if not args:
            raise TypeError(
                f"{self.__qualname__}() called through its class needs the instance "
                "as its first argument"
            )
        return args[0], args[1:]

    def _call_method(self, instance: Any, args: tuple, kwargs: dict) -> Any:
        if getattr(self.cache, "across_processes", False):
            # Its key holds a token for the instance (or class), which means nothing
            # in another process: another process's instance would be served its value.
            raise TypeError(
                f"{self.__qualname__}: a method's results cannot go to a cache shared by "
                "processes (a tier or shared=): the key would name this process's instance "
                "or class; decorate a function"
            )
        cache, key = self._for_instance(instance, args, kwargs)
        full = (instance, *args)
        if self._is_async:
            return self._acall(cache, key, full, kwargs)
        return self._call(cache, key, full, kwargs)

    def _call(self, cache: Any, key: Any, args: tuple, kwargs: dict) -> Any:
        stores = self._stores
        value, purged = _probe(cache, key)
        if value is not _MISSING:
            next(self._hits)
            return value
        self._count_miss(purged)

        def compute(_flight: Any) -> Any:
            if self._stores != stores:  # a flight that ended meanwhile may have stored it
                value, _ = _probe(cache, key, count=False)
                if value is not _MISSING:
                    return value
            if getattr(cache, "_tier", None) is not None:
                value = cache._through_tier(
                    key, lambda: self._store(cache, key, self._func(*args, **kwargs), purged)
                )
                self._stores += 1  # stored from the tier, or by _store
                return value
            return self._store(cache, key, self._func(*args, **kwargs), purged)

        return self._flight.run((id(cache), key), compute, _Call(self.__qualname__, key))

    async def _acall(self, cache: Any, key: Any, args: tuple, kwargs: dict) -> Any:
        value, purged = _probe(cache, key)
        if value is not _MISSING:
            next(self._hits)
            return value
        self._count_miss(purged)
        import asyncio  # imported already: this runs in an event loop

        loop = asyncio.get_running_loop()
        flight = (id(loop), id(cache), key)
        task = self._tasks.get(flight)
        me = asyncio.current_task()
        if task is me:
            # Its own computation needs the key again: computed again, as
            # functools.lru_cache does in one thread.
            return await self._acompute(cache, key, args, kwargs, purged)
        if task is None:
            # The computation is a task of its own: a caller that is cancelled
            # does not cancel it for the others, and its result is still stored.
            compute = self._acompute(cache, key, args, kwargs, purged)
            task = loop.create_task(compute)
            self._tasks[flight] = task
            task.add_done_callback(functools.partial(self._task_done, flight))
        if me is None:
            return await asyncio.shield(task)
        await_check(me, task, _Call(self.__qualname__, key))
        try:
            return await asyncio.shield(task)
        finally:
            await_done(me)

    async def _acompute(self, cache: Any, key: Any, args: tuple, kwargs: dict, purged: bool) -> Any:
        value, _ = _probe(cache, key, count=False)
        if value is not _MISSING:
            return value
        tier = getattr(cache, "_tier", None)
        if tier is None:
            return self._store(cache, key, await self._func(*args, **kwargs), purged)
        import asyncio

        # The server's calls in a worker thread: the event loop does not wait on them.
        named = tier.key_of(key)
        clears = cache._clears
        value, generation = await asyncio.to_thread(tier.lookup, named)
        if value is not TIER_MISSING:
            with contextlib.suppress(TypeError, ValueError):
                cache._set(key, value, clears=clears)
            return value
        value = await self._func(*args, **kwargs)
        if self._cache_if is not None and not self._cache_if(value):
            return value
        self._store(cache, key, value, purged, local=True)
        await asyncio.to_thread(_store_under, tier, named, value, generation)
        return value

    def _task_done(self, flight: tuple[int, int, Any], task: Any) -> None:
        if self._tasks.get(flight) is task:
            del self._tasks[flight]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter got it already

    def _store(self, cache: Any, key: Any, value: Any, purged: bool, local: bool = False) -> Any:
        """Store a computed result (``local``: not written through to a tier), unless
        ``cache_if`` refuses it."""
        if self._cache_if is not None and not self._cache_if(value):
            return value
        try:
            if local:
                cache._set(key, value)
            else:
                cache[key] = value
        except ValueError:
            return value  # too large for maxsize: returned, not cached (as cachetools does)
        self._stores += 1  # any change tells a call that missed before it to look again
        if purged:
            with self._lock:
                self._regenerated += 1
        return value

    def cache_invalidate(self, *args: Any, **kwargs: Any) -> bool:
        """Remove the result of one call (these arguments); whether there was one.

        For a method, the instance is the first argument, as in a call through the class.
        """
        if self._method:
            instance, args = self._split(args)
            return self._invalidate_method(instance, args, kwargs)
        return _invalidate(self.cache, self._key(*args, **kwargs))

    def _invalidate_method(self, instance: Any, args: tuple, kwargs: dict) -> bool:
        if self._per_instance and id(instance) not in self._tokens:
            return False  # no cache yet: nothing to remove
        cache, key = self._for_instance(instance, args, kwargs)
        return _invalidate(cache, key)

    def _count_miss(self, purged: bool) -> None:
        with self._lock:
            self._misses += 1
            self._purged += purged

    # -- methods: instances are not kept alive ---------------------------------------------

    def _for_instance(self, instance: Any, args: tuple, kwargs: dict) -> tuple[Any, Any]:
        if self._dead:
            self._bury()
        token = self._tokens.get(id(instance))
        if token is None:
            token = self._register(instance)
        key = self._method_key(instance, *args, **kwargs)
        if self._per_instance:
            key = hashed(key)
            cache = self._instance_caches.get(token)
            if cache is None:
                with self._lock:
                    cache = self._instance_caches.get(token)
                    if cache is None:
                        cache = self._instance_caches[token] = VolatileCache(**self._options)
            return cache, key
        # One flat tuple, stored as a record if the arguments can be. A key
        # that is not a tuple is marked, lest key 5 meet key (5,).
        return self.cache, hashed((token, *key) if type(key) is tuple else (token, _SCALAR, key))

    def _register(self, instance: Any) -> int:
        with self._lock:
            token = self._tokens.get(id(instance))
            if token is not None:
                return token
            try:
                weakref.finalize(
                    instance, self._forget, id(instance), token := next(self._next_token)
                )
            except TypeError:
                raise TypeError(
                    f"@cached methods need instances that can be weakly referenced, so that "
                    f"the cache does not keep them alive: add '__weakref__' to the __slots__ "
                    f"of {type(instance).__name__}"
                ) from None
            self._tokens[id(instance)] = token
            return token

    def _forget(self, ident: int, token: int) -> None:
        # A finalizer: no lock, no cache. The id may be reused as soon as the
        # instance is gone, so its mapping goes now (one atomic dict operation).
        self._tokens.pop(ident, None)
        self._dead.append(token)

    def _bury(self, force: bool = False) -> None:
        """Drop what dead instances left: their caches, or their shared entries in a sweep.

        A sweep reads every key, so calls sweep once per many deaths (O(1) a
        death); ``cache_info()`` sweeps whenever one died, to count what is left.
        """
        caches = []
        with self._lock:
            while self._dead:
                token = self._dead.popleft()
                cache = self._instance_caches.pop(token, None)
                if cache is not None:
                    caches.append(cache)
                elif not self._per_instance:
                    self._dead_tokens.add(token)
            dead = self._dead_tokens
            many = max(_SWEEP_AFTER, len(self.cache or ()) // _SWEEP_AFTER)
            sweep = len(dead) >= (1 if force else many)
            if sweep:
                self._dead_tokens = set()
        for cache in caches:
            cache.close()
        if sweep and self.cache is not None and not getattr(self.cache, "closed", False):
            for key in list(self.cache):
                if isinstance(key, tuple) and key and key[0] in dead:
                    with contextlib.suppress(KeyError):  # del: a removal is not a lookup
                        del self.cache[key]

    # -- what lru_cache users reach for --------------------------------------------------------

    def _caches(self) -> list[Any]:
        with self._lock:
            caches = list(self._instance_caches.values())
        return caches if self._per_instance else [self.cache]

    def cache_info(self) -> CacheInfo:
        """Hits, misses, maxsize (None if unbounded), currsize, purged, regenerated."""
        self._bury(force=True)
        caches = self._caches()
        if caches:
            maxsize = getattr(caches[0], "maxsize", math.inf)
        else:
            maxsize = self._options.get("maxsize", math.inf)
        with self._lock:
            return CacheInfo(
                hits=count_of(self._hits) + self._memo_hits() - self._hits_cleared,
                misses=self._misses + self._memo_misses() - self._misses_cleared,
                maxsize=None if maxsize == math.inf else maxsize,
                currsize=sum(getattr(c, "currsize", len(c)) for c in caches),
                purged=self._purged,
                regenerated=self._regenerated,
            )

    def cache_clear(self) -> None:
        """Empty the cache(s) and reset the counters."""
        for cache in self._caches():
            cache.clear()
        with self._lock:
            # The counters stay (a plain function's C hit counts its own): the
            # hits counted up to now are set aside.
            self._hits_cleared = count_of(self._hits) + self._memo_hits()
            self._misses_cleared = self._memo_misses()
            self._misses = self._purged = self._regenerated = 0
            self._dead_tokens.clear()

    def cache_parameters(self) -> dict[str, Any]:
        """The settings: maxsize, typed, per_instance and the backend."""
        caches = self._caches()
        maxsize = self._options.get("maxsize", math.inf)
        backend = self._options["backend"]
        if self.cache is not None:
            maxsize = getattr(self.cache, "maxsize", maxsize)
            backend = getattr(getattr(self.cache, "backend", None), "name", backend)
        elif caches:
            backend = caches[0].backend.name
        return {
            "maxsize": None if maxsize == math.inf else maxsize,
            "typed": self._typed,
            "per_instance": self._per_instance,
            "backend": backend,
        }

    def __repr__(self) -> str:
        return f"<cached {self._func!r}>"

    # Pickled and copied as functools.lru_cache wrappers are: by reference.
    def __reduce__(self) -> str:
        return self.__qualname__

    def __copy__(self) -> Memoized:
        return self

    def __deepcopy__(self, memo: dict) -> Memoized:
        return self


class _BoundMemoized:
    """A memoized method bound to an instance (which it does not keep past the call)."""

    __slots__ = ("__self__", "__weakref__", "_memoized")

    def __init__(self, memoized: Memoized, instance: Any) -> None:
        self._memoized = memoized
        self.__self__ = instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._memoized._call_method(self.__self__, args, kwargs)

    def cache_invalidate(self, *args: Any, **kwargs: Any) -> bool:
        """Remove the result of one call of this instance's method; whether there was one."""
        return self._memoized._invalidate_method(self.__self__, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "_memoized":  # not set yet: no recursion
            raise AttributeError(name)
        return getattr(self._memoized, name)

    def __repr__(self) -> str:
        return f"<bound cached method {self._memoized.__qualname__} of {self.__self__!r}>"

    def __copy__(self) -> _BoundMemoized:
        return self

    def __deepcopy__(self, memo: dict) -> _BoundMemoized:
        return self

    # As a bound method: pickled as the attribute of its instance (or class).
    def __reduce__(self) -> tuple[Any, tuple[Any, str]]:
        return getattr, (self.__self__, self._memoized.__qualname__.rpartition(".")[2])

    @property
    def __signature__(self) -> inspect.Signature:  # without self, as a bound method's
        signature = inspect.signature(self._memoized._func)
        return signature.replace(parameters=list(signature.parameters.values())[1:])


# The method's docstring, not this class's (a slotted class's __doc__ is a class attribute).
_BoundMemoized.__doc__ = property(lambda bound: bound._memoized.__doc__)  # type: ignore[assignment]


class _StaticMemoized:
    """``@cached`` over ``@staticmethod``: the memoized function, through the class or
    an instance, called as it is (no slots: ``abc.abstractmethod`` sets an attribute)."""

    def __init__(self, memoized: Memoized) -> None:
        self._memoized = memoized
        self.__func__ = memoized

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # in the class body, as staticmethod
        return self._memoized(*args, **kwargs)

    def __get__(self, instance: Any, owner: type | None = None) -> Memoized:
        return self._memoized

    def __getattr__(self, name: str) -> Any:
        if name == "_memoized":  # not set yet (copy makes the object first): no recursion
            raise AttributeError(name)
        return getattr(self._memoized, name)

    # Copied as the memoized function is: by reference.
    def __copy__(self) -> _StaticMemoized:
        return self

    def __deepcopy__(self, memo: dict) -> _StaticMemoized:
        return self


class _ClassMemoized(_StaticMemoized):
    """``@cached`` over ``@classmethod``: bound to the class, through the class or an
    instance; ``cache_invalidate`` takes the arguments after ``cls``."""

    def __get__(self, instance: Any, owner: type | None = None) -> Any:  # type: ignore[override]
        return _BoundMemoized(self._memoized, owner if owner is not None else type(instance))


def _decoratable(obj: Any) -> bool:
    """Whether ``obj`` is what a bare ``@cached`` decorates (a classmethod is not callable)."""
    return callable(obj) or isinstance(obj, staticmethod | classmethod)


def _as_memoized(made: Any) -> Memoized:
    """The Memoized behind what ``cached`` made (a plain function carries it)."""
    return getattr(made, "_memoized", made)  # type: ignore[no-any-return]


def _store_under(tier: Any, named: Any, value: Any, generation: int | None) -> None:
    """Write a value through to the tier under the generation its lookup missed under
    (in one thread: the generation is carried per thread), so that after a clear
    elsewhere meanwhile it is absent, not current."""
    with tier.computing(named, generation, lock=False):
        tier.store_value(named, value)


class _Call(NamedTuple):
    """A call in an error message: ``f(1, 2)``."""

    function: str
    key: Any

    def __repr__(self) -> str:
        key = self.key
        return f"{self.function}{key!r}" if isinstance(key, tuple) else f"{self.function}({key!r})"


def _plain_function(memoized: Memoized) -> bool:
    """Whether a memoized callable can be a plain function: synchronous, one
    VolatileCache, and not defined in a class body (a method needs the
    descriptor, which caches per instance without keeping instances alive)."""
    if memoized._is_async or not isinstance(memoized.cache, VolatileCache):
        return False
    qualname = getattr(memoized._func, "__qualname__", "")
    if not isinstance(qualname, str):
        return False
    parts = qualname.split(".")
    return len(parts) == 1 or parts[-2] == "<locals>"


def _function_of(memoized: Memoized) -> Callable[..., Any]:
    """A plain function for ``memoized``: calling a function costs a hit 80 ns
    less than calling an object's ``__call__``, as much as the rest of a hit."""
    cache = memoized.cache
    hot_value = memoized._hot_value
    call = memoized._call

    def rest(args: tuple) -> Any:
        """A call with positional arguments that ``memo.call`` did not answer."""
        key = args
        for part in args:
            if type(part) not in C_HASHED:
                key = hashed(args)
                break
        value = hot_value(key)
        if value is not _MISSING:
            next(memoized._hits)
            return value
        return call(cache, key, args, {})

    # The common hit in one call (in C where the core is): arguments whose
    # tuple is its own key, and that key hot; where the cache stores in C, a
    # miss of a key it does not hold is computed and stored in that call too
    # (its flight in the decorator's). It counts its hits and misses.
    # Not where the cache has a __setitem__ of its own, which a result must go through.
    plain_store = getattr(type(cache), "__setitem__", None) is VolatileCache.__setitem__
    func = memoized._func if memoized._cache_if is None and plain_store else None
    memo = MemoHit(
        cache, func=func, memoized=memoized, name=memoized.__qualname__, label=_Call,
        fallback=rest,
    )  # fmt: skip
    memoized._memo_hits = lambda: memo.hits
    memoized._memo_misses = lambda: memo.misses
    answer = memo.call

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if kwargs:
            return memoized(*args, **kwargs)
        return answer(args)

    functools.update_wrapper(wrapper, memoized._func)
    for name in ("cache", "cache_info", "cache_clear", "cache_parameters", "cache_invalidate"):
        setattr(wrapper, name, getattr(memoized, name))
    wrapper._memoized = memoized  # type: ignore[attr-defined]
    return wrapper


_ABSENT = object()  # pop()'s default in an invalidation (_MISSING means "no default" there)


def _invalidate(cache: Any, key: Any) -> bool:
    if cache is None:
        return False
    return cache.pop(key, _ABSENT) is not _ABSENT


class _Jittered:
    """A ``ttl`` made shorter by up to a fraction, at random, entry by entry."""

    def __init__(self, ttl: Any, jitter: float) -> None:
        self.ttl, self.jitter = ttl, jitter
        self.random = random.Random(os.urandom(16)).random

    def __call__(self, key: Any, value: Any) -> float | None:
        seconds = self.ttl(key, value) if callable(self.ttl) else self.ttl
        return None if seconds is None else seconds * (1.0 - self.jitter * self.random())

    def __repr__(self) -> str:
        return f"{self.ttl!r} less up to {self.jitter:.0%}"


def _no_hits() -> int:
    return 0


def _no_hot_value(key: Any) -> Any:
    return _MISSING


def _probe(cache: Any, key: Any, count: bool = True) -> tuple[Any, bool]:
    if isinstance(cache, VolatileCache):
        return cache._probe(key, count)
    value = cache.get(key, _MISSING)  # another mapping: no purges to tell apart
    return value, False
