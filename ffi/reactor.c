/*
 * Reactors: one poll loop per thread (docs/architecture.md, Threads). Messages from any thread
 * arrive through a lock-free bounded MPSC ring (Vyukov's sequence-numbered
 * cells) and an eventfd that is written only while the reactor sleeps.
 * Events to the control plane leave through a second MPSC ring.
 */
#include "srrs_int.h"

#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ---- errors and time -------------------------------------------------- */

static __thread char t_errbuf[512];

int srrs_err(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t_errbuf, sizeof(t_errbuf), fmt, ap);
    va_end(ap);
    return err;
}

const char *srrs_last_error(void) { return t_errbuf; }
int srrs_abi_version(void) { return SRRS_ABI_VERSION; }

uint64_t srrs_tick_hz = 1000000000ull;
uint64_t srrs_tick_ns_mult = 1ull << 32; /* 1 ns per tick until calibrated */

uint64_t srrs_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void srrs_ticks_init(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    void calibrate(void);
    pthread_once(&once, calibrate);
}

void calibrate(void)
{
#if defined(__x86_64__)
    uint64_t n0 = srrs_now_ns(), t0 = srrs_ticks();
    struct timespec d = {0, 20 * 1000 * 1000};
    nanosleep(&d, NULL);
    uint64_t n1 = srrs_now_ns(), t1 = srrs_ticks();
    srrs_tick_hz = (uint64_t)((__uint128_t)(t1 - t0) * 1000000000ull / (n1 - n0));
#elif defined(__aarch64__)
    uint64_t f;
    __asm__ volatile("mrs %0, cntfrq_el0" : "=r"(f));
    srrs_tick_hz = f;
#endif
    srrs_tick_ns_mult = (uint64_t)(((__uint128_t)1000000000ull << 32) / srrs_tick_hz);
}

/* ---- memory ----------------------------------------------------------- */

static void *mem_alloc(size_t len, bool *huge, int extra)
{
    size_t hlen = (len + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
    void *p = mmap(NULL, hlen, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | extra, -1, 0);
    if (p != MAP_FAILED) {
        if (huge)
            *huge = true;
        return p;
    }
    p = mmap(NULL, hlen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    /* Transparent huge pages where the kernel allows them: fewer TLB misses.
     * Advise before the first touch, then fault everything in if asked. */
    madvise(p, hlen, MADV_HUGEPAGE);
    if (extra & MAP_POPULATE) {
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
        if (madvise(p, hlen, MADV_POPULATE_WRITE))
            for (size_t off = 0; off < hlen; off += 4096)
                ((volatile uint8_t *)p)[off] = 0;
    }
    if (huge)
        *huge = false;
    return p;
}

void *srrs_mem_alloc(size_t len, bool *huge) { return mem_alloc(len, huge, 0); }

void *srrs_mem_alloc_populated(size_t len, bool *huge) { return mem_alloc(len, huge, MAP_POPULATE); }

void srrs_mem_free(void *p, size_t len)
{
    if (p)
        munmap(p, (len + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1));
}

void srrs_pin_self(int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

/* ---- the I/O path's code, kept in memory --------------------------------- */
/* A quiet controller's code pages are file pages like any other: proactive
 * reclaim (DAMON's pageout, memory.reclaim, kswapd) drops those untouched for
 * a while, and the first I/O after a quiet minute then waits on major faults
 * reading them back from disk. The read-only segments (code, constants) of
 * the core and of the libraries its reactors run on the I/O path (libc, and
 * libcrypto for the mirror's MACs) are locked (docs/architecture.md, Poll
 * modes and adaptive sleep). Their pages are shared with every other user of
 * those files: locking costs a few MiB, once. */

struct lock_ctx {
    uintptr_t self; /* the core's load address */
    uint64_t locked, wanted;
    int err;
};

static bool lock_wanted(const struct dl_phdr_info *info, const struct lock_ctx *c)
{
    if ((uintptr_t)info->dlpi_addr == c->self)
        return true;
    const char *n = info->dlpi_name;
    const char *base = n ? strrchr(n, '/') : NULL;
    base = base ? base + 1 : n;
    return base && (!strncmp(base, "libc.so", 7) || !strncmp(base, "libcrypto.so", 12));
}

static int lock_object(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    struct lock_ctx *c = arg;
    if (!lock_wanted(info, c))
        return 0;
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || (ph->p_flags & PF_W) || !ph->p_memsz)
            continue;
        uintptr_t a = ((uintptr_t)info->dlpi_addr + ph->p_vaddr) & ~(pg - 1);
        uintptr_t e = ((uintptr_t)info->dlpi_addr + ph->p_vaddr + ph->p_memsz + pg - 1) & ~(pg - 1);
        c->wanted += e - a;
        if (mlock((void *)a, e - a) == 0)
            c->locked += e - a;
        else if (!c->err)
            c->err = -errno;
    }
    return 0;
}

int srrs_lock_code(uint64_t *locked, uint64_t *wanted)
{
    Dl_info di;
    struct lock_ctx c = {0};
    if (!dladdr((void *)srrs_lock_code, &di) || !di.dli_fbase)
        return srrs_err(-ENOENT, "lock code: the core's own object was not found");
    c.self = (uintptr_t)di.dli_fbase;
    dl_iterate_phdr(lock_object, &c);
    *locked = c.locked;
    *wanted = c.wanted;
    if (c.err)
        return srrs_err(c.err, "lock code: mlock: %s (%llu of %llu KiB locked; RLIMIT_MEMLOCK "
                        "or CAP_IPC_LOCK allows more)", strerror(-c.err),
                        (unsigned long long)(c.locked >> 10), (unsigned long long)(c.wanted >> 10));
    return 0;
}

/* ---- MPSC ring -------------------------------------------------------- */

struct mpsc_cell {
    _Atomic uint64_t seq;
    srrs_msg_fn fn;
    void *arg;
};

struct mpsc {
    _Atomic uint64_t head __attribute__((aligned(SRRS_CACHELINE))); /* producers */
    uint64_t tail __attribute__((aligned(SRRS_CACHELINE)));         /* consumer */
    uint64_t mask;
    struct mpsc_cell *cells;
};

static int mpsc_init(struct mpsc *q, uint32_t n)
{
    q->cells = calloc(n, sizeof(*q->cells));
    if (!q->cells)
        return -ENOMEM;
    q->mask = n - 1;
    for (uint32_t i = 0; i < n; i++)
        atomic_store_explicit(&q->cells[i].seq, i, memory_order_relaxed);
    atomic_store(&q->head, 0);
    q->tail = 0;
    return 0;
}

static bool mpsc_push(struct mpsc *q, srrs_msg_fn fn, void *arg)
{
    uint64_t pos = atomic_load_explicit(&q->head, memory_order_relaxed);
    struct mpsc_cell *c;
    for (;;) {
        c = &q->cells[pos & q->mask];
        uint64_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
        int64_t dif = (int64_t)(seq - pos);
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&q->head, &pos, pos + 1,
                                                      memory_order_relaxed, memory_order_relaxed))
                break;
        } else if (dif < 0) {
            return false; /* full */
        } else {
            pos = atomic_load_explicit(&q->head, memory_order_relaxed);
        }
    }
    c->fn = fn;
    c->arg = arg;
    atomic_store_explicit(&c->seq, pos + 1, memory_order_release);
    return true;
}

