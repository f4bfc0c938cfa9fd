"""The store: a codec's per-value decoder comes back as it was made; a put made in one
call of the C core is the put made step by step."""

from __future__ import annotations

import itertools
import subprocess
import sys
from functools import partial
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from volcache import Codec, VolatileCache, coremodule
from volcache.backends import get_backend
from volcache.native_records import NativeRecordTable
from volcache.store import TRAILER, Store

from .conftest import require


def scaled(factor: Any, data: memoryview) -> Any:
    return int.from_bytes(data, "little") * factor


class ScaledCodec(Codec):
    """Values (number, factor): the number's bytes, decoded as number * factor."""

    def encode(self, value: Any) -> memoryview:
        raise TypeError("see encode_with_decoder")

    def decode(self, data: memoryview) -> Any:
        raise TypeError("see encode_with_decoder")

    def encode_with_decoder(self, value: Any) -> tuple[memoryview, Any, bool]:
        number, factor = value
        return memoryview(number.to_bytes(8, "little")), partial(scaled, factor), False


def test_a_partial_decoders_arguments_keep_their_types(backend_name: str) -> None:
    """A numpy scalar argument is not written as its bytes (as marshal would)."""
    with VolatileCache(backend=backend_name, codec=ScaledCodec()) as cache:
        cache["np"] = (21, np.int64(2))
        cache["int"] = (21, 2)
        cache["list"] = (2, [1, 2])
        cache.volatilize()
        assert cache["np"] == 42 and type(cache["np"]) is np.int64
        assert cache["int"] == 42
        assert cache["list"] == [1, 2, 1, 2]


class FusedAsSteps(RuleBasedStateMachine):
    """A store whose put is one call of the C core, and one that makes it step by
    step (the reference): the same ids, places, bytes and books, whatever the
    sizes, the table's growth, the slabs and the re-pins of volatile pages."""

    def __init__(self) -> None:
        super().__init__()
        require("kernel", None if coremodule.core is not None else coremodule.WHY)
        self.stores: list[Store] = []
        self.live: dict[int, tuple[bytes, bytes, bytes]] = {}

    @initialize(exact=st.booleans())
    def make(self, exact: bool) -> None:
        self.backends = [get_backend("sim", seed=3), get_backend("sim", seed=3)]
        self.stores = [Store(b, 16 * b.page_size, exact) for b in self.backends]
        for store in self.stores:  # room for 2 records: the table grows under the puts
            store.records = NativeRecordTable(exact, itertools.count(1).__next__, room=2)
        assert self.stores[0]._fused
        self.stores[1]._fused = False

    def both(self, name: str, *args):
        answers = [getattr(store, name)(*args) for store in self.stores]
        assert answers[0] == answers[1], (name, args, answers)
        return answers[0]

    @rule(
        value=st.one_of(st.binary(max_size=300), st.binary(min_size=2000, max_size=9000)),
        key=st.binary(max_size=40), spec=st.binary(max_size=20), h=st.integers(0, 2**32 - 1),
        tag=st.integers(0, 0xFFFF), flags=st.integers(0, 255), settle=st.booleans(),
    )  # fmt: skip
    def put(self, value, key, spec, h, tag, flags, settle):
        rid, lost = self.both("put", h, memoryview(value), key, tag, spec, flags)
        for other in lost:  # idle entries on a page a purge took: the caller frees them
            if self.live.pop(other, None) is not None:
                self.both("free", other)
        for store in self.stores:
            view = store.slabs.view(store.records.loc[rid], store.length(rid))
            assert bytes(view) == value + key + spec + TRAILER.pack(len(key), len(spec), tag, flags)
            view.release()
        # Joins the index and the order and goes idle in one call, or only goes idle.
        self.both("settle_new" if settle else "deactivate", rid)
        self.live[rid] = (value, key, spec)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data):
        rid = data.draw(st.sampled_from(sorted(self.live)))
        del self.live[rid]
        self.both("free", rid)

    @rule()
    def flush(self):
        """Idle pages become volatile: the next puts there re-pin them first."""
        assert self.stores[0].slabs.flush() == self.stores[1].slabs.flush()

    @invariant()
    def same_books(self):
        a, b = (store.slabs.books for store in self.stores)
        for name in ("npending", "stored_bytes", "capacity_bytes", "count", "total_pages"):
            assert getattr(a, name) == getattr(b, name), name
        assert self.stores[0].active_nbytes == self.stores[1].active_nbytes
        tables = [store.records for store in self.stores]
        for rid in self.live:
            assert tables[0].loc[rid] == tables[1].loc[rid]
            assert tables[0].flags[rid] == tables[1].flags[rid]
        assert list(tables[0].listed_ids()) == list(tables[1].listed_ids())

    def teardown(self) -> None:
        for store, backend in zip(self.stores, getattr(self, "backends", []), strict=True):
            store.close()
            backend.close()


FusedAsSteps.TestCase.settings = settings(max_examples=60, stateful_step_count=50, deadline=None)
TestFusedAsSteps = FusedAsSteps.TestCase


def test_a_fused_put_refuses_what_is_not_a_table():
    require("kernel", None if coremodule.core is not None else coremodule.WHY)
    with get_backend("sim") as backend:
        store = Store(backend, 16 * backend.page_size)
        books = store.slabs.books
        with pytest.raises(TypeError, match="Table"):
            books.put(object(), 1, b"v", b"k", b"", 0, 0)
        with pytest.raises(ValueError, match="low 32 bits"):
            books.put(store.records.handle, 2**40, b"v", b"k", b"", 0, 0)
        for tag, flags in [(0x10000, 0), (2**32 + 5, 0), (0, -(2**32) + 7), (0, 256)]:
            with pytest.raises(ValueError, match="tag must fit 16 bits"):
                books.put(store.records.handle, 1, b"v", b"k", b"", tag, flags)
        assert store.records.count == 0 and books.count == 0  # nothing was left half done
        store.close()


def test_a_store_after_its_backend_was_closed_is_refused_not_written():
    """The fused put writes at a slab's address: a closed backend unmapped it."""
    script = (
        "from volcache import VolatileCache\n"
        "from volcache.backends import get_backend\n"
        "backend = get_backend('sim')\n"
        "cache = VolatileCache(backend=backend)\n"
        "cache['a'] = b'x' * 100\n"
        "backend.close()\n"
        "try:\n"
        "    cache['b'] = b'y' * 100\n"
        "except ValueError as exc:\n"
        "    print('refused:', exc)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "refused:" in run.stdout and "closed" in run.stdout
