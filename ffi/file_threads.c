/*
 * The file bdev's worker-thread engine (docs/architecture.md, File I/O
 * engines): where io_uring is missing or refused (old kernels, seccomp
 * profiles, kernel.io_uring_disabled, qemu-user), a few threads per reactor
 * do the blocking syscalls.
 *
 * Reactor -> workers: one bounded queue of sequence-numbered cells (a single
 * producer, workers claim cells with a CAS); the reactor wakes sleeping
 * workers with one futex wake per poll, only when some sleep. Workers ->
 * reactor: each worker owns a single-producer completion ring the reactor's
 * poller drains; a worker writes the pool's eventfd only while the reactor
 * sleeps (the same Dekker handshake as the reactor's message ring). In-flight
 * I/O is capped at the queue size, so neither ring can overflow. Portable
 * C11 atomics and Linux syscalls only: no x86 assumption.
 */
#include "file_threads.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#define TP_QSIZE 1024u /* power of two */
#define TP_MASK (TP_QSIZE - 1)
#define TP_MAX_WORKERS 16
/* How long a worker that ran out of I/O keeps looking before it sleeps: at
 * low queue depth the next I/O comes within a few microseconds of the last
 * completion, and a futex wake-up plus the scheduler cost more than that
 * (tens of microseconds, milliseconds on a busy host). */
#define TP_SPIN_NS 50000

struct tp_cell {
    _Atomic uint32_t seq; /* == position: free for the producer; == position + 1: holds io */
    struct srrs_io *io;
};

struct tp_worker {
    struct srrs_tpool *tp;
    pthread_t th;
    _Atomic uint32_t c_tail __attribute__((aligned(SRRS_CACHELINE))); /* the worker writes */
    uint32_t c_head __attribute__((aligned(SRRS_CACHELINE)));         /* the reactor's */
    struct srrs_io *ring[TP_QSIZE];
};

struct srrs_tpool {
    /* the reactor's */
    srrs_tpool_fn fn;
    struct srrs_reactor *r;
    struct srrs_poller *poller;
    int efd;
    unsigned refs;
    unsigned inflight; /* queued, running, or done and not yet reaped */
    unsigned pushed;   /* queued since the last kick */
    uint32_t q_tail;
    struct srrs_io *wait_head, *wait_tail; /* over the in-flight cap */
    _Atomic int nworkers;
    /* shared */
    _Atomic uint32_t q_head __attribute__((aligned(SRRS_CACHELINE)));
    _Atomic uint32_t wake_seq __attribute__((aligned(SRRS_CACHELINE)));
    _Atomic int idle;     /* asleep or about to */
    _Atomic int spinning; /* 1: a worker looks for I/O before sleeping */
    _Atomic int stop;
    _Atomic int sleeping __attribute__((aligned(SRRS_CACHELINE))); /* the reactor is about to sleep */
    struct tp_cell q[TP_QSIZE];
    struct tp_worker *w[TP_MAX_WORKERS];
};

/* One pool per reactor thread, shared by every file bdev on it. */
static __thread struct srrs_tpool *t_tpool;

