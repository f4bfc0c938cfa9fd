"""Pins: zero-copy views of cached bytes that stay valid inside a with-block."""

from __future__ import annotations

import warnings
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cache import VolatileCache, _Entry


class Pin:
    """``with cache.pin(key) as view:``: a read-only view of the stored bytes.

    While the block runs the entry's pages are non-volatile and its memory is
    not freed, even if the key is deleted or evicted meanwhile. At the end
    the view is released: using it afterwards raises ``ValueError``. If
    something still holds a buffer made from the view (a numpy array, say),
    the entry stays pinned until that is gone, with a ``ResourceWarning``.
    """

    __slots__ = ("_cache", "_entry", "_key", "_views")

    def __init__(self, cache: VolatileCache, key: Hashable) -> None:
        self._cache = cache
        self._key = key
        self._entry: _Entry | None = None
        self._views: tuple[Any, ...] | None = None  # the user's view first

    def __enter__(self) -> memoryview:
        if self._views is not None:
            raise RuntimeError("this pin is already held; call cache.pin(key) again to nest")
        cache = self._cache
        while True:
            pinned = cache._pin(self._key)
            if pinned is not None:
                self._entry, self._views = pinned
                return self._views[0]
            if not cache._can_regenerate():
                raise KeyError(self._key)
            cache._regenerate_key(self._key)  # stores the value; then pin what was stored

    def __exit__(self, *exc_info: object) -> None:
        if self._views is not None and not self._try_finish():
            warnings.warn(
                f"a buffer made from the pinned view of {self._key!r} outlived its "
                "with-block; the entry stays pinned until it is gone",
                ResourceWarning,
                stacklevel=2,
            )
            self._cache._linger(self)

    def _try_finish(self) -> bool:
        """Release the views and unpin; False if a buffer made from them is still alive."""
        try:
            for view in self._views:  # releasing twice is harmless: retries start over
                view.release()
        except BufferError:
            return False
        self._cache._unpin(self._entry)
        self._views = None
        self._entry = None
        return True
