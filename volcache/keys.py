"""Call keys: hashed once per call, and serialized beside the value.

A memoized call's key is the tuple ``cachetools.keys`` makes of its
arguments, so that ``f.cache[hashkey(...)]`` finds what ``f(...)`` stored.
Looking a key up hashes it a dozen times (the hot set, the index, the single
flight, the store); where hashing could run Python code (an argument of a
class of yours), the key is a :class:`HashedKey` whose hash is computed once,
as ``functools.lru_cache`` promises.

Keys are stored in volatile memory with ``marshal``, which refuses the type
objects that typed keys and the keyword marker of ``cachetools`` hold: those
are written as small codes (:func:`key_bytes`, :func:`key_from_bytes`).
"""

from __future__ import annotations

import marshal
from typing import Any

from cachetools import keys as cachekeys

_VERSION = 2  # marshal format 2: no back-references, so equal keys give equal bytes

#: Types whose hash is computed in C, without calling Python code.
C_HASHED = frozenset({int, str, bytes, float, bool, complex, type(None), type, frozenset})

#: Objects that ``marshal`` refuses in keys made by ``cachetools.keys``: the
#: keyword marker and the types a typed key appends. By id: these live forever.
#: (cachetools' keyword marker is private there, but its keys hold it.)
KWMARK = cachekeys._kwmark[0]  # type: ignore[attr-defined]
_SPECIALS = (KWMARK, int, str, bytes, float, bool, complex, type(None), tuple,
             frozenset, bytearray, list, dict, set, type, range, slice)  # fmt: skip
_SPECIAL_CODES = {id(obj): code for code, obj in enumerate(_SPECIALS)}


#: cachetools' own tuple with a remembered hash: the keys it made before 8.0,
#: which a key pickled then still is; stored as the plain tuple it equals.
_CACHETOOLS_HASHED = getattr(cachekeys, "_HashedTuple", None)


class HashedKey(tuple):
    """A tuple whose hash is computed once (and equal to the plain tuple's)."""

    def __hash__(self) -> int:
        try:
            return self.__dict__["_hash"]
        except KeyError:
            value = self.__dict__["_hash"] = tuple.__hash__(self)
            return value

    def __reduce__(self) -> tuple[Any, ...]:
        # A hash is valid in one process only (strings' hashes are salted).
        return HashedKey, (tuple(self),)


#: Tuples that remember their hash: stored and named as the plain tuples they equal.
HASHED_TUPLES = frozenset(t for t in (HashedKey, _CACHETOOLS_HASHED) if t is not None)


def _hashed_in_c(part: Any) -> bool:
    kind = type(part)
    if kind in C_HASHED:
        return True
    return kind is tuple and all(_hashed_in_c(item) for item in part)


def hashed(key: Any) -> Any:
    """``key`` itself, or a :class:`HashedKey` if hashing the tuple could run Python code."""
    if type(key) is not tuple:
        return key
    for part in key:
        if type(part) not in C_HASHED:
            break
    else:
        return key
    return key if _hashed_in_c(key) else HashedKey(key)


#: Types ``marshal`` reads back as what it wrote. It writes any other object
#: with the buffer protocol (a numpy scalar, a ``bytes`` subclass) as plain
#: ``bytes``, which would then answer for another key or none.
_SCALARS = frozenset({int, str, bytes, bool, type(None)})
_CONTAINERS = frozenset({tuple, frozenset, list, dict, set})


def marshals_exactly(obj: Any) -> bool:
    """Whether ``marshal`` gives ``obj`` back with the same types, transitively."""
    kind = type(obj)
    if kind in _SCALARS or kind is float or kind is complex:
        return True
    if kind in _CONTAINERS:
        items = obj.items() if kind is dict else obj
        return all(marshals_exactly(item) for item in items)
    return False


def _storable(part: Any) -> bool:
    """A key part read back equal to itself: exact built-in types, and no NaN, which
    a dict finds by identity only and a key read back is a new object."""
    kind = type(part)
    if kind in _SCALARS:
        return True
    if kind is float or kind is complex:
        return part == part
    if kind is tuple or kind is frozenset:
        return all(_storable(item) for item in part)
    return False


def key_bytes(key: Any) -> tuple[bytes | None, bool]:
    """(the key serialized, whether in the special form); None if it must stay an object.

    Only keys of exact built-in types (``int``, ``str``, ``bytes``, ``float``,
    ``tuple``, ...) without NaN are serialized: they are the keys that compare
    equal to themselves when read back. Others stay Python objects, found as a
    dict finds them.
    """
    if type(key) in HASHED_TUPLES:
        key = tuple(key)
    if _storable(key):
        return marshal.dumps(key, _VERSION), False
    if type(key) is not tuple:
        return None, False
    parts = list(key)
    codes = []
    for index, part in enumerate(parts):
        code = _SPECIAL_CODES.get(id(part))
        if code is not None:
            parts[index] = None
            codes.append(index << 5 | code)
        elif not _storable(part):
            return None, False
    if not codes:
        return None, False
    return marshal.dumps((tuple(parts), tuple(codes)), _VERSION), True


def key_from_bytes(data: bytes | memoryview, special: bool) -> Any:
    """The key that :func:`key_bytes` serialized."""
    key = marshal.loads(data)
    if not special:
        return key
    parts, codes = key
    parts = list(parts)
    for code in codes:
        parts[code >> 5] = _SPECIALS[code & 31]
    return tuple(parts)


def hashkey(*args: Any, **kwargs: Any) -> Any:
    """``cachetools.keys.hashkey``'s key, hashed once (see :func:`hashed`)."""
    if kwargs:
        return hashed(cachekeys.hashkey(*args, **kwargs))
    for part in args:
        if type(part) not in C_HASHED:
            return hashed(args)
    return args


def typedkey(*args: Any, **kwargs: Any) -> Any:
    """``cachetools.keys.typedkey``'s key, hashed once (see :func:`hashed`)."""
    return hashed(cachekeys.typedkey(*args, **kwargs))
