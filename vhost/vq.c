/*
 * vhost-user-blk back end, data plane: guest memory table, split virtqueues
 * and virtio-blk requests, zero-copy into the bdev (docs/architecture.md, Exports).
 *
 * Everything read from guest memory is hostile: descriptors and headers are
 * copied out before use, every address is translated through the memory
 * table (a buffer must lie inside mapped regions), chains are bounded by the
 * table size and indirect tables by their own length. A violation marks the
 * queue broken (logged reason, SRRS_EV_VHOST_BROKEN); the control plane
 * then drops the connection. Requests already in flight finish normally.
 *
 * Per-I/O cost: no malloc (requests are preallocated per ring entry, I/O
 * objects come from the reactor pool), no lock, and one eventfd write per
 * queue per poll round at most (interrupt coalescing).
 */
#include "ffi/srrs_int.h"
#include "vhost/vhost.h"
#include "vhost/virtio.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define VQ_MAX_NUM 1024u
#define VQ_SEG_MAX 126u          /* advertised seg_max */
#define VQ_IOV_MAX 160           /* iovecs per request, after region splits */
#define VQ_BUDGET 64             /* requests taken per poll */
#define VHOST_MAX_REGIONS 64
#define VHOST_MAX_QUEUES 64
#define DISCARD_MAX_SECTORS (1u << 22)

/* ---- guest memory --------------------------------------------------------- */

struct mem_region {
    uint64_t gpa, size, uaddr, mmap_offset;
    uint8_t *host;     /* host address of gpa */
    void *map;         /* mmap base */
    size_t map_len;
    dev_t st_dev;
    ino_t st_ino;
};

struct mem_table {
    int n;
    struct mem_region *r[VHOST_MAX_REGIONS];
};

/* Host pointer for [gpa, gpa+len) when it lies inside one region. */
static inline uint8_t *mem_gpa(const struct mem_table *m, uint64_t gpa, uint64_t len,
                               uint64_t *avail)
{
    for (int i = 0; i < m->n; i++) {
        const struct mem_region *r = m->r[i];
        if (gpa >= r->gpa && gpa - r->gpa < r->size) {
            uint64_t off = gpa - r->gpa;
            *avail = r->size - off;
            (void)len;
            return r->host + off;
        }
    }
    return NULL;
}

static uint8_t *mem_uaddr(const struct mem_table *m, uint64_t ua, uint64_t len)
{
    for (int i = 0; i < m->n; i++) {
        const struct mem_region *r = m->r[i];
        if (ua >= r->uaddr && ua - r->uaddr < r->size && len <= r->size - (ua - r->uaddr))
            return r->host + (ua - r->uaddr);
    }
    return NULL;
}

/* ---- inflight region (layout of libvhost-user/QEMU docs, split rings) ----- */

struct infl_desc {
    uint8_t inflight;
    uint8_t padding[5];
    uint16_t next;
    uint64_t counter;
};

struct infl_queue {
    uint64_t features;
    uint16_t version;
    uint16_t desc_num;
    uint16_t last_batch_head;
    uint16_t used_idx;
    struct infl_desc desc[];
};

static uint64_t infl_queue_size(uint32_t qs)
{
    return (sizeof(struct infl_desc) * qs + sizeof(uint16_t) + 63) & ~63ull;
}

uint64_t srrs_vhost_inflight_size(uint32_t nq, uint32_t qs)
{
    return (uint64_t)nq * infl_queue_size(qs);
}

/* ---- queues and requests --------------------------------------------------- */

enum vq_state {
    VQ_STOPPED = 0,  /* set by control (stop_finish); no poller */
    VQ_RUNNING = 1,  /* set by start; poller takes requests */
    VQ_STOPPING = 2, /* set by control (GET_VRING_BASE) or the reactor stop hook: drain only */
    VQ_BROKEN = 3,   /* set by the reactor on a guest error: drain only, device reported */
};

struct vq;

struct vreq {
    struct vq *vq;
    uint16_t head;
    bool busy;
    uint8_t type;
    uint8_t *status;   /* host address of the status byte (validated) */
    uint32_t used_len;
    int iovcnt;
    int nout;          /* leading device-readable iovecs */
    struct iovec iov[VQ_IOV_MAX];
};

struct vq_stats {
    uint64_t requests, reads, writes, flushes, discards, write_zeroes, get_ids, errors;
    uint64_t bytes_read, bytes_written, calls, resubmitted, left_inflight;
};

struct vq {
    struct srrs_vhost_dev *dev;
    int idx;
    _Atomic int state;
    struct srrs_reactor *r;
    struct srrs_poller *poller;
    int stop_hook;
    const struct mem_table *mem;   /* the table this queue's reactor uses */
    /* setup (control, while stopped) */
    uint32_t num;
    uint64_t desc_ua, avail_ua, used_ua;
    bool addr_set;
    int kickfd, callfd;
    /* ring (reactor) */
    struct vring_desc *desc;
    struct vring_avail *avail;
    struct vring_used *used;
    uint16_t last_avail_idx, used_idx;
    uint16_t signalled_used;
    bool signalled_valid, need_call, notify_on, event_idx;
    struct srrs_flush flush;       /* the call decision at the end of the round (vq_signal) */
    _Atomic uint32_t inflight_n;
    struct vreq *reqs;             /* one per ring entry, indexed by head */
    uint32_t reqs_cap;
    struct infl_queue *infl;
    uint64_t infl_counter;
    uint16_t *resubmit;            /* heads to resume at start, counter order */
    uint32_t nresubmit;
    struct vq_stats st;
    bool orphan;     /* stopping because the front end is gone (dev_reset): a path
                        error is left in the inflight region, not published */
};

struct srrs_vhost_dev {
    char name[SRRS_NAME_MAX];
    struct srrs_core *core;
    struct srrs_bdev *bdev;
    int nq;
    bool read_only;
    char serial[VIRTIO_BLK_ID_BYTES];
    uint64_t features;             /* acked */
    struct mem_table *mem;         /* current (control's view) */
    void *infl_map;
    size_t infl_len;
    uint8_t *infl_base;
    uint32_t infl_nq, infl_qs;
    _Atomic int broken;
    int broken_efd;                /* readable once a queue broke (the protocol thread waits on it) */
    char reason[192];
    struct vq vq[];
};

static bool dev_has(const struct srrs_vhost_dev *d, int bit) { return d->features >> bit & 1; }

uint64_t srrs_vhost_dev_features(struct srrs_vhost_dev *d)
{
    uint64_t f = 1ull << VIRTIO_F_VERSION_1 | 1ull << VIRTIO_RING_F_INDIRECT_DESC |
                 1ull << VIRTIO_RING_F_EVENT_IDX | 1ull << VHOST_USER_F_PROTOCOL_FEATURES |
                 1ull << VIRTIO_BLK_F_SEG_MAX | 1ull << VIRTIO_BLK_F_BLK_SIZE |
                 1ull << VIRTIO_BLK_F_FLUSH | 1ull << VIRTIO_BLK_F_MQ |
                 1ull << VIRTIO_BLK_F_DISCARD | 1ull << VIRTIO_BLK_F_WRITE_ZEROES;
    if (d->read_only)
        f |= 1ull << VIRTIO_BLK_F_RO;
    return f;
}

