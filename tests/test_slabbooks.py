"""The slab books in C answer as their Python reference does, call for call.

A hypothesis state machine plays the allocator: it allocates, frees,
activates and deactivates entries, answers the books' needs (a new slab; a
re-pin that may stop short, find pages purged, or fail), marks pending runs
(some marks short, some refused), gives empty slabs back (some refused), and
asks which entries sit on volatile pages; both books get every call, and
every answer and counter must be the same.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from volcache import coremodule
from volcache.slabbooks import NEED_REPIN, NEED_SLAB, OFFSET_MASK, SlabBooks

from .conftest import require

PAGE = 4096
SLAB_PAGES = 8


def need_c_books() -> None:
    require("kernel", None if coremodule.core is not None else coremodule.WHY)


class SameAnswers(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        need_c_books()
        assert coremodule.core is not None
        self.py = SlabBooks(PAGE, SLAB_PAGES)
        self.c = coremodule.core.SlabBooks(PAGE, SLAB_PAGES)
        self.entries: dict[int, list] = {}  # ident -> [loc, nbytes, active]
        self.next_ident = 0

    def both(self, name: str, *args):
        a = getattr(self.py, name)(*args)
        b = getattr(self.c, name)(*args)
        assert a == b, (name, args, a, b)
        return a

    def serve(self, answer, data, call):
        """Answer the books' needs until the call is made; its answer."""
        for _ in range(50):
            code, more = answer
            if code >= 0:
                return answer
            if code == NEED_SLAB:
                npages = more + data.draw(st.integers(0, 2))  # a region may come larger
                self.both("add_slab", npages)
            else:
                assert code == NEED_REPIN
                index, first, npages = more
                low, high = self.both("take_pending", index, first, npages)
                assert low < high  # a re-pin is asked for only where a page is volatile
                while low < high:
                    if data.draw(st.integers(0, 9)) == 0:  # the backend refuses
                        self.both("restore_pending", index, first, npages)
                        return None
                    done = data.draw(st.integers(1, high - low))
                    purged = data.draw(
                        st.lists(st.integers(low, low + done - 1), unique=True).map(sorted)
                    )
                    self.both("repinned", index, low, done, tuple(purged))
                    low += done
            answer = call()
        raise AssertionError("the books kept asking")

    def lose(self, ids, own=None):
        for ident in ids:
            loc, nbytes, active = self.entries.pop(ident)
            self.release(self.both("free", loc, nbytes, ident, active), ident == own)

    def release(self, empty, refuse=False):
        if empty >= 0 and not refuse:
            self.both("drop_slab", empty)

    @rule(data=st.data(), nbytes=st.one_of(st.integers(1, 2048), st.integers(2049, 5 * PAGE)))
    def allocate(self, data, nbytes):
        ident = self.next_ident
        self.next_ident += 1
        answer = self.serve(
            self.both("allocate", nbytes, ident), data, lambda: self.both("allocate", nbytes, ident)
        )
        if answer is None:
            return
        loc, lost = answer
        self.entries[ident] = [loc, nbytes, True]
        self.lose(lost)

    @precondition(lambda self: self.entries)
    @rule(data=st.data(), refuse=st.booleans())
    def free(self, data, refuse):
        ident = data.draw(st.sampled_from(sorted(self.entries)))
        loc, nbytes, active = self.entries.pop(ident)
        self.release(self.both("free", loc, nbytes, ident, active), refuse)

    @precondition(lambda self: any(not e[2] for e in self.entries.values()))
    @rule(data=st.data())
    def activate(self, data):
        ident = data.draw(st.sampled_from(sorted(i for i, e in self.entries.items() if not e[2])))
        loc, nbytes, _ = self.entries[ident]
        answer = self.serve(
            self.both("activate", loc, nbytes), data, lambda: self.both("activate", loc, nbytes)
        )
        if answer is None:
            return
        self.entries[ident][2] = True
        self.lose(answer[1])

    @precondition(lambda self: any(e[2] for e in self.entries.values()))
    @rule(data=st.data())
    def deactivate(self, data):
        ident = data.draw(st.sampled_from(sorted(i for i, e in self.entries.items() if e[2])))
        loc, nbytes, _ = self.entries[ident]
        self.both("deactivate", loc, nbytes)
        self.entries[ident][2] = False

    @rule(data=st.data())
    def flush(self, data):
        for index, first, stop in self.both("pending_runs"):
            if data.draw(st.integers(0, 5)) == 0:
                self.py.mark_errors += 1
                self.c.mark_errors += 1
                continue
            count = data.draw(st.integers(0, stop - first))
            self.both("marked", index, first, count)

    @rule(data=st.data())
    def ids_on_volatile_pages(self, data):
        for index in self.both("volatile_slabs"):
            npages = self.both("npages", index)
            pages = data.draw(st.lists(st.integers(0, npages - 1), unique=True).map(sorted))
            self.both("ids_on", index, tuple(pages))

    @invariant()
    def same_books(self):
        for name in ("npending", "stored_bytes", "capacity_bytes", "mark_errors", "count",
                     "total_pages"):  # fmt: skip
            assert getattr(self.py, name) == getattr(self.c, name), name
        assert self.both("page_counts") is not None
        for index in self.both("slab_indexes"):
            self.both("has_lost", index)
        for loc, nbytes, _ in self.entries.values():
            self.both("lost_in", loc, nbytes)
            self.both("page_of", loc)

    def teardown(self) -> None:
        self.both("reset")


