/* The slab allocator's books in C: volcache/slabbooks.py, line by line.
 * The nouns and invariants are in slabbooks.h. */
#include "slabbooks.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define NONE (-1)
#define RUN_ID(index, page) ((int64_t)(index) << 32 | (int64_t)(page))
#define RUN_SLAB(id) ((id) >> 32)
#define RUN_PAGE(id) ((id) & 0xFFFFFFFF)
#define OFFSET_MASK (((int64_t)1 << VC_OFFSET_BITS) - 1)

static int bit_length(uint64_t n)
{
    return n ? 64 - __builtin_clzll(n) : 0;
}

static int bucket_of(int64_t npages)
{
    return bit_length((uint64_t)npages) - 1;
}

static int64_t ceil_div(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

static struct vc_slab *slab_at(struct vc_books *b, int64_t index)
{
    if (index < 0 || index >= b->nslabs || b->slabs[index].npages == 0)
        return NULL;
    return &b->slabs[index];
}

/* -- growing arrays ---------------------------------------------------------- */

static int grow(void **items, int64_t *cap, int64_t need, size_t size)
{
    if (need <= *cap)
        return 0;
    int64_t room = *cap ? *cap : 8;
    while (room < need)
        room *= 2;
    void *moved = realloc(*items, (size_t)room * size);
    if (moved == NULL)
        return -ENOMEM;
    *items = moved;
    *cap = room;
    return 0;
}

/* -- setting up -------------------------------------------------------------- */

long vc_books_init(struct vc_books *b, int64_t page_size, int64_t slab_pages)
{
    if (page_size < 64 || (page_size & (page_size - 1)) || slab_pages < 1)
        return -EINVAL;
    memset(b, 0, sizeof *b);
    b->page_size = page_size;
    b->slab_pages = slab_pages;
    /* size_classes(): from a 64th of a page to half a page, four per doubling. */
    int64_t smallest = page_size / 64 > 16 ? page_size / 64 : 16, size = smallest;
    int64_t n = 0;
    b->classes[n++] = size;
    while (size < page_size / 2) {
        for (int i = 1; i <= 4; i++) {
            int64_t c = size + size / 4 * i;
            if (c >= smallest && c <= page_size / 2 && n < VC_MAX_CLASSES)
                b->classes[n++] = c;
        }
        size *= 2;
    }
    b->nclasses = n;
    for (int64_t k = 0; k < n; k++) {
        int64_t slots = page_size / b->classes[k];
        b->full[k] = slots >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << slots) - 1);
    }
    return vc_books_reset(b);
}

static void slab_release(struct vc_slab *s)
{
    free(s->state);
    free(s->owner);
    free(s->klass);
    free(s->mask);
    free(s->active);
    memset(s, 0, sizeof *s);
}

long vc_books_reset(struct vc_books *b)
{
    for (int64_t i = 0; i < b->nslabs; i++)
        slab_release(&b->slabs[i]);
    free(b->slabs);
    free(b->vacant);
    free(b->link);
    for (int k = 0; k < VC_MAX_CLASSES; k++) {
        free(b->stacks[k].items);
        memset(&b->stacks[k], 0, sizeof b->stacks[k]);
        b->stacks[k].limit = 64;
    }
    b->slabs = NULL;
    b->nslabs = b->slabs_cap = 0;
    b->vacant = NULL;
    b->nvacant = b->vacant_cap = 0;
    b->link = NULL;
    b->link_len = 0;
    for (int i = 0; i < VC_BUCKETS; i++) {
        free(b->buckets[i].runs);
        memset(&b->buckets[i], 0, sizeof b->buckets[i]);
    }
    b->npending = b->stored_bytes = b->capacity_bytes = b->mark_errors = 0;
    b->count = b->total_pages = 0;
    b->max_npages = 1;
    return 0;
}

void vc_books_free(struct vc_books *b)
{
    vc_books_reset(b);
}

/* -- free runs --------------------------------------------------------------- */

/* Room in every bucket a run can be in (none is longer than the largest
 * slab) for two more runs: a call links at most two after this, so that none
 * fails half way. */
