"""One cache's use of a tier: its namespace, its counters, its generation.

The cache calls :meth:`BoundTier.fetch` after a local miss, :meth:`store`
after a store, :meth:`remove` and :meth:`clear` when entries leave. None of
them raises for the server's sake: a failure is counted and the cache goes on
as if the tier did not have the value.

``clear`` bumps the namespace's generation (one integer on the server);
values carry the generation they were written under, and one of another is
absent. A reader learns the generation with every fetch (it is read with the
value, in one round trip); a write uses the last one this process saw, so a
write racing a clear elsewhere is at worst invisible.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..codecs import Codec, Decoder, DefaultCodec
from . import envelope
from .base import Skipped, Tier, Unavailable
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
        self._gen_key = self._prefix + "gen"
        self._generation: int | None = None
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(
            ("tier_hits", "tier_misses", "tier_errors", "tier_rejected", "tier_skipped"), 0
        )

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def _call(self, operation: Any, *args: Any) -> Any:
        """The tier's call; counts a failure or a skip and re-raises ``Unavailable``."""
        try:
            return self.tier.call(operation, *args)
        except Skipped:
            self._count("tier_skipped")
            raise
        except Unavailable:
            self._count("tier_errors")
            raise

    def key_of(self, key: Any) -> tuple[str, bytes]:
        """(the tier key, the key's stable bytes); ``TypeError`` if it has none."""
        data = stable_key_bytes(key)
        return self._prefix + hashlib.sha256(data).hexdigest(), data

    def _where(self, data: bytes) -> bytes:
        return envelope.context(self.namespace, self.tier.version, data)

    # -- the cache's calls ---------------------------------------------------------------

    def fetch(self, named: tuple[str, bytes], count: bool = True) -> Any:
        """The value the tier holds for ``key``, or ``MISSING`` (absent, rejected, or
        the tier unavailable). ``count=False``: a lock waiter's poll, not a lookup
        (failures and rejections are counted all the same). ``named``: :meth:`key_of`'s."""
        name, data = named
        try:
            generation, blob = self._call(self.tier.get_many, [self._gen_key, name])
        except Unavailable:
            return MISSING
        generation = _as_int(generation)
        self._generation = generation
        if blob is None:
            if count:
                self._count("tier_misses")
            return MISSING
        try:
            value = envelope.decode(
                blob, self.codec, generation, self.tier.secret, self._where(data)
            )
            if self.parse is not None:
                value = self.parse(value)
        except envelope.Cleared:
            if count:
                self._count("tier_misses")
            return MISSING
        except envelope.Rejected:
            self._count("tier_rejected")
            return MISSING
        if count:
            self._count("tier_hits")
        return value

    def store_value(self, named: tuple[str, bytes], value: Any) -> None:
        """:meth:`store` of a value not encoded yet (one the codec refuses stays local)."""
        try:
            data, decode, _ = self.codec.encode_with_decoder(value)
        except TypeError:
            return
        self.store(named, (data, decode))

    def store(self, named: tuple[str, bytes], encoded: tuple[memoryview, Decoder]) -> None:
        """Write a value through to the tier, as the codec encoded it for the cache
        (one that may not travel stays local)."""
        name, data = named
        generation = self._generation
        if generation is None:
            try:
                generation = self._generation = _as_int(
                    self._call(self.tier.get_many, [self._gen_key])[0]
                )
            except Unavailable:
                return
        blob = envelope.encode(encoded, self.codec, generation, self.tier.secret, self._where(data))
        if blob is None:
            return
        with contextlib.suppress(Unavailable):
            self._call(self.tier.set, name, blob, self.tier.ttl)

    def remove(self, named: tuple[str, bytes]) -> None:
        """Delete a key's value in the tier."""
        name, _ = named
        with contextlib.suppress(Unavailable):
            self._call(self.tier.delete, name)

    def clear(self) -> None:
        """Every value of the namespace becomes absent, in every process."""
        with contextlib.suppress(Unavailable):
            self._generation = self._call(self.tier.incr, self._gen_key)

    @contextlib.contextmanager
    def computing(self, named: tuple[str, bytes]) -> Iterator[Any]:
        """Around a computation of ``key``: yields ``MISSING`` to compute, or the value
        another process computed meanwhile (``lock=True``: one process computes a key
        at a time; the others wait for the tier to have it, at most
        ``lock_timeout``, then compute themselves)."""
        tier = self.tier
        if not tier.lock:
            yield MISSING
            return
        name, _ = named
        lock_key, token = name + ":lock", os.urandom(16)
        held = self._acquire(lock_key, token)
        value = MISSING
        if not held:
            deadline = time.monotonic() + tier.lock_timeout
            pause = _POLL_FIRST
            while time.monotonic() < deadline:
                time.sleep(pause)
                pause = min(pause * 2, _POLL_MAX)
                value = self.fetch(named, count=False)
                if value is not MISSING:
                    self._count("tier_hits")
                    break
                if tier.skipping:
                    break
                # The holder gave up (an error) or its lock expired: take it.
                held = self._acquire(lock_key, token)
                if held:
                    break
        try:
            yield value
        finally:
            if held:
                with contextlib.suppress(Unavailable):
                    self._call(tier.release, lock_key, token)

    def _acquire(self, lock_key: str, token: bytes) -> bool:
        try:
            return bool(self._call(self.tier.add, lock_key, token, self.tier.lock_timeout))
        except Unavailable:
            return False


def _as_int(value: bytes | str | int | None) -> int:
    if value is None:
        return 0
    try:
        return int(value)
    except ValueError:
        return 0
