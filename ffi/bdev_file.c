/*
 * file bdev: a regular file (created sparse if missing), a partition or a
 * whole block device, through one of three engines (docs/architecture.md,
 * File I/O engines). io_uring, with raw syscalls and the kernel's
 * <linux/io_uring.h> (no liburing): one ring per reactor shared by every file
 * bdev on it; SQEs are queued during the loop and submitted in one
 * io_uring_enter per poll; completions are reaped by the same poller. Where
 * io_uring is refused, Linux native AIO (file_aio.c) when the file takes
 * O_DIRECT, else worker threads (file_threads.c); or whichever is asked for.
 * I/O whose offset, length and buffers are 4 KiB-aligned goes through an
 * O_DIRECT descriptor, the rest through the page cache (with native AIO: in
 * the worker threads, like its fallocate, and fdatasync on kernels without
 * IOCB_CMD_FDSYNC).
 */
#include "srrs_int.h"
#include "file_aio.h"
#include "file_threads.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/io_uring.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

#define URING_ENTRIES 1024u
#define DIO_ALIGN 4096u

/* ---- a minimal io_uring ------------------------------------------------ */

struct uring {
    int fd;
    int efd;
    bool defer;              /* DEFER_TASKRUN: completions are posted only when we enter */
    unsigned *sq_flags;      /* IORING_SQ_TASKRUN: completions wait for an enter */
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    void *sq_ring, *cq_ring;
    size_t sq_ring_len, cq_ring_len, sqes_len;
    unsigned sq_local_tail;  /* prepared, not yet published */
    unsigned to_submit;
    unsigned inflight;
    unsigned refs;
    struct srrs_poller *poller;
    struct srrs_io *wait_head, *wait_tail; /* I/O waiting for ring space */
};