static int reserve_runs(struct vc_books *b)
{
    for (int i = 0; i <= bucket_of(b->max_npages); i++) {
        struct vc_bucket *k = &b->buckets[i];
        if (k->len + 2 <= k->cap)
            continue;
        int64_t room = k->cap * 2 > k->len + 2 ? k->cap * 2 : k->len + 2;
        int64_t *moved = realloc(k->runs, (size_t)room * sizeof *moved);
        if (moved == NULL)
            return -ENOMEM;
        k->runs = moved;
        k->cap = room;
    }
    return 0;
}

static int64_t run_length(struct vc_slab *s, int64_t first)
{
    return (s->state[first] & VC_PAGE_RUN_FIRST) ? s->owner[first] : 0;
}

/* The first page of the free run whose last page is last, or -1. */
static int64_t run_first(struct vc_slab *s, int64_t last)
{
    return (s->state[last] & VC_PAGE_RUN_LAST) ? (int64_t)(s->mask[last] >> 32) : NONE;
}

static void link_run(struct vc_books *b, int64_t index, struct vc_slab *s, int64_t start,
                     int64_t length)
{
    struct vc_bucket *k = &b->buckets[bucket_of(length)];
    int64_t last = start + length - 1;
    s->state[start] |= VC_PAGE_RUN_FIRST;
    s->owner[start] = (int32_t)length;
    s->mask[start] = (uint64_t)k->len;
    s->state[last] |= VC_PAGE_RUN_LAST;
    s->mask[last] = (s->mask[last] & 0xFFFFFFFF) | ((uint64_t)start << 32);
    k->runs[k->len++] = RUN_ID(index, start); /* room reserved by reserve_runs() */
}

static void unlink_run(struct vc_books *b, struct vc_slab *s, int64_t start, int64_t length)
{
    struct vc_bucket *k = &b->buckets[bucket_of(length)];
    int64_t place = (int64_t)(s->mask[start] & 0xFFFFFFFF), last = k->runs[--k->len];
    if (place < k->len) {
        k->runs[place] = last;
        struct vc_slab *other = &b->slabs[RUN_SLAB(last)];
        int64_t page = RUN_PAGE(last);
        other->mask[page] = (other->mask[page] & ~(uint64_t)0xFFFFFFFF) | (uint64_t)place;
    }
    s->state[start] &= (uint8_t)~VC_PAGE_RUN_FIRST;
    s->state[start + length - 1] &= (uint8_t)~VC_PAGE_RUN_LAST;
    s->owner[start] = NONE;
    s->mask[start] = 0;
    s->mask[start + length - 1] = 0;
}

/* The first free run of at least npages, bucket by bucket: 1 and the run; 0: none. */
static int find_run(struct vc_books *b, int64_t npages, int64_t *index, int64_t *start,
                    int64_t *length)
{
    for (int bucket = bucket_of(npages); bucket < VC_BUCKETS; bucket++) {
        struct vc_bucket *k = &b->buckets[bucket];
        for (int64_t i = 0; i < k->len; i++) {
            int64_t id = k->runs[i], page = RUN_PAGE(id);
            struct vc_slab *s = &b->slabs[RUN_SLAB(id)];
            if (s->owner[page] >= npages) {
                *index = RUN_SLAB(id);
                *start = page;
                *length = s->owner[page];
                return 1;
            }
        }
    }
    return 0;
}

static void split_run(struct vc_books *b, int64_t index, struct vc_slab *s, int64_t start,
                      int64_t length, int64_t npages)
{
    unlink_run(b, s, start, length);
    if (length > npages)
        link_run(b, index, s, start + npages, length - npages);
}

/* -- pages ------------------------------------------------------------------- */

static void idle_pages(struct vc_books *b, struct vc_slab *s, int64_t first, int64_t npages)
{
    int64_t added = 0;
    for (int64_t p = first; p < first + npages; p++) {
        if (!(s->state[p] & (VC_PAGE_PENDING | VC_PAGE_VOLATILE))) {
            s->state[p] |= VC_PAGE_PENDING;
            added++;
        }
    }
    s->npending += added;
    b->npending += added;
}

