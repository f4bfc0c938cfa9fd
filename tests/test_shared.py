"""SharedVolatileCache: one segment, many processes; purges learnt, not read as
zeros; a process killed at any point of a change leaves the segment usable and
never makes another read a wrong value."""

from __future__ import annotations

import array
import contextlib
import fcntl
import hashlib
import json
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from volcache import SharedVolatileCache, cached, cgroups
from volcache.shared import SegmentError
from volcache.shared import layout as L
from volcache.shared import lock as lock_module
from volcache.shared.segment import Segment, path_of

from .conftest import require, wait_child

HERE = Path(__file__).parent


@pytest.fixture
def name():
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    SharedVolatileCache.unlink(name)


def test_values_of_every_kind_come_back_in_another_process(name):
    with SharedVolatileCache(name, size=1 << 22) as cache:
        cache["bytes"] = b"b" * 10_000
        cache[("tuple", 1)] = {"a": [1, 2.5, None]}
        cache[3] = array.array("i", range(100))
        cache[4.5] = bytearray(b"ba")
        code = (
            "import array, sys\n"
            "from volcache import SharedVolatileCache\n"
            f"c = SharedVolatileCache({name!r}, size=1 << 22)\n"
            "assert c['bytes'] == b'b' * 10_000\n"
            "assert c[('tuple', 1)] == {'a': [1, 2.5, None]}\n"
            "assert c[3] == array.array('i', range(100))\n"
            "assert c[4.5] == bytearray(b'ba') and type(c[4.5]) is bytearray\n"
            "c['from child'] = b'hello'\n"
            "print(sorted(map(repr, c)))\n"
        )
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert "'from child'" in run.stdout
        assert cache["from child"] == b"hello"
        assert len(cache) == 5


def test_a_forked_child_shares_the_cache_it_inherited(name):
    with SharedVolatileCache(name, size=1 << 22) as cache:
        cache[1] = b"parent"
        pid = os.fork()
        if pid == 0:
            ok = cache[1] == b"parent" and os.getpid() in cache.info().attached
            cache[2] = b"child"
            os._exit(0 if ok else 1)
        assert wait_child(pid) == 0
        assert cache[2] == b"child"


def test_a_purge_gives_memory_back_and_readers_learn_it_from_the_record(name):
    with SharedVolatileCache(name, size=1 << 24) as cache:
        for k in range(64):
            cache[k] = bytes([k]) * 20_000
        blocks = os.stat(path_of(name)).st_blocks
        cache[0]  # the most recently used now
        freed = cache.purge(32 * 20_000)
        assert freed >= 32 * 20_000
        # Less the index's pages, which a scan of it touches (shared memory has
        # no zero page: a read of a hole allocates).
        index = cache._segment.data_at - cache._segment.index_at
        assert os.stat(path_of(name)).st_blocks * 512 <= blocks * 512 - freed + index
        with SharedVolatileCache(name, size=1 << 24) as other:
            found = {k: other.get(k) for k in range(64)}
            info = other.info()
        assert found[0] == bytes([0]) * 20_000  # recently used: kept
        purged = [k for k, v in found.items() if v is None]
        assert len(purged) >= 32 and info.purged == len(purged) and info.misses == 0
        assert all(v == bytes([k]) * 20_000 for k, v in found.items() if v is not None)
        cache.regenerate = lambda k: b"again-%d" % k
        assert cache[purged[0]] == b"again-%d" % purged[0]
        assert cache.info().regenerated == 1 and cache.info().purged_entries == len(purged) - 1


def test_maxsize_keeps_the_most_recently_used(name):
    with SharedVolatileCache(name, size=1 << 24, maxsize=64) as cache:
        for k in range(200):
            cache[k] = b"v%d" % k
            if k >= 1:
                cache[1]  # kept in use
        assert len(cache) <= 64
        assert cache[1] == b"v1" and cache[199] == b"v199" and 0 not in cache


