"""The hot hit in C answers as its Python reference does, and fails as cleanly.

``PyCache`` puts :class:`~volcache.hotpath.PyHotBase` first in the MRO, so
the same cache runs the Python hot hit; a hypothesis workload drives it and
the C one side by side and compares every answer, the order of the keys and
the counters. ``VOLCACHE_CORE=python`` runs a whole cache without the C module.
"""

from __future__ import annotations

import gc
import itertools
import os
import subprocess
import sys
import weakref

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volcache import VolatileCache, cached, coremodule, hotpath
from volcache.entries import Entry
from volcache.hotpath import MISSING, PyClock, PyHotBase

from .conftest import require


def need_native() -> None:
    if os.environ.get("VOLCACHE_CORE") == "python":
        pytest.skip("VOLCACHE_CORE=python chose the Python hot hit")
    # Built with the native helper: where the kernel backend must run, so must this.
    require("kernel", None if hotpath.NATIVE else f"volcache._core is not in use: {coremodule.WHY}")


# PyHotBase is VolatileCache's base already where the C module is not in use.
_PY_BASES = (PyHotBase, VolatileCache) if hotpath.NATIVE else (VolatileCache,)


class PyCache(*_PY_BASES):  # type: ignore[misc]
    """A VolatileCache whose hot hit is the Python reference."""


class Timer:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


KEYS = st.sampled_from(["a", "b", "c", 1, 2.0, (1, "x"), b"k"])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, st.binary(max_size=40)),
        st.tuples(st.just("get"), KEYS),
        st.tuples(st.just("get"), KEYS),
        st.tuples(st.just("getdefault"), KEYS),
        st.tuples(st.just("del"), KEYS),
        st.tuples(st.just("wait"), st.floats(0, 3)),
        st.tuples(st.just("popitem")),
    ),
    max_size=60,
)


def run(cache: VolatileCache, timer: Timer, ops: list[tuple]) -> list:
    answers: list = []
    for op in ops:
        try:
            if op[0] == "set":
                cache[op[1]] = op[2]
                answers.append(None)
            elif op[0] == "get":
                answers.append(cache[op[1]])
            elif op[0] == "getdefault":
                answers.append(cache.get(op[1], "absent"))
            elif op[0] == "del":
                del cache[op[1]]
                answers.append(None)
            elif op[0] == "wait":
                timer.now += op[1]
                answers.append(None)
            else:
                answers.append(cache.popitem())
        except KeyError as exc:
            answers.append(("KeyError", str(exc).replace(type(cache).__name__, "Cache")))
    info = cache.info()
    answers.append((list(cache), len(cache), info.hits, info.misses, info.evictions))
    return answers


@pytest.mark.parametrize("maxsize", [None, 3], ids=["unbounded", "maxsize"])
@pytest.mark.parametrize("ttl", [None, 2.0], ids=["no-ttl", "ttl"])
@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_the_c_hot_hit_answers_as_the_python_one(maxsize, ttl, ops):
    need_native()
    results = []
    for kind in (VolatileCache, PyCache):
        timer = Timer()
        options = {"ttl": ttl, "timer": timer} if ttl is not None else {}
        cache = kind(maxsize or float("inf"), backend="sim", **options)
        try:
            results.append(run(cache, timer, ops))
        finally:
            cache.close()
    assert results[0] == results[1]


def test_the_cache_uses_the_c_hot_hit_where_it_was_built():
    need_native()
    cache = VolatileCache(backend="sim")
    assert type(cache).__getitem__ is hotpath.HotBase.__getitem__
    assert isinstance(Entry(0, "k"), hotpath.EntryBase)
    cache.close()


@pytest.mark.parametrize("kind", [VolatileCache, PyCache], ids=["c", "python"])
def test_a_hot_hit_counts_orders_and_maintains(kind):
    cache = kind(3, backend="sim")
    for key in "abc":
        cache[key] = key.encode()
        cache[key], cache[key]  # twice: hot
    hits = cache.info().hits
    cache._maintain_at = cache._uses.taken + 2  # the second hit from here maintains
    maintained = []
    cache._maintain_now = lambda: maintained.append(True)  # type: ignore[method-assign]
    assert cache["a"] == b"a" and not maintained
    assert cache["a"] == b"a" and maintained == [True]
    assert cache.info().hits == hits + 2
    cache["d"] = b"d"  # evicts the least recently used: b
    assert sorted(cache) == ["a", "c", "d"]
    cache.close()


