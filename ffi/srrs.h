/*
 * SRRS core: the C API that Python may call (read verbatim into ffi.cdef()).
 *
 * Plain C, no macros, no includes. Every function returns 0 or a positive
 * value on success and -errno on failure; srrs_last_error() then holds a
 * message that says what failed and why (thread-local, valid until the next
 * failing call on the same thread).
 *
 * Threads: "control" means any thread that is not a reactor (the Python
 * control plane). Calls marked "control" may block until the reactors have
 * done their part (they are messages underneath: docs/architecture.md, Threads).
 */

/* ---- versions and errors ---------------------------------------------- */

int srrs_abi_version(void);
const char *srrs_last_error(void);
uint32_t srrs_crc32c(uint32_t crc, const void *buf, size_t len);
uint32_t srrs_crc32c_sw(uint32_t crc, const void *buf, size_t len);
int srrs_crc32c_hw_available(void);

/* ---- core and reactors ------------------------------------------------- */

/* Named values of the ints that cross to Python (cffi exposes each as
 * lib.SRRS_...; ffi/binding.py builds its IntEnums from them). */
enum srrs_poll_mode {
    SRRS_POLL_ADAPTIVE = 0,  /* spin idle_spin_us after work, then sleep in epoll_wait */
    SRRS_POLL_BUSY = 1,      /* never sleep */
};
/* What a poller returns (srrs_poller_fn, ffi/srrs_int.h): whether it found work. */
enum srrs_poller_result {
    SRRS_POLLER_IDLE = 0,
    SRRS_POLLER_BUSY = 1,
};
enum srrs_reactor_state {
    SRRS_REACTOR_CREATED = 0,
    SRRS_REACTOR_RUNNING = 1,
    SRRS_REACTOR_STOPPING = 2,
    SRRS_REACTOR_STOPPED = 3,
};

struct srrs_core;
struct srrs_reactor;

struct srrs_core_opts {
    int nreactors;          /* 1..64 */
    int poll_mode;          /* enum srrs_poll_mode */
    uint32_t idle_spin_us;  /* adaptive: keep spinning this long after work */
    int ncpus;              /* 0: no pinning; else reactor i pinned to cpus[i % ncpus] */
    int cpus[64];
};

struct srrs_reactor_stats {
    uint64_t loops;         /* loop iterations */
    uint64_t busy_ns;       /* iterations that found work */
    uint64_t idle_ns;       /* iterations that found none (spinning) */
    uint64_t sleep_ns;      /* time blocked in epoll_wait */
    uint64_t msgs;          /* messages executed */
    uint64_t wakeups;       /* returns from epoll_wait */
    uint64_t io_outstanding;
    uint64_t pollers;
    int32_t poll_mode;      /* enum srrs_poll_mode */
    int32_t state;          /* enum srrs_reactor_state */
    int32_t tid;
    int32_t cpu;
    uint64_t yields;        /* adaptive idle spin with I/O in flight: sched_yield calls */
};

/* control. Creates the reactors (not yet running). */
int srrs_core_create(const struct srrs_core_opts *opts, struct srrs_core **out);
/* control. Reactors must have returned from srrs_reactor_run(). Nulls *core. */
void srrs_core_destroy(struct srrs_core **core);
int srrs_core_num_reactors(struct srrs_core *core);
/* The thread that calls this becomes reactor idx until it is stopped. */
int srrs_reactor_run(struct srrs_core *core, int idx);
/* control. Blocks until reactor idx is running (or timeout_ms passes: -ETIMEDOUT). */
int srrs_reactor_wait_running(struct srrs_core *core, int idx, int timeout_ms);
/* control. Asks every reactor to finish: stop hooks run, in-flight I/O drains
 * (at most drain_ms), then srrs_reactor_run() returns. Does not wait. */
int srrs_core_stop(struct srrs_core *core, int drain_ms);
/* control. poll_mode: enum srrs_poll_mode; applied by each reactor at its next loop. */
int srrs_core_set_poll_mode(struct srrs_core *core, int poll_mode, uint32_t idle_spin_us);
int srrs_reactor_get_stats(struct srrs_core *core, int idx, struct srrs_reactor_stats *out);

/* ---- events to the control plane -------------------------------------- */

