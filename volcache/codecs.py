"""Codecs: how values become bytes in volatile memory, and come back.

Buffers (``bytes``, ``bytearray``, ``memoryview``, ``array.array``, numpy
arrays) are stored as their raw bytes, without pickling, so that they can be
pinned and read in place; other objects are pickled. A decoded value never
aliases volatile memory: the memory may be purged once the entry goes idle.
"""

from __future__ import annotations

import abc
import array
import pickle
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

#: Turns the stored bytes back into a value; must copy what it keeps.
Decoder = Callable[[memoryview], Any]


class Codec(abc.ABC):
    """Turns values into bytes and back. Subclass it for a codec of your own.

    ``decode`` receives a read-only ``memoryview`` of volatile memory that is
    released when it returns: it must copy whatever it keeps.
    """

    #: True if the stored bytes are the value's own bytes (``pin`` gives them).
    raw: bool = False

    @abc.abstractmethod
    def encode(self, value: Any) -> bytes | bytearray | memoryview:
        """The bytes to store for ``value``.

        Raises:
            TypeError: if the codec cannot store such a value.
        """

    @abc.abstractmethod
    def decode(self, data: memoryview) -> Any:
        """The value stored as ``data``."""

    def encode_with_decoder(self, value: Any) -> tuple[memoryview, Decoder, bool]:
        """(bytes, how to decode them, whether they are the value's raw bytes).

        The decoder of a codec of yours is guarded: a value that keeps a view
        of the memory it was given is refused with a ``TypeError``.
        """
        guarded = self.__dict__.get("_guarded_decode")
        if guarded is None:
            guarded = self.__dict__["_guarded_decode"] = partial(_guarded_decode, self.decode)
        return _as_bytes(self.encode(value)), guarded, self.raw


def _guarded_decode(decode: Decoder, data: memoryview) -> Any:
    # Through a PickleBuffer every buffer made from the view given to decode
    # is an export of ``data``: if one is still alive afterwards, the value
    # aliases memory that may be purged.
    shield = pickle.PickleBuffer(data)
    given = memoryview(shield)
    value = decode(given)
    given.release()
    shield.release()
    try:
        data.release()
    except BufferError:
        leaked = True
    else:
        leaked = value is given
    if leaked:
        raise TypeError(
            f"{getattr(decode, '__qualname__', decode)} kept a view of volatile memory in the "
            "value it returned: a codec's decode() must copy the bytes it is given"
        )
    return value


def _as_bytes(data: Any) -> memoryview:
    """A flat, C-contiguous byte view of a buffer."""
    view = memoryview(data)
    if not view.c_contiguous:
        return memoryview(view.tobytes())
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


class PickleCodec(Codec):
    """Any picklable object, with pickle ``protocol``."""

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        self.protocol = protocol

    def encode(self, value: Any) -> bytes:
        """Pickle the value; a value pickle refuses is a ``TypeError``."""
        try:
            return pickle.dumps(value, self.protocol)
        except Exception as exc:
            raise TypeError(f"cannot pickle {type(value).__name__}: {exc}") from exc

    def decode(self, data: memoryview) -> Any:
        """Unpickle the value."""
        return pickle.loads(data)


def _numpy() -> Any:
    """numpy if it can be imported (it is optional), else None."""
    try:
        import numpy
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    return numpy


def _numpy_decode(dtype: Any, shape: tuple[int, ...], data: memoryview) -> Any:
    return _numpy().frombuffer(data, dtype=dtype).reshape(shape).copy()


class NumpyCodec(Codec):
    """numpy arrays as their raw bytes, keeping dtype and shape.

    Arrays of objects are refused (their bytes are pointers); so are values
    that are not arrays.
    """

    raw = True

    def __init__(self) -> None:
        if _numpy() is None:
            raise TypeError("NumpyCodec needs numpy: pip install numpy")

    def encode(self, value: Any) -> memoryview:
        """The array's bytes (C order)."""
        return self.encode_with_decoder(value)[0]

    def decode(self, data: memoryview) -> Any:
        """Not used: each array is decoded with its own dtype and shape."""
        raise TypeError("NumpyCodec decodes through encode_with_decoder()")

    def encode_with_decoder(self, value: Any) -> tuple[memoryview, Decoder, bool]:
        """The array's bytes and a decoder that restores dtype and shape."""
        numpy = _numpy()
        if numpy is None or not isinstance(value, numpy.ndarray):
            raise TypeError(f"NumpyCodec stores numpy arrays, not {type(value).__name__}")
        if type(value) is not numpy.ndarray:
            # Raw data would drop what the subclass adds (a mask, matrix semantics).
            raise TypeError(
                f"NumpyCodec stores plain numpy arrays, not the subclass {type(value).__name__}: "
                "use the default codec, which pickles it whole"
            )
        if value.dtype.hasobject:
            raise TypeError("NumpyCodec cannot store arrays of Python objects")
        flat = numpy.ascontiguousarray(value)
        return (
            _as_bytes(flat.reshape(-1).view(numpy.uint8)),
            partial(_numpy_decode, value.dtype, value.shape),
            True,
        )


