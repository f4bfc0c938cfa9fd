"""mypy finds no error in the package, and user code that memoizes keeps its types."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
USER_CODE = Path(__file__).with_name("typed_user_code.py")

# Misuses that the types must catch, each with the error mypy gives it.
MISUSES = """
from volcache import cached, lru_cache

@cached(maxsize=4)
def square(x: int) -> int:
    return x * x

@lru_cache
def word(n: int) -> str:
    return "w" * n

class Thing:
    @cached
    def size(self, scale: float) -> float:
        return scale

text: str = square(2)  # Incompatible types in assignment
square("2")  # Argument 1 to "__call__" of "CachedFunction" has incompatible type "str"
square.cache_invalidate(1, 2)  # Too many arguments for "cache_invalidate" of "CachedFunction"
word(n="3")  # Argument "n" to "__call__" of "CachedFunction" has incompatible type "str"
Thing().size("big")  # Argument 1 to "__call__" of "BoundCachedMethod" has incompatible type "str"
square.cache_info().purged.upper()  # "int" has no attribute "upper"
"""


def installed_layout(tmp_path: Path) -> Path:
    """The package as it is installed, made of links: volcache/ with backends/ inside it."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (it comes with the 'test' extra)")
    package = tmp_path / "volcache"
    package.mkdir()
    for entry in (ROOT / "volcache").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    (package / "backends").symlink_to(ROOT / "backends")
    return tmp_path


def mypy(where: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(where / "cache"), *args],
        cwd=where, capture_output=True, text=True,
    )  # fmt: skip


def test_mypy_is_clean(tmp_path):
    where = installed_layout(tmp_path)
    run = mypy(where, "--config-file", str(ROOT / "pyproject.toml"), "volcache")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "no issues found" in run.stdout


def test_memoized_functions_keep_their_types_under_mypy_strict(tmp_path):
    """Sync, async and method forms of cached(...), lru_cache(...) and bare @lru_cache:
    mypy --strict passes the user code and reveals each type its comment names."""
    where = installed_layout(tmp_path)
    (where / "tests").mkdir()
    (where / "tests" / "__init__.py").touch()
    (where / "tests" / USER_CODE.name).write_text(USER_CODE.read_text())
    # silent: the package is checked as an installed one is, its own errors not reported.
    run = mypy(where, "--strict", "--follow-imports=silent", f"tests/{USER_CODE.name}")
    errors = [line for line in run.stdout.splitlines() if ": error:" in line]
    assert run.returncode == 0 and not errors, run.stdout + run.stderr
    revealed = dict(re.findall(r":(\d+): note: Revealed type is \"(.*)\"", run.stdout))
    lines = USER_CODE.read_text().splitlines()
    expected = {
        str(number): lines[number - 2].split("# revealed: ", 1)[1]
        for number, line in enumerate(lines, 1)
        if line.lstrip().startswith("reveal_type(")
    }
    assert len(expected) >= 9
    assert revealed == expected


def test_mypy_strict_catches_misuse_of_a_memoized_function(tmp_path):
    """Wrong argument types, a wrong result type, wrong cache_invalidate arguments."""
    where = installed_layout(tmp_path)
    (where / "misuse.py").write_text(MISUSES)
    run = mypy(where, "--strict", "--follow-imports=silent", "misuse.py")
    for number, line in enumerate(MISUSES.splitlines(), 1):
        if "  # " in line:
            message = line.split("  # ", 1)[1]
            assert f"misuse.py:{number}: error: {message}" in run.stdout, run.stdout
    assert run.stdout.count(": error:") == MISUSES.count("  # ")


def test_the_typed_user_code_runs_as_its_types_say():
    """What the types promise is what runs: the file's own asserts, run as a script."""
    run = subprocess.run([sys.executable, str(USER_CODE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "Runtime type is 'CacheInfo'" in run.stderr
