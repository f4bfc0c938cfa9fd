"""VolatileCache: what the correctness review found (findings 7, 8, 10 and 11).

numpy subclasses keep what they add; a hit never returns the caller's own
mutable buffer (or a view the caller released); pop() and setdefault() are
atomic against a concurrent store; a slab the backend refuses to release
stays known to the cache.
"""

from __future__ import annotations

import pickle
import threading
import time

import pytest

from volcache import VolatileCache
from volcache.backends import get_backend
from volcache.backends.sim import SimBackend
from volcache.codecs import NumpyCodec


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_numpy_subclasses_come_back_as_themselves(make):
    """Finding 7: a masked array keeps its mask, a matrix stays a matrix."""
    numpy = pytest.importorskip("numpy")
    cache = make(hot_bytes=0)  # nothing hot: every read decodes the stored bytes
    masked = numpy.ma.masked_array([1, -999, 3], mask=[False, True, False])
    matrix = numpy.matrix([[1, 2], [3, 4]])
    cache["masked"], cache["matrix"] = masked, matrix
    got = cache["masked"]
    assert type(got) is numpy.ma.MaskedArray and got.sum() == 4 and got.mask.tolist() == [0, 1, 0]
    assert type(cache["matrix"]) is numpy.matrix
    assert (cache["matrix"] * cache["matrix"]).tolist() == [[7, 10], [15, 22]]
    with pytest.raises(TypeError, match="subclass MaskedArray"):
        NumpyCodec().encode(masked)


def test_a_hit_returns_the_stored_bytes_not_the_callers_buffer(make):
    """Finding 8: hot or idle, a hit is what was stored, whatever the caller did after."""
    cache = make()
    buffer = bytearray(b"original")
    with memoryview(buffer) as view:
        cache["view"] = view
    assert cache["view"] == b"original" and type(cache["view"]) is bytes  # not released
    cache["bytes"] = buffer
    buffer[:] = b"CHANGED!"
    assert cache["bytes"] == bytearray(b"original")  # hot
    cache.volatilize()
    assert cache["bytes"] == bytearray(b"original") and cache["view"] == b"original"


def test_pop_removes_only_the_value_it_returns(backend_name):
    """Finding 11: a store between pop's read and its removal is not deleted.

    A slow decode holds pop inside its lookup while a writer queues on the lock.
    """

    class SlowPickle:
        raw = False

        def encode(self, value):
            return pickle.dumps(value)

        def decode(self, data):
            time.sleep(0.002)
            return pickle.loads(data)

    cache = VolatileCache(backend=backend_name, codec=SlowPickle(), hot_bytes=0)
    lost = 0
    for round_ in range(150):
        cache["k"] = ("old", round_)
        got = []

        def popper(got=got):
            got.append(cache.pop("k", None))

        def setter(round_=round_):
            time.sleep(0.0005)
            cache["k"] = ("new", round_)

        threads = [threading.Thread(target=popper), threading.Thread(target=setter)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # Either order is right; both values gone is not.
        lost += got[0] == ("old", round_) and "k" not in cache
    cache.close()
    assert lost == 0


def test_setdefault_stores_only_where_no_value_is(make):
    cache = make(regenerate=lambda key: f"made {key}".encode())
    assert cache.setdefault("a", b"first") == b"first"
    assert cache.setdefault("a", b"second") == b"first"
    cache.volatilize()
    cache.backend.reclaim(1 << 40)
    assert cache.setdefault("a", b"third") == b"made a"  # purged: regenerated, not replaced
    assert cache["a"] == b"made a"


class _RefusingRelease(SimBackend):
    """A backend whose release fails once (a strict backend's report, an unregister error)."""

    refuse = 1

    def release(self, region):
        if self.refuse:
            self.refuse -= 1
            raise OSError(16, "release refused")
        super().release(region)


def test_a_slab_the_backend_refuses_to_release_stays_known():
    """Finding 10: the slab is forgotten only once the backend let it go."""
    backend = _RefusingRelease()
    ps = backend.page_size
    cache = VolatileCache(backend=backend, slab_bytes=4 * ps)
    cache["big"] = b"x" * (8 * ps)  # a region of its own
    regions = backend.stats()["regions"]
    with pytest.raises(OSError, match="refused"):
        del cache["big"]
    assert cache._entries.store.slabs.stats()["slabs"] == regions  # still the cache's
    cache["other"] = b"y" * (8 * ps)  # the slab is reused, or released now
    assert cache["other"] == b"y" * (8 * ps)
    cache.close()
    assert backend.stats()["regions"] == 0
    backend.close()


def test_a_failed_constructor_closes_the_backend_it_made(monkeypatch):
    """Finding 5: a backend made for a cache that is not made is closed at once."""
    made = []
    real = get_backend

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr("volcache.cache.get_backend", spy)
    with pytest.raises(ValueError, match="slab_bytes"):
        VolatileCache(backend="sim", slab_bytes=1)
    assert made and made[0].closed