static int sys_uring_setup(unsigned entries, struct io_uring_params *p)
{
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_uring_enter(int fd, unsigned submit, unsigned min_complete, unsigned flags)
{
    return (int)syscall(__NR_io_uring_enter, fd, submit, min_complete, flags, NULL, 0);
}

static int sys_uring_register(int fd, unsigned op, void *arg, unsigned n)
{
    return (int)syscall(__NR_io_uring_register, fd, op, arg, n);
}

static void uring_close(struct uring *u)
{
    if (u->sq_ring && u->sq_ring != MAP_FAILED)
        munmap(u->sq_ring, u->sq_ring_len);
    if (u->cq_ring && u->cq_ring != MAP_FAILED && u->cq_ring != u->sq_ring)
        munmap(u->cq_ring, u->cq_ring_len);
    if (u->sqes && u->sqes != MAP_FAILED)
        munmap(u->sqes, u->sqes_len);
    if (u->efd >= 0)
        close(u->efd);
    if (u->fd >= 0)
        close(u->fd);
    free(u);
}

/* own: opened on the reactor thread that will be its only submitter. The
 * disk's completion interrupt may land on another CPU (one virtio queue):
 * a plain ring then runs each completion as task work signalled to the
 * reactor (an IPI per completion while it runs); with DEFER_TASKRUN the
 * completions wait, the kernel sets IORING_SQ_TASKRUN (and signals the
 * eventfd for a sleeping reactor), and the reactor collects them in its next
 * io_uring_enter, one batch per poll (docs/architecture.md, File I/O
 * engines). Kernels before 6.1 refuse the flags: a plain ring then. */
static struct uring *uring_open(bool own)
{
    struct uring *u = calloc(1, sizeof(*u));
    if (!u)
        return NULL;
    u->efd = -1;
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_CQSIZE;
    p.cq_entries = URING_ENTRIES * 2;
    u->fd = -1;
    if (own) {
        p.flags |= IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
                   IORING_SETUP_TASKRUN_FLAG;
        u->fd = sys_uring_setup(URING_ENTRIES, &p);
        u->defer = u->fd >= 0;
        if (u->fd < 0) {
            memset(&p, 0, sizeof(p));
            p.flags = IORING_SETUP_CQSIZE;
            p.cq_entries = URING_ENTRIES * 2;
        }
    }
    if (u->fd < 0)
        u->fd = sys_uring_setup(URING_ENTRIES, &p);
    if (u->fd < 0) {
        srrs_err(-errno, "io_uring_setup: %s", strerror(errno));
        u->fd = -1;
        goto fail;
    }
    u->sq_ring_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    u->cq_ring_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    bool single = p.features & IORING_FEAT_SINGLE_MMAP;
    if (single)
        u->sq_ring_len = u->cq_ring_len = SRRS_MAX(u->sq_ring_len, u->cq_ring_len);
    u->sq_ring = mmap(NULL, u->sq_ring_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                      u->fd, IORING_OFF_SQ_RING);
    if (u->sq_ring == MAP_FAILED)
        goto fail_errno;
    u->cq_ring = single ? u->sq_ring
                        : mmap(NULL, u->cq_ring_len, PROT_READ | PROT_WRITE,
                               MAP_SHARED | MAP_POPULATE, u->fd, IORING_OFF_CQ_RING);
    if (u->cq_ring == MAP_FAILED)
        goto fail_errno;
    u->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
    u->sqes = mmap(NULL, u->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, u->fd,
                   IORING_OFF_SQES);
    if (u->sqes == MAP_FAILED)
        goto fail_errno;
    uint8_t *sq = u->sq_ring, *cq = u->cq_ring;
    u->sq_flags = (unsigned *)(sq + p.sq_off.flags);
    u->sq_head = (unsigned *)(sq + p.sq_off.head);
    u->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    u->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    u->sq_array = (unsigned *)(sq + p.sq_off.array);
    u->cq_head = (unsigned *)(cq + p.cq_off.head);
    u->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    u->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    u->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    u->sq_local_tail = *u->sq_tail;
    u->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (u->efd < 0 || sys_uring_register(u->fd, IORING_REGISTER_EVENTFD, &u->efd, 1) < 0)
        goto fail_errno;
    return u;
fail_errno:
    srrs_err(-errno, "io_uring mmap/register: %s", strerror(errno));
fail:
    uring_close(u);
    return NULL;
}

static inline struct io_uring_sqe *uring_get_sqe(struct uring *u)
{
    unsigned head = __atomic_load_n(u->sq_head, __ATOMIC_ACQUIRE);
    if (u->sq_local_tail - head >= URING_ENTRIES || u->inflight >= URING_ENTRIES * 2 - 1)
        return NULL;
    unsigned idx = u->sq_local_tail & *u->sq_mask;
    struct io_uring_sqe *sqe = &u->sqes[idx];
    u->sq_array[idx] = idx;
    u->sq_local_tail++;
    u->to_submit++;
    u->inflight++;
    memset(sqe, 0, sizeof(*sqe));
    return sqe;
}

/* Completions the kernel holds for our next enter (DEFER_TASKRUN). */
static inline bool uring_cq_held(struct uring *u)
{
    return u->defer && (__atomic_load_n(u->sq_flags, __ATOMIC_ACQUIRE) & IORING_SQ_TASKRUN);
}

/* Submit what is queued and, deferred, collect the held completions in the
 * same enter (min_complete 0: it never waits). */
static int uring_flush(struct uring *u)
{
    bool held = uring_cq_held(u);
    if (!u->to_submit && !held)
        return 0;
    if (u->to_submit)
        __atomic_store_n(u->sq_tail, u->sq_local_tail, __ATOMIC_RELEASE);
    int n = sys_uring_enter(u->fd, u->to_submit, 0, held ? IORING_ENTER_GETEVENTS : 0);
    if (n > 0)
        u->to_submit -= (unsigned)n;
    /* On -EAGAIN/-EBUSY the SQEs stay published; the next enter retries. */
    return 1;
}

/* ---- file bdev ----------------------------------------------------------- */

struct file_disk {
    int fd_direct;   /* -1 when the filesystem refuses O_DIRECT */
    int fd_buf;
    int fd_own;      /* holds the lock / exclusive claim; never used for I/O */
    bool is_blockdev;
    bool no_fallocate; /* set by the reactor or a worker thread: atomic accesses */
    uint32_t engine;   /* SRRS_FILE_URING, SRRS_FILE_AIO or SRRS_FILE_THREADS */
    int failed;      /* set by the health check: every I/O fails with -EIO from then on */
    dev_t dev;       /* the inode opened, to notice the path now naming another file */
    ino_t ino;
    char why[160];   /* what the health check found */
    /* Ownership: every file bdev of the process, by inode (files) or device
     * number (block devices), so a second owner is told who the first is. */
    struct file_disk *onext;
    dev_t own_dev;   /* st_dev of a file, st_rdev of a block device */
    ino_t own_ino;   /* 0 for a block device */
    char name[SRRS_NAME_MAX];
    char label[96];  /* what the bdev is to its user, e.g. a pool's fragment */
};

/* Per-I/O state in io->driver_ctx. */
struct file_req {
    uint32_t pending;    /* SQEs outstanding */
    int32_t status;
    uint8_t kind;        /* what the SQE was: op, or 0xff for a zero-fill chunk */
    bool direct;
};

_Static_assert(sizeof(struct file_req) <= SRRS_IO_DRIVER_CTX, "file_req too big");

struct file_ch {
    struct uring *u;          /* io_uring engine */
    struct srrs_aio *aio;     /* native AIO engine (with tp for what it does not do) */
    struct srrs_tpool *tp;    /* threads engine */
};

/* Each reactor keeps its ring in a per-thread slot: the reactor is a thread. */
static __thread struct uring *t_uring;

static void file_req_finish(struct srrs_io *io);

static int file_fallback_sync(struct file_disk *d, struct srrs_io *io, uint64_t done_bytes);
static int file_fail(struct file_disk *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static inline struct file_req *req_of(struct srrs_io *io) { return (struct file_req *)io->driver_ctx; }

static inline bool iov_aligned(const struct srrs_io *io)
{
    if ((io->offset | io->len) & (DIO_ALIGN - 1))
        return false;
    for (int i = 0; i < io->iovcnt; i++)
        if (((uintptr_t)io->iov[i].iov_base | io->iov[i].iov_len) & (DIO_ALIGN - 1))
            return false;
    return true;
}

void srrs_bdev_count_path(struct srrs_io *io, bool direct);

/* Prepares the SQE(s) for io; false when the ring is full. */
static bool file_prep(struct uring *u, struct file_disk *d, struct srrs_io *io)
{
    struct file_req *q = req_of(io);
    struct io_uring_sqe *sqe = uring_get_sqe(u);
    if (!sqe)
        return false;
    q->pending = 1;
    q->status = 0;
    q->kind = io->op;
    sqe->user_data = (uint64_t)(uintptr_t)io;
    switch (io->op) {
    case SRRS_IO_READ:
    case SRRS_IO_WRITE: {
        q->direct = d->fd_direct >= 0 && iov_aligned(io);
        sqe->fd = q->direct ? d->fd_direct : d->fd_buf;
        sqe->off = io->offset;
        if (io->iovcnt == 1) {
            sqe->opcode = io->op == SRRS_IO_READ ? IORING_OP_READ : IORING_OP_WRITE;
            sqe->addr = (uint64_t)(uintptr_t)io->iov[0].iov_base;
            sqe->len = (uint32_t)io->iov[0].iov_len;
        } else {
            sqe->opcode = io->op == SRRS_IO_READ ? IORING_OP_READV : IORING_OP_WRITEV;
            sqe->addr = (uint64_t)(uintptr_t)io->iov;
            sqe->len = (uint32_t)io->iovcnt;
        }
        srrs_bdev_count_path(io, q->direct);
        break;
    }
    case SRRS_IO_FLUSH:
        sqe->opcode = IORING_OP_FSYNC;
        sqe->fd = d->fd_buf;
        sqe->fsync_flags = IORING_FSYNC_DATASYNC;
        break;
    case SRRS_IO_WRITE_ZEROES:
    case SRRS_IO_UNMAP:
        sqe->opcode = IORING_OP_FALLOCATE;
        sqe->fd = d->fd_buf;
        sqe->off = io->offset;
        sqe->addr = io->len;
        sqe->len = FALLOC_FL_KEEP_SIZE |
                   (io->op == SRRS_IO_UNMAP ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE);
        break;
    }
    return true;
}

static void file_submit(struct srrs_bdev *b, void *chp, struct srrs_io *io)
{
    struct file_ch *ch = chp;
    struct file_disk *d = b->ctx;
    struct uring *u = ch->u;
    if (srrs_unlikely(__atomic_load_n(&d->failed, __ATOMIC_RELAXED))) {
        srrs_io_complete(io, -EIO);
        return;
    }
    if ((io->op == SRRS_IO_WRITE_ZEROES || io->op == SRRS_IO_UNMAP) && !ch->tp &&
        __atomic_load_n(&d->no_fallocate, __ATOMIC_RELAXED)) {
        srrs_io_complete(io, file_fallback_sync(d, io, 0));
        return;
    }
    if (io->op == SRRS_IO_READ || io->op == SRRS_IO_WRITE) {
        size_t n = 0;
        for (int i = 0; i < io->iovcnt; i++)
            n += io->iov[i].iov_len;
        if (srrs_unlikely(n != io->len)) {
            srrs_io_complete(io, -EINVAL);
            return;
        }
    }
    if (ch->aio) {
        /* aligned reads and writes on the O_DIRECT descriptor (the engine
         * needs one), and fdatasync where the kernel has it; the rest in
         * the worker threads below */
        bool rw = io->op == SRRS_IO_READ || io->op == SRRS_IO_WRITE;
        if ((rw && iov_aligned(io)) || (io->op == SRRS_IO_FLUSH && srrs_aio_has_fdsync(ch->aio))) {
            req_of(io)->direct = rw;
            if (rw)
                srrs_bdev_count_path(io, true);
            srrs_aio_submit(ch->aio, io);
            return;
        }
    }
    if (ch->tp) {
        struct file_req *q = req_of(io);
        q->direct = (io->op == SRRS_IO_READ || io->op == SRRS_IO_WRITE) && d->fd_direct >= 0 &&
                    iov_aligned(io);
        if (io->op == SRRS_IO_READ || io->op == SRRS_IO_WRITE)
            srrs_bdev_count_path(io, q->direct);
        srrs_tpool_submit(ch->tp, io);
        return;
    }
    if (u->wait_head || !file_prep(u, d, io)) {
        io->next = NULL;
        if (u->wait_tail)
            u->wait_tail->next = io;
        else
            u->wait_head = io;
        u->wait_tail = io;
    }
}

/*
 * Rare paths done synchronously: a short transfer's remainder, and zeroing
 * where the file or device has no fallocate. Never taken by aligned I/O on a
 * healthy file, so the "no syscall per I/O" rule holds on the hot path.
 */
static int file_fallback_sync(struct file_disk *d, struct srrs_io *io, uint64_t done_bytes)
{
    if (io->op == SRRS_IO_WRITE_ZEROES || io->op == SRRS_IO_UNMAP) {
        uint64_t off = io->offset, left = io->len;
        while (left) {
            size_t n = SRRS_MIN(left, (uint64_t)SRRS_BUF_MAX);
            ssize_t w = pwrite(d->fd_buf, srrs_zero_buf, n, (off_t)off);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                return -errno;
            }
            off += (uint64_t)w;
            left -= (uint64_t)w;
        }
        return 0;
    }
    uint64_t skip = done_bytes;
    uint64_t off = io->offset + done_bytes;
    for (int i = 0; i < io->iovcnt; i++) {
        uint8_t *base = io->iov[i].iov_base;
        size_t len = io->iov[i].iov_len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        base += skip;
        len -= skip;
        skip = 0;
        while (len) {
            ssize_t n = io->op == SRRS_IO_READ ? pread(d->fd_buf, base, len, (off_t)off)
                                               : pwrite(d->fd_buf, base, len, (off_t)off);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                return -errno;
            }
            /* End of file inside the bdev: the file was truncated under us
             * (it is sized to the bdev at open). Zeroes would be wrong data,
             * and so would the holes a later write past the new end leaves:
             * the bdev fails every I/O from now on, pool or not. */
            if (n == 0)
                return file_fail(d, "%s shrank: it ends at %llu, inside the bdev",
                                 io->bdev->path, (unsigned long long)off);
            base += n;
            len -= (size_t)n;
            off += (uint64_t)n;
        }
    }
    return 0;
}

