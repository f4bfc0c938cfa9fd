/* A store of a new key in one call: VolatileCache.__setitem__'s common case.
 *
 * The Python way (VolatileCache._set) walks the codec, the key's bytes, the
 * store, the record table, the books and the entries: fifty calls. Here the
 * same steps are one: the value's bytes (a bytes object as it is, the values
 * the default codec pickles through pickle.dumps), the key's (keybytes.c),
 * the cache's lock taken without waiting, a look for the key (not among the
 * Python entries, no indexed record of its hash), the store (store.c's
 * fused put), the least recently used idle entry evicted past maxsize, the
 * new record settled idle, the counts. Anything else goes the Python way,
 * before anything changed: a key or value of another kind, the lock held by
 * another thread, a key with a record or an entry already (an overwrite), a
 * hot entry that may be older than the idle ones, a backend call the books
 * ask for. A purge that the put found (its lost ids) and a refusal of the
 * books after the put go to Python's _settle_put, which finishes the store
 * as _set would (its reference: the differential tests compare the two).
 *
 * Invariants of a Quick (made by VolatileCache._plan_quick, for a cache
 * without a tier, TTL, getsizeof, callback, popitem of its own or codec of
 * its own; dropped by close() under the lock):
 *   lock is the cache's lock, acquire and release_base _thread.RLock's own
 *     methods, release the lock's bound release (its events' delivery);
 *   entries, records, books, backend, hot, seen, counts, pool, slabs are the
 *     cache's objects of those names, which live as long as the cache is open;
 *   maxsize >= 1, or -1 for an unbounded cache (no eviction, CLOCK order).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "structmember.h"
#include <errno.h>
#include <limits.h>
#include <string.h>

#include "pages.h"
#include "pycore.h"
#include "slabbooks.h"
#include "store.h"
#include "table.h"

#define SLOW 1
#define KEY_CAP 256 /* longer keys go the Python way */
#define MAX_LOST 64
#define MAX_REPIN 512 /* pages a re-pin in C takes at most; more go the Python way */
#define READ_WHOLE 16384 /* volcache.store._READ_WHOLE: longer entries are read in parts */
#define SPECIAL 4 /* volcache.store.SPECIAL_KEY */
#define REPORT_EVERY 15 /* volcache.cache._REPORT_EVERY: stores & it == 0, Python's turn */
#define IDLE_WORK_EVERY 63 /* volcache.cache._IDLE_WORK_EVERY: stores & it == 0, the idle work's */
#define MAX_TRIES 8 /* backend calls for one put, at most (a slab, a re-pin, a larger table) */
#define NEED_SLAB (-1) /* volcache.slabbooks.NEED_SLAB, as SlabAllocator.serve takes it */
#define NEED_REPIN (-2)

typedef struct {
    PyObject_HEAD
    PyObject *lock, *acquire, *release_base, *release;
    PyObject *acquire_args, *lock_args; /* (lock, False), (lock,) */
    PyObject *entries, *records, *books, *backend, *hot, *seen, *counts, *pool, *slabs;
    PyObject *dumps, *protocol; /* pickle.dumps and its protocol; dumps None: no pickling here */
    PyObject *closed; /* the backend's attribute that says it was closed (a str) */
    PyObject *loads, *clock, *hot_seconds; /* pickle.loads; the cache's clock; None or seconds */
    long long seen_limit;
    long long maxsize, mark_batch, report_step;
    long bytes_tag, bytes_flags, pickle_tag, pickle_flags;
} QuickObject;

#define QUICK_OBJECTS(X) X(lock) X(acquire) X(release_base) X(release) X(acquire_args) \
    X(lock_args) X(entries) X(records) X(books) X(backend) X(hot) X(seen) X(counts)     \
    X(pool) X(slabs) X(dumps) X(protocol) X(closed) X(loads) X(clock) X(hot_seconds)

static PyObject *s_count, *s_currsize, *s_used, *s_limit, *s_t,
    *s_settle_put, *s_after_store, *s_release_slab, *s_evictions, *s_active_nbytes, *s_store,
    *s_missing, *s_serve, *s_make_room, *s_misses, *s_hits, *s_readers, *s_after_idle_read,
    *s_evict_rid, *s_deleted, *s_quick, *s_set_pickled, *s_page_sets;

static int quick_traverse(QuickObject *self, visitproc visit, void *arg)
{
#define VISIT(f) Py_VISIT(self->f);
    QUICK_OBJECTS(VISIT)
#undef VISIT
    Py_VISIT(Py_TYPE((PyObject *)self));
    return 0;
}

static int quick_clear(QuickObject *self)
{
#define CLEAR(f) Py_CLEAR(self->f);
    QUICK_OBJECTS(CLEAR)
#undef CLEAR
    return 0;
}

static void quick_dealloc(QuickObject *self)
{
    PyTypeObject *tp = Py_TYPE((PyObject *)self);
    PyObject_GC_UnTrack(self);
    quick_clear(self);
    PyObject_GC_Del(self);
    Py_DECREF(tp);
}

