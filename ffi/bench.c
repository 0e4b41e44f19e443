/*
 * Load generator (like SPDK's bdevperf): a job keeps qd requests in flight
 * against a target (a bdev here; the NVMe/TCP initiator and the vhost-user
 * client plug in the same way), resubmitting each slot as it completes, and
 * records latency in a log-linear histogram of ticks. With a verify map,
 * writes fill random data and record each block's CRC32C; reads check it.
 */
#include "srrs_int.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- verify map ---------------------------------------------------------- */

struct srrs_verify_map {
    uint64_t num_blocks;
    uint32_t block_size;
    uint32_t *crc;
    uint64_t *written;  /* bitmap */
    uint64_t *inflight; /* bitmap: blocks some request is using now */
    uint64_t nwritten;
};

int srrs_verify_map_create(uint64_t num_blocks, uint32_t block_size, struct srrs_verify_map **out)
{
    if (!num_blocks || (block_size != 512 && block_size != 4096) || num_blocks > (1ull << 32))
        return srrs_err(-EINVAL, "verify map: bad geometry");
    struct srrs_verify_map *m = calloc(1, sizeof(*m));
    size_t words = (num_blocks + 63) / 64;
    if (m) {
        m->crc = calloc(num_blocks, sizeof(uint32_t));
        m->written = calloc(words, 8);
        m->inflight = calloc(words, 8);
    }
    if (!m || !m->crc || !m->written || !m->inflight) {
        if (m) {
            free(m->crc);
            free(m->written);
            free(m->inflight);
        }
        free(m);
        return srrs_err(-ENOMEM, "verify map: out of memory");
    }
    m->num_blocks = num_blocks;
    m->block_size = block_size;
    *out = m;
    return 0;
}

void srrs_verify_map_destroy(struct srrs_verify_map **pm)
{
    struct srrs_verify_map *m = pm ? *pm : NULL;
    if (!m)
        return;
    free(m->crc);
    free(m->written);
    free(m->inflight);
    free(m);
    *pm = NULL;
}

uint64_t srrs_verify_map_written(struct srrs_verify_map *m) { return m->nwritten; }

static inline bool bit_get(const uint64_t *bm, uint64_t i) { return bm[i >> 6] >> (i & 63) & 1; }
static inline void bit_set(uint64_t *bm, uint64_t i) { bm[i >> 6] |= 1ull << (i & 63); }
static inline void bit_clr(uint64_t *bm, uint64_t i) { bm[i >> 6] &= ~(1ull << (i & 63)); }

static bool range_busy(const struct srrs_verify_map *m, uint64_t b0, uint64_t n)
{
    for (uint64_t i = b0; i < b0 + n; i++)
        if (bit_get(m->inflight, i))
            return true;
    return false;
}

static void range_mark(struct srrs_verify_map *m, uint64_t b0, uint64_t n, bool on)
{
    for (uint64_t i = b0; i < b0 + n; i++)
        on ? bit_set(m->inflight, i) : bit_clr(m->inflight, i);
}

/* ---- histogram ----------------------------------------------------------- */

#define HIST_SUB 16
#define HIST_BUCKETS (64 * HIST_SUB)

static inline uint32_t hist_index(uint64_t v)
{
    if (v < HIST_SUB)
        return (uint32_t)v;
    uint32_t msb = 63u - (uint32_t)__builtin_clzll(v);
    uint32_t shift = msb - 4;
    return (msb - 3) * HIST_SUB + (uint32_t)((v >> shift) & (HIST_SUB - 1));
}

static inline uint64_t hist_value(uint32_t idx)
{
    if (idx < HIST_SUB)
        return idx;
    uint32_t msb = idx / HIST_SUB + 3;
    uint64_t sub = idx % HIST_SUB;
    /* middle of the bucket */
    return ((HIST_SUB + sub) << (msb - 4)) + ((1ull << (msb - 4)) >> 1);
}

/* ---- job ------------------------------------------------------------------- */

