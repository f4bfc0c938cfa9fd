"""The shared tier against real servers: Redis, memcached and a Redis Cluster of six
nodes, started here on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from volcache import PickleCodec, VolatileCache, cached
from volcache.bench import cluster, servers
from volcache.tiers import MemcachedTier, RedisTier, Tier, Unavailable, envelope
from volcache.tiers.keys import stable_key_bytes

from .conftest import require

CHILD = Path(__file__).with_name("tier_child.py")
SECRET = b"0123456789abcdef-test-secret"
KINDS = ["redis", "memcached", "redis-cluster"]


def _server(kind: str):
    if kind == "redis-cluster":
        require(kind, cluster.missing_cluster())
        return cluster.running_cluster()
    require(kind, servers.missing(kind))
    return servers.running(kind)


@pytest.fixture(scope="module", params=KINDS)
def server(request):
    """One server of each kind for the module's tests (each test its own namespace)."""
    with _server(request.param) as running:
        yield running


def make_tier(server, **options) -> Tier:
    options.setdefault("namespace", f"test-{uuid.uuid4().hex[:12]}")
    options.setdefault("timeout", 1.0)
    if server.kind == "redis":
        return RedisTier(server.url, **options)
    if server.kind == "redis-cluster":
        return RedisTier(server.url, cluster=True, **options)
    return MemcachedTier(server.url, **options)


def sealed(value, codec, generation, secret, where):
    """A value's envelope, as a cache writing it through makes it."""
    data, decode, _ = codec.encode_with_decoder(value)
    return envelope.encode((data, decode), codec, generation, secret, where)


def raw_set(tier: Tier, name: str, blob: bytes) -> None:
    tier.set(name, blob, None)


def generation_of(cache, key="any key") -> int:
    """The generation under which a value of ``key`` is current now (on a cluster,
    each group of keys has its own)."""
    bound = cache._tier
    return bound.lookup(bound.key_of(key))[1]


def gen_key_of(cache, key) -> str:
    """The tier key of the generation token that ``key``'s value is read with."""
    bound = cache._tier
    return bound._gen_keys[bound._group_of(bound.key_of(key)[0])]


def unsigned_envelope(kind: int, meta: bytes, payload: bytes, generation: int) -> bytes:
    """An envelope as anyone who can write to the server could make one."""
    header = envelope.HEADER.pack(envelope.MAGIC, envelope.FORMAT, kind, 0, generation, len(meta))
    return header + meta + payload


def run_child(server, namespace: str, log: Path, keys: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(CHILD), server.kind, server.url, namespace, str(log), keys, *extra],
        stdout=subprocess.PIPE,
        text=True,
    )


def finish(child: subprocess.Popen) -> dict:
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    return json.loads(out)


# -- sharing ---------------------------------------------------------------------------------


def test_two_processes_share_a_namespace(server, tmp_path):
    namespace, log = f"share-{uuid.uuid4().hex[:8]}", tmp_path / "computed"
    first = finish(run_child(server, namespace, log, "1,2,3,4,5"))
    assert first["results"] == {str(k): f"value-{k}" for k in range(1, 6)}
    assert log.read_text().split() == ["1", "2", "3", "4", "5"]
    second = finish(run_child(server, namespace, log, "1,2,3,4,5,6"))
    assert second["results"]["6"] == "value-6" and second["tier_hits"] == 5
    assert log.read_text().split() == ["1", "2", "3", "4", "5", "6"]  # only 6 computed again


def test_a_purge_is_served_from_the_tier_not_regenerated(server):
    tier = make_tier(server)
    made = []

    def regenerate(key):
        made.append(key)
        return b"x" * 10_000 + str(key).encode()

    with VolatileCache(backend="sim", tier=tier, regenerate=regenerate) as cache:
        assert cache["a"].endswith(b"a") and made == ["a"]
        cache.volatilize()
        cache.backend.reclaim(1 << 30)  # every volatile page
        assert cache["a"] == b"x" * 10_000 + b"a"
        info = cache.info()
        assert made == ["a"] and info.purged == 1 and info.regenerated == 1
        assert info.tier_hits == 1


def test_writes_deletes_and_clear_go_through(server):
    tier = make_tier(server)
    with (
        VolatileCache(backend="sim", tier=tier) as one,
        VolatileCache(backend="sim", tier=tier) as two,
    ):
        one["k"] = b"stored"
        assert two["k"] == b"stored" and two.get("k") == b"stored"
        one["gone"] = b"soon"
        del one["gone"]
        assert two.get("gone") is None
        one["popped"] = b"p"
        assert one.pop("popped") == b"p" and two.get("popped") is None
        one["x"] = b"1"
        one["y"] = b"2"
        two.clear()  # the namespace, for every process
        assert one["x"] == b"1"  # still here locally
        with VolatileCache(backend="sim", tier=tier) as three:
            assert three.get("x") is None and three.get("y") is None
            with pytest.raises(KeyError):
                three["y"]


