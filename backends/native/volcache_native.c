/* volcache native helper: the bodies. See volcache_native.h. */

#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "volcache_native.h"

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif

/* A page faulted in waits in the faulting CPU's LRU batch before it reaches
 * the LRU, and MADV_FREE drains only the batches of the CPU it runs on: a page
 * still waiting on another CPU is skipped, left as it was, and without swap it
 * is never purged (seen on 6.18). MADV_FREE parks the pages it frees in a
 * batch too, and MADV_PAGEOUT again drains only its own CPU's; worse, a page
 * out that meets pages parked on another CPU leaves them no longer lazily
 * freed. So before a marking and before a page out, visit every CPU and drain
 * its batches with a MADV_PAGEOUT of a page of our own, then restore the mask
 * (the mask is not a limit, the cpuset is: a CPU it forbids is skipped). */
static char *drain_page_of_process(unsigned long *syscalls)
{
    /* Backends reclaim from several threads at once (cffi lets go of the GIL):
     * one page for the process, published with a compare-and-swap. */
    static char *drain_page;
    char *page = __atomic_load_n(&drain_page, __ATOMIC_ACQUIRE), *expected = NULL;

    if (page != NULL)
        return page;
    (*syscalls)++;
    page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED)
        return NULL;
    if (!__atomic_compare_exchange_n(&drain_page, &expected, page, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE)) {
        munmap(page, 4096);
        page = expected; /* another thread's won */
    }
    return page;
}

static void drain_by_visiting(unsigned long *syscalls)
{
    char *drain_page = drain_page_of_process(syscalls);
    cpu_set_t allowed, one;
    long ncpus, cpu;

    if (drain_page == NULL)
        return;
    drain_page[0] = 1;
    (*syscalls)++;
    if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0)
        return;
    ncpus = sysconf(_SC_NPROCESSORS_CONF);
    for (cpu = 0; cpu < ncpus && cpu < CPU_SETSIZE; cpu++) {
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        (*syscalls)++;
        if (sched_setaffinity(0, sizeof(one), &one) != 0)
            continue;
        (*syscalls)++;
        madvise(drain_page, 4096, MADV_PAGEOUT);
    }
    (*syscalls)++;
    if (sched_setaffinity(0, sizeof(allowed), &allowed) != 0) {
        /* The cpuset shrank meanwhile: rather every CPU the cpuset allows
         * than this thread pinned to the last one visited. */
        CPU_ZERO(&allowed);
        for (cpu = 0; cpu < CPU_SETSIZE; cpu++)
            CPU_SET(cpu, &allowed);
        (*syscalls)++;
        sched_setaffinity(0, sizeof(allowed), &allowed);
    }
}

/* Visiting costs two system calls and two migrations per CPU (37 us on two
 * CPUs here), too much to pay per marking on a large machine. MADV_COLLAPSE
 * (Linux 6.1) starts with lru_add_drain_all(), the kernel's own drain of
 * every CPU, which asks only the CPUs that hold something; given a range
 * smaller than a huge page it then collapses nothing (and says EINVAL). That
 * is how the kernel is written, not a promise: the first drain tries it where
 * its effect can be seen (pages written on one CPU, lazily freed from another
 * after the drain, then paged out), and visits CPUs if it did not work. */
#define VC_COLLAPSE_AREA (4UL << 20)
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

enum { DRAIN_UNKNOWN, DRAIN_COLLAPSE, DRAIN_VISIT };

static char *collapse_area; /* address space, its first page written once */

