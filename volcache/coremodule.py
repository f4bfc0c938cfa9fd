"""The one door to ``volcache._core``, the C parts of the cache.

It is loaded if it was built and is not older than its sources (a source
checkout has them in ``core/``); else :data:`core` is None, :data:`WHY` says
why, and the Python versions of its parts serve (each part's module keeps
its Python version beside it: :mod:`volcache.hotpath`,
:mod:`volcache.slabbooks`, :mod:`volcache.records`). ``VOLCACHE_CORE=python``
chooses the Python versions; ``VOLCACHE_CORE_MODULE`` names another build of
the C one (CI's, with the sanitizers).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import warnings
from pathlib import Path
from types import ModuleType

#: The interface this package was written for (the module's VERSION).
VERSION = 4
#: The C sources, where a source checkout has them (a folder with module.c and
#: pycore.h, not any package named core): a build whose hash differs is stale.
SOURCES = Path(__file__).resolve().parent.parent / "core"


def source_hash(folder: Path) -> str:
    """The hash setup.py builds into the module (its sources', in name order)."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.[ch]")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _load() -> tuple[ModuleType | None, str | None]:
    chosen = os.environ.get("VOLCACHE_CORE", "native")
    if chosen not in ("native", "python"):
        raise ImportError(f"VOLCACHE_CORE must be 'native' or 'python', not {chosen!r}")
    if chosen == "python":
        return None, "VOLCACHE_CORE=python chose the Python versions"
    name = os.environ.get("VOLCACHE_CORE_MODULE") or "volcache._core"
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        return None, f"{name} was not built ({exc})"
    if getattr(module, "VERSION", None) != VERSION:
        return None, f"{name} has another interface (VERSION {getattr(module, 'VERSION', None)})"
    ours = (SOURCES / "module.c").is_file() and (SOURCES / "pycore.h").is_file()
    if ours and source_hash(SOURCES) != getattr(module, "SOURCE_HASH", None):
        warnings.warn(
            f"{name} is older than its sources in core/: the cache runs its Python "
            "versions until it is rebuilt (pip install -e . again)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None, f"{name} is older than its sources"
    return module, None


core, WHY = _load()