static inline bool mpsc_pop(struct mpsc *q, srrs_msg_fn *fn, void **arg)
{
    struct mpsc_cell *c = &q->cells[q->tail & q->mask];
    if (atomic_load_explicit(&c->seq, memory_order_acquire) != q->tail + 1)
        return false;
    *fn = c->fn;
    *arg = c->arg;
    atomic_store_explicit(&c->seq, q->tail + q->mask + 1, memory_order_release);
    q->tail++;
    return true;
}

static inline bool mpsc_empty(struct mpsc *q)
{
    struct mpsc_cell *c = &q->cells[q->tail & q->mask];
    return atomic_load_explicit(&c->seq, memory_order_acquire) != q->tail + 1;
}

/* ---- reactor ------------------------------------------------------------ */

struct srrs_poller {
    srrs_poller_fn fn;
    void *arg;
    srrs_poller_fn presleep;
    uint64_t period;        /* ticks, 0 = every loop */
    uint64_t next_due;
    int fd;
    bool fd_is_eventfd;
    bool fd_wakes;          /* timed: only its fd wakes a sleeping reactor for it */
    bool fd_only;           /* fd_wakes, and the fd is its whole duty (srrs_poller_set_fd_only) */
    bool lazy;              /* timed: its period does not bound a sleep (srrs_poller_set_lazy) */
    srrs_msg_fn on_fire;    /* an fd watch (srrs_fd_watch_add): not a poller of the loop */
    bool dead;
    struct srrs_reactor *r;
};

struct stop_hook {
    srrs_msg_fn fn;
    void *arg;
};

#define MSG_RING_SIZE 65536u
/* adaptive: an idle spin yields the CPU once per this many us (docs/architecture.md) */
#define YIELD_GAP_US 10
/* after a wake-up, timed pollers of a period of TIMER_HOLD_MIN_US or more
 * (background duties: health checks, ticks; not the pool's 20 us barrier
 * poller, which I/O may wait on) wait at most TIMER_HOLD_US for its I/O */
#define TIMER_HOLD_US 1000
#define TIMER_HOLD_MIN_US 10000
#define MSG_BUDGET 256
#define IO_POOL_SIZE 16384u

/* enum srrs_reactor_state (ffi/srrs.h) under short names */
enum {
    R_CREATED = SRRS_REACTOR_CREATED,
    R_RUNNING = SRRS_REACTOR_RUNNING,
    R_STOPPING = SRRS_REACTOR_STOPPING,
    R_STOPPED = SRRS_REACTOR_STOPPED,
};

struct buf_class {
    size_t size;
    uint32_t count, free_n;
    void **free;
    void *base;
    size_t base_len;
};

struct srrs_reactor {
    struct mpsc msgs;
    _Atomic int sleeping __attribute__((aligned(SRRS_CACHELINE)));
    _Atomic int state;
    _Atomic int stop_requested;
    _Atomic int want_poll_mode;
    _Atomic uint32_t want_idle_spin_us;
    struct srrs_core *core;
    int idx;
    int cpu;
    int tid;
    int epfd;
    int msg_efd;
    int poll_mode;
    uint64_t idle_spin;     /* ticks */
    /* After a sleep, timed pollers whose fd did not fire wait until the I/O
     * that woke the reactor is answered (docs/architecture.md, Poll modes
     * and adaptive sleep): until a round without work and with no I/O in
     * flight, or hold_until. */
    bool hold_timers;
    uint64_t hold_until;
    uint64_t hold_min_period; /* ticks: shorter-period pollers are part of an I/O's flow */
    uint64_t drain_deadline;
    uint32_t drain_ms;

    /* pollers: compacted array, dead entries removed between loops */
    struct srrs_poller **pollers;
    uint32_t npollers, cap_pollers;
    uint32_t nfd_only;      /* pollers ever marked fd_only (a hint: 0 skips a scan) */
    bool pollers_dirty;

    struct stop_hook *hooks;
    uint32_t nhooks, cap_hooks;

    /* deferred I/O completions */
    struct srrs_io *cpl_head, *cpl_tail;
    /* end-of-round work (srrs_reactor_flush) */
    struct srrs_flush *flush_head, *flush_tail;

    /* I/O object pool */
    struct srrs_io *io_mem;
    struct srrs_io *io_free;
    uint64_t io_outstanding;

    struct buf_class bufs[3];

    /* stats: written by the reactor alone (srrs_stat_add), read by control
     * threads with relaxed atomic loads (STAT): untorn on any CPU, no fence */
    uint64_t st_loops, st_busy, st_idle, st_sleep, st_msgs, st_wakeups, st_yields;
    _Atomic uint64_t sleep_since; /* ticks; 0 when awake (so stats count a sleep in progress) */

    /* test hooks */
    uint64_t *test_seen;   /* per sender: last seq + 1 */
    uint64_t *test_count;
    uint64_t *test_errors;
};

#define EVENT_RING_SIZE 4096u

struct event_cell {
    _Atomic uint64_t seq;
    struct srrs_event ev;
};

struct srrs_core {
    int nreactors;
    struct srrs_reactor *reactors[SRRS_MAX_REACTORS];
    int event_efd;
    struct event_cell *ev_cells;
    _Atomic uint64_t ev_head __attribute__((aligned(SRRS_CACHELINE)));
    uint64_t ev_tail __attribute__((aligned(SRRS_CACHELINE)));
    pthread_mutex_t ev_pop_lock; /* control threads may poll concurrently */
    _Atomic uint64_t ev_dropped;
    /* Layers above the reactors hook in here; the reactor knows none of them. */
    srrs_io_done_fn io_done;
    struct core_slot {
        const void *key;
        void *val;
        srrs_slot_destroy_fn destroy;
    } slots[SRRS_CORE_SLOTS];
    int nslots;
};

void *srrs_core_slot(struct srrs_core *core, const void *key)
{
    for (int i = 0; i < core->nslots; i++)
        if (core->slots[i].key == key)
            return core->slots[i].val;
    return NULL;
}

