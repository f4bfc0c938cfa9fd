"""cffi build script for volcache.backends._native (run by setup.py at install)."""

import hashlib
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).parent
# Paths relative to the project root, where setup.py runs: setuptools wants them so.
NATIVE = "backends/native"


def source_hash(folder: Path) -> str:
    """The hash clib compares with the built helper's to find a stale build."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.[ch]")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


ffibuilder = FFI()
ffibuilder.cdef((HERE / "volcache_native.h").read_text())
ffibuilder.set_source(
    "volcache.backends._native",
    f'#include "volcache_native.h"\nconst char vc_source_hash[] = "{source_hash(HERE)}";',
    sources=[f"{NATIVE}/volcache_native.c", f"{NATIVE}/uffd.c"],
    include_dirs=[NATIVE],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-std=gnu11", "-pthread"],
    extra_link_args=["-pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
