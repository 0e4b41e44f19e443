/*
 * Storage pool and thin volumes (DESIGN §4): the `lvol` bdev module.
 *
 * Decisions (see also ffi/lvol.h):
 *
 * - A pool is up to 16 fragments, each a bdev the pool opens: a file bdev for
 *   files, partitions and block devices ("persistent"), a malloc bdev for RAM.
 *   Each fragment is cut into clusters (default 1 MiB) after its metadata area.
 *
 * - On-fragment layout (persistent fragments; RAM ones only when the pool has
 *   no persistent fragment, since RAM does not survive a restart):
 *     [0, 4K)  superblock copy A   [4K, 8K) superblock copy B
 *     [8K, 8K + md_slots * 8K)      metadata slots, each = page copy A + copy B
 *     [data_off, ...)               clusters, data_off aligned to the cluster size
 *   The superblock holds the pool UUID and name, the cluster size, this
 *   fragment's index and the whole fragment table; every persistent fragment
 *   carries it, with a sequence number: opening picks the newest valid copy
 *   on any fragment.
 *
 * - A metadata page (4 KiB, CRC32C, pool UUID, volume UUID, page index, seq)
 *   holds 480 cluster-map entries of one volume; page 0 also holds the volume
 *   record (name, size, tenant, thin). Pages live in any free slot; opening
 *   scans every slot, takes each slot's newest valid copy, and for each
 *   (volume, page) identity the highest seq. A FREE page is a tombstone
 *   (volume deleted / page moved). Map pages whose volume has no record are
 *   orphans (UUIDs never repeat), so deleting a volume is one page write.
 *
 * - Commit of a page: write copy A, (flush if sync_metadata), write copy B.
 *   A crash at any instant leaves one copy with the last committed content,
 *   so every committed state is readable; a copy that fails its CRC at open
 *   is reported and rewritten from the other; both bad -> the pool refuses to
 *   open, naming the fragment and slot.
 *
 * - One reactor per pool ("P") owns allocation: free-cluster bitmaps, the md
 *   slots, tenants, and every metadata write. Volume I/O runs on whatever
 *   reactor submits it: the cluster map is a two-level array read lock-free
 *   (64-bit entries, acquire loads; only P stores). Writes that find the
 *   cluster unallocated (or pending / locked) go to P as a message; P zeroes
 *   the new cluster, sets the map entry PENDING, commits the page (entries
 *   allocated meanwhile in the same page share one commit) and only then
 *   replies, so the write runs after its allocation is durable. A crash
 *   before the data write leaves a zeroed cluster ("old"), never another
 *   volume's data. A second write to a pending cluster waits on the same
 *   allocation record: no double allocation.
 *
 * - Reads of unallocated or pending clusters return zeroes. I/O crossing
 *   cluster boundaries is split into child srrs_io on the fragments' bdevs.
 *
 * - Quotas: a tenant counts its volumes' clusters; an allocation past the
 *   quota or with no free cluster fails that write with -ENOSPC and posts
 *   SRRS_EV_QUOTA / SRRS_EV_POOL_FULL. Nothing else is touched.
 *
 * - Fresh clusters (never allocated since this process created the file or
 *   the RAM) are known to be zero and are not zeroed again.
 *
 * - Group commit: with sync_metadata, one flush of a fragment covers every
 *   page whose copy A completed before the flush was issued (first writes at
 *   QD 32 and bulk volume creation share flushes).
 *
 * - Barriers: each reactor counts its in-flight child I/O by epoch parity;
 *   a barrier flips every reactor's epoch and waits for the old parity to
 *   drain. A cluster freed by unmap (whole clusters only; partial unmaps write
 *   zeroes) or by a drain goes back to the allocator only after one, so a
 *   late write never lands in a cluster another volume owns.
 *
 * - Drain (see the drain section): lock, barrier, copy, commit, unlock,
 *   barrier, free; then the fragment's metadata pages move. Removal zeroes
 *   the fragment's superblock; its table index is reused by a later add.
 *
 * - Limits: 16 fragments, volume block size 4096, volumes only grow, a
 *   volume cannot be deleted while a drain runs, RAM clusters of a pool with
 *   persistent fragments are lost at restart (reported per volume).
 */
#include "srrs_int.h"
#include "lvol.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define LV_MAX_FRAGS 16
#define MD_PAGE 4096u
#define MD_SLOT 8192u
#define MD_AREA_OFF 8192u
#define MD_ENTRY_OFF 256u
#define MD_ENTRIES ((MD_PAGE - MD_ENTRY_OFF) / 8u) /* 480 */
#define SB_MAGIC 0x42535253u                       /* "SRSB" */
#define MD_MAGIC 0x444d5253u                       /* "SRMD" */
#define LV_VERSION 1u
#define LV_BS 4096u

enum { PK_VOL = 1, PK_MAP = 2, PK_FREE = 3 };
enum { FS_EMPTY = 0, FS_ACTIVE = 1, FS_DRAINING = 2, FS_REMOVED = 3 };

/* Map entries: bits 0..47 cluster on the fragment, 48..55 fragment index + 1.
 * In memory only: PENDING (allocated, not yet committed), LOCKED (moving). */
#define E_CL_MASK ((1ull << 48) - 1)
#define E_LOC_MASK ((1ull << 56) - 1)
#define E_PENDING (1ull << 63)
#define E_LOCKED (1ull << 62)
static inline bool e_alloc(uint64_t e) { return (e >> 48 & 0xff) != 0; }
static inline uint32_t e_frag(uint64_t e) { return (uint32_t)((e >> 48) & 0xff) - 1; }
static inline uint64_t e_cl(uint64_t e) { return e & E_CL_MASK; }
static inline uint64_t e_make(uint32_t f, uint64_t cl) { return (uint64_t)(f + 1) << 48 | cl; }

/* ---- on-disk structures ------------------------------------------------ */

struct sb_frag {
    uint8_t uuid[16];
    uint32_t ram;
    uint32_t state;
    uint64_t size;
    uint64_t nclusters;
    uint64_t data_off;
    uint64_t md_slots;
    uint32_t weight;
    uint32_t pad;
    char path[96];
};

struct sb {
    uint32_t magic;
    uint32_t crc;
    uint64_t seq;
    uint32_t version;
    uint32_t cluster_size;
    uint32_t frag_idx;
    uint32_t nfrags;
    uint32_t placement;
    uint32_t flags;
    uint8_t pool_uuid[16];
    char name[64];
    uint8_t pad[8];
    struct sb_frag frags[LV_MAX_FRAGS];
    uint8_t tail[MD_PAGE - 128 - LV_MAX_FRAGS * 160];
};
_Static_assert(sizeof(struct sb_frag) == 160, "sb_frag layout");
_Static_assert(sizeof(struct sb) == MD_PAGE, "superblock is one page");

struct md_hdr {
    uint32_t magic;
    uint32_t crc;
    uint64_t seq;
    uint8_t pool_uuid[16];
    uint8_t vol_uuid[16];
    uint32_t kind;
    uint32_t page_idx;
    uint32_t version;
    uint32_t pad;
};

struct md_vol {
    char name[64];
    char tenant[64];
    uint64_t size;
    uint32_t thin;
    uint32_t block_size;
    uint64_t ctime;
};
_Static_assert(sizeof(struct md_hdr) + sizeof(struct md_vol) <= MD_ENTRY_OFF, "md header too big");

/* ---- in-memory objects --------------------------------------------------- */

struct lv_wait {
    struct lv_wait *next;
    void (*fn)(struct lv_wait *w, int status);
};

struct lv_vol;

struct lv_page {
    struct srrs_pool *pool;
    struct lv_vol *vol;     /* NULL for a tombstone written to a slot being vacated */
    uint32_t idx;
    uint32_t frag;
    uint64_t slot;
    bool busy, want, tomb;
    uint8_t step;
    int status;
    struct lv_wait *cur, *next;
    void *buf;
    struct srrs_io *io;
    struct lv_page *fl_link; /* waiting for / covered by a fragment flush */
};

struct lv_frag {
    struct srrs_pool *pool;
    bool flushing;
    struct lv_page *fl_cur, *fl_next;
    int state;
    bool ram;
    bool fresh;            /* created by this process: clusters >= zero_hwm are zero */
    bool hidden;           /* being added: not yet in the durable table */
    struct srrs_bdev *bdev;
    char bdev_name[SRRS_NAME_MAX];
    char path[256];
    uint8_t uuid[16];
    uint64_t size, nclusters, data_off, md_slots;
    uint32_t weight;
    uint64_t *used;        /* cluster bitmap (P) */
    uint64_t nused, hint, zero_hwm;
    uint64_t *slot_used;   /* md slot bitmap (P) */
    uint64_t slots_used, slot_hint;
    uint64_t drain_moved, drain_total;
    int drain_error;
};

struct lv_tenant {
    struct lv_tenant *next;
    char name[SRRS_NAME_MAX];
    uint64_t quota_cl;     /* 0: none */
    uint64_t used;
    uint64_t failures;
    uint64_t last_event_ns;
    uint32_t nvols;
};

struct lv_vol {
    struct srrs_pool *pool;
    struct lv_vol *hnext;
    struct srrs_bdev *bdev;
    char name[SRRS_NAME_MAX];
    char tenant_name[SRRS_NAME_MAX];
    uint8_t uuid[16];
    uint64_t size, nclusters;
    uint64_t ctime;
    bool thin, deleted;
    struct lv_tenant *tenant;
    uint64_t **_Atomic top; /* nchunks chunk pointers, each MD_ENTRIES entries */
    uint32_t nchunks;
    struct lv_page **pages; /* per chunk (P) */
    void **old_tops;        /* replaced by resize; freed with the volume */
    uint32_t nold;
    uint64_t allocated;     /* clusters (P) */
    uint64_t lost;
};

struct lv_alloc {
    struct lv_wait w;
    struct lv_alloc *hnext;
    struct lv_vol *vol;
    uint64_t c;
    uint64_t entry;
    struct srrs_io *wq_head, *wq_tail; /* children waiting for this cluster */
    struct lv_wait *extra;             /* control-plane waiters (thick create) */
};

#define AHASH 1024u
#define VHASH 8192u

struct srrs_pool {
    struct srrs_core *core;
    struct srrs_reactor *pr;
    char name[SRRS_NAME_MAX];
    uint8_t uuid[16];
    uint32_t cs, cs_shift;
    int placement;
    bool sync_md;
    uint64_t seq;                 /* last sequence number used (P after open) */
    uint64_t sb_seq;
    struct lv_frag frags[LV_MAX_FRAGS];
    struct lv_vol *vhash[VHASH];
    uint32_t nvols;
    struct lv_tenant *tenants;
    struct lv_alloc *ahash[AHASH];
    uint64_t alloc_failures, md_writes;
    uint64_t full_event_ns;
    int created, repaired;
    pthread_mutex_t lock;         /* control thread side: volume table, messages */
    char msgs[16384];
    size_t msgs_len;
    /* I/O in flight per reactor, by epoch parity: a barrier waits for the old parity to drain. */
    struct lv_rstate *rs;
    int nreactors;
    /* drain (P) */
    struct lv_drain *drain;
    struct srrs_poller *drain_poller;
    /* barriers (P): one at a time, covering every request queued before it started */
    struct srrs_poller *maint_poller;
    struct lv_wait *bar_cur, *bar_next;
    bool bar_running;
    int bar_acks;
    uint8_t bar_oldpar[SRRS_MAX_REACTORS];
    uint64_t unmapped;
};

struct lv_rstate {
    uint64_t epoch;
    uint64_t cnt[2];
} __attribute__((aligned(SRRS_CACHELINE)));

#define IO_NOTAG 0xffu

/* Per-I/O state. Parent: the I/O submitted to the volume. Child: one cluster
 * piece (its driver_ctx is ours only until it is submitted to a fragment). */
struct lv_parent {
    uint32_t pending;
    int32_t status;
    void *iovbuf;
    uint32_t iovbuf_len;
};
struct lv_child {
    struct lv_vol *vol;
    uint64_t c;
    uint64_t coff;
    bool noalloc;
};
_Static_assert(sizeof(struct lv_parent) <= SRRS_IO_DRIVER_CTX, "lv_parent too big");
_Static_assert(sizeof(struct lv_child) <= SRRS_IO_DRIVER_CTX, "lv_child too big");

static inline struct lv_parent *parent_of(struct srrs_io *io) { return (struct lv_parent *)io->driver_ctx; }
static inline struct lv_child *child_of(struct srrs_io *io) { return (struct lv_child *)io->driver_ctx; }

