"""The store of a new key, and the read of an idle entry, in one C call
(``core/quick.c``): the same cache as the Python way's, step for step; the keys'
bytes are marshal's; whatever it cannot take goes the Python way unchanged."""

from __future__ import annotations

import marshal
import math
import mmap
import os
import pickle
import subprocess
import sys

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from volcache import VolatileCache, coremodule
from volcache.backends import clib
from volcache.backends.kernel import KernelBackend
from volcache.backends.pages import VOL

from .conftest import held_by_another_thread, need_backend, require

PS = os.sysconf("SC_PAGE_SIZE")

core = coremodule.core


def needs_core() -> None:
    require("kernel", None if core is not None else coremodule.WHY)


# -- the keys' bytes ---------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.integers(-(2**33), 2**33), st.floats(allow_nan=True), st.text(max_size=30),
    st.binary(max_size=30), st.sampled_from(["\ud800", "a\udfffb"]),
)  # fmt: skip
keys = st.recursive(
    scalars, lambda inner: st.tuples(inner) | st.lists(inner).map(tuple), max_leaves=12
)


def written_in_c(key: object, depth: int = 0) -> bool:
    """Whether the C core writes this key itself (else Python's key_bytes does)."""
    kind = type(key)
    if key is None or kind is bool or kind is bytes:
        return True
    if kind is int:
        return -(2**63) <= key < 2**63  # type: ignore[operator]
    if kind is float:
        return not math.isnan(key)  # type: ignore[arg-type]
    if kind is str:
        try:
            key.encode()  # type: ignore[attr-defined]
        except UnicodeEncodeError:
            return False
        return True
    if kind is tuple:
        return depth < 8 and all(written_in_c(part, depth + 1) for part in key)  # type: ignore[attr-defined]
    return False


@settings(max_examples=400, deadline=None)
@given(keys)
def test_the_c_cores_key_bytes_are_marshal_format_2_or_left_to_python(key):
    needs_core()
    written = core.key_bytes(key)
    if written_in_c(key) and len(marshal.dumps(key, 2)) <= 256:
        assert written == marshal.dumps(key, 2)
    else:
        assert written is None


# -- the C store and the Python way, side by side -------------------------------------------

small_keys = st.one_of(
    st.integers(-3, 40), st.sampled_from([1.0, True, 0.0, -0.0, "a", "b", b"a", (1, "a"), None]),
    st.text(max_size=3), st.tuples(st.integers(0, 3), st.text(max_size=2)),
)  # fmt: skip
values = st.one_of(
    st.binary(max_size=300), st.binary(min_size=3000, max_size=9000), st.integers(),
    st.lists(st.integers(), max_size=5), st.builds(bytearray, st.binary(max_size=50)),
    st.just([lambda: None]),  # pickle refuses it: kept as an object, the Python way
)  # fmt: skip


def same(value: object) -> object:
    """A value as compared across the two caches (a kept lambda is not equal to another)."""
    if type(value) is list and value and callable(value[0]):
        return "a list holding a function"
    return value


class QuickAsPython(RuleBasedStateMachine):
    """Two caches given the same calls: one stores new keys in one C call, the other
    takes the Python way for everything (the reference). The same entries, order,
    counts, clock, records and books, whatever the keys, values, reads (hot
    entries), deletions, overwrites and evictions."""

    @initialize(
        maxsize=st.sampled_from([1, 3, 8, math.inf]), window=st.sampled_from([1, None]),
        budget=st.sampled_from([None, 3000, 20000]),
    )  # fmt: skip
    def make(self, maxsize: float, window: float | None, budget: int | None) -> None:
        needs_core()
        self.now = 0.0  # one clock for both: what was read "lately" is the same
        self.caches = [
            VolatileCache(
                maxsize, backend=backend, slab_bytes=16 * 4096, mark_batch=4,
                clock=lambda: self.now, hot_seconds=window, memory_budget=budget,
            )
            for backend in self.new_backends()
        ]  # fmt: skip
        assert self.caches[0]._quick is not None
        self.caches[1]._quick = None

    def new_backends(self) -> list:
        """The backends of the C cache and of the reference."""
        return ["sim", "sim"]

    def both(self, call, *args):
        answers = []
        for cache in self.caches:
            try:
                answers.append(("ok", same(call(cache, *args))))
            except Exception as exc:  # the same error from both is the check
                answers.append(("raised", type(exc).__name__))
        assert answers[0] == answers[1], answers
        return answers[0]

    @rule(key=small_keys, value=values)
    def store(self, key, value):
        self.both(lambda cache, k, v: cache.__setitem__(k, v), key, value)

    @rule(key=small_keys)
    def read(self, key):
        self.both(lambda cache, k: cache.get(k), key)

    @rule(key=small_keys)
    def subscript(self, key):
        """An idle entry is read in C (the first read in a while), a hot one too."""
        self.both(lambda cache, k: cache[k], key)

    @rule(seconds=st.sampled_from([0.5, 2]))
    def time_passes(self, seconds):
        self.now += seconds

    @rule(key=small_keys)
    def delete(self, key):
        self.both(lambda cache, k: cache.pop(k, None), key)

    @rule()
    def idle_work(self):
        self.both(lambda cache: cache._maintain(flush=True))

    @invariant()
    def same_caches(self):
        a, b = self.caches
        assert list(a._entries.records.listed_ids()) == list(b._entries.records.listed_ids())
        assert len(a) == len(b) and a.currsize == b.currsize
        assert a._counts == b._counts and a._stores == b._stores
        assert a._uses.taken == b._uses.taken
        assert a._uses.locked == b._uses.locked
        assert a._entries.seen == b._entries.seen
        for name in ("count", "currsize", "hot_nbytes", "object_nbytes"):
            assert getattr(a._entries, name) == getattr(b._entries, name), name
        stores = [cache._entries.store for cache in self.caches]
        assert stores[0].active_nbytes == stores[1].active_nbytes
        books = [store.slabs.books for store in stores]
        for name in ("npending", "stored_bytes", "capacity_bytes", "count", "total_pages"):
            assert getattr(books[0], name) == getattr(books[1], name), name
        tables = [store.records for store in stores]
        assert tables[0].size == tables[1].size
        for rid in range(tables[0].size):
            for column in ("loc", "flags", "hash", "used"):
                assert getattr(tables[0], column)[rid] == getattr(tables[1], column)[rid]

    def teardown(self) -> None:
        for cache in getattr(self, "caches", []):
            cache.close()


