/* volcache._core's hot hit: the lock-free hot hit of a VolatileCache, in C.
 *
 * A hot hit is a dict lookup, a tick of the cache's logical clock written
 * into the entry, and, with a finite maxsize or a TTL, a call that keeps the
 * order. In Python that is one frame and a dozen attribute loads (240 ns
 * where cachetools' unbounded Cache takes 78); here it is a slot call.
 * Everything that is not a hot hit goes back to Python: the cache's
 * _get_slow (a lookup under its lock), _uncount_hit, _maintain_now.
 *
 * The Python reference is volcache.hotpath.PyHotBase: same fields, same
 * answers (tests/test_hotpath.py runs both). The GIL is held throughout:
 * the tick is atomic as itertools.count's __next__ is, and a racing
 * demotion or delete in another thread cannot interleave with the reads of
 * one entry.
 *
 * Invariants:
 *   Entry.used, Entry.mark: ticks of the clock (0: none yet).
 *   HotBase.clock: NULL until the cache's __init__ sets it, then a Clock,
 *     shared with the stamps the entries take under the lock; a tick is
 *     atomic because the GIL is held.
 *   HotBase.objects: NULL until the cache's __init__ sets it, then a dict
 *     (key -> Entry); a missing dict sends every lookup to Python.
 *   HotBase.touch: NULL or None, or a callable taking (key, entry).
 *   The sentinels (COLD, MISSING, GETITEM), the Expired exception and the
 *     types are made once, by the first import of the module, and never
 *     replaced: a second import (volcache dropped from sys.modules and
 *     imported again) shares them, so that caches of both keep working.
 *     Other interpreters than the main one get the Python versions
 *     (module.c refuses to load there).
 * Functions return a new reference or NULL with an exception set (the
 * CPython convention; the count-or-errno rule is for the store's core).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "structmember.h"
#include <limits.h>

#include "pycore.h"

/* The shapes of the objects: the fields C reads, then those only Python reads. */
typedef struct {
    PyObject_HEAD
    PyObject *value; /* the decoded value, or COLD when the entry is not hot */
    long long used;  /* the tick of its last use */
    long long mark;  /* used, when maintenance last looked */
    PyObject *key, *rid, *pins, *hot_since, *own, *decode, *detached, *kept, *cost;
} EntryObject;


static PyObject *COLD, *MISSING, *GETITEM, *EXPIRED; /* made once: see above */
static PyObject *s_get_slow, *s_uncount_hit, *s_maintain_now, *s_setitem, *s_delitem;
static PyTypeObject *EntryType, *ClockType, *HotType, *MemoType;

#define ENTRY_OBJECTS(X) X(value) X(key) X(rid) X(pins) X(hot_since) X(own) X(decode) \
                         X(detached) X(kept) X(cost)

static int entry_traverse(EntryObject *self, visitproc visit, void *arg)
{
#define VISIT(f) Py_VISIT(self->f);
    ENTRY_OBJECTS(VISIT)
#undef VISIT
    Py_VISIT(Py_TYPE((PyObject *)self));
    return 0;
}

static int entry_clear(EntryObject *self)
{
#define CLEAR(f) Py_CLEAR(self->f);
    ENTRY_OBJECTS(CLEAR)
#undef CLEAR
    return 0;
}

static void entry_dealloc(EntryObject *self)
{
    PyTypeObject *tp = Py_TYPE((PyObject *)self);
    PyObject_GC_UnTrack(self);
    entry_clear(self);
    PyObject_GC_Del(self);
    Py_DECREF(tp);
}