static int quick_init(QuickObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"lock", "acquire", "release_base", "entries", "records", "books",
                            "backend", "hot", "seen", "counts", "pool", "slabs", "dumps",
                            "protocol", "closed", "loads", "clock", "hot_seconds", "maxsize",
                            "mark_batch", "report_step", "bytes_tag", "bytes_flags",
                            "pickle_tag", "pickle_flags", "seen_limit", NULL};
    PyObject *o[18];
    long long seen_limit;
    long long maxsize, mark_batch, report_step;
    long tags[4];
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOOOOOOOOUOOOLLLllllL", names,
                                     &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7],
                                     &o[8], &o[9], &o[10], &o[11], &o[12], &o[13], &o[14],
                                     &o[15], &o[16], &o[17], &maxsize, &mark_batch,
                                     &report_step, &tags[0], &tags[1], &tags[2], &tags[3],
                                     &seen_limit))
        return -1;
    if (!(maxsize >= 1 || maxsize == -1) || mark_batch < 0 || report_step < 1) {
        PyErr_SetString(PyExc_ValueError, "Quick: maxsize must be >= 1 or -1, mark_batch >= 0, "
                                          "report_step >= 1");
        return -1;
    }
    if (vc_books_of(o[5]) == NULL || !PyDict_CheckExact(o[8]) || !PyDict_CheckExact(o[9])
        || !PyDict_Check(o[7])) {
        PyErr_SetString(PyExc_TypeError, "Quick: books must be ready SlabBooks of this core, "
                                         "seen and counts dicts, hot an OrderedDict");
        return -1;
    }
    PyObject *release = PyObject_GetAttrString(o[0], "release");
    PyObject *acquire_args = Py_BuildValue("(OO)", o[0], Py_False);
    PyObject *lock_args = PyTuple_Pack(1, o[0]);
    if (release == NULL || acquire_args == NULL || lock_args == NULL) {
        Py_XDECREF(release);
        Py_XDECREF(acquire_args);
        Py_XDECREF(lock_args);
        return -1;
    }
    quick_clear(self);
    self->release = release;
    self->acquire_args = acquire_args;
    self->lock_args = lock_args;
    PyObject **fields[] = {&self->lock, &self->acquire, &self->release_base, &self->entries,
                           &self->records, &self->books, &self->backend, &self->hot,
                           &self->seen, &self->counts, &self->pool, &self->slabs,
                           &self->dumps, &self->protocol, &self->closed, &self->loads,
                           &self->clock, &self->hot_seconds};
    self->seen_limit = seen_limit;
    for (int i = 0; i < 18; i++)
        *fields[i] = Py_NewRef(o[i]);
    self->maxsize = maxsize;
    self->mark_batch = mark_batch;
    self->report_step = report_step;
    self->bytes_tag = tags[0];
    self->bytes_flags = tags[1];
    self->pickle_tag = tags[2];
    self->pickle_flags = tags[3];
    return 0;
}

/* Whether obj is a Quick whose __init__ ran (Quick.__new__ alone makes an empty one). */
static int is_plan(PyObject *obj)
{
    return PyType_GetSlot(Py_TYPE(obj), Py_tp_dealloc) == (void *)quick_dealloc
           && ((QuickObject *)obj)->lock != NULL;
}

/* An int attribute as a long long; -1 with an exception set if it is not one. */
static int get_ll(PyObject *obj, PyObject *name, long long *out)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* counts[name] += 1 (the cache's hits, misses or evictions); -1 with an
 * exception set, a RuntimeError if the count is missing. */
static int count_one(QuickObject *q, PyObject *name)
{
    PyObject *now = PyDict_GetItemWithError(q->counts, name);
    if (now == NULL) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_RuntimeError, "the cache's counts have no %R", name);
        return -1;
    }
    PyObject *one = PyLong_FromLong(1);
    PyObject *more = one ? PyNumber_Add(now, one) : NULL;
    Py_XDECREF(one);
    int r = more == NULL ? -1 : PyDict_SetItem(q->counts, name, more);
    Py_XDECREF(more);
    return r;
}

int vc_add_to(PyObject *obj, PyObject *name, long long delta)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    PyObject *d = PyLong_FromLongLong(delta);
    PyObject *sum = d ? PyNumber_Add(v, d) : NULL;
    Py_DECREF(v);
    Py_XDECREF(d);
    if (sum == NULL)
        return -1;
    int r = PyObject_SetAttr(obj, name, sum);
    Py_DECREF(sum);
    return r;
}

/* The types the default codec pickles whole (DefaultCodec.encode_with_decoder). */
static int pickled_type(PyObject *value)
{
    return PyLong_CheckExact(value) || PyUnicode_CheckExact(value) || PyFloat_CheckExact(value)
           || PyTuple_CheckExact(value) || PyList_CheckExact(value) || PyDict_CheckExact(value)
           || value == Py_None || PyBool_Check(value);
}

/* Python finishes a store the put made: _settle_put(key, rid, lost, 1, False, None,
 * MISSING, None), as _set calls it. The put's bytes count as active until settled. */
static int settle_in_python(PyObject *cache, QuickObject *q, PyObject *key, long rid,
                            const int32_t *lost, int64_t nlost, int64_t length)
{
    PyObject *store = PyObject_GetAttr(q->entries, s_store);
    int r = store ? vc_add_to(store, s_active_nbytes, length) : -1;
    Py_XDECREF(store);
    PyObject *ids = r < 0 ? NULL : PyList_New(nlost);
    for (int64_t i = 0; ids != NULL && i < nlost; i++) {
        PyObject *id = PyLong_FromLong(lost[i]);
        if (id == NULL || PyList_SetItem(ids, i, id) < 0)
            Py_CLEAR(ids);
    }
    PyObject *rid_obj = ids ? PyLong_FromLong(rid) : NULL;
    PyObject *one = rid_obj ? PyLong_FromLong(1) : NULL;
    PyObject *done = one ? PyObject_CallMethodObjArgs(cache, s_settle_put, key, rid_obj, ids, one,
                                                      Py_False, Py_None, s_missing, Py_None, NULL)
                         : NULL;
    Py_XDECREF(ids);
    Py_XDECREF(rid_obj);
    Py_XDECREF(one);
    if (done == NULL)
        return -1;
    Py_DECREF(done);
    return 0;
}

/* Forget a new record that cannot join the mapping (its store failed after the put). */
static void drop_new(struct vc_table *t, struct vc_books *b, long rid)
{
    int64_t length;
    int active;
    vc_store_free(t, b, rid, &length, &active);
}

static PyObject *books_error(long code, const char *what)
{
    if (code == -ENOMEM)
        return PyErr_NoMemory();
    return PyErr_Format(PyExc_RuntimeError, "the store's %s failed (errno %ld)", what, -code);
}

/* The cache's lock, taken without waiting: 1 taken, 0 held by another thread,
 * -1 an exception is set. */
static int take_lock(QuickObject *q)
{
    PyObject *got = PyObject_Call(q->acquire, q->acquire_args, NULL);
    if (got == NULL)
        return -1;
    int mine = got == Py_True;
    Py_DECREF(got);
    return mine;
}

