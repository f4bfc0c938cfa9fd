"""Fixtures for the benchmarks: every backend that works here.

Run with ``python -m pytest benchmarks`` (``--benchmark-disable`` runs each
once, as a smoke test). Compare within one run: ratios, not absolute times.
"""

from __future__ import annotations

import pytest

from volcache.backends import available_backends, get_backend

WORKING = [name for name, reason in available_backends().items() if reason is None]


@pytest.fixture(params=WORKING)
def backend(request):
    """A fresh backend of each kind that works here."""
    with get_backend(request.param) as b:
        yield b


def pytest_configure(config: pytest.Config) -> None:
    # Without warm-up the first benchmark of a run is calibrated cold and
    # reads up to twice as slow as the same code later in the run.
    if not config.getoption("benchmark_warmup", None):
        config.option.benchmark_warmup = True
