/*
 * Mirror bdev and mirror link (docs/architecture.md, Pair; contract in ffi/mirror.h).
 *
 * Everything below runs on the link's reactor: host I/O submitted on another
 * reactor is passed here by a message and its completion passed back. A host
 * I/O is cut into pieces at stripe and 1 MiB boundaries; a write piece is
 * ordered by its stripe's owner, which holds the stripe lock from its local
 * write until the peer acknowledged its copy, so both replicas apply the
 * writes of one stripe in the same order:
 *
 *   owner  : lock, mark dirty, write locally + WRITE to peer; ack after both
 *   other  : FORWARD to the owner; the owner locks, starts its local write
 *            and answers WRITE_REF at once ("apply your forwarded data now"),
 *            then FWD_DONE (with its status) when its write is done. We apply
 *            on WRITE_REF and ACK when our write is done; the host write
 *            completes with both (one round trip, the two local writes
 *            overlapped); the owner unlocks on the ACK.
 *
 * The dirty bitmap (one bit per stripe, a MAP_SHARED file, so it survives a
 * kill -9) has a bit set before any local write and cleared once both
 * replicas have it; in SOLO and at a cut it stays set. Resync copies the
 * union of both bitmaps from source to target, a stripe at a time under the
 * stripe lock; until a stripe is copied the source orders it and the target
 * reads it from the source.
 */
#include "srrs_int.h"

#include "mirror.h"
#include "mirror_auth.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define M_MAGIC 0x524d5253u /* "SRMR" */
#define M_MAX_VOLS 64
#define M_NPIECES 8192u
#define M_NFRAMES 16384u
#define M_PIECE_IOV 130 /* a virtio request may carry seg_max (126) segments, plus slack */
#define M_CHUNK SRRS_BUF_MAX
#define M_RXBUF (4u << 20)
#define M_RX_RECV (256u << 10)     /* one recv() into the ring reads at most this */
#define M_RX_DIRECT (64u << 10)    /* larger payloads are received straight into a pool buffer */
#define M_HDR 64
#define M_COPIES 16                /* stripes copied in parallel by a resync source */

enum { MODE_FENCED, MODE_PAIRED, MODE_SOLO, MODE_RSRC, MODE_RTGT, MODE_PENDING };

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
    struct srrs_bdev *bdev;     /* ours */
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
    uint64_t resync_left, resync_bytes, copy_cursor;
    uint32_t ncopy;             /* stripe copies in progress (M_COPIES at most) */
    struct piece *lock_wait;    /* pieces waiting for a stripe lock */
    struct mirror_stats {
        uint64_t writes, replicated, forwarded, remote_reads, fenced, local_read_errors;
    } st;
    uint64_t read_err_ev_at;    /* ticks: last local read error reported (one a second) */
};

struct mlink {
    struct srrs_core *core;
    struct srrs_reactor *r;
    struct srrs_mirror_link_opts o;
    int lfd, fd;
    bool connecting, up, hello_rx;
    uint32_t ev_mask;           /* epoll events asked for on fd (EPOLLOUT: the socket was full) */
    bool need_rejoin;           /* lost in paired/resync: stay down until the mode changes */
    uint64_t conn_gen;
    struct srrs_poller *p_listen, *p_conn, *p_timer;
    uint64_t last_rx, last_tx, last_try;  /* ticks */
    uint64_t tx_seq, rx_seq;
    struct frame *frames, *ffree, *txq, *txq_tail;
    struct piece *pieces, *pfree;
    struct piece *held;         /* waiting for the peer while the link is down */
    uint8_t *rx;
    size_t rx_start, rx_end;
    uint64_t rx_next;           /* ticks: no recv() before this (backoff while idle) */
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
    struct piece *rwait;        /* reads waiting for a lease */
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

/* Who orders stripe s now: its owner s % 2, or the resync source while the
 * stripe is not yet copied. In SOLO we order everything. */
static inline bool we_order(struct mirror *m, uint64_t s)
{
    struct mlink *l = m->l;
    if (l->mode == MODE_SOLO)
        return true;
    if (mode_resync(l->mode) && m->need[s])
        return source_node(l) == l->o.node;
    return (int)(s & 1) == l->o.node;
}

static inline bool link_ready(struct mlink *l) { return l->up && l->hello_rx; }

static void mark_dirty(struct mirror *m, uint64_t s) { bit_set(m->bm, s); }

/* A write on both replicas: its bit may go, unless the stripe still waits for a
 * copy -- or may: in a resync whose bitmaps have not met yet, need[] is not
 * known, and a bit cleared now would be missing from the union that decides
 * what is copied (a write applied here alone, SOLO, just before would be lost
 * on the peer). */
static void clear_dirty(struct mirror *m, uint64_t s)
{
    int mode = m->l->mode;
    if (mode == MODE_PAIRED || (mode_resync(mode) && m->resync_ready && !m->need[s]))
        bit_clr(m->bm, s);
}

static uint64_t now_ns(void) { return srrs_now_ns(); }

static bool lease_ok(struct mlink *l) { return now_ns() < l->lease_deadline; }

enum { RL_ASK = 1, RL_GRANT = 2 }; /* T_PING tags */

static void frame_send(struct mlink *l, int type, struct mirror *m, uint32_t tag, uint64_t off,
                       int32_t status, uint64_t aux, const struct iovec *iov, int iovcnt,
                       uint32_t len, struct piece *done_piece);

/* Ask the peer for a read lease: our send time rides along and comes back. */
static void rl_ask(struct mlink *l, uint64_t now)
{
    l->rl_asked = now;
    frame_send(l, T_PING, NULL, RL_ASK, 0, 0, now, NULL, 0, 0, NULL);
}

/* ---- pieces and frames ----------------------------------------------------- */

static struct piece *piece_get(struct mlink *l, enum pkind kind, struct mirror *m)
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

static void piece_put(struct mlink *l, struct piece *p)
{
    if (p->buf)
        srrs_buf_put(l->r, p->buf, p->buf_len);
    p->buf = NULL;
    p->kind = P_FREE;
    p->next = l->pfree;
    l->pfree = p;
}

static inline uint32_t piece_tag(struct piece *p) { return (uint32_t)p->gen << 16 | p->idx; }

static struct piece *piece_by_tag(struct mlink *l, uint32_t tag)
{
    uint32_t idx = tag & 0xffff;
    if (idx >= M_NPIECES)
        return NULL;
    struct piece *p = &l->pieces[idx];
    if (p->kind == P_FREE || p->gen != (tag >> 16))
        return NULL;
    return p;
}

static void *piece_buf(struct mlink *l, struct piece *p, size_t len)
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

static void link_drop(struct mlink *l, const char *why);

/* The header (its mac zeroed) and the payload: the MAC the header carries. */
static void frame_mac(struct fmac *k, const struct mhdr *h, const struct iovec *iov,
                      int iovcnt, uint8_t mac[MA_MAC])
{
    struct mhdr z = *h;
    memset(z.mac, 0, sizeof(z.mac));
    fmac_begin(k, h->seq);
    fmac_update(k, &z, sizeof(z));
    for (int i = 0; i < iovcnt; i++)
        fmac_update(k, iov[i].iov_base, iov[i].iov_len);
    fmac_end(k, mac);
}

static void frame_send(struct mlink *l, int type, struct mirror *m, uint32_t tag, uint64_t off,
                       int32_t status, uint64_t aux, const struct iovec *iov, int iovcnt,
                       uint32_t len, struct piece *done_piece)
{
    struct frame *f = l->ffree;
    if (!f) {
        /* More frames than pieces can ask for: a broken invariant; drop the link. */
        link_drop(l, "out of frames");
        return;
    }
    l->ffree = f->next;
    memset(&f->h, 0, sizeof(f->h));
    f->h.magic = M_MAGIC;
    f->h.type = (uint8_t)type;
    f->h.vol = m ? (uint16_t)m->vol : 0;
    f->h.len = len;
    f->h.tag = tag;
    f->h.seq = l->tx_seq++;
    f->h.off = off;
    f->h.status = status;
    f->h.aux = aux;
    /* Authenticated, the MAC covers what the CRC would: the CRC is left out. */
    uint32_t crc = l->auth_on ? 0 : srrs_crc32c(0, &f->h, sizeof(f->h));
    f->iov[0].iov_base = &f->h;
    f->iov[0].iov_len = sizeof(f->h);
    f->iovcnt = 1;
    for (int i = 0; i < iovcnt; i++) {
        if (!l->auth_on)
            crc = srrs_crc32c(crc, iov[i].iov_base, iov[i].iov_len);
        f->iov[f->iovcnt++] = iov[i];
    }
    f->h.crc = crc;
    if (l->auth_on)
        frame_mac(&l->ftx, &f->h, iov, iovcnt, f->h.mac);
    f->total = sizeof(f->h) + len;
    f->sent = 0;
    f->done_piece = done_piece;
    f->next = NULL;
    if (l->txq_tail)
        l->txq_tail->next = f;
    else
        l->txq = f;
    l->txq_tail = f;
    l->st.tx_frames++;
    l->st.tx_bytes += f->total;
}

static void frame_free(struct mlink *l, struct frame *f)
{
    if (f->done_piece)
        piece_put(l, f->done_piece);
    f->next = l->ffree;
    l->ffree = f;
}

/* EPOLLOUT only while the socket is full; epoll_ctl only when that changes. */
static void set_want_out(struct mlink *l, bool out)
{
    uint32_t ev = EPOLLIN | (out ? EPOLLOUT : 0);
    if (l->ev_mask == ev)
        return;
    l->ev_mask = ev;
    srrs_poller_mod_fd(l->p_conn, ev);
}

static int tx_flush(struct mlink *l)
{
    int work = 0;
    while (l->txq && l->fd >= 0 && !l->connecting) {
        struct iovec v[64];
        int n = 0;
        for (struct frame *f = l->txq; f && n < 60; f = f->next) {
            size_t skip = f->sent;
            for (int i = 0; i < f->iovcnt && n < 64; i++) {
                size_t len = f->iov[i].iov_len;
                if (skip >= len) {
                    skip -= len;
                    continue;
                }
                v[n].iov_base = (uint8_t *)f->iov[i].iov_base + skip;
                v[n].iov_len = len - skip;
                skip = 0;
                n++;
            }
        }
        ssize_t k = writev(l->fd, v, n);
        if (k < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                set_want_out(l, true);
                return work;
            }
            if (errno == EINTR)
                continue;
            link_drop(l, "send failed");
            return work;
        }
        work = 1;
        l->last_tx = srrs_ticks();
        size_t left = (size_t)k;
        while (left && l->txq) {
            struct frame *f = l->txq;
            size_t rem = f->total - f->sent;
            if (left < rem) {
                f->sent += left;
                left = 0;
                break;
            }
            left -= rem;
            l->txq = f->next;
            if (!l->txq)
                l->txq_tail = NULL;
            frame_free(l, f);
        }
    }
    if (!l->txq && l->fd >= 0 && !l->connecting)
        set_want_out(l, false);
    return work;
}

/* ---- host I/O completion ---------------------------------------------------- */

struct hctx {
    uint32_t left;
    int32_t status;
};

