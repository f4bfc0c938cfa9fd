/* The store's record table: see table.h for the nouns and their invariants,
 * and volcache/records.py, the reference these functions follow. Every
 * function returns a count, an id, or -errno; none aborts or prints. */

#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "table.h"

/* Under AddressSanitizer the parts of the mapping that hold nothing (each
 * column past size, the buckets past 1 << bits) are poisoned, so that a read
 * or write past them is caught: the mapping itself is all valid memory to it. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(addr, n) ASAN_POISON_MEMORY_REGION(addr, n)
#define UNPOISON(addr, n) ASAN_UNPOISON_MEMORY_REGION(addr, n)
#else
#define POISON(addr, n) ((void)(addr), (void)(n))
#define UNPOISON(addr, n) ((void)(addr), (void)(n))
#endif

#define MULTIPLIER 0x9E3779B1u /* Fibonacci hashing: a bucket is the product's high bits */

static uint32_t *hash_of(struct vc_table *t) { return (uint32_t *)((char *)t + t->off_hash); }
static int64_t *loc_of(struct vc_table *t) { return (int64_t *)((char *)t + t->off_loc); }
static uint32_t *length_of(struct vc_table *t) { return (uint32_t *)((char *)t + t->off_length); }
static uint8_t *flags_of(struct vc_table *t) { return (uint8_t *)((char *)t + t->off_flags); }
static int32_t *chain_of(struct vc_table *t) { return (int32_t *)((char *)t + t->off_chain); }
static int32_t *prev_of(struct vc_table *t) { return (int32_t *)((char *)t + t->off_prev); }
static int32_t *next_of(struct vc_table *t) { return (int32_t *)((char *)t + t->off_next); }
static int64_t *used_of(struct vc_table *t) { return (int64_t *)((char *)t + t->off_used); }
static int32_t *heads_of(struct vc_table *t) { return (int32_t *)((char *)t + t->off_heads); }

#define NCOLUMNS 8
static const int64_t itemsizes[NCOLUMNS] = {4, 8, 4, 1, 4, 4, 4, 8};

static char *column(struct vc_table *t, int i)
{
    const int64_t offsets[NCOLUMNS] = {t->off_hash, t->off_loc, t->off_length, t->off_flags,
                                       t->off_chain, t->off_prev, t->off_next, t->off_used};
    return (char *)t + offsets[i];
}

/* Ids [from, to) hold something now (to > from) or nothing any more. */
static void expose_ids(struct vc_table *t, int64_t from, int64_t to, int exposed)
{
    for (int i = 0; i < NCOLUMNS; i++) {
        char *start = column(t, i) + from * itemsizes[i];
        if (exposed)
            UNPOISON(start, (to - from) * itemsizes[i]);
        else
            POISON(start, (to - from) * itemsizes[i]);
    }
}

static int64_t page_up(int64_t n)
{
    int64_t page = sysconf(_SC_PAGESIZE);
    return (n + page - 1) / page * page;
}

static int bits_for(int64_t n)
{
    int bits = 0;
    while (((int64_t)1 << bits) < n)
        bits++;
    return bits;
}

/* The layout of a table of max_records: fills the offsets, returns the bytes. */
/* Columns are packed (each on a 64-byte line of its own), so that a small
 * table takes a page or two, not a page a column. */
static int64_t line_up(int64_t n)
{
    return (n + 63) / 64 * 64;
}

static int64_t layout(struct vc_table *t, int64_t max_records)
{
    int64_t off = line_up(sizeof(struct vc_table));

#define COLUMN(field, itemsize)                 \
    do {                                        \
        t->field = off;                         \
        off += line_up(max_records * (itemsize)); \
    } while (0)
    COLUMN(off_hash, 4);
    COLUMN(off_loc, 8);
    COLUMN(off_length, 4);
    COLUMN(off_flags, 1);
    COLUMN(off_chain, 4);
    COLUMN(off_prev, 4);
    COLUMN(off_next, 4);
    COLUMN(off_used, 8);
#undef COLUMN
    /* The index grows while indexed >= 2 << bits: at most max_records / 2 buckets. */
    t->max_bits = bits_for(max_records / 2 > (1 << VC_MIN_BITS) ? max_records / 2 : 1 << VC_MIN_BITS);
    t->off_heads = off;
    off += line_up(((int64_t)4) << t->max_bits);
    return page_up(off);
}