def test_a_full_segment_evicts_the_least_recently_used(name):
    with SharedVolatileCache(name, size=1 << 20) as cache:
        for k in range(1000):
            cache[k] = b"%d" % k * 1000
        assert cache[999] == b"999" * 1000
        assert 0 < len(cache) < 1000
        assert all(cache[k] == b"%d" % k * 1000 for k in cache)


def test_an_expired_entry_is_absent_for_every_process(name):
    now = [100.0]
    with SharedVolatileCache(name, size=1 << 22, ttl=10) as writer:
        writer.clock = lambda: now[0]
        writer[1] = b"short"
        with SharedVolatileCache(name, size=1 << 22) as reader:  # no ttl of its own
            reader.clock = lambda: now[0]
            now[0] = 109.9
            assert reader[1] == b"short" and list(reader) == [1]
            now[0] = 110.0
            assert reader.get(1) is None and 1 not in reader and list(reader) == []
            assert writer.get(1) is None and len(writer) == 0
            reader[2] = b"long"  # stored without a ttl: never expires
            now[0] = 1e9
            assert writer[2] == b"long"
    with pytest.raises(ValueError, match="ttl"):
        SharedVolatileCache(name, ttl=0)


def test_a_pin_reads_in_place_and_keeps_the_pages_through_store_clear_and_purge(name):
    with SharedVolatileCache(name, size=1 << 22, pressure=False) as cache:
        cache[1] = b"a" * 10_000
        cache[2] = b"b" * 10_000
        with cache.pin(1) as view:
            assert view.readonly and view == b"a" * 10_000
            cache[1] = b"new" * 1000  # a new entry; the pinned pages stay
            cache.clear()
            assert cache.purge(1 << 22) == 0 and len(cache) == 0
            assert view == b"a" * 10_000
            assert cache.info().stored_bytes == 12_288  # only the pinned run
            assert cache.info().pinned_entries == 1 and cache.info().pinned_bytes == 12_288
        assert cache.info().stored_bytes == 0  # given back at the block's end
        cache[3] = [1, 2]
        with pytest.raises(TypeError, match="raw bytes"), cache.pin(3):
            pass
        with pytest.raises(KeyError), cache.pin(4):
            pass
        cache.regenerate = lambda k: b"made %d" % k
        with cache.pin(4) as view:
            assert view == b"made 4"
        assert cache._segment.pins.held() == {}


def test_a_pin_in_another_process_holds_against_purges_here(name):
    with SharedVolatileCache(name, size=1 << 22, pressure=False) as cache:
        cache[1] = b"x" * 50_000
        ready, done = os.pipe(), os.pipe()
        pid = os.fork()
        if pid == 0:
            with cache.pin(1) as view:
                os.write(ready[1], b"1")
                os.read(done[0], 1)
                ok = view == b"x" * 50_000
            os._exit(0 if ok else 1)
        os.read(ready[0], 1)
        assert cache.purge(1 << 22) == 0 and cache.get(1) == b"x" * 50_000
        os.write(done[1], b"1")
        assert wait_child(pid) == 0
        assert cache.purge(1 << 22) > 0 and cache.get(1) is None


def test_a_pin_of_a_process_killed_holding_it_counts_for_nothing(name):
    with SharedVolatileCache(name, size=1 << 22, pressure=False) as cache:
        cache[1] = b"x" * 50_000
        ready = os.pipe()
        pid = os.fork()
        if pid == 0:
            with cache.pin(1):
                cache[1] = b"replaced"  # its old run is now the pin's alone
                os.write(ready[1], b"1")
                time.sleep(60)
            os._exit(0)
        os.read(ready[0], 1)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert cache.info().stored_bytes == 13 * 4096 + 4096  # the orphaned run, the new entry
        newcomer = os.fork()
        if newcomer == 0:  # may take the dead holder's row: not its pins
            with SharedVolatileCache(name, size=1 << 22, pressure=False) as other:
                os._exit(0 if other.info().pinned_entries == 0 else 1)
        assert wait_child(newcomer) == 0
        assert cache.info().stored_bytes == 4096  # the orphaned run given back on its attach
        assert cache.purge(0) == 0 and len(cache) == 1  # nothing asked, nothing purged
        assert cache.pop(1) == b"replaced" and cache.pop(1, "gone") == "gone"
        with pytest.raises(KeyError):
            cache.pop(1)


