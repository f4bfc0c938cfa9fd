/* The store's fused calls: see store.h. */
#include "store.h"

#include <errno.h>
#include <string.h>

#define OFFSET_MASK (((int64_t)1 << VC_OFFSET_BITS) - 1)

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

long vc_store_put(struct vc_table *t, struct vc_books *b, uint32_t h, const struct vc_put *p,
                  int64_t *need, int32_t *lost, int64_t cap, int64_t *nlost)
{
    *nlost = 0;
    if (p->nvalue < 0 || p->nkey < 0 || p->nspec < 0 || p->tag > 0xFFFF || p->flags > 0xFF)
        return -EINVAL;
    int64_t length = p->nvalue + p->nkey + p->nspec + VC_TRAILER;
    if (length >= (int64_t)VC_LONG)
        return -EFBIG; /* the caller keeps such a length apart */
    long rid = vc_rec_next_id(t);
    if (rid == -ENOSPC)
        return VC_NEED_ROOM;
    if (rid < 0)
        return rid;
    /* Placed first, under the id the record will have: a need changes nothing. */
    int64_t loc = vc_books_allocate(b, length, rid, need, lost, cap, nlost);
    if (loc < 0)
        return (long)loc;
    struct vc_slab *s = &b->slabs[loc >> VC_OFFSET_BITS];
    long made = s->base == 0 ? -EFAULT /* never: the allocator tells every slab's base */
                             : vc_rec_new(t, h, loc, (uint32_t)length, VC_ACTIVE);
    if (made != rid) { /* never: next_id said it */
        vc_books_free_entry(b, loc, length, rid, 1);
        *nlost = 0;
        return made < 0 ? made : -EPROTO;
    }
    unsigned char *at = (unsigned char *)s->base + (loc & OFFSET_MASK);
    memcpy(at, p->value, (size_t)p->nvalue);
    memcpy(at + p->nvalue, p->key, (size_t)p->nkey);
    memcpy(at + p->nvalue + p->nkey, p->spec, (size_t)p->nspec);
    unsigned char *trailer = at + length - VC_TRAILER;
    put_u32(trailer, (uint32_t)p->nkey);
    put_u32(trailer + 4, (uint32_t)p->nspec);
    trailer[8] = (unsigned char)(p->tag & 0xFF);
    trailer[9] = (unsigned char)(p->tag >> 8);
    trailer[10] = (unsigned char)p->flags;
    trailer[11] = 0;
    return rid;
}

long vc_store_free(struct vc_table *t, struct vc_books *b, int64_t rid, int64_t *length,
                   int *active)
{
    int64_t loc;
    uint32_t nbytes;
    uint8_t flags;
    long r = vc_rec_get(t, rid, &loc, &nbytes, &flags);
    if (r < 0)
        return r;
    *length = 0;
    *active = 0;
    if (flags & VC_KEPT) /* no bytes in the slabs: the record only */
        return vc_rec_delete(t, rid) < 0 ? -EPROTO : -1;
    if (nbytes == VC_LONG)
        return -EFBIG;
    long empty = vc_books_free_entry(b, loc, nbytes, rid, (flags & VC_ACTIVE) != 0);
    if (empty < -1)
        return empty; /* the books refused it: the record stays as it was */
    if (vc_rec_delete(t, rid) < 0)
        return -EPROTO; /* never: vc_rec_get found it in use */
    *length = nbytes;
    *active = (flags & VC_ACTIVE) != 0;
    return empty;
}

long vc_store_settle(struct vc_table *t, struct vc_books *b, int64_t rid, int64_t stamp)
{
    int64_t loc;
    uint32_t length;
    uint8_t flags;
    long r = vc_rec_get(t, rid, &loc, &length, &flags);
    if (r < 0)
        return r;
    if ((flags & (VC_INDEXED | VC_LISTED | VC_OBJECT | VC_KEPT)) || !(flags & VC_ACTIVE)
        || length == VC_LONG)
        return -EINVAL;
    if ((r = vc_rec_index(t, rid)) < 0)
        return r;
    if ((r = vc_rec_append(t, rid, stamp)) < 0) {
        vc_rec_unindex(t, rid);
        return r;
    }
    if ((r = vc_books_deactivate(b, loc, length)) < 0) {
        vc_rec_unlist(t, rid);
        vc_rec_unindex(t, rid);
        return r;
    }
    vc_rec_clear_flags(t, rid, VC_ACTIVE);
    return (long)length;
}
