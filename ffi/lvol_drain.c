/*
 * Drain and removal of a fragment while volumes stay in service.
 * The design is at the top of lvol.c.
 */
#include "lvol_int.h"

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
    lv_barrier_request(d->p, &d->bw);
}

static bool barrier_done(struct lv_drain *d) { return d->bar_done; }

static void move_release(struct lv_move *mv, uint64_t e)
{
    struct lv_alloc *a = &mv->a;
    struct srrs_pool *p = mv->d->p;
    map_set(lv_map_chunk(a->vol, a->c), a->c, e);
    lv_alloc_unhash(p, a);
    struct srrs_io *io = a->wq_head;
    a->wq_head = a->wq_tail = NULL;
    while (io) {
        struct srrs_io *n = io->next;
        lv_child_reply(io, 0);
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

/* The move stops; the entry keeps the old cluster. The new one (if taken)
 * goes back after the batch's second barrier (a read may have used it while
 * the entry pointed there), unless move_committed held it. */
static void move_fail(struct lv_move *mv, int st)
{
    struct srrs_pool *p = mv->d->p;
    if (!mv->d->error)
        mv->d->error = st;
    mv->failed = true;
    srrs_event_post(p->core, SRRS_EV_BDEV_ERROR, (uint64_t)-st, 0, p->name,
                    "drain of fragment %d: moving a cluster of volume %s failed: %s", mv->d->idx,
                    mv->a.vol->name, strerror(-st));
    move_release(mv, mv->old_e);
}

static void move_committed(struct lv_wait *w, int status)
{
    struct lv_move *mv = (struct lv_move *)w;
    if (status) {
        /* The failed image (pointing at new_e) may be on disk: new_e is held
         * until a later commit of the page supersedes it, and the entry keeps
         * old_e as suspect, so a write to it waits for that commit
         * (docs/architecture.md, Metadata and its crash safety). */
        struct lv_page *pg = mv->a.vol->pages[mv->a.c / MD_ENTRIES];
        if (pg->maybe) {
            lv_page_hold(pg, mv->new_e);
            mv->new_e = 0;
        }
        mv->old_e = lv_page_mark(pg, mv->old_e);
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
        map_set(lv_map_chunk(v, mv->a.c), mv->a.c, mv->new_e | E_LOCKED);
        mv->a.w.fn = move_committed;
        lv_page_commit(pg, &mv->a.w);
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
    if (lv_lost_get(&p->frags[e_frag(mv->old_e)], e_cl(mv->old_e))) {
        /* Its RAM was gone: a copy would turn "unknown" into zeroes elsewhere.
         * The drain stops; rewriting or unmapping the cluster lets it go on. */
        mv->new_e = 0;
        lv_pool_msg(p, "drain of fragment %d: volume %s cluster %llu was lost with its RAM; "
                    "rewrite or unmap it, then drain again", mv->d->idx, mv->a.vol->name,
                    (unsigned long long)mv->a.c);
        move_fail(mv, -EIO);
        return;
    }
    int fi = lv_pick_frag(p);
    bool zero;
    mv->new_e = fi >= 0 ? lv_cluster_take(p, fi, &zero) : 0;
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
        if ((e & (E_PENDING | E_LOCKED)) || lv_alloc_find(p, v, c)) {
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
        map_set(lv_map_chunk(v, c), c, e | E_LOCKED);
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
        lv_page_commit(&pm->tomb, &pm->w);
        return;
    }
    if (!status)
        lv_slot_free(p, pm->old_frag, pm->old_slot);
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
                if (!pm || lv_slot_alloc(p, &nf, &ns)) {
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
                lv_page_commit(pg, &pm->w);
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
        lv_pool_msg(p, "drain of fragment %d (%s) stopped: %s", d->idx, f->path, strerror(-d->error));
    else
        lv_pool_msg(p, "drain of fragment %d (%s) done: %llu clusters moved", d->idx, f->path,
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
                lv_cluster_put(p, mv->old_e);
                p->frags[d->idx].drain_moved++;
            } else if (mv->new_e) {
                lv_cluster_put(p, mv->new_e);
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
    if (p->degraded)
        return lv_degraded_err(p, "draining a fragment");
    struct lv_frag *f = &p->frags[idx];
    uint64_t free_elsewhere = 0, slots_elsewhere = 0;
    int active_elsewhere = 0;
    for (int i = 0; i < LV_MAX_FRAGS; i++) {
        struct lv_frag *g = &p->frags[i];
        if (i == idx || g->state != FS_ACTIVE)
            continue;
        active_elsewhere++;
        free_elsewhere += g->nclusters - __atomic_load_n(&g->nused, __ATOMIC_RELAXED);
        slots_elsewhere += g->md_slots - __atomic_load_n(&g->slots_used, __ATOMIC_RELAXED);
    }
    uint64_t used = __atomic_load_n(&f->nused, __ATOMIC_RELAXED);
    if (free_elsewhere < used || slots_elsewhere < f->slots_used)
        return srrs_err(-ENOSPC, "pool %s: the other fragments have %llu free clusters and %llu free "
                        "metadata slots, fragment %d holds %llu clusters and %llu slots", p->name,
                        (unsigned long long)free_elsewhere, (unsigned long long)slots_elsewhere, idx,
                        (unsigned long long)used, (unsigned long long)f->slots_used);
    /* Even an empty fragment may not be the last one taking new clusters:
     * every first write to the pool would fail with ENOSPC. */
    if (!active_elsewhere && f->state == FS_ACTIVE)
        return srrs_err(-ENOSPC, "pool %s: fragment %d is the only active fragment (the others are "
                        "draining or missing): add a fragment, or finish the drain in progress, first",
                        p->name, idx);
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
    int rc = lv_sb_write_all(p);
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
    lv_pool_msg(p, "drain of fragment %d (%s) started: %llu clusters, %llu metadata pages", idx, f->path,
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
    int rc = lv_sb_write_all(p);
    if (rc) {
        f->state = FS_DRAINING;
        return rc;
    }
    srrs_reactor_call(p->pr, noop_msg, NULL); /* P no longer looks at it */
    if (!f->ram) {
        /* Its superblock goes: the file or device is free for anything again. */
        int fd = open(f->path, O_RDWR | O_CLOEXEC);
        if (fd >= 0) {
            if (lv_pwrite_full(fd, srrs_zero_buf, 2 * MD_PAGE, 0) == 0)
                (void)fdatasync(fd);
            close(fd);
        }
    }
    srrs_bdev_close(&f->bdev);
    srrs_bdev_delete(p->core, f->bdev_name);
    lv_shm_drop(p, idx, true); /* removed on purpose: its memory goes too */
    free(f->used);
    free(f->slot_used);
    f->used = f->slot_used = NULL;
    lv_pool_msg(p, "fragment %d (%s) removed", idx, f->path);
    return 0;
}