static void file_req_finish(struct srrs_io *io)
{
    struct file_req *q = req_of(io);
    srrs_io_complete(io, q->status);
}

static void file_cqe(struct uring *u, struct srrs_io *io, int res)
{
    struct file_req *q = req_of(io);
    struct file_disk *d = io->bdev->ctx;
    u->inflight--;
    q->pending--;
    if (res < 0) {
        if ((q->kind == SRRS_IO_WRITE_ZEROES || q->kind == SRRS_IO_UNMAP) &&
            (res == -EOPNOTSUPP || res == -EINVAL || res == -ENOTTY)) {
            __atomic_store_n(&d->no_fallocate, true, __ATOMIC_RELAXED);
            res = file_fallback_sync(d, io, 0);
        } else if (res == -EAGAIN || res == -EINTR) {
            res = file_fallback_sync(d, io, 0);
        }
        if (res < 0 && !q->status)
            q->status = res;
    } else if ((q->kind == SRRS_IO_READ || q->kind == SRRS_IO_WRITE) && (uint64_t)res < io->len) {
        int rc = file_fallback_sync(d, io, (uint64_t)res);
        if (rc && !q->status)
            q->status = rc;
    }
    if (!q->pending)
        file_req_finish(io);
}

/* A worker thread of the threads engine: io done with blocking syscalls,
 * with the io_uring path's fallbacks (short transfers, no fallocate). */
