/*
 * bdev layer: a registry of block devices (control path, one mutex), per
 * reactor channels created on first use, and the submit path that checks
 * every I/O before a module sees it. Modules: malloc and null here, file in
 * bdev_file.c; stacked modules (lvol, mirror) register through the same table.
 */
#include "srrs_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define REG_BUCKETS 4096u

struct bdev_registry {
    pthread_mutex_t lock;
    uint32_t count;
    struct srrs_bdev *buckets[REG_BUCKETS];
    /* Every bdev once, in no order (b->reg_idx its place): the passes over
     * all of them (srrs_bdev_top, 100,000 at scale) walk an array they can
     * prefetch ahead in, not hash chains whose next bdev is known only once
     * the current one is in cache. */
    struct srrs_bdev **all;
    uint32_t all_cap;
};

/* reg->lock held. -ENOMEM when the array cannot grow. */
static int all_add(struct bdev_registry *reg, struct srrs_bdev *b)
{
    if (reg->count == reg->all_cap) {
        uint32_t cap = reg->all_cap ? reg->all_cap * 2 : 256;
        struct srrs_bdev **a = realloc(reg->all, cap * sizeof(*a));
        if (!a)
            return -ENOMEM;
        reg->all = a;
        reg->all_cap = cap;
    }
    b->reg_idx = reg->count;
    reg->all[reg->count++] = b;
    return 0;
}

/* reg->lock held. The last bdev takes b's place. */
static void all_del(struct bdev_registry *reg, struct srrs_bdev *b)
{
    struct srrs_bdev *last = reg->all[--reg->count];
    reg->all[b->reg_idx] = last;
    last->reg_idx = b->reg_idx;
}


static uint8_t zero_mem[1u << 20] __attribute__((aligned(4096)));
const uint8_t *srrs_zero_buf = zero_mem;

static const char registry_key; /* its address names our slot in the core */

static void registry_destroy(struct srrs_core *core, void *val);
static void bdev_io_done(struct srrs_io *io, uint64_t now);

static struct bdev_registry *registry(struct srrs_core *core)
{
    /* Created with the core's first bdev call; the core is built on one thread.
     * The reactors know nothing of bdevs: the registry is a core slot, and
     * the accounting of completed I/O the core's I/O hook. */
    struct bdev_registry *reg = srrs_core_slot(core, &registry_key);
    if (!reg) {
        reg = calloc(1, sizeof(*reg));
        if (!reg)
            return NULL;
        pthread_mutex_init(&reg->lock, NULL);
        if (srrs_core_set_slot(core, &registry_key, reg, registry_destroy)) {
            pthread_mutex_destroy(&reg->lock);
            free(reg);
            return NULL;
        }
        srrs_core_set_io_done(core, bdev_io_done);
    }
    return reg;
}

static uint32_t name_hash(const char *s)
{
    uint32_t h = 2166136261u;
    while (*s)
        h = (h ^ (uint8_t)*s++) * 16777619u;
    return h % REG_BUCKETS;
}

static struct srrs_bdev *lookup_locked(struct bdev_registry *reg, const char *name)
{
    for (struct srrs_bdev *b = reg->buckets[name_hash(name)]; b; b = b->hnext)
        if (!strcmp(b->name, name))
            return b;
    return NULL;
}

static int check_name(const char *name)
{
    size_t n = name ? strnlen(name, SRRS_NAME_MAX) : 0;
    if (n == 0 || n >= SRRS_NAME_MAX)
        return srrs_err(-EINVAL, "bdev name must be 1..%d bytes", SRRS_NAME_MAX - 1);
    return 0;
}

static int check_geometry(const char *name, uint64_t size, uint32_t bs)
{
    if (bs != 512 && bs != 4096)
        return srrs_err(-EINVAL, "bdev %s: block_size must be 512 or 4096, got %u", name, bs);
    if (size == 0 || size % bs)
        return srrs_err(-EINVAL, "bdev %s: size %llu is not a positive multiple of block_size %u",
                        name, (unsigned long long)size, bs);
    return 0;
}

