/* volcache._core: the C parts of the cache, behind the CPython limited API.
 *
 * Its calls hold the GIL (a cffi call releases and takes it again, which
 * costs more than these calls do) and take Python objects as they are.
 * Python versions of each part stay beside it as references and fallbacks:
 * volcache/hotpath.py (hot.c), volcache/slabbooks.py (books.c over
 * slabbooks.c), volcache/records.py (table_type.c over table.c, through
 * volcache/native_records.py). volcache.hotpath is the one module that imports this one.
 */
#include "pycore.h"

#define CORE_VERSION 4 /* volcache.coremodule.VERSION: the interface it was built for */
/* The module's name: _core in the package; CI builds it under another name
 * with the sanitizers (.ci/sanitized.py). */
#ifndef VC_CORE_NAME
#define VC_CORE_NAME _core
#endif
#define VC_STR(x) VC_STR_(x)
#define VC_STR_(x) #x
#define VC_CAT(a, b) VC_CAT_(a, b)
#define VC_CAT_(a, b) a##b

static PyMethodDef module_methods[] = {
    {NULL, NULL, 0, NULL},
};

static int module_exec(PyObject *module)
{
    /* Its objects are made once and shared by every import (hot.c): the main
     * interpreter's only. Elsewhere the cache runs its Python versions. */
    if (PyInterpreterState_GetID(PyInterpreterState_Get()) != 0) {
        PyErr_SetString(PyExc_ImportError,
                        "volcache._core loads in the main interpreter only");
        return -1;
    }
    if (vc_add_hot_types(module) < 0 || vc_add_books_type(module) < 0
        || vc_add_table_type(module) < 0 || vc_add_quick_type(module) < 0
        || vc_add_memo_types(module) < 0 || vc_add_pageset_type(module) < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "VERSION", CORE_VERSION) < 0
        || PyModule_AddStringConstant(module, "SOURCE_HASH", VC_CORE_HASH) < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, VC_STR(VC_CORE_NAME),
    "The C parts of the cache; volcache.hotpath is its one door.",
    0, module_methods, module_slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC VC_CAT(PyInit_, VC_CORE_NAME)(void)
{
    return PyModuleDef_Init(&module_def);
}