static void host_done_msg(void *arg)
{
    struct srrs_io *io = arg;
    srrs_io_complete(io, io->status);
}

static void piece_host_done(struct mlink *l, struct piece *p, int status)
{
    struct srrs_io *io = p->host;
    struct hctx *h = (struct hctx *)io->driver_ctx;
    if (status && !h->status)
        h->status = status;
    if (--h->left == 0) {
        if (io->r == l->r) {
            srrs_io_complete(io, h->status);
        } else {
            io->status = h->status;
            while (srrs_reactor_send(io->r, host_done_msg, io) == -EAGAIN)
                ;
        }
    }
}

/* ---- stripe locks --------------------------------------------------------------- */

static void piece_dispatch(struct mlink *l, struct piece *p);

static bool stripe_lock(struct piece *p)
{
    struct mirror *m = p->m;
    if (m->locked[p->stripe]) {
        p->next = NULL;
        struct piece **pp = &m->lock_wait;
        while (*pp)
            pp = &(*pp)->next;
        *pp = p;
        p->waiting = true;
        return false;
    }
    m->locked[p->stripe] = 1;
    p->locked = true;
    return true;
}

static void stripe_unlock(struct piece *p)
{
    struct mirror *m = p->m;
    if (!p->locked)
        return;
    p->locked = false;
    m->locked[p->stripe] = 0;
    /* Every waiter for this stripe goes again, in order: the first takes the
     * lock, the others queue again behind it. Waking only one would strand the
     * rest when it does not take the lock (now forwarded, or held). */
    struct piece *wake = NULL, **tail = &wake;
    for (struct piece **pp = &m->lock_wait; *pp;) {
        struct piece *w = *pp;
        if (w->stripe == p->stripe) {
            *pp = w->next;
            w->next = NULL;
            *tail = w;
            tail = &w->next;
        } else {
            pp = &w->next;
        }
    }
    while (wake) {
        struct piece *w = wake;
        wake = w->next;
        w->next = NULL;
        w->waiting = false;
        piece_dispatch(m->l, w);
    }
}

/* ---- local I/O to the replica ---------------------------------------------------- */

static void piece_step(struct mlink *l, struct piece *p);

static void local_done(struct srrs_io *io, void *arg)
{
    struct piece *p = arg;
    struct mlink *l = p->m->l;
    if (io->status && !p->status)
        p->status = io->status;
    srrs_io_put(io);
    p->local_wait--;
    piece_step(l, p);
}

static int local_submit(struct mlink *l, struct piece *p, int op)
{
    struct srrs_io *io = srrs_io_get(l->r);
    if (!io)
        return -ENOMEM;
    io->bdev = p->m->replica;
    io->op = (uint8_t)op;
    io->offset = p->off;
    io->len = op == SRRS_IO_FLUSH ? 0 : p->len;
    io->iov = io->iov_inline;
    if (p->iovcnt > SRRS_IO_INLINE_IOV) {
        io->iov = p->iov; /* the piece outlives the I/O */
    } else {
        memcpy(io->iov_inline, p->iov, sizeof(struct iovec) * (size_t)p->iovcnt);
    }
    io->iovcnt = p->iovcnt;
    io->cb = local_done;
    io->cb_arg = p;
    io->status = 0;
    p->local_wait++;
    srrs_bdev_submit(io);
    return 0;
}

/* ---- the piece state machine ---------------------------------------------------- */

static void send_write(struct mlink *l, struct piece *p, int type)
{
    p->remote_wait = true;
    p->conn_gen = l->conn_gen;
    frame_send(l, type, p->m, piece_tag(p), p->off, 0, p->peer_tag, p->iov,
               type == T_WRITE_REF ? 0 : p->iovcnt, type == T_WRITE_REF ? 0 : (uint32_t)p->len,
               NULL);
}

static void hold(struct mlink *l, struct piece *p)
{
    p->waiting = true;
    p->next = l->held;
    l->held = p;
}

/* Start an ordered write (host write we order, or a peer's forward). */
static void ordered_write(struct mlink *l, struct piece *p)
{
    if (p->kind == P_PEER_FWD && (p->conn_gen != l->conn_gen || !link_ready(l))) {
        /* Forwarded on a connection that died while it waited for the lock:
         * the forwarder settles it (applies it alone in SOLO, fails it fenced). */
        stripe_unlock(p);
        piece_put(l, p);
        return;
    }
    if (!p->locked && !stripe_lock(p))
        return;
    mark_dirty(p->m, p->stripe);
    if (local_submit(l, p, SRRS_IO_WRITE)) {
        p->status = -ENOMEM;
        piece_step(l, p);
        return;
    }
    if (l->mode == MODE_SOLO) {
        p->alone = true; /* whatever the mode when it completes */
        return;
    }
    if (!link_ready(l)) {
        p->remote_wait = true;     /* resolved by the next mode change */
        p->conn_gen = 0;
        return;
    }
    send_write(l, p, p->kind == P_PEER_FWD ? T_WRITE_REF : T_WRITE);
    if (p->kind == P_HOST_WRITE)
        p->m->st.writes++;
}

static void host_write_start(struct mlink *l, struct piece *p)
{
    struct mirror *m = p->m;
    if (l->mode == MODE_PENDING) {
        hold(l, p); /* a lease is being asked for: SOLO or FENCED decides */
        return;
    }
    if (l->mode == MODE_FENCED || (l->mode == MODE_SOLO && !lease_ok(l))) {
        m->st.fenced++;
        piece_host_done(l, p, -ENOTCONN);
        piece_put(l, p);
        return;
    }
    if (mode_resync(l->mode) && !m->resync_ready) {
        hold(l, p);
        return;
    }
    if (we_order(m, p->stripe)) {
        ordered_write(l, p);
        return;
    }
    if (!link_ready(l)) {
        hold(l, p);
        return;
    }
    /* The owner orders it: send it there, apply when it says so. */
    m->st.forwarded++;
    p->remote_wait = true;
    p->conn_gen = l->conn_gen;
    frame_send(l, T_FORWARD, m, piece_tag(p), p->off, 0, 0, p->iov, p->iovcnt,
               (uint32_t)p->len, NULL);
}

/* A host read served by the peer's replica (the link is ready). */
static void remote_read(struct mlink *l, struct piece *p)
{
    p->m->st.remote_reads++;
    p->remote_wait = true;
    p->conn_gen = l->conn_gen;
    frame_send(l, T_READ, p->m, piece_tag(p), p->off, 0, p->len, NULL, 0, 0, NULL);
}

/* Our replica failed a host read with a media error (its fragment shrank,
 * vanished, lost its RAM): the peer's replica holds every acknowledged write
 * while we are PAIRED, and is the current side while it is our resync source,
 * so the read is asked of it once. Its answer, data or error, is final. */
static bool read_fallback(struct mlink *l, struct piece *p)
{
    struct mirror *m = p->m;
    if (p->kind != P_HOST_READ || p->retried || (p->status != -EIO && p->status != -ENODATA))
        return false;
    if (!(l->mode == MODE_PAIRED || (l->mode == MODE_RTGT && m->resync_ready)) ||
        !link_ready(l))
        return false;
    p->retried = true;
    m->st.local_read_errors++;
    uint64_t now = srrs_ticks();
    if (!m->read_err_ev_at || now - m->read_err_ev_at >= srrs_us_to_ticks(1000000)) {
        m->read_err_ev_at = now; /* one report a second: every read may fail */
        srrs_event_post(l->core, SRRS_EV_MIRROR_READ_ERR, m->st.local_read_errors, p->off,
                        m->bdev->name, "replica %s failed a read at %llu (%d): served by the "
                        "peer (%llu local read errors so far)", m->replica->name,
                        (unsigned long long)p->off, p->status,
                        (unsigned long long)m->st.local_read_errors);
    }
    p->status = 0;
    remote_read(l, p);
    return true;
}

static void host_read_start(struct mlink *l, struct piece *p)
{
    struct mirror *m = p->m;
    if (l->mode == MODE_PENDING) {
        hold(l, p);
        return;
    }
    if (l->mode == MODE_FENCED || (l->mode == MODE_SOLO && !lease_ok(l))) {
        m->st.fenced++;
        piece_host_done(l, p, -ENOTCONN);
        piece_put(l, p);
        return;
    }
    if (l->mode == MODE_RTGT && !m->resync_ready) {
        hold(l, p);
        return;
    }
    if (l->mode == MODE_RTGT && m->need[p->stripe]) {
        /* Not yet copied here: the source has the current data. */
        if (!link_ready(l)) {
            piece_host_done(l, p, -ENOTCONN);
            piece_put(l, p);
            return;
        }
        remote_read(l, p);
        return;
    }
    if (p->kind == P_HOST_READ && mode_needs_peer(l->mode)) {
        /* The peer may be acknowledging alone once our lease is over: our
         * replica is only current while we hold one. One counter read. */
        uint64_t now = srrs_ticks();
        if (now >= l->rl_until) {
            /* Wait for a grant; with the link down, like the writes, until
             * the mode says what the peer's loss means (solo: serve, fenced:
             * fail), so a single-path host rides through a failover. */
            if (link_ready(l) && now - l->rl_asked > l->rl_len / 16)
                rl_ask(l, now);
            if (!p->wait_at)
                p->wait_at = now;
            p->waiting = true;
            p->next = l->rwait;
            l->rwait = p;
            return;
        }
    }
    if (local_submit(l, p, p->kind == P_FLUSH ? SRRS_IO_FLUSH : SRRS_IO_READ)) {
        piece_host_done(l, p, -ENOMEM);
        piece_put(l, p);
    }
}

/* Reads waiting for a read lease: try again (a grant came, the mode changed),
 * or (expire) fail those that waited a whole lease length while the link was
 * up -- the peer hears us but grants nothing: it left the pair and serves on
 * its own; the host retries there. With the link down they wait for the mode. */
static void rl_retry(struct mlink *l, bool expire)
{
    struct piece *w = l->rwait;
    l->rwait = NULL;
    uint64_t now = srrs_ticks();
    while (w) {
        struct piece *next = w->next;
        w->next = NULL;
        if (expire && now - w->wait_at >= l->rl_len && link_ready(l)) {
            w->waiting = false;
            l->st.lease_reads_failed++;
            piece_host_done(l, w, -ENOTCONN);
            piece_put(l, w);
        } else if (expire) {
            w->next = l->rwait;
            l->rwait = w;
        } else {
            w->waiting = false;
            host_read_start(l, w);
        }
        w = next;
    }
}

static void piece_dispatch(struct mlink *l, struct piece *p)
{
    switch (p->kind) {
    case P_HOST_WRITE:
        host_write_start(l, p);
        break;
    case P_HOST_READ:
    case P_FLUSH:
        host_read_start(l, p);
        break;
    case P_PEER_FWD:
    case P_COPY:
        if (p->kind == P_PEER_FWD)
            ordered_write(l, p);
        else
            piece_step(l, p);
        break;
    default:
        break;
    }
}

static void copy_next(struct mirror *m, struct piece *p);

/* A forward's two answers that go out as soon as our local write is done,
 * without waiting for the peer: the forwarder's ACK, the owner's FWD_DONE. */
