"""The plan of a store, and of an idle hit, in one call of the C core (``core/quick.c``).

``cache[key] = value`` for a new key of a common kind (``str``, ``int``,
``bytes``, ``None``, floats, tuples of them) and a value the default codec
stores as it is (``bytes``) or pickles (numbers, strings, tuples, lists,
dicts) is one C call: the value's and key's bytes, the lock taken without
waiting, the put, the eviction of the least recently used idle entry, the
settling, the counts. ``cache[key]`` of such a key whose entry is idle reads
it in one call too (the backend's reader, the key's bytes compared, the value
decoded, the read counted and remembered). Everything else goes the Python
way (``VolatileCache._setitem``, ``_get_slow``), which is also the reference
the differential tests hold the C one to. A cache gets a plan only if its
stores need nothing of Python's: no tier, TTL, ``getsizeof``, ``on_evict``,
``popitem`` or codec of its own.
"""

from __future__ import annotations

import _thread
import math
import pickle
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .backends import Backend
from .budget import MemoryBudget
from .codecs import Codec, DefaultCodec, PickleCodec
from .coremodule import core
from .entries import Entries
from .store import OWN_DECODER

#: A finite maxsize past this is never reached by a count (the C core's integers).
_LARGEST = 1 << 62


def quick_plan(
    lock: Any, entries: Entries, backend: Any, hot: OrderedDict, counts: dict[str, int],
    pool: MemoryBudget, codec: Codec, maxsize: float, mark_batch: int, report_step: int,
    clock: Callable[[], float], hot_seconds: float | None,
) -> Any:  # fmt: skip
    """A ``volcache._core.Quick`` for these parts of a cache, or None where the C
    core is not in use or its store could not take this cache's values."""
    store = entries.store
    if core is None or not store._fused or type(codec) is not DefaultCodec or not maxsize >= 1:
        return None
    if entries.sizes is not None or entries.timed or entries.events is not None:
        return None
    bytes_tag, _, bytes_flags = store.decoders.tag(bytes, True)
    pickler = codec._pickle
    dumps: Any = None
    pickle_tag = pickle_flags = 0
    if type(pickler) is PickleCodec:
        pickle_tag, spec, pickle_flags = store.decoders.tag(pickler.decode, False)
        if not spec and pickle_tag != OWN_DECODER:
            dumps = pickle.dumps
    return core.Quick(
        lock=lock, acquire=_thread.RLock.acquire, release_base=_thread.RLock.release,
        entries=entries, records=store.records, books=store.slabs.books, backend=backend,
        hot=hot, seen=entries.seen, counts=counts, pool=pool, slabs=store.slabs,
        dumps=dumps, protocol=getattr(pickler, "protocol", pickle.HIGHEST_PROTOCOL),
        # The contract's property reads _closed: read without calling it, where it is that one.
        closed="_closed" if type(backend).closed is Backend.closed else "closed",
        loads=pickle.loads if dumps is not None else None, clock=clock, hot_seconds=hot_seconds,
        seen_limit=entries.seen_limit,
        maxsize=-1 if maxsize == math.inf else min(math.floor(maxsize), _LARGEST),
        mark_batch=mark_batch, report_step=report_step,
        bytes_tag=bytes_tag, bytes_flags=bytes_flags,
        pickle_tag=pickle_tag, pickle_flags=pickle_flags,
    )  # fmt: skip
