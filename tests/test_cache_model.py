"""VolatileCache against a model, under random pressure and faults (hypothesis, sim).

The sim backend has little simulated memory, so slabs and re-pins purge each
other's volatile pages; faults make vrange calls stop short or fail with
ENOMEM. Whatever happens, a value returned is the value last stored for its
key or the regenerated one, an operation that fails changes nothing, and the
sizes add up.
"""

from __future__ import annotations

import errno

import hypothesis.strategies as st
from hypothesis import event, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from volcache import VolatileCache
from volcache.backends import get_backend

PS = 4096
KEYS = st.sampled_from([f"k{i}" for i in range(8)])
VALUES = st.one_of(
    st.binary(max_size=200),
    st.integers(1, 3 * PS).map(lambda n: bytes([n % 251]) * n),
)


def regenerated(key: str) -> bytes:
    return f"regenerated {key}".encode() * 50


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CacheMachine(RuleBasedStateMachine):
    """Operations on a cache and a dict; the cache may lose values, never change them."""

    regenerates = True

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.backend = get_backend("sim", memory=48 * PS, seed=1)
        self.cache = VolatileCache(
            maxsize=6 * PS,
            getsizeof=len,
            backend=self.backend,
            regenerate=regenerated if self.regenerates else None,
            hot_bytes=3 * PS,
            hot_seconds=10,
            slab_bytes=8 * PS,
            mark_batch=2,
            clock=self.clock,
        )
        self.model: dict[str, bytes] = {}
        self.failures = 0

    def teardown(self) -> None:
        info = self.cache.info()
        event(f"purged: {min(info.purged, 3)}+" if info.purged else "purged: none")
        event("a fault made an operation fail" if self.failures else "no operation failed")
        event("regenerated" if info.regenerated else "nothing regenerated")
        event("evicted" if info.evictions else "nothing evicted")
        self.cache.close()
        self.backend.close()

    def attempt(self, operation):
        """Run an operation that an injected fault or full memory may make fail."""
        try:
            return operation()
        except (OSError, MemoryError):
            self.failures += 1
            return None

    def check_value(self, key: str, value: bytes) -> None:
        assert value == self.model.get(key) or (self.regenerates and value == regenerated(key)), (
            key,
            value[:20],
        )
        self.model[key] = value

    @rule(key=KEYS, value=VALUES)
    def store(self, key, value):
        before = dict(self.model)
        try:
            self.cache[key] = value
        except (OSError, MemoryError):
            self.failures += 1
            assert self.model == before
            return
        self.model[key] = value

    @rule(key=KEYS)
    def get(self, key):
        try:
            value = self.cache[key]
        except KeyError:
            assert not self.regenerates
            self.model.pop(key, None)  # purged, or never stored
            assert key not in self.cache
        except (OSError, MemoryError):
            self.failures += 1
        else:
            self.check_value(key, value)

    @rule(key=KEYS)
    def get_with_default(self, key):
        value = self.attempt(lambda: self.cache.get(key, b"<default>"))
        if value is None:
            return
        if value == b"<default>":
            assert key not in self.cache
            self.model.pop(key, None)
        else:
            self.check_value(key, value)

    @rule(key=KEYS)
    def pin(self, key):
        def read():
            with self.cache.pin(key) as view:
                return bytes(view)

        try:
            value = read()
        except KeyError:
            self.model.pop(key, None)
        except (OSError, MemoryError):
            self.failures += 1
        else:
            self.check_value(key, value)

    @rule(key=KEYS)
    def delete(self, key):
        if key in self.cache:
            del self.cache[key]
        self.model.pop(key, None)

    @rule(pages=st.integers(1, 16))
    def reclaim(self, pages):
        self.backend.reclaim(pages * PS)

    @rule()
    def volatilize(self):
        self.attempt(self.cache.volatilize)

    @rule(seconds=st.floats(0, 30))
    def time_passes(self, seconds):
        self.clock.now += seconds
        self.attempt(self.cache.maintain)

    @precondition(lambda self: self.backend.stats()["faults_injected"] < 40)
    @rule(after=st.integers(0, 3), code=st.sampled_from([errno.ENOMEM, errno.EAGAIN]))
    def fault(self, after, code):
        self.backend.inject_fault(after=after * PS, errno=code)

    @precondition(lambda self: self.backend.stats()["faults_injected"] < 40)
    @rule(after=st.integers(1, 3))
    def short_then_fail(self, after):
        """A call that stops short, then one that fails: the re-pin of finding 2."""
        self.backend.inject_fault(after=after * PS)
        self.backend.inject_fault(after=0)

    @invariant()
    def sizes_add_up(self):
        cache = self.cache
        for _ in range(64):  # iteration re-pins pages to read keys back: queued faults fail it
            try:
                keys = list(cache)
                break
            except (OSError, MemoryError):
                self.failures += 1
        else:
            raise AssertionError("iteration failed with no fault left to inject")
        assert set(keys) <= set(self.model) | set(keys) and len(keys) == len(cache)
        for key in set(self.model) - set(keys):
            del self.model[key]  # evicted past maxsize, or purged without regenerate
        entries = cache._entries
        live = list(entries.records.listed_ids()) + [e.rid for e in entries.hot.values()]
        info = cache.info()
        assert len(live) == len(set(live)) == len(cache) == entries.records.count
        assert info.currsize == sum(entries.sizes[rid] for rid in live) <= cache.maxsize
        assert info.stored_bytes == sum(entries.store.length(rid) for rid in live)
        assert info.pinned_entries == 0
        assert info.hot_bytes <= 3 * PS
        stats = self.backend.stats()
        assert stats["volatile_bytes"] + stats["pinned_bytes"] == stats["allocated_bytes"]


class CacheWithoutRegenerate(CacheMachine):
    regenerates = False


TestCacheModel = CacheMachine.TestCase
TestCacheModel.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestCacheModelWithoutRegenerate = CacheWithoutRegenerate.TestCase
TestCacheModelWithoutRegenerate.settings = settings(
    max_examples=100, stateful_step_count=60, deadline=None
)