static void forward_answer(struct mlink *l, struct piece *p)
{
    p->answered = true;
    if (p->conn_gen != l->conn_gen || !link_ready(l))
        return;
    if (p->kind == P_PEER_FWD)
        frame_send(l, T_FWD_DONE, p->m, p->peer_tag, 0, p->status, 0, NULL, 0, 0, NULL);
    else
        frame_send(l, T_ACK, p->m, p->peer_tag, 0, p->status, 0, NULL, 0, 0, NULL);
}

/* Called whenever a piece's local or remote part finished. */
static void piece_step(struct mlink *l, struct piece *p)
{
    if (p->local_wait)
        return;
    if (!p->answered && ((p->kind == P_HOST_WRITE && !p->locked && p->applied) ||
                         p->kind == P_PEER_FWD))
        forward_answer(l, p);
    if (p->remote_wait)
        return;
    struct mirror *m = p->m;
    switch (p->kind) {
    case P_HOST_WRITE:
        if (p->locked) {
            /* ordered here: local done and (paired) the peer's ACK */
            if (p->status == 0 && !p->alone && l->mode != MODE_SOLO &&
                p->conn_gen == l->conn_gen && link_ready(l))
                clear_dirty(m, p->stripe);
            int st = p->status;
            if (st == 0 && l->mode == MODE_SOLO && !lease_ok(l))
                st = -ENOTCONN; /* the lease ran out: never ack alone past it */
            stripe_unlock(p);
            piece_host_done(l, p, st);
            piece_put(l, p);
        } else {
            /* forwarded: applied here (WRITE_REF, our ACK sent) and FWD_DONE
             * arrived: both replicas have it */
            if (p->status == 0 && p->applied && p->conn_gen == l->conn_gen && link_ready(l))
                clear_dirty(m, p->stripe);
            int st = p->status;
            if (st == 0 && l->mode == MODE_SOLO && !lease_ok(l))
                st = -ENOTCONN; /* settled alone (link lost): never past the lease */
            piece_host_done(l, p, st);
            piece_put(l, p);
        }
        break;
    case P_HOST_READ:
    case P_FLUSH:
        if (read_fallback(l, p))
            return;
        piece_host_done(l, p, p->status);
        piece_put(l, p);
        break;
    case P_PEER_WRITE:
        if (p->conn_gen == l->conn_gen && link_ready(l)) {
            if (p->status == 0 && l->mode != MODE_SOLO)
                clear_dirty(m, p->stripe);
            frame_send(l, T_ACK, m, p->peer_tag, 0, p->status, 0, NULL, 0, 0, NULL);
        }
        m->st.replicated++;
        piece_put(l, p);
        break;
    case P_PEER_RESYNC:
        if (p->conn_gen == l->conn_gen && link_ready(l)) {
            frame_send(l, T_ACK, m, p->peer_tag, 0, p->status, 0, NULL, 0, 0, NULL);
            if (p->status == 0 && p->applied) { /* last chunk of the stripe */
                m->need[p->stripe] = 0;
                bit_clr(m->bm, p->stripe);
                if (m->resync_left)
                    m->resync_left--;
            }
        }
        m->resync_bytes += p->len;
        piece_put(l, p);
        break;
    case P_PEER_FWD:
        /* our write done (FWD_DONE sent) and the forwarder's ACK */
        if (p->status == 0 && !p->alone && p->conn_gen == l->conn_gen && link_ready(l))
            clear_dirty(m, p->stripe);
        stripe_unlock(p);
        piece_put(l, p);
        break;
    case P_PEER_READ:
        if (p->conn_gen == l->conn_gen && link_ready(l)) {
            /* the frame frees the piece once sent */
            frame_send(l, T_READ_DATA, m, p->peer_tag, 0, p->status, 0, p->iov,
                       p->status ? 0 : p->iovcnt, p->status ? 0 : (uint32_t)p->len, p);
        } else {
            piece_put(l, p);
        }
        break;
    case P_COPY:
        copy_next(m, p);
        break;
    default:
        break;
    }
}

/* ---- resync (source side copies, a stripe at a time) --------------------------- */

static void resync_finish(struct mirror *m)
{
    struct mlink *l = m->l;
    m->resync_active = false;
    m->resync_done = true;
    if (l->mode == MODE_RSRC && link_ready(l))
        frame_send(l, T_RESYNC_DONE, m, 0, 0, 0, 0, NULL, 0, 0, NULL);
    srrs_event_post(l->core, SRRS_EV_MIRROR_UP, m->vol, m->resync_bytes, m->bdev->name,
                    "resync complete: %llu bytes copied", (unsigned long long)m->resync_bytes);
}

/* A copy piece walks: pick a stripe, lock it, read a chunk, send it, next
 * chunk; M_COPIES of them run at once. */
static void copy_next(struct mirror *m, struct piece *p)
{
    struct mlink *l = m->l;
    if (l->mode != MODE_RSRC || !link_ready(l) || p->status) {
        stripe_unlock(p);
        if (--m->ncopy == 0)
            m->resync_active = false;
        piece_put(l, p);
        return;
    }
    if (p->locked && p->buf && p->applied) {
        /* chunk read locally (applied = read done); send it */
        p->applied = false;
        uint64_t stripe_end = SRRS_MIN((p->stripe + 1) << m->stripe_shift, m->size);
        bool last = p->off + p->len >= stripe_end;
        p->remote_wait = true;
        p->conn_gen = l->conn_gen;
        frame_send(l, T_RESYNC, m, piece_tag(p), p->off, 0, last, p->iov, 1, (uint32_t)p->len,
                   NULL);
        m->resync_bytes += p->len;
        return;
    }
    if (p->locked) {
        /* a chunk was acknowledged: next chunk of the stripe, or the stripe is done */
        uint64_t stripe_end = SRRS_MIN((p->stripe + 1) << m->stripe_shift, m->size);
        uint64_t next = p->off + p->len;
        if (next >= stripe_end) {
            m->need[p->stripe] = 0;
            bit_clr(m->bm, p->stripe);
            if (m->resync_left)
                m->resync_left--;
            stripe_unlock(p);
            srrs_buf_put(l->r, p->buf, p->buf_len);
            p->buf = NULL;
        } else {
            p->off = next;
            p->len = SRRS_MIN((uint64_t)M_CHUNK, stripe_end - next);
            p->iov[0].iov_len = p->len;
            p->applied = true;
            if (local_submit(l, p, SRRS_IO_READ))
                p->status = -ENOMEM;
            if (p->status)
                copy_next(m, p);
            return;
        }
    }
    if (!p->relock) {
        while (m->copy_cursor < m->nstripes && !m->need[m->copy_cursor])
            m->copy_cursor++;
        if (m->copy_cursor >= m->nstripes) {
            piece_put(l, p);
            if (--m->ncopy == 0)
                resync_finish(m);
            return;
        }
        p->stripe = m->copy_cursor++;
        p->off = p->stripe << m->stripe_shift;
        p->len = SRRS_MIN((uint64_t)M_CHUNK, m->size - p->off);
    }
    p->relock = false;
    if (!stripe_lock(p)) {
        p->relock = true; /* woken through piece_dispatch -> piece_step -> copy_next */
        return;
    }
    if (!m->need[p->stripe]) {
        stripe_unlock(p); /* copied meanwhile? (cannot happen: only we copy) */
        copy_next(m, p);
        return;
    }
    if (!piece_buf(l, p, M_CHUNK)) {
        p->status = -ENOMEM;
        copy_next(m, p);
        return;
    }
    p->iov[0].iov_len = p->len;
    p->applied = true;
    if (local_submit(l, p, SRRS_IO_READ)) {
        p->status = -ENOMEM;
        copy_next(m, p);
    }
}

static void resync_maybe_start(struct mirror *m)
{
    struct mlink *l = m->l;
    if (!mode_resync(l->mode) || m->resync_ready || !m->peer_bm_done || m->ncopy)
        return;
    uint64_t n = 0;
    for (uint64_t s = 0; s < m->nstripes; s++) {
        m->need[s] = m->resync_full || bit_get(m->bm, s) || bit_get(m->peer_bm, s);
        if (m->need[s]) {
            n++;
            bit_set(m->bm, s); /* a crash mid-resync keeps the work */
        }
    }
    m->resync_left = n;
    m->resync_ready = true;
    m->copy_cursor = 0;
    /* Held pieces of this volume may go now. */
    struct piece *h = l->held, *keep = NULL;
    bool bad_fwd = false;
    l->held = NULL;
    while (h) {
        struct piece *next = h->next;
        h->next = NULL;
        h->waiting = false;
        if (h->m == m && h->kind == P_PEER_FWD && h->conn_gen == l->conn_gen &&
            !we_order(m, h->stripe)) {
            piece_put(l, h);
            bad_fwd = true; /* the two sides disagree on who orders it */
        } else if (h->m == m) {
            piece_dispatch(l, h);
        } else {
            h->next = keep;
            keep = h;
            h->waiting = true;
        }
        h = next;
    }
    for (struct piece *k = keep; k;) {
        struct piece *next = k->next;
        k->next = l->held;
        l->held = k;
        k = next;
    }
    if (bad_fwd) {
        l->st.proto_errors++;
        link_drop(l, "forward for a stripe we do not order");
        return;
    }
    if (l->mode == MODE_RSRC) {
        m->resync_active = true;
        struct piece *ps[M_COPIES];
        uint32_t n = 0;
        while (n < M_COPIES && (ps[n] = piece_get(l, P_COPY, m)))
            n++;
        m->ncopy = n;
        if (!n) {
            m->resync_active = false;
            return;
        }
        for (uint32_t i = 0; i < n; i++)
            copy_next(m, ps[i]);
    }
}

/* Our bitmap to the peer; reply = 0 asks for the peer's in return (the peer may
 * not have entered resync when our first copy arrived, and ignored it). */
static void send_bitmap(struct mirror *m, int reply)
{
    struct mlink *l = m->l;
    size_t off = 0;
    do {
        /* A copy: the bitmap keeps changing while the frame waits to be sent. */
        size_t n = SRRS_MIN(m->bm_len - off, (size_t)M_CHUNK);
        struct piece *p = piece_get(l, P_PEER_READ, m);
        if (!p || !piece_buf(l, p, n)) {
            if (p)
                piece_put(l, p);
            link_drop(l, "out of buffers for the bitmap");
            return;
        }
        memcpy(p->buf, m->bm + off, n);
        frame_send(l, T_BITMAP, m, (uint32_t)reply, off, 0, off + n >= m->bm_len, p->iov, 1,
                   (uint32_t)n, p);
        off += n;
    } while (off < m->bm_len);
}

/* ---- receiving -------------------------------------------------------------------- */

/* One checked frame. *own: the payload is a pool buffer of h->len bytes that a
 * data piece may keep (then *own is nulled); otherwise it is copied. */