def _lock_is_free(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, lock_module._LOCK)
    except BlockingIOError:
        return False
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, lock_module._UNLOCK)
    return True


def test_two_caches_of_one_segment_in_one_process_exclude_each_other(name):
    """The lock is the open file description's, not the process's: a second cache
    of the segment in this process waits, and closing it releases nothing."""
    first = SharedVolatileCache(name, size=1 << 20, pressure=False)
    second = SharedVolatileCache(name, size=1 << 20, pressure=False)
    third = SharedVolatileCache(name, size=1 << 20, pressure=False)
    fourth = SharedVolatileCache(name, size=1 << 20, pressure=False)
    try:
        with first._segment.lock:
            assert not _lock_is_free(second._segment.lock.fd)
            writer = threading.Thread(target=second.__setitem__, args=(1, b"waited"))
            writer.start()
            writer.join(0.5)
            assert writer.is_alive()  # waits for the first's lock
            third.close()  # had it been a lockf lock, this would release the first's
            assert not _lock_is_free(fourth._segment.lock.fd)
        writer.join()
        assert first[1] == b"waited"
    finally:
        for cache in (first, second, fourth):
            cache.close()


def test_a_forked_child_does_not_share_its_parents_lock(name):
    with SharedVolatileCache(name, size=1 << 20, pressure=False) as cache, cache._segment.lock:
        pid = os.fork()
        if pid == 0:  # the parent holds it: the child's own description must wait
            os._exit(0 if not _lock_is_free(cache._segment.lock.fd) else 1)
        assert wait_child(pid) == 0


def test_bad_input_is_refused_by_name_and_the_cache_stays_usable(name):
    with pytest.raises(ValueError, match="name"):
        SharedVolatileCache("a/b")
    with pytest.raises(ValueError, match="at least"):
        SharedVolatileCache(name + "-small", size=4096)
    assert not path_of(name + "-small").exists() or os.stat(path_of(name + "-small")).st_size == 0
    SharedVolatileCache.unlink(name + "-small")
    with SharedVolatileCache(name, size=1 << 20) as cache:
        cache[1] = b"one"
        with pytest.raises(TypeError):
            cache[object()] = b"x"  # no stable bytes in every process
        with pytest.raises(ValueError, match="does not fit"):
            cache[2] = b"x" * (1 << 20)
        with pytest.raises(KeyError):
            cache[3]
        assert cache[1] == b"one" and len(cache) == 1


def test_clear_gives_every_page_back(name):
    with SharedVolatileCache(name, size=1 << 24) as cache:
        for k in range(64):
            cache[k] = bytes([k]) * 20_000
        cache.clear()
        assert os.stat(path_of(name)).st_blocks * 512 <= L.PAGE  # the header's page
        assert len(cache) == 0 and cache.get(1) is None
        cache[1] = b"again"
        assert cache[1] == b"again"


def test_bytes_changed_under_an_entry_are_never_served(name):
    """A stray write into an entry's pages (a bug, a process writing where it
    should not): the CRC fails, and the entry counts as purged."""
    with SharedVolatileCache(name, size=1 << 22, regenerate=lambda k: b"made again") as cache:
        cache[1] = b"v" * 10_000
        cache[2] = b"w" * 10_000
        segment = cache._segment
        slot, _ = segment._find(*cache._named(1))
        first = segment._record(slot)[3]
        segment.mm[segment.data_at + first * L.PAGE + 5_000] ^= 1
        assert cache.get(1) == b"made again" and cache.info().purged == 1
        assert cache[1] == b"made again" and cache[2] == b"w" * 10_000


def test_a_segment_whose_maker_died_before_its_header_is_made_anew(name):
    with open(path_of(name), "wb") as f:
        f.truncate(1 << 20)  # sized, never formatted
    with SharedVolatileCache(name, size=1 << 20, pressure=False) as cache:
        cache[1] = b"one"
        assert cache[1] == b"one"