int srrs_bdev_register(struct srrs_core *core, const char *name, const struct srrs_bdev_module *mod,
                       void *ctx, uint64_t num_blocks, uint32_t block_size, struct srrs_bdev **out)
{
    int rc = check_name(name);
    if (rc)
        return rc;
    rc = check_geometry(name, num_blocks * block_size, block_size);
    if (rc)
        return rc;
    struct bdev_registry *reg = registry(core);
    int n = srrs_core_num_reactors(core);
    struct srrs_bdev *b = calloc(1, sizeof(*b));
    if (!reg || !b)
        goto nomem;
    b->stats = aligned_alloc(SRRS_CACHELINE, sizeof(struct srrs_bdev_stats) * (size_t)n);
    b->ch = calloc((size_t)n, sizeof(void *));
    if (!b->stats || !b->ch)
        goto nomem;
    memset(b->stats, 0, sizeof(struct srrs_bdev_stats) * (size_t)n);
    snprintf(b->name, sizeof(b->name), "%s", name);
    b->mod = mod;
    b->ctx = ctx;
    b->core = core;
    b->num_blocks = num_blocks;
    b->block_size = block_size;
    b->block_shift = (uint32_t)__builtin_ctz(block_size);
    b->size = num_blocks * block_size;
    pthread_mutex_lock(&reg->lock);
    if (lookup_locked(reg, name)) {
        pthread_mutex_unlock(&reg->lock);
        free(b->stats);
        free(b->ch);
        free(b);
        return srrs_err(-EEXIST, "bdev %s already exists", name);
    }
    if (all_add(reg, b)) {
        pthread_mutex_unlock(&reg->lock);
        goto nomem;
    }
    uint32_t h = name_hash(name);
    b->hnext = reg->buckets[h];
    reg->buckets[h] = b;
    pthread_mutex_unlock(&reg->lock);
    if (out)
        *out = b;
    return 0;
nomem:
    if (b) {
        free(b->stats);
        free(b->ch);
        free(b);
    }
    return srrs_err(-ENOMEM, "bdev %s: out of memory", name);
}

struct srrs_bdev *srrs_bdev_open(struct srrs_core *core, const char *name)
{
    struct bdev_registry *reg = registry(core);
    if (!reg || !name)
        return NULL;
    pthread_mutex_lock(&reg->lock);
    struct srrs_bdev *b = lookup_locked(reg, name);
    if (b)
        atomic_fetch_add(&b->open_count, 1);
    pthread_mutex_unlock(&reg->lock);
    if (!b)
        srrs_err(-ENOENT, "bdev %s does not exist", name);
    return b;
}

int srrs_bdev_open_export(struct srrs_core *core, const char *name, struct srrs_bdev **out)
{
    struct srrs_bdev *b = srrs_bdev_open(core, name);
    *out = NULL;
    if (!b)
        return -ENOENT;
    if (b->owner[0]) {
        /* Writes to it would bypass the bdev stacked on it (a pair's mirror:
         * the replicas would silently differ). */
        int rc = srrs_err(-EBUSY, "bdev %s is internal to %s (a pair replica): export %s instead",
                          name, b->owner, b->owner);
        srrs_bdev_close(&b);
        return rc;
    }
    *out = b;
    return 0;
}

int srrs_bdev_rename(struct srrs_core *core, struct srrs_bdev *b, const char *new_name)
{
    struct bdev_registry *reg = registry(core);
    int rc = check_name(new_name);
    if (rc)
        return rc;
    if (!reg)
        return srrs_err(-ENOENT, "no bdev registry");
    pthread_mutex_lock(&reg->lock);
    if (lookup_locked(reg, new_name)) {
        pthread_mutex_unlock(&reg->lock);
        return srrs_err(-EEXIST, "bdev %s already exists", new_name);
    }
    struct srrs_bdev **pp = &reg->buckets[name_hash(b->name)];
    while (*pp && *pp != b)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = b->hnext;
    snprintf(b->name, sizeof(b->name), "%s", new_name);
    uint32_t h = name_hash(new_name);
    b->hnext = reg->buckets[h];
    reg->buckets[h] = b;
    pthread_mutex_unlock(&reg->lock);
    return 0;
}