/* Let the lock go: its own release if cache methods ran (it delivers the
 * events they noted), else _thread.RLock's. An exception set before stays
 * the one raised; -1 if the release itself failed (its exception set). */
static int give_lock(QuickObject *q, int python)
{
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyObject *r = python ? PyObject_CallNoArgs(q->release)
                         : PyObject_Call(q->release_base, q->lock_args, NULL);
    if (r == NULL) {
        Py_XDECREF(type);
        Py_XDECREF(exc);
        Py_XDECREF(tb);
        return -1;
    }
    Py_DECREF(r);
    PyErr_Restore(type, exc, tb);
    return 0;
}

/* Evict an idle record (no Python entry) as Entries.remove does: forgotten as
 * read lately, freed, counted; its slab given back if that emptied it. The
 * caller counts it out of entries.count and currsize. 0: done; 1: the books
 * refused (nothing changed); -1: an exception is set, nothing changed; -2: an
 * exception is set after the record went (count it out all the same). */
static int evict_idle(QuickObject *q, struct vc_table *t, struct vc_books *b, long victim,
                      int *python)
{
    if (PyDict_Size(q->seen) > 0) {
        PyObject *id = PyLong_FromLong(victim);
        if (id == NULL)
            return -1;
        int bad = PyDict_DelItem(q->seen, id) < 0;
        Py_DECREF(id);
        if (bad && !PyErr_ExceptionMatches(PyExc_KeyError))
            return -1;
        if (bad)
            PyErr_Clear();
    }
    int64_t vlength;
    int active;
    long empty = vc_store_free(t, b, victim, &vlength, &active);
    if (empty < -1)
        return 1;
    PyObject *store = PyObject_GetAttr(q->entries, s_store);
    int bad = store == NULL || count_one(q, s_evictions) < 0
              || (active && vc_add_to(store, s_active_nbytes, -vlength) < 0);
    Py_XDECREF(store);
    if (!bad && empty >= 0) { /* its slab is empty: the backend frees it */
        *python = 1;
        PyObject *index = PyLong_FromLong(empty);
        PyObject *r = index ? PyObject_CallMethodObjArgs(q->slabs, s_release_slab, index, NULL)
                            : NULL;
        Py_XDECREF(index);
        bad = r == NULL;
        Py_XDECREF(r);
    }
    return bad ? -2 : 0;
}

/* n entries left the mapping: out of entries.count and currsize (an exception
 * set before stays the one raised; -1 if these failed). */
static int count_out(QuickObject *q, long long n)
{
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    int bad = vc_add_to(q->entries, s_count, -n) < 0 || vc_add_to(q->entries, s_currsize, -n) < 0;
    if (type != NULL)
        PyErr_Restore(type, exc, tb);
    return bad ? -1 : 0;
}

/* The slab's PageSet (borrowed from the allocator's list, which holds it
 * while the slab lives), or NULL: the backend's Python calls. */
static PyObject *page_set_of(QuickObject *q, int64_t index)
{
    PyObject *sets = PyObject_GetAttr(q->slabs, s_page_sets);
    PyObject *set = NULL;
    if (sets != NULL && PyList_Check(sets) && index >= 0 && index < PyList_Size(sets))
        set = PyList_GetItem(sets, (Py_ssize_t)index);
    Py_XDECREF(sets); /* the allocator still holds the list */
    PyErr_Clear();
    return set == Py_None ? NULL : set;
}

/* The re-pin the books asked for (need: slab, first page, pages), made in C
 * where the slab's backend lends its pages (the kernel's PageSet), as
 * SlabAllocator._repin makes it through the backend: 1 if made, 0 for the
 * Python way (nothing changed), -errno if the books refused. */
static long repin_in_c(QuickObject *q, struct vc_books *b, const int64_t *need)
{
    if (need[2] <= 0 || need[2] > MAX_REPIN)
        return 0;
    PyObject *set = page_set_of(q, need[0]);
    struct vc_pages *pages = set == NULL ? NULL : vc_pageset_enter(set);
    if (pages == NULL)
        return 0;
    int64_t low, high, purged[MAX_REPIN];
    long r = vc_books_take_pending(b, need[0], need[1], need[2], &low, &high);
    long n = 0;
    if (r >= 0 && low < high) {
        n = vc_pages_repin(pages, low, high - low, purged, MAX_REPIN);
        r = n < 0 ? vc_books_restore_pending(b, need[0], need[1], need[2])
                  : vc_books_repinned(b, need[0], low, high - low, purged, n);
        if (n < 0 && r >= 0)
            r = n;
    }
    vc_pageset_leave(set);
    return r < 0 ? r : 1;
}

/* The store with the lock held; *python set when Python code was called
 * (the lock's own release then delivers what it noted). */