static int file_thread_run(struct srrs_io *io)
{
    struct file_disk *d = io->bdev->ctx;
    ssize_t n;
    if (io->op == SRRS_IO_READ || io->op == SRRS_IO_WRITE) {
        int fd = req_of(io)->direct ? d->fd_direct : d->fd_buf;
        do
            n = io->op == SRRS_IO_READ ? preadv(fd, io->iov, io->iovcnt, (off_t)io->offset)
                                       : pwritev(fd, io->iov, io->iovcnt, (off_t)io->offset);
        while (n < 0 && errno == EINTR);
        if (n < 0)
            return errno == EAGAIN ? file_fallback_sync(d, io, 0) : -errno;
        return (uint64_t)n < io->len ? file_fallback_sync(d, io, (uint64_t)n) : 0;
    }
    if (io->op == SRRS_IO_FLUSH)
        return fdatasync(d->fd_buf) ? -errno : 0;
    if (!__atomic_load_n(&d->no_fallocate, __ATOMIC_RELAXED)) {
        int mode = FALLOC_FL_KEEP_SIZE |
                   (io->op == SRRS_IO_UNMAP ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE);
        if (!fallocate(d->fd_buf, mode, (off_t)io->offset, (off_t)io->len))
            return 0;
        if (errno != EOPNOTSUPP && errno != EINVAL && errno != ENOTTY)
            return -errno;
        __atomic_store_n(&d->no_fallocate, true, __ATOMIC_RELAXED);
    }
    return file_fallback_sync(d, io, 0);
}

/* Native AIO: the descriptor of an I/O it carries. */
static int file_aio_fd(struct srrs_io *io)
{
    struct file_disk *d = io->bdev->ctx;
    return io->op == SRRS_IO_FLUSH ? d->fd_buf : d->fd_direct;
}

/* Native AIO: an I/O is done, with the io_uring path's fallbacks. */
static void file_aio_done(struct srrs_io *io, long long res, bool submitted)
{
    struct file_disk *d = io->bdev->ctx;
    if (io->op == SRRS_IO_FLUSH) {
        if (!submitted && res == -EINVAL) {
            /* no IOCB_CMD_FDSYNC (before Linux 4.18): this flush and the
             * next go to the worker threads; at teardown, done here */
            struct file_ch *ch = io->bdev->ch[srrs_reactor_idx(io->r)];
            if (ch && ch->tp) {
                srrs_tpool_submit(ch->tp, io);
                return;
            }
            res = fdatasync(d->fd_buf) ? -errno : 0;
        }
        srrs_io_complete(io, res < 0 ? (int)res : 0);
        return;
    }
    int rc = 0;
    if (res < 0)
        rc = res == -EAGAIN || res == -EINTR ? file_fallback_sync(d, io, 0) : (int)res;
    else if ((uint64_t)res < io->len)
        rc = file_fallback_sync(d, io, (uint64_t)res);
    srrs_io_complete(io, rc);
}

/* Completions posted in the CQ ring, to their I/Os. */
static int uring_reap(struct uring *u)
{
    int work = 0;
    unsigned head = *u->cq_head;
    unsigned tail = __atomic_load_n(u->cq_tail, __ATOMIC_ACQUIRE);
    while (head != tail) {
        struct io_uring_cqe *cqe = &u->cqes[head & *u->cq_mask];
        struct srrs_io *io = (struct srrs_io *)(uintptr_t)cqe->user_data;
        int res = cqe->res;
        head++;
        __atomic_store_n(u->cq_head, head, __ATOMIC_RELEASE);
        file_cqe(u, io, res);
        work++;
        if (head == tail)
            tail = __atomic_load_n(u->cq_tail, __ATOMIC_ACQUIRE);
    }
    return work;
}

/* One enter a round at most: this round's submissions and, deferred, the
 * completions the kernel holds, which are reaped at once (what they submit
 * goes out with the next round's enter, or before a sleep). */
static int uring_poll(void *arg)
{
    struct uring *u = arg;
    int work = uring_reap(u);
    while (u->wait_head) {
        struct srrs_io *io = u->wait_head;
        if (!file_prep(u, io->bdev->ctx, io))
            break;
        u->wait_head = io->next;
        if (!u->wait_head)
            u->wait_tail = NULL;
        work++;
    }
    bool held = uring_cq_held(u);
    if (u->to_submit || held)
        work += uring_flush(u);
    if (held)
        work += uring_reap(u);
    return work;
}

/* Before the reactor sleeps nothing may stay prepared but unsubmitted. */
static int uring_presleep(void *arg)
{
    struct uring *u = arg;
    if (u->to_submit || uring_cq_held(u)) {
        uring_flush(u);
        return 1;
    }
    return u->wait_head != NULL;
}

static void *file_ch_create(struct srrs_bdev *b, struct srrs_reactor *r)
{
    struct file_ch *ch = calloc(1, sizeof(*ch));
    if (!ch)
        return NULL;
    uint32_t engine = ((struct file_disk *)b->ctx)->engine;
    if (engine == SRRS_FILE_THREADS || engine == SRRS_FILE_AIO) {
        ch->tp = srrs_tpool_get(r, file_thread_run);
        if (!ch->tp) {
            free(ch);
            return NULL;
        }
        if (engine == SRRS_FILE_AIO) {
            ch->aio = srrs_aio_get(r, file_aio_done, file_aio_fd);
            /* The process's contexts are capped system-wide (fs.aio-max-nr),
             * and the cap may be reached after the probe at creation: this
             * reactor's I/O on the bdev then takes the worker threads, said
             * once to the control plane rather than failing every I/O. */
            if (!ch->aio)
                srrs_event_post(b->core, SRRS_EV_LOG, 0, 0, b->name,
                                "bdev %s: engine aio: reactor %d has no AIO context (%s); its I/O "
                                "on this bdev goes through the worker threads", b->name,
                                srrs_reactor_idx(r), srrs_last_error());
        }
        return ch;
    }
    if (!t_uring) {
        struct uring *u = uring_open(srrs_reactor_self() == r);
        if (!u) {
            free(ch);
            return NULL;
        }
        u->poller = srrs_poller_register(r, uring_poll, u, 0);
        if (!u->poller || srrs_poller_set_fd(u->poller, u->efd, EPOLLIN, true)) {
            srrs_poller_unregister(&u->poller);
            uring_close(u);
            free(ch);
            return NULL;
        }
        srrs_poller_set_presleep(u->poller, uring_presleep);
        t_uring = u;
    }
    t_uring->refs++;
    ch->u = t_uring;
    return ch;
}