/* Take pages off the pending list; the count of lost pages put in lost[] (and cleared). */
static int64_t activate_pages(struct vc_books *b, struct vc_slab *s, int64_t first,
                              int64_t npages, int64_t *lost_pages)
{
    int64_t taken = 0, nlost = 0;
    for (int64_t p = first; p < first + npages; p++) {
        if (s->state[p] & VC_PAGE_PENDING) {
            s->state[p] &= (uint8_t)~VC_PAGE_PENDING;
            taken++;
        }
    }
    s->npending -= taken;
    b->npending -= taken;
    if (!s->nlost)
        return 0;
    for (int64_t p = first; p < first + npages; p++) {
        if (s->state[p] & VC_PAGE_LOST) {
            s->state[p] &= (uint8_t)~VC_PAGE_LOST;
            nlost++;
        }
    }
    s->nlost -= nlost;
    if (lost_pages)
        *lost_pages = nlost;
    return nlost;
}

static int any_volatile(struct vc_slab *s, int64_t first, int64_t stop)
{
    for (int64_t p = first; p < stop; p++)
        if (s->state[p] & VC_PAGE_VOLATILE)
            return 1;
    return 0;
}

/* The ids chained on a shared page into out (cap at most): how many, or -ENOBUFS. */
static long chain_ids(struct vc_books *b, struct vc_slab *s, int64_t page, int32_t *out,
                      int64_t cap)
{
    long n = 0;
    for (int64_t id = s->owner[page]; id != NONE; id = b->link[id]) {
        if (n >= cap)
            return -ENOBUFS;
        out[n++] = (int32_t)id;
    }
    return n;
}

/* -- slabs ------------------------------------------------------------------- */

long vc_books_add_slab(struct vc_books *b, int64_t npages)
{
    if (npages < 1 || npages > INT32_MAX - 1 || npages > VC_MAX_ENTRY / b->page_size)
        return -EINVAL; /* a loc's offset has 40 bits */
    int64_t index;
    if (b->nvacant) {
        index = b->vacant[b->nvacant - 1];
    } else {
        if (grow((void **)&b->slabs, &b->slabs_cap, b->nslabs + 1, sizeof *b->slabs) < 0)
            return -ENOMEM;
        index = b->nslabs;
        memset(&b->slabs[index], 0, sizeof b->slabs[index]);
    }
    struct vc_slab s = {0};
    size_t n = (size_t)npages;
    s.state = calloc(n, 1);
    s.owner = malloc(n * sizeof *s.owner);
    s.klass = calloc(n, 1);
    s.mask = calloc(n, sizeof *s.mask);
    s.active = calloc(n, sizeof *s.active);
    if (npages > b->max_npages)
        b->max_npages = npages; /* a larger run may be linked: its bucket gets room */
    if (!s.state || !s.owner || !s.klass || !s.mask || !s.active || reserve_runs(b) < 0) {
        slab_release(&s);
        return -ENOMEM;
    }
    for (size_t p = 0; p < n; p++)
        s.owner[p] = NONE;
    s.npages = npages;
    if (b->nvacant)
        b->nvacant--;
    else
        b->nslabs++;
    b->slabs[index] = s;
    b->total_pages += npages;
    link_run(b, index, &b->slabs[index], 0, npages);
    return index;
}

long vc_books_set_base(struct vc_books *b, int64_t index, uintptr_t base)
{
    struct vc_slab *s = slab_at(b, index);
    if (s == NULL)
        return -EINVAL;
    s->base = base;
    return 0;
}

long vc_books_drop_slab(struct vc_books *b, int64_t index)
{
    struct vc_slab *s = slab_at(b, index);
    if (s == NULL || run_length(s, 0) != s->npages)
        return -EINVAL;
    if (grow((void **)&b->vacant, &b->vacant_cap, b->nvacant + 1, sizeof *b->vacant) < 0)
        return -ENOMEM;
    unlink_run(b, s, 0, s->npages);
    b->npending -= s->npending;
    b->total_pages -= s->npages;
    slab_release(s);
    b->vacant[b->nvacant++] = index;
    if (b->total_pages == 0) { /* no slab left: the books start again, their arrays gone */
        int64_t mark_errors = b->mark_errors;
        vc_books_reset(b);
        b->mark_errors = mark_errors;
    }
    return 0;
}

/* -- the stacks of vacancies ------------------------------------------------- */

static int vacant_page(struct vc_books *b, int64_t item, int64_t klass)
{
    int64_t index = item >> 32, page = item & 0xFFFFFFFF;
    struct vc_slab *s = slab_at(b, index);
    return s != NULL && page < s->npages && s->klass[page] == klass + 1
           && s->mask[page] != b->full[klass];
}