def _array_decode(typecode: str, data: memoryview) -> array.array:
    result = array.array(typecode)
    result.frombytes(data)
    return result


class DefaultCodec(Codec):
    """Buffers as raw bytes (decoded to their own type), everything else pickled.

    ``bytes`` and ``bytearray`` come back as themselves, a ``memoryview`` as
    ``bytes``, an ``array.array`` with its typecode, a numpy array with its
    dtype and shape; other objects go through :class:`PickleCodec`.
    """

    raw = True

    def __init__(self) -> None:
        self._pickle = PickleCodec()
        self._numpy: NumpyCodec | None = None

    def encode(self, value: Any) -> memoryview:
        """The bytes to store for ``value``."""
        return self.encode_with_decoder(value)[0]

    def decode(self, data: memoryview) -> Any:
        """Not used: each value is decoded by the decoder chosen when it was stored."""
        raise TypeError("DefaultCodec decodes through encode_with_decoder()")

    def encode_with_decoder(self, value: Any) -> tuple[memoryview, Decoder, bool]:
        """Raw bytes for buffers, a pickle for the rest."""
        kind = type(value)
        if kind is bytes:
            return memoryview(value), bytes, True
        if kind is bytearray:
            return memoryview(value), bytearray, True
        if kind is memoryview:
            return _as_bytes(value), bytes, True
        if kind is array.array:
            return _as_bytes(value), partial(_array_decode, value.typecode), True
        # Whoever holds a numpy array has imported numpy: no import for the others.
        numpy = sys.modules.get("numpy")
        # Exactly ndarray: a subclass (a masked array, a matrix) is pickled whole.
        if numpy is not None and kind is numpy.ndarray and not value.dtype.hasobject:
            if self._numpy is None:
                self._numpy = NumpyCodec()
            return self._numpy.encode_with_decoder(value)
        return memoryview(self._pickle.encode(value)), self._pickle.decode, False


#: Tags of the parametrized decoders below, whose parameters are stored with the bytes.
ARRAY_TAG, NUMPY_TAG = 2, 3


def decoder_spec(decode: Decoder) -> tuple[int, bytes] | None:
    """(tag, parameters as bytes) for a decoder made per value here, else None.

    An array's typecode, a numpy array's dtype and shape: stored beside the
    bytes, so that an idle entry needs no decoder object of its own.
    """
    if type(decode) is partial:
        if decode.func is _array_decode:
            return ARRAY_TAG, decode.args[0].encode()
        if decode.func is _numpy_decode:
            return NUMPY_TAG, pickle.dumps(decode.args, pickle.HIGHEST_PROTOCOL)
    return None


def decoder_from_spec(tag: int, spec: bytes | memoryview) -> Decoder:
    """The decoder that :func:`decoder_spec` described."""
    if tag == ARRAY_TAG:
        return partial(_array_decode, bytes(spec).decode())
    return partial(_numpy_decode, *pickle.loads(spec))


def check_codec(codec: Any) -> Codec:
    """The codec to use for the ``codec`` argument, or a ``TypeError`` naming it."""
    if codec is None:
        return DefaultCodec()
    if isinstance(codec, Codec):
        return codec
    if callable(getattr(codec, "encode", None)) and callable(getattr(codec, "decode", None)):
        return _DuckCodec(codec)
    raise TypeError(
        f"codec must be a volcache.Codec or have encode(value) and decode(data) methods, "
        f"got {codec!r}"
    )


class _DuckCodec(Codec):
    """A codec object that is not a subclass of Codec but has its two methods."""

    def __init__(self, codec: Any) -> None:
        self.codec = codec
        self.raw = bool(getattr(codec, "raw", False))

    def encode(self, value: Any) -> Any:
        return self.codec.encode(value)

    def decode(self, data: memoryview) -> Any:
        return self.codec.decode(data)