void srrs_bdev_close(struct srrs_bdev **pb)
{
    if (pb && *pb) {
        atomic_fetch_sub(&(*pb)->open_count, 1);
        *pb = NULL;
    }
}

struct ch_destroy {
    struct srrs_bdev *b;
    int idx;
};

static void ch_destroy_fn(void *a)
{
    struct ch_destroy *c = a;
    void *ch = c->b->ch[c->idx];
    c->b->ch[c->idx] = NULL;
    if (ch && c->b->mod->channel_destroy)
        c->b->mod->channel_destroy(c->b, ch);
}

static void bdev_free(struct srrs_bdev *b)
{
    int n = srrs_core_num_reactors(b->core);
    for (int i = 0; i < n; i++) {
        if (b->ch[i]) {
            struct ch_destroy c = {b, i};
            srrs_reactor_call(srrs_core_reactor(b->core, i), ch_destroy_fn, &c);
        }
    }
    if (b->mod->destroy)
        b->mod->destroy(b);
    for (int i = 0; i < n; i++)
        free(atomic_load(&b->stats[i].hist));
    free(b->stats);
    free(b->ch);
    free(b);
}

int srrs_bdev_delete(struct srrs_core *core, const char *name)
{
    struct bdev_registry *reg = registry(core);
    if (!reg || !name)
        return srrs_err(-ENOENT, "bdev %s does not exist", name ? name : "(null)");
    pthread_mutex_lock(&reg->lock);
    struct srrs_bdev **pp = &reg->buckets[name_hash(name)];
    while (*pp && strcmp((*pp)->name, name))
        pp = &(*pp)->hnext;
    struct srrs_bdev *b = *pp;
    if (!b) {
        pthread_mutex_unlock(&reg->lock);
        return srrs_err(-ENOENT, "bdev %s does not exist", name);
    }
    if (atomic_load(&b->open_count)) {
        unsigned n = atomic_load(&b->open_count);
        pthread_mutex_unlock(&reg->lock);
        return srrs_err(-EBUSY, "bdev %s is in use by %u export(s) or job(s)", name, n);
    }
    *pp = b->hnext;
    all_del(reg, b);
    pthread_mutex_unlock(&reg->lock);
    bdev_free(b);
    return 0;
}

static void registry_destroy(struct srrs_core *core, void *val)
{
    struct bdev_registry *reg = val;
    (void)core;
    /* Stacked bdevs first: repeat while something is still open by another. */
    for (int pass = 0; pass < 64 && reg->count; pass++) {
        for (uint32_t h = 0; h < REG_BUCKETS; h++) {
            struct srrs_bdev **pp = &reg->buckets[h];
            while (*pp) {
                struct srrs_bdev *b = *pp;
                if (atomic_load(&b->open_count) && pass < 63) {
                    pp = &b->hnext;
                    continue;
                }
                *pp = b->hnext;
                all_del(reg, b);
                bdev_free(b);
            }
        }
    }
    pthread_mutex_destroy(&reg->lock);
    free(reg->all);
    free(reg);
}

static inline uint64_t stat_get(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }

/* The counters only (no names): what ranking and totals need. */
static void fill_counters(struct srrs_bdev *b, struct srrs_bdev_info *o)
{
    o->num_blocks = b->num_blocks;
    o->block_size = b->block_size;
    o->open_count = atomic_load(&b->open_count);
    int n = srrs_core_num_reactors(b->core);
    for (int i = 0; i < n; i++) {
        const struct srrs_bdev_stats *s = &b->stats[i];
        o->reads += stat_get(&s->reads);
        o->writes += stat_get(&s->writes);
        o->bytes_read += stat_get(&s->bytes_read);
        o->bytes_written += stat_get(&s->bytes_written);
        o->flushes += stat_get(&s->flushes);
        o->unmaps += stat_get(&s->unmaps);
        o->write_zeroes += stat_get(&s->write_zeroes);
        o->errors += stat_get(&s->errors);
        o->direct_ios += stat_get(&s->direct_ios);
        o->buffered_ios += stat_get(&s->buffered_ios);
    }
}