enum srrs_event_type {
    SRRS_EV_NONE = 0,
    SRRS_EV_LOG = 1,
    SRRS_EV_BDEV_ERROR = 2,
    SRRS_EV_CONN_UP = 10,
    SRRS_EV_CONN_DOWN = 11,
    SRRS_EV_KATO_EXPIRED = 12,
    SRRS_EV_PROTO_ERROR = 13,
    SRRS_EV_VHOST_STOPPED = 20,
    SRRS_EV_VHOST_BROKEN = 21,
    SRRS_EV_QUOTA = 30,
    SRRS_EV_POOL_FULL = 31,
    SRRS_EV_FRAG_FAILED = 32, /* a = fragment index: its file shrank, vanished, failed or is missing */
    SRRS_EV_RAM_LOST = 33,    /* a = fragment index, b = clusters whose RAM was gone at open */
    SRRS_EV_MIRROR_DOWN = 40,
    SRRS_EV_MIRROR_UP = 41,
    SRRS_EV_MIRROR_READ_ERR = 42, /* a = local read errors so far, b = offset: served by the peer */
};

struct srrs_event {
    uint32_t type;          /* enum srrs_event_type */
    int32_t reactor;
    uint64_t a;
    uint64_t b;
    char obj[64];           /* object name (bdev, connection, device) */
    char msg[160];
};

/* Readable eventfd: becomes readable when events are queued. */
int srrs_core_event_fd(struct srrs_core *core);
/* any thread. 1: *out filled; 0: none queued. */
int srrs_core_event_poll(struct srrs_core *core, struct srrs_event *out);
uint64_t srrs_core_events_dropped(struct srrs_core *core);

/* ---- block devices ----------------------------------------------------- */

enum srrs_io_op {
    SRRS_IO_READ = 0,
    SRRS_IO_WRITE = 1,
    SRRS_IO_FLUSH = 2,
    SRRS_IO_WRITE_ZEROES = 3,
    SRRS_IO_UNMAP = 4,
    SRRS_IO_NOPS = 5,
};
/* Latency classes of struct srrs_bdev_latency. */
enum srrs_lat_class {
    SRRS_LAT_READ = 0,
    SRRS_LAT_WRITE = 1,
    SRRS_LAT_OTHER = 2,      /* flush, unmap, write-zeroes */
    SRRS_LAT_NOPS = 3,
};

struct srrs_bdev_info {
    char name[64];
    char module[16];
    char path[256];
    uint64_t num_blocks;
    uint32_t block_size;
    uint32_t open_count;
    uint64_t reads;
    uint64_t writes;
    uint64_t bytes_read;
    uint64_t bytes_written;
    uint64_t flushes;
    uint64_t unmaps;
    uint64_t write_zeroes;
    uint64_t errors;
    uint64_t direct_ios;    /* file: I/Os sent with O_DIRECT */
    uint64_t buffered_ios;  /* file: I/Os sent through the page cache */
    char engine[8];         /* file: "uring", "aio" or "threads" (the engine in use); else "" */
};

/* Latency of a bdev's successful I/Os, submit -> completion, in three
 * classes: [0] reads, [1] writes, [2] other (flush, unmap, write-zeroes).
 * buckets: log-linear microseconds (ffi/lathist.py has the layout: buckets
 * 0..7 are 0..7 us, then 8 per power of two, the last from 2^24 us up). */
struct srrs_bdev_latency {
    uint64_t sum_ns[3];
    uint64_t buckets[3][177];
};

/* control. Names are unique, 1..63 bytes. size in bytes, multiple of block_size. */
int srrs_bdev_create_malloc(struct srrs_core *core, const char *name, uint64_t size, uint32_t block_size);
int srrs_bdev_create_null(struct srrs_core *core, const char *name, uint64_t size, uint32_t block_size);
/* control. path: regular file (created sparse with `size` if missing; an
 * existing smaller one is grown to `size` only with SRRS_FILE_GROW, else
 * refused), partition or block device (size 0: use the device's). The bdev
 * owns its file exclusively: an OFD write lock on a file, O_EXCL on a block
 * device; a second owner (this process or another) gets -EBUSY naming the first. */
#define SRRS_FILE_GROW 1
/* The I/O engine (docs/architecture.md, File I/O engines): no flag is auto
 * (io_uring; where it is refused, ENOSYS, EPERM, EACCES, ENOMEM, native AIO
 * if io_setup is allowed and the file takes O_DIRECT; else the worker
 * threads); SRRS_FILE_URING insists on io_uring and SRRS_FILE_AIO on native
 * AIO (refused, or no O_DIRECT: an error saying why); SRRS_FILE_THREADS
 * always uses the worker threads. At most one of the three. */
