/* volcache._core.PageSet: pages.c over the buffers of a kernel-backend
 * region (its saved words, its PageBook's states, stamps and counts, the
 * backend's counters) and the backend's lock, so that the cache's C store
 * re-pins and reads without a Python call. The buffers are held (a
 * bytearray held cannot be resized) until the PageSet goes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "structmember.h"
#include <errno.h>
#include <string.h>

#include "pages.h"
#include "pycore.h"

#include <time.h>

#define NBUFS 8

/* Beside the pages: what a mark must tell the backend's Python side. The
 * ident, runs (the PageBook's OrderedDict of run id -> (ident, first,
 * pages)), sweep (its sweep of dead runs), undrained (the backend's list of
 * (ident, first, pages) marked since every CPU was drained) and drained
 * (the time of that drain, a double) are the kernel backend's own. */
typedef struct {
    PyObject_HEAD
    struct vc_pages pages;
    Py_buffer bufs[NBUFS]; /* saved, states, stamps, counts, calls, mismatched, syscalls, drained */
    int nbufs;
    PyObject *lock, *ident, *runs, *sweep, *undrained;
    double drain_every;
    long long undrained_max;
    int released; /* the region went back: nothing here may be touched */
} PageSetObject;

static PyObject *s_acquire, *s_release;

static void release_bufs(PageSetObject *self)
{
    for (int i = 0; i < self->nbufs; i++)
        PyBuffer_Release(&self->bufs[i]);
    self->nbufs = 0;
    memset(&self->pages, 0, sizeof self->pages);
}

static int pageset_init(PageSetObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"address", "npages", "page_size", "tag", "saved", "states",
                            "stamps", "counts", "calls", "mismatched", "lock", "ident", "runs",
                            "sweep", "undrained", "drained", "drain_every", "undrained_max",
                            "mark", "syscalls", NULL};
    unsigned long long address, tag, mark;
    long long npages, page_size, undrained_max;
    double drain_every;
    PyObject *objs[NBUFS], *lock, *ident, *runs, *sweep, *undrained;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "KLLKOOOOOOO$OOOOOdLKO", names, &address,
                                     &npages, &page_size, &tag, &objs[0], &objs[1], &objs[2],
                                     &objs[3], &objs[4], &objs[5], &lock, &ident, &runs, &sweep,
                                     &undrained, &objs[7], &drain_every, &undrained_max, &mark,
                                     &objs[6]))
        return -1;
    if (!PyList_Check(undrained) || !PyCallable_Check(sweep) || !PyLong_Check(ident)) {
        PyErr_SetString(PyExc_TypeError,
                        "PageSet: undrained must be a list, sweep callable, ident an int");
        return -1;
    }
    if (npages <= 0 || page_size < 8 || npages > INT64_MAX / page_size) {
        PyErr_SetString(PyExc_ValueError, "PageSet: npages and page_size must be positive");
        return -1;
    }
    release_bufs(self);
    /* The bytes each buffer must hold at least. */
    const Py_ssize_t want[NBUFS] = {(Py_ssize_t)npages * 8, (Py_ssize_t)npages,
                                    (Py_ssize_t)npages * 8, 5 * 8, 2 * 8,
                                    (Py_ssize_t)sizeof(unsigned long),
                                    (Py_ssize_t)sizeof(unsigned long), (Py_ssize_t)sizeof(double)};
    static const char *what[NBUFS] = {"saved", "states", "stamps", "counts", "calls",
                                      "mismatched", "syscalls", "drained"};
    for (int i = 0; i < NBUFS; i++) {
        if (PyObject_GetBuffer(objs[i], &self->bufs[i], PyBUF_WRITABLE) < 0) {
            release_bufs(self);
            return -1;
        }
        self->nbufs = i + 1;
        if (self->bufs[i].len < want[i]) {
            PyErr_Format(PyExc_ValueError, "PageSet: %s holds %zd bytes, %zd needed", what[i],
                         self->bufs[i].len, want[i]);
            release_bufs(self);
            return -1;
        }
    }
    struct vc_pages *p = &self->pages;
    p->addr = (uintptr_t)address;
    p->npages = npages;
    p->page_size = page_size;
    p->tag = tag;
    p->saved = self->bufs[0].buf;
    p->state = self->bufs[1].buf;
    p->stamps = self->bufs[2].buf;
    p->counts = self->bufs[3].buf;
    p->calls = self->bufs[4].buf;
    p->mismatched = self->bufs[5].buf;
    p->syscalls = self->bufs[6].buf;
    p->mark = (vc_mark_fn)(uintptr_t)mark;
    VC_SETREF(self->lock, Py_NewRef(lock));
    VC_SETREF(self->ident, Py_NewRef(ident));
    VC_SETREF(self->runs, Py_NewRef(runs));
    VC_SETREF(self->sweep, Py_NewRef(sweep));
    VC_SETREF(self->undrained, Py_NewRef(undrained));
    self->drain_every = drain_every;
    self->undrained_max = undrained_max;
    self->released = 0;
    return 0;
}