static int locked_set(PyObject *cache, QuickObject *q, PyObject *key, uint32_t h,
                      const struct vc_put *put, long long stores, int *python)
{
    HotObject *hot = (HotObject *)cache;
    if (hot->quick != (PyObject *)q || hot->objects == NULL || hot->clock == NULL)
        return SLOW; /* closed meanwhile, or not set up */
    PyObject *closed = PyObject_GetAttr(q->backend, q->closed);
    if (closed == NULL)
        return -1;
    int gone = PyObject_IsTrue(closed);
    Py_DECREF(closed);
    if (gone != 0)
        return gone < 0 ? -1 : SLOW; /* the Python way says what is wrong */
    int has = PyDict_Contains(hot->objects, key);
    if (has != 0)
        return has < 0 ? -1 : SLOW; /* a Python entry: an overwrite */
    struct vc_books *b = vc_books_of(q->books);
    PyObject *handle = PyObject_GetAttr(q->records, s_t);
    if (handle == NULL)
        return -1;
    struct vc_table *t = vc_table_of(handle);
    int result = SLOW;
    if (t == NULL) {
        PyErr_Clear();
        goto out;
    }
    /* Looked for since no store was made (stores < 0: not looked for): absent still. */
    if (b == NULL
        || (stores != hot->stores
            && vc_rec_first_of(t, h, VC_INDEXED | VC_OBJECT, VC_INDEXED) >= 0))
        goto out; /* a record of this hash: the same key, maybe (Python compares) */
    /* The put first: the backend calls the books ask for are made (Python's),
     * and the put tried again; nothing of the mapping changes until it is made. */
    int64_t need[3], nlost;
    int32_t lost[MAX_LOST];
    long rid = -1;
    int ran = 0; /* Python code ran since the look (it may have stored the key: see below) */
    for (int tries = 0; tries < MAX_TRIES; tries++) {
        rid = vc_store_put(t, b, h, put, need, lost, MAX_LOST, &nlost);
        if (rid >= 0 || (rid != VC_NEED_SLAB && rid != VC_NEED_REPIN && rid != VC_NEED_ROOM))
            break;
        if (rid == VC_NEED_REPIN) {
            long made = repin_in_c(q, b, need);
            if (made < 0) {
                PyErr_Format(PyExc_RuntimeError, "the slab books refused a re-pin (errno %ld)",
                             -made);
                result = -1;
                goto out;
            }
            if (made)
                continue; /* no Python code ran */
        }
        /* Backend calls (Python's): they note no event, the plain release will do. */
        ran = 1;
        PyObject *r;
        if (rid == VC_NEED_ROOM) {
            r = PyObject_CallMethodObjArgs(q->records, s_make_room, NULL);
        } else {
            PyObject *more = rid == VC_NEED_SLAB ? PyLong_FromLongLong(need[0])
                                                 : Py_BuildValue("(LLL)", (long long)need[0],
                                                                 (long long)need[1],
                                                                 (long long)need[2]);
            PyObject *code = PyLong_FromLong(rid == VC_NEED_SLAB ? NEED_SLAB : NEED_REPIN);
            r = more && code ? PyObject_CallMethodObjArgs(q->slabs, s_serve, code, more, NULL)
                             : NULL;
            Py_XDECREF(more);
            Py_XDECREF(code);
        }
        if (r == NULL) {
            result = -1;
            goto out;
        }
        Py_DECREF(r);
        Py_DECREF(handle); /* a table that grew is a new one */
        if ((handle = PyObject_GetAttr(q->records, s_t)) == NULL)
            return -1;
        if ((t = vc_table_of(handle)) == NULL) {
            result = -1;
            goto out;
        }
    }
    if (rid < 0)
        goto out; /* refused (a length past the books', say): the Python way says why */
    int64_t length = put->nvalue + put->nkey + put->nspec + VC_TRAILER;
    /* Past maxsize, the least recently used idle entry goes, if it is the one
     * to go: else (a hot entry may be older, or more must go) Python's way. */
    long long count;
    long victim = -1;
    /* Python code run since the look (a backend call, a __del__ it set off, a
     * signal handler) may have stored this very key in this thread (the lock
     * is reentrant): looked for again, and if it is there the Python way
     * replaces it. */
    int python_way = nlost > 0;
    if (ran && !python_way) {
        int has = PyDict_Contains(hot->objects, key);
        if (has < 0) {
            drop_new(t, b, rid);
            result = -1;
            goto out;
        }
        python_way = has || vc_rec_first_of(t, h, VC_INDEXED | VC_OBJECT, VC_INDEXED) >= 0;
    }
    if (!python_way && get_ll(q->entries, s_count, &count) < 0) {
        drop_new(t, b, rid);
        result = -1;
        goto out;
    }
    if (!python_way && q->maxsize > 0 && count + 1 > q->maxsize) {
        Py_ssize_t nhot = PyObject_Length(q->hot);
        int64_t used, loc;
        uint32_t vlen;
        uint8_t flags;
        if (nhot < 0) {
            drop_new(t, b, rid);
            result = -1;
            goto out;
        }
        victim = count > q->maxsize || nhot != 0 ? -1 : vc_rec_oldest_use(t, &used);
        python_way = victim < 0 || vc_rec_get(t, victim, &loc, &vlen, &flags) < 0
                     || (flags & VC_OBJECT) || vlen == VC_LONG;
    }
    if (python_way) {
        *python = 1;
        result = settle_in_python(cache, q, key, rid, lost, nlost, length);
        goto out;
    }
    if (victim >= 0) {
        int released = 0; /* its slab given back: Python ran (the backend's release) */
        int evicted = evict_idle(q, t, b, victim, &released);
        *python |= released;
        if (evicted == 0 && released) { /* as above: the Python way finishes */
            if (count_out(q, 1) < 0) {
                drop_new(t, b, rid);
                result = -1;
            } else {
                result = settle_in_python(cache, q, key, rid, NULL, 0, length);
            }
            goto out;
        }
        if (evicted == 1) { /* the books refused: Python's eviction meets it and unwinds */
            *python = 1;
            result = settle_in_python(cache, q, key, rid, NULL, 0, length);
            goto out;
        }
        if (evicted < 0) {
            if (evicted == -2) /* it went, as Python's remove counts it before the free */
                count_out(q, 1);
            drop_new(t, b, rid);
            result = -1;
            goto out;
        }
        count--;
    }
    long long stamp = 0;
    if (q->maxsize > 0) { /* Entries.stamp(): a tick taken under the lock */
        ClockObject *clock = (ClockObject *)hot->clock;
        if (clock->taken < LLONG_MAX)
            clock->taken++;
        stamp = clock->taken;
        clock->locked++;
    }
    long settled = vc_store_settle(t, b, rid, stamp);
    if (settled < 0) {
        drop_new(t, b, rid);
        books_error(settled, "settle");
        if (victim >= 0)
            count_out(q, 1);
        result = -1;
        goto out;
    }
    if (victim < 0) {
        PyObject *n = PyLong_FromLongLong(count + 1);
        int bad = n == NULL || PyObject_SetAttr(q->entries, s_count, n) < 0
                  || vc_add_to(q->entries, s_currsize, 1) < 0;
        Py_XDECREF(n);
        if (bad) {
            result = -1;
            goto out;
        }
    }
    /* The budget hears of it every 16 stores, or at once near its limit (and
     * the idle work every 64): VolatileCache._after_store, which counts it. */
    long long next = hot->stores + 1, used, limit;
    if (get_ll(q->pool, s_used, &used) < 0 || get_ll(q->pool, s_limit, &limit) < 0) {
        result = -1;
        goto out;
    }
    int due = !(next & REPORT_EVERY) || used + (q->report_step << 4) >= limit;
    if ((!due || (next & IDLE_WORK_EVERY)) && b->npending >= q->mark_batch) {
        /* A batch of pages to mark, and not the idle work's turn (which
         * marks them itself): in C where the backend lent its pages, before
         * any report (which then counts them unpinned). */
        PyObject *sets = PyObject_GetAttr(q->slabs, s_page_sets);
        long long marked;
        int finished = sets == NULL ? -1 : vc_mark_pending(b, sets, &marked);
        Py_XDECREF(sets);
        if (finished < 0) {
            result = -1;
            goto out;
        }
        due = due || !finished;
    }
    if (due) {
        *python = 1;
        PyObject *rid_obj = PyLong_FromLong(rid);
        PyObject *r = rid_obj ? PyObject_CallMethodObjArgs(cache, s_after_store, rid_obj, NULL)
                              : NULL;
        Py_XDECREF(rid_obj);
        result = r == NULL ? -1 : 0;
        Py_XDECREF(r);
        goto out;
    }
    hot->stores = next;
    result = 0;
out:
    Py_DECREF(handle);
    return result;
}