static bool rx_frame(struct mlink *l, const struct mhdr *h, uint8_t *payload, void **own)
{
    struct mirror *m = h->vol < M_MAX_VOLS ? l->vols[h->vol] : NULL;
    bool needs_vol = h->type != T_HELLO && h->type != T_PING && h->type != T_ACK &&
                     h->type != T_FWD_DONE && h->type != T_READ_DATA;
    if (needs_vol && !m)
        return false;
    if (h->type != T_HELLO && !l->hello_rx)
        return false;
    switch (h->type) {
    case T_HELLO:
        if (h->off != (uint64_t)(1 - l->o.node))
            return false; /* both think they are the same node */
        l->hello_rx = true;
        srrs_event_post(l->core, SRRS_EV_MIRROR_UP, l->conn_gen, 0, "mirror-link",
                        "mirror link up (%s:%u)", l->o.peer_host, l->o.peer_port);
        for (int i = 0; i < M_MAX_VOLS; i++)
            if (l->vols[i] && mode_resync(l->mode) && !l->vols[i]->resync_ready)
                send_bitmap(l->vols[i], 0);
        return true;
    case T_PING: {
        uint64_t now = srrs_ticks();
        if (h->tag == RL_ASK && mode_needs_peer(l->mode)) {
            /* Grant: the peer reads alone until L after it asked; we ack
             * nothing alone until L and a clock-rate margin after now. */
            uint64_t end = now + l->rl_len + l->rl_len / 16 + srrs_us_to_ticks(1000);
            if (end > l->rl_granted)
                l->rl_granted = end;
            frame_send(l, T_PING, NULL, RL_GRANT, l->o.read_lease_ms, 0, h->aux, NULL, 0, 0,
                       NULL);
        } else if (h->tag == RL_GRANT && h->aux <= now && h->off && h->off <= 60000) {
            uint64_t until = h->aux + srrs_us_to_ticks(h->off * 1000);
            if (until > l->rl_until)
                l->rl_until = until;
            rl_retry(l, false);
        }
        return true;
    }
    case T_WRITE:
    case T_FORWARD:
    case T_RESYNC: {
        if (h->off >= m->size || h->len == 0 || h->len > m->size - h->off ||
            h->len > M_CHUNK || ((h->off | h->len) & (m->replica->block_size - 1)))
            return false;
        uint64_t s = h->off >> m->stripe_shift;
        if (((h->off + h->len - 1) >> m->stripe_shift) != s)
            return false;
        enum pkind k = h->type == T_WRITE ? P_PEER_WRITE
                                          : h->type == T_FORWARD ? P_PEER_FWD : P_PEER_RESYNC;
        struct piece *p = piece_get(l, k, m);
        if (!p)
            return false;
        if (*own) {
            p->buf = *own; /* received straight into it: no copy */
            p->buf_len = h->len;
            p->iov[0].iov_base = p->buf;
            p->iov[0].iov_len = h->len;
            p->iovcnt = 1;
            *own = NULL;
        } else if (!piece_buf(l, p, h->len)) {
            p->kind = P_FREE;
            p->next = l->pfree;
            l->pfree = p;
            errno = ENOBUFS;
            return false;
        } else {
            memcpy(p->buf, payload, h->len);
        }
        p->off = h->off;
        p->len = h->len;
        p->stripe = s;
        p->peer_tag = h->tag;
        p->conn_gen = l->conn_gen;
        if (k == P_PEER_FWD) {
            if (mode_resync(l->mode) && !m->resync_ready) {
                /* The peer computed the stripes to copy first and forwards a
                 * write for one we will order: decided when ours are known. */
                hold(l, p);
                return true;
            }
            if (!we_order(m, s)) {
                piece_put(l, p);
                return false; /* it thinks we own a stripe we do not */
            }
            ordered_write(l, p);
            return true;
        }
        if (k == P_PEER_RESYNC) {
            if (l->mode != MODE_RTGT)
                return false;
            p->applied = h->aux == 1;
        }
        mark_dirty(m, s);
        if (local_submit(l, p, SRRS_IO_WRITE)) {
            p->status = -ENOMEM;
            piece_step(l, p);
        }
        return true;
    }
    case T_WRITE_REF: {
        /* The owner orders our forwarded write now: apply it here, ACK when done. */
        struct piece *p = piece_by_tag(l, (uint32_t)h->aux);
        if (!p || p->kind != P_HOST_WRITE || p->locked || p->applied || !p->remote_wait ||
            p->conn_gen != l->conn_gen)
            return false;
        /* still remote_wait: FWD_DONE (the owner's write done) follows */
        p->applied = true;
        p->peer_tag = h->tag;
        mark_dirty(p->m, p->stripe);
        if (local_submit(l, p, SRRS_IO_WRITE)) {
            p->status = -ENOMEM;
            piece_step(l, p);
        }
        return true;
    }
    case T_ACK: {
        struct piece *p = piece_by_tag(l, h->tag);
        if (!p || !p->remote_wait || (p->kind != P_HOST_WRITE && p->kind != P_PEER_FWD &&
                                      p->kind != P_COPY))
            return false;
        p->remote_wait = false;
        if (h->status && !p->status)
            p->status = h->status;
        piece_step(l, p);
        return true;
    }
    case T_FWD_DONE: {
        struct piece *p = piece_by_tag(l, h->tag);
        if (!p || p->kind != P_HOST_WRITE || !p->remote_wait || p->locked)
            return false;
        p->remote_wait = false;
        if (h->status && !p->status)
            p->status = h->status;
        if (!p->applied && !p->status) {
            /* The owner finished without asking us to apply it: it went on
             * alone (SOLO) while our link still stood, so the write is on its
             * replica only. Not ours to acknowledge, and not a media error
             * either (a host does not retry those): a path error, so the
             * host's multipath sends it to the owner, where applying it again
             * changes nothing. */
            p->status = -ENOTCONN;
        }
        piece_step(l, p);
        return true;
    }
    case T_READ: {
        uint64_t len = h->aux;
        if (h->off >= m->size || len == 0 || len > m->size - h->off || len > M_CHUNK)
            return false;
        struct piece *p = piece_get(l, P_PEER_READ, m);
        if (!p)
            return false;
        if (!piece_buf(l, p, len)) {
            piece_put(l, p);
            errno = ENOBUFS;
            return false;
        }
        p->off = h->off;
        p->len = len;
        p->peer_tag = h->tag;
        p->conn_gen = l->conn_gen;
        uint64_t s = h->off >> m->stripe_shift;
        if (l->mode == MODE_RTGT && (!m->resync_ready || m->need[s] ||
                                     (h->off + len - 1) >> m->stripe_shift != s)) {
            /* Behind on this stripe (or not yet knowing): our replica may
             * miss writes, so it answers nobody's read. Modes change on
             * both sides one after the other; this covers the moment the
             * peer still thinks us current. */
            p->status = -EIO;
            piece_step(l, p);
            return true;
        }
        if (local_submit(l, p, SRRS_IO_READ)) {
            p->status = -ENOMEM;
            piece_step(l, p);
        }
        return true;
    }
    case T_READ_DATA: {
        struct piece *p = piece_by_tag(l, h->tag);
        if (!p || p->kind != P_HOST_READ || !p->remote_wait)
            return false;
        if (h->status == 0 && h->len != p->len)
            return false;
        p->remote_wait = false;
        p->status = h->status;
        if (h->status == 0) {
            const uint8_t *src = payload;
            for (int i = 0; i < p->iovcnt; i++) {
                memcpy(p->iov[i].iov_base, src, p->iov[i].iov_len);
                src += p->iov[i].iov_len;
            }
        }
        piece_step(l, p);
        return true;
    }
    case T_BITMAP:
        if (!mode_resync(l->mode) || h->off > m->bm_len || h->len > m->bm_len - h->off)
            return m->resync_ready || !mode_resync(l->mode); /* late: ignore */
        memcpy(m->peer_bm + h->off, payload, h->len);
        if (h->aux == 1) {
            m->peer_bm_done = true;
            if (h->tag == 0)
                send_bitmap(m, 1);
            resync_maybe_start(m);
        }
        return true;
    case T_RESYNC_DONE:
        if (l->mode == MODE_RTGT && m->resync_ready) {
            for (uint64_t s = 0; s < m->nstripes; s++)
                m->need[s] = 0;
            m->resync_left = 0;
            memset(m->bm, 0, m->bm_len);
            resync_finish(m);
        }
        return true;
    }
    return false;
}

/* A frame whose MAC fails was not sent by our peer: it is counted and
 * discarded, and the connection goes on. A third party that can put bytes
 * into our TCP stream can also reset it, so closing would hand it a failover
 * for free; if its bytes displaced the peer's, the next frame's sequence
 * number (covered by the MAC) no longer matches and the link drops then. */
static bool rx_mac_ok(struct mlink *l, const struct mhdr *h, const uint8_t *payload)
{
    uint8_t mac[MA_MAC];
    struct iovec v = {(void *)payload, h->len};
    frame_mac(&l->frx, h, &v, 1, mac);
    /* A replayed frame of this connection has a good MAC and a spent number. */
    if (!mac_diff(mac, h->mac, MA_MAC) && h->seq >= l->rx_seq) {
        l->last_mac_rx = srrs_ticks();
        return true;
    }
    l->st.mac_errors++;
    uint64_t now = srrs_ticks();
    if (now - l->auth_ev_at > srrs_us_to_ticks(1000000) || !l->auth_ev_at) {
        l->auth_ev_at = now;
        srrs_event_post(l->core, SRRS_EV_PROTO_ERROR, l->st.mac_errors, 0, "mirror-link",
                        "mirror frame with a bad MAC discarded (%llu so far)",
                        (unsigned long long)l->st.mac_errors);
    }
    return false;
}

/* A whole frame (header copied out, payload at `payload`): MAC, CRC32C, sequence,
 * then its meaning. 1 consumed, 0 retry later (out of buffers), -1 link dropped. */
static int rx_check(struct mlink *l, struct mhdr *h, uint8_t *payload, void **own)
{
    if (l->auth_on && !rx_mac_ok(l, h, payload))
        return 1; /* discarded: see rx_mac_ok */
    uint32_t want = h->crc;
    h->crc = 0;
    uint32_t crc = l->auth_on ? 0 : srrs_crc32c(srrs_crc32c(0, h, sizeof(*h)), payload, h->len);
    h->crc = want;
    if (crc != want) {
        l->st.crc_errors++;
        link_drop(l, "frame CRC32C mismatch");
        return -1;
    }
    if (h->seq != l->rx_seq) {
        l->st.proto_errors++;
        link_drop(l, "frame out of sequence");
        return -1;
    }
    errno = 0;
    if (!rx_frame(l, h, payload, own)) {
        if (errno == ENOBUFS && !*own)
            return 0; /* out of buffers: leave it, retry next poll */
        static const char *const names[T_MAX] = {
            "?", "HELLO", "PING", "WRITE", "WRITE_REF", "FORWARD", "ACK", "FWD_DONE", "READ",
            "READ_DATA", "BITMAP", "RESYNC", "RESYNC_DONE"};
        char why[64];
        snprintf(why, sizeof(why), "bad %s frame (tag %#x)", names[h->type], h->tag);
        l->st.proto_errors++;
        link_drop(l, why);
        return -1;
    }
    l->rx_seq++;
    l->st.rx_frames++;
    return l->fd < 0 ? -1 : 1;
}

