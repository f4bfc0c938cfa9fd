"""Only what pyproject.toml cannot say: the optional C extensions.

The native helper (``volcache.backends._native``, cffi) is built on Linux
only, and the C hot hit (``volcache._hot``, the CPython C API) everywhere;
both as limited-API (abi3) extensions: one wheel serves every CPython from
3.11. If one cannot be built (no C compiler, no Python headers), the install
goes on without it: one warning line says why; the helper's reason is kept
beside the package for ``volcache info`` (the ``sim`` backend works), and
the hot hit runs in Python.
"""

import hashlib
import re
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

UNBUILT = "_native.unbuilt"  # the reason the helper is missing, beside where it would be
HOT_SOURCE = "core/hot.c"
HOT = Extension(
    "volcache._hot",
    [HOT_SOURCE],
    py_limited_api=True,
    define_macros=[
        ("Py_LIMITED_API", "0x030B0000"),
        # volcache.hotpath compares it with the source's: a stale build is not used.
        ("VC_HOT_HASH", f'"{hashlib.sha256(Path(HOT_SOURCE).read_bytes()).hexdigest()}"'),
    ],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-std=gnu11"],
)


class OptionalBuildExt(build_ext):
    """build_ext that warns and records instead of failing the install."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # a compiler that cannot even be found fails here
            self._give_up(self.extensions[0] if self.extensions else None, exc)

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
                f"WARNING: volcache's C hot hit was not built ({reason}); it runs in Python.",
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