static PyMemberDef entry_members[] = {
#define MEMBER(f) {#f, T_OBJECT_EX, offsetof(EntryObject, f), 0, NULL},
    ENTRY_OBJECTS(MEMBER)
#undef MEMBER
    {"used", T_LONGLONG, offsetof(EntryObject, used), 0, NULL},
    {"mark", T_LONGLONG, offsetof(EntryObject, mark), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot entry_slots[] = {
    {Py_tp_doc, "An entry's fields, read by the C hot hit (volcache.entries.Entry)."},
    {Py_tp_traverse, entry_traverse},
    {Py_tp_clear, entry_clear},
    {Py_tp_dealloc, entry_dealloc},
    {Py_tp_members, entry_members},
    {0, NULL},
};

static PyType_Spec entry_spec = {
    "volcache._core.EntryBase", sizeof(EntryObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, entry_slots,
};

static PyObject *clock_tick(ClockObject *self, PyObject *unused)
{
    (void)unused;
    if (self->taken == LLONG_MAX) {
        PyErr_SetString(PyExc_OverflowError, "the clock ran out of ticks");
        return NULL;
    }
    return PyLong_FromLongLong(++self->taken);
}

static PyObject *clock_stamp(ClockObject *self, PyObject *unused)
{
    PyObject *tick = clock_tick(self, unused);
    if (tick != NULL)
        self->locked++;
    return tick;
}

static void clock_dealloc(ClockObject *self)
{
    PyTypeObject *tp = Py_TYPE((PyObject *)self);
    freefunc free = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    free(self);
    Py_DECREF(tp);
}

static PyMethodDef clock_methods[] = {
    {"tick", (PyCFunction)clock_tick, METH_NOARGS, "The next tick: 1, 2, 3, ..."},
    {"stamp", (PyCFunction)clock_stamp, METH_NOARGS,
     "The next tick, taken with the cache's lock held (counted in locked)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef clock_members[] = {
    {"taken", T_LONGLONG, offsetof(ClockObject, taken), READONLY, "Ticks taken so far."},
    {"locked", T_LONGLONG, offsetof(ClockObject, locked), 0,
     "Ticks taken with the lock held (stamps, and lock-free hits that found no value)."},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot clock_slots[] = {
    {Py_tp_doc, "A cache's logical clock of uses (volcache.hotpath.PyClock in C)."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, clock_dealloc},
    {Py_tp_methods, clock_methods},
    {Py_tp_members, clock_members},
    {0, NULL},
};

static PyType_Spec clock_spec = {
    "volcache._core.Clock", sizeof(ClockObject), 0, Py_TPFLAGS_DEFAULT, clock_slots,
};

static int hot_traverse(HotObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->objects);
    Py_VISIT(self->touch);
    Py_VISIT(self->clock);
    Py_VISIT(self->quick);
    Py_VISIT(Py_TYPE((PyObject *)self));
    return 0;
}

static int hot_clear(HotObject *self)
{
    Py_CLEAR(self->objects);
    Py_CLEAR(self->touch);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->quick);
    return 0;
}

static void hot_dealloc(HotObject *self)
{
    PyTypeObject *tp = Py_TYPE((PyObject *)self);
    PyObject_GC_UnTrack(self);
    hot_clear(self);
    PyObject_GC_Del(self);
    Py_DECREF(tp);
}

/* The value of a hot entry for key, as a new reference; MISSING (a new
 * reference) if the key has no hot entry here or its touch says it expired;
 * NULL with an exception set if the touch or the maintenance raised. */
static PyObject *hot_value(HotObject *self, PyObject *key)
{
    PyObject *objects = self->objects;
    if (objects == NULL)
        return Py_NewRef(MISSING);
    /* Held: the key's __eq__ may run any Python code, replacing _objects too. */
    Py_INCREF(objects);
    PyObject *found = PyDict_GetItemWithError(objects, key); /* borrowed from objects */
    if (found == NULL) {
        Py_DECREF(objects);
        if (PyErr_Occurred())
            return NULL; /* an unhashable key, or an __eq__ that raised */
        return Py_NewRef(MISSING);
    }
    Py_INCREF(found);
    Py_DECREF(objects);
    PyObject *clock = self->clock; /* read after the lookup, which may have changed it */
    if (!PyObject_TypeCheck(found, EntryType) || clock == NULL) {
        Py_DECREF(found);
        return Py_NewRef(MISSING); /* not ours, or no clock: let Python say what it is */
    }
    EntryObject *entry = (EntryObject *)found;
    PyObject *value = entry->value;
    if (value == NULL || value == COLD) {
        Py_DECREF(found);
        return Py_NewRef(MISSING);
    }
    /* Held across the calls below, which may run Python code that demotes it. */
    Py_INCREF(value);
    ClockObject *ticks = (ClockObject *)clock;
    if (ticks->taken < LLONG_MAX)
        ticks->taken++;
    long long used = entry->used = ticks->taken; /* also counts the hit */
    PyObject *touch = self->touch;
    if (touch != NULL && touch != Py_None) {
        Py_INCREF(touch);
        PyObject *res = PyObject_CallFunctionObjArgs(touch, key, found, NULL);
        Py_DECREF(touch);
        if (res != NULL) {
            Py_DECREF(res);
        } else if (PyErr_ExceptionMatches(PyExc_KeyError)) {
            PyErr_Clear(); /* deleted meanwhile: the value read is still the one stored */
        } else if (PyErr_ExceptionMatches(EXPIRED)) {
            PyErr_Clear();
            Py_DECREF(found);
            Py_DECREF(value);
            PyObject *r = PyObject_CallMethodObjArgs((PyObject *)self, s_uncount_hit, NULL);
            if (r == NULL)
                return NULL;
            Py_DECREF(r);
            return Py_NewRef(MISSING);
        } else {
            Py_DECREF(found);
            Py_DECREF(value);
            return NULL;
        }
    }
    Py_DECREF(found);
    if (used >= self->maintain_at) {
        PyObject *r = PyObject_CallMethodObjArgs((PyObject *)self, s_maintain_now, NULL);
        if (r == NULL) {
            Py_DECREF(value);
            return NULL;
        }
        Py_DECREF(r);
    }
    return value;
}

static PyObject *hot_subscript(HotObject *self, PyObject *key)
{
    PyObject *value = hot_value(self, key);
    if (value != MISSING || value == NULL)
        return value;
    Py_DECREF(value);
    if (self->quick != NULL && self->quick != Py_None) { /* an idle entry read in C */
        PyObject *quick = Py_NewRef(self->quick);
        value = vc_quick_idle((PyObject *)self, quick, key);
        Py_DECREF(quick);
        if (value != MISSING)
            return value;
        Py_DECREF(value);
    }
    return PyObject_CallMethodObjArgs((PyObject *)self, s_get_slow, key, GETITEM, NULL);
}

/* cache[key] = value: a new key in one call (quick.c) where the cache's plan
 * allows, else its _setitem; del cache[key]: its _delitem. */
static int hot_ass_subscript(HotObject *self, PyObject *key, PyObject *value)
{
    PyObject *r;
    if (value == NULL) {
        r = PyObject_CallMethodObjArgs((PyObject *)self, s_delitem, key, NULL);
    } else {
        if (self->quick != NULL && self->quick != Py_None) {
            PyObject *quick = Py_NewRef(self->quick);
            int done = vc_quick_set((PyObject *)self, quick, key, value);
            Py_DECREF(quick);
            if (done <= 0)
                return done;
        }
        r = PyObject_CallMethodObjArgs((PyObject *)self, s_setitem, key, value, NULL);
    }
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *hot_value_method(HotObject *self, PyObject *key)
{
    return hot_value(self, key);
}

static PyMethodDef hot_methods[] = {
    {"_hot_value", (PyCFunction)hot_value_method, METH_O,
     "A hot entry's value without the lock (a tick of the clock counts the hit), "
     "else the MISSING sentinel."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef hot_members[] = {
    {"_touch", T_OBJECT, offsetof(HotObject, touch), 0, NULL},
    {"_quick", T_OBJECT, offsetof(HotObject, quick), 0, NULL},
    {"_stores", T_LONGLONG, offsetof(HotObject, stores), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyObject *hot_get_clock(HotObject *self, void *unused)
{
    (void)unused;
    return Py_NewRef(self->clock ? self->clock : Py_None);
}

static int hot_set_clock(HotObject *self, PyObject *value, void *unused)
{
    (void)unused;
    if (value != NULL && !PyObject_TypeCheck(value, ClockType)) {
        PyErr_SetString(PyExc_TypeError, "_uses must be a volcache._core.Clock");
        return -1;
    }
    PyObject *old = self->clock;
    self->clock = value ? Py_NewRef(value) : NULL;
    Py_XDECREF(old);
    return 0;
}

static PyObject *hot_get_objects(HotObject *self, void *unused)
{
    (void)unused;
    return Py_NewRef(self->objects ? self->objects : Py_None);
}

static int hot_set_objects(HotObject *self, PyObject *value, void *unused)
{
    (void)unused;
    if (value == NULL || !PyDict_CheckExact(value)) {
        PyErr_SetString(PyExc_TypeError, "_objects must be a dict");
        return -1;
    }
    PyObject *old = self->objects;
    self->objects = Py_NewRef(value);
    Py_XDECREF(old);
    return 0;
}

static PyObject *hot_get_maintain_at(HotObject *self, void *unused)
{
    (void)unused;
    return PyLong_FromLongLong(self->maintain_at);
}

static int hot_set_maintain_at(HotObject *self, PyObject *value, void *unused)
{
    (void)unused;
    if (value == NULL || !PyLong_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "_maintain_at must be an int (a tick of the clock)");
        return -1;
    }
    int overflow = 0;
    long long at = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (at == -1 && PyErr_Occurred())
        return -1;
    /* A threshold: past the clock's range, never reached; below it, reached already. */
    self->maintain_at = overflow > 0 ? LLONG_MAX : overflow < 0 ? LLONG_MIN : at;
    return 0;
}

static PyGetSetDef hot_getset[] = {
    {"_objects", (getter)hot_get_objects, (setter)hot_set_objects,
     "The hot, pinned and own entries by key (a dict).", NULL},
    {"_maintain_at", (getter)hot_get_maintain_at, (setter)hot_set_maintain_at,
     "The tick from which a hot hit runs the maintenance.", NULL},
    {"_uses", (getter)hot_get_clock, (setter)hot_set_clock,
     "The cache's logical clock: each next() is one tick.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot hot_slots[] = {
    {Py_tp_getset, hot_getset},
    {Py_tp_doc, "The lock-free hot hit of a VolatileCache (volcache.hotpath.PyHotBase in C)."},
    {Py_tp_traverse, hot_traverse},
    {Py_tp_clear, hot_clear},
    {Py_tp_dealloc, hot_dealloc},
    {Py_tp_methods, hot_methods},
    {Py_tp_members, hot_members},
    {Py_mp_subscript, hot_subscript},
    {Py_mp_ass_subscript, hot_ass_subscript},
    {0, NULL},
};

static PyType_Spec hot_spec = {
    "volcache._core.HotBase", sizeof(HotObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, hot_slots,
};

/* -- a memoized function's hit ------------------------------------------------

 * MemoHit(cache).hit(args): a decorated call's hit, given its positional
 * arguments' tuple: if each argument is of an exact type whose hash is C's
 * (volcache.keys.C_HASHED: the tuple is then its own key, as cachetools'
 * hashkey makes it), the cache's hot hit for that key, counted here; else,
 * or if the key is not hot, MISSING (the decorator's Python takes it from
 * there). volcache.hotpath.PyMemoHit is the reference.
 * Invariants: cache is a HotBase instance, held; hits only grows.
 */

static int plain_key(PyObject *args)
{
    Py_ssize_t n = PyTuple_Size(args);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyTypeObject *type = Py_TYPE(PyTuple_GetItem(args, i));
        if (type != &PyLong_Type && type != &PyUnicode_Type && type != &PyBytes_Type
            && type != &PyFloat_Type && type != &PyBool_Type && type != &PyComplex_Type
            && type != Py_TYPE(Py_None) && type != &PyType_Type && type != &PyFrozenSet_Type)
            return 0;
    }
    return 1;
}

static PyObject *memo_hit(MemoObject *self, PyObject *args)
{
    if (!PyTuple_Check(args) || !plain_key(args))
        return Py_NewRef(MISSING);
    PyObject *value = hot_value((HotObject *)self->cache, args);
    if (value != NULL && value != MISSING)
        self->hits++;
    return value;
}

#define MEMO_OBJECTS(X) X(cache) X(func) X(memoized) X(name) X(label) X(fallback) X(cache_id)

static int memo_init(MemoObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *o[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
    static char *names[] = {"cache", "func", "memoized", "name", "label", "fallback", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$OOOOO", names, &o[0], &o[1], &o[2],
                                     &o[3], &o[4], &o[5]))
        return -1;
    if (!PyObject_TypeCheck(o[0], HotType)) {
        PyErr_SetString(PyExc_TypeError, "MemoHit: the cache must be a VolatileCache");
        return -1;
    }
    if (o[1] == Py_None)
        o[1] = NULL;
    if (o[1] != NULL && (o[2] == NULL || o[3] == NULL || o[4] == NULL)) {
        PyErr_SetString(PyExc_TypeError, "MemoHit: a func needs its memoized, name and label");
        return -1;
    }
    PyObject *cache_id = PyLong_FromVoidPtr(o[0]); /* id(cache): the flights' keys hold it */
    if (cache_id == NULL)
        return -1;
    PyObject **fields[] = {&self->cache, &self->func, &self->memoized, &self->name,
                           &self->label, &self->fallback};
    for (int i = 0; i < 6; i++)
        VC_SETREF(*fields[i], o[i] == NULL || (i > 0 && o[i] == Py_None) ? NULL : Py_NewRef(o[i]));
    VC_SETREF(self->cache_id, cache_id);
    return 0;
}

/* call(args): the hot hit, or a miss made in C (memo.c), else fallback(args). */
static PyObject *memo_call(MemoObject *self, PyObject *args)
{
    if (self->cache == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "MemoHit.__init__ was not called");
        return NULL;
    }
    if (PyTuple_Check(args) && plain_key(args)) {
        PyObject *value = hot_value((HotObject *)self->cache, args);
        if (value == NULL)
            return NULL;
        if (value != MISSING) {
            self->hits++;
            return value;
        }
        Py_DECREF(value);
        value = vc_memo_miss(self, args);
        if (value != MISSING)
            return value;
        Py_DECREF(value);
    }
    if (self->fallback == NULL)
        return Py_NewRef(MISSING);
    return PyObject_CallFunctionObjArgs(self->fallback, args, NULL);
}


static PyObject *memo_hit_method(MemoObject *self, PyObject *args)
{
    if (self->cache == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "MemoHit.__init__ was not called");
        return NULL;
    }
    return memo_hit(self, args);
}

static int memo_traverse(MemoObject *self, visitproc visit, void *arg)
{
#define VISIT(f) Py_VISIT(self->f);
    MEMO_OBJECTS(VISIT)
#undef VISIT
    Py_VISIT(Py_TYPE((PyObject *)self));
    return 0;
}

static int memo_clear(MemoObject *self)
{
#define CLEAR(f) Py_CLEAR(self->f);
    MEMO_OBJECTS(CLEAR)
#undef CLEAR
    return 0;
}

static void memo_dealloc(MemoObject *self)
{
    PyTypeObject *tp = Py_TYPE((PyObject *)self);
    PyObject_GC_UnTrack(self);
    memo_clear(self);
    PyObject_GC_Del(self);
    Py_DECREF(tp);
}

static PyMethodDef memo_methods[] = {
    {"hit", (PyCFunction)memo_hit_method, METH_O,
     "hit(args): the hot value for the call with these positional arguments, counted; "
     "else MISSING."},
    {"call", (PyCFunction)memo_call, METH_O,
     "call(args): the call's result: its hot hit, or its miss computed and stored here "
     "where it can be, else fallback(args)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef memo_members[] = {
    {"hits", T_LONGLONG, offsetof(MemoObject, hits), READONLY, "Hits counted here."},
    {"misses", T_LONGLONG, offsetof(MemoObject, misses), READONLY, "Misses made here."},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot memo_slots[] = {
    {Py_tp_doc, "A memoized function's hot hit (volcache.hotpath.PyMemoHit in C)."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, memo_init},
    {Py_tp_traverse, memo_traverse},
    {Py_tp_clear, memo_clear},
    {Py_tp_dealloc, memo_dealloc},
    {Py_tp_methods, memo_methods},
    {Py_tp_members, memo_members},
    {0, NULL},
};

static PyType_Spec memo_spec = {
    "volcache._core.MemoHit", sizeof(MemoObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, memo_slots,
};

/* Made once, by the first import: see the invariants above. */
static int make_once(PyObject *module)
{
    if (HotType != NULL)
        return 0;
    if ((s_get_slow = PyUnicode_InternFromString("_get_slow")) == NULL
        || (s_uncount_hit = PyUnicode_InternFromString("_uncount_hit")) == NULL
        || (s_maintain_now = PyUnicode_InternFromString("_maintain_now")) == NULL
        || (s_setitem = PyUnicode_InternFromString("_setitem")) == NULL
        || (s_delitem = PyUnicode_InternFromString("_delitem")) == NULL)
        return -1;
    PyObject *object_type = (PyObject *)&PyBaseObject_Type;
    if ((COLD = PyObject_CallNoArgs(object_type)) == NULL
        || (MISSING = PyObject_CallNoArgs(object_type)) == NULL
        || (GETITEM = PyObject_CallNoArgs(object_type)) == NULL)
        return -1;
    EXPIRED = PyErr_NewExceptionWithDoc(
        "volcache._core.Expired",
        "A hot hit's touch found its entry's time up: the locked way removes it.", NULL, NULL);
    if (EXPIRED == NULL)
        return -1;
    EntryType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &entry_spec, NULL);
    if (EntryType == NULL)
        return -1;
    ClockType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &clock_spec, NULL);
    if (ClockType == NULL)
        return -1;
    HotType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &hot_spec, NULL);
    if (HotType == NULL)
        return -1;
    MemoType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &memo_spec, NULL);
    return MemoType == NULL ? -1 : 0;
}

int vc_add_hot_types(PyObject *module)
{
    if (make_once(module) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "EntryBase", (PyObject *)EntryType) < 0
        || PyModule_AddObjectRef(module, "Clock", (PyObject *)ClockType) < 0
        || PyModule_AddObjectRef(module, "HotBase", (PyObject *)HotType) < 0
        || PyModule_AddObjectRef(module, "MemoHit", (PyObject *)MemoType) < 0
        || PyModule_AddObjectRef(module, "COLD", COLD) < 0
        || PyModule_AddObjectRef(module, "MISSING", MISSING) < 0
        || PyModule_AddObjectRef(module, "GETITEM", GETITEM) < 0
        || PyModule_AddObjectRef(module, "Expired", EXPIRED) < 0)
        return -1;
    return 0;
}
