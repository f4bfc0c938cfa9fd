/* volcache._core.SlabBooks: slabbooks.c behind the interface of
 * volcache.slabbooks.SlabBooks, the reference it is tested against.
 *
 * Each method parses its integers, makes one call, and turns -errno into an
 * exception: EINVAL a ValueError naming the call (a loc, an index or an id
 * the books do not hold), ENOMEM a MemoryError. The books are not thread
 * safe: the cache holds its lock (and the GIL is held throughout a call).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "structmember.h"
#include <errno.h>

#include "pycore.h"
#include "slabbooks.h"
#include "store.h"

#define NEED_SLAB (-1) /* volcache.slabbooks.NEED_SLAB */
#define NEED_REPIN (-2)
#define NEED_ROOM (-3) /* volcache.slabbooks.NEED_ROOM: the record table is full */
#define MAX_CHAIN 64 /* entries on a shared page, at most */

typedef struct {
    PyObject_HEAD
    struct vc_books books;
    int ready;
} BooksObject;

static PyObject *fail(long code, const char *what)
{
    if (code == -ENOMEM)
        return PyErr_NoMemory();
    if (code == -EINVAL)
        PyErr_Format(PyExc_ValueError, "slab books: %s refused (no such loc, slab or entry, "
                     "or not in that state)", what);
    else
        PyErr_Format(PyExc_RuntimeError, "slab books: %s failed (errno %ld)", what, -code);
    return NULL;
}

/* want integers from args into out; -1 with a TypeError otherwise. */
static int ints(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, int64_t *out,
                const char *name)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, want, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < want; i++) {
        if (!PyLong_Check(args[i])) {
            PyErr_Format(PyExc_TypeError, "%s(): argument %zd must be an int", name, i + 1);
            return -1;
        }
        out[i] = PyLong_AsLongLong(args[i]);
        if (out[i] == -1 && PyErr_Occurred())
            return -1;
    }
    return 0;
}

static int check_ready(BooksObject *self)
{
    if (!self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "SlabBooks.__init__ was not called");
        return -1;
    }
    return 0;
}

#define PREAMBLE(n, name)                                              \
    int64_t a[(n) > 0 ? (n) : 1];                                      \
    if (check_ready(self) < 0 || ints(args, nargs, (n), a, name) < 0) \
        return NULL;

static PyObject *ids_list(const int32_t *ids, long n)
{
    PyObject *list = PyList_New(n);
    if (list == NULL)
        return NULL;
    for (long i = 0; i < n; i++) {
        PyObject *id = PyLong_FromLong(ids[i]);
        if (id == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SetItem(list, i, id);
    }
    return list;
}

/* The answer of a call that may need the backend: (code, what) as slabbooks.py gives it. */
static PyObject *needs(int64_t code, const int64_t *need)
{
    if (code == VC_NEED_ROOM)
        return Py_BuildValue("(iO)", NEED_ROOM, Py_None);
    if (code == VC_NEED_SLAB)
        return Py_BuildValue("(iL)", NEED_SLAB, (long long)need[0]);
    return Py_BuildValue("(i(LLL))", NEED_REPIN, (long long)need[0], (long long)need[1],
                         (long long)need[2]);
}

static int books_init(BooksObject *self, PyObject *args, PyObject *kwargs)
{
    long long page_size, slab_pages;
    static char *names[] = {"page_size", "slab_pages", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "LL", names, &page_size, &slab_pages))
        return -1;
    if (self->ready)
        vc_books_free(&self->books);
    self->ready = 0;
    long r = vc_books_init(&self->books, page_size, slab_pages);
    if (r < 0) {
        fail(r, "init (the page size must be a power of two of 64 or more)");
        return -1;
    }
    self->ready = 1;
    return 0;
}

static void books_dealloc(BooksObject *self)
{
    PyTypeObject *tp = Py_TYPE((PyObject *)self);
    if (self->ready)
        vc_books_free(&self->books);
    freefunc free_ = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    free_(self);
    Py_DECREF(tp);
}

static PyObject *m_reset(BooksObject *self, PyObject *unused)
{
    (void)unused;
    if (check_ready(self) < 0)
        return NULL;
    vc_books_reset(&self->books);
    Py_RETURN_NONE;
}