struct bench_job {
    struct srrs_bench_target *t;
    struct srrs_bench_opts o;
    struct srrs_reactor *r;
    struct srrs_bench_req *reqs;
    uint32_t *retry;      /* slots waiting to be (re)submitted */
    uint8_t **bases;      /* each slot's pool buffer */
    uint32_t nretry;
    uint32_t inflight;
    uint32_t qd;
    uint32_t buf_len;
    uint64_t rng;
    uint64_t seq_next;
    uint64_t lo, hi;      /* byte range */
    uint64_t start, deadline;
    uint64_t issued;
    bool stopping, finished;
    int stop_hook;
    struct srrs_poller *poller;
    uint64_t hist[HIST_BUCKETS];
    uint64_t lat_sum, lat_min, lat_max;
    uint64_t busy0, all0;
    struct srrs_bench_result res;
    sem_t done;
};

static inline uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void fill_random(uint64_t *rng, uint8_t *p, size_t len)
{
    uint64_t s = xorshift(rng) | 1;
    for (size_t i = 0; i + 8 <= len; i += 8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        memcpy(p + i, &s, 8);
    }
}

static bool job_is_read(struct bench_job *j)
{
    switch (j->o.rw) {
    case 0:
    case 3:
        return true;
    case 2:
        return (xorshift(&j->rng) % 100) < (uint64_t)j->o.rwmix_read;
    default:
        return false;
    }
}

static uint32_t job_len(struct bench_job *j)
{
    uint32_t bs = j->t->block_size;
    if (j->o.bs_max <= j->o.bs)
        return j->o.bs;
    /* log-uniform between bs and bs_max, in whole blocks */
    uint32_t lo = j->o.bs / bs, hi = j->o.bs_max / bs;
    uint32_t bits = 32u - (uint32_t)__builtin_clz(hi);
    uint32_t cap = 1u << (1 + xorshift(&j->rng) % bits);
    uint32_t n = (uint32_t)(xorshift(&j->rng) % cap) + 1;
    n = SRRS_MAX(lo, SRRS_MIN(n, hi));
    return n * bs;
}

static int job_pick(struct bench_job *j, struct srrs_bench_req *q)
{
    uint32_t len = job_len(j);
    uint64_t bs = j->t->block_size;
    bool seq = j->o.rw == 3 || j->o.rw == 4;
    struct srrs_verify_map *m = j->o.vmap;
    uint64_t span = j->hi - j->lo;
    if (len > span)
        len = (uint32_t)(span - span % bs);
    for (int tries = 0; tries < 64; tries++) {
        uint64_t off;
        if (seq) {
            if (j->seq_next + len > j->hi)
                j->seq_next = j->lo;
            off = j->seq_next;
            j->seq_next += len;
        } else {
            uint64_t slots = (span - len) / bs + 1;
            off = j->lo + (xorshift(&j->rng) % slots) * bs;
        }
        if (m && range_busy(m, off / m->block_size, len / m->block_size))
            continue;
        q->offset = off;
        q->len = len;
        if (m)
            range_mark(m, off / m->block_size, len / m->block_size, true);
        return 0;
    }
    return -EBUSY;
}

static void job_finish(struct bench_job *j);

static int job_submit_slot(struct bench_job *j, uint32_t slot)
{
    struct srrs_bench_req *q = &j->reqs[slot];
    if (job_pick(j, q))
        return -EBUSY;
    q->op = job_is_read(j) ? SRRS_IO_READ : SRRS_IO_WRITE;
    q->job = j;
    /* misalign: every other I/O starts 512 B past a 4 KiB boundary (page cache path) */
    q->buf = j->bases[slot] + (j->o.misalign && (xorshift(&j->rng) & 1) ? 512 : 0);
    struct srrs_verify_map *m = j->o.vmap;
    if (q->op == SRRS_IO_WRITE && m) {
        fill_random(&j->rng, q->buf, q->len);
        /* CRCs are recorded at completion: a failed write must not count. */
    }
    q->start = srrs_ticks();
    int rc = j->t->submit(j->t->ctx, q);
    if (rc) {
        if (m)
            range_mark(m, q->offset / m->block_size, q->len / m->block_size, false);
        return rc;
    }
    j->inflight++;
    j->issued++;
    return 0;
}

