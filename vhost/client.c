/*
 * vhost-user-blk client: plays the VM's virtio driver for tests and
 * `srrs bench vhost`. Guest memory is one memfd; rings, request headers,
 * status bytes, indirect tables and data buffers live in it. The socket
 * handshake is done in Python (vhost/client.py) with the fds exposed here;
 * the data path is this file, polled from a reactor as a bench target.
 *
 * Layout of guest memory (offsets):
 *   rings: per queue desc | avail (+used_event) | used (+avail_event), 4 KiB aligned
 *   slots: per request slot 128 bytes: header [0,16), status [16], indirect table [64,112)
 *   scratch: 64 KiB for raw (fuzz) descriptors
 *   data: max_inflight x max_io, 4 KiB aligned
 *
 * Requests: slot s goes to queue s % nq_used as queue-local k = s / nq_used;
 * with indirect descriptors it uses head k (one descriptor), else heads
 * 3k..3k+2. With verify, data is copied between the load generator's buffers
 * and guest memory (the generator owns its buffers); without, the guest
 * buffers are used as they are (a VM's zero-copy I/O).
 */
#include "ffi/srrs_int.h"
#include "vhost/vhost.h"
#include "vhost/virtio.h"

#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#define CL_SLOT 128u
#define CL_SCRATCH (64u * 1024u)

struct cq {
    uint32_t num;
    struct vring_desc *desc;
    struct vring_avail *avail;
    struct vring_used *used;
    uint16_t avail_idx, last_used, kicked;
    bool kick_pending;
    int kickfd, callfd;
    uint32_t inflight;
    struct srrs_bench_req **reqs; /* by head */
};

struct srrs_vhost_client {
    int memfd;
    uint8_t *mem;
    uint64_t mem_size, gpa_base;
    uint32_t nq, qs, max_inflight, max_io;
    uint64_t slots_off, scratch_off, data_off;
    uint64_t features, capacity;
    uint32_t block_size, nq_used;
    bool indirect, event_idx;
    bool copy;          /* move data to/from the job's buffers (only verify looks at it) */
    uint64_t errors_bad_used;
    struct cq q[];
};

static inline uint64_t cl_gpa(struct srrs_vhost_client *c, const void *p)
{
    return c->gpa_base + (uint64_t)((const uint8_t *)p - c->mem);
}

static uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

void srrs_vhost_client_destroy(struct srrs_vhost_client **pc)
{
    struct srrs_vhost_client *c = pc ? *pc : NULL;
    if (!c)
        return;
    for (uint32_t i = 0; i < c->nq; i++) {
        if (c->q[i].kickfd >= 0)
            close(c->q[i].kickfd);
        if (c->q[i].callfd >= 0)
            close(c->q[i].callfd);
        free(c->q[i].reqs);
    }
    if (c->mem)
        munmap(c->mem, c->mem_size);
    if (c->memfd >= 0)
        close(c->memfd);
    free(c);
    *pc = NULL;
}

int srrs_vhost_client_create(uint32_t nq, uint32_t qs, uint32_t max_inflight, uint32_t max_io,
                             uint64_t gpa_base, struct srrs_vhost_client **out)
{
    if (!nq || nq > 64 || !qs || qs > 1024 || (qs & (qs - 1)) || !max_inflight ||
        max_inflight > 4096 || !max_io || max_io > SRRS_BUF_MAX || (gpa_base & 4095))
        return srrs_err(-EINVAL, "vhost client: bad geometry");
    struct srrs_vhost_client *c = calloc(1, sizeof(*c) + nq * sizeof(struct cq));
    if (!c)
        return srrs_err(-ENOMEM, "vhost client: out of memory");
    c->memfd = -1;
    c->nq = nq;
    c->qs = qs;
    c->max_inflight = max_inflight;
    c->max_io = (uint32_t)align_up(max_io, 4096);
    c->gpa_base = gpa_base;
    for (uint32_t i = 0; i < nq; i++)
        c->q[i].kickfd = c->q[i].callfd = -1;
    uint64_t ring_bytes = align_up(vring_desc_size(qs), 4096) +
                          align_up(vring_avail_size(qs) + 2, 4096) +
                          align_up(vring_used_size(qs) + 2, 4096);
    c->slots_off = nq * ring_bytes;
    c->scratch_off = align_up(c->slots_off + (uint64_t)max_inflight * CL_SLOT, 4096);
    c->data_off = c->scratch_off + CL_SCRATCH;
    c->mem_size = align_up(c->data_off + (uint64_t)max_inflight * c->max_io, 2u << 20);
    int rc = 0;
    c->memfd = memfd_create("srrs-vhost-client", MFD_CLOEXEC);
    if (c->memfd < 0 || ftruncate(c->memfd, (off_t)c->mem_size)) {
        rc = srrs_err(-errno, "vhost client: memfd: %s", strerror(errno));
        goto fail;
    }
    c->mem = mmap(NULL, c->mem_size, PROT_READ | PROT_WRITE, MAP_SHARED, c->memfd, 0);
    if (c->mem == MAP_FAILED) {
        c->mem = NULL;
        rc = srrs_err(-errno, "vhost client: mmap: %s", strerror(errno));
        goto fail;
    }
    for (uint32_t i = 0; i < nq; i++) {
        struct cq *q = &c->q[i];
        uint8_t *base = c->mem + i * ring_bytes;
        q->num = qs;
        q->desc = (void *)base;
        base += align_up(vring_desc_size(qs), 4096);
        q->avail = (void *)base;
        base += align_up(vring_avail_size(qs) + 2, 4096);
        q->used = (void *)base;
        q->kickfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        q->callfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        q->reqs = calloc(qs, sizeof(*q->reqs));
        if (q->kickfd < 0 || q->callfd < 0 || !q->reqs) {
            rc = srrs_err(-ENOMEM, "vhost client: eventfds or memory");
            goto fail;
        }
    }
    *out = c;
    return 0;
fail:
    srrs_vhost_client_destroy(&c);
    return rc;
}

