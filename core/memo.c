/* A memoized function's miss in one call, and the flights that make it single.
 *
 * MemoHit.call(args) (hot.c) answers a hot hit; a miss of a key that has no
 * entry and no record of its hash (quick.c's vc_quick_absent), in a cache
 * whose stores are made in C, is made here: the flight registered in the
 * decorator's SingleFlight (volcache/flight.py), the function called, its
 * result stored in one call (quick.c), the flight ended. Anything else goes
 * back to the decorator's Python (MISSING): a key that may be stored, a
 * flight of the key running already (Python waits for it), a lock held.
 * The Python way (Memoized._call) is the reference; tests/test_memo.py holds
 * the two side by side.
 *
 * Flight is flight.py's _Flight in C: the same fields, which the Python
 * SingleFlight reads and writes; a flight made here gets its label (the
 * call as an error names it) when one is asked for.
 *
 * Invariants of a MemoHit with a miss (func not NULL): memoized is its
 * Memoized, whose _flight (read at each miss: a fork replaces it) holds the
 * flights (_flights, added to and removed from with its _lock held) and whose
 * _stores counts the results stored; label is the class of an error's label,
 * made as label(name, key).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "structmember.h"

#include "pycore.h"

typedef struct {
    PyObject_HEAD
    PyObject *done, *error, *value; /* None until set (done: an Event, made by a waiter) */
    PyObject *key;                  /* the label, or NULL until asked for (then made) */
    PyObject *label, *name, *raw;   /* label(name, raw) makes key */
    unsigned long owner;            /* the thread computing it */
    char finished;
} FlightObject;

#define FLIGHT_OBJECTS(X) X(done) X(error) X(value) X(key) X(label) X(name) X(raw)

static PyObject *s_stores, *s_misses, *s_setitem, *s_set, *s_acquire, *s_release, *s_flight,
    *s_lock, *s_flights;

static int flight_traverse(FlightObject *self, visitproc visit, void *arg)
{
#define VISIT(f) Py_VISIT(self->f);
    FLIGHT_OBJECTS(VISIT)
#undef VISIT
    Py_VISIT(Py_TYPE((PyObject *)self));
    return 0;
}

static int flight_clear(FlightObject *self)
{
#define CLEAR(f) Py_CLEAR(self->f);
    FLIGHT_OBJECTS(CLEAR)
#undef CLEAR
    return 0;
}

static void flight_dealloc(FlightObject *self)
{
    PyTypeObject *tp = Py_TYPE((PyObject *)self);
    PyObject_GC_UnTrack(self);
    flight_clear(self);
    PyObject_GC_Del(self);
    Py_DECREF(tp);
}

static PyObject *flight_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    (void)args, (void)kwargs;
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    FlightObject *self = (FlightObject *)alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->done = Py_NewRef(Py_None);
    self->error = Py_NewRef(Py_None);
    self->value = Py_NewRef(Py_None);
    self->owner = PyThread_get_thread_ident();
    return (PyObject *)self;
}