uint64_t srrs_bdev_ios(struct srrs_bdev *b)
{
    struct srrs_bdev_info c = {0};
    fill_counters(b, &c);
    return c.reads + c.writes + c.flushes + c.unmaps + c.write_zeroes + c.errors;
}

static void fill_info(struct srrs_bdev *b, struct srrs_bdev_info *o)
{
    memset(o, 0, sizeof(*o));
    snprintf(o->name, sizeof(o->name), "%s", b->name);
    snprintf(o->module, sizeof(o->module), "%s", b->mod->name);
    snprintf(o->path, sizeof(o->path), "%s", b->path);
    snprintf(o->engine, sizeof(o->engine), "%s", b->engine);
    fill_counters(b, o);
}

/* Racy by design: each reactor goes on writing its channel's counters while a
 * control thread sums them here (see struct srrs_bdev_stats). */
static void fill_latency(struct srrs_bdev *b, struct srrs_bdev_latency *o)
{
    _Static_assert(sizeof(o->buckets[0]) == SRRS_LAT_BUCKETS * sizeof(uint64_t),
                   "srrs.h struct srrs_bdev_latency and SRRS_LAT_BUCKETS disagree");
    _Static_assert(SRRS_ARRAY_SIZE(o->buckets) == SRRS_LAT_NOPS, "latency classes");
    memset(o, 0, sizeof(*o));
    int n = srrs_core_num_reactors(b->core);
    for (int i = 0; i < n; i++) {
        const struct srrs_bdev_stats *s = &b->stats[i];
        const struct srrs_lat_hist *h = atomic_load_explicit(&s->hist, memory_order_acquire);
        for (int k = 0; k < SRRS_LAT_NOPS; k++) {
            o->sum_ns[k] += stat_get(&s->lat_sum_ns[k]);
            for (uint32_t j = 0; h && j < SRRS_LAT_BUCKETS; j++)
                o->buckets[k][j] += stat_get(&h->n[k][j]);
        }
    }
}

int srrs_bdev_list(struct srrs_core *core, struct srrs_bdev_info *out, int max)
{
    struct bdev_registry *reg = registry(core);
    if (!reg)
        return srrs_err(-ENOMEM, "out of memory");
    int n = 0;
    pthread_mutex_lock(&reg->lock);
    for (uint32_t h = 0; h < REG_BUCKETS; h++)
        for (struct srrs_bdev *b = reg->buckets[h]; b; b = b->hnext, n++)
            if (n < max)
                fill_info(b, &out[n]);
    pthread_mutex_unlock(&reg->lock);
    return n;
}

static uint64_t completed(const struct srrs_bdev_info *o)
{
    return o->reads + o->writes + o->flushes + o->unmaps + o->write_zeroes;
}

/* a ranks before b: more completed I/Os, then the smaller name */
static bool busier(uint64_t na, const char *a, uint64_t nb, const char *b)
{
    return na != nb ? na > nb : strcmp(a, b) < 0;
}