QuickAsPython.TestCase.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)
TestQuickAsPython = QuickAsPython.TestCase


class PythonPages(KernelBackend):
    """The kernel backend without PageSets: every re-pin, mark and read through Python."""

    def page_set(self, region):
        return None


class QuickAsPythonOnPageSets(QuickAsPython):
    """As QuickAsPython on the kernel backend: the C store re-pins, marks and reads
    through the region's PageSet (core/pages.c), the reference through the
    backend's Python calls; the pages' states must agree too, whatever the
    kernel drops behind the books' back."""

    def new_backends(self) -> list:
        need_backend("kernel")
        self.backends = [KernelBackend(), PythonPages()]
        return self.backends

    def states(self):
        return [
            [bytes(b._book.states(r.ident)) for r in c._entries.store.slabs.regions()]
            for b, c in zip(self.backends, self.caches, strict=True)
        ]

    @rule(nth=st.integers(0, 40))
    def kernel_drops_a_page(self, nth):
        """The kernel drops a lazily freed page (the same one of both caches)."""
        states = self.states()
        volatile = [
            (slab, page)
            for slab, pages in enumerate(states[0])
            for page, state in enumerate(pages)
            if state == VOL
        ]  # fmt: skip
        if not volatile or states[0] != states[1]:
            return
        slab, page = volatile[nth % len(volatile)]
        for cache in self.caches:
            region = cache._entries.store.slabs.regions()[slab]
            clib.madvise(region.address + page * PS, PS, mmap.MADV_DONTNEED)

    @invariant()
    def same_pages(self):
        if hasattr(self, "backends"):
            assert self.states()[0] == self.states()[1]

    def teardown(self) -> None:
        super().teardown()
        for backend in getattr(self, "backends", []):
            backend.close()


QuickAsPythonOnPageSets.TestCase.settings = settings(
    max_examples=50, stateful_step_count=40, deadline=None
)
TestQuickAsPythonOnPageSets = QuickAsPythonOnPageSets.TestCase


# -- what goes the Python way ---------------------------------------------------------------


def test_a_store_while_another_thread_holds_the_lock_goes_the_python_way():
    needs_core()
    with VolatileCache(10, backend="sim") as cache:
        taken = []
        cache._setitem = lambda key, value: taken.append((key, value))  # the Python way, noted
        with held_by_another_thread(cache._lock):
            cache["k"] = b"v"  # the C store does not wait: it hands the store on
        assert taken == [("k", b"v")] and len(cache) == 0
        cache["k"] = b"v"
        assert taken == [("k", b"v")] and cache["k"] == b"v"  # lock free: stored in C


@pytest.mark.parametrize(
    "options",
    [{"ttl": 10}, {"getsizeof": len}, {"on_evict": print}, {"maxsize": 0}],
    ids=["ttl", "getsizeof", "on_evict", "maxsize 0"],
)
def test_a_cache_whose_stores_need_python_gets_no_plan(options):
    needs_core()
    options = {"maxsize": 10, **options}
    with VolatileCache(backend="sim", **options) as cache:
        assert cache._quick is None


