/* The slab allocator's books: which pages of which slab hold what.
 *
 * The nouns:
 *  - a *slab* is one backend region, npages pages; slabs are known by their
 *    index (a given-back slab's index is reused, last freed first);
 *  - a *page* is known by (slab index, page number); its state is bits of
 *    one byte: VOLATILE (marked in the backend), PENDING (idle, to be
 *    marked), USED (holds an entry), LOST (found purged by a re-pin whose
 *    activation then failed: the next activation reports it), INSTACK (a
 *    shared page on its class's stack of vacancies);
 *  - a *run* is a span of free pages of one slab, as long as it can be
 *    (free neighbours are merged); each run is in the bucket of its length's
 *    bit length, an array of run ids (slab << 32 | first page) from which a
 *    run leaving is replaced by the last (the search takes the first that
 *    fits, bucket by bucket, as the Python reference does). A free page's
 *    owner and mask hold its run's books: at the first page (RUN_FIRST)
 *    owner = the run's length and the mask's low half its place in its
 *    bucket; at the last page (RUN_LAST) the mask's high half = the first;
 *  - a *slot* is one of the equal parts of a shared page (a page of one size
 *    class, plus one in klass[]), its taken slots a bit mask; the entries on
 *    a shared page are chained through link[] by entry id from owner[page];
 *    a large entry's pages all have it as owner[];
 *  - a *loc* is (slab index << 40) | byte offset.
 * Every link is an index or a (slab << 32 | page) id, never a pointer.
 *
 * Invariants (volcache/slabbooks.py is the reference, line by line; the
 * differential tests compare every answer and the counters):
 *  - npending = pages with PENDING; a page is never both PENDING and VOLATILE;
 *    nlost = pages with LOST, per slab;
 *  - a free page has klass 0 and no USED; every free page is in exactly one
 *    run, whose first and last pages say so (see runs above);
 *  - count, stored_bytes, capacity_bytes: entries allocated, their bytes,
 *    and the bytes of their slots or pages.
 * Calls return a count, an id, a loc, or -errno; they never abort or print.
 * Calls on an entry take its loc and length as allocate gave them and
 * refuse any other (a slot not taken, a page not its first, a length not
 * its pages'): -EINVAL, nothing changed.
 * A call that needs the backend first returns VC_NEED_SLAB or
 * VC_NEED_REPIN, says what in *need, and changes nothing.
 */
#ifndef VOLCACHE_SLABBOOKS_H
#define VOLCACHE_SLABBOOKS_H

#include <stddef.h>
#include <stdint.h>

#define VC_PAGE_VOLATILE 1
#define VC_PAGE_PENDING 2
#define VC_PAGE_USED 4
#define VC_PAGE_LOST 8
#define VC_PAGE_INSTACK 16
#define VC_PAGE_SEEN 32 /* scratch, while a stack is rebuilt */
#define VC_PAGE_RUN_FIRST 64 /* the first page of a free run */
#define VC_PAGE_RUN_LAST 128 /* the last page of a free run */

#define VC_OFFSET_BITS 40
#define VC_MAX_ENTRY ((int64_t)1 << VC_OFFSET_BITS) /* bytes of a slab or an entry, at most */
#define VC_MAX_CLASSES 32
#define VC_BUCKETS 64
#define VC_NEED_SLAB (-1000) /* need[0]: pages of the new slab */
#define VC_NEED_REPIN (-1001) /* need[0..2]: slab index, first page, pages */
#define VC_NEED_ROOM (-1002) /* the record table is full: grow it */

struct vc_slab {
    int64_t npages;      /* 0: a vacant index */
    int64_t npending, nlost;
    uint8_t *state;      /* npages state bytes */
    int32_t *owner;      /* a large run's entry, a shared page's first chained entry, or -1 */
    uint8_t *klass;      /* a shared page's class plus one; 0: not shared */
    uint64_t *mask;      /* a shared page's taken slots */
    uint16_t *active;    /* a shared page's active entries */
    uintptr_t base;      /* where the slab is mapped in this process (0: not told) */
};