int srrs_bdev_top(struct srrs_core *core, struct srrs_bdev_info *top, int max,
                  struct srrs_bdev_info *tot)
{
    struct bdev_registry *reg = registry(core);
    if (!reg || !tot || max < 0 || (max && !top))
        return srrs_err(-EINVAL, "srrs_bdev_top: bad arguments");
    memset(tot, 0, sizeof(*tot));
    int n = 0, kept = 0;
    pthread_mutex_lock(&reg->lock);
    int nr = 0;
    struct srrs_bdev *const *all = reg->all;
    const uint32_t count = reg->count;
    if (count)
        nr = srrs_core_num_reactors(all[0]->core);
    for (uint32_t k = 0; k < count; k++, n++) {
        /* Memory-bound at scale (a few cache lines per bdev): the bdev 16
         * ahead is fetched, and the counters of the one 8 ahead, whose
         * stats pointer that earlier fetch brought in. */
        if (k + 16 < count) {
            __builtin_prefetch(all[k + 16]->name);
            __builtin_prefetch(&all[k + 16]->num_blocks);
            __builtin_prefetch(&all[k + 16]->stats);
        }
        if (k + 8 < count)
            for (int i = 0; i < nr; i++) {
                __builtin_prefetch(&all[k + 8]->stats[i].reads);
                __builtin_prefetch(&all[k + 8]->stats[i].buffered_ios);
            }
        struct srrs_bdev *b = all[k];
        struct srrs_bdev_info c = {0};
        fill_counters(b, &c);
        tot->num_blocks += c.num_blocks;
        tot->open_count += c.open_count;
        tot->reads += c.reads;
        tot->writes += c.writes;
        tot->bytes_read += c.bytes_read;
        tot->bytes_written += c.bytes_written;
        tot->flushes += c.flushes;
        tot->unmaps += c.unmaps;
        tot->write_zeroes += c.write_zeroes;
        tot->errors += c.errors;
        tot->direct_ios += c.direct_ios;
        tot->buffered_ios += c.buffered_ios;
        /* insertion into the sorted top: max is small (tens), the pass is O(n) */
        uint64_t ops = completed(&c);
        int i = kept;
        while (i > 0 && busier(ops, b->name, completed(&top[i - 1]), top[i - 1].name))
            i--;
        if (i >= max)
            continue;
        if (kept < max)
            kept++;
        memmove(&top[i + 1], &top[i], (size_t)(kept - 1 - i) * sizeof(*top));
        fill_info(b, &top[i]);
    }
    pthread_mutex_unlock(&reg->lock);
    return n;
}

int srrs_bdev_get_info(struct srrs_core *core, const char *name, struct srrs_bdev_info *out)
{
    struct bdev_registry *reg = registry(core);
    if (!reg || !name)
        return srrs_err(-ENOENT, "bdev does not exist");
    pthread_mutex_lock(&reg->lock);
    struct srrs_bdev *b = lookup_locked(reg, name);
    if (b)
        fill_info(b, out);
    pthread_mutex_unlock(&reg->lock);
    return b ? 0 : srrs_err(-ENOENT, "bdev %s does not exist", name);
}

int srrs_bdev_get_latency(struct srrs_core *core, const char *name, struct srrs_bdev_latency *out)
{
    struct bdev_registry *reg = registry(core);
    if (!reg || !name)
        return srrs_err(-ENOENT, "bdev does not exist");
    /* The registry lock keeps the bdev (and its histograms) from being freed. */
    pthread_mutex_lock(&reg->lock);
    struct srrs_bdev *b = lookup_locked(reg, name);
    if (b)
        fill_latency(b, out);
    pthread_mutex_unlock(&reg->lock);
    return b ? 0 : srrs_err(-ENOENT, "bdev %s does not exist", name);
}

/* ---- submit path --------------------------------------------------------- */

static inline bool io_has_range(int op) { return op != SRRS_IO_FLUSH; }

void srrs_bdev_release_held(struct srrs_bdev *b)
{
    if (b && b->mod->release_held)
        b->mod->release_held(b);
}

void srrs_bdev_submit(struct srrs_io *io)
{
    struct srrs_bdev *b = io->bdev;
    struct srrs_reactor *r = io->r;
    io->submit_ticks = srrs_ticks();
    if (srrs_unlikely(io->op >= SRRS_IO_NOPS)) {
        srrs_io_complete(io, -EINVAL);
        return;
    }
    if (io_has_range(io->op)) {
        uint64_t mask = b->block_size - 1;
        if (srrs_unlikely(((io->offset | io->len) & mask) || io->len == 0)) {
            srrs_io_complete(io, -EINVAL);
            return;
        }
        if (srrs_unlikely(io->offset >= b->size || io->len > b->size - io->offset)) {
            srrs_io_complete(io, -ERANGE);
            return;
        }
    }
    int idx = srrs_reactor_idx(r);
    void *ch = b->ch[idx];
    if (srrs_unlikely(!ch && b->mod->channel_create)) {
        ch = b->mod->channel_create(b, r);
        if (!ch) {
            srrs_io_complete(io, -ENOMEM);
            return;
        }
        b->ch[idx] = ch;
    }
    b->mod->submit(b, ch, io);
}