static int rx_poll(struct mlink *l)
{
    int work = 0;
    for (;;) {
        if (l->dbuf) {
            ssize_t k = recv(l->fd, l->dbuf + l->dgot, l->dh.len - l->dgot, MSG_DONTWAIT);
            if (k == 0) {
                link_drop(l, "peer closed the connection");
                return 1;
            }
            if (k < 0) {
                if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    link_drop(l, "receive failed");
                    return 1;
                }
                return work;
            }
            l->dgot += (size_t)k;
            l->st.rx_bytes += (uint64_t)k;
            l->last_rx = srrs_ticks();
            work = 1;
            if (l->dgot < l->dh.len)
                return work;
            void *own = l->dbuf;
            l->dbuf = NULL;
            int rc = rx_check(l, &l->dh, own, &own);
            if (own)
                srrs_buf_put(l->r, own, l->dh.len);
            if (rc < 0)
                return 1;
            continue;
        }
        if (l->rx_start && l->rx_end == l->rx_start)
            l->rx_start = l->rx_end = 0;
        if (l->rx_start > M_RXBUF / 2) {
            memmove(l->rx, l->rx + l->rx_start, l->rx_end - l->rx_start);
            l->rx_end -= l->rx_start;
            l->rx_start = 0;
        }
        if (l->rx_end < M_RXBUF) {
            ssize_t k = recv(l->fd, l->rx + l->rx_end, SRRS_MIN(M_RX_RECV, M_RXBUF - l->rx_end),
                             MSG_DONTWAIT);
            if (k == 0) {
                link_drop(l, "peer closed the connection");
                return 1;
            }
            if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                link_drop(l, "receive failed");
                return 1;
            }
            if (k > 0) {
                l->rx_end += (size_t)k;
                l->st.rx_bytes += (uint64_t)k;
                l->last_rx = srrs_ticks();
                work = 1;
            }
        }
        bool progress = false;
        while (l->rx_end - l->rx_start >= M_HDR) {
            struct mhdr h;
            memcpy(&h, l->rx + l->rx_start, sizeof(h)); /* copy out before trusting it */
            if (h.magic != M_MAGIC || h.type == 0 || h.type >= T_MAX || h.len > M_CHUNK) {
                l->st.proto_errors++;
                link_drop(l, "bad frame header");
                return 1;
            }
            size_t have = l->rx_end - l->rx_start - M_HDR;
            if (have < h.len && h.len >= M_RX_DIRECT) {
                /* A large frame not yet here: the rest goes straight into a pool
                 * buffer that the piece keeps (no copy out of the ring). */
                uint8_t *b = srrs_buf_get(l->r, h.len);
                if (b) {
                    memcpy(b, l->rx + l->rx_start + M_HDR, have);
                    l->dh = h;
                    l->dbuf = b;
                    l->dgot = have;
                    l->rx_start = l->rx_end;
                    progress = true;
                    break;
                }
            }
            if (have < h.len)
                break;
            void *own = NULL;
            int rc = rx_check(l, &h, l->rx + l->rx_start + M_HDR, &own);
            if (rc < 0)
                return 1;
            if (rc == 0)
                break;
            l->rx_start += M_HDR + h.len;
            progress = true;
        }
        if (!progress)
            break;
        work = 1;
    }
    return work;
}

/* ---- connection ----------------------------------------------------------------------- */

static void resolve_held(struct mlink *l);

static int conn_poll(void *arg)
{
    struct mlink *l = arg;
    if (l->fd < 0)
        return 0;
    if (l->connecting) {
        int err = 0;
        socklen_t sl = sizeof(err);
        getsockopt(l->fd, SOL_SOCKET, SO_ERROR, &err, &sl);
        if (err) {
            close(l->fd);
            l->fd = -1;
            l->connecting = false;
            srrs_poller_unregister(&l->p_conn);
            return 0;
        }
        struct sockaddr_storage ss;
        sl = sizeof(ss);
        if (getpeername(l->fd, (struct sockaddr *)&ss, &sl))
            return 0; /* still connecting */
        l->connecting = false;
        l->up = true;
        l->st.connects++;
        l->conn_gen++;
        l->last_rx = srrs_ticks();
        frame_send(l, T_HELLO, NULL, 0, (uint64_t)l->o.node, 0, 0, NULL, 0, 0, NULL);
    }
    /* A recv() that finds nothing costs a syscall per poll round; while the
     * peer is quiet, try again after 1, 2, 4, 8 us rather than every round. */
    int work = 0;
    uint64_t now = srrs_ticks();
    if (now >= l->rx_next) {
        work = rx_poll(l);
        if (work) {
            l->rx_idle = 0;
            l->rx_next = 0;
        } else {
            l->rx_next = now + (l->tick_us << SRRS_MIN(l->rx_idle, 3u));
            l->rx_idle++;
        }
    }
    if (l->fd >= 0)
        work |= tx_flush(l);
    return work;
}

static int conn_presleep(void *arg)
{
    struct mlink *l = arg;
    return l->fd >= 0 && !l->connecting && l->txq && tx_flush(l);
}

static int conn_attach(struct mlink *l, int fd, bool connecting)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    int sz = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
    l->fd = fd;
    l->connecting = connecting;
    l->ev_mask = connecting ? EPOLLOUT : EPOLLIN;
    l->hello_rx = false;
    l->rx_start = l->rx_end = 0;
    l->tx_seq = l->rx_seq = 0;
    l->p_conn = srrs_poller_register(l->r, conn_poll, l, 0);
    if (!l->p_conn || srrs_poller_set_fd(l->p_conn, fd, connecting ? EPOLLOUT : EPOLLIN, false)) {
        if (l->p_conn)
            srrs_poller_unregister(&l->p_conn);
        close(fd);
        l->fd = -1;
        return -ENOMEM;
    }
    srrs_poller_set_presleep(l->p_conn, conn_presleep);
    if (!connecting) {
        l->up = true;
        l->st.connects++;
        l->conn_gen++;
        l->last_rx = srrs_ticks();
        frame_send(l, T_HELLO, NULL, 0, (uint64_t)l->o.node, 0, 0, NULL, 0, 0, NULL);
    }
    return 0;
}

static void link_drop(struct mlink *l, const char *why)
{
    if (l->fd < 0)
        return;
    bool was_up = l->hello_rx;
    srrs_poller_unregister(&l->p_conn);
    close(l->fd);
    l->fd = -1;
    l->up = l->hello_rx = l->connecting = false;
    l->conn_gen++; /* answers to anything sent on the old connection are void */
    while (l->txq) {
        struct frame *f = l->txq;
        l->txq = f->next;
        frame_free(l, f);
    }
    l->txq_tail = NULL;
    l->rx_start = l->rx_end = 0;
    if (l->dbuf) {
        srrs_buf_put(l->r, l->dbuf, l->dh.len);
        l->dbuf = NULL;
    }
    l->last_try = srrs_ticks();
    if (mode_needs_peer(l->mode))
        l->need_rejoin = true;
    /* Everything that waited for the peer is held until the mode says what it means. */
    for (uint32_t i = 0; i < M_NPIECES; i++) {
        struct piece *p = &l->pieces[i];
        if (p->kind == P_FREE || !p->remote_wait)
            continue;
        if (p->kind == P_COPY) {
            p->remote_wait = false;
            p->status = -ENOTCONN;
            piece_step(l, p);
        } else if (p->kind == P_PEER_FWD) {
            p->remote_wait = false; /* finishes locally; no answer goes out */
            piece_step(l, p);
        } else if (p->kind == P_HOST_READ) {
            p->remote_wait = false;
            p->status = -ENOTCONN;
            piece_step(l, p);
        } else {
            mark_dirty(p->m, p->stripe);
            p->conn_gen = 0;
        }
    }
    for (int i = 0; i < M_MAX_VOLS; i++) {
        struct mirror *m = l->vols[i];
        if (m && mode_resync(l->mode)) {
            m->resync_ready = false;
            m->peer_bm_done = false;
        }
    }
    if (was_up)
        srrs_event_post(l->core, SRRS_EV_MIRROR_DOWN, l->conn_gen, 0, "mirror-link",
                        "mirror link down: %s", why);
}

static int sock_addr(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res;
    char ps[8];
    snprintf(ps, sizeof(ps), "%u", port);
    if (getaddrinfo(host, ps, &hints, &res))
        return -EINVAL;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static void try_connect(struct mlink *l)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    if (sock_addr(l->o.peer_host, l->o.peer_port, &ss, &sl))
        return;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    int rc = connect(fd, (struct sockaddr *)&ss, sl);
    if (rc && errno != EINPROGRESS) {
        close(fd);
        return;
    }
    if (l->auth_on)
        mauth_add(&l->auth, fd, true, rc != 0, &ss); /* the link's once it authenticated */
    else
        conn_attach(l, fd, rc != 0);
}

static void auth_refused(void *arg, const struct sockaddr_storage *from, const char *why)
{
    struct mlink *l = arg;
    l->st.auth_failures++;
    uint64_t now = srrs_ticks();
    if (l->auth_ev_at && now - l->auth_ev_at < srrs_us_to_ticks(1000000))
        return; /* one report a second: a flood must not flood the events */
    l->auth_ev_at = now;
    char host[64] = "?";
    getnameinfo((const struct sockaddr *)from, sizeof(*from), host, sizeof(host), NULL, 0,
                NI_NUMERICHOST);
    srrs_event_post(l->core, SRRS_EV_PROTO_ERROR, l->st.auth_failures, 0, "mirror-link",
                    "mirror connection from %s refused: %s (%llu refused so far)", host, why,
                    (unsigned long long)l->st.auth_failures);
}

/* The connection proved it holds the pair's secret: now, and only now, it may
 * become the link (if the link has no connection). */
static void auth_done(void *arg, int fd, const uint8_t ktx[MA_KEY], const uint8_t krx[MA_KEY])
{
    struct mlink *l = arg;
    if (l->fd >= 0 || l->need_rejoin) {
        close(fd);
        return;
    }
    fmac_key(&l->ftx, ktx);
    fmac_key(&l->frx, krx);
    l->last_rx_conn = srrs_ticks();
    conn_attach(l, fd, false);
}

static bool addr_allowed(struct mlink *l, const struct sockaddr_storage *ss)
{
    if (!l->nallow)
        return true;
    for (int i = 0; i < l->nallow; i++) {
        const struct sockaddr_storage *a = &l->allow[i];
        if (a->ss_family != ss->ss_family)
            continue;
        if (a->ss_family == AF_INET &&
            ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
                ((const struct sockaddr_in *)ss)->sin_addr.s_addr)
            return true;
        if (a->ss_family == AF_INET6 &&
            !memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                    &((const struct sockaddr_in6 *)ss)->sin6_addr, 16))
            return true;
    }
    return false;
}