static void pageset_dealloc(PageSetObject *self)
{
    PyTypeObject *tp = Py_TYPE((PyObject *)self);
    release_bufs(self);
    Py_CLEAR(self->lock);
    Py_CLEAR(self->ident);
    Py_CLEAR(self->runs);
    Py_CLEAR(self->sweep);
    Py_CLEAR(self->undrained);
    freefunc free_ = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    free_(self);
    Py_DECREF(tp);
}

static int ready(PageSetObject *self)
{
    if (self->nbufs != NBUFS) {
        PyErr_SetString(PyExc_RuntimeError, "PageSet.__init__ was not called");
        return 0;
    }
    if (self->released) {
        PyErr_SetString(PyExc_ValueError, "PageSet: its region was released");
        return 0;
    }
    return 1;
}

static PyObject *fail(long code, const char *what)
{
    if (code == -EINVAL)
        PyErr_Format(PyExc_ValueError, "PageSet.%s: the range is outside the region", what);
    else
        PyErr_Format(PyExc_RuntimeError, "PageSet.%s failed (errno %ld)", what, -code);
    return NULL;
}

static PyObject *pageset_repin(PageSetObject *self, PyObject *args)
{
    long long first, npages;
    if (!PyArg_ParseTuple(args, "LL", &first, &npages) || !ready(self))
        return NULL;
    if (npages < 0 || npages > self->pages.npages)
        return fail(-EINVAL, "repin");
    int64_t *purged = PyMem_Malloc(sizeof(int64_t) * (size_t)(npages ? npages : 1));
    if (purged == NULL)
        return PyErr_NoMemory();
    long n = vc_pages_repin(&self->pages, first, npages, purged, npages);
    PyObject *out = n < 0 ? fail(n, "repin") : PyList_New(n);
    for (long i = 0; out != NULL && i < n; i++) {
        PyObject *page = PyLong_FromLongLong(purged[i]);
        if (page == NULL)
            Py_CLEAR(out);
        else
            PyList_SetItem(out, i, page);
    }
    PyMem_Free(purged);
    return out;
}


static PyObject *pageset_mark(PageSetObject *self, PyObject *args)
{
    long long first, npages;
    if (!PyArg_ParseTuple(args, "LL", &first, &npages) || !ready(self))
        return NULL;
    if (first < 0 || npages <= 0 || first > self->pages.npages - npages)
        return fail(-EINVAL, "mark");
    long done = vc_pageset_mark((PyObject *)self, first, npages);
    if (done == -ECANCELED)
        return NULL;
    if (done == -EAGAIN)
        Py_RETURN_NONE;
    return PyLong_FromLong(done);
}

static PyObject *pageset_read(PageSetObject *self, PyObject *args)
{
    long long start, length;
    if (!PyArg_ParseTuple(args, "LL", &start, &length) || !ready(self))
        return NULL;
    if (length < 0 || length > self->pages.npages * self->pages.page_size)
        return fail(-EINVAL, "read");
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)length);
    if (out == NULL)
        return NULL;
    long n = vc_pages_read(&self->pages, start, length, (uint8_t *)PyBytes_AsString(out));
    if (n != 0) {
        Py_DECREF(out);
        return n < 0 ? fail(n, "read") : Py_NewRef(Py_None);
    }
    return out;
}

static PyObject *get_released(PageSetObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->released);
}

static int set_released(PageSetObject *self, PyObject *value, void *closure)
{
    (void)closure;
    int truth = value == NULL ? -1 : PyObject_IsTrue(value);
    if (truth < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "PageSet.released cannot be deleted");
        return -1;
    }
    if (self->released && !truth) {
        PyErr_SetString(PyExc_ValueError, "PageSet: a released region stays released");
        return -1;
    }
    self->released = truth;
    return 0;
}

