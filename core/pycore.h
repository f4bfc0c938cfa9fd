/* The parts of volcache._core (module.c puts them together). */
#ifndef VOLCACHE_PYCORE_H
#define VOLCACHE_PYCORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* A logical clock: ticks taken so far, 0 <= taken < LLONG_MAX; locked of
 * them were taken with the cache's lock held (stamps), the rest by lock-free hits. */
typedef struct {
    PyObject_HEAD
    long long taken;
    long long locked;
} ClockObject;

/* A VolatileCache's C fields (see hot.c for their invariants). */
typedef struct {
    PyObject_HEAD
    PyObject *objects;
    PyObject *touch;
    PyObject *clock; /* the cache's logical clock: a Clock */
    long long maintain_at;
    PyObject *quick; /* NULL or None, or a Quick: the plan of a store in one call */
    long long stores; /* stores made: the idle work runs every 8th */
} HotObject;

/* A memoized function's hot hit and, with func, its miss (hot.c, memo.c). */
typedef struct {
    PyObject_HEAD
    PyObject *cache; /* a HotBase */
    long long hits, misses;
    PyObject *func, *memoized, *name, *label, *fallback, *cache_id;
} MemoObject;

#define VC_SETREF(dst, src)              \
    do {                                 \
        PyObject *vc_old_ = (PyObject *)(dst); \
        (dst) = (src);                   \
        Py_XDECREF(vc_old_);             \
    } while (0)

/* hot.c: HotBase, EntryBase, Clock, MemoHit, the sentinels COLD, MISSING, GETITEM, Expired. */
int vc_add_hot_types(PyObject *module);
/* memo.c: Flight, and a memoized function's miss: its value (stored), NULL
 * with an exception set, or MISSING (a new reference): the Python way's. */
int vc_add_memo_types(PyObject *module);
PyObject *vc_memo_miss(MemoObject *memo, PyObject *args);
/* books.c: SlabBooks. */
int vc_add_books_type(PyObject *module);
struct vc_books;
/* The books of a SlabBooks object made by this module, or NULL (no exception set). */
struct vc_books *vc_books_of(PyObject *books);
/* Each pending run of the books marked through its slab's PageSet (a list by
 * slab index), as SlabAllocator.flush marks it through the backend, until a
 * slab without one, a lock held elsewhere, a drain due or a mark stopped
 * short: 1 if every run was, 0 if the rest is the Python way's, -1 with an
 * exception set; the pages marked in *marked. */
int vc_mark_pending(struct vc_books *b, PyObject *page_sets, long long *marked);
/* table_type.c: Table, table_bytes(). */
int vc_add_table_type(PyObject *module);
struct vc_table;
/* The table of a Table object, or NULL with an exception set. */
struct vc_table *vc_table_of(PyObject *table);

/* pageset.c: PageSet, a kernel-backend region's pages (pages.h) for the C store. */
int vc_add_pageset_type(PyObject *module);
struct vc_pages;
/* A PageSet's pages with the backend's lock taken (never waiting); NULL (no
 * exception set) when it is not a usable PageSet or the lock is held
 * elsewhere: the Python way's. vc_pageset_leave gives the lock back. */
struct vc_pages *vc_pageset_enter(PyObject *pageset);
void vc_pageset_leave(PyObject *pageset);
/* A PageSet's pages to read (no lock: the caller keeps their states still),
 * or NULL (no exception set). */
const struct vc_pages *vc_pageset_pages(PyObject *pageset);
/* With the lock taken (vc_pageset_enter): mark pages [first, first + npages)
 * volatile as the kernel backend's vrange(VOLATILE) does, its pinned spans
 * each a new run (pages already volatile keep their age): the pages
 * processed from first (fewer: the rest is the Python way's), -EAGAIN when
 * a drain is due (the Python way's, nothing changed), -ECANCELED with an
 * exception set. */
long vc_pageset_mark(PyObject *pageset, int64_t first, int64_t npages);
/* keybytes.c: a key's bytes as volcache.keys.key_bytes writes them (marshal format 2),
 * for None, bools, ints of 64 bits, floats but NaN, str, bytes and tuples of them:
 * their count, -ENOTSUP for another key, -ENOBUFS past cap (no exception set). */
long vc_key_bytes(PyObject *key, unsigned char *out, long cap);
/* quick.c: Quick, and the store of a new key in one call (HotBase's __setitem__). */
int vc_add_quick_type(PyObject *module);
/* 0: stored (a value it pickled and then handed on, by the cache's
 * _set_pickled); 1: not a store this path makes (nothing changed: the
 * Python way's); -1: an exception is set. */
int vc_quick_set(PyObject *cache, PyObject *quick, PyObject *key, PyObject *value);
/* vc_quick_set of a key vc_quick_absent found absent when the cache's stores
 * count was stores: no look for it again if no store was made since. */
int vc_quick_store(PyObject *cache, PyObject *quick, PyObject *key, PyObject *value,
                   long long stores);
/* 1: the key has no entry and no record of its hash (a store would be new);
 * 0: it may have; -1: an exception is set. Read without the lock. */
int vc_quick_absent(PyObject *cache, PyObject *quick, PyObject *key);
/* The value of key's idle record, read without re-pinning it as the cache's
 * _hit reads it (counted, touched); MISSING (a new reference) for the Python
 * way; NULL with an exception set. */
PyObject *vc_quick_idle(PyObject *cache, PyObject *quick, PyObject *key);
/* obj.name += delta (any number: the Python way's arithmetic); -1 with an exception set. */
int vc_add_to(PyObject *obj, PyObject *name, long long delta);
/* The MISSING sentinel (borrowed: the module holds it for good). */
PyObject *vc_missing(void);
/* The cache's counts["misses"] += 1; -1 with an exception set. */
int vc_quick_count_miss(PyObject *quick);

#endif
