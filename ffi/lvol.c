/*
 * Storage pool and thin volumes (docs/architecture.md, Pool): the `lvol` bdev module.
 *
 * Decisions (see also ffi/lvol.h):
 *
 * - A pool is up to 16 fragments, each a bdev the pool opens: a file bdev for
 *   files, partitions and block devices ("persistent"), a malloc bdev for RAM.
 *   Each fragment is cut into clusters (default 1 MiB) after its metadata area.
 *
 * - On-fragment layout (persistent fragments; RAM ones only when the pool has
 *   no persistent fragment, since RAM does not survive a restart):
 *     [0, 4K)  superblock copy A   [4K, 8K) superblock copy B
 *     [8K, 8K + md_slots * 8K)      metadata slots, each = page copy A + copy B
 *     [data_off, ...)               clusters, data_off aligned to the cluster size
 *   The superblock holds the pool UUID and name, the cluster size, this
 *   fragment's index and the whole fragment table; every persistent fragment
 *   carries it, with a sequence number: opening picks the newest valid copy
 *   on any fragment.
 *
 * - A metadata page (4 KiB, CRC32C, pool UUID, volume UUID, page index, seq)
 *   holds 480 cluster-map entries of one volume; page 0 also holds the volume
 *   record (name, size, tenant, thin). Pages live in any free slot; opening
 *   scans every slot, takes each slot's newest valid copy, and for each
 *   (volume, page) identity the highest seq. A FREE page is a tombstone
 *   (volume deleted / page moved). Map pages whose volume has no record are
 *   orphans (UUIDs never repeat), so deleting a volume is one page write.
 *
 * - Commit of a page: write copy A, (flush if sync_metadata), write copy B.
 *   A crash at any instant leaves one copy with the last committed content,
 *   so every committed state is readable; a copy that fails its CRC at open
 *   is reported and rewritten from the other; both bad -> the pool refuses to
 *   open, naming the fragment and slot.
 *
 * - A failed commit may have reached the disk anyway (copy A durable before
 *   B failed; a write that landed, its completion lost): RAM stays the truth.
 *   The waiters undo before the next commit of the page is filled; clusters
 *   the failed image may map are held (lv_page_hold) and entries it may
 *   contradict are E_SUSPECT (lv_page_mark) until a commit filled after the
 *   failure is durable; a write to a suspect entry waits for that commit
 *   (lv_page_repair) and fails with it.
 *
 * - One reactor per pool ("P") owns allocation: free-cluster bitmaps, the md
 *   slots, tenants, and every metadata write. Volume I/O runs on whatever
 *   reactor submits it: the cluster map is a two-level array read lock-free
 *   (64-bit entries, acquire loads; only P stores). Writes that find the
 *   cluster unallocated (or pending / locked) go to P as a message; P zeroes
 *   the new cluster, sets the map entry PENDING, commits the page (entries
 *   allocated meanwhile in the same page share one commit) and only then
 *   replies, so the write runs after its allocation is durable. A crash
 *   before the data write leaves a zeroed cluster ("old"), never another
 *   volume's data. A second write to a pending cluster waits on the same
 *   allocation record: no double allocation.
 *
 * - Reads of unallocated or pending clusters return zeroes. I/O crossing
 *   cluster boundaries is split into child srrs_io on the fragments' bdevs.
 *
 * - Quotas: a tenant counts its volumes' clusters; an allocation past the
 *   quota or with no free cluster fails that write with -ENOSPC and posts
 *   SRRS_EV_QUOTA / SRRS_EV_POOL_FULL. Nothing else is touched.
 *
 * - Fresh clusters (never allocated since this process created the file or
 *   the RAM) are known to be zero and are not zeroed again.
 *
 * - Group commit: with sync_metadata, one flush of a fragment covers every
 *   page whose copy A completed before the flush was issued (first writes at
 *   QD 32 and bulk volume creation share flushes).
 *
 * - Barriers: each reactor counts its in-flight child I/O by epoch parity;
 *   a barrier flips every reactor's epoch and waits for the old parity to
 *   drain. A cluster freed by unmap (whole clusters only; partial unmaps write
 *   zeroes) or by a drain goes back to the allocator only after one, so a
 *   late write never lands in a cluster another volume owns.
 *
 * - Drain (see the drain section): lock, barrier, copy, commit, unlock,
 *   barrier, free; then the fragment's metadata pages move. Removal zeroes
 *   the fragment's superblock; its table index is reused by a later add.
 *
 * - RAM fragments of a pool with persistent fragments live in a shared
 *   mapping (/dev/shm) that outlives the process and is re-attached at open.
 *   Where it is gone (host reboot), its mapped clusters are "lost": a read
 *   of a block not rewritten since fails with -EIO, never zeroes; a cluster
 *   whose every block was rewritten (or that is unmapped) is good again.
 *
 * - Fragment health: a poller on P checks each file fragment (shrunk,
 *   deleted, replaced) every few hundred ms and after any fragment I/O
 *   error; a failed fragment's bdev fails every I/O with -EIO and gets no
 *   new clusters.
 *
 * - Limits: 16 fragments, volume block size 4096, volumes only grow, a
 *   volume cannot be deleted while a drain runs, a lost cluster cannot be
 *   drained until rewritten or unmapped.
 */
#include "lvol_int.h"

void lv_pool_msg(struct srrs_pool *p, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    size_t n = strlen(line);
    pthread_mutex_lock(&p->lock);
    if (p->msgs_len + n + 2 < sizeof(p->msgs)) {
        memcpy(p->msgs + p->msgs_len, line, n);
        p->msgs_len += n;
        p->msgs[p->msgs_len++] = '\n';
        p->msgs[p->msgs_len] = 0;
    }
    pthread_mutex_unlock(&p->lock);
    srrs_event_post(p->core, SRRS_EV_LOG, 0, 0, p->name, "%s", line);
}

/* ---- cluster map (read on any reactor, written on P) ------------------------ */


/* P only. Returns the chunk for cluster c, creating it. */
uint64_t *lv_map_chunk(struct lv_vol *v, uint64_t c)
{
    uint64_t **top = atomic_load_explicit(&v->top, memory_order_relaxed);
    uint64_t *chunk = top[c / MD_ENTRIES];
    if (!chunk) {
        chunk = calloc(MD_ENTRIES, sizeof(uint64_t));
        if (chunk)
            __atomic_store_n(&top[c / MD_ENTRIES], chunk, __ATOMIC_RELEASE);
    }
    return chunk;
}