int srrs_vhost_client_mem(struct srrs_vhost_client *c, struct srrs_vhost_client_mem *o)
{
    o->fd = c->memfd;
    o->size = c->mem_size;
    o->gpa = c->gpa_base;
    o->uaddr = (uint64_t)(uintptr_t)c->mem;
    return 0;
}

int srrs_vhost_client_ring(struct srrs_vhost_client *c, int idx, struct srrs_vhost_client_ring *o)
{
    if (idx < 0 || (uint32_t)idx >= c->nq)
        return srrs_err(-EINVAL, "vhost client: no ring %d", idx);
    struct cq *q = &c->q[idx];
    o->desc = (uint64_t)(uintptr_t)q->desc;
    o->avail = (uint64_t)(uintptr_t)q->avail;
    o->used = (uint64_t)(uintptr_t)q->used;
    o->kickfd = q->kickfd;
    o->callfd = q->callfd;
    o->num = q->num;
    return 0;
}

int srrs_vhost_client_setup(struct srrs_vhost_client *c, uint64_t features, uint64_t capacity,
                            uint32_t block_size, uint32_t nq_used)
{
    if (!nq_used || nq_used > c->nq || (block_size != 512 && block_size != 4096))
        return srrs_err(-EINVAL, "vhost client: %u queues of %u, block size %u", nq_used, c->nq,
                        block_size);
    c->features = features;
    c->indirect = features >> VIRTIO_RING_F_INDIRECT_DESC & 1;
    c->event_idx = features >> VIRTIO_RING_F_EVENT_IDX & 1;
    c->capacity = capacity;
    c->block_size = block_size;
    c->nq_used = nq_used;
    for (uint32_t i = 0; i < c->nq; i++) {
        struct cq *q = &c->q[i];
        /* We poll the used ring: ask for no interrupts. */
        q->avail->flags = c->event_idx ? 0 : VRING_AVAIL_F_NO_INTERRUPT;
        q->avail->ring[q->num] = (uint16_t)(q->last_used + 0x8000);
    }
    return 0;
}

/* ---- data path ------------------------------------------------------------- */

static void cq_kick(struct cq *q, bool event_idx)
{
    if (!q->kick_pending)
        return;
    q->kick_pending = false;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    bool need;
    if (event_idx)
        need = vring_need_event(vring_avail_event(q->used, q->num), q->avail_idx, q->kicked);
    else
        need = !(*(volatile uint16_t *)&q->used->flags & VRING_USED_F_NO_NOTIFY);
    q->kicked = q->avail_idx;
    if (need) {
        uint64_t one = 1;
        ssize_t n = write(q->kickfd, &one, sizeof(one));
        (void)n;
    }
}

