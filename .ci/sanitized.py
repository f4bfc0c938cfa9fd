"""Build the C parts with AddressSanitizer and UndefinedBehaviorSanitizer, in a folder:
the record table (backends/native/table.c) as the module ``_vc_table_sanitized``,
the hot hit (core/hot.c) as ``_vc_hot_sanitized``.

    python .ci/sanitized.py OUTDIR

CI then runs the differential tests against them (tests/test_native_table.py
takes the module named in VOLCACHE_TABLE_MODULE, volcache.hotpath the one in
VOLCACHE_HOT_MODULE), with libasan preloaded: the interpreter itself is not
built with it.
"""

from __future__ import annotations

import hashlib
import runpy
import subprocess
import sys
import sysconfig
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ROOT / "backends" / "native"
HOT = ROOT / "core" / "hot.c"
FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]


def table(outdir: str) -> None:
    build = runpy.run_path(str(NATIVE / "build.py"))  # its table_cdef, not its builder
    ffibuilder = FFI()
    ffibuilder.cdef(build["table_cdef"]((NATIVE / "table.h").read_text()))
    ffibuilder.set_source(
        "_vc_table_sanitized",
        '#include "table.h"',
        sources=[str(NATIVE / "table.c")],
        include_dirs=[str(NATIVE)],
        extra_compile_args=["-O1", "-g", "-Wall", "-Wextra", "-std=gnu11", *FLAGS],
        extra_link_args=FLAGS,
    )
    ffibuilder.compile(tmpdir=outdir, verbose=False)


def hot(outdir: str) -> None:
    digest = hashlib.sha256(HOT.read_bytes()).hexdigest()
    command = [
        "gcc", "-shared", "-fPIC", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-std=gnu11",
        *FLAGS, "-DPy_LIMITED_API=0x030B0000", "-DVC_HOT_NAME=_vc_hot_sanitized",
        f'-DVC_HOT_HASH="{digest}"', f"-I{sysconfig.get_paths()['include']}",
        str(HOT), "-o", str(Path(outdir) / "_vc_hot_sanitized.abi3.so"),
    ]  # fmt: skip
    subprocess.run(command, check=True)


if __name__ == "__main__":
    table(sys.argv[1])
    hot(sys.argv[1])
