/* volcache native helper: the declarations, read by cffi as its cdef.
 *
 * Every function returns a count (>= 0) or -errno; none aborts or prints.
 * Addresses are page aligned and lengths are in pages of page_size bytes.
 * Bump VC_NATIVE_VERSION with any change here; backends/clib.py checks it.
 */

#define VC_NATIVE_VERSION 7

/* sha256 of the .h and .c files beside this one, stamped by build.py. */
extern const char vc_source_hash[];

/* Save the first word of each page in saved[], write tag there, drain the
 * per-CPU LRU batches of every CPU if drain, then madvise(MADV_FREE). Returns
 * the pages marked; if madvise failed part way, *err is its errno and the
 * unmarked pages have their words restored. */
long vc_mark(uintptr_t addr, size_t npages, size_t page_size, uint64_t tag, int drain,
             uint64_t *saved, int *err, unsigned long *syscalls);

/* Re-pin pages marked by vc_mark: atomically exchange each tag with its saved
 * word. Writes the indexes of purged pages to purged[] and returns how many.
 * Makes no system call. *mismatched counts pages whose tag was overwritten
 * (written to while volatile): reported purged, as their bytes changed. */
long vc_unmark(uintptr_t addr, size_t npages, size_t page_size, uint64_t tag,
               const uint64_t *saved, uint32_t *purged, unsigned long *mismatched);

/* An optimistic read of [start, start + length) of a region at addr, without
 * re-pinning: state[] is each page's state in the backend's book (0 pinned,
 * 1 volatile and tagged by vc_mark, 2 known purged). Pinned pages are copied;
 * a volatile page is copied if its tag is in place before and after the copy
 * (its first word comes from saved[], where vc_mark put it); a purged page
 * reads as zeros and stays so, since nobody writes a volatile page. Writes
 * the indexes of the pages found purged to purged[] (their bytes in out are
 * not to be used) and returns how many. */
long vc_read(uintptr_t addr, size_t start, size_t length, size_t page_size, uint64_t tag,
             const uint64_t *saved, const uint8_t *state, uint8_t *out, uint32_t *purged);

/* The floor of an optimistic read, for the benchmarks: check the first word
 * of every page of [addr, addr + length) against tag, copy the bytes to out,
 * check again. Returns the pages whose tag was not in place. */
long vc_floor_read(uintptr_t addr, size_t length, size_t page_size, uint64_t tag, uint8_t *out);

/* Drop volatile pages now (MADV_PAGEOUT, or MADV_DONTNEED if use_dontneed),
 * after draining the per-CPU LRU batches of every CPU; pages a page out kept
 * are lazily freed again and paged out once more. Sets
 * gone[i] for each page no longer resident; returns how many. */
long vc_pageout(uintptr_t addr, size_t npages, size_t page_size, int use_dontneed,
                uint8_t *gone, unsigned long *syscalls);
/* How this process drains every CPU's LRU batches: 1 by one MADV_COLLAPSE of
 * less than a huge page (the kernel drains them all first), 2 by visiting each
 * CPU. Found out by trying, on the first call; VOLCACHE_LRU_DRAIN=visit in the
 * environment skips the try. */
long vc_drain_method(void);
/* Drain the per-CPU LRU batches of every CPU now; returns vc_drain_method(). */
long vc_drain(unsigned long *syscalls);
/* Which pages are not resident (gone[i] = 1), with one mincore; returns how many. */
long vc_gone(uintptr_t addr, size_t npages, size_t page_size, uint8_t *gone,
             unsigned long *syscalls);

/* madvise(addr, length, advice): 0 or -errno. */
long vc_madvise(uintptr_t addr, size_t length, int advice);

/* -- userfaultfd (uffd.c) -- */

struct vc_uffd;

/* 0 if a userfaultfd can be made here (UFFD_USER_MODE_ONLY if asked), else -errno. */
long vc_uffd_probe(int user_mode_only);

/* A userfaultfd with its handler thread started: 0 and *out, or -errno. */
long vc_uffd_open(int user_mode_only, size_t page_size, struct vc_uffd **out);

/* Register a range for missing faults and map the zero page over it. */
long vc_uffd_register(struct vc_uffd *u, uintptr_t addr, size_t length);
long vc_uffd_unregister(struct vc_uffd *u, uintptr_t addr, size_t length);

/* Map the zero page over the missing pages of a range (re-pinning purged pages). */
long vc_uffd_zero(struct vc_uffd *u, uintptr_t addr, size_t length);

/* Faults caught in all; in the range holding addr (and its last faulting page). */
unsigned long vc_uffd_faults(struct vc_uffd *u);
long vc_uffd_range_faults(struct vc_uffd *u, uintptr_t addr, uintptr_t *last_fault);

/* Stop and join the handler thread, close the descriptors, free. */
long vc_uffd_close(struct vc_uffd *u);

/* After fork(), in the child: close the descriptors only (no thread to join). */
long vc_uffd_forget(struct vc_uffd *u);