static bool job_should_stop(struct bench_job *j, uint64_t now)
{
    if (j->stopping)
        return true;
    if ((j->o.max_ios && j->issued >= j->o.max_ios) || (j->deadline && now >= j->deadline) ||
        srrs_reactor_is_stopping(j->r))
        j->stopping = true;
    return j->stopping;
}

void srrs_bench_req_done(struct srrs_bench_req *q, int status)
{
    struct bench_job *j = q->job;
    uint64_t now = srrs_ticks();
    uint64_t lat = now - q->start;
    j->inflight--;
    j->hist[hist_index(lat)]++;
    j->lat_sum += lat;
    if (lat < j->lat_min)
        j->lat_min = lat;
    if (lat > j->lat_max)
        j->lat_max = lat;
    struct srrs_verify_map *m = j->o.vmap;
    if (status) {
        j->res.errors++;
        if (!j->res.first_error)
            j->res.first_error = status;
    } else {
        j->res.ios++;
        j->res.bytes += q->len;
        if (q->op == SRRS_IO_READ)
            j->res.reads++;
        else
            j->res.writes++;
    }
    if (m) {
        uint64_t b0 = q->offset / m->block_size, n = q->len / m->block_size;
        const uint8_t *p = q->buf;
        for (uint64_t i = 0; i < n; i++, p += m->block_size) {
            uint32_t c = srrs_crc32c(0, p, m->block_size);
            if (q->op == SRRS_IO_WRITE && !status) {
                if (!bit_get(m->written, b0 + i)) {
                    bit_set(m->written, b0 + i);
                    m->nwritten++;
                }
                m->crc[b0 + i] = c;
            } else if (q->op == SRRS_IO_READ && !status && bit_get(m->written, b0 + i)) {
                j->res.verified_blocks++;
                if (m->crc[b0 + i] != c)
                    j->res.verify_errors++;
            } else if (q->op == SRRS_IO_WRITE && status) {
                /* Unknown content now: stop checking that block. */
                if (bit_get(m->written, b0 + i)) {
                    bit_clr(m->written, b0 + i);
                    m->nwritten--;
                }
            }
        }
        range_mark(m, b0, n, false);
    }
    uint32_t slot = q->slot;
    if (!job_should_stop(j, now)) {
        if (job_submit_slot(j, slot))
            j->retry[j->nretry++] = slot;
    }
    if (j->stopping && !j->inflight)
        job_finish(j);
}

static int job_poll(void *arg)
{
    struct bench_job *j = arg;
    int work = 0;
    if (j->t->poll)
        work += j->t->poll(j->t->ctx);
    if (j->finished)
        return work;
    uint64_t now = srrs_ticks();
    if (!job_should_stop(j, now)) {
        uint32_t n = j->nretry;
        j->nretry = 0;
        for (uint32_t i = 0; i < n; i++) {
            if (job_should_stop(j, now) || job_submit_slot(j, j->retry[i]))
                j->retry[j->nretry++] = j->retry[i];
            else
                work++;
        }
    }
    if (j->stopping && !j->inflight)
        job_finish(j);
    return work;
}

static void job_stop_hook(void *arg)
{
    struct bench_job *j = arg;
    j->stop_hook = -1;
    j->stopping = true;
    if (!j->inflight)
        job_finish(j);
}

static void job_post_done(void *arg)
{
    struct bench_job *j = arg;
    sem_post(&j->done);
}

