/*
 * The mirror's pieces (docs/architecture.md, Pair; ffi/mirror_int.h), on the
 * link's reactor. A host I/O is cut into pieces at stripe and 1 MiB
 * boundaries; a write piece is ordered by its stripe's owner, which holds the
 * stripe lock from its local write until the peer acknowledged its copy, so
 * both replicas apply the writes of one stripe in the same order:
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
 * replicas have it; in SOLO and at a cut it stays set. Reads are served
 * locally under a read lease from the peer (ffi/mirror.h). Mode changes
 * settle what was held for the peer.
 */
#include "mirror_int.h"

/* Ask the peer for a read lease: our send time rides along and comes back. */
void rl_ask(struct mlink *l, uint64_t now)
{
    l->rl_asked = now;
    frame_send(l, T_PING, NULL, RL_ASK, 0, 0, now, NULL, 0, 0, NULL);
}

/* ---- host I/O completion ---------------------------------------------------- */

static void host_done_msg(void *arg)
{
    struct srrs_io *io = arg;
    srrs_io_complete(io, io->status);
}

/* Host I/O io completes with status, on its own reactor. */
static void host_io_finish(struct mlink *l, struct srrs_io *io, int status)
{
    if (io->r == l->r) {
        srrs_io_complete(io, status);
    } else {
        io->status = status;
        while (srrs_reactor_send(io->r, host_done_msg, io) == -EAGAIN)
            ;
    }
}

/* io onto the end of the list head..tail (linked by srrs_io.next). */
static void io_append(struct srrs_io **head, struct srrs_io **tail, struct srrs_io *io)
{
    io->next = NULL;
    if (*tail)
        (*tail)->next = io;
    else
        *head = io;
    *tail = io;
}

/* One report a second of held I/O (started to hold, or some held too long). */
static void hold_event(struct mlink *l, uint64_t now, uint64_t n, bool expired)
{
    if (l->hold_ev_at && now - l->hold_ev_at < srrs_us_to_ticks(1000000))
        return;
    l->hold_ev_at = now;
    if (expired)
        srrs_event_post(l->core, SRRS_EV_LOG, l->st.hold_expired, 0, "mirror-link",
                        "%llu held I/O(s) of single-path hosts failed: the mirror did not "
                        "serve for %u ms (mode %d, %llu so far)", (unsigned long long)n,
                        l->o.hold_ms, l->mode, (unsigned long long)l->st.hold_expired);
    else
        srrs_event_post(l->core, SRRS_EV_LOG, 0, 0, "mirror-link",
                        "holding I/O of single-path hosts (vhost-user) while the mirror does "
                        "not serve (mode %d): started again when it does, failed after %u ms",
                        l->mode, l->o.hold_ms);
}

/* A single-path host's I/O that ends in a path error is held instead
 * (opts.hold_ms): true when it was. Its host has no other path to turn to,
 * and the guest has seen nothing of it yet, so starting it again whole once
 * the mirror serves is what the host's own retry would do (a write applied
 * here before, or on the peer alone, is written again with the same data). */
static bool hold_for_retry(struct mlink *l, struct srrs_io *io)
{
    struct hctx *h = (struct hctx *)io->driver_ctx;
    const struct mirror *m = io->bdev->ctx;
    if (!l->hold_ticks || l->stopping || !(io->flags & SRRS_IO_F_ONE_PATH) ||
        h->epoch != __atomic_load_n(&m->release_epoch, __ATOMIC_ACQUIRE))
        return false;
    uint64_t now = srrs_ticks();
    if (!h->held_since) {
        h->held_since = now;
        if (!l->retry)
            hold_event(l, now, 0, false);
    } else if (now - h->held_since >= l->hold_ticks) {
        l->st.hold_expired++;
        hold_event(l, now, 1, true);
        return false;
    }
    io_append(&l->retry, &l->retry_tail, io);
    return true;
}

/* One part of host I/O io is done (a piece, or host_start's own hold). */
void host_io_done(struct mlink *l, struct srrs_io *io, int status)
{
    struct hctx *h = (struct hctx *)io->driver_ctx;
    if (status && !h->status)
        h->status = status;
    if (--h->left == 0) {
        if (h->status == -ENOTCONN && hold_for_retry(l, io))
            return;
        host_io_finish(l, io, h->status);
    }
}