static int listen_poll(void *arg)
{
    struct mlink *l = arg;
    struct sockaddr_storage ss = {0};
    socklen_t sl = sizeof(ss);
    int fd = accept4(l->lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return 0;
    if (l->o.node == 0) {
        close(fd); /* node 0 dials */
        return 1;
    }
    if (!addr_allowed(l, &ss)) {
        close(fd);
        auth_refused(l, &ss, "source address not allowed");
        return 1;
    }
    /* Even while the link is up, a connection runs the handshake (a stranger
     * is counted); only auth_done decides whether it may take the link. */
    if (l->auth_on)
        mauth_add(&l->auth, fd, false, false, &ss);
    else if (l->fd >= 0 || l->need_rejoin)
        close(fd); /* one connection at a time */
    else
        conn_attach(l, fd, false);
    return 1;
}

static int timer_poll(void *arg)
{
    struct mlink *l = arg;
    uint64_t now = srrs_ticks();
    if (l->fd >= 0 && !l->connecting) {
        /* Authenticated: only the peer's own frames prove it alive, not
         * whatever bytes a third party keeps putting into the stream. */
        uint64_t heard = l->auth_on ? SRRS_MAX(l->last_mac_rx, l->last_rx_conn) : l->last_rx;
        if (now - heard > srrs_us_to_ticks((uint64_t)l->o.timeout_ms * 1000)) {
            link_drop(l, "peer silent");
            return 1;
        }
        if (link_ready(l) && now - l->rl_asked >= l->rl_len / 4) {
            rl_ask(l, now); /* renewal, whatever else is sent (it is a PING too) */
            tx_flush(l);
        } else if (now - l->last_tx >= srrs_us_to_ticks((uint64_t)l->o.ping_ms * 1000)) {
            frame_send(l, T_PING, NULL, 0, 0, 0, 0, NULL, 0, 0, NULL);
            tx_flush(l);
        }
    } else if (l->fd >= 0 && l->connecting &&
               now - l->last_try > srrs_us_to_ticks((uint64_t)l->o.timeout_ms * 1000)) {
        srrs_poller_unregister(&l->p_conn);
        close(l->fd);
        l->fd = -1;
        l->connecting = false;
    } else if (l->fd < 0 && l->o.node == 0 && !l->need_rejoin && !mauth_dialing(&l->auth) &&
               now - l->last_try > srrs_us_to_ticks(100000)) {
        l->last_try = now;
        try_connect(l);
    }
    if (l->rwait)
        rl_retry(l, true);
    if (l->solo_wait && (now >= l->rl_granted || !lease_ok(l))) {
        /* The peer's read lease from us is over: solo may begin (or the
         * witness lease ended first: fenced, below). */
        l->solo_wait = false;
        l->mode = MODE_SOLO;
        l->st.mode = MODE_SOLO;
        l->need_rejoin = false; /* as set_mode_fn: what waited for the old link settles now */
        if (lease_ok(l))
            resolve_held(l);
    }
    /* SOLO past the lease: fence by ourselves, whatever the control plane does. */
    if (l->mode == MODE_SOLO && !lease_ok(l)) {
        l->mode = MODE_FENCED;
        resolve_held(l);
        srrs_event_post(l->core, SRRS_EV_MIRROR_DOWN, 0, 0, "mirror-link",
                        "lease expired: mirror fenced itself");
    }
    return 0;
}

/* ---- mode changes ----------------------------------------------------------------------- */

/* After a mode change: what the held pieces mean now. */
static void resolve_held(struct mlink *l)
{
    rl_retry(l, false);
    /* pieces held before they were sent (forwarder without link, resync not ready) */
    struct piece *h = l->held;
    l->held = NULL;
    while (h) {
        struct piece *next = h->next;
        h->next = NULL;
        h->waiting = false;
        piece_dispatch(l, h);
        h = next;
    }
    /* pieces whose remote part was lost with a connection */
    for (uint32_t i = 0; i < M_NPIECES; i++) {
        struct piece *p = &l->pieces[i];
        if (p->kind == P_FREE || !p->remote_wait || p->conn_gen != 0)
            continue;
        if (l->mode == MODE_SOLO || l->mode == MODE_FENCED) {
            mark_dirty(p->m, p->stripe);
            p->remote_wait = false;
            if (p->kind == P_HOST_WRITE && !p->locked) {
                /* forwarded and lost: apply it here ourselves (in SOLO) */
                if (l->mode == MODE_SOLO && !p->status) {
                    if (p->applied) {
                        /* the owner's WRITE_REF came: our copy is (being) written;
                         * it completes with that write, under the lease */
                        piece_step(l, p);
                        continue;
                    }
                    p->applied = true;
                    ordered_write(l, p);
                    continue;
                }
                p->status = -ENOTCONN;
            } else if (l->mode == MODE_FENCED && !p->status) {
                p->status = -ENOTCONN;
            }
            piece_step(l, p);
        }
    }
}

struct mode_arg {
    struct mlink *l;
    int mode;
    uint64_t deadline;
    int full;
};

static void set_mode_fn(void *a)
{
    struct mode_arg *x = a;
    struct mlink *l = x->l;
    int old = l->mode;
    l->mode = x->mode;
    l->lease_deadline = x->deadline;
    l->st.mode = x->mode;
    l->solo_wait = false;
    if (x->mode == MODE_SOLO && srrs_ticks() < l->rl_granted) {
        /* The peer may still read alone on our grant: hold (pending) until it
         * ran out; timer_poll goes solo then. */
        l->solo_wait = true;
        l->mode = l->st.mode = MODE_PENDING;
        rl_retry(l, false);
        return;
    }
    if (x->mode == MODE_SOLO || x->mode == MODE_FENCED)
        l->need_rejoin = false; /* what waited for the old connection is settled now */
    if (old != x->mode && mode_resync(x->mode)) {
        for (int i = 0; i < M_MAX_VOLS; i++) {
            struct mirror *m = l->vols[i];
            if (!m)
                continue;
            m->resync_ready = m->peer_bm_done = false;
            m->resync_done = m->resync_active = false;
            m->resync_bytes = 0;
            memset(m->peer_bm, 0, m->bm_len);
        }
    }
    if (x->mode == MODE_SOLO || x->mode == MODE_FENCED || x->mode == MODE_PAIRED)
        resolve_held(l);
}

static void resync_start_fn(void *a)
{
    struct mode_arg *x = a;
    struct mlink *l = x->l;
    for (int i = 0; i < M_MAX_VOLS; i++) {
        struct mirror *m = l->vols[i];
        if (!m)
            continue;
        /* Entering the resync mode reset the volume's resync state; the peer's
         * bitmap may already be here (it started first): then we are running. */
        if (m->resync_ready || m->resync_done)
            continue;
        m->resync_full = x->full && l->mode == MODE_RSRC;
        if (x->full && l->mode == MODE_RTGT)
            memset(m->bm, 0xff, m->bm_len); /* everything here is suspect */
        if (link_ready(l))
            send_bitmap(m, 0);
    }
}

/* ---- the bdev ------------------------------------------------------------------------------ */

static int split_iov(const struct srrs_io *io, uint64_t at, uint64_t len, struct iovec *out)
{
    int n = 0;
    uint64_t pos = 0;
    for (int i = 0; i < io->iovcnt && len; i++) {
        uint64_t il = io->iov[i].iov_len;
        if (pos + il <= at) {
            pos += il;
            continue;
        }
        uint64_t skip = at > pos ? at - pos : 0;
        uint64_t take = SRRS_MIN(il - skip, len);
        if (n == M_PIECE_IOV)
            return -1;
        out[n].iov_base = (uint8_t *)io->iov[i].iov_base + skip;
        out[n].iov_len = take;
        n++;
        len -= take;
        at += take;
        pos += il;
    }
    return len ? -1 : n;
}

static void host_start(void *arg)
{
    struct srrs_io *io = arg;
    struct mirror *m = io->bdev->ctx;
    struct mlink *l = m->l;
    struct hctx *h = (struct hctx *)io->driver_ctx;
    h->status = 0;
    if (io->op == SRRS_IO_FLUSH) {
        h->left = 1;
        struct piece *p = piece_get(l, P_FLUSH, m);
        if (!p) {
            struct piece fake = {.host = io};
            piece_host_done(l, &fake, -ENOMEM);
            return;
        }
        p->host = io;
        host_read_start(l, p);
        return;
    }
    bool zero = io->op == SRRS_IO_WRITE_ZEROES || io->op == SRRS_IO_UNMAP;
    bool write = io->op == SRRS_IO_WRITE || zero;
    /* count pieces first: the host I/O completes when the last one does */
    uint32_t n = 0;
    for (uint64_t at = io->offset; at < io->offset + io->len; n++) {
        uint64_t end = SRRS_MIN(((at >> m->stripe_shift) + 1) << m->stripe_shift,
                                io->offset + io->len);
        at = SRRS_MIN(end, at + M_CHUNK);
    }
    h->left = n + 1; /* +1: held until every piece is started */
    for (uint64_t at = io->offset; at < io->offset + io->len;) {
        uint64_t end = SRRS_MIN(((at >> m->stripe_shift) + 1) << m->stripe_shift,
                                io->offset + io->len);
        end = SRRS_MIN(end, at + M_CHUNK);
        struct piece *p = piece_get(l, write ? P_HOST_WRITE : P_HOST_READ, m);
        if (!p) {
            h->status = -ENOMEM;
            h->left--;
            at = end;
            continue;
        }
        p->host = io;
        p->off = at;
        p->len = end - at;
        p->stripe = at >> m->stripe_shift;
        if (zero) {
            p->iov[0].iov_base = (void *)srrs_zero_buf;
            p->iov[0].iov_len = p->len;
            p->iovcnt = 1;
        } else {
            p->iovcnt = split_iov(io, at - io->offset, p->len, p->iov);
        }
        if (p->iovcnt < 0) {
            piece_host_done(l, p, -EINVAL);
            piece_put(l, p);
        } else {
            piece_dispatch(l, p);
        }
        at = end;
    }
    struct piece fake = {.host = io};
    piece_host_done(l, &fake, 0);
}

static void mirror_submit(struct srrs_bdev *b, void *ch, struct srrs_io *io)
{
    (void)ch;
    struct mirror *m = b->ctx;
    if (io->r == m->l->r) {
        host_start(io);
        return;
    }
    int rc;
    while ((rc = srrs_reactor_send(m->l->r, host_start, io)) == -EAGAIN)
        ;
    if (rc)
        srrs_io_complete(io, rc);
}

static void mirror_free(struct mirror *m)
{
    if (m->bm)
        munmap(m->bm, m->bm_len);
    free(m->locked);
    free(m->need);
    free(m->peer_bm);
    if (m->replica) {
        /* The replica is an ordinary bdev again, under its own name. */
        m->replica->owner[0] = 0;
        if (m->renamed && srrs_bdev_rename(m->l->core, m->replica, m->replica_name))
            srrs_event_post(m->l->core, SRRS_EV_LOG, 0, 0, m->replica_name,
                            "replica %s keeps its internal name: %s", m->replica_name,
                            srrs_last_error());
        srrs_bdev_close(&m->replica);
    }
    free(m);
}

struct vol_arg {
    struct mlink *l;
    struct mirror *m;
    bool busy;
    bool force;
};

static void unlist(struct piece **head, struct piece *p)
{
    for (struct piece **pp = head; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            p->next = NULL;
            return;
        }
    }
}

static void vol_detach_fn(void *a)
{
    struct vol_arg *x = a;
    struct mirror *m = x->m;
    struct mlink *l = x->l;
    for (uint32_t i = 0; i < M_NPIECES; i++) {
        struct piece *p = &l->pieces[i];
        if (p->kind == P_FREE || p->m != m)
            continue;
        if (x->force && !p->local_wait) {
            /* Deleting under a peer that never answers: fail what waits for it. */
            if (p->waiting) {
                unlist(&l->held, p);
                unlist(&l->rwait, p);
                unlist(&m->lock_wait, p);
                p->waiting = false;
            }
            if (p->kind == P_COPY)
                m->ncopy--;
            p->locked = false;
            if (p->host)
                piece_host_done(l, p, -ENOTCONN);
            piece_put(l, p);
            continue;
        }
        x->busy = true;
    }
    if (!x->busy)
        l->vols[m->vol] = NULL;
}

