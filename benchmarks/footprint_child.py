"""One footprint measurement, in a fresh interpreter: non-volatile bytes per idle entry.

Usage: python footprint_child.py KIND ENTRIES

KIND is ``volcache-str`` (a VolatileCache with ``str`` keys), ``cached-int``
(``@cached`` on a function of one ``int``) or ``cachetools-str`` (cachetools
``LRUCache`` holding the same entries, values included). Values are 256
bytes. Prints ``(Anonymous - LazyFree) / ENTRIES`` after the entries went
idle (volcache: ``volatilize()``), from ``/proc/self/smaps_rollup``.
"""

from __future__ import annotations

import gc
import json
import sys

VALUE = 256


def _nonvolatile() -> int:
    fields = {}
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            key, _, rest = line.partition(":")
            if key in ("Anonymous", "LazyFree"):
                fields[key] = int(rest.split()[0]) * 1024
    return fields["Anonymous"] - fields.get("LazyFree", 0)


def main() -> None:
    kind, entries = sys.argv[1], int(sys.argv[2])
    import cachetools

    from volcache import VolatileCache, cached

    value = bytes(range(256))
    gc.collect()
    before = _nonvolatile()
    if kind == "volcache-str":
        cache = VolatileCache(backend="kernel")
        for n in range(entries):
            cache[f"key-{n}"] = bytes([n % 251]) + value[1:]
        cache.volatilize()
    elif kind == "cached-int":

        @cached(backend="kernel")
        def make(n: int) -> bytes:
            return bytes([n % 251]) + value[1:]

        for n in range(entries):
            make(n)
        make.cache.volatilize()
    else:
        lru = cachetools.LRUCache(maxsize=entries)
        for n in range(entries):
            lru[f"key-{n}"] = bytes([n % 251]) + value[1:]
    gc.collect()
    print(json.dumps({"kind": kind, "bytes_per_entry": (_nonvolatile() - before) / entries}))


if __name__ == "__main__":
    main()