/* Reactor thread: this reactor's histograms of the bdev, allocated at its
 * first completion (once per bdev and reactor, like a channel). */
__attribute__((noinline, cold)) static struct srrs_lat_hist *lat_hist_create(struct srrs_bdev_stats *s)
{
    struct srrs_lat_hist *h = calloc(1, sizeof(*h));
    if (h)
        atomic_store_explicit(&s->hist, h, memory_order_release);
    return h;
}

static inline void lat_record(struct srrs_bdev_stats *s, int cls, uint64_t ns, uint64_t count)
{
    srrs_stat_add(&s->lat_sum_ns[cls], ns * count);
    struct srrs_lat_hist *h = atomic_load_explicit(&s->hist, memory_order_relaxed);
    if (srrs_unlikely(!h) && !(h = lat_hist_create(s)))
        return;
    srrs_stat_add(&h->n[cls][srrs_lat_bucket(ns / 1000)], count);
}

/* Runs at completion, on the reactor, before the callback. */
static inline __attribute__((always_inline)) void srrs_bdev_account_at(struct srrs_io *io,
                                                                      uint64_t now)
{
    struct srrs_bdev_stats *s = &io->bdev->stats[srrs_reactor_idx(io->r)];
    if (srrs_unlikely(io->status)) {
        srrs_stat_add(&s->errors, 1);
        return;
    }
    int cls = SRRS_LAT_OTHER;
    switch (io->op) {
    case SRRS_IO_READ:
        srrs_stat_add(&s->reads, 1);
        srrs_stat_add(&s->bytes_read, io->len);
        cls = SRRS_LAT_READ;
        break;
    case SRRS_IO_WRITE:
        srrs_stat_add(&s->writes, 1);
        srrs_stat_add(&s->bytes_written, io->len);
        cls = SRRS_LAT_WRITE;
        break;
    case SRRS_IO_FLUSH:
        srrs_stat_add(&s->flushes, 1);
        break;
    case SRRS_IO_UNMAP:
        srrs_stat_add(&s->unmaps, 1);
        break;
    case SRRS_IO_WRITE_ZEROES:
        srrs_stat_add(&s->write_zeroes, 1);
        break;
    }
    /* One thread's TSC never runs backwards; a clamp costs nothing should it. */
    uint64_t dt = now > io->submit_ticks ? now - io->submit_ticks : 0;
    lat_record(s, cls, srrs_ticks_to_ns_fast(dt), 1);
}

void srrs_bdev_account(struct srrs_io *io)
{
    srrs_bdev_account_at(io, srrs_ticks());
}

/* The core's I/O hook (srrs_core_set_io_done): every completed I/O, on its
 * reactor, before the callback; the accounting inline, as when the reactor
 * called it directly. */
static void bdev_io_done(struct srrs_io *io, uint64_t now)
{
    if (io->bdev)
        srrs_bdev_account_at(io, now);
}

void srrs_bdev_count_path(struct srrs_io *io, bool direct);
void srrs_bdev_count_path(struct srrs_io *io, bool direct)
{
    struct srrs_bdev_stats *s = &io->bdev->stats[srrs_reactor_idx(io->r)];
    srrs_stat_add(direct ? &s->direct_ios : &s->buffered_ios, 1);
}

/* ---- malloc and null ----------------------------------------------------- */

struct malloc_disk {
    uint8_t *mem;
    size_t len;
    bool borrowed; /* srrs_bdev_create_mem: the caller unmaps it */
};

static void copy_iov_to(uint8_t *dst, const struct srrs_io *io)
{
    for (int i = 0; i < io->iovcnt; i++) {
        memcpy(dst, io->iov[i].iov_base, io->iov[i].iov_len);
        dst += io->iov[i].iov_len;
    }
}