def test_a_cache_with_its_own_popitem_gets_no_plan():
    needs_core()

    class Mine(VolatileCache):
        def popitem(self):
            return super().popitem()

    with Mine(2, backend="sim") as cache:
        assert cache._quick is None
        for i in range(4):
            cache[i] = b"x"
        assert sorted(cache) == [2, 3]


def test_a_closed_cache_drops_its_plan_and_refuses_stores():
    needs_core()
    cache = VolatileCache(10, backend="sim")
    assert cache._quick is not None
    cache.close()
    assert cache._quick is None
    with pytest.raises(ValueError, match="closed"):
        cache["k"] = b"v"


def test_values_pickle_refuses_are_kept_as_objects():
    needs_core()
    with VolatileCache(10, backend="sim") as cache:
        function = [lambda: 7]
        cache["f"] = function
        assert cache["f"] is function
        cache[(1, "x")] = [1, 2]
        assert cache[(1, "x")] == [1, 2]


def test_equal_keys_of_other_types_are_one_entry_as_in_a_dict():
    needs_core()
    with VolatileCache(10, backend="sim") as cache:
        cache[1] = b"one"
        cache[1.0] = b"float"
        cache[True] = b"bool"
        assert len(cache) == 1 and cache[1] == b"bool" and list(cache) == [1]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork()")
def test_a_forked_child_stores_under_its_own_lock():
    needs_core()
    with VolatileCache(10, backend="sim") as cache:
        cache["before"] = b"1"
        plan = cache._quick
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: a new lock, a new plan holding it
            ok = cache._quick is not plan and cache._quick.lock is cache._lock
            cache["after"] = b"2"
            ok = ok and cache["after"] == b"2" and cache["before"] == b"1"
            os.write(write, pickle.dumps(ok))
            os._exit(0)
        os.close(write)
        answer = os.read(read, 100)
        os.waitpid(pid, 0)
        assert pickle.loads(answer) is True


@pytest.mark.parametrize("way", ["c", "python"])
def test_an_eviction_whose_slab_cannot_be_given_back_counts_the_entry_out(way):
    """The backend refuses to take an emptied slab back: the store fails, the
    evicted entry is gone all the same, and the counts say so (as the Python way's)."""
    needs_core()
    with VolatileCache(1, backend="sim", slab_bytes=4096) as cache:
        if way == "python":
            cache._quick = None
        cache["a"] = b"x" * 5000  # a slab of its own
        slabs = cache._entries.store.slabs
        release = slabs.release_slab

        def refuse(index):
            slabs.release_slab = release
            raise OSError(5, "refused")

        slabs.release_slab = refuse
        with pytest.raises(OSError, match="refused"):
            cache["b"] = b"y" * 5000
        assert len(cache) == len(list(cache)) == cache.currsize == 0
        cache["c"] = b"z"
        assert list(cache) == ["c"] and cache["c"] == b"z" and len(cache) == 1


def test_a_store_of_the_same_key_made_while_the_put_calls_python_is_replaced():
    """The put's backend call runs Python (here: it stores the key itself, as a
    __del__ or a signal handler could): the key stays one entry, the outer value."""
    needs_core()
    with VolatileCache(10, backend="sim") as cache:
        slabs = cache._entries.store.slabs
        serve = slabs.serve

        def serve_and_store(need, more):
            slabs.serve = serve
            cache["k"] = b"inner"  # the same thread: the lock is reentrant
            return serve(need, more)

        slabs.serve = serve_and_store  # the empty cache's first put needs a slab
        cache["k"] = b"outer"
        assert list(cache) == ["k"] and len(cache) == 1 and cache["k"] == b"outer"
        del cache["k"]
        assert list(cache) == [] and len(cache) == 0


class Reducing:
    """Counts its pickling."""

    reduced = 0

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse

    def __reduce__(self):
        Reducing.reduced += 1
        if self.refuse:
            raise TypeError("not picklable")
        return (Reducing, ())


@pytest.mark.parametrize("case", ["overwrite", "long key", "refused"])
def test_a_value_handed_to_the_python_way_is_pickled_once(case):
    needs_core()
    with VolatileCache(10, backend="sim") as cache:
        key = "k" * 300 if case == "long key" else "k"
        if case == "overwrite":
            cache[key] = b"before"
        Reducing.reduced = 0
        cache[key] = [Reducing(refuse=case == "refused")]
        assert Reducing.reduced == 1 and len(cache) == 1


def test_an_empty_plan_is_no_plan():
    """A Quick made without its __init__ (Quick.__new__) sends stores the Python way."""
    needs_core()
    code = (
        "from volcache import VolatileCache, coremodule\n"
        "c = VolatileCache(10, backend='sim')\n"
        "c._quick = coremodule.core.Quick.__new__(coremodule.core.Quick)\n"
        "c['k'] = b'v'\n"
        "assert c['k'] == b'v' and len(c) == 1\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
