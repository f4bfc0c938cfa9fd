/* volcache native helper: the declarations, read by cffi as its cdef.
 *
 * Every function returns a count (>= 0) or -errno; none aborts or prints.
 * Addresses are page aligned and lengths are in pages of page_size bytes.
 * Bump VC_NATIVE_VERSION with any change here; backends/clib.py checks it.
 */

#define VC_NATIVE_VERSION 1

/* sha256 of this file and volcache_native.c, stamped by build.py. */
extern const char vc_source_hash[];

/* Save the first word of each page in saved[], write tag there, then
 * madvise(MADV_FREE). Returns the pages marked; if madvise failed part way,
 * *err is its errno and the unmarked pages have their words restored. */
long vc_mark(uintptr_t addr, size_t npages, size_t page_size, uint64_t tag,
             uint64_t *saved, int *err, unsigned long *syscalls);

/* Re-pin pages marked by vc_mark: atomically exchange each tag with its saved
 * word. Writes the indexes of purged pages to purged[] and returns how many.
 * Makes no system call. *mismatched counts pages whose tag was overwritten
 * (written to while volatile): reported purged, as their bytes changed. */
long vc_unmark(uintptr_t addr, size_t npages, size_t page_size, uint64_t tag,
               const uint64_t *saved, uint32_t *purged, unsigned long *mismatched);

/* Drop volatile pages now (MADV_PAGEOUT, or MADV_DONTNEED if use_dontneed),
 * after draining the per-CPU LRU batches of every CPU. Sets
 * gone[i] for each page no longer resident; returns how many. */
long vc_pageout(uintptr_t addr, size_t npages, size_t page_size, int use_dontneed,
                uint8_t *gone, unsigned long *syscalls);

/* madvise(addr, length, advice): 0 or -errno. */
long vc_madvise(uintptr_t addr, size_t length, int advice);