static PyObject *m_add_slab(BooksObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PREAMBLE(1, "add_slab");
    long r = vc_books_add_slab(&self->books, a[0]);
    return r < 0 ? fail(r, "add_slab") : PyLong_FromLong(r);
}

static PyObject *m_set_base(BooksObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PREAMBLE(2, "set_base");
    long r = vc_books_set_base(&self->books, a[0], (uintptr_t)a[1]);
    if (r < 0)
        return fail(r, "set_base");
    Py_RETURN_NONE;
}

/* put(table, h, value, key, spec, tag, flags): store.h's vc_store_put. */
static PyObject *m_put(BooksObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_ready(self) < 0)
        return NULL;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "put(table, h, value, key, spec, tag, flags) takes 7 arguments");
        return NULL;
    }
    struct vc_table *t = vc_table_of(args[0]);
    if (t == NULL)
        return NULL;
    PyObject *const ints_at[3] = {args[1], args[5], args[6]};
    int64_t a[3];
    if (ints(ints_at, 3, 3, a, "put") < 0)
        return NULL;
    if (a[0] < 0 || a[0] > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "put: h must be the low 32 bits of a hash");
        return NULL;
    }
    if (a[1] < 0 || a[1] > 0xFFFF || a[2] < 0 || a[2] > 0xFF) {
        PyErr_SetString(PyExc_ValueError, "put: the tag must fit 16 bits and the flags 8");
        return NULL;
    }
    Py_buffer views[3];
    int got = 0;
    PyObject *result = NULL;
    for (; got < 3; got++)
        if (PyObject_GetBuffer(args[2 + got], &views[got], PyBUF_SIMPLE) < 0)
            goto done;
    struct vc_put put = {
        views[0].buf, views[1].buf, views[2].buf, views[0].len, views[1].len, views[2].len,
        (uint32_t)a[1], (uint32_t)a[2],
    };
    int64_t need[3];
    int32_t lost[MAX_CHAIN];
    int64_t nlost = 0;
    long rid = vc_store_put(t, &self->books, (uint32_t)a[0], &put, need, lost, MAX_CHAIN, &nlost);
    if (rid == VC_NEED_SLAB || rid == VC_NEED_REPIN || rid == VC_NEED_ROOM) {
        result = needs(rid, need);
    } else if (rid < 0) {
        result = fail(rid, "put");
    } else {
        PyObject *ids = ids_list(lost, (long)nlost);
        result = ids == NULL ? NULL : Py_BuildValue("(lN)", rid, ids);
    }
done:
    while (got-- > 0)
        PyBuffer_Release(&views[got]);
    return result;
}

/* free_record(table, rid): store.h's vc_store_free: (empty slab or -1, length,
 * active), or None for a record of 4 GiB or more (the caller's own way). */
static PyObject *m_free_record(BooksObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_ready(self) < 0)
        return NULL;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "free_record(table, rid) takes 2 arguments");
        return NULL;
    }
    struct vc_table *t = vc_table_of(args[0]);
    int64_t a[1];
    if (t == NULL || ints(args + 1, 1, 1, a, "free_record") < 0)
        return NULL;
    int64_t length;
    int active;
    long empty = vc_store_free(t, &self->books, a[0], &length, &active);
    if (empty == -EFBIG)
        Py_RETURN_NONE;
    if (empty < -1)
        return fail(empty, "free_record");
    return Py_BuildValue("(lLO)", empty, (long long)length, active ? Py_True : Py_False);
}

/* settle(table, rid, stamp): store.h's vc_store_settle: the record's length. */
static PyObject *m_settle(BooksObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_ready(self) < 0)
        return NULL;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "settle(table, rid, stamp) takes 3 arguments");
        return NULL;
    }
    struct vc_table *t = vc_table_of(args[0]);
    int64_t a[2];
    if (t == NULL || ints(args + 1, 2, 2, a, "settle") < 0)
        return NULL;
    long length = vc_store_settle(t, &self->books, a[0], a[1]);
    return length < 0 ? fail(length, "settle") : PyLong_FromLong(length);
}