int vc_quick_set(PyObject *cache, PyObject *quick, PyObject *key, PyObject *value)
{
    return vc_quick_store(cache, quick, key, value, -1);
}

int vc_quick_store(PyObject *cache, PyObject *quick, PyObject *key, PyObject *value,
                   long long stores)
{
    if (!is_plan(quick))
        return SLOW; /* not a Quick (of any import of the module), or not made ready */
    QuickObject *q = (QuickObject *)quick;
    PyObject *encoded = NULL;
    struct vc_put put = {NULL, NULL, "", 0, 0, 0, 0, 0};
    if (PyBytes_CheckExact(value)) {
        put.value = PyBytes_AsString(value);
        put.nvalue = PyBytes_Size(value);
        put.tag = (uint32_t)q->bytes_tag;
        put.flags = (uint32_t)q->bytes_flags;
    } else if (q->dumps != Py_None && pickled_type(value)) {
        encoded = PyObject_CallFunctionObjArgs(q->dumps, value, q->protocol, NULL);
        if (encoded == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_Exception))
                return -1; /* an interrupt, not a refusal */
            PyErr_Clear(); /* the Python way keeps such a value as an object: told so */
            PyObject *r = PyObject_CallMethodObjArgs(cache, s_set_pickled, key, value, Py_None,
                                                     NULL);
            Py_XDECREF(r);
            return r == NULL ? -1 : 0;
        }
        if (!PyBytes_CheckExact(encoded)) {
            Py_DECREF(encoded);
            return SLOW;
        }
        put.value = PyBytes_AsString(encoded);
        put.nvalue = PyBytes_Size(encoded);
        put.tag = (uint32_t)q->pickle_tag;
        put.flags = (uint32_t)q->pickle_flags;
    } else {
        return SLOW;
    }
    unsigned char kbuf[KEY_CAP];
    long nkey = vc_key_bytes(key, kbuf, KEY_CAP);
    int result = SLOW;
    if (nkey < 0) {
        result = PyErr_Occurred() ? -1 : SLOW;
        goto done;
    }
    put.key = kbuf;
    put.nkey = nkey;
    Py_hash_t hash = PyObject_Hash(key);
    if (hash == -1 && PyErr_Occurred()) {
        result = -1;
        goto done;
    }
    int mine = take_lock(q);
    if (mine <= 0) { /* held by another thread: the Python way waits for it */
        result = mine < 0 ? -1 : SLOW;
        goto done;
    }
    int python = 0;
    result = locked_set(cache, q, key, (uint32_t)hash, &put, stores, &python);
    if (give_lock(q, python) < 0)
        result = -1;
done:
    if (result == SLOW && encoded != NULL) { /* the Python way, without pickling it again */
        PyObject *r = PyObject_CallMethodObjArgs(cache, s_set_pickled, key, value, encoded, NULL);
        result = r == NULL ? -1 : 0;
        Py_XDECREF(r);
    }
    Py_XDECREF(encoded);
    return result;
}

/* -- an idle hit ---------------------------------------------------------------- */

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* An entry's value from its bytes' parts: the trailer (VC_TRAILER bytes)
 * and the key before it (their tail), and the value's bytes, which
 * read_value copies into out (0: all there; else a purge took some). The
 * value, or MISSING (a new reference) for the Python way: another key, one
 * that Python compares with == (1 == 1.0), another decoder, a purge. */
typedef long (*value_reader)(const void *from, int64_t start, int64_t length, uint8_t *out);

static PyObject *decode(QuickObject *q, const unsigned char *tail, int64_t ntail, int64_t length,
                        const unsigned char *kbytes, long nkey, value_reader read_value,
                        const void *from, int64_t offset)
{
    const unsigned char *trailer = tail + ntail - VC_TRAILER;
    uint32_t skey = get_u32(trailer), nspec = get_u32(trailer + 4);
    uint32_t tag = (uint32_t)trailer[8] | (uint32_t)trailer[9] << 8, sflags = trailer[10];
    if ((int64_t)skey + nspec + VC_TRAILER > length || skey != (uint32_t)nkey || (sflags & SPECIAL)
        || nspec != 0 || (int64_t)skey + VC_TRAILER > ntail
        || memcmp(trailer - skey, kbytes, (size_t)nkey) != 0)
        return Py_NewRef(s_missing);
    int pickled = tag == (uint32_t)q->pickle_tag && q->loads != Py_None;
    if (tag != (uint32_t)q->bytes_tag && !pickled)
        return Py_NewRef(s_missing); /* another decoder: Python's */
    Py_ssize_t nvalue = (Py_ssize_t)(length - VC_TRAILER - skey);
    /* bytes(n) is new and nobody else's: filled in place, one copy. */
    PyObject *raw = PyBytes_FromStringAndSize(NULL, nvalue);
    if (raw == NULL)
        return NULL;
    if (read_value(from, offset, nvalue, (uint8_t *)PyBytes_AsString(raw)) != 0) {
        Py_DECREF(raw);
        return Py_NewRef(s_missing); /* a purge took some of it */
    }
    if (!pickled)
        return raw;
    PyObject *value = PyObject_CallFunctionObjArgs(q->loads, raw, NULL);
    Py_DECREF(raw);
    return value;
}