def test_a_segment_of_another_version_or_format_is_refused(name):
    with SharedVolatileCache(name, size=1 << 20):
        pass
    path = path_of(name)
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", L.VERSION + 1))
    with pytest.raises(SegmentError, match=f"version {L.VERSION + 1}"):
        SharedVolatileCache(name, size=1 << 20)
    with open(path, "r+b") as f:
        f.write(b"NOTVOLC\x00")
    with pytest.raises(SegmentError, match="not a volcache segment"):
        SharedVolatileCache(name, size=1 << 20)


# -- a process killed mid-change ------------------------------------------------------------


def _die_at(cache: SharedVolatileCache, method: str, when) -> None:
    """In a forked child: make ``Segment.<method>`` end the process when ``when(args)``."""
    segment = cache._segment
    original = getattr(segment, method)

    def dying(*args):
        if when(args):
            os._exit(0)
        return original(*args)

    setattr(segment, method, dying)


DEATHS = {
    "pages taken, value not written": ("store", "_take_pages", lambda a: True),
    "record busy, not live yet": ("store", "_state", lambda a: a[1] == L.LIVE),
    "new record live, old pages not given back": ("store", "_give_pages", lambda a: True),
    "mid-clear": ("clear", "_wipe", lambda a: True),
    "mid-purge, a record purged, its pages not given back": (
        "purge",
        "_give_pages",
        lambda a: True,
    ),
    "mid-delete, the slot freed, its pages not": ("delete", "_give_pages", lambda a: True),
    "mid-eviction of a full segment": ("fill", "_give_pages", lambda a: True),
}


@pytest.mark.parametrize("death", DEATHS)
def test_a_writer_killed_mid_change_loses_at_most_its_own_entry(name, death):
    op, method, when = DEATHS[death]
    with SharedVolatileCache(name, size=1 << 22, pressure=False) as cache:
        for k in range(20):
            cache[k] = b"old-%d" % k * 500
        pid = os.fork()
        if pid == 0:
            _die_at(cache, method, when)
            if op == "clear":
                cache.clear()
            elif op == "purge":
                cache.purge(1 << 22)
            elif op == "delete":
                del cache[5]
            elif op == "fill":  # past what the segment holds: stores evict
                for k in range(100, 10_000):
                    cache[k] = b"f" * 100_000
            else:
                cache[5] = b"new" * 3000
            os._exit(3)  # not reached if the death came
        assert wait_child(pid) == 0
        assert cache._segment._get(L.DIRTY_AT)  # left mid-change
        found = {k: cache.get(k) for k in range(20)}
        assert cache.info().recoveries == 1
        if op == "clear":
            assert found == dict.fromkeys(range(20))
        elif op in ("purge", "fill"):  # some gone, the rest as stored
            assert all(found[k] in (None, b"old-%d" % k * 500) for k in range(20))
        else:
            assert found[5] in (None, b"old-5" * 500, b"new" * 3000)
            assert all(found[k] == b"old-%d" % k * 500 for k in range(20) if k != 5)
        segment = cache._segment
        live = segment._victims(L.LIVE)
        assert segment.counts()["pages"] == sum(n for _, _, n in live)
        assert segment.counts()["live"] == len(live) == len(cache)
        cache[5] = b"after"  # usable
        assert cache[5] == b"after"


def _value(k: int, n: int) -> bytes:
    """A value that says which key and which write it is, checkable by any reader."""
    seed = hashlib.sha256(b"%d:%d" % (k, n)).digest()
    return struct.pack("<II", k, n) + seed * (1 + (k * 7919 + n) % 600)


def _check(k: int, value: bytes) -> bool:
    kk, n = struct.unpack_from("<II", value)
    return kk == k and value == _value(k, n)


