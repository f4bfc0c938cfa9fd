"""The store's decoders: a codec's per-value decoder comes back as it was made."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from volcache import Codec, VolatileCache


def scaled(factor: Any, data: memoryview) -> Any:
    return int.from_bytes(data, "little") * factor


class ScaledCodec(Codec):
    """Values (number, factor): the number's bytes, decoded as number * factor."""

    def encode(self, value: Any) -> memoryview:
        raise TypeError("see encode_with_decoder")

    def decode(self, data: memoryview) -> Any:
        raise TypeError("see encode_with_decoder")

    def encode_with_decoder(self, value: Any) -> tuple[memoryview, Any, bool]:
        number, factor = value
        return memoryview(number.to_bytes(8, "little")), partial(scaled, factor), False


def test_a_partial_decoders_arguments_keep_their_types(backend_name: str) -> None:
    """A numpy scalar argument is not written as its bytes (as marshal would)."""
    with VolatileCache(backend=backend_name, codec=ScaledCodec()) as cache:
        cache["np"] = (21, np.int64(2))
        cache["int"] = (21, 2)
        cache["list"] = (2, [1, 2])
        cache.volatilize()
        assert cache["np"] == 42 and type(cache["np"]) is np.int64
        assert cache["int"] == 42
        assert cache["list"] == [1, 2, 1, 2]