#define SRRS_FILE_URING 2
#define SRRS_FILE_THREADS 4
#define SRRS_FILE_AIO 8
int srrs_bdev_create_file(struct srrs_core *core, const char *name, const char *path, uint64_t size, uint32_t block_size, uint32_t flags);
/* control. 0 if no file bdev (of any process) owns the regular file at path,
 * else -EBUSY with a message naming the owner. */
int srrs_file_check_free(const char *path);
/* control. -ENOENT unknown, -EBUSY still open by an export or a job. */
int srrs_bdev_delete(struct srrs_core *core, const char *name);
/* control. Fills up to max infos, returns how many bdevs exist. */
int srrs_bdev_list(struct srrs_core *core, struct srrs_bdev_info *out, int max);
int srrs_bdev_get_info(struct srrs_core *core, const char *name, struct srrs_bdev_info *out);
/* control. One pass over every bdev, for a status that stays small at any
 * count (docs/architecture.md, Control plane at scale): the counters summed
 * over all bdevs in *tot (names empty, num_blocks summed), and in top[0..max)
 * the bdevs with the most completed I/Os (ties: the smaller name), busiest
 * first. Returns the number of bdevs; top holds min(that, max). */
int srrs_bdev_top(struct srrs_core *core, struct srrs_bdev_info *top, int max,
                  struct srrs_bdev_info *tot);
/* control. The latency histograms of bdev `name`, summed over every reactor's
 * channel. Each reactor keeps writing while this reads (no lock on the I/O
 * path), so the sums may lag a few I/Os behind and behind srrs_bdev_info's
 * counters: fine for statistics. -ENOENT unknown bdev. */
int srrs_bdev_get_latency(struct srrs_core *core, const char *name, struct srrs_bdev_latency *out);

/* ---- load generator (bdevperf-like) ----------------------------------- */

enum srrs_bench_rw {
    SRRS_RW_RANDREAD = 0,
    SRRS_RW_RANDWRITE = 1,
    SRRS_RW_RANDRW = 2,
    SRRS_RW_READ = 3,
    SRRS_RW_WRITE = 4,
};

struct srrs_verify_map;

struct srrs_bench_opts {
    int rw;                 /* enum srrs_bench_rw */
    int rwmix_read;         /* randrw: percent reads */
    uint32_t bs;            /* bytes; with bs_max > bs: random size in [bs, bs_max] */
    uint32_t bs_max;
    uint32_t qd;
    double time_s;          /* stop after this long (0: no limit) */
    uint64_t max_ios;       /* stop after this many I/Os (0: no limit) */
    uint64_t seed;
    uint64_t offset;        /* byte range the job works in */
    uint64_t span;          /* 0: to the end of the device */
    int misalign;           /* 1: some buffers start 512 B off a 4 KiB boundary */
    struct srrs_verify_map *vmap;  /* verify: writes record CRC32C per block, reads check it */
};

struct srrs_bench_result {
    uint64_t ios;
    uint64_t reads;
    uint64_t writes;
    uint64_t bytes;
    uint64_t errors;
    uint64_t verify_errors;
    uint64_t verified_blocks;
    double elapsed_s;
    double iops;
    double mibps;
    double lat_avg_us;
    double lat_min_us;
    double lat_max_us;
    double lat_p50_us;
    double lat_p99_us;
    double lat_p999_us;
    double busy_pct;        /* the job's reactor, over the run */
    int32_t first_error;    /* -errno of the first failed I/O, 0 if none */
};

/* control. One map per device: num_blocks blocks of block_size bytes. */
int srrs_verify_map_create(uint64_t num_blocks, uint32_t block_size, struct srrs_verify_map **out);
void srrs_verify_map_destroy(struct srrs_verify_map **map);
uint64_t srrs_verify_map_written(struct srrs_verify_map *map);

/* control. Runs a load job against a bdev on reactor `reactor` and waits for it. */
int srrs_bench_bdev(struct srrs_core *core, int reactor, const char *bdev,
                    const struct srrs_bench_opts *opts, struct srrs_bench_result *out);
/* control. The same against two bdevs written as one: every write goes to
 * both at once and completes once both have (the first failure's status),
 * reads go to `bdev`; the size is the smaller one's. */
int srrs_bench_bdev2(struct srrs_core *core, int reactor, const char *bdev, const char *bdev2,
                     const struct srrs_bench_opts *opts, struct srrs_bench_result *out);

/* control. Locks in memory the read-only segments (code, constants) of the
 * core and of libc and libcrypto, which its reactors run on the I/O path: a
 * quiet controller's code is not reclaimed, and its first I/O after a quiet
 * spell takes no major fault. Best effort: locked and wanted bytes are set
 * either way; an error says why some were not (RLIMIT_MEMLOCK). */