def test_cache_clear_of_a_decorated_function_clears_its_namespace(server):
    tier = make_tier(server, namespace=None)
    calls = []

    def square(x):
        calls.append(x)
        return b"%d" % (x * x)  # bytes: they travel without a secret

    f = cached(tier=tier, backend="sim")(square)
    g = cached(tier=tier, backend="sim")(square)  # another process, as far as caches go
    assert f.cache._tier.namespace == f"{__name__}.test_cache_clear_of_a_decorated_function_" \
        "clears_its_namespace.<locals>.square"  # fmt: skip
    assert f(3) == b"9" and g(3) == b"9" and calls == [3]
    f.cache_clear()
    h = cached(tier=tier, backend="sim")(square)
    assert h(3) == b"9" and calls == [3, 3]


def test_values_of_every_raw_kind_travel_without_a_secret(server):
    import array

    import numpy

    tier = make_tier(server)
    values = {
        "bytes": b"\x00\xff" * 100,
        "bytearray": bytearray(b"abc"),
        "array": array.array("d", [1.5, 2.5]),
        "numpy": numpy.arange(12, dtype="<i4").reshape(3, 4),
    }
    with (
        VolatileCache(backend="sim", tier=tier) as one,
        VolatileCache(backend="sim", tier=tier) as two,
    ):
        for key, value in values.items():
            one[key] = value
        for key, value in values.items():
            got = two[key]
            assert type(got) is type(value)
            if key == "numpy":
                assert got.dtype == value.dtype and (got == value).all()
            else:
                assert got == value
        one["object"] = {"a": 1}  # pickled: stays local without a secret
        assert two.get("object") is None


def test_pickled_values_travel_with_a_secret(server):
    tier = make_tier(server, secret=SECRET)
    with (
        VolatileCache(backend="sim", tier=tier, codec=PickleCodec()) as one,
        VolatileCache(backend="sim", tier=tier, codec=PickleCodec()) as two,
    ):
        one["obj"] = {"a": [1, 2, 3]}
        assert two["obj"] == {"a": [1, 2, 3]} and two.info().tier_hits == 1


# -- clear() and the generation ---------------------------------------------------------------


@pytest.mark.parametrize("lock", [False, True])
def test_a_value_computed_across_a_clear_elsewhere_is_not_current_after_it(server, lock):
    """A value whose computation began before another process's clear() is written
    under the generation of the lookup that missed: absent after the clear, even
    though this process learned the new generation before the computation ended."""
    namespace, data = f"race-{uuid.uuid4().hex[:8]}", {"price": b"old price"}
    other = VolatileCache(backend="sim", tier=make_tier(server, namespace=namespace))

    def compute(key):
        value = data[key]  # read before the update...
        data[key] = b"new price"  # ...which is followed by a clear of the namespace
        other.clear()
        ours.get("unrelated")  # meanwhile this process looks something else up
        return value

    tier = make_tier(server, namespace=namespace, lock=lock)
    with other, VolatileCache(backend="sim", tier=tier, regenerate=compute) as ours:
        ours.get("warm-up")
        assert ours["price"] == b"old price"
        late_tier = make_tier(server, namespace=namespace)
        with VolatileCache(backend="sim", tier=late_tier, regenerate=data.get) as late:
            assert late["price"] == b"new price" and late.info().tier_hits == 0


def test_a_decorated_call_computed_across_a_clear_is_not_current_after_it(server):
    tier = make_tier(server, namespace=None)
    source = {1: b"old"}

    def read(key):
        value = source.get(key, b"-")
        if key == 1:
            source[1] = b"new"
            elsewhere.cache_clear()  # another process clears...
            here(2)  # ...and this one learns of it before the call ends
        return value

    here = cached(tier=tier, backend="sim")(read)
    elsewhere = cached(tier=tier, backend="sim")(read)
    assert here(1) == b"old"
    later = cached(tier=tier, backend="sim")(read)
    assert later(1) == b"new"


