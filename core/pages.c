/* Re-pin and read a kernel-backend region's pages (see pages.h). */
#include <errno.h>
#include <string.h>

#include "pages.h"

static uint64_t *word_of(const struct vc_pages *p, int64_t page)
{
    return (uint64_t *)(p->addr + (uintptr_t)page * (uintptr_t)p->page_size);
}

static int in_region(const struct vc_pages *p, int64_t first, int64_t n)
{
    return first >= 0 && n >= 0 && first <= p->npages && n <= p->npages - first;
}

long vc_pages_repin(struct vc_pages *p, int64_t first, int64_t npages, int64_t *purged,
                    int64_t cap)
{
    long n = 0;

    if (!in_region(p, first, npages))
        return -EINVAL;
    if (cap < npages)
        return -ENOBUFS;
    for (int64_t i = first; i < first + npages; i++) {
        uint8_t state = p->state[i];
        uint64_t *word = word_of(p, i);

        if (state == VC_PINNED)
            continue;
        if (state == VC_PURGED) { /* our own reclaim dropped it: known without a touch */
            purged[n++] = i;
            p->counts[2]--;
        } else if (__atomic_load_n(word, __ATOMIC_RELAXED) == 0) {
            /* Dropped: it reads as the shared zero page, and an exchange
             * would fault in a fresh page for nothing (as vc_unmark). */
            purged[n++] = i;
        } else {
            /* One atomic instruction, as vc_unmark: reclaim either finds the
             * page dirty afterwards and keeps it, or dropped it before and
             * the exchange reads a new zero page. */
            uint64_t old = __atomic_exchange_n(word, p->saved[i], __ATOMIC_SEQ_CST);
            if (old != p->tag) {
                purged[n++] = i;
                if (old != 0)
                    (*p->mismatched)++;
            }
        }
        p->counts[1]--;
        p->state[i] = VC_PINNED;
        p->stamps[i] = 0;
    }
    if (npages > 0)
        p->calls[0]++;
    p->calls[1] += n * p->page_size;
    return n;
}

static int tag_in_place(const struct vc_pages *p, int64_t page)
{
    return __atomic_load_n(word_of(p, page), __ATOMIC_ACQUIRE) == p->tag;
}

long vc_pages_read(const struct vc_pages *p, int64_t start, int64_t length, uint8_t *out)
{
    int64_t size = p->page_size;
    long n = 0;

    if (start < 0 || length < 0 || start > p->npages * size || length > p->npages * size - start)
        return -EINVAL;
    if (length == 0)
        return 0;
    int64_t first = start / size, last = (start + length - 1) / size;
    for (int64_t page = first; page <= last; page++) {
        int64_t from = page == first ? start - page * size : 0;
        int64_t to = page == last ? start + length - page * size : size;
        uint8_t *dest = out + (page * size + from - start);
        const uint8_t *src = (const uint8_t *)word_of(p, page) + from;

        if (p->state[page] == VC_PINNED) {
            memcpy(dest, src, (size_t)(to - from));
            continue;
        }
        if (p->state[page] != VC_VOLATILE || !tag_in_place(p, page)) {
            n++;
            continue;
        }
        memcpy(dest, src, (size_t)(to - from));
        if (from < (int64_t)sizeof(uint64_t)) { /* the tag stands on the first word */
            int64_t upto = to < (int64_t)sizeof(uint64_t) ? to : (int64_t)sizeof(uint64_t);
            memcpy(dest, (const uint8_t *)&p->saved[page] + from, (size_t)(upto - from));
        }
        /* The copy's loads before the check's: a page dropped during the
         * copy reads zero here (it stays zero until written). */
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (!tag_in_place(p, page))
            n++;
    }
    return n;
}

long vc_pages_mark(struct vc_pages *p, int64_t first, int64_t npages, int64_t run, int *err)
{
    *err = 0;
    if (p->mark == NULL || !in_region(p, first, npages) || npages == 0)
        return -EINVAL;
    for (int64_t i = first; i < first + npages; i++)
        if (p->state[i] != VC_PINNED)
            return -EINVAL;
    long done = p->mark(p->addr + (uintptr_t)first * (uintptr_t)p->page_size, (size_t)npages,
                        (size_t)p->page_size, p->tag, 0, p->saved + first, err, p->syscalls);
    if (done <= 0)
        return done < 0 ? done : -EIO;
    for (int64_t i = first; i < first + done; i++) {
        p->state[i] = VC_VOLATILE;
        p->stamps[i] = (uint64_t)run;
    }
    p->counts[1] += done;
    return done;
}