/* Reactor (or control for a stopped queue): the guest broke a rule. */
static void vq_break(struct vq *vq, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void vq_break(struct vq *vq, const char *fmt, ...)
{
    struct srrs_vhost_dev *d = vq->dev;
    char msg[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    atomic_store(&vq->state, VQ_BROKEN);
    int expected = 0;
    if (atomic_compare_exchange_strong(&d->broken, &expected, 2)) {
        snprintf(d->reason, sizeof(d->reason), "queue %d: %s", vq->idx, msg);
        atomic_store(&d->broken, 1);
        uint64_t one = 1;
        ssize_t n = write(d->broken_efd, &one, sizeof(one)); /* error path: a syscall is fine */
        (void)n;
    }
    srrs_event_post(d->core, SRRS_EV_VHOST_BROKEN, 0, (uint64_t)vq->idx, d->name, "queue %d: %s",
                    vq->idx, msg);
}

/* ---- notifications ----------------------------------------------------------- */

static void vq_signal(struct vq *vq)
{
    if (!vq->need_call)
        return;
    vq->need_call = false;
    /* The used idx store must be visible before we read the driver's flags/event. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint16_t old = vq->signalled_used, now = vq->used_idx;
    bool valid = vq->signalled_valid;
    vq->signalled_used = now;
    vq->signalled_valid = true;
    if (vq->event_idx) {
        uint16_t ev = *(volatile uint16_t *)&vq->avail->ring[vq->num];
        if (valid && !vring_need_event(ev, now, old))
            return;
    } else if (*(volatile uint16_t *)&vq->avail->flags & VRING_AVAIL_F_NO_INTERRUPT) {
        return;
    }
    if (vq->callfd >= 0) {
        uint64_t one = 1;
        ssize_t n = write(vq->callfd, &one, sizeof(one));
        (void)n;
        vq->st.calls++;
    }
}

static void vq_flush(void *arg) { vq_signal(arg); }

/* Ask the driver for kicks again (before the reactor sleeps). */
static void vq_notify_enable(struct vq *vq)
{
    if (vq->event_idx)
        vring_avail_event(vq->used, vq->num) = vq->last_avail_idx;
    else
        *(volatile uint16_t *)&vq->used->flags = 0;
    vq->notify_on = true;
}

static void vq_notify_disable(struct vq *vq)
{
    if (!vq->event_idx)
        *(volatile uint16_t *)&vq->used->flags = VRING_USED_F_NO_NOTIFY;
    vq->notify_on = false;
}

/* ---- completion ----------------------------------------------------------------- */

/* The reactor is the count's only writer while the queue runs (control sets
 * it only before the poller exists): a load and a release store, no locked
 * read-modify-write. A locked instruction is a full barrier on x86 and would
 * wait here for the used ring's cache line to come back from the driver's
 * core on every completion (docs/architecture.md, vhost-user-blk). */
static inline void vq_inflight_set(struct vq *vq, int delta)
{
    uint32_t n = atomic_load_explicit(&vq->inflight_n, memory_order_relaxed);
    atomic_store_explicit(&vq->inflight_n, n + (uint32_t)delta, memory_order_release);
}

/* Publish one used entry with the inflight protocol: last_batch_head names it
 * before used->idx moves, the inflight bit is cleared after. */
static void vq_complete(struct vreq *q, uint8_t status)
{
    struct vq *vq = q->vq;
    *(volatile uint8_t *)q->status = status;
    if (status != VIRTIO_BLK_S_OK)
        vq->st.errors++;
    struct infl_queue *iq = vq->infl;
    if (iq)
        iq->last_batch_head = q->head;
    struct vring_used_elem *e = &vq->used->ring[vq->used_idx & (vq->num - 1)];
    e->id = q->head;
    e->len = q->used_len;
    vq->used_idx++;
    __atomic_store_n(&vq->used->idx, vq->used_idx, __ATOMIC_RELEASE);
    if (iq) {
        __atomic_store_n(&iq->desc[q->head].inflight, 0, __ATOMIC_RELEASE);
        iq->used_idx = vq->used_idx;
    }
    q->busy = false;
    if (!vq->need_call) {
        vq->need_call = true;
        srrs_reactor_flush(vq->r, &vq->flush); /* one call decision per round */
    }
    vq_inflight_set(vq, -1);
}

/* A path error (-ENOTCONN: the bdev cannot serve now, a fenced mirror) while
 * the queue stops because its front end is gone: the request stays in the
 * inflight region, unanswered, and the next back end the front end connects
 * to (this process again, or the controller restarted) resubmits it, as
 * after a kill -9; the guest never sees it fail. Without an inflight region
 * it fails as any error does. */
static bool vq_leave_inflight(struct vreq *q)
{
    struct vq *vq = q->vq;
    if (!vq->orphan || !vq->infl)
        return false;
    vq->st.left_inflight++;
    q->busy = false;
    vq_inflight_set(vq, -1);
    return true;
}

static void vq_io_done(struct srrs_io *io, void *arg)
{
    struct vreq *q = arg;
    int st = io->status;
    srrs_io_put(io);
    if (srrs_unlikely(st == -ENOTCONN) && vq_leave_inflight(q))
        return;
    vq_complete(q, st ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK);
}

/* ---- request parsing ---------------------------------------------------------- */

/* Map [gpa, gpa+len) into iovecs (a buffer may span adjacent regions). */
static int vq_map(struct vq *vq, struct vreq *q, uint64_t gpa, uint32_t len)
{
    while (len) {
        uint64_t avail;
        uint8_t *p = mem_gpa(vq->mem, gpa, 0, &avail);
        if (!p)
            return -EFAULT;
        if (q->iovcnt == VQ_IOV_MAX)
            return -E2BIG;
        uint32_t n = avail < len ? (uint32_t)avail : len;
        if (q->iovcnt == 0)
            __builtin_prefetch(p, 1); /* the request header, read (and its status written) soon */
        q->iov[q->iovcnt].iov_base = p;
        q->iov[q->iovcnt].iov_len = n;
        q->iovcnt++;
        gpa += n;
        len -= n;
    }
    return 0;
}

/* Walk the chain at head into q->iov. 0, -E2BIG (too many segments: the
 * request fails), or another -errno with *why set (the guest broke the ring). */
static int vq_walk(struct vq *vq, struct vreq *q, uint16_t head, const char **why)
{
    const struct vring_desc *table = vq->desc;
    uint32_t tsize = vq->num, i = head, seen = 0;
    bool indirect = false, saw_write = false;
    uint64_t total = 0;
    q->iovcnt = 0;
    q->nout = 0;
    for (;;) {
        struct vring_desc d;
        memcpy(&d, (const void *)&table[i], sizeof(d)); /* copy out: the guest may change it */
        if (d.flags & VRING_DESC_F_INDIRECT) {
            if (indirect || !dev_has(vq->dev, VIRTIO_RING_F_INDIRECT_DESC)) {
                *why = "nested or unnegotiated indirect descriptor";
                return -EINVAL;
            }
            if (d.flags & VRING_DESC_F_NEXT) {
                *why = "indirect descriptor with NEXT";
                return -EINVAL;
            }
            if (!d.len || d.len % sizeof(struct vring_desc) || d.len / 16 > 65536) {
                *why = "indirect table length not a multiple of 16";
                return -EINVAL;
            }
            uint64_t avail;
            const uint8_t *p = mem_gpa(vq->mem, d.addr, d.len, &avail);
            if (!p || avail < d.len || ((uintptr_t)p & 7)) {
                *why = "indirect table outside guest memory";
                return -EFAULT;
            }
            table = (const struct vring_desc *)p;
            tsize = d.len / 16;
            i = 0;
            seen = 0;
            indirect = true;
            continue;
        }
        if (++seen > tsize) {
            *why = "descriptor chain loops or is longer than its table";
            return -ELOOP;
        }
        if (d.flags & VRING_DESC_F_WRITE) {
            saw_write = true;
        } else if (saw_write) {
            *why = "device-readable descriptor after a writable one";
            return -EINVAL;
        }
        total += d.len;
        if (total > (1ull << 32)) {
            *why = "chain length overflows";
            return -EOVERFLOW;
        }
        if (d.len) {
            int rc = vq_map(vq, q, d.addr, d.len);
            if (rc == -EFAULT) {
                *why = "descriptor outside guest memory";
                return rc;
            }
            if (rc == -E2BIG) {
                *why = "more segments than seg_max allows";
                return rc;
            }
            if (!saw_write)
                q->nout = q->iovcnt;
        }
        if (!(d.flags & VRING_DESC_F_NEXT))
            break;
        if (d.next >= tsize) {
            *why = "descriptor next index out of range";
            return -ERANGE;
        }
        i = d.next;
    }
    return 0;
}

/* Copy len bytes starting at the front of iov[0..cnt) out, then drop them. */
static bool iov_pull(struct iovec *iov, int *first, int end, void *dst, size_t len)
{
    uint8_t *o = dst;
    while (len) {
        if (*first >= end)
            return false;
        struct iovec *v = &iov[*first];
        size_t n = SRRS_MIN(len, v->iov_len);
        memcpy(o, v->iov_base, n);
        o += n;
        len -= n;
        v->iov_base = (uint8_t *)v->iov_base + n;
        v->iov_len -= n;
        if (!v->iov_len)
            (*first)++;
    }
    return true;
}

static uint64_t iov_len(const struct iovec *iov, int n)
{
    uint64_t t = 0;
    for (int i = 0; i < n; i++)
        t += iov[i].iov_len;
    return t;
}

static void vq_submit_io(struct vq *vq, struct vreq *q, int op, uint64_t off, uint64_t len,
                         struct iovec *iov, int cnt)
{
    struct srrs_io *io = srrs_io_get(vq->r);
    if (srrs_unlikely(!io)) {
        vq_complete(q, VIRTIO_BLK_S_IOERR);
        return;
    }
    srrs_io_prep(io, vq->dev->bdev, op, off, len, NULL, vq_io_done, q);
    io->flags = SRRS_IO_F_ONE_PATH; /* a VM has this one path */
    io->iov = iov;
    io->iovcnt = cnt;
    srrs_bdev_submit(io);
}

/* Start one request whose chain is in q->iov. Completes it itself on a
 * request-level error (IOERR / UNSUPP). */
static void vq_exec(struct vq *vq, struct vreq *q)
{
    struct srrs_vhost_dev *d = vq->dev;
    int first = 0, nout = q->nout, cnt = q->iovcnt;
    struct virtio_blk_outhdr h;
    vq->st.requests++;
    q->used_len = 1;
    if (!iov_pull(q->iov, &first, nout, &h, sizeof(h))) {
        vq_complete(q, VIRTIO_BLK_S_IOERR);
        return;
    }
    uint64_t out_len = iov_len(q->iov + first, nout - first);
    int win = nout, wcnt = cnt - nout;       /* writable data: iov[win .. win+wcnt) */
    uint64_t in_len = iov_len(q->iov + win, wcnt);
    uint64_t bs = d->bdev->block_size;
    q->type = (uint8_t)h.type;
    switch (h.type) {
    case VIRTIO_BLK_T_IN:
        vq->st.reads++;
        if (out_len || !in_len || in_len % 512 || h.sector > UINT64_MAX / 512) {
            vq_complete(q, VIRTIO_BLK_S_IOERR);
            return;
        }
        q->used_len = (uint32_t)in_len + 1;
        vq->st.bytes_read += in_len;
        vq_submit_io(vq, q, SRRS_IO_READ, h.sector * 512, in_len, q->iov + win, wcnt);
        return;
    case VIRTIO_BLK_T_OUT:
        vq->st.writes++;
        if (d->read_only || in_len || !out_len || out_len % 512 || h.sector > UINT64_MAX / 512) {
            vq_complete(q, VIRTIO_BLK_S_IOERR);
            return;
        }
        vq->st.bytes_written += out_len;
        vq_submit_io(vq, q, SRRS_IO_WRITE, h.sector * 512, out_len, q->iov + first, nout - first);
        return;
    case VIRTIO_BLK_T_FLUSH:
        vq->st.flushes++;
        vq_submit_io(vq, q, SRRS_IO_FLUSH, 0, 0, NULL, 0);
        return;
    case VIRTIO_BLK_T_GET_ID: {
        vq->st.get_ids++;
        size_t n = SRRS_MIN((uint64_t)VIRTIO_BLK_ID_BYTES, in_len);
        const char *src = d->serial;
        size_t left = n;
        for (int i = win; i < win + wcnt && left; i++) {
            size_t k = SRRS_MIN(left, q->iov[i].iov_len);
            memcpy(q->iov[i].iov_base, src, k);
            src += k;
            left -= k;
        }
        q->used_len = (uint32_t)n + 1;
        vq_complete(q, VIRTIO_BLK_S_OK);
        return;
    }
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES: {
        bool dz = h.type == VIRTIO_BLK_T_DISCARD;
        if (dz)
            vq->st.discards++;
        else
            vq->st.write_zeroes++;
        struct virtio_blk_discard_write_zeroes seg;
        if (out_len != sizeof(seg) || !iov_pull(q->iov, &first, nout, &seg, sizeof(seg))) {
            vq_complete(q, VIRTIO_BLK_S_UNSUPP);
            return;
        }
        if ((dz && seg.flags) || (seg.flags & ~1u)) {
            vq_complete(q, VIRTIO_BLK_S_UNSUPP);
            return;
        }
        uint64_t off = seg.sector * 512, len = (uint64_t)seg.num_sectors * 512;
        if (d->read_only || seg.sector > UINT64_MAX / 512 || !len || (off | len) % bs) {
            vq_complete(q, VIRTIO_BLK_S_IOERR);
            return;
        }
        vq_submit_io(vq, q, dz ? SRRS_IO_UNMAP : SRRS_IO_WRITE_ZEROES, off, len, NULL, 0);
        return;
    }
    default:
        vq_complete(q, VIRTIO_BLK_S_UNSUPP);
        return;
    }
}

/* Parse the chain at head and start it; false when the queue broke. */
static bool vq_take(struct vq *vq, uint16_t head)
{
    struct vreq *q = &vq->reqs[head];
    if (q->busy) {
        vq_break(vq, "head %u made available again while in flight", head);
        return false;
    }
    const char *why = NULL;
    int rc = vq_walk(vq, q, head, &why);
    if (rc) {
        vq_break(vq, "request at head %u: %s", head, why);
        return false;
    }
    /* The status byte is the last byte of the last writable descriptor. */
    int last = q->iovcnt - 1;
    if (q->iovcnt == q->nout) {
        vq_break(vq, "request at head %u has no device-writable status byte", head);
        return false;
    }
    q->status = (uint8_t *)q->iov[last].iov_base + q->iov[last].iov_len - 1;
    if (!--q->iov[last].iov_len)
        q->iovcnt--;
    q->busy = true;
    vq_inflight_set(vq, 1);
    if (vq->infl) {
        struct infl_desc *e = &vq->infl->desc[head];
        e->counter = ++vq->infl_counter;
        __atomic_store_n(&e->inflight, 1, __ATOMIC_RELEASE);
    }
    vq_exec(vq, q);
    return true;
}

/* ---- the poller ----------------------------------------------------------------- */

static int vq_poll(void *arg)
{
    struct vq *vq = arg;
    vq_signal(vq);
    if (atomic_load_explicit(&vq->state, memory_order_relaxed) != VQ_RUNNING)
        return 0;
    uint16_t avail_idx = __atomic_load_n(&vq->avail->idx, __ATOMIC_ACQUIRE);
    /* The next ring entry's line, fetched beside the index's: its address does
     * not depend on the index, so when the driver has just written both the
     * two misses overlap instead of following one another (an idle poll finds
     * the line cached). A hint only: the entry is read below, after the
     * index, as the ring's ordering requires (docs/architecture.md, vhost-user-blk). */
    __builtin_prefetch(&vq->avail->ring[vq->last_avail_idx & (vq->num - 1)]);
    if (avail_idx == vq->last_avail_idx)
        return 0;
    if (vq->notify_on)
        vq_notify_disable(vq);
    if ((uint16_t)(avail_idx - vq->last_avail_idx) > vq->num) {
        vq_break(vq, "avail idx moved by %u entries in a ring of %u",
                 (uint16_t)(avail_idx - vq->last_avail_idx), vq->num);
        return 1;
    }
    int n = 0;
    while (vq->last_avail_idx != avail_idx && n < VQ_BUDGET) {
        uint16_t head = *(volatile uint16_t *)&vq->avail->ring[vq->last_avail_idx & (vq->num - 1)];
        if (head >= vq->num) {
            vq_break(vq, "avail ring head %u out of range (ring of %u)", head, vq->num);
            break;
        }
        vq->last_avail_idx++;
        n++;
        if (!vq_take(vq, head))
            break;
    }
    return n; /* completions, synchronous ones too, signal at the round's end (vq_flush) */
}

/* Before sleeping: re-enable kicks, then re-check the ring (a request may have
 * arrived while kicks were off). */
static int vq_presleep(void *arg)
{
    struct vq *vq = arg;
    if (atomic_load_explicit(&vq->state, memory_order_relaxed) != VQ_RUNNING)
        return 0;
    vq_notify_enable(vq);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return __atomic_load_n(&vq->avail->idx, __ATOMIC_ACQUIRE) != vq->last_avail_idx;
}

static void vq_stop_hook(void *arg)
{
    struct vq *vq = arg;
    vq->stop_hook = -1;
    int running = VQ_RUNNING;
    atomic_compare_exchange_strong(&vq->state, &running, VQ_STOPPING);
}

/* ---- control: start / stop ------------------------------------------------------- */

static struct vq *dev_vq(struct srrs_vhost_dev *d, int idx)
{
    if (!d || idx < 0 || idx >= d->nq) {
        srrs_err(-EINVAL, "vhost %s: no queue %d", d ? d->name : "?", idx);
        return NULL;
    }
    return &d->vq[idx];
}

static bool vq_active(struct vq *vq) { return vq->poller != NULL; }

static void vq_start_msg(void *arg)
{
    struct vq *vq = arg;
    vq->flush = (struct srrs_flush){.fn = vq_flush, .arg = vq};
    vq->poller = srrs_poller_register(vq->r, vq_poll, vq, 0);
    if (!vq->poller)
        return;
    srrs_poller_set_presleep(vq->poller, vq_presleep);
    if (vq->kickfd >= 0)
        srrs_poller_set_fd(vq->poller, vq->kickfd, EPOLLIN, true);
    vq->stop_hook = srrs_reactor_add_stop_hook(vq->r, vq_stop_hook, vq);
    vq_notify_disable(vq);
    /* Resume what the previous back end had in flight, oldest first. */
    for (uint32_t i = 0; i < vq->nresubmit; i++) {
        vq->st.resubmitted++;
        if (!vq_take(vq, vq->resubmit[i]))
            break;
    }
    vq->nresubmit = 0;
    vq_signal(vq);
}

static int cmp_counter(const void *a, const void *b, void *ctx)
{
    const struct infl_queue *iq = ctx;
    uint64_t x = iq->desc[*(const uint16_t *)a].counter, y = iq->desc[*(const uint16_t *)b].counter;
    return x < y ? -1 : x > y;
}

/* Control: bind the queue to its inflight area and collect what to resume. */
static int vq_inflight_attach(struct vq *vq)
{
    struct srrs_vhost_dev *d = vq->dev;
    vq->infl = NULL;
    vq->nresubmit = 0;
    if (!d->infl_base)
        return 0;
    if ((uint32_t)vq->idx >= d->infl_nq || vq->num > d->infl_qs)
        return srrs_err(-EINVAL, "vhost %s: queue %d (%u entries) outside the inflight region",
                        d->name, vq->idx, vq->num);
    struct infl_queue *iq = (void *)(d->infl_base + (uint64_t)vq->idx * infl_queue_size(d->infl_qs));
    vq->infl = iq;
    vq->infl_counter = 0;
    if (!iq->version) {
        /* A fresh region: nothing was in flight. */
        memset(iq, 0, infl_queue_size(d->infl_qs));
        iq->version = 1;
        iq->desc_num = (uint16_t)vq->num;
        iq->used_idx = vq->used_idx;
        return 0;
    }
    if (iq->desc_num != vq->num)
        return srrs_err(-EINVAL, "vhost %s: queue %d: inflight region has %u entries, ring %u",
                        d->name, vq->idx, iq->desc_num, vq->num);
    /* A crash between publishing used->idx and clearing the bit: fix the last batch. */
    if (iq->used_idx != vq->used_idx) {
        if (iq->last_batch_head < vq->num)
            iq->desc[iq->last_batch_head].inflight = 0;
        iq->used_idx = vq->used_idx;
    }
    uint32_t n = 0;
    for (uint32_t i = 0; i < vq->num; i++) {
        if (iq->desc[i].inflight == 1) {
            vq->resubmit[n++] = (uint16_t)i;
            if (iq->desc[i].counter > vq->infl_counter)
                vq->infl_counter = iq->desc[i].counter;
        } else {
            iq->desc[i].inflight = 0;
        }
    }
    qsort_r(vq->resubmit, n, sizeof(uint16_t), cmp_counter, iq);
    vq->nresubmit = n;
    vq->last_avail_idx = (uint16_t)(vq->used_idx + n);
    return 0;
}

static void vq_stop_begin_msg(void *arg)
{
    struct vq *vq = arg;
    int running = VQ_RUNNING;
    atomic_compare_exchange_strong(&vq->state, &running, VQ_STOPPING);
    /* what the bdev holds for us (a fenced mirror) fails now: we drain */
    srrs_bdev_release_held(vq->dev->bdev);
}

static void vq_orphan_msg(void *arg)
{
    struct vq *vq = arg;
    vq->orphan = true;
}

/* Control: wait until the queue has nothing in flight (false on timeout). */
static bool vq_drain(struct vq *vq, int timeout_ms)
{
    uint64_t deadline = srrs_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    while (atomic_load_explicit(&vq->inflight_n, memory_order_acquire)) {
        if (srrs_now_ns() > deadline)
            return false;
        struct timespec ts = {0, 50000};
        nanosleep(&ts, NULL);
    }
    return true;
}

/* Host addresses of the rings through table m (whole rings inside one region,
 * aligned as the spec requires). */
static bool vq_map_rings(struct vq *vq, const struct mem_table *m)
{
    uint8_t *desc = mem_uaddr(m, vq->desc_ua, vring_desc_size(vq->num));
    uint8_t *avail = mem_uaddr(m, vq->avail_ua, vring_avail_size(vq->num) + 2);
    uint8_t *used = mem_uaddr(m, vq->used_ua, vring_used_size(vq->num) + 2);
    if (!desc || !avail || !used || ((uintptr_t)desc & 15) || ((uintptr_t)avail & 1) ||
        ((uintptr_t)used & 3))
        return false;
    vq->desc = (void *)desc;
    vq->avail = (void *)avail;
    vq->used = (void *)used;
    return true;
}

int srrs_vhost_vq_start(struct srrs_vhost_dev *d, int idx, int reactor)
{
    struct vq *vq = dev_vq(d, idx);
    if (!vq)
        return -EINVAL;
    if (vq_active(vq))
        return srrs_err(-EBUSY, "vhost %s: queue %d already started", d->name, idx);
    struct srrs_reactor *r = srrs_core_reactor(d->core, reactor);
    if (!r)
        return srrs_err(-EINVAL, "vhost %s: no reactor %d", d->name, reactor);
    if (atomic_load(&d->broken))
        return srrs_err(-EIO, "vhost %s: device is broken: %s", d->name, d->reason);
    if (!vq->num || !vq->addr_set)
        return srrs_err(-EINVAL, "vhost %s: queue %d: ring size or addresses not set", d->name,
                        idx);
    const struct mem_table *m = d->mem;
    if (!m || !m->n)
        return srrs_err(-EINVAL, "vhost %s: queue %d: no guest memory table", d->name, idx);
    if (!vq_map_rings(vq, m))
        return srrs_err(-EFAULT, "vhost %s: queue %d: rings outside the memory table or misaligned",
                        d->name, idx);
    vq->event_idx = dev_has(d, VIRTIO_RING_F_EVENT_IDX);
    vq->mem = m;
    if (vq->reqs && vq->reqs_cap < vq->num) {
        free(vq->reqs);
        free(vq->resubmit);
        vq->reqs = NULL;
        vq->resubmit = NULL;
    }
    if (!vq->reqs) {
        vq->reqs_cap = vq->num;
        vq->reqs = calloc(vq->num, sizeof(*vq->reqs));
        vq->resubmit = calloc(VQ_MAX_NUM, sizeof(uint16_t));
        if (!vq->reqs || !vq->resubmit) {
            free(vq->reqs);
            free(vq->resubmit);
            vq->reqs = NULL;
            vq->resubmit = NULL;
            return srrs_err(-ENOMEM, "vhost %s: queue %d: out of memory", d->name, idx);
        }
    }
    for (uint32_t i = 0; i < vq->num; i++) {
        vq->reqs[i].vq = vq;
        vq->reqs[i].head = (uint16_t)i;
        vq->reqs[i].busy = false;
    }
    vq->used_idx = __atomic_load_n(&vq->used->idx, __ATOMIC_ACQUIRE);
    vq->signalled_valid = false;
    vq->need_call = false;
    int rc = vq_inflight_attach(vq);
    if (rc)
        return rc;
    vq->r = r;
    atomic_store(&vq->inflight_n, 0);
    atomic_store(&vq->state, VQ_RUNNING);
    srrs_reactor_call(r, vq_start_msg, vq);
    if (!vq->poller) {
        atomic_store(&vq->state, VQ_STOPPED);
        return srrs_err(-ENOMEM, "vhost %s: queue %d: cannot register a poller", d->name, idx);
    }
    return 0;
}


static void vq_stop_finish_msg(void *arg)
{
    struct vq *vq = arg;
    vq_signal(vq);
    srrs_reactor_flush_cancel(vq->r, &vq->flush);
    if (vq->stop_hook >= 0)
        srrs_reactor_del_stop_hook(vq->r, vq->stop_hook);
    vq->stop_hook = -1;
    srrs_poller_unregister(&vq->poller);
}

int srrs_vhost_vq_stop(struct srrs_vhost_dev *d, int idx, int timeout_ms)
{
    struct vq *vq = dev_vq(d, idx);
    if (!vq)
        return -EINVAL;
    if (!vq_active(vq))
        return vq->last_avail_idx;
    srrs_reactor_call(vq->r, vq_stop_begin_msg, vq);
    if (!vq_drain(vq, timeout_ms < 0 ? 0 : timeout_ms))
        return srrs_err(-ETIMEDOUT, "vhost %s: queue %d: %u requests still in flight", d->name,
                        idx, atomic_load(&vq->inflight_n));
    srrs_reactor_call(vq->r, vq_stop_finish_msg, vq);
    if (atomic_load(&vq->state) != VQ_BROKEN)
        atomic_store(&vq->state, VQ_STOPPED);
    return vq->last_avail_idx;
}

/* ---- control: ring setup ------------------------------------------------------------ */

int srrs_vhost_vq_set_num(struct srrs_vhost_dev *d, int idx, uint32_t num)
{
    struct vq *vq = dev_vq(d, idx);
    if (!vq)
        return -EINVAL;
    if (vq_active(vq))
        return srrs_err(-EBUSY, "vhost %s: queue %d is running", d->name, idx);
    if (!num || num > VQ_MAX_NUM || (num & (num - 1)))
        return srrs_err(-EINVAL, "vhost %s: queue %d: ring size %u is not a power of two in 1..%u",
                        d->name, idx, num, VQ_MAX_NUM);
    vq->num = num;
    return 0;
}

int srrs_vhost_vq_set_addr(struct srrs_vhost_dev *d, int idx, uint64_t desc, uint64_t used,
                           uint64_t avail)
{
    struct vq *vq = dev_vq(d, idx);
    if (!vq)
        return -EINVAL;
    if (vq_active(vq))
        return srrs_err(-EBUSY, "vhost %s: queue %d is running", d->name, idx);
    vq->desc_ua = desc;
    vq->used_ua = used;
    vq->avail_ua = avail;
    vq->addr_set = true;
    return 0;
}

int srrs_vhost_vq_set_base(struct srrs_vhost_dev *d, int idx, uint32_t base)
{
    struct vq *vq = dev_vq(d, idx);
    if (!vq)
        return -EINVAL;
    if (vq_active(vq))
        return srrs_err(-EBUSY, "vhost %s: queue %d is running", d->name, idx);
    if (base > 0xffff)
        return srrs_err(-EINVAL, "vhost %s: queue %d: base %u above 65535", d->name, idx, base);
    vq->last_avail_idx = (uint16_t)base;
    return 0;
}

struct fd_swap {
    struct vq *vq;
    int fd;
    int old;
    bool kick;
};

static void vq_fd_swap_msg(void *arg)
{
    struct fd_swap *s = arg;
    struct vq *vq = s->vq;
    if (s->kick) {
        s->old = vq->kickfd;
        vq->kickfd = s->fd;
        if (vq->poller) {
            if (s->fd >= 0)
                srrs_poller_set_fd(vq->poller, s->fd, EPOLLIN, true);
            else
                srrs_poller_set_fd(vq->poller, -1, 0, false);
        }
    } else {
        s->old = vq->callfd;
        vq->callfd = s->fd;
        /* a new call fd may have missed a signal */
        vq->signalled_valid = false;
        vq->need_call = true;
    }
}

static int vq_set_fd(struct srrs_vhost_dev *d, int idx, int fd, bool kick)
{
    struct vq *vq = dev_vq(d, idx);
    if (!vq) {
        if (fd >= 0)
            close(fd);
        return -EINVAL;
    }
    struct fd_swap s = {.vq = vq, .fd = fd, .old = -1, .kick = kick};
    if (vq_active(vq))
        srrs_reactor_call(vq->r, vq_fd_swap_msg, &s);
    else
        vq_fd_swap_msg(&s);
    if (s.old >= 0 && s.old != fd)
        close(s.old);
    return 0;
}

int srrs_vhost_vq_set_kick(struct srrs_vhost_dev *d, int idx, int fd)
{
    return vq_set_fd(d, idx, fd, true);
}

int srrs_vhost_vq_set_call(struct srrs_vhost_dev *d, int idx, int fd)
{
    return vq_set_fd(d, idx, fd, false);
}

int srrs_vhost_vq_get_info(struct srrs_vhost_dev *d, int idx, struct srrs_vhost_vq_info *o)
{
    struct vq *vq = dev_vq(d, idx);
    if (!vq)
        return -EINVAL;
    memset(o, 0, sizeof(*o));
    o->index = (uint32_t)idx;
    o->reactor = vq_active(vq) ? srrs_reactor_idx(vq->r) : -1;
    int st = atomic_load(&vq->state);
    o->state = (uint32_t)(vq_active(vq) || st == VQ_BROKEN ? st : VQ_STOPPED);
    o->num = vq->num;
    o->last_avail_idx = vq->last_avail_idx;
    o->used_idx = vq->used_idx;
    o->inflight = atomic_load(&vq->inflight_n);
    o->event_idx = vq->event_idx;
    o->requests = vq->st.requests;
    o->reads = vq->st.reads;
    o->writes = vq->st.writes;
    o->flushes = vq->st.flushes;
    o->discards = vq->st.discards;
    o->write_zeroes = vq->st.write_zeroes;
    o->get_ids = vq->st.get_ids;
    o->errors = vq->st.errors;
    o->bytes_read = vq->st.bytes_read;
    o->bytes_written = vq->st.bytes_written;
    o->calls = vq->st.calls;
    o->resubmitted = vq->st.resubmitted;
    o->left_inflight = vq->st.left_inflight;
    return 0;
}

/* ---- control: memory table ------------------------------------------------------------- */

static void region_free(struct mem_region *r)
{
    if (r) {
        munmap(r->map, r->map_len);
        free(r);
    }
}

static bool any_active(struct srrs_vhost_dev *d)
{
    for (int i = 0; i < d->nq; i++)
        if (vq_active(&d->vq[i]))
            return true;
    return false;
}

struct mem_swap {
    struct vq *vq;
    const struct mem_table *m;
    bool resume;
};

static void vq_mem_swap_msg(void *arg)
{
    struct mem_swap *s = arg;
    struct vq *vq = s->vq;
    vq_signal(vq); /* while the old mapping of the rings is still there */
    vq->mem = s->m;
    /* The rings' host addresses come from the table: a region may have been
     * mapped anew (same file, different mapping). */
    if (!s->m || !vq_map_rings(vq, s->m)) {
        vq->need_call = false; /* nothing may touch the old rings now */
        if (atomic_load(&vq->state) != VQ_BROKEN)
            vq_break(vq, "the new memory table does not hold the rings");
        return;
    }
    int stopping = VQ_STOPPING;
    if (s->resume && !srrs_reactor_is_stopping(vq->r))
        atomic_compare_exchange_strong(&vq->state, &stopping, VQ_RUNNING);
}

/* Publish table nt: running queues pause and drain (their requests point into
 * the old mappings), switch tables and resume; then regions only the old
 * table had are unmapped (kept if a queue failed to drain: a leak, never a
 * dangling mapping). */
static void dev_mem_publish(struct srrs_vhost_dev *d, struct mem_table *nt)
{
    struct mem_table *old = d->mem;
    bool drained = true;
    bool resume[VHOST_MAX_QUEUES] = {false};
    for (int i = 0; i < d->nq; i++) {
        struct vq *vq = &d->vq[i];
        if (vq_active(vq)) {
            resume[i] = atomic_load(&vq->state) == VQ_RUNNING;
            srrs_reactor_call(vq->r, vq_stop_begin_msg, vq);
        }
    }
    for (int i = 0; i < d->nq; i++)
        drained &= vq_drain(&d->vq[i], 30000);
    d->mem = nt;
    for (int i = 0; i < d->nq; i++) {
        struct vq *vq = &d->vq[i];
        if (vq_active(vq)) {
            struct mem_swap s = {vq, nt, resume[i]};
            srrs_reactor_call(vq->r, vq_mem_swap_msg, &s);
        } else {
            vq->mem = nt;
        }
    }
    if (old) {
        for (int i = 0; i < old->n; i++) {
            bool kept = false;
            for (int k = 0; nt && k < nt->n; k++)
                kept |= nt->r[k] == old->r[i];
            if (!kept && drained)
                region_free(old->r[i]);
        }
        free(old);
    }
}

static bool ranges_overlap(uint64_t a, uint64_t an, uint64_t b, uint64_t bn)
{
    return a < b + bn && b < a + an;
}

static int region_map(struct srrs_vhost_dev *d, const struct mem_table *cur, int fd, uint64_t gpa,
                      uint64_t size, uint64_t uaddr, uint64_t off, struct mem_region **out)
{
    struct stat st;
    if (fd < 0 || fstat(fd, &st))
        return srrs_err(-EBADF, "vhost %s: memory region fd is not valid", d->name);
    if (!size || gpa + size < gpa || uaddr + size < uaddr || off + size < off)
        return srrs_err(-EINVAL, "vhost %s: memory region with bad size or wrapping range",
                        d->name);
    for (int i = 0; cur && i < cur->n; i++) {
        struct mem_region *r = cur->r[i];
        if (r->gpa == gpa && r->size == size && r->uaddr == uaddr && r->mmap_offset == off &&
            r->st_dev == st.st_dev && r->st_ino == st.st_ino) {
            *out = r; /* same mapping: keep it (queues may be using it) */
            return 1;
        }
    }
    long pg = sysconf(_SC_PAGESIZE);
    uint64_t aligned = off & ~(uint64_t)(pg - 1);
    uint64_t len = size + (off - aligned);
    if (S_ISREG(st.st_mode) && (uint64_t)st.st_size < off + size)
        return srrs_err(-EINVAL, "vhost %s: memory region [%#llx, +%#llx) beyond its %lld-byte file",
                        d->name, (unsigned long long)off, (unsigned long long)size,
                        (long long)st.st_size);
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, (off_t)aligned);
    if (p == MAP_FAILED)
        return srrs_err(-errno, "vhost %s: cannot map a memory region: %s", d->name,
                        strerror(errno));
    struct mem_region *r = calloc(1, sizeof(*r));
    if (!r) {
        munmap(p, len);
        return srrs_err(-ENOMEM, "vhost %s: out of memory", d->name);
    }
    *r = (struct mem_region){.gpa = gpa, .size = size, .uaddr = uaddr, .mmap_offset = off,
                             .host = (uint8_t *)p + (off - aligned), .map = p, .map_len = len,
                             .st_dev = st.st_dev, .st_ino = st.st_ino};
    *out = r;
    return 0;
}

static int table_check_add(struct srrs_vhost_dev *d, struct mem_table *t, struct mem_region *r)
{
    if (t->n >= VHOST_MAX_REGIONS)
        return srrs_err(-ENOSPC, "vhost %s: more than %d memory regions", d->name,
                        VHOST_MAX_REGIONS);
    for (int i = 0; i < t->n; i++) {
        if (ranges_overlap(t->r[i]->gpa, t->r[i]->size, r->gpa, r->size) ||
            ranges_overlap(t->r[i]->uaddr, t->r[i]->size, r->uaddr, r->size))
            return srrs_err(-EINVAL, "vhost %s: memory region at gpa %#llx overlaps another",
                            d->name, (unsigned long long)r->gpa);
    }
    t->r[t->n++] = r;
    return 0;
}

static bool table_has(const struct mem_table *t, const struct mem_region *r)
{
    for (int i = 0; t && i < t->n; i++)
        if (t->r[i] == r)
            return true;
    return false;
}

int srrs_vhost_mem_set(struct srrs_vhost_dev *d, int n, const int *fds, const uint64_t *gpa,
                       const uint64_t *size, const uint64_t *uaddr, const uint64_t *off)
{
    if (n < 0 || n > VHOST_MAX_REGIONS)
        return srrs_err(-EINVAL, "vhost %s: %d memory regions", d->name, n);
    struct mem_table *t = calloc(1, sizeof(*t));
    if (!t)
        return srrs_err(-ENOMEM, "vhost %s: out of memory", d->name);
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        struct mem_region *r;
        rc = region_map(d, d->mem, fds[i], gpa[i], size[i], uaddr[i], off[i], &r);
        if (rc < 0)
            break;
        rc = table_check_add(d, t, r);
        if (rc && !table_has(d->mem, r))
            region_free(r);
    }
    if (rc < 0) {
        for (int i = 0; i < t->n; i++)
            if (!table_has(d->mem, t->r[i]))
                region_free(t->r[i]);
        free(t);
        return rc;
    }
    /* Rings of running queues must stay inside the new table. */
    for (int i = 0; i < d->nq; i++) {
        struct vq *vq = &d->vq[i];
        if (vq_active(vq) &&
            (!mem_uaddr(t, vq->desc_ua, vring_desc_size(vq->num)) ||
             !mem_uaddr(t, vq->used_ua, vring_used_size(vq->num) + 2) ||
             !mem_uaddr(t, vq->avail_ua, vring_avail_size(vq->num) + 2))) {
            for (int k = 0; k < t->n; k++)
                if (!table_has(d->mem, t->r[k]))
                    region_free(t->r[k]);
            free(t);
            return srrs_err(-EBUSY, "vhost %s: new memory table drops queue %d's rings", d->name,
                            i);
        }
    }
    dev_mem_publish(d, t);
    return 0;
}

int srrs_vhost_mem_add(struct srrs_vhost_dev *d, int fd, uint64_t gpa, uint64_t size,
                       uint64_t uaddr, uint64_t off)
{
    struct mem_table *t = calloc(1, sizeof(*t));
    if (!t)
        return srrs_err(-ENOMEM, "vhost %s: out of memory", d->name);
    if (d->mem)
        *t = *d->mem;
    struct mem_region *r;
    int rc = region_map(d, NULL, fd, gpa, size, uaddr, off, &r);
    if (rc < 0) {
        free(t);
        return rc;
    }
    rc = table_check_add(d, t, r);
    if (rc) {
        region_free(r);
        free(t);
        return rc;
    }
    dev_mem_publish(d, t);
    return 0;
}

int srrs_vhost_mem_remove(struct srrs_vhost_dev *d, uint64_t gpa, uint64_t size)
{
    const struct mem_table *cur = d->mem;
    int found = -1;
    for (int i = 0; cur && i < cur->n; i++)
        if (cur->r[i]->gpa == gpa && cur->r[i]->size == size)
            found = i;
    if (found < 0)
        return srrs_err(-ENOENT, "vhost %s: no memory region at gpa %#llx size %#llx", d->name,
                        (unsigned long long)gpa, (unsigned long long)size);
    struct mem_table *t = calloc(1, sizeof(*t));
    if (!t)
        return srrs_err(-ENOMEM, "vhost %s: out of memory", d->name);
    for (int i = 0; i < cur->n; i++)
        if (i != found)
            t->r[t->n++] = cur->r[i];
    for (int i = 0; i < d->nq; i++) {
        struct vq *vq = &d->vq[i];
        if (vq_active(vq) && (!mem_uaddr(t, vq->desc_ua, 1) || !mem_uaddr(t, vq->used_ua, 1) ||
                              !mem_uaddr(t, vq->avail_ua, 1))) {
            free(t);
            return srrs_err(-EBUSY, "vhost %s: queue %d's rings live in that region", d->name, i);
        }
    }
    dev_mem_publish(d, t); /* drains: requests in flight may point into the region */
    return 0;
}

int srrs_vhost_mem_count(struct srrs_vhost_dev *d) { return d->mem ? d->mem->n : 0; }

/* ---- control: inflight -------------------------------------------------------------------- */

static void dev_inflight_drop(struct srrs_vhost_dev *d)
{
    if (d->infl_map)
        munmap(d->infl_map, d->infl_len);
    d->infl_map = NULL;
    d->infl_base = NULL;
    for (int i = 0; i < d->nq; i++)
        d->vq[i].infl = NULL;
}

int srrs_vhost_set_inflight(struct srrs_vhost_dev *d, int fd, uint64_t mmap_size,
                            uint64_t mmap_offset, uint32_t nq, uint32_t qs)
{
    if (any_active(d))
        return srrs_err(-EBUSY, "vhost %s: SET_INFLIGHT_FD while queues run", d->name);
    if (!nq || nq > VHOST_MAX_QUEUES || !qs || qs > VQ_MAX_NUM ||
        mmap_size < srrs_vhost_inflight_size(nq, qs))
        return srrs_err(-EINVAL, "vhost %s: inflight region of %llu bytes for %u x %u", d->name,
                        (unsigned long long)mmap_size, nq, qs);
    long pg = sysconf(_SC_PAGESIZE);
    if (mmap_offset % (uint64_t)pg)
        return srrs_err(-EINVAL, "vhost %s: inflight offset not page-aligned", d->name);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) || (S_ISREG(st.st_mode) &&
                                     (uint64_t)st.st_size < mmap_offset + mmap_size))
        return srrs_err(-EINVAL, "vhost %s: inflight fd too small or invalid", d->name);
    void *p = mmap(NULL, mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)mmap_offset);
    if (p == MAP_FAILED)
        return srrs_err(-errno, "vhost %s: cannot map the inflight region: %s", d->name,
                        strerror(errno));
    dev_inflight_drop(d);
    d->infl_map = p;
    d->infl_len = mmap_size;
    d->infl_base = p;
    d->infl_nq = nq;
    d->infl_qs = qs;
    return 0;
}