static void file_ch_destroy(struct srrs_bdev *b, void *chp)
{
    (void)b;
    struct file_ch *ch = chp;
    struct uring *u = ch->u;
    if (ch->aio)
        srrs_aio_put(ch->aio); /* before the threads: a flush may move there */
    if (ch->tp)
        srrs_tpool_put(ch->tp);
    free(ch);
    if (!u || --u->refs)
        return;
    /* Called on the reactor, or in the control thread once it has stopped
     * (a deferred ring then refuses the enter, -EEXIST: closing it cancels
     * and waits for what is still in flight). */
    while (u->inflight)
        if (sys_uring_enter(u->fd, u->to_submit, 1, IORING_ENTER_GETEVENTS) >= 0 || errno == EINTR)
            uring_poll(u);
        else
            break;
    srrs_poller_unregister(&u->poller);
    if (t_uring == u)
        t_uring = NULL;
    uring_close(u);
}

/* ---- exclusive ownership ------------------------------------------------ */

static pthread_mutex_t owners_lock = PTHREAD_MUTEX_INITIALIZER;
static struct file_disk *owners;

static void owner_unlink(struct file_disk *d)
{
    pthread_mutex_lock(&owners_lock);
    struct file_disk **pp = &owners;
    while (*pp && *pp != d)
        pp = &(*pp)->onext;
    if (*pp)
        *pp = d->onext;
    pthread_mutex_unlock(&owners_lock);
}

/* Name of the bdev of this process that owns (dev, ino); false if none. */
static bool owner_find(dev_t dev, ino_t ino, char *out, size_t n)
{
    bool found = false;
    pthread_mutex_lock(&owners_lock);
    for (struct file_disk *d = owners; d && !found; d = d->onext)
        if (d->own_dev == dev && d->own_ino == ino) {
            snprintf(out, n, "%s%s%s%s", d->name, d->label[0] ? " (" : "", d->label,
                     d->label[0] ? ")" : "");
            found = true;
        }
    pthread_mutex_unlock(&owners_lock);
    return found;
}

/* True if a "lock:" / /proc/locks line is a lock on (dev, ino); *pid gets its pid field. */
static bool lock_line_is(const char *line, dev_t dev, ino_t ino, long *pid)
{
    unsigned maj, min;
    unsigned long long in;
    char kind[16], mode[16], rw[16];
    return sscanf(line, "%*[^:]: %15s %15s %15s %ld %x:%x:%llu", kind, mode, rw, pid, &maj, &min,
                  &in) == 7 && maj == major(dev) && min == minor(dev) && in == (unsigned long long)ino;
}

/* The pid of the process holding a lock on (dev, ino), 0 when unknown. Error
 * path only: /proc/locks names it for a classic lock; an OFD lock shows -1
 * there, so every process's fdinfo is searched for a descriptor holding it. */
static long lock_pid(dev_t dev, ino_t ino)
{
    char line[256], path[64];
    long pid = 0, lp;
    FILE *f = fopen("/proc/locks", "re");
    while (f && !pid && fgets(line, sizeof(line), f))
        if (lock_line_is(line, dev, ino, &lp) && lp > 0)
            pid = lp;
    if (f)
        fclose(f);
    DIR *proc = pid ? NULL : opendir("/proc");
    for (struct dirent *pe; proc && !pid && (pe = readdir(proc));) {
        long cand = strtol(pe->d_name, NULL, 10);
        if (cand <= 0 || cand == (long)getpid())
            continue;
        snprintf(path, sizeof(path), "/proc/%ld/fdinfo", cand);
        DIR *fds = opendir(path);
        for (struct dirent *fe; fds && !pid && (fe = readdir(fds));) {
            if (fe->d_name[0] == '.')
                continue;
            char fpath[384];
            snprintf(fpath, sizeof(fpath), "%s/%s", path, fe->d_name);
            FILE *fi = fopen(fpath, "re");
            while (fi && !pid && fgets(line, sizeof(line), fi))
                if (!strncmp(line, "lock:", 5) && lock_line_is(line + 5, dev, ino, &lp))
                    pid = cand;
            if (fi)
                fclose(fi);
        }
        if (fds)
            closedir(fds);
    }
    if (proc)
        closedir(proc);
    return pid;
}

/* Describes who holds (dev, ino) for an error message. */
static void owner_describe(dev_t dev, ino_t ino, bool blockdev, char *out, size_t n)
{
    char name[SRRS_NAME_MAX + 100];
    if (owner_find(dev, ino, name, sizeof(name))) {
        snprintf(out, n, "already in use by bdev %s in this controller", name);
        return;
    }
    long pid = blockdev ? 0 : lock_pid(dev, ino);
    if (pid > 0)
        snprintf(out, n, "locked by another process (pid %ld)", pid);
    else if (blockdev)
        snprintf(out, n, "in use by another process (opened exclusively or mounted)");
    else
        snprintf(out, n, "locked by another process");
}

/*
 * A file's owner holds two OFD locks (docs/architecture.md, Pool: fragments
 * and clusters), each on one byte well past any data, each held by its open
 * file description until the kernel frees it (not at close() of some other
 * descriptor of the file; a second open in this process conflicts too):
 *  - LK_OWN, a write lock on fd_own, the claim: a descriptor that never
 *    carries I/O, so the claim ends the moment the owner's process does;
 *  - LK_IO, a read lock on each descriptor that carries I/O. io_uring holds a
 *    reference to the file of every request in flight, and the requests of a
 *    killed process complete (and drop it) asynchronously, after the process
 *    is reaped: an O_DIRECT write, or the unwritten-extent conversion that
 *    makes it visible, can land well after that. LK_IO lives until the last
 *    of them is done.
 * A new owner waits for LK_IO to clear before it reads or writes a byte: a
 * write of the dead owner landing later would change what it has read (a
 * block read back as zeroes turning into data nobody wrote since) or
 * overwrite what it has written since.
 */
#define LK_OWN 0x7fff0000000ll
#define LK_IO (LK_OWN + 1)
#define LK_IO_WAIT_MS 20000 /* a previous owner's I/O that takes longer: refused, never raced */

static int lk_set(int fd, short type, off_t at)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = at, .l_len = 1};
    return fcntl(fd, F_OFD_SETLK, &fl) ? -errno : 0;
}

/* Does another open file description hold a lock on byte at? 1 yes, 0 no, -errno. */
static int lk_held(int fd, off_t at)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = at, .l_len = 1};
    return fcntl(fd, F_OFD_GETLK, &fl) ? -errno : fl.l_type != F_UNLCK;
}

/* The claim: LK_OWN, write. */
static int file_lock(int fd) { return lk_set(fd, F_WRLCK, LK_OWN); }

