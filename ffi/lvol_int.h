/*
 * lvol private header: the pool's on-disk format, in-memory objects and the
 * functions shared by lvol.c (metadata pages, allocation, barriers, data
 * path), lvol_pool.c (open/scan/close, volume and tenant operations,
 * fragment add) and lvol_drain.c (drain and remove). See lvol.c for the design.
 */
#ifndef SRRS_LVOL_INT_H
#define SRRS_LVOL_INT_H

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
enum { FS_EMPTY = SRRS_FRAG_EMPTY, FS_ACTIVE = SRRS_FRAG_ACTIVE, FS_DRAINING = SRRS_FRAG_DRAINING,
       FS_REMOVED = SRRS_FRAG_REMOVED }; /* enum srrs_frag_state (ffi/lvol.h) */

/* Map entries: bits 0..47 cluster on the fragment, 48..55 fragment index + 1.
 * In memory only: PENDING (allocated, not yet committed), LOCKED (moving). */
#define E_CL_MASK ((1ull << 48) - 1)
#define E_LOC_MASK ((1ull << 56) - 1)
#define E_PENDING (1ull << 63)
#define E_LOCKED (1ull << 62)
/* A cluster whose map page may have lived on a missing fragment: unknown, so
 * its I/O fails (never zeroes) until the fragment is back. */
#define E_GONE (1ull << 61)
/* In memory only: a failed commit of this entry's page may have left another
 * value on disk (a failed unmap or move kept this one). Reads use it; a write
 * waits at P until the page is committed again (page_repair_wait in lvol.c). */
#define E_SUSPECT (1ull << 60)
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
    bool ondisk;            /* a copy may have reached the slot: the slot may hold this page */
    bool maybe;             /* the commit in flight (or just failed) may have reached the slot */
    /* A failed commit may have left on disk an image RAM no longer matches
     * (docs/architecture.md, Metadata and its crash safety): its clusters are
     * held, its changed entries are E_SUSPECT, until a commit filled after
     * the failure (fill_gen == mark_gen) is durable. */
    bool unsure;
    bool rw_busy;           /* the repair commit (rw) is queued or in flight */
    bool undoing;           /* a failed commit's waiters run: no commit starts, no drop */
    uint8_t step;
    uint8_t t_fail;         /* test hook: 1 + step this commit fails at (+4: the write is done), 0: none */
    int status;
    uint32_t mark_gen, fill_gen;
    struct lv_wait *cur, *next;
    void *buf;
    struct srrs_io *io;
    struct lv_page *fl_link; /* waiting for / covered by a fragment flush */
    uint64_t *held;         /* clusters a failed image may map: freed once it is superseded */
    uint32_t nheld, capheld;
    struct srrs_io *rq_head, *rq_tail; /* writes to E_SUSPECT entries waiting for the repair */
    struct lv_wait rw;
};

