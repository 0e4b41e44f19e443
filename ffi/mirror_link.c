/*
 * The mirror link (docs/architecture.md, Pair; ffi/mirror_int.h): one TCP
 * connection per pair, owned by the link's reactor. Frames out (queued,
 * CRC32C or MAC, writev), frames in (a ring, large payloads straight into a
 * pool buffer, MAC, CRC32C and sequence checked, then rx_frame hands each to
 * its type's handler), the connection (dial, accept, the authentication
 * hooks of ffi/mirror_auth.c), liveness and the link's pollers.
 */
#include "mirror_int.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ---- the socket's readiness (struct rxwatch) ------------------------------- */

#define RXW_ENTRIES 4u
#define RXW_CQ 64u

static int rxw_enter(int fd, unsigned submit, unsigned min_complete, unsigned flags)
{
    return (int)syscall(__NR_io_uring_enter, fd, submit, min_complete, flags, NULL, 0);
}

static void rxw_close(struct rxwatch *w)
{
    if (w->sqes && w->sqes != MAP_FAILED)
        munmap(w->sqes, w->sqes_len);
    if (w->ring && w->ring != MAP_FAILED)
        munmap(w->ring, w->ring_len);
    if (w->fd >= 0)
        close(w->fd);
    memset(w, 0, sizeof(*w));
    w->fd = -1;
}

/* On the link's reactor (the poll's task work goes to the task that armed
 * it). Any failure: no ring, and the link recv()s on a backoff as before. */
static void rxw_open(struct rxwatch *w)
{
    memset(w, 0, sizeof(*w));
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
    p.cq_entries = RXW_CQ;
    w->fd = (int)syscall(__NR_io_uring_setup, RXW_ENTRIES, &p);
    if (w->fd < 0 || !(p.features & IORING_FEAT_SINGLE_MMAP) ||
        !(p.features & IORING_FEAT_NODROP)) {
        rxw_close(w);
        return;
    }
    w->ring_len = SRRS_MAX(p.sq_off.array + p.sq_entries * sizeof(unsigned),
                           p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe));
    w->ring = mmap(NULL, w->ring_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, w->fd,
                   IORING_OFF_SQ_RING);
    w->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
    w->sqes = mmap(NULL, w->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, w->fd,
                   IORING_OFF_SQES);
    if (w->ring == MAP_FAILED || w->sqes == MAP_FAILED) {
        rxw_close(w);
        return;
    }
    uint8_t *r = w->ring;
    w->sq_flags = (unsigned *)(r + p.sq_off.flags);
    w->sq_head = (unsigned *)(r + p.sq_off.head);
    w->sq_tail = (unsigned *)(r + p.sq_off.tail);
    w->sq_mask = (unsigned *)(r + p.sq_off.ring_mask);
    w->sq_array = (unsigned *)(r + p.sq_off.array);
    w->cq_head = (unsigned *)(r + p.cq_off.head);
    w->cq_tail = (unsigned *)(r + p.cq_off.tail);
    w->cq_mask = (unsigned *)(r + p.cq_off.ring_mask);
    w->cqes = (struct io_uring_cqe *)(r + p.cq_off.cqes);
}

/* One SQE, submitted now (the ring has RXW_ENTRIES slots and at most one
 * request in flight besides a cancel: never full). */
static int rxw_submit(struct rxwatch *w, uint8_t op, int fd, uint64_t addr, uint32_t len,
                      uint32_t events, uint64_t user_data)
{
    unsigned tail = *w->sq_tail, idx = tail & *w->sq_mask;
    struct io_uring_sqe *sqe = &w->sqes[idx];
    memset(sqe, 0, sizeof(*sqe));
    sqe->opcode = op;
    sqe->fd = fd;
    sqe->addr = addr;
    sqe->len = len;
    sqe->poll32_events = events;
    sqe->user_data = user_data;
    w->sq_array[idx] = idx;
    __atomic_store_n(w->sq_tail, tail + 1, __ATOMIC_RELEASE);
    return rxw_enter(w->fd, 1, 0, 0) == 1 ? 0 : -1;
}

/* The multishot POLLIN on the link's socket (a socket already readable
 * posts its CQE at once). */
