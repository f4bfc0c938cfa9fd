"""The workload of the pressure scenario: Zipf-popular keys, values that cost CPU to make.

Each value is the zlib-compressed form of deterministic data (about 20 ms of
CPU per MiB here), followed by a keyed BLAKE2 tag, so that a value returned
by any contestant can be checked for a wrong byte, or a wrong key, cheaply.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

_NIBBLES = bytes(range(16)) * 16  # translate table: keep the low four bits
_TAG = 16


@dataclass(frozen=True)
class Workload:
    """Keys, their value sizes and their popularity.

    Attributes:
        keys: how many distinct keys.
        min_size, max_size: value sizes, log-uniformly between them.
        zipf: the Zipf exponent of key popularity (larger: a smaller hot set).
        seed: everything derives from it.
    """

    keys: int
    min_size: int = 64 << 10
    max_size: int = 1 << 20
    zipf: float = 1.1
    seed: int = 0

    @classmethod
    def for_memory(cls, working_set: int, **options: Any) -> Workload:
        """Enough keys for a working set of ``working_set`` bytes."""
        low = options.get("min_size", cls.min_size)
        high = options.get("max_size", cls.max_size)
        mean = (high - low) / math.log(high / low)  # of a log-uniform size
        return cls(keys=max(16, round(working_set / mean)), **options)

    def size(self, key: int) -> int:
        """The target size of a key's value."""
        fraction = random.Random(f"{self.seed}/size/{key}").random()
        return int(self.min_size * (self.max_size / self.min_size) ** fraction)

    def working_set(self) -> int:
        """The bytes of all values together (targets)."""
        return sum(self.size(k) for k in range(self.keys))

    def by_popularity(self) -> list[int]:
        """Every key, the most popular first (popularity is apart from size)."""
        ranks = list(range(self.keys))
        random.Random(f"{self.seed}/ranks").shuffle(ranks)
        return ranks

    def stream(self, seed: int | None = None) -> Iterator[int]:
        """Keys in Zipf order of popularity, endlessly; the most popular is random."""
        rng = random.Random(self.seed if seed is None else seed)
        ranks = self.by_popularity()
        weights = [1 / (rank + 1) ** self.zipf for rank in range(self.keys)]
        cumulative = list(itertools.accumulate(weights))
        total = cumulative[-1]
        while True:
            yield ranks[bisect.bisect_left(cumulative, rng.random() * total)]


def serve(
    lookup: Callable[[int], bytes], keys: Iterator[int], start: float, duration: float
) -> tuple[int, int, float]:
    """A worker's clock: from the wall-clock ``start``, ``lookup`` of each key of
    ``keys`` for ``duration`` seconds, every value checked; (lookups, wrong, seconds)."""
    time.sleep(max(0.0, start - time.time()))
    ops = wrong = 0
    began = time.perf_counter()
    while time.perf_counter() - began < duration:
        key = next(keys)
        wrong += not check_value(key, lookup(key))
        ops += 1
    return ops, wrong, time.perf_counter() - began


def make_value(workload: Workload, key: int) -> bytes:
    """A key's value: deterministic, and costly enough that caching it pays."""
    source = random.Random(f"{workload.seed}/value/{key}").randbytes(int(workload.size(key) * 1.7))
    body = zlib.compress(source.translate(_NIBBLES), 1)
    return body + _tag(key, body)


def check_value(key: int, value: bytes | memoryview) -> bool:
    """True if ``value`` is exactly a value made for ``key``."""
    body = memoryview(value)[:-_TAG]
    return bytes(memoryview(value)[-_TAG:]) == _tag(key, body)


def _tag(key: int, body: bytes | memoryview) -> bytes:
    return hashlib.blake2b(body, digest_size=_TAG, key=key.to_bytes(8, "little")).digest()