int lv_vol_alloc_top(struct lv_vol *v, uint64_t nclusters)
{
    uint32_t n = (uint32_t)((nclusters + MD_ENTRIES - 1) / MD_ENTRIES);
    if (!n)
        n = 1;
    uint64_t **top = calloc(n, sizeof(*top));
    struct lv_page **pages = calloc(n, sizeof(*pages));
    if (!top || !pages) {
        free(top);
        free(pages);
        return -ENOMEM;
    }
    uint64_t **old = atomic_load_explicit(&v->top, memory_order_relaxed);
    if (old) {
        memcpy(top, old, v->nchunks * sizeof(*top));
        memcpy(pages, v->pages, v->nchunks * sizeof(*pages));
        void **olds = realloc(v->old_tops, (v->nold + 1) * sizeof(void *));
        if (!olds) {
            free(top);
            free(pages);
            return -ENOMEM;
        }
        v->old_tops = olds;
        v->old_tops[v->nold++] = old; /* a reactor may still be reading it */
        free(v->pages);
    }
    v->pages = pages;
    atomic_store_explicit(&v->top, top, memory_order_release);
    v->nchunks = n;
    return 0;
}

void lv_vol_free(struct lv_vol *v)
{
    uint64_t **top = atomic_load_explicit(&v->top, memory_order_relaxed);
    for (uint32_t i = 0; top && i < v->nchunks; i++) {
        free(top[i]);
        if (v->pages[i])
            free(v->pages[i]->held);
        free(v->pages[i]);
    }
    free(top);
    for (uint32_t i = 0; i < v->nold; i++)
        free(v->old_tops[i]);
    free(v->old_tops);
    free(v->pages);
    free(v);
}

/* ---- messages between reactors ---------------------------------------------- */

static void send_to(struct srrs_reactor *r, srrs_msg_fn fn, void *arg)
{
    if (srrs_reactor_self() == r) {
        fn(arg);
        return;
    }
    int rc;
    while ((rc = srrs_reactor_send(r, fn, arg)) == -EAGAIN)
        ;
    (void)rc; /* -ESHUTDOWN: the reactors are stopping, the I/O is abandoned */
}

/* ---- metadata pages (P) ----------------------------------------------------- */

uint64_t lv_slot_offset(struct lv_frag *f, uint64_t slot, int copy)
{
    return MD_AREA_OFF + slot * MD_SLOT + (uint64_t)copy * MD_PAGE;
}

static void page_fill(struct srrs_pool *p, struct lv_page *pg, uint8_t *buf, uint64_t seq)
{
    memset(buf, 0, MD_PAGE);
    struct md_hdr *h = (struct md_hdr *)buf;
    struct lv_vol *v = pg->vol;
    h->magic = MD_MAGIC;
    h->seq = seq;
    h->version = LV_VERSION;
    memcpy(h->pool_uuid, p->uuid, 16);
    if (pg->tomb) {
        h->kind = PK_FREE;
    } else {
        memcpy(h->vol_uuid, v->uuid, 16);
        h->kind = pg->idx == 0 ? PK_VOL : PK_MAP;
        h->page_idx = pg->idx;
        if (pg->idx == 0) {
            struct md_vol *mv = (struct md_vol *)(buf + sizeof(*h));
            snprintf(mv->name, sizeof(mv->name), "%s", v->name);
            snprintf(mv->tenant, sizeof(mv->tenant), "%s", v->tenant_name);
            mv->size = v->size;
            mv->thin = v->thin;
            mv->block_size = LV_BS;
            mv->ctime = v->ctime;
        }
        uint64_t **top = atomic_load_explicit(&v->top, memory_order_relaxed);
        uint64_t *chunk = pg->idx < v->nchunks ? top[pg->idx] : NULL;
        uint64_t *ent = (uint64_t *)(buf + MD_ENTRY_OFF);
        for (uint32_t i = 0; chunk && i < MD_ENTRIES; i++)
            ent[i] = chunk[i] & E_LOC_MASK;
    }
    h->crc = srrs_crc32c(0, buf, MD_PAGE);
}

static void page_start(struct lv_page *pg);

static void page_io_done(struct srrs_io *io, void *arg);

/* May a metadata write that failed with st have reached the medium? Only
 * errors that refuse the write before it touches the file say no (a full
 * filesystem, no memory); an I/O error, or a completion lost, may hide a
 * write that landed (docs/architecture.md, Metadata and its crash safety). */
static bool md_maybe_written(int st)
{
    return st != -ENOSPC && st != -EDQUOT && st != -ENOMEM && st != -EFBIG && st != -EROFS &&
           st != -EBADF && st != -EINVAL && st != -ERANGE;
}

struct lv_heldfree {
    struct lv_wait w;
    struct srrs_pool *p;
    uint64_t *e;
    uint32_t n;
};

static void heldfree_done(struct lv_wait *w, int status)
{
    (void)status;
    struct lv_heldfree *hf = (struct lv_heldfree *)w;
    for (uint32_t i = 0; i < hf->n; i++)
        lv_cluster_put(hf->p, hf->e[i]);
    free(hf->e);
    free(hf);
}

/* P. A commit filled after the last failure is durable: both copies of the
 * slot now hold RAM's state with a higher sequence number than any image the
 * failure may have left, so suspect entries are plain again and the held
 * clusters go back to the pool, after a barrier (a read may still be using a
 * moved-to cluster). */
static void page_settle(struct lv_page *pg)
{
    struct srrs_pool *p = pg->pool;
    struct lv_vol *v = pg->vol;
    uint64_t **top = atomic_load_explicit(&v->top, memory_order_relaxed);
    uint64_t *chunk = pg->idx < v->nchunks ? top[pg->idx] : NULL;
    for (uint32_t i = 0; chunk && i < MD_ENTRIES; i++)
        if (chunk[i] & E_SUSPECT)
            map_set(chunk, i, chunk[i] & ~E_SUSPECT);
    if (pg->nheld) {
        struct lv_heldfree *hf = calloc(1, sizeof(*hf));
        if (hf) {
            hf->p = p;
            hf->e = pg->held;
            hf->n = pg->nheld;
            hf->w.fn = heldfree_done;
            lv_barrier_request(p, &hf->w);
        } else {
            free(pg->held); /* leaked: they stay in use until the next open */
        }
        pg->held = NULL;
        pg->nheld = pg->capheld = 0;
    }
    pg->unsure = false;
    __atomic_store_n(&p->md_unsure, p->md_unsure - 1, __ATOMIC_RELAXED);
    lv_pool_msg(p, "volume %s metadata page %u committed again: its on-disk state is known", v->name,
                pg->idx);
}

/* P. This failed commit may have reached the slot. */
static void page_unsure(struct lv_page *pg)
{
    struct srrs_pool *p = pg->pool;
    pg->mark_gen++;
    if (pg->unsure)
        return;
    pg->unsure = true;
    __atomic_store_n(&p->md_unsure, p->md_unsure + 1, __ATOMIC_RELAXED);
    lv_pool_msg(p, "volume %s metadata page %u (fragment %u slot %llu): a commit failed and may have "
                "reached the disk; its clusters are held and writes that depend on it wait for it "
                "to be committed again", pg->vol->name, pg->idx, pg->frag, (unsigned long long)pg->slot);
}

/* P. Called by a failed commit's waiter for a cluster taken for it (a new
 * allocation, a move's target): the failed image may map it, so it is held
 * until a later commit of the page supersedes that image; a failure that
 * cannot have reached the disk gives it back at once. */