static void mirror_destroy(struct srrs_bdev *b)
{
    struct mirror *m = b->ctx;
    struct vol_arg x = {m->l, m, false, false};
    for (int i = 0; i < 10000; i++) {
        x.busy = false;
        x.force = i >= 500; /* 0.5 s for in-flight I/O to finish by itself */
        srrs_reactor_call(m->l->r, vol_detach_fn, &x);
        if (!x.busy)
            break;
        usleep(1000);
    }
    msync(m->bm, m->bm_len, MS_SYNC);
    mirror_free(m);
}

static const struct srrs_bdev_module mirror_module = {
    .name = "mirror",
    .submit = mirror_submit,
    .destroy = mirror_destroy,
};

/* ---- control ----------------------------------------------------------------------------------- */

struct link_arg {
    struct mlink *l;
    int rc;
};

static void link_start_fn(void *a)
{
    struct link_arg *x = a;
    struct mlink *l = x->l;
    l->p_timer = srrs_poller_register(l->r, timer_poll, l, SRRS_MAX(1u, l->o.ping_ms / 2) * 1000u);
    if (l->lfd >= 0) {
        /* Timed, not every loop: an accept4() per poll round costs a syscall per
         * round for nothing (the fd still wakes a sleeping reactor). */
        l->p_listen = srrs_poller_register(l->r, listen_poll, l, 5000);
        if (!l->p_listen || srrs_poller_set_fd(l->p_listen, l->lfd, EPOLLIN, false))
            x->rc = -ENOMEM;
    }
    if (!l->p_timer)
        x->rc = -ENOMEM;
    l->last_try = 0;
}

static void link_stop_fn(void *a)
{
    struct link_arg *x = a;
    struct mlink *l = x->l;
    if (l->fd >= 0)
        link_drop(l, "link destroyed");
    mauth_close_all(&l->auth);
    l->mode = MODE_FENCED;
    resolve_held(l);
    srrs_poller_unregister(&l->p_timer);
    srrs_poller_unregister(&l->p_listen);
    if (l->stop_hook >= 0)
        srrs_reactor_del_stop_hook(l->r, l->stop_hook);
}

static void link_on_stop(void *arg)
{
    /* Reactor stopping: nothing may wait for a peer any more. */
    struct mlink *l = arg;
    l->stop_hook = -1;
    l->mode = MODE_FENCED;
    link_drop(l, "reactor stopping");
    mauth_close_all(&l->auth);
    resolve_held(l);
}

static void hook_fn(void *a)
{
    struct mlink *l = a;
    l->stop_hook = srrs_reactor_add_stop_hook(l->r, link_on_stop, l);
}

static void link_free(struct mlink *l)
{
    OPENSSL_cleanse(l->auth.secret, sizeof(l->auth.secret));
    fmac_free(&l->ftx);
    fmac_free(&l->frx);
    if (l->lfd >= 0)
        close(l->lfd);
    free(l->pieces);
    free(l->frames);
    if (l->rx)
        srrs_mem_free(l->rx, M_RXBUF);
    free(l);
}

static int auth_setup(struct mlink *l)
{
    struct srrs_mirror_link_opts *o = &l->o;
    if (o->secret_len != 0 && o->secret_len != MA_KEY)
        return srrs_err(-EINVAL, "mirror link: the secret must be %d bytes, not %u", MA_KEY,
                        o->secret_len);
    l->auth_on = o->secret_len == MA_KEY;
    l->auth.r = l->r;
    memcpy(l->auth.secret, o->secret, MA_KEY);
    OPENSSL_cleanse(o->secret, sizeof(o->secret)); /* the copy in l->auth is the one */
    l->auth.done = auth_done;
    l->auth.fail = auth_refused;
    l->auth.arg = l;
    if (l->auth_on && (fmac_init(&l->ftx) || fmac_init(&l->frx)))
        return srrs_err(-ENOMEM, "mirror link: no cipher context for the frame MACs");
    for (int i = 0; i < 4; i++) {
        o->allow[i][sizeof(o->allow[i]) - 1] = 0;
        if (!o->allow[i][0])
            continue;
        struct addrinfo hints = {.ai_flags = AI_NUMERICHOST}, *res;
        if (getaddrinfo(o->allow[i], NULL, &hints, &res))
            return srrs_err(-EINVAL, "mirror link: allow: %s is not a numeric address",
                            o->allow[i]);
        memcpy(&l->allow[l->nallow++], res->ai_addr, res->ai_addrlen);
        freeaddrinfo(res);
    }
    return 0;
}

