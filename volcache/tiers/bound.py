"""One cache's use of a tier: its namespace, its counters, its generation.

The cache calls :meth:`BoundTier.lookup` after a local miss (and
:meth:`~BoundTier.computing` around making the value), :meth:`store` after a
store, :meth:`remove` and :meth:`clear` when entries leave. None of
them raises for the server's sake: a failure is counted and the cache goes on
as if the tier did not have the value.

``clear`` gives the namespace a new generation (a random token on the
server, see :mod:`.generation`); values carry the generation they were
written under, and one of another is absent. A reader learns the generation
with every lookup (it is read with the value, in one round trip). A value
computed after a lookup that missed is written under the generation of that
miss (:meth:`BoundTier.computing`), so a clear elsewhere during the
computation makes it absent, never current; other writes use the latest
generation this process saw.

On a tier of several servers that each hold a part of the keys (a Redis
Cluster: ``tier.groups`` > 0), a namespace's keys fall into that many groups
by their hash, each group's keys and its own generation token sharing a
hash tag: they live on one server, where one ``MGET`` reads both, and the
groups spread over every server. ``clear`` gives every group a new token,
each confirmed by the replicas of its server (it survives a failover).
Once all are written, a value from before it is absent in every process.
Groups whose server could not be told stay *pending*
(``info().tier_clear_pending``): this process neither reads nor writes
their keys and writes their tokens again at each later use of them, while
other processes may still be served their old values until it does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..codecs import Codec, Decoder, DefaultCodec
from . import envelope
from .base import PartialWrite, Skipped, Tier, Unavailable
from .generation import Generations, new_token, parse_token
from .keys import namespace_part, stable_key_bytes

MISSING = object()
_POLL_FIRST, _POLL_MAX = 0.005, 0.1  # a lock waiter's polling interval, doubling


class BoundTier:
    """A tier as one cache uses it: namespaced keys, envelopes, counters.

    ``parse``: turns a value decoded from the tier into the one the cache
    uses, or raises :class:`~volcache.tiers.envelope.Rejected` (the value is
    then absent, and counted as rejected).
    """

    def __init__(
        self, tier: Tier, namespace: str, codec: Codec, parse: Callable[[Any], Any] | None = None
    ) -> None:
        if not isinstance(tier, Tier):
            raise TypeError(f"tier must be a volcache.tiers.Tier, got {tier!r}")
        raw_only = tier.secret is None
        if raw_only and not isinstance(codec, DefaultCodec) and not codec.raw:
            raise TypeError(
                f"codec {envelope.codec_name(codec)} turns bytes from the tier into objects by "
                "running code, and this tier has no secret: anyone who can write to the "
                "server could make it run theirs. Pass secret= to the tier (values are then "
                "authenticated with HMAC-SHA256), or use the default codec (without a secret "
                "only bytes and arrays travel)"
            )
        self.tier = tier
        self.namespace = namespace
        self.codec = codec
        self.parse = parse
        self._prefix = f"volcache:{namespace_part(namespace)}:{tier.version}:"
        self._groups = tier.groups
        if self._groups:
            # A hash tag per group: the group's keys and its token on one server.
            # The namespace's hash in it: other namespaces' groups fall elsewhere.
            base = hashlib.sha256(self._prefix.encode()).hexdigest()[:8]
            self._tags = [f"{self._prefix}{{{base}.{g:x}}}:" for g in range(self._groups)]
        else:
            self._tags = [self._prefix]
        self._gen_keys = [tag + "gen" for tag in self._tags]
        # What this process knows of each group's token: made at a group's first
        # use (a cache on a cluster may touch few of its 256 groups).
        self._generations: list[Generations | None] = [None] * len(self._tags)
        # The groups of a clear() their server did not take: until it does, this
        # process neither reads nor writes their keys (a value from before the
        # clear would be current again). Replaced, never mutated, under _lock.
        self._pending: frozenset[int] = frozenset()
        self._clears = 0  # clear() calls begun: a retry that began before one is stale
        self._settled = 0  # clear() calls whose pending groups are stored
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(
            ("tier_hits", "tier_misses", "tier_errors", "tier_rejected", "tier_skipped"), 0
        )

    def stats(self) -> dict[str, int]:
        """The counters, and ``tier_clear_pending``: the groups a ``clear()`` has not
        reached yet (0: every process is past it)."""
        with self._lock:
            return {**self.counts, "tier_clear_pending": len(self._pending)}

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def _call(self, operation: Any, *args: Any, key: str | None = None) -> Any:
        """The tier's call (through the breaker of the server that holds ``key``);
        counts a failure or a skip and re-raises ``Unavailable``."""
        where = None if key is None else self.tier.where(key)
        try:
            return self.tier.call(operation, *args, where=where)
        except Skipped:
            self._count("tier_skipped")
            raise
        except Unavailable:
            self._count("tier_errors")
            raise

    def key_of(self, key: Any) -> tuple[str, bytes]:
        """(the tier key, the key's stable bytes); ``TypeError`` if it has none."""
        data = stable_key_bytes(key)
        digest = hashlib.sha256(data).hexdigest()
        return self._tags[self._group_of(digest)] + digest, data

    def _generations_of(self, group: int) -> Generations:
        """What this process knows of a group's token."""
        generations = self._generations[group]
        if generations is None:
            with self._lock:
                generations = self._generations[group]
                if generations is None:
                    generations = self._generations[group] = Generations()
        return generations

    def _group_of(self, name: str) -> int:
        """The group of a tier key (or of its digest, which ends it)."""
        return int(name[-64:-56], 16) % self._groups if self._groups else 0

    def _where(self, data: bytes) -> bytes:
        return envelope.context(self.namespace, self.tier.version, data)

    # -- the cache's calls ---------------------------------------------------------------

    def fetch(self, named: tuple[str, bytes], count: bool = True) -> Any:
        """The value the tier holds for ``key``, or ``MISSING`` (absent, rejected, or
        the tier unavailable). ``count=False``: a lock waiter's poll, not a lookup
        (failures and rejections are counted all the same). ``named``: :meth:`key_of`'s."""
        return self.lookup(named, count)[0]

    def lookup(self, named: tuple[str, bytes], count: bool = True) -> tuple[Any, int | None]:
        """:meth:`fetch`'s value, and the generation the tier was read under (None if
        the tier is unavailable): what :meth:`computing` needs after a miss."""
        name, data = named
        group = self._group_of(name)
        if group in self._pending and not self._finish_clear(group):
            return MISSING, None
        ticket = self._generations_of(group).ticket()
        try:
            raw, blob = self._call(self.tier.get_many, [self._gen_keys[group], name], key=name)
        except Unavailable:
            return MISSING, None
        generation = self._settle(group, ticket, parse_token(raw))
        if generation is None or blob is None:
            if count:
                self._count("tier_misses")
            return MISSING, generation
        try:
            value = envelope.decode(
                blob, self.codec, generation, self.tier.secret, self._where(data)
            )
            if self.parse is not None:
                value = self.parse(value)
        except envelope.Cleared:
            if count:
                self._count("tier_misses")
            return MISSING, generation
        except envelope.Rejected:
            self._count("tier_rejected")
            return MISSING, generation
        if count:
            self._count("tier_hits")
        return value, generation

    def store_value(self, named: tuple[str, bytes], value: Any) -> None:
        """:meth:`store` of a value not encoded yet (one the codec refuses stays local)."""
        try:
            data, decode, _ = self.codec.encode_with_decoder(value)
        except TypeError:
            return
        self.store(named, (data, decode))

    def store(self, named: tuple[str, bytes], encoded: tuple[memoryview, Decoder]) -> None:
        """Write a value through to the tier, as the codec encoded it for the cache
        (one that may not travel stays local). Inside :meth:`computing` for the
        key, in the same thread, under the generation its computation began
        under; otherwise under the latest one this process saw."""
        name, data = named
        group = self._group_of(name)
        if group in self._pending and not self._finish_clear(group):
            return
        carried = self._generations_of(group).carried(name)
        if carried is not None:
            generation = carried[0]
        else:
            generation = self._generations_of(group).known
            if generation is None:
                generation = self._read_generation(group)
        if generation is None:
            return  # unknown: a write could outlive a clear
        blob = envelope.encode(encoded, self.codec, generation, self.tier.secret, self._where(data))
        if blob is None:
            return
        with contextlib.suppress(Unavailable):
            self._call(self.tier.set, name, blob, self.tier.ttl, key=name)

    def remove(self, named: tuple[str, bytes]) -> None:
        """Delete a key's value in the tier."""
        name, _ = named
        with contextlib.suppress(Unavailable):
            self._call(self.tier.delete, name, key=name)

    def clear(self) -> int:
        """Every value of the namespace becomes absent, in every process. Returns the
        groups whose server could not be told now (0: all were): this process
        neither reads nor writes their keys until it can, and other processes
        may be served their old values until then."""
        with self._lock:
            self._clears += 1
            mine = self._clears
        groups = range(len(self._gen_keys))
        failed = set(groups) - self._renew(groups).keys()
        with self._lock:
            if self._clears == mine:  # the latest clear: what it failed is what is pending
                self._pending = frozenset(failed)
            else:  # a later one began meanwhile and may end first: keep what it left too
                self._pending |= failed
            self._settled += 1
        return len(failed)

    def _finish_clear(self, group: int) -> bool:
        """The pending groups of a clear, written again; whether ``group`` is done."""
        with self._lock:
            began, pending = self._clears, self._pending
            if self._settled != began:  # a clear is under way: its groups are not stored yet
                return group not in pending
        if not pending:
            return True
        failed = pending - self._renew(pending).keys()
        with self._lock:
            if self._clears == began:  # no clear() since: its pending groups are ours
                self._pending = frozenset(failed)
            return group not in self._pending

    # -- the generation -----------------------------------------------------------------

    def _read_generation(self, group: int) -> int | None:
        if group in self._pending and not self._finish_clear(group):
            return None
        gen_key = self._gen_keys[group]
        ticket = self._generations_of(group).ticket()
        try:
            raw = self._call(self.tier.get_many, [gen_key], key=gen_key)[0]
        except Unavailable:
            return None
        return self._settle(group, ticket, parse_token(raw))

    def _settle(self, group: int, ticket: int, token: int | None) -> int | None:
        """The generation after a reading (with ``ticket``) found ``token``: that
        token; a new one if it was lost; or a new one if the server went back
        to a token this process saw replaced (what was cleared stays absent)."""
        if token is None:
            return self._establish(group)
        if self._generations_of(group).learn(ticket, token):
            return token
        return self._renew_one(group)

    def _establish(self, group: int) -> int | None:
        """A group without a token (new, or its token lost) gets one, unless
        another process gave it one first."""
        token = new_token()
        gen_key, generations = self._gen_keys[group], self._generations_of(group)
        try:
            if self._call(self.tier.add, gen_key, b"%d" % token, None, key=gen_key):
                # Its own write is what it knows from now on: a reading answered
                # before the write landed must not replace it (a ticket taken after).
                generations.learn(generations.ticket(), token)
                return token
            ticket = generations.ticket()
            found = parse_token(self._call(self.tier.get_many, [gen_key], key=gen_key)[0])
        except Unavailable:
            return None
        if found is None:  # lost again at once, or not a token: replaced
            return self._renew_one(group)
        return found if generations.learn(ticket, found) else self._renew_one(group)

    def _renew_one(self, group: int) -> int | None:
        """A new token for one group (every value of it becomes absent), or None."""
        return self._renew([group]).get(group)

    def _renew(self, groups: Iterable[int]) -> dict[int, int]:
        """A new token for each of ``groups``, written together (``set_many``:
        confirmed by the replicas on a cluster); the tokens written, by group."""
        tokens = {group: new_token() for group in groups}
        items = [(self._gen_keys[group], b"%d" % token) for group, token in tokens.items()]
        failed: set[int] = set()
        try:
            self._call(self.tier.set_many, items)
        except Unavailable as exc:
            cause = exc.__cause__
            if isinstance(cause, PartialWrite):
                names = set(cause.failed)
                failed = {g for g in tokens if self._gen_keys[g] in names}
            else:
                failed = set(tokens)
        for group, token in tokens.items():
            if group not in failed:
                # A ticket taken after the write: a reading answered before it
                # landed (the old token) began earlier, and does not replace it.
                generations = self._generations_of(group)
                generations.learn(generations.ticket(), token)
        return {group: token for group, token in tokens.items() if group not in failed}

    # -- single flight across processes ---------------------------------------------------

    @contextlib.contextmanager
    def computing(
        self, named: tuple[str, bytes], generation: int | None, lock: bool = True
    ) -> Iterator[Any]:
        """Around a computation of ``key`` after a :meth:`lookup` that missed under
        ``generation``: yields ``MISSING`` to compute, or the value another process
        computed meanwhile.

        What the computation stores of the key (in this thread) is written under
        the generation it began under: ``generation``, or that of a later poll
        that missed too. After a clear elsewhere meanwhile the value is then
        absent, not current (None: no write).

        ``lock`` (and a tier of ``lock=True``): one process computes a key at a
        time; the others wait for the tier to have it, at most ``lock_timeout``,
        then compute themselves.
        """
        name, _ = named
        with self._generations_of(self._group_of(name)).carrying(name, generation) as carried:
            if not (lock and self.tier.lock):
                yield MISSING
                return
            lock_key, token = name + ":lock", os.urandom(16)
            held = self._acquire(lock_key, token)
            value = MISSING
            if not held:
                deadline = time.monotonic() + self.tier.lock_timeout
                pause = _POLL_FIRST
                while time.monotonic() < deadline:
                    time.sleep(pause)
                    pause = min(pause * 2, _POLL_MAX)
                    value, seen = self.lookup(named, count=False)
                    if value is not MISSING:
                        self._count("tier_hits")
                        break
                    if seen is not None:
                        carried[0] = seen  # the computation begins after this miss
                    if self.tier.skipping_at(self.tier.where(name)):
                        break
                    # The holder gave up (an error) or its lock expired: take it.
                    held = self._acquire(lock_key, token)
                    if held:
                        break
            if held and value is MISSING:
                # A holder may have stored the value and let go between the last
                # miss and this acquire: look once more before computing it again.
                value, seen = self.lookup(named, count=False)
                if value is not MISSING:
                    self._count("tier_hits")
                elif seen is not None:
                    carried[0] = seen
            try:
                yield value
            finally:
                if held:
                    with contextlib.suppress(Unavailable):
                        self._call(self.tier.release, lock_key, token, key=lock_key)

    def _acquire(self, lock_key: str, token: bytes) -> bool:
        try:
            return bool(
                self._call(self.tier.add, lock_key, token, self.tier.lock_timeout, key=lock_key)
            )
        except Unavailable:
            return False