def test_writers_killed_at_random_points_never_make_a_reader_see_a_wrong_value(name):
    """100 writers SIGKILLed at random moments (mid-store, mid-delete, mid-purge,
    holding the lock, holding a pin, mid-eviction) while a reader checks every
    value it reads, by copy and in place."""
    rng = random.Random(7)
    keys = 48
    with SharedVolatileCache(name, size=4 << 20, pressure=False) as cache:  # small: stores evict
        for k in range(keys):
            cache[k] = _value(k, 0)
        reader = os.fork()
        if reader == 0:
            wrong = seen = 0
            deadline = time.monotonic() + 60
            while not os.path.exists(f"/tmp/{name}.done") and time.monotonic() < deadline:
                for k in range(keys):
                    if k % 2:
                        value = cache.get(k)
                        if value is not None:
                            seen += 1
                            wrong += not _check(k, value)
                        continue
                    with contextlib.suppress(KeyError), cache.pin(k) as view:
                        seen += 1
                        wrong += not _check(k, bytes(view))
            os._exit(0 if wrong == 0 and seen > 0 else 1)
        try:
            for n in range(1, 101):
                writer = os.fork()
                if writer == 0:
                    r = random.Random(n)
                    while True:
                        k, op = r.randrange(keys), r.random()
                        if op < 0.7:
                            cache[k] = _value(k, n)
                        elif op < 0.8:
                            cache.pop(k, None)
                        elif op < 0.9:
                            cache.purge(64 << 10)
                        else:
                            with contextlib.suppress(KeyError), cache.pin(k) as view:
                                assert _check(k, bytes(view))
                time.sleep(rng.uniform(0.001, 0.03))
                os.kill(writer, signal.SIGKILL)
                os.waitpid(writer, 0)
        finally:
            open(f"/tmp/{name}.done", "w").close()
        assert wait_child(reader, 70) == 0
        os.unlink(f"/tmp/{name}.done")
        assert all(_check(k, cache[k]) for k in cache)
        assert cache.info().recoveries > 0  # some writers did die mid-change
        cache[0] = _value(0, 999)
        assert cache[0] == _value(0, 999)


