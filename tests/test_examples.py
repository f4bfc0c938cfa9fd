"""Every script in examples/ runs, and says what it is there to show."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SAYS = {
    "memoize.py": "after the purge",
    "gallery.py": "decoded 40 photos",
    "backends.py": "works here",
}


def test_every_example_is_checked():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(SAYS)


@pytest.mark.parametrize("name", sorted(SAYS))
def test_example_runs(name, tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the gallery writes its photos there
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, env=env, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert SAYS[name] in run.stdout
