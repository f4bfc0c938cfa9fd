"""Build the record table (backends/native/table.c) with AddressSanitizer and
UndefinedBehaviorSanitizer, as the module ``_vc_table_sanitized`` in a folder.

    python .ci/sanitized_table.py OUTDIR

CI then runs the differential tests against it (tests/test_native_table.py
takes the module named in VOLCACHE_TABLE_MODULE), with libasan preloaded:
the interpreter itself is not built with it.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ROOT / "backends" / "native"


def main(outdir: str) -> None:
    build = runpy.run_path(str(NATIVE / "build.py"))  # its table_cdef, not its builder
    ffibuilder = FFI()
    ffibuilder.cdef(build["table_cdef"]((NATIVE / "table.h").read_text()))
    flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
    ffibuilder.set_source(
        "_vc_table_sanitized",
        '#include "table.h"',
        sources=[str(NATIVE / "table.c")],
        include_dirs=[str(NATIVE)],
        extra_compile_args=["-O1", "-g", "-Wall", "-Wextra", "-std=gnu11", *flags],
        extra_link_args=flags,
    )
    ffibuilder.compile(tmpdir=outdir, verbose=False)


if __name__ == "__main__":
    main(sys.argv[1])
