/*
 * SRRS core: the private C API shared by the data-plane modules (bdevs,
 * nvmf, vhost, lvol, mirror). Never read by cffi.
 */
#ifndef SRRS_INT_H
#define SRRS_INT_H

#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>

#include "srrs.h"

#define SRRS_ABI_VERSION 7
#define SRRS_MAX_REACTORS 64
#define SRRS_NAME_MAX 64
#define SRRS_CACHELINE 64

#define SRRS_UNUSED __attribute__((unused))
#define srrs_likely(x) __builtin_expect(!!(x), 1)
#define srrs_unlikely(x) __builtin_expect(!!(x), 0)
#define SRRS_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define SRRS_MIN(a, b) ((a) < (b) ? (a) : (b))
#define SRRS_MAX(a, b) ((a) > (b) ? (a) : (b))

/* ---- errors ----------------------------------------------------------- */

/* Records a message for srrs_last_error() and returns err (a -errno). */
int srrs_err(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- time: TSC (x86-64) or the virtual counter (arm64) ----------------- */

extern uint64_t srrs_tick_hz;
void srrs_ticks_init(void);

static inline uint64_t srrs_ticks(void)
{
#if defined(__x86_64__)
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
#elif defined(__aarch64__)
    uint64_t v;
    __asm__ volatile("isb; mrs %0, cntvct_el0" : "=r"(v));
    return v;
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
#endif
}

static inline uint64_t srrs_ticks_to_ns(uint64_t t)
{
    return (uint64_t)((__uint128_t)t * 1000000000ull / srrs_tick_hz);
}

static inline uint64_t srrs_us_to_ticks(uint64_t us)
{
    return (uint64_t)((__uint128_t)us * srrs_tick_hz / 1000000ull);
}

/* ns per tick as a 32.32 fixed-point factor, set with srrs_tick_hz: one
 * multiply instead of srrs_ticks_to_ns()'s 128-bit division (the I/O path). */
extern uint64_t srrs_tick_ns_mult;

static inline uint64_t srrs_ticks_to_ns_fast(uint64_t t)
{
    return (uint64_t)(((__uint128_t)t * srrs_tick_ns_mult) >> 32);
}

uint64_t srrs_now_ns(void); /* CLOCK_MONOTONIC */

/* ---- reactors, messages, pollers --------------------------------------- */

typedef void (*srrs_msg_fn)(void *arg);
/* Returns SRRS_POLLER_BUSY (> 0) when it did work, SRRS_POLLER_IDLE (0) when
 * it found none (enum srrs_poller_result, ffi/srrs.h). */
typedef int (*srrs_poller_fn)(void *arg);

struct srrs_poller;

/* The reactor the calling thread runs, or NULL on a control thread. */
struct srrs_reactor *srrs_reactor_self(void);
struct srrs_reactor *srrs_core_reactor(struct srrs_core *core, int idx);
struct srrs_core *srrs_reactor_core(struct srrs_reactor *r);
int srrs_reactor_idx(struct srrs_reactor *r);
/* Reactor thread: its poll mode now (enum srrs_poll_mode). */
int srrs_reactor_poll_mode(struct srrs_reactor *r);
bool srrs_reactor_is_stopping(struct srrs_reactor *r);

/* Any thread. Lock-free; wakes the reactor only if it sleeps.
 * -EAGAIN: ring full (caller retries), -ESHUTDOWN: reactor has stopped. */
int srrs_reactor_send(struct srrs_reactor *r, srrs_msg_fn fn, void *arg);
/* Control thread: runs fn(arg) on reactor r and waits for it. On a reactor
 * that is not running (never started, or stopped) fn runs in the caller. */
int srrs_reactor_call(struct srrs_reactor *r, srrs_msg_fn fn, void *arg);

/* Reactor thread. period_us 0: every loop; else at most every period_us. */
struct srrs_poller *srrs_poller_register(struct srrs_reactor *r, srrs_poller_fn fn, void *arg,
                                         uint64_t period_us);
/* Reactor thread. Safe from inside the poller itself. Nulls *p. */
void srrs_poller_unregister(struct srrs_poller **p);
/* Reactor thread. Adds fd to the reactor's epoll set (adaptive mode sleeps on
 * it). eventfd: the reactor reads it to reset it when it fires. */
int srrs_poller_set_fd(struct srrs_poller *p, int fd, uint32_t epoll_events, bool eventfd);
int srrs_poller_mod_fd(struct srrs_poller *p, uint32_t epoll_events);
/* Reactor thread. A timed poller whose fd wakes a sleeping reactor for it (an
 * inotify fd): its period does not bound an adaptive reactor's sleep, so an
 * idle reactor sleeps until the fd fires, and then runs it at once; awake, the
 * reactor runs it every period, as any timed poller, sleeps or not
 * (docs/architecture.md, Poll modes and adaptive sleep). */
void srrs_poller_set_fd_wakes(struct srrs_poller *p);
/* Reactor thread. A lazy timed poller runs at its period while the reactor
 * is awake, but its period does not bound an adaptive reactor's sleep: for
 * periodic duties that only some state needs (timeouts of the connections
 * a module holds), which its presleep check turns on and off as that state
 * comes and goes; the reactor takes a sleep's timeout after the presleep
 * checks (docs/architecture.md, Poll modes and adaptive sleep). A poller
 * set fd_wakes or fd_only is lazy from then on, until it says otherwise (the
 * pool's health check, while a check is owed after I/O). */
void srrs_poller_set_lazy(struct srrs_poller *p, bool lazy);
/* Reactor thread. srrs_poller_set_fd_wakes for a poller whose fd is its whole
 * duty (a listening socket): a sleep that watched the fd and saw it not fire
 * did its work, so the poller's period starts again when the sleep ends. Not
 * for a poller with periodic work its fd does not report (the pool's health
 * check finds a truncated file by its period alone). */
void srrs_poller_set_fd_only(struct srrs_poller *p);
/* Reactor thread. An fd the reactor's sleep watches for a module: when a
 * sleep's epoll_wait reports it, fn(arg) runs at once (on the reactor, before
 * any poller), never per loop; a poller that polls the fd itself can then skip
 * a readiness call (the NVMe/TCP sockets: docs/architecture.md, Poll modes and
 * adaptive sleep). NULL when out of memory or epoll refuses the fd. Delete it
 * (on the reactor thread) before closing the fd. */
struct srrs_poller *srrs_fd_watch_add(struct srrs_reactor *r, int fd, uint32_t epoll_events,
                                      srrs_msg_fn fn, void *arg);
void srrs_fd_watch_del(struct srrs_poller **w);
/* Reactor thread. Called before the reactor sleeps; return > 0 if work is
 * pending (e.g. a ring filled while notifications were off): no sleep then. */
void srrs_poller_set_presleep(struct srrs_poller *p, srrs_poller_fn fn);

/* Reactor thread. Work a module defers to the end of the poll round, after
 * the round's completions have run: one notification or send for all the
 * I/O a round completed (the vhost-user call eventfd). The module embeds the
 * entry; queueing a queued entry does nothing; fn runs once, at the end of
 * the round that queued it (an entry queued by a flush runs next round).
 * Cancel before the entry's memory goes away (docs/architecture.md, Threads). */
struct srrs_flush {
    srrs_msg_fn fn;
    void *arg;
    struct srrs_flush *next;
    bool queued;
};
void srrs_reactor_flush(struct srrs_reactor *r, struct srrs_flush *f);
void srrs_reactor_flush_cancel(struct srrs_reactor *r, struct srrs_flush *f);

/* Reactor thread: run fn(arg) when the reactor is asked to stop (exports stop
 * taking new work). Returns a handle for srrs_reactor_del_stop_hook. */
int srrs_reactor_add_stop_hook(struct srrs_reactor *r, srrs_msg_fn fn, void *arg);
void srrs_reactor_del_stop_hook(struct srrs_reactor *r, int handle);

/* Control thread. Per-core state of a layer above the reactors (the bdev
 * registry), found by the address of a key of that layer; destroy runs first
 * in srrs_core_destroy, newest first, while the reactors still exist.
 * -ENOSPC: every slot taken. */
#define SRRS_CORE_SLOTS 4
typedef void (*srrs_slot_destroy_fn)(struct srrs_core *core, void *val);
void *srrs_core_slot(struct srrs_core *core, const void *key);
int srrs_core_set_slot(struct srrs_core *core, const void *key, void *val,
                       srrs_slot_destroy_fn destroy);

/* Any thread. Queue an event for the control plane (dropped and counted if full). */
void srrs_event_post(struct srrs_core *core, uint32_t type, uint64_t a, uint64_t b, const char *obj,
                     const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* ---- I/O objects and buffers ------------------------------------------- */

struct srrs_io;
struct srrs_bdev;
typedef void (*srrs_io_cb)(struct srrs_io *io, void *arg);

#define SRRS_IO_INLINE_IOV 4
#define SRRS_IO_DRIVER_CTX 64

/* srrs_io.flags */
#define SRRS_IO_F_ONE_PATH 0x01 /* its host has no other path to the volume (vhost-user): a
                                   path error is an I/O error there, so a mirror that cannot
                                   serve holds it for a while instead (ffi/mirror.h) */

struct srrs_io {
    struct srrs_bdev *bdev;
    uint64_t submit_ticks;  /* set by srrs_bdev_submit: the bdev's latency is submit -> completion */
    struct srrs_reactor *r;
    uint8_t op;
    uint8_t flags;          /* SRRS_IO_F_*; 0 from srrs_io_get */
    int32_t status;         /* 0 or -errno, valid in the callback */
    uint64_t offset;        /* bytes */
    uint64_t len;           /* bytes */
    struct iovec *iov;
    int iovcnt;
    srrs_io_cb cb;
    void *cb_arg;
    struct srrs_io *next;   /* free list / completion list / module queues */
    struct srrs_io *parent; /* stacked bdevs: the I/O this one serves */
    uint64_t tag;           /* owner's use */
    struct iovec iov_inline[SRRS_IO_INLINE_IOV];
    uint8_t driver_ctx[SRRS_IO_DRIVER_CTX] __attribute__((aligned(8))); /* bdev module scratch */
};

/* Reactor thread. NULL when the reactor's pool is empty (caller queues and retries). */
struct srrs_io *srrs_io_get(struct srrs_reactor *r);
void srrs_io_put(struct srrs_io *io);
/* Reactor thread. Completion runs io->cb later in the same reactor's loop
 * (never inline: no recursion between submit and completion). */
void srrs_io_complete(struct srrs_io *io, int status);
/* Runs on the reactor for every completed I/O, before its callback, with the
 * batch's clock reading (ticks). The layer above the reactors that accounts
 * I/O (bdev.c: statistics and latency per bdev) installs it; the reactor
 * calls it without knowing what it counts (docs/architecture.md, Threads). */
typedef void (*srrs_io_done_fn)(struct srrs_io *io, uint64_t now_ticks);
/* Control thread. One hook per core; before any I/O that needs it is submitted. */
void srrs_core_set_io_done(struct srrs_core *core, srrs_io_done_fn fn);

/* Aligned (4 KiB) buffers from per-reactor pools: classes 4 KiB, 64 KiB, 1 MiB + 64 KiB.
 * NULL if len > SRRS_BUF_LARGE or the class is empty. */
void *srrs_buf_get(struct srrs_reactor *r, size_t len);
void srrs_buf_put(struct srrs_reactor *r, void *buf, size_t len);
#define SRRS_BUF_MAX (1u << 20)
/* The largest class has slack so a 1 MiB transfer fits at a sub-page offset. */
#define SRRS_BUF_LARGE ((1u << 20) + 65536u)

/* ---- block devices ----------------------------------------------------- */

struct srrs_bdev_module {
    const char *name;
    /* Reactor thread. Range and alignment are already checked; must end in
     * srrs_io_complete(io, status) (or srrs_io_complete from a later poll). */
    void (*submit)(struct srrs_bdev *bdev, void *ch, struct srrs_io *io);
    /* Reactor thread, on first I/O from that reactor. NULL: no channel. */
    void *(*channel_create)(struct srrs_bdev *bdev, struct srrs_reactor *r);
    void (*channel_destroy)(struct srrs_bdev *bdev, void *ch);
    /* Control thread, after every channel is destroyed. */
    void (*destroy)(struct srrs_bdev *bdev);
    /* Any thread. The single-path hosts' I/O (SRRS_IO_F_ONE_PATH) this bdev
     * holds while it cannot serve is let go: failed, and what is in flight
     * now is not held again (its host is stopping a queue that must drain).
     * NULL: it holds none. */
    void (*release_held)(struct srrs_bdev *bdev);
};

/*
 * I/O latency histogram: log-linear buckets of whole microseconds, like
 * HdrHistogram with 8 sub-buckets per power of two (a bucket is at most 1/8
 * of its lower bound wide). Buckets 0..7 hold 0..7 us exactly; then each
 * power of two 2^m (m = 3..23) has 8 buckets of width 2^(m-3); the last
 * bucket holds everything from 2^24 us (16.8 s) up. ffi/lathist.py is the
 * Python side of the same layout.
 */
#define SRRS_LAT_SUB_BITS 3
#define SRRS_LAT_SUB (1u << SRRS_LAT_SUB_BITS)
#define SRRS_LAT_MAX_MSB 23
#define SRRS_LAT_BUCKETS ((SRRS_LAT_MAX_MSB - SRRS_LAT_SUB_BITS + 2) * SRRS_LAT_SUB + 1) /* 177 */

/* Latency classes, each its own histogram. */
/* latency classes: enum srrs_lat_class (ffi/srrs.h) */

static inline uint32_t srrs_lat_bucket(uint64_t us)
{
    if (us < SRRS_LAT_SUB)
        return (uint32_t)us;
    uint32_t msb = 63u - (uint32_t)__builtin_clzll(us);
    if (srrs_unlikely(msb > SRRS_LAT_MAX_MSB))
        return SRRS_LAT_BUCKETS - 1;
    return (msb - SRRS_LAT_SUB_BITS + 1) * SRRS_LAT_SUB +
           (uint32_t)((us >> (msb - SRRS_LAT_SUB_BITS)) & (SRRS_LAT_SUB - 1));
}

struct srrs_lat_hist {
    uint64_t n[SRRS_LAT_NOPS][SRRS_LAT_BUCKETS];
};

/*
 * One per (bdev, reactor): written only by that reactor, with plain
 * load + relaxed-store increments (no lock, no locked instruction); a control
 * thread sums them with relaxed loads. A reader on another thread may see one
 * counter updated and its neighbour not yet: fine for statistics.
 */
struct srrs_bdev_stats {
    uint64_t reads, writes, bytes_read, bytes_written, flushes, unmaps, write_zeroes, errors;
    uint64_t direct_ios, buffered_ios;
    uint64_t lat_sum_ns[SRRS_LAT_NOPS]; /* successful I/Os, submit -> completion */
    /* Allocated by the reactor at its first completion on this bdev (most of
     * 10,000 volumes never see I/O from most reactors), published with a
     * release store; freed with the bdev. NULL if that allocation failed. */
    struct srrs_lat_hist *_Atomic hist;
} __attribute__((aligned(SRRS_CACHELINE)));

/* Reactor thread: the single writer's increment (see struct srrs_bdev_stats). */
static inline void srrs_stat_add(uint64_t *p, uint64_t v)
{
    __atomic_store_n(p, *p + v, __ATOMIC_RELAXED);
}

struct srrs_bdev {
    char name[SRRS_NAME_MAX];
    char path[256];
    char engine[8];                /* file: the I/O engine in use (srrs_bdev_info.engine) */
    const struct srrs_bdev_module *mod;
    void *ctx;
    struct srrs_core *core;
    uint64_t num_blocks;
    uint32_t block_size;
    uint32_t block_shift;
    uint64_t size;               /* bytes */
    atomic_uint open_count;
    char owner[SRRS_NAME_MAX];   /* non-empty: internal to that stacked bdev, never exported */
    struct srrs_bdev_stats *stats; /* one per reactor */
    void **ch;                     /* one per reactor */
    struct srrs_bdev *hnext;       /* registry hash chain */
    uint32_t reg_idx;              /* its place in the registry's array of all bdevs */
};

/* Control thread. Registers a bdev built by a module (takes ctx). */
/* Control thread. What file bdev `bdev` is to its user (named to a second owner). */
void srrs_file_set_label(const char *bdev, const char *label);
int srrs_bdev_register(struct srrs_core *core, const char *name, const struct srrs_bdev_module *mod,
                       void *ctx, uint64_t num_blocks, uint32_t block_size, struct srrs_bdev **out);
/* Any thread. A file bdev whose file was truncated, deleted or replaced fails
 * every I/O with -EIO from then on: returns that -EIO (why says what), else 0.
 * A few syscalls: for a timer or an I/O error, never per I/O. 0 for other modules. */
int srrs_bdev_file_check(struct srrs_bdev *b, char *why, size_t len);
/* Any thread, b open. I/Os completed (every kind, errors too), summed over the
 * reactors' channels with relaxed loads: a figure that moves while I/O flows. */
uint64_t srrs_bdev_ios(struct srrs_bdev *b);
/* Control thread. A RAM bdev over memory the caller owns (a shared mapping
 * that outlives the process): the caller unmaps it after deleting the bdev. */
int srrs_bdev_create_mem(struct srrs_core *core, const char *name, void *mem, uint64_t size,
                         uint32_t block_size);
/* Control thread. Open for use by an export/stacked bdev; NULL + srrs_err if absent. */
struct srrs_bdev *srrs_bdev_open(struct srrs_core *core, const char *name);
void srrs_bdev_close(struct srrs_bdev **bdev);
/* Control thread. srrs_bdev_open for an export (nvmf namespace, vhost device):
 * refuses a bdev internal to another (owner set), e.g. a pair's replica. */
int srrs_bdev_open_export(struct srrs_core *core, const char *name, struct srrs_bdev **out);
/* Control thread. Re-key b under new_name (-EEXIST if taken). */
int srrs_bdev_rename(struct srrs_core *core, struct srrs_bdev *b, const char *new_name);
/* Reactor thread. Fills io->bdev/op/offset/len before; checks range and
 * alignment (bad: completes with -ERANGE / -EINVAL), counts, dispatches. */
void srrs_bdev_submit(struct srrs_io *io);
/* Any thread: the bdev's module's release_held, if it has one. */
void srrs_bdev_release_held(struct srrs_bdev *b);
/* Reactor thread, at completion before io->cb: counts the I/O and its latency
 * up to now_ticks (the reactor reads the clock once per completion batch). */
/* The same at srrs_ticks() (a completion outside the reactor's batch). */
void srrs_bdev_account(struct srrs_io *io);
/* Reactor thread: io for bdev with a single buffer. */
static inline void srrs_io_prep(struct srrs_io *io, struct srrs_bdev *bdev, int op, uint64_t offset,
                                uint64_t len, void *buf, srrs_io_cb cb, void *cb_arg)
{
    io->bdev = bdev;
    io->op = (uint8_t)op;
    io->offset = offset;
    io->len = len;
    io->iov = io->iov_inline;
    io->iov_inline[0].iov_base = buf;
    io->iov_inline[0].iov_len = buf ? len : 0;
    io->iovcnt = buf ? 1 : 0;
    io->cb = cb;
    io->cb_arg = cb_arg;
    io->status = 0;
}

/* Zeroed, 4 KiB-aligned, read-only 1 MiB buffer (write-zeroes fallbacks). */
extern const uint8_t *srrs_zero_buf;

/* Buffers from mmap: huge pages when the system has them reserved, else 4 KiB pages. */
void *srrs_mem_alloc(size_t len, bool *huge);
/* The same, every page faulted in now (RAM disks: no page fault on the I/O path). */
void *srrs_mem_alloc_populated(size_t len, bool *huge);
void srrs_mem_free(void *p, size_t len);
/* The calling thread onto CPU cpu (cpu < 0: left as it is). */
void srrs_pin_self(int cpu);

/* ---- load generator targets (bdev, nvmf initiator, vhost client) ------- */

struct srrs_bench_req {
    int op;             /* SRRS_IO_READ / SRRS_IO_WRITE */
    uint64_t offset;
    uint32_t len;
    void *buf;
    uint64_t start;     /* ticks */
    void *job;
    uint32_t slot;
    /* Multipath initiator: when the I/O first lost its path (0: never), and
     * its link in the host's list of I/Os waiting for a usable path. */
    uint64_t mp_t0;
    struct srrs_bench_req *mp_next;
};

struct srrs_bench_target {
    uint64_t size;          /* bytes */
    uint32_t block_size;
    void *ctx;
    /* Reactor thread; completes through srrs_bench_req_done(req, status). */
    int (*submit)(void *ctx, struct srrs_bench_req *req);
    /* Reactor thread, optional: poll the transport (returns > 0 when busy). */
    int (*poll)(void *ctx);
};

/* Reactor thread. */
void srrs_bench_req_done(struct srrs_bench_req *req, int status);
/* Control thread: runs a job over target on reactor r, waits, fills *out. */
int srrs_bench_run(struct srrs_reactor *r, struct srrs_bench_target *t, const struct srrs_bench_opts *o,
                   struct srrs_bench_result *out);

#endif
