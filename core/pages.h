/* The pages of one kernel-backend region, as the core re-pins and reads them
 * without a Python call (backends/kernel.py and backends/pages.py are the
 * reference; the tests hold one against the other).
 *
 * The nouns:
 *  - a *region* is npages pages of page_size bytes mapped at addr, private
 *    anonymous memory the backend marks with MADV_FREE;
 *  - a page's *state* is its byte in the backend's PageBook: PINNED (0),
 *    VOLATILE (1: marked; its first word holds the tag and saved[] the word
 *    the tag replaced) or PURGED (2: volatile and known to be dropped);
 *  - a page's *stamp* is the id of the run that marked it, 0 once it left
 *    the run (re-pinned or purged);
 *  - counts[] are the PageBook's, over every region of the backend: pages,
 *    volatile pages (VOLATILE or PURGED), purged pages (PURGED), the id of
 *    the next run, and the runs past which the book sweeps its dead ones;
 *  - a *run* is the pages one mark made volatile, known by its id, which
 *    is its pages' stamp;
 *  - calls[] are added to the backend's own counters: vrange calls made
 *    here, and bytes found purged by them.
 * Invariants: state[i] is PINNED, VOLATILE or PURGED; a PINNED or PURGED
 * page has stamp 0; counts[1] and counts[2] count those states in every
 * region. The backend's lock is held around every call that writes; a read
 * needs only that its caller keeps the pages' states still (the cache's own
 * lock), as the backend's reader does: the kernel's purges are what the
 * tags catch.
 * Calls return a count or -errno; they never abort or print.
 */
#ifndef VOLCACHE_PAGES_H
#define VOLCACHE_PAGES_H

#include <stdint.h>

#define VC_PINNED 0
#define VC_VOLATILE 1
#define VC_PURGED 2

/* The backend's own mark (backends/native's vc_mark, by its address): saves
 * each page's first word, writes the tag, drains every CPU's LRU batches if
 * drain, MADV_FREE; the pages marked, or -errno (*err says why it stopped short). */
typedef long (*vc_mark_fn)(uintptr_t addr, size_t npages, size_t page_size, uint64_t tag,
                           int drain, uint64_t *saved, int *err, unsigned long *syscalls);

struct vc_pages {
    uintptr_t addr;
    int64_t npages, page_size;
    uint64_t tag;
    uint64_t *saved;              /* npages words */
    uint8_t *state;               /* npages bytes */
    uint64_t *stamps;             /* npages stamps */
    int64_t *counts;              /* pages, volatile, purged: the backend's, every region's */
    int64_t *calls;               /* vrange calls, purged bytes */
    unsigned long *mismatched;    /* pages found written to while volatile */
    vc_mark_fn mark;              /* NULL: no marking here */
    unsigned long *syscalls;      /* the backend's count of system calls */
};

/* Re-pin pages [first, first + npages): each one pinned afterwards, its
 * first word back. The pages found purged (region page numbers, in order)
 * go to purged[0..n), n returned; -EINVAL for a range outside the region,
 * -ENOBUFS if cap < npages (nothing changed then). One vrange call's worth. */
long vc_pages_repin(struct vc_pages *p, int64_t first, int64_t npages, int64_t *purged,
                    int64_t cap);

/* Mark pinned pages [first, first + npages) volatile as run `run`, without
 * draining: the pages marked (from first; fewer if the backend stopped
 * short, *err then says why), or -errno if none (-EINVAL: a range outside
 * the region or a page not pinned, nothing changed). */
long vc_pages_mark(struct vc_pages *p, int64_t first, int64_t npages, int64_t run, int *err);

/* Copy length bytes from start into out without re-pinning: 0 when every
 * byte is what was written, else the number of pages found purged (out is
 * then not to be used); -EINVAL for a range outside the region. */
long vc_pages_read(const struct vc_pages *p, int64_t start, int64_t length, uint8_t *out);

#endif