static void rxw_arm(struct mlink *l)
{
    struct rxwatch *w = &l->rxw;
    if (w->fd < 0 || w->armed || l->fd < 0)
        return;
    w->armed_for++; /* a cancelled poll's late CQE never matches the new one */
    w->armed = !rxw_submit(w, IORING_OP_POLL_ADD, l->fd, 0, IORING_POLL_ADD_MULTI,
                           POLLIN | POLLRDHUP, w->armed_for);
    if (!w->armed)
        rxw_close(w); /* refused: the backoff from now on, not a retry per round */
    l->rx_more = true; /* whatever came before the poll: one recv() finds it */
}

/* Before the link's socket is closed: the poll holds a reference to it, and
 * the socket would stay open (the peer never told) while the poll lives.
 * Cancelled synchronously; if that is refused, the whole ring goes (its
 * teardown cancels the poll) and a new one is opened. */
static void rxw_disarm(struct mlink *l)
{
    struct rxwatch *w = &l->rxw;
    if (w->fd < 0 || !w->armed)
        return;
    w->armed = false;
    struct io_uring_sync_cancel_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.addr = w->armed_for;
    reg.timeout.tv_sec = -1;
    reg.timeout.tv_nsec = -1;
    if (syscall(__NR_io_uring_register, w->fd, IORING_REGISTER_SYNC_CANCEL, &reg, 1) < 0 &&
        errno != ENOENT) {
        rxw_close(w);
        rxw_open(w);
        return;
    }
    *w->cq_head = __atomic_load_n(w->cq_tail, __ATOMIC_ACQUIRE); /* its CQEs are void */
}

/* Did anything arrive since we last looked? The poll's task work pending
 * (IORING_SQ_TASKRUN) or its CQE posted. A CQE without IORING_CQE_F_MORE
 * ended the poll (e.g. the CQ overflowed): it is armed again, and a recv()
 * is due whatever it said. Called every round while armed: it empties the
 * CQ (64 entries), so the ring never overflows. */
static bool rxw_ready(struct mlink *l)
{
    struct rxwatch *w = &l->rxw;
    unsigned fl = __atomic_load_n(w->sq_flags, __ATOMIC_ACQUIRE);
    bool ready = fl & IORING_SQ_TASKRUN;
    if (srrs_unlikely(fl & IORING_SQ_CQ_OVERFLOW)) {
        /* CQEs the full ring could not take wait in the kernel (the poll's
         * last among them, if the overflow ended it): into the ring now. */
        rxw_enter(w->fd, 0, 0, IORING_ENTER_GETEVENTS);
        ready = true;
    }
    unsigned head = *w->cq_head, tail = __atomic_load_n(w->cq_tail, __ATOMIC_ACQUIRE);
    if (head != tail) {
        for (; head != tail; head++) {
            const struct io_uring_cqe *c = &w->cqes[head & *w->cq_mask];
            if (c->user_data == w->armed_for && !(c->flags & IORING_CQE_F_MORE))
                w->armed = false;
        }
        __atomic_store_n(w->cq_head, head, __ATOMIC_RELEASE);
        ready = true;
    }
    if (!w->armed) {
        rxw_arm(l);
        ready = true;
    }
    return ready;
}

/* ---- sending --------------------------------------------------------------- */

/* The header (its mac zeroed) and the payload: the MAC the header carries.
 * false: no MAC could be computed (ffi/mirror_auth.h, fmac_end). */
static bool frame_mac(struct fmac *k, const struct mhdr *h, const struct iovec *iov,
                      int iovcnt, uint8_t mac[MA_MAC])
{
    struct mhdr z = *h;
    memset(z.mac, 0, sizeof(z.mac));
    fmac_begin(k, h->seq);
    fmac_update(k, &z, sizeof(z));
    for (int i = 0; i < iovcnt; i++)
        fmac_update(k, iov[i].iov_base, iov[i].iov_len);
    return fmac_end(k, mac);
}

