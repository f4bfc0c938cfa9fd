"""Run by .ci/run in a fresh environment holding only the wheel: the helper came in it."""

from volcache import VolatileCache, hotpath
from volcache.backends import available_backends

reasons = available_backends()
print("backends:", reasons)
assert reasons["kernel"] is None and reasons["uffd"] is None, reasons
with VolatileCache(backend="kernel") as cache:
    cache["key"] = b"v" * 10_000
    cache.volatilize()
    assert cache["key"] == b"v" * 10_000
assert hotpath.NATIVE, "the C core did not come in the wheel"
print("a cache round-trip on kernel: ok")
