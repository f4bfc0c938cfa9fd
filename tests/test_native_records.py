"""The record table in C answers every call as the Python one, its reference, does.

A hypothesis state machine gives both tables the same random calls (colliding
hashes, the index growing and shrinking, both recency orders, ids reused, the
table emptied) and compares every answer and every column after each step.
``.ci/run`` runs this file once more against the C core built with
AddressSanitizer and UndefinedBehaviorSanitizer (``VOLCACHE_CORE_MODULE``).
"""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from volcache import native_records
from volcache.records import ACTIVE, INDEXED, KEPT, LISTED, NONE, RecordTable

from .conftest import require


def native(**options) -> native_records.NativeRecordTable:
    """A C table (of the C core volcache.coremodule loaded)."""
    return native_records.NativeRecordTable(**options)


HASHES = st.one_of(st.sampled_from([0, 1, 7, 0xFFFFFFFF]), st.integers(0, 2**32 - 1))
COLUMNS = ("hash", "loc", "length", "flags", "chain")


class SameAnswers(RuleBasedStateMachine):
    """RecordTable and NativeRecordTable, driven alike."""

    @initialize(exact=st.booleans())
    def make(self, exact: bool) -> None:
        self.exact = exact
        self.reference = RecordTable(exact)
        self.native = native(exact=exact, max_records=1 << 16, room=16)  # it grows too
        self.live: list[int] = []

    def both(self, name: str, *args):
        expected = getattr(self.reference, name)(*args)
        got = getattr(self.native, name)(*args)
        if name == "listed_ids":
            expected, got = list(expected), list(got)
        assert got == expected, (name, args)
        return got

    @rule(h=HASHES, loc=st.integers(0, 2**40), length=st.integers(0, 2**32 - 1),
          flags=st.sampled_from([ACTIVE, KEPT, 0]), many=st.sampled_from([1, 1, 40]))  # fmt: skip
    def new(self, h: int, loc: int, length: int, flags: int, many: int) -> None:
        for i in range(many):  # forty at once: the index grows
            rid = self.both("new", (h + i) & 0xFFFFFFFF, loc, length, flags)
            self.live.append(rid)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), many=st.sampled_from([1, 1, 1, 30]))
    def delete(self, data, many: int) -> None:
        for _ in range(min(many, len(self.live))):
            rid = self.live.pop(data.draw(st.integers(0, len(self.live) - 1)))
            self.both("delete", rid)

    def pick(self, data, want: int, have: int) -> int | None:
        """A live id whose flags & want == have, or None."""
        flags = self.reference.flags
        fitting = [rid for rid in self.live if flags[rid] & want == have]
        return data.draw(st.sampled_from(fitting)) if fitting else None

    @rule(data=st.data())
    def index(self, data) -> None:
        rid = self.pick(data, INDEXED, 0)
        if rid is not None:
            self.both("index", rid)

    @rule(data=st.data())
    def unindex(self, data) -> None:
        rid = self.pick(data, INDEXED, INDEXED)
        if rid is not None:
            self.both("unindex", rid)

    @rule(data=st.data())
    def append(self, data) -> None:
        rid = self.pick(data, LISTED, 0)
        if rid is not None:
            self.both("append", rid)

    @rule(data=st.data(), back=st.integers(0, 20))
    def place(self, data, back: int) -> None:
        """A demotion: listed by the stamp of its last use, some stamps ago."""
        rid = self.pick(data, LISTED, 0)
        if rid is not None:
            used = max(0, self.reference.stamp() - back)
            assert self.native.stamp() == used + back or used == 0
            self.both("place", rid, used)

    @rule(data=st.data())
    def touch(self, data) -> None:
        rid = self.pick(data, LISTED, LISTED)
        if rid is not None:
            self.both("touch", rid)

    @rule(data=st.data())
    def unlist(self, data) -> None:
        rid = self.pick(data, LISTED, LISTED)
        if rid is not None:
            self.both("unlist", rid)

    @rule()
    def victim(self) -> None:
        self.both("victim")  # the CLOCK's hand moves alike

    @rule(h=HASHES)
    def candidates(self, h: int) -> None:
        assert sorted(self.native.candidates(h)) == sorted(self.reference.candidates(h))

    @invariant()
    def same_books(self) -> None:
        reference, native = self.reference, self.native
        size = reference.size
        assert native.size == size
        for name in COLUMNS:
            assert list(getattr(native, name)[:size]) == list(getattr(reference, name)), name
        assert native.count == reference.count and native.listed == reference.listed
        assert native.nbytes() == reference.nbytes()
        assert list(native.listed_ids()) == list(reference.listed_ids())
        if self.exact:
            assert (native.head, native.tail) == (reference.head, reference.tail)
            assert (native.demoted_head, native.demoted_tail) == (
                reference.demoted_head, reference.demoted_tail
            )  # fmt: skip
            assert native.oldest_use() == reference.oldest_use()
            for name in ("prev", "next", "used"):
                assert list(getattr(native, name)[:size]) == list(getattr(reference, name))
        for h in {reference.hash[rid] for rid in self.live}:
            assert native.head_of(h) == reference.head_of(h)
        assert native.head_of(12345) in (NONE, reference.head_of(12345))