void lv_page_hold(struct lv_page *pg, uint64_t e)
{
    struct srrs_pool *p = pg->pool;
    if (!pg->maybe) {
        lv_cluster_put(p, e);
        return;
    }
    if (pg->nheld == pg->capheld) {
        uint32_t cap = pg->capheld ? pg->capheld * 2 : 4;
        uint64_t *n = realloc(pg->held, cap * sizeof(*n));
        if (!n)
            return; /* leaked: it stays in use until the next open rebuilds the free map */
        pg->held = n;
        pg->capheld = cap;
    }
    pg->held[pg->nheld++] = e & E_LOC_MASK;
}

/* P. Called by a failed commit's waiter that keeps entry value e (a failed
 * unmap or move): the failed image may say otherwise, so the entry becomes
 * E_SUSPECT. Returns the value to store. */
uint64_t lv_page_mark(struct lv_page *pg, uint64_t e)
{
    return pg->maybe && e_alloc(e) ? e | E_SUSPECT : e;
}

static void repair_done(struct lv_wait *w, int status)
{
    struct lv_page *pg = (struct lv_page *)((uint8_t *)w - offsetof(struct lv_page, rw));
    pg->rw_busy = false;
    struct srrs_io *io = pg->rq_head;
    pg->rq_head = pg->rq_tail = NULL;
    while (io) {
        struct srrs_io *n = io->next;
        lv_child_reply(io, status); /* 0: it runs again and finds the entry plain */
        io = n;
    }
}

/* P. Commit the page again with RAM's state (once queued, a second call joins it). */
static void lv_page_repair(struct lv_page *pg)
{
    if (pg->rw_busy)
        return;
    pg->rw_busy = true;
    pg->rw.fn = repair_done;
    lv_page_commit(pg, &pg->rw);
}

/* P. A write (or zeroing, unmap) to an E_SUSPECT entry: it runs once a commit
 * of the page filled after the failure is durable, or fails with that commit. */
static void page_repair_wait(struct lv_page *pg, struct srrs_io *child)
{
    child->next = NULL;
    if (pg->rq_tail)
        pg->rq_tail->next = child;
    else
        pg->rq_head = child;
    pg->rq_tail = child;
    lv_page_repair(pg);
}

/* P. The page object of a deleted volume goes: its held clusters are free
 * (the tombstone makes every page of the volume an orphan). */
void lv_page_release(struct srrs_pool *p, struct lv_page *pg)
{
    for (uint32_t i = 0; i < pg->nheld; i++)
        lv_cluster_put(p, pg->held[i]);
    pg->nheld = 0;
    if (pg->unsure) {
        pg->unsure = false;
        __atomic_store_n(&p->md_unsure, p->md_unsure - 1, __ATOMIC_RELAXED);
    }
    lv_slot_free(p, pg->frag, pg->slot);
}

/* Runs a failed commit's waiters: they undo in RAM (lv_page_hold,
 * lv_page_mark). A commit one of them asks for (a thick create's next
 * allocation) starts only once all of them have run, so no image carries
 * half an undo; then the retry of an unsure page, and the slot of a fresh
 * map page nothing reached goes back (lv_page_drop_unused). */
static void page_undo(struct lv_page *pg, struct lv_wait *w, int status)
{
    struct lv_vol *v = pg->vol;
    if (!v) { /* a tombstone for a vacated slot: its waiter frees it */
        while (w) {
            struct lv_wait *n = w->next;
            w->fn(w, status);
            w = n;
        }
        return;
    }
    uint32_t idx = pg->idx;
    bool was_repair = false;
    for (struct lv_wait *x = w; x; x = x->next)
        was_repair |= x == &pg->rw;
    pg->undoing = true;
    while (w) {
        struct lv_wait *n = w->next;
        w->fn(w, status);
        w = n;
    }
    pg->undoing = false;
    if (pg->unsure && !was_repair)
        lv_page_repair(pg); /* one retry now with RAM's state; later ones come with writes */
    page_start(pg);
    lv_page_drop_unused(v, idx);
}

static void page_finish(struct lv_page *pg)
{
    struct srrs_pool *p = pg->pool;
    srrs_io_put(pg->io);
    pg->io = NULL;
    srrs_buf_put(p->pr, pg->buf, MD_PAGE);
    pg->buf = NULL;
    pg->busy = false;
    p->md_writes++;
    p->md_inflight--;
    struct lv_wait *w = pg->cur;
    pg->cur = NULL;
    int status = pg->status;
    if (!status) {
        if (pg->unsure && pg->fill_gen == pg->mark_gen)
            page_settle(pg);
        if (pg->want)
            page_start(pg);
        while (w) {
            struct lv_wait *n = w->next;
            w->fn(w, status);
            w = n;
        }
        return;
    }
    srrs_event_post(p->core, SRRS_EV_BDEV_ERROR, (uint64_t)-status, pg->slot, p->name,
                    "metadata write to fragment %u slot %llu failed: %s", pg->frag,
                    (unsigned long long)pg->slot, strerror(-status));
    if (pg->maybe && pg->vol)
        page_unsure(pg);
    page_undo(pg, w, status);
}

/* Submits copy 0 (A) or 1 (B) of the page image. */
static void page_write(struct lv_page *pg, int copy)
{
    struct lv_frag *f = &pg->pool->frags[pg->frag];
    int op = SRRS_IO_WRITE;
    if (srrs_unlikely(pg->t_fail) && (pg->t_fail & 3) == (copy ? 3 : 1) && !(pg->t_fail & 4))
        op = SRRS_IO_FLUSH; /* test hook: this copy is not written, and fails */
    pg->step = copy ? 2 : 0;
    srrs_io_prep(pg->io, f->bdev, op, lv_slot_offset(f, pg->slot, copy), op == SRRS_IO_WRITE ? MD_PAGE : 0,
                 op == SRRS_IO_WRITE ? pg->buf : NULL, page_io_done, pg);
    srrs_bdev_submit(pg->io);
}

static void frag_flush_start(struct srrs_pool *p, struct lv_frag *f);

/* Group commit: one flush of the fragment covers every page whose copy A
 * completed before the flush was issued. */
static void frag_flush_done(struct srrs_io *io, void *arg)
{
    struct lv_frag *f = arg;
    struct srrs_pool *p = f->pool;
    int st = io->status;
    srrs_io_put(io);
    struct lv_page *pg = f->fl_cur;
    f->fl_cur = NULL;
    f->flushing = false;
    if (f->fl_next)
        frag_flush_start(p, f);
    while (pg) {
        struct lv_page *n = pg->fl_link;
        pg->fl_link = NULL;
        int pst = st;
        if (srrs_unlikely(pg->t_fail) && (pg->t_fail & 3) == 2)
            pst = -EIO; /* test hook */
        if (pst) {
            pg->status = pst;
            page_finish(pg);
        } else {
            page_write(pg, 1);
        }
        pg = n;
    }
}