static PyObject *m_drop_slab(BooksObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PREAMBLE(1, "drop_slab");
    long r = vc_books_drop_slab(&self->books, a[0]);
    if (r < 0)
        return fail(r, "drop_slab");
    Py_RETURN_NONE;
}

static PyObject *m_slab_indexes(BooksObject *self, PyObject *unused)
{
    (void)unused;
    if (check_ready(self) < 0)
        return NULL;
    PyObject *list = PyList_New(0);
    for (int64_t i = 0; list != NULL && i < self->books.nslabs; i++) {
        if (self->books.slabs[i].npages == 0)
            continue;
        PyObject *index = PyLong_FromLongLong(i);
        if (index == NULL || PyList_Append(list, index) < 0) {
            Py_XDECREF(index);
            Py_CLEAR(list);
            break;
        }
        Py_DECREF(index);
    }
    return list;
}

static PyObject *m_npages(BooksObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PREAMBLE(1, "npages");
    if (a[0] < 0 || a[0] >= self->books.nslabs || self->books.slabs[a[0]].npages == 0)
        return fail(-EINVAL, "npages");
    return PyLong_FromLongLong(self->books.slabs[a[0]].npages);
}

static PyObject *m_allocate(BooksObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PREAMBLE(2, "allocate");
    int64_t need[3];
    int32_t lost[MAX_CHAIN];
    int64_t nlost = 0;
    if (a[0] <= 0 || a[0] > VC_MAX_ENTRY) {
        PyErr_Format(PyExc_ValueError, "nbytes must be positive and at most 2**40, got %lld",
                     (long long)a[0]);
        return NULL;
    }
    int64_t loc = vc_books_allocate(&self->books, a[0], a[1], need, lost, MAX_CHAIN, &nlost);
    if (loc == VC_NEED_SLAB || loc == VC_NEED_REPIN)
        return needs(loc, need);
    if (loc < 0)
        return fail((long)loc, "allocate");
    PyObject *ids = ids_list(lost, (long)nlost);
    if (ids == NULL)
        return NULL;
    return Py_BuildValue("(LN)", (long long)loc, ids);
}

static PyObject *m_free(BooksObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PREAMBLE(4, "free");
    long r = vc_books_free_entry(&self->books, a[0], a[1], a[2], a[3] != 0);
    return r < -1 ? fail(r, "free") : PyLong_FromLong(r);
}

static PyObject *m_page_of(BooksObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PREAMBLE(1, "page_of");
    return Py_BuildValue("(LL)", (long long)(a[0] >> VC_OFFSET_BITS),
                         (long long)((a[0] & (((int64_t)1 << VC_OFFSET_BITS) - 1))
                                     / self->books.page_size));
}

static PyObject *m_has_lost(BooksObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PREAMBLE(1, "has_lost");
    long r = vc_books_has_lost(&self->books, a[0]);
    return r < 0 ? fail(r, "has_lost") : PyBool_FromLong(r);
}

static PyObject *m_lost_in(BooksObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PREAMBLE(2, "lost_in");
    long r = vc_books_lost_in(&self->books, a[0], a[1]);
    return r < 0 ? fail(r, "lost_in") : PyBool_FromLong(r);
}

static PyObject *m_activate(BooksObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PREAMBLE(2, "activate");
    int64_t need[3];
    int32_t lost[MAX_CHAIN];
    int64_t nlost = 0;
    long r = vc_books_activate(&self->books, a[0], a[1], need, lost, MAX_CHAIN, &nlost);
    if (r == VC_NEED_REPIN)
        return needs(r, need);
    if (r < 0)
        return fail(r, "activate");
    PyObject *ids = ids_list(lost, (long)nlost);
    if (ids == NULL)
        return NULL;
    return Py_BuildValue("(iN)", 0, ids);
}

static PyObject *m_deactivate(BooksObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PREAMBLE(2, "deactivate");
    long r = vc_books_deactivate(&self->books, a[0], a[1]);
    if (r < 0)
        return fail(r, "deactivate");
    Py_RETURN_NONE;
}