int srrs_core_set_slot(struct srrs_core *core, const void *key, void *val,
                       srrs_slot_destroy_fn destroy)
{
    for (int i = 0; i < core->nslots; i++) {
        if (core->slots[i].key == key) {
            core->slots[i].val = val;
            core->slots[i].destroy = destroy;
            return 0;
        }
    }
    if (core->nslots == SRRS_CORE_SLOTS)
        return -ENOSPC;
    core->slots[core->nslots++] = (struct core_slot){key, val, destroy};
    return 0;
}

static void io_done_none(struct srrs_io *io, uint64_t now) { (void)io; (void)now; }

void srrs_core_set_io_done(struct srrs_core *core, srrs_io_done_fn fn)
{
    /* Release: a reactor that sees an I/O of the new layer sees its hook. */
    __atomic_store_n(&core->io_done, fn ? fn : io_done_none, __ATOMIC_RELEASE);
}

static __thread struct srrs_reactor *t_reactor;

struct srrs_reactor *srrs_reactor_self(void) { return t_reactor; }
struct srrs_core *srrs_reactor_core(struct srrs_reactor *r) { return r->core; }
int srrs_reactor_idx(struct srrs_reactor *r) { return r->idx; }
int srrs_reactor_poll_mode(struct srrs_reactor *r) { return r->poll_mode; }
int srrs_core_num_reactors(struct srrs_core *core) { return core->nreactors; }

struct srrs_reactor *srrs_core_reactor(struct srrs_core *core, int idx)
{
    if (!core || idx < 0 || idx >= core->nreactors)
        return NULL;
    return core->reactors[idx];
}

bool srrs_reactor_is_stopping(struct srrs_reactor *r)
{
    return atomic_load_explicit(&r->state, memory_order_relaxed) >= R_STOPPING;
}

static const size_t buf_sizes[3] = {4096, 65536, SRRS_BUF_LARGE};
static const uint32_t buf_counts[3] = {4096, 512, 96};

static int bufs_init(struct srrs_reactor *r)
{
    for (int c = 0; c < 3; c++) {
        struct buf_class *b = &r->bufs[c];
        b->size = buf_sizes[c];
        b->count = buf_counts[c];
        b->base_len = b->size * b->count;
        b->base = srrs_mem_alloc(b->base_len, NULL);
        b->free = calloc(b->count, sizeof(void *));
        if (!b->base || !b->free)
            return -ENOMEM;
        for (uint32_t i = 0; i < b->count; i++)
            b->free[i] = (uint8_t *)b->base + (size_t)i * b->size;
        b->free_n = b->count;
    }
    return 0;
}

void *srrs_buf_get(struct srrs_reactor *r, size_t len)
{
    for (int c = 0; c < 3; c++) {
        struct buf_class *b = &r->bufs[c];
        if (len <= b->size) {
            if (srrs_unlikely(b->free_n == 0))
                return NULL;
            return b->free[--b->free_n];
        }
    }
    return NULL;
}

void srrs_buf_put(struct srrs_reactor *r, void *buf, size_t len)
{
    for (int c = 0; c < 3; c++) {
        struct buf_class *b = &r->bufs[c];
        if (len <= b->size) {
            b->free[b->free_n++] = buf;
            return;
        }
    }
}

struct srrs_io *srrs_io_get(struct srrs_reactor *r)
{
    struct srrs_io *io = r->io_free;
    if (srrs_unlikely(!io))
        return NULL;
    r->io_free = io->next;
    io->next = NULL;
    io->r = r;
    io->parent = NULL;
    io->flags = 0;
    r->io_outstanding++;
    return io;
}

void srrs_io_put(struct srrs_io *io)
{
    struct srrs_reactor *r = io->r;
    io->next = r->io_free;
    r->io_free = io;
    r->io_outstanding--;
}

void srrs_io_complete(struct srrs_io *io, int status)
{
    struct srrs_reactor *r = io->r;
    io->status = status;
    io->next = NULL;
    if (r->cpl_tail)
        r->cpl_tail->next = io;
    else
        r->cpl_head = io;
    r->cpl_tail = io;
}

/* now: the loop's clock reading if nothing ran since it was taken, else 0. */
static int run_completions(struct srrs_reactor *r, uint64_t now)
{
    int n = 0;
    struct srrs_io *io = r->cpl_head;
    if (!io)
        return 0; /* an idle round writes nothing */
    /* Detach the list: callbacks may complete more I/O (runs next loop). */
    r->cpl_head = r->cpl_tail = NULL;
    /* One clock reading for the batch, handed to the I/O hook (the layer
     * above accounts latency with it): each I/O's latency ends where the
     * callbacks that see its completion begin (the TSC read costs as much as
     * the rest of a fast device's accounting: once per batch, not per I/O). */
    if (!now)
        now = srrs_ticks();
    srrs_io_done_fn done = __atomic_load_n(&r->core->io_done, __ATOMIC_ACQUIRE);
    while (io) {
        struct srrs_io *next = io->next;
        done(io, now);
        io->cb(io, io->cb_arg);
        io = next;
        n++;
    }
    return n;
}

void srrs_reactor_flush(struct srrs_reactor *r, struct srrs_flush *f)
{
    if (f->queued)
        return;
    f->queued = true;
    f->next = NULL;
    if (r->flush_tail)
        r->flush_tail->next = f;
    else
        r->flush_head = f;
    r->flush_tail = f;
}

void srrs_reactor_flush_cancel(struct srrs_reactor *r, struct srrs_flush *f)
{
    if (!f->queued)
        return;
    struct srrs_flush *prev = NULL;
    for (struct srrs_flush *x = r->flush_head; x; prev = x, x = x->next) {
        if (x != f)
            continue;
        if (prev)
            prev->next = x->next;
        else
            r->flush_head = x->next;
        if (r->flush_tail == x)
            r->flush_tail = prev;
        break;
    }
    f->queued = false;
    f->next = NULL;
}

static void run_flushes(struct srrs_reactor *r)
{
    struct srrs_flush *f = r->flush_head;
    /* Detach: an entry queued by a flush runs at the end of the next round. */
    r->flush_head = r->flush_tail = NULL;
    while (f) {
        struct srrs_flush *next = f->next;
        f->queued = false;
        f->next = NULL;
        f->fn(f->arg);
        f = next;
    }
}

static void reactor_free(struct srrs_reactor *r)
{
    if (!r)
        return;
    for (uint32_t i = 0; i < r->npollers; i++)
        free(r->pollers[i]);
    free(r->pollers);
    free(r->hooks);
    if (r->epfd >= 0)
        close(r->epfd);
    if (r->msg_efd >= 0)
        close(r->msg_efd);
    free(r->msgs.cells);
    free(r->io_mem);
    for (int c = 0; c < 3; c++) {
        srrs_mem_free(r->bufs[c].base, r->bufs[c].base_len);
        free(r->bufs[c].free);
    }
    free(r->test_seen);
    free(r->test_count);
    free(r->test_errors);
    free(r);
}