void frame_send(struct mlink *l, int type, struct mirror *m, uint32_t tag, uint64_t off,
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
    if (l->auth_on && !frame_mac(&l->ftx, &f->h, iov, iovcnt, f->h.mac)) {
        /* no MAC for it: the frame never goes out, nor anything after it */
        if (done_piece)
            piece_put(l, done_piece);
        f->next = l->ffree;
        l->ffree = f;
        link_drop(l, "frame MAC failed");
        return;
    }
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

int tx_flush(struct mlink *l)
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

/* ---- receiving -------------------------------------------------------------------- */

static const char *order_name(uint32_t v)
{
    return v == 0 ? "by stripe (split)" : v == 1 ? "all on node 0" : v == 2 ? "all on node 1"
                                                                             : "(unknown)";
}

/* HELLO: the peer's node index, identity and who orders writes, first frame
 * of every connection. */
static bool rx_hello(struct mlink *l, const struct mhdr *h)
{
    if (h->off != (uint64_t)(1 - l->o.node))
        return false; /* both think they are the same node */
    if (l->o.peer_id && h->aux != l->o.peer_id) {
        /* another controller holding the secret: a replaced peer (set_peer);
         * counted as a refused connection too */
        l->st.auth_failures++;
        return false;
    }
    /* HELLO's tag: HELLO_ORDER | sole_orderer (0 from controllers before it) */
    uint32_t theirs = h->tag & HELLO_ORDER ? h->tag & ~HELLO_ORDER : 0;
    bool said = h->tag & HELLO_ORDER;
    if (said ? theirs != (uint32_t)l->o.sole_orderer
             : l->o.sole_orderer && !l->o.sole_orderer_agreed) {
        /* Both would order some stripes, each applying its writes to them in
         * its own order: never paired. Told once until a link comes up. */
        if (!l->order_told)
            srrs_event_post(l->core, SRRS_EV_MIRROR_DOWN, l->conn_gen, 0, "mirror-link",
                            "mirror link refused: the peer orders writes %s, we %s (the pair's "
                            "orderer must be the same on both)",
                            said ? order_name(theirs) : "by stripe (split: it does not say)",
                            order_name((uint32_t)l->o.sole_orderer));
        l->order_told = true;
        return false;   /* counted in proto_errors, the connection dropped */
    }
    l->order_told = false;
    l->hello_rx = true;
    srrs_event_post(l->core, SRRS_EV_MIRROR_UP, l->conn_gen, 0, "mirror-link",
                    "mirror link up (%s:%u)", l->o.peer_host, l->o.peer_port);
    for (int i = 0; i < M_MAX_VOLS; i++)
        if (l->vols[i] && mode_resync(l->mode) && l->vols[i]->resync_started &&
            !l->vols[i]->resync_ready)
            send_bitmap(l->vols[i], 0);
    return true;
}

/* One checked frame, to its type's handler (mirror_state.c, mirror_resync.c).
 * *own: the payload is a pool buffer of h->len bytes that a data piece may
 * keep (then *own is nulled); otherwise it is copied. */
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
        return rx_hello(l, h);
    case T_PING:
        return rx_ping(l, h);
    case T_WRITE:
    case T_FORWARD:
    case T_RESYNC:
        return rx_data(l, m, h, payload, own);
    case T_WRITE_REF:
        return rx_write_ref(l, h);
    case T_ACK:
        return rx_ack(l, h);
    case T_FWD_DONE:
        return rx_fwd_done(l, h);
    case T_READ:
        return rx_read(l, m, h);
    case T_READ_DATA:
        return rx_read_data(l, h, payload);
    case T_BITMAP:
        return rx_bitmap(l, m, h, payload);
    case T_RESYNC_DONE:
        return rx_resync_done(l, m);
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
    bool ok = frame_mac(&l->frx, h, &v, 1, mac);
    /* A replayed frame of this connection has a good MAC and a spent number. */
    if (ok && !mac_diff(mac, h->mac, MA_MAC) && h->seq >= l->rx_seq) {
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

/* The rest of a large frame, straight into its pool buffer. -1: the link
 * dropped; 0: not all here yet (or nothing to read); 1: the frame was handled. */
static int rx_direct(struct mlink *l, int *work)
{
    size_t want = l->dh.len - l->dgot;
    ssize_t k = recv(l->fd, l->dbuf + l->dgot, want, MSG_DONTWAIT);
    l->rx_drained = k < (ssize_t)want;
    if (k == 0) {
        link_drop(l, "peer closed the connection");
        return -1;
    }
    if (k < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            link_drop(l, "receive failed");
            return -1;
        }
        return 0;
    }
    l->dgot += (size_t)k;
    l->st.rx_bytes += (uint64_t)k;
    l->last_rx = srrs_ticks();
    *work = 1;
    if (l->dgot < l->dh.len)
        return 0;
    void *own = l->dbuf;
    l->dbuf = NULL;
    int rc = rx_check(l, &l->dh, own, &own);
    if (own)
        srrs_buf_put(l->r, own, l->dh.len);
    return rc < 0 ? -1 : 1;
}

/* One recv() into the ring (compacted first when its start passed half). -1:
 * the link dropped. */
static int rx_fill(struct mlink *l, int *work)
{
    if (l->rx_start && l->rx_end == l->rx_start)
        l->rx_start = l->rx_end = 0;
    if (l->rx_start > M_RXBUF / 2) {
        memmove(l->rx, l->rx + l->rx_start, l->rx_end - l->rx_start);
        l->rx_end -= l->rx_start;
        l->rx_start = 0;
    }
    l->rx_drained = false;
    if (l->rx_end < M_RXBUF) {
        size_t want = SRRS_MIN(M_RX_RECV, M_RXBUF - l->rx_end);
        ssize_t k = recv(l->fd, l->rx + l->rx_end, want, MSG_DONTWAIT);
        l->rx_drained = k < (ssize_t)want;
        if (k == 0) {
            link_drop(l, "peer closed the connection");
            return -1;
        }
        if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            link_drop(l, "receive failed");
            return -1;
        }
        if (k > 0) {
            l->rx_end += (size_t)k;
            l->st.rx_bytes += (uint64_t)k;
            l->last_rx = srrs_ticks();
            *work = 1;
        }
    }
    return 0;
}