/* Build the request for slot s on its queue; returns the head. */
static uint16_t cl_build(struct srrs_vhost_client *c, struct cq *q, uint32_t k, uint32_t slot,
                         uint32_t type, uint64_t sector, uint32_t len, bool dev_writes)
{
    uint8_t *sp = c->mem + c->slots_off + (uint64_t)slot * CL_SLOT;
    uint8_t *data = c->mem + c->data_off + (uint64_t)slot * c->max_io;
    struct virtio_blk_outhdr h = {.type = type, .ioprio = 0, .sector = sector};
    memcpy(sp, &h, sizeof(h));
    sp[16] = 0xff;
    struct vring_desc d[3];
    int n = 0;
    d[n++] = (struct vring_desc){cl_gpa(c, sp), 16, VRING_DESC_F_NEXT, 1};
    if (len)
        d[n++] = (struct vring_desc){cl_gpa(c, data), len,
                                     (uint16_t)(VRING_DESC_F_NEXT | (dev_writes ? VRING_DESC_F_WRITE : 0)),
                                     2};
    d[n++] = (struct vring_desc){cl_gpa(c, sp + 16), 1, VRING_DESC_F_WRITE, 0};
    if (n == 2)
        d[0].next = 1;
    uint16_t head;
    if (c->indirect) {
        struct vring_desc *t = (void *)(sp + 64);
        memcpy(t, d, sizeof(d[0]) * (size_t)n);
        head = (uint16_t)k;
        q->desc[head] = (struct vring_desc){cl_gpa(c, t), (uint32_t)(16 * n), VRING_DESC_F_INDIRECT, 0};
    } else {
        head = (uint16_t)(3 * k);
        for (int i = 0; i < n; i++) {
            d[i].next = (uint16_t)(head + i + 1);
            q->desc[head + i] = d[i];
        }
    }
    return head;
}

static void cq_publish(struct cq *q, uint16_t head)
{
    q->avail->ring[q->avail_idx & (q->num - 1)] = head;
    q->avail_idx++;
    __atomic_store_n(&q->avail->idx, q->avail_idx, __ATOMIC_RELEASE);
    q->kick_pending = true;
}

static int cl_submit(void *ctx, struct srrs_bench_req *r)
{
    struct srrs_vhost_client *c = ctx;
    uint32_t s = r->slot;
    struct cq *q = &c->q[s % c->nq_used];
    uint32_t k = s / c->nq_used;
    uint8_t *data = c->mem + c->data_off + (uint64_t)s * c->max_io;
    bool rd = r->op == SRRS_IO_READ;
    if (!rd && c->copy)
        memcpy(data, r->buf, r->len);
    uint16_t head = cl_build(c, q, k, s, rd ? VIRTIO_BLK_T_IN : VIRTIO_BLK_T_OUT, r->offset / 512,
                             r->len, rd);
    q->reqs[head] = r;
    q->inflight++;
    cq_publish(q, head);
    return 0;
}

static int cl_poll(void *ctx)
{
    struct srrs_vhost_client *c = ctx;
    int busy = 0;
    for (uint32_t i = 0; i < c->nq_used; i++) {
        struct cq *q = &c->q[i];
        cq_kick(q, c->event_idx);
        uint16_t used = __atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE);
        bool moved = q->last_used != used;
        while (q->last_used != used) {
            struct vring_used_elem e = q->used->ring[q->last_used & (q->num - 1)];
            q->last_used++;
            struct srrs_bench_req *r = e.id < q->num ? q->reqs[e.id] : NULL;
            if (!r) {
                c->errors_bad_used++;
                continue;
            }
            q->reqs[e.id] = NULL;
            q->inflight--;
            uint32_t s = r->slot;
            uint8_t st = c->mem[c->slots_off + (uint64_t)s * CL_SLOT + 16];
            if (st == VIRTIO_BLK_S_OK && r->op == SRRS_IO_READ && c->copy)
                memcpy(r->buf, c->mem + c->data_off + (uint64_t)s * c->max_io, r->len);
            srrs_bench_req_done(r, st == VIRTIO_BLK_S_OK ? 0 : -EIO);
            busy++;
        }
        /* Only when it changed: a store per poll would bounce the line to the device. */
        if (c->event_idx && moved)
            q->avail->ring[q->num] = (uint16_t)(q->last_used + 0x8000);
        cq_kick(q, c->event_idx);
        if (q->inflight)
            busy++;
    }
    return busy;
}