/* ---- control: device ------------------------------------------------------------------------ */

int srrs_vhost_dev_create(struct srrs_core *core, const char *name, const char *bdev, int nq,
                          int read_only, const char *serial, struct srrs_vhost_dev **out)
{
    if (!name || !*name || strlen(name) >= SRRS_NAME_MAX)
        return srrs_err(-EINVAL, "vhost: name must be 1..%d bytes", SRRS_NAME_MAX - 1);
    if (nq < 1 || nq > VHOST_MAX_QUEUES)
        return srrs_err(-EINVAL, "vhost %s: num_queues must be 1..%d", name, VHOST_MAX_QUEUES);
    struct srrs_bdev *b;
    int orc = srrs_bdev_open_export(core, bdev, &b);
    if (orc)
        return orc;
    struct srrs_vhost_dev *d = calloc(1, sizeof(*d) + (size_t)nq * sizeof(struct vq));
    if (!d) {
        srrs_bdev_close(&b);
        return srrs_err(-ENOMEM, "vhost %s: out of memory", name);
    }
    d->broken_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (d->broken_efd < 0) {
        int e = errno;
        srrs_bdev_close(&b);
        free(d);
        return srrs_err(-e, "vhost %s: eventfd: %s", name, strerror(e));
    }
    snprintf(d->name, sizeof(d->name), "%s", name);
    d->core = core;
    d->bdev = b;
    d->nq = nq;
    d->read_only = read_only != 0;
    if (serial)
        memcpy(d->serial, serial, strnlen(serial, sizeof(d->serial)));
    for (int i = 0; i < nq; i++) {
        d->vq[i].dev = d;
        d->vq[i].idx = i;
        d->vq[i].kickfd = -1;
        d->vq[i].callfd = -1;
        d->vq[i].stop_hook = -1;
    }
    *out = d;
    return 0;
}