static void frag_flush_start(struct srrs_pool *p, struct lv_frag *f)
{
    struct srrs_io *io = srrs_io_get(p->pr);
    f->flushing = true;
    f->fl_cur = f->fl_next;
    f->fl_next = NULL;
    if (!io) {
        /* No I/O object: fail this group (callers report -ENOMEM). */
        struct lv_page *pg = f->fl_cur;
        f->fl_cur = NULL;
        f->flushing = false;
        while (pg) {
            struct lv_page *n = pg->fl_link;
            pg->fl_link = NULL;
            pg->status = -ENOMEM;
            page_finish(pg);
            pg = n;
        }
        return;
    }
    __atomic_store_n(&p->md_flushes, p->md_flushes + 1, __ATOMIC_RELAXED);
    srrs_io_prep(io, f->bdev, SRRS_IO_FLUSH, 0, 0, NULL, frag_flush_done, f);
    srrs_bdev_submit(io);
}

static void page_io_done(struct srrs_io *io, void *arg)
{
    struct lv_page *pg = arg;
    struct srrs_pool *p = pg->pool;
    int st = io->status;
    if (srrs_unlikely(pg->t_fail) && (unsigned)(pg->t_fail & 3) == pg->step + 1u)
        st = -EIO; /* test hook: written (or not), reported failed */
    if (st && !pg->status)
        pg->status = st;
    if (!st || md_maybe_written(st))
        pg->maybe = pg->ondisk = true;
    struct lv_frag *f = &p->frags[pg->frag];
    if (pg->status || pg->step == 2) {
        page_finish(pg);
        return;
    }
    /* Copy A is written. Copy B may only start once A is durable. */
    if (p->sync_md && !f->ram) {
        pg->step = 1;
        pg->fl_link = f->fl_next;
        f->fl_next = pg;
        if (!f->flushing)
            frag_flush_start(p, f);
        return;
    }
    page_write(pg, 1);
}

static void page_start(struct lv_page *pg)
{
    struct srrs_pool *p = pg->pool;
    if (pg->busy || pg->undoing || !pg->want)
        return;
    pg->buf = srrs_buf_get(p->pr, MD_PAGE);
    pg->io = srrs_io_get(p->pr);
    if (!pg->buf || !pg->io) {
        /* Out of buffers: fail this batch (callers report -ENOMEM). */
        if (pg->buf)
            srrs_buf_put(p->pr, pg->buf, MD_PAGE);
        if (pg->io)
            srrs_io_put(pg->io);
        pg->buf = NULL;
        pg->io = NULL;
        struct lv_wait *w = pg->next;
        pg->next = NULL;
        pg->want = false;
        pg->maybe = false; /* nothing was written: the waiters give back what they took */
        page_undo(pg, w, -ENOMEM);
        return;
    }
    pg->busy = true;
    pg->want = false;
    pg->cur = pg->next;
    pg->next = NULL;
    pg->step = 0;
    pg->status = 0;
    pg->maybe = false;
    pg->fill_gen = pg->mark_gen;
    pg->t_fail = 0;
    if (srrs_unlikely(p->t_fail_n)) {
        pg->t_fail = p->t_fail[0];
        memmove(p->t_fail, p->t_fail + 1, --p->t_fail_n);
    }
    p->md_inflight++;
    page_fill(p, pg, pg->buf, ++p->seq);
    page_write(pg, 0);
}

/* P. Commit the page (now or after the write in flight); w->fn runs once a
 * write that includes the current state is durable. */
void lv_page_commit(struct lv_page *pg, struct lv_wait *w)
{
    if (w) {
        w->next = pg->next;
        pg->next = w;
    }
    pg->want = true;
    page_start(pg);
}

/* control. Test hook (ffi/lvol.h). */
struct md_fail_arg {
    struct srrs_pool *p;
    uint32_t count;
    uint8_t code;
    int rc;
};

static void md_fail_msg(void *arg)
{
    struct md_fail_arg *a = arg;
    struct srrs_pool *p = a->p;
    if (!a->count) {
        p->t_fail_n = 0;
        return;
    }
    if (p->t_fail_n + a->count > sizeof(p->t_fail)) {
        a->rc = -ENOSPC;
        return;
    }
    for (uint32_t i = 0; i < a->count; i++)
        p->t_fail[p->t_fail_n++] = a->code;
}

int srrs_test_pool_md_fail(struct srrs_pool *p, uint32_t count, int step, int reached)
{
    if (step < 0 || step > 2)
        return srrs_err(-EINVAL, "step must be 0 (copy A), 1 (the flush) or 2 (copy B)");
    struct md_fail_arg a = {p, count, (uint8_t)(1 + step + (reached ? 4 : 0)), 0};
    int rc = srrs_reactor_call(p->pr, md_fail_msg, &a);
    if (!rc && a.rc)
        rc = srrs_err(a.rc, "at most 16 metadata failures can be queued");
    return rc;
}

/* P. A free metadata slot, preferring the persistent fragment with most free slots. */
int lv_slot_alloc(struct srrs_pool *p, uint32_t *frag, uint64_t *slot)
{
    int best = -1;
    uint64_t best_free = 0;
    for (int i = 0; i < LV_MAX_FRAGS; i++) {
        struct lv_frag *f = &p->frags[i];
        if (f->state != FS_ACTIVE || !f->md_slots || f->missing ||
            __atomic_load_n(&f->hidden, __ATOMIC_ACQUIRE) || __atomic_load_n(&f->failed, __ATOMIC_ACQUIRE))
            continue;
        uint64_t fr = f->md_slots - f->slots_used;
        if (fr > best_free) {
            best_free = fr;
            best = i;
        }
    }
    if (best < 0)
        return -ENOSPC;
    struct lv_frag *f = &p->frags[best];
    uint64_t s = bm_find_free(f->slot_used, f->md_slots, f->slot_hint);
    if (s >= f->md_slots)
        return -ENOSPC;
    bm_set(f->slot_used, s);
    f->slots_used++;
    f->slot_hint = s + 1;
    *frag = (uint32_t)best;
    *slot = s;
    return 0;
}

void lv_slot_free(struct srrs_pool *p, uint32_t frag, uint64_t slot)
{
    struct lv_frag *f = &p->frags[frag];
    if (f->slot_used && bm_get(f->slot_used, slot)) {
        bm_clr(f->slot_used, slot);
        f->slots_used--;
    }
}

/* P. The page object of chunk idx, with a slot. */
struct lv_page *lv_page_get(struct lv_vol *v, uint32_t idx)
{
    struct lv_page *pg = v->pages[idx];
    if (pg)
        return pg;
    pg = calloc(1, sizeof(*pg));
    if (!pg)
        return NULL;
    if (lv_slot_alloc(v->pool, &pg->frag, &pg->slot)) {
        free(pg);
        return NULL;
    }
    pg->pool = v->pool;
    pg->vol = v;
    pg->idx = idx;
    v->pages[idx] = pg;
    return pg;
}

/* P. A map page whose first commit failed: if nothing can have reached its
 * slot (the writes were refused, e.g. a full filesystem: see md_maybe_written)
 * and no entry or write needs it, the slot goes back to the pool, so a failed
 * first write leaves nothing allocated. Page 0 (the volume record)
 * goes with the volume; a drain may be holding a page, so none is dropped then. */
