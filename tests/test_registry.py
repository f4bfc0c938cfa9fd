"""Choosing a backend: names, auto, the environment, and unavailable backends."""

from __future__ import annotations

import subprocess
import sys

import pytest

from volcache.backends import (
    Backend,
    BackendUnavailable,
    available_backends,
    get_backend,
    registry,
)
from volcache.backends.sim import SimBackend


class _NowhereBackend(SimBackend):
    name = "nowhere"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return "it needs a machine that does not exist; use the sim backend"


@pytest.fixture
def with_nowhere(monkeypatch):
    """Register an unavailable backend in front of the others."""
    monkeypatch.setattr(registry, "_BACKENDS", {"nowhere": _NowhereBackend, **registry._BACKENDS})
    registry._reason.cache_clear()
    yield
    registry._reason.cache_clear()


def test_sim_is_always_available():
    assert available_backends()["sim"] is None


def test_get_backend_passes_options():
    with get_backend("sim", memory=8192) as sim:
        assert isinstance(sim, Backend) and sim.stats()["memory"] == 8192


def test_unknown_option_is_a_typeerror():
    with pytest.raises(TypeError, match="colour"):
        get_backend("sim", colour="blue")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"known: .*sim"):
        get_backend("nosuch")


def test_environment_overrides_auto(monkeypatch):
    monkeypatch.setenv("VOLCACHE_BACKEND", "sim")
    with get_backend() as chosen:
        assert chosen.name == "sim"
    monkeypatch.setenv("VOLCACHE_BACKEND", "nosuch")
    with pytest.raises(ValueError, match="nosuch"):
        get_backend()


def test_naming_an_unavailable_backend_says_why(with_nowhere):
    assert available_backends()["nowhere"].startswith("it needs")
    with pytest.raises(BackendUnavailable, match="use the sim backend") as raised:
        get_backend("nowhere")
    assert raised.value.name == "nowhere"


def test_auto_skips_unavailable_backends(with_nowhere, monkeypatch):
    monkeypatch.delenv("VOLCACHE_BACKEND", raising=False)
    with get_backend() as chosen:
        assert available_backends()[chosen.name] is None


def test_volcache_require_rejects_unknown_names(tmp_path):
    """A typo in VOLCACHE_REQUIRE stops the run instead of requiring nothing."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--co", "tests/test_registry.py"],
        env={"VOLCACHE_REQUIRE": "sim,kernal", "PATH": ""},
        capture_output=True,
        text=True,
        cwd=registry.__file__.rsplit("/backends/", 1)[0],
    )
    assert run.returncode != 0
    assert "kernal" in run.stdout + run.stderr
