/* volcache native helper: userfaultfd for the uffd backend. See volcache_native.h.
 *
 * A handler thread resolves faults on missing pages of registered ranges with
 * the zero page and counts them per range. It is a native thread on purpose:
 * a Python thread that touches a purged page faults while holding the GIL, so
 * a handler that needed the GIL could never run.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "volcache_native.h"

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

struct vc_range {
    uintptr_t start;
    size_t length;
    unsigned long faults;
    uintptr_t last_fault;
};

struct vc_uffd {
    int fd;
    int stop_fd;
    size_t page_size;
    pthread_t thread;
    pthread_mutex_t lock;
    struct vc_range *ranges;
    size_t nranges, capacity;
    unsigned long faults; /* atomic */
    int user_mode_only;
};

static int open_uffd(int user_mode_only)
{
    int flags = O_CLOEXEC | O_NONBLOCK | (user_mode_only ? UFFD_USER_MODE_ONLY : 0);
    int fd = (int)syscall(SYS_userfaultfd, flags);

    if (fd < 0 && errno == EPERM && !user_mode_only) {
        /* /dev/userfaultfd hands out descriptors to whoever may open it. */
        int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
        if (dev >= 0) {
            fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
            close(dev);
        }
        if (fd < 0)
            errno = EPERM;
    }
    if (fd < 0)
        return -errno;
    {
        struct uffdio_api api = {.api = UFFD_API, .features = 0};
        int err = 0;

        if (ioctl(fd, UFFDIO_API, &api) < 0)
            err = errno;
        else if (!(api.ioctls & ((uint64_t)1 << _UFFDIO_REGISTER)))
            err = ENOSYS; /* not a stale errno from the attempts above */
        if (err) {
            close(fd);
            return -err;
        }
    }
    return fd;
}

long vc_uffd_probe(int user_mode_only)
{
    int fd = open_uffd(user_mode_only);
    if (fd < 0)
        return fd;
    close(fd);
    return 0;
}

static struct vc_range *find_range(struct vc_uffd *u, uintptr_t addr)
{
    size_t i;
    for (i = 0; i < u->nranges; i++)
        if (addr >= u->ranges[i].start && addr < u->ranges[i].start + u->ranges[i].length)
            return &u->ranges[i];
    return NULL;
}

/* Map the zero page over the missing pages of a range; present pages are skipped. */
static long zero_range(int fd, uintptr_t addr, size_t length, size_t page_size)
{
    while (length > 0) {
        struct uffdio_zeropage z = {.range = {.start = addr, .len = length}, .mode = 0};
        size_t done;

        if (ioctl(fd, UFFDIO_ZEROPAGE, &z) == 0)
            return 0;
        if (errno != EEXIST && errno != EAGAIN)
            return -errno;
        done = z.zeropage > 0 ? (size_t)z.zeropage : 0;
        if (errno == EEXIST)
            done += page_size; /* the page at addr + done is present: skip it */
        if (done >= length)
            return 0;
        addr += done;
        length -= done;
    }
    return 0;
}

static void *handle_faults(void *arg)
{
    struct vc_uffd *u = arg;
    struct pollfd fds[2] = {{.fd = u->fd, .events = POLLIN}, {.fd = u->stop_fd, .events = POLLIN}};

    for (;;) {
        struct uffd_msg msg;
        uintptr_t page;
        struct vc_range *range;

        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (fds[1].revents)
            break;
        if (fds[0].revents & (POLLERR | POLLHUP | POLLNVAL))
            break;
        if (read(u->fd, &msg, sizeof(msg)) != (ssize_t)sizeof(msg))
            continue; /* EAGAIN: another reader, or a spurious wake-up */
        if (msg.event != UFFD_EVENT_PAGEFAULT)
            continue;
        page = (uintptr_t)msg.arg.pagefault.address & ~(uintptr_t)(u->page_size - 1);
        pthread_mutex_lock(&u->lock);
        range = find_range(u, page);
        if (range != NULL) {
            range->faults++;
            range->last_fault = page;
        }
        pthread_mutex_unlock(&u->lock);
        __atomic_add_fetch(&u->faults, 1, __ATOMIC_RELEASE);
        if (zero_range(u->fd, page, u->page_size, u->page_size) < 0) {
            struct uffdio_range wake = {.start = page, .len = u->page_size};
            ioctl(u->fd, UFFDIO_WAKE, &wake);
        }
    }
    return NULL;
}

