"""Only what pyproject.toml cannot say: the optional C extensions.

The native helper (``volcache.backends._native``, cffi) is built on Linux
only, and the cache's C core (``volcache._core``, the CPython C API) everywhere;
both as limited-API (abi3) extensions: one wheel serves every CPython from
3.11. If one cannot be built (no C compiler, no Python headers), the install
goes on without it: one warning line says why; the helper's reason is kept
beside the package for ``volcache info`` (the ``sim`` backend works), and
the cache runs the Python versions of its C parts.
"""

import hashlib
import re
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

UNBUILT = "_native.unbuilt"  # the reason the helper is missing, beside where it would be
CORE = "core"


def source_hash(folder: Path) -> str:
    """As volcache.coremodule.source_hash: the C sources' hash, in name order."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.[ch]")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


HOT = Extension(
    "volcache._core",
    sorted(str(p) for p in Path(CORE).glob("*.c")),
    include_dirs=[CORE],
    py_limited_api=True,
    define_macros=[
        ("Py_LIMITED_API", "0x030B0000"),
        # volcache.coremodule compares it with the sources': a stale build is not used.
        ("VC_CORE_HASH", f'"{source_hash(Path(CORE))}"'),
    ],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-std=gnu11"],
)


class OptionalBuildExt(build_ext):
    """build_ext that warns and records instead of failing the install."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # a compiler that cannot even be found fails here
            for ext in self.extensions or [None]:
                self._give_up(ext, exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._give_up(ext, exc)
        else:
            Path(self.get_ext_fullpath(ext.name)).with_name(UNBUILT).unlink(missing_ok=True)

    def _give_up(self, ext, exc):
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        failed = re.search(r"Command '\['([^']+)'.*exit status (\d+)", reason)
        missing = re.search(r"No such file or directory: '([^']+)'", reason)
        if failed:  # not the whole command line: which compiler, and that it failed
            reason = f"the C compiler {failed[1]!r} failed (exit status {failed[2]})"
        elif missing:
            reason = f"no C compiler: {missing[1]!r} was not found"
        elif len(reason) > 300:
            reason = reason[:300] + "..."
        if ext is not None and ext.name == HOT.name:
            print(
                f"WARNING: volcache's C core was not built ({reason}); its Python versions serve.",
                file=sys.stderr,
            )
            return
        print(
            f"WARNING: volcache's native helper was not built ({reason}); the kernel and uffd "
            "backends will be unavailable, sim works. Install a C compiler and the Python "
            "headers (apt-get install gcc python3-dev), then reinstall.",
            file=sys.stderr,
        )
        if ext is not None:
            target = Path(self.get_ext_fullpath(ext.name)).with_name(UNBUILT)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(reason + "\n")


if sys.platform.startswith("linux"):
    setup(
        cffi_modules=["backends/native/build.py:ffibuilder"],
        ext_modules=[HOT],
        cmdclass={"build_ext": OptionalBuildExt},
        options={"bdist_wheel": {"py_limited_api": "cp311"}},
    )
else:  # userfaultfd and MADV_FREE are Linux's: no helper, and sim
    setup(
        ext_modules=[HOT],
        cmdclass={"build_ext": OptionalBuildExt},
        options={"bdist_wheel": {"py_limited_api": "cp311"}},
    )