/* The held host I/Os (hold_for_retry): started again while the mirror serves
 * (paired, resync, solo under its lease), failed once held hold_ms, kept
 * otherwise. From the timer and after a mode change. */
void retry_poll(struct mlink *l)
{
    struct srrs_io *io = l->retry;
    if (!io)
        return;
    l->retry = l->retry_tail = NULL;
    bool serve = mode_needs_peer(l->mode) || (l->mode == MODE_SOLO && lease_ok(l));
    uint64_t now = srrs_ticks(), expired = 0;
    while (io) {
        struct srrs_io *next = io->next;
        struct hctx *h = (struct hctx *)io->driver_ctx;
        io->next = NULL;
        if (now - h->held_since >= l->hold_ticks) {
            l->st.hold_expired++;
            expired++;
            host_io_finish(l, io, -ENOTCONN);
        } else if (serve) {
            l->st.hold_retries++;
            host_start(io); /* fails again: back on the (new) list */
        } else {
            io_append(&l->retry, &l->retry_tail, io);
        }
        io = next;
    }
    if (expired)
        hold_event(l, now, expired, true);
}

/* Fail the held host I/Os (of mirror m; NULL: all): it goes, or the link does. */
void retry_fail(struct mlink *l, const struct mirror *m)
{
    struct srrs_io *io = l->retry, *keep = NULL, *keep_tail = NULL;
    l->retry = l->retry_tail = NULL;
    while (io) {
        struct srrs_io *next = io->next;
        io->next = NULL;
        if (!m || io->bdev->ctx == m) {
            host_io_finish(l, io, -ENOTCONN);
        } else {
            io_append(&keep, &keep_tail, io);
        }
        io = next;
    }
    l->retry = keep;
    l->retry_tail = keep_tail;
}

/* ---- stripe locks --------------------------------------------------------------- */

bool stripe_lock(struct piece *p)
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

void stripe_unlock(struct piece *p)
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

int local_submit(struct mlink *l, struct piece *p, int op)
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
    io->flags = p->host ? p->host->flags : 0; /* a move link's mirror over the pair's */
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

/* A piece onto one of the link's waiting lists (held, rebound). */
static void park(struct piece **head, struct piece *p)
{
    p->waiting = true;
    p->next = *head;
    *head = p;
}

void hold(struct mlink *l, struct piece *p)
{
    park(&l->held, p);
}

/* Every piece of a waiting list dispatched again (what they mean now); the
 * list is taken whole first, so what is parked again starts a new one. */