/* From a PageSet, looked at again at each read: the allocation before it may
 * have run code (a collection) that released the region. */
static long read_from_pages(const void *from, int64_t start, int64_t length, uint8_t *out)
{
    const struct vc_pages *pages = vc_pageset_pages((PyObject *)from);
    return pages == NULL ? 1 : vc_pages_read(pages, start, length, out);
}

static long copy_from_blob(const void *from, int64_t start, int64_t length, uint8_t *out)
{
    memcpy(out, (const unsigned char *)from + start, (size_t)length);
    return 0;
}

/* The entry read in C from the kernel backend's pages: its tail, then its value. */
static PyObject *read_pages(QuickObject *q, PyObject *set, int64_t offset, int64_t length,
                            const unsigned char *kbytes, long nkey)
{
    unsigned char tail[KEY_CAP + VC_TRAILER];
    int64_t ntail = length < (int64_t)sizeof tail ? length : (int64_t)sizeof tail;
    Py_INCREF(set); /* its struct lives while it does */
    PyObject *value;
    if (read_from_pages(set, offset + length - ntail, ntail, tail) != 0)
        value = Py_NewRef(s_missing); /* purged, or outside the region: the careful way */
    else
        value = decode(q, tail, ntail, length, kbytes, nkey, read_from_pages, set, offset);
    Py_DECREF(set);
    return value;
}

/* The entry read whole through the backend's reader (Python's, noting no event). */
static PyObject *read_whole(QuickObject *q, PyObject *reader, int64_t offset, int64_t length,
                            const unsigned char *kbytes, long nkey)
{
    PyObject *blob = PyObject_CallFunction(reader, "LI", (long long)offset, (unsigned int)length);
    if (blob == NULL)
        return NULL;
    PyObject *value;
    if (!PyBytes_CheckExact(blob) || PyBytes_Size(blob) != (Py_ssize_t)length)
        value = Py_NewRef(s_missing); /* None: a purge took some of it */
    else
        value = decode(q, (const unsigned char *)PyBytes_AsString(blob), length, length, kbytes,
                       nkey, copy_from_blob, PyBytes_AsString(blob), 0);
    Py_DECREF(blob);
    return value;
}

/* The idle record of key read without re-pinning, with the lock held, as
 * VolatileCache._hit reads one the first time in a while: its value, or
 * MISSING for the Python way (no such record, or another of its hash first,
 * or purged, or read lately: promoted there), NULL with an exception set. */
static PyObject *locked_idle(PyObject *cache, QuickObject *q, PyObject *key, uint32_t h,
                             const unsigned char *kbytes, long nkey, int *python)
{
    HotObject *hot = (HotObject *)cache;
    PyObject *missing = Py_NewRef(s_missing);
    if (hot->quick != (PyObject *)q || hot->objects == NULL || hot->clock == NULL)
        return missing;
    PyObject *closed = PyObject_GetAttr(q->backend, q->closed);
    int gone = closed == NULL ? -1 : PyObject_IsTrue(closed);
    Py_XDECREF(closed);
    int has = gone != 0 ? 0 : PyDict_Contains(hot->objects, key);
    if (gone < 0 || has < 0) {
        Py_DECREF(missing);
        return NULL;
    }
    if (gone || has)
        return missing;
    struct vc_books *b = vc_books_of(q->books);
    PyObject *handle = PyObject_GetAttr(q->records, s_t);
    if (handle == NULL) {
        Py_DECREF(missing);
        return NULL;
    }
    PyObject *result = missing, *rid_obj = NULL, *now = NULL;
    struct vc_table *t = vc_table_of(handle);
    if (t == NULL || b == NULL) {
        PyErr_Clear();
        goto out;
    }
    long rid = vc_rec_first_of(t, h, VC_INDEXED | VC_OBJECT, VC_INDEXED);
    int64_t loc;
    uint32_t length;
    uint8_t rflags;
    if (rid < 0 || vc_rec_get(t, rid, &loc, &length, &rflags) < 0 || length < VC_TRAILER)
        goto out;
    int64_t index = loc >> VC_OFFSET_BITS;
    if (index >= b->nslabs || b->slabs[index].nlost)
        goto out; /* a purge the books must hear of first: the careful way */
    /* Read in C where the backend lent its pages (the kernel's), else
     * through the backend's reader, whole (longer entries: Python's, in parts). */
    PyObject *set = page_set_of(q, index);
    const struct vc_pages *pages = set == NULL ? NULL : vc_pageset_pages(set);
    PyObject *reader = NULL;
    if (pages == NULL) {
        if (length > READ_WHOLE)
            goto out;
        PyObject *readers = PyObject_GetAttr(q->slabs, s_readers);
        reader = readers && PyList_Check(readers) ? PyList_GetItem(readers, index) : NULL;
        Py_XINCREF(reader);
        Py_XDECREF(readers);
        if (reader == NULL || reader == Py_None) {
            Py_XDECREF(reader);
            PyErr_Clear();
            goto out;
        }
    }
    /* Read twice lately: Python promotes it (re-pinned, hot). */
    rid_obj = PyLong_FromLong(rid);
    now = rid_obj ? PyObject_CallNoArgs(q->clock) : NULL;
    PyObject *last = now ? PyDict_GetItemWithError(q->seen, rid_obj) : NULL;
    if (now == NULL || (last == NULL && PyErr_Occurred())) {
        Py_DECREF(reader);
        goto fail;
    }
    if (last != NULL) {
        int lately = q->hot_seconds == Py_None;
        if (!lately) {
            PyObject *age = PyNumber_Subtract(now, last);
            lately = age == NULL ? -1 : PyObject_RichCompareBool(age, q->hot_seconds, Py_LE);
            Py_XDECREF(age);
        }
        if (lately != 0) {
            Py_XDECREF(reader);
            if (lately < 0)
                goto fail;
            goto out;
        }
    }
    int64_t offset = loc & (((int64_t)1 << VC_OFFSET_BITS) - 1);
    PyObject *value = pages != NULL ? read_pages(q, set, offset, length, kbytes, nkey)
                                    : read_whole(q, reader, offset, length, kbytes, nkey);
    Py_XDECREF(reader);
    if (value == NULL)
        goto fail;
    if (value == s_missing) {
        Py_DECREF(value);
        goto out;
    }
    /* What _hit does for an idle record read intact: counted, remembered as
     * read now, touched in the order; the budget hears of every 16th. */
    int bad = count_one(q, s_hits) < 0;
    if (!bad && last != NULL)
        bad = PyDict_DelItem(q->seen, rid_obj) < 0;
    if (!bad && PyDict_Size(q->seen) >= q->seen_limit)
        PyDict_Clear(q->seen);
    bad = bad || PyDict_SetItem(q->seen, rid_obj, now) < 0;
    long long stamp = 0;
    if (!bad && q->maxsize > 0) {
        ClockObject *clock = (ClockObject *)hot->clock;
        if (clock->taken < LLONG_MAX)
            clock->taken++;
        stamp = clock->taken;
        clock->locked++;
    }
    if (!bad && vc_rec_touch(t, rid, stamp) < 0) {
        PyErr_SetString(PyExc_RuntimeError, "the record table refused a touch");
        bad = 1;
    }
    if (!bad && !(PyDict_Size(q->seen) & 15)) {
        *python = 1; /* the budget may evict from another cache: its events */
        PyObject *r = PyObject_CallMethodObjArgs(cache, s_after_idle_read, NULL);
        bad = r == NULL;
        Py_XDECREF(r);
    }
    if (bad) {
        Py_DECREF(value);
        goto fail;
    }
    Py_DECREF(missing);
    result = value;
    goto out;
fail:
    Py_DECREF(missing);
    result = NULL;
out:
    Py_XDECREF(now);
    Py_XDECREF(rid_obj);
    Py_DECREF(handle);
    return result;
}