int srrs_vhost_client_bench(struct srrs_core *core, int reactor, struct srrs_vhost_client *c,
                            const struct srrs_bench_opts *o, struct srrs_bench_result *out)
{
    struct srrs_reactor *r = srrs_core_reactor(core, reactor);
    if (!r)
        return srrs_err(-EINVAL, "vhost client: no reactor %d", reactor);
    if (!c->nq_used)
        return srrs_err(-EINVAL, "vhost client: not set up (handshake first)");
    uint32_t per_q = (o->qd + c->nq_used - 1) / c->nq_used;
    uint32_t cap = c->indirect ? c->qs : c->qs / 3;
    if (o->qd > c->max_inflight || per_q > cap)
        return srrs_err(-EINVAL, "vhost client: qd %u above %u slots or %u per queue", o->qd,
                        c->max_inflight, cap);
    if (SRRS_MAX(o->bs, o->bs_max) > c->max_io)
        return srrs_err(-EINVAL, "vhost client: I/O size above %u", c->max_io);
    c->copy = o->vmap != NULL;
    struct srrs_bench_target t = {.size = c->capacity, .block_size = c->block_size, .ctx = c,
                                  .submit = cl_submit, .poll = cl_poll};
    return srrs_bench_run(r, &t, o, out);
}

/* ---- synchronous requests and raw posts (control thread, no job running) ---- */

static int cq_wait(struct cq *q, uint16_t want, int timeout_ms)
{
    uint64_t deadline = srrs_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    while ((uint16_t)(__atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE) - want) > 0x8000) {
        if (srrs_now_ns() > deadline)
            return -ETIMEDOUT;
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

int srrs_vhost_client_request(struct srrs_vhost_client *c, int qi, uint32_t type, uint64_t sector,
                              void *buf, uint32_t len, int timeout_ms)
{
    if (qi < 0 || (uint32_t)qi >= c->nq || len > c->max_io)
        return srrs_err(-EINVAL, "vhost client: queue %d / length %u", qi, len);
    struct cq *q = &c->q[qi];
    if (q->inflight)
        return srrs_err(-EBUSY, "vhost client: queue %d busy", qi);
    uint8_t *data = c->mem + c->data_off;
    bool dev_writes = type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID;
    if (!dev_writes && len)
        memcpy(data, buf, len);
    uint16_t head = cl_build(c, q, 0, 0, type, sector, len, dev_writes);
    cq_publish(q, head);
    q->kick_pending = true;
    /* Always kick: the back end may be asleep with notifications on. */
    q->kicked = (uint16_t)(q->avail_idx - 1);
    uint64_t one = 1;
    ssize_t n = write(q->kickfd, &one, sizeof(one));
    (void)n;
    q->kick_pending = false;
    int rc = cq_wait(q, q->avail_idx, timeout_ms);
    if (rc)
        return srrs_err(rc, "vhost client: no answer on queue %d", qi);
    q->last_used = q->avail_idx;
    if (c->event_idx)
        q->avail->ring[q->num] = (uint16_t)(q->last_used + 0x8000);
    uint8_t st = c->mem[c->slots_off + 16];
    if (dev_writes && len && st == VIRTIO_BLK_S_OK)
        memcpy(buf, data, len);
    return st;
}

uint64_t srrs_vhost_client_scratch(struct srrs_vhost_client *c)
{
    return c->gpa_base + c->scratch_off;
}

int srrs_vhost_client_post_raw(struct srrs_vhost_client *c, int qi, const uint8_t *descs, uint32_t n,
                               const uint16_t *heads, uint32_t nheads, uint16_t idx_delta,
                               const uint8_t *scratch, uint32_t scratch_len)
{
    if (qi < 0 || (uint32_t)qi >= c->nq)
        return srrs_err(-EINVAL, "vhost client: no ring %d", qi);
    struct cq *q = &c->q[qi];
    if (n > q->num || scratch_len > CL_SCRATCH || nheads > q->num)
        return srrs_err(-EINVAL, "vhost client: raw post too large");
    memcpy(q->desc, descs, (size_t)n * 16);
    memcpy(c->mem + c->scratch_off, scratch, scratch_len);
    for (uint32_t i = 0; i < nheads; i++)
        q->avail->ring[(uint16_t)(q->avail_idx + i) & (q->num - 1)] = heads[i];
    q->avail_idx = (uint16_t)(q->avail_idx + idx_delta);
    __atomic_store_n(&q->avail->idx, q->avail_idx, __ATOMIC_RELEASE);
    uint64_t one = 1;
    ssize_t k = write(q->kickfd, &one, sizeof(one));
    (void)k;
    return 0;
}

int srrs_vhost_client_used_idx(struct srrs_vhost_client *c, int qi)
{
    if (qi < 0 || (uint32_t)qi >= c->nq)
        return srrs_err(-EINVAL, "vhost client: no ring %d", qi);
    return __atomic_load_n(&c->q[qi].used->idx, __ATOMIC_ACQUIRE);
}
