/*
 * The file bdev's Linux native AIO engine (docs/architecture.md, File I/O
 * engines): where io_uring is missing or refused but the kernel's AIO is
 * there (Linux 2.6+; fdatasync through it since 4.18), with raw system calls
 * and <linux/aio_abi.h> (no libaio).
 *
 * One context per reactor, shared by every file bdev on it, with a fixed
 * array of AIO_DEPTH iocbs and a stack of free slots: queueing an I/O fills
 * a slot and appends it to the batch, and the poller submits the whole batch
 * with one io_submit per poll. Completions are read straight from the ring
 * the kernel maps at the context's address (head/tail indices, as the kernel
 * itself reads them): no system call; if the ring's header is not the layout
 * we know, io_getevents with a zero timeout instead. Every iocb carries
 * IOCB_FLAG_RESFD with the context's eventfd, which is in the reactor's
 * epoll set for adaptive sleep. I/O beyond AIO_DEPTH waits on a list.
 *
 * Native AIO is only asynchronous with O_DIRECT (on the page cache
 * io_submit does the I/O itself): the caller sends aligned reads and writes
 * on an O_DIRECT descriptor and everything else elsewhere (bdev_file.c).
 */
#include "file_aio.h"

#include <errno.h>
#include <linux/aio_abi.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define AIO_DEPTH 256u   /* per reactor; counts against fs.aio-max-nr (65,536 by default) */
#define AIO_REAP_MAX 64  /* io_getevents per call, when the ring cannot be read directly */

/* The header of the completion ring the kernel maps at a context's address
 * (fs/aio.c's struct aio_ring, not in the uapi headers). It carries its own
 * version: a magic number, incompatible-feature bits (none so far) and its
 * length; any other value and we use io_getevents. head is ours to advance
 * (the kernel reads it back to count free slots), tail the kernel's; both
 * are indices in [0, nr). */
struct aio_ring_hdr {
    unsigned id;
    unsigned nr;
    unsigned head;
    unsigned tail;
    unsigned magic;
    unsigned compat_features;
    unsigned incompat_features;
    unsigned header_length;
};
#define AIO_RING_MAGIC 0xa10a10a1u

struct srrs_aio {
    aio_context_t ctx;
    struct aio_ring_hdr *ring;  /* NULL: reap with io_getevents */
    struct io_event *events;    /* the ring's, when ring is set */
    unsigned ring_nr;
    int efd;
    unsigned refs;
    unsigned inflight;   /* slots taken: in the batch or in the kernel */
    unsigned submitted;  /* in the kernel */
    unsigned nbatch;
    unsigned nfree;
    bool no_fdsync;      /* the kernel refused IOCB_CMD_FDSYNC (before 4.18) */
    srrs_aio_fn done;
    srrs_aio_fd_fn fd_of;
    struct srrs_poller *poller;
    struct srrs_io *wait_head, *wait_tail; /* waiting for a slot */
    struct iocb *batch[AIO_DEPTH];
    uint16_t free[AIO_DEPTH];
    struct iocb cbs[AIO_DEPTH];
    struct io_event evs[AIO_REAP_MAX];
};

/* One context per reactor thread. */
static __thread struct srrs_aio *t_aio;

static long sys_io_setup(unsigned nr, aio_context_t *ctx) { return syscall(__NR_io_setup, nr, ctx); }

static long sys_io_destroy(aio_context_t ctx) { return syscall(__NR_io_destroy, ctx); }

static long sys_io_submit(aio_context_t ctx, long n, struct iocb **cbs)
{
    return syscall(__NR_io_submit, ctx, n, cbs);
}

static long sys_io_getevents(aio_context_t ctx, long min, long max, struct io_event *ev)
{
    struct timespec zero = {0, 0};
#ifdef __NR_io_getevents
    return syscall(__NR_io_getevents, ctx, min, max, ev, &zero);
#else /* architectures born with a 64-bit time_t have only the p variant */
    return syscall(__NR_io_pgetevents, ctx, min, max, ev, &zero, NULL);
#endif
}

int srrs_aio_probe(void)
{
    /* 1: not probed yet. A refusal (seccomp, no AIO in the kernel) lasts as
     * long as the process; a full fs.aio-max-nr or memory may not, so those
     * are asked again at the next bdev. */
    static _Atomic int cached = 1;
    int v = atomic_load(&cached);
    if (v != 1)
        return v;
    aio_context_t ctx = 0;
    v = sys_io_setup(AIO_DEPTH, &ctx) ? -errno : 0;
    if (!v)
        sys_io_destroy(ctx);
    if (v != -EAGAIN && v != -ENOMEM)
        atomic_store(&cached, v);
    return v;
}

