"""Tier keys: a cache key serialized the same way in every process and on every machine.

``marshal`` and ``pickle`` are not that: a ``frozenset``'s order follows its
items' hashes, and ``str`` hashes are salted per process. This encoding
sorts a frozenset's items by their own encoding, and writes numbers that
compare equal alike (``1``, ``1.0`` and ``True`` are one key in a dict, and
one key in the tier). The tier key is a SHA-256 of it, inside a namespace
and version: bounded in length, and free of the characters memcached refuses.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

from ..keys import HASHED_TUPLES, KWMARK

#: Types that keys made by ``cachetools.keys.typedkey`` hold, written by name.
_TYPES = {t: t.__name__.encode() for t in (
    int, str, bytes, float, bool, complex, type(None), tuple, frozenset, bytearray, list, dict,
    set, type, range, slice,
)}  # fmt: skip
_KWMARK = KWMARK
_SAFE_NAMESPACE = re.compile(r"[A-Za-z0-9_.<>\-]{1,120}")


def _number(value: int | float | complex) -> bytes:
    if isinstance(value, complex):
        if value.imag:
            return b"c" + _number(value.real) + _number(value.imag)
        value = value.real
    if isinstance(value, float):
        if math.isnan(value):
            return b"fnan;"  # NaN is not equal to itself: a key holding it never hits anyway
        if not value.is_integer():
            return b"f" + value.hex().encode() + b";"
        value = int(value)
    return b"i" + str(int(value)).encode() + b";"


def _encode(part: Any, out: list[bytes]) -> None:
    kind = type(part)
    if kind is str:
        data = part.encode("utf-8", "surrogatepass")
        out.append(b"s%d:" % len(data))
        out.append(data)
    elif kind in (int, float, bool, complex):
        out.append(_number(part))
    elif kind is bytes:
        out.append(b"b%d:" % len(part))
        out.append(part)
    elif part is None:
        out.append(b"N")
    elif kind is tuple or kind in HASHED_TUPLES:  # ours, or cachetools' before 8.0
        out.append(b"(")
        for item in part:
            _encode(item, out)
        out.append(b")")
    elif kind is frozenset:
        items = []
        for item in part:
            encoded: list[bytes] = []
            _encode(item, encoded)
            items.append(b"".join(encoded))
        out.append(b"{")
        out.extend(sorted(items))
        out.append(b"}")
    elif part is _KWMARK:
        out.append(b"k")
    elif kind is type and part in _TYPES:
        out.append(b"t" + _TYPES[part] + b";")
    else:
        raise TypeError(
            f"a tier needs keys it can serialize the same way in every process: "
            f"{kind.__name__} is not one of str, bytes, int, float, bool, complex, None, "
            "tuple, frozenset (or the types and marker in cachetools' keys)"
        )


def stable_key_bytes(key: Any) -> bytes:
    """The key's encoding, equal for equal keys in any process; a ``TypeError`` names
    a part that has none."""
    out: list[bytes] = []
    _encode(key, out)
    return b"".join(out)


def namespace_part(namespace: str) -> str:
    """The namespace as it appears in tier keys: itself if short and plain, else a hash."""
    if _SAFE_NAMESPACE.fullmatch(namespace):
        return namespace
    return "h" + hashlib.sha256(namespace.encode("utf-8", "surrogatepass")).hexdigest()[:32]
