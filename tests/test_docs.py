"""The README's examples run, and the tree is ruff clean."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from volcache.bench import servers

from .conftest import SERVERS, require

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
EXAMPLES = re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.mark.parametrize("source", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_readme_example_runs(source, capsys):
    """Each python block of the README runs and prints what its comments say."""
    for kind in SERVERS:
        if f'running("{kind}")' in source:
            require(kind, servers.missing(kind))
    exec(compile(source, "README.md", "exec"), {})
    printed = capsys.readouterr().out.split("\n")
    expected = [m.group(1) for m in re.finditer(r"print\(.*\)[ \t]+# (.*)", source)]
    assert [line.strip() for line in printed[: len(expected)]] == expected


def test_ruff_is_clean():
    """ruff check and ruff format agree with the tree."""
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with the 'test' extra)")
    for args in (["check", "."], ["format", "--check", "."]):
        run = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
