"""How values travel to a tier and back: a small header, the codec's bytes, a MAC.

::

    b"VCT" | format (1) | kind (1) | flags (1) | generation (8) | meta length (2)
          | meta | payload | HMAC-SHA256 (32, if flags say so)

Kinds: raw buffers (``bytes``, ``bytearray``, an ``array.array`` with its
typecode, a numpy array with its dtype and shape as JSON), which decode
without running anything a writer chose; and a codec's bytes (``pickle``,
or a codec of yours, by name), which decode by running that codec. The MAC
covers namespace, version, key and everything before it: a value that
fails it, or that cannot be parsed, is absent to the reader. A reader
without a secret takes only values without a MAC: a signed one is absent
to it, as an unsigned one is to a reader with a secret.
"""

from __future__ import annotations

import array
import hashlib
import hmac
import json
import pickle
import struct
import sys
from functools import partial
from typing import Any

from ..codecs import Codec, Decoder, _array_decode, _numpy_decode

MAGIC = b"VCT"
FORMAT = 1
HEADER = struct.Struct("<3sBBBQH")
MAC_BYTES = 32
_MAC = 1  # flag: a MAC follows the payload
BYTES, BYTEARRAY, ARRAY, NUMPY, CODEC = range(5)
RAW_KINDS = frozenset({BYTES, BYTEARRAY, ARRAY, NUMPY})
_NUMPY_MAX_DIMS = 32  # numpy 1's limit (numpy 2's is 64): an array of more is refused


class Rejected(Exception):
    """A value from the tier that is not to be used (the reason is the message)."""


class Cleared(Rejected):
    """A value written before its namespace was cleared: absent, not refused."""


def codec_name(codec: Codec) -> str:
    """How a codec is known in the header: ``pickle`` for volcache's, else module.qualname."""
    from ..codecs import DefaultCodec, PickleCodec

    if isinstance(codec, PickleCodec | DefaultCodec):
        return "pickle"
    inner = getattr(codec, "codec", codec)  # a duck-typed codec's object
    kind = type(inner)
    return f"{kind.__module__}.{kind.__qualname__}"


def _mac(secret: bytes, context: bytes, body: bytes | memoryview) -> bytes:
    return hmac.new(secret, context + body, hashlib.sha256).digest()


def context(namespace: str, version: int, key: bytes) -> bytes:
    """What a MAC binds a value to besides its own bytes: where it is stored."""
    ns = namespace.encode("utf-8", "surrogatepass")
    return b"volcache-tier\0%d:%b\0%d\0%d:%b\0" % (len(ns), ns, version, len(key), key)


def encode(
    encoded: tuple[memoryview, Decoder], codec: Codec, generation: int, secret: bytes | None,
    where: bytes,
) -> bytes | None:  # fmt: skip
    """The envelope of a value the codec made ``(bytes, decoder)`` of (as the cache
    stores it), or None if it may not travel (a codec's bytes without a secret)."""
    data, decode = encoded
    meta = b""
    if decode is bytes or decode is bytearray:
        kind = BYTES if decode is bytes else BYTEARRAY
    elif type(decode) is partial and decode.func is _array_decode:
        kind, meta = ARRAY, decode.args[0].encode()
    elif type(decode) is partial and decode.func is _numpy_decode:
        numpy = sys.modules["numpy"]
        dtype, shape = decode.args
        descr = numpy.lib.format.dtype_to_descr(dtype)
        kind, meta = NUMPY, json.dumps({"descr": descr, "shape": list(shape)}).encode()
    else:
        if secret is None:
            return None  # nobody could trust it: only raw buffers travel without a secret
        kind, meta = CODEC, codec_name(codec).encode()
    flags = _MAC if secret is not None else 0
    body = HEADER.pack(MAGIC, FORMAT, kind, flags, generation, len(meta)) + meta + bytes(data)
    if secret is not None:
        body += _mac(secret, where, body)
    return body