int srrs_mirror_link_create(struct srrs_core *core, const struct srrs_mirror_link_opts *o,
                            struct srrs_mirror_link **out)
{
    struct srrs_reactor *r = srrs_core_reactor(core, o->reactor);
    if (!r)
        return srrs_err(-EINVAL, "mirror link: no reactor %d", o->reactor);
    if (o->node != 0 && o->node != 1)
        return srrs_err(-EINVAL, "mirror link: node must be 0 or 1");
    struct mlink *l = calloc(1, sizeof(*l));
    if (!l)
        return srrs_err(-ENOMEM, "mirror link: out of memory");
    l->core = core;
    l->r = r;
    l->o = *o;
    l->o.listen_host[sizeof(l->o.listen_host) - 1] = 0;
    l->o.peer_host[sizeof(l->o.peer_host) - 1] = 0;
    if (!l->o.ping_ms)
        l->o.ping_ms = 50;
    if (!l->o.timeout_ms)
        l->o.timeout_ms = 1000;
    if (!l->o.read_lease_ms)
        l->o.read_lease_ms = 500;
    l->rl_len = srrs_us_to_ticks((uint64_t)l->o.read_lease_ms * 1000);
    /* A previous incarnation of this controller may have granted just now. */
    l->rl_granted = srrs_ticks() + l->rl_len + l->rl_len / 16 + srrs_us_to_ticks(1000);
    l->fd = -1;
    l->lfd = -1;
    l->stop_hook = -1;
    l->tick_us = SRRS_MAX(1u, srrs_us_to_ticks(1));
    l->mode = MODE_FENCED;
    l->pieces = calloc(M_NPIECES, sizeof(*l->pieces));
    l->frames = calloc(M_NFRAMES, sizeof(*l->frames));
    l->rx = srrs_mem_alloc(M_RXBUF, NULL);
    if (!l->pieces || !l->frames || !l->rx) {
        link_free(l);
        return srrs_err(-ENOMEM, "mirror link: out of memory");
    }
    for (uint32_t i = 0; i < M_NPIECES; i++) {
        l->pieces[i].idx = (uint16_t)i;
        l->pieces[i].next = i + 1 < M_NPIECES ? &l->pieces[i + 1] : NULL;
    }
    l->pfree = &l->pieces[0];
    for (uint32_t i = 0; i < M_NFRAMES; i++)
        l->frames[i].next = i + 1 < M_NFRAMES ? &l->frames[i + 1] : NULL;
    l->ffree = &l->frames[0];
    int rc = auth_setup(l);
    if (rc) {
        link_free(l);
        return rc;
    }
    /* Both nodes listen (node 1 accepts, node 0 refuses): the address is reserved. */
    struct sockaddr_storage ss;
    socklen_t sl;
    if (sock_addr(l->o.listen_host, l->o.listen_port, &ss, &sl)) {
        link_free(l);
        return srrs_err(-EINVAL, "mirror link: cannot resolve %s", o->listen_host);
    }
    l->lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (l->lfd < 0 || setsockopt(l->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
        bind(l->lfd, (struct sockaddr *)&ss, sl) || listen(l->lfd, 4)) {
        int e = errno;
        link_free(l);
        return srrs_err(-e, "mirror link: cannot listen on %s:%u: %s", o->listen_host,
                        o->listen_port, strerror(e));
    }
    struct link_arg x = {l, 0};
    srrs_reactor_call(r, link_start_fn, &x);
    if (x.rc) {
        srrs_reactor_call(r, link_stop_fn, &x);
        link_free(l);
        return srrs_err(x.rc, "mirror link: cannot register pollers");
    }
    srrs_reactor_call(r, hook_fn, l);
    *out = (struct srrs_mirror_link *)l;
    return 0;
}

int srrs_mirror_link_destroy(struct srrs_mirror_link **pl)
{
    struct mlink *l = pl ? (struct mlink *)*pl : NULL;
    if (!l)
        return 0;
    for (int i = 0; i < M_MAX_VOLS; i++)
        if (l->vols[i])
            return srrs_err(-EBUSY, "mirror link: mirror %s still exists",
                            l->vols[i]->bdev->name);
    struct link_arg x = {l, 0};
    srrs_reactor_call(l->r, link_stop_fn, &x);
    link_free(l);
    *pl = NULL;
    return 0;
}

static void vol_attach_fn(void *a)
{
    struct vol_arg *x = a;
    if (x->l->vols[x->m->vol])
        x->busy = true;
    else
        x->l->vols[x->m->vol] = x->m;
}

int srrs_mirror_create(struct srrs_mirror_link *link, const char *name, const char *replica,
                       uint32_t vol_id, uint64_t stripe_size, const char *bitmap_path)
{
    struct mlink *l = (struct mlink *)link;
    if (vol_id >= M_MAX_VOLS)
        return srrs_err(-EINVAL, "mirror %s: volume id %u out of range 0..%d", name, vol_id,
                        M_MAX_VOLS - 1);
    if (stripe_size < 65536 || (stripe_size & (stripe_size - 1)))
        return srrs_err(-EINVAL, "mirror %s: stripe size must be a power of two >= 64 KiB",
                        name);
    struct mirror *m = calloc(1, sizeof(*m));
    if (!m)
        return srrs_err(-ENOMEM, "mirror %s: out of memory", name);
    m->l = l;
    m->vol = vol_id;
    m->replica = srrs_bdev_open(l->core, replica);
    if (!m->replica) {
        free(m);
        return srrs_err(-ENOENT, "mirror %s: replica bdev %s does not exist", name, replica);
    }
    if (m->replica->owner[0] || atomic_load(&m->replica->open_count) > 1) {
        /* A replica written by anything but this mirror would differ from its peer. */
        int rc = srrs_err(-EBUSY, "mirror %s: replica bdev %s is in use (%s)", name, replica,
                          m->replica->owner[0] ? m->replica->owner : "an export or a job");
        srrs_bdev_close(&m->replica);
        free(m);
        return rc;
    }
    snprintf(m->replica_name, sizeof(m->replica_name), "%s", replica);
    if (!strcmp(name, replica)) {
        /* The paired volume is exported under its own name: the raw replica
         * steps aside to an internal name. */
        char internal[SRRS_NAME_MAX];
        int rc = snprintf(internal, sizeof(internal), "%s.replica", replica) >= (int)sizeof(internal)
                     ? srrs_err(-ENAMETOOLONG, "mirror %s: name too long", name)
                     : srrs_bdev_rename(l->core, m->replica, internal);
        if (rc) {
            srrs_bdev_close(&m->replica);
            free(m);
            return rc;
        }
        m->renamed = true;
    }
    snprintf(m->replica->owner, sizeof(m->replica->owner), "%s", name);
    m->size = m->replica->size;
    m->stripe = stripe_size;
    m->stripe_shift = (uint32_t)__builtin_ctzll(stripe_size);
    m->nstripes = (m->size + stripe_size - 1) >> m->stripe_shift;
    m->bm_len = (m->nstripes + 7) / 8;
    m->locked = calloc(m->nstripes, 1);
    m->need = calloc(m->nstripes, 1);
    m->peer_bm = calloc(m->bm_len, 1);
    int fd = open(bitmap_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || !m->locked || !m->need || !m->peer_bm) {
        int e = fd < 0 ? errno : ENOMEM;
        if (fd >= 0)
            close(fd);
        mirror_free(m);
        return srrs_err(-e, "mirror %s: bitmap %s: %s", name, bitmap_path, strerror(e));
    }
    struct stat st;
    bool fresh = fstat(fd, &st) == 0 && st.st_size == 0;
    if (ftruncate(fd, (off_t)m->bm_len)) {
        int e = errno;
        close(fd);
        mirror_free(m);
        return srrs_err(-e, "mirror %s: bitmap %s: %s", name, bitmap_path, strerror(e));
    }
    m->bm = mmap(NULL, m->bm_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m->bm == MAP_FAILED) {
        m->bm = NULL;
        mirror_free(m);
        return srrs_err(-ENOMEM, "mirror %s: cannot map bitmap %s", name, bitmap_path);
    }
    (void)fresh;
    struct vol_arg x = {l, m, false, false};
    srrs_reactor_call(l->r, vol_attach_fn, &x);
    if (x.busy) {
        mirror_free(m);
        return srrs_err(-EEXIST, "mirror %s: volume id %u already used", name, vol_id);
    }
    int rc = srrs_bdev_register(l->core, name, &mirror_module, m, m->replica->num_blocks,
                                m->replica->block_size, &m->bdev);
    if (rc) {
        x.busy = false;
        srrs_reactor_call(l->r, vol_detach_fn, &x);
        mirror_free(m);
        return rc;
    }
    snprintf(m->bdev->path, sizeof(m->bdev->path), "%s", m->replica->name);
    return 0;
}

int srrs_mirror_set_mode(struct srrs_mirror_link *link, int mode, uint64_t lease_deadline_ns)
{
    struct mlink *l = (struct mlink *)link;
    if (mode < MODE_FENCED || mode > MODE_PENDING)
        return srrs_err(-EINVAL, "mirror: mode %d unknown", mode);
    struct mode_arg x = {l, mode, lease_deadline_ns, 0};
    srrs_reactor_call(l->r, set_mode_fn, &x);
    return 0;
}

int srrs_mirror_resync_start(struct srrs_mirror_link *link, int full)
{
    struct mlink *l = (struct mlink *)link;
    struct mode_arg x = {l, 0, 0, full};
    if (!mode_resync(l->mode))
        return srrs_err(-EINVAL, "mirror: resync needs mode resync_source or resync_target");
    srrs_reactor_call(l->r, resync_start_fn, &x);
    return 0;
}

struct info_arg {
    struct mlink *l;
    const char *name;
    struct srrs_mirror_info *mi;
    struct srrs_mirror_link_info *li;
    int rc;
};

static void info_fn(void *a)
{
    struct info_arg *x = a;
    struct mlink *l = x->l;
    if (x->li) {
        *x->li = l->st;
        x->li->up = link_ready(l);
        x->li->mode = l->mode;
        uint64_t held = 0;
        for (uint32_t i = 0; i < M_NPIECES; i++)
            if (l->pieces[i].kind == P_HOST_WRITE && l->pieces[i].remote_wait &&
                !l->pieces[i].conn_gen)
                held++;
        for (struct piece *p = l->held; p; p = p->next)
            held++;
        x->li->held_writes = held;
        uint64_t now = srrs_ticks();
        x->li->read_lease_left_us = l->rl_until > now
                                        ? (int64_t)(srrs_ticks_to_ns(l->rl_until - now) / 1000) : 0;
        x->li->grant_left_us = l->rl_granted > now
                                   ? (int64_t)(srrs_ticks_to_ns(l->rl_granted - now) / 1000) : 0;
        return;
    }
    x->rc = -ENOENT;
    for (int i = 0; i < M_MAX_VOLS; i++) {
        struct mirror *m = l->vols[i];
        if (!m || strcmp(m->bdev->name, x->name))
            continue;
        struct srrs_mirror_info *o = x->mi;
        memset(o, 0, sizeof(*o));
        snprintf(o->name, sizeof(o->name), "%s", m->bdev->name);
        snprintf(o->replica, sizeof(o->replica), "%s", m->replica->name);
        o->vol_id = m->vol;
        o->mode = l->mode;
        o->stripe_size = m->stripe;
        o->stripes = m->nstripes;
        uint64_t d = 0;
        for (size_t j = 0; j < m->bm_len; j++)
            d += (uint64_t)__builtin_popcount(m->bm[j]);
        o->dirty_stripes = d;
        o->resync_left = m->resync_left;
        o->resync_bytes = m->resync_bytes;
        o->resync_active = m->resync_active;
        o->resync_done = m->resync_done;
        o->writes = m->st.writes;
        o->replicated = m->st.replicated;
        o->forwarded = m->st.forwarded;
        o->remote_reads = m->st.remote_reads;
        o->local_read_errors = m->st.local_read_errors;
        o->fenced_ios = m->st.fenced;
        x->rc = 0;
    }
}

int srrs_mirror_link_get_info(struct srrs_mirror_link *link, struct srrs_mirror_link_info *out)
{
    struct info_arg x = {(struct mlink *)link, NULL, NULL, out, 0};
    srrs_reactor_call(x.l->r, info_fn, &x);
    return 0;
}

int srrs_mirror_get_info(struct srrs_mirror_link *link, const char *name,
                         struct srrs_mirror_info *out)
{
    struct info_arg x = {(struct mlink *)link, name, out, NULL, 0};
    srrs_reactor_call(x.l->r, info_fn, &x);
    return x.rc ? srrs_err(x.rc, "mirror %s does not exist", name) : 0;
}

static void noop_fn(void *a) { (void)a; }

uint64_t srrs_core_loops_poke(struct srrs_core *core)
{
    uint64_t sum = 0;
    int n = srrs_core_num_reactors(core);
    for (int i = 0; i < n; i++) {
        struct srrs_reactor *r = srrs_core_reactor(core, i);
        srrs_reactor_send(r, noop_fn, NULL);
        struct srrs_reactor_stats st;
        if (srrs_reactor_get_stats(core, i, &st) == 0)
            sum += st.loops;
    }
    return sum;
}

/* ---- test hook --------------------------------------------------------------------- */

static void dump_fn(void *a)
{
    struct mlink *l = a;
    fprintf(stderr, "mirror link: mode %d up %d hello %d conn_gen %llu held %p\n", l->mode, l->up,
            l->hello_rx, (unsigned long long)l->conn_gen, (void *)l->held);
    for (uint32_t i = 0; i < M_NPIECES; i++) {
        struct piece *p = &l->pieces[i];
        if (p->kind == P_FREE)
            continue;
        fprintf(stderr, "  piece %u kind %d off %llu len %llu stripe %llu lw %d rw %d locked %d "
                "applied %d waiting %d relock %d conn %llu status %d\n", i, p->kind,
                (unsigned long long)p->off, (unsigned long long)p->len,
                (unsigned long long)p->stripe, p->local_wait, p->remote_wait, p->locked,
                p->applied, p->waiting, p->relock, (unsigned long long)p->conn_gen, p->status);
    }
    for (int v = 0; v < M_MAX_VOLS; v++) {
        struct mirror *m = l->vols[v];
        if (!m)
            continue;
        for (uint64_t s = 0; s < m->nstripes; s++)
            if (m->locked[s] || m->need[s])
                fprintf(stderr, "  vol %d stripe %llu locked %d need %d\n", v,
                        (unsigned long long)s, m->locked[s], m->need[s]);
    }
}

int srrs_mirror_test_dump(struct srrs_mirror_link *link)
{
    struct mlink *l = (struct mlink *)link;
    srrs_reactor_call(l->r, dump_fn, l);
    return 0;
}

struct inject_arg {
    struct mlink *l;
    uint64_t off;
    uint32_t len;
    int byte, rc;
};

static void inject_fn(void *a)
{
    static uint8_t buf[65536];
    struct inject_arg *x = a;
    struct mlink *l = x->l;
    if (!link_ready(l) || !l->vols[0] || x->len > sizeof(buf)) {
        x->rc = -EINVAL;
        return;
    }
    memset(buf, x->byte, x->len);
    struct iovec v = {buf, x->len};
    frame_send(l, T_WRITE, l->vols[0], 0xdead, x->off, 0, 0, &v, 1, x->len, NULL);
    /* What a third party can make: a well-formed frame with the next sequence
     * number and a valid CRC32C, but without the session key, a MAC it guessed. */
    l->tx_seq--;
    if (getrandom(l->txq_tail->h.mac, MA_MAC, 0) != MA_MAC)
        memset(l->txq_tail->h.mac, 0xa5, MA_MAC);
    tx_flush(l);
}

int srrs_mirror_test_inject(struct srrs_mirror_link *link, uint64_t off, uint32_t len, int byte)
{
    struct inject_arg x = {(struct mlink *)link, off, len, byte, 0};
    srrs_reactor_call(x.l->r, inject_fn, &x);
    return x.rc;
}

static void replay_fn(void *a)
{
    struct inject_arg *x = a;
    struct mlink *l = x->l;
    if (!link_ready(l)) {
        x->rc = -EINVAL;
        return;
    }
    /* The same PING twice under one sequence number: the copy is what a
     * third party that recorded the stream would play back. */
    frame_send(l, T_PING, NULL, 0, 0, 0, 0, NULL, 0, 0, NULL);
    l->tx_seq--;
    frame_send(l, T_PING, NULL, 0, 0, 0, 0, NULL, 0, 0, NULL);
    tx_flush(l);
}

int srrs_mirror_test_replay(struct srrs_mirror_link *link)
{
    struct inject_arg x = {(struct mlink *)link, 0, 0, 0, 0};
    srrs_reactor_call(x.l->r, replay_fn, &x);
    return x.rc;
}

int srrs_mirror_test_hmac(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t len,
                          uint8_t *out32)
{
    struct mac_key k;
    SHA256_CTX x;
    mac_key_set(&k, key, key_len);
    mac_begin(&k, &x);
    mac_update(&x, msg, len);
    mac_end(&k, &x, out32);
    return 0;
}

static void drop_fn(void *a) { link_drop(a, "dropped by a test"); }

int srrs_mirror_test_drop(struct srrs_mirror_link *link)
{
    struct mlink *l = (struct mlink *)link;
    srrs_reactor_call(l->r, drop_fn, l);
    return 0;
}
