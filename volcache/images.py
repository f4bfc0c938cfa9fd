"""ThumbnailCache: decoded thumbnails in volatile memory, made again from their files.

Decoding an image costs far more than keeping its pixels, until memory runs
short: then the kernel takes the pixels and the next ``get`` decodes the file
again, with Pillow's fast paths (``draft`` decodes a JPEG at a fraction of its
size, ``reduce`` shrinks by whole factors first). Pillow comes with the
``images`` extra; importing volcache without it works.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from .cache import VolatileCache
from .codecs import Codec, Decoder, DefaultCodec
from .info import CacheInfo
from .tiers.base import Tier
from .tiers.bound import MISSING, BoundTier
from .tiers.envelope import Rejected

Image: Any = None  # PIL.Image, imported by the first ThumbnailCache (Pillow is optional)
UnidentifiedImageError: Any = None


def _import_pillow() -> None:
    global Image, UnidentifiedImageError
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ImportError("ThumbnailCache needs Pillow: pip install 'volcache[images]'") from None


_RETRIES = 3  # a file that keeps changing while we decode it


class ThumbnailError(ValueError):
    """A file that is not an image Pillow can decode."""


class _Changed(Exception):
    """The file changed between stat() and decoding: its key is stale."""


def _decode(mode: str, size: tuple[int, int], data: memoryview) -> Any:
    return Image.frombytes(mode, size, data)  # frombytes copies: the image owns its pixels


class _PixelCodec(Codec):
    """A thumbnail as its raw pixels, decoded with its mode and size."""

    raw = True

    def encode(self, value: Any) -> bytes:
        return value.tobytes()

    def decode(self, data: memoryview) -> Any:
        raise TypeError("thumbnails are decoded with their mode and size")

    def encode_with_decoder(self, value: Any) -> tuple[memoryview, Decoder, bool]:
        return memoryview(value.tobytes()), partial(_decode, value.mode, value.size), True


class ThumbnailCache:
    """Thumbnails of image files, kept in volatile memory.

    Args:
        size: the largest thumbnail (width, height); the aspect ratio is kept.
        backend: a backend name or instance, as for :class:`~volcache.VolatileCache`.
        reducing_gap: Pillow's ``reducing_gap`` (larger is sharper and slower).
        tier: a :class:`~volcache.tiers.Tier` shared with other processes: a
            thumbnail missing here is taken from it before decoding its file,
            and one decoded is written to it (as its raw pixels, mode and
            size: no secret needed). Processes share thumbnails of a file with
            the same path, size and modification time.
        namespace: the tier namespace (default: one per thumbnail size and
            ``reducing_gap``).
        cache_options: other :class:`~volcache.VolatileCache` arguments.

    Thumbnails are kept as ``RGBX`` (or ``RGBA`` for images with alpha, ``L``
    for grey ones): modes Pillow can wrap around pinned memory without a
    copy. A key follows its file: a file whose size or modification time
    changed is decoded again; a missing file raises ``FileNotFoundError``, an
    undecodable one :class:`ThumbnailError`, and neither caches anything.
    """

    def __init__(
        self,
        size: tuple[int, int] = (256, 256),
        *,
        backend: Any = "auto",
        reducing_gap: float | None = 2.0,
        tier: Tier | None = None,
        namespace: str | None = None,
        **cache_options: Any,
    ) -> None:
        if Image is None:
            _import_pillow()
        try:
            width, height = (int(n) for n in size)
        except (TypeError, ValueError):
            raise TypeError(f"size must be (width, height), got {size!r}") from None
        if width < 1 or height < 1:
            raise ValueError(f"size must be positive, got {size!r}")
        self.size = (width, height)
        self.reducing_gap = reducing_gap
        self._tier: BoundTier | None = None
        if tier is not None:
            namespace = namespace or getattr(tier, "namespace", None)
            default = f"volcache.ThumbnailCache.{width}x{height}.{reducing_gap}"
            parse = partial(_from_wire, limit=(width, height))
            self._tier = BoundTier(tier, namespace or default, DefaultCodec(), parse)
        self.cache = VolatileCache(
            backend=backend, regenerate=self._render, codec=_PixelCodec(), **cache_options
        )
        # path -> (key, mode, size) of its thumbnail: what pin() wraps the pixels
        # with, and how a changed file's old thumbnail is found. At most twice as
        # many records as the cache holds thumbnails (see _trim).
        self._current: dict[str, tuple[Any, str, tuple[int, int]]] = {}
        self._records = threading.Lock()

    def get(self, path: str | os.PathLike[str]) -> Any:
        """A thumbnail of the file at ``path``, as a PIL image the caller owns.

        Raises:
            FileNotFoundError: no such file.
            ThumbnailError: the file is not an image Pillow can decode.
        """
        image = self._lookup(path, lambda key: self.cache[key])
        return image.convert("RGB") if image.mode == "RGBX" else image.copy()

    @contextmanager
    def pin(self, path: str | os.PathLike[str]) -> Iterator[Any]:
        """``with thumbnails.pin(path) as image:``: a read-only image over pinned memory.

        No pixel is copied. The image is valid inside the block only: it is
        closed at the end (using it then raises ``ValueError``); copy what you
        want to keep (``image.copy()``).
        """
        for _ in range(_RETRIES):
            key, mode, size = self._lookup(path, self._rendered)
            with self.cache.pin(key) as view:
                if len(view) != len(mode) * size[0] * size[1]:  # bytes per pixel: L 1, RGBX 4
                    continue  # a newer version took the key meanwhile: look again
                image = Image.frombuffer(mode, size, view, "raw", mode, 0, 1)
                try:
                    yield image
                finally:
                    # Drops the pixels' buffer: using the image after the block
                    # raises "Operation on closed image", as a released view would.
                    image.close()
                return
        raise ThumbnailError(f"{path}: the file keeps changing")

    def info(self) -> CacheInfo:
        """The cache's counters and sizes (see :class:`~volcache.CacheInfo`), with
        the tier's counters if it has one."""
        info = self.cache.info()
        if self._tier is None:
            return info
        return CacheInfo(**{**info.as_dict(), **self._tier.stats()})

    def close(self) -> None:
        """Release all memory."""
        self.cache.close()
        self._current.clear()

    def __enter__(self) -> ThumbnailCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.cache)

    # -- internals -----------------------------------------------------------------------

    def _key(self, path: str | os.PathLike[str]) -> tuple[str, int, int, int]:
        real = os.path.realpath(path)
        stat = os.stat(real)
        return real, stat.st_size, stat.st_mtime_ns, stat.st_ino

    def _lookup(self, path: str | os.PathLike[str], find: Any) -> Any:
        for _ in range(_RETRIES):
            try:
                key = self._key(path)
            except FileNotFoundError:
                self._forget(os.path.realpath(path))  # its thumbnail goes with it
                raise
            old = self._current.get(key[0])
            if old is not None and old[0] != key:
                self.cache.pop(old[0], None)  # the file changed: drop the old thumbnail
            try:
                found = find(key)
            except _Changed:
                continue
            if len(self._current) > 2 * len(self.cache):
                self._trim()
            return found
        raise ThumbnailError(f"{path}: the file keeps changing")

    def _rendered(self, key: tuple[str, int, int, int]) -> tuple[Any, str, tuple[int, int]]:
        current = self._current.get(key[0])
        if current is None or current[0] != key or key not in self.cache:
            # Rendered if absent (which records it); else its record was trimmed
            # while another thread stored it: the image says its mode and size.
            image = self.cache[key]
            current = (key, image.mode, image.size)
            self._record(key[0], current)
        return current

    def _record(self, path: str, record: tuple[Any, str, tuple[int, int]]) -> None:
        with self._records:
            self._current[path] = record

    def _forget(self, path: str) -> None:
        """A file that is gone: its record and its thumbnail go."""
        with self._records:
            record = self._current.pop(path, None)
        if record is not None:
            self.cache.pop(record[0], None)

    def _trim(self) -> None:
        """Drop the records of thumbnails the cache no longer holds (evicted, purged,
        deleted). Done past twice as many records as thumbnails, so that the
        records stay bounded by what the cache holds, and a trim's cost is spread
        over the renders that made them."""
        for path, record in list(self._current.items()):
            if record[0] not in self.cache:
                with self._records:
                    if self._current.get(path) is record:
                        del self._current[path]

    def _render(self, key: tuple[str, int, int, int]) -> Any:
        path = key[0]
        tier = self._tier
        if tier is None:
            thumbnail = self._decode_file(key)
        else:
            # Not the inode: it names the file on this machine only.
            named = tier.key_of(key[:3])
            thumbnail, generation = tier.lookup(named)  # parsed by _from_wire
            if thumbnail is MISSING:
                with tier.computing(named, generation) as thumbnail:
                    if thumbnail is MISSING:
                        thumbnail = self._decode_file(key)
                        tier.store_value(named, _to_wire(thumbnail))
        self._record(path, (key, thumbnail.mode, thumbnail.size))
        return thumbnail

    def _decode_file(self, key: tuple[str, int, int, int]) -> Any:
        path, size, mtime, inode = key
        try:
            with open(path, "rb") as file, Image.open(file) as image:
                stat = os.fstat(file.fileno())
                if (stat.st_size, stat.st_mtime_ns, stat.st_ino) != (size, mtime, inode):
                    raise _Changed(path)
                image.thumbnail(self.size, reducing_gap=self.reducing_gap)
                thumbnail = _storable(image)
        except (UnidentifiedImageError, SyntaxError, ValueError) as exc:
            raise ThumbnailError(f"{path}: not an image Pillow can decode ({exc})") from exc
        except OSError as exc:
            if isinstance(exc, FileNotFoundError | PermissionError):
                raise
            raise ThumbnailError(f"{path}: cannot decode it ({exc})") from exc
        return thumbnail