#define TEST_SENDERS 64

static int reactor_create(struct srrs_core *core, int idx, const struct srrs_core_opts *o,
                          struct srrs_reactor **out)
{
    struct srrs_reactor *r;
    if (posix_memalign((void **)&r, SRRS_CACHELINE, sizeof(*r)))
        return -ENOMEM;
    memset(r, 0, sizeof(*r));
    r->core = core;
    r->idx = idx;
    r->epfd = r->msg_efd = -1;
    r->cpu = o->ncpus > 0 ? o->cpus[idx % o->ncpus] : -1;
    r->poll_mode = o->poll_mode;
    atomic_store(&r->want_poll_mode, o->poll_mode);
    atomic_store(&r->want_idle_spin_us, o->idle_spin_us);
    r->idle_spin = srrs_us_to_ticks(o->idle_spin_us);
    r->hold_min_period = srrs_us_to_ticks(TIMER_HOLD_MIN_US);
    int rc = -ENOMEM;
    if (mpsc_init(&r->msgs, MSG_RING_SIZE))
        goto fail;
    r->io_mem = calloc(IO_POOL_SIZE, sizeof(struct srrs_io));
    if (!r->io_mem)
        goto fail;
    for (uint32_t i = 0; i < IO_POOL_SIZE; i++) {
        r->io_mem[i].next = r->io_free;
        r->io_free = &r->io_mem[i];
    }
    if (bufs_init(r))
        goto fail;
    r->test_seen = calloc(TEST_SENDERS, sizeof(uint64_t));
    r->test_count = calloc(TEST_SENDERS, sizeof(uint64_t));
    r->test_errors = calloc(TEST_SENDERS, sizeof(uint64_t));
    if (!r->test_seen || !r->test_count || !r->test_errors)
        goto fail;
    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    r->msg_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->epfd < 0 || r->msg_efd < 0) {
        rc = -errno;
        goto fail;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->msg_efd, &ev)) {
        rc = -errno;
        goto fail;
    }
    *out = r;
    return 0;
fail:
    reactor_free(r);
    return srrs_err(rc, "reactor %d: cannot allocate its rings, pools or epoll set: %s", idx,
                    strerror(-rc));
}

int srrs_core_create(const struct srrs_core_opts *o, struct srrs_core **out)
{
    if (!o || !out)
        return srrs_err(-EINVAL, "core: missing options");
    if (o->nreactors < 1 || o->nreactors > SRRS_MAX_REACTORS)
        return srrs_err(-EINVAL, "core: reactors must be 1..%d, got %d", SRRS_MAX_REACTORS,
                        o->nreactors);
    if (o->poll_mode != SRRS_POLL_ADAPTIVE && o->poll_mode != SRRS_POLL_BUSY)
        return srrs_err(-EINVAL, "core: poll_mode must be 0 (adaptive) or 1 (busy)");
    if (o->ncpus < 0 || o->ncpus > 64)
        return srrs_err(-EINVAL, "core: ncpus must be 0..64");
    srrs_ticks_init();
    struct srrs_core *core;
    if (posix_memalign((void **)&core, SRRS_CACHELINE, sizeof(*core)))
        return srrs_err(-ENOMEM, "core: out of memory");
    memset(core, 0, sizeof(*core));
    core->io_done = io_done_none;
    pthread_mutex_init(&core->ev_pop_lock, NULL);
    core->event_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    core->ev_cells = calloc(EVENT_RING_SIZE, sizeof(struct event_cell));
    if (core->event_efd < 0 || !core->ev_cells) {
        int rc = core->event_efd < 0 ? -errno : -ENOMEM;
        if (core->event_efd >= 0)
            close(core->event_efd);
        free(core->ev_cells);
        free(core);
        return srrs_err(rc, "core: cannot create the event ring: %s", strerror(-rc));
    }
    for (uint32_t i = 0; i < EVENT_RING_SIZE; i++)
        atomic_store_explicit(&core->ev_cells[i].seq, i, memory_order_relaxed);
    for (int i = 0; i < o->nreactors; i++) {
        int rc = reactor_create(core, i, o, &core->reactors[i]);
        if (rc) {
            core->nreactors = i;
            srrs_core_destroy(&core);
            return rc;
        }
    }
    core->nreactors = o->nreactors;
    *out = core;
    return 0;
}

void srrs_core_destroy(struct srrs_core **pcore)
{
    struct srrs_core *core = pcore ? *pcore : NULL;
    if (!core)
        return;
    while (core->nslots) { /* newest first: a layer may use an older one */
        struct core_slot *sl = &core->slots[--core->nslots];
        if (sl->destroy)
            sl->destroy(core, sl->val);
    }
    for (int i = 0; i < core->nreactors; i++)
        reactor_free(core->reactors[i]);
    close(core->event_efd);
    free(core->ev_cells);
    pthread_mutex_destroy(&core->ev_pop_lock);
    free(core);
    *pcore = NULL;
}

static void reactor_wake(struct srrs_reactor *r)
{
    uint64_t one = 1;
    ssize_t n = write(r->msg_efd, &one, sizeof(one));
    (void)n;
}

int srrs_reactor_send(struct srrs_reactor *r, srrs_msg_fn fn, void *arg)
{
    if (srrs_unlikely(atomic_load_explicit(&r->state, memory_order_acquire) == R_STOPPED))
        return -ESHUTDOWN;
    if (!mpsc_push(&r->msgs, fn, arg))
        return -EAGAIN;
    /* Dekker with the reactor's sleeping/re-check: both sides seq_cst. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&r->sleeping, memory_order_relaxed))
        reactor_wake(r);
    return 0;
}

struct call_ctx {
    srrs_msg_fn fn;
    void *arg;
    sem_t done;
};

static void call_trampoline(void *a)
{
    struct call_ctx *c = a;
    c->fn(c->arg);
    sem_post(&c->done);
}

int srrs_reactor_call(struct srrs_reactor *r, srrs_msg_fn fn, void *arg)
{
    int st = atomic_load_explicit(&r->state, memory_order_acquire);
    if (t_reactor == r || st == R_CREATED || st == R_STOPPED) {
        fn(arg);
        return 0;
    }
    struct call_ctx c = {.fn = fn, .arg = arg};
    sem_init(&c.done, 0, 0);
    int rc;
    while ((rc = srrs_reactor_send(r, call_trampoline, &c)) == -EAGAIN)
        sched_yield();
    if (rc == -ESHUTDOWN) {
        /* Stopped between the check and the send: no concurrency left. */
        fn(arg);
        sem_destroy(&c.done);
        return 0;
    }
    while (sem_wait(&c.done) && errno == EINTR)
        ;
    sem_destroy(&c.done);
    return 0;
}