SameAnswers.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestSameAnswers = SameAnswers.TestCase


def test_the_c_books_refuse_what_they_do_not_hold():
    need_c_books()
    assert coremodule.core is not None
    books = coremodule.core.SlabBooks(PAGE, SLAB_PAGES)
    index = books.add_slab(SLAB_PAGES)
    loc, _ = books.allocate(100, 7)
    for call, args in [
        ("free", (loc, 100, 8, True)),  # another id
        ("free", (loc + (5 << 40), 100, 7, True)),  # no such slab
        ("free", (-1, 100, 7, True)),
        ("deactivate", (loc + 3 * PAGE, 100)),  # a free page
        ("activate", (loc, 0)),
        ("drop_slab", (index,)),  # not empty
        ("drop_slab", (99,)),
        ("marked", (index, 5, 10)),  # past the slab
        ("repinned", (index, 0, 1, (SLAB_PAGES,))),
        ("take_pending", (index, -1, 1)),
        ("ids_on", (index, (SLAB_PAGES,))),
        ("npages", (3,)),
    ]:
        with pytest.raises(ValueError, match="slab books"):
            getattr(books, call)(*args)
    big, _ = books.allocate(3 * PAGE, 9)  # three pages of their own
    for call, args in [  # a length or loc not the entry's would walk into its neighbours
        ("free", (big, 5 * PAGE, 9, True)),
        ("free", (big, 2 * PAGE, 9, True)),
        ("free", (big + PAGE, 2 * PAGE, 9, True)),
        ("free", (big, 2**63 - 1, 9, True)),
        ("deactivate", (big, 4 * PAGE)),
        ("free", (loc + 16, 100, 7, True)),  # inside a slot
        ("free", (loc, 200, 7, True)),  # past its class
        ("add_slab", (1 << 29,)),  # 2 TiB: a loc's offset has 40 bits
    ]:
        with pytest.raises(ValueError, match="slab books"):
            getattr(books, call)(*args)
    assert books.free(big, 3 * PAGE, 9, True) == -1
    for nbytes in (0, 2**63 - 1, (1 << 40) + 1):
        with pytest.raises(ValueError, match="nbytes must be positive"):
            books.allocate(nbytes, 1)
    with pytest.raises(TypeError):
        books.allocate("100", 1)
    with pytest.raises(ValueError):
        coremodule.core.SlabBooks(1000, 8)  # not a power of two
    assert books.free(loc, 100, 7, True) == index  # the books are intact after all that
    books.drop_slab(index)
    assert books.count == 0 and books.total_pages == 0 and loc & OFFSET_MASK == 0
    assert books.nbytes() == 0  # empty books hold no array either


def test_ids_on_takes_a_page_given_twice_once():
    need_c_books()
    assert coremodule.core is not None
    answers = []
    for books in (SlabBooks(PAGE, SLAB_PAGES), coremodule.core.SlabBooks(PAGE, SLAB_PAGES)):
        index = books.add_slab(SLAB_PAGES)
        a, _ = books.allocate(100, 0)
        b, _ = books.allocate(100, 1)
        books.deactivate(a, 100)
        books.deactivate(b, 100)
        for run in books.pending_runs():
            books.marked(run[0], run[1], run[2] - run[1])
        answers.append(books.ids_on(index, (0, 0)))
    assert answers[0] == answers[1] == [1, 0]