def decode(blob: bytes, codec: Codec, generation: int, secret: bytes | None, where: bytes) -> Any:
    """The value in an envelope.

    Raises:
        Rejected: garbage, another format or codec, a missing or wrong MAC when
            a secret is set, a MAC or a codec's bytes without one, or another
            generation (a cleared namespace); nothing in it was decoded then.
    """
    if len(blob) < HEADER.size:
        raise Rejected("too short for a header")
    magic, fmt, kind, flags, gen, nmeta = HEADER.unpack_from(blob)
    if magic != MAGIC or fmt != FORMAT:
        raise Rejected("not a volcache value of this format")
    end = len(blob)
    if secret is not None:
        if not flags & _MAC or end < HEADER.size + nmeta + MAC_BYTES:
            raise Rejected("no MAC, and this tier has a secret")
        end -= MAC_BYTES
        if not hmac.compare_digest(_mac(secret, where, memoryview(blob)[:end]), blob[end:]):
            raise Rejected("wrong MAC")
    elif flags & _MAC:
        # The writer asked for its values to be checked, and this reader cannot:
        # it takes none of them, as a reader with a secret takes no unsigned value.
        raise Rejected("a MAC, and this tier has no secret to check it")
    elif kind not in RAW_KINDS:
        raise Rejected("a codec's bytes, and this tier has no secret to authenticate them")
    if gen != generation:
        raise Cleared("another generation (the namespace was cleared)")
    start = HEADER.size + nmeta
    if start > end:
        raise Rejected("truncated")
    meta = blob[HEADER.size : start]
    payload = memoryview(blob)[start:end]
    if kind == BYTES:
        return bytes(payload)
    if kind == BYTEARRAY:
        return bytearray(payload)
    if kind == ARRAY:
        try:
            typecode = meta.decode()
            if len(payload) % array.array(typecode).itemsize:
                raise Rejected("array bytes not a whole number of items")
            return _array_decode(typecode, payload)
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise Rejected(f"bad array: {exc}") from None
    if kind == NUMPY:
        return _numpy_value(meta, payload)
    if kind != CODEC:
        raise Rejected(f"unknown kind {kind}")
    if meta.decode(errors="replace") != codec_name(codec):
        raise Rejected(f"another codec ({meta.decode(errors='replace')})")
    try:
        if codec_name(codec) == "pickle":
            return pickle.loads(payload)  # authenticated above: written by a holder of the secret
        return codec.decode(payload)
    except Exception as exc:
        raise Rejected(f"the codec failed: {exc}") from None


def _numpy_value(meta: bytes, payload: memoryview) -> Any:
    numpy: Any = sys.modules.get("numpy")
    if numpy is None:
        try:
            import numpy
        except ImportError:
            raise Rejected("a numpy array, and numpy is not installed") from None
    try:
        spec = json.loads(meta)
        dtype = numpy.lib.format.descr_to_dtype(spec["descr"])
        shape = spec["shape"]
    except Exception as exc:
        raise Rejected(f"bad numpy header: {exc}") from None
    if not isinstance(dtype, numpy.dtype) or dtype.hasobject or dtype.itemsize < 1:
        raise Rejected("a numpy array of objects, or of items of no size")
    if not _numpy_shape_fits(shape, dtype.itemsize, len(payload)):
        raise Rejected("numpy bytes do not match dtype and shape")
    try:
        return _numpy_decode(dtype, tuple(shape), payload)
    except (ValueError, TypeError, OverflowError, MemoryError) as exc:  # checked above; still
        raise Rejected(f"bad numpy array: {exc}") from None


def _numpy_shape_fits(shape: Any, itemsize: int, size: int) -> bool:
    """Whether ``shape`` is one numpy can make (at most 32 dimensions, each an int of
    0 or more, whose product fits its index type even past a zero) and its items
    fill exactly ``size`` bytes."""
    if type(shape) is not list or len(shape) > _NUMPY_MAX_DIMS:
        return False
    count = nonzero = 1
    for n in shape:
        if type(n) is not int or not 0 <= n <= sys.maxsize:
            return False
        count *= n
        nonzero *= n or 1
        if nonzero * itemsize > sys.maxsize:
            return False
    return count * itemsize == size