struct srrs_poller *srrs_poller_register(struct srrs_reactor *r, srrs_poller_fn fn, void *arg,
                                         uint64_t period_us)
{
    struct srrs_poller *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    if (r->npollers == r->cap_pollers) {
        uint32_t cap = r->cap_pollers ? r->cap_pollers * 2 : 16;
        void *n = realloc(r->pollers, cap * sizeof(*r->pollers));
        if (!n) {
            free(p);
            return NULL;
        }
        r->pollers = n;
        r->cap_pollers = cap;
    }
    p->fn = fn;
    p->arg = arg;
    p->fd = -1;
    p->r = r;
    p->period = srrs_us_to_ticks(period_us);
    p->next_due = srrs_ticks() + p->period;
    r->pollers[r->npollers++] = p;
    return p;
}

void srrs_poller_unregister(struct srrs_poller **pp)
{
    struct srrs_poller *p = pp ? *pp : NULL;
    if (!p)
        return;
    if (p->fd >= 0)
        epoll_ctl(p->r->epfd, EPOLL_CTL_DEL, p->fd, NULL);
    p->fd = -1;
    p->dead = true;
    p->r->pollers_dirty = true;
    *pp = NULL;
}

int srrs_poller_set_fd(struct srrs_poller *p, int fd, uint32_t events, bool is_eventfd)
{
    struct epoll_event ev = {.events = events, .data.ptr = p};
    if (p->fd >= 0)
        epoll_ctl(p->r->epfd, EPOLL_CTL_DEL, p->fd, NULL);
    p->fd = -1;
    if (epoll_ctl(p->r->epfd, EPOLL_CTL_ADD, fd, &ev))
        return -errno;
    p->fd = fd;
    p->fd_is_eventfd = is_eventfd;
    return 0;
}

int srrs_poller_mod_fd(struct srrs_poller *p, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = p};
    if (p->fd < 0)
        return -EINVAL;
    return epoll_ctl(p->r->epfd, EPOLL_CTL_MOD, p->fd, &ev) ? -errno : 0;
}

void srrs_poller_set_presleep(struct srrs_poller *p, srrs_poller_fn fn) { p->presleep = fn; }

struct srrs_poller *srrs_fd_watch_add(struct srrs_reactor *r, int fd, uint32_t events,
                                      srrs_msg_fn fn, void *arg)
{
    struct srrs_poller *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->on_fire = fn;
    w->arg = arg;
    w->fd = fd;
    w->r = r;
    struct epoll_event ev = {.events = events, .data.ptr = w};
    if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &ev)) {
        free(w);
        return NULL;
    }
    return w;
}

void srrs_fd_watch_del(struct srrs_poller **pw)
{
    struct srrs_poller *w = pw ? *pw : NULL;
    if (!w)
        return;
    /* Reactor thread, outside its sleep: no epoll event still names w. */
    epoll_ctl(w->r->epfd, EPOLL_CTL_DEL, w->fd, NULL);
    free(w);
    *pw = NULL;
}

void srrs_poller_set_fd_wakes(struct srrs_poller *p) { p->fd_wakes = p->lazy = true; }

void srrs_poller_set_lazy(struct srrs_poller *p, bool lazy) { p->lazy = lazy; }

void srrs_poller_set_fd_only(struct srrs_poller *p)
{
    if (!p->fd_only)
        p->r->nfd_only++;
    p->fd_wakes = p->fd_only = p->lazy = true;
}

int srrs_reactor_add_stop_hook(struct srrs_reactor *r, srrs_msg_fn fn, void *arg)
{
    for (uint32_t i = 0; i < r->nhooks; i++) {
        if (!r->hooks[i].fn) {
            r->hooks[i] = (struct stop_hook){fn, arg};
            return (int)i;
        }
    }
    if (r->nhooks == r->cap_hooks) {
        uint32_t cap = r->cap_hooks ? r->cap_hooks * 2 : 8;
        void *n = realloc(r->hooks, cap * sizeof(*r->hooks));
        if (!n)
            return -ENOMEM;
        r->hooks = n;
        r->cap_hooks = cap;
    }
    r->hooks[r->nhooks] = (struct stop_hook){fn, arg};
    return (int)r->nhooks++;
}

void srrs_reactor_del_stop_hook(struct srrs_reactor *r, int h)
{
    if (h >= 0 && (uint32_t)h < r->nhooks)
        r->hooks[h].fn = NULL;
}

static void pollers_compact(struct srrs_reactor *r)
{
    uint32_t j = 0;
    for (uint32_t i = 0; i < r->npollers; i++) {
        if (r->pollers[i]->dead)
            free(r->pollers[i]);
        else
            r->pollers[j++] = r->pollers[i];
    }
    r->npollers = j;
    r->pollers_dirty = false;
}

static int run_msgs(struct srrs_reactor *r)
{
    srrs_msg_fn fn;
    void *arg;
    int n = 0;
    while (n < MSG_BUDGET && mpsc_pop(&r->msgs, &fn, &arg)) {
        fn(arg);
        n++;
    }
    if (n) /* an idle round writes no counter it does not have to */
        srrs_stat_add(&r->st_msgs, (uint64_t)n);
    return n;
}

/* One pass over the pollers. Timed pollers run when due. */
static int run_pollers(struct srrs_reactor *r, uint64_t now)
{
    int work = 0;
    uint32_t n = r->npollers; /* pollers added during the pass run next loop */
    bool hold = r->hold_timers;
    for (uint32_t i = 0; i < n; i++) {
        struct srrs_poller *p = r->pollers[i];
        if (p->dead)
            continue;
        if (p->period) {
            if (now < p->next_due || (hold && p->next_due && p->period >= r->hold_min_period))
                continue;
            p->next_due = now + p->period;
        }
        if (p->fn(p->arg) > 0)
            work++;
    }
    return work;
}

static bool presleep_says_work(struct srrs_reactor *r)
{
    bool work = false;
    for (uint32_t i = 0; i < r->npollers; i++) {
        struct srrs_poller *p = r->pollers[i];
        if (!p->dead && p->presleep && p->presleep(p->arg) > 0)
            work = true;
    }
    return work;
}

/* The earliest due time of the timed pollers that bound a sleep, as the
 * presleep checks left them (one may have turned a lazy poller on or off). */
static uint64_t sleep_due(struct srrs_reactor *r)
{
    uint64_t due = UINT64_MAX;
    for (uint32_t i = 0; i < r->npollers; i++) {
        struct srrs_poller *p = r->pollers[i];
        if (p->period && !p->dead && !p->lazy && p->next_due < due)
            due = p->next_due;
    }
    return due;
}

