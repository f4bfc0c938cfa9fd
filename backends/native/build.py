"""cffi build script for volcache.backends._native (run by setup.py at install)."""

import hashlib
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).parent
# Paths relative to the project root, where setup.py runs: setuptools wants them so.
NATIVE = "backends/native"

SOURCES = ("volcache_native.h", "volcache_native.c")


def source_hash(folder: Path) -> str:
    """The hash clib compares with the built helper's to find a stale build."""
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()


ffibuilder = FFI()
ffibuilder.cdef((HERE / "volcache_native.h").read_text())
ffibuilder.set_source(
    "volcache.backends._native",
    f'#include "volcache_native.h"\nconst char vc_source_hash[] = "{source_hash(HERE)}";',
    sources=[f"{NATIVE}/volcache_native.c"],
    include_dirs=[NATIVE],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-std=gnu11"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
