/* volcache._core.Table: table.c's calls on a table laid out in a writable
 * buffer (volcache.native_records keeps the mapping and its columns).
 *
 * A Table holds the buffer's export, so the mapping cannot close under it;
 * release() gives it back (after vc_table_release). Each call returns what
 * table.c returns, -errno included: volcache.native_records turns those into
 * exceptions, as it did for the cffi calls before.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <string.h>

#include "pycore.h"
#include "table.h"

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    struct vc_table *t; /* NULL before __init__ and after release() */
} TableObject;

#define IDS_ROOM 64

/* Whether the buffer holds a table laid out by init or grow, all of it inside. */
static int laid_out(TableObject *self)
{
    struct vc_table *t = self->t;
    return t->magic == VC_TABLE_MAGIC && t->total > 0 && t->total <= self->view.len;
}

static int table_init(TableObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *mapping;
    static char *names[] = {"mapping", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O", names, &mapping))
        return -1;
    if (self->t != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Table.__init__ called twice");
        return -1;
    }
    if (PyObject_GetBuffer(mapping, &self->view, PyBUF_WRITABLE) < 0)
        return -1;
    if (self->view.len < (Py_ssize_t)sizeof(struct vc_table)
        || ((uintptr_t)self->view.buf & 7) != 0) {
        PyBuffer_Release(&self->view);
        PyErr_SetString(PyExc_ValueError, "Table: the buffer is too small or not aligned");
        return -1;
    }
    self->t = self->view.buf;
    return 0;
}

static void table_dealloc(TableObject *self)
{
    PyTypeObject *tp = Py_TYPE((PyObject *)self);
    if (self->t != NULL) {
        if (laid_out(self))
            vc_table_release(self->t);
        PyBuffer_Release(&self->view);
    }
    freefunc free_ = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    free_(self);
    Py_DECREF(tp);
}

static int args_of(TableObject *self, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want,
                   long long *out, const char *name)
{
    if (self->t == NULL) {
        PyErr_Format(PyExc_ValueError, "Table.%s: the table was released", name);
        return -1;
    }
    if (strcmp(name, "init") != 0 && strcmp(name, "grow") != 0 && !laid_out(self)) {
        PyErr_Format(PyExc_ValueError, "Table.%s: the buffer holds no table (init or grow "
                     "it first)", name);
        return -1;
    }
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "Table.%s() takes %zd arguments (%zd given)", name, want,
                     nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < want; i++) {
        out[i] = PyLong_AsLongLong(args[i]);
        if (out[i] == -1 && PyErr_Occurred())
            return -1;
    }
    return 0;
}

#define CALL(name, n, expr)                                                           \
    static PyObject *m_##name(TableObject *self, PyObject *const *args, Py_ssize_t nargs) \
    {                                                                                 \
        long long a[(n) > 0 ? (n) : 1];                                               \
        if (args_of(self, args, nargs, (n), a, #name) < 0)                            \
            return NULL;                                                              \
        return PyLong_FromLong(expr);                                                 \
    }

/* A hash is the low 32 bits: a larger int is a caller's mistake, refused. */
#define H(x) ((x) < 0 || (x) > UINT32_MAX ? (uint32_t)0 : (uint32_t)(x))

CALL(init, 3, a[0] > self->view.len ? -EINVAL : vc_table_init(self->t, a[0], a[1], (int)a[2]))
CALL(resident, 0, vc_table_resident(self->t))
CALL(new, 4, (a[0] < 0 || a[0] > UINT32_MAX || a[2] < 0 || a[2] > UINT32_MAX || a[3] < 0)
                 ? -EINVAL : vc_rec_new(self->t, (uint32_t)a[0], a[1], (uint32_t)a[2], (uint32_t)a[3]))
CALL(delete, 1, vc_rec_delete(self->t, a[0]))
CALL(index, 1, vc_rec_index(self->t, a[0]))
CALL(unindex, 1, vc_rec_unindex(self->t, a[0]))
CALL(head_of, 1, (a[0] < 0 || a[0] > UINT32_MAX) ? -EINVAL : vc_rec_head_of(self->t, H(a[0])))
CALL(append, 2, vc_rec_append(self->t, a[0], a[1]))
CALL(place, 2, vc_rec_place(self->t, a[0], a[1]))
CALL(touch, 2, vc_rec_touch(self->t, a[0], a[1]))
CALL(unlist, 1, vc_rec_unlist(self->t, a[0]))
CALL(victim, 0, vc_rec_victim(self->t))

static PyObject *m_grow(TableObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    long long a[2];
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "Table.grow(total, max_records, old) takes 3 arguments");
        return NULL;
    }
    if (args_of(self, args, 2, 2, a, "grow") < 0)
        return NULL;
    if (!PyObject_TypeCheck(args[2], Py_TYPE((PyObject *)self))
        || ((TableObject *)args[2])->t == NULL) {
        PyErr_SetString(PyExc_TypeError, "Table.grow: old must be a Table not released");
        return NULL;
    }
    TableObject *old = (TableObject *)args[2];
    if (a[0] > self->view.len || !laid_out(old))
        return PyLong_FromLong(-EINVAL);
    return PyLong_FromLong(vc_table_grow(self->t, a[0], a[1], old->t));
}