bool srrs_aio_has_fdsync(const struct srrs_aio *a) { return !a->no_fdsync; }

/* Fills a free slot for io and appends it to the batch; false when none is free. */
static bool aio_prep(struct srrs_aio *a, struct srrs_io *io)
{
    if (!a->nfree)
        return false;
    unsigned slot = a->free[--a->nfree];
    struct iocb *cb = &a->cbs[slot];
    memset(cb, 0, sizeof(*cb));
    cb->aio_data = (uint64_t)(uintptr_t)io;
    cb->aio_fildes = (uint32_t)a->fd_of(io);
    cb->aio_flags = IOCB_FLAG_RESFD;
    cb->aio_resfd = (uint32_t)a->efd;
    if (io->op == SRRS_IO_FLUSH) {
        cb->aio_lio_opcode = IOCB_CMD_FDSYNC;
    } else {
        bool rd = io->op == SRRS_IO_READ;
        cb->aio_offset = (int64_t)io->offset;
        if (io->iovcnt == 1) {
            cb->aio_lio_opcode = rd ? IOCB_CMD_PREAD : IOCB_CMD_PWRITE;
            cb->aio_buf = (uint64_t)(uintptr_t)io->iov[0].iov_base;
            cb->aio_nbytes = io->iov[0].iov_len;
        } else {
            cb->aio_lio_opcode = rd ? IOCB_CMD_PREADV : IOCB_CMD_PWRITEV;
            cb->aio_buf = (uint64_t)(uintptr_t)io->iov;
            cb->aio_nbytes = (uint64_t)io->iovcnt;
        }
    }
    a->batch[a->nbatch++] = cb;
    a->inflight++;
    return true;
}

void srrs_aio_submit(struct srrs_aio *a, struct srrs_io *io)
{
    if (!a->wait_head && aio_prep(a, io))
        return;
    io->next = NULL;
    if (a->wait_tail)
        a->wait_tail->next = io;
    else
        a->wait_head = io;
    a->wait_tail = io;
}

static void aio_release(struct srrs_aio *a, struct iocb *cb)
{
    a->free[a->nfree++] = (uint16_t)(cb - a->cbs);
    a->inflight--;
}

/* The batch in as few io_submit calls as the kernel allows: one, unless it
 * refuses a request (that one completes with the error, the rest go on) or
 * is short of resources (-EAGAIN: the rest stay queued for the next poll). */
static void aio_flush(struct srrs_aio *a)
{
    unsigned done = 0;
    while (done < a->nbatch) {
        long n = sys_io_submit(a->ctx, (long)(a->nbatch - done), &a->batch[done]);
        if (n > 0) {
            done += (unsigned)n;
            a->submitted += (unsigned)n;
            continue;
        }
        int err = n < 0 ? errno : EAGAIN;
        if (err == EAGAIN || err == EINTR)
            break;
        struct iocb *cb = a->batch[done++];
        struct srrs_io *io = (struct srrs_io *)(uintptr_t)cb->aio_data;
        if (cb->aio_lio_opcode == IOCB_CMD_FDSYNC && err == EINVAL)
            a->no_fdsync = true;
        aio_release(a, cb);
        a->done(io, -err, false);
    }
    if (done < a->nbatch && done)
        memmove(a->batch, a->batch + done, (a->nbatch - done) * sizeof(a->batch[0]));
    a->nbatch -= done;
}

static void aio_event(struct srrs_aio *a, const struct io_event *ev)
{
    /* The kernel hands back the iocb's address: one of ours, or we ignore it. */
    uintptr_t off = (uintptr_t)ev->obj - (uintptr_t)a->cbs;
    if (srrs_unlikely(off >= sizeof(a->cbs) || off % sizeof(struct iocb)))
        return;
    struct iocb *cb = &a->cbs[off / sizeof(struct iocb)];
    struct srrs_io *io = (struct srrs_io *)(uintptr_t)cb->aio_data;
    long long res = ev->res;
    aio_release(a, cb);
    a->submitted--;
    a->done(io, res, true);
}