static void job_finish(struct bench_job *j)
{
    if (j->finished)
        return;
    j->finished = true;
    uint64_t end = srrs_ticks();
    struct srrs_bench_result *o = &j->res;
    o->elapsed_s = (double)srrs_ticks_to_ns(end - j->start) / 1e9;
    uint64_t n = o->ios + o->errors;
    if (o->elapsed_s > 0) {
        o->iops = (double)o->ios / o->elapsed_s;
        o->mibps = (double)o->bytes / (1024.0 * 1024.0) / o->elapsed_s;
    }
    double tick_us = 1e6 / (double)srrs_tick_hz;
    if (n) {
        o->lat_avg_us = (double)j->lat_sum / (double)n * tick_us;
        o->lat_min_us = (double)j->lat_min * tick_us;
        o->lat_max_us = (double)j->lat_max * tick_us;
        double want[3] = {0.50, 0.99, 0.999};
        double *dst[3] = {&o->lat_p50_us, &o->lat_p99_us, &o->lat_p999_us};
        for (int k = 0; k < 3; k++) {
            uint64_t target = (uint64_t)((double)n * want[k]), acc = 0;
            if (target == 0)
                target = 1;
            for (uint32_t b = 0; b < HIST_BUCKETS; b++) {
                acc += j->hist[b];
                if (acc >= target) {
                    *dst[k] = (double)hist_value(b) * tick_us;
                    break;
                }
            }
        }
    }
    struct srrs_reactor_stats st;
    srrs_reactor_get_stats(srrs_reactor_core(j->r), srrs_reactor_idx(j->r), &st);
    uint64_t all = st.busy_ns + st.idle_ns + st.sleep_ns;
    if (all > j->all0)
        o->busy_pct = 100.0 * (double)(st.busy_ns - j->busy0) / (double)(all - j->all0);
    for (uint32_t i = 0; i < j->qd; i++)
        srrs_buf_put(j->r, j->bases[i], j->buf_len);
    if (j->stop_hook >= 0)
        srrs_reactor_del_stop_hook(j->r, j->stop_hook);
    srrs_poller_unregister(&j->poller);
    /* Wake the caller from a message, not from here: job_finish may run inside
     * the target's poll (a completion), which must return before the caller
     * frees the job and the target. */
    if (srrs_reactor_send(j->r, job_post_done, j))
        sem_post(&j->done);
}

static void job_start(void *arg)
{
    struct bench_job *j = arg;
    struct srrs_reactor *r = j->r;
    struct srrs_reactor_stats st;
    srrs_reactor_get_stats(srrs_reactor_core(r), srrs_reactor_idx(r), &st);
    j->busy0 = st.busy_ns;
    j->all0 = st.busy_ns + st.idle_ns + st.sleep_ns;
    j->stop_hook = -1;
    for (uint32_t i = 0; i < j->qd; i++) {
        j->bases[i] = srrs_buf_get(r, j->buf_len);
        j->reqs[i].buf = j->bases[i];
        j->reqs[i].slot = i;
        j->reqs[i].job = j;
        if (!j->bases[i]) {
            for (uint32_t k = 0; k < i; k++)
                srrs_buf_put(r, j->bases[k], j->buf_len);
            j->res.first_error = -ENOMEM;
            j->finished = true;
            sem_post(&j->done);
            return;
        }
    }
    j->poller = srrs_poller_register(r, job_poll, j, 0);
    j->stop_hook = srrs_reactor_add_stop_hook(r, job_stop_hook, j);
    j->start = srrs_ticks();
    j->deadline = j->o.time_s > 0 ? j->start + srrs_us_to_ticks((uint64_t)(j->o.time_s * 1e6)) : 0;
    j->lat_min = UINT64_MAX;
    for (uint32_t i = 0; i < j->qd; i++) {
        if (job_should_stop(j, j->start))
            break;
        if (job_submit_slot(j, i))
            j->retry[j->nretry++] = i;
    }
    if (j->stopping && !j->inflight)
        job_finish(j);
}