static PyObject *m_release(TableObject *self, PyObject *unused)
{
    (void)unused;
    if (self->t != NULL) {
        if (laid_out(self))
            vc_table_release(self->t);
        self->t = NULL;
        PyBuffer_Release(&self->view);
    }
    Py_RETURN_NONE;
}

static PyObject *m_oldest_use(TableObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    long long a[1];
    if (args_of(self, args, nargs, 0, a, "oldest_use") < 0)
        return NULL;
    int64_t used = 0;
    long rid = vc_rec_oldest_use(self->t, &used);
    return Py_BuildValue("(lL)", rid, (long long)used);
}

static PyObject *ids(long (*fill)(TableObject *, long long, int32_t *, size_t), TableObject *self,
                     long long arg)
{
    int32_t room[IDS_ROOM], *out = room;
    long n = fill(self, arg, out, IDS_ROOM);
    if (n > IDS_ROOM) { /* a room of their own */
        out = PyMem_Malloc((size_t)n * sizeof *out);
        if (out == NULL)
            return PyErr_NoMemory();
        n = fill(self, arg, out, (size_t)n);
    }
    PyObject *list = n < 0 ? PyLong_FromLong(n) : PyList_New(n);
    for (long i = 0; list != NULL && n > 0 && i < n; i++) {
        PyObject *id = PyLong_FromLong(out[i]);
        if (id == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SetItem(list, i, id);
    }
    if (out != room)
        PyMem_Free(out);
    return list;
}

static long fill_candidates(TableObject *self, long long h, int32_t *out, size_t cap)
{
    return h < 0 || h > UINT32_MAX ? -EINVAL : vc_rec_candidates(self->t, (uint32_t)h, out, cap);
}

static long fill_listed(TableObject *self, long long unused, int32_t *out, size_t cap)
{
    (void)unused;
    return vc_rec_listed(self->t, out, cap);
}

static PyObject *m_candidates(TableObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    long long a[1];
    if (args_of(self, args, nargs, 1, a, "candidates") < 0)
        return NULL;
    return ids(fill_candidates, self, a[0]);
}

static PyObject *m_listed(TableObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    long long a[1];
    if (args_of(self, args, nargs, 0, a, "listed") < 0)
        return NULL;
    return ids(fill_listed, self, 0);
}

static PyObject *table_bytes(PyObject *module, PyObject *arg)
{
    (void)module;
    long long max_records = PyLong_AsLongLong(arg);
    if (max_records == -1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(vc_table_bytes(max_records));
}

#define M(name, doc) {#name, (PyCFunction)(void (*)(void))m_##name, METH_FASTCALL, doc}

static PyMethodDef table_methods[] = {
    M(init, "init(total, max_records, exact): lay a new, empty table out."),
    M(grow, "grow(total, max_records, old): lay a table out holding what old holds."),
    M(resident, "Bytes of the pages the table's parts in use touch."),
    M(new, "new(h, loc, length, flags): a new record's id."),
    M(delete, "delete(rid)"),
    M(index, "index(rid)"),
    M(unindex, "unindex(rid)"),
    M(head_of, "head_of(h): the first id of h's bucket, or -ENOENT."),
    M(candidates, "candidates(h): ids of indexed records whose hash is h (a list), or -errno."),
    M(append, "append(rid, stamp)"),
    M(place, "place(rid, used)"),
    M(touch, "touch(rid, stamp)"),
    M(unlist, "unlist(rid)"),
    M(oldest_use, "(rid or -ENOENT, its stamp)"),
    M(victim, "The listed record to evict first, or -ENOENT."),
    M(listed, "Listed ids (a list), or -errno."),
    {"release", (PyCFunction)m_release, METH_NOARGS,
     "Before the mapping goes: vc_table_release, and the buffer is given back."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot table_slots[] = {
    {Py_tp_doc, "table.c's calls on the table in a writable buffer (volcache.native_records)."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, table_init},
    {Py_tp_dealloc, table_dealloc},
    {Py_tp_methods, table_methods},
    {0, NULL},
};

static PyType_Spec table_spec = {
    "volcache._core.Table", sizeof(TableObject), 0, Py_TPFLAGS_DEFAULT, table_slots,
};

static PyMethodDef table_functions[] = {
    {"table_bytes", table_bytes, METH_O, "Bytes of the mapping a table of max_records needs."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject *TableType; /* made once, as hot.c's types */

struct vc_table *vc_table_of(PyObject *table)
{
    if (!PyObject_TypeCheck(table, TableType)) {
        PyErr_SetString(PyExc_TypeError, "a volcache._core.Table was expected");
        return NULL;
    }
    if (((TableObject *)table)->t == NULL) {
        PyErr_SetString(PyExc_ValueError, "the Table was released");
        return NULL;
    }
    return ((TableObject *)table)->t;
}

int vc_add_table_type(PyObject *module)
{
    if (TableType == NULL) {
        TableType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &table_spec, NULL);
        if (TableType == NULL)
            return -1;
    }
    if (PyModule_AddObjectRef(module, "Table", (PyObject *)TableType) < 0)
        return -1;
    return PyModule_AddFunctions(module, table_functions);
}
