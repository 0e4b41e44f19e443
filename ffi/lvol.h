/*
 * Storage pool and thin volumes (lvol): the C API Python may call (read
 * verbatim into ffi.cdef()). Plain C, no macros, no includes.
 *
 * Threads: every function is "control" (any non-reactor thread); the ones
 * that change the pool run a message on the pool's reactor and wait for the
 * metadata write to be durable. Returns 0 / a count, or -errno with
 * srrs_last_error() saying what and why.
 */

struct srrs_pool;

enum srrs_pool_placement {
    SRRS_PLACEMENT_SPREAD = 0,      /* new clusters on the emptiest fragment (by weight) */
    SRRS_PLACEMENT_FILL_FIRST = 1,  /* fragments filled in order */
};
/* A fragment's state (struct srrs_pool_frag_info.state). */
enum srrs_frag_state {
    SRRS_FRAG_EMPTY = 0,            /* an empty table slot */
    SRRS_FRAG_ACTIVE = 1,
    SRRS_FRAG_DRAINING = 2,
    SRRS_FRAG_REMOVED = 3,
    SRRS_FRAG_MISSING = 4,          /* in the pool's table but not found at open: the pool is
                                       degraded (I/O to its clusters fails, nothing is allocated) */
};

struct srrs_pool_frag_spec {
    const char *path;       /* file (created sparse), partition or block device; NULL: RAM */
    uint64_t size;          /* file: size to create; RAM: bytes; block device: 0 = whole */
    uint32_t weight;        /* placement preference, 1..1000 (0: 100) */
    uint32_t engine;        /* file I/O engine: 0 auto, SRRS_FILE_URING, _AIO, _THREADS */
};

struct srrs_pool_opts {
    uint32_t cluster_size;  /* bytes, power of two, 64 KiB .. 64 MiB (0: 1 MiB) */
    int placement;          /* enum srrs_pool_placement */
    int reactor;            /* the reactor that allocates and writes metadata */
    int sync_metadata;      /* 1: flush the fragment between the two metadata copies */
    uint32_t md_slots;      /* metadata pages per persistent fragment (0: auto) */
    int force_create;       /* 1: format fragments that hold foreign data */
};

struct srrs_pool_info {
    char name[64];
    uint8_t uuid[16];
    uint32_t cluster_size;
    uint32_t nfrags;
    uint64_t total_clusters;
    uint64_t used_clusters;
    uint64_t free_clusters;
    uint32_t nvolumes;
    uint32_t placement;
    uint64_t seq;
    uint64_t md_slots_total;
    uint64_t md_slots_used;
    uint64_t alloc_failures;
    uint64_t md_writes;
    int32_t created;        /* 1: this open formatted the fragments */
    int32_t repaired;       /* metadata copies rewritten at open */
    uint32_t failed_frags;  /* fragments that shrank, vanished or failed: the pool is degraded */
    uint32_t md_unsure_pages; /* metadata pages whose last commit failed and may be on disk:
                               * writes to their changed clusters wait for a new commit */
    uint64_t lost_clusters; /* mapped clusters whose RAM was gone at open: reads fail until rewritten */
    uint64_t md_flushes;    /* fragment flushes of metadata commits: one covers every page
                             * whose copy A completed before it (group commit) */
};

struct srrs_pool_frag_info {
    int32_t index;
    int32_t state;          /* enum srrs_frag_state */
    int32_t ram;
    uint32_t weight;
    char path[256];
    char bdev[64];
    uint8_t uuid[16];
    uint64_t size;
    uint64_t total_clusters;
    uint64_t used_clusters;
    uint64_t md_slots;
    uint64_t md_slots_used;
    uint64_t drain_moved;   /* clusters moved off this fragment by the current drain */
    uint64_t drain_total;   /* clusters it held when the drain started */
    int32_t drain_error;    /* -errno that stopped the drain, 0 if none */
    int32_t pad;
    int32_t failed;         /* 1: shrank, vanished or failed; I/O to its clusters fails */
    int32_t pad2;
    uint64_t lost_clusters; /* RAM: mapped clusters whose memory was gone at open */
    char error[160];        /* what the health check found (also: a RAM fragment's file removed) */
    char engine[8];         /* file I/O engine in use ("uring", "aio", "threads"); "" for RAM */
};

struct srrs_lvol_info {
    char name[64];
    uint8_t uuid[16];
    char tenant[64];
    uint64_t size;
    uint64_t allocated_clusters;
    uint32_t cluster_size;
    int32_t thin;
    uint64_t lost_clusters; /* clusters whose RAM was gone at open: reads fail until rewritten */
};

struct srrs_pool_tenant_info {
    char name[64];
    uint64_t quota;         /* bytes, 0: none */
    uint64_t used_clusters;
    uint64_t quota_failures;
};