int srrs_bench_run(struct srrs_reactor *r, struct srrs_bench_target *t,
                   const struct srrs_bench_opts *o, struct srrs_bench_result *out)
{
    if (!r || !t || !o || !out)
        return srrs_err(-EINVAL, "bench: missing argument");
    uint32_t bs = t->block_size;
    uint32_t maxlen = SRRS_MAX(o->bs, o->bs_max);
    if (o->rw < 0 || o->rw > 4)
        return srrs_err(-EINVAL, "bench: rw must be 0..4");
    if (!o->bs || o->bs % bs || (o->bs_max && o->bs_max % bs))
        return srrs_err(-EINVAL, "bench: bs %u is not a multiple of the block size %u", o->bs, bs);
    if (maxlen > SRRS_BUF_MAX)
        return srrs_err(-EINVAL, "bench: I/O size %u above the 1 MiB buffer limit", maxlen);
    if (o->qd < 1 || o->qd > 4096)
        return srrs_err(-EINVAL, "bench: qd must be 1..4096");
    if (o->time_s <= 0 && !o->max_ios)
        return srrs_err(-EINVAL, "bench: give a time or an I/O count");
    uint64_t lo = o->offset, hi = o->span ? o->offset + o->span : t->size;
    if (lo % bs || hi > t->size || hi <= lo || hi - lo < maxlen)
        return srrs_err(-EINVAL, "bench: range [%llu, %llu) does not fit the %llu-byte device",
                        (unsigned long long)lo, (unsigned long long)hi,
                        (unsigned long long)t->size);
    if (o->vmap && (o->vmap->block_size != bs || o->vmap->num_blocks * bs < t->size))
        return srrs_err(-EINVAL, "bench: verify map does not match the device geometry");
    struct bench_job *j = calloc(1, sizeof(*j));
    if (!j)
        return srrs_err(-ENOMEM, "bench: out of memory");
    j->reqs = calloc(o->qd, sizeof(*j->reqs));
    j->retry = calloc(o->qd, sizeof(uint32_t));
    j->bases = calloc(o->qd, sizeof(uint8_t *));
    if (!j->reqs || !j->retry || !j->bases) {
        free(j->reqs);
        free(j->retry);
        free(j->bases);
        free(j);
        return srrs_err(-ENOMEM, "bench: out of memory");
    }
    j->t = t;
    j->o = *o;
    j->r = r;
    j->qd = o->qd;
    j->buf_len = maxlen + (o->misalign ? 4096u : 0);
    j->lo = lo;
    j->hi = hi - (hi - lo) % bs;
    j->seq_next = lo;
    j->rng = o->seed ? o->seed : 0x9E3779B97F4A7C15ull;
    sem_init(&j->done, 0, 0);
    int rc;
    while ((rc = srrs_reactor_send(r, job_start, j)) == -EAGAIN)
        ;
    if (rc) {
        free(j->reqs);
        free(j->retry);
        free(j->bases);
        free(j);
        return srrs_err(rc, "bench: reactor %d is not running", srrs_reactor_idx(r));
    }
    while (sem_wait(&j->done) && errno == EINTR)
        ;
    *out = j->res;
    rc = j->res.first_error == -ENOMEM && !j->res.ios ? srrs_err(-ENOMEM, "bench: no buffers") : 0;
    sem_destroy(&j->done);
    free(j->reqs);
    free(j->retry);
    free(j->bases);
    free(j);
    return rc;
}

/* ---- bdev target ----------------------------------------------------------- */

struct bdev_target {
    struct srrs_bdev *b;
    struct srrs_reactor *r;
};

static void bdev_target_done(struct srrs_io *io, void *arg)
{
    struct srrs_bench_req *q = arg;
    int st = io->status;
    srrs_io_put(io);
    srrs_bench_req_done(q, st);
}

static int bdev_target_submit(void *ctx, struct srrs_bench_req *q)
{
    struct bdev_target *bt = ctx;
    struct srrs_io *io = srrs_io_get(bt->r);
    if (!io)
        return -EAGAIN;
    srrs_io_prep(io, bt->b, q->op, q->offset, q->len, q->buf, bdev_target_done, q);
    srrs_bdev_submit(io);
    return 0;
}