static void futex_wait(_Atomic uint32_t *a, uint32_t v)
{
    syscall(SYS_futex, (void *)a, FUTEX_WAIT_PRIVATE, v, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *a, int n)
{
    syscall(SYS_futex, (void *)a, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

static void *zalloc_aligned(size_t len)
{
    len = (len + SRRS_CACHELINE - 1) & ~(size_t)(SRRS_CACHELINE - 1);
    void *p = aligned_alloc(SRRS_CACHELINE, len);
    if (p)
        memset(p, 0, len);
    return p;
}

/* Worker: the oldest queued I/O, NULL when none. */
static struct srrs_io *tp_pop(struct srrs_tpool *tp)
{
    uint32_t pos = atomic_load_explicit(&tp->q_head, memory_order_relaxed);
    for (;;) {
        struct tp_cell *c = &tp->q[pos & TP_MASK];
        uint32_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
        int32_t dif = (int32_t)(seq - (pos + 1));
        if (dif < 0)
            return NULL;
        if (dif > 0) {
            pos = atomic_load_explicit(&tp->q_head, memory_order_relaxed);
            continue;
        }
        if (atomic_compare_exchange_weak_explicit(&tp->q_head, &pos, pos + 1, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            struct srrs_io *io = c->io;
            atomic_store_explicit(&c->seq, pos + TP_QSIZE, memory_order_release);
            return io;
        }
    }
}

static void tp_done(struct tp_worker *w, struct srrs_io *io)
{
    struct srrs_tpool *tp = w->tp;
    uint32_t t = atomic_load_explicit(&w->c_tail, memory_order_relaxed);
    w->ring[t & TP_MASK] = io;
    atomic_store_explicit(&w->c_tail, t + 1, memory_order_release);
    /* Dekker with tp_presleep: either it sees this completion or we see it sleeping. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&tp->sleeping, memory_order_relaxed) &&
        atomic_exchange_explicit(&tp->sleeping, 0, memory_order_relaxed)) {
        uint64_t one = 1;
        ssize_t n = write(tp->efd, &one, sizeof(one));
        (void)n;
    }
}

/* Worker: the next I/O within TP_SPIN_NS, else NULL. One worker spins at a
 * time (more would only burn the CPUs the others need), reading until an
 * I/O is there: no store to the queue's cache lines while it waits. */
static struct srrs_io *tp_spin(struct srrs_tpool *tp)
{
    int none = 0;
    if (!atomic_compare_exchange_strong_explicit(&tp->spinning, &none, 1, memory_order_relaxed,
                                                 memory_order_relaxed))
        return NULL;
    uint64_t until = srrs_now_ns() + TP_SPIN_NS;
    struct srrs_io *io = NULL;
    do {
        for (int i = 0; i < 64; i++) {
            uint32_t pos = atomic_load_explicit(&tp->q_head, memory_order_relaxed);
            if (atomic_load_explicit(&tp->q[pos & TP_MASK].seq, memory_order_relaxed) == pos + 1) {
                io = tp_pop(tp);
                if (io)
                    goto out;
            }
        }
    } while (srrs_now_ns() < until && !atomic_load_explicit(&tp->stop, memory_order_relaxed));
out:
    atomic_store_explicit(&tp->spinning, 0, memory_order_relaxed);
    return io;
}

static void *tp_worker(void *arg)
{
    struct tp_worker *w = arg;
    struct srrs_tpool *tp = w->tp;
    for (;;) {
        struct srrs_io *io = tp_pop(tp);
        if (!io)
            io = tp_spin(tp);
        if (!io) {
            /* Announce idleness, then look again: tp_kick reads idle after
             * queueing, so an I/O is either seen here or its kick wakes us. */
            uint32_t seq = atomic_load(&tp->wake_seq);
            atomic_fetch_add(&tp->idle, 1);
            atomic_thread_fence(memory_order_seq_cst);
            io = tp_pop(tp);
            if (!io && atomic_load(&tp->stop)) {
                atomic_fetch_sub(&tp->idle, 1);
                return NULL;
            }
            if (!io)
                futex_wait(&tp->wake_seq, seq);
            atomic_fetch_sub(&tp->idle, 1);
            if (!io)
                continue;
        }
        io->status = tp->fn(io);
        tp_done(w, io);
    }
}

/* Workers run on the process's CPUs but the reactor's own (a thread inherits
 * its creator's pinning: a busy-polling reactor would share its one CPU with
 * them); on the reactor's CPUs only when the process has no other. */
static void tp_place(pthread_t th)
{
    cpu_set_t all, own;
    if (sched_getaffinity(getpid(), sizeof(all), &all) ||
        pthread_getaffinity_np(pthread_self(), sizeof(own), &own))
        return;
    cpu_set_t rest;
    CPU_XOR(&rest, &all, &own);
    CPU_AND(&rest, &rest, &all);
    pthread_setaffinity_np(th, sizeof(cpu_set_t), CPU_COUNT(&rest) ? &rest : &all);
}

/* Reactor: one more worker. Workers block every signal: they belong to the
 * process's main thread (Python's handlers), and a blocking syscall of ours
 * must not see EINTR. */
static int tp_spawn(struct srrs_tpool *tp)
{
    int i = atomic_load_explicit(&tp->nworkers, memory_order_relaxed);
    if (i >= TP_MAX_WORKERS)
        return -ENOSPC;
    struct tp_worker *w = zalloc_aligned(sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->tp = tp;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&w->th, NULL, tp_worker, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        free(w);
        return -rc;
    }
    char name[32]; /* the kernel keeps 15 bytes */
    snprintf(name, sizeof(name), "srrs-io%d.%d", srrs_reactor_idx(tp->r) & 0xff, i);
    name[15] = 0;
    pthread_setname_np(w->th, name);
    tp_place(w->th);
    tp->w[i] = w;
    atomic_store_explicit(&tp->nworkers, i + 1, memory_order_release);
    return 0;
}

static bool tp_push(struct srrs_tpool *tp, struct srrs_io *io)
{
    struct tp_cell *c = &tp->q[tp->q_tail & TP_MASK];
    if (tp->inflight >= TP_QSIZE || atomic_load_explicit(&c->seq, memory_order_acquire) != tp->q_tail)
        return false;
    c->io = io;
    atomic_store_explicit(&c->seq, tp->q_tail + 1, memory_order_release);
    tp->q_tail++;
    tp->inflight++;
    tp->pushed++;
    return true;
}

/* Reactor, once per poll: wake sleeping workers for what was queued, and
 * add a worker while I/O waits with none idle (the pool grows with the
 * queue depth it sees: QD1 keeps one worker, QD32 up to TP_MAX_WORKERS). */
static void tp_kick(struct srrs_tpool *tp)
{
    if (!tp->pushed)
        return;
    unsigned n = tp->pushed;
    tp->pushed = 0;
    atomic_thread_fence(memory_order_seq_cst);
    int idle = atomic_load_explicit(&tp->idle, memory_order_relaxed);
    int spin = atomic_load_explicit(&tp->spinning, memory_order_relaxed);
    uint32_t queued = tp->q_tail - atomic_load_explicit(&tp->q_head, memory_order_relaxed);
    if (queued > (uint32_t)(idle + spin))
        tp_spawn(tp); /* best effort: the running workers get through the queue anyway */
    if (idle > 0) {
        atomic_fetch_add(&tp->wake_seq, 1);
        futex_wake(&tp->wake_seq, (int)SRRS_MIN(n, (unsigned)idle));
    }
}

static int tp_poll(void *arg)
{
    struct srrs_tpool *tp = arg;
    int work = 0;
    atomic_store_explicit(&tp->sleeping, 0, memory_order_relaxed);
    int nw = atomic_load_explicit(&tp->nworkers, memory_order_relaxed);
    for (int i = 0; i < nw; i++) {
        struct tp_worker *w = tp->w[i];
        uint32_t tail = atomic_load_explicit(&w->c_tail, memory_order_acquire);
        while (w->c_head != tail) {
            struct srrs_io *io = w->ring[w->c_head++ & TP_MASK];
            tp->inflight--;
            srrs_io_complete(io, io->status);
            work++;
        }
    }
    while (tp->wait_head && tp_push(tp, tp->wait_head)) {
        tp->wait_head = tp->wait_head->next;
        if (!tp->wait_head)
            tp->wait_tail = NULL;
        work++;
    }
    tp_kick(tp);
    return work;
}

/* Before the reactor sleeps: kick what is queued, then say "sleeping" and
 * look once more (the workers' side of the handshake is tp_done). */
static int tp_presleep(void *arg)
{
    struct srrs_tpool *tp = arg;
    tp_kick(tp);
    atomic_store(&tp->sleeping, 1);
    atomic_thread_fence(memory_order_seq_cst);
    int nw = atomic_load_explicit(&tp->nworkers, memory_order_relaxed);
    for (int i = 0; i < nw; i++)
        if (atomic_load_explicit(&tp->w[i]->c_tail, memory_order_acquire) != tp->w[i]->c_head) {
            atomic_store_explicit(&tp->sleeping, 0, memory_order_relaxed);
            return 1;
        }
    return 0;
}

void srrs_tpool_submit(struct srrs_tpool *tp, struct srrs_io *io)
{
    if (!tp->wait_head && tp_push(tp, io))
        return;
    io->next = NULL;
    if (tp->wait_tail)
        tp->wait_tail->next = io;
    else
        tp->wait_head = io;
    tp->wait_tail = io;
}

int srrs_tpool_workers(struct srrs_tpool *tp)
{
    return atomic_load_explicit(&tp->nworkers, memory_order_relaxed);
}

static void tp_free(struct srrs_tpool *tp)
{
    atomic_store(&tp->stop, 1);
    atomic_fetch_add(&tp->wake_seq, 1);
    futex_wake(&tp->wake_seq, INT_MAX);
    int nw = atomic_load_explicit(&tp->nworkers, memory_order_relaxed);
    for (int i = 0; i < nw; i++) {
        pthread_join(tp->w[i]->th, NULL);
        free(tp->w[i]);
    }
    if (tp->efd >= 0)
        close(tp->efd);
    free(tp);
}

struct srrs_tpool *srrs_tpool_get(struct srrs_reactor *r, srrs_tpool_fn fn)
{
    if (t_tpool) {
        t_tpool->refs++;
        return t_tpool;
    }
    struct srrs_tpool *tp = zalloc_aligned(sizeof(*tp));
    if (!tp) {
        srrs_err(-ENOMEM, "file I/O threads: out of memory");
        return NULL;
    }
    for (uint32_t i = 0; i < TP_QSIZE; i++)
        atomic_init(&tp->q[i].seq, i);
    tp->fn = fn;
    tp->r = r;
    tp->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    int rc = tp->efd < 0 ? -errno : tp_spawn(tp);
    if (rc) {
        srrs_err(rc, "file I/O threads: %s", strerror(-rc));
        tp_free(tp);
        return NULL;
    }
    tp->poller = srrs_poller_register(r, tp_poll, tp, 0);
    if (!tp->poller || srrs_poller_set_fd(tp->poller, tp->efd, EPOLLIN, true)) {
        srrs_poller_unregister(&tp->poller);
        tp_free(tp);
        return NULL;
    }
    srrs_poller_set_presleep(tp->poller, tp_presleep);
    tp->refs = 1;
    t_tpool = tp;
    return tp;
}

void srrs_tpool_put(struct srrs_tpool *tp)
{
    if (--tp->refs)
        return;
    /* Called on the reactor, or in the control thread once it has stopped:
     * the workers finish what they hold, the completions are reaped here. */
    while (tp->inflight || tp->wait_head) {
        if (!tp_poll(tp)) {
            struct timespec d = {0, 50000};
            nanosleep(&d, NULL);
        }
    }
    srrs_poller_unregister(&tp->poller);
    if (t_tpool == tp)
        t_tpool = NULL;
    tp_free(tp);
}
