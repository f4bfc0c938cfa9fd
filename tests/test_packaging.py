"""Installs anywhere: from source without a compiler (sim), and from the wheel (all of it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from .conftest import need_backend

ROOT = Path(__file__).resolve().parent.parent
_SKIP = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", "*.so", "_native.unbuilt", ".*cache"
)


@pytest.fixture
def source(tmp_path_factory) -> Path:
    """A copy of the tree without anything built, as an sdist unpacks (one a test:
    pip builds in the tree it is given)."""
    copy = tmp_path_factory.mktemp("src") / "volcache"
    shutil.copytree(ROOT, copy, ignore=_SKIP)
    return copy


def fresh_env(where: Path) -> tuple[Path, dict[str, str]]:
    """A new virtual environment, and an environment for its processes in which no C
    compiler can be found: PATH holds its python only, and CC is ``false``."""
    venv.create(where / "env", with_pip=True)
    bin_dir = where / "env" / "bin"  # python, pip and the scripts installed: no compiler
    env = {**os.environ, "PATH": str(bin_dir), "CC": "false", "PIP_QUIET": "1"}
    env.pop("PYTHONPATH", None)
    return bin_dir / "python", env


def run(python: Path, *args: str, env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        [str(python), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_a_source_install_without_a_compiler_works_on_sim(source, tmp_path):
    python, env = fresh_env(tmp_path)
    run(python, "-m", "pip", "install", str(source), env=env, cwd=tmp_path)
    out = run(python, "-c", (
        "from volcache import VolatileCache\n"
        "from volcache.backends import available_backends\n"
        "reasons = available_backends()\n"
        "print(reasons['kernel'])\n"
        "assert reasons['sim'] is None and reasons['uffd'] == reasons['kernel']\n"
        "from volcache import hotpath\n"
        "assert not hotpath.NATIVE\n"
        "with VolatileCache() as cache:\n"
        "    cache['k'] = b'v'\n"
        "    assert cache['k'] == cache['k'] == b'v' and cache.backend.name == 'sim'\n"
    ), env=env, cwd=tmp_path)  # fmt: skip
    assert "native helper (volcache.backends._native) was not built" in out
    assert "no C compiler: 'false' was not found" in out and "apt-get install gcc" in out
    info = run(tmp_path / "env" / "bin" / "volcache", "info", env=env, cwd=tmp_path)
    assert "auto picks: sim (kernel and uffd unavailable: see above)" in info


def test_the_wheel_carries_the_helper_and_works_without_a_compiler(source, tmp_path):
    need_backend("kernel")
    dist = tmp_path / "dist"
    run(Path(sys.executable), "-m", "build", "--outdir", str(dist), str(source),
        env=dict(os.environ), cwd=tmp_path)  # fmt: skip
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1 and wheels[0].name.endswith("-cp311-abi3-linux_x86_64.whl")
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "volcache/backends/_native.abi3.so" in names and "volcache/py.typed" in names
    assert "volcache/_core.abi3.so" in names
    assert not [n for n in names if n.endswith((".c", ".h", "_native.unbuilt"))]
    sdist = list(dist.glob("*.tar.gz"))
    assert len(sdist) == 1
    listing = subprocess.run(["tar", "tzf", str(sdist[0])], capture_output=True, text=True).stdout
    for part in ("backends/native/volcache_native.c", "backends/native/build.py", "setup.py",
                 "core/hot.c", "core/slabbooks.h"):  # fmt: skip
        assert part in listing
    python, env = fresh_env(tmp_path / "install")
    run(python, "-m", "pip", "install", str(wheels[0]), env=env, cwd=tmp_path)
    out = run(python, str(ROOT / ".ci" / "wheel_smoke.py"), env=env, cwd=tmp_path)
    assert "a cache round-trip on kernel: ok" in out