/* The whole frames in the ring, in order; a large one not yet all here goes
 * on in a pool buffer (rx_direct). -1: the link dropped; 0: no progress; 1:
 * progress. */
static int rx_frames(struct mlink *l)
{
    bool progress = false;
    while (l->rx_end - l->rx_start >= M_HDR) {
        struct mhdr h;
        memcpy(&h, l->rx + l->rx_start, sizeof(h)); /* copy out before trusting it */
        if (h.magic != M_MAGIC || h.type == 0 || h.type >= T_MAX || h.len > M_CHUNK) {
            l->st.proto_errors++;
            link_drop(l, "bad frame header");
            return -1;
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
            return -1;
        if (rc == 0) {
            l->rx_more = true; /* waits for buffers, not for the socket */
            break;
        }
        l->rx_start += M_HDR + h.len;
        progress = true;
    }
    return progress;
}

static int rx_poll(struct mlink *l)
{
    int work = 0;
    l->rx_more = false;
    for (;;) {
        if (l->dbuf) {
            int rc = rx_direct(l, &work);
            if (rc < 0)
                return 1;
            if (rc == 0)
                return work;
            continue;
        }
        if (rx_fill(l, &work) < 0)
            return 1;
        int rc = rx_frames(l);
        if (rc < 0)
            return 1;
        if (!rc)
            break;
        work = 1;
        /* Watched, a recv() that drained the socket is the last: the poll
         * tells when more comes (not a recv() that finds nothing). */
        if (l->rx_drained && l->rxw.armed && !l->dbuf)
            break;
    }
    if (!l->rx_drained && l->fd >= 0)
        l->rx_more = true;
    return work;
}

/* ---- connection ----------------------------------------------------------------------- */

static int conn_poll(void *arg)
{
    struct mlink *l = arg;
    if (l->fd < 0)
        return SRRS_POLLER_IDLE;
    if (l->connecting) {
        int err = 0;
        socklen_t sl = sizeof(err);
        getsockopt(l->fd, SOL_SOCKET, SO_ERROR, &err, &sl);
        if (err) {
            rxw_disarm(l);
            close(l->fd);
            l->fd = -1;
            l->connecting = false;
            srrs_poller_unregister(&l->p_conn);
            return SRRS_POLLER_IDLE;
        }
        struct sockaddr_storage ss;
        sl = sizeof(ss);
        if (getpeername(l->fd, (struct sockaddr *)&ss, &sl))
            return SRRS_POLLER_IDLE; /* still connecting */
        l->connecting = false;
        l->up = true;
        l->st.connects++;
        l->conn_gen++;
        l->rl_peer_granted = false;
        l->last_rx = srrs_ticks();
        frame_send(l, T_HELLO, NULL, HELLO_ORDER | (uint32_t)l->o.sole_orderer,
                   (uint64_t)l->o.node, 0, l->o.self_id, NULL, 0, 0, NULL);
    }
    int work = 0;
    if (l->rxw.armed) {
        /* recv() only on a sign that something came (struct rxwatch). The
         * CQ is emptied every round, rx_more or not: left to fill up, it
         * would overflow and end the poll. */
        if (rxw_ready(l) || l->rx_more)
            work = rx_poll(l);
        if (l->fd >= 0)
            work |= tx_flush(l);
        return work;
    }
    /* A recv() that finds nothing costs a syscall per poll round; while the
     * peer is quiet, try again after 1, 2, 4, 8 us rather than every round. */
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
    l->rx_more = false;
    rxw_arm(l);
    if (!connecting) {
        l->up = true;
        l->st.connects++;
        l->conn_gen++;
        l->rl_peer_granted = false;
        l->last_rx = srrs_ticks();
        frame_send(l, T_HELLO, NULL, HELLO_ORDER | (uint32_t)l->o.sole_orderer,
                   (uint64_t)l->o.node, 0, l->o.self_id, NULL, 0, 0, NULL);
    }
    return 0;
}

void link_drop(struct mlink *l, const char *why)
{
    if (l->fd < 0)
        return;
    bool was_up = l->hello_rx;
    srrs_poller_unregister(&l->p_conn);
    rxw_disarm(l);
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
        if (!m)
            continue;
        m->bm_sent = false; /* a new connection asks for the bitmaps again */
        if (mode_resync(l->mode)) {
            m->resync_ready = false;
            m->peer_bm_done = false;
        }
    }
    if (was_up)
        srrs_event_post(l->core, SRRS_EV_MIRROR_DOWN, l->conn_gen, 0, "mirror-link",
                        "mirror link down: %s", why);
}

