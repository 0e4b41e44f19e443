/*
 * The mirror's private header (never read by cffi; the contract is ffi/mirror.h):
 * the wire format, the piece and frame pools, the mirror and link structs,
 * and what the four mirror files call of each other (docs/architecture.md, Pair):
 *
 *   mirror_link.c    socket, connection, framing, send/receive, liveness,
 *                    the authentication hooks (ffi/mirror_auth.c); the frame
 *                    dispatch rx_frame
 *   mirror_state.c   host I/O cut into pieces, the piece state machine, stripe
 *                    locks, read leases, mode changes, the data frames' handlers
 *   mirror_resync.c  resync: bitmaps exchanged, stripes copied, its frames
 *   mirror.c         the bdev module and the control API (ffi/mirror.h)
 *
 * Everything here runs on the link's reactor, except the control API's
 * callers. The helpers and the piece pool are inline: they sit on the I/O
 * path of every file, and were inline when the mirror was one file.
 */
#ifndef SRRS_MIRROR_INT_H
#define SRRS_MIRROR_INT_H

#include "srrs_int.h"

#include "mirror.h"
#include "mirror_auth.h"

#include <linux/io_uring.h>

#define M_MAGIC 0x524d5253u /* "SRMR" */
#define M_MAX_VOLS 1024 /* volume ids 0..1023 on one link (the frame header has 16 bits) */
#define M_NPIECES 8192u
/* lease lengths a read waits for a peer's first grant after (re)joining (rl_retry) */
#define RL_FIRST_GRANT 8u
#define M_NFRAMES 16384u
#define M_PIECE_IOV 130 /* a virtio request may carry seg_max (126) segments, plus slack */
#define M_CHUNK SRRS_BUF_MAX
#define M_RXBUF (4u << 20)
#define M_RX_RECV (256u << 10)     /* one recv() into the ring reads at most this */
#define M_RX_DIRECT (64u << 10)    /* larger payloads are received straight into a pool buffer */
#define M_HDR 64
#define M_COPIES 16                /* stripes copied in parallel by a resync source */
/* FWD_DONE status: "not ordered here now, order it yourself or send it again".
 * Modes change on the two sides one after the other, so a forward may reach
 * an owner that no longer orders its stripe (a resync target that just learnt
 * the stripes to copy, while the forwarder is still PAIRED). A code no bdev
 * returns. The forwarder sends it again after a timer tick, at most
 * M_BOUNCE_MAX times (then the host write fails as a path error). */
#define M_REORDER (-EREMCHG)
#define M_BOUNCE_MAX 40

/* enum srrs_mirror_mode (ffi/mirror.h) under short names */
enum {
    MODE_FENCED = SRRS_MIRROR_FENCED,
    MODE_PAIRED = SRRS_MIRROR_PAIRED,
    MODE_SOLO = SRRS_MIRROR_SOLO,
    MODE_RSRC = SRRS_MIRROR_RESYNC_SOURCE,
    MODE_RTGT = SRRS_MIRROR_RESYNC_TARGET,
    MODE_PENDING = SRRS_MIRROR_PENDING,
};

enum {
    T_HELLO = 1, T_PING, T_WRITE, T_WRITE_REF, T_FORWARD, T_ACK, T_FWD_DONE, T_READ,
    T_READ_DATA, T_BITMAP, T_RESYNC, T_RESYNC_DONE, T_MAX
};

struct mhdr {
    uint32_t magic;
    uint8_t type;
    uint8_t flags;
    uint16_t vol;
    uint32_t len;      /* payload bytes */
    uint32_t tag;
    uint64_t seq;
    uint64_t off;
    int32_t status;
    uint32_t crc;      /* CRC32C of the header (crc = 0) and the payload; 0 with a MAC */
    uint64_t aux;
    uint8_t mac[MA_MAC]; /* GMAC of the header (mac = 0) and the payload (ffi/mirror_auth.h) */
} __attribute__((packed));

_Static_assert(sizeof(struct mhdr) == M_HDR, "mirror header is 64 bytes");

