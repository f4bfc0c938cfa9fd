"""Pins: zero-copy views of cached bytes that stay valid inside a with-block."""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable, Hashable
from typing import Any

#: Pins the entry of a key: (a handle for ``release``, the views, the user's first), or KeyError.
Acquire = Callable[[Hashable], tuple[Any, tuple[Any, ...]]]


def pin_views(base: memoryview) -> tuple[Any, ...]:
    """The views a pin hands out and releases: the user's read-only view first.

    The PickleBuffer between the user's view and ours makes every buffer
    derived from the user's view (a slice, a numpy array) an export of ours:
    a pin can tell when one outlives it.
    """
    inner = base.toreadonly()
    shield = pickle.PickleBuffer(inner)
    return memoryview(shield), shield, inner, base


class Pin:
    """``with cache.pin(key) as view:``: a read-only view of the stored bytes.

    While the block runs the entry's pages are non-volatile and its memory is
    not freed, even if the key is deleted or evicted meanwhile. At the end
    the view is released: using it afterwards raises ``ValueError``. If
    something still holds a buffer made from the view (a numpy array, say),
    the entry stays pinned until that is gone, with a ``ResourceWarning``.
    """

    __slots__ = ("_acquire", "_handle", "_key", "_linger", "_release", "_views")

    def __init__(
        self,
        key: Hashable,
        acquire: Acquire,
        release: Callable[[Any], None],
        linger: Callable[[Pin], None],
    ) -> None:
        self._key = key
        self._acquire = acquire
        self._release = release  # unpins a handle
        self._linger = linger  # keeps a pin whose views are still in use, to retry later
        self._handle: Any = None
        self._views: tuple[Any, ...] | None = None  # the user's view first

    def __enter__(self) -> memoryview:
        if self._views is not None:
            raise RuntimeError("this pin is already held; call cache.pin(key) again to nest")
        self._handle, self._views = self._acquire(self._key)
        return self._views[0]

    def __exit__(self, *exc_info: object) -> None:
        if self._views is not None and not self._try_finish():
            warnings.warn(
                f"a buffer made from the pinned view of {self._key!r} outlived its "
                "with-block; the entry stays pinned until it is gone",
                ResourceWarning,
                stacklevel=2,
            )
            self._linger(self)

    def _try_finish(self) -> bool:
        """Release the views and unpin; False if a buffer made from them is still alive."""
        try:
            for view in self._views or ():  # releasing twice is harmless: retries start over
                view.release()
        except BufferError:
            return False
        self._release(self._handle)
        self._views = None
        self._handle = None
        return True