static void pool_msg(struct srrs_pool *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void pool_msg(struct srrs_pool *p, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    size_t n = strlen(line);
    pthread_mutex_lock(&p->lock);
    if (p->msgs_len + n + 2 < sizeof(p->msgs)) {
        memcpy(p->msgs + p->msgs_len, line, n);
        p->msgs_len += n;
        p->msgs[p->msgs_len++] = '\n';
        p->msgs[p->msgs_len] = 0;
    }
    pthread_mutex_unlock(&p->lock);
    srrs_event_post(p->core, SRRS_EV_LOG, 0, 0, p->name, "%s", line);
}

static inline bool bm_get(const uint64_t *bm, uint64_t i) { return bm[i >> 6] >> (i & 63) & 1; }
static inline void bm_set(uint64_t *bm, uint64_t i) { bm[i >> 6] |= 1ull << (i & 63); }
static inline void bm_clr(uint64_t *bm, uint64_t i) { bm[i >> 6] &= ~(1ull << (i & 63)); }

/* First clear bit in [0, n) starting at hint, wrapping; n if none. */
static uint64_t bm_find_free(const uint64_t *bm, uint64_t n, uint64_t hint)
{
    if (!n)
        return n;
    if (hint >= n)
        hint = 0;
    uint64_t words = (n + 63) / 64;
    for (uint64_t k = 0; k <= words; k++) {
        uint64_t w = (hint / 64 + k) % words;
        uint64_t bits = ~bm[w];
        if (k == 0)
            bits &= ~0ull << (hint & 63);
        while (bits) {
            uint64_t i = w * 64 + (uint64_t)__builtin_ctzll(bits);
            if (i < n)
                return i;
            bits &= bits - 1;
        }
    }
    return n;
}

static uint32_t str_hash(const char *s, uint32_t mod)
{
    uint32_t h = 2166136261u;
    while (*s)
        h = (h ^ (uint8_t)*s++) * 16777619u;
    return h % mod;
}

static struct lv_vol *vol_lookup(struct srrs_pool *p, const char *name)
{
    for (struct lv_vol *v = p->vhash[str_hash(name, VHASH)]; v; v = v->hnext)
        if (!strcmp(v->name, name))
            return v;
    return NULL;
}

static void vol_link(struct srrs_pool *p, struct lv_vol *v)
{
    uint32_t h = str_hash(v->name, VHASH);
    v->hnext = p->vhash[h];
    p->vhash[h] = v;
    p->nvols++;
}

static void vol_unlink(struct srrs_pool *p, struct lv_vol *v)
{
    struct lv_vol **pp = &p->vhash[str_hash(v->name, VHASH)];
    while (*pp && *pp != v)
        pp = &(*pp)->hnext;
    if (*pp) {
        *pp = v->hnext;
        p->nvols--;
    }
}

static struct lv_tenant *tenant_lookup(struct srrs_pool *p, const char *name)
{
    for (struct lv_tenant *t = p->tenants; t; t = t->next)
        if (!strcmp(t->name, name))
            return t;
    return NULL;
}

/* ---- cluster map (read on any reactor, written on P) ------------------------ */

static inline uint64_t map_get(struct lv_vol *v, uint64_t c)
{
    uint64_t **top = atomic_load_explicit(&v->top, memory_order_acquire);
    uint64_t *chunk = __atomic_load_n(&top[c / MD_ENTRIES], __ATOMIC_ACQUIRE);
    return chunk ? __atomic_load_n(&chunk[c % MD_ENTRIES], __ATOMIC_ACQUIRE) : 0;
}

/* P only. Returns the chunk for cluster c, creating it. */
static uint64_t *map_chunk(struct lv_vol *v, uint64_t c)
{
    uint64_t **top = atomic_load_explicit(&v->top, memory_order_relaxed);
    uint64_t *chunk = top[c / MD_ENTRIES];
    if (!chunk) {
        chunk = calloc(MD_ENTRIES, sizeof(uint64_t));
        if (chunk)
            __atomic_store_n(&top[c / MD_ENTRIES], chunk, __ATOMIC_RELEASE);
    }
    return chunk;
}

static inline void map_set(uint64_t *chunk, uint64_t c, uint64_t e)
{
    __atomic_store_n(&chunk[c % MD_ENTRIES], e, __ATOMIC_RELEASE);
}

static int vol_alloc_top(struct lv_vol *v, uint64_t nclusters)
{
    uint32_t n = (uint32_t)((nclusters + MD_ENTRIES - 1) / MD_ENTRIES);
    if (!n)
        n = 1;
    uint64_t **top = calloc(n, sizeof(*top));
    struct lv_page **pages = calloc(n, sizeof(*pages));
    if (!top || !pages) {
        free(top);
        free(pages);
        return -ENOMEM;
    }
    uint64_t **old = atomic_load_explicit(&v->top, memory_order_relaxed);
    if (old) {
        memcpy(top, old, v->nchunks * sizeof(*top));
        memcpy(pages, v->pages, v->nchunks * sizeof(*pages));
        void **olds = realloc(v->old_tops, (v->nold + 1) * sizeof(void *));
        if (!olds) {
            free(top);
            free(pages);
            return -ENOMEM;
        }
        v->old_tops = olds;
        v->old_tops[v->nold++] = old; /* a reactor may still be reading it */
        free(v->pages);
    }
    v->pages = pages;
    atomic_store_explicit(&v->top, top, memory_order_release);
    v->nchunks = n;
    return 0;
}

static void vol_free(struct lv_vol *v)
{
    uint64_t **top = atomic_load_explicit(&v->top, memory_order_relaxed);
    for (uint32_t i = 0; top && i < v->nchunks; i++) {
        free(top[i]);
        free(v->pages[i]);
    }
    free(top);
    for (uint32_t i = 0; i < v->nold; i++)
        free(v->old_tops[i]);
    free(v->old_tops);
    free(v->pages);
    free(v);
}

/* ---- messages between reactors ---------------------------------------------- */

static void send_to(struct srrs_reactor *r, srrs_msg_fn fn, void *arg)
{
    if (srrs_reactor_self() == r) {
        fn(arg);
        return;
    }
    int rc;
    while ((rc = srrs_reactor_send(r, fn, arg)) == -EAGAIN)
        ;
    (void)rc; /* -ESHUTDOWN: the reactors are stopping, the I/O is abandoned */
}

/* ---- metadata pages (P) ----------------------------------------------------- */

static uint64_t slot_offset(struct lv_frag *f, uint64_t slot, int copy)
{
    return MD_AREA_OFF + slot * MD_SLOT + (uint64_t)copy * MD_PAGE;
}

static void page_fill(struct srrs_pool *p, struct lv_page *pg, uint8_t *buf, uint64_t seq)
{
    memset(buf, 0, MD_PAGE);
    struct md_hdr *h = (struct md_hdr *)buf;
    struct lv_vol *v = pg->vol;
    h->magic = MD_MAGIC;
    h->seq = seq;
    h->version = LV_VERSION;
    memcpy(h->pool_uuid, p->uuid, 16);
    if (pg->tomb) {
        h->kind = PK_FREE;
    } else {
        memcpy(h->vol_uuid, v->uuid, 16);
        h->kind = pg->idx == 0 ? PK_VOL : PK_MAP;
        h->page_idx = pg->idx;
        if (pg->idx == 0) {
            struct md_vol *mv = (struct md_vol *)(buf + sizeof(*h));
            snprintf(mv->name, sizeof(mv->name), "%s", v->name);
            snprintf(mv->tenant, sizeof(mv->tenant), "%s", v->tenant_name);
            mv->size = v->size;
            mv->thin = v->thin;
            mv->block_size = LV_BS;
            mv->ctime = v->ctime;
        }
        uint64_t **top = atomic_load_explicit(&v->top, memory_order_relaxed);
        uint64_t *chunk = pg->idx < v->nchunks ? top[pg->idx] : NULL;
        uint64_t *ent = (uint64_t *)(buf + MD_ENTRY_OFF);
        for (uint32_t i = 0; chunk && i < MD_ENTRIES; i++)
            ent[i] = chunk[i] & E_LOC_MASK;
    }
    h->crc = srrs_crc32c(0, buf, MD_PAGE);
}

static void page_start(struct lv_page *pg);

static void page_io_done(struct srrs_io *io, void *arg);

static void page_finish(struct lv_page *pg)
{
    struct srrs_pool *p = pg->pool;
    srrs_io_put(pg->io);
    pg->io = NULL;
    srrs_buf_put(p->pr, pg->buf, MD_PAGE);
    pg->buf = NULL;
    pg->busy = false;
    p->md_writes++;
    struct lv_wait *w = pg->cur;
    pg->cur = NULL;
    int status = pg->status;
    if (status)
        srrs_event_post(p->core, SRRS_EV_BDEV_ERROR, (uint64_t)-status, pg->slot, p->name,
                        "metadata write to fragment %u slot %llu failed: %s", pg->frag,
                        (unsigned long long)pg->slot, strerror(-status));
    if (pg->want)
        page_start(pg);
    while (w) {
        struct lv_wait *n = w->next;
        w->fn(w, status);
        w = n;
    }
}

static void page_write_b(struct lv_page *pg)
{
    struct lv_frag *f = &pg->pool->frags[pg->frag];
    pg->step = 2;
    srrs_io_prep(pg->io, f->bdev, SRRS_IO_WRITE, slot_offset(f, pg->slot, 1), MD_PAGE, pg->buf,
                 page_io_done, pg);
    srrs_bdev_submit(pg->io);
}

static void frag_flush_start(struct srrs_pool *p, struct lv_frag *f);

/* Group commit: one flush of the fragment covers every page whose copy A
 * completed before the flush was issued. */
static void frag_flush_done(struct srrs_io *io, void *arg)
{
    struct lv_frag *f = arg;
    struct srrs_pool *p = f->pool;
    int st = io->status;
    srrs_io_put(io);
    struct lv_page *pg = f->fl_cur;
    f->fl_cur = NULL;
    f->flushing = false;
    if (f->fl_next)
        frag_flush_start(p, f);
    while (pg) {
        struct lv_page *n = pg->fl_link;
        pg->fl_link = NULL;
        if (st) {
            pg->status = st;
            page_finish(pg);
        } else {
            page_write_b(pg);
        }
        pg = n;
    }
}

static void frag_flush_start(struct srrs_pool *p, struct lv_frag *f)
{
    struct srrs_io *io = srrs_io_get(p->pr);
    f->flushing = true;
    f->fl_cur = f->fl_next;
    f->fl_next = NULL;
    if (!io) {
        /* No I/O object: fail this group (callers report -ENOMEM). */
        struct lv_page *pg = f->fl_cur;
        f->fl_cur = NULL;
        f->flushing = false;
        while (pg) {
            struct lv_page *n = pg->fl_link;
            pg->fl_link = NULL;
            pg->status = -ENOMEM;
            page_finish(pg);
            pg = n;
        }
        return;
    }
    srrs_io_prep(io, f->bdev, SRRS_IO_FLUSH, 0, 0, NULL, frag_flush_done, f);
    srrs_bdev_submit(io);
}

static void page_io_done(struct srrs_io *io, void *arg)
{
    struct lv_page *pg = arg;
    struct srrs_pool *p = pg->pool;
    if (io->status && !pg->status)
        pg->status = io->status;
    struct lv_frag *f = &p->frags[pg->frag];
    if (pg->status || pg->step == 2) {
        page_finish(pg);
        return;
    }
    /* Copy A is written. Copy B may only start once A is durable. */
    if (p->sync_md && !f->ram) {
        pg->step = 1;
        pg->fl_link = f->fl_next;
        f->fl_next = pg;
        if (!f->flushing)
            frag_flush_start(p, f);
        return;
    }
    page_write_b(pg);
}

static void page_start(struct lv_page *pg)
{
    struct srrs_pool *p = pg->pool;
    struct lv_frag *f = &p->frags[pg->frag];
    if (pg->busy || !pg->want)
        return;
    pg->buf = srrs_buf_get(p->pr, MD_PAGE);
    pg->io = srrs_io_get(p->pr);
    if (!pg->buf || !pg->io) {
        /* Out of buffers: fail this batch (callers report -ENOMEM). */
        if (pg->buf)
            srrs_buf_put(p->pr, pg->buf, MD_PAGE);
        if (pg->io)
            srrs_io_put(pg->io);
        pg->buf = NULL;
        struct lv_wait *w = pg->next;
        pg->next = NULL;
        pg->want = false;
        while (w) {
            struct lv_wait *n = w->next;
            w->fn(w, -ENOMEM);
            w = n;
        }
        return;
    }
    pg->busy = true;
    pg->want = false;
    pg->cur = pg->next;
    pg->next = NULL;
    pg->step = 0;
    pg->status = 0;
    page_fill(p, pg, pg->buf, ++p->seq);
    srrs_io_prep(pg->io, f->bdev, SRRS_IO_WRITE, slot_offset(f, pg->slot, 0), MD_PAGE, pg->buf,
                 page_io_done, pg);
    srrs_bdev_submit(pg->io);
}

/* P. Commit the page (now or after the write in flight); w->fn runs once a
 * write that includes the current state is durable. */
static void page_commit(struct lv_page *pg, struct lv_wait *w)
{
    if (w) {
        w->next = pg->next;
        pg->next = w;
    }
    pg->want = true;
    page_start(pg);
}

/* P. A free metadata slot, preferring the persistent fragment with most free slots. */
static int slot_alloc(struct srrs_pool *p, uint32_t *frag, uint64_t *slot)
{
    int best = -1;
    uint64_t best_free = 0;
    for (int i = 0; i < LV_MAX_FRAGS; i++) {
        struct lv_frag *f = &p->frags[i];
        if (f->state != FS_ACTIVE || !f->md_slots || __atomic_load_n(&f->hidden, __ATOMIC_ACQUIRE))
            continue;
        uint64_t fr = f->md_slots - f->slots_used;
        if (fr > best_free) {
            best_free = fr;
            best = i;
        }
    }
    if (best < 0)
        return -ENOSPC;
    struct lv_frag *f = &p->frags[best];
    uint64_t s = bm_find_free(f->slot_used, f->md_slots, f->slot_hint);
    if (s >= f->md_slots)
        return -ENOSPC;
    bm_set(f->slot_used, s);
    f->slots_used++;
    f->slot_hint = s + 1;
    *frag = (uint32_t)best;
    *slot = s;
    return 0;
}

static void slot_free(struct srrs_pool *p, uint32_t frag, uint64_t slot)
{
    struct lv_frag *f = &p->frags[frag];
    if (f->slot_used && bm_get(f->slot_used, slot)) {
        bm_clr(f->slot_used, slot);
        f->slots_used--;
    }
}

/* P. The page object of chunk idx, with a slot. */
static struct lv_page *page_get(struct lv_vol *v, uint32_t idx)
{
    struct lv_page *pg = v->pages[idx];
    if (pg)
        return pg;
    pg = calloc(1, sizeof(*pg));
    if (!pg)
        return NULL;
    if (slot_alloc(v->pool, &pg->frag, &pg->slot)) {
        free(pg);
        return NULL;
    }
    pg->pool = v->pool;
    pg->vol = v;
    pg->idx = idx;
    v->pages[idx] = pg;
    return pg;
}

/* ---- allocation (P) ----------------------------------------------------------- */

static inline uint32_t ahash(struct lv_vol *v, uint64_t c)
{
    return (uint32_t)(((uintptr_t)v >> 6) * 2654435761u ^ c * 40503u) % AHASH;
}

static struct lv_alloc *alloc_find(struct srrs_pool *p, struct lv_vol *v, uint64_t c)
{
    for (struct lv_alloc *a = p->ahash[ahash(v, c)]; a; a = a->hnext)
        if (a->vol == v && a->c == c)
            return a;
    return NULL;
}

static void alloc_unhash(struct srrs_pool *p, struct lv_alloc *a)
{
    struct lv_alloc **pp = &p->ahash[ahash(a->vol, a->c)];
    while (*pp && *pp != a)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = a->hnext;
}

/* Placement: spread keeps the weighted fill ratio even; fill-first takes the
 * highest-weight fragment with room. */
static int pick_frag(struct srrs_pool *p)
{
    int best = -1;
    double best_score = -1;
    for (int i = 0; i < LV_MAX_FRAGS; i++) {
        struct lv_frag *f = &p->frags[i];
        if (f->state != FS_ACTIVE || f->nused >= f->nclusters ||
            __atomic_load_n(&f->hidden, __ATOMIC_ACQUIRE))
            continue;
        double score;
        if (p->placement == 1)
            score = (double)f->weight * 1e6 - i;
        else
            score = (double)f->weight * (double)(f->nclusters - f->nused) / (double)f->nclusters;
        if (score > best_score) {
            best_score = score;
            best = i;
        }
    }
    return best;
}

/* P. Takes a free cluster; returns its entry or 0 (pool full). *zero: must be zeroed. */
static uint64_t cluster_take(struct srrs_pool *p, int fi, bool *zero)
{
    struct lv_frag *f = &p->frags[fi];
    uint64_t cl = bm_find_free(f->used, f->nclusters, f->hint);
    if (cl >= f->nclusters)
        return 0;
    bm_set(f->used, cl);
    f->nused++;
    f->hint = cl + 1;
    *zero = !(f->fresh && cl >= f->zero_hwm);
    if (cl + 1 > f->zero_hwm)
        f->zero_hwm = cl + 1;
    return e_make((uint32_t)fi, cl);
}

static void cluster_put(struct srrs_pool *p, uint64_t e)
{
    struct lv_frag *f = &p->frags[e_frag(e)];
    uint64_t cl = e_cl(e);
    if (f->used && cl < f->nclusters && bm_get(f->used, cl)) {
        bm_clr(f->used, cl);
        f->nused--;
    }
}

static void child_resume(void *arg);

/* P. Answer a child waiting for an allocation: it re-reads the map on its reactor. */
static void child_reply(struct srrs_io *child, int status)
{
    child->status = status;
    send_to(child->r, child_resume, child);
}

static void alloc_finish(struct lv_alloc *a, int status)
{
    struct srrs_pool *p = a->vol->pool;
    alloc_unhash(p, a);
    struct srrs_io *io = a->wq_head;
    while (io) {
        struct srrs_io *n = io->next;
        child_reply(io, status);
        io = n;
    }
    struct lv_wait *w = a->extra;
    while (w) {
        struct lv_wait *n = w->next;
        w->fn(w, status);
        w = n;
    }
    free(a);
}

static void alloc_committed(struct lv_wait *w, int status)
{
    struct lv_alloc *a = (struct lv_alloc *)w;
    struct lv_vol *v = a->vol;
    uint64_t *chunk = map_chunk(v, a->c);
    if (status) {
        /* Not durable: undo, the write fails. */
        map_set(chunk, a->c, 0);
        cluster_put(v->pool, a->entry);
        v->allocated--;
        if (v->tenant)
            v->tenant->used--;
    } else {
        map_set(chunk, a->c, a->entry);
    }
    alloc_finish(a, status);
}

static void alloc_zeroed(struct srrs_io *io, void *arg)
{
    struct lv_alloc *a = arg;
    struct lv_vol *v = a->vol;
    int st = io ? io->status : 0;
    if (io)
        srrs_io_put(io);
    struct lv_page *pg = st ? NULL : page_get(v, (uint32_t)(a->c / MD_ENTRIES));
    uint64_t *chunk = st ? NULL : map_chunk(v, a->c);
    if (st || !pg || !chunk) {
        cluster_put(v->pool, a->entry);
        v->allocated--;
        if (v->tenant)
            v->tenant->used--;
        alloc_finish(a, st ? st : -ENOSPC);
        return;
    }
    map_set(chunk, a->c, a->entry | E_PENDING);
    a->w.fn = alloc_committed;
    page_commit(pg, &a->w);
}

/* At most one event per second per tenant / pool: a full volume under load
 * fails thousands of writes a second. */
static bool event_due(uint64_t *last)
{
    uint64_t now = srrs_now_ns();
    if (*last && now - *last < 1000000000ull)
        return false;
    *last = now;
    return true;
}

static int alloc_check_space(struct srrs_pool *p, struct lv_vol *v)
{
    struct lv_tenant *t = v->tenant;
    if (t && t->quota_cl && t->used >= t->quota_cl) {
        t->failures++;
        p->alloc_failures++;
        if (event_due(&t->last_event_ns))
            srrs_event_post(p->core, SRRS_EV_QUOTA, t->used, t->quota_cl, v->name,
                        "tenant %s is at its quota (%llu clusters): write to volume %s refused",
                        t->name, (unsigned long long)t->quota_cl, v->name);
        return -ENOSPC;
    }
    return 0;
}

/* P. Allocate cluster c of v; the requester (child io or waiter) is queued on
 * the record. Returns NULL with *err when it fails at once. */
static struct lv_alloc *alloc_start(struct lv_vol *v, uint64_t c, int *err)
{
    struct srrs_pool *p = v->pool;
    *err = alloc_check_space(p, v);
    if (*err)
        return NULL;
    int fi = pick_frag(p);
    bool zero = true;
    uint64_t e = fi >= 0 ? cluster_take(p, fi, &zero) : 0;
    if (!e) {
        p->alloc_failures++;
        if (event_due(&p->full_event_ns))
            srrs_event_post(p->core, SRRS_EV_POOL_FULL, 0, 0, v->name,
                        "pool %s has no free cluster: write to volume %s refused", p->name, v->name);
        *err = -ENOSPC;
        return NULL;
    }
    struct lv_alloc *a = calloc(1, sizeof(*a));
    if (!a) {
        cluster_put(p, e);
        *err = -ENOMEM;
        return NULL;
    }
    a->vol = v;
    a->c = c;
    a->entry = e;
    v->allocated++;
    if (v->tenant)
        v->tenant->used++;
    uint32_t h = ahash(v, c);
    a->hnext = p->ahash[h];
    p->ahash[h] = a;
    if (!zero) {
        alloc_zeroed(NULL, a);
        return a;
    }
    struct srrs_io *io = srrs_io_get(p->pr);
    if (!io) {
        alloc_unhash(p, a);
        cluster_put(p, e);
        v->allocated--;
        if (v->tenant)
            v->tenant->used--;
        free(a);
        *err = -ENOMEM;
        return NULL;
    }
    struct lv_frag *f = &p->frags[e_frag(e)];
    srrs_io_prep(io, f->bdev, SRRS_IO_WRITE_ZEROES, f->data_off + (e_cl(e) << p->cs_shift), p->cs,
                 NULL, alloc_zeroed, a);
    srrs_bdev_submit(io);
    return a;
}

static void wq_push(struct lv_alloc *a, struct srrs_io *io)
{
    io->next = NULL;
    if (a->wq_tail)
        a->wq_tail->next = io;
    else
        a->wq_head = io;
    a->wq_tail = io;
}

/* P. A child write (or zeroing) found its cluster unallocated, pending or locked. */
static void p_alloc_msg(void *arg)
{
    struct srrs_io *child = arg;
    struct lv_child *lc = child_of(child);
    struct lv_vol *v = lc->vol;
    struct srrs_pool *p = v->pool;
    struct lv_alloc *a = alloc_find(p, v, lc->c);
    if (a) {
        wq_push(a, child);
        return;
    }
    uint64_t e = map_get(v, lc->c);
    if (e_alloc(e) || lc->noalloc || v->deleted) {
        child_reply(child, v->deleted ? -ENXIO : 0);
        return;
    }
    int err;
    a = alloc_start(v, lc->c, &err);
    if (!a)
        child_reply(child, err);
    else
        wq_push(a, child);
}

/* ---- barriers and unmap (P) ---------------------------------------------------- */

/*
 * A barrier completes once every volume I/O that was submitted to a fragment
 * before it started has completed, on every reactor: each reactor counts its
 * in-flight child I/O by epoch parity; the barrier flips every reactor's
 * epoch (a message) and waits for the old parity's count to reach zero.
 * Freed clusters (unmap, drain) go back to the allocator only after one, so
 * a late write can never land in a cluster that another volume now owns.
 */

static void bar_ack(void *arg) { ((struct srrs_pool *)arg)->bar_acks++; }

static void bar_flip(void *arg)
{
    struct srrs_pool *p = arg;
    int i = srrs_reactor_idx(srrs_reactor_self());
    __atomic_add_fetch(&p->rs[i].epoch, 1, __ATOMIC_ACQ_REL);
    send_to(p->pr, bar_ack, p);
}

static int maint_poll(void *arg)
{
    struct srrs_pool *p = arg;
    if (p->bar_running) {
        if (p->bar_acks < p->nreactors)
            return 0;
        for (int i = 0; i < p->nreactors; i++)
            if (__atomic_load_n(&p->rs[i].cnt[p->bar_oldpar[i]], __ATOMIC_ACQUIRE))
                return 0;
        p->bar_running = false;
        struct lv_wait *w = p->bar_cur;
        p->bar_cur = NULL;
        while (w) {
            struct lv_wait *n = w->next;
            w->fn(w, 0);
            w = n;
        }
        return 1;
    }
    if (!p->bar_next)
        return 0;
    p->bar_cur = p->bar_next;
    p->bar_next = NULL;
    p->bar_running = true;
    p->bar_acks = 0;
    for (int i = 0; i < p->nreactors; i++)
        p->bar_oldpar[i] = __atomic_load_n(&p->rs[i].epoch, __ATOMIC_ACQUIRE) & 1;
    for (int i = 0; i < p->nreactors; i++)
        send_to(srrs_core_reactor(p->core, i), bar_flip, p);
    return 1;
}

/* P. w->fn(w, 0) runs after a barrier that started after this call. */
static void barrier_request(struct srrs_pool *p, struct lv_wait *w)
{
    if (!p->maint_poller)
        p->maint_poller = srrs_poller_register(p->pr, maint_poll, p, 20);
    w->next = p->bar_next;
    p->bar_next = w;
}

struct lv_free {
    struct lv_alloc a;       /* in the allocation hash while the map changes */
    struct lv_wait bw;
    uint64_t old_e;
};

static void free_after_barrier(struct lv_wait *w, int status)
{
    (void)status;
    struct lv_free *fr = (struct lv_free *)((uint8_t *)w - offsetof(struct lv_free, bw));
    cluster_put(fr->a.vol->pool, fr->old_e);
    free(fr);
}

static void unmap_committed(struct lv_wait *w, int status)
{
    struct lv_free *fr = (struct lv_free *)w;
    struct lv_vol *v = fr->a.vol;
    struct srrs_pool *p = v->pool;
    map_set(map_chunk(v, fr->a.c), fr->a.c, status ? fr->old_e : 0);
    alloc_unhash(p, &fr->a);
    struct srrs_io *io = fr->a.wq_head;
    while (io) {
        struct srrs_io *n = io->next;
        child_reply(io, status); /* the unmap itself finds the cluster gone: done */
        io = n;
    }
    if (status) {
        free(fr);
        return;
    }
    v->allocated--;
    if (v->tenant)
        v->tenant->used--;
    p->unmapped++;
    fr->bw.fn = free_after_barrier;
    barrier_request(p, &fr->bw);
}

/* P. An unmap covering a whole allocated cluster: the cluster goes back to the pool. */
static void p_unmap_msg(void *arg)
{
    struct srrs_io *child = arg;
    struct lv_child *lc = child_of(child);
    struct lv_vol *v = lc->vol;
    struct srrs_pool *p = v->pool;
    struct lv_alloc *a = alloc_find(p, v, lc->c);
    if (a) {
        wq_push(a, child);
        return;
    }
    uint64_t e = map_get(v, lc->c);
    struct lv_page *pg = v->pages[lc->c / MD_ENTRIES];
    struct lv_free *fr = e_alloc(e) && pg ? calloc(1, sizeof(*fr)) : NULL;
    if (!fr) {
        child_reply(child, e_alloc(e) ? -ENOMEM : 0);
        return;
    }
    fr->a.vol = v;
    fr->a.c = lc->c;
    fr->old_e = e;
    uint32_t h = ahash(v, lc->c);
    fr->a.hnext = p->ahash[h];
    p->ahash[h] = &fr->a;
    wq_push(&fr->a, child);
    /* Reads see an unallocated cluster (zeroes); writes queue on the record. */
    map_set(map_chunk(v, lc->c), lc->c, E_LOCKED);
    fr->a.w.fn = unmap_committed;
    page_commit(pg, &fr->a.w);
}

/* ---- the data path (any reactor) ---------------------------------------------- */

void srrs_bdev_account(struct srrs_io *io);

/* in_completion: called from a child's completion callback (the reactor's
 * completion loop), so the parent's callback may run now rather than one loop
 * later; from a submit path it must be deferred (no recursion). */
static void piece_done_ex(struct srrs_io *parent, int status, bool in_completion)
{
    struct lv_parent *pp = parent_of(parent);
    if (status && !pp->status)
        pp->status = status;
    if (--pp->pending)
        return;
    if (pp->iovbuf)
        srrs_buf_put(parent->r, pp->iovbuf, pp->iovbuf_len);
    pp->iovbuf = NULL;
    if (!in_completion) {
        srrs_io_complete(parent, pp->status);
        return;
    }
    parent->status = pp->status;
    srrs_bdev_account(parent);
    parent->cb(parent, parent->cb_arg);
}

static void piece_done(struct srrs_io *parent, int status)
{
    piece_done_ex(parent, status, false);
}

#define CHILD_SUBMITTED ((void *)1)

static void child_cb(struct srrs_io *child, void *arg)
{
    struct srrs_io *parent = child->parent;
    if (child->tag != IO_NOTAG) {
        struct srrs_pool *p = ((struct lv_vol *)parent->bdev->ctx)->pool;
        __atomic_sub_fetch(&p->rs[srrs_reactor_idx(child->r)].cnt[child->tag], 1, __ATOMIC_RELEASE);
    }
    int st = child->status;
    srrs_io_put(child);
    piece_done_ex(parent, st, arg == CHILD_SUBMITTED);
}

static void iov_zero(struct srrs_io *io)
{
    for (int i = 0; i < io->iovcnt; i++)
        memset(io->iov[i].iov_base, 0, io->iov[i].iov_len);
}

/* Runs on the child's reactor: look the cluster up and send the piece on. */
static void child_go(struct srrs_io *child)
{
    struct lv_child *lc = child_of(child);
    struct lv_vol *v = lc->vol;
    struct srrs_pool *p = v->pool;
    uint64_t e = map_get(v, lc->c);
    bool mapped = e_alloc(e) && !(e & E_PENDING);
    switch (child->op) {
    case SRRS_IO_READ:
        if (!mapped) {
            iov_zero(child);
            child_cb(child, NULL);
            return;
        }
        break;
    case SRRS_IO_WRITE:
        if (!mapped || (e & E_LOCKED)) {
            lc->noalloc = false;
            send_to(p->pr, p_alloc_msg, child);
            return;
        }
        break;
    default: /* write zeroes, unmap */
        if (!e_alloc(e)) {
            child_cb(child, NULL);
            return;
        }
        if ((e & (E_PENDING | E_LOCKED))) {
            lc->noalloc = true;
            send_to(p->pr, p_alloc_msg, child);
            return;
        }
        if (child->op == SRRS_IO_UNMAP && lc->coff == 0 && child->len == p->cs) {
            send_to(p->pr, p_unmap_msg, child);
            return;
        }
        child->op = SRRS_IO_WRITE_ZEROES; /* a partial cluster stays allocated */
        break;
    }
    struct lv_frag *f = &p->frags[e_frag(e)];
    child->bdev = f->bdev;
    child->offset = f->data_off + (e_cl(e) << p->cs_shift) + lc->coff;
    child->cb = child_cb;
    child->cb_arg = CHILD_SUBMITTED;
    /* Counted until it completes: a drain frees a moved-away cluster only
     * once every I/O that may still use its old location is done. */
    struct lv_rstate *rs = &p->rs[srrs_reactor_idx(child->r)];
    child->tag = __atomic_load_n(&rs->epoch, __ATOMIC_RELAXED) & 1;
    __atomic_add_fetch(&rs->cnt[child->tag], 1, __ATOMIC_RELAXED);
    srrs_bdev_submit(child);
}

static void child_resume(void *arg)
{
    struct srrs_io *child = arg;
    if (child->status) {
        int st = child->status;
        child->status = 0;
        struct srrs_io *parent = child->parent;
        srrs_io_put(child);
        piece_done(parent, st);
        return;
    }
    child_go(child);
}

static void lv_flush(struct srrs_pool *p, struct srrs_io *io)
{
    struct lv_parent *pp = parent_of(io);
    for (int i = 0; i < LV_MAX_FRAGS; i++) {
        struct lv_frag *f = &p->frags[i];
        if ((f->state != FS_ACTIVE && f->state != FS_DRAINING) || f->ram)
            continue;
        struct srrs_io *c = srrs_io_get(io->r);
        if (!c) {
            pp->status = -ENOMEM;
            break;
        }
        srrs_io_prep(c, f->bdev, SRRS_IO_FLUSH, 0, 0, NULL, child_cb, NULL);
        c->parent = io;
        c->tag = IO_NOTAG;
        pp->pending++;
        srrs_bdev_submit(c);
    }
    piece_done(io, 0);
}

/* Builds child k's iovec: bytes [skip, skip + len) of the parent's iovecs. */
static int iov_slice(const struct srrs_io *io, uint64_t skip, uint64_t len, struct iovec *out, int max)
{
    int n = 0;
    for (int i = 0; i < io->iovcnt && len; i++) {
        uint64_t l = io->iov[i].iov_len;
        if (skip >= l) {
            skip -= l;
            continue;
        }
        uint64_t take = SRRS_MIN(l - skip, len);
        if (n == max)
            return -1;
        out[n].iov_base = (uint8_t *)io->iov[i].iov_base + skip;
        out[n].iov_len = take;
        n++;
        len -= take;
        skip = 0;
    }
    return len ? -1 : n;
}

static void lv_submit(struct srrs_bdev *b, void *ch, struct srrs_io *io)
{
    (void)ch;
    struct lv_vol *v = b->ctx;
    struct srrs_pool *p = v->pool;
    struct lv_parent *pp = parent_of(io);
    pp->pending = 1;
    pp->status = 0;
    pp->iovbuf = NULL;
    if (io->op == SRRS_IO_FLUSH) {
        lv_flush(p, io);
        return;
    }
    bool data = io->op == SRRS_IO_READ || io->op == SRRS_IO_WRITE;
    uint64_t first = io->offset >> p->cs_shift, last = (io->offset + io->len - 1) >> p->cs_shift;
    bool split = first != last;
    struct iovec *iovs = NULL;
    int iov_left = 0;
    if (split && data) {
        /* Rare: a transfer crossing a cluster boundary gets sliced iovecs. */
        uint32_t need = (uint32_t)(io->iovcnt + (last - first) + 1) * sizeof(struct iovec);
        pp->iovbuf_len = need <= 4096 ? 4096 : 65536;
        pp->iovbuf = need <= 65536 ? srrs_buf_get(io->r, pp->iovbuf_len) : NULL;
        if (!pp->iovbuf) {
            pp->status = -ENOMEM;
            piece_done(io, 0);
            return;
        }
        iovs = pp->iovbuf;
        iov_left = (int)(pp->iovbuf_len / sizeof(struct iovec));
    }
    uint64_t off = io->offset, end = io->offset + io->len;
    while (off < end) {
        uint64_t c = off >> p->cs_shift;
        uint64_t coff = off & (p->cs - 1);
        uint64_t n = SRRS_MIN(p->cs - coff, end - off);
        struct srrs_io *k = srrs_io_get(io->r);
        if (!k) {
            pp->status = -ENOMEM;
            break;
        }
        k->op = io->op;
        k->len = n;
        k->parent = io;
        k->status = 0;
        k->tag = IO_NOTAG;
        if (!data) {
            k->iov = k->iov_inline;
            k->iovcnt = 0;
        } else if (!split) {
            k->iov = io->iov;
            k->iovcnt = io->iovcnt;
        } else {
            int cnt = iov_slice(io, off - io->offset, n, iovs, iov_left);
            if (cnt < 0) {
                srrs_io_put(k);
                pp->status = -EINVAL;
                break;
            }
            k->iov = iovs;
            k->iovcnt = cnt;
            iovs += cnt;
            iov_left -= cnt;
        }
        struct lv_child *lc = child_of(k);
        lc->vol = v;
        lc->c = c;
        lc->coff = coff;
        lc->noalloc = false;
        pp->pending++;
        child_go(k);
        off += n;
    }
    piece_done(io, 0);
}

static void lv_destroy(struct srrs_bdev *b)
{
    struct lv_vol *v = b->ctx;
    v->bdev = NULL;
}

static const struct srrs_bdev_module lvol_module = {
    .name = "lvol",
    .submit = lv_submit,
    .destroy = lv_destroy,
};

/* ---- control-thread operations run on P ------------------------------------- */

struct lv_op {
    struct lv_wait w;
    struct srrs_pool *p;
    sem_t done;
    int rc;
    int pending;
    char err[256];
    /* arguments */
    const char *name;
    const char *tenant;
    uint64_t size, quota;
    int thin;
    struct lv_vol *vol;
    /* thick allocation */
    uint64_t next_c, end_c;
    int window;
};

static void op_fail(struct lv_op *op, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void op_fail(struct lv_op *op, int rc, const char *fmt, ...)
{
    if (op->rc)
        return;
    op->rc = rc;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(op->err, sizeof(op->err), fmt, ap);
    va_end(ap);
}

static void op_put(struct lv_op *op)
{
    if (--op->pending == 0)
        sem_post(&op->done);
}

/* Runs fn on P and waits until every asynchronous part has finished. */
static int op_run(struct srrs_pool *p, struct lv_op *op, srrs_msg_fn fn)
{
    if (srrs_reactor_is_stopping(p->pr))
        return srrs_err(-ESHUTDOWN, "pool %s: its reactor is stopping", p->name);
    op->p = p;
    op->pending = 1;
    sem_init(&op->done, 0, 0);
    srrs_reactor_call(p->pr, fn, op);
    while (sem_wait(&op->done) && errno == EINTR)
        ;
    sem_destroy(&op->done);
    if (op->rc)
        return srrs_err(op->rc, "%s", op->err[0] ? op->err : strerror(-op->rc));
    return 0;
}

static void op_page_done(struct lv_wait *w, int status)
{
    struct lv_op *op = (struct lv_op *)w;
    if (status)
        op_fail(op, status, "pool %s: metadata write failed: %s", op->p->name, strerror(-status));
    op_put(op);
}

/* Thick: keep `window` allocations in flight until every cluster is allocated. */
static void thick_more(struct lv_op *op);

struct thick_wait {
    struct lv_wait w;
    struct lv_op *op;
};

static void thick_one_done(struct lv_wait *w, int status)
{
    struct thick_wait *tw = (struct thick_wait *)w;
    struct lv_op *op = tw->op;
    free(tw);
    if (status)
        op_fail(op, status, "volume %s: allocating its clusters failed: %s", op->vol->name,
                strerror(-status));
    op->window++;
    thick_more(op);
    op_put(op);
}

static void thick_more(struct lv_op *op)
{
    struct lv_vol *v = op->vol;
    while (op->window > 0 && op->next_c < op->end_c && !op->rc) {
        uint64_t c = op->next_c++;
        if (e_alloc(map_get(v, c)))
            continue;
        struct thick_wait *tw = calloc(1, sizeof(*tw));
        int err = -ENOMEM;
        struct lv_alloc *a = tw ? alloc_start(v, c, &err) : NULL;
        if (!a) {
            free(tw);
            op_fail(op, err, "volume %s: cannot allocate cluster %llu of a thick volume: %s",
                    v->name, (unsigned long long)c, strerror(-err));
            return;
        }
        tw->op = op;
        tw->w.fn = thick_one_done;
        tw->w.next = a->extra;
        a->extra = &tw->w;
        op->window--;
        op->pending++;
    }
}

static void thick_start(struct lv_op *op, uint64_t from)
{
    op->next_c = from;
    op->end_c = op->vol->nclusters;
    op->window = 32;
    thick_more(op);
}

static void p_create(void *arg)
{
    struct lv_op *op = arg;
    struct srrs_pool *p = op->p;
    struct lv_tenant *t = NULL;
    if (op->tenant && *op->tenant && !(t = tenant_lookup(p, op->tenant))) {
        op_fail(op, -ENOENT, "tenant %s does not exist", op->tenant);
        op_put(op);
        return;
    }
    struct lv_vol *v = calloc(1, sizeof(*v));
    if (!v || vol_alloc_top(v, op->size / p->cs) ||
        getrandom(v->uuid, 16, 0) != 16) {
        free(v);
        op_fail(op, -ENOMEM, "volume %s: out of memory", op->name);
        op_put(op);
        return;
    }
    v->pool = p;
    snprintf(v->name, sizeof(v->name), "%s", op->name);
    snprintf(v->tenant_name, sizeof(v->tenant_name), "%s", t ? t->name : "");
    v->tenant = t;
    v->size = op->size;
    v->nclusters = op->size / p->cs;
    v->thin = op->thin;
    v->ctime = (uint64_t)time(NULL);
    struct lv_page *pg = page_get(v, 0);
    if (!pg) {
        vol_free(v);
        op_fail(op, -ENOSPC, "pool %s: no free metadata slot for volume %s (raise metadata_slots)",
                p->name, op->name);
        op_put(op);
        return;
    }
    pthread_mutex_lock(&p->lock);
    vol_link(p, v);
    pthread_mutex_unlock(&p->lock);
    if (t)
        t->nvols++;
    op->vol = v;
    op->w.fn = op_page_done;
    op->pending++;
    page_commit(pg, &op->w);
    if (!v->thin)
        thick_start(op, 0);
    op_put(op);
}

/* P: frees everything the volume held (after its tombstone is durable). */
static void vol_release(struct srrs_pool *p, struct lv_vol *v)
{
    uint64_t **top = atomic_load_explicit(&v->top, memory_order_relaxed);
    for (uint32_t k = 0; k < v->nchunks; k++) {
        for (uint32_t i = 0; top[k] && i < MD_ENTRIES; i++)
            if (e_alloc(top[k][i]))
                cluster_put(p, top[k][i]);
        if (v->pages[k])
            slot_free(p, v->pages[k]->frag, v->pages[k]->slot);
    }
    if (v->tenant) {
        v->tenant->used -= v->allocated;
        v->tenant->nvols--;
    }
    pthread_mutex_lock(&p->lock);
    vol_unlink(p, v);
    pthread_mutex_unlock(&p->lock);
    vol_free(v);
}

static void delete_done(struct lv_wait *w, int status)
{
    struct lv_op *op = (struct lv_op *)w;
    struct lv_vol *v = op->vol;
    if (status) {
        v->pages[0]->tomb = false;
        v->deleted = false;
        op_fail(op, status, "volume %s: writing its deletion failed: %s", v->name, strerror(-status));
    } else {
        vol_release(op->p, v);
    }
    op_put(op);
}

static void p_delete(void *arg)
{
    struct lv_op *op = arg;
    struct lv_vol *v = op->vol;
    v->deleted = true;
    v->pages[0]->tomb = true;
    op->w.fn = delete_done;
    op->pending++;
    page_commit(v->pages[0], &op->w);
    op_put(op);
}

static void p_resize(void *arg)
{
    struct lv_op *op = arg;
    struct lv_vol *v = op->vol;
    struct srrs_pool *p = op->p;
    uint64_t old_n = v->nclusters;
    if (vol_alloc_top(v, op->size / p->cs)) {
        op_fail(op, -ENOMEM, "volume %s: out of memory", v->name);
        op_put(op);
        return;
    }
    v->size = op->size;
    v->nclusters = op->size / p->cs;
    op->w.fn = op_page_done;
    op->pending++;
    page_commit(v->pages[0], &op->w);
    if (!v->thin)
        thick_start(op, old_n);
    op_put(op);
}

static void p_tenant_set(void *arg)
{
    struct lv_op *op = arg;
    struct srrs_pool *p = op->p;
    struct lv_tenant *t = tenant_lookup(p, op->name);
    if (!t) {
        t = calloc(1, sizeof(*t));
        if (!t) {
            op_fail(op, -ENOMEM, "out of memory");
            op_put(op);
            return;
        }
        snprintf(t->name, sizeof(t->name), "%s", op->name);
        t->next = p->tenants;
        p->tenants = t;
    }
    t->quota_cl = op->quota / p->cs;
    if (op->quota && !t->quota_cl)
        t->quota_cl = 1;
    op_put(op);
}

static void p_tenant_delete(void *arg)
{
    struct lv_op *op = arg;
    struct srrs_pool *p = op->p;
    struct lv_tenant **pp = &p->tenants;
    while (*pp && strcmp((*pp)->name, op->name))
        pp = &(*pp)->next;
    if (!*pp)
        op_fail(op, -ENOENT, "tenant %s does not exist", op->name);
    else if ((*pp)->nvols)
        op_fail(op, -EBUSY, "tenant %s still has %u volume(s)", op->name, (*pp)->nvols);
    else {
        struct lv_tenant *t = *pp;
        *pp = t->next;
        free(t);
    }
    op_put(op);
}

static int check_vol_name(const char *name)
{
    size_t n = name ? strnlen(name, SRRS_NAME_MAX) : 0;
    if (n == 0 || n >= SRRS_NAME_MAX)
        return srrs_err(-EINVAL, "volume name must be 1..%d bytes", SRRS_NAME_MAX - 1);
    return 0;
}

static void vol_fill_info(struct srrs_pool *p, struct lv_vol *v, struct srrs_lvol_info *o)
{
    memset(o, 0, sizeof(*o));
    snprintf(o->name, sizeof(o->name), "%s", v->name);
    snprintf(o->tenant, sizeof(o->tenant), "%s", v->tenant_name);
    memcpy(o->uuid, v->uuid, 16);
    o->size = v->size;
    o->allocated_clusters = __atomic_load_n(&v->allocated, __ATOMIC_RELAXED);
    o->cluster_size = p->cs;
    o->thin = v->thin;
    o->lost_clusters = v->lost;
}

static int vol_register(struct srrs_pool *p, struct lv_vol *v)
{
    return srrs_bdev_register(p->core, v->name, &lvol_module, v, v->size / LV_BS, LV_BS, &v->bdev);
}

int srrs_lvol_create(struct srrs_pool *p, const char *name, uint64_t size, int thin,
                     const char *tenant, struct srrs_lvol_info *out)
{
    int rc = check_vol_name(name);
    if (rc)
        return rc;
    if (!size || size % p->cs)
        return srrs_err(-EINVAL, "volume %s: size %llu is not a positive multiple of the cluster size %u",
                        name, (unsigned long long)size, p->cs);
    if (size / p->cs > (uint64_t)UINT32_MAX * MD_ENTRIES)
        return srrs_err(-EINVAL, "volume %s: too large", name);
    struct srrs_bdev *b = srrs_bdev_open(p->core, name);
    if (b) {
        srrs_bdev_close(&b);
        return srrs_err(-EEXIST, "volume %s: a bdev of that name already exists", name);
    }
    struct lv_op op = {.name = name, .tenant = tenant, .size = size, .thin = thin};
    rc = op_run(p, &op, p_create);
    if (rc && op.vol) {
        /* Created but not fully allocated (thick): take it back. */
        struct lv_op d = {.vol = op.vol};
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", srrs_last_error());
        op_run(p, &d, p_delete);
        return srrs_err(rc, "%s", msg);
    }
    if (rc)
        return rc;
    rc = vol_register(p, op.vol);
    if (rc) {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", srrs_last_error());
        struct lv_op d = {.vol = op.vol};
        op_run(p, &d, p_delete);
        return srrs_err(rc, "%s", msg);
    }
    if (out)
        vol_fill_info(p, op.vol, out);
    return 0;
}

static struct lv_vol *vol_find(struct srrs_pool *p, const char *name)
{
    pthread_mutex_lock(&p->lock);
    struct lv_vol *v = name ? vol_lookup(p, name) : NULL;
    pthread_mutex_unlock(&p->lock);
    if (!v)
        srrs_err(-ENOENT, "pool %s has no volume %s", p->name, name ? name : "(null)");
    return v;
}

int srrs_lvol_delete(struct srrs_pool *p, const char *name)
{
    struct lv_vol *v = vol_find(p, name);
    if (!v)
        return -ENOENT;
    if (__atomic_load_n(&p->drain, __ATOMIC_ACQUIRE))
        return srrs_err(-EBUSY, "volume %s: pool %s is draining a fragment; delete it afterwards",
                        name, p->name);
    if (v->bdev) {
        int rc = srrs_bdev_delete(p->core, name);
        if (rc)
            return rc;
    }
    struct lv_op op = {.vol = v};
    return op_run(p, &op, p_delete);
}

int srrs_lvol_resize(struct srrs_pool *p, const char *name, uint64_t size)
{
    struct lv_vol *v = vol_find(p, name);
    if (!v)
        return -ENOENT;
    if (size < v->size)
        return srrs_err(-EINVAL, "volume %s: shrinking (%llu -> %llu bytes) is not supported", name,
                        (unsigned long long)v->size, (unsigned long long)size);
    if (size % p->cs)
        return srrs_err(-EINVAL, "volume %s: size %llu is not a multiple of the cluster size %u", name,
                        (unsigned long long)size, p->cs);
    if (size == v->size)
        return 0;
    struct lv_op op = {.vol = v, .size = size};
    int rc = op_run(p, &op, p_resize);
    if (rc)
        return rc;
    if (v->bdev) {
        /* The map is already large enough when reactors see the new size. */
        __atomic_store_n(&v->bdev->num_blocks, size / LV_BS, __ATOMIC_RELEASE);
        __atomic_store_n(&v->bdev->size, size, __ATOMIC_RELEASE);
    }
    return 0;
}

int srrs_lvol_list(struct srrs_pool *p, struct srrs_lvol_info *out, int max)
{
    int n = 0;
    pthread_mutex_lock(&p->lock);
    for (uint32_t h = 0; h < VHASH; h++)
        for (struct lv_vol *v = p->vhash[h]; v; v = v->hnext, n++)
            if (n < max)
                vol_fill_info(p, v, &out[n]);
    pthread_mutex_unlock(&p->lock);
    return n;
}

int srrs_lvol_get_info(struct srrs_pool *p, const char *name, struct srrs_lvol_info *out)
{
    struct lv_vol *v = vol_find(p, name);
    if (!v)
        return -ENOENT;
    vol_fill_info(p, v, out);
    return 0;
}

int srrs_pool_tenant_set(struct srrs_pool *p, const char *name, uint64_t quota)
{
    if (!name || !*name || strlen(name) >= SRRS_NAME_MAX)
        return srrs_err(-EINVAL, "tenant name must be 1..63 bytes");
    struct lv_op op = {.name = name, .quota = quota};
    return op_run(p, &op, p_tenant_set);
}

int srrs_pool_tenant_delete(struct srrs_pool *p, const char *name)
{
    struct lv_op op = {.name = name ? name : ""};
    return op_run(p, &op, p_tenant_delete);
}

int srrs_pool_tenant_get_info(struct srrs_pool *p, const char *name, struct srrs_pool_tenant_info *out)
{
    struct lv_tenant *t = name ? tenant_lookup(p, name) : NULL;
    if (!t)
        return srrs_err(-ENOENT, "tenant %s does not exist", name ? name : "(null)");
    memset(out, 0, sizeof(*out));
    snprintf(out->name, sizeof(out->name), "%s", t->name);
    out->quota = t->quota_cl * p->cs;
    out->used_clusters = __atomic_load_n(&t->used, __ATOMIC_RELAXED);
    out->quota_failures = t->failures;
    return 0;
}

/* ---- superblocks and the metadata scan (control thread, at open) ---------- */

static int pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    uint8_t *b = buf;
    while (len) {
        ssize_t n = pread(fd, b, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0) { /* past the end of a file: zeroes */
            memset(b, 0, len);
            return 0;
        }
        b += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
    const uint8_t *b = buf;
    while (len) {
        ssize_t n = pwrite(fd, b, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        b += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static bool all_zero(const void *buf, size_t len)
{
    const uint8_t *b = buf;
    for (size_t i = 0; i < len; i++)
        if (b[i])
            return false;
    return true;
}

static bool crc_ok(const void *buf, size_t len, size_t crc_off)
{
    uint8_t tmp[MD_PAGE];
    memcpy(tmp, buf, len);
    uint32_t want;
    memcpy(&want, tmp + crc_off, 4);
    memset(tmp + crc_off, 0, 4);
    return srrs_crc32c(0, tmp, len) == want;
}

static bool sb_valid(const struct sb *s)
{
    return s->magic == SB_MAGIC && s->version == LV_VERSION && crc_ok(s, MD_PAGE, 4) &&
           s->cluster_size && s->frag_idx < LV_MAX_FRAGS;
}

static void sb_build(struct srrs_pool *p, uint32_t fi, uint8_t *buf)
{
    memset(buf, 0, MD_PAGE);
    struct sb *s = (struct sb *)buf;
    s->magic = SB_MAGIC;
    s->seq = p->sb_seq;
    s->version = LV_VERSION;
    s->cluster_size = p->cs;
    s->frag_idx = fi;
    s->nfrags = LV_MAX_FRAGS;
    s->placement = (uint32_t)p->placement;
    memcpy(s->pool_uuid, p->uuid, 16);
    snprintf(s->name, sizeof(s->name), "%s", p->name);
    for (int i = 0; i < LV_MAX_FRAGS; i++) {
        struct lv_frag *f = &p->frags[i];
        struct sb_frag *t = &s->frags[i];
        t->state = (uint32_t)f->state;
        if (f->state == FS_EMPTY)
            continue;
        memcpy(t->uuid, f->uuid, 16);
        t->ram = f->ram;
        t->size = f->size;
        t->nclusters = f->nclusters;
        t->data_off = f->data_off;
        t->md_slots = f->md_slots;
        t->weight = f->weight;
        snprintf(t->path, sizeof(t->path), "%s", f->path);
    }
    s->crc = srrs_crc32c(0, buf, MD_PAGE);
}

/* Control thread. Writes copy A on every persistent fragment, syncs, then copy B:
 * a crash leaves every fragment with one copy of the old or the new table. */
static int sb_write_all(struct srrs_pool *p)
{
    uint8_t *buf = aligned_alloc(4096, MD_PAGE);
    if (!buf)
        return srrs_err(-ENOMEM, "out of memory");
    p->sb_seq++;
    int rc = 0;
    for (int copy = 0; copy < 2 && !rc; copy++) {
        for (int i = 0; i < LV_MAX_FRAGS && !rc; i++) {
            struct lv_frag *f = &p->frags[i];
            if ((f->state != FS_ACTIVE && f->state != FS_DRAINING) || f->ram)
                continue;
            int fd = open(f->path, O_RDWR | O_CLOEXEC);
            if (fd < 0) {
                rc = srrs_err(-errno, "pool %s: cannot open fragment %s: %s", p->name, f->path,
                              strerror(errno));
                break;
            }
            sb_build(p, (uint32_t)i, buf);
            rc = pwrite_full(fd, buf, MD_PAGE, (uint64_t)copy * MD_PAGE);
            if (!rc && fdatasync(fd))
                rc = -errno;
            close(fd);
            if (rc)
                rc = srrs_err(rc, "pool %s: writing the superblock of %s: %s", p->name, f->path,
                              strerror(-rc));
        }
    }
    free(buf);
    return rc;
}

enum { FR_FRESH, FR_OURS, FR_FOREIGN, FR_MISSING };

struct frag_probe {
    int kind;
    bool exists;
    struct sb a, b;
    bool a_ok, b_ok;
    const struct sb *best;
};

static int probe(const char *path, struct frag_probe *pr)
{
    memset(pr, 0, sizeof(*pr));
    struct stat st;
    if (stat(path, &st)) {
        if (errno != ENOENT)
            return srrs_err(-errno, "fragment %s: %s", path, strerror(errno));
        pr->kind = FR_MISSING;
        return 0;
    }
    pr->exists = true;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return srrs_err(-errno, "fragment %s: cannot open: %s", path, strerror(errno));
    int rc = pread_full(fd, &pr->a, MD_PAGE, 0);
    if (!rc)
        rc = pread_full(fd, &pr->b, MD_PAGE, MD_PAGE);
    close(fd);
    if (rc)
        return srrs_err(rc, "fragment %s: cannot read its superblock: %s", path, strerror(-rc));
    pr->a_ok = sb_valid(&pr->a);
    pr->b_ok = sb_valid(&pr->b);
    if (pr->a_ok || pr->b_ok) {
        pr->kind = FR_OURS;
        pr->best = !pr->b_ok || (pr->a_ok && pr->a.seq >= pr->b.seq) ? &pr->a : &pr->b;
    } else if (pr->a.magic == SB_MAGIC || pr->b.magic == SB_MAGIC) {
        pr->kind = FR_OURS; /* ours, but no copy is valid */
    } else if (all_zero(&pr->a, MD_PAGE) && all_zero(&pr->b, MD_PAGE)) {
        pr->kind = FR_FRESH;
    } else {
        pr->kind = FR_FOREIGN;
    }
    return 0;
}

static void uuid_str(const uint8_t *u, char *out)
{
    for (int i = 0; i < 16; i++)
        sprintf(out + 2 * i, "%02x", u[i]);
}

/* Opens (and on a fresh fragment lays out) fragment fi's bdev. */
static int frag_attach(struct srrs_pool *p, int fi, const struct srrs_pool_frag_spec *spec, bool layout,
                       bool md_here, uint32_t md_slots)
{
    struct lv_frag *f = &p->frags[fi];
    f->pool = p;
    snprintf(f->bdev_name, sizeof(f->bdev_name), "%.40s.f%d", p->name, fi & 0xff);
    int rc;
    bool ram = spec->path == NULL;
    if (ram) {
        rc = srrs_bdev_create_malloc(p->core, f->bdev_name, spec->size, LV_BS);
        snprintf(f->path, sizeof(f->path), "ram");
        f->fresh = true;
    } else {
        struct stat st;
        f->fresh = stat(spec->path, &st) != 0;
        rc = srrs_bdev_create_file(p->core, f->bdev_name, spec->path, layout ? spec->size : 0, LV_BS);
        snprintf(f->path, sizeof(f->path), "%s", spec->path);
    }
    if (rc)
        return rc;
    f->bdev = srrs_bdev_open(p->core, f->bdev_name);
    if (!f->bdev)
        return -ENOENT;
    f->ram = ram;
    if (layout) {
        f->size = f->bdev->size;
        f->weight = spec->weight ? spec->weight : 100;
        f->md_slots = 0;
        if (md_here) {
            uint64_t auto_slots = f->size / 256 / MD_SLOT; /* 1/256 of the fragment */
            f->md_slots = md_slots ? md_slots : SRRS_MAX(256, SRRS_MIN(auto_slots, 131072));
        }
        f->data_off = f->md_slots ? MD_AREA_OFF + f->md_slots * MD_SLOT : 0;
        f->data_off = (f->data_off + p->cs - 1) & ~((uint64_t)p->cs - 1);
        if (f->size <= f->data_off + p->cs)
            return srrs_err(-ENOSPC, "fragment %s: %llu bytes hold no cluster after %llu bytes of metadata",
                            f->path, (unsigned long long)f->size, (unsigned long long)f->data_off);
        f->nclusters = (f->size - f->data_off) / p->cs;
        if (getrandom(f->uuid, 16, 0) != 16)
            return srrs_err(-EIO, "getrandom failed");
    } else if (f->bdev->size < f->size) {
        return srrs_err(-EINVAL, "fragment %s: %llu bytes, the pool expects %llu", f->path,
                        (unsigned long long)f->bdev->size, (unsigned long long)f->size);
    }
    f->used = calloc((f->nclusters + 63) / 64, 8);
    f->slot_used = calloc((f->md_slots + 63) / 64 + 1, 8);
    if (!f->used || !f->slot_used)
        return srrs_err(-ENOMEM, "out of memory");
    f->state = f->state ? f->state : FS_ACTIVE;
    return 0;
}

/* One metadata page seen by the scan: the newest copy of a (volume, page) identity. */
struct scan_pg {
    struct scan_pg *next;
    uint8_t uuid[16];
    uint32_t idx;
    uint32_t frag;
    uint64_t slot;
    uint64_t seq;
    uint8_t *page;
};

struct scan {
    struct scan_pg **h;
    uint32_t nb;
    struct fixup {
        uint32_t frag;
        uint64_t slot;
        int copy;       /* -1: both copies get a FREE page */
        uint8_t *page;
    } *fix;
    size_t nfix, capfix;
};

static int scan_fix(struct scan *s, uint32_t frag, uint64_t slot, int copy, const uint8_t *page)
{
    if (s->nfix == s->capfix) {
        size_t cap = s->capfix ? s->capfix * 2 : 64;
        void *n = realloc(s->fix, cap * sizeof(*s->fix));
        if (!n)
            return -ENOMEM;
        s->fix = n;
        s->capfix = cap;
    }
    uint8_t *pg = malloc(MD_PAGE);
    if (!pg)
        return -ENOMEM;
    if (page)
        memcpy(pg, page, MD_PAGE);
    s->fix[s->nfix++] = (struct fixup){frag, slot, copy, pg};
    return 0;
}

static bool md_valid(struct srrs_pool *p, const uint8_t *pg)
{
    const struct md_hdr *h = (const struct md_hdr *)pg;
    return h->magic == MD_MAGIC && !memcmp(h->pool_uuid, p->uuid, 16) && crc_ok(pg, MD_PAGE, 4) &&
           (h->kind == PK_VOL || h->kind == PK_MAP || h->kind == PK_FREE);
}

static bool md_ours(struct srrs_pool *p, const uint8_t *pg)
{
    const struct md_hdr *h = (const struct md_hdr *)pg;
    return h->magic == MD_MAGIC || !memcmp(h->pool_uuid, p->uuid, 16);
}

static uint32_t scan_hash(const uint8_t *uuid, uint32_t idx, uint32_t nb)
{
    uint64_t x;
    memcpy(&x, uuid, 8);
    return (uint32_t)((x ^ (idx * 0x9E3779B97F4A7C15ull)) % nb);
}

static int scan_slot(struct srrs_pool *p, struct scan *s, uint32_t fi, uint64_t slot, const uint8_t *a,
                     const uint8_t *b)
{
    struct lv_frag *f = &p->frags[fi];
    bool av = md_valid(p, a), bv = md_valid(p, b);
    if (!av && !bv) {
        if (md_ours(p, a) && md_ours(p, b))
            return srrs_err(-EIO, "pool %s: fragment %s metadata slot %llu: both copies are corrupt; "
                            "refusing to open the pool", p->name, f->path, (unsigned long long)slot);
        if (!all_zero(a, MD_PAGE) && md_ours(p, a))
            pool_msg(p, "fragment %s metadata slot %llu: copy A is invalid (torn first write), copy B "
                     "empty: slot treated as free", f->path, (unsigned long long)slot);
        return 0;
    }
    const struct md_hdr *ha = (const void *)a, *hb = (const void *)b;
    const uint8_t *win = !bv || (av && ha->seq >= hb->seq) ? a : b;
    const uint8_t *other = win == a ? b : a;
    bool other_valid = win == a ? bv : av;
    const struct md_hdr *hw = (const void *)win;
    if (p->seq < hw->seq)
        p->seq = hw->seq;
    if (!other_valid || memcmp(win, other, MD_PAGE)) {
        if (!other_valid && !all_zero(other, MD_PAGE))
            pool_msg(p, "fragment %s metadata slot %llu: copy %c failed its checksum; opened from "
                     "copy %c (seq %llu) and rewrote it", f->path, (unsigned long long)slot,
                     other == a ? 'A' : 'B', win == a ? 'A' : 'B', (unsigned long long)hw->seq);
        if (scan_fix(s, fi, slot, other == a ? 0 : 1, win))
            return -ENOMEM;
    }
    if (hw->kind == PK_FREE)
        return 0;
    uint32_t h = scan_hash(hw->vol_uuid, hw->page_idx, s->nb);
    for (struct scan_pg *e = s->h[h]; e; e = e->next) {
        if (e->idx != hw->page_idx || memcmp(e->uuid, hw->vol_uuid, 16))
            continue;
        /* The same page in two slots (a move cut short): keep the newer, free the other. */
        if (hw->seq > e->seq) {
            if (scan_fix(s, e->frag, e->slot, -1, NULL))
                return -ENOMEM;
            e->frag = fi;
            e->slot = slot;
            e->seq = hw->seq;
            memcpy(e->page, win, MD_PAGE);
        } else if (scan_fix(s, fi, slot, -1, NULL)) {
            return -ENOMEM;
        }
        return 0;
    }
    struct scan_pg *e = calloc(1, sizeof(*e));
    if (!e || !(e->page = malloc(MD_PAGE))) {
        free(e);
        return -ENOMEM;
    }
    memcpy(e->uuid, hw->vol_uuid, 16);
    e->idx = hw->page_idx;
    e->frag = fi;
    e->slot = slot;
    e->seq = hw->seq;
    memcpy(e->page, win, MD_PAGE);
    e->next = s->h[h];
    s->h[h] = e;
    return 0;
}

static int scan_frag(struct srrs_pool *p, struct scan *s, uint32_t fi)
{
    struct lv_frag *f = &p->frags[fi];
    if (!f->md_slots)
        return 0;
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return srrs_err(-errno, "fragment %s: %s", f->path, strerror(errno));
    const uint64_t per = 512; /* slots per read: 4 MiB */
    uint8_t *buf = malloc(per * MD_SLOT);
    int rc = buf ? 0 : -ENOMEM;
    for (uint64_t s0 = 0; !rc && s0 < f->md_slots; s0 += per) {
        uint64_t n = SRRS_MIN(per, f->md_slots - s0);
        rc = pread_full(fd, buf, n * MD_SLOT, MD_AREA_OFF + s0 * MD_SLOT);
        if (rc) {
            rc = srrs_err(rc, "fragment %s: reading metadata: %s", f->path, strerror(-rc));
            break;
        }
        for (uint64_t i = 0; i < n && !rc; i++) {
            const uint8_t *a = buf + i * MD_SLOT;
            if (all_zero(a, 64) && all_zero(a + MD_PAGE, 64) && all_zero(a, MD_SLOT))
                continue;
            rc = scan_slot(p, s, fi, s0 + i, a, a + MD_PAGE);
        }
    }
    free(buf);
    close(fd);
    return rc;
}

static int scan_apply_fixups(struct srrs_pool *p, struct scan *s)
{
    uint8_t *buf = aligned_alloc(4096, MD_PAGE);
    if (!buf)
        return -ENOMEM;
    int rc = 0;
    for (size_t i = 0; i < s->nfix && !rc; i++) {
        struct fixup *x = &s->fix[i];
        struct lv_frag *f = &p->frags[x->frag];
        int fd = open(f->path, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
            rc = srrs_err(-errno, "fragment %s: %s", f->path, strerror(errno));
            break;
        }
        if (x->copy < 0) {
            memset(buf, 0, MD_PAGE);
            struct md_hdr *h = (struct md_hdr *)buf;
            h->magic = MD_MAGIC;
            h->seq = ++p->seq;
            h->kind = PK_FREE;
            h->version = LV_VERSION;
            memcpy(h->pool_uuid, p->uuid, 16);
            h->crc = srrs_crc32c(0, buf, MD_PAGE);
            rc = pwrite_full(fd, buf, MD_PAGE, slot_offset(f, x->slot, 0));
            if (!rc && fdatasync(fd))
                rc = -errno;
            if (!rc)
                rc = pwrite_full(fd, buf, MD_PAGE, slot_offset(f, x->slot, 1));
        } else {
            rc = pwrite_full(fd, x->page, MD_PAGE, slot_offset(f, x->slot, x->copy));
        }
        if (!rc && fdatasync(fd))
            rc = -errno;
        close(fd);
        if (rc)
            rc = srrs_err(rc, "fragment %s: repairing metadata: %s", f->path, strerror(-rc));
        p->repaired++;
    }
    free(buf);
    return rc;
}

static void scan_free(struct scan *s)
{
    for (uint32_t i = 0; s->h && i < s->nb; i++) {
        struct scan_pg *e = s->h[i];
        while (e) {
            struct scan_pg *n = e->next;
            free(e->page);
            free(e);
            e = n;
        }
    }
    free(s->h);
    for (size_t i = 0; i < s->nfix; i++)
        free(s->fix[i].page);
    free(s->fix);
}

static struct scan_pg *scan_find(struct scan *s, const uint8_t *uuid, uint32_t idx)
{
    for (struct scan_pg *e = s->h[scan_hash(uuid, idx, s->nb)]; e; e = e->next)
        if (e->idx == idx && !memcmp(e->uuid, uuid, 16))
            return e;
    return NULL;
}

/* Loads entries of one page into the volume's map, checking every one. */
static int load_entries(struct srrs_pool *p, struct lv_vol *v, struct scan_pg *e)
{
    uint32_t k = e->idx;
    if (k >= v->nchunks)
        return 0; /* beyond the volume (cannot happen: volumes only grow) */
    struct lv_page *pg = calloc(1, sizeof(*pg));
    if (!pg)
        return -ENOMEM;
    pg->pool = p;
    pg->vol = v;
    pg->idx = k;
    pg->frag = e->frag;
    pg->slot = e->slot;
    v->pages[k] = pg;
    struct lv_frag *sf = &p->frags[e->frag];
    bm_set(sf->slot_used, e->slot);
    sf->slots_used++;
    const uint64_t *ent = (const uint64_t *)(e->page + MD_ENTRY_OFF);
    uint64_t *chunk = NULL;
    for (uint32_t i = 0; i < MD_ENTRIES; i++) {
        uint64_t x = ent[i];
        if (!x)
            continue;
        uint64_t c = (uint64_t)k * MD_ENTRIES + i;
        uint32_t fi = e_frag(x);
        struct lv_frag *f = fi < LV_MAX_FRAGS ? &p->frags[fi] : NULL;
        if (!e_alloc(x) || (x & ~E_LOC_MASK) || !f ||
            (f->state != FS_ACTIVE && f->state != FS_DRAINING) || e_cl(x) >= f->nclusters ||
            c >= v->nclusters)
            return srrs_err(-EIO, "pool %s: volume %s cluster %llu maps outside the pool (entry %llx); "
                            "refusing to open", p->name, v->name, (unsigned long long)c,
                            (unsigned long long)x);
        if (f->ram) {
            v->lost++;
            continue;
        }
        if (bm_get(f->used, e_cl(x)))
            return srrs_err(-EIO, "pool %s: cluster %llu of fragment %s is mapped twice (volume %s); "
                            "refusing to open", p->name, (unsigned long long)e_cl(x), f->path, v->name);
        bm_set(f->used, e_cl(x));
        f->nused++;
        if (!chunk && !(chunk = map_chunk(v, c)))
            return -ENOMEM;
        chunk[i] = x;
        v->allocated++;
    }
    return 0;
}

static int build_volumes(struct srrs_pool *p, struct scan *s)
{
    for (uint32_t b = 0; b < s->nb; b++) {
        for (struct scan_pg *e = s->h[b]; e; e = e->next) {
            if (e->idx != 0)
                continue;
            const struct md_vol *mv = (const void *)(e->page + sizeof(struct md_hdr));
            struct lv_vol *v = calloc(1, sizeof(*v));
            if (!v)
                return -ENOMEM;
            v->pool = p;
            memcpy(v->uuid, e->uuid, 16);
            snprintf(v->name, sizeof(v->name), "%.*s", (int)sizeof(mv->name) - 1, mv->name);
            snprintf(v->tenant_name, sizeof(v->tenant_name), "%.*s", (int)sizeof(mv->tenant) - 1,
                     mv->tenant);
            v->size = mv->size;
            v->nclusters = mv->size / p->cs;
            v->thin = mv->thin;
            v->ctime = mv->ctime;
            if (!v->size || v->size % p->cs || vol_alloc_top(v, v->nclusters)) {
                free(v);
                return srrs_err(-EIO, "pool %s: volume record %s is inconsistent", p->name, mv->name);
            }
            if (vol_lookup(p, v->name)) {
                vol_free(v);
                return srrs_err(-EIO, "pool %s: two volumes are named %s", p->name, mv->name);
            }
            vol_link(p, v);
            uint32_t nch = v->nchunks;
            for (uint32_t k = 0; k < nch; k++) {
                struct scan_pg *pe = k ? scan_find(s, v->uuid, k) : e;
                int rc = pe ? load_entries(p, v, pe) : 0;
                if (rc)
                    return rc;
            }
            if (v->tenant_name[0]) {
                struct lv_tenant *t = tenant_lookup(p, v->tenant_name);
                if (!t) {
                    t = calloc(1, sizeof(*t));
                    if (!t)
                        return -ENOMEM;
                    snprintf(t->name, sizeof(t->name), "%s", v->tenant_name);
                    t->next = p->tenants;
                    p->tenants = t;
                }
                v->tenant = t;
                t->used += v->allocated;
                t->nvols++;
            }
            if (v->lost)
                pool_msg(p, "volume %s: %llu cluster(s) lived on a RAM fragment and are gone (read "
                         "as zeroes)", v->name, (unsigned long long)v->lost);
        }
    }
    return 0;
}

/* ---- open / close ------------------------------------------------------------------ */

void lv_drain_stop_msg(void *arg);

struct maint_stop {
    struct srrs_pool *p;
    bool busy;
};

/* Stops the maintenance poller once no barrier is pending (their waiters and
 * the reactors' acks point at the pool). */
static void maint_stop_msg(void *arg)
{
    struct maint_stop *ms = arg;
    struct srrs_pool *p = ms->p;
    ms->busy = p->bar_running || p->bar_next;
    if (!ms->busy)
        srrs_poller_unregister(&p->maint_poller);
}

static void pool_free(struct srrs_pool *p)
{
    for (int tries = 0; p->maint_poller && tries < 5000; tries++) {
        struct maint_stop ms = {.p = p};
        srrs_reactor_call(p->pr, maint_stop_msg, &ms);
        if (ms.busy)
            usleep(1000);
    }
    for (uint32_t h = 0; h < VHASH; h++) {
        struct lv_vol *v = p->vhash[h];
        while (v) {
            struct lv_vol *n = v->hnext;
            if (v->bdev) {
                v->bdev->ctx = v; /* srrs_bdev_delete -> lv_destroy */
                srrs_bdev_delete(p->core, v->name);
            }
            vol_free(v);
            v = n;
        }
        p->vhash[h] = NULL;
    }
    for (int i = 0; i < LV_MAX_FRAGS; i++) {
        struct lv_frag *f = &p->frags[i];
        if (f->bdev) {
            srrs_bdev_close(&f->bdev);
            srrs_bdev_delete(p->core, f->bdev_name);
        }
        free(f->used);
        free(f->slot_used);
    }
    while (p->tenants) {
        struct lv_tenant *t = p->tenants;
        p->tenants = t->next;
        free(t);
    }
    pthread_mutex_destroy(&p->lock);
    free(p->rs);
    free(p);
}

static int pool_create_new(struct srrs_pool *p, const struct srrs_pool_opts *o,
                           const struct srrs_pool_frag_spec *frags, int nfrags, bool any_persistent)
{
    if (getrandom(p->uuid, 16, 0) != 16)
        return srrs_err(-EIO, "getrandom failed");
    for (int i = 0; i < nfrags; i++) {
        bool md_here = frags[i].path ? true : !any_persistent;
        int rc = frag_attach(p, i, &frags[i], true, md_here, o->md_slots);
        if (rc)
            return rc;
        struct lv_frag *f = &p->frags[i];
        if (frags[i].path && !f->fresh) {
            /* An existing device: clear the metadata area so no old page is read. */
            int fd = open(f->path, O_RDWR | O_CLOEXEC);
            if (fd < 0)
                return srrs_err(-errno, "fragment %s: %s", f->path, strerror(errno));
            for (uint64_t off = 0; off < f->data_off && !rc; off += SRRS_BUF_MAX)
                rc = pwrite_full(fd, srrs_zero_buf, SRRS_MIN(SRRS_BUF_MAX, f->data_off - off), off);
            if (!rc && fdatasync(fd))
                rc = -errno;
            close(fd);
            if (rc)
                return srrs_err(rc, "fragment %s: clearing metadata: %s", f->path, strerror(-rc));
        }
    }
    p->created = 1;
    return sb_write_all(p);
}

static int pool_open_existing(struct srrs_pool *p, const struct srrs_pool_frag_spec *frags, int nfrags,
                              struct frag_probe *pr, bool *used_spec)
{
    const struct sb *best = NULL;
    for (int i = 0; i < nfrags; i++) {
        if (!frags[i].path || pr[i].kind != FR_OURS)
            continue;
        if (!pr[i].best)
            return srrs_err(-EIO, "fragment %s: both superblock copies are corrupt; refusing to open "
                            "the pool", frags[i].path);
        if (!best || pr[i].best->seq > best->seq)
            best = pr[i].best;
    }
    memcpy(p->uuid, best->pool_uuid, 16);
    p->cs = best->cluster_size;
    p->cs_shift = (uint32_t)__builtin_ctz(p->cs);
    p->placement = (int)best->placement;
    p->sb_seq = best->seq;
    bool rewrite = false;
    char us[33], them[33];
    uuid_str(p->uuid, us);
    for (int i = 0; i < nfrags; i++) {
        if (!frags[i].path || pr[i].kind != FR_OURS)
            continue;
        const struct sb *own = pr[i].best;
        if (memcmp(own->pool_uuid, p->uuid, 16)) {
            uuid_str(own->pool_uuid, them);
            return srrs_err(-EINVAL, "fragment %s belongs to another pool (%s, uuid %s), not to %s (uuid %s)",
                            frags[i].path, own->name, them, best->name, us);
        }
        const struct sb_frag *t = &best->frags[own->frag_idx];
        if ((t->state != FS_ACTIVE && t->state != FS_DRAINING) ||
            memcmp(t->uuid, own->frags[own->frag_idx].uuid, 16))
            return srrs_err(-EINVAL, "fragment %s was removed from pool %s", frags[i].path, best->name);
        if (!pr[i].a_ok || !pr[i].b_ok) {
            pool_msg(p, "fragment %s: superblock copy %c is invalid; opened from copy %c and rewrote it",
                     frags[i].path, pr[i].a_ok ? 'B' : 'A', pr[i].a_ok ? 'A' : 'B');
            rewrite = true;
        }
        if (own->seq != best->seq || pr[i].a.seq != pr[i].b.seq)
            rewrite = true;
        if (p->frags[own->frag_idx].state)
            return srrs_err(-EINVAL, "fragment %s is listed twice", frags[i].path);
        struct lv_frag *f = &p->frags[own->frag_idx];
        f->state = (int)t->state;
        f->size = t->size;
        f->nclusters = t->nclusters;
        f->data_off = t->data_off;
        f->md_slots = t->md_slots;
        f->weight = t->weight;
        memcpy(f->uuid, t->uuid, 16);
        int rc = frag_attach(p, own->frag_idx, &frags[i], false, false, 0);
        if (rc)
            return rc;
        f->fresh = false;
        used_spec[i] = true;
    }
    /* RAM fragments come back empty, in table order. */
    int next_ram = 0;
    for (int fi = 0; fi < LV_MAX_FRAGS; fi++) {
        const struct sb_frag *t = &best->frags[fi];
        if (t->state != FS_ACTIVE && t->state != FS_DRAINING)
            continue;
        if (!t->ram) {
            if (!p->frags[fi].state)
                return srrs_err(-ENOENT, "pool %s: fragment %d (%s) is missing from the configuration "
                                "or unreadable", best->name, fi, t->path);
            continue;
        }
        while (next_ram < nfrags && frags[next_ram].path)
            next_ram++;
        if (next_ram >= nfrags)
            return srrs_err(-ENOENT, "pool %s: its RAM fragment %d (%llu bytes) is missing from the "
                            "configuration", best->name, fi, (unsigned long long)t->size);
        struct lv_frag *f = &p->frags[fi];
        f->state = (int)t->state;
        f->size = t->size;
        f->nclusters = t->nclusters;
        f->data_off = t->data_off;
        f->md_slots = 0;
        f->weight = t->weight;
        memcpy(f->uuid, t->uuid, 16);
        struct srrs_pool_frag_spec rs = frags[next_ram];
        rs.size = t->size;
        int rc = frag_attach(p, fi, &rs, false, false, 0);
        if (rc)
            return rc;
        used_spec[next_ram++] = true;
    }
    struct scan s = {.nb = 65536};
    s.h = calloc(s.nb, sizeof(*s.h));
    if (!s.h)
        return -ENOMEM;
    int rc = 0;
    for (int fi = 0; fi < LV_MAX_FRAGS && !rc; fi++)
        if (p->frags[fi].state && !p->frags[fi].ram)
            rc = scan_frag(p, &s, (uint32_t)fi);
    if (!rc)
        rc = build_volumes(p, &s);
    if (!rc)
        rc = scan_apply_fixups(p, &s);
    scan_free(&s);
    if (!rc && rewrite)
        rc = sb_write_all(p);
    return rc;
}

int srrs_pool_open(struct srrs_core *core, const char *name, const struct srrs_pool_opts *o,
                   const struct srrs_pool_frag_spec *frags, int nfrags, struct srrs_pool **out)
{
    if (!name || !*name || strlen(name) > 40)
        return srrs_err(-EINVAL, "pool name must be 1..40 bytes");
    if (nfrags < 1 || nfrags > LV_MAX_FRAGS)
        return srrs_err(-EINVAL, "pool %s: 1..%d fragments, got %d", name, LV_MAX_FRAGS, nfrags);
    uint32_t cs = o && o->cluster_size ? o->cluster_size : 1u << 20;
    if (cs & (cs - 1) || cs < 65536 || cs > (64u << 20))
        return srrs_err(-EINVAL, "pool %s: cluster_size must be a power of two in 64KiB..64MiB", name);
    struct srrs_reactor *pr = srrs_core_reactor(core, o ? o->reactor : 0);
    if (!pr)
        return srrs_err(-EINVAL, "pool %s: no reactor %d", name, o ? o->reactor : 0);
    struct srrs_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return srrs_err(-ENOMEM, "out of memory");
    pthread_mutex_init(&p->lock, NULL);
    p->core = core;
    p->pr = pr;
    snprintf(p->name, sizeof(p->name), "%s", name);
    p->cs = cs;
    p->cs_shift = (uint32_t)__builtin_ctz(cs);
    p->placement = o ? o->placement : 0;
    p->sync_md = o ? o->sync_metadata : 1;
    p->nreactors = srrs_core_num_reactors(core);
    p->rs = aligned_alloc(SRRS_CACHELINE, sizeof(struct lv_rstate) * (size_t)p->nreactors);
    if (!p->rs) {
        pthread_mutex_destroy(&p->lock);
        free(p);
        return srrs_err(-ENOMEM, "out of memory");
    }
    memset(p->rs, 0, sizeof(struct lv_rstate) * (size_t)p->nreactors);
    struct frag_probe *pr_ = calloc((size_t)nfrags, sizeof(*pr_));
    bool used[LV_MAX_FRAGS] = {0};
    int rc = pr_ ? 0 : srrs_err(-ENOMEM, "out of memory");
    bool any_ours = false, any_persistent = false;
    for (int i = 0; i < nfrags && !rc; i++) {
        if (!frags[i].path) {
            if (!frags[i].size || frags[i].size % LV_BS)
                rc = srrs_err(-EINVAL, "pool %s: a RAM fragment needs a size, a multiple of 4096", name);
            continue;
        }
        any_persistent = true;
        rc = probe(frags[i].path, &pr_[i]);
        if (rc)
            break;
        if (pr_[i].kind == FR_OURS)
            any_ours = true;
        if (pr_[i].kind == FR_FOREIGN && !(o && o->force_create))
            rc = srrs_err(-EEXIST, "fragment %s holds data that is not an SRRS pool; refusing to "
                          "format it (set force_create to overwrite)", frags[i].path);
        if (pr_[i].kind == FR_MISSING && !frags[i].size)
            rc = srrs_err(-ENOENT, "fragment %s does not exist and has no size to create it with",
                          frags[i].path);
    }
    if (!rc) {
        if (!any_ours) {
            rc = pool_create_new(p, o, frags, nfrags, any_persistent);
            for (int i = 0; i < nfrags; i++)
                used[i] = true;
        } else {
            rc = pool_open_existing(p, frags, nfrags, pr_, used);
        }
    }
    /* Fresh fragments the config lists beyond the pool's table are added now. */
    for (int i = 0; i < nfrags && !rc; i++) {
        if (used[i])
            continue;
        if (frags[i].path && pr_[i].kind == FR_OURS)
            rc = srrs_err(-EINVAL, "fragment %s: already part of the pool", frags[i].path);
        else
            rc = srrs_pool_frag_add(p, &frags[i]) < 0 ? -EINVAL : 0;
        if (rc)
            rc = (int)-EINVAL;
    }
    free(pr_);
    if (!rc) {
        /* Every volume becomes a bdev. */
        for (uint32_t h = 0; h < VHASH && !rc; h++)
            for (struct lv_vol *v = p->vhash[h]; v && !rc; v = v->hnext) {
                rc = vol_register(p, v);
                if (rc)
                    rc = srrs_err(rc, "pool %s: volume %s: %s", name, v->name, srrs_last_error());
            }
    }
    if (rc) {
        char msg[512];
        snprintf(msg, sizeof(msg), "%s", srrs_last_error());
        pool_free(p);
        return srrs_err(rc, "%s", msg);
    }
    *out = p;
    return 0;
}

int srrs_pool_close(struct srrs_pool **pp)
{
    struct srrs_pool *p = pp ? *pp : NULL;
    if (!p)
        return 0;
    for (uint32_t h = 0; h < VHASH; h++)
        for (struct lv_vol *v = p->vhash[h]; v; v = v->hnext)
            if (v->bdev && atomic_load(&v->bdev->open_count))
                return srrs_err(-EBUSY, "pool %s: volume %s is still in use", p->name, v->name);
    /* A running drain stops after the batch in flight (it resumes with the
     * next frag_drain: the fragment stays draining in the superblock). */
    for (int tries = 0; __atomic_load_n(&p->drain, __ATOMIC_ACQUIRE); tries++) {
        struct lv_op op = {.p = p};
        srrs_reactor_call(p->pr, lv_drain_stop_msg, &op);
        if (!op.rc)
            break;
        if (tries > 10000)
            return srrs_err(-EBUSY, "pool %s: a drain is still moving clusters", p->name);
        usleep(1000);
    }
    pool_free(p);
    *pp = NULL;
    return 0;
}

int srrs_pool_get_info(struct srrs_pool *p, struct srrs_pool_info *o)
{
    memset(o, 0, sizeof(*o));
    snprintf(o->name, sizeof(o->name), "%s", p->name);
    memcpy(o->uuid, p->uuid, 16);
    o->cluster_size = p->cs;
    o->placement = (uint32_t)p->placement;
    for (int i = 0; i < LV_MAX_FRAGS; i++) {
        struct lv_frag *f = &p->frags[i];
        if (f->state == FS_EMPTY || f->state == FS_REMOVED)
            continue;
        o->nfrags++;
        uint64_t used = __atomic_load_n(&f->nused, __ATOMIC_RELAXED);
        o->used_clusters += used;
        if (f->state == FS_ACTIVE) {
            o->total_clusters += f->nclusters;
            o->free_clusters += f->nclusters - used;
        } else {
            o->total_clusters += used;
        }
        o->md_slots_total += f->md_slots;
        o->md_slots_used += __atomic_load_n(&f->slots_used, __ATOMIC_RELAXED);
    }
    o->nvolumes = p->nvols;
    o->seq = p->seq;
    o->alloc_failures = p->alloc_failures;
    o->md_writes = p->md_writes;
    o->created = p->created;
    o->repaired = p->repaired;
    return 0;
}

int srrs_pool_frag_get_info(struct srrs_pool *p, int idx, struct srrs_pool_frag_info *o)
{
    if (idx < 0 || idx >= LV_MAX_FRAGS || p->frags[idx].state == FS_EMPTY)
        return srrs_err(-ENOENT, "pool %s has no fragment %d", p->name, idx);
    struct lv_frag *f = &p->frags[idx];
    memset(o, 0, sizeof(*o));
    o->index = idx;
    o->state = f->state;
    o->ram = f->ram;
    o->weight = f->weight;
    snprintf(o->path, sizeof(o->path), "%s", f->path);
    snprintf(o->bdev, sizeof(o->bdev), "%s", f->bdev_name);
    memcpy(o->uuid, f->uuid, 16);
    o->size = f->size;
    o->total_clusters = f->nclusters;
    o->used_clusters = __atomic_load_n(&f->nused, __ATOMIC_RELAXED);
    o->md_slots = f->md_slots;
    o->md_slots_used = __atomic_load_n(&f->slots_used, __ATOMIC_RELAXED);
    o->drain_moved = f->drain_moved;
    o->drain_total = f->drain_total;
    o->drain_error = f->drain_error;
    return 0;
}

int srrs_pool_messages(struct srrs_pool *p, char *buf, int len)
{
    pthread_mutex_lock(&p->lock);
    int n = (int)SRRS_MIN((size_t)(len > 0 ? len - 1 : 0), p->msgs_len);
    memcpy(buf, p->msgs, (size_t)n);
    if (len > 0)
        buf[n] = 0;
    pthread_mutex_unlock(&p->lock);
    return n;
}

/* ---- online fragment add ------------------------------------------------------ */

int srrs_pool_frag_add(struct srrs_pool *p, const struct srrs_pool_frag_spec *spec)
{
    int fi = -1;
    bool any_persistent = false;
    for (int i = 0; i < LV_MAX_FRAGS; i++) {
        if (p->frags[i].state == FS_EMPTY && fi < 0)
            fi = i;
        if ((p->frags[i].state == FS_ACTIVE || p->frags[i].state == FS_DRAINING) && !p->frags[i].ram)
            any_persistent = true;
    }
    for (int i = 0; i < LV_MAX_FRAGS && fi < 0; i++)
        if (p->frags[i].state == FS_REMOVED)
            fi = i; /* no map entry or page refers to a removed fragment: reuse its index */
    if (fi < 0)
        return srrs_err(-ENOSPC, "pool %s already has %d fragments", p->name, LV_MAX_FRAGS);
    if (spec->path) {
        struct frag_probe pr;
        int rc = probe(spec->path, &pr);
        if (rc)
            return rc;
        if (pr.kind == FR_OURS || pr.kind == FR_FOREIGN)
            return srrs_err(-EEXIST, "fragment %s already holds %s", spec->path,
                            pr.kind == FR_OURS ? "SRRS metadata" : "other data");
        if (pr.kind == FR_MISSING && !spec->size)
            return srrs_err(-ENOENT, "fragment %s does not exist and has no size", spec->path);
    } else if (!spec->size || spec->size % LV_BS) {
        return srrs_err(-EINVAL, "a RAM fragment needs a size, a multiple of 4096");
    }
    struct lv_frag *f = &p->frags[fi];
    if (f->state == FS_REMOVED)
        memset(f, 0, sizeof(*f));
    /* Invisible to the allocator (hidden) until the superblocks that list it
     * are durable: a cluster is never mapped on a fragment the table lacks. */
    __atomic_store_n(&f->hidden, true, __ATOMIC_RELEASE);
    int rc = frag_attach(p, fi, spec, true, spec->path ? true : !any_persistent, 0);
    if (!rc)
        rc = sb_write_all(p);
    if (rc) {
        char msg[512];
        snprintf(msg, sizeof(msg), "%s", srrs_last_error());
        __atomic_store_n(&f->state, FS_EMPTY, __ATOMIC_RELEASE);
        if (f->bdev) {
            srrs_bdev_close(&f->bdev);
            srrs_bdev_delete(p->core, f->bdev_name);
        }
        free(f->used);
        free(f->slot_used);
        memset(f, 0, sizeof(*f));
        return srrs_err(rc, "%s", msg);
    }
    __atomic_store_n(&f->hidden, false, __ATOMIC_RELEASE);
    pool_msg(p, "fragment %d (%s, %llu clusters) added", fi, f->path, (unsigned long long)f->nclusters);
    return fi;
}

/* ---- drain (P) ------------------------------------------------------------------ */

/*
 * Moving a cluster off a draining fragment, while I/O continues:
 *   1. a move record enters the allocation hash and the map entry gets
 *      LOCKED: new writes (and zeroing) to that cluster queue on the record;
 *   2. barrier: every I/O submitted before the lock has completed;
 *   3. copy old -> new (reads keep using the old location meanwhile);
 *   4. the entry points at the new cluster and its page is committed, then
 *      the lock is dropped and the held writes go to the new location;
 *   5. barrier: no read still uses the old location; the old cluster is freed.
 * Moves run in batches of max_inflight. Then the metadata pages on the
 * fragment move to other fragments (commit at the new slot, then a FREE page
 * at the old one). The fragment ends with no cluster and no page.
 */

struct lv_move {
    struct lv_alloc a;      /* in the allocation hash: writes to the cluster queue on it */
    struct lv_drain *d;
    uint64_t old_e, new_e;
    uint64_t done;
    void *buf;
    struct srrs_io *io;
    bool reading, failed;
};

struct lv_pmove {
    struct lv_wait w;
    struct lv_drain *d;
    struct lv_page *pg;
    struct lv_page tomb;
    uint32_t old_frag;
    uint64_t old_slot;
    int step;
};

enum { DR_SCAN, DR_BARRIER1, DR_COPY, DR_BARRIER2, DR_PAGES };

struct lv_drain {
    struct srrs_pool *p;
    int idx, max, state, error;
    struct lv_move **mv;
    int n, pending;
    uint32_t bucket, pos;
    uint64_t c;
    bool skipped;
    struct lv_wait bw;
    bool bar_done;
    int pages_inflight;
};

static void drain_bar_done(struct lv_wait *w, int status)
{
    (void)status;
    struct lv_drain *d = (struct lv_drain *)((uint8_t *)w - offsetof(struct lv_drain, bw));
    d->bar_done = true;
}

static void barrier_start(struct lv_drain *d)
{
    d->bar_done = false;
    d->bw.fn = drain_bar_done;
    barrier_request(d->p, &d->bw);
}

static bool barrier_done(struct lv_drain *d) { return d->bar_done; }

static void move_release(struct lv_move *mv, uint64_t e)
{
    struct lv_alloc *a = &mv->a;
    struct srrs_pool *p = mv->d->p;
    map_set(map_chunk(a->vol, a->c), a->c, e);
    alloc_unhash(p, a);
    struct srrs_io *io = a->wq_head;
    a->wq_head = a->wq_tail = NULL;
    while (io) {
        struct srrs_io *n = io->next;
        child_reply(io, 0);
        io = n;
    }
    if (mv->buf)
        srrs_buf_put(p->pr, mv->buf, SRRS_BUF_MAX);
    if (mv->io)
        srrs_io_put(mv->io);
    mv->buf = NULL;
    mv->io = NULL;
    mv->d->pending--;
}

static void move_fail(struct lv_move *mv, int st)
{
    struct srrs_pool *p = mv->d->p;
    if (!mv->d->error)
        mv->d->error = st;
    mv->failed = true;
    if (mv->new_e)
        cluster_put(p, mv->new_e);
    srrs_event_post(p->core, SRRS_EV_BDEV_ERROR, (uint64_t)-st, 0, p->name,
                    "drain of fragment %d: moving a cluster of volume %s failed: %s", mv->d->idx,
                    mv->a.vol->name, strerror(-st));
    move_release(mv, mv->old_e);
}

static void move_committed(struct lv_wait *w, int status)
{
    struct lv_move *mv = (struct lv_move *)w;
    if (status) {
        map_set(map_chunk(mv->a.vol, mv->a.c), mv->a.c, mv->old_e | E_LOCKED);
        move_fail(mv, status);
        return;
    }
    move_release(mv, mv->new_e);
}

static void move_copy_next(struct lv_move *mv);

static void move_io_done(struct srrs_io *io, void *arg)
{
    struct lv_move *mv = arg;
    struct srrs_pool *p = mv->d->p;
    if (io->status) {
        move_fail(mv, io->status);
        return;
    }
    uint64_t len = io->len;
    if (mv->reading) {
        mv->reading = false;
        struct lv_frag *f = &p->frags[e_frag(mv->new_e)];
        srrs_io_prep(io, f->bdev, SRRS_IO_WRITE, f->data_off + (e_cl(mv->new_e) << p->cs_shift) + mv->done,
                     len, mv->buf, move_io_done, mv);
        srrs_bdev_submit(io);
        return;
    }
    mv->done += len;
    move_copy_next(mv);
}

static void move_copy_next(struct lv_move *mv)
{
    struct srrs_pool *p = mv->d->p;
    if (mv->done == p->cs) {
        struct lv_vol *v = mv->a.vol;
        struct lv_page *pg = v->pages[mv->a.c / MD_ENTRIES];
        map_set(map_chunk(v, mv->a.c), mv->a.c, mv->new_e | E_LOCKED);
        mv->a.w.fn = move_committed;
        page_commit(pg, &mv->a.w);
        return;
    }
    struct lv_frag *f = &p->frags[e_frag(mv->old_e)];
    uint64_t len = SRRS_MIN((uint64_t)SRRS_BUF_MAX, p->cs - mv->done);
    mv->reading = true;
    srrs_io_prep(mv->io, f->bdev, SRRS_IO_READ, f->data_off + (e_cl(mv->old_e) << p->cs_shift) + mv->done,
                 len, mv->buf, move_io_done, mv);
    srrs_bdev_submit(mv->io);
}

static void move_start(struct lv_move *mv)
{
    struct srrs_pool *p = mv->d->p;
    int fi = pick_frag(p);
    bool zero;
    mv->new_e = fi >= 0 ? cluster_take(p, fi, &zero) : 0;
    mv->buf = srrs_buf_get(p->pr, SRRS_BUF_MAX);
    mv->io = srrs_io_get(p->pr);
    if (!mv->new_e || !mv->buf || !mv->io) {
        move_fail(mv, mv->new_e ? -ENOMEM : -ENOSPC);
        return;
    }
    move_copy_next(mv);
}

static struct lv_vol *vol_at(struct srrs_pool *p, uint32_t bucket, uint32_t pos)
{
    struct lv_vol *v = p->vhash[bucket];
    while (v && pos--)
        v = v->hnext;
    return v;
}

/* Collects up to max clusters on the fragment; returns true at the end of a pass. */
static bool drain_scan(struct lv_drain *d)
{
    struct srrs_pool *p = d->p;
    uint32_t budget = 1u << 16;
    while (d->n < d->max && budget--) {
        if (d->bucket >= VHASH)
            return true;
        struct lv_vol *v = vol_at(p, d->bucket, d->pos);
        if (!v) {
            d->bucket++;
            d->pos = 0;
            d->c = 0;
            continue;
        }
        if (d->c >= v->nclusters) {
            d->pos++;
            d->c = 0;
            continue;
        }
        uint64_t **top = atomic_load_explicit(&v->top, memory_order_relaxed);
        if (!top[d->c / MD_ENTRIES]) {
            d->c = (d->c / MD_ENTRIES + 1) * MD_ENTRIES;
            continue;
        }
        uint64_t c = d->c++;
        uint64_t e = map_get(v, c);
        if (!e_alloc(e) || (int)e_frag(e) != d->idx)
            continue;
        if ((e & (E_PENDING | E_LOCKED)) || alloc_find(p, v, c)) {
            d->skipped = true;
            continue;
        }
        struct lv_move *mv = calloc(1, sizeof(*mv));
        if (!mv) {
            d->error = -ENOMEM;
            return true;
        }
        mv->d = d;
        mv->a.vol = v;
        mv->a.c = c;
        mv->old_e = e;
        uint32_t h = ahash(v, c);
        mv->a.hnext = p->ahash[h];
        p->ahash[h] = &mv->a;
        map_set(map_chunk(v, c), c, e | E_LOCKED);
        d->mv[d->n++] = mv;
    }
    return false;
}

static void pmove_done(struct lv_wait *w, int status)
{
    struct lv_pmove *pm = (struct lv_pmove *)w;
    struct lv_drain *d = pm->d;
    struct srrs_pool *p = d->p;
    if (status && !d->error)
        d->error = status;
    if (pm->step == 0 && !status) {
        /* The page is durable at its new slot: mark the old slot FREE. */
        pm->step = 1;
        pm->tomb.pool = p;
        pm->tomb.tomb = true;
        pm->tomb.frag = pm->old_frag;
        pm->tomb.slot = pm->old_slot;
        page_commit(&pm->tomb, &pm->w);
        return;
    }
    if (!status)
        slot_free(p, pm->old_frag, pm->old_slot);
    d->pages_inflight--;
    free(pm);
}

/* Moves pages off the fragment; returns true when none is left. */
static bool drain_pages(struct lv_drain *d)
{
    struct srrs_pool *p = d->p;
    bool left = false;
    for (uint32_t h = 0; h < VHASH; h++) {
        for (struct lv_vol *v = p->vhash[h]; v; v = v->hnext) {
            for (uint32_t k = 0; k < v->nchunks; k++) {
                struct lv_page *pg = v->pages[k];
                if (!pg || (int)pg->frag != d->idx)
                    continue;
                left = true;
                if (pg->busy || pg->want || d->pages_inflight >= d->max || d->error)
                    continue;
                struct lv_pmove *pm = calloc(1, sizeof(*pm));
                uint32_t nf;
                uint64_t ns;
                if (!pm || slot_alloc(p, &nf, &ns)) {
                    free(pm);
                    d->error = -ENOSPC;
                    return false;
                }
                pm->d = d;
                pm->pg = pg;
                pm->old_frag = pg->frag;
                pm->old_slot = pg->slot;
                pm->w.fn = pmove_done;
                pg->frag = nf;
                pg->slot = ns;
                d->pages_inflight++;
                page_commit(pg, &pm->w);
            }
        }
    }
    return !left && !d->pages_inflight;
}

static void drain_end(struct lv_drain *d)
{
    struct srrs_pool *p = d->p;
    struct lv_frag *f = &p->frags[d->idx];
    f->drain_error = d->error;
    if (d->error)
        pool_msg(p, "drain of fragment %d (%s) stopped: %s", d->idx, f->path, strerror(-d->error));
    else
        pool_msg(p, "drain of fragment %d (%s) done: %llu clusters moved", d->idx, f->path,
                 (unsigned long long)f->drain_moved);
    srrs_poller_unregister(&p->drain_poller);
    __atomic_store_n(&p->drain, NULL, __ATOMIC_RELEASE);
    free(d->mv);
    free(d);
}

static int drain_poll(void *arg)
{
    struct lv_drain *d = arg;
    struct srrs_pool *p = d->p;
    switch (d->state) {
    case DR_SCAN: {
        bool end = d->error ? true : drain_scan(d);
        if (d->n) {
            barrier_start(d);
            d->state = DR_BARRIER1;
        } else if (end) {
            if (d->error) {
                drain_end(d);
                return 1;
            }
            d->bucket = d->pos = 0;
            d->c = 0;
            if (!d->skipped && !p->frags[d->idx].nused)
                d->state = DR_PAGES;
            d->skipped = false;
        }
        return 1;
    }
    case DR_BARRIER1:
        if (!barrier_done(d))
            return 0;
        d->state = DR_COPY;
        d->pending = d->n;
        for (int i = 0; i < d->n; i++)
            move_start(d->mv[i]);
        return 1;
    case DR_COPY:
        if (d->pending)
            return 0;
        barrier_start(d);
        d->state = DR_BARRIER2;
        return 1;
    case DR_BARRIER2:
        if (!barrier_done(d))
            return 0;
        for (int i = 0; i < d->n; i++) {
            struct lv_move *mv = d->mv[i];
            if (!mv->failed) {
                cluster_put(p, mv->old_e);
                p->frags[d->idx].drain_moved++;
            }
            free(mv);
        }
        d->n = 0;
        d->state = DR_SCAN;
        return 1;
    case DR_PAGES:
        if (p->frags[d->idx].nused) {
            d->state = DR_SCAN;
            return 1;
        }
        if (drain_pages(d) || (d->error && !d->pages_inflight))
            drain_end(d);
        return 1;
    }
    return 0;
}

struct drain_start {
    struct lv_drain *d;
    int rc;
};

static void drain_start_msg(void *arg)
{
    struct drain_start *ds = arg;
    struct srrs_pool *p = ds->d->p;
    p->drain_poller = srrs_poller_register(p->pr, drain_poll, ds->d, 20);
    if (!p->drain_poller) {
        ds->rc = -ENOMEM;
        return;
    }
    __atomic_store_n(&p->drain, ds->d, __ATOMIC_RELEASE);
}

void lv_drain_stop_msg(void *arg);
void lv_drain_stop_msg(void *arg)
{
    struct lv_op *op = arg;
    struct srrs_pool *p = op->p;
    struct lv_drain *d = p->drain;
    if (!d)
        return;
    if (d->n || d->pages_inflight || d->state != DR_SCAN) {
        if (!d->error)
            d->error = -ECANCELED; /* no new batch */
        op->rc = -EBUSY;
        return;
    }
    d->error = -ECANCELED;
    drain_end(d);
}

int srrs_pool_frag_drain(struct srrs_pool *p, int idx, int max_inflight)
{
    if (idx < 0 || idx >= LV_MAX_FRAGS || p->frags[idx].state == FS_EMPTY ||
        p->frags[idx].state == FS_REMOVED)
        return srrs_err(-ENOENT, "pool %s has no fragment %d", p->name, idx);
    if (__atomic_load_n(&p->drain, __ATOMIC_ACQUIRE))
        return srrs_err(-EBUSY, "pool %s is already draining a fragment", p->name);
    struct lv_frag *f = &p->frags[idx];
    uint64_t free_elsewhere = 0, slots_elsewhere = 0;
    for (int i = 0; i < LV_MAX_FRAGS; i++) {
        struct lv_frag *g = &p->frags[i];
        if (i == idx || g->state != FS_ACTIVE)
            continue;
        free_elsewhere += g->nclusters - __atomic_load_n(&g->nused, __ATOMIC_RELAXED);
        slots_elsewhere += g->md_slots - __atomic_load_n(&g->slots_used, __ATOMIC_RELAXED);
    }
    uint64_t used = __atomic_load_n(&f->nused, __ATOMIC_RELAXED);
    if (free_elsewhere < used || slots_elsewhere < f->slots_used)
        return srrs_err(-ENOSPC, "pool %s: the other fragments have %llu free clusters and %llu free "
                        "metadata slots, fragment %d holds %llu clusters and %llu slots", p->name,
                        (unsigned long long)free_elsewhere, (unsigned long long)slots_elsewhere, idx,
                        (unsigned long long)used, (unsigned long long)f->slots_used);
    struct lv_drain *d = calloc(1, sizeof(*d));
    int max = max_inflight > 0 ? SRRS_MIN(max_inflight, 64) : 4;
    if (!d || !(d->mv = calloc((size_t)max, sizeof(*d->mv)))) {
        free(d);
        return srrs_err(-ENOMEM, "out of memory");
    }
    d->p = p;
    d->idx = idx;
    d->max = max;
    int old = f->state;
    /* No new allocation there from now on; durable so a restart keeps it so. */
    __atomic_store_n(&f->state, FS_DRAINING, __ATOMIC_RELEASE);
    int rc = sb_write_all(p);
    if (rc) {
        __atomic_store_n(&f->state, old, __ATOMIC_RELEASE);
        free(d->mv);
        free(d);
        return rc;
    }
    f->drain_total = used;
    f->drain_moved = 0;
    f->drain_error = 0;
    struct drain_start ds = {.d = d};
    srrs_reactor_call(p->pr, drain_start_msg, &ds);
    if (ds.rc) {
        free(d->mv);
        free(d);
        return srrs_err(ds.rc, "pool %s: cannot start the drain", p->name);
    }
    pool_msg(p, "drain of fragment %d (%s) started: %llu clusters, %llu metadata pages", idx, f->path,
             (unsigned long long)used, (unsigned long long)f->slots_used);
    return 0;
}

static void noop_msg(void *arg) { (void)arg; }

int srrs_pool_frag_remove(struct srrs_pool *p, int idx)
{
    if (idx < 0 || idx >= LV_MAX_FRAGS || p->frags[idx].state == FS_EMPTY ||
        p->frags[idx].state == FS_REMOVED)
        return srrs_err(-ENOENT, "pool %s has no fragment %d", p->name, idx);
    struct lv_frag *f = &p->frags[idx];
    if (f->state != FS_DRAINING || __atomic_load_n(&p->drain, __ATOMIC_ACQUIRE))
        return srrs_err(-EBUSY, "fragment %d of pool %s must be drained first", idx, p->name);
    if (__atomic_load_n(&f->nused, __ATOMIC_RELAXED) || __atomic_load_n(&f->slots_used, __ATOMIC_RELAXED))
        return srrs_err(-EBUSY, "fragment %d of pool %s still holds %llu clusters and %llu metadata "
                        "pages", idx, p->name, (unsigned long long)f->nused,
                        (unsigned long long)f->slots_used);
    f->state = FS_REMOVED;
    int rc = sb_write_all(p);
    if (rc) {
        f->state = FS_DRAINING;
        return rc;
    }
    srrs_reactor_call(p->pr, noop_msg, NULL); /* P no longer looks at it */
    if (!f->ram) {
        /* Its superblock goes: the file or device is free for anything again. */
        int fd = open(f->path, O_RDWR | O_CLOEXEC);
        if (fd >= 0) {
            if (pwrite_full(fd, srrs_zero_buf, 2 * MD_PAGE, 0) == 0)
                (void)fdatasync(fd);
            close(fd);
        }
    }
    srrs_bdev_close(&f->bdev);
    srrs_bdev_delete(p->core, f->bdev_name);
    free(f->used);
    free(f->slot_used);
    f->used = f->slot_used = NULL;
    pool_msg(p, "fragment %d (%s) removed", idx, f->path);
    return 0;
}
