/*
 * vhost-user-blk: the C API that Python may call (read verbatim into
 * ffi.cdef() after ffi/srrs.h). Plain C, no macros, no includes.
 *
 * Back end (vhost/vq.c): the Python protocol server (vhost/device.py) owns the
 * socket and the message parsing; it drives one srrs_vhost_dev per connected
 * device through these calls. The split virtqueues run on reactors.
 *
 * Client (vhost/client.c): plays the VM for tests and `srrs bench vhost`:
 * guest memory in a memfd, vrings, eventfds; Python does the handshake with
 * the fds this object exposes, then srrs_vhost_client_bench() drives the
 * rings from a reactor through the load generator.
 *
 * Threads: every call is "control" (any non-reactor thread; one at a time
 * per device). Calls that touch a running queue are reactor messages
 * underneath and may block briefly. Return: 0 (or a value >= 0) or -errno
 * with srrs_last_error() set.
 */

/* ---- back end ----------------------------------------------------------- */

struct srrs_vhost_dev;

struct srrs_vhost_vq_info {
    uint32_t index;
    int32_t reactor;        /* -1 when not started */
    int32_t state;          /* 0 stopped, 1 running, 2 stopping, 3 broken */
    uint32_t num;
    uint32_t last_avail_idx;
    uint32_t used_idx;
    uint32_t inflight;      /* requests submitted and not yet in the used ring */
    uint32_t event_idx;
    uint64_t requests;
    uint64_t reads;
    uint64_t writes;
    uint64_t flushes;
    uint64_t discards;
    uint64_t write_zeroes;
    uint64_t get_ids;
    uint64_t errors;        /* requests completed with a non-OK status */
    uint64_t bytes_read;
    uint64_t bytes_written;
    uint64_t calls;         /* call eventfd writes */
    uint64_t resubmitted;   /* in-flight requests resumed from the inflight region */
    uint64_t left_inflight; /* requests left there unanswered when the front end went
                               (a path error: the next back end resubmits them) */
};

/* control. Opens bdev (held until destroy). serial: up to 20 bytes (GET_ID). */
int srrs_vhost_dev_create(struct srrs_core *core, const char *name, const char *bdev,
                          int num_queues, int read_only, const char *serial,
                          struct srrs_vhost_dev **out);
/* control. Stops every queue (draining), unmaps guest memory, closes fds and
 * the bdev. Nulls *dev. */
void srrs_vhost_dev_destroy(struct srrs_vhost_dev **dev);
/* control. Back to the state after create: queues stopped, fds closed, guest
 * memory unmapped, inflight region dropped, broken flag cleared. */
int srrs_vhost_dev_reset(struct srrs_vhost_dev *dev);
/* Virtio feature bits the device offers (VHOST_USER_F_PROTOCOL_FEATURES included). */
uint64_t srrs_vhost_dev_features(struct srrs_vhost_dev *dev);
/* control. Features acked by the driver (checked against the offer: -EINVAL). */
int srrs_vhost_dev_set_features(struct srrs_vhost_dev *dev, uint64_t features);
/* Fills buf with struct virtio_blk_config, zero-padded to len (<= 256). */
int srrs_vhost_dev_get_config(struct srrs_vhost_dev *dev, uint8_t *buf, uint32_t len);
/* 1 and *reason filled (NUL-terminated) once a queue has been stopped for a
 * guest error; 0 otherwise. */
int srrs_vhost_dev_broken(struct srrs_vhost_dev *dev, char *reason, uint32_t len);
int srrs_vhost_dev_num_queues(struct srrs_vhost_dev *dev);
/* An eventfd (owned by the device) that becomes readable when a queue breaks. */
int srrs_vhost_dev_event_fd(struct srrs_vhost_dev *dev);
uint64_t srrs_vhost_dev_capacity(struct srrs_vhost_dev *dev);

/* control. Guest memory. mem_add maps fd (not taken: the caller closes it)
 * at mmap_offset for size bytes; gpa/uaddr ranges must not overlap others.
 * A region identical to a mapped one (same file, offset, gpa, uaddr, size) is
 * kept as it is. mem_remove drops the region (gpa, size); -EBUSY while a
 * running queue's rings live in it. */
int srrs_vhost_mem_add(struct srrs_vhost_dev *dev, int fd, uint64_t gpa, uint64_t size,
                       uint64_t uaddr, uint64_t mmap_offset);
int srrs_vhost_mem_remove(struct srrs_vhost_dev *dev, uint64_t gpa, uint64_t size);
/* control. Replace the whole table (SET_MEM_TABLE): n regions. */
int srrs_vhost_mem_set(struct srrs_vhost_dev *dev, int n, const int *fds, const uint64_t *gpa,
                       const uint64_t *size, const uint64_t *uaddr, const uint64_t *mmap_offset);
int srrs_vhost_mem_count(struct srrs_vhost_dev *dev);

/* control. Ring setup; the queue must be stopped. num: power of two, 1..1024.
 * Addresses are front-end user addresses (translated through the table at start). */