int srrs_lock_code(uint64_t *locked, uint64_t *wanted);

/* The platform's wake-up floor (ci/bench-idle): a thread pinned to `cpu`
 * that sleeps in epoll_wait, as a sleeping reactor does, on an eventfd (a
 * vhost-user kick's path) or on a TCP loopback socket that it answers with
 * a byte (an NVMe/TCP command's), and spins spin_us after each wake-up for
 * the next ping. */
enum srrs_wake_probe_mode {
    SRRS_WAKE_PROBE_EVENTFD = 0,
    SRRS_WAKE_PROBE_TCP = 1,
};
struct srrs_wake_probe;
/* control. */
int srrs_wake_probe_create(int cpu, uint32_t spin_us, int mode, struct srrs_wake_probe **out);
void srrs_wake_probe_destroy(struct srrs_wake_probe **probe);
/* control. On reactor `reactor` (the client's, busy-polling): one ping that
 * wakes the sleeper (first_ns, post to answer seen), then busy_n (<= 256)
 * more while it spins (busy_ns: their median). */
int srrs_wake_probe_ping(struct srrs_core *core, int reactor, struct srrs_wake_probe *probe,
                         uint32_t busy_n, uint64_t *first_ns, uint64_t *busy_ns);

/* ---- test hooks (used by the unit tests; cheap, always built) --------- */

/* any thread. Posts a message to reactor `reactor` recording (sender, seq). */
int srrs_test_msg_send(struct srrs_core *core, int reactor, uint32_t sender, uint64_t seq);
/* control. Messages seen from sender on reactor and how many came out of order. */
int srrs_test_msg_check(struct srrs_core *core, int reactor, uint32_t sender,
                        uint64_t *count, uint64_t *order_errors);
/* control. ns from posting a message to an idle reactor to its execution. */
int64_t srrs_test_wake_latency_ns(struct srrs_core *core, int reactor);
/* control. hold 1: reactor `reactor` takes one I/O object and keeps it (an
 * I/O in flight, io_outstanding 1); hold 0: gives it back. */
int srrs_test_io_hold(struct srrs_core *core, int reactor, int hold);
/* control. A timed poller of period_us on reactor `reactor` that counts its
 * runs and empties its eventfd (srrs_test_poller_fd: write to it to fire it).
 * fd_kind 0: the fd is in the reactor's set, no more; 1: the fd wakes a
 * sleeping reactor for it (srrs_poller_set_fd_wakes); 2: and it is its whole
 * duty (srrs_poller_set_fd_only); 3: it is lazy (srrs_poller_set_lazy: its
 * period does not bound a sleep). Delete it before the core. */
struct srrs_test_poller;
int srrs_test_poller_add(struct srrs_core *core, int reactor, uint32_t period_us, int fd_kind,
                         struct srrs_test_poller **out);
int srrs_test_poller_fd(struct srrs_test_poller *t);
uint64_t srrs_test_poller_runs(struct srrs_test_poller *t);
/* Of all test pollers' runs in the process, the number of this one's last
 * (0: never ran): the order they ran in. */
uint64_t srrs_test_poller_seq(struct srrs_test_poller *t);
void srrs_test_poller_del(struct srrs_test_poller **t);
/* control. One synchronous I/O (op: enum srrs_io_op in the low byte, the
 * I/O's flags in the next: 0x100 is a single-path host's, as vhost-user's,
 * see ffi/mirror.h hold_ms) through the reactor, buf copied through a pool
 * buffer. Returns the I/O status. */
int srrs_test_bdev_io(struct srrs_core *core, int reactor, const char *bdev, int op,
                      uint64_t offset, uint64_t len, void *buf);
/* control. What bdev holds for single-path hosts is let go, as when a
 * vhost-user queue stops (ffi/srrs_int.h, release_held). */
int srrs_test_bdev_release_held(struct srrs_core *core, const char *bdev);
/* any thread. The latency bucket (see struct srrs_bdev_latency) of ns nanoseconds. */
uint32_t srrs_test_lat_bucket(uint64_t ns);
/* control. Records `count` completions of class cls (0 read 1 write 2 other)
 * that took ns nanoseconds in bdev's latency histogram, as reactor `reactor`. */
int srrs_test_lat_record(struct srrs_core *core, int reactor, const char *bdev, int cls,
                         uint64_t ns, uint64_t count);