@pytest.mark.parametrize("kind", [VolatileCache, PyCache], ids=["c", "python"])
def test_a_touch_that_raises_is_a_miss_a_deleted_key_or_an_error(kind):
    cache = kind(backend="sim")
    cache["k"] = b"v"
    cache["k"], cache["k"]
    assert cache._hot_value("k") == b"v"
    calls = []

    def deleted(key, entry):
        calls.append((key, entry.key))
        raise KeyError(key)

    cache._touch = deleted
    assert cache["k"] == b"v" and calls == [("k", "k")]  # the value read is still the one stored

    def expired(key, entry):
        raise hotpath.Expired

    cache._touch = expired
    hits = cache.info().hits
    assert cache._hot_value("k") is MISSING
    assert cache.info().hits == hits  # a tick taken and given back: not a hit

    def broken(key, entry):
        raise ZeroDivisionError("touch")

    cache._touch = broken
    with pytest.raises(ZeroDivisionError, match="touch"):
        cache["k"]
    cache._touch = None
    assert cache["k"] == b"v"  # nothing was left half done
    cache.close()


@pytest.mark.parametrize("kind", [VolatileCache, PyCache], ids=["c", "python"])
def test_unhashable_and_foreign_entries_go_the_slow_way(kind):
    cache = kind(backend="sim")
    with pytest.raises(TypeError, match="unhashable"):
        cache[["a", "list"]]
    cache._objects["odd"] = Entry(0, "odd")  # no value: not hot
    cache._objects["odd"].value = hotpath.COLD
    assert cache._hot_value("odd") is MISSING
    cache._objects.clear()
    cache.close()


def test_the_clock_is_checked_and_counts():
    need_native()
    cache = VolatileCache(backend="sim")
    with pytest.raises(TypeError, match="Clock"):
        cache._uses = itertools.count()
    clock = hotpath.Clock()
    assert [clock.tick(), clock.tick(), clock.taken] == [1, 2, 2]
    reference = PyClock()
    assert [reference.tick(), reference.tick(), reference.taken] == [1, 2, 2]
    with pytest.raises(AttributeError):
        clock.taken = 5
    cache.close()


class Marker:
    pass


def test_a_dropped_cache_and_its_entries_are_collected():
    """The C types take part in garbage collection: a cycle through them is freed."""
    cache = VolatileCache(3, backend="sim")  # _touch: a bound method of its own hot set
    cache["k"] = b"v"
    cache["k"], cache["k"]
    entry = cache._objects["k"]
    marker = Marker()
    entry.value = [entry, marker]  # a cycle through an Entry (which takes no weak reference)
    refs = [weakref.ref(cache), weakref.ref(marker)]
    cache.close()
    del cache, entry, marker
    gc.collect()
    assert [r() for r in refs] == [None, None]