_WIRE = struct.Struct("<4s4sII")  # magic, mode, width, height; the pixels follow
_WIRE_MODES = {b"RGBX": ("RGBX", 4), b"RGBA": ("RGBA", 4), b"L\0\0\0": ("L", 1)}


def _to_wire(thumbnail: Any) -> bytes:
    """A thumbnail as bytes for the tier: a header, then its raw pixels."""
    mode = thumbnail.mode.encode().ljust(4, b"\0")
    return _WIRE.pack(b"VCTH", mode, *thumbnail.size) + thumbnail.tobytes()


def _from_wire(data: Any, limit: tuple[int, int]) -> Any:
    """The thumbnail in bytes from the tier: one of a known mode, at least one pixel
    and at most ``limit`` wide and high, whose bytes it fills exactly.

    Raises:
        Rejected: anything else (any writer of the server may have put it there).
    """
    if not isinstance(data, bytes) or len(data) < _WIRE.size:
        raise Rejected("not a thumbnail")
    magic, mode, width, height = _WIRE.unpack_from(data)
    known = _WIRE_MODES.get(mode)
    if magic != b"VCTH" or known is None:
        raise Rejected("not a thumbnail")
    if not (1 <= width <= limit[0] and 1 <= height <= limit[1]):
        raise Rejected(f"a thumbnail of {width}x{height} pixels, not within {limit}")
    if len(data) != _WIRE.size + width * height * known[1]:
        raise Rejected("thumbnail bytes do not match its mode and size")
    try:
        return Image.frombytes(known[0], (width, height), memoryview(data)[_WIRE.size :])
    except (ValueError, OverflowError, MemoryError) as exc:  # checked above; still
        raise Rejected(f"bad thumbnail: {exc}") from None


def _storable(image: Any) -> Any:
    """The image in a mode Pillow can wrap around a buffer without a copy."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        return image.convert("RGBA")
    if image.mode in ("L", "1", "I", "I;16", "F"):
        return image.convert("L")
    return image.convert("RGB").convert("RGBX")