static int flight_init(FlightObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *key;
    static char *names[] = {"key", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O", names, &key))
        return -1;
    PyObject *old = self->key;
    self->key = Py_NewRef(key);
    Py_XDECREF(old);
    self->owner = PyThread_get_thread_ident();
    return 0;
}

static PyObject *flight_get_key(FlightObject *self, void *unused)
{
    (void)unused;
    if (self->key == NULL) {
        if (self->label == NULL)
            Py_RETURN_NONE;
        self->key = PyObject_CallFunctionObjArgs(self->label, self->name, self->raw, NULL);
        if (self->key == NULL)
            return NULL;
    }
    return Py_NewRef(self->key);
}

static int flight_set_key(FlightObject *self, PyObject *value, void *unused)
{
    (void)unused;
    PyObject *old = self->key;
    self->key = value ? Py_NewRef(value) : NULL;
    Py_XDECREF(old);
    return 0;
}

static PyMemberDef flight_members[] = {
    {"done", T_OBJECT, offsetof(FlightObject, done), 0, "A waiter's Event, or None."},
    {"error", T_OBJECT, offsetof(FlightObject, error), 0, "What the computation raised."},
    {"value", T_OBJECT, offsetof(FlightObject, value), 0, "What it returned."},
    {"owner", T_ULONG, offsetof(FlightObject, owner), 0, "The thread computing it."},
    {"finished", T_BOOL, offsetof(FlightObject, finished), 0, "Whether it ended."},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef flight_getset[] = {
    {"key", (getter)flight_get_key, (setter)flight_set_key, "What it computes, for errors.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot flight_slots[] = {
    {Py_tp_doc, "A computation others may wait for (volcache.flight's _Flight in C)."},
    {Py_tp_new, flight_new},
    {Py_tp_init, flight_init},
    {Py_tp_traverse, flight_traverse},
    {Py_tp_clear, flight_clear},
    {Py_tp_dealloc, flight_dealloc},
    {Py_tp_members, flight_members},
    {Py_tp_getset, flight_getset},
    {0, NULL},
};

static PyType_Spec flight_spec = {
    "volcache._core.Flight", sizeof(FlightObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, flight_slots,
};

static PyTypeObject *FlightType;

/* The flight leaves the decorator's flights; a waiter's Event is set. */
static int end_flight(PyObject *lock, PyObject *flights, PyObject *fkey, FlightObject *flight)
{
    flight->finished = 1; /* before anyone wakes: no longer a link in a cycle */
    PyObject *r = PyObject_CallMethodObjArgs(lock, s_acquire, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    int bad = PyDict_DelItem(flights, fkey);
    PyObject *done = Py_NewRef(flight->done);
    r = PyObject_CallMethodObjArgs(lock, s_release, NULL);
    bad = bad < 0 || r == NULL;
    Py_XDECREF(r);
    if (!bad && done != Py_None) {
        r = PyObject_CallMethodObjArgs(done, s_set, NULL);
        bad = r == NULL;
        Py_XDECREF(r);
    }
    Py_DECREF(done);
    return bad ? -1 : 0;
}

/* The result stored as the decorator's _store stores it: 1 stored, 0 not
 * (too large for maxsize: returned, not cached), -1 an exception set. */
static int store_result(MemoObject *m, PyObject *quick, PyObject *args, PyObject *value,
                        long long stores)
{
    int done = vc_quick_store(m->cache, quick, args, value, stores);
    if (done == 1) {
        PyObject *r = PyObject_CallMethodObjArgs(m->cache, s_setitem, args, value, NULL);
        done = r == NULL ? -1 : 0;
        Py_XDECREF(r);
    }
    if (done < 0) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    return vc_add_to(m->memoized, s_stores, 1) < 0 ? -1 : 1;
}

PyObject *vc_memo_miss(MemoObject *m, PyObject *args)
{
    HotObject *cache = (HotObject *)m->cache;
    if (m->func == NULL || cache->quick == NULL || cache->quick == Py_None || FlightType == NULL)
        return Py_NewRef(vc_missing());
    PyObject *quick = Py_NewRef(cache->quick);
    PyObject *result = NULL, *fkey = NULL, *single = NULL, *lock = NULL, *flights = NULL;
    FlightObject *flight = NULL;
    long long before;
    long long stores_seen = cache->stores; /* read before the look: see vc_quick_store */
    int absent = vc_quick_absent(m->cache, quick, args);
    if (absent == 0) { /* held: an idle entry is read here, else the Python way */
        result = vc_quick_idle(m->cache, quick, args);
        if (result != NULL && result != vc_missing())
            m->hits++;
        goto out;
    }
    if (absent < 0)
        goto out;
    PyObject *stores = PyObject_GetAttr(m->memoized, s_stores);
    if (stores == NULL)
        goto out;
    before = PyLong_AsLongLong(stores);
    Py_DECREF(stores);
    if (before == -1 && PyErr_Occurred())
        goto out;
    if ((fkey = PyTuple_Pack(2, m->cache_id, args)) == NULL)
        goto out;
    /* The decorator's SingleFlight as it is now: a fork gives the child a new one. */
    single = PyObject_GetAttr(m->memoized, s_flight);
    lock = single ? PyObject_GetAttr(single, s_lock) : NULL;
    flights = lock ? PyObject_GetAttr(single, s_flights) : NULL;
    if (flights == NULL)
        goto out;
    if (!PyDict_CheckExact(flights)) {
        PyErr_SetString(PyExc_TypeError, "a SingleFlight's _flights must be a dict");
        goto out;
    }
    PyObject *got = PyObject_CallMethodObjArgs(lock, s_acquire, Py_False, NULL);
    if (got == NULL)
        goto out;
    int mine = got == Py_True;
    Py_DECREF(got);
    if (!mine) {
        result = Py_NewRef(vc_missing()); /* another thread is at the flights: Python waits */
        goto out;
    }
    int running = PyDict_Contains(flights, fkey);
    if (running == 0) {
        flight = (FlightObject *)flight_new(FlightType, NULL, NULL);
        if (flight == NULL || PyDict_SetItem(flights, fkey, (PyObject *)flight) < 0)
            running = -1;
        else {
            flight->label = Py_NewRef(m->label);
            flight->name = Py_NewRef(m->name);
            flight->raw = Py_NewRef(args);
        }
    }
    PyObject *r = PyObject_CallMethodObjArgs(lock, s_release, NULL);
    if (r == NULL) /* never: the lock is this thread's; a flight made stays (Python's run() too) */
        goto out;
    Py_DECREF(r);
    if (running != 0) {
        if (running == 1)
            result = Py_NewRef(vc_missing()); /* its computation runs: Python waits for it */
        goto out;
    }
    /* A result stored since the look above (a flight that just ended) is the
     * Python way's to read: the call goes there, as a miss of its own. */
    stores = PyObject_GetAttr(m->memoized, s_stores);
    long long now = stores ? PyLong_AsLongLong(stores) : -1;
    Py_XDECREF(stores);
    if (PyErr_Occurred() || (now != before && (absent = vc_quick_absent(m->cache, quick, args)) <= 0)) {
        PyObject *type, *exc, *tb;
        PyErr_Fetch(&type, &exc, &tb);
        int ended = end_flight(lock, flights, fkey, flight);
        if (type != NULL || ended < 0) {
            if (type != NULL)
                PyErr_Restore(type, exc, tb);
            goto out;
        }
        result = Py_NewRef(vc_missing());
        goto out;
    }
    m->misses++;
    if (vc_quick_count_miss(quick) < 0) {
        end_flight(lock, flights, fkey, flight);
        goto out;
    }
    PyObject *value = PyObject_Call(m->func, args, NULL);
    if (value == NULL || store_result(m, quick, args, value, stores_seen) < 0) {
        PyObject *type, *exc, *tb;
        PyErr_Fetch(&type, &exc, &tb);
        PyErr_NormalizeException(&type, &exc, &tb);
        if (exc != NULL) {
            if (tb != NULL)
                PyException_SetTraceback(exc, tb);
            VC_SETREF(flight->error, Py_NewRef(exc));
        }
        Py_XDECREF(value);
        end_flight(lock, flights, fkey, flight); /* the function's exception wins over one of these */
        PyErr_Restore(type, exc, tb);
        goto out;
    }
    VC_SETREF(flight->value, Py_NewRef(value));
    if (end_flight(lock, flights, fkey, flight) < 0) {
        Py_DECREF(value);
        goto out;
    }
    result = value;
out:
    Py_XDECREF((PyObject *)flight);
    Py_XDECREF(fkey);
    Py_XDECREF(single);
    Py_XDECREF(lock);
    Py_XDECREF(flights);
    Py_DECREF(quick);
    return result;
}

int vc_add_memo_types(PyObject *module)
{
#define NAME(var, text) \
    if (var == NULL && (var = PyUnicode_InternFromString(text)) == NULL) return -1;
    NAME(s_stores, "_stores") NAME(s_misses, "misses") NAME(s_setitem, "_setitem")
    NAME(s_set, "set") NAME(s_acquire, "acquire") NAME(s_release, "release")
    NAME(s_flight, "_flight") NAME(s_lock, "_lock") NAME(s_flights, "_flights")
#undef NAME
    if (FlightType == NULL) { /* made once, as hot.c's types: flights outlive an import */
        FlightType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &flight_spec, NULL);
        if (FlightType == NULL)
            return -1;
    }
    return PyModule_AddObjectRef(module, "Flight", (PyObject *)FlightType);
}