/* Control thread, with the claim held (or free: nobody alive owns the file).
 * 0 once no description of a previous owner carries I/O; -EBUSY if one still
 * does after LK_IO_WAIT_MS. A filesystem without locks cannot tell: 0. */
static int file_wait_old_io(int fd)
{
    uint64_t end = srrs_now_ns() + LK_IO_WAIT_MS * 1000000ull;
    while (lk_held(fd, LK_IO) > 0) {
        if (srrs_now_ns() > end)
            return -EBUSY;
        usleep(1000); /* they land within a device's latency, normally milliseconds */
    }
    return 0;
}

/* LK_IO on a descriptor that will carry I/O. Should a block device node
 * refuse locks, its O_EXCL claim still stands and only the wait for a
 * crashed owner's writes is lost there. Sets errno. */
static int lk_io_take(const struct file_disk *d, int fd)
{
    int rc = lk_set(fd, F_RDLCK, LK_IO);
    if (rc && d->is_blockdev)
        return 0;
    errno = -rc;
    return rc;
}

/* The message reads on after "pool P: fragment " or "bdev B: ". */
static int file_old_io_err(const char *path)
{
    return srrs_err(-EBUSY, "%s: its previous owner is gone but writes it had in flight have not "
                    "completed after %d s (the kernel still holds them); refusing to use it before "
                    "they land", path, LK_IO_WAIT_MS / 1000);
}

void srrs_file_set_label(const char *bdev, const char *label)
{
    pthread_mutex_lock(&owners_lock);
    for (struct file_disk *d = owners; d; d = d->onext)
        if (!strcmp(d->name, bdev))
            snprintf(d->label, sizeof(d->label), "%s", label);
    pthread_mutex_unlock(&owners_lock);
}

int srrs_file_check_free(const char *path)
{
    struct stat st;
    if (stat(path, &st) || !S_ISREG(st.st_mode))
        return 0; /* missing: nobody owns it; block devices: O_EXCL at open */
    char who[256];
    if (owner_find(st.st_dev, st.st_ino, who, sizeof(who))) {
        owner_describe(st.st_dev, st.st_ino, false, who, sizeof(who));
        return srrs_err(-EBUSY, "%s is %s", path, who);
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0; /* the open that follows reports it */
    int rc = lk_held(fd, LK_OWN) > 0;
    /* No live owner: a crashed one's writes may still be landing. Callers
     * read the file next (the pool its superblocks and metadata). */
    int old_io = rc ? 0 : file_wait_old_io(fd);
    close(fd);
    if (old_io)
        return file_old_io_err(path);
    if (!rc)
        return 0;
    owner_describe(st.st_dev, st.st_ino, false, who, sizeof(who));
    return srrs_err(-EBUSY, "%s is %s", path, who);
}

static void file_destroy(struct srrs_bdev *b)
{
    struct file_disk *d = b->ctx;
    owner_unlink(d);
    if (d->fd_direct >= 0)
        close(d->fd_direct);
    close(d->fd_buf);
    close(d->fd_own);
    free(d);
}

static int file_fail(struct file_disk *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int file_fail(struct file_disk *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->why, sizeof(d->why), fmt, ap);
    va_end(ap);
    __atomic_store_n(&d->failed, 1, __ATOMIC_RELEASE);
    return -EIO;
}

static const struct srrs_bdev_module file_module;

/* An unprivileged controller's usual stumble, said with its remedy. */
static const char *no_access_hint(bool blockdev)
{
    return blockdev ? " (the controller's user needs read-write access to the device: its owner, "
                      "the disk group, or root)"
                    : " (the controller's user needs read-write access to the file and its "
                      "directory)";
}

/*
 * Is the file still the one we opened, whole? A file truncated or deleted
 * under us would otherwise read back as zeroes (past its new end) or swallow
 * acknowledged writes (unlinked inode): from the first finding on, every I/O
 * on the bdev fails with -EIO (a media error to the host). A few syscalls:
 * meant for a timer or an I/O error, never per I/O.
 */
int srrs_bdev_file_check(struct srrs_bdev *b, char *why, size_t len)
{
    if (b->mod != &file_module)
        return 0;
    struct file_disk *d = b->ctx;
    if (!__atomic_load_n(&d->failed, __ATOMIC_ACQUIRE)) {
        struct stat st, pst;
        uint64_t have = 0;
        if (fstat(d->fd_buf, &st))
            file_fail(d, "fstat: %s", strerror(errno));
        else if (st.st_nlink == 0)
            file_fail(d, "%s was deleted", b->path);
        else if (stat(b->path, &pst) || pst.st_dev != d->dev || pst.st_ino != d->ino)
            file_fail(d, "%s was deleted or replaced by another file", b->path);
        else if (d->is_blockdev ? ioctl(d->fd_buf, BLKGETSIZE64, &have) == 0 && have < b->size
                                : (uint64_t)st.st_size < b->size)
            file_fail(d, "%s shrank to %llu bytes (it must hold %llu)", b->path,
                      (unsigned long long)(d->is_blockdev ? have : (uint64_t)st.st_size),
                      (unsigned long long)b->size);
    }
    if (!__atomic_load_n(&d->failed, __ATOMIC_ACQUIRE))
        return 0;
    if (why && len)
        snprintf(why, len, "%s", d->why);
    return -EIO;
}

/* The operations this file uses; the kernel names what it supports through
 * IORING_REGISTER_PROBE (5.6+), which the last of them (READ, WRITE,
 * FALLOCATE) needs too: an older kernel cannot serve this engine. */
static const uint8_t uring_ops[] = {IORING_OP_READV, IORING_OP_WRITEV, IORING_OP_FSYNC,
                                    IORING_OP_READ, IORING_OP_WRITE, IORING_OP_FALLOCATE};

static bool uring_has_ops(int fd)
{
    size_t len = sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op);
    struct io_uring_probe *pr = calloc(1, len);
    bool ok = pr && sys_uring_register(fd, IORING_REGISTER_PROBE, pr, 256) == 0;
    for (size_t i = 0; ok && i < SRRS_ARRAY_SIZE(uring_ops); i++)
        ok = uring_ops[i] <= pr->last_op && (pr->ops[uring_ops[i]].flags & IO_URING_OP_SUPPORTED);
    free(pr);
    return ok;
}