void lv_page_drop_unused(struct lv_vol *v, uint32_t idx)
{
    struct lv_page *pg = idx && idx < v->nchunks ? v->pages[idx] : NULL;
    if (!pg || pg->ondisk || pg->busy || pg->undoing || pg->want || pg->next || pg->cur ||
        v->pool->drain)
        return;
    uint64_t **top = atomic_load_explicit(&v->top, memory_order_relaxed);
    for (uint32_t i = 0; top[idx] && i < MD_ENTRIES; i++)
        if (top[idx][i])
            return;
    lv_slot_free(v->pool, pg->frag, pg->slot);
    v->pages[idx] = NULL;
    free(pg);
}

/* ---- allocation (P) ----------------------------------------------------------- */


struct lv_alloc *lv_alloc_find(struct srrs_pool *p, struct lv_vol *v, uint64_t c)
{
    for (struct lv_alloc *a = p->ahash[ahash(v, c)]; a; a = a->hnext)
        if (a->vol == v && a->c == c)
            return a;
    return NULL;
}

void lv_alloc_unhash(struct srrs_pool *p, struct lv_alloc *a)
{
    struct lv_alloc **pp = &p->ahash[ahash(a->vol, a->c)];
    while (*pp && *pp != a)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = a->hnext;
}

/* Placement: spread keeps the weighted fill ratio even; fill-first takes the
 * highest-weight fragment with room. */
int lv_pick_frag(struct srrs_pool *p)
{
    int best = -1;
    double best_score = -1;
    for (int i = 0; i < LV_MAX_FRAGS; i++) {
        struct lv_frag *f = &p->frags[i];
        if (f->state != FS_ACTIVE || f->nused >= f->nclusters || f->missing ||
            __atomic_load_n(&f->failed, __ATOMIC_ACQUIRE) || __atomic_load_n(&f->hidden, __ATOMIC_ACQUIRE))
            continue;
        double score;
        if (p->placement == 1)
            score = (double)f->weight * 1e6 - i;
        else
            score = (double)f->weight * (double)(f->nclusters - f->nused) / (double)f->nclusters;
        if (score > best_score) {
            best_score = score;
            best = i;
        }
    }
    return best;
}

/* P. Takes a free cluster; returns its entry or 0 (pool full). *zero: must be zeroed. */
uint64_t lv_cluster_take(struct srrs_pool *p, int fi, bool *zero)
{
    struct lv_frag *f = &p->frags[fi];
    uint64_t cl = bm_find_free(f->used, f->nclusters, f->hint);
    if (cl >= f->nclusters)
        return 0;
    bm_set(f->used, cl);
    f->nused++;
    f->hint = cl + 1;
    *zero = !(f->fresh && cl >= f->zero_hwm);
    if (cl + 1 > f->zero_hwm)
        f->zero_hwm = cl + 1;
    return e_make((uint32_t)fi, cl);
}

void lv_cluster_put(struct srrs_pool *p, uint64_t e)
{
    struct lv_frag *f = &p->frags[e_frag(e)];
    uint64_t cl = e_cl(e);
    lv_lost_clear(f, cl); /* freed: whoever gets it next has it zeroed */
    if (f->used && cl < f->nclusters && bm_get(f->used, cl)) {
        bm_clr(f->used, cl);
        f->nused--;
    }
}

static void child_resume(void *arg);

/* P. Answer a child waiting for an allocation: it re-reads the map on its reactor. */
void lv_child_reply(struct srrs_io *child, int status)
{
    child->status = status;
    send_to(child->r, child_resume, child);
}

static void alloc_finish(struct lv_alloc *a, int status)
{
    struct srrs_pool *p = a->vol->pool;
    lv_alloc_unhash(p, a);
    struct srrs_io *io = a->wq_head;
    while (io) {
        struct srrs_io *n = io->next;
        lv_child_reply(io, status);
        io = n;
    }
    struct lv_wait *w = a->extra;
    while (w) {
        struct lv_wait *n = w->next;
        w->fn(w, status);
        w = n;
    }
    free(a);
}

static void alloc_committed(struct lv_wait *w, int status)
{
    struct lv_alloc *a = (struct lv_alloc *)w;
    struct lv_vol *v = a->vol;
    uint64_t *chunk = lv_map_chunk(v, a->c);
    if (status) {
        /* Not durable: undo, the write fails. The failed image may map the
         * cluster: it is held until that image is superseded. */
        map_set(chunk, a->c, 0);
        lv_page_hold(v->pages[a->c / MD_ENTRIES], a->entry);
        v->allocated--;
        if (v->tenant)
            v->tenant->used--;
    } else {
        map_set(chunk, a->c, a->entry);
    }
    alloc_finish(a, status); /* a fresh page's slot goes back in page_undo */
}

/* At most one event per second per tenant / pool: a full volume under load
 * fails thousands of writes a second. */
static bool event_due(uint64_t *last)
{
    uint64_t now = srrs_now_ns();
    if (*last && now - *last < 1000000000ull)
        return false;
    *last = now;
    return true;
}

static void alloc_zeroed(struct srrs_io *io, void *arg)
{
    struct lv_alloc *a = arg;
    struct lv_vol *v = a->vol;
    int st = io ? io->status : 0;
    if (io)
        srrs_io_put(io);
    struct lv_page *pg = st ? NULL : lv_page_get(v, (uint32_t)(a->c / MD_ENTRIES));
    uint64_t *chunk = st ? NULL : lv_map_chunk(v, a->c);
    if (st || !pg || !chunk) {
        if (!st && !pg && event_due(&v->pool->full_event_ns))
            srrs_event_post(v->pool->core, SRRS_EV_POOL_FULL, 0, 0, v->name,
                            "pool %s has no free metadata slot (raise metadata_slots): write to "
                            "volume %s refused", v->pool->name, v->name);
        lv_cluster_put(v->pool, a->entry);
        v->allocated--;
        if (v->tenant)
            v->tenant->used--;
        uint32_t idx = (uint32_t)(a->c / MD_ENTRIES);
        alloc_finish(a, st ? st : -ENOSPC);
        lv_page_drop_unused(v, idx);
        return;
    }
    map_set(chunk, a->c, a->entry | E_PENDING);
    a->w.fn = alloc_committed;
    lv_page_commit(pg, &a->w);
}

static int alloc_check_space(struct srrs_pool *p, struct lv_vol *v)
{
    struct lv_tenant *t = v->tenant;
    if (t && t->quota_cl && t->used >= t->quota_cl) {
        t->failures++;
        p->alloc_failures++;
        if (event_due(&t->last_event_ns))
            srrs_event_post(p->core, SRRS_EV_QUOTA, t->used, t->quota_cl, v->name,
                        "tenant %s is at its quota (%llu clusters): write to volume %s refused",
                        t->name, (unsigned long long)t->quota_cl, v->name);
        return -ENOSPC;
    }
    return 0;
}

static void wq_push(struct lv_alloc *a, struct srrs_io *io)
{
    io->next = NULL;
    if (a->wq_tail)
        a->wq_tail->next = io;
    else
        a->wq_head = io;
    a->wq_tail = io;
}

