/* The store's fused calls: a whole operation on the record table and the
 * slab books in one call (volcache/store.py makes the same ones step by
 * step: it is the reference, and what runs where the C core does not).
 *
 * An entry's bytes in its slot: value | key | decoder parameters | trailer,
 * the trailer being 12 bytes, little-endian: key length (u32), parameters'
 * length (u32), decoder tag (u16), flags (u8), a zero byte (store.TRAILER).
 */
#ifndef VOLCACHE_STORE_H
#define VOLCACHE_STORE_H

#include <stdint.h>

#include "slabbooks.h"
#include "table.h"

#define VC_TRAILER 12
#define VC_LONG 0xFFFFFFFFu /* a record's length field for entries of 4 GiB and more */

struct vc_put {
    const void *value, *key, *spec;
    int64_t nvalue, nkey, nspec;
    uint32_t tag, flags;
};

/* A new active record holding the entry's bytes (shorter than VC_LONG): its
 * id, with the ids a purge took meanwhile in lost[0..*nlost); or VC_NEED_*
 * (need says what; nothing changed) or -errno. */
long vc_store_put(struct vc_table *t, struct vc_books *b, uint32_t h, const struct vc_put *p,
                  int64_t *need, int32_t *lost, int64_t cap, int64_t *nlost);

/* Forget a record and give its place back (it leaves the index and the order
 * too): the index of the slab now wholly free (give it back to the backend,
 * then vc_books_drop_slab) or -1; its length and whether it was active in
 * *length, *active. -EFBIG for a record of VC_LONG or more bytes (its caller
 * keeps their length); -EINVAL for an id not in use. */
long vc_store_free(struct vc_table *t, struct vc_books *b, int64_t rid, int64_t *length,
                   int *active);

/* A new active record (no Python object, not kept, shorter than VC_LONG)
 * joins the index and the order (at stamp) and goes idle: its length, or
 * -EINVAL (nothing changed) if it is not such a record. */
long vc_store_settle(struct vc_table *t, struct vc_books *b, int64_t rid, int64_t stamp);

#endif
