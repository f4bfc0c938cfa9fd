"""BoundTier's clear on a tier of groups (as on a cluster): a clear some groups
missed stays pending for those groups alone, and concurrent clears keep every
group one of them missed. Interleavings are injected, not slept for."""

from __future__ import annotations

import threading

from volcache.codecs import DefaultCodec
from volcache.tiers import PartialWrite, Tier
from volcache.tiers.bound import MISSING, BoundTier


class GroupedTier(Tier):
    """A tier in a dict, of four groups, whose ``set_many`` fails the keys of the
    groups in ``down`` (as a dead master fails its own) and may run ``hook``
    after writing."""

    groups = 4

    def __init__(self) -> None:
        super().__init__(namespace="grouped")
        self.data: dict[str, bytes] = {}
        self.down: set[int] = set()
        self.written: list[list[str]] = []
        self.hook = None

    def group_of(self, key: str) -> int:
        return int(key.split(".")[1].split("}")[0], 16)

    def get_many(self, keys):
        return [self.data.get(key) for key in keys]

    def set(self, key, value, ttl):
        self.data[key] = bytes(value)

    def set_many(self, items):
        failed = [key for key, _ in items if self.group_of(key) in self.down]
        self.written.append([key for key, _ in items if key not in failed])
        for key, value in items:
            if key not in failed:
                self.data[key] = bytes(value)
        if self.hook is not None:
            self.hook()
        if failed:
            raise PartialWrite(failed, "a group's server is down")

    def delete(self, key):
        self.data.pop(key, None)

    def incr(self, key):
        raise NotImplementedError

    def add(self, key, value, ttl):
        return self.data.setdefault(key, bytes(value)) == bytes(value)


def bound(tier: GroupedTier) -> BoundTier:
    return BoundTier(tier, "grouped", DefaultCodec())


def key_in(b: BoundTier, group: int) -> int:
    return next(k for k in range(1000) if b._group_of(b.key_of(k)[0]) == group)


def test_a_pending_clear_writes_again_only_the_groups_it_missed():
    tier = GroupedTier()
    writer, reader = bound(tier), bound(tier)
    healthy, missed = key_in(writer, 0), key_in(writer, 2)
    writer.store_value(writer.key_of(healthy), b"old")
    tier.down = {2}
    assert writer.clear() == 1 and writer.stats()["tier_clear_pending"] == 1
    writer.store_value(writer.key_of(healthy), b"after the clear")  # group 0: cleared
    tier.down = set()
    tier.written.clear()
    assert writer.fetch(writer.key_of(missed)) is MISSING  # finishes the clear first
    assert tier.written == [[writer._gen_keys[2]]]  # group 2's token alone
    assert writer.stats()["tier_clear_pending"] == 0
    assert reader.fetch(reader.key_of(healthy)) == b"after the clear"


def test_an_older_clear_ending_last_keeps_what_a_newer_one_missed():
    """Clear A writes its tokens; clear B begins, misses group 1, ends; A ends
    last. Group 1's token predates B: it must stay pending."""
    tier = GroupedTier()
    b = bound(tier)
    a_wrote, b_done = threading.Event(), threading.Event()

    def pause_a():
        if threading.current_thread().name == "clear A":
            tier.hook = None
            a_wrote.set()
            assert b_done.wait(10)

    tier.hook = pause_a
    a = threading.Thread(target=b.clear, name="clear A")
    a.start()
    assert a_wrote.wait(10)
    tier.down = {1}
    assert b.clear() == 1
    b_done.set()
    a.join()
    assert 1 in b._pending
    tier.down = set()
    assert b.fetch(b.key_of(key_in(b, 1))) is MISSING and not b._pending