static int rebuild_stack(struct vc_books *b, int64_t klass)
{
    struct vc_stack *st = &b->stacks[klass];
    int64_t kept = 0;
    for (int64_t i = 0; i < st->len; i++) {
        int64_t item = st->items[i];
        if (!vacant_page(b, item, klass))
            continue;
        struct vc_slab *s = &b->slabs[item >> 32];
        uint8_t *state = &s->state[item & 0xFFFFFFFF];
        if (*state & VC_PAGE_SEEN)
            continue;
        *state |= VC_PAGE_SEEN;
        st->items[kept++] = item;
    }
    for (int64_t i = 0; i < kept; i++)
        b->slabs[st->items[i] >> 32].state[st->items[i] & 0xFFFFFFFF] &= (uint8_t)~VC_PAGE_SEEN;
    st->len = kept;
    st->limit = 2 * kept > 64 ? 2 * kept : 64;
    return 0;
}

static int push_vacancy(struct vc_books *b, int64_t klass, int64_t index, struct vc_slab *s,
                        int64_t page)
{
    struct vc_stack *st = &b->stacks[klass];
    if (grow((void **)&st->items, &st->cap, st->len + 1, sizeof *st->items) < 0)
        return -ENOMEM;
    st->items[st->len++] = RUN_ID(index, page);
    s->state[page] |= VC_PAGE_INSTACK;
    if (st->len > st->limit)
        rebuild_stack(b, klass);
    return 0;
}

static int find_vacancy(struct vc_books *b, int64_t klass, int64_t *index, int64_t *page)
{
    struct vc_stack *st = &b->stacks[klass];
    while (st->len) {
        int64_t item = st->items[st->len - 1];
        if (vacant_page(b, item, klass)) {
            *index = item >> 32;
            *page = item & 0xFFFFFFFF;
            return 1;
        }
        st->len--;
    }
    return 0;
}

/* -- allocation -------------------------------------------------------------- */

static void count_in(struct vc_books *b, int64_t nbytes, int64_t capacity)
{
    b->stored_bytes += nbytes;
    b->capacity_bytes += capacity;
    b->count++;
}

static int64_t allocate_large(struct vc_books *b, int64_t nbytes, int64_t ident, int64_t *need)
{
    int64_t npages = ceil_div(nbytes, b->page_size), index, start, length;
    if (npages > INT32_MAX - 1)
        return -EINVAL;
    if (!find_run(b, npages, &index, &start, &length)) {
        need[0] = npages > b->slab_pages ? npages : b->slab_pages;
        return VC_NEED_SLAB;
    }
    struct vc_slab *s = &b->slabs[index];
    if (any_volatile(s, start, start + npages)) {
        need[0] = index, need[1] = start, need[2] = npages;
        return VC_NEED_REPIN;
    }
    split_run(b, index, s, start, length, npages);
    activate_pages(b, s, start, npages, NULL); /* free pages: a purge loses nothing */
    for (int64_t p = start; p < start + npages; p++) {
        s->owner[p] = (int32_t)ident;
        s->state[p] |= VC_PAGE_USED;
    }
    count_in(b, nbytes, npages * b->page_size);
    return index << VC_OFFSET_BITS | start * b->page_size;
}

static int grow_link(struct vc_books *b, int64_t ident)
{
    if (ident < b->link_len)
        return 0;
    int64_t room = b->link_len;
    while (room <= ident)
        room += b->link_len / 16 > 64 ? b->link_len / 16 : 64;
    int32_t *moved = realloc(b->link, (size_t)room * sizeof *moved);
    if (moved == NULL)
        return -ENOMEM;
    for (int64_t i = b->link_len; i < room; i++)
        moved[i] = NONE;
    b->link = moved;
    b->link_len = room;
    return 0;
}

