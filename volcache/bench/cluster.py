"""A throwaway Redis Cluster on loopback, for the tier's tests and bench.

Six ``redis-server`` processes (three masters, a replica each, as
``redis-cli --cluster create --cluster-replicas 1`` pairs them) on free ports
of 127.0.0.1, each in a temporary directory without persistence, with a short
node timeout so that a replica takes over a killed master within seconds.
Stopped, and the directories removed, when the context ends.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from .servers import Server, _answers, _free_port, missing

_START_SECONDS = 10.0
_READY_SECONDS = 30.0


@dataclass
class Cluster:
    """A running cluster: its nodes and how to reach and inspect them."""

    nodes: list[Server]
    node_timeout_ms: int
    _dirs: list[str] = field(default_factory=list, repr=False)
    kind = "redis-cluster"

    def kill(self) -> None:
        """Stop every node at once (SIGKILL), as a crash of them all would."""
        for node in self.nodes:
            node.kill()

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every node (a client needs one that answers)."""
        return [("127.0.0.1", node.port) for node in self.nodes]

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` of the first node still running."""
        for node in self.nodes:
            if node.process.poll() is None:
                return f"redis://127.0.0.1:{node.port}/0"
        raise RuntimeError("no node of the cluster is running")

    def cli(self, port: int, *args: str, timeout: float = 10.0) -> str:
        """``redis-cli -p PORT ARGS``' output (an error is a ``RuntimeError``)."""
        run = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if run.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(args)}: {run.stderr.strip()}")
        return run.stdout

    def masters(self) -> list[Server]:
        """The running nodes that are masters now (a replica that took over included)."""
        found = []
        for node in self.nodes:
            if node.process.poll() is not None:
                continue
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                if "role:master" in self.cli(node.port, "INFO", "replication", timeout=2):
                    found.append(node)
        return found

    def keys_on(self, node: Server) -> int:
        """The keys a node holds (``DBSIZE``)."""
        return int(self.cli(node.port, "DBSIZE").strip())

    def replicas_in_sync(self) -> bool:
        """Whether every running replica's link to its master is up."""
        for node in self.nodes:
            if node.process.poll() is not None:
                continue
            info = self.cli(node.port, "INFO", "replication", timeout=2)
            if "role:slave" in info and "master_link_status:up" not in info:
                return False
        return True

    def wait_ready(self, masters: int = 3, seconds: float = _READY_SECONDS) -> None:
        """Until every slot is served, by ``masters`` masters, as every running node
        sees it, and every replica is in sync."""
        deadline = time.monotonic() + seconds
        while True:
            states = []
            for node in self.nodes:
                if node.process.poll() is not None:
                    continue
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    states.append(self.cli(node.port, "CLUSTER", "INFO", timeout=2))
            running = sum(node.process.poll() is None for node in self.nodes)
            if (
                len(states) == running
                and all("cluster_state:ok" in s for s in states)
                and all("cluster_slots_ok:16384" in s for s in states)
                and len(self.masters()) == masters
                and self.replicas_in_sync()
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not settle in {seconds} s: {states[:1]}")
            time.sleep(0.1)


def missing_cluster() -> str | None:
    """Why a cluster cannot run here, or None."""
    reason = missing("redis")
    if reason is None and shutil.which("redis-cli") is None:
        reason = "redis-cli is not installed (apt-get install -y redis-server)"
    return reason


@contextlib.contextmanager
def running_cluster(node_timeout_ms: int = 1000) -> Iterator[Cluster]:
    """Three masters and three replicas for the block's duration."""
    reason = missing_cluster()
    if reason is not None:
        raise RuntimeError(reason)
    nodes: list[Server] = []
    dirs: list[str] = []
    cluster = Cluster(nodes, node_timeout_ms, dirs)
    try:
        for _ in range(6):
            port, bus = _free_port(), _free_port()  # the bus: not port + 10000, maybe taken
            directory = tempfile.mkdtemp(prefix="volcache-cluster-")
            dirs.append(directory)
            command = [
                "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", directory, "--protected-mode", "yes",
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms), "--cluster-port", str(bus),
                # A replica synchronizes at once (not 5 s later): until it has, it
                # cannot take over from its master.
                "--repl-diskless-sync-delay", "0",
            ]  # fmt: skip
            process = subprocess.Popen(
                command, cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            nodes.append(Server("redis", process, port))
        deadline = time.monotonic() + _START_SECONDS
        for node in nodes:
            while not _answers(node.port):
                if node.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"a cluster node did not start on port {node.port}")
                time.sleep(0.02)
        addresses = [f"127.0.0.1:{node.port}" for node in nodes]
        cluster.cli(
            nodes[0].port, "--cluster", "create", *addresses, "--cluster-replicas", "1",
            "--cluster-yes", timeout=60,
        )  # fmt: skip
        cluster.wait_ready()
        yield cluster
    finally:
        for node in nodes:
            if node.process.poll() is None:
                node.process.terminate()
        for node in nodes:
            try:
                node.process.wait(5)
            except subprocess.TimeoutExpired:
                node.kill()
        for directory in dirs:
            shutil.rmtree(directory, ignore_errors=True)
