"""A namespace's generation: which of the values in the tier are current.

The server holds one token per namespace, a random 63-bit integer written as
decimal digits. Values carry the token they were written under, and one
written under another is absent. ``clear()`` writes a new random token.

A token can be lost: memcached's LRU evicts it, Redis does under an
``allkeys-*`` policy, someone deletes it. The next reader then adds a new
random token, and every value written before is absent, as after a clear.
A counter that started again at 0 would make the values of its early
generations current again, including values cleared long ago.

A server can also go back to a token it had: a replica that was behind
takes over, a snapshot is restored, or whoever controls the server puts an
old token back to replay old values (their MAC covers the token they carry,
not the one current). Each process remembers the last tokens it saw
replaced. When a reading that began after the replacement finds one of them
again, the process clears the namespace once more, for every process.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator

#: Replaced tokens a process remembers (a server going back further is not noticed).
REMEMBERED = 32
_LIMIT = 1 << 64  # the envelope's generation field


def new_token() -> int:
    """A generation no value was written under: 63 random bits, never 0.

    63 bits keep it a signed 64-bit integer, so an older volcache's ``INCR``
    of it still works during an upgrade."""
    return (int.from_bytes(os.urandom(8), "little") >> 1) or 1


def parse_token(raw: bytes | str | int | None) -> int | None:
    """The token as the server holds it, or None if it is absent or not a token."""
    if raw is None:
        return None
    try:
        token = int(raw)
    except (TypeError, ValueError):
        return None
    return token if 0 < token < _LIMIT else None


class Generations:
    """What one process knows of a namespace's generation.

    Each call to the server that reads or writes the token takes a ticket
    first. The tickets order what the calls report: a reading that began
    earlier never replaces what a later one reported.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tickets = itertools.count(1)
        self._known: int | None = None
        self._known_at = 0  # the ticket of the call that reported it
        self._retired: OrderedDict[int, int] = OrderedDict()  # token -> last ticket before
        self._local = threading.local()

    def ticket(self) -> int:
        """A ticket for a call to the server, taken before the call begins."""
        return next(self._tickets)

    @property
    def known(self) -> int | None:
        """The token the latest call reported; None before the first."""
        return self._known

    def learn(self, ticket: int, token: int) -> bool:
        """Record that the call with ``ticket`` found ``token``.

        Returns False if the server went back to a token this process saw
        replaced before that call began. True otherwise. A call that began
        before the replacement reported the server as it was then.
        """
        with self._lock:
            horizon = self._retired.get(token)
            if horizon is not None:
                return ticket < horizon
            if ticket > self._known_at:
                if self._known is not None and self._known != token:
                    # Calls from the next ticket on begin after the change is known here.
                    self._retired[self._known] = next(self._tickets)
                    if len(self._retired) > REMEMBERED:
                        self._retired.popitem(last=False)
                self._known, self._known_at = token, ticket
            return True

    @contextlib.contextmanager
    def carrying(self, name: str, token: int | None) -> Iterator[list[int | None]]:
        """Within the block, a store of tier key ``name`` in this thread uses the
        token in the yielded cell. That is the generation the value's
        computation began under, not the latest known (None: unknown, so no
        write)."""
        carried = self._carried()
        previous = carried.get(name)
        cell: list[int | None] = [token]
        carried[name] = cell
        try:
            yield cell
        finally:
            if previous is None:
                del carried[name]
            else:
                carried[name] = previous

    def carried(self, name: str) -> list[int | None] | None:
        """The cell of an enclosing :meth:`carrying` for ``name`` in this thread, if any."""
        return self._carried().get(name)

    def _carried(self) -> dict[str, list[int | None]]:
        try:
            carried: dict[str, list[int | None]] = self._local.carried
        except AttributeError:
            carried = self._local.carried = {}
        return carried
