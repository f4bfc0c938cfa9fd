"""User code that memoizes with every form: mypy --strict must pass it and see its types.

tests/test_typing.py runs mypy on it and compares each ``reveal_type`` with the
``# revealed:`` comment above it; it also runs it, so that what the types promise is what runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, reveal_type

import volcache
from volcache import CachedFunction, cached, lru_cache


@cached
def bare(x: int, scale: float = 1.0) -> float:
    return x * scale


@cached(maxsize=64, ttl=60)
def square(x: int) -> int:
    return x * x


@lru_cache
def word(n: int) -> str:
    return "w" * n


@lru_cache(maxsize=32, typed=True)
def halve(x: float) -> float:
    return x / 2


@cached(maxsize=16)
async def fetch(name: str) -> bytes:
    await asyncio.sleep(0)
    return name.encode()


@lru_cache(maxsize=None)
async def count(name: str) -> int:
    return len(name)


class Album:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @cached(maxsize=8)
    def thumb(self, size: int) -> bytes:
        return f"{self.prefix}{size}".encode()

    @lru_cache
    def title(self, n: int) -> str:
        return self.prefix * n

    @cached(per_instance=True)
    async def load(self, key: str) -> list[int]:
        return [len(self.prefix), len(key)]

    @classmethod
    @cached
    def named(cls, prefix: str) -> Album:
        return cls(prefix)

    @lru_cache(maxsize=4)
    @classmethod
    def blank(cls, n: int) -> str:
        return cls.__name__ * n


@cached
def positive(x: int) -> bool:
    return x > 0


def keep(func: CachedFunction[[int], int]) -> int:
    """A memoized function passed on, typed as one."""
    return func(3) + func.cache_info().hits


async def main() -> None:
    data: bytes = await fetch("a")
    again: bytes = await fetch("a")
    counted: int = await count("abc")
    loaded: list[int] = await Album("p").load("k")
    assert data == again == b"a" and counted == 3 and loaded == [1, 1]
    # revealed: bytes
    reveal_type(await fetch("b"))
    pending: Coroutine[Any, Any, list[int]] = Album("q").load("k")
    pending.close()


scaled: float = bare(2, scale=0.5)
squared: int = square(4)
words: str = word(3)
halved: float = halve(3.0)
album = Album("g")
thumb: bytes = album.thumb(64)
title: str = album.title(2)
asyncio.run(main())
kept: int = keep(square) + keep(positive)  # a bool result is an int result
named: Album = Album.named("n")
blanks: str = Album.blank(2) + album.blank(1)
assert named.prefix == Album.named("n").prefix == "n" and blanks == "AlbumAlbumAlbum"
assert Album.named.cache_invalidate("n") and Album.blank.cache_info().hits == 0

info: volcache.wrappers.CacheInfo = square.cache_info()
hits: int = info.hits
removed: bool = square.cache_invalidate(4)
bare.cache_invalidate(2, scale=0.5)
album.thumb.cache_invalidate(64)
fetch.cache_invalidate("a")
Album.thumb.cache_clear()
word.cache_clear()
album.title.cache_info()
settings: dict[str, object] = halve.cache_parameters()
original: int = square.__wrapped__(5)
assert (scaled, squared, words, halved, thumb, title) == (1.0, 16, "www", 1.5, b"g64", "gg")
assert kept == 9 + 0 + 1 + 0 and hits == 0 and removed and original == 25
assert square.cache is not None and settings["typed"] is True
used: int = word.cache_info().currsize  # as functools' fields are typed
limit: int | None = word.cache_info().maxsize
stored: int = square.cache.info().hits + len(album.thumb.cache)
unbound: bytes = album.thumb.__wrapped__(album, 8)
assert (used, limit, unbound) == (0, 128, b"g8") and stored >= 0

# revealed: volcache.wrappers.CachedFunction[[x: int, scale: float =], float]
reveal_type(bare)
# revealed: int
reveal_type(square(2))
# revealed: volcache.wrappers.CachedFunction[[n: int], str]
reveal_type(word)
# revealed: volcache.wrappers.BoundCachedMethod[[size: int], bytes]
reveal_type(album.thumb)
# revealed: volcache.wrappers.BoundCachedMethod[[prefix: str], tests.typed_user_code.Album]
reveal_type(Album.named)
# revealed: volcache.wrappers.BoundCachedMethod[[n: int], str]
reveal_type(album.blank)
# revealed: def (x: int) -> bool
reveal_type(square.cache_invalidate)
# revealed: def (size: int) -> bool
reveal_type(album.thumb.cache_invalidate)
# revealed: int
reveal_type(square.cache_info().currsize)
# revealed: tuple[int, int, int | None, int, fallback=volcache.wrappers.CacheInfo]
reveal_type(square.cache_info())