enum pkind {
    P_FREE, P_HOST_WRITE, P_HOST_READ, P_PEER_WRITE, P_PEER_FWD, P_PEER_READ, P_COPY,
    P_PEER_RESYNC, P_FLUSH
};

struct mirror;
struct mlink;

struct piece {
    enum pkind kind;
    uint16_t gen;
    uint16_t idx;
    struct mirror *m;
    struct srrs_io *host;
    uint64_t off, len, stripe;
    int iovcnt;
    void *buf;           /* owned pool buffer (peer data, copies) */
    size_t buf_len;
    int status;
    uint8_t local_wait;  /* local I/Os outstanding */
    bool remote_wait;    /* waiting for the peer's answer */
    bool locked;
    bool applied;        /* forwarder: WRITE_REF applied locally */
    bool alone;          /* ordered in SOLO: applied here only, its stripe stays dirty */
    uint64_t wait_at;    /* ticks: read waiting for a read lease since */
    bool answered;       /* forwarder: ACK sent; owner of a forward: FWD_DONE sent */
    bool waiting;        /* on the stripe-lock wait list or held */
    bool relock;         /* copy: retry the lock of `stripe` when woken */
    bool retried;        /* host read: its local read failed, the peer was asked */
    uint8_t bounced;     /* host write: times the owner sent its forward back (M_REORDER) */
    uint32_t peer_tag;   /* the peer's tag this piece answers */
    uint64_t conn_gen;   /* connection the remote part was sent on */
    struct piece *next;
    struct iovec iov[M_PIECE_IOV]; /* last: piece_get clears only what precedes it */
};

struct frame {
    struct mhdr h;
    struct iovec iov[M_PIECE_IOV + 1];
    int iovcnt;
    size_t total, sent;
    struct piece *done_piece; /* P_PEER_READ: free when sent */
    struct frame *next;
};

struct mirror {
    struct mlink *l;
    struct srrs_bdev *bdev;     /* ours: NULL until registered, after the attach */
    /* The mirror's name, set before the reactor can see it: the reactor's
     * lookups by name (status, mark dirty) and events use this, never
     * bdev->name, because the bdev is registered only after the attach
     * (docs/architecture.md, The mirror link). */
    char name[SRRS_NAME_MAX];
    struct srrs_bdev *replica;
    char replica_name[SRRS_NAME_MAX]; /* its name before we took it over */
    bool renamed;               /* the mirror took the replica's name (replica is NAME.replica) */
    uint32_t vol;
    uint64_t size, stripe, nstripes;
    uint32_t stripe_shift;
    uint8_t *bm;                /* mmap'd dirty bitmap */
    size_t bm_len;
    uint8_t *locked;            /* per stripe */
    uint8_t *need;              /* resync: stripe still to copy */
    uint8_t *peer_bm;           /* resync: the peer's bitmap as received */
    bool peer_bm_done, resync_ready, resync_active, resync_done, resync_full;
    bool resync_started;        /* srrs_mirror_resync_start came since the mode was entered:
                                   until then our bitmap is not final (a full copy marks it
                                   whole), so it is neither sent nor used */
    bool bm_sent;               /* our bitmap went out since this resync began, on this
                                   connection: asked for (tag 0) at most once, so a peer
                                   asked again has started over (rx_bitmap) */
    uint64_t resync_left, resync_bytes, copy_cursor;
    uint32_t ncopy;             /* stripe copies in progress (M_COPIES at most) */
    struct piece *lock_wait;    /* pieces waiting for a stripe lock */
    struct mirror_stats {
        uint64_t writes, replicated, forwarded, remote_reads, fenced, local_read_errors;
    } st;
    uint64_t read_err_ev_at;    /* ticks: last local read error reported (one a second) */
    uint32_t release_epoch;     /* mirror_release_held calls (atomic): I/O submitted
                                   before the last one is never held for a retry */
};

/* The link socket's readiness (mirror_link.c, rxw_*): a small io_uring ring
 * (COOP_TASKRUN, TASKRUN_FLAG) with one multishot POLLIN on the socket. Data
 * arriving sets IORING_SQ_TASKRUN in the shared ring (no IPI) and the poll's
 * CQE follows at our next system call: a recv() is made only then, never to
 * find nothing. fd < 0: no ring (old kernel): recv() on a backoff instead. */