long vc_table_bytes(int64_t max_records)
{
    struct vc_table t;

    if (max_records < 1 || max_records > INT32_MAX)
        return -EINVAL;
    return layout(&t, max_records);
}

/* An id the table has given out and not taken back (its flags are its owner's:
 * the store clears them before it deletes a record, so a freed id is told by
 * its loc). */
static int valid(struct vc_table *t, int64_t rid)
{
    return t->magic == VC_TABLE_MAGIC && rid >= 0 && rid < t->size &&
           loc_of(t)[rid] != VC_FREED_LOC;
}

static uint32_t bucket(struct vc_table *t, uint32_t h)
{
    return (uint32_t)(h * MULTIPLIER) >> (32 - t->bits);
}

static void fill_heads(struct vc_table *t, int64_t from, int64_t to)
{
    int32_t *heads = heads_of(t);
    for (int64_t i = from; i < to; i++)
        heads[i] = VC_NONE;
}

/* The buckets in use are the first 1 << bits. */
static void set_bits(struct vc_table *t, int64_t bits)
{
    int32_t *heads = heads_of(t);
    POISON(heads, ((int64_t)4) << t->max_bits);
    UNPOISON(heads, ((int64_t)4) << bits);
    t->bits = bits;
}

long vc_table_init(struct vc_table *t, int64_t total, int64_t max_records, int exact)
{
    struct vc_table shape;

    if (max_records < 1 || max_records > INT32_MAX || layout(&shape, max_records) != total)
        return -EINVAL;
    memcpy(t, &shape, sizeof shape);
    t->magic = VC_TABLE_MAGIC;
    t->max_records = max_records;
    t->exact = exact != 0;
    t->size = t->count = t->listed = t->indexed = t->hand = 0;
    t->free_id = t->head = t->tail = t->demoted_head = t->demoted_tail = VC_NONE;
    t->bits = VC_MIN_BITS;
    t->total = total;
    expose_ids(t, 0, max_records, 0);
    set_bits(t, VC_MIN_BITS);
    fill_heads(t, 0, (int64_t)1 << t->bits);
    return 0;
}

long vc_table_grow(struct vc_table *t, int64_t total, int64_t max_records,
                   const struct vc_table *from)
{
    long err;

    if (from->magic != VC_TABLE_MAGIC || max_records < from->size)
        return -EINVAL;
    if ((err = vc_table_init(t, total, max_records, (int)from->exact)) < 0)
        return err;
    t->size = from->size;
    t->count = from->count;
    t->listed = from->listed;
    t->indexed = from->indexed;
    t->free_id = from->free_id;
    t->head = from->head;
    t->tail = from->tail;
    t->demoted_head = from->demoted_head;
    t->demoted_tail = from->demoted_tail;
    t->hand = from->hand;
    expose_ids(t, 0, t->size, 1);
    for (int i = 0; i < NCOLUMNS; i++) /* a CLOCK table's last three are untouched */
        if (t->exact || i < NCOLUMNS - 3)
            memcpy(column(t, i), column((struct vc_table *)from, i), t->size * itemsizes[i]);
    set_bits(t, from->bits); /* the same buckets: a bucket depends on bits only */
    memcpy(heads_of(t), heads_of((struct vc_table *)from), ((int64_t)4) << from->bits);
    return 0;
}

long vc_table_release(struct vc_table *t)
{
    /* The mapping is about to go: nothing of it stays poisoned for what comes there next. */
    UNPOISON(t, t->total);
    return 0;
}

/* Zero n bytes at p, the whole pages among them by giving them back to the
 * kernel (private anonymous memory reads as zeros again after DONTNEED). */
static void give_back(char *p, int64_t n)
{
    int64_t page = sysconf(_SC_PAGESIZE);
    char *first = (char *)(((uintptr_t)p + page - 1) / page * page);
    char *end = (char *)(((uintptr_t)(p + n)) / page * page);

    if (end <= first || madvise(first, end - first, MADV_DONTNEED) != 0) {
        memset(p, 0, n);
        return;
    }
    memset(p, 0, first - p);
    memset(end, 0, p + n - end);
}