long vc_uffd_open(int user_mode_only, size_t page_size, struct vc_uffd **out)
{
    struct vc_uffd *u;
    int fd = open_uffd(user_mode_only), err;

    if (fd < 0)
        return fd;
    u = calloc(1, sizeof(*u));
    if (u == NULL) {
        close(fd);
        return -ENOMEM;
    }
    u->fd = fd;
    u->page_size = page_size;
    u->user_mode_only = user_mode_only;
    u->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (u->stop_fd < 0) {
        err = errno;
        close(fd);
        free(u);
        return -err;
    }
    pthread_mutex_init(&u->lock, NULL);
    {
        /* The handler inherits the creating thread's mask: block every signal
         * first, so that process signals go to the interpreter's threads. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        err = pthread_create(&u->thread, NULL, handle_faults, u);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    if (err != 0) {
        close(u->stop_fd);
        close(fd);
        free(u);
        return -err;
    }
    *out = u;
    return 0;
}

/* Room for one more range; the lock is held. */
static long reserve_range(struct vc_uffd *u)
{
    size_t capacity;
    struct vc_range *grown;

    if (u->nranges < u->capacity)
        return 0;
    capacity = u->capacity ? 2 * u->capacity : 16;
    grown = realloc(u->ranges, capacity * sizeof(*grown));
    if (grown == NULL)
        return -ENOMEM;
    u->ranges = grown;
    u->capacity = capacity;
    return 0;
}

long vc_uffd_register(struct vc_uffd *u, uintptr_t addr, size_t length)
{
    struct uffdio_register reg = {
        .range = {.start = addr, .len = length}, .mode = UFFDIO_REGISTER_MODE_MISSING};
    long err;

    pthread_mutex_lock(&u->lock);
    err = reserve_range(u);
    pthread_mutex_unlock(&u->lock);
    if (err < 0)
        return err;
    if (ioctl(u->fd, UFFDIO_REGISTER, &reg) < 0)
        return -errno;
    /* Fresh pages are missing too: map the zero page over them now, so that
     * only pages the purger dropped fault (a write then copies the zero page
     * without asking us). */
    err = zero_range(u->fd, addr, length, u->page_size);
    if (err < 0) {
        struct uffdio_range range = {.start = addr, .len = length};
        ioctl(u->fd, UFFDIO_UNREGISTER, &range);
        return err;
    }
    pthread_mutex_lock(&u->lock);
    /* Checked again: another register may have taken the slot reserved above. */
    err = reserve_range(u);
    if (err == 0)
        u->ranges[u->nranges++] = (struct vc_range){.start = addr, .length = length};
    pthread_mutex_unlock(&u->lock);
    if (err < 0) {
        struct uffdio_range range = {.start = addr, .len = length};
        ioctl(u->fd, UFFDIO_UNREGISTER, &range);
    }
    return err;
}

long vc_uffd_unregister(struct vc_uffd *u, uintptr_t addr, size_t length)
{
    struct uffdio_range range = {.start = addr, .len = length};
    struct vc_range *found;

    pthread_mutex_lock(&u->lock);
    found = find_range(u, addr);
    if (found != NULL)
        *found = u->ranges[--u->nranges];
    pthread_mutex_unlock(&u->lock);
    return ioctl(u->fd, UFFDIO_UNREGISTER, &range) == 0 ? 0 : -errno;
}

long vc_uffd_zero(struct vc_uffd *u, uintptr_t addr, size_t length)
{
    return zero_range(u->fd, addr, length, u->page_size);
}

unsigned long vc_uffd_faults(struct vc_uffd *u)
{
    return __atomic_load_n(&u->faults, __ATOMIC_ACQUIRE);
}

long vc_uffd_range_faults(struct vc_uffd *u, uintptr_t addr, uintptr_t *last_fault)
{
    struct vc_range *range;
    long faults = -ENOENT;

    pthread_mutex_lock(&u->lock);
    range = find_range(u, addr);
    if (range != NULL) {
        faults = (long)range->faults;
        *last_fault = range->last_fault;
    }
    pthread_mutex_unlock(&u->lock);
    return faults;
}

long vc_uffd_close(struct vc_uffd *u)
{
    uint64_t one = 1;
    long err = 0;

    if (write(u->stop_fd, &one, sizeof(one)) != (ssize_t)sizeof(one))
        err = -errno;
    pthread_join(u->thread, NULL);
    close(u->fd);
    close(u->stop_fd);
    pthread_mutex_destroy(&u->lock);
    free(u->ranges);
    free(u);
    return err;
}

long vc_uffd_forget(struct vc_uffd *u)
{
    /* In a forked child: the handler thread did not come along, and the lock
     * may have been copied held. Close the descriptors, touch nothing else. */
    close(u->fd);
    close(u->stop_fd);
    return 0;
}
