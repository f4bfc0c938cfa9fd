"""Only what pyproject.toml cannot say: the optional cffi extension.

The native helper (``volcache.backends._native``) is built on Linux only, as
a limited-API (abi3) extension: one wheel serves every CPython from 3.11. If
it cannot be built (no C compiler, no Python headers), the install goes on
without it: one warning line says why, the reason is kept beside the package
for ``volcache info``, and the ``sim`` backend works.
"""

import re
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

UNBUILT = "_native.unbuilt"  # the reason the helper is missing, beside where it would be


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
        cmdclass={"build_ext": OptionalBuildExt},
        options={"bdist_wheel": {"py_limited_api": "cp311"}},
    )
else:  # userfaultfd and MADV_FREE are Linux's: a pure-Python install, with sim
    setup()