long vc_table_resident(struct vc_table *t)
{
    /* The pages any part in use touches: the header, each column's first size
     * items, the buckets in use; in order of offset, so a page shared by two
     * parts counts once. */
    int64_t page = sysconf(_SC_PAGESIZE), pages = 1, last = 0; /* page 0: the header */
    int64_t starts[NCOLUMNS + 1], ends[NCOLUMNS + 1];

    for (int i = 0; i < NCOLUMNS; i++) {
        int used = t->exact || i < NCOLUMNS - 3; /* a CLOCK table's links: untouched */
        starts[i] = column(t, i) - (char *)t;
        ends[i] = starts[i] + (used ? t->size * itemsizes[i] : 0);
    }
    starts[NCOLUMNS] = t->off_heads;
    ends[NCOLUMNS] = t->off_heads + (((int64_t)4) << t->bits);
    for (int i = 0; i <= NCOLUMNS; i++) {
        int64_t first, end;
        if (ends[i] <= starts[i])
            continue;
        first = starts[i] / page;
        end = (ends[i] - 1) / page;
        if (first <= last)
            first = last + 1;
        if (end >= first)
            pages += end - first + 1;
        if (end > last)
            last = end;
    }
    return pages * page;
}

/* Empty: the columns go back to the kernel (they read as zeros again). */
static void reset(struct vc_table *t)
{
    int64_t size = t->size;

    for (int i = 0; i < NCOLUMNS; i++)
        give_back(column(t, i), size * itemsizes[i]);
    expose_ids(t, 0, size, 0);
    t->size = t->listed = t->hand = 0;
    t->free_id = t->head = t->tail = t->demoted_head = t->demoted_tail = VC_NONE;
}

long vc_rec_get(const struct vc_table *t, int64_t rid, int64_t *loc, uint32_t *length,
                uint8_t *flags)
{
    if (!valid((struct vc_table *)t, rid))
        return -EINVAL;
    *loc = loc_of((struct vc_table *)t)[rid];
    *length = length_of((struct vc_table *)t)[rid];
    *flags = flags_of((struct vc_table *)t)[rid];
    return 0;
}

long vc_rec_clear_flags(struct vc_table *t, int64_t rid, uint32_t bits)
{
    /* Only the owner's flags: the index's and the order's are the table's to keep. */
    if (!valid(t, rid) || (bits & ~(uint32_t)(VC_ACTIVE | VC_OBJECT | VC_KEPT)))
        return -EINVAL;
    flags_of(t)[rid] &= (uint8_t)~bits;
    return 0;
}

long vc_rec_next_id(const struct vc_table *t)
{
    if (t->magic != VC_TABLE_MAGIC)
        return -EINVAL;
    if (t->free_id != VC_NONE)
        return t->free_id;
    return t->size < t->max_records ? t->size : -ENOSPC;
}

long vc_rec_new(struct vc_table *t, uint32_t h, int64_t loc, uint32_t length, uint32_t flags)
{
    int64_t rid = t->free_id;

    if (t->magic != VC_TABLE_MAGIC || flags > 255)
        return -EINVAL;
    if (rid == VC_NONE) {
        if (t->size >= t->max_records)
            return -ENOSPC;
        rid = t->size++;
        expose_ids(t, rid, rid + 1, 1);
        if (t->exact) { /* a CLOCK table leaves those columns alone: no page of them */
            prev_of(t)[rid] = next_of(t)[rid] = VC_NONE;
            used_of(t)[rid] = 0;
        }
    } else { /* its links are NONE since it was unlisted; its stamp is stale, unread */
        t->free_id = chain_of(t)[rid];
    }
    hash_of(t)[rid] = h;
    loc_of(t)[rid] = loc;
    length_of(t)[rid] = length;
    flags_of(t)[rid] = (uint8_t)flags;
    chain_of(t)[rid] = VC_NONE;
    t->count++;
    return rid;
}

static void resize(struct vc_table *t, int64_t bits)
{
    int32_t *heads = heads_of(t), *chain = chain_of(t);
    const uint8_t *flags = flags_of(t);
    const uint32_t *hashes = hash_of(t);

    set_bits(t, bits);
    fill_heads(t, 0, (int64_t)1 << bits);
    for (int64_t rid = 0; rid < t->size; rid++) {
        if (flags[rid] & VC_INDEXED) {
            uint32_t b = bucket(t, hashes[rid]);
            chain[rid] = heads[b];
            heads[b] = (int32_t)rid;
        }
    }
}

long vc_rec_index(struct vc_table *t, int64_t rid)
{
    int32_t *heads, *chain;
    uint32_t b;

    if (!valid(t, rid) || flags_of(t)[rid] & VC_INDEXED)
        return -EINVAL;
    if (t->indexed >= (int64_t)2 << t->bits && t->bits < t->max_bits)
        resize(t, t->bits + 1);
    heads = heads_of(t);
    chain = chain_of(t);
    b = bucket(t, hash_of(t)[rid]);
    chain[rid] = heads[b];
    heads[b] = (int32_t)rid;
    t->indexed++;
    flags_of(t)[rid] |= VC_INDEXED;
    return 0;
}