static void alloc_attach(struct lv_alloc *a, struct srrs_io *child, struct lv_wait *w)
{
    if (child)
        wq_push(a, child);
    if (w) {
        w->next = a->extra;
        a->extra = w;
    }
}

/* P. Cluster c of v for a requester (a child I/O or a waiter). Returns 0 when
 * the requester is queued on an allocation record (new or in progress: its
 * answer may already have come), 1 when the cluster is already allocated, or
 * -errno when it cannot be allocated now; in both last cases nothing is queued. */
int lv_alloc_request(struct lv_vol *v, uint64_t c, struct srrs_io *child, struct lv_wait *w)
{
    struct srrs_pool *p = v->pool;
    struct lv_alloc *a = lv_alloc_find(p, v, c);
    if (a) {
        alloc_attach(a, child, w);
        return 0;
    }
    if (e_alloc(map_get(v, c)))
        return 1;
    if (p->degraded)
        return -EIO; /* a missing fragment may own this cluster's map page: no new mapping */
    int err = alloc_check_space(p, v);
    if (err)
        return err;
    int fi = lv_pick_frag(p);
    bool zero = true;
    uint64_t e = fi >= 0 ? lv_cluster_take(p, fi, &zero) : 0;
    if (!e) {
        p->alloc_failures++;
        if (event_due(&p->full_event_ns))
            srrs_event_post(p->core, SRRS_EV_POOL_FULL, 0, 0, v->name,
                            "pool %s has no free cluster: write to volume %s refused", p->name, v->name);
        return -ENOSPC;
    }
    struct srrs_io *io = zero ? srrs_io_get(p->pr) : NULL;
    a = calloc(1, sizeof(*a));
    if (!a || (zero && !io)) {
        free(a);
        if (io)
            srrs_io_put(io);
        lv_cluster_put(p, e);
        return -ENOMEM;
    }
    a->vol = v;
    a->c = c;
    a->entry = e;
    v->allocated++;
    if (v->tenant)
        v->tenant->used++;
    uint32_t h = ahash(v, c);
    a->hnext = p->ahash[h];
    p->ahash[h] = a;
    alloc_attach(a, child, w);
    if (!zero) {
        alloc_zeroed(NULL, a); /* may finish (and free) the record at once */
        return 0;
    }
    struct lv_frag *f = &p->frags[e_frag(e)];
    srrs_io_prep(io, f->bdev, SRRS_IO_WRITE_ZEROES, f->data_off + (e_cl(e) << p->cs_shift), p->cs,
                 NULL, alloc_zeroed, a);
    srrs_bdev_submit(io);
    return 0;
}

/* P. A child write (or zeroing) found its cluster unallocated, pending or locked. */
static void p_alloc_msg(void *arg)
{
    struct srrs_io *child = arg;
    struct lv_child *lc = child_of(child);
    struct lv_vol *v = lc->vol;
    struct srrs_pool *p = v->pool;
    if (v->deleted) {
        lv_child_reply(child, -ENXIO);
        return;
    }
    struct lv_alloc *a = lv_alloc_find(p, v, lc->c);
    if (a) {
        wq_push(a, child);
        return;
    }
    if (srrs_unlikely(map_get(v, lc->c) & E_SUSPECT)) {
        page_repair_wait(v->pages[lc->c / MD_ENTRIES], child);
        return;
    }
    if (lc->noalloc) {
        lv_child_reply(child, 0);
        return;
    }
    int rc = lv_alloc_request(v, lc->c, child, NULL);
    if (rc)
        lv_child_reply(child, rc > 0 ? 0 : rc);
}

/* ---- barriers and unmap (P) ---------------------------------------------------- */

/*
 * A barrier completes once every volume I/O that was submitted to a fragment
 * before it started has completed, on every reactor: each reactor counts its
 * in-flight child I/O by epoch parity; the barrier flips every reactor's
 * epoch (a message) and waits for the old parity's count to reach zero.
 * Freed clusters (unmap, drain) go back to the allocator only after one, so
 * a late write can never land in a cluster that another volume now owns.
 */

static void bar_ack(void *arg) { ((struct srrs_pool *)arg)->bar_acks++; }

static void bar_flip(void *arg)
{
    struct srrs_pool *p = arg;
    int i = srrs_reactor_idx(srrs_reactor_self());
    __atomic_add_fetch(&p->rs[i].epoch, 1, __ATOMIC_ACQ_REL);
    send_to(p->pr, bar_ack, p);
}

static int maint_poll(void *arg)
{
    struct srrs_pool *p = arg;
    if (p->bar_running) {
        if (p->bar_acks < p->nreactors)
            return 0;
        for (int i = 0; i < p->nreactors; i++)
            if (__atomic_load_n(&p->rs[i].cnt[p->bar_oldpar[i]], __ATOMIC_ACQUIRE))
                return 0;
        p->bar_running = false;
        struct lv_wait *w = p->bar_cur;
        p->bar_cur = NULL;
        while (w) {
            struct lv_wait *n = w->next;
            w->fn(w, 0);
            w = n;
        }
        return 1;
    }
    if (!p->bar_next)
        return 0;
    p->bar_cur = p->bar_next;
    p->bar_next = NULL;
    p->bar_running = true;
    p->bar_acks = 0;
    for (int i = 0; i < p->nreactors; i++)
        p->bar_oldpar[i] = __atomic_load_n(&p->rs[i].epoch, __ATOMIC_ACQUIRE) & 1;
    for (int i = 0; i < p->nreactors; i++)
        send_to(srrs_core_reactor(p->core, i), bar_flip, p);
    return 1;
}

/* P. w->fn(w, 0) runs after a barrier that started after this call. */
void lv_barrier_request(struct srrs_pool *p, struct lv_wait *w)
{
    if (!p->maint_poller)
        p->maint_poller = srrs_poller_register(p->pr, maint_poll, p, 20);
    w->next = p->bar_next;
    p->bar_next = w;
}

struct lv_free {
    struct lv_alloc a;       /* in the allocation hash while the map changes */
    struct lv_wait bw;
    uint64_t old_e;
};

static void free_after_barrier(struct lv_wait *w, int status)
{
    (void)status;
    struct lv_free *fr = (struct lv_free *)((uint8_t *)w - offsetof(struct lv_free, bw));
    lv_cluster_put(fr->a.vol->pool, fr->old_e);
    free(fr);
}