int srrs_bench_bdev(struct srrs_core *core, int reactor, const char *name,
                    const struct srrs_bench_opts *o, struct srrs_bench_result *out)
{
    struct srrs_reactor *r = srrs_core_reactor(core, reactor);
    if (!r)
        return srrs_err(-EINVAL, "bench: no reactor %d", reactor);
    struct srrs_bdev *b = srrs_bdev_open(core, name);
    if (!b)
        return -ENOENT;
    struct bdev_target bt = {.b = b, .r = r};
    struct srrs_bench_target t = {
        .size = b->size, .block_size = b->block_size, .ctx = &bt, .submit = bdev_target_submit};
    int rc = srrs_bench_run(r, &t, o, out);
    srrs_bdev_close(&b);
    return rc;
}

/* ---- two bdevs written as one ------------------------------------------------ */

/* Every write goes to both bdevs at once, same offset and buffer, and
 * completes once both have (the first failure's status); reads go to the
 * first. A synchronous mirror without its link or its second process: what
 * waiting for the slower of two writes costs at a queue depth
 * (ci/bench-pair's "both" row). Per slot: writes outstanding, status. */
struct dual_target {
    struct srrs_bdev *b[2];
    struct srrs_reactor *r;
    uint8_t *left;
    int *st;
};

static void dual_target_done(struct srrs_io *io, void *arg)
{
    struct srrs_bench_req *q = arg;
    struct dual_target *dt = ((struct bench_job *)q->job)->t->ctx;
    int st = io->status;
    srrs_io_put(io);
    if (st && !dt->st[q->slot])
        dt->st[q->slot] = st;
    if (--dt->left[q->slot] == 0)
        srrs_bench_req_done(q, dt->st[q->slot]);
}

static int dual_target_submit(void *ctx, struct srrs_bench_req *q)
{
    struct dual_target *dt = ctx;
    int n = q->op == SRRS_IO_WRITE ? 2 : 1;
    struct srrs_io *io[2] = {srrs_io_get(dt->r), n == 2 ? srrs_io_get(dt->r) : NULL};
    if (!io[0] || (n == 2 && !io[1])) {
        for (int i = 0; i < 2; i++)
            if (io[i])
                srrs_io_put(io[i]);
        return -EAGAIN;
    }
    dt->left[q->slot] = (uint8_t)n;
    dt->st[q->slot] = 0;
    for (int i = 0; i < n; i++) {
        srrs_io_prep(io[i], dt->b[i], q->op, q->offset, q->len, q->buf, dual_target_done, q);
        srrs_bdev_submit(io[i]);
    }
    return 0;
}

int srrs_bench_bdev2(struct srrs_core *core, int reactor, const char *name, const char *name2,
                     const struct srrs_bench_opts *o, struct srrs_bench_result *out)
{
    struct srrs_reactor *r = srrs_core_reactor(core, reactor);
    if (!r)
        return srrs_err(-EINVAL, "bench: no reactor %d", reactor);
    if (!o || o->qd < 1 || o->qd > 4096)
        return srrs_err(-EINVAL, "bench: qd must be 1..4096");
    struct dual_target dt = {.r = r};
    if (!(dt.b[0] = srrs_bdev_open(core, name)))
        return -ENOENT;
    if (!(dt.b[1] = srrs_bdev_open(core, name2))) {
        srrs_bdev_close(&dt.b[0]);
        return -ENOENT;
    }
    int rc;
    if (dt.b[0]->block_size != dt.b[1]->block_size) {
        rc = srrs_err(-EINVAL, "bench: %s and %s differ in block size", name, name2);
        goto out;
    }
    dt.left = calloc(o->qd, 1);
    dt.st = calloc(o->qd, sizeof(int));
    if (!dt.left || !dt.st) {
        rc = srrs_err(-ENOMEM, "bench: out of memory");
        goto out;
    }
    struct srrs_bench_target t = {.size = SRRS_MIN(dt.b[0]->size, dt.b[1]->size),
                                  .block_size = dt.b[0]->block_size, .ctx = &dt,
                                  .submit = dual_target_submit};
    rc = srrs_bench_run(r, &t, o, out);
out:
    free(dt.left);
    free(dt.st);
    srrs_bdev_close(&dt.b[0]);
    srrs_bdev_close(&dt.b[1]);
    return rc;
}