long vc_rec_unindex(struct vc_table *t, int64_t rid)
{
    int32_t *heads, *chain;
    int32_t current;
    uint32_t b;

    if (!valid(t, rid) || !(flags_of(t)[rid] & VC_INDEXED))
        return -EINVAL;
    heads = heads_of(t);
    chain = chain_of(t);
    b = bucket(t, hash_of(t)[rid]);
    current = heads[b];
    if (current == rid) {
        heads[b] = chain[rid];
    } else {
        while (current != VC_NONE && chain[current] != rid)
            current = chain[current];
        if (current == VC_NONE)
            return -EFAULT; /* not in its bucket: the invariant is broken */
        chain[current] = chain[rid];
    }
    chain[rid] = VC_NONE;
    t->indexed--;
    flags_of(t)[rid] &= ~VC_INDEXED;
    if (t->bits > VC_MIN_BITS && t->indexed * 2 < ((int64_t)1 << t->bits))
        resize(t, t->bits - 1);
    return 0;
}

long vc_rec_head_of(struct vc_table *t, uint32_t h)
{
    int32_t rid = heads_of(t)[bucket(t, h)];
    return rid == VC_NONE ? -ENOENT : rid;
}

long vc_rec_first_of(struct vc_table *t, uint32_t h, uint8_t mask, uint8_t want)
{
    const uint32_t *hashes = hash_of(t);
    const uint8_t *flags = flags_of(t);
    const int32_t *chain = chain_of(t);

    for (int32_t rid = heads_of(t)[bucket(t, h)]; rid != VC_NONE; rid = chain[rid])
        if (hashes[rid] == h && (flags[rid] & mask) == want)
            return rid;
    return -ENOENT;
}

long vc_rec_candidates(struct vc_table *t, uint32_t h, int32_t *out, size_t cap)
{
    const uint32_t *hashes = hash_of(t);
    const int32_t *chain = chain_of(t);
    size_t found = 0;

    for (int32_t rid = heads_of(t)[bucket(t, h)]; rid != VC_NONE; rid = chain[rid]) {
        if (hashes[rid] == h) {
            if (found < cap)
                out[found] = rid;
            found++;
        }
    }
    return (long)found; /* more than cap: call again with room for them all */
}

static void link_after(struct vc_table *t, int64_t rid, int64_t before, int64_t *first,
                       int64_t *last)
{
    int32_t *prev = prev_of(t), *next = next_of(t);
    int64_t after = before == VC_NONE ? *first : next[before];

    prev[rid] = (int32_t)before;
    next[rid] = (int32_t)after;
    if (before == VC_NONE)
        *first = rid;
    else
        next[before] = (int32_t)rid;
    if (after == VC_NONE)
        *last = rid;
    else
        prev[after] = (int32_t)rid;
}

long vc_rec_append(struct vc_table *t, int64_t rid, int64_t stamp)
{
    if (!valid(t, rid) || flags_of(t)[rid] & VC_LISTED)
        return -EINVAL;
    if (t->exact) {
        used_of(t)[rid] = stamp;
        link_after(t, rid, t->tail, &t->head, &t->tail);
    }
    flags_of(t)[rid] |= VC_LISTED | VC_REFERENCED;
    t->listed++;
    return 0;
}

long vc_rec_place(struct vc_table *t, int64_t rid, int64_t used)
{
    const int32_t *prev = prev_of(t);
    const int64_t *stamps = used_of(t);
    int64_t before;

    if (!t->exact)
        return vc_rec_append(t, rid, used);
    if (!valid(t, rid) || flags_of(t)[rid] & VC_LISTED)
        return -EINVAL;
    used_of(t)[rid] = used;
    /* From the tail: the oldest hot entry is demoted first, so it goes last. */
    before = t->demoted_tail;
    while (before != VC_NONE && stamps[before] > used)
        before = prev[before];
    link_after(t, rid, before, &t->demoted_head, &t->demoted_tail);
    flags_of(t)[rid] |= VC_LISTED | VC_REFERENCED | VC_DEMOTED;
    t->listed++;
    return 0;
}