def test_workers_past_their_memory_cgroup_purge_the_segment_and_nobody_is_killed(name):
    """Two workers store 2 x 80 MiB of shared values in a 96 MiB cgroup: shared
    memory is never reclaimed by the kernel here (no swap), so only their
    purges keep them alive."""
    require("cgroups", cgroups.unavailable_reason())
    with cgroups.MemoryCgroup(96 << 20, name="volcache-test") as group:
        children = [
            subprocess.Popen(
                group.command(
                    [
                        sys.executable,
                        str(HERE / "shared_pressure_child.py"),
                        name,
                        str(first),
                        "320",
                        "2",
                    ]
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for first in (0, 320)
        ]
        outs = [child.communicate(timeout=300) for child in children]
        oom_kills = group.oom_kills()
    assert oom_kills == 0
    assert all(child.returncode == 0 for child in children), [err[-2000:] for _, err in outs]
    results = [json.loads(out) for out, _ in outs]
    assert all(r["wrong"] == 0 for r in results)
    assert "cgroup" in results[0]["pressure"]
    assert sum(r["purged_bytes"] for r in results) > 64 << 20
    assert sum(r["hits"] for r in results) > 0
    with SharedVolatileCache(name, size=1 << 30, pressure=False) as cache:
        assert all(cache[k] == _shared_value(k) for k in cache)


def _shared_value(k: int) -> bytes:
    return hashlib.sha256(b"%d" % k).digest() * (256 << 10 >> 5)


def test_cached_shared_memoizes_once_for_every_process_and_apart_per_function(name):
    calls = []

    @cached(shared=name, size=1 << 22)
    def square(x):
        calls.append(("square", x))
        return [x * x]

    @cached(shared=name, size=1 << 22)
    def negate(x):
        calls.append(("negate", x))
        return -x

    assert square(3) == [9] and square(3) == [9] and negate(3) == -3
    assert calls == [("square", 3), ("negate", 3)]
    pid = os.fork()
    if pid == 0:  # the child finds the parent's results, and stores its own
        ok = square(3) == [9] and negate(4) == -4 and calls == [("square", 3), ("negate", 3),
                                                                  ("negate", 4)]  # fmt: skip
        os._exit(0 if ok else 1)
    assert wait_child(pid) == 0
    assert negate(4) == -4 and len(calls) == 2  # computed in the child
    square.cache_clear()
    assert len(square.cache) == 0 and len(negate.cache) == 2
    with pytest.raises(TypeError, match="SharedVolatileCache's"):
        cached(shared=name, ttl=3)
    with pytest.raises(TypeError, match="not with cache="):
        cached({}, shared=name)


def test_the_segment_file_is_the_users_alone(name):
    with SharedVolatileCache(name, size=1 << 20):
        assert os.stat(path_of(name)).st_mode & 0o777 == 0o600
    assert Segment  # the module's door for tests that need the segment itself


def test_a_closed_cache_says_so_and_bad_purge_sizes_are_refused(name):
    """After close(), every use is a ValueError naming the cache; purge() takes a byte count."""
    cache = SharedVolatileCache(name, size=1 << 22)
    cache["a"] = b"1"
    with pytest.raises(TypeError, match="nbytes must be an int"):
        cache.purge("1")
    with pytest.raises(ValueError, match="0 or more"):
        cache.purge(-1)
    assert cache["a"] == b"1"  # nothing was lost to the refused calls
    cache.close()
    cache.close()  # idempotent
    for use in (lambda: cache["a"], lambda: cache.__setitem__("b", b"2"), lambda: len(cache),
                cache.info, cache.clear, lambda: cache.purge(1)):  # fmt: skip
        with pytest.raises(ValueError, match=f"{name}.* is closed"):
            use()
    assert "closed" in repr(cache)
    with SharedVolatileCache(name, size=1 << 22) as again:  # the segment itself is still there
        assert again["a"] == b"1"


def test_stores_read_the_usage_again_only_when_half_the_room_is_spent_or_time_passed(name):
    """The usage is read once per half of the room a read left (or every RECHECK_S), and a
    store that would cross the watermark is still relieved first."""
    from volcache.shared.purger import RECHECK_S, SharedPurger

    with SharedVolatileCache(name, size=1 << 24, pressure=False) as cache:
        purger = SharedPurger(cache._segment)
        purger._watcher.stop()  # this test drives it alone: no thread reads meanwhile
        cache._purger = purger
        now, usage = [0.0], [purger.limit.high - (1 << 20)]  # 1 MiB of room
        purger._clock = lambda: now[0]
        purger.limit.usage = lambda: usage[0]
        value = b"v" * 3000  # with its key and a page of margin: 2 pages a store
        for n in range(40):
            cache[n] = value
        # 40 stores of 8 KiB: a read per 512 KiB (half the room left) spent
        assert purger.reads == 1 + 40 * 8192 // (512 << 10)
        reads = purger.reads
        cache["again"] = value
        assert purger.reads == reads  # within the room, within the time
        now[0] += RECHECK_S
        cache["later"] = value
        assert purger.reads == reads + 1  # time passed: read again
        usage[0] = purger.limit.high + (64 << 10)  # someone else took the room meanwhile
        now[0] += RECHECK_S
        cache["crossing"] = value
        assert purger.purged_bytes > 0 and purger.reads == reads + 2
        usage[0] = purger.limit.high - (1 << 20)  # what the purge gave back
        cache["next"] = value
        assert purger.reads == reads + 3  # after a purge the next store reads again
        assert cache["next"] == value and cache["crossing"] == value


def test_methods_are_refused_in_a_shared_cache(name):
    """A method's key names this process's instance or class: another process would be
    served its value, so shared= refuses methods and class methods when called."""

    class Account:
        @cached(shared=name, size=1 << 22)
        def balance(self, day: int) -> int:
            return day

        @cached(shared=name, size=1 << 22)
        @classmethod
        def opened(cls, day: int) -> str:
            return cls.__name__

    for call in (lambda: Account().balance(1), lambda: Account.opened(1)):
        with pytest.raises(TypeError, match="shared by processes"):
            call()