def test_a_late_reading_does_not_take_the_process_back_to_an_older_generation(server):
    """A lookup that read the generation before a clear, and returns after a later
    lookup read the new one, leaves the new one known: writes stay visible, and
    nothing is taken for the server going back (no second clear)."""
    tier = make_tier(server)
    real, late = tier.get_many, []

    def get_many(keys):
        found = real(keys)
        if not late:  # the first reading is slow to come back
            late.append(found)
            other.clear()
            other["kept"] = b"written after the clear"
            ours.get("another key")
        return found

    def process():
        return VolatileCache(backend="sim", tier=make_tier(server, namespace=tier.namespace))

    with process() as other, VolatileCache(backend="sim", tier=tier) as ours:
        ours.get("warm-up")  # the namespace has a generation, which the slow reading reads
        tier.get_many = get_many
        assert ours.get("k") is None and late
        ours["k"] = b"written after the clear too"
        with process() as new:
            assert new.get("k") == b"written after the clear too"
            assert new.get("kept") == b"written after the clear"


def test_cleared_values_stay_absent_when_the_generation_key_is_lost(server):
    """Losing the generation key (an eviction, a DEL) is a clear, never a return of
    values cleared earlier: for a process that saw the clear, for a new one, and
    after the clears that follow."""
    tier = make_tier(server)

    def process():
        return VolatileCache(backend="sim", tier=make_tier(server, namespace=tier.namespace))

    with VolatileCache(backend="sim", tier=tier) as writer, process() as reader:
        gen_keys = {gen_key_of(writer, "first"), gen_key_of(writer, "second")}
        writer["first"] = b"before the first clear"
        writer.clear()
        writer["second"] = b"before the second clear"
        assert reader.get("first") is None and reader.get("second") == b"before the second clear"
        writer.clear()
        reader.clear()  # its own copies: what it finds from now on comes from the tier
        for gen_key in gen_keys:  # evicted under memory pressure
            tier.delete(gen_key)
        assert reader.get("first") is None and reader.get("second") is None
        with process() as new:
            assert new.get("first") is None and new.get("second") is None
        for gen_key in gen_keys:
            tier.delete(gen_key)
        writer.clear()  # a clear after the loss starts nothing over
        with process() as new:
            assert new.get("first") is None and new.get("second") is None
        writer["third"] = b"after"
        with process() as new:
            assert new.get("third") == b"after"


def test_a_server_gone_back_to_a_cleared_generation_is_cleared_again(server):
    """A server that goes back to a generation a process saw replaced (a replica
    that was behind, a snapshot, a replay): that process clears the namespace again,
    so that what was cleared stays absent for every process."""
    tier = make_tier(server)
    with VolatileCache(backend="sim", tier=tier) as writer:
        writer["k"] = b"cleared"
        gen_key = gen_key_of(writer, "k")
        old = tier.get_many([gen_key])[0]
        writer.clear()
        assert writer.get("k") is None
        if old is None:
            tier.delete(gen_key)
        else:
            tier.set(gen_key, old, None)  # the server as it was before the clear
        assert writer.get("k") is None
        assert tier.get_many([gen_key])[0] not in (None, old)
        with VolatileCache(backend="sim", tier=make_tier(server, namespace=tier.namespace)) as new:
            assert new.get("k") is None


# -- what is refused ------------------------------------------------------------------------------


class Boom:
    """Unpickling this records it: a value that must never be loaded."""

    def __reduce__(self):
        return (Path.touch, (Path(os.environ["VOLCACHE_TEST_BOOM"]),))


def test_tampered_or_foreign_values_are_rejected_never_unpickled(server, tmp_path, monkeypatch):
    boom = tmp_path / "unpickled"
    monkeypatch.setenv("VOLCACHE_TEST_BOOM", str(boom))
    tier = make_tier(server, secret=SECRET)
    made = []

    def regenerate(key):
        made.append(key)
        return {"fresh": key}

    def cache():
        return VolatileCache(backend="sim", tier=tier, codec=PickleCodec(), regenerate=regenerate)

    with cache() as c:
        bound, generation = c._tier, generation_of(c, "k")
    name, data = bound.key_of("k")
    where = bound._where(data)
    good = sealed({"v": 1}, bound.codec, generation, SECRET, where)
    evil = sealed(Boom(), bound.codec, generation, b"another secret, not ours", where)
    forged = bytearray(good)
    forged[-40] ^= 1  # a payload byte: the MAC no longer matches
    # A pickle without a MAC, which encode() would not even write:
    unsigned = unsigned_envelope(envelope.CODEC, b"pickle", pickle.dumps(Boom()), generation)
    other_codec = good.replace(b"pickle", b"pickl3")
    moved = sealed({"v": 2}, bound.codec, generation, SECRET, bound._where(b"another key"))
    blobs = [evil, bytes(forged), b"garbage", unsigned, other_codec, moved]
    for n, blob in enumerate(blobs):
        raw_set(tier, name, blob)
        with cache() as c:  # a process that has nothing locally: it asks the tier
            assert c["k"] == {"fresh": "k"}, n
            assert c.info().tier_rejected == 1 and c.info().tier_hits == 0, n
    assert not boom.exists() and len(made) == len(blobs)
    raw_set(tier, name, good)  # and the genuine value is taken
    with cache() as c:
        assert c["k"] == {"v": 1} and c.info().tier_hits == 1


