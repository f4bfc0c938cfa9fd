/* A key's bytes in C: what volcache.keys.key_bytes writes (marshal format 2),
 * for the keys a store takes without Python: None, bools, ints of at most 64
 * bits, floats other than NaN, str, bytes, and tuples of these. Equal keys of
 * one type give equal bytes (format 2 has no back-references); other keys,
 * and keys of other types (a frozenset, a typed key's marker, a tuple
 * subclass), are written by the Python version (tests/test_coremodule.py
 * holds this one to marshal.dumps(key, 2)).
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "pycore.h"

#define MAX_DEPTH 8 /* nested tuples, at most */

struct out {
    unsigned char *at;
    long n, cap;
};

static int put(struct out *o, const void *bytes, long n)
{
    if (n > o->cap - o->n)
        return -ENOBUFS;
    memcpy(o->at + o->n, bytes, (size_t)n);
    o->n += n;
    return 0;
}

static int put_u32(struct out *o, uint32_t v)
{
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    return put(o, b, 4);
}

/* marshal's TYPE_INT for 32 bits, else TYPE_LONG: the magnitude in 15-bit
 * digits, least significant first, as many as it needs, the sign on their count. */
static int put_int(struct out *o, PyObject *v)
{
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow)
        return -ENOTSUP;
    if (x == -1 && PyErr_Occurred())
        return -EINVAL;
    if (x >= INT32_MIN && x <= INT32_MAX) {
        unsigned char t = 'i';
        int r = put(o, &t, 1);
        return r < 0 ? r : put_u32(o, (uint32_t)(int32_t)x);
    }
    unsigned long long m = x < 0 ? 0ULL - (unsigned long long)x : (unsigned long long)x;
    unsigned char digits[10];
    int32_t n = 0;
    for (; m; m >>= 15, n++) {
        digits[2 * n] = (unsigned char)(m & 0xFF);
        digits[2 * n + 1] = (unsigned char)((m >> 8) & 0x7F);
    }
    unsigned char t = 'l';
    int r = put(o, &t, 1);
    if (r == 0)
        r = put_u32(o, (uint32_t)(x < 0 ? -n : n));
    return r < 0 ? r : put(o, digits, 2 * n);
}

static int put_key(struct out *o, PyObject *key, int depth)
{
    unsigned char t;
    int r;
    if (key == Py_None || key == Py_True || key == Py_False) {
        t = key == Py_None ? 'N' : key == Py_True ? 'T' : 'F';
        return put(o, &t, 1);
    }
    if (PyLong_CheckExact(key))
        return put_int(o, key);
    if (PyUnicode_CheckExact(key)) {
        Py_ssize_t n;
        const char *utf8 = PyUnicode_AsUTF8AndSize(key, &n);
        if (utf8 == NULL) { /* a lone surrogate: marshal writes it with surrogatepass */
            PyErr_Clear();
            return -ENOTSUP;
        }
        if (n > INT32_MAX)
            return -ENOBUFS;
        t = 'u';
        if ((r = put(o, &t, 1)) < 0 || (r = put_u32(o, (uint32_t)n)) < 0)
            return r;
        return put(o, utf8, (long)n);
    }
    if (PyBytes_CheckExact(key)) {
        Py_ssize_t n = PyBytes_Size(key);
        if (n > INT32_MAX)
            return -ENOBUFS;
        t = 's';
        if ((r = put(o, &t, 1)) < 0 || (r = put_u32(o, (uint32_t)n)) < 0)
            return r;
        return put(o, PyBytes_AsString(key), (long)n);
    }
    if (PyFloat_CheckExact(key)) {
        double d = PyFloat_AsDouble(key);
        if (isnan(d)) /* found by identity only: such a key stays an object */
            return -ENOTSUP;
        unsigned char b[8];
        uint64_t bits;
        memcpy(&bits, &d, 8); /* IEEE 754, written little-endian as PyFloat_Pack8 does */
        for (int i = 0; i < 8; i++)
            b[i] = (unsigned char)(bits >> (8 * i));
        t = 'g';
        return (r = put(o, &t, 1)) < 0 ? r : put(o, b, 8);
    }
    if (PyTuple_CheckExact(key)) {
        if (depth >= MAX_DEPTH)
            return -ENOTSUP;
        Py_ssize_t n = PyTuple_Size(key);
        t = '(';
        if ((r = put(o, &t, 1)) < 0 || (r = put_u32(o, (uint32_t)n)) < 0)
            return r;
        for (Py_ssize_t i = 0; i < n; i++)
            if ((r = put_key(o, PyTuple_GetItem(key, i), depth + 1)) < 0)
                return r;
        return 0;
    }
    return -ENOTSUP;
}

long vc_key_bytes(PyObject *key, unsigned char *out, long cap)
{
    struct out o = {out, 0, cap};
    int r = put_key(&o, key, 0);
    return r < 0 ? r : o.n;
}