static int drain_by_collapse(unsigned long *syscalls)
{
    char *area = __atomic_load_n(&collapse_area, __ATOMIC_ACQUIRE), *expected = NULL;
    long ps = sysconf(_SC_PAGESIZE);
    uintptr_t aligned;

    if (area == NULL) {
        (*syscalls)++;
        area = mmap(NULL, VC_COLLAPSE_AREA, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (area == MAP_FAILED)
            return -1;
        area[0] = 1; /* a mapping never written has no anon_vma, and no THP is allowed there */
        if (!__atomic_compare_exchange_n(&collapse_area, &expected, area, 0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE)) {
            munmap(area, VC_COLLAPSE_AREA);
            area = expected;
        }
    }
    /* One page just past a huge page boundary inside the area: no whole huge
     * page in the range, so nothing is collapsed or allocated. */
    aligned = ((uintptr_t)area + (2UL << 20) - 1) & ~((2UL << 20) - 1);
    (*syscalls)++;
    if (madvise((void *)(aligned + ps), ps, MADV_COLLAPSE) == 0)
        return 0;
    return errno == EINVAL ? 0 : -1;
}

/* Whether drain_by_collapse drains other CPUs: 16 pages written on one CPU
 * and lazily freed from another after it must all page out. Three times, so
 * that a batch drained by chance does not pass for it. */
static int collapse_drains(void)
{
    cpu_set_t allowed, one;
    unsigned char resident[16];
    unsigned long syscalls = 0;
    int cpus[2], n = 0, round, i, works = 1;
    long cpu, ps = sysconf(_SC_PAGESIZE);
    char *probe;

    if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0)
        return 0;
    /* Two CPUs the cpuset allows, whatever the thread's own mask is now. */
    for (cpu = 0; cpu < sysconf(_SC_NPROCESSORS_CONF) && cpu < CPU_SETSIZE && n < 2; cpu++) {
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        if (sched_setaffinity(0, sizeof(one), &one) == 0)
            cpus[n++] = (int)cpu;
    }
    sched_setaffinity(0, sizeof(allowed), &allowed);
    if (n < 2)
        return 0;
    probe = mmap(NULL, 16 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (probe == MAP_FAILED)
        return 0;
    for (round = 0; round < 3 && works; round++) {
        CPU_ZERO(&one);
        CPU_SET(cpus[0], &one);
        if (sched_setaffinity(0, sizeof(one), &one) != 0) {
            works = 0;
            break;
        }
        madvise(probe, 16 * ps, MADV_DONTNEED);
        memset(probe, 0x5a, 16 * ps);
        CPU_ZERO(&one);
        CPU_SET(cpus[1], &one);
        if (sched_setaffinity(0, sizeof(one), &one) != 0 || drain_by_collapse(&syscalls) != 0 ||
            madvise(probe, 16 * ps, MADV_FREE) != 0) {
            works = 0;
            break;
        }
        drain_by_visiting(&syscalls);
        if (madvise(probe, 16 * ps, MADV_PAGEOUT) != 0 ||
            mincore(probe, 16 * ps, resident) != 0) {
            works = 0;
            break;
        }
        for (i = 0; i < 16; i++)
            if (resident[i] & 1)
                works = 0;
    }
    sched_setaffinity(0, sizeof(allowed), &allowed);
    munmap(probe, 16 * ps);
    return works;
}

static int drain_method = DRAIN_UNKNOWN;

long vc_drain_method(void)
{
    int how = __atomic_load_n(&drain_method, __ATOMIC_RELAXED);

    if (how == DRAIN_UNKNOWN) {
        const char *asked = getenv("VOLCACHE_LRU_DRAIN"); /* "visit": for the tests */

        how = (asked == NULL || strcmp(asked, "visit") != 0) && collapse_drains() ? DRAIN_COLLAPSE
                                                                                   : DRAIN_VISIT;
        __atomic_store_n(&drain_method, how, __ATOMIC_RELAXED);
    }
    return how;
}

static void drain_all_cpus(unsigned long *syscalls)
{
    long how = vc_drain_method();

    if (how == DRAIN_COLLAPSE && drain_by_collapse(syscalls) == 0)
        return;
    drain_by_visiting(syscalls);
}

static inline uint64_t *word_of(uintptr_t addr, size_t page, size_t page_size)
{
    return (uint64_t *)(addr + page * page_size);
}

long vc_mark(uintptr_t addr, size_t npages, size_t page_size, uint64_t tag, int drain,
             uint64_t *saved, int *err, unsigned long *syscalls)
{
    size_t i, done;
    int first_err;

    *err = 0;
    for (i = 0; i < npages; i++) {
        uint64_t *word = word_of(addr, i, page_size);
        saved[i] = *word;
        *word = tag;
    }
    if (drain)
        drain_all_cpus(syscalls);
    (*syscalls)++;
    if (madvise((void *)addr, npages * page_size, MADV_FREE) == 0)
        return (long)npages;

    /* madvise stops at the first vma it cannot handle, having freed the ones
     * before it. Find that page, one page at a time: pages after it were not
     * lazily freed, so restoring their words cannot race with reclaim. */
    first_err = errno;
    for (done = 0; done < npages; done++) {
        (*syscalls)++;
        if (madvise((void *)(addr + done * page_size), page_size, MADV_FREE) != 0) {
            first_err = errno;
            break;
        }
    }
    for (i = done; i < npages; i++)
        *word_of(addr, i, page_size) = saved[i];
    if (done == npages)
        return (long)npages;
    *err = first_err;
    return done ? (long)done : -(long)first_err;
}

long vc_unmark(uintptr_t addr, size_t npages, size_t page_size, uint64_t tag,
               const uint64_t *saved, uint32_t *purged, unsigned long *mismatched)
{
    long n = 0;
    size_t i;

    for (i = 0; i < npages; i++) {
        uint64_t *word = word_of(addr, i, page_size);
        uint64_t old;

        /* A purged page reads as the shared zero page: a minor fault but no
         * memory. The exchange would fault in a fresh page for nothing. */
        if (__atomic_load_n(word, __ATOMIC_RELAXED) == 0) {
            purged[n++] = (uint32_t)i;
            continue;
        }
        /* One atomic instruction: reclaim clears the page table entry before
         * it looks at the dirty bit, so the exchange either lands first (the
         * page is dirty and kept: we read the tag) or faults in a new zero
         * page afterwards (we read 0). A read then a write could see the tag
         * and then write into a page that reclaim dropped in between. */
        old = __atomic_exchange_n(word, saved[i], __ATOMIC_SEQ_CST);
        if (old != tag) {
            purged[n++] = (uint32_t)i;
            if (old != 0)
                (*mismatched)++;
        }
    }
    return n;
}

static inline int tag_in_place(uintptr_t page_addr, uint64_t tag)
{
    return __atomic_load_n((uint64_t *)page_addr, __ATOMIC_ACQUIRE) == tag;
}

long vc_read(uintptr_t addr, size_t start, size_t length, size_t page_size, uint64_t tag,
             const uint64_t *saved, const uint8_t *state, uint8_t *out, uint32_t *purged)
{
    size_t first, last, page;
    long n = 0;

    if (length == 0)
        return 0;
    first = start / page_size;
    last = (start + length - 1) / page_size;
    for (page = first; page <= last; page++) {
        uintptr_t page_addr = addr + page * page_size;
        size_t from = page == first ? start - page * page_size : 0;
        size_t to = page == last ? start + length - page * page_size : page_size;
        uint8_t *dest = out + (page * page_size + from - start);

        if (state[page] == 0) {
            memcpy(dest, (const void *)(page_addr + from), to - from);
            continue;
        }
        if (state[page] != 1 || !tag_in_place(page_addr, tag)) {
            purged[n++] = (uint32_t)page;
            continue;
        }
        memcpy(dest, (const void *)(page_addr + from), to - from);
        if (from < sizeof(uint64_t)) {
            /* The tag stands where the page's first word is: put the word back. */
            size_t upto = to < sizeof(uint64_t) ? to : sizeof(uint64_t);
            memcpy(dest, (const uint8_t *)&saved[page] + from, upto - from);
        }
        /* The fence orders the copy's loads before the check's: a page dropped
         * during the copy reads zero here (it stays zero until written). */
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (!tag_in_place(page_addr, tag))
            purged[n++] = (uint32_t)page;
    }
    return n;
}

long vc_floor_read(uintptr_t addr, size_t length, size_t page_size, uint64_t tag, uint8_t *out)
{
    size_t npages = (length + page_size - 1) / page_size, i;
    long n = 0;

    for (i = 0; i < npages; i++)
        n += !tag_in_place(addr + i * page_size, tag);
    memcpy(out, (const void *)addr, length);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    for (i = 0; i < npages; i++)
        n += !tag_in_place(addr + i * page_size, tag);
    return n;
}

static long count_gone(uintptr_t addr, size_t npages, size_t page_size, uint8_t *gone,
                       unsigned long *syscalls)
{
    long n = 0;
    size_t i;

    (*syscalls)++;
    if (mincore((void *)addr, npages * page_size, gone) != 0)
        return -errno;
    for (i = 0; i < npages; i++) {
        gone[i] = !(gone[i] & 1);
        n += gone[i];
    }
    return n;
}

long vc_pageout(uintptr_t addr, size_t npages, size_t page_size, int use_dontneed,
                uint8_t *gone, unsigned long *syscalls)
{
    long n;

    if (!use_dontneed)
        drain_all_cpus(syscalls);
    (*syscalls)++;
    if (madvise((void *)addr, npages * page_size, use_dontneed ? MADV_DONTNEED : MADV_PAGEOUT) != 0)
        return -errno;
    n = count_gone(addr, npages, page_size, gone, syscalls);
    if (use_dontneed || n < 0 || (size_t)n == npages)
        return n;
    /* A page out that meets a page someone else holds a moment (compaction,
     * a batch) makes it an ordinary page again: lazily free the pages it kept
     * once more (they are volatile, their tags in place) and page out again. */
    *syscalls += 2;
    if (madvise((void *)addr, npages * page_size, MADV_FREE) != 0 ||
        madvise((void *)addr, npages * page_size, MADV_PAGEOUT) != 0)
        return n;
    return count_gone(addr, npages, page_size, gone, syscalls);
}

long vc_drain(unsigned long *syscalls)
{
    drain_all_cpus(syscalls);
    return vc_drain_method();
}

long vc_gone(uintptr_t addr, size_t npages, size_t page_size, uint8_t *gone,
             unsigned long *syscalls)
{
    return count_gone(addr, npages, page_size, gone, syscalls);
}

long vc_madvise(uintptr_t addr, size_t length, int advice)
{
    return madvise((void *)addr, length, advice) == 0 ? 0 : -errno;
}