PyObject *vc_quick_idle(PyObject *cache, PyObject *quick, PyObject *key)
{
    if (!is_plan(quick))
        return Py_NewRef(s_missing);
    QuickObject *q = (QuickObject *)quick;
    unsigned char kbuf[KEY_CAP];
    long nkey = vc_key_bytes(key, kbuf, KEY_CAP);
    if (nkey < 0)
        return PyErr_Occurred() ? NULL : Py_NewRef(s_missing);
    Py_hash_t hash = PyObject_Hash(key);
    if (hash == -1 && PyErr_Occurred())
        return NULL;
    int mine = take_lock(q);
    if (mine <= 0)
        return mine < 0 ? NULL : Py_NewRef(s_missing);
    int python = 0;
    PyObject *value = locked_idle(cache, q, key, (uint32_t)hash, kbuf, nkey, &python);
    if (give_lock(q, python) < 0) {
        Py_XDECREF(value);
        return NULL;
    }
    return value;
}

int vc_quick_absent(PyObject *cache, PyObject *quick, PyObject *key)
{
    if (!is_plan(quick))
        return 0;
    QuickObject *q = (QuickObject *)quick;
    HotObject *hot = (HotObject *)cache;
    Py_hash_t hash = PyObject_Hash(key);
    if (hash == -1 && PyErr_Occurred())
        return -1;
    if (hot->objects == NULL)
        return 0;
    int has = PyDict_Contains(hot->objects, key);
    if (has != 0)
        return has < 0 ? -1 : 0;
    PyObject *handle = PyObject_GetAttr(q->records, s_t);
    if (handle == NULL)
        return -1;
    /* No Python code runs from here: the table cannot change under the walk. */
    struct vc_table *t = vc_table_of(handle);
    int absent = t != NULL
                 && vc_rec_first_of(t, (uint32_t)hash, VC_INDEXED | VC_OBJECT, VC_INDEXED) < 0;
    if (t == NULL)
        PyErr_Clear();
    Py_DECREF(handle);
    return absent;
}

PyObject *vc_missing(void)
{
    return s_missing;
}

int vc_quick_count_miss(PyObject *quick)
{
    return count_one((QuickObject *)quick, s_misses);
}

/* evict(cache, n, keep): up to n least recently used entries go (the CLOCK's
 * choices without a maxsize), as VolatileCache._evict_one makes them go, with
 * the lock held: (how many went, whether none can go any more: no entry, or
 * keep is the one to go). An entry with a Python object goes through the
 * cache's _evict_rid; with a maxsize, a hot entry that may be the oldest ends
 * the call (the Python way goes on). */