SameAnswers.TestCase.settings = settings(max_examples=120, stateful_step_count=50, deadline=None)


@pytest.fixture(autouse=True)
def _needs_the_core():
    require("kernel", native_records.unavailable())


class TestSameAnswers(SameAnswers.TestCase):
    pass


def test_a_full_table_refuses_a_new_record_and_stays_usable():
    table = native(max_records=1 << 16)
    ids = [table.new(1, 0, 0, ACTIVE) for _ in range(table.max_records)]
    with pytest.raises(MemoryError, match="full"):
        table.new(1, 0, 0, ACTIVE)
    table.delete(ids[5])
    assert table.new(2, 0, 0, ACTIVE) == ids[5]


def test_bad_ids_are_refused_not_followed():
    table = native(exact=True, max_records=1 << 16)
    rid = table.new(1, 0, 0, ACTIVE)
    for call, args in [("delete", (5,)), ("index", (-1,)), ("unlist", (rid,)),
                       ("touch", (rid,)), ("unindex", (rid,)), ("append", (1 << 20,))]:  # fmt: skip
        with pytest.raises(ValueError, match="refused"):
            getattr(table, call)(*args)
    table.append(rid)
    with pytest.raises(ValueError):
        table.append(rid)  # listed already
    other = table.new(2, 0, 0, ACTIVE)
    table.delete(other)
    for call in ("delete", "index", "append"):  # a freed id
        with pytest.raises(ValueError, match="refused"):
            getattr(table, call)(other)
    assert list(table.listed_ids()) == [rid] and table.count == 1


def test_without_the_core_caches_use_the_python_table():
    """Where the C core is missing, the reference is the table: the cache works on sim."""
    script = textwrap.dedent(
        """
        import sys
        import os
        sys.modules[os.environ.get('VOLCACHE_CORE_MODULE') or 'volcache._core'] = None
        from volcache import VolatileCache
        from volcache.records import RecordTable
        with VolatileCache(2, backend="sim") as cache:
            for i in range(5):
                cache[i] = bytes([i]) * 100
            assert list(cache) == [3, 4] and cache[3] == bytes([3]) * 100
            assert type(cache._entries.records) is RecordTable
        print("ok")
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


@pytest.mark.parametrize("machine", ["lru_order", "cache_model"])
def test_the_cache_machines_pass_on_the_python_table_too(monkeypatch, machine):
    """The suite runs the C table (the default); the cache's own state machines run
    the Python one, its reference, here too."""
    monkeypatch.setattr(native_records, "unavailable", lambda: "the test chose the Python one")
    if machine == "lru_order":
        from .test_lru_order import LRUOrder as Machine
    else:
        from .test_cache_model import CacheMachine as Machine
    Machine.TestCase("runTest").runTest()


def test_many_caches_fit_under_an_address_space_limit_and_close():
    """Each table starts small and grows: caches fit under RLIMIT_AS, and close()
    maps nothing."""
    script = textwrap.dedent(
        """
        import resource
        from volcache import VolatileCache
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        caches = [VolatileCache(backend="sim") for _ in range(40)]
        assert type(caches[0]._entries.records).__name__ == "NativeRecordTable"
        for i, cache in enumerate(caches):
            cache[i] = b"v"
        big = caches[0]
        for i in range(300_000):  # a table grows past its first room, several times
            big[("k", i)] = b""
        assert len(big) == 300_001 and big[("k", 123_456)] == b""
        for cache in caches:
            cache.close()
        print("ok")
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_a_small_table_keeps_a_page_and_a_large_one_little_more_than_its_records():
    small = native()
    small.index(small.new(1, 0, 0, ACTIVE))
    assert small.resident() == 4096  # header, columns and buckets on one page
    big = native(exact=True)
    for n in range(20_000):
        big.index(big.new(n, 0, 0, ACTIVE))
    assert big.nbytes() == 37 * 20_000 + 4 * (1 << 14)  # the columns and the buckets
    assert big.nbytes() <= big.resident() <= 2 * big.nbytes() + 12 * 4096
    for rid in range(20_000):
        big.delete(rid)
    assert big.resident() == 4096 and big.nbytes() == 4 * 8  # emptied: a new small table


def test_a_cache_still_works_in_an_atexit_handler():
    """The table is not released at exit while caches may still be used."""
    script = textwrap.dedent(
        """
        import atexit
        def late():
            cache["late"] = b"z" * 100
            print("late", cache["late"][:3])
        atexit.register(late)
        from volcache import VolatileCache
        cache = VolatileCache(backend="sim")
        cache["early"] = b"a" * 100
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "late b'zzz'", run.stderr[-2000:]


def test_a_table_refuses_a_buffer_it_does_not_fit_or_was_not_laid_out_in():
    from volcache.coremodule import core

    assert core is not None
    table = core.Table(bytearray(8192))
    with pytest.raises(ValueError, match="holds no table"):
        table.head_of(12345)
    with pytest.raises(ValueError, match="holds no table"):
        table.new(1, 0, 0, ACTIVE)
    assert table.init(core.table_bytes(1 << 20), 1 << 20, 0) == -errno.EINVAL  # too small
    table.release()