static void unmap_committed(struct lv_wait *w, int status)
{
    struct lv_free *fr = (struct lv_free *)w;
    struct lv_vol *v = fr->a.vol;
    struct srrs_pool *p = v->pool;
    /* Failed: the cluster stays mapped, suspect if the failed image (saying
     * unmapped) may be on disk. */
    map_set(lv_map_chunk(v, fr->a.c), fr->a.c,
            status ? lv_page_mark(v->pages[fr->a.c / MD_ENTRIES], fr->old_e) : 0);
    lv_alloc_unhash(p, &fr->a);
    struct srrs_io *io = fr->a.wq_head;
    while (io) {
        struct srrs_io *n = io->next;
        lv_child_reply(io, status); /* the unmap itself finds the cluster gone: done */
        io = n;
    }
    if (status) {
        free(fr);
        return;
    }
    v->allocated--;
    if (v->tenant)
        v->tenant->used--;
    p->unmapped++;
    if (lv_lost_clear(&p->frags[e_frag(fr->old_e)], e_cl(fr->old_e)))
        __atomic_sub_fetch(&v->lost, 1, __ATOMIC_RELAXED);
    fr->bw.fn = free_after_barrier;
    lv_barrier_request(p, &fr->bw);
}

/* P. An unmap covering a whole allocated cluster: the cluster goes back to the pool. */
static void p_unmap_msg(void *arg)
{
    struct srrs_io *child = arg;
    struct lv_child *lc = child_of(child);
    struct lv_vol *v = lc->vol;
    struct srrs_pool *p = v->pool;
    struct lv_alloc *a = lv_alloc_find(p, v, lc->c);
    if (a) {
        wq_push(a, child);
        return;
    }
    uint64_t e = map_get(v, lc->c);
    struct lv_page *pg = v->pages[lc->c / MD_ENTRIES];
    struct lv_free *fr = e_alloc(e) && pg ? calloc(1, sizeof(*fr)) : NULL;
    if (!fr) {
        lv_child_reply(child, e_alloc(e) ? -ENOMEM : 0);
        return;
    }
    fr->a.vol = v;
    fr->a.c = lc->c;
    fr->old_e = e;
    uint32_t h = ahash(v, lc->c);
    fr->a.hnext = p->ahash[h];
    p->ahash[h] = &fr->a;
    wq_push(&fr->a, child);
    /* Reads see an unallocated cluster (zeroes); writes queue on the record. */
    map_set(lv_map_chunk(v, lc->c), lc->c, E_LOCKED);
    fr->a.w.fn = unmap_committed;
    lv_page_commit(pg, &fr->a.w);
}

/* ---- the data path (any reactor) ---------------------------------------------- */

void srrs_bdev_account(struct srrs_io *io);

/* in_completion: called from a child's completion callback (the reactor's
 * completion loop), so the parent's callback may run now rather than one loop
 * later; from a submit path it must be deferred (no recursion). */
static void piece_done_ex(struct srrs_io *parent, int status, bool in_completion)
{
    struct lv_parent *pp = parent_of(parent);
    if (status && !pp->status)
        pp->status = status;
    if (--pp->pending)
        return;
    if (pp->iovbuf)
        srrs_buf_put(parent->r, pp->iovbuf, pp->iovbuf_len);
    pp->iovbuf = NULL;
    if (!in_completion) {
        srrs_io_complete(parent, pp->status);
        return;
    }
    parent->status = pp->status;
    srrs_bdev_account(parent);
    parent->cb(parent, parent->cb_arg);
}

static void piece_done(struct srrs_io *parent, int status)
{
    piece_done_ex(parent, status, false);
}

#define CHILD_SUBMITTED ((void *)1)

static void child_cb(struct srrs_io *child, void *arg)
{
    struct srrs_io *parent = child->parent;
    int st = child->status;
    if (child->tag != IO_NOTAG) {
        struct srrs_pool *p = ((struct lv_vol *)parent->bdev->ctx)->pool;
        __atomic_sub_fetch(&p->rs[srrs_reactor_idx(child->r)].cnt[child->tag], 1, __ATOMIC_RELEASE);
        if (srrs_unlikely(st)) /* a fragment failed an I/O: check its health now */
            __atomic_store_n(&p->health_due, 1, __ATOMIC_RELAXED);
    }
    srrs_io_put(child);
    piece_done_ex(parent, st, arg == CHILD_SUBMITTED);
}

static void iov_zero(struct srrs_io *io)
{
    for (int i = 0; i < io->iovcnt; i++)
        memset(io->iov[i].iov_base, 0, io->iov[i].iov_len);
}

/* Runs on the child's reactor: look the cluster up and send the piece on. */
static void child_go(struct srrs_io *child)
{
    struct lv_child *lc = child_of(child);
    struct lv_vol *v = lc->vol;
    struct srrs_pool *p = v->pool;
    uint64_t e = map_get(v, lc->c);
    bool mapped = e_alloc(e) && !(e & E_PENDING);
    struct lv_frag *f = &p->frags[e_frag(e) & (LV_MAX_FRAGS - 1)]; /* used only when mapped */
    switch (child->op) {
    case SRRS_IO_READ:
        if (!mapped) {
            if (srrs_unlikely(e & E_GONE))
                goto media_error;
            iov_zero(child);
            child_cb(child, NULL);
            return;
        }
        if (srrs_unlikely(lv_lost_get(f, e_cl(e)) && lv_lost_range(f, e_cl(e), lc->coff, child->len))) {
            goto media_error; /* its RAM was gone at open: unknown data, never zeroes */
        }
        break;
    case SRRS_IO_WRITE:
        if (!mapped || (e & (E_LOCKED | E_SUSPECT))) {
            lc->noalloc = false;
            send_to(p->pr, p_alloc_msg, child);
            return;
        }
        if (srrs_unlikely(lv_lost_get(f, e_cl(e))) && lv_lost_write(f, e_cl(e), lc->coff, child->len))
            __atomic_sub_fetch(&v->lost, 1, __ATOMIC_RELAXED); /* every block rewritten: good again */
        break;
    default: /* write zeroes, unmap */
        if (!e_alloc(e)) {
            if (srrs_unlikely(e & E_GONE))
                goto media_error;
            child_cb(child, NULL);
            return;
        }
        if ((e & (E_PENDING | E_LOCKED | E_SUSPECT))) {
            lc->noalloc = true;
            send_to(p->pr, p_alloc_msg, child);
            return;
        }
        if (child->op == SRRS_IO_UNMAP && lc->coff == 0 && child->len == p->cs) {
            send_to(p->pr, p_unmap_msg, child);
            return;
        }
        child->op = SRRS_IO_WRITE_ZEROES; /* a partial cluster stays allocated */
        if (srrs_unlikely(lv_lost_get(f, e_cl(e))) && lv_lost_write(f, e_cl(e), lc->coff, child->len))
            __atomic_sub_fetch(&v->lost, 1, __ATOMIC_RELAXED);
        break;
    }
    if (srrs_unlikely(!f->bdev))
        goto media_error; /* its fragment is missing */
    child->bdev = f->bdev;
    child->offset = f->data_off + (e_cl(e) << p->cs_shift) + lc->coff;
    child->cb = child_cb;
    child->cb_arg = CHILD_SUBMITTED;
    /* Counted until it completes: a drain frees a moved-away cluster only
     * once every I/O that may still use its old location is done. */
    struct lv_rstate *rs = &p->rs[srrs_reactor_idx(child->r)];
    child->tag = __atomic_load_n(&rs->epoch, __ATOMIC_RELAXED) & 1;
    __atomic_add_fetch(&rs->cnt[child->tag], 1, __ATOMIC_RELAXED);
    srrs_bdev_submit(child);
    return;
media_error:
    child->status = -EIO;
    child_cb(child, NULL);
}

