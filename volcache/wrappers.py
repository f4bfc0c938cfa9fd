"""What a type checker sees of a memoized function: its parameters and result, kept.

``@cached`` and ``@lru_cache`` return a :class:`~volcache.decorator.Memoized` or,
for a plain function, a faster function of its own; both have the attributes
below. These protocols describe them with the decorated function's
``ParamSpec`` and return type, so that ``mypy --strict`` checks the calls of a
memoized function and of ``cache_invalidate`` as it checks the function's own.
:class:`CacheInfo` is what their ``cache_info()`` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Concatenate, NamedTuple, ParamSpec, Protocol, TypeVar, overload

P = ParamSpec("P")
R_co = TypeVar("R_co", covariant=True)
_Params = ParamSpec("_Params")
_Self = TypeVar("_Self")
_Result = TypeVar("_Result")

__all__ = ["BoundCachedMethod", "CacheInfo", "CachedFunction"]


class _Counts(NamedTuple):
    hits: int
    misses: int
    maxsize: int | None
    currsize: int


def _whole(size: float) -> Any:
    """A size as an int where it is one (``1e6`` from ``maxsize=1e6``), as ``functools``
    gives; a fractional sum of a ``getsizeof`` stays what it is."""
    return int(size) if isinstance(size, float) and size.is_integer() else size


class CacheInfo(_Counts):
    """A memoized function's counters: ``functools.lru_cache``'s four, and two more.

    As a tuple it has the four fields of ``functools``' ``CacheInfo`` (it
    unpacks and compares the same), typed as typeshed types them. ``maxsize``
    is None when unbounded; ``currsize`` is the number of results, or the sum
    of ``getsizeof`` with one. ``purged`` and ``regenerated`` are attributes,
    not fields. Not to be confused with :class:`volcache.CacheInfo`, what a
    cache's ``info()`` returns.
    """

    #: Calls whose stored result had been purged.
    purged: int = 0
    #: Results computed again for them.
    regenerated: int = 0

    def __new__(
        cls, hits: int, misses: int, maxsize: float | None, currsize: float,
        purged: int = 0, regenerated: int = 0,
    ) -> CacheInfo:  # fmt: skip
        info = super().__new__(
            cls, hits, misses, None if maxsize is None else _whole(maxsize), _whole(currsize)
        )
        info.purged = purged
        info.regenerated = regenerated
        return info

    def _replace(self, **changes: Any) -> CacheInfo:
        info = super()._replace(**changes)
        info.__dict__.update(self.__dict__)
        return info

    def __repr__(self) -> str:
        return (
            f"CacheInfo(hits={self.hits}, misses={self.misses}, maxsize={self.maxsize}, "
            f"currsize={self.currsize}, purged={self.purged}, regenerated={self.regenerated})"
        )


class BoundCachedMethod(Protocol[P, R_co]):
    """A memoized method taken from an instance (or a class method from its class):
    called without ``self``."""

    cache: Any
    """The method's cache (None for ``per_instance`` methods, which have one per instance)."""

    @property
    def __wrapped__(self) -> Callable[..., R_co]:
        """The decorated function, which takes ``self`` first."""
        ...

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """The method's result for these arguments, from the cache or computed."""
        ...

    def cache_invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Remove this instance's result for one call; whether there was one."""
        ...

    def cache_info(self) -> CacheInfo:
        """The method's counters (every instance's)."""
        ...

    def cache_clear(self) -> None:
        """Empty the method's cache(s) and reset its counters."""
        ...

    def cache_parameters(self) -> dict[str, Any]:
        """The settings: maxsize, typed, per_instance and the backend."""
        ...


# mypy asks for an invariant result type because of the self-typed __get__ overloads;
# the result is only ever read, so covariant is right (a function returning bool is
# a CachedFunction[[int], int]).
class CachedFunction(Protocol[P, R_co]):  # type: ignore[misc]
    """A function (sync or ``async def``) or method memoized by ``@cached`` or ``@lru_cache``.

    Called as the function is, with the same parameters and result type (an
    ``async def``'s result is awaited as before). Taken from an instance, a
    memoized method is a :class:`BoundCachedMethod` without ``self``.
    """

    cache: Any
    """The cache the results are in, a :class:`~volcache.VolatileCache` unless another
    mapping was given (None for ``per_instance`` methods, which have one per instance)."""

    @property
    def __wrapped__(self) -> Callable[P, R_co]:
        """The decorated function."""
        ...

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """The function's result for these arguments, from the cache or computed."""
        ...

    def cache_invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Remove the result of one call (the function's arguments); whether there was one."""
        ...

    def cache_info(self) -> CacheInfo:
        """Hits, misses, maxsize (None if unbounded), currsize, purged, regenerated."""
        ...

    def cache_clear(self) -> None:
        """Empty the cache(s) and reset the counters."""
        ...

    def cache_parameters(self) -> dict[str, Any]:
        """The settings: maxsize, typed, per_instance and the backend."""
        ...

    @overload
    def __get__(
        self: CachedFunction[Concatenate[type[_Self], _Params], _Result],
        instance: None,
        owner: type[_Self],
    ) -> BoundCachedMethod[_Params, _Result]: ...
    @overload
    def __get__(self, instance: None, owner: type | None = None) -> CachedFunction[P, R_co]: ...
    @overload
    def __get__(
        self: CachedFunction[Concatenate[type[_Self], _Params], _Result],
        instance: _Self,
        owner: type | None = None,
    ) -> BoundCachedMethod[_Params, _Result]: ...
    @overload
    def __get__(
        self: CachedFunction[Concatenate[_Self, _Params], _Result],
        instance: _Self,
        owner: type | None = None,
    ) -> BoundCachedMethod[_Params, _Result]: ...
    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        """Through the class, the memoized function; through an instance, bound to it."""
        ...
