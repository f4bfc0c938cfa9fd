"""CPython's own ``lru_cache`` tests (``TestLRU`` in ``test.test_functools``), run on volcache.

``volcache.lru_cache`` stands in for ``functools.lru_cache``. The tests that
check a deliberate difference are expected to fail (see the README's table
"Coming from functools.lru_cache"); one that starts passing fails the run,
so that the list stays true.
"""

from __future__ import annotations

import functools
import types
import unittest

import pytest

import volcache

from .conftest import BACKENDS, need_backend

try:
    from test import test_functools
except ImportError:  # pragma: no cover - a Python without its test suite (Debian's python3)
    test_functools = None

#: CPython's tests of behaviours volcache changes on purpose, and why.
DIFFERENCES = {
    # cachetools keys: f(a=1, b=2) and f(b=2, a=1) are one call.
    "test_kwargs_order": "keyword order",
    # Methods are cached per instance, by identity, without keeping it alive;
    # the test's instances (an int subclass) cannot be weakly referenced.
    "test_lru_method": "methods per instance",
    # cache_parameters() also names per_instance and the backend.
    "test_lru_cache_parameters": "extra cache_parameters keys",
    # The cache's own code calls len(): caching builtins.len recurses.
    "test_lru_reentrancy_with_len": "caching builtins.len",
}

#: Not run: it would wait 10 s on a barrier and fail. Single flight makes
#: concurrent calls with the same arguments compute once, and this test needs
#: all its threads inside the function at once (test_lru_dropin.py checks
#: single flight under the same load).
SKIPPED = {"test_lru_cache_threaded2": "single flight: one computation per key at a time"}

pytestmark = pytest.mark.skipif(
    test_functools is None, reason="CPython's test suite (test.test_functools) is not installed"
)


def _adapter(backend: str) -> types.SimpleNamespace:
    """What TestLRU reads from the module it tests, with volcache's lru_cache."""

    def lru_cache(*args, **kwargs):
        return volcache.lru_cache(*args, backend=backend, **kwargs)

    return types.SimpleNamespace(
        lru_cache=lru_cache,
        _CacheInfo=functools._CacheInfo,
        WRAPPER_ASSIGNMENTS=functools.WRAPPER_ASSIGNMENTS,
        partial=functools.partial,
    )


def _test_class(backend: str) -> type:
    module = _adapter(backend)

    @module.lru_cache()
    def cached_func(x, y):
        return 3 * x + y

    cached_func.__qualname__ = cached_func.__name__ = f"cached_func_{backend}"
    globals()[cached_func.__name__] = cached_func  # pickled by name, as lru_cache's

    class Test(test_functools.TestLRU, unittest.TestCase):
        def setUp(self) -> None:
            need_backend(backend)

        @module.lru_cache()
        def cached_meth(self, x, y):
            return 3 * x + y

        @staticmethod
        @module.lru_cache()
        def cached_staticmeth(x, y):
            return 3 * x + y

    Test.module = module
    Test.cached_func = (cached_func,)
    name = f"TestLRU_{backend}"
    Test.__name__ = Test.__qualname__ = name
    for method in (Test.cached_meth, Test.cached_staticmeth):
        method.__qualname__ = f"{name}.{method.__name__}"
    for test, reason in SKIPPED.items():
        setattr(Test, test, unittest.skip(reason)(getattr(test_functools.TestLRU, test)))
    for test in DIFFERENCES:
        setattr(Test, test, unittest.expectedFailure(getattr(test_functools.TestLRU, test)))
    return Test


if test_functools is not None:
    for _backend in BACKENDS:
        _class = _test_class(_backend)
        globals()[_class.__name__] = _class
    del _class, _backend