struct lv_frag {
    struct srrs_pool *pool;
    bool flushing;
    struct lv_page *fl_cur, *fl_next;
    int state;
    bool ram;
    bool fresh;            /* created by this process: clusters >= zero_hwm are zero */
    bool hidden;           /* being added: not yet in the durable table */
    bool missing;          /* in the table but not found at open: no bdev, I/O to it fails */
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
    /* Health: set (P) when the fragment's file shrank, vanished or failed an
     * I/O check; from then on its bdev fails every I/O with -EIO. */
    int failed;
    char why[160];
    /* A RAM fragment of a pool with persistent fragments lives in a shared
     * mapping (/dev/shm) that outlives the process: data, then a header,
     * then one "lost" bit per cluster (set for clusters whose memory was gone
     * at open), then one per 4 KiB block of those clusters: a read touching a
     * lost block fails; a write makes the blocks it covers good, and the
     * cluster is good once all of its blocks are. */
    void *shm;
    size_t shm_len;
    uint64_t *lost;        /* per cluster, in the mapping, atomic bits; NULL without shm */
    uint64_t *lost_blk;    /* per block, likewise */
    uint64_t nlost;        /* clusters (atomic) */
    bool ram_gone;         /* the mapping was missing or not ours at open */
    bool shm_unlinked;     /* its file was removed while we run: the data dies with us */
    dev_t shm_dev;         /* the file mapped, to notice it removed or replaced */
    ino_t shm_ino;
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
    uint64_t lost;          /* clusters whose RAM was gone (atomic): reads fail until rewritten */
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
    uint64_t alloc_failures, md_writes, md_flushes;
    uint32_t md_unsure;           /* pages with lv_page.unsure (P; read by get_info) */
    uint32_t md_inflight;         /* page commits in flight (P): close waits for them */
    uint8_t t_fail[16];           /* test hook (P): lv_page.t_fail of the next commits, in order */
    uint32_t t_fail_n;
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
    /* fragment health check (P): every HEALTH_PERIOD, or at once after an I/O error */
    struct srrs_poller *health_poller;
    uint64_t health_ticks;
    int health_due;        /* atomic: an I/O on a fragment failed */
    int health_ifd;        /* inotify on the fragments' files: wakes the check when idle */
    uint64_t health_ios;   /* the fragments' I/O count at the last tick */
    bool health_owed;      /* I/O ran since the last check: one more before the tick rests */
    uint32_t nfailed;
    bool degraded;                /* a fragment of the table is missing: no allocation */
    struct srrs_pool *onext;      /* open pools of this process (by uuid) */
    bool registered;
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


static inline bool bm_get(const uint64_t *bm, uint64_t i) { return bm[i >> 6] >> (i & 63) & 1; }
static inline void bm_set(uint64_t *bm, uint64_t i) { bm[i >> 6] |= 1ull << (i & 63); }
static inline void bm_clr(uint64_t *bm, uint64_t i) { bm[i >> 6] &= ~(1ull << (i & 63)); }

/* First clear bit in [0, n) starting at hint, wrapping; n if none. */
static inline uint64_t bm_find_free(const uint64_t *bm, uint64_t n, uint64_t hint)
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

static inline uint32_t str_hash(const char *s, uint32_t mod)
{
    uint32_t h = 2166136261u;
    while (*s)
        h = (h ^ (uint8_t)*s++) * 16777619u;
    return h % mod;
}

static inline struct lv_vol *vol_lookup(struct srrs_pool *p, const char *name)
{
    for (struct lv_vol *v = p->vhash[str_hash(name, VHASH)]; v; v = v->hnext)
        if (!strcmp(v->name, name))
            return v;
    return NULL;
}

static inline void vol_link(struct srrs_pool *p, struct lv_vol *v)
{
    uint32_t h = str_hash(v->name, VHASH);
    v->hnext = p->vhash[h];
    p->vhash[h] = v;
    p->nvols++;
}

static inline void vol_unlink(struct srrs_pool *p, struct lv_vol *v)
{
    struct lv_vol **pp = &p->vhash[str_hash(v->name, VHASH)];
    while (*pp && *pp != v)
        pp = &(*pp)->hnext;
    if (*pp) {
        *pp = v->hnext;
        p->nvols--;
    }
}

static inline struct lv_tenant *tenant_lookup(struct srrs_pool *p, const char *name)
{
    for (struct lv_tenant *t = p->tenants; t; t = t->next)
        if (!strcmp(t->name, name))
            return t;
    return NULL;
}

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
    const uint8_t *uuid;    /* create: the volume's uuid (NULL: a random one) */
    uint64_t size, quota;
    uint64_t old_size;      /* resize: the size before */
    int thin;
    struct lv_vol *vol;
    /* thick allocation */
    uint64_t next_c, end_c;
    int window;
};