/* 0 if io_uring works in this process, else why not as a -errno: setup's
 * (EINVAL: a kernel before 5.5, which lacks IORING_SETUP_CQSIZE), or ENOSYS
 * when the kernel lacks an operation this file uses. Probed once with the
 * ring size the reactors use: a seccomp filter, the sysctl and the kernel do
 * not change under a running process. */
static int uring_probe(void)
{
    static _Atomic int cached = 1; /* 1: not probed yet */
    int v = atomic_load(&cached);
    if (v != 1)
        return v;
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_CQSIZE;
    p.cq_entries = URING_ENTRIES * 2;
    int fd = sys_uring_setup(URING_ENTRIES, &p);
    v = fd < 0 ? -errno : uring_has_ops(fd) ? 0 : -ENOSYS;
    if (fd >= 0)
        close(fd);
    atomic_store(&cached, v);
    return v;
}

/* Refusals that auto answers with another engine (anything else is an
 * error to report). ENOMEM: before 5.12 a ring counts against
 * RLIMIT_MEMLOCK, which is 64 KiB for an unprivileged user by default. */
static bool uring_refused(int err)
{
    return err == -ENOSYS || err == -EPERM || err == -EACCES || err == -EINVAL || err == -ENOMEM;
}

/* A one-line /proc/sys value for a message, "absent" if unreadable. */
static void read_sysctl(const char *path, char *out, size_t n)
{
    FILE *f = fopen(path, "re");
    if (!f || !fgets(out, (int)n, f))
        snprintf(out, n, "absent");
    if (f)
        fclose(f);
    out[strcspn(out, "\n")] = 0;
}

/* Native AIO, chosen but not yet sure: auto takes it only if the file takes
 * O_DIRECT, which is known once it is open (else the worker threads). */
#define FILE_AIO_IF_DIRECT 0x100

/* The engine flags ask for, resolved as far as it can be before the file is
 * open (auto: io_uring unless refused, then native AIO unless refused, then
 * the worker threads); -errno + srrs_err. */
static int file_engine(const char *name, uint32_t flags)
{
    uint32_t want = flags & (SRRS_FILE_URING | SRRS_FILE_AIO | SRRS_FILE_THREADS);
    if (want & (want - 1))
        return srrs_err(-EINVAL, "bdev %s: engine: one of uring, aio or threads, not more", name);
    if (want == SRRS_FILE_THREADS)
        return SRRS_FILE_THREADS;
    char sysctl[24], used[24];
    if (want == SRRS_FILE_AIO) {
        int probe = srrs_aio_probe();
        if (!probe)
            return SRRS_FILE_AIO;
        read_sysctl("/proc/sys/fs/aio-max-nr", sysctl, sizeof(sysctl));
        read_sysctl("/proc/sys/fs/aio-nr", used, sizeof(used));
        return srrs_err(probe, "bdev %s: engine aio: io_setup refused: %s (fs.aio-nr = %s of "
                        "fs.aio-max-nr = %s; else a seccomp profile, a kernel without AIO or "
                        "qemu-user); use engine = \"threads\" or \"auto\"", name, strerror(-probe),
                        used, sysctl);
    }
    int probe = uring_probe();
    if (!probe || (!want && !uring_refused(probe)))
        return SRRS_FILE_URING; /* another error: the ring's setup reports it at first I/O */
    if (!want)
        return srrs_aio_probe() ? SRRS_FILE_THREADS : SRRS_FILE_AIO | FILE_AIO_IF_DIRECT;
    read_sysctl("/proc/sys/kernel/io_uring_disabled", sysctl, sizeof(sysctl));
    return srrs_err(probe, "bdev %s: engine uring: io_uring_setup refused: %s (kernel.io_uring_disabled "
                    "= %s; else a seccomp profile or a kernel without io_uring); use engine = "
                    "\"aio\", \"threads\" or \"auto\"", name, strerror(-probe), sysctl);
}

static const char *engine_name(uint32_t engine)
{
    return engine == SRRS_FILE_THREADS ? "threads" : engine == SRRS_FILE_AIO ? "aio" : "uring";
}

static const struct srrs_bdev_module file_module = {
    .name = "file",
    .submit = file_submit,
    .channel_create = file_ch_create,
    .channel_destroy = file_ch_destroy,
    .destroy = file_destroy,
};

