/* The store's record table: the nouns, their fields and invariants.
 *
 * A *record* is what the cache keeps of an entry that nothing in Python holds:
 * a few integers in columns indexed by its *record id* (rid), never a Python
 * object. A *table* is one mapping: a header, then one column per field, then
 * the hash index's bucket heads. Every link (a bucket's chain, a recency list,
 * the free ids) is a record id, and every column is found by its offset from
 * the header, so that the same bytes mean the same table wherever they are
 * mapped (a shared memory segment mapped at different addresses, one day).
 *
 * Invariants (checked by the differential tests against records.py, which is
 * the reference this file follows line by line):
 *  - 0 <= rid < size for every id in use; size <= max_records; ids at and
 *    past size are all-zero; count = ids in use (given out by vc_rec_new and
 *    not deleted since). Its owner sets and clears its flags, so
 *    flags[rid] == 0 does not say "free"; a free id's flags are 0 and its
 *    loc is VC_FREED_LOC, and every call but vc_rec_new refuses it.
 *  - free ids are chained through chain[], from free_id, each with flags 0.
 *  - INDEXED iff the record is in exactly one bucket chain, the one of
 *    bucket(hash[rid]); indexed = records INDEXED; 2 << bits > indexed once
 *    the index grew, and buckets = 1 << bits, MIN_BITS <= bits.
 *  - LISTED iff in the recency order; listed = records LISTED. Exact tables:
 *    a LISTED record is in the list of uses (head..tail) or, with DEMOTED,
 *    in the list of demotions (demoted_head..demoted_tail); each list is
 *    sorted by used[] ascending (the stamp of the record's last use), and
 *    prev/next are NONE outside lists. CLOCK tables: hand < size or 0.
 *  - when count falls to 0 the table is empty again: size 0, every column
 *    given back to the kernel (a cleared cache gives its memory back).
 */
#ifndef VOLCACHE_TABLE_H
#define VOLCACHE_TABLE_H

#include <stddef.h>
#include <stdint.h>

#define VC_NONE (-1)
#define VC_TABLE_MAGIC 0x31626174636c6f76 /* "volctab1" */
#define VC_MIN_BITS 3
#define VC_FREED_LOC INT64_MIN /* the loc of a free id (records.py's FREED_LOC) */

/* Flags (the same bits as volcache/records.py). */
#define VC_ACTIVE 1     /* its pages are pinned */
#define VC_OBJECT 2     /* a Python entry holds it */
#define VC_INDEXED 4    /* in the hash index */
#define VC_LISTED 8     /* in the recency order */
#define VC_REFERENCED 16 /* CLOCK: used since the hand passed */
#define VC_KEPT 32      /* its value is a Python object, no bytes */
#define VC_DEMOTED 64   /* exact: in the list of demotions */

/* The header at offset 0 of a table's mapping: int64 fields only, so that
 * Python reads them through one memoryview; vc_table_field_names() in the
 * cdef lists them in this order. */
struct vc_table {
    int64_t magic;
    int64_t max_records; /* ids the columns have room for */
    int64_t exact;       /* 1: exact recency lists, 0: CLOCK */
    int64_t size;        /* high-water mark of ids: the columns' length */
    int64_t count;       /* records in use */
    int64_t listed;
    int64_t indexed;
    int64_t free_id;     /* first free id below size, or NONE */
    int64_t head, tail;  /* exact: the list of uses, least recent first */
    int64_t demoted_head, demoted_tail; /* exact: the list of demotions */
    int64_t hand;        /* CLOCK */
    int64_t bits;        /* buckets = 1 << bits */
    /* Offsets from the header of each column and of the bucket heads. */
    int64_t off_hash, off_loc, off_length, off_flags, off_chain, off_prev, off_next, off_used;
    int64_t off_heads;
    int64_t max_bits;    /* the bucket heads have room for 1 << max_bits */
    int64_t total;       /* bytes of the mapping */
};

/* -- the calls (table.c): each returns a count, an id, or -errno -- */

/* Bytes of the mapping a table of max_records needs (-EINVAL if out of range). */
long vc_table_bytes(int64_t max_records);
/* Lay a new, empty table out in total zeroed bytes at t (page aligned). */
long vc_table_init(struct vc_table *t, int64_t total, int64_t max_records, int exact);

/* Lay a table of max_records out at t, holding what the table at from holds. */
long vc_table_grow(struct vc_table *t, int64_t total, int64_t max_records,
                   const struct vc_table *from);
/* Bytes of the pages the table's parts in use touch (what it keeps resident). */
long vc_table_resident(struct vc_table *t);
/* Before the mapping goes: nothing of it is left poisoned (AddressSanitizer builds). */
long vc_table_release(struct vc_table *t);

/* A new record (not indexed, not listed): its id; -ENOSPC when the table is full. */
long vc_rec_new(struct vc_table *t, uint32_t h, int64_t loc, uint32_t length, uint32_t flags);
/* A record's loc, length and flags (-EINVAL: not a record in use). */
long vc_rec_get(const struct vc_table *t, int64_t rid, int64_t *loc, uint32_t *length,
                uint8_t *flags);
/* Clear these flags of a record (ACTIVE: its pages went idle). */
long vc_rec_clear_flags(struct vc_table *t, int64_t rid, uint32_t bits);
/* The id vc_rec_new would give next, or -ENOSPC (-EINVAL: not a table). */
long vc_rec_next_id(const struct vc_table *t);
/* Forget a record (out of the index and the order); its id is free again. */
long vc_rec_delete(struct vc_table *t, int64_t rid);
long vc_rec_index(struct vc_table *t, int64_t rid);
long vc_rec_unindex(struct vc_table *t, int64_t rid);
/* The first id of the bucket of hash h (chained through chain), or -ENOENT. */
long vc_rec_head_of(struct vc_table *t, uint32_t h);
/* The first indexed record of hash h whose flags & mask are want, or -ENOENT. */
long vc_rec_first_of(struct vc_table *t, uint32_t h, uint8_t mask, uint8_t want);
/* The ids of indexed records whose hash is h, up to cap in out; returns how many. */
long vc_rec_candidates(struct vc_table *t, uint32_t h, int32_t *out, size_t cap);
/* List a record as the most recently used, at stamp (exact tables). */
long vc_rec_append(struct vc_table *t, int64_t rid, int64_t stamp);
/* List a record last used at stamp used, in its place by it (exact); as append otherwise. */
long vc_rec_place(struct vc_table *t, int64_t rid, int64_t used);
/* A listed record was used: the most recently used at stamp (exact), or referenced. */
long vc_rec_touch(struct vc_table *t, int64_t rid, int64_t stamp);
long vc_rec_unlist(struct vc_table *t, int64_t rid);
/* Exact: the listed record least recently used and its stamp, or -ENOENT. */
long vc_rec_oldest_use(struct vc_table *t, int64_t *used);
/* The listed record to evict first (exact: least recently used; else CLOCK), or -ENOENT. */
long vc_rec_victim(struct vc_table *t);
/* Listed ids (exact: least recently used first), up to cap in out; returns how many. */
long vc_rec_listed(struct vc_table *t, int32_t *out, size_t cap);

#endif