struct rxwatch {
    int fd;
    bool armed;                 /* the multishot poll is in place on the link's fd */
    unsigned *sq_flags, *sq_head, *sq_tail, *sq_mask, *sq_array;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    void *ring;
    size_t ring_len, sqes_len;
    uint64_t armed_for;         /* user_data of the poll: counts the polls armed */
};

struct mlink {
    struct srrs_core *core;
    struct srrs_reactor *r;
    struct srrs_mirror_link_opts o;
    int lfd, fd;
    bool connecting, up, hello_rx;
    uint32_t ev_mask;           /* epoll events asked for on fd (EPOLLOUT: the socket was full) */
    bool order_told;            /* an orderer mismatch was posted (once until a link is up) */
    bool need_rejoin;           /* lost in paired/resync: stay down until the mode changes */
    uint64_t conn_gen;
    struct srrs_poller *p_listen, *p_conn, *p_timer;
    uint64_t last_rx, last_tx, last_try;  /* ticks */
    uint64_t tx_seq, rx_seq;
    struct frame *frames, *ffree, *txq, *txq_tail;
    struct piece *pieces, *pfree;
    struct piece *held;         /* waiting for the peer while the link is down */
    struct piece *rebound;      /* forwards the owner sent back: sent again at the next timer tick */
    uint8_t *rx;
    size_t rx_start, rx_end;
    uint64_t rx_next;           /* ticks: no recv() before this (backoff while idle) */
    struct rxwatch rxw;         /* the socket's readiness, without a recv() (see rxwatch) */
    bool rx_more;               /* recv() again without a sign: the last one may not have
                                   drained the socket, or frames wait for buffers */
    bool rx_drained;            /* the last recv() returned less than it asked for */
    uint32_t rx_idle;           /* recv()s in a row that found nothing */
    uint64_t tick_us;           /* ticks per microsecond */
    struct mhdr dh;             /* a large frame being received straight into dbuf */
    uint8_t *dbuf;              /* pool buffer of dh.len bytes (NULL: none) */
    size_t dgot;
    int mode;
    uint64_t lease_deadline;    /* ns, CLOCK_MONOTONIC */
    /* read lease (ticks of this host's counter) */
    uint64_t rl_len;            /* L: what we grant */
    uint64_t rl_until;          /* our local reads are safe before this (granted by the peer) */
    uint64_t rl_granted;        /* the peer may read alone before this: no solo until then */
    uint64_t rl_asked;          /* our last lease request */
    uint64_t rl_fail_ev_at;     /* ticks: last failed lease reads reported (one a second) */
    bool rl_peer_granted;       /* the peer granted us a lease since we (re)joined it on this
                                   connection: until then it may still be starting */
    struct piece *rwait;        /* reads waiting for a lease */
    /* single-path host I/Os failed with a path error, held for a retry
     * (opts.hold_ms): linked by srrs_io.next, oldest first */
    struct srrs_io *retry, *retry_tail;
    uint64_t hold_ticks;        /* opts.hold_ms in ticks */
    uint64_t hold_ev_at;        /* ticks: last hold/expiry event (one a second) */
    bool stopping;              /* the link or its reactor is going: nothing is held */
    /* resync copy throttle (srrs_mirror_set_copy_limit): copies in parallel
     * (0: M_COPIES), bytes/s (0: no limit) as a token bucket refilled by the
     * timer; copy pieces wait on `throttled` for tokens */
    uint32_t copy_max;
    uint64_t copy_rate;
    int64_t copy_tokens;
    uint64_t copy_tok_at;       /* ticks */
    struct piece *throttled;
    bool solo_wait;             /* solo asked for while a grant runs: pending until rl_granted */
    struct mirror *vols[M_MAX_VOLS];
    struct srrs_mirror_link_info st;
    int stop_hook;
    /* authentication (ffi/mirror_auth.h): off when no secret is configured */
    bool auth_on;
    struct mauth auth;              /* connections not yet authenticated */
    struct fmac ftx, frx;           /* this connection's frame MACs (session keys) */
    struct sockaddr_storage allow[4];
    int nallow;
    uint64_t auth_ev_at;            /* ticks: last refusal reported (one a second) */
    uint64_t last_mac_rx;           /* ticks: last frame whose MAC held (liveness) */
    uint64_t last_rx_conn;          /* ticks: this connection authenticated */
};