/* ---- the platform's wake-up floor ---------------------------------------- */
/* A thread sleeping in epoll_wait, as a sleeping reactor does, and nothing
 * else: on an eventfd (what a vhost-user kick wakes), or on a TCP loopback
 * socket (what an NVMe/TCP command wakes: the stack's receive path, the
 * wake-up, a 1-byte answer back). What waking it costs after an idle spell
 * (a vCPU in a halt, cold caches) is the floor under any sleeping target's
 * first I/O (ci/bench-idle). Woken, it spins a while for the next ping, as
 * an adaptive reactor does: the pings then answered are its busy figure. */

struct srrs_wake_probe {
    pthread_t th;
    int efd, ep, cpu, mode;
    int csock, ssock; /* TCP mode: the pinger's end, the sleeper's */
    bool started;
    uint32_t spin_us;
    _Atomic uint64_t want; /* eventfd mode: the ping to answer */
    _Atomic uint64_t done; /* eventfd mode: the last one answered */
    _Atomic int stop;
};

/* the sleeper's side of one round: true if it answered a ping */
static bool probe_answer(struct srrs_wake_probe *p)
{
    if (p->mode == SRRS_WAKE_PROBE_TCP) {
        char b[64];
        ssize_t n = recv(p->ssock, b, sizeof(b), MSG_DONTWAIT);
        if (n <= 0)
            return false;
        for (ssize_t i = 0; i < n; i++)
            if (send(p->ssock, "a", 1, MSG_DONTWAIT | MSG_NOSIGNAL) != 1)
                return false;
        return true;
    }
    uint64_t w = atomic_load_explicit(&p->want, memory_order_acquire);
    if (w == atomic_load_explicit(&p->done, memory_order_relaxed))
        return false;
    atomic_store_explicit(&p->done, w, memory_order_release);
    return true;
}