static int64_t allocate_small(struct vc_books *b, int64_t klass, int64_t nbytes, int64_t ident,
                              int64_t *need, int32_t *lost, int64_t cap, int64_t *nlost)
{
    int64_t size = b->classes[klass], index, page, length;
    struct vc_slab *s;
    if (grow_link(b, ident) < 0)
        return -ENOMEM;
    struct vc_stack *st = &b->stacks[klass];
    if (grow((void **)&st->items, &st->cap, st->len + 1, sizeof *st->items) < 0)
        return -ENOMEM; /* room for the push below, before anything changes */
    if (!find_vacancy(b, klass, &index, &page)) {
        if (!find_run(b, 1, &index, &page, &length)) {
            need[0] = b->slab_pages;
            return VC_NEED_SLAB;
        }
        s = &b->slabs[index];
        if (s->state[page] & VC_PAGE_VOLATILE) {
            need[0] = index, need[1] = page, need[2] = 1;
            return VC_NEED_REPIN;
        }
        split_run(b, index, s, page, length, 1);
        activate_pages(b, s, page, 1, NULL);
        s->klass[page] = (uint8_t)(klass + 1);
        s->mask[page] = 0;
        s->active[page] = 0;
        s->owner[page] = NONE;
        s->state[page] |= VC_PAGE_USED;
        push_vacancy(b, klass, index, s, page);
    } else {
        s = &b->slabs[index];
        if (s->active[page] == 0) {
            if (s->state[page] & VC_PAGE_VOLATILE) {
                need[0] = index, need[1] = page, need[2] = 1;
                return VC_NEED_REPIN;
            }
            if (s->nlost && (s->state[page] & VC_PAGE_LOST)) {
                long n = chain_ids(b, s, page, lost, cap);
                if (n < 0)
                    return n; /* nothing changed yet */
                *nlost = n;
            }
            activate_pages(b, s, page, 1, NULL);
        }
    }
    uint64_t taken = s->mask[page];
    uint64_t vacant = ~taken & b->full[klass];
    int slot = __builtin_ctzll(vacant);
    taken |= (uint64_t)1 << slot;
    s->mask[page] = taken;
    if (taken == b->full[klass]) {
        st->len--; /* the page used is the stack's top */
        s->state[page] &= (uint8_t)~VC_PAGE_INSTACK;
    }
    s->active[page]++;
    b->link[ident] = s->owner[page];
    s->owner[page] = (int32_t)ident;
    count_in(b, nbytes, size);
    return index << VC_OFFSET_BITS | (page * b->page_size + slot * size);
}

int64_t vc_books_allocate(struct vc_books *b, int64_t nbytes, int64_t ident, int64_t *need,
                          int32_t *lost, int64_t cap, int64_t *nlost)
{
    *nlost = 0;
    if (nbytes <= 0 || nbytes > VC_MAX_ENTRY || ident < 0 || ident > INT32_MAX)
        return -EINVAL;
    if (reserve_runs(b) < 0)
        return -ENOMEM;
    if (nbytes > b->classes[b->nclasses - 1])
        return allocate_large(b, nbytes, ident, need);
    int64_t klass = 0;
    while (b->classes[klass] < nbytes)
        klass++;
    return allocate_small(b, klass, nbytes, ident, need, lost, cap, nlost);
}

/* A page and its slab for a loc, or NULL. */
static struct vc_slab *locate(struct vc_books *b, int64_t loc, int64_t *index, int64_t *page)
{
    if (loc < 0)
        return NULL;
    *index = loc >> VC_OFFSET_BITS;
    struct vc_slab *s = slab_at(b, *index);
    if (s == NULL)
        return NULL;
    *page = (loc & OFFSET_MASK) / b->page_size;
    return *page < s->npages ? s : NULL;
}

static long give_run(struct vc_books *b, int64_t index, struct vc_slab *s, int64_t first,
                     int64_t npages)
{
    int64_t stop = first + npages;
    idle_pages(b, s, first, npages);
    if (first > 0 && run_first(s, first - 1) != NONE) {
        int64_t before = run_first(s, first - 1);
        unlink_run(b, s, before, first - before);
        first = before;
    }
    if (stop < s->npages && run_length(s, stop)) {
        int64_t after = run_length(s, stop);
        unlink_run(b, s, stop, after);
        stop += after;
    }
    link_run(b, index, s, first, stop - first);
    return stop - first == s->npages ? index : -1;
}

/* Whether (loc, nbytes) is an entry's place as allocate gave it: a taken slot
 * of a shared page (nbytes up to its class), or the first page of a large
 * entry's pages, all of them, for nbytes. The calls below refuse anything
 * else: a wrong length or loc would walk into a neighbour's pages. */