def test_without_a_secret_a_pickle_from_the_server_is_refused(server, tmp_path, monkeypatch):
    boom = tmp_path / "unpickled"
    monkeypatch.setenv("VOLCACHE_TEST_BOOM", str(boom))
    tier = make_tier(server)
    with VolatileCache(backend="sim", tier=tier) as cache:
        name, data = cache._tier.key_of("k")
        where, generation = cache._tier._where(data), generation_of(cache, "k")
        blob = sealed(Boom(), PickleCodec(), generation, SECRET, where)
        raw_set(tier, name, blob[: -envelope.MAC_BYTES].replace(b"\x01\x00", b"\x00\x00", 1))
        raw_set(tier, name, blob)
        assert cache.get("k") is None
        assert not boom.exists() and cache.info().tier_rejected == 1


def test_a_reader_without_the_secret_takes_no_signed_value(server):
    """A signed value is absent to a reader that cannot check its MAC (counted as
    rejected, made again there), never its bytes with the MAC on their end."""
    signed, unsigned = make_tier(server, secret=SECRET), make_tier(server)
    unsigned.namespace = signed.namespace
    made = []

    def regenerate(key):
        made.append(key)
        return b"<html> made here"

    with (
        VolatileCache(backend="sim", tier=signed) as writer,
        VolatileCache(backend="sim", tier=unsigned, regenerate=regenerate) as reader,
    ):
        writer["page"] = b"<html>"
        writer["buffer"] = bytearray(b"<html>")
        assert reader.get("page") is None and reader.get("buffer") is None
        assert reader.info().tier_rejected == 2 and reader.info().tier_hits == 0
        assert reader["page"] == b"<html> made here" and made == ["page"]
        # What it made was written unsigned: a reader with the secret takes none of it.
        with VolatileCache(backend="sim", tier=signed) as another:
            assert another.get("page") is None and another.info().tier_rejected == 1


def test_a_pickling_codec_without_a_secret_is_refused_at_construction(server):
    tier = make_tier(server)
    with pytest.raises(TypeError, match="secret="):
        VolatileCache(backend="sim", tier=tier, codec=PickleCodec())
    with pytest.raises(ValueError, match="namespace"):
        VolatileCache(backend="sim", tier=make_tier(server, namespace=None))


def test_a_key_that_cannot_be_named_stably_is_a_type_error(server):
    tier = make_tier(server)
    with VolatileCache(backend="sim", tier=tier) as cache:
        with pytest.raises(TypeError, match="serialize"):
            cache[object()] = b"v"
        assert len(cache) == 0
        cache["fine"] = b"v"
        assert cache["fine"] == b"v"


def test_keys_are_the_same_in_every_process():
    key = ("a", 1, 2.5, frozenset({"x", "y", "z", ("t", 1)}), None, b"b", True)
    code = (
        "import sys; from volcache.tiers.keys import stable_key_bytes as s; "
        f"sys.stdout.write(s({key!r}).hex())"
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in (1, 2, 3, 4)
    }
    assert seen == {stable_key_bytes(key).hex()}
    assert stable_key_bytes(1) == stable_key_bytes(1.0) == stable_key_bytes(True)
    assert stable_key_bytes((1, "a")) != stable_key_bytes(("1", "a"))


def test_ttl_expires_values_in_the_tier(server):
    ttl = 0.3 if server.kind == "redis" else 1.0  # memcached counts whole seconds
    tier = make_tier(server, ttl=ttl)
    with VolatileCache(backend="sim", tier=tier) as one:
        one["k"] = b"v"
        with VolatileCache(backend="sim", tier=tier) as two:
            assert two.get("k") == b"v"
        time.sleep(ttl + 1.1)
        with VolatileCache(backend="sim", tier=tier) as three:
            assert three.get("k") is None and three.info().tier_misses == 1