static void *probe_main(void *a)
{
    struct srrs_wake_probe *p = a;
    srrs_pin_self(p->cpu);
    while (!atomic_load(&p->stop)) {
        struct epoll_event ev;
        if (epoll_wait(p->ep, &ev, 1, -1) <= 0)
            continue;
        uint64_t v;
        if (read(p->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
            break;
        uint64_t spin_end = srrs_now_ns() + (uint64_t)p->spin_us * 1000;
        do {
            if (probe_answer(p))
                spin_end = srrs_now_ns() + (uint64_t)p->spin_us * 1000;
        } while (srrs_now_ns() < spin_end && !atomic_load_explicit(&p->stop, memory_order_relaxed));
    }
    return NULL;
}

/* a connected TCP pair over loopback, Nagle off both ends */
static int probe_tcp(struct srrs_wake_probe *p)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    int one = 1, rc = 0;
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(ls, 1) < 0 ||
        getsockname(ls, (struct sockaddr *)&sa, &sl) < 0 ||
        (p->csock = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
        connect(p->csock, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        (p->ssock = accept4(ls, NULL, NULL, SOCK_CLOEXEC)) < 0)
        rc = -errno;
    if (ls >= 0)
        close(ls);
    if (!rc && (setsockopt(p->csock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0 ||
                setsockopt(p->ssock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0))
        rc = -errno;
    return rc;
}

int srrs_wake_probe_create(int cpu, uint32_t spin_us, int mode, struct srrs_wake_probe **out)
{
    if (mode != SRRS_WAKE_PROBE_EVENTFD && mode != SRRS_WAKE_PROBE_TCP)
        return srrs_err(-EINVAL, "wake probe: mode %d", mode);
    struct srrs_wake_probe *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->cpu = cpu;
    p->mode = mode;
    p->spin_us = spin_us;
    p->csock = p->ssock = -1;
    p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    p->ep = epoll_create1(EPOLL_CLOEXEC);
    int rc = 0;
    if (p->efd < 0 || p->ep < 0)
        rc = -errno;
    if (!rc && mode == SRRS_WAKE_PROBE_TCP)
        rc = probe_tcp(p);
    if (!rc) {
        struct epoll_event ev = {.events = EPOLLIN};
        if (epoll_ctl(p->ep, EPOLL_CTL_ADD, p->efd, &ev) < 0 ||
            (mode == SRRS_WAKE_PROBE_TCP && epoll_ctl(p->ep, EPOLL_CTL_ADD, p->ssock, &ev) < 0))
            rc = -errno;
    }
    if (rc)
        srrs_err(rc, "wake probe: %s", strerror(-rc));
    else if ((rc = -pthread_create(&p->th, NULL, probe_main, p)) == 0)
        p->started = true;
    if (rc) {
        srrs_wake_probe_destroy(&p);
        return rc;
    }
    *out = p;
    return 0;
}

void srrs_wake_probe_destroy(struct srrs_wake_probe **pp)
{
    struct srrs_wake_probe *p = *pp;
    if (!p)
        return;
    *pp = NULL;
    if (p->started) {
        atomic_store(&p->stop, 1);
        uint64_t one = 1;
        if (write(p->efd, &one, sizeof(one)) < 0)
            (void)0;
        pthread_join(p->th, NULL);
    }
    int fds[4] = {p->efd, p->ep, p->csock, p->ssock};
    for (int i = 0; i < 4; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(p);
}

struct ping_arg {
    struct srrs_wake_probe *p;
    uint32_t busy_n;
    uint64_t first_ns, busy_ns;
    int rc;
};

/* one ping from the pinger's side: ns from posting it to seeing it answered
 * (at most 1 s) */
static int64_t ping_once(struct srrs_wake_probe *p, bool kick)
{
    uint64_t t0 = srrs_now_ns(), t;
    uint64_t w = 0;
    if (p->mode == SRRS_WAKE_PROBE_TCP) {
        if (send(p->csock, "p", 1, MSG_NOSIGNAL) != 1)
            return -errno;
    } else {
        w = atomic_load(&p->want) + 1;
        atomic_store_explicit(&p->want, w, memory_order_release);
        uint64_t one = 1;
        if (kick && write(p->efd, &one, sizeof(one)) < 0)
            return -errno;
    }
    do {
        t = srrs_now_ns();
        if (p->mode == SRRS_WAKE_PROBE_TCP) {
            char b;
            ssize_t n = recv(p->csock, &b, 1, MSG_DONTWAIT);
            if (n == 1)
                return (int64_t)(t - t0);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
                return n ? -errno : -ECONNRESET;
        } else if (atomic_load_explicit(&p->done, memory_order_acquire) == w) {
            return (int64_t)(t - t0);
        }
    } while (t - t0 < 1000000000ull);
    return -ETIMEDOUT;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void ping_fn(void *a)
{
    struct ping_arg *x = a;
    int64_t ns = ping_once(x->p, true);
    if (ns < 0) {
        x->rc = (int)ns;
        return;
    }
    x->first_ns = (uint64_t)ns;
    uint64_t v[256];
    uint32_t n = SRRS_MIN(x->busy_n, 256u);
    for (uint32_t i = 0; i < n; i++) {
        if ((ns = ping_once(x->p, false)) < 0) {
            x->rc = (int)ns;
            return;
        }
        v[i] = (uint64_t)ns;
    }
    if (n) {
        qsort(v, n, sizeof(v[0]), cmp_u64);
        x->busy_ns = v[n / 2];
    }
}

int srrs_wake_probe_ping(struct srrs_core *core, int reactor, struct srrs_wake_probe *p,
                         uint32_t busy_n, uint64_t *first_ns, uint64_t *busy_ns)
{
    struct srrs_reactor *r = srrs_core_reactor(core, reactor);
    if (!r || !p)
        return srrs_err(-EINVAL, "wake probe: no reactor %d", reactor);
    struct ping_arg x = {.p = p, .busy_n = busy_n};
    int rc = srrs_reactor_call(r, ping_fn, &x);
    if (rc || x.rc)
        return srrs_err(rc ? rc : x.rc, "wake probe: the sleeper did not answer");
    *first_ns = x.first_ns;
    *busy_ns = x.busy_ns;
    return 0;
}