static PyObject *m_take_pending(BooksObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PREAMBLE(3, "take_pending");
    int64_t low, high;
    long r = vc_books_take_pending(&self->books, a[0], a[1], a[2], &low, &high);
    return r < 0 ? fail(r, "take_pending") : Py_BuildValue("(LL)", (long long)low, (long long)high);
}

static PyObject *m_repinned(BooksObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "repinned() takes 4 arguments");
        return NULL;
    }
    int64_t a[3];
    if (check_ready(self) < 0 || ints(args, 3, 3, a, "repinned") < 0)
        return NULL;
    PyObject *seq = PySequence_Tuple(args[3]);
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_Size(seq);
    int64_t *pages = PyMem_Malloc((size_t)(n ? n : 1) * sizeof *pages);
    if (pages == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        pages[i] = PyLong_AsLongLong(PyTuple_GetItem(seq, i));
        if (pages[i] == -1 && PyErr_Occurred()) {
            PyMem_Free(pages);
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    long r = vc_books_repinned(&self->books, a[0], a[1], a[2], pages, n);
    PyMem_Free(pages);
    if (r < 0)
        return fail(r, "repinned");
    Py_RETURN_NONE;
}

static PyObject *m_restore_pending(BooksObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PREAMBLE(3, "restore_pending");
    long r = vc_books_restore_pending(&self->books, a[0], a[1], a[2]);
    if (r < 0)
        return fail(r, "restore_pending");
    Py_RETURN_NONE;
}

static PyObject *m_pending_runs(BooksObject *self, PyObject *unused)
{
    (void)unused;
    if (check_ready(self) < 0)
        return NULL;
    PyObject *runs = PyList_New(0);
    int64_t index = 0, first = 0, stop = 0;
    while (runs != NULL && vc_books_next_pending(&self->books, &index, &first, &stop) > 0) {
        PyObject *run = Py_BuildValue("(LLL)", (long long)index, (long long)first, (long long)stop);
        if (run == NULL || PyList_Append(runs, run) < 0)
            Py_CLEAR(runs);
        Py_XDECREF(run);
        first = stop;
    }
    return runs;
}

static PyObject *m_marked(BooksObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PREAMBLE(3, "marked");
    long r = vc_books_marked(&self->books, a[0], a[1], a[2]);
    if (r < 0)
        return fail(r, "marked");
    Py_RETURN_NONE;
}

int vc_mark_pending(struct vc_books *b, PyObject *page_sets, long long *marked)
{
    int64_t index = 0, first = 0, stop = 0;
    *marked = 0;
    if (!PyList_Check(page_sets))
        return 0;
    while (vc_books_next_pending(b, &index, &first, &stop) > 0) {
        PyObject *set = index < PyList_Size(page_sets) ? PyList_GetItem(page_sets, index) : NULL;
        if (set == NULL || vc_pageset_enter(set) == NULL) {
            PyErr_Clear();
            return 0;
        }
        Py_INCREF(set); /* the sweep the mark may call runs Python code */
        long done = vc_pageset_mark(set, first, stop - first);
        long r = done > 0 ? vc_books_marked(b, index, first, done) : 0;
        vc_pageset_leave(set);
        Py_DECREF(set);
        if (done == -ECANCELED)
            return -1;
        if (r < 0) {
            fail(r, "marked");
            return -1;
        }
        if (done > 0)
            *marked += done;
        if (done < stop - first)
            return 0;
        first = stop;
    }
    return 1;
}

/* Each pending run marked through its slab's PageSet, as SlabAllocator.flush
 * marks it through the backend: (pages marked, whether every run was). */
static PyObject *m_mark_pending(BooksObject *self, PyObject *page_sets)
{
    if (check_ready(self) < 0)
        return NULL;
    if (!PyList_Check(page_sets)) {
        PyErr_SetString(PyExc_TypeError, "mark_pending() takes a list of PageSets");
        return NULL;
    }
    long long marked;
    int finished = vc_mark_pending(&self->books, page_sets, &marked);
    if (finished < 0)
        return NULL;
    return Py_BuildValue("(LO)", marked, finished ? Py_True : Py_False);
}

static PyObject *m_volatile_slabs(BooksObject *self, PyObject *unused)
{
    (void)unused;
    if (check_ready(self) < 0)
        return NULL;
    PyObject *list = PyList_New(0);
    for (int64_t i = 0; list != NULL && i < self->books.nslabs; i++) {
        if (self->books.slabs[i].npages == 0 || vc_books_has_volatile(&self->books, i) <= 0)
            continue;
        PyObject *index = PyLong_FromLongLong(i);
        if (index == NULL || PyList_Append(list, index) < 0)
            Py_CLEAR(list);
        Py_XDECREF(index);
    }
    return list;
}

static PyObject *m_ids_on(BooksObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "ids_on() takes 2 arguments");
        return NULL;
    }
    int64_t a[1];
    if (check_ready(self) < 0 || ints(args, 1, 1, a, "ids_on") < 0)
        return NULL;
    PyObject *seq = PySequence_Tuple(args[1]);
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_Size(seq);
    int64_t *pages = PyMem_Malloc((size_t)(n ? n : 1) * sizeof *pages);
    int32_t *ids = PyMem_Malloc((size_t)(n ? n : 1) * MAX_CHAIN * sizeof *ids);
    PyObject *result = NULL;
    if (pages == NULL || ids == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        pages[i] = PyLong_AsLongLong(PyTuple_GetItem(seq, i));
        if (pages[i] == -1 && PyErr_Occurred())
            goto done;
    }
    long r = vc_books_ids_on(&self->books, a[0], pages, n, ids, (int64_t)n * MAX_CHAIN);
    result = r < 0 ? fail(r, "ids_on") : ids_list(ids, r);