static PyMethodDef pageset_methods[] = {
    {"repin", (PyCFunction)pageset_repin, METH_VARARGS,
     "repin(first, npages): re-pin pages with the backend's lock held by the caller; "
     "the purged ones found, as a list of page numbers."},
    {"mark", (PyCFunction)pageset_mark, METH_VARARGS,
     "mark(first, npages): mark pages volatile as the backend's vrange does, with its lock "
     "held by the caller: the pages processed, or None when a drain is due (the backend's "
     "own call then)."},
    {"read", (PyCFunction)pageset_read, METH_VARARGS,
     "read(start, length): the bytes without re-pinning, or None if a page was purged."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef pageset_getset[] = {
    {"released", (getter)get_released, (setter)set_released,
     "True once the backend gave the region back (set by the backend, for good).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot pageset_slots[] = {
    {Py_tp_doc, "The pages of one kernel-backend region, for the cache's C store "
                "(see core/pages.h)."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, pageset_init},
    {Py_tp_dealloc, pageset_dealloc},
    {Py_tp_methods, pageset_methods},
    {Py_tp_getset, pageset_getset},
    {0, NULL},
};

static PyType_Spec pageset_spec = {
    "volcache._core.PageSet", sizeof(PageSetObject), 0, Py_TPFLAGS_DEFAULT, pageset_slots,
};

struct vc_pages *vc_pageset_enter(PyObject *obj)
{
    if (obj == NULL || PyType_GetSlot(Py_TYPE(obj), Py_tp_dealloc) != (void *)pageset_dealloc)
        return NULL;
    PageSetObject *self = (PageSetObject *)obj;
    if (self->nbufs != NBUFS || self->released)
        return NULL;
    /* Never waits: a lock held elsewhere (a reclaim in another thread) is
     * the Python way's, which waits for it. */
    PyObject *got = PyObject_CallMethodObjArgs(self->lock, s_acquire, Py_False, NULL);
    int mine = got == NULL ? -1 : PyObject_IsTrue(got);
    Py_XDECREF(got);
    if (mine <= 0) {
        PyErr_Clear(); /* the Python way takes the lock again and says what is wrong */
        return NULL;
    }
    if (self->released) { /* released while it was taken: not ours */
        vc_pageset_leave(obj);
        return NULL;
    }
    return &self->pages;
}

void vc_pageset_leave(PyObject *obj)
{
    PyObject *exc_type, *exc, *tb;
    PyErr_Fetch(&exc_type, &exc, &tb);
    PyObject *r = PyObject_CallMethodObjArgs(((PageSetObject *)obj)->lock, s_release, NULL);
    Py_XDECREF(r);
    if (r == NULL)
        PyErr_WriteUnraisable(obj); /* an RLock taken by this thread releases */
    PyErr_Restore(exc_type, exc, tb);
}

const struct vc_pages *vc_pageset_pages(PyObject *obj)
{
    if (obj == NULL || PyType_GetSlot(Py_TYPE(obj), Py_tp_dealloc) != (void *)pageset_dealloc)
        return NULL;
    PageSetObject *self = (PageSetObject *)obj;
    return self->nbufs == NBUFS && !self->released ? &self->pages : NULL;
}

/* A new run of the book, its pages just marked: registered, oldest last,
 * and remembered until the next drain; the book swept when its runs doubled. */
static int note_run(PageSetObject *self, int64_t run, int64_t first, long done)
{
    PyObject *id = PyLong_FromLongLong(run);
    PyObject *span = Py_BuildValue("(OLl)", self->ident, (long long)first, done);
    int bad = id == NULL || span == NULL || PyObject_SetItem(self->runs, id, span) < 0
              || PyList_Append(self->undrained, span) < 0;
    Py_XDECREF(id);
    Py_XDECREF(span);
    if (bad)
        return -1;
    Py_ssize_t nruns = PyObject_Length(self->runs);
    if (nruns < 0)
        return -1;
    if (nruns >= self->pages.counts[4]) {
        PyObject *r = PyObject_CallNoArgs(self->sweep);
        Py_XDECREF(r);
        return r == NULL ? -1 : 0;
    }
    return 0;
}

long vc_pageset_mark(PyObject *obj, int64_t first, int64_t npages)
{
    PageSetObject *self = (PageSetObject *)obj;
    struct vc_pages *p = &self->pages;
    if (p->mark == NULL || first < 0 || npages <= 0 || first > p->npages - npages)
        return -EAGAIN;
    /* A drain due (every so often, or after so many markings): the backend's
     * Python mark drains and then frees the undrained ones again. */
    struct timespec ts;
    Py_ssize_t nundrained = PyList_Size(self->undrained);
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0 || nundrained < 0
        || nundrained >= self->undrained_max
        || (double)ts.tv_sec + ts.tv_nsec * 1e-9 - *(double *)self->bufs[7].buf
               >= self->drain_every) {
        PyErr_Clear();
        return -EAGAIN;
    }
    p->calls[0]++; /* one vrange call */
    int64_t page = first, stop = first + npages;
    while (page < stop) {
        if (p->state[page] != VC_PINNED) { /* volatile already: it keeps its age */
            page++;
            continue;
        }
        int64_t end = page;
        while (end < stop && p->state[end] == VC_PINNED)
            end++;
        int err;
        int64_t run = p->counts[3];
        long done = vc_pages_mark(p, page, end - page, run, &err);
        if (done <= 0) { /* stopped here: the rest is the Python way's */
            if (page == first)
                p->calls[0]--; /* which counts its own call */
            return page - first;
        }
        p->counts[3] = run + 1;
        if (note_run(self, run, page, done) < 0)
            return -ECANCELED;
        page += done;
        if (self->released) /* the sweep ran Python code, which gave the region back */
            return page - first;
        if (page < end)
            return page - first;
    }
    return npages;
}

int vc_add_pageset_type(PyObject *module)
{
    if ((s_acquire == NULL && (s_acquire = PyUnicode_InternFromString("acquire")) == NULL)
        || (s_release == NULL && (s_release = PyUnicode_InternFromString("release")) == NULL))
        return -1;
    PyObject *type = PyType_FromModuleAndSpec(module, &pageset_spec, NULL);
    if (type == NULL || PyModule_AddObject(module, "PageSet", type) < 0) {
        Py_XDECREF(type);
        return -1;
    }
    return 0;
}
