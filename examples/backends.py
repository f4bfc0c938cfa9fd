"""Choose a backend, and compare what each does with the same workload.

Run: python examples/backends.py
"""

import time

from volcache import VolatileCache, available_backends

# Which backends work here, and why the others do not.
for name, reason in available_backends().items():
    print(f"{name:7} {'works here' if reason is None else 'unavailable: ' + reason}")
print()

VALUE = bytes(range(256)) * 256  # 64 KiB

for name, reason in available_backends().items():
    if reason is not None:
        continue
    with VolatileCache(backend=name, regenerate=lambda key: VALUE) as cache:
        start = time.perf_counter()
        for key in range(256):  # 16 MiB of values
            cache[key] = VALUE
        cache.volatilize()  # idle: all volatile
        purged = cache.backend.reclaim(4 << 20)  # pressure takes 4 MiB
        for key in range(256):
            assert cache[key] == VALUE  # intact, or regenerated: never a wrong byte
        elapsed = time.perf_counter() - start
        info = cache.info()
        print(
            f"{name:7} {elapsed * 1000:7.1f} ms  purged {purged >> 20} MiB -> "
            f"{info.purged} entries regenerated; {cache.backend.capabilities.purger}"
        )