done:
    PyMem_Free(pages);
    PyMem_Free(ids);
    Py_DECREF(seq);
    return result;
}

/* Bytes of books per page (state, owner, class, mask, active) and per entry id
 * up to the highest in use (its link); and the arrays of slabs, free runs and
 * vacancies. */
#define PAGE_BYTES (1 + 4 + 1 + 8 + 2)
#define ENTRY_BYTES 4

static PyObject *m_nbytes(BooksObject *self, PyObject *unused)
{
    (void)unused;
    if (check_ready(self) < 0)
        return NULL;
    struct vc_books *b = &self->books;
    int64_t arrays = b->slabs_cap * (int64_t)sizeof *b->slabs + b->vacant_cap * 8;
    for (int i = 0; i < VC_BUCKETS; i++)
        arrays += b->buckets[i].cap * 8;
    for (int k = 0; k < VC_MAX_CLASSES; k++)
        arrays += b->stacks[k].cap * 8;
    return PyLong_FromLongLong(b->total_pages * PAGE_BYTES + b->link_len * ENTRY_BYTES + arrays);
}

static PyObject *m_page_counts(BooksObject *self, PyObject *unused)
{
    (void)unused;
    if (check_ready(self) < 0)
        return NULL;
    int64_t total, used, vol;
    vc_books_page_counts(&self->books, &total, &used, &vol);
    return Py_BuildValue("(LLL)", (long long)total, (long long)used, (long long)vol);
}