struct vc_bucket {
    int64_t *runs; /* run ids */
    int64_t len, cap;
};

struct vc_stack {
    int64_t *items; /* (slab << 32 | page), the newest last */
    int64_t len, cap, limit;
};

struct vc_books {
    int64_t page_size, slab_pages, nclasses;
    int64_t classes[VC_MAX_CLASSES];
    uint64_t full[VC_MAX_CLASSES];
    struct vc_slab *slabs;
    int64_t nslabs, slabs_cap;
    int64_t *vacant; /* vacant slab indexes, the last freed last */
    int64_t nvacant, vacant_cap;
    struct vc_bucket buckets[VC_BUCKETS];
    struct vc_stack stacks[VC_MAX_CLASSES];
    int32_t *link;
    int64_t link_len;
    int64_t npending, stored_bytes, capacity_bytes, mark_errors, count, total_pages;
    int64_t max_npages; /* the largest slab added since the last reset, 1 at least */
};

long vc_books_init(struct vc_books *b, int64_t page_size, int64_t slab_pages);
void vc_books_free(struct vc_books *b);
long vc_books_reset(struct vc_books *b);

long vc_books_add_slab(struct vc_books *b, int64_t npages);
/* Where a slab is mapped in this process: vc_store_put writes there. */
long vc_books_set_base(struct vc_books *b, int64_t index, uintptr_t base);
long vc_books_drop_slab(struct vc_books *b, int64_t index);

/* A loc (>= 0), with the ids a purge took in lost[0..*nlost) (cap of them at
 * most: -ENOBUFS past it, nothing changed); or VC_NEED_*. */
int64_t vc_books_allocate(struct vc_books *b, int64_t nbytes, int64_t ident, int64_t *need,
                          int32_t *lost, int64_t cap, int64_t *nlost);
/* The index of the slab now wholly free, or -1. */
long vc_books_free_entry(struct vc_books *b, int64_t loc, int64_t nbytes, int64_t ident, int active);
/* 0, with the ids a purge took in lost[0..*nlost); or VC_NEED_REPIN. */
long vc_books_activate(struct vc_books *b, int64_t loc, int64_t nbytes, int64_t *need,
                       int32_t *lost, int64_t cap, int64_t *nlost);
long vc_books_deactivate(struct vc_books *b, int64_t loc, int64_t nbytes);

long vc_books_has_lost(struct vc_books *b, int64_t index);
long vc_books_lost_in(struct vc_books *b, int64_t loc, int64_t nbytes);
/* Takes the pages off the pending list; their volatile span in *low, *high. */
long vc_books_take_pending(struct vc_books *b, int64_t index, int64_t first, int64_t npages,
                           int64_t *low, int64_t *high);
long vc_books_repinned(struct vc_books *b, int64_t index, int64_t first, int64_t count,
                       const int64_t *purged, int64_t npurged);
long vc_books_restore_pending(struct vc_books *b, int64_t index, int64_t first, int64_t npages);
/* The next run of pending pages at or after (*index, *first): 1 and the run in
 * *index, *first, *stop; 0 when there is none. */
long vc_books_next_pending(struct vc_books *b, int64_t *index, int64_t *first, int64_t *stop);
long vc_books_marked(struct vc_books *b, int64_t index, int64_t first, int64_t count);
long vc_books_has_volatile(struct vc_books *b, int64_t index);
/* The ids on these pages (volatile and used ones, sorted), each once, up to cap. */
long vc_books_ids_on(struct vc_books *b, int64_t index, const int64_t *pages, int64_t npages,
                     int32_t *out, int64_t cap);
long vc_books_page_counts(struct vc_books *b, int64_t *total, int64_t *used, int64_t *vol);

#endif