def test_a_numpy_value_numpy_cannot_make_is_absent_not_an_error(server):
    """Without a secret anyone may write raw values: one whose dtype or shape numpy
    cannot make (or that its bytes do not fill) is rejected, and the key made here."""
    hostile = [
        ("<i8", [-1, -1], 8),  # fills 8 bytes by the product alone
        ("<i8", [0, 10**30], 0),
        ("<i8", [2**40, 0, 2**40], 0),  # zero items, but too many for numpy's index
        ("<i8", [1] * 40, 8),
        ("<i8", ["1"], 8),
        ("<i8", [1.0], 8),
        ("<i8", [True], 8),
        ("<i8", 1, 8),
        ("|V0", [10**30], 0),
        ("|O", [1], 8),
        ("<q9", [1], 8),
        ("<i8", [2], 8),  # too few bytes
    ]
    tier = make_tier(server)
    with VolatileCache(backend="sim", tier=tier, regenerate=lambda k: b"made here") as cache:
        name, _ = cache._tier.key_of("k")
        generation = generation_of(cache, "k")
        for n, (descr, shape, size) in enumerate(hostile):
            meta = json.dumps({"descr": descr, "shape": shape}).encode()
            raw_set(tier, name, unsigned_envelope(envelope.NUMPY, meta, b"\0" * size, generation))
            assert cache.get("k") is None, n
            assert cache.info().tier_rejected == n + 1, n
        assert cache["k"] == b"made here" and cache.info().tier_hits == 0


# -- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_server_killed_mid_run_costs_a_timeout_and_no_wrong_value(kind):
    timeout = 0.05
    with _server(kind) as running:
        tier = make_tier(running, timeout=timeout)
        with VolatileCache(backend="sim", tier=tier, regenerate=lambda k: b"v%d" % k) as cache:
            for k in range(20):
                assert cache[k] == b"v%d" % k
            running.kill()
            cache.clear()  # everything must come from the tier or be made again
            slowest = 0.0
            for k in range(40):
                start = time.monotonic()
                assert cache[k] == b"v%d" % k
                slowest = max(slowest, time.monotonic() - start)
            info = cache.info()
            # A lookup asks once, then stores (writing through): two timeouts at most,
            # and a connect to a dead port is refused at once.
            assert slowest < 4 * timeout + 0.5
            assert info.tier_errors >= 3 and info.tier_skipped > 0  # the breaker opened
            assert info.tier_hits == 0


def test_the_breaker_skips_then_tries_again():
    class Flaky(Tier):
        def __init__(self):
            super().__init__(namespace="flaky")
            self.up, self.calls, self.now = False, 0, 0.0
            self.clock = lambda: self.now

        def _op(self):
            self.calls += 1
            if not self.up:
                raise ConnectionError("down")
            return [None, None]

        def get_many(self, keys):
            self._op()
            return [b"7", None][: len(keys)]  # the namespace has a generation, no values

        def set(self, key, value, ttl):
            self._op()

        def delete(self, key):
            self._op()

        def incr(self, key):
            return self._op() and 1

        def add(self, key, value, ttl):
            return self._op() and True

    tier = Flaky()
    with VolatileCache(backend="sim", tier=tier, regenerate=str) as cache:
        for k in range(10):
            assert cache[k] == str(k)
        assert tier.calls == 3  # three failures, then skipped
        tier.now += 0.99
        cache.get("x")
        assert tier.calls == 3
        tier.now += 0.02  # past the first second: one trial, failing, then 2 s of skipping
        cache.get("y")
        assert tier.calls == 4
        tier.now += 1.5
        cache.get("z")
        assert tier.calls == 4
        tier.up = True
        tier.now += 0.6
        assert cache.get("w") is None and tier.calls == 5  # the trial succeeds
        cache.get("v")
        assert tier.calls == 6 and not tier.skipping
        info = cache.info()
        assert info.tier_errors == 4 and info.tier_skipped > 5