int srrs_vhost_vq_set_num(struct srrs_vhost_dev *dev, int idx, uint32_t num);
int srrs_vhost_vq_set_addr(struct srrs_vhost_dev *dev, int idx, uint64_t desc, uint64_t used,
                           uint64_t avail);
int srrs_vhost_vq_set_base(struct srrs_vhost_dev *dev, int idx, uint32_t base);
/* control. Takes ownership of fd (-1: none). Allowed on a running queue. */
int srrs_vhost_vq_set_kick(struct srrs_vhost_dev *dev, int idx, int fd);
int srrs_vhost_vq_set_call(struct srrs_vhost_dev *dev, int idx, int fd);
/* control. Validates the rings against the memory table and starts the queue
 * on reactor `reactor`; resumes in-flight requests from the inflight region. */
int srrs_vhost_vq_start(struct srrs_vhost_dev *dev, int idx, int reactor);
/* control. Stops taking requests, waits (up to timeout_ms) for the ones in
 * flight and returns the next avail index to process (GET_VRING_BASE). */
int srrs_vhost_vq_stop(struct srrs_vhost_dev *dev, int idx, int timeout_ms);
int srrs_vhost_vq_get_info(struct srrs_vhost_dev *dev, int idx, struct srrs_vhost_vq_info *out);

/* Size of the inflight region for num_queues x queue_size (split rings). */
uint64_t srrs_vhost_inflight_size(uint32_t num_queues, uint32_t queue_size);
/* control. Maps the inflight region (fd not taken). Queues must be stopped. */
int srrs_vhost_set_inflight(struct srrs_vhost_dev *dev, int fd, uint64_t mmap_size,
                            uint64_t mmap_offset, uint32_t num_queues, uint32_t queue_size);

/* ---- client (plays the VM) ----------------------------------------------- */

struct srrs_vhost_client;

struct srrs_vhost_client_mem {
    int fd;
    uint64_t size;
    uint64_t gpa;
    uint64_t uaddr;
};

struct srrs_vhost_client_ring {
    uint64_t desc;          /* front-end virtual addresses (SET_VRING_ADDR) */
    uint64_t avail;
    uint64_t used;
    int kickfd;
    int callfd;
    uint32_t num;
};

/* control. Guest memory in a memfd: num_queues rings of queue_size entries,
 * max_inflight request slots with max_io-byte data buffers, and a 64 KiB
 * scratch area for raw (fuzz) descriptors. Guest physical addresses start at
 * gpa_base; ring addresses are given as this process's virtual addresses
 * (like QEMU's userspace_addr). */
int srrs_vhost_client_create(uint32_t num_queues, uint32_t queue_size, uint32_t max_inflight,
                             uint32_t max_io, uint64_t gpa_base, struct srrs_vhost_client **out);
void srrs_vhost_client_destroy(struct srrs_vhost_client **c);
int srrs_vhost_client_mem(struct srrs_vhost_client *c, struct srrs_vhost_client_mem *out);
int srrs_vhost_client_ring(struct srrs_vhost_client *c, int idx, struct srrs_vhost_client_ring *out);
/* control. Before the rings start: driver features (EVENT_IDX, INDIRECT) and
 * the device geometry (bytes, logical block size). */
int srrs_vhost_client_setup(struct srrs_vhost_client *c, uint64_t features, uint64_t capacity,
                            uint32_t block_size, uint32_t nqueues_used);
/* control. Runs a load job over the rings on reactor `reactor`. */
int srrs_vhost_client_bench(struct srrs_core *core, int reactor, struct srrs_vhost_client *c,
                            const struct srrs_bench_opts *opts, struct srrs_bench_result *out);
/* control. One synchronous request on queue q (type: virtio-blk request type;
 * buf: data for OUT / filled for IN and GET_ID). Returns the virtio status
 * (0 OK, 1 IOERR, 2 UNSUPP) or -errno (-ETIMEDOUT: no answer). */
int srrs_vhost_client_request(struct srrs_vhost_client *c, int q, uint32_t type, uint64_t sector,
                              void *buf, uint32_t len, int timeout_ms);
/* control. Malicious driver for fuzzing: copies n raw descriptors (16 bytes
 * each: addr, len, flags, next) into ring q's table, scratch_len bytes into
 * the scratch area (indirect tables, headers), then publishes the nheads
 * avail entries (raw values, not checked) with avail->idx moved by
 * idx_delta, and kicks. The scratch area's guest address is returned by
 * srrs_vhost_client_scratch(). */
int srrs_vhost_client_post_raw(struct srrs_vhost_client *c, int q, const uint8_t *descs, uint32_t n,
                               const uint16_t *heads, uint32_t nheads, uint16_t idx_delta,
                               const uint8_t *scratch, uint32_t scratch_len);
uint64_t srrs_vhost_client_scratch(struct srrs_vhost_client *c);
/* Used entries the back end has published on ring q (its used->idx). */
int srrs_vhost_client_used_idx(struct srrs_vhost_client *c, int q);