static int aio_reap(struct srrs_aio *a)
{
    int n = 0;
    if (a->ring) {
        struct aio_ring_hdr *h = a->ring;
        unsigned head = __atomic_load_n(&h->head, __ATOMIC_RELAXED);
        unsigned tail = __atomic_load_n(&h->tail, __ATOMIC_ACQUIRE);
        if (srrs_unlikely(head >= a->ring_nr || tail >= a->ring_nr))
            return 0;
        while (head != tail) {
            struct io_event ev = a->events[head];
            head = head + 1 == a->ring_nr ? 0 : head + 1;
            aio_event(a, &ev);
            n++;
        }
        /* the events are copied out before the kernel may reuse their slots */
        if (n)
            __atomic_store_n(&h->head, head, __ATOMIC_RELEASE);
        return n;
    }
    while (a->submitted) {
        long k = sys_io_getevents(a->ctx, 0, AIO_REAP_MAX, a->evs);
        if (k <= 0)
            break;
        for (long i = 0; i < k; i++)
            aio_event(a, &a->evs[i]);
        n += (int)k;
        if (k < AIO_REAP_MAX)
            break;
    }
    return n;
}

static bool aio_ring_ready(struct srrs_aio *a)
{
    return a->ring && __atomic_load_n(&a->ring->tail, __ATOMIC_ACQUIRE) !=
                          __atomic_load_n(&a->ring->head, __ATOMIC_RELAXED);
}

static int aio_poll(void *arg)
{
    struct srrs_aio *a = arg;
    int work = a->submitted ? aio_reap(a) : 0;
    while (a->wait_head && aio_prep(a, a->wait_head)) {
        a->wait_head = a->wait_head->next;
        if (!a->wait_head)
            a->wait_tail = NULL;
        work++;
    }
    if (a->nbatch) {
        aio_flush(a);
        work++;
    }
    return work;
}

/* Before the reactor sleeps nothing may stay queued but unsubmitted. */
static int aio_presleep(void *arg)
{
    struct srrs_aio *a = arg;
    if (a->nbatch) {
        aio_flush(a);
        return 1;
    }
    return a->wait_head != NULL || (a->submitted && aio_ring_ready(a));
}

static void aio_free(struct srrs_aio *a)
{
    if (a->ctx)
        sys_io_destroy(a->ctx);
    if (a->efd >= 0)
        close(a->efd);
    free(a);
}

struct srrs_aio *srrs_aio_get(struct srrs_reactor *r, srrs_aio_fn done, srrs_aio_fd_fn fd_of)
{
    if (t_aio) {
        t_aio->refs++;
        return t_aio;
    }
    struct srrs_aio *a = calloc(1, sizeof(*a));
    if (!a) {
        srrs_err(-ENOMEM, "native AIO: out of memory");
        return NULL;
    }
    a->done = done;
    a->fd_of = fd_of;
    a->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (a->efd < 0) {
        srrs_err(-errno, "native AIO: eventfd: %s", strerror(errno));
        aio_free(a);
        return NULL;
    }
    if (sys_io_setup(AIO_DEPTH, &a->ctx)) {
        int e = errno;
        a->ctx = 0;
        srrs_err(-e, "native AIO: io_setup(%u): %s%s", AIO_DEPTH, strerror(e),
                 e == EAGAIN ? " (fs.aio-max-nr reached)" : "");
        aio_free(a);
        return NULL;
    }
    struct aio_ring_hdr *h = (struct aio_ring_hdr *)(uintptr_t)a->ctx;
    if (h->magic == AIO_RING_MAGIC && h->incompat_features == 0 &&
        h->header_length == sizeof(*h) && h->nr > 0) {
        a->ring = h;
        a->ring_nr = h->nr;
        a->events = (struct io_event *)(h + 1);
    }
    for (unsigned i = 0; i < AIO_DEPTH; i++)
        a->free[i] = (uint16_t)(AIO_DEPTH - 1 - i);
    a->nfree = AIO_DEPTH;
    a->poller = srrs_poller_register(r, aio_poll, a, 0);
    if (!a->poller || srrs_poller_set_fd(a->poller, a->efd, EPOLLIN, true)) {
        srrs_poller_unregister(&a->poller);
        aio_free(a);
        return NULL;
    }
    srrs_poller_set_presleep(a->poller, aio_presleep);
    a->refs = 1;
    t_aio = a;
    return a;
}

void srrs_aio_put(struct srrs_aio *a)
{
    if (--a->refs)
        return;
    /* Called on the reactor, or in the control thread once it has stopped:
     * what is in flight completes and is reaped here. */
    while (a->inflight || a->wait_head) {
        if (!aio_poll(a)) {
            struct timespec d = {0, 50000};
            nanosleep(&d, NULL);
        }
    }
    srrs_poller_unregister(&a->poller);
    if (t_aio == a)
        t_aio = NULL;
    aio_free(a);
}