enum { RL_ASK = 1, RL_GRANT = 2 }; /* T_PING tags */

/* A host I/O's driver context: pieces left, the first error. */
struct hctx {
    uint32_t left;
    int32_t status;
    uint64_t held_since;        /* ticks: first held for a retry (hold_ms); 0: never */
    uint32_t epoch;             /* the mirror's release_epoch when it was submitted */
};

/* srrs_mirror_set_mode / srrs_mirror_resync_start, run on the link's reactor. */
struct mode_arg {
    struct mlink *l;
    int mode;
    uint64_t deadline;
    int full;
};

/* srrs_mirror_link_create / _destroy: the link's pollers, on its reactor. */
struct link_arg {
    struct mlink *l;
    int rc;
};

/* ---- helpers ------------------------------------------------------------- */

static inline bool bit_get(const uint8_t *b, uint64_t i) { return b[i >> 3] & (1u << (i & 7)); }
static inline void bit_set(uint8_t *b, uint64_t i) { b[i >> 3] |= (uint8_t)(1u << (i & 7)); }
static inline void bit_clr(uint8_t *b, uint64_t i) { b[i >> 3] &= (uint8_t)~(1u << (i & 7)); }

static inline bool mode_resync(int mode) { return mode == MODE_RSRC || mode == MODE_RTGT; }
static inline bool mode_needs_peer(int mode) { return mode == MODE_PAIRED || mode_resync(mode); }
static inline int source_node(struct mlink *l)
{
    return l->mode == MODE_RSRC ? l->o.node : 1 - l->o.node;
}

/* HELLO's tag: this bit, and srrs_mirror_link_opts.sole_orderer in the low bits. */
#define HELLO_ORDER 0x100u

/* Who orders stripe s now: the sole orderer if the link has one, else its
 * owner s % 2, or the resync source while the stripe is not yet copied. In
 * SOLO we order everything. */
static inline bool we_order(struct mirror *m, uint64_t s)
{
    struct mlink *l = m->l;
    if (l->mode == MODE_SOLO)
        return true;
    if (l->o.sole_orderer)
        return l->o.node == l->o.sole_orderer - 1;
    if (mode_resync(l->mode) && m->need[s])
        return source_node(l) == l->o.node;
    return (int)(s & 1) == l->o.node;
}

static inline bool link_ready(struct mlink *l) { return l->up && l->hello_rx; }

static inline void mark_dirty(struct mirror *m, uint64_t s) { bit_set(m->bm, s); }

/* A write on both replicas: its bit may go, unless the stripe still waits for a
 * copy -- or may: in a resync whose bitmaps have not met yet, need[] is not
 * known, and a bit cleared now would be missing from the union that decides
 * what is copied (a write applied here alone, SOLO, just before would be lost
 * on the peer). */
static inline void clear_dirty(struct mirror *m, uint64_t s)
{
    int mode = m->l->mode;
    if (mode == MODE_PAIRED || (mode_resync(mode) && m->resync_ready && !m->need[s]))
        bit_clr(m->bm, s);
}

static inline uint64_t now_ns(void) { return srrs_now_ns(); }

static inline bool lease_ok(struct mlink *l) { return now_ns() < l->lease_deadline; }

/* ---- the piece pool ------------------------------------------------------ */

static inline struct piece *piece_get(struct mlink *l, enum pkind kind, struct mirror *m)
{
    struct piece *p = l->pfree;
    if (!p)
        return NULL;
    l->pfree = p->next;
    uint16_t gen = (uint16_t)(p->gen + 1), idx = p->idx;
    memset(p, 0, offsetof(struct piece, iov)); /* not the 2 KiB iovec array */
    p->gen = gen;
    p->idx = idx;
    p->kind = kind;
    p->m = m;
    return p;
}