def test_without_the_c_module_the_python_hot_hit_serves():
    script = (
        "from volcache import VolatileCache, cached, coremodule, hotpath\n"
        "from volcache import coremodule, records, slabbooks\n"
        "assert not hotpath.NATIVE and hotpath.HotBase is hotpath.PyHotBase\n"
        "assert coremodule.core is None and 'VOLCACHE_CORE=python' in coremodule.WHY\n"
        "c = VolatileCache(2, backend='sim')\n"
        "c['a'] = b'1'; c['b'] = b'2'\n"
        "assert c['a'] == c['a'] == b'1'\n"
        "c['c'] = b'3'\n"
        "assert sorted(c) == ['a', 'c'] and c.info().hits == 2\n"
        "assert type(c._entries.records) is records.RecordTable\n"
        "assert type(c._entries.store.slabs.books) is slabbooks.SlabBooks\n"
        "f = cached(backend='sim')(lambda x: x * 2)\n"
        "assert [f(2), f(2), f(2)] == [4, 4, 4] and f.cache_info().hits == 2\n"
        "print('ok')\n"
    )
    env = {**os.environ, "VOLCACHE_CORE": "python"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"


def test_a_decorated_hit_goes_through_the_c_hot_hit():
    need_native()
    f = cached(backend="sim")(lambda x: x + 1)
    assert [f(1), f(1), f(1)] == [2, 2, 2]
    info = f.cache_info()
    assert (info.hits, info.misses) == (2, 1)
    assert f.cache._uses.taken >= 2
    f.cache.close()


def run_script(script: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True,
        env={**os.environ, "PYTHONMALLOC": "debug", **env}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_key_whose_eq_replaces_the_dict_or_the_clock_does_no_harm():
    """The C hit holds the dict it searches, and reads the clock after the search
    (under PYTHONMALLOC=debug a use after free would crash)."""
    need_native()
    script = (
        "from volcache import VolatileCache\n"
        "class Key:\n"
        "    def __init__(self, what): self.what = what\n"
        "    def __hash__(self): return 1\n"
        "    def __eq__(self, other):\n"
        "        if self.what == 'dict': cache._objects = {}\n"
        "        if self.what == 'clock': del cache._uses\n"
        "        return isinstance(other, Key)\n"
        "for what in ('dict', 'clock'):\n"
        "    cache = VolatileCache(backend='sim')\n"
        "    stored = Key('none')\n"
        "    cache[stored] = b'v'\n"
        "    cache[stored], cache[stored]  # hot\n"
        "    try:\n"
        "        print(what, cache[Key(what)])\n"
        "    except KeyError:\n"
        "        print(what, 'KeyError')\n"
    )
    # Found in the dict it searched, as dict.get finds it: the Python hit says the same.
    assert run_script(script).splitlines() == ["dict b'v'", "clock b'v'"]
    assert run_script(script, VOLCACHE_CORE="python") == run_script(script)


def test_a_second_import_shares_the_c_objects_and_the_first_caches_keep_working():
    need_native()
    out = run_script(
        "import sys\n"
        "from volcache import VolatileCache, cached\n"
        "old = VolatileCache(backend='sim')\n"
        "f = cached(backend='sim')(lambda x: x * 2)\n"
        "old['k'] = b'v'; old['k'], old['k']\n"
        "for name in [n for n in sys.modules if n.startswith('volcache')]:\n"
        "    del sys.modules[name]\n"
        "import volcache\n"
        "new = volcache.VolatileCache(backend='sim')\n"
        "print(old['k'], f(4), f(4), old.get('absent', 'default'), VolatileCache(backend='sim'))\n"
    )
    assert out.startswith("b'v' 8 8 default VolatileCache(0 entries")


@pytest.mark.parametrize("kind", [VolatileCache, PyCache], ids=["c", "python"])
def test_the_hot_fields_take_what_the_cache_gives_them(kind):
    cache = kind(backend="sim")
    cache._maintain_at = 2**70  # a threshold past the clock: never reached
    cache["k"] = b"v"
    assert cache["k"] == cache["k"] == b"v"
    if hotpath.NATIVE and kind is VolatileCache:
        with pytest.raises(TypeError, match="_objects must be a dict"):
            cache._objects = None
        with pytest.raises(TypeError, match="_maintain_at must be an int"):
            cache._maintain_at = 1.5
    cache.close()


@pytest.mark.parametrize("maxsize", [None, 10], ids=["unbounded", "maxsize"])
def test_a_memoized_hit_in_c_answers_as_the_python_one(maxsize):
    need_native()
    answers = []
    for make in (hotpath.MemoHit, hotpath.PyMemoHit):
        cache = VolatileCache(maxsize or float("inf"), backend="sim")
        memo = make(cache)
        cache[(1,)] = b"one"
        cache[("a", 2.5, None, True, frozenset({1}), int)] = b"mixed"
        cache[(b"k",)] = b"bytes"
        got = [memo.hit((1,))]  # idle: not a hot hit
        cache[(1,)], cache[(1,)]
        got += [
            memo.hit((1,)),
            memo.hit((1,)),
            memo.hit(("a", 2.5, None, True, frozenset({1}), int)),
        ]
        cache[("a", 2.5, None, True, frozenset({1}), int)]
        cache[("a", 2.5, None, True, frozenset({1}), int)]
        got += [memo.hit(("a", 2.5, None, True, frozenset({1}), int))]
        got += [memo.hit(([1],)), memo.hit((object(),)), memo.hit(())]  # not plain: Python's way
        cache[(b"k",)] = b"new"  # replaced: not hot any more
        got += [memo.hit((b"k",)), memo.hits, sorted(map(repr, cache))]
        answers.append([hotpath.MISSING if g is hotpath.MISSING else g for g in got])
        cache.close()
    assert answers[0] == answers[1]
    assert answers[0][:3] == [hotpath.MISSING, b"one", b"one"] and answers[0][-2] == 3


def test_a_memoized_hit_needs_a_cache_and_keeps_the_decorators_counts():
    need_native()
    with pytest.raises(TypeError, match="VolatileCache"):
        hotpath.MemoHit({})
    f = cached(backend="sim")(lambda *args: len(args))
    f(1), f(1), f(1), f((1, 2)), f((1, 2))  # a tuple argument: volcache's key, not C's
    info = f.cache_info()
    assert (info.hits, info.misses) == (3, 2)
    f.cache_clear()
    assert (f.cache_info().hits, f.cache_info().misses) == (0, 0)
    f(1), f(1)
    assert (f.cache_info().hits, f.cache_info().misses) == (1, 1)
    f.cache.close()