/* control. Opens the pool on these fragments, or formats them when none holds
 * SRRS metadata. Registers every volume as an lvol bdev. Messages about
 * metadata copies it could not use (and repaired) go to srrs_pool_messages. */
int srrs_pool_open(struct srrs_core *core, const char *name, const struct srrs_pool_opts *opts,
                   const struct srrs_pool_frag_spec *frags, int nfrags, struct srrs_pool **out);
/* control. Volumes must not be open by an export. Nulls *pool. */
int srrs_pool_close(struct srrs_pool **pool);
int srrs_pool_get_info(struct srrs_pool *pool, struct srrs_pool_info *out);
/* control. idx 0..15; -ENOENT: empty slot. */
int srrs_pool_frag_get_info(struct srrs_pool *pool, int idx, struct srrs_pool_frag_info *out);
/* control. Newline-separated messages from open/repair (copies into buf, returns length). */
int srrs_pool_messages(struct srrs_pool *pool, char *buf, int len);

/* control. Adds a fragment to a live pool; returns its index. */
int srrs_pool_frag_add(struct srrs_pool *pool, const struct srrs_pool_frag_spec *spec);
/* control. Starts moving every cluster off fragment idx (no new allocation on it);
 * I/O continues. max_inflight: clusters copied at once (throttle, 0: 4). */
int srrs_pool_frag_drain(struct srrs_pool *pool, int idx, int max_inflight);
/* control. Removes a drained (empty) fragment. -EBUSY while it holds clusters. */
int srrs_pool_frag_remove(struct srrs_pool *pool, int idx);

/* control. quota in bytes (0: none). Creates or updates the tenant. */
int srrs_pool_tenant_set(struct srrs_pool *pool, const char *name, uint64_t quota);
int srrs_pool_tenant_delete(struct srrs_pool *pool, const char *name);
int srrs_pool_tenant_get_info(struct srrs_pool *pool, const char *name, struct srrs_pool_tenant_info *out);

/* control. A new volume (also a bdev of that name, block size 4096). thin 0:
 * every cluster is allocated (and zeroed) now. tenant may be NULL or "". */
int srrs_lvol_create(struct srrs_pool *pool, const char *name, uint64_t size, int thin,
                     const char *tenant, struct srrs_lvol_info *out);
/* control. The same with the volume's uuid given (16 bytes; NULL: a random
 * one, as above). The pool keeps it with the volume's record for the volume's
 * life, so a caller can tell which of its creates a volume found at open came
 * from (docs/architecture.md, Volume moves). -EEXIST when another volume of
 * the pool has that uuid. */
int srrs_lvol_create_uuid(struct srrs_pool *pool, const char *name, uint64_t size, int thin,
                          const char *tenant, const uint8_t *uuid, struct srrs_lvol_info *out);
/* control. n thin volumes alike, named names[i * 64] (NUL-terminated, 64
 * bytes apart), created in one pass on the pool reactor with up to 256 records
 * in commit at once, so the records share the fragments' flushes (group
 * commit); a volume is created (and answered) only once its record is durable.
 * rcs[i]: 0 created (out[i] filled when out is given) or its -errno. Returns
 * the number created, or the first failure's -errno (every volume was tried;
 * the ones created stay). n is 1..SRRS_LVOL_MANY_MAX. */
#define SRRS_LVOL_MANY_MAX 65536
int srrs_lvol_create_many(struct srrs_pool *pool, const char *names, uint32_t n, uint64_t size,
                          const char *tenant, struct srrs_lvol_info *out, int *rcs);
/* control. -EBUSY while an export has it open. Frees its clusters. */
int srrs_lvol_delete(struct srrs_pool *pool, const char *name);
/* control. Grows a volume online (shrinking: -EINVAL). */
int srrs_lvol_resize(struct srrs_pool *pool, const char *name, uint64_t size);
/* control. Fills up to max, returns how many volumes the pool has. */
int srrs_lvol_list(struct srrs_pool *pool, struct srrs_lvol_info *out, int max);
int srrs_lvol_get_info(struct srrs_pool *pool, const char *name, struct srrs_lvol_info *out);

/* control. Test hook: `count` more metadata page commits of the pool (after
 * those already queued, at most 16) fail with -EIO at `step` (0: copy A, 1:
 * the flush after copy A, 2: copy B); with `reached` that copy is written and
 * only its completion fails (the disk holds it), else it is not written.
 * count 0 clears the queue. */
int srrs_test_pool_md_fail(struct srrs_pool *pool, uint32_t count, int step, int reached);

/* control. One bit per cluster of the volume (LSB first; len >= ceil(clusters
 * / 8) bytes): set where the cluster is allocated. Returns how many are. What
 * a volume move copies (docs/architecture.md, Cluster, Volume moves). */
int64_t srrs_lvol_alloc_bitmap(struct srrs_pool *pool, const char *name, uint8_t *out,
                               uint64_t len);