static PyObject *quick_evict(QuickObject *q, PyObject *args)
{
    PyObject *cache;
    long long n, keep;
    if (!PyArg_ParseTuple(args, "OLL", &cache, &n, &keep))
        return NULL;
    PyObject *plan = PyObject_GetAttr(cache, s_quick); /* a HotBase's member: this plan */
    Py_XDECREF(plan);
    if (plan != (PyObject *)q) {
        PyErr_SetString(PyExc_TypeError, "evict: the cache is not this plan's");
        return NULL;
    }
    struct vc_books *b = q->lock == NULL ? NULL : vc_books_of(q->books);
    if (b == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "evict: the plan or its books are not ready");
        return NULL;
    }
    long long done = 0, gone = 0;
    int finished = 0, python = 0, bad = 0;
    PyObject *handle = NULL;
    while (done < n && !bad) {
        Py_XDECREF(handle); /* read again: Python code below may have moved the table */
        handle = PyObject_GetAttr(q->records, s_t);
        struct vc_table *t = handle ? vc_table_of(handle) : NULL;
        if (t == NULL) {
            bad = 1;
            break;
        }
        long victim;
        if (q->maxsize > 0) {
            Py_ssize_t nhot = PyObject_Length(q->hot);
            if (nhot != 0) {
                bad = nhot < 0;
                break; /* a hot entry may be older: the Python way compares */
            }
            int64_t used;
            victim = vc_rec_oldest_use(t, &used);
        } else {
            victim = vc_rec_victim(t);
            if (victim < 0) {
                Py_ssize_t nhot = PyObject_Length(q->hot);
                bad = nhot < 0;
                finished = nhot == 0;
                break; /* none idle: the Python way demotes a hot one, if any */
            }
        }
        if (victim < 0 || victim == keep) {
            finished = 1;
            break;
        }
        int64_t loc;
        uint32_t length;
        uint8_t flags;
        if (vc_rec_get(t, victim, &loc, &length, &flags) < 0) {
            PyErr_SetString(PyExc_RuntimeError, "evict: the victim is not a record");
            bad = 1;
        } else if (flags & VC_OBJECT) { /* its Python entry: the Python way */
            python = 1;
            PyObject *rid = PyLong_FromLong(victim);
            PyObject *r = rid ? PyObject_CallMethodObjArgs(cache, s_evict_rid, rid, NULL) : NULL;
            Py_XDECREF(rid);
            bad = r == NULL;
            Py_XDECREF(r);
        } else {
            int r = evict_idle(q, t, b, victim, &python);
            if (r == 1)
                PyErr_NoMemory(); /* the books could not take its pages back */
            bad = r != 0;
            gone += r == 0 || r == -2;
        }
        if (!bad)
            done++;
    }
    Py_XDECREF(handle);
    if (gone) { /* counted out of the mapping, even if something failed after */
        PyObject *type, *exc, *tb;
        PyErr_Fetch(&type, &exc, &tb);
        if (count_out(q, gone) < 0)
            bad = 1;
        PyObject *t_handle = PyObject_GetAttr(q->records, s_t);
        struct vc_table *t = t_handle ? vc_table_of(t_handle) : NULL;
        if (t != NULL && t->count == 0) { /* emptied: the large table goes whole */
            PyObject *r = PyObject_CallMethodObjArgs(q->records, s_deleted, NULL);
            bad = bad || r == NULL;
            Py_XDECREF(r);
        }
        Py_XDECREF(t_handle);
        if (type != NULL) /* the first failure is the one raised */
            PyErr_Restore(type, exc, tb);
    }
    (void)python; /* the caller holds the lock and releases it: its events are delivered then */
    if (bad) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "evict: the record table could not be read");
        return NULL;
    }
    return Py_BuildValue("(LO)", done, finished ? Py_True : Py_False);
}

static PyMethodDef quick_methods[] = {
    {"evict", (PyCFunction)quick_evict, METH_VARARGS,
     "evict(cache, n, keep): (entries evicted, whether none can go any more)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef quick_members[] = {
    {"lock", T_OBJECT, offsetof(QuickObject, lock), READONLY, "The cache's lock it takes."},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot quick_slots[] = {
    {Py_tp_members, quick_members},
    {Py_tp_methods, quick_methods},
    {Py_tp_doc, "The plan of a VolatileCache's store in one call (see core/quick.c)."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, quick_init},
    {Py_tp_traverse, quick_traverse},
    {Py_tp_clear, quick_clear},
    {Py_tp_dealloc, quick_dealloc},
    {0, NULL},
};

static PyType_Spec quick_spec = {
    "volcache._core.Quick", sizeof(QuickObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, quick_slots,
};

static PyObject *m_key_bytes(PyObject *module, PyObject *key)
{
    (void)module;
    unsigned char buf[KEY_CAP];
    long n = vc_key_bytes(key, buf, KEY_CAP);
    if (n < 0) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    return PyBytes_FromStringAndSize((const char *)buf, n);
}

static PyMethodDef quick_functions[] = {
    {"key_bytes", (PyCFunction)m_key_bytes, METH_O,
     "key_bytes(key): the bytes a store in C writes for key (volcache.keys.key_bytes's, "
     "marshal format 2), or None for a key it leaves to Python."},
    {NULL, NULL, 0, NULL},
};

int vc_add_quick_type(PyObject *module)
{
#define NAME(var, text) \
    if (var == NULL && (var = PyUnicode_InternFromString(text)) == NULL) return -1;
    NAME(s_count, "count") NAME(s_currsize, "currsize") 
    NAME(s_used, "used") NAME(s_limit, "limit") NAME(s_t, "_t")
    NAME(s_settle_put, "_settle_put") NAME(s_after_store, "_after_store")
    NAME(s_release_slab, "release_slab") NAME(s_evictions, "evictions")
    NAME(s_active_nbytes, "active_nbytes") NAME(s_store, "store") NAME(s_serve, "serve") NAME(s_page_sets, "_page_sets")
    NAME(s_make_room, "make_room") NAME(s_misses, "misses") NAME(s_hits, "hits")
    NAME(s_readers, "_readers") NAME(s_after_idle_read, "_after_idle_read")
    NAME(s_evict_rid, "_evict_rid") NAME(s_deleted, "deleted") NAME(s_quick, "_quick")
    NAME(s_set_pickled, "_set_pickled")
#undef NAME
    if (s_missing == NULL) {
        PyObject *missing = PyObject_GetAttrString(module, "MISSING");
        if (missing == NULL)
            return -1;
        s_missing = missing;
    }
    PyObject *type = PyType_FromModuleAndSpec(module, &quick_spec, NULL);
    if (type == NULL || PyModule_AddObject(module, "Quick", type) < 0) {
        Py_XDECREF(type);
        return -1;
    }
    return PyModule_AddFunctions(module, quick_functions);
}