def test_calls_failing_together_open_the_breaker_for_the_first_pause_only():
    """Calls in flight when the server goes away are not trials: eight of them failing
    at once open the breaker for 1 s, and only the failed trial after it doubles it."""
    threads = 8

    class GoneTogether(Tier):
        def __init__(self):
            super().__init__(namespace="gone")
            self.barrier = threading.Barrier(threads)
            self.now = 100.0
            self.clock = lambda: self.now

        def get_many(self, keys):
            self.barrier.wait(10)  # every call is in flight before any fails
            raise ConnectionError("server went away")

        def set(self, key, value, ttl):
            raise ConnectionError("server went away")

        def delete(self, key):
            pass

        def incr(self, key):
            return 0

        def add(self, key, value, ttl):
            return True

    tier = GoneTogether()
    failed = []

    def call():
        try:
            tier.call(tier.get_many, ["k"])
        except Unavailable:
            failed.append(1)

    workers = [threading.Thread(target=call) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(10)
    assert len(failed) == threads
    assert tier._breakers[None].open_until - tier.now == 1.0 and tier.skipping
    tier.now += 1.0  # the pause is over: one trial, which fails
    with pytest.raises(Unavailable):
        tier.call(tier.set, "k", b"v", None)
    assert tier._breakers[None].open_until - tier.now == 2.0


# -- the cross-process lock ------------------------------------------------------------------------


def test_one_process_computes_a_key_that_many_ask_for_at_once(server, tmp_path):
    namespace, log = f"lock-{uuid.uuid4().hex[:8]}", tmp_path / "computed"
    children = [
        run_child(server, namespace, log, "7", "--lock", "--sleep", "1.0") for _ in range(4)
    ]
    results = [finish(child) for child in children]
    assert all(r["results"] == {"7": "value-7"} for r in results)
    assert log.read_text().split() == ["7"]
    assert sum(r["tier_hits"] for r in results) == 3


@pytest.mark.parametrize("held", [False, True], ids=["lock-free", "lock-held"])
def test_a_value_stored_between_a_miss_and_taking_the_lock_is_not_computed_again(server, held):
    """Another process stores the key and lets its lock go after this one's lookup
    missed and before it takes the lock (injected there): this one reads it."""
    tier = make_tier(server, lock=True, lock_timeout=5.0)
    other_tier = make_tier(server, namespace=tier.namespace)
    computed = []
    with (
        VolatileCache(backend="sim", tier=tier, regenerate=lambda k: computed.append(k) or b"mine")
        as cache,
        VolatileCache(backend="sim", tier=other_tier) as other,
    ):  # fmt: skip
        name, _ = cache._tier.key_of("k")
        if held:
            assert tier.add(name + ":lock", b"the other's token", 5.0)
        bound, real_lookup, stored = cache._tier, cache._tier.lookup, []

        def lookup(named, count=True):
            value, seen = real_lookup(named, count)
            if not stored:  # the first miss: now the other stores it and lets go
                stored.append(True)
                other["k"] = b"theirs"
                tier.release(name + ":lock", b"the other's token")
            return value, seen

        bound.lookup = lookup
        assert cache["k"] == b"theirs" and computed == []
        assert cache.info().tier_hits == 1


def test_a_crashed_lock_holder_blocks_nobody_past_the_lock_timeout(server):
    tier = make_tier(server, lock=True, lock_timeout=1.0)
    with VolatileCache(backend="sim", tier=tier, regenerate=lambda k: b"made") as cache:
        name, _ = cache._tier.key_of("k")
        assert tier.add(name + ":lock", b"a dead holder's token", 1.0)
        start = time.monotonic()
        assert cache["k"] == b"made"
        assert time.monotonic() - start < 3.0


# -- the other entry points -----------------------------------------------------------------------


def test_thumbnails_are_shared_through_the_tier(server, tmp_path):
    from PIL import Image

    from volcache import ThumbnailCache

    path = tmp_path / "picture.png"
    Image.new("RGB", (640, 480), (10, 200, 30)).save(path)
    tier = make_tier(server, namespace=None)
    with ThumbnailCache((64, 64), backend="sim", tier=tier) as one:
        first = one.get(path)
    with ThumbnailCache((64, 64), backend="sim", tier=tier) as two:
        decoded = []
        real = two._decode_file
        two._decode_file = lambda key: decoded.append(key) or real(key)
        second = two.get(path)
        assert decoded == [] and two.info().tier_hits == 1
        assert second.size == first.size and second.tobytes() == first.tobytes()
        with two.pin(path) as pinned:
            assert pinned.size == first.size


def test_a_thumbnail_in_the_tier_that_is_not_one_is_absent_not_an_error(server, tmp_path):
    """Bytes in a thumbnail's key that are not a thumbnail this cache could have made
    (no pixel, larger than its size, or not filled by its bytes) are rejected, and
    the file is decoded here."""
    import struct

    from PIL import Image

    from volcache import ThumbnailCache

    path = tmp_path / "picture.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(path)
    header = struct.Struct("<4s4sII")
    hostile = [
        header.pack(b"VCTH", b"L\0\0\0", 2**31, 0),  # 0 bytes of pixels, as its size says
        header.pack(b"VCTH", b"L\0\0\0", 0, 2**31),
        header.pack(b"VCTH", b"L\0\0\0", 64, 1) + b"\0" * 64,  # wider than 32
        header.pack(b"VCTH", b"L\0\0\0", 2, 2) + b"\0" * 3,
        header.pack(b"VCTH", b"P\0\0\0", 1, 1) + b"\0",
        b"not a thumbnail",
    ]
    tier = make_tier(server, namespace=None)
    for n, blob in enumerate(hostile):
        with ThumbnailCache((32, 32), backend="sim", tier=tier) as thumbnails:
            named = thumbnails._tier.key_of(thumbnails._key(path)[:3])
            thumbnails._tier.store_value(named, blob)
            assert thumbnails.get(path).size == (32, 32), n
            info = thumbnails.info()
            assert info.tier_rejected == 1 and info.tier_hits == 0, n


def test_an_async_function_shares_through_the_tier(server):
    tier = make_tier(server, namespace=None)
    calls = []

    async def double(x):
        calls.append(x)
        return b"%d" % (2 * x)

    f = cached(tier=tier, backend="sim")(double)
    g = cached(tier=tier, backend="sim")(double)
    assert asyncio.run(f(21)) == b"42" and asyncio.run(g(21)) == b"42" and calls == [21]


def test_methods_and_per_instance_caches_are_refused_with_a_tier(server):
    tier = make_tier(server)

    class Thing:
        @cached(tier=tier, backend="sim")
        def method(self, x):
            return x

    with pytest.raises(TypeError, match="method"):
        Thing().method(1)
    with pytest.raises(TypeError, match="per_instance"):
        cached(tier=tier, per_instance=True)(lambda self: 1)


def test_volcache_imports_without_the_client_libraries():
    code = (
        "import sys; sys.modules['redis'] = None; sys.modules['pymemcache'] = None\n"
        "import volcache, volcache.tiers\n"
        "from volcache.tiers import RedisTier, MemcachedTier\n"
        "for make in (RedisTier, MemcachedTier):\n"
        "    try:\n"
        "        make('redis://127.0.0.1:1/0' if make is RedisTier else '127.0.0.1:1')\n"
        "    except ImportError as exc:\n"
        "        print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "pip install 'volcache[redis]'" in out and "pip install 'volcache[memcached]'" in out


def test_pickle_is_never_loaded_from_an_unauthenticated_envelope():
    blob = sealed({"a": 1}, PickleCodec(), 0, SECRET, b"where")
    assert pickle.loads(blob[envelope.HEADER.size + 6 : -envelope.MAC_BYTES]) == {"a": 1}
    with pytest.raises(envelope.Rejected):
        envelope.decode(blob, PickleCodec(), 0, None, b"where")
    with pytest.raises(envelope.Rejected, match="MAC"):
        envelope.decode(blob, PickleCodec(), 0, SECRET, b"elsewhere")
    assert envelope.decode(blob, PickleCodec(), 0, SECRET, b"where") == {"a": 1}


def test_a_value_too_large_for_the_server_stays_local_without_tripping_the_breaker(server):
    tier = make_tier(server)
    big = b"x" * (3 << 20)  # past memcached's item size (2 MiB here); Redis takes it
    with VolatileCache(backend="sim", tier=tier) as one:
        for n in range(5):
            one[n] = big
        assert one[4] == big and one.info().tier_errors == 0 and not tier.skipping
        one["small"] = b"s"
        with VolatileCache(backend="sim", tier=tier) as two:
            assert two["small"] == b"s"
            assert (two.get(0) == big) == (server.kind != "memcached")


def test_memcached_keys_spread_over_several_servers():
    require("memcached", servers.missing("memcached"))
    with servers.running("memcached") as a, servers.running("memcached") as b:
        tier = MemcachedTier([a.url, b.url], namespace=f"spread-{uuid.uuid4().hex[:8]}")
        with VolatileCache(backend="sim", tier=tier) as one:
            for n in range(40):
                one[n] = b"%d" % n
        with VolatileCache(backend="sim", tier=tier) as two:
            assert [two[n] for n in range(40)] == [b"%d" % n for n in range(40)]
            assert two.info().tier_hits == 40
        counts = []
        for server in (a, b):  # each server holds some of them
            alone = MemcachedTier(server.url)
            counts.append(int(alone.client.stats()[b"curr_items"]))
            alone.close()
        assert all(count > 5 for count in counts) and sum(counts) >= 40


def test_a_write_through_encodes_the_value_once(server):
    class Counting(PickleCodec):
        encoded = 0

        def encode(self, value):
            Counting.encoded += 1
            return super().encode(value)

    tier = make_tier(server, secret=SECRET)
    with VolatileCache(backend="sim", tier=tier, codec=Counting()) as one:
        one["k"] = {"big": list(range(1000))}
        assert Counting.encoded == 1  # the same bytes go to the slab and to the server
        with VolatileCache(backend="sim", tier=tier, codec=Counting()) as two:
            assert two["k"] == {"big": list(range(1000))}


def test_an_async_call_computed_across_a_clear_is_not_current_after_it(server):
    import asyncio

    tier = make_tier(server, namespace=None)
    source = {1: b"old"}

    async def read(key):
        value = source.get(key, b"-")
        if key == 1:
            source[1] = b"new"
            elsewhere.cache_clear()  # another process clears...
            await here(2)  # ...and this one learns of it before the call ends
        return value

    here = cached(tier=tier, backend="sim")(read)
    elsewhere = cached(tier=tier, backend="sim")(read)
    assert asyncio.run(here(1)) == b"old"
    later = cached(tier=tier, backend="sim")(read)
    assert asyncio.run(later(1)) == b"new"


def test_a_key_cachetools_made_before_8_is_named_as_the_tuple_it_equals(server):
    from cachetools import keys as cachekeys

    tier = make_tier(server)
    old_style = cachekeys._HashedTuple((1, cachekeys._kwmark[0], ("y", 2)))
    with VolatileCache(backend="sim", tier=tier) as writer:
        writer[old_style] = b"value"
    with VolatileCache(backend="sim", tier=make_tier(server, namespace=tier.namespace)) as reader:
        assert reader.get(tuple(old_style)) == b"value"


def test_a_clear_the_server_missed_is_made_before_this_process_uses_the_tier_again(server):
    """A clear() while the server fails is remembered: this process reads and writes
    nothing through the tier until the new generation is written."""
    import time

    tier = make_tier(server)
    with VolatileCache(backend="sim", tier=tier) as cache:
        cache["k"] = b"before the clear"
        real_get_many, real_set = tier.get_many, tier.set

        def down(*args, **kwargs):
            raise ConnectionError("server unreachable")

        tier.get_many = tier.set = down  # a blip: three failures open the breaker
        for i in range(3):
            cache.get(("probe", i))
        cache.clear()
        assert cache.get("k") is None  # the breaker is open: the tier is not asked
        cache["written meanwhile"] = b"v"  # kept here, not written under the old token
        tier.get_many, tier.set = real_get_many, real_set
        tier.clock = lambda: time.monotonic() + 2.0  # the breaker's pause is over
        assert cache.get("k") is None  # the clear reaches the server first
        with VolatileCache(
            backend="sim", tier=make_tier(server, namespace=tier.namespace)
        ) as other:
            assert other.get("k") is None and other.get("written meanwhile") is None


def test_a_value_read_from_the_tier_across_this_processs_clear_is_not_kept(server):
    """A lookup answered before clear() stores nothing after it returned."""
    import threading

    tier = make_tier(server)
    with VolatileCache(backend="sim", tier=make_tier(server, namespace=tier.namespace)) as writer:
        writer["k"] = b"old"
    with VolatileCache(backend="sim", tier=tier) as cache:
        answered, cleared = threading.Event(), threading.Event()
        real = tier.get_many

        def get_many(keys):
            found = real(keys)
            if len(keys) == 2 and threading.current_thread().name == "reader":
                answered.set()
                assert cleared.wait(10)  # clear() runs here, in the main thread
            return found

        tier.get_many = get_many
        reader = threading.Thread(target=lambda: cache.get("k"), name="reader")
        reader.start()
        assert answered.wait(10)
        cache.clear()
        cleared.set()
        reader.join(10)
        assert cache.get("k") is None


def test_after_its_own_clear_a_process_writes_under_the_new_generation(server):
    """A lookup answered with the old generation while clear() writes the new one
    does not make the process write under the old one afterwards."""
    import threading

    tier = make_tier(server)
    with VolatileCache(backend="sim", tier=tier) as cache:
        cache["warm"] = b"w"
        real_set = tier.set

        def set_(key, value, ttl):
            if key.endswith(":gen") and threading.current_thread() is threading.main_thread():
                lookup = threading.Thread(target=lambda: cache.get("other"))
                lookup.start()  # begins after clear() did, answered before its write
                lookup.join(10)
            return real_set(key, value, ttl)

        tier.set = set_
        cache.clear()
        tier.set = real_set
        cache["k"] = b"written after the clear"
        with VolatileCache(
            backend="sim", tier=make_tier(server, namespace=tier.namespace)
        ) as other:
            assert other.get("k") == b"written after the clear"