static PyObject *get_classes(BooksObject *self, void *unused)
{
    (void)unused;
    if (check_ready(self) < 0)
        return NULL;
    PyObject *list = PyList_New(self->books.nclasses);
    for (int64_t k = 0; list != NULL && k < self->books.nclasses; k++) {
        PyObject *size = PyLong_FromLongLong(self->books.classes[k]);
        if (size == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SetItem(list, k, size);
    }
    return list;
}

static PyGetSetDef books_getset[] = {
    {"classes", (getter)get_classes, NULL, "Slot sizes of the size classes.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

#define FIELD(name, flags) \
    {#name, T_LONGLONG, offsetof(BooksObject, books) + offsetof(struct vc_books, name), flags, NULL}

static PyMemberDef books_members[] = {
    FIELD(page_size, READONLY),
    FIELD(slab_pages, READONLY),
    FIELD(npending, READONLY),
    FIELD(stored_bytes, READONLY),
    FIELD(capacity_bytes, READONLY),
    FIELD(mark_errors, 0), /* the allocator counts the marks the backend refused */
    FIELD(count, READONLY),
    FIELD(total_pages, READONLY),
    {NULL, 0, 0, 0, NULL},
};

#define FAST(name, doc) {#name, (PyCFunction)(void (*)(void))m_##name, METH_FASTCALL, doc}
#define NOARGS(name, doc) {#name, (PyCFunction)(void (*)(void))m_##name, METH_NOARGS, doc}

static PyMethodDef books_methods[] = {
    NOARGS(reset, "Forget every slab."),
    FAST(add_slab, "A new slab of npages fresh pages: its index."),
    FAST(drop_slab, "A slab that free() said was empty went back to the backend."),
    FAST(free_record, "free_record(table, rid): forget a record and give its place back: "
                      "(the slab now wholly free or -1, its length, whether it was active)."),
    FAST(settle, "settle(table, rid, stamp): a new active record joins the index and the "
                 "order and goes idle: its length."),
    FAST(set_base, "set_base(index, address): where the slab is mapped (put() writes there)."),
    FAST(put, "put(table, h, value, key, spec, tag, flags): a new active record holding the "
              "entry's bytes: (rid, ids a purge took), or what it needs first."),
    NOARGS(slab_indexes, "The indexes of the slabs in use."),
    FAST(npages, "The pages of a slab."),
    FAST(allocate, "(loc, ids a purge took), or (NEED_SLAB, npages), or (NEED_REPIN, run)."),
    FAST(free, "Give an entry's place back: the index of its slab if now wholly free, else -1."),
    FAST(page_of, "(slab index, first page) of a loc."),
    FAST(has_lost, "Whether a slab has a purged page a failed re-pin found, unreported."),
    FAST(lost_in, "Whether such a page is among these bytes."),
    FAST(activate, "(0, ids a purge took), or (NEED_REPIN, run)."),
    FAST(deactivate, "The entry went idle."),
    FAST(take_pending, "Before a re-pin: off the pending list; (low, high) of the volatile pages."),
    FAST(repinned, "A re-pin made count pages non-volatile; these of them had been purged."),
    FAST(restore_pending, "A re-pin failed: the pages not volatile are pending again."),
    NOARGS(pending_runs, "(index, first, stop) of each run of pending pages."),
    FAST(marked, "count pending pages from first were marked volatile."),
    {"mark_pending", (PyCFunction)m_mark_pending, METH_O,
     "mark_pending(page_sets): the pending runs marked through each slab's PageSet: "
     "(pages marked, whether every run was); the rest is the caller's."},
    NOARGS(volatile_slabs, "Indexes of the slabs with a volatile page."),
    FAST(ids_on, "The ids of the idle entries on these (sorted) pages."),
    NOARGS(nbytes, "The memory the books take."),
    NOARGS(page_counts, "(slab pages, used pages, used pages that are volatile)."),
    {NULL, NULL, 0, NULL},
};

static PyType_Slot books_slots[] = {
    {Py_tp_doc, "The slab allocator's books in C (volcache.slabbooks.SlabBooks)."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, books_init},
    {Py_tp_dealloc, books_dealloc},
    {Py_tp_methods, books_methods},
    {Py_tp_members, books_members},
    {Py_tp_getset, books_getset},
    {0, NULL},
};

static PyType_Spec books_spec = {
    "volcache._core.SlabBooks", sizeof(BooksObject), 0, Py_TPFLAGS_DEFAULT, books_slots,
};

struct vc_books *vc_books_of(PyObject *books)
{
    /* Each import of the module makes its own type: its dealloc says it is ours. */
    if (PyType_GetSlot(Py_TYPE(books), Py_tp_dealloc) != (void *)books_dealloc
        || !((BooksObject *)books)->ready)
        return NULL;
    return &((BooksObject *)books)->books;
}

int vc_add_books_type(PyObject *module)
{
    PyObject *type = PyType_FromModuleAndSpec(module, &books_spec, NULL);
    if (type == NULL || PyModule_AddObject(module, "SlabBooks", type) < 0) {
        Py_XDECREF(type);
        return -1;
    }
    return 0;
}
