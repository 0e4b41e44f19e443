/*
 * Resync (docs/architecture.md, Pair; ffi/mirror_int.h): both sides send their
 * dirty bitmap; the union is what the source copies to the target, a stripe
 * at a time under the stripe lock, M_COPIES stripes at once. Until a stripe
 * is copied the source orders it and the target reads it from the source.
 */
#include "mirror_int.h"

/* ---- resync (source side copies, a stripe at a time) --------------------------- */

static void resync_finish(struct mirror *m)
{
    struct mlink *l = m->l;
    m->resync_active = false;
    m->resync_done = true;
    if (l->mode == MODE_RSRC && link_ready(l))
        frame_send(l, T_RESYNC_DONE, m, 0, 0, 0, 0, NULL, 0, 0, NULL);
    srrs_event_post(l->core, SRRS_EV_MIRROR_UP, m->vol, m->resync_bytes, m->name,
                    "resync complete: %llu bytes copied", (unsigned long long)m->resync_bytes);
}

/* A chunk was acknowledged: the stripe's next chunk is read (true), or the
 * stripe is done: unlocked, its bits cleared (false: the piece picks another). */
static bool copy_chunk_acked(struct mirror *m, struct piece *p)
{
    struct mlink *l = m->l;
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
        return false;
    }
    p->off = next;
    p->len = SRRS_MIN((uint64_t)M_CHUNK, stripe_end - next);
    p->iov[0].iov_len = p->len;
    p->applied = true;
    if (local_submit(l, p, SRRS_IO_READ))
        p->status = -ENOMEM;
    if (p->status)
        copy_next(m, p);
    return true;
}

/* A copy piece walks: pick a stripe, lock it, read a chunk, send it, next
 * chunk; M_COPIES of them run at once. */
