"""SharedVolatileCache: one cache in shared memory for every process of a machine."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import threading
import time
from collections.abc import Callable, Hashable, Iterator, MutableMapping
from dataclasses import asdict, dataclass
from typing import Any

from ..codecs import DefaultCodec, check_codec, decoder_from_spec, decoder_spec
from ..tiers.keys import stable_key_bytes
from . import layout as L
from .purger import SharedPurger
from .segment import Segment, path_of

# How a value's bytes are decoded, stored beside them (any process reads them).
_BYTES, _BYTEARRAY, _SPEC, _PICKLE, _CODEC = 1, 2, 3, 4, 5
_ABSENT = object()


@dataclass(frozen=True)
class SharedCacheInfo:
    """A shared cache's counters: this process's lookups, and the segment's state.

    Attributes:
        hits, misses: this process's lookups that found a value, and that did not.
        purged: this process's lookups that found their entry purged.
        regenerated: values this process made again with ``regenerate``.
        entries: entries holding a value, in the segment (every process's).
        purged_entries: entries whose value was purged and not stored again.
        segment_bytes: the segment's address space (``size``).
        stored_bytes: the pages entries hold now: the segment's memory.
        pinned_entries, pinned_bytes: runs of pages that processes read in place
            now (see :meth:`SharedVolatileCache.pin`), and their bytes.
        purges: purges done, by any process.
        recoveries: times a process found the segment left mid-change by a
            process that died, and repaired it.
        attached: the pids of the live processes that opened the segment.
        purged_bytes: bytes this process purged under memory pressure.
        pressure: the limit this process's purger follows ("off": none).
    """

    hits: int
    misses: int
    purged: int
    regenerated: int
    entries: int
    purged_entries: int
    segment_bytes: int
    stored_bytes: int
    pinned_entries: int
    pinned_bytes: int
    purges: int
    recoveries: int
    attached: list[int]
    purged_bytes: int
    pressure: str

    def as_dict(self) -> dict[str, Any]:
        """The fields as a dict (for JSON)."""
        return asdict(self)


class SharedVolatileCache(MutableMapping[Hashable, Any]):
    """A mapping whose entries live in a shared memory segment named ``name``,
    opened by any process of the same user (or inherited across ``fork``).

    Args:
        name: the segment's name (1-100 of ``A-Z a-z 0-9 _ . -``); the first
            process to open it makes it.
        size: the segment's bytes, when this process makes it: the most it can
            hold. Its memory is what entries hold now.
        codec: how values become bytes (default: buffers raw, the rest pickled);
            every process of a segment must use the same.
        regenerate: ``regenerate(key) -> value`` for keys purged or absent.
        maxsize: entries this process lets the segment hold after its stores
            (None: as many as fit); past it the least recently used go, a
            thirty-second of ``maxsize`` at a time.
        ttl: seconds an entry this process stores lives (None: until purged or
            evicted); an expired entry is absent for every process.
        pressure: purge under memory pressure (the limit this process runs
            under: see :class:`~volcache.shared.purger.SharedPurger`). Without
            it, nothing gives the segment's memory back but ``purge()``.
        cgroup, headroom: the memory cgroup to follow instead of this
            process's own, and the bytes kept free below its limit.

    An entry takes whole pages (4 KiB at least): the segment suits values of
    kilobytes and more (images, parsed files, arrays). Keys are any value
    :mod:`volcache.tiers.keys` encodes alike in every process (numbers,
    strings, bytes, tuples and frozensets of them...).
    """

    #: Other processes read it: ``@cached`` refuses methods, whose keys name this process's
    #: instances.
    across_processes = True

    def __init__(
        self,
        name: str,
        *,
        size: int = 256 << 20,
        codec: Any = None,
        regenerate: Callable[[Any], Any] | None = None,
        maxsize: int | None = None,
        ttl: float | None = None,
        pressure: bool = True,
        cgroup: Any = None,
        headroom: int | None = None,
    ) -> None:
        if regenerate is not None and not callable(regenerate):
            raise TypeError(f"regenerate must be callable or None, got {regenerate!r}")
        if maxsize is not None and (not isinstance(maxsize, int) or maxsize < 1):
            raise TypeError(f"maxsize must be a positive int or None, got {maxsize!r}")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)
                                or not ttl > 0):  # fmt: skip
            raise ValueError(f"ttl must be a positive number of seconds or None, got {ttl!r}")
        self.ttl = ttl
        #: The clock of expiries (``time.monotonic``, one for every process of a machine).
        self.clock: Callable[[], float] = time.monotonic
        self.codec = check_codec(codec)
        self.regenerate = regenerate
        self.maxsize = maxsize
        self.name = name
        self._segment = Segment(name, size)
        try:
            self._purger = SharedPurger(self._segment, cgroup, headroom) if pressure else None
        except BaseException:
            self._segment.close()
            raise
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(("hits", "misses", "purged", "regenerated"), 0)

    # -- keys and values ---------------------------------------------------------------------

    @staticmethod
    def _named(key: Any) -> tuple[bytes, int]:
        data = stable_key_bytes(key)
        return data, int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")

    def _encode(self, value: Any) -> tuple[int, bytes]:
        data, decode, _ = self.codec.encode_with_decoder(value)
        if decode is bytes:
            return _BYTES, bytes(data)
        if decode is bytearray:
            return _BYTEARRAY, bytes(data)
        spec = decoder_spec(decode)
        if spec is not None:
            tag, params = spec
            return _SPEC | tag << 8, len(params).to_bytes(4, "little") + params + bytes(data)
        if isinstance(self.codec, DefaultCodec):
            return _PICKLE, bytes(data)
        return _CODEC, bytes(data)

    def _decode(self, tag: int, data: bytes) -> Any:
        kind = tag & 0xFF
        if kind == _BYTES:
            return data
        if kind == _BYTEARRAY:
            return bytearray(data)
        if kind == _SPEC:
            n = int.from_bytes(data[:4], "little")
            return decoder_from_spec(tag >> 8, data[4 : 4 + n])(memoryview(data)[4 + n :])
        if kind == _PICKLE:
            return pickle.loads(data)
        return self.codec.decode(memoryview(data))

    def _seg(self) -> Segment:
        if self._segment.closed:
            raise ValueError(f"shared cache {self.name!r} is closed in this process")
        if os.getpid() != self._pid:  # a forked child: in the table of attached processes
            self._pid = os.getpid()
            with self._segment.lock:
                self._segment._attach()
        return self._segment

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    # -- the mapping -----------------------------------------------------------------------

    def _lookup(self, key: Any) -> tuple[int, Any]:
        state, tag, data = self._seg().get(*self._named(key), self.clock())
        if state == L.LIVE:
            assert data is not None
            self._count("hits")
            return state, self._decode(tag, data)
        self._count("purged" if state == L.PURGED else "misses")
        return state, _ABSENT

    def __getitem__(self, key: Any) -> Any:
        value = self._lookup(key)[1]
        if value is _ABSENT:
            return self.__missing__(key)
        return value

    def __missing__(self, key: Any) -> Any:
        """``regenerate(key)``, stored; ``KeyError`` without ``regenerate``."""
        if self.regenerate is None:
            raise KeyError(key)
        value = self.regenerate(key)
        self._count("regenerated")
        self[key] = value
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        """The value, or ``default`` if absent; a purged one is regenerated if it can be."""
        state, value = self._lookup(key)
        if value is not _ABSENT:
            return value
        if state == L.PURGED and self.regenerate is not None:
            return self.__missing__(key)
        return default

    @contextlib.contextmanager
    def pin(self, key: Any) -> Iterator[memoryview]:
        """A context manager: a read-only view of a ``bytes`` value where it lies in
        the segment (no copy); inside the block no process purges, evicts or
        gives back its pages (a store or a delete of the key meanwhile makes a
        new entry, and the pinned pages go at the block's end). An absent key,
        or one found purged, is regenerated first if the cache can.

        Raises:
            KeyError: no such key (or purged and not regenerable).
            TypeError: the value is not stored as raw bytes.
            MemoryError: every one of the segment's pins is held.
        """
        named = self._named(key)
        segment = self._seg()
        state, first, tag, view = segment.pin(*named, self.clock())
        if view is None:
            self._count("purged" if state == L.PURGED else "misses")
            self.__missing__(key)  # KeyError if it cannot be made again
            state, first, tag, view = segment.pin(*named, self.clock())
            if view is None:
                raise KeyError(key)
        else:
            self._count("hits")
        try:
            if tag & 0xFF not in (_BYTES, _BYTEARRAY):
                raise TypeError(f"pin() reads raw bytes in place; the value of {key!r} is encoded")
            yield view
        finally:
            view.release()
            segment.unpin(*named, first)

    def __setitem__(self, key: Any, value: Any) -> None:
        data, h = self._named(key)
        tag, blob = self._encode(value)
        segment = self._seg()
        if self._purger is not None:
            self._purger.relieve(len(blob) + L.PAGE)
        expires = 0.0 if self.ttl is None else self.clock() + self.ttl
        segment.put(data, pickle.dumps(key, pickle.HIGHEST_PROTOCOL), h, tag, blob, expires)
        if self.maxsize is not None:
            segment.evict_to(self.maxsize, max(1, self.maxsize // 32))

    def __delitem__(self, key: Any) -> None:
        if not self._seg().delete(*self._named(key)):
            raise KeyError(key)

    def pop(self, key: Any, default: Any = _ABSENT) -> Any:
        """Remove ``key`` and return its value; ``default`` (or ``KeyError``) if it
        has none. Another process removing it meanwhile is no error: the value
        read is returned."""
        value = self._lookup(key)[1]
        if value is _ABSENT:
            if default is _ABSENT:
                raise KeyError(key)
            return default
        self._seg().delete(*self._named(key))
        return value

    def __contains__(self, key: Any) -> bool:
        return self._seg().get(*self._named(key), self.clock())[0] == L.LIVE

    def __len__(self) -> int:
        return self._seg().counts()["live"]

    def __iter__(self) -> Iterator[Any]:
        for pickled in self._seg().pickled_keys(self.clock()):
            yield pickle.loads(pickled)

    def clear(self) -> None:
        """Every entry removed, for every process; the memory given back."""
        self._seg().clear()

    def purge(self, nbytes: int) -> int:
        """Purges the least recently used entries until ``nbytes`` went back to the
        system (for every process); the bytes that did.

        Raises:
            TypeError: ``nbytes`` is not an int.
            ValueError: ``nbytes`` is negative.
        """
        if isinstance(nbytes, bool) or not isinstance(nbytes, int):
            raise TypeError(f"purge: nbytes must be an int, got {nbytes!r}")
        if nbytes < 0:
            raise ValueError(f"purge: nbytes must be 0 or more, got {nbytes}")
        return self._seg().purge(nbytes)

    def info(self) -> SharedCacheInfo:
        """This process's counters and the segment's (see :class:`SharedCacheInfo`)."""
        segment = self._seg()
        counts = segment.counts()
        with self._lock:
            mine = dict(self._counts)
        return SharedCacheInfo(
            **mine,
            entries=counts["live"],
            purged_entries=counts["purged"],
            segment_bytes=segment.size,
            stored_bytes=counts["pages"] * L.PAGE,
            pinned_entries=counts["pinned_runs"],
            pinned_bytes=counts["pinned_pages"] * L.PAGE,
            purges=counts["purges"],
            recoveries=counts["recoveries"],
            attached=segment.attached(),
            purged_bytes=0 if self._purger is None else self._purger.purged_bytes,
            pressure="off" if self._purger is None else self._purger.describe(),
        )

    def close(self) -> None:
        """Unmap the segment in this process (the others keep it). Idempotent."""
        if self._purger is not None:
            self._purger.stop()
            self._purger = None
        self._segment.close()

    @staticmethod
    def unlink(name: str) -> None:
        """Remove segment ``name`` (processes that have it open keep it until they close)."""
        path_of(name).unlink(missing_ok=True)

    def __enter__(self) -> SharedVolatileCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._segment.closed:
            return f"SharedVolatileCache({self.name!r}, closed)"
        return f"SharedVolatileCache({self.name!r}, {len(self)} entries)"


class SharedNamespace(MutableMapping[Hashable, Any]):
    """The part of a shared cache whose keys are ``(prefix, key)``: what
    ``cached(shared=...)`` gives each function, so that functions sharing a
    segment do not share results. ``len``, iteration and ``clear`` see only
    this part."""

    #: Other processes read it: ``@cached`` refuses methods, whose keys name this process's
    #: instances.
    across_processes = True

    def __init__(self, cache: SharedVolatileCache, prefix: str) -> None:
        self.cache = cache
        self.prefix = prefix

    def __getitem__(self, key: Any) -> Any:
        return self.cache[(self.prefix, key)]

    def get(self, key: Any, default: Any = None) -> Any:
        """The value, or ``default`` (see :meth:`SharedVolatileCache.get`)."""
        return self.cache.get((self.prefix, key), default)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.cache[(self.prefix, key)] = value

    def __delitem__(self, key: Any) -> None:
        del self.cache[(self.prefix, key)]

    def __contains__(self, key: Any) -> bool:
        return (self.prefix, key) in self.cache

    def __iter__(self) -> Iterator[Any]:
        for key in self.cache:
            if isinstance(key, tuple) and len(key) == 2 and key[0] == self.prefix:
                yield key[1]

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def clear(self) -> None:
        """This part's entries removed (another process's stores meanwhile may stay)."""
        for key in list(self):
            self.cache.pop((self.prefix, key), None)

    def info(self) -> SharedCacheInfo:
        """The shared cache's :meth:`~SharedVolatileCache.info`."""
        return self.cache.info()

    def close(self) -> None:
        """Close the shared cache."""
        self.cache.close()