static void reactor_sleep(struct srrs_reactor *r, uint64_t now)
{
    if (r->hold_timers) {
        r->hold_timers = false; /* the held timers run before any sleep */
        return;
    }
    if (presleep_says_work(r))
        return;
    uint64_t next_due = sleep_due(r);
    int timeout_ms = -1;
    if (next_due != UINT64_MAX) {
        uint64_t d = next_due > now ? srrs_ticks_to_ns(next_due - now) : 0;
        timeout_ms = (int)((d + 999999) / 1000000);
    }
    if (atomic_load_explicit(&r->state, memory_order_relaxed) == R_STOPPING)
        timeout_ms = timeout_ms < 0 || timeout_ms > 1 ? 1 : timeout_ms;
    atomic_store_explicit(&r->sleeping, 1, memory_order_seq_cst);
    if (!mpsc_empty(&r->msgs) || r->cpl_head || r->flush_head ||
        atomic_load_explicit(&r->stop_requested, memory_order_seq_cst) == 1) {
        atomic_store_explicit(&r->sleeping, 0, memory_order_relaxed);
        return;
    }
    struct epoll_event evs[64];
    atomic_store_explicit(&r->sleep_since, now, memory_order_relaxed);
    int n = epoll_wait(r->epfd, evs, 64, timeout_ms);
    atomic_store_explicit(&r->sleeping, 0, memory_order_relaxed);
    uint64_t v;
    for (int i = 0; i < n; i++) {
        struct srrs_poller *p = evs[i].data.ptr;
        if (p && p->on_fire) {
            p->on_fire(p->arg);
            continue;
        }
        if (!p) {
            ssize_t k = read(r->msg_efd, &v, sizeof(v));
            (void)k;
        } else if (!p->dead && p->fd_is_eventfd && p->fd >= 0) {
            ssize_t k = read(p->fd, &v, sizeof(v));
            (void)k;
        }
        if (p && !p->dead && p->fd_wakes)
            p->next_due = 0; /* its fd fired: run it on this loop, not at its period */
    }
    srrs_stat_add(&r->st_wakeups, 1);
    uint64_t after = srrs_ticks();
    if (n > 0) {
        /* Woken by an fd or a message: what woke us goes first; the timed
         * pollers that fell due while we slept (a health check, a group's
         * tick: 20-30 us of a cold first round) run once it is answered. */
        r->hold_timers = true;
        r->hold_until = after + srrs_us_to_ticks(TIMER_HOLD_US);
    }
    /* The sleep watched every fd_only poller's fd: one whose fd did not fire
     * has nothing to do; its period counts again from now (a reactor serving
     * QD1 sleeps between two I/Os: no accept4 that finds nothing then). A
     * ready fd that did not fit in evs fires again at the next sleep. Not so
     * a poller whose fd covers only part of its duty (srrs_poller_set_fd_wakes:
     * the pool's health check, whose inotify fd never reports a truncation):
     * the sleep did its periodic work no good, so it stays due at its period,
     * or a reactor that sleeps more often than that would never run it. */
    if (r->nfd_only) {
        for (uint32_t i = 0; i < r->npollers; i++) {
            struct srrs_poller *p = r->pollers[i];
            if (p->fd_only && p->next_due && !p->dead)
                p->next_due = after + p->period;
        }
    }
    srrs_stat_add(&r->st_sleep, srrs_ticks_to_ns(after - now));
    atomic_store_explicit(&r->sleep_since, 0, memory_order_relaxed);
}

static void reactor_begin_stop(struct srrs_reactor *r)
{
    atomic_store(&r->state, R_STOPPING);
    r->drain_deadline = srrs_ticks() + srrs_us_to_ticks((uint64_t)r->drain_ms * 1000);
    for (uint32_t i = 0; i < r->nhooks; i++) {
        if (r->hooks[i].fn) {
            srrs_msg_fn fn = r->hooks[i].fn;
            r->hooks[i].fn = NULL;
            fn(r->hooks[i].arg);
        }
    }
}

int srrs_reactor_run(struct srrs_core *core, int idx)
{
    struct srrs_reactor *r = srrs_core_reactor(core, idx);
    if (!r)
        return srrs_err(-EINVAL, "reactor %d does not exist", idx);
    int expected = R_CREATED;
    if (!atomic_compare_exchange_strong(&r->state, &expected, R_RUNNING))
        return srrs_err(-EBUSY, "reactor %d already ran", idx);
    t_reactor = r;
    r->tid = (int)syscall(SYS_gettid);
    srrs_pin_self(r->cpu);
    uint64_t last_work = srrs_ticks();
    uint64_t now = last_work;
    uint64_t last_yield = last_work;
    const uint64_t yield_gap = srrs_us_to_ticks(YIELD_GAP_US);
    for (;;) {
        int mode = atomic_load_explicit(&r->want_poll_mode, memory_order_relaxed);
        if (srrs_unlikely(mode != r->poll_mode)) {
            r->poll_mode = mode;
            r->idle_spin = srrs_us_to_ticks(atomic_load(&r->want_idle_spin_us));
        }
        if (srrs_unlikely(atomic_load_explicit(&r->stop_requested, memory_order_relaxed)) &&
            atomic_load_explicit(&r->state, memory_order_relaxed) == R_RUNNING)
            reactor_begin_stop(r);

        int work = run_msgs(r);
        work += run_completions(r, work ? 0 : now);
        work += run_pollers(r, now);
        /* I/O the pollers completed at once (null, malloc, an error) finishes
         * in this round, not the next: one round per QD1 request, not two
         * (docs/architecture.md, Threads). */
        if (r->cpl_head)
            work += run_completions(r, 0);
        if (r->flush_head)
            run_flushes(r);
        if (srrs_unlikely(r->pollers_dirty))
            pollers_compact(r);

        uint64_t end = srrs_ticks();
        bool released = false;
        if (srrs_unlikely(r->hold_timers) &&
            ((!work && !r->io_outstanding) || end >= r->hold_until)) {
            r->hold_timers = false; /* the wake's I/O is answered: timers next round, */
            released = true;        /* not after a sleep */
        }
        if (work) {
            srrs_stat_add(&r->st_busy, end - now);
            last_work = end;
        } else {
            srrs_stat_add(&r->st_idle, end - now);
        }
        srrs_stat_add(&r->st_loops, 1);

        if (srrs_unlikely(atomic_load_explicit(&r->state, memory_order_relaxed) == R_STOPPING)) {
            if ((r->io_outstanding == 0 && mpsc_empty(&r->msgs) && !r->cpl_head) ||
                end > r->drain_deadline)
                break;
        }
        if (!work && !released &&
            (r->poll_mode == SRRS_POLL_ADAPTIVE || srrs_reactor_is_stopping(r)) &&
            end - last_work >= r->idle_spin) {
            reactor_sleep(r, end);
            end = srrs_ticks();
        } else if (!work && r->io_outstanding && r->poll_mode == SRRS_POLL_ADAPTIVE &&
                   end - last_work >= yield_gap && end - last_yield >= yield_gap) {
            /* Idle spin waiting for an I/O: let a thread this one woke on its
             * own CPU run (the io_uring worker that has the I/O), which the
             * scheduler may otherwise hold off until the spin ends
             * (docs/architecture.md, Poll modes and adaptive sleep). */
            sched_yield();
            srrs_stat_add(&r->st_yields, 1);
            end = last_yield = srrs_ticks();
        }
        now = end;
    }
    /* Pollers left by modules are theirs to free at destroy; drop ours. */
    atomic_store(&r->state, R_STOPPED);
    /* Run what raced in after the last check so no sync caller hangs. */
    while (run_msgs(r) || r->flush_head)
        run_flushes(r);
    t_reactor = NULL;
    return r->io_outstanding ? srrs_err(-ETIMEDOUT, "reactor %d: %llu I/O still in flight at stop",
                                        idx, (unsigned long long)r->io_outstanding)
                             : 0;
}

