"""Throwaway Redis and memcached servers on loopback, for the tier's tests and bench.

Each runs from Debian's packages (``redis-server``, ``memcached``) on a free
port of 127.0.0.1, in a temporary directory, with no persistence, and is
stopped (and its directory removed) when its context ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

_START_SECONDS = 10.0


@dataclass
class Server:
    """A running server: its process, port and how to reach it."""

    kind: str
    process: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` or ``127.0.0.1:PORT``."""
        if self.kind == "redis":
            return f"redis://127.0.0.1:{self.port}/0"
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """Stop it at once (SIGKILL), as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def missing(kind: str) -> str | None:
    """Why a server of ``kind`` cannot run here, or None."""
    program = {"redis": "redis-server", "memcached": "memcached"}[kind]
    if shutil.which(program) is None:
        return f"{program} is not installed (apt-get install -y redis-server memcached)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            return False
        return True


@contextlib.contextmanager
def running(kind: str, port: int | None = None, memory: int | None = None) -> Iterator[Server]:
    """A server of ``kind`` (``redis`` or ``memcached``) for the block's duration;
    ``memory``: bytes it keeps at most, evicting the least recently used past them."""
    reason = missing(kind)
    if reason is not None:
        raise RuntimeError(reason)
    port = port or _free_port()
    directory = tempfile.mkdtemp(prefix=f"volcache-{kind}-")
    if kind == "redis":
        command = [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", directory, "--protected-mode", "yes",
        ]  # fmt: skip
        if memory is not None:
            command += ["--maxmemory", str(memory), "--maxmemory-policy", "allkeys-lru"]
    else:
        megabytes = max(64, (memory or 0) >> 20)
        command = ["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", str(megabytes)]
        command += ["-I", "2m"]  # items up to 2 MiB (the default is 1 MiB)
        if os.geteuid() == 0:
            command += ["-u", "root"]
    process = subprocess.Popen(
        command, cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    server = Server(kind, process, port)
    try:
        deadline = time.monotonic() + _START_SECONDS
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                error = process.stderr.read().decode(errors="replace") if process.stderr else ""
                raise RuntimeError(f"{kind} did not start on port {port}: {error.strip()}")
            time.sleep(0.02)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
        if process.stderr:
            process.stderr.close()
        shutil.rmtree(directory, ignore_errors=True)