static void copy_iov_from(const uint8_t *src, const struct srrs_io *io)
{
    for (int i = 0; i < io->iovcnt; i++) {
        memcpy(io->iov[i].iov_base, src, io->iov[i].iov_len);
        src += io->iov[i].iov_len;
    }
}

static size_t iov_total(const struct srrs_io *io)
{
    size_t n = 0;
    for (int i = 0; i < io->iovcnt; i++)
        n += io->iov[i].iov_len;
    return n;
}

static void malloc_submit(struct srrs_bdev *b, void *ch, struct srrs_io *io)
{
    (void)ch;
    struct malloc_disk *d = b->ctx;
    uint8_t *p = d->mem + io->offset;
    switch (io->op) {
    case SRRS_IO_READ:
    case SRRS_IO_WRITE:
        if (srrs_unlikely(iov_total(io) != io->len)) {
            srrs_io_complete(io, -EINVAL);
            return;
        }
        if (io->op == SRRS_IO_READ)
            copy_iov_from(p, io);
        else
            copy_iov_to(p, io);
        break;
    case SRRS_IO_WRITE_ZEROES:
    case SRRS_IO_UNMAP:
        memset(p, 0, io->len);
        break;
    default:
        break;
    }
    srrs_io_complete(io, 0);
}

static void malloc_destroy(struct srrs_bdev *b)
{
    struct malloc_disk *d = b->ctx;
    if (!d->borrowed)
        srrs_mem_free(d->mem, d->len);
    free(d);
}

static const struct srrs_bdev_module malloc_module = {
    .name = "malloc",
    .submit = malloc_submit,
    .destroy = malloc_destroy,
};

int srrs_bdev_create_malloc(struct srrs_core *core, const char *name, uint64_t size, uint32_t bs)
{
    int rc = check_name(name);
    if (rc || (rc = check_geometry(name, size, bs)))
        return rc;
    struct malloc_disk *d = calloc(1, sizeof(*d));
    if (!d)
        return srrs_err(-ENOMEM, "bdev %s: out of memory", name);
    d->len = size;
    d->mem = srrs_mem_alloc_populated(size, NULL);
    if (!d->mem) {
        free(d);
        return srrs_err(-ENOMEM, "bdev %s: cannot map %llu bytes of RAM", name,
                        (unsigned long long)size);
    }
    rc = srrs_bdev_register(core, name, &malloc_module, d, size / bs, bs, NULL);
    if (rc) {
        srrs_mem_free(d->mem, d->len);
        free(d);
    }
    return rc;
}

int srrs_bdev_create_mem(struct srrs_core *core, const char *name, void *mem, uint64_t size,
                         uint32_t bs)
{
    int rc = check_name(name);
    if (rc || (rc = check_geometry(name, size, bs)))
        return rc;
    struct malloc_disk *d = calloc(1, sizeof(*d));
    if (!d)
        return srrs_err(-ENOMEM, "bdev %s: out of memory", name);
    d->mem = mem;
    d->len = size;
    d->borrowed = true;
    rc = srrs_bdev_register(core, name, &malloc_module, d, size / bs, bs, NULL);
    if (rc)
        free(d);
    return rc;
}

static void null_submit(struct srrs_bdev *b, void *ch, struct srrs_io *io)
{
    (void)b;
    (void)ch;
    srrs_io_complete(io, 0);
}

static const struct srrs_bdev_module null_module = {
    .name = "null",
    .submit = null_submit,
};

int srrs_bdev_create_null(struct srrs_core *core, const char *name, uint64_t size, uint32_t bs)
{
    int rc = check_name(name);
    if (rc || (rc = check_geometry(name, size, bs)))
        return rc;
    return srrs_bdev_register(core, name, &null_module, NULL, size / bs, bs, NULL);
}

/* ---- synchronous I/O for tests ------------------------------------------- */

struct test_io {
    struct srrs_bdev *b;
    int op;
    uint8_t flags;
    uint64_t offset, len;
    void *user;
    void *buf;
    int status;
    bool done;
};

