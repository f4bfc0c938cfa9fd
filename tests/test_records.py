"""The record table: ids, the chained hash index, and the recency orders."""

from __future__ import annotations

import random

import pytest

from volcache import native_records
from volcache.records import INDEXED, LISTED, NONE, RECORD_BYTES, RecordTable

from .conftest import require


@pytest.fixture(params=["python", "native"])
def Table(request):
    """Each record table: the reference in Python, and the one in C."""
    if request.param == "python":
        return RecordTable
    require("kernel", native_records.unavailable())  # the helper the kernel backend needs too
    return native_records.NativeRecordTable


def test_ids_are_reused_and_an_empty_table_gives_its_columns_back(Table):
    table = Table()
    ids = [table.new(h, h * 10, h, 0) for h in range(100)]
    assert ids == list(range(100)) and table.count == 100
    table.delete(42)
    assert table.new(7, 70, 7, 0) == 42  # the freed id first
    for rid in range(100):
        table.delete(rid)
    assert table.count == 0 and table.size == 0
    # The reference counts the buckets' bytes; the C table, the pages it keeps.
    assert table.nbytes() == 8 * 4


def test_the_index_finds_every_record_of_a_hash_through_deletions(Table):
    """Against a dict of sets, with colliding hashes, deletions, growth and shrinking."""
    rng = random.Random(5)
    table = Table()
    model: dict[int, set[int]] = {}
    live: list[int] = []
    for step in range(20_000):
        if live and rng.random() < 0.45:
            rid = live.pop(rng.randrange(len(live)))
            model[table.hash[rid]].discard(rid)
            table.delete(rid)
        else:
            h = rng.choice([rng.getrandbits(32), rng.randrange(16), rng.randrange(64) << 20])
            rid = table.new(h, 0, 0, 0)
            table.index(rid)
            model.setdefault(h, set()).add(rid)
            live.append(rid)
        if step % 997 == 0:
            for h, rids in model.items():
                assert set(table.candidates(h)) == rids
    assert all(table.flags[rid] & INDEXED for rid in live)
    assert table.candidates(0xDEADBEEF) == [] or 0xDEADBEEF in model


def test_the_index_grows_and_shrinks_with_its_records(Table):
    table = Table()
    ids = []
    for n in range(10_000):
        ids.append(table.new(n, 0, 0, 0))
        table.index(ids[-1])
    grown = table.nbytes()  # one or two records a bucket
    assert 10_000 * RECORD_BYTES + 5_000 * 4 <= grown <= 10_000 * RECORD_BYTES + 10_000 * 4
    for rid in ids[:9_900]:
        table.delete(rid)
    assert table.nbytes() <= 100 * RECORD_BYTES + 200 * 4
    assert all(table.candidates(n) == [ids[n]] for n in range(9_900, 10_000))


def test_the_exact_recency_list_keeps_order_through_unlisting(Table):
    table = Table(exact=True)
    ids = [table.new(0, 0, 0, 0) for _ in range(6)]
    for rid in ids:
        table.append(rid)
    table.unlist(ids[0])
    table.unlist(ids[3])
    table.unlist(ids[5])
    table.append(ids[0])  # used again: the most recent
    assert list(table.listed_ids()) == [ids[1], ids[2], ids[4], ids[0]]
    assert table.victim() == ids[1] and table.tail == ids[0] and table.listed == 4
    table.delete(ids[2])  # a deleted record leaves the list
    assert list(table.listed_ids()) == [ids[1], ids[4], ids[0]]
    assert not table.flags[ids[3]] & LISTED and table.prev[ids[3]] == NONE


def test_the_clock_spares_records_listed_since_its_hand_passed(Table):
    table = Table()
    ids = [table.new(0, 0, 0, 0) for _ in range(4)]
    for rid in ids:
        table.append(rid)
    first = table.victim()  # every reference bit set: a whole turn clears them
    assert first == ids[0]
    table.unlist(first)
    table.unlist(ids[1])
    table.append(ids[1])  # used again: referenced
    assert table.victim() == ids[2]  # the hand spares ids[1]
    table.unlist(ids[2])
    assert table.victim() == ids[3]
    table.unlist(ids[3])
    assert table.victim() == ids[1] and table.listed == 1
    table.unlist(ids[1])
    assert table.victim() == NONE and list(table.listed_ids()) == []