static int entry_span(struct vc_books *b, struct vc_slab *s, int64_t loc, int64_t page,
                      int64_t nbytes, int64_t *npages)
{
    int64_t offset = loc & OFFSET_MASK, ps = b->page_size;
    if (nbytes <= 0 || !(s->state[page] & VC_PAGE_USED))
        return 0;
    if (s->klass[page]) {
        int64_t size = b->classes[s->klass[page] - 1], within = offset - page * ps;
        *npages = 1;
        return within % size == 0 && nbytes <= size
               && (s->mask[page] >> (within / size) & 1);
    }
    if (offset % ps != 0 || nbytes > (s->npages - page) * ps)
        return 0;
    *npages = ceil_div(nbytes, ps);
    int32_t owner = s->owner[page];
    if (page > 0 && s->owner[page - 1] == owner && !s->klass[page - 1]
        && (s->state[page - 1] & VC_PAGE_USED))
        return 0; /* not the entry's first page */
    for (int64_t p = page; p < page + *npages; p++)
        if (s->owner[p] != owner || s->klass[p] || !(s->state[p] & VC_PAGE_USED))
            return 0;
    int64_t after = page + *npages;
    return after == s->npages || s->owner[after] != owner || s->klass[after]
           || !(s->state[after] & VC_PAGE_USED); /* all of its pages */
}

long vc_books_deactivate(struct vc_books *b, int64_t loc, int64_t nbytes)
{
    int64_t index, page, npages;
    struct vc_slab *s = locate(b, loc, &index, &page);
    if (s == NULL || !entry_span(b, s, loc, page, nbytes, &npages))
        return -EINVAL;
    if (s->klass[page]) {
        if (s->active[page] == 0)
            return -EINVAL;
        if (--s->active[page] == 0)
            idle_pages(b, s, page, 1);
        return 0;
    }
    idle_pages(b, s, page, npages);
    return 0;
}

static long free_entry(struct vc_books *b, int64_t loc, int64_t nbytes, int64_t ident, int active);

long vc_books_free_entry(struct vc_books *b, int64_t loc, int64_t nbytes, int64_t ident, int active)
{
    long empty = free_entry(b, loc, nbytes, ident, active);
    if (empty >= -1 && b->count == 0) { /* no entry left: no link either */
        free(b->link);
        b->link = NULL;
        b->link_len = 0;
    }
    return empty;
}

static long free_entry(struct vc_books *b, int64_t loc, int64_t nbytes, int64_t ident, int active)
{
    int64_t index, page, span;
    struct vc_slab *s = locate(b, loc, &index, &page);
    if (s == NULL || ident < 0 || !entry_span(b, s, loc, page, nbytes, &span))
        return -EINVAL;
    int64_t klass = (int64_t)s->klass[page] - 1, ps = b->page_size;
    if (klass >= 0) {
        int found = 0;
        for (int64_t id = s->owner[page]; id != NONE; id = b->link[id])
            if (id == ident) {
                found = 1;
                break;
            }
        if (!found)
            return -EINVAL;
    } else if (s->owner[page] != ident) {
        return -EINVAL;
    }
    if (reserve_runs(b) < 0)
        return -ENOMEM;
    if (active) {
        long r = vc_books_deactivate(b, loc, nbytes);
        if (r < 0)
            return r;
    }
    b->stored_bytes -= nbytes;
    b->capacity_bytes -= klass >= 0 ? b->classes[klass] : ceil_div(nbytes, ps) * ps;
    b->count--;
    if (klass < 0) {
        int64_t npages = ceil_div(nbytes, ps);
        for (int64_t p = page; p < page + npages; p++) {
            s->owner[p] = NONE;
            s->state[p] &= (uint8_t)~VC_PAGE_USED;
        }
        return give_run(b, index, s, page, npages);
    }
    int64_t slot = ((loc & OFFSET_MASK) - page * ps) / b->classes[klass];
    uint64_t taken = s->mask[page] & ~((uint64_t)1 << slot);
    s->mask[page] = taken;
    /* Unchain. */
    if (s->owner[page] == ident) {
        s->owner[page] = b->link[ident];
    } else {
        int64_t current = s->owner[page];
        while (b->link[current] != ident)
            current = b->link[current];
        b->link[current] = b->link[ident];
    }
    if (taken == 0) {
        s->klass[page] = 0;
        s->state[page] &= (uint8_t)~(VC_PAGE_USED | VC_PAGE_INSTACK);
        return give_run(b, index, s, page, 1);
    }
    if (!(s->state[page] & VC_PAGE_INSTACK) && push_vacancy(b, klass, index, s, page) < 0)
        return -ENOMEM; /* the entry is freed; the page is found again when freed or rebuilt */
    return -1;
}