int srrs_reactor_wait_running(struct srrs_core *core, int idx, int timeout_ms)
{
    struct srrs_reactor *r = srrs_core_reactor(core, idx);
    if (!r)
        return srrs_err(-EINVAL, "reactor %d does not exist", idx);
    uint64_t deadline = srrs_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    while (atomic_load(&r->state) == R_CREATED) {
        if (srrs_now_ns() > deadline)
            return srrs_err(-ETIMEDOUT, "reactor %d did not start within %d ms", idx, timeout_ms);
        struct timespec d = {0, 100000};
        nanosleep(&d, NULL);
    }
    return 0;
}

int srrs_core_stop(struct srrs_core *core, int drain_ms)
{
    for (int i = 0; i < core->nreactors; i++) {
        struct srrs_reactor *r = core->reactors[i];
        r->drain_ms = drain_ms < 0 ? 0 : (uint32_t)drain_ms;
        atomic_store(&r->stop_requested, 1);
        reactor_wake(r);
    }
    return 0;
}

int srrs_core_set_poll_mode(struct srrs_core *core, int mode, uint32_t idle_spin_us)
{
    if (mode != 0 && mode != 1)
        return srrs_err(-EINVAL, "poll_mode must be 0 (adaptive) or 1 (busy)");
    for (int i = 0; i < core->nreactors; i++) {
        struct srrs_reactor *r = core->reactors[i];
        atomic_store(&r->want_idle_spin_us, idle_spin_us);
        /* Force the reactor to pick up a new spin time even if the mode is unchanged. */
        atomic_store(&r->want_poll_mode, mode);
        r->idle_spin = srrs_us_to_ticks(idle_spin_us);
        reactor_wake(r);
    }
    return 0;
}

#define STAT(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

int srrs_reactor_get_stats(struct srrs_core *core, int idx, struct srrs_reactor_stats *o)
{
    struct srrs_reactor *r = srrs_core_reactor(core, idx);
    if (!r)
        return srrs_err(-EINVAL, "reactor %d does not exist", idx);
    memset(o, 0, sizeof(*o));
    o->loops = STAT(r->st_loops);
    o->busy_ns = srrs_ticks_to_ns(STAT(r->st_busy));
    o->idle_ns = srrs_ticks_to_ns(STAT(r->st_idle));
    o->sleep_ns = STAT(r->st_sleep);
    uint64_t since = atomic_load_explicit(&r->sleep_since, memory_order_relaxed);
    uint64_t now = srrs_ticks();
    if (since && now > since)
        o->sleep_ns += srrs_ticks_to_ns(now - since);
    o->msgs = STAT(r->st_msgs);
    o->wakeups = STAT(r->st_wakeups);
    o->yields = STAT(r->st_yields);
    o->io_outstanding = r->io_outstanding;
    o->pollers = r->npollers;
    o->poll_mode = r->poll_mode;
    o->state = atomic_load(&r->state);
    o->tid = r->tid;
    o->cpu = r->cpu;
    return 0;
}

/* ---- events ------------------------------------------------------------- */

void srrs_event_post(struct srrs_core *core, uint32_t type, uint64_t a, uint64_t b, const char *obj,
                     const char *fmt, ...)
{
    uint64_t pos = atomic_load_explicit(&core->ev_head, memory_order_relaxed);
    struct event_cell *c;
    for (;;) {
        c = &core->ev_cells[pos & (EVENT_RING_SIZE - 1)];
        uint64_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
        int64_t dif = (int64_t)(seq - pos);
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&core->ev_head, &pos, pos + 1,
                                                      memory_order_relaxed, memory_order_relaxed))
                break;
        } else if (dif < 0) {
            atomic_fetch_add(&core->ev_dropped, 1);
            return;
        } else {
            pos = atomic_load_explicit(&core->ev_head, memory_order_relaxed);
        }
    }
    struct srrs_event *e = &c->ev;
    memset(e, 0, sizeof(*e));
    e->type = type;
    e->reactor = t_reactor ? t_reactor->idx : -1;
    e->a = a;
    e->b = b;
    if (obj)
        snprintf(e->obj, sizeof(e->obj), "%s", obj);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
    atomic_store_explicit(&c->seq, pos + 1, memory_order_release);
    uint64_t one = 1;
    ssize_t n = write(core->event_efd, &one, sizeof(one));
    (void)n;
}

int srrs_core_event_fd(struct srrs_core *core) { return core->event_efd; }
uint64_t srrs_core_events_dropped(struct srrs_core *core) { return atomic_load(&core->ev_dropped); }

int srrs_core_event_poll(struct srrs_core *core, struct srrs_event *out)
{
    pthread_mutex_lock(&core->ev_pop_lock);
    struct event_cell *c = &core->ev_cells[core->ev_tail & (EVENT_RING_SIZE - 1)];
    if (atomic_load_explicit(&c->seq, memory_order_acquire) != core->ev_tail + 1) {
        uint64_t v;
        ssize_t n = read(core->event_efd, &v, sizeof(v)); /* reset; re-check below */
        (void)n;
        if (atomic_load_explicit(&c->seq, memory_order_acquire) != core->ev_tail + 1) {
            pthread_mutex_unlock(&core->ev_pop_lock);
            return 0;
        }
    }
    *out = c->ev;
    atomic_store_explicit(&c->seq, core->ev_tail + EVENT_RING_SIZE, memory_order_release);
    core->ev_tail++;
    pthread_mutex_unlock(&core->ev_pop_lock);
    return 1;
}

/* ---- test hooks ----------------------------------------------------------- */

struct test_msg {
    struct srrs_reactor *r;
    uint32_t sender;
    uint64_t seq;
};