int sock_addr(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
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
    if (fmac_key(&l->ftx, ktx) || fmac_key(&l->frx, krx)) {
        close(fd);
        return;
    }
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
        return SRRS_POLLER_IDLE;
    if (l->o.node == 0) {
        close(fd); /* node 0 dials */
        return SRRS_POLLER_BUSY;
    }
    if (!addr_allowed(l, &ss)) {
        close(fd);
        auth_refused(l, &ss, "source address not allowed");
        return SRRS_POLLER_BUSY;
    }
    /* Even while the link is up, a connection runs the handshake (a stranger
     * is counted); only auth_done decides whether it may take the link. */
    if (l->auth_on)
        mauth_add(&l->auth, fd, false, false, &ss);
    else if (l->fd >= 0 || l->need_rejoin)
        close(fd); /* one connection at a time */
    else
        conn_attach(l, fd, false);
    return SRRS_POLLER_BUSY;
}

static int timer_poll(void *arg)
{
    struct mlink *l = arg;
    if (l->throttled || l->copy_rate)
        copy_refill(l);
    uint64_t now = srrs_ticks();
    if (l->fd >= 0 && !l->connecting) {
        /* Authenticated: only the peer's own frames prove it alive, not
         * whatever bytes a third party keeps putting into the stream. */
        uint64_t heard = l->auth_on ? SRRS_MAX(l->last_mac_rx, l->last_rx_conn) : l->last_rx;
        if (now - heard > srrs_us_to_ticks((uint64_t)l->o.timeout_ms * 1000)) {
            link_drop(l, "peer silent");
            return SRRS_POLLER_BUSY;
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
        rxw_disarm(l);
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
    if (l->retry)
        retry_poll(l);
    if (l->rebound)
        dispatch_all(l, &l->rebound); /* forwards the owner sent back go again */
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
    return SRRS_POLLER_IDLE;
}

/* ---- the link's life ------------------------------------------------------------------- */

void link_start_fn(void *a)
{
    struct link_arg *x = a;
    struct mlink *l = x->l;
    rxw_open(&l->rxw);
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

void link_stop_fn(void *a)
{
    struct link_arg *x = a;
    struct mlink *l = x->l;
    if (l->fd >= 0)
        link_drop(l, "link destroyed");
    mauth_close_all(&l->auth);
    l->mode = MODE_FENCED;
    l->stopping = true; /* nothing is held for a retry from now on */
    resolve_held(l);
    retry_fail(l, NULL);
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
    l->stopping = true;
    link_drop(l, "reactor stopping");
    mauth_close_all(&l->auth);
    resolve_held(l);
    retry_fail(l, NULL);
}

void hook_fn(void *a)
{
    struct mlink *l = a;
    l->stop_hook = srrs_reactor_add_stop_hook(l->r, link_on_stop, l);
}

void link_free(struct mlink *l)
{
    OPENSSL_cleanse(l->auth.secret, sizeof(l->auth.secret));
    fmac_free(&l->ftx);
    fmac_free(&l->frx);
    rxw_close(&l->rxw);
    if (l->lfd >= 0)
        close(l->lfd);
    free(l->pieces);
    free(l->frames);
    if (l->rx)
        srrs_mem_free(l->rx, M_RXBUF);
    free(l);
}

int auth_setup(struct mlink *l)
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