long vc_books_activate(struct vc_books *b, int64_t loc, int64_t nbytes, int64_t *need,
                       int32_t *lost, int64_t cap, int64_t *nlost)
{
    int64_t index, page, span;
    *nlost = 0;
    struct vc_slab *s = locate(b, loc, &index, &page);
    if (s == NULL || !entry_span(b, s, loc, page, nbytes, &span))
        return -EINVAL;
    if (s->klass[page]) {
        if (s->active[page] == 0) {
            if (s->state[page] & VC_PAGE_VOLATILE) {
                need[0] = index, need[1] = page, need[2] = 1;
                return VC_NEED_REPIN;
            }
            if (s->nlost && (s->state[page] & VC_PAGE_LOST)) {
                long n = chain_ids(b, s, page, lost, cap);
                if (n < 0)
                    return n;
                *nlost = n;
            }
            activate_pages(b, s, page, 1, NULL);
        }
        if (s->active[page] == UINT16_MAX)
            return -EOVERFLOW;
        s->active[page]++;
        return 0;
    }
    int64_t npages = span;
    if (any_volatile(s, page, page + npages)) {
        need[0] = index, need[1] = page, need[2] = npages;
        return VC_NEED_REPIN;
    }
    int64_t found = 0;
    activate_pages(b, s, page, npages, &found);
    if (found) {
        if (cap < 1)
            return -ENOBUFS;
        lost[0] = s->owner[page];
        *nlost = 1;
    }
    return 0;
}

/* -- what the allocator tells the books -------------------------------------- */

long vc_books_has_lost(struct vc_books *b, int64_t index)
{
    struct vc_slab *s = slab_at(b, index);
    return s == NULL ? -EINVAL : s->nlost > 0;
}

long vc_books_lost_in(struct vc_books *b, int64_t loc, int64_t nbytes)
{
    int64_t index, page;
    struct vc_slab *s = locate(b, loc, &index, &page);
    if (s == NULL || nbytes <= 0)
        return -EINVAL;
    if (!s->nlost)
        return 0;
    int64_t stop = ((loc & OFFSET_MASK) + nbytes - 1) / b->page_size + 1;
    if (stop > s->npages)
        stop = s->npages;
    for (int64_t p = page; p < stop; p++)
        if (s->state[p] & VC_PAGE_LOST)
            return 1;
    return 0;
}

static struct vc_slab *span(struct vc_books *b, int64_t index, int64_t first, int64_t npages)
{
    struct vc_slab *s = slab_at(b, index);
    if (s == NULL || first < 0 || npages < 0 || first + npages > s->npages)
        return NULL;
    return s;
}

long vc_books_take_pending(struct vc_books *b, int64_t index, int64_t first, int64_t npages,
                           int64_t *low, int64_t *high)
{
    struct vc_slab *s = span(b, index, first, npages);
    if (s == NULL)
        return -EINVAL;
    int64_t taken = 0;
    int found = 0;
    *low = *high = first;
    for (int64_t p = first; p < first + npages; p++) {
        if (s->state[p] & VC_PAGE_PENDING) {
            s->state[p] &= (uint8_t)~VC_PAGE_PENDING;
            taken++;
        }
        if (s->state[p] & VC_PAGE_VOLATILE) {
            if (!found)
                *low = p;
            found = 1;
            *high = p + 1;
        }
    }
    s->npending -= taken;
    b->npending -= taken;
    return 0;
}