static void test_msg_fn(void *a)
{
    /* The argument is packed into the pointer: no allocation per message. */
    uintptr_t v = (uintptr_t)a;
    struct srrs_reactor *r = t_reactor;
    uint32_t sender = (uint32_t)(v >> 48);
    uint64_t seq = v & ((1ull << 48) - 1);
    if (r->test_seen[sender] != seq)
        r->test_errors[sender]++;
    r->test_seen[sender] = seq + 1;
    r->test_count[sender]++;
}

int srrs_test_msg_send(struct srrs_core *core, int reactor, uint32_t sender, uint64_t seq)
{
    struct srrs_reactor *r = srrs_core_reactor(core, reactor);
    if (!r || sender >= TEST_SENDERS || seq >= (1ull << 48))
        return srrs_err(-EINVAL, "test_msg_send: bad reactor, sender or seq");
    uintptr_t v = ((uintptr_t)sender << 48) | seq;
    int rc;
    while ((rc = srrs_reactor_send(r, test_msg_fn, (void *)v)) == -EAGAIN)
        sched_yield();
    return rc ? srrs_err(rc, "reactor %d is stopped", reactor) : 0;
}

struct test_check {
    uint32_t sender;
    uint64_t count, errors;
};

static void test_check_fn(void *a)
{
    struct test_check *c = a;
    c->count = t_reactor->test_count[c->sender];
    c->errors = t_reactor->test_errors[c->sender];
}

int srrs_test_msg_check(struct srrs_core *core, int reactor, uint32_t sender, uint64_t *count,
                        uint64_t *order_errors)
{
    struct srrs_reactor *r = srrs_core_reactor(core, reactor);
    if (!r || sender >= TEST_SENDERS)
        return srrs_err(-EINVAL, "test_msg_check: bad reactor or sender");
    struct test_check c = {.sender = sender};
    srrs_reactor_call(r, test_check_fn, &c);
    *count = c.count;
    *order_errors = c.errors;
    return 0;
}

struct test_wake {
    uint64_t t1;
};

static void test_wake_fn(void *a) { ((struct test_wake *)a)->t1 = srrs_now_ns(); }

int64_t srrs_test_wake_latency_ns(struct srrs_core *core, int reactor)
{
    struct srrs_reactor *r = srrs_core_reactor(core, reactor);
    if (!r)
        return srrs_err(-EINVAL, "test_wake_latency: bad reactor");
    struct test_wake w = {0};
    uint64_t t0 = srrs_now_ns();
    srrs_reactor_call(r, test_wake_fn, &w);
    return (int64_t)(w.t1 - t0);
}

struct test_hold {
    struct srrs_reactor *r;
    int hold;
    int rc;
};

static __thread struct srrs_io *t_held_io;

static void test_hold_fn(void *arg)
{
    struct test_hold *h = arg;
    if (h->hold && !t_held_io) {
        t_held_io = srrs_io_get(h->r);
        h->rc = t_held_io ? 0 : -ENOMEM;
    } else if (!h->hold && t_held_io) {
        srrs_io_put(t_held_io);
        t_held_io = NULL;
    }
}

int srrs_test_io_hold(struct srrs_core *core, int reactor, int hold)
{
    struct srrs_reactor *r = srrs_core_reactor(core, reactor);
    if (!r)
        return srrs_err(-EINVAL, "test_io_hold: bad reactor");
    struct test_hold h = {r, hold, 0};
    int rc = srrs_reactor_call(r, test_hold_fn, &h);
    return rc ? rc : h.rc;
}

struct srrs_test_poller {
    struct srrs_reactor *r;
    struct srrs_poller *p;
    uint32_t period_us;
    int kind;
    int efd;
    int rc;
    _Atomic uint64_t runs;
    _Atomic uint64_t seq; /* test_seq at its last run: the order pollers ran in */
};

static _Atomic uint64_t test_seq;

static int test_poller_run(void *arg)
{
    struct srrs_test_poller *t = arg;
    atomic_store_explicit(&t->seq, atomic_fetch_add(&test_seq, 1) + 1, memory_order_relaxed);
    uint64_t v;
    ssize_t k = read(t->efd, &v, sizeof(v)); /* nonblocking: empty is EAGAIN */
    atomic_fetch_add_explicit(&t->runs, 1, memory_order_relaxed);
    return k > 0;
}

static void test_poller_add_fn(void *arg)
{
    struct srrs_test_poller *t = arg;
    t->p = srrs_poller_register(t->r, test_poller_run, t, t->period_us);
    if (!t->p) {
        t->rc = -ENOMEM;
        return;
    }
    t->rc = srrs_poller_set_fd(t->p, t->efd, EPOLLIN, false);
    if (t->rc)
        srrs_poller_unregister(&t->p);
    else if (t->kind == 1)
        srrs_poller_set_fd_wakes(t->p);
    else if (t->kind == 2)
        srrs_poller_set_fd_only(t->p);
    else if (t->kind == 3)
        srrs_poller_set_lazy(t->p, true);
}

static void test_poller_del_fn(void *arg)
{
    struct srrs_test_poller *t = arg;
    srrs_poller_unregister(&t->p);
}

int srrs_test_poller_add(struct srrs_core *core, int reactor, uint32_t period_us, int fd_kind,
                         struct srrs_test_poller **out)
{
    struct srrs_reactor *r = srrs_core_reactor(core, reactor);
    if (!r || !out || fd_kind < 0 || fd_kind > 3 || !period_us)
        return srrs_err(-EINVAL, "test_poller_add: bad reactor, kind or period");
    struct srrs_test_poller *t = calloc(1, sizeof(*t));
    if (!t)
        return srrs_err(-ENOMEM, "test_poller_add: out of memory");
    t->r = r;
    t->period_us = period_us;
    t->kind = fd_kind;
    t->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (t->efd < 0) {
        int rc = -errno;
        free(t);
        return srrs_err(rc, "test_poller_add: eventfd: %s", strerror(-rc));
    }
    srrs_reactor_call(r, test_poller_add_fn, t);
    if (t->rc) {
        int rc = t->rc;
        close(t->efd);
        free(t);
        return srrs_err(rc, "test_poller_add: %s", strerror(-rc));
    }
    *out = t;
    return 0;
}

int srrs_test_poller_fd(struct srrs_test_poller *t) { return t->efd; }

uint64_t srrs_test_poller_runs(struct srrs_test_poller *t)
{
    return atomic_load_explicit(&t->runs, memory_order_relaxed);
}

uint64_t srrs_test_poller_seq(struct srrs_test_poller *t)
{
    return atomic_load_explicit(&t->seq, memory_order_relaxed);
}

void srrs_test_poller_del(struct srrs_test_poller **pt)
{
    struct srrs_test_poller *t = pt ? *pt : NULL;
    if (!t)
        return;
    srrs_reactor_call(t->r, test_poller_del_fn, t);
    close(t->efd);
    free(t);
    *pt = NULL;
}