void dispatch_all(struct mlink *l, struct piece **head)
{
    struct piece *h = *head;
    *head = NULL;
    while (h) {
        struct piece *next = h->next;
        h->next = NULL;
        h->waiting = false;
        piece_dispatch(l, h);
        h = next;
    }
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

/* The gate every host I/O passes first: held while a lease is being asked
 * for (SOLO or FENCED decides), failed as a path error while fenced or SOLO
 * past the lease. False: the piece was held or finished here. */
static bool host_gate(struct mlink *l, struct piece *p)
{
    if (l->mode == MODE_PENDING) {
        hold(l, p);
        return false;
    }
    if (l->mode == MODE_FENCED || (l->mode == MODE_SOLO && !lease_ok(l))) {
        p->m->st.fenced++;
        piece_host_done(l, p, -ENOTCONN);
        piece_put(l, p);
        return false;
    }
    return true;
}

static void host_write_start(struct mlink *l, struct piece *p)
{
    struct mirror *m = p->m;
    if (!host_gate(l, p))
        return;
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
                        m->name, "replica %s failed a read at %llu (%d): served by the "
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
    if (!host_gate(l, p))
        return;
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

/* The peer's own frames arrived after t: it is alive (authenticated links
 * count only frames whose MAC held). */
static bool heard_since(struct mlink *l, uint64_t t)
{
    return (l->auth_on ? SRRS_MAX(l->last_mac_rx, l->last_rx_conn) : l->last_rx) > t;
}

/* Reads waiting for a read lease: try again (a grant came, the mode changed),
 * or (expire) fail those that waited a whole lease length while the link was
 * up and the peer kept talking -- it hears us but grants nothing: it left the
 * pair and serves on its own; the host retries there. A peer that says
 * nothing may be dying with its socket still open (a kill -9 while a thread
 * waits on the disk): the link's silence timeout drops it, and then, as with
 * the link down, the reads wait for the mode (solo serves them, fenced fails
 * them), so a single-path host rides through the peer's death
 * (docs/architecture.md, Witness and leases). */
void rl_retry(struct mlink *l, bool expire)
{
    struct piece *w = l->rwait;
    l->rwait = NULL;
    uint64_t now = srrs_ticks(), failed = 0;
    /* A peer that has not granted once since we joined it may be a controller
     * that just (re)started: talking, its control plane not yet in the pair
     * (a restart under load takes longer than L). Nothing is read without a
     * grant or solo either way; failing sooner only sends a multipath host to
     * its other path, and fails a single-path one. So give such a peer
     * RL_FIRST_GRANT lease lengths before the path error. */
    uint64_t limit = l->rl_peer_granted ? l->rl_len : RL_FIRST_GRANT * l->rl_len;
    while (w) {
        struct piece *next = w->next;
        w->next = NULL;
        if (expire && now - w->wait_at >= limit && link_ready(l) && heard_since(l, w->wait_at)) {
            w->waiting = false;
            l->st.lease_reads_failed++;
            failed++;
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
    if (failed && (!l->rl_fail_ev_at || now - l->rl_fail_ev_at >= srrs_us_to_ticks(1000000))) {
        l->rl_fail_ev_at = now; /* one report a second */
        srrs_event_post(l->core, SRRS_EV_LOG, l->st.lease_reads_failed, 0, "mirror-link",
                        "%llu read(s) failed (path error): no read lease from the peer for "
                        "%llu ms with the link up (mode %d, %llu failed so far)",
                        (unsigned long long)failed,
                        (unsigned long long)(srrs_ticks_to_ns(limit) / 1000000), l->mode,
                        (unsigned long long)l->st.lease_reads_failed);
    }
}

void piece_dispatch(struct mlink *l, struct piece *p)
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

/* A host write whose local and remote parts are done: acknowledged. */
static void host_write_done(struct mlink *l, struct mirror *m, struct piece *p)
{
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
}

/* A chunk the resync source copied to us is written: ACK; the stripe is
 * current once its last chunk is. */
static void peer_resync_done(struct mlink *l, struct mirror *m, struct piece *p)
{
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
}

/* Called whenever a piece's local or remote part finished. */
void piece_step(struct mlink *l, struct piece *p)
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
        host_write_done(l, m, p);
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
        peer_resync_done(l, m, p);
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

/* ---- mode changes ----------------------------------------------------------------------- */

/* After a mode change: what the held pieces mean now. */
void resolve_held(struct mlink *l)
{
    rl_retry(l, false);
    dispatch_all(l, &l->rebound); /* forwards sent back: what they mean in the new mode */
    /* pieces held before they were sent (forwarder without link, resync not ready) */
    dispatch_all(l, &l->held);
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

void set_mode_fn(void *a)
{
    struct mode_arg *x = a;
    struct mlink *l = x->l;
    int old = l->mode;
    l->mode = x->mode;
    l->lease_deadline = x->deadline;
    l->st.mode = x->mode;
    l->solo_wait = false;
    if (!mode_needs_peer(old) && mode_needs_peer(x->mode))
        l->rl_peer_granted = false; /* (re)joining: the peer may still be starting */
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
    if (old != x->mode && mode_resync(x->mode))
        resync_reset(l);
    if (x->mode == MODE_SOLO || x->mode == MODE_FENCED || x->mode == MODE_PAIRED)
        resolve_held(l);
    retry_poll(l); /* held host I/O: the mirror may serve again */
}

/* ---- host I/O into pieces ---------------------------------------------------------------- */

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

void host_start(void *arg)
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
            host_io_done(l, io, -ENOMEM);
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
    host_io_done(l, io, 0);
}

/* ---- the data frames' handlers (rx_frame, mirror_link.c) ------------------------ */

/* PING: a read lease asked of us (we grant while paired or resyncing), or
 * granted to us (our reads waiting for one go), or a plain keepalive. */
bool rx_ping(struct mlink *l, const struct mhdr *h)
{
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
        l->rl_peer_granted = true;
        rl_retry(l, false);
    }
    return true;
}

/* The payload into the piece: adopted when it was received straight into a
 * pool buffer (no copy), else copied into one. false: out of buffers. */
static bool rx_data_buf(struct mlink *l, struct piece *p, const struct mhdr *h,
                        const uint8_t *payload, void **own)
{
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
    return true;
}

/* A peer's forward: we order its stripe (or will know once the resync's
 * stripes are). */
static bool rx_forward(struct mlink *l, struct mirror *m, struct piece *p, uint64_t s)
{
    if (mode_resync(l->mode) && !m->resync_ready) {
        /* The peer computed the stripes to copy first and forwards a
         * write for one we will order: decided when ours are known. */
        hold(l, p);
        return true;
    }
    if (!we_order(m, s)) {
        /* It thinks we order a stripe we do not: its mode has not caught up
         * with ours yet (or ours with its): back to the forwarder. */
        fwd_bounce(l, p);
        return true;
    }
    ordered_write(l, p);
    return true;
}

/* A forward for a stripe we do not order: answered M_REORDER (the forwarder
 * sends it again once the modes agree), nothing applied here. */
void fwd_bounce(struct mlink *l, struct piece *p)
{
    l->st.fwd_bounced++;
    if (p->conn_gen == l->conn_gen && link_ready(l))
        frame_send(l, T_FWD_DONE, p->m, p->peer_tag, 0, M_REORDER, 0, NULL, 0, 0, NULL);
    piece_put(l, p);
}

/* WRITE (the owner's copy), FORWARD (a write for a stripe we order), RESYNC
 * (a chunk of a stripe being copied to us): one stripe's worth of data. */
bool rx_data(struct mlink *l, struct mirror *m, const struct mhdr *h, uint8_t *payload,
             void **own)
{
    if (h->off >= m->size || h->len == 0 || h->len > m->size - h->off ||
        h->len > M_CHUNK || ((h->off | h->len) & (m->replica->block_size - 1)))
        return false;
    uint64_t s = h->off >> m->stripe_shift;
    if (((h->off + h->len - 1) >> m->stripe_shift) != s)
        return false;
    enum pkind k = h->type == T_WRITE ? P_PEER_WRITE
                                      : h->type == T_FORWARD ? P_PEER_FWD : P_PEER_RESYNC;
    struct piece *p = piece_get(l, k, m);
    if (!p || !rx_data_buf(l, p, h, payload, own))
        return false;
    p->off = h->off;
    p->len = h->len;
    p->stripe = s;
    p->peer_tag = h->tag;
    p->conn_gen = l->conn_gen;
    if (k == P_PEER_FWD)
        return rx_forward(l, m, p, s);
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

/* WRITE_REF: the owner orders our forwarded write now: apply it here, ACK
 * when done. */
bool rx_write_ref(struct mlink *l, const struct mhdr *h)
{
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

/* ACK: the peer applied our WRITE, our forward's WRITE_REF or a copied chunk. */
bool rx_ack(struct mlink *l, const struct mhdr *h)
{
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

/* FWD_DONE: the owner's write of our forward is done. */
bool rx_fwd_done(struct mlink *l, const struct mhdr *h)
{
    struct piece *p = piece_by_tag(l, h->tag);
    if (!p || p->kind != P_HOST_WRITE || !p->remote_wait || p->locked)
        return false;
    p->remote_wait = false;
    if (h->status == M_REORDER) {
        if (p->applied || p->status)
            return false; /* it ordered it (WRITE_REF) and then sent it back */
        if (++p->bounced > M_BOUNCE_MAX) {
            /* The modes never agreed: not ours to apply alone; a path error. */
            l->st.proto_errors++;
            p->status = -ENOTCONN;
            piece_step(l, p);
            return true;
        }
        park(&l->rebound, p); /* sent again at the next timer tick */
        return true;
    }
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

/* READ: the peer's host read served by our replica. */
bool rx_read(struct mlink *l, struct mirror *m, const struct mhdr *h)
{
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

/* READ_DATA: the answer to our READ, copied into the host's buffers. */
bool rx_read_data(struct mlink *l, const struct mhdr *h, const uint8_t *payload)
{
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