static void test_io_done(struct srrs_io *io, void *arg)
{
    struct test_io *t = arg;
    t->status = io->status;
    if (t->op == SRRS_IO_READ && !io->status)
        memcpy(t->user, t->buf, t->len);
    if (t->buf)
        srrs_buf_put(io->r, t->buf, t->len);
    srrs_io_put(io);
    t->done = true;
}

static void test_io_start(void *a)
{
    struct test_io *t = a;
    struct srrs_reactor *r = srrs_reactor_self();
    struct srrs_io *io = srrs_io_get(r);
    if (!io) {
        t->status = -ENOMEM;
        t->done = true;
        return;
    }
    t->buf = NULL;
    if (t->op == SRRS_IO_READ || t->op == SRRS_IO_WRITE) {
        t->buf = srrs_buf_get(r, t->len);
        if (!t->buf) {
            srrs_io_put(io);
            t->status = -ENOMEM;
            t->done = true;
            return;
        }
        if (t->op == SRRS_IO_WRITE)
            memcpy(t->buf, t->user, t->len);
    }
    srrs_io_prep(io, t->b, t->op, t->offset, t->len, t->buf, test_io_done, t);
    io->flags = t->flags;
    srrs_bdev_submit(io);
}

static void test_io_poll(void *a)
{
    (void)a;
}

#include <sched.h>

int srrs_test_bdev_io(struct srrs_core *core, int reactor, const char *name, int op, uint64_t offset,
                      uint64_t len, void *buf)
{
    uint8_t flags = (uint8_t)(op >> 8);
    op &= 0xff;
    struct srrs_reactor *r = srrs_core_reactor(core, reactor);
    if (!r)
        return srrs_err(-EINVAL, "no reactor %d", reactor);
    if (len > SRRS_BUF_MAX && (op == SRRS_IO_READ || op == SRRS_IO_WRITE))
        return srrs_err(-EINVAL, "test I/O larger than 1 MiB");
    struct srrs_bdev *b = srrs_bdev_open(core, name);
    if (!b)
        return -ENOENT;
    struct test_io t = {.b = b, .op = op, .flags = flags, .offset = offset, .len = len, .user = buf};
    srrs_reactor_call(r, test_io_start, &t);
    while (!__atomic_load_n(&t.done, __ATOMIC_ACQUIRE)) {
        srrs_reactor_call(r, test_io_poll, NULL); /* completes run on the reactor */
        sched_yield();
    }
    srrs_bdev_close(&b);
    return t.status;
}

int srrs_test_bdev_release_held(struct srrs_core *core, const char *name)
{
    struct srrs_bdev *b = srrs_bdev_open(core, name);
    if (!b)
        return -ENOENT;
    srrs_bdev_release_held(b);
    srrs_bdev_close(&b);
    return 0;
}

/* ---- latency test hooks ---------------------------------------------------- */

uint32_t srrs_test_lat_bucket(uint64_t ns) { return srrs_lat_bucket(ns / 1000); }

struct test_lat {
    struct srrs_bdev *b;
    int idx, cls;
    uint64_t ns, count;
};

static void test_lat_fn(void *a)
{
    struct test_lat *t = a;
    lat_record(&t->b->stats[t->idx], t->cls, t->ns, t->count);
}

int srrs_test_lat_record(struct srrs_core *core, int reactor, const char *name, int cls,
                         uint64_t ns, uint64_t count)
{
    struct srrs_reactor *r = srrs_core_reactor(core, reactor);
    if (!r)
        return srrs_err(-EINVAL, "no reactor %d", reactor);
    if (cls < 0 || cls >= SRRS_LAT_NOPS)
        return srrs_err(-EINVAL, "latency class must be 0..%d", SRRS_LAT_NOPS - 1);
    struct srrs_bdev *b = srrs_bdev_open(core, name);
    if (!b)
        return -ENOENT;
    struct test_lat t = {b, reactor, cls, ns, count};
    int rc = srrs_reactor_call(r, test_lat_fn, &t);
    srrs_bdev_close(&b);
    return rc;
}
