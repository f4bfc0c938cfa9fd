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


def table_cdef(text: str) -> str:
    """table.h as cffi reads it: the struct and the integer constants, no other
    preprocessor lines (cffi's parser takes ``#define NAME number`` only)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("#"):
            words = line.split()
            if words[0] != "#define" or len(words) < 3 or not words[2].isalnum():
                continue  # guards, includes, and values that are not plain numbers
            line = f"#define {words[1]} {words[2]}"  # without a trailing comment
        lines.append(line)
    return "\n".join(lines)


ffibuilder = FFI()
ffibuilder.cdef((HERE / "volcache_native.h").read_text())
ffibuilder.cdef(table_cdef((HERE / "table.h").read_text()))
ffibuilder.set_source(
    "volcache.backends._native",
    '#include "volcache_native.h"\n#include "table.h"\n'
    f'const char vc_source_hash[] = "{source_hash(HERE)}";',
    sources=[f"{NATIVE}/volcache_native.c", f"{NATIVE}/uffd.c", f"{NATIVE}/table.c"],
    include_dirs=[NATIVE],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-std=gnu11", "-pthread"],
    extra_link_args=["-pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