int srrs_bdev_create_file(struct srrs_core *core, const char *name, const char *path, uint64_t size,
                          uint32_t bs, uint32_t flags)
{
    if (!name || !path || !*path)
        return srrs_err(-EINVAL, "bdev %s: a path is required", name ? name : "?");
    if (bs != 512 && bs != 4096)
        return srrs_err(-EINVAL, "bdev %s: block_size must be 512 or 4096, got %u", name, bs);
    struct stat st;
    bool exists = stat(path, &st) == 0;
    if (!exists && errno != ENOENT)
        return srrs_err(-errno, "bdev %s: %s: %s", name, path, strerror(errno));
    if (exists && !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
        return srrs_err(-EINVAL, "bdev %s: %s is neither a regular file nor a block device", name,
                        path);
    if (!exists && size == 0)
        return srrs_err(-ENOENT, "bdev %s: %s does not exist and no size was given to create it",
                        name, path);
    int engine = file_engine(name, flags);
    if (engine < 0)
        return engine;
    struct file_disk *d = calloc(1, sizeof(*d));
    if (!d)
        return srrs_err(-ENOMEM, "bdev %s: out of memory", name);
    d->engine = (uint32_t)engine;
    d->fd_direct = -1;
    d->is_blockdev = exists && S_ISBLK(st.st_mode);
    snprintf(d->name, sizeof(d->name), "%s", name);
    /* A block device is claimed with O_EXCL (the kernel refuses a second
     * exclusive open, or a mounted device); a file gets an OFD lock below. */
    int flags_open = O_RDWR | O_CLOEXEC | (d->is_blockdev ? O_EXCL : O_CREAT);
    d->fd_buf = open(path, flags_open, 0600);
    int rc;
    char who[256];
    if (d->fd_buf < 0) {
        if (errno == EBUSY && d->is_blockdev) {
            owner_describe(st.st_rdev, 0, true, who, sizeof(who));
            rc = srrs_err(-EBUSY, "bdev %s: %s is %s", name, path, who);
        } else {
            int e = errno;
            rc = srrs_err(-e, "bdev %s: cannot open %s: %s%s", name, path, strerror(e),
                          e == EACCES || e == EPERM ? no_access_hint(d->is_blockdev) : "");
        }
        free(d);
        return rc;
    }
    if (fstat(d->fd_buf, &st)) {
        rc = srrs_err(-errno, "bdev %s: fstat %s: %s", name, path, strerror(errno));
        close(d->fd_buf);
        free(d);
        return rc;
    }
    d->own_dev = d->is_blockdev ? st.st_rdev : st.st_dev;
    d->own_ino = d->is_blockdev ? 0 : st.st_ino;
    if (!d->is_blockdev && (rc = file_lock(d->fd_buf))) {
        owner_describe(d->own_dev, d->own_ino, false, who, sizeof(who));
        rc = srrs_err(rc == -EAGAIN || rc == -EACCES ? -EBUSY : rc, "bdev %s: %s is %s", name, path,
                      who);
        close(d->fd_buf);
        free(d);
        return rc;
    }
    /* The claim stays on its own descriptor: io_uring keeps references to the
     * files of requests in flight and drops them asynchronously after a
     * crash, which would keep the claim for a while after the process is
     * gone. The I/O descriptors hold LK_IO instead, which we wait out here:
     * a crashed previous owner's writes land before we touch the file. */
    d->fd_own = d->fd_buf;
    if (file_wait_old_io(d->fd_own)) {
        char msg[512];
        file_old_io_err(path);
        snprintf(msg, sizeof(msg), "%s", srrs_last_error());
        rc = srrs_err(-EBUSY, "bdev %s: %s", name, msg);
        close(d->fd_own);
        free(d);
        return rc;
    }
    d->fd_buf = open(path, O_RDWR | O_CLOEXEC);
    if (d->fd_buf < 0 || lk_io_take(d, d->fd_buf)) {
        rc = srrs_err(-errno, "bdev %s: cannot open %s: %s", name, path, strerror(errno));
        if (d->fd_buf >= 0)
            close(d->fd_buf);
        close(d->fd_own);
        free(d);
        return rc;
    }
    struct stat ost;
    if (!fstat(d->fd_buf, &ost)) {
        d->dev = ost.st_dev;
        d->ino = ost.st_ino;
    }
    uint64_t have;
    if (d->is_blockdev) {
        if (ioctl(d->fd_buf, BLKGETSIZE64, &have)) {
            rc = srrs_err(-errno, "bdev %s: %s: BLKGETSIZE64: %s", name, path, strerror(errno));
            goto fail;
        }
        int lbs = 512;
        if (ioctl(d->fd_buf, BLKSSZGET, &lbs) == 0 && (uint32_t)lbs > bs) {
            rc = srrs_err(-EINVAL, "bdev %s: %s has %d-byte sectors, larger than block_size %u",
                          name, path, lbs, bs);
            goto fail;
        }
        if (size && size > have) {
            rc = srrs_err(-ENOSPC, "bdev %s: %s holds %llu bytes, less than size %llu", name, path,
                          (unsigned long long)have, (unsigned long long)size);
            goto fail;
        }
    } else {
        have = (uint64_t)st.st_size;
        /* An existing file is never resized unless asked: a typo in a path
         * must not grow some other file with zeroes. */
        if (exists && size > have && !(flags & SRRS_FILE_GROW)) {
            rc = srrs_err(-EFBIG, "bdev %s: %s exists with %llu bytes, less than size %llu; refusing "
                          "to grow an existing file (set grow = true to resize it, or omit size to "
                          "use it as it is)", name, path, (unsigned long long)have,
                          (unsigned long long)size);
            goto fail;
        }
        if (size > have && ftruncate(d->fd_buf, (off_t)size)) {
            rc = srrs_err(-errno, "bdev %s: cannot size %s to %llu bytes: %s", name, path,
                          (unsigned long long)size, strerror(errno));
            goto fail;
        }
        if (size > have)
            have = size;
    }
    uint64_t use = size ? size : have;
    use -= use % bs;
    if (use == 0) {
        rc = srrs_err(-EINVAL, "bdev %s: %s is smaller than one block", name, path);
        goto fail;
    }
    d->fd_direct = open(path, O_RDWR | O_CLOEXEC | O_DIRECT);
    int direct_errno = d->fd_direct < 0 ? errno : 0;
    if (d->fd_direct >= 0 && lk_io_take(d, d->fd_direct)) {
        rc = srrs_err(-errno, "bdev %s: cannot lock %s: %s", name, path, strerror(errno));
        goto fail;
    }
    if (engine & FILE_AIO_IF_DIRECT)
        engine = d->fd_direct >= 0 ? SRRS_FILE_AIO : SRRS_FILE_THREADS;
    else if (engine == SRRS_FILE_AIO && d->fd_direct < 0) {
        rc = srrs_err(-EINVAL, "bdev %s: engine aio: %s refuses O_DIRECT (%s; ramfs does, and tmpfs "
                      "before Linux 6.6), and native AIO without it blocks in io_submit; use "
                      "engine = \"threads\" or \"auto\"", name, path, strerror(direct_errno));
        goto fail;
    }
    d->engine = (uint32_t)engine;
    pthread_mutex_lock(&owners_lock);
    d->onext = owners;
    owners = d;
    pthread_mutex_unlock(&owners_lock);
    rc = srrs_bdev_register(core, name, &file_module, d, use / bs, bs, NULL);
    if (rc) {
        owner_unlink(d);
        goto fail;
    }
    struct srrs_bdev *b = srrs_bdev_open(core, name);
    if (b) {
        snprintf(b->path, sizeof(b->path), "%s", path);
        snprintf(b->engine, sizeof(b->engine), "%s", engine_name((uint32_t)engine));
        srrs_bdev_close(&b);
    }
    return 0;
fail:
    if (!exists && !d->is_blockdev)
        unlink(path); /* created by this call: nothing left behind */
    if (d->fd_direct >= 0)
        close(d->fd_direct);
    close(d->fd_buf);
    close(d->fd_own);
    free(d);
    return rc;
}
