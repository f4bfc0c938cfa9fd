"""Call keys: hashed once, and stored beside their values even when typed or with keywords."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
from cachetools import keys as cachekeys

from volcache import cached
from volcache.keys import HashedKey, hashed, hashkey, key_bytes, key_from_bytes, typedkey
from volcache.tiers import Tier


class Counted:
    """An argument whose hash is Python code that counts its calls."""

    def __init__(self, value: int) -> None:
        self.value = value
        self.hashes = 0

    def __hash__(self) -> int:
        self.hashes += 1
        return hash(self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Counted) and other.value == self.value


def test_a_key_of_c_hashed_parts_is_the_plain_tuple():
    for key in [(1, "a", b"b", 2.5, None, True), ((1, 2), frozenset({3})), (), (int, str)]:
        assert hashed(key) is key
    assert hashkey(1, "a") == (1, "a") and type(hashkey(1, "a")) is tuple


def test_a_key_with_python_hashes_is_hashed_once():
    arg = Counted(7)
    key = hashkey(arg, 1)
    assert type(key) is HashedKey and key == (arg, 1) and hash(key) == hash((Counted(7), 1))
    hashes = arg.hashes
    for _ in range(10):
        assert {key: 1}[key] == 1
    assert arg.hashes == hashes
    assert hashed(((arg,),)) == ((arg,),) and type(hashed(((arg,),))) is HashedKey


def test_keys_equal_cachetools_keys():
    arg = Counted(1)
    assert hashkey(1, arg, b=2, a=1) == cachekeys.hashkey(1, arg, b=2, a=1)
    assert typedkey(1, 2.0, x=3) == cachekeys.typedkey(1, 2.0, x=3)
    assert {cachekeys.hashkey(arg): "found"}[hashkey(arg)] == "found"


def test_a_hashed_key_is_hashed_again_in_another_process():
    # String hashes are salted per process: a pickled key must not carry its hash.
    key = hashed(("salted", Counted(1)))
    script = (
        "import pickle, sys; sys.path.insert(0, sys.argv[1]);"
        "key = pickle.loads(sys.stdin.buffer.read());"
        "print(hash(key) == hash(tuple(key)))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", script, os.path.dirname(os.path.dirname(__file__))],
        input=pickle.dumps(key), capture_output=True, env=env, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == b"True"


@pytest.mark.parametrize(
    "key",
    [
        cachekeys.hashkey(1, b=2, a=(3, "x")),
        cachekeys.typedkey(1, 2.0, "s", None, x=3),
        cachekeys.typedkey(b"b", (1, 2), flag=True),
        (int,),  # a positional argument that is a type
        (None, int, None),
        ("plain", 1),
    ],
)
def test_typed_and_keyword_keys_serialize_and_come_back_equal(key):
    data, special = key_bytes(key)
    assert data is not None
    back = key_from_bytes(data, special)
    assert back == key and hash(back) == hash(key)
    assert [type(part) for part in back] == [type(part) for part in key]


def test_keys_that_must_stay_objects():
    assert key_bytes(hashed((Counted(1),))) == (None, False)
    assert key_bytes((1, Counted)) == (None, False)  # a class of ours: no code for it
    assert key_bytes(Counted(1)) == (None, False)


def test_typed_and_keyword_keys_are_records_in_the_cache(make):
    cache = make()
    keys = [typedkey(i, x=float(i)) for i in range(50)]
    keys += [hashkey(i, x=i) for i in range(50)] + [(i, int) for i in range(50)]
    keys += [(i, None) for i in range(50)]  # None where a type was: other keys
    for n, key in enumerate(keys):
        cache[key] = n
    info = cache.info()
    assert info.entries == 200 and info.idle_entries == 200
    for n, key in enumerate(keys):
        assert cache.get(key) == n
    assert sorted(map(repr, cache)) == sorted(map(repr, keys))


# -- the cachetools that pyproject.toml allows --------------------------------------------------


class MemoryTier(Tier):
    """A tier in a dict: what a server would hold, without one."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.data: dict[str, bytes] = {}

    def get_many(self, keys):
        return [self.data.get(key) for key in keys]

    def set(self, key, value, ttl):
        self.data[key] = bytes(value)

    def delete(self, key):
        self.data.pop(key, None)

    def incr(self, key):
        self.data[key] = b"%d" % (int(self.data.get(key, b"0")) + 1)
        return int(self.data[key])

    def add(self, key, value, ttl):
        if key in self.data:
            return False
        self.data[key] = bytes(value)
        return True


def test_cachetools_keys_are_plain_tuples_stored_as_records():
    """What cachetools >= 8 (the floor in pyproject.toml) makes: plain tuples. Before
    8 its keys were a tuple subclass, which stays a Python object and which a tier
    cannot name; before 5.4 it had no typedmethodkey."""
    me = object()
    keys = [cachekeys.hashkey(1, y=2), cachekeys.typedkey(1, y=2.0)]
    keys += [cachekeys.methodkey(me, 1, y=2), cachekeys.typedmethodkey(me, 1)]
    for key in keys:
        assert type(key) is tuple and key_bytes(key)[0] is not None


@pytest.mark.parametrize("typed", [False, True])
def test_keyword_and_typed_calls_are_shared_through_a_tier(typed):
    tier = MemoryTier(namespace=f"calls-{typed}")
    computed = []

    def render(x, y=0):
        computed.append((x, y))
        return b"%d" % (x + y)

    first = cached(backend="sim", tier=tier, typed=typed)(render)
    again = cached(backend="sim", tier=tier, typed=typed)(render)  # another process's cache
    assert first(1, y=2) == again(1, y=2) == b"3" and computed == [(1, 2)]