void copy_next(struct mirror *m, struct piece *p)
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
    if (p->locked && copy_chunk_acked(m, p))
        return;
    if (!p->relock) {
        if (l->copy_rate) {
            if (l->copy_tokens <= 0) {
                /* throttled: the timer lets it go on (copy_refill) */
                p->waiting = true;
                p->next = l->throttled;
                l->throttled = p;
                return;
            }
            l->copy_tokens -= (int64_t)m->stripe;
        }
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

/* Timer: the copy throttle's tokens (at most 100 ms worth), and the copies
 * that waited for them go on; all of them when the resync cannot go on
 * (copy_next then ends them) or the limit went. */
void copy_refill(struct mlink *l)
{
    uint64_t now = srrs_ticks();
    if (l->copy_rate) {
        uint64_t dt_us = (now - l->copy_tok_at) / l->tick_us;
        int64_t cap = (int64_t)SRRS_MAX(l->copy_rate / 10, 1u);
        int64_t add = dt_us >= 1000000u ? cap : (int64_t)(l->copy_rate * dt_us / 1000000u);
        l->copy_tokens = SRRS_MIN(l->copy_tokens + add, cap);
    }
    l->copy_tok_at = now;
    bool all = !l->copy_rate || l->mode != MODE_RSRC || !link_ready(l);
    while (l->throttled && (all || l->copy_tokens > 0)) {
        struct piece *p = l->throttled;
        l->throttled = p->next;
        p->next = NULL;
        p->waiting = false;
        copy_next(p->m, p);
    }
}

void resync_maybe_start(struct mirror *m)
{
    struct mlink *l = m->l;
    if (!mode_resync(l->mode) || !m->resync_started || m->resync_ready || !m->peer_bm_done ||
        m->ncopy)
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
    l->held = NULL;
    while (h) {
        struct piece *next = h->next;
        h->next = NULL;
        h->waiting = false;
        if (h->m == m && h->kind == P_PEER_FWD && h->conn_gen == l->conn_gen &&
            !we_order(m, h->stripe)) {
            /* Forwarded before the forwarder's mode caught up with ours
             * (PAIRED there, a stripe the source orders here): back to it. */
            fwd_bounce(l, h);
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
    if (l->mode == MODE_RSRC) {
        m->resync_active = true;
        struct piece *ps[M_COPIES];
        uint32_t n = 0, lim = l->copy_max && l->copy_max < M_COPIES ? l->copy_max : M_COPIES;
        while (n < lim && (ps[n] = piece_get(l, P_COPY, m)))
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
void send_bitmap(struct mirror *m, int reply)
{
    struct mlink *l = m->l;
    size_t off = 0;
    if (!reply && m->bm_sent)
        return; /* asked for once per resync and connection (rx_bitmap) */
    m->bm_sent = true;
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

void resync_start_fn(void *a)
{
    struct mode_arg *x = a;
    struct mlink *l = x->l;
    for (int i = 0; i < M_MAX_VOLS; i++) {
        struct mirror *m = l->vols[i];
        if (!m)
            continue;
        /* Entering the resync mode reset the volume's resync state. Our
         * bitmap is final now (whole for a full copy) and goes out, asking
         * for the peer's; the peer's may be here already (it started
         * first): then we are running. Asked again: nothing changes. */
        if (m->resync_started)
            continue;
        m->resync_started = true;
        m->resync_full = x->full && l->mode == MODE_RSRC;
        if (x->full && l->mode == MODE_RTGT)
            memset(m->bm, 0xff, m->bm_len); /* everything here is suspect */
        if (link_ready(l))
            send_bitmap(m, 0);
        resync_maybe_start(m);
    }
}

/* BITMAP: a chunk of the peer's dirty bitmap; the last one may start the
 * resync (and, asked for, ours goes back). */
bool rx_bitmap(struct mlink *l, struct mirror *m, const struct mhdr *h, const uint8_t *payload)
{
    if (!mode_resync(l->mode) || h->off > m->bm_len || h->len > m->bm_len - h->off)
        return m->resync_ready || !mode_resync(l->mode); /* late: ignore */
    if (h->tag == 0 && m->resync_ready) {
        /* Our resync runs on the peer's bitmap of this connection, and the
         * peer asks for ours again: it left its resync mode and entered one
         * anew (a fence of a few ms, the link up all along) and reset its
         * half -- which stripes are still to copy, and so who orders them
         * -- while ours stands. Writes ordered by both on a stripe, a copy
         * over an acknowledged write: not something to reconcile in flight.
         * The link goes; it stays down until the control planes set the
         * modes again, and both start over from their dirty bitmaps, which
         * keep every stripe still to copy (docs/architecture.md, Pair). */
        link_drop(l, "the peer started its resync over");
        return true;
    }
    memcpy(m->peer_bm + h->off, payload, h->len);
    if (h->aux == 1) {
        m->peer_bm_done = true;
        /* Not started here yet: ours is not final; it goes out, asking for
         * the peer's again, when we start (resync_start_fn). */
        if (h->tag == 0 && m->resync_started)
            send_bitmap(m, 1);
        resync_maybe_start(m);
    }
    return true;
}

/* RESYNC_DONE: the source copied every stripe: we are current. */
bool rx_resync_done(struct mlink *l, struct mirror *m)
{
    if (l->mode == MODE_RTGT && m->resync_ready) {
        for (uint64_t s = 0; s < m->nstripes; s++)
            m->need[s] = 0;
        m->resync_left = 0;
        memset(m->bm, 0, m->bm_len);
        resync_finish(m);
    }
    return true;
}

/* Entering a resync mode: every volume's resync starts over. */
void resync_reset(struct mlink *l)
{
    for (int i = 0; i < M_MAX_VOLS; i++) {
        struct mirror *m = l->vols[i];
        if (!m)
            continue;
        m->resync_ready = m->peer_bm_done = false;
        m->resync_done = m->resync_active = false;
        m->resync_bytes = 0;
        m->bm_sent = m->resync_started = false;
        memset(m->peer_bm, 0, m->bm_len);
    }
}