void lv_pool_msg(struct srrs_pool *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int lv_degraded_err(struct srrs_pool *p, const char *what);

/* Bits [from, to) of an atomic bitmap: clear them / are any set. */
static inline void bm_clr_range_atomic(uint64_t *bm, uint64_t from, uint64_t to)
{
    while (from < to) {
        uint64_t n = SRRS_MIN(64 - (from & 63), to - from);
        uint64_t m = (n == 64 ? ~0ull : ((1ull << n) - 1)) << (from & 63);
        __atomic_fetch_and(&bm[from >> 6], ~m, __ATOMIC_ACQ_REL);
        from += n;
    }
}

static inline bool bm_any_atomic(const uint64_t *bm, uint64_t from, uint64_t to)
{
    while (from < to) {
        uint64_t n = SRRS_MIN(64 - (from & 63), to - from);
        uint64_t m = (n == 64 ? ~0ull : ((1ull << n) - 1)) << (from & 63);
        if (__atomic_load_n(&bm[from >> 6], __ATOMIC_ACQUIRE) & m)
            return true;
        from += n;
    }
    return false;
}

/* First block bit of cluster cl, and blocks per cluster. */
static inline uint64_t lv_blk0(struct lv_frag *f, uint64_t cl) { return cl << (f->pool->cs_shift - 12); }
static inline uint64_t lv_blks(struct lv_frag *f) { return 1ull << (f->pool->cs_shift - 12); }

/* Is cluster cl marked lost (its RAM was gone at open)? Any reactor; one load
 * when the fragment has no lost cluster. */
static inline bool lv_lost_get(struct lv_frag *f, uint64_t cl)
{
    return __atomic_load_n(&f->nlost, __ATOMIC_RELAXED) && f->lost &&
           (__atomic_load_n(&f->lost[cl >> 6], __ATOMIC_ACQUIRE) >> (cl & 63) & 1);
}

/* Does [coff, coff + len) of lost cluster cl touch a block not yet rewritten? */
static inline bool lv_lost_range(struct lv_frag *f, uint64_t cl, uint64_t coff, uint64_t len)
{
    uint64_t b = lv_blk0(f, cl);
    return bm_any_atomic(f->lost_blk, b + (coff >> 12), b + ((coff + len + 4095) >> 12));
}

/* Cluster cl is good again (freed, or every block rewritten): clears its bits.
 * Returns whether this call did it (counts drop once). Any reactor. */
static inline bool lv_lost_clear(struct lv_frag *f, uint64_t cl)
{
    if (!lv_lost_get(f, cl))
        return false;
    bm_clr_range_atomic(f->lost_blk, lv_blk0(f, cl), lv_blk0(f, cl) + lv_blks(f));
    uint64_t bit = 1ull << (cl & 63);
    if (!(__atomic_fetch_and(&f->lost[cl >> 6], ~bit, __ATOMIC_ACQ_REL) & bit))
        return false;
    __atomic_sub_fetch(&f->nlost, 1, __ATOMIC_RELAXED);
    return true;
}

/* A write of [coff, coff + len) landed in lost cluster cl: those blocks hold
 * known data now. Returns true when that made the whole cluster good. */
static inline bool lv_lost_write(struct lv_frag *f, uint64_t cl, uint64_t coff, uint64_t len)
{
    uint64_t b = lv_blk0(f, cl);
    /* only whole blocks become known (volume I/O is block-aligned anyway) */
    bm_clr_range_atomic(f->lost_blk, b + ((coff + 4095) >> 12), b + ((coff + len) >> 12));
    return !bm_any_atomic(f->lost_blk, b, b + lv_blks(f)) && lv_lost_clear(f, cl);
}

/* Cluster map: read on any reactor, written on P only. */
static inline uint64_t map_get(struct lv_vol *v, uint64_t c)
{
    uint64_t **top = atomic_load_explicit(&v->top, memory_order_acquire);
    uint64_t *chunk = __atomic_load_n(&top[c / MD_ENTRIES], __ATOMIC_ACQUIRE);
    return chunk ? __atomic_load_n(&chunk[c % MD_ENTRIES], __ATOMIC_ACQUIRE) : 0;
}

static inline void map_set(uint64_t *chunk, uint64_t c, uint64_t e)
{
    __atomic_store_n(&chunk[c % MD_ENTRIES], e, __ATOMIC_RELEASE);
}

static inline uint32_t ahash(struct lv_vol *v, uint64_t c)
{
    return (uint32_t)(((uintptr_t)v >> 6) * 2654435761u ^ c * 40503u) % AHASH;
}

/* Shared between the lvol files (P: pool reactor only). */
extern const struct srrs_bdev_module lv_lvol_module;
struct lv_alloc *lv_alloc_find(struct srrs_pool *p, struct lv_vol *v, uint64_t c);
int lv_alloc_request(struct lv_vol *v, uint64_t c, struct srrs_io *child, struct lv_wait *w);
void lv_alloc_unhash(struct srrs_pool *p, struct lv_alloc *a);
void lv_barrier_request(struct srrs_pool *p, struct lv_wait *w);
void lv_child_reply(struct srrs_io *child, int status);
void lv_cluster_put(struct srrs_pool *p, uint64_t e);
uint64_t lv_cluster_take(struct srrs_pool *p, int fi, bool *zero);
uint64_t *lv_map_chunk(struct lv_vol *v, uint64_t c);
void lv_page_commit(struct lv_page *pg, struct lv_wait *w);
void lv_page_hold(struct lv_page *pg, uint64_t e);
uint64_t lv_page_mark(struct lv_page *pg, uint64_t e);
void lv_page_release(struct srrs_pool *p, struct lv_page *pg);
void lv_page_drop_unused(struct lv_vol *v, uint32_t idx);
struct lv_page *lv_page_get(struct lv_vol *v, uint32_t idx);
int lv_pick_frag(struct srrs_pool *p);
int lv_pwrite_full(int fd, const void *buf, size_t len, uint64_t off);
int lv_sb_write_all(struct srrs_pool *p);
int lv_slot_alloc(struct srrs_pool *p, uint32_t *frag, uint64_t *slot);
void lv_slot_free(struct srrs_pool *p, uint32_t frag, uint64_t slot);
uint64_t lv_slot_offset(struct lv_frag *f, uint64_t slot, int copy);
int lv_vol_alloc_top(struct lv_vol *v, uint64_t nclusters);
void lv_shm_drop(struct srrs_pool *p, int fi, bool unlink_file);
void lv_vol_free(struct lv_vol *v);

#endif