/* The front end is gone (or is being let go): every running queue drains,
 * its path errors left in the inflight region (vq_leave_inflight). */
static void dev_stop_all(struct srrs_vhost_dev *d)
{
    /* every queue first: the first stop lets go of what the bdev holds for
     * all of them (release_held), and each completes on its own reactor */
    for (int i = 0; i < d->nq; i++)
        if (vq_active(&d->vq[i]))
            srrs_reactor_call(d->vq[i].r, vq_orphan_msg, &d->vq[i]);
    for (int i = 0; i < d->nq; i++)
        if (vq_active(&d->vq[i]))
            srrs_vhost_vq_stop(d, i, 30000);
}

int srrs_vhost_dev_reset(struct srrs_vhost_dev *d)
{
    dev_stop_all(d);
    for (int i = 0; i < d->nq; i++) {
        struct vq *vq = &d->vq[i];
        if (vq_active(vq))
            return srrs_err(-EBUSY, "vhost %s: queue %d did not drain", d->name, i);
        vq_set_fd(d, i, -1, true);
        vq_set_fd(d, i, -1, false);
        free(vq->reqs);
        free(vq->resubmit);
        struct vq_stats keep = vq->st; /* counters are cumulative over connections */
        *vq = (struct vq){.dev = d, .idx = i, .kickfd = -1, .callfd = -1, .stop_hook = -1};
        vq->st = keep;
    }
    dev_mem_publish(d, NULL);
    dev_inflight_drop(d);
    d->features = 0;
    uint64_t v;
    ssize_t n = read(d->broken_efd, &v, sizeof(v));
    (void)n;
    atomic_store(&d->broken, 0);
    d->reason[0] = 0;
    return 0;
}