static inline void piece_put(struct mlink *l, struct piece *p)
{
    if (p->buf)
        srrs_buf_put(l->r, p->buf, p->buf_len);
    p->buf = NULL;
    p->kind = P_FREE;
    p->next = l->pfree;
    l->pfree = p;
}

static inline uint32_t piece_tag(struct piece *p) { return (uint32_t)p->gen << 16 | p->idx; }

static inline struct piece *piece_by_tag(struct mlink *l, uint32_t tag)
{
    uint32_t idx = tag & 0xffff;
    if (idx >= M_NPIECES)
        return NULL;
    struct piece *p = &l->pieces[idx];
    if (p->kind == P_FREE || p->gen != (tag >> 16))
        return NULL;
    return p;
}

static inline void *piece_buf(struct mlink *l, struct piece *p, size_t len)
{
    p->buf = srrs_buf_get(l->r, len ? len : 1);
    p->buf_len = len ? len : 1;
    if (p->buf) {
        p->iov[0].iov_base = p->buf;
        p->iov[0].iov_len = len;
        p->iovcnt = 1;
    }
    return p->buf;
}

/* ---- mirror_link.c ------------------------------------------------------- */

void frame_send(struct mlink *l, int type, struct mirror *m, uint32_t tag, uint64_t off,
                int32_t status, uint64_t aux, const struct iovec *iov, int iovcnt,
                uint32_t len, struct piece *done_piece);
int tx_flush(struct mlink *l);
void link_drop(struct mlink *l, const char *why);
int sock_addr(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *len);
int auth_setup(struct mlink *l);
void link_start_fn(void *a);
void link_stop_fn(void *a);
void hook_fn(void *a);
void link_free(struct mlink *l);

/* ---- mirror_state.c ------------------------------------------------------ */

void host_start(void *arg);
void host_io_done(struct mlink *l, struct srrs_io *io, int status);
void retry_poll(struct mlink *l);
void retry_fail(struct mlink *l, const struct mirror *m);
/* Takes the io, not the piece: a caller without a piece passes no 2 KiB
 * struct built for the call (one file, the compiler had dropped it). */
static inline void piece_host_done(struct mlink *l, struct piece *p, int status)
{
    host_io_done(l, p->host, status);
}
void piece_dispatch(struct mlink *l, struct piece *p);
void piece_step(struct mlink *l, struct piece *p);
void hold(struct mlink *l, struct piece *p);
bool stripe_lock(struct piece *p);
void stripe_unlock(struct piece *p);
int local_submit(struct mlink *l, struct piece *p, int op);
void rl_ask(struct mlink *l, uint64_t now);
void rl_retry(struct mlink *l, bool expire);
void resolve_held(struct mlink *l);
void fwd_bounce(struct mlink *l, struct piece *p);
void dispatch_all(struct mlink *l, struct piece **head);
void set_mode_fn(void *a);
/* frame handlers (rx_frame's dispatch): false = a protocol error (errno
 * ENOBUFS: out of buffers, retry later) */
bool rx_ping(struct mlink *l, const struct mhdr *h);
bool rx_data(struct mlink *l, struct mirror *m, const struct mhdr *h, uint8_t *payload,
             void **own);
bool rx_write_ref(struct mlink *l, const struct mhdr *h);
bool rx_ack(struct mlink *l, const struct mhdr *h);
bool rx_fwd_done(struct mlink *l, const struct mhdr *h);
bool rx_read(struct mlink *l, struct mirror *m, const struct mhdr *h);
bool rx_read_data(struct mlink *l, const struct mhdr *h, const uint8_t *payload);

/* ---- mirror_resync.c ----------------------------------------------------- */

void copy_next(struct mirror *m, struct piece *p);
void copy_refill(struct mlink *l);
void resync_maybe_start(struct mirror *m);
void resync_reset(struct mlink *l);
void resync_start_fn(void *a);
void send_bitmap(struct mirror *m, int reply);
bool rx_bitmap(struct mlink *l, struct mirror *m, const struct mhdr *h, const uint8_t *payload);
bool rx_resync_done(struct mlink *l, struct mirror *m);

#endif