static void child_resume(void *arg)
{
    struct srrs_io *child = arg;
    if (child->status) {
        int st = child->status;
        child->status = 0;
        struct srrs_io *parent = child->parent;
        srrs_io_put(child);
        piece_done(parent, st);
        return;
    }
    child_go(child);
}

static void lv_flush(struct srrs_pool *p, struct srrs_io *io)
{
    struct lv_parent *pp = parent_of(io);
    for (int i = 0; i < LV_MAX_FRAGS; i++) {
        struct lv_frag *f = &p->frags[i];
        if ((f->state != FS_ACTIVE && f->state != FS_DRAINING) || f->ram || !f->bdev)
            continue;
        struct srrs_io *c = srrs_io_get(io->r);
        if (!c) {
            pp->status = -ENOMEM;
            break;
        }
        srrs_io_prep(c, f->bdev, SRRS_IO_FLUSH, 0, 0, NULL, child_cb, NULL);
        c->parent = io;
        c->tag = IO_NOTAG;
        pp->pending++;
        srrs_bdev_submit(c);
    }
    piece_done(io, 0);
}

/* Builds child k's iovec: bytes [skip, skip + len) of the parent's iovecs. */
static int iov_slice(const struct srrs_io *io, uint64_t skip, uint64_t len, struct iovec *out, int max)
{
    int n = 0;
    for (int i = 0; i < io->iovcnt && len; i++) {
        uint64_t l = io->iov[i].iov_len;
        if (skip >= l) {
            skip -= l;
            continue;
        }
        uint64_t take = SRRS_MIN(l - skip, len);
        if (n == max)
            return -1;
        out[n].iov_base = (uint8_t *)io->iov[i].iov_base + skip;
        out[n].iov_len = take;
        n++;
        len -= take;
        skip = 0;
    }
    return len ? -1 : n;
}

/* I/O that found the reactor's I/O objects or buffers exhausted waits here
 * (per reactor) and is dispatched again by a poller: never failed for that. */
struct lv_retry {
    struct srrs_io *head, *tail;
    struct srrs_poller *poller;
};
static __thread struct lv_retry t_retry;

/* Takes everything the I/O needs (child I/O objects, an iovec buffer when it
 * is split) and dispatches it; false, with nothing taken, when short. */
static bool lv_dispatch(struct srrs_io *io)
{
    struct lv_vol *v = io->bdev->ctx;
    struct srrs_pool *p = v->pool;
    struct lv_parent *pp = parent_of(io);
    bool data = io->op == SRRS_IO_READ || io->op == SRRS_IO_WRITE;
    uint64_t first = io->offset >> p->cs_shift, last = (io->offset + io->len - 1) >> p->cs_shift;
    bool split = first != last;
    uint32_t npieces = (uint32_t)(last - first + 1);
    struct srrs_io *kids = NULL;
    for (uint32_t i = 0; i < npieces; i++) {
        struct srrs_io *k = srrs_io_get(io->r);
        if (!k)
            goto short_of;
        k->next = kids;
        kids = k;
    }
    pp->pending = 1;
    pp->status = 0;
    pp->iovbuf = NULL;
    struct iovec *iovs = NULL;
    int iov_left = 0;
    if (split && data) {
        /* Rare: a transfer crossing a cluster boundary gets sliced iovecs. */
        uint32_t need = (uint32_t)(io->iovcnt + npieces) * sizeof(struct iovec);
        if (need > 65536) {
            pp->status = -EINVAL;
        } else {
            pp->iovbuf_len = need <= 4096 ? 4096 : 65536;
            pp->iovbuf = srrs_buf_get(io->r, pp->iovbuf_len);
            if (!pp->iovbuf)
                goto short_of;
            iovs = pp->iovbuf;
            iov_left = (int)(pp->iovbuf_len / sizeof(struct iovec));
        }
    }
    uint64_t off = io->offset, end = io->offset + io->len;
    while (off < end && !pp->status) {
        uint64_t c = off >> p->cs_shift;
        uint64_t coff = off & (p->cs - 1);
        uint64_t n = SRRS_MIN(p->cs - coff, end - off);
        struct srrs_io *k = kids;
        kids = k->next;
        k->next = NULL;
        k->op = io->op;
        k->len = n;
        k->parent = io;
        k->status = 0;
        k->tag = IO_NOTAG;
        if (!data) {
            k->iov = k->iov_inline;
            k->iovcnt = 0;
        } else if (!split) {
            k->iov = io->iov;
            k->iovcnt = io->iovcnt;
        } else {
            int cnt = iov_slice(io, off - io->offset, n, iovs, iov_left);
            if (cnt < 0) {
                srrs_io_put(k);
                pp->status = -EINVAL;
                break;
            }
            k->iov = iovs;
            k->iovcnt = cnt;
            iovs += cnt;
            iov_left -= cnt;
        }
        struct lv_child *lc = child_of(k);
        lc->vol = v;
        lc->c = c;
        lc->coff = coff;
        lc->noalloc = false;
        pp->pending++;
        child_go(k);
        off += n;
    }
    while (kids) {
        struct srrs_io *n = kids->next;
        srrs_io_put(kids);
        kids = n;
    }
    piece_done(io, 0);
    return true;
short_of:
    while (kids) {
        struct srrs_io *n = kids->next;
        srrs_io_put(kids);
        kids = n;
    }
    return false;
}

static int retry_poll(void *arg)
{
    struct lv_retry *q = arg;
    int n = 0;
    while (q->head) {
        struct srrs_io *io = q->head;
        struct srrs_io *next = io->next;
        if (!lv_dispatch(io))
            break;
        q->head = next;
        if (!q->head)
            q->tail = NULL;
        n++;
    }
    return n;
}

static void lv_submit(struct srrs_bdev *b, void *ch, struct srrs_io *io)
{
    (void)ch;
    struct lv_vol *v = b->ctx;
    if (io->op == SRRS_IO_FLUSH) {
        struct lv_parent *pp = parent_of(io);
        pp->pending = 1;
        pp->status = 0;
        pp->iovbuf = NULL;
        lv_flush(v->pool, io);
        return;
    }
    struct lv_retry *q = &t_retry;
    if (srrs_likely(!q->head) && lv_dispatch(io))
        return;
    if (!q->poller) {
        q->poller = srrs_poller_register(io->r, retry_poll, q, 0);
        if (!q->poller) {
            srrs_io_complete(io, -ENOMEM);
            return;
        }
    }
    io->next = NULL;
    if (q->tail)
        q->tail->next = io;
    else
        q->head = io;
    q->tail = io;
}

static void lv_destroy(struct srrs_bdev *b)
{
    struct lv_vol *v = b->ctx;
    v->bdev = NULL;
}

const struct srrs_bdev_module lv_lvol_module = {
    .name = "lvol",
    .submit = lv_submit,
    .destroy = lv_destroy,
};

