"""The tier on a real Redis Cluster (three masters, three replicas, started here on
loopback): values shared between processes and spread over every master, a
clear that holds on every node, a master killed mid-run, one dead master that
switches off only its own keys. The tier's other behaviour is tested on the
cluster too, by ``tests/test_tiers.py`` (its ``redis-cluster`` kind)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from volcache import VolatileCache
from volcache.bench import cluster
from volcache.tiers import RedisTier
from volcache.tiers.bound import MISSING

from .conftest import require, wait_child

CHILD = Path(__file__).with_name("tier_child.py")


@pytest.fixture(scope="module")
def shared():
    """One cluster for the tests that leave it whole (each its own namespace)."""
    require("redis-cluster", cluster.missing_cluster())
    with cluster.running_cluster() as running:
        yield running


@pytest.fixture
def own():
    """A cluster of the test's own, which it may break."""
    require("redis-cluster", cluster.missing_cluster())
    with cluster.running_cluster() as running:
        yield running


def child(running, namespace: str, log: Path, keys: range) -> dict:
    run = subprocess.run(
        [sys.executable, str(CHILD), "redis-cluster", running.url, namespace, str(log),
         ",".join(map(str, keys))],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def keys_of(running, node, namespace: str) -> int:
    """The keys of a namespace a node holds."""
    found = running.cli(node.port, "--scan", "--pattern", f"volcache:{namespace}:*")
    return len(found.split())


def test_a_second_process_reads_what_the_first_wrote_from_every_master(shared, tmp_path):
    namespace, log = f"spread-{uuid.uuid4().hex[:8]}", tmp_path / "computed"
    first = child(shared, namespace, log, range(300))
    assert first["tier_hits"] == 0 and len(log.read_text().split()) == 300
    second = child(shared, namespace, log, range(300))
    assert second["results"] == {str(k): f"value-{k}" for k in range(300)}
    assert second["tier_hits"] >= 290
    assert len(log.read_text().split()) == 300 + (300 - second["tier_hits"])
    counts = [keys_of(shared, master, namespace) for master in shared.masters()]
    assert len(counts) == 3
    assert all(count >= 0.15 * sum(counts) for count in counts), counts


def test_after_clear_no_old_value_is_served_in_any_process(shared):
    namespace = f"clear-{uuid.uuid4().hex[:8]}"

    def tier():
        return RedisTier(shared.url, cluster=True, namespace=namespace, timeout=1.0)

    with VolatileCache(backend="sim", tier=tier()) as writer:
        with VolatileCache(backend="sim", tier=tier()) as reader:
            for k in range(200):
                writer[k] = b"old-%d" % k
            assert all(reader[k] == b"old-%d" % k for k in range(200))
            writer.clear()
            # The reader's own copies are local; what it asks the tier for is absent.
            bound = reader._tier
            assert all(bound.fetch(bound.key_of(k)) is MISSING for k in range(200))
        with VolatileCache(backend="sim", tier=tier()) as fresh:
            assert all(fresh.get(k) is None for k in range(200))
            writer[7] = b"new"
            assert fresh.get(7) == b"new"


def test_a_master_killed_during_lookups_costs_no_wrong_value_and_is_used_again(own):
    namespace = f"failover-{uuid.uuid4().hex[:8]}"
    timeout = 0.05
    with VolatileCache(
        backend="sim", tier=RedisTier(own.url, cluster=True, namespace=namespace, timeout=timeout)
    ) as writer:
        for k in range(400):
            writer[k] = b"value-%d" % k
    tier = RedisTier(own.url, cluster=True, namespace=namespace, timeout=timeout)
    with VolatileCache(backend="sim", tier=tier) as reader:
        bound = reader._tier
        slowest, wrong, hits = 0.0, 0, []
        for k in range(400):  # each a lookup in the tier (nothing local is kept)
            if k == 100:
                own.masters()[0].kill()
            start = time.monotonic()
            value = bound.fetch(bound.key_of(k))
            slowest = max(slowest, time.monotonic() - start)
            wrong += value is not MISSING and value != b"value-%d" % k
            hits.append(value is not MISSING)
            time.sleep(0.01)  # 400 lookups over about 4 s: the failover happens among them
        assert wrong == 0
        assert slowest < 3.0
        assert all(hits[:100])
        own.wait_ready()  # the replica has taken over
        # The tier is used again: once the client has learnt who holds the dead
        # master's slots now (the next refresh after a failed call), and the
        # replica had every value.
        deadline = time.monotonic() + 15
        while True:
            after = [bound.fetch(bound.key_of(k)) for k in range(400)]
            if after == [b"value-%d" % k for k in range(400)] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert after == [b"value-%d" % k for k in range(400)]
    print(f"\nslowest lookup during the failover: {slowest * 1000:.0f} ms")


def test_one_dead_master_switches_off_only_the_keys_it_holds(own):
    """A master and its replica gone, and the cluster told to serve what it still
    covers: keys on the other masters are read as before; the dead master's
    breaker opens and its keys are skipped without waiting for it."""
    for node in own.nodes:
        own.cli(node.port, "CONFIG", "SET", "cluster-require-full-coverage", "no")
    namespace = f"partial-{uuid.uuid4().hex[:8]}"
    tier = RedisTier(own.url, cluster=True, namespace=namespace, timeout=0.05)
    with VolatileCache(backend="sim", tier=tier) as writer:
        for k in range(300):
            writer[k] = b"value-%d" % k
        bound = writer._tier
        names = {k: bound.key_of(k)[0] for k in range(300)}
        where = {k: tier.where(name) for k, name in names.items()}
        dead = own.masters()[0]
        dead_name = f"127.0.0.1:{dead.port}"
        replica = next(
            node
            for node in own.nodes
            if f"master_port:{dead.port}" in own.cli(node.port, "INFO", "replication")
        )
        dead.kill()
        replica.kill()
        on_dead = [k for k in range(300) if where[k] == dead_name]
        elsewhere = [k for k in range(300) if where[k] != dead_name]
        assert on_dead and elsewhere
        for _ in range(3):  # the same lookups again: the breaker has opened by then
            start = time.monotonic()
            found = {k: bound.fetch(bound.key_of(k)) for k in range(300)}
            seconds = time.monotonic() - start
        assert all(found[k] == b"value-%d" % k for k in elsewhere)
        assert all(found[k] is MISSING for k in on_dead)
        assert tier.skipping_at(dead_name)
        assert not any(tier.skipping_at(where[k]) for k in elsewhere)
        assert seconds < 1.0  # skipped, not waited for


def test_a_clear_with_a_master_down_clears_the_others_at_once_and_it_later(own):
    """The clear's tokens go to each master in a batch of its own: the healthy
    masters' groups are cleared for every process at once; the dead master's,
    once the clearing process uses the tier again after the failover, and only
    theirs are written again (a value stored in a healthy group after the clear
    stays). A tier made while its node is down raises nothing: its lookups are
    misses; made with another node beside it, it uses the cluster."""
    namespace = f"down-{uuid.uuid4().hex[:8]}"
    first_url = own.url
    writer = VolatileCache(
        backend="sim", tier=RedisTier(first_url, cluster=True, namespace=namespace, timeout=0.05)
    )
    for k in range(300):
        writer[k] = b"old-%d" % k
    where = {k: writer._tier.tier.where(writer._tier.key_of(k)[0]) for k in range(300)}
    dead = own.nodes[0]  # the node of the URL the writer was made with: a master
    dead_name = f"127.0.0.1:{dead.port}"
    assert dead_name in set(where.values())
    dead.kill()
    with VolatileCache(
        backend="sim", tier=RedisTier(first_url, cluster=True, namespace=namespace, timeout=0.05)
    ) as orphan:  # made with a dead node's URL: nothing raised
        assert orphan.get(1) is None and orphan.info().tier_errors >= 1
    alive = next(node for node in own.nodes if node.process.poll() is None)
    url = f"redis://127.0.0.1:{alive.port}/0"
    healthy = next(k for k in range(300) if where[k] != dead_name)
    with VolatileCache(
        backend="sim",
        tier=RedisTier([first_url, url], cluster=True, namespace=namespace, timeout=1.0),
    ) as started_late:  # the dead node first among its startup nodes: the next one answers
        assert started_late.get(healthy) == b"old-%d" % healthy
    writer.clear()
    bound = writer._tier
    on_dead_groups = {
        g for g, key in enumerate(bound._gen_keys) if bound.tier.where(key) == dead_name
    }
    assert 0 < len(on_dead_groups) < 256
    assert bound._pending == on_dead_groups
    assert writer.info().tier_clear_pending == len(on_dead_groups)
    writer[healthy] = b"new"  # its group was cleared: written under the new token

    def reader():
        tier = RedisTier(url, cluster=True, namespace=namespace, timeout=1.0)
        return VolatileCache(backend="sim", tier=tier)

    with reader() as now:
        bound = now._tier
        for k in range(300):
            if where[k] != dead_name and k != healthy:
                assert bound.fetch(bound.key_of(k)) is MISSING, k
        assert bound.fetch(bound.key_of(healthy)) == b"new"
    own.wait_ready()  # its replica has taken over
    deadline = time.monotonic() + 15
    on_dead = next(k for k in range(300) if where[k] == dead_name)
    while writer.info().tier_clear_pending and time.monotonic() < deadline:
        writer.get(("absent", on_dead))  # a lookup in a pending group finishes the clear
        writer._tier.fetch(writer._tier.key_of(on_dead))
        time.sleep(0.1)
    assert writer.info().tier_clear_pending == 0
    with reader() as later:
        bound = later._tier
        assert all(bound.fetch(bound.key_of(k)) is MISSING for k in range(300) if k != healthy)
        assert bound.fetch(bound.key_of(healthy)) == b"new"
    writer.close()


def replica_of(running, master):
    return next(
        node
        for node in running.nodes
        if f"master_port:{master.port}" in running.cli(node.port, "INFO", "replication")
    )


def test_a_clear_counts_a_master_done_only_once_its_replica_has_the_tokens(own):
    """A replica that has not confirmed the new tokens (stopped here) could take
    over without them and serve what was cleared: its master's groups stay
    pending until it confirms."""
    namespace = f"wait-{uuid.uuid4().hex[:8]}"
    tier = RedisTier(own.url, cluster=True, namespace=namespace, timeout=0.2)
    with VolatileCache(backend="sim", tier=tier) as writer:
        writer[1] = b"old"
        master = own.masters()[0]
        behind = replica_of(own, master)
        bound = writer._tier
        on_master = {
            g
            for g, key in enumerate(bound._gen_keys)
            if tier.where(key).endswith(f":{master.port}")
        }
        behind.process.send_signal(signal.SIGSTOP)
        try:
            writer.clear()
            assert bound._pending == on_master
        finally:
            behind.process.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 10
        group = next(iter(on_master))
        while bound._pending and time.monotonic() < deadline:
            bound._finish_clear(group)
            time.sleep(0.1)
        assert writer.info().tier_clear_pending == 0


def test_a_clear_survives_a_failover_right_after_it(own):
    """A master killed as soon as clear() returned: its replica, taking over,
    serves no value from before."""
    namespace = f"failover-clear-{uuid.uuid4().hex[:8]}"

    def tier():
        return RedisTier(own.url, cluster=True, namespace=namespace, timeout=1.0)

    with VolatileCache(backend="sim", tier=tier()) as writer:
        for k in range(300):
            writer[k] = b"old-%d" % k
        writer.clear()
        assert writer.info().tier_clear_pending == 0
        own.masters()[0].kill()
    own.wait_ready()
    deadline = time.monotonic() + 15
    while True:  # until the layout after the failover is learnt and every group answers
        with VolatileCache(backend="sim", tier=tier()) as reader:
            bound = reader._tier
            found = [bound.fetch(bound.key_of(k)) for k in range(300)]
            errors = reader.info().tier_errors + reader.info().tier_skipped
        assert all(value is MISSING for value in found)
        if errors == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert errors == 0


def test_a_cluster_url_is_checked_when_the_tier_is_made(shared):
    with pytest.raises(ValueError, match="scheme"):
        RedisTier("http://127.0.0.1:1", cluster=True)
    with pytest.raises(ValueError, match="database 0"):
        RedisTier(shared.url.rsplit("/", 1)[0] + "/3", cluster=True)
    with pytest.raises(TypeError, match="cluster=True"):
        RedisTier([shared.url, shared.url])
    # redis-py takes the password and TLS of the first URL alone: a list that differs is refused
    with pytest.raises(ValueError, match="differs from the first URL in password"):
        RedisTier([shared.url, "redis://:secret@127.0.0.1:1"], cluster=True)
    with pytest.raises(ValueError, match="connection_class"):
        RedisTier([shared.url, "rediss://127.0.0.1:1"], cluster=True)


def test_cluster_true_for_a_plain_server_is_refused(tmp_path):
    from volcache.bench import servers

    require("redis", servers.missing("redis"))
    with servers.running("redis") as plain, pytest.raises(ValueError, match="not in cluster mode"):
        RedisTier(plain.url, cluster=True)


class _Made:
    """A client as the tier makes one, for the fork test (it is never called)."""

    def set_retry(self, retry) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_fork_while_another_thread_makes_the_client_leaves_the_child_working():
    pytest.importorskip("redis")
    tier = RedisTier("redis://127.0.0.1:1/0", cluster=True, timeout=0.05)
    assert tier._client is None  # nothing answered: made at its first use
    entered, release = threading.Event(), threading.Event()

    def slow() -> _Made:  # another thread inside the network call to make it
        entered.set()
        release.wait(10)
        return _Made()

    tier._make = slow
    maker = threading.Thread(target=lambda: tier.client)
    maker.start()
    assert entered.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: its copy of the maker thread never finishes
        tier._make = _Made
        os._exit(0 if isinstance(tier.client, _Made) else 1)
    release.set()
    maker.join()
    assert wait_child(pid, 10) == 0