void srrs_vhost_dev_destroy(struct srrs_vhost_dev **pd)
{
    struct srrs_vhost_dev *d = pd ? *pd : NULL;
    if (!d)
        return;
    srrs_vhost_dev_reset(d);
    srrs_bdev_close(&d->bdev);
    close(d->broken_efd);
    free(d);
    *pd = NULL;
}

int srrs_vhost_dev_set_features(struct srrs_vhost_dev *d, uint64_t f)
{
    uint64_t offer = srrs_vhost_dev_features(d);
    if (f & ~offer)
        return srrs_err(-EINVAL, "vhost %s: features %#llx not offered", d->name,
                        (unsigned long long)(f & ~offer));
    if (any_active(d) && ((f ^ d->features) >> VIRTIO_RING_F_EVENT_IDX & 1))
        return srrs_err(-EBUSY, "vhost %s: EVENT_IDX changed while queues run", d->name);
    d->features = f;
    return 0;
}

int srrs_vhost_dev_get_config(struct srrs_vhost_dev *d, uint8_t *buf, uint32_t len)
{
    if (len > 256)
        return srrs_err(-EINVAL, "vhost %s: config size %u above 256", d->name, len);
    struct virtio_blk_config c;
    memset(&c, 0, sizeof(c));
    uint32_t bs = d->bdev->block_size;
    c.capacity = d->bdev->size / 512;
    c.seg_max = VQ_SEG_MAX;
    c.blk_size = bs;
    c.physical_block_exp = 0;
    c.min_io_size = 1;
    c.num_queues = (uint16_t)d->nq;
    c.max_discard_sectors = DISCARD_MAX_SECTORS;
    c.max_discard_seg = 1;
    c.discard_sector_alignment = bs / 512;
    c.max_write_zeroes_sectors = DISCARD_MAX_SECTORS;
    c.max_write_zeroes_seg = 1;
    c.write_zeroes_may_unmap = 0;
    memset(buf, 0, len);
    memcpy(buf, &c, SRRS_MIN((size_t)len, sizeof(c)));
    return (int)sizeof(c);
}

int srrs_vhost_dev_broken(struct srrs_vhost_dev *d, char *reason, uint32_t len)
{
    if (atomic_load(&d->broken) != 1)
        return 0;
    if (reason && len)
        snprintf(reason, len, "%s", d->reason);
    return 1;
}

int srrs_vhost_dev_num_queues(struct srrs_vhost_dev *d) { return d->nq; }

int srrs_vhost_dev_event_fd(struct srrs_vhost_dev *d) { return d->broken_efd; }

uint64_t srrs_vhost_dev_capacity(struct srrs_vhost_dev *d) { return d->bdev->size; }