long vc_books_repinned(struct vc_books *b, int64_t index, int64_t first, int64_t count,
                       const int64_t *purged, int64_t npurged)
{
    struct vc_slab *s = span(b, index, first, count);
    if (s == NULL || npurged < 0)
        return -EINVAL;
    for (int64_t i = 0; i < npurged; i++)
        if (purged[i] < 0 || purged[i] >= s->npages)
            return -EINVAL;
    for (int64_t p = first; p < first + count; p++)
        s->state[p] &= (uint8_t)~VC_PAGE_VOLATILE;
    for (int64_t i = 0; i < npurged; i++) {
        if (!(s->state[purged[i]] & VC_PAGE_LOST)) {
            s->state[purged[i]] |= VC_PAGE_LOST;
            s->nlost++;
        }
    }
    return 0;
}

long vc_books_restore_pending(struct vc_books *b, int64_t index, int64_t first, int64_t npages)
{
    struct vc_slab *s = span(b, index, first, npages);
    if (s == NULL)
        return -EINVAL;
    int64_t added = 0;
    for (int64_t p = first; p < first + npages; p++) {
        int was = (s->state[p] & VC_PAGE_PENDING) != 0;
        int now = !(s->state[p] & VC_PAGE_VOLATILE);
        if (now)
            s->state[p] |= VC_PAGE_PENDING;
        else
            s->state[p] &= (uint8_t)~VC_PAGE_PENDING;
        added += now - was;
    }
    s->npending += added;
    b->npending += added;
    return 0;
}

long vc_books_next_pending(struct vc_books *b, int64_t *index, int64_t *first, int64_t *stop)
{
    for (int64_t i = *index < 0 ? 0 : *index; i < b->nslabs; i++) {
        struct vc_slab *s = &b->slabs[i];
        if (s->npages == 0 || !s->npending)
            continue;
        int64_t p = i == *index ? *first : 0;
        while (p < s->npages && !(s->state[p] & VC_PAGE_PENDING))
            p++;
        if (p == s->npages)
            continue;
        int64_t q = p;
        while (q < s->npages && (s->state[q] & VC_PAGE_PENDING))
            q++;
        *index = i, *first = p, *stop = q;
        return 1;
    }
    return 0;
}

long vc_books_marked(struct vc_books *b, int64_t index, int64_t first, int64_t count)
{
    struct vc_slab *s = span(b, index, first, count);
    if (s == NULL)
        return -EINVAL;
    int64_t taken = 0;
    for (int64_t p = first; p < first + count; p++) {
        if (s->state[p] & VC_PAGE_PENDING)
            taken++;
        s->state[p] = (uint8_t)((s->state[p] & ~VC_PAGE_PENDING) | VC_PAGE_VOLATILE);
    }
    s->npending -= taken;
    b->npending -= taken;
    return 0;
}

long vc_books_has_volatile(struct vc_books *b, int64_t index)
{
    struct vc_slab *s = slab_at(b, index);
    if (s == NULL)
        return -EINVAL;
    return any_volatile(s, 0, s->npages);
}

long vc_books_ids_on(struct vc_books *b, int64_t index, const int64_t *pages, int64_t npages,
                     int32_t *out, int64_t cap)
{
    struct vc_slab *s = slab_at(b, index);
    if (s == NULL)
        return -EINVAL;
    long n = 0;
    int64_t last_owner = NONE;
    for (int64_t i = 0; i < npages; i++) {
        int64_t page = pages[i];
        if (page < 0 || page >= s->npages)
            return -EINVAL;
        uint8_t state = s->state[page];
        if (!(state & VC_PAGE_VOLATILE) || !(state & VC_PAGE_USED) || (i > 0 && pages[i - 1] == page))
            continue;
        if (s->klass[page]) {
            long got = chain_ids(b, s, page, out + n, cap - n);
            if (got < 0)
                return got;
            n += got;
        } else if (s->owner[page] != last_owner) { /* pages sorted: one entry's are together */
            if (n >= cap)
                return -ENOBUFS;
            out[n++] = s->owner[page];
            last_owner = s->owner[page];
        }
    }
    return n;
}

long vc_books_page_counts(struct vc_books *b, int64_t *total, int64_t *used, int64_t *vol)
{
    *total = *used = *vol = 0;
    for (int64_t i = 0; i < b->nslabs; i++) {
        struct vc_slab *s = &b->slabs[i];
        *total += s->npages;
        for (int64_t p = 0; p < s->npages; p++) {
            if (s->state[p] & VC_PAGE_USED) {
                ++*used;
                if (s->state[p] & VC_PAGE_VOLATILE)
                    ++*vol;
            }
        }
    }
    return 0;
}
