/* The parts of volcache._core (module.c puts them together). */
#ifndef VOLCACHE_PYCORE_H
#define VOLCACHE_PYCORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* hot.c: HotBase, EntryBase, Clock, MemoHit, the sentinels COLD, MISSING, GETITEM, Expired. */
int vc_add_hot_types(PyObject *module);
/* books.c: SlabBooks. */
int vc_add_books_type(PyObject *module);
/* table_type.c: Table, table_bytes(). */
int vc_add_table_type(PyObject *module);
struct vc_table;
/* The table of a Table object, or NULL with an exception set. */
struct vc_table *vc_table_of(PyObject *table);

#endif
