"""Build the cache's C core (core/) with AddressSanitizer and UndefinedBehaviorSanitizer,
as the module ``_vc_core_sanitized`` in a folder.

    python .ci/sanitized.py OUTDIR

CI then runs the differential tests against it (volcache.coremodule loads the
module named in VOLCACHE_CORE_MODULE), with libasan preloaded: the
interpreter itself is not built with it.
"""

from __future__ import annotations

import runpy
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "core"
FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]


def main(outdir: str) -> None:
    build = runpy.run_path(str(ROOT / "volcache" / "coremodule.py"))  # its source_hash
    command = [
        "gcc", "-shared", "-fPIC", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-std=gnu11",
        *FLAGS, "-DPy_LIMITED_API=0x030B0000", "-DVC_CORE_NAME=_vc_core_sanitized",
        f'-DVC_CORE_HASH="{build["source_hash"](CORE)}"', f"-I{CORE}",
        f"-I{sysconfig.get_paths()['include']}", *sorted(str(p) for p in CORE.glob("*.c")),
        "-o", str(Path(outdir) / "_vc_core_sanitized.abi3.so"),
    ]  # fmt: skip
    subprocess.run(command, check=True)


if __name__ == "__main__":
    main(sys.argv[1])