long vc_rec_unlist(struct vc_table *t, int64_t rid)
{
    uint8_t *flags = flags_of(t);

    if (!valid(t, rid) || !(flags[rid] & VC_LISTED))
        return -EINVAL;
    if (t->exact) {
        int32_t *prev = prev_of(t), *next = next_of(t);
        int64_t before = prev[rid], after = next[rid];
        int64_t *first = flags[rid] & VC_DEMOTED ? &t->demoted_head : &t->head;
        int64_t *last = flags[rid] & VC_DEMOTED ? &t->demoted_tail : &t->tail;

        if (before == VC_NONE)
            *first = after;
        else
            next[before] = (int32_t)after;
        if (after == VC_NONE)
            *last = before;
        else
            prev[after] = (int32_t)before;
        prev[rid] = next[rid] = VC_NONE;
    }
    flags[rid] &= ~(VC_LISTED | VC_REFERENCED | VC_DEMOTED);
    t->listed--;
    return 0;
}

long vc_rec_touch(struct vc_table *t, int64_t rid, int64_t stamp)
{
    uint8_t *flags = flags_of(t);
    long err;

    if (!valid(t, rid) || !(flags[rid] & VC_LISTED))
        return -EINVAL;
    if (!t->exact) {
        flags[rid] |= VC_REFERENCED;
        return 0;
    }
    if (t->tail == rid && !(flags[rid] & VC_DEMOTED)) {
        used_of(t)[rid] = stamp; /* last already, but used after hot hits since */
        return 0;
    }
    err = vc_rec_unlist(t, rid);
    return err < 0 ? err : vc_rec_append(t, rid, stamp);
}

long vc_rec_oldest_use(struct vc_table *t, int64_t *used)
{
    const int64_t *stamps = used_of(t);
    int64_t first = t->head, demoted = t->demoted_head, rid;

    if (!t->exact)
        return -EINVAL;
    if (demoted == VC_NONE || (first != VC_NONE && stamps[first] < stamps[demoted]))
        rid = first;
    else
        rid = demoted;
    if (rid == VC_NONE)
        return -ENOENT;
    *used = stamps[rid];
    return rid;
}

long vc_rec_victim(struct vc_table *t)
{
    uint8_t *flags = flags_of(t);
    int64_t n = t->size, hand = t->hand;

    if (t->exact) {
        int64_t used;
        return vc_rec_oldest_use(t, &used);
    }
    if (t->listed == 0)
        return -ENOENT;
    for (int64_t step = 0; step < 2 * n + 1; step++) { /* a whole turn clears every bit */
        if (hand >= n)
            hand = 0;
        if (flags[hand] & VC_LISTED) {
            if (!(flags[hand] & VC_REFERENCED)) {
                t->hand = hand;
                return hand;
            }
            flags[hand] &= ~VC_REFERENCED;
        }
        hand++;
    }
    return -EFAULT; /* listed records but none found: the invariant is broken */
}

long vc_rec_listed(struct vc_table *t, int32_t *out, size_t cap)
{
    size_t found = 0;

    if (t->exact) { /* the two lists merged by their stamps */
        const int32_t *next = next_of(t);
        const int64_t *stamps = used_of(t);
        int64_t a = t->head, b = t->demoted_head;
        while (a != VC_NONE || b != VC_NONE) {
            int64_t rid;
            if (b == VC_NONE || (a != VC_NONE && stamps[a] <= stamps[b])) {
                rid = a;
                a = next[a];
            } else {
                rid = b;
                b = next[b];
            }
            if (found < cap)
                out[found] = (int32_t)rid;
            found++;
        }
    } else {
        const uint8_t *flags = flags_of(t);
        for (int64_t rid = 0; rid < t->size; rid++) {
            if (flags[rid] & VC_LISTED) {
                if (found < cap)
                    out[found] = (int32_t)rid;
                found++;
            }
        }
    }
    return (long)found;
}

long vc_rec_delete(struct vc_table *t, int64_t rid)
{
    uint8_t *flags = flags_of(t);
    long err;

    if (!valid(t, rid))
        return -EINVAL;
    if (flags[rid] & VC_INDEXED && (err = vc_rec_unindex(t, rid)) < 0)
        return err;
    if (flags[rid] & VC_LISTED && (err = vc_rec_unlist(t, rid)) < 0)
        return err;
    flags[rid] = 0;
    loc_of(t)[rid] = VC_FREED_LOC;
    chain_of(t)[rid] = (int32_t)t->free_id;
    t->free_id = rid;
    if (--t->count == 0)
        reset(t);
    return 0;
}
