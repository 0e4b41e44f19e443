/*
 * Pool lifecycle: superblocks, the metadata scan at open, close, volume
 * and tenant operations (run on the pool reactor), online fragment add.
 * The design is at the top of lvol.c.
 */
#include "lvol_int.h"

#include <malloc.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/mman.h>

/* ---- control-thread operations run on P ------------------------------------- */


static void op_fail(struct lv_op *op, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void op_fail(struct lv_op *op, int rc, const char *fmt, ...)
{
    if (op->rc)
        return;
    op->rc = rc;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(op->err, sizeof(op->err), fmt, ap);
    va_end(ap);
}

static void op_put(struct lv_op *op)
{
    if (--op->pending == 0)
        sem_post(&op->done);
}

/* Runs fn on P and waits until every asynchronous part has finished. */
static int op_run(struct srrs_pool *p, struct lv_op *op, srrs_msg_fn fn)
{
    if (srrs_reactor_is_stopping(p->pr))
        return srrs_err(-ESHUTDOWN, "pool %s: its reactor is stopping", p->name);
    op->p = p;
    op->pending = 1;
    sem_init(&op->done, 0, 0);
    srrs_reactor_call(p->pr, fn, op);
    while (sem_wait(&op->done) && errno == EINTR)
        ;
    sem_destroy(&op->done);
    if (op->rc)
        return srrs_err(op->rc, "%s", op->err[0] ? op->err : strerror(-op->rc));
    return 0;
}

static void op_page_done(struct lv_wait *w, int status)
{
    struct lv_op *op = (struct lv_op *)w;
    if (status)
        op_fail(op, status, "pool %s: metadata write failed: %s", op->p->name, strerror(-status));
    op_put(op);
}

/* Thick: keep `window` allocations in flight until every cluster is allocated. */
static void thick_more(struct lv_op *op);

struct thick_wait {
    struct lv_wait w;
    struct lv_op *op;
};

static void thick_one_done(struct lv_wait *w, int status)
{
    struct thick_wait *tw = (struct thick_wait *)w;
    struct lv_op *op = tw->op;
    free(tw);
    if (status)
        op_fail(op, status, "volume %s: allocating its clusters failed: %s", op->vol->name,
                strerror(-status));
    op->window++;
    thick_more(op);
    op_put(op);
}

static void thick_more(struct lv_op *op)
{
    struct lv_vol *v = op->vol;
    while (op->window > 0 && op->next_c < op->end_c && !op->rc) {
        uint64_t c = op->next_c++;
        struct thick_wait *tw = calloc(1, sizeof(*tw));
        if (!tw) {
            op_fail(op, -ENOMEM, "volume %s: out of memory", v->name);
            return;
        }
        tw->op = op;
        tw->w.fn = thick_one_done;
        /* Counted first: the answer may come before lv_alloc_request returns. */
        op->window--;
        op->pending++;
        int rc = lv_alloc_request(v, c, NULL, &tw->w);
        if (rc) {
            free(tw);
            op->window++;
            op->pending--;
            if (rc < 0) {
                op_fail(op, rc, "volume %s: cannot allocate cluster %llu of a thick volume: %s",
                        v->name, (unsigned long long)c, strerror(-rc));
                return;
            }
        }
    }
}

static void thick_start(struct lv_op *op, uint64_t from)
{
    op->next_c = from;
    op->end_c = op->vol->nclusters;
    op->window = 32;
    thick_more(op);
}

static void p_create(void *arg)
{
    struct lv_op *op = arg;
    struct srrs_pool *p = op->p;
    struct lv_tenant *t = NULL;
    if (op->tenant && *op->tenant && !(t = tenant_lookup(p, op->tenant))) {
        op_fail(op, -ENOENT, "tenant %s does not exist", op->tenant);
        op_put(op);
        return;
    }
    if (op->uuid) {
        bool taken = false;
        pthread_mutex_lock(&p->lock);
        for (uint32_t h = 0; h < VHASH && !taken; h++)
            for (struct lv_vol *o = p->vhash[h]; o && !taken; o = o->hnext)
                taken = !memcmp(o->uuid, op->uuid, 16);  /* its tombstone too */
        pthread_mutex_unlock(&p->lock);
        if (taken) {
            op_fail(op, -EEXIST, "volume %s: another volume of pool %s has that uuid", op->name,
                    p->name);
            op_put(op);
            return;
        }
    }
    struct lv_vol *v = calloc(1, sizeof(*v));
    if (v && op->uuid)
        memcpy(v->uuid, op->uuid, 16);
    if (!v || lv_vol_alloc_top(v, op->size / p->cs) ||
        (!op->uuid && getrandom(v->uuid, 16, 0) != 16)) {
        free(v);
        op_fail(op, -ENOMEM, "volume %s: out of memory", op->name);
        op_put(op);
        return;
    }
    v->pool = p;
    snprintf(v->name, sizeof(v->name), "%s", op->name);
    snprintf(v->tenant_name, sizeof(v->tenant_name), "%s", t ? t->name : "");
    v->tenant = t;
    v->size = op->size;
    v->nclusters = op->size / p->cs;
    v->thin = op->thin;
    v->ctime = (uint64_t)time(NULL);
    struct lv_page *pg = lv_page_get(v, 0);
    if (!pg) {
        lv_vol_free(v);
        op_fail(op, -ENOSPC, "pool %s: no free metadata slot for volume %s (raise metadata_slots)",
                p->name, op->name);
        op_put(op);
        return;
    }
    pthread_mutex_lock(&p->lock);
    vol_link(p, v);
    pthread_mutex_unlock(&p->lock);
    if (t)
        t->nvols++;
    op->vol = v;
    op->w.fn = op_page_done;
    op->pending++;
    lv_page_commit(pg, &op->w);
    if (!v->thin)
        thick_start(op, 0);
    op_put(op);
}

/* P: frees everything the volume held (after its tombstone is durable). */
static void vol_release(struct srrs_pool *p, struct lv_vol *v)
{
    uint64_t **top = atomic_load_explicit(&v->top, memory_order_relaxed);
    for (uint32_t k = 0; k < v->nchunks; k++) {
        for (uint32_t i = 0; top[k] && i < MD_ENTRIES; i++)
            if (e_alloc(top[k][i]))
                lv_cluster_put(p, top[k][i]);
        if (v->pages[k])
            lv_page_release(p, v->pages[k]);
    }
    if (v->tenant) {
        v->tenant->used -= v->allocated;
        v->tenant->nvols--;
    }
    pthread_mutex_lock(&p->lock);
    vol_unlink(p, v);
    pthread_mutex_unlock(&p->lock);
    lv_vol_free(v);
}

static void delete_done(struct lv_wait *w, int status)
{
    struct lv_op *op = (struct lv_op *)w;
    struct lv_vol *v = op->vol;
    if (status) {
        v->pages[0]->tomb = false;
        v->deleted = false;
        op_fail(op, status, "volume %s: writing its deletion failed: %s", v->name, strerror(-status));
    } else {
        vol_release(op->p, v);
    }
    op_put(op);
}

/* P: undoes a create that failed. A volume record that never reached its
 * slot needs no tombstone: everything it holds goes back at once. */
static void p_create_undo(void *arg)
{
    struct lv_op *op = arg;
    struct lv_vol *v = op->vol;
    if (v->pages[0] && v->pages[0]->ondisk) {
        v->deleted = true;
        v->pages[0]->tomb = true;
        op->w.fn = delete_done;
        op->pending++;
        lv_page_commit(v->pages[0], &op->w);
    } else {
        vol_release(op->p, v);
    }
    op_put(op);
}

static void vol_md_busy_msg(void *arg)
{
    struct lv_op *op = arg;
    struct lv_vol *v = op->vol;
    for (uint32_t k = 0; k < v->nchunks && !op->rc; k++) {
        struct lv_page *pg = v->pages[k];
        if (pg && (pg->busy || pg->want || pg->rw_busy))
            op->rc = -EBUSY;
    }
}

/* control. A volume without I/O (its bdev is gone) may still have a page
 * commit in flight: the retry after a failed one. Its pages are freed with
 * the volume, so that commit ends first. */
static void vol_md_quiesce(struct srrs_pool *p, struct lv_vol *v)
{
    for (int tries = 0; tries < 5000 && !srrs_reactor_is_stopping(p->pr); tries++) {
        struct lv_op op = {.p = p, .vol = v};
        srrs_reactor_call(p->pr, vol_md_busy_msg, &op);
        if (!op.rc)
            return;
        usleep(1000);
    }
}

static void p_delete(void *arg)
{
    struct lv_op *op = arg;
    struct lv_vol *v = op->vol;
    v->deleted = true;
    v->pages[0]->tomb = true;
    op->w.fn = delete_done;
    op->pending++;
    lv_page_commit(v->pages[0], &op->w);
    op_put(op);
}

/* A thin volume whose new size could not be committed keeps its old one,
 * restored here, before the page's next commit (and the retry after a
 * failure that may have reached the disk) is filled. */
static void resize_page_done(struct lv_wait *w, int status)
{
    struct lv_op *op = (struct lv_op *)w;
    struct lv_vol *v = op->vol;
    if (status && v->thin) {
        v->size = op->old_size;
        v->nclusters = op->old_size / op->p->cs;
    }
    op_page_done(w, status);
}

static void p_resize(void *arg)
{
    struct lv_op *op = arg;
    struct lv_vol *v = op->vol;
    struct srrs_pool *p = op->p;
    uint64_t old_n = v->nclusters;
    if (lv_vol_alloc_top(v, op->size / p->cs)) {
        op_fail(op, -ENOMEM, "volume %s: out of memory", v->name);
        op_put(op);
        return;
    }
    op->old_size = v->size;
    v->size = op->size;
    v->nclusters = op->size / p->cs;
    op->w.fn = resize_page_done;
    op->pending++;
    lv_page_commit(v->pages[0], &op->w);
    if (!v->thin)
        thick_start(op, old_n);
    op_put(op);
}

static void p_resize_undo(void *arg)
{
    struct lv_op *op = arg;
    op->vol->size = op->size;
    op->vol->nclusters = op->size / op->p->cs;
    op_put(op);
}

static void p_tenant_set(void *arg)
{
    struct lv_op *op = arg;
    struct srrs_pool *p = op->p;
    struct lv_tenant *t = tenant_lookup(p, op->name);
    if (!t) {
        t = calloc(1, sizeof(*t));
        if (!t) {
            op_fail(op, -ENOMEM, "out of memory");
            op_put(op);
            return;
        }
        snprintf(t->name, sizeof(t->name), "%s", op->name);
        t->next = p->tenants;
        p->tenants = t;
    }
    t->quota_cl = op->quota / p->cs;
    if (op->quota && !t->quota_cl)
        t->quota_cl = 1;
    op_put(op);
}

static void p_tenant_delete(void *arg)
{
    struct lv_op *op = arg;
    struct srrs_pool *p = op->p;
    struct lv_tenant **pp = &p->tenants;
    while (*pp && strcmp((*pp)->name, op->name))
        pp = &(*pp)->next;
    if (!*pp)
        op_fail(op, -ENOENT, "tenant %s does not exist", op->name);
    else if ((*pp)->nvols)
        op_fail(op, -EBUSY, "tenant %s still has %u volume(s)", op->name, (*pp)->nvols);
    else {
        struct lv_tenant *t = *pp;
        *pp = t->next;
        free(t);
    }
    op_put(op);
}

static int check_vol_name(const char *name)
{
    size_t n = name ? strnlen(name, SRRS_NAME_MAX) : 0;
    if (n == 0 || n >= SRRS_NAME_MAX)
        return srrs_err(-EINVAL, "volume name must be 1..%d bytes", SRRS_NAME_MAX - 1);
    return 0;
}

static void vol_fill_info(struct srrs_pool *p, struct lv_vol *v, struct srrs_lvol_info *o)
{
    memset(o, 0, sizeof(*o));
    snprintf(o->name, sizeof(o->name), "%s", v->name);
    snprintf(o->tenant, sizeof(o->tenant), "%s", v->tenant_name);
    memcpy(o->uuid, v->uuid, 16);
    o->size = v->size;
    o->allocated_clusters = __atomic_load_n(&v->allocated, __ATOMIC_RELAXED);
    o->cluster_size = p->cs;
    o->thin = v->thin;
    o->lost_clusters = __atomic_load_n(&v->lost, __ATOMIC_RELAXED);
}

static int vol_register(struct srrs_pool *p, struct lv_vol *v)
{
    return srrs_bdev_register(p->core, v->name, &lv_lvol_module, v, v->size / LV_BS, LV_BS, &v->bdev);
}

/* The largest volume the pool can map: one metadata page per MD_ENTRIES
 * clusters, and the pool has md_slots pages in all. Beyond it a volume could
 * never be written whole, and its in-memory map (sized by the volume) would
 * make every walk of it (delete, reopen) take seconds. */
static int check_vol_size(struct srrs_pool *p, const char *name, uint64_t size)
{
    uint64_t slots = 0;
    for (int i = 0; i < LV_MAX_FRAGS; i++)
        if (p->frags[i].state == FS_ACTIVE || p->frags[i].state == FS_DRAINING)
            slots += p->frags[i].md_slots;
    uint64_t max_cl = SRRS_MIN(slots * MD_ENTRIES, (uint64_t)UINT32_MAX);
    if (size / p->cs <= max_cl)
        return 0;
    return srrs_err(-EFBIG, "volume %s: size %llu bytes is more than pool %s can map: at most %llu "
                    "bytes (%llu metadata slots of %u clusters of %u bytes; raise metadata_slots or "
                    "add a fragment for larger volumes)", name, (unsigned long long)size, p->name,
                    (unsigned long long)(max_cl * p->cs), (unsigned long long)slots, MD_ENTRIES, p->cs);
}

int srrs_lvol_create(struct srrs_pool *p, const char *name, uint64_t size, int thin,
                     const char *tenant, struct srrs_lvol_info *out)
{
    return srrs_lvol_create_uuid(p, name, size, thin, tenant, NULL, out);
}

int srrs_lvol_create_uuid(struct srrs_pool *p, const char *name, uint64_t size, int thin,
                          const char *tenant, const uint8_t *uuid, struct srrs_lvol_info *out)
{
    int rc = check_vol_name(name);
    if (rc)
        return rc;
    if (!size || size % p->cs)
        return srrs_err(-EINVAL, "volume %s: size %llu is not a positive multiple of the cluster size %u",
                        name, (unsigned long long)size, p->cs);
    if ((rc = check_vol_size(p, name, size)))
        return rc;
    if (p->degraded && (rc = lv_degraded_err(p, "creating a volume")))
        return rc;
    struct srrs_bdev *b = srrs_bdev_open(p->core, name);
    if (b) {
        srrs_bdev_close(&b);
        return srrs_err(-EEXIST, "volume %s: a bdev of that name already exists", name);
    }
    struct lv_op op = {.name = name, .tenant = tenant, .size = size, .thin = thin, .uuid = uuid};
    rc = op_run(p, &op, p_create);
    if (rc && op.vol) {
        /* Its record or clusters could not be committed: take it all back. */
        struct lv_op d = {.vol = op.vol};
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", srrs_last_error());
        vol_md_quiesce(p, op.vol);
        if (op_run(p, &d, p_create_undo))
            return srrs_err(rc, "%s; its record is on disk and could not be erased (%s): delete "
                            "volume %s once the fragment has space", msg, d.err, name);
        return srrs_err(rc, "%s", msg);
    }
    if (rc)
        return rc;
    rc = vol_register(p, op.vol);
    if (rc) {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", srrs_last_error());
        struct lv_op d = {.vol = op.vol};
        vol_md_quiesce(p, op.vol);
        op_run(p, &d, p_delete);
        return srrs_err(rc, "%s", msg);
    }
    if (out)
        vol_fill_info(p, op.vol, out);
    return 0;
}

/* ---- many thin volumes in one pass (srrs_lvol_create_many) ------------------ */

/* At most this many records in commit at once: enough that one fragment flush
 * covers hundreds of them (group commit), few enough to leave the reactor's
 * 4 KiB buffers and I/O objects to the volumes' own I/O. */
#define MANY_WINDOW 256u

struct lv_many_one {
    struct lv_wait w;
    struct lv_many *m;
    struct lv_vol *vol;
    int rc;
};

struct lv_many {
    struct lv_op op;            /* p, done, pending; op.rc/op.err: the first failure */
    const char *names;          /* n names, SRRS_NAME_MAX bytes apart */
    const uint8_t *uuids;       /* n random UUIDs, drawn on the control thread */
    struct lv_many_one *one;
    struct lv_tenant *t;
    uint32_t n, next, inflight;
    bool starting;
};

static void many_start(struct lv_many *m);

static void many_one_done(struct lv_wait *w, int status)
{
    struct lv_many_one *o = (struct lv_many_one *)w;
    struct lv_many *m = o->m;
    if (status) {
        o->rc = status;
        op_fail(&m->op, status, "volume %s: writing its record failed: %s", o->vol->name,
                strerror(-status));
    }
    m->inflight--;
    many_start(m);
    op_put(&m->op);
}

/* P. One volume as p_create makes it; its record's commit answers o->w. */
static void many_one(struct lv_many *m, uint32_t i)
{
    struct srrs_pool *p = m->op.p;
    struct lv_many_one *o = &m->one[i];
    const char *name = m->names + (size_t)i * SRRS_NAME_MAX;
    if (o->rc)
        return; /* refused on the control thread */
    pthread_mutex_lock(&p->lock);
    struct lv_vol *dup = vol_lookup(p, name);
    pthread_mutex_unlock(&p->lock);
    if (dup) {
        o->rc = -EEXIST;
        op_fail(&m->op, -EEXIST, "volume %s already exists in pool %s", name, p->name);
        return;
    }
    struct lv_vol *v = calloc(1, sizeof(*v));
    if (!v || lv_vol_alloc_top(v, m->op.size / p->cs)) {
        free(v);
        o->rc = -ENOMEM;
        op_fail(&m->op, -ENOMEM, "volume %s: out of memory", name);
        return;
    }
    memcpy(v->uuid, m->uuids + (size_t)i * 16, 16);
    v->pool = p;
    snprintf(v->name, sizeof(v->name), "%s", name);
    snprintf(v->tenant_name, sizeof(v->tenant_name), "%s", m->t ? m->t->name : "");
    v->tenant = m->t;
    v->size = m->op.size;
    v->nclusters = m->op.size / p->cs;
    v->thin = true;
    v->ctime = (uint64_t)time(NULL);
    struct lv_page *pg = lv_page_get(v, 0);
    if (!pg) {
        lv_vol_free(v);
        o->rc = -ENOSPC;
        op_fail(&m->op, -ENOSPC, "pool %s: no free metadata slot for volume %s (raise "
                "metadata_slots)", p->name, name);
        return;
    }
    pthread_mutex_lock(&p->lock);
    vol_link(p, v);
    pthread_mutex_unlock(&p->lock);
    if (m->t)
        m->t->nvols++;
    o->vol = v;
    o->m = m;
    o->w.fn = many_one_done;
    m->inflight++;
    m->op.pending++;
    lv_page_commit(pg, &o->w);
}

/* P. Keeps MANY_WINDOW records in commit until every volume is started. A
 * commit that fails at once answers inside lv_page_commit: `starting` keeps
 * that from recursing here. */
static void many_start(struct lv_many *m)
{
    if (m->starting)
        return;
    m->starting = true;
    while (m->inflight < MANY_WINDOW && m->next < m->n)
        many_one(m, m->next++);
    m->starting = false;
}

static void p_create_many(void *arg)
{
    struct lv_many *m = arg;
    struct srrs_pool *p = m->op.p;
    if (m->op.tenant && *m->op.tenant && !(m->t = tenant_lookup(p, m->op.tenant))) {
        op_fail(&m->op, -ENOENT, "tenant %s does not exist", m->op.tenant);
        for (uint32_t i = 0; i < m->n; i++)
            if (!m->one[i].rc)
                m->one[i].rc = -ENOENT;
        op_put(&m->op);
        return;
    }
    many_start(m);
    op_put(&m->op);
}

/* control. What a failed create leaves is taken back, as srrs_lvol_create does. */
static void many_undo(struct srrs_pool *p, struct lv_vol *v, const char *name)
{
    struct lv_op d = {.vol = v};
    vol_md_quiesce(p, v);
    if (op_run(p, &d, p_create_undo))
        lv_pool_msg(p, "volume %s: its record is on disk and could not be erased (%s): delete it "
                    "once the fragment has space", name, d.err);
}

int srrs_lvol_create_many(struct srrs_pool *p, const char *names, uint32_t n, uint64_t size,
                          const char *tenant, struct srrs_lvol_info *out, int *rcs)
{
    if (!names || !rcs || !n || n > SRRS_LVOL_MANY_MAX)
        return srrs_err(-EINVAL, "create_many: 1..%u names", SRRS_LVOL_MANY_MAX);
    if (!size || size % p->cs)
        return srrs_err(-EINVAL, "volumes: size %llu is not a positive multiple of the cluster "
                        "size %u", (unsigned long long)size, p->cs);
    int rc = check_vol_size(p, names, size);
    if (rc)
        return rc;
    if (p->degraded && (rc = lv_degraded_err(p, "creating a volume")))
        return rc;
    struct lv_many m = {.names = names, .n = n};
    m.op.size = size;
    m.op.tenant = tenant;
    m.one = calloc(n, sizeof(*m.one));
    uint8_t *uuids = malloc((size_t)n * 16);
    if (!m.one || !uuids) {
        free(m.one);
        free(uuids);
        return srrs_err(-ENOMEM, "create_many: out of memory for %u volumes", n);
    }
    for (size_t got = 0; got < (size_t)n * 16;) {
        ssize_t k = getrandom(uuids + got, (size_t)n * 16 - got, 0);
        if (k < 0 && errno != EINTR) {
            free(m.one);
            free(uuids);
            return srrs_err(-errno, "getrandom: %s", strerror(errno));
        }
        got += k > 0 ? (size_t)k : 0;
    }
    m.uuids = uuids;
    /* Refused before anything is written: a bad name, a bdev of that name. */
    char first[256] = "";
    int first_rc = 0;
    for (uint32_t i = 0; i < n; i++) {
        const char *name = names + (size_t)i * SRRS_NAME_MAX;
        size_t len = strnlen(name, SRRS_NAME_MAX);
        struct srrs_bdev *b = len && len < SRRS_NAME_MAX ? srrs_bdev_open(p->core, name) : NULL;
        if (!len || len >= SRRS_NAME_MAX)
            m.one[i].rc = srrs_err(-EINVAL, "volume name %u must be 1..%d bytes", i, SRRS_NAME_MAX - 1);
        else if (b) {
            srrs_bdev_close(&b);
            m.one[i].rc = srrs_err(-EEXIST, "volume %s: a bdev of that name already exists", name);
        }
        if (m.one[i].rc && !first_rc) {
            first_rc = m.one[i].rc;
            snprintf(first, sizeof(first), "%s", srrs_last_error());
        }
    }
    rc = op_run(p, &m.op, p_create_many);
    if (rc && !first_rc) {
        first_rc = rc;
        snprintf(first, sizeof(first), "%s", srrs_last_error());
    }
    int made = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct lv_many_one *o = &m.one[i];
        const char *name = names + (size_t)i * SRRS_NAME_MAX;
        if (o->rc && o->vol) {
            many_undo(p, o->vol, name); /* its record could not be committed */
        } else if (!o->rc && o->vol) {
            if ((o->rc = vol_register(p, o->vol))) {
                if (!first_rc) {
                    first_rc = o->rc;
                    snprintf(first, sizeof(first), "%s", srrs_last_error());
                }
                struct lv_op d = {.vol = o->vol};
                vol_md_quiesce(p, o->vol);
                op_run(p, &d, p_delete);
            } else {
                if (out)
                    vol_fill_info(p, o->vol, &out[i]);
                made++;
            }
        } else if (!o->rc) {
            o->rc = -ECANCELED; /* never started: the pool's reactor stopped */
        }
        rcs[i] = o->rc;
    }
    free(m.one);
    free(uuids);
    if (first_rc)
        return srrs_err(first_rc, "%s (%d of %u volumes created)", first, made, n);
    return made;
}

static struct lv_vol *vol_find(struct srrs_pool *p, const char *name)
{
    pthread_mutex_lock(&p->lock);
    struct lv_vol *v = name ? vol_lookup(p, name) : NULL;
    pthread_mutex_unlock(&p->lock);
    if (!v)
        srrs_err(-ENOENT, "pool %s has no volume %s", p->name, name ? name : "(null)");
    return v;
}

int srrs_lvol_delete(struct srrs_pool *p, const char *name)
{
    struct lv_vol *v = vol_find(p, name);
    if (!v)
        return -ENOENT;
    if (__atomic_load_n(&p->drain, __ATOMIC_ACQUIRE))
        return srrs_err(-EBUSY, "volume %s: pool %s is draining a fragment; delete it afterwards",
                        name, p->name);
    if (v->bdev) {
        /* By the bdev's current name: a pair may have taken the volume's name
         * for its mirror (then this one is in use and refused). */
        char bn[SRRS_NAME_MAX];
        snprintf(bn, sizeof(bn), "%s", v->bdev->name);
        int rc = srrs_bdev_delete(p->core, bn);
        if (rc)
            return rc;
    }
    vol_md_quiesce(p, v);
    struct lv_op op = {.vol = v};
    return op_run(p, &op, p_delete);
}

int srrs_lvol_resize(struct srrs_pool *p, const char *name, uint64_t size)
{
    struct lv_vol *v = vol_find(p, name);
    if (!v)
        return -ENOENT;
    if (size < v->size)
        return srrs_err(-EINVAL, "volume %s: shrinking (%llu -> %llu bytes) is not supported", name,
                        (unsigned long long)v->size, (unsigned long long)size);
    if (size % p->cs)
        return srrs_err(-EINVAL, "volume %s: size %llu is not a multiple of the cluster size %u", name,
                        (unsigned long long)size, p->cs);
    if (size == v->size)
        return 0;
    int rc0 = check_vol_size(p, name, size);
    if (rc0)
        return rc0;
    struct lv_op op = {.vol = v, .size = size};
    uint64_t old = v->size;
    int rc = op_run(p, &op, p_resize);
    if (rc && v->thin) {
        /* The record could not be committed: the volume keeps its size (a thin
         * one has no cluster past it; the bdev never grew). */
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", srrs_last_error());
        struct lv_op u = {.vol = v, .size = old};
        op_run(p, &u, p_resize_undo);
        return srrs_err(rc, "%s", msg);
    }
    if (rc)
        return rc;
    if (v->bdev) {
        /* The map is already large enough when reactors see the new size. */
        __atomic_store_n(&v->bdev->num_blocks, size / LV_BS, __ATOMIC_RELEASE);
        __atomic_store_n(&v->bdev->size, size, __ATOMIC_RELEASE);
    }
    return 0;
}

int srrs_lvol_list(struct srrs_pool *p, struct srrs_lvol_info *out, int max)
{
    int n = 0;
    pthread_mutex_lock(&p->lock);
    for (uint32_t h = 0; h < VHASH; h++)
        for (struct lv_vol *v = p->vhash[h]; v; v = v->hnext, n++)
            if (n < max)
                vol_fill_info(p, v, &out[n]);
    pthread_mutex_unlock(&p->lock);
    return n;
}

int srrs_lvol_get_info(struct srrs_pool *p, const char *name, struct srrs_lvol_info *out)
{
    struct lv_vol *v = vol_find(p, name);
    if (!v)
        return -ENOENT;
    vol_fill_info(p, v, out);
    return 0;
}

int64_t srrs_lvol_alloc_bitmap(struct srrs_pool *p, const char *name, uint8_t *out,
                               uint64_t len)
{
    struct lv_vol *v = vol_find(p, name);
    if (!v)
        return -ENOENT;
    if (!out || len < (v->nclusters + 7) / 8)
        return srrs_err(-EINVAL, "volume %s: the bitmap needs %llu bytes", name,
                        (unsigned long long)((v->nclusters + 7) / 8));
    memset(out, 0, len);
    int64_t n = 0;
    for (uint64_t c = 0; c < v->nclusters; c++) {
        if (map_get(v, c)) { /* committed or pending: its write may be in flight */
            out[c >> 3] |= (uint8_t)(1u << (c & 7));
            n++;
        }
    }
    return n;
}

int srrs_pool_tenant_set(struct srrs_pool *p, const char *name, uint64_t quota)
{
    if (!name || !*name || strlen(name) >= SRRS_NAME_MAX)
        return srrs_err(-EINVAL, "tenant name must be 1..63 bytes");
    struct lv_op op = {.name = name, .quota = quota};
    return op_run(p, &op, p_tenant_set);
}

int srrs_pool_tenant_delete(struct srrs_pool *p, const char *name)
{
    struct lv_op op = {.name = name ? name : ""};
    return op_run(p, &op, p_tenant_delete);
}

int srrs_pool_tenant_get_info(struct srrs_pool *p, const char *name, struct srrs_pool_tenant_info *out)
{
    struct lv_tenant *t = name ? tenant_lookup(p, name) : NULL;
    if (!t)
        return srrs_err(-ENOENT, "tenant %s does not exist", name ? name : "(null)");
    memset(out, 0, sizeof(*out));
    snprintf(out->name, sizeof(out->name), "%s", t->name);
    out->quota = t->quota_cl * p->cs;
    out->used_clusters = __atomic_load_n(&t->used, __ATOMIC_RELAXED);
    out->quota_failures = t->failures;
    return 0;
}

/* ---- superblocks and the metadata scan (control thread, at open) ---------- */

static int pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    uint8_t *b = buf;
    while (len) {
        ssize_t n = pread(fd, b, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0) { /* past the end of a file: zeroes */
            memset(b, 0, len);
            return 0;
        }
        b += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int lv_pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
    const uint8_t *b = buf;
    while (len) {
        ssize_t n = pwrite(fd, b, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        b += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static bool all_zero(const void *buf, size_t len)
{
    const uint8_t *b = buf;
    for (size_t i = 0; i < len; i++)
        if (b[i])
            return false;
    return true;
}

static bool crc_ok(const void *buf, size_t len, size_t crc_off)
{
    uint8_t tmp[MD_PAGE];
    memcpy(tmp, buf, len);
    uint32_t want;
    memcpy(&want, tmp + crc_off, 4);
    memset(tmp + crc_off, 0, 4);
    return srrs_crc32c(0, tmp, len) == want;
}

static bool sb_valid(const struct sb *s)
{
    return s->magic == SB_MAGIC && s->version == LV_VERSION && crc_ok(s, MD_PAGE, 4) &&
           s->cluster_size && s->frag_idx < LV_MAX_FRAGS;
}

static void sb_build(struct srrs_pool *p, uint32_t fi, uint8_t *buf)
{
    memset(buf, 0, MD_PAGE);
    struct sb *s = (struct sb *)buf;
    s->magic = SB_MAGIC;
    s->seq = p->sb_seq;
    s->version = LV_VERSION;
    s->cluster_size = p->cs;
    s->frag_idx = fi;
    s->nfrags = LV_MAX_FRAGS;
    s->placement = (uint32_t)p->placement;
    memcpy(s->pool_uuid, p->uuid, 16);
    snprintf(s->name, sizeof(s->name), "%s", p->name);
    for (int i = 0; i < LV_MAX_FRAGS; i++) {
        struct lv_frag *f = &p->frags[i];
        struct sb_frag *t = &s->frags[i];
        t->state = (uint32_t)f->state;
        if (f->state == FS_EMPTY)
            continue;
        memcpy(t->uuid, f->uuid, 16);
        t->ram = f->ram;
        t->size = f->size;
        t->nclusters = f->nclusters;
        t->data_off = f->data_off;
        t->md_slots = f->md_slots;
        t->weight = f->weight;
        snprintf(t->path, sizeof(t->path), "%s", f->path);
    }
    s->crc = srrs_crc32c(0, buf, MD_PAGE);
}

/* Control thread. Writes copy A on every persistent fragment, syncs, then copy B:
 * a crash leaves every fragment with one copy of the old or the new table. */
int lv_sb_write_all(struct srrs_pool *p)
{
    uint8_t *buf = aligned_alloc(4096, MD_PAGE);
    if (!buf)
        return srrs_err(-ENOMEM, "out of memory");
    p->sb_seq++;
    int rc = 0;
    /* Pass 0: a fragment being added gets both copies first, so a table that
     * lists it is never durable before its own superblock. Then copy A of the
     * others, then copy B. */
    for (int pass = 0; pass < 3 && !rc; pass++) {
        int copy = pass == 2 ? 1 : 0;
        for (int i = 0; i < LV_MAX_FRAGS && !rc; i++) {
            struct lv_frag *f = &p->frags[i];
            if ((f->state != FS_ACTIVE && f->state != FS_DRAINING) || f->ram || f->missing)
                continue;
            if (pass == 0 && !f->hidden)
                continue;
            if (pass == 0) {
                sb_build(p, (uint32_t)i, buf);
                int fd = open(f->path, O_RDWR | O_CLOEXEC);
                rc = fd < 0 ? -errno : lv_pwrite_full(fd, buf, MD_PAGE, MD_PAGE);
                if (!rc && fdatasync(fd))
                    rc = -errno;
                if (fd >= 0)
                    close(fd);
                if (rc) {
                    rc = srrs_err(rc, "pool %s: writing the superblock of %s: %s", p->name, f->path,
                                  strerror(-rc));
                    break;
                }
            }
            int fd = open(f->path, O_RDWR | O_CLOEXEC);
            if (fd < 0) {
                rc = srrs_err(-errno, "pool %s: cannot open fragment %s: %s", p->name, f->path,
                              strerror(errno));
                break;
            }
            sb_build(p, (uint32_t)i, buf);
            rc = lv_pwrite_full(fd, buf, MD_PAGE, (uint64_t)copy * MD_PAGE);
            if (!rc && fdatasync(fd))
                rc = -errno;
            close(fd);
            if (rc)
                rc = srrs_err(rc, "pool %s: writing the superblock of %s: %s", p->name, f->path,
                              strerror(-rc));
        }
    }
    free(buf);
    return rc;
}

enum { FR_FRESH, FR_OURS, FR_FOREIGN, FR_MISSING };

struct frag_probe {
    int kind;
    bool exists;
    struct sb a, b;
    bool a_ok, b_ok;
    const struct sb *best;
};

static int probe(const char *path, struct frag_probe *pr)
{
    memset(pr, 0, sizeof(*pr));
    struct stat st;
    if (stat(path, &st)) {
        if (errno != ENOENT)
            return srrs_err(-errno, "fragment %s: %s", path, strerror(errno));
        pr->kind = FR_MISSING;
        return 0;
    }
    pr->exists = true;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return srrs_err(-errno, "fragment %s: cannot open: %s", path, strerror(errno));
    int rc = pread_full(fd, &pr->a, MD_PAGE, 0);
    if (!rc)
        rc = pread_full(fd, &pr->b, MD_PAGE, MD_PAGE);
    close(fd);
    if (rc)
        return srrs_err(rc, "fragment %s: cannot read its superblock: %s", path, strerror(-rc));
    pr->a_ok = sb_valid(&pr->a);
    pr->b_ok = sb_valid(&pr->b);
    if (pr->a_ok || pr->b_ok) {
        pr->kind = FR_OURS;
        pr->best = !pr->b_ok || (pr->a_ok && pr->a.seq >= pr->b.seq) ? &pr->a : &pr->b;
    } else if (pr->a.magic == SB_MAGIC || pr->b.magic == SB_MAGIC) {
        pr->kind = FR_OURS; /* ours, but no copy is valid */
    } else if (all_zero(&pr->a, MD_PAGE) && all_zero(&pr->b, MD_PAGE)) {
        pr->kind = FR_FRESH;
    } else {
        pr->kind = FR_FOREIGN;
    }
    return 0;
}

/* Before anything is read or written: no bdev of any process owns the file. */
static int frag_check_free(const char *pool, const char *path)
{
    int rc = srrs_file_check_free(path);
    if (!rc)
        return 0;
    char msg[300];
    snprintf(msg, sizeof(msg), "%s", srrs_last_error());
    return srrs_err(rc, "pool %s: fragment %s", pool, msg);
}

static void uuid_str(const uint8_t *u, char *out)
{
    for (int i = 0; i < 16; i++)
        sprintf(out + 2 * i, "%02x", u[i]);
}

/* ---- RAM fragments in shared memory ------------------------------------------------ */

/* Mapping layout: [0, size) data, then this header (one page), then one
 * "lost" bit per cluster, then one per block. The header is written (sealed)
 * only once the lost bits say the truth, so a crash before that makes the
 * next open treat the memory as gone rather than trust zeroes. */
#define SHM_MAGIC 0x4d485353u /* "SSHM" */
struct shm_hdr {
    uint32_t magic;
    uint32_t version;
    uint8_t pool_uuid[16];
    uint8_t frag_uuid[16];
    uint64_t size;
};

static void shm_path(const struct srrs_pool *p, int fi, char *out, size_t len)
{
    char u[33];
    for (int i = 0; i < 16; i++)
        sprintf(u + 2 * i, "%02x", p->uuid[i]);
    /* SRRS_SHM_DIR: another tmpfs directory (tests keep theirs apart). */
    const char *dir = getenv("SRRS_SHM_DIR");
    snprintf(out, len, "%s/srrs-%s-f%d", dir && *dir ? dir : "/dev/shm", u, fi);
}

static size_t shm_bm_len(uint64_t size)
{
    return ((size / LV_BS + 63) / 64 * 8 + MD_PAGE - 1) & ~(size_t)(MD_PAGE - 1);
}

/* Maps fragment fi's memory, re-attaching what a previous process left
 * (layout: a new fragment, start empty). Sets f->fresh / f->ram_gone. */
static int shm_attach(struct srrs_pool *p, int fi, uint64_t size, bool layout)
{
    struct lv_frag *f = &p->frags[fi];
    char path[512];
    shm_path(p, fi, path, sizeof(path));
    size_t len = size + MD_PAGE + 2 * shm_bm_len(size);
    struct shm_hdr h = {0};
    int fd = layout ? -1 : open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0 && !layout && errno != ENOENT)
        return srrs_err(-errno, "RAM fragment %d: %s: %s", fi, path, strerror(errno));
    bool ours = fd >= 0 && pread(fd, &h, sizeof(h), (off_t)size) == (ssize_t)sizeof(h) &&
                h.magic == SHM_MAGIC && h.size == size && !memcmp(h.pool_uuid, p->uuid, 16) &&
                !memcmp(h.frag_uuid, f->uuid, 16);
    if (!ours) {
        if (fd >= 0)
            close(fd);
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
            return srrs_err(-errno, "RAM fragment %d: cannot create %s: %s", fi, path, strerror(errno));
    }
    /* Reserve every page now: a full tmpfs must fail here, not SIGBUS a write. */
    int rc = posix_fallocate(fd, 0, (off_t)len);
    struct stat st;
    if (!rc && fstat(fd, &st))
        rc = errno;
    void *m = rc ? MAP_FAILED
                 : mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (!rc && m == MAP_FAILED)
        rc = errno;
    close(fd);
    if (rc) {
        if (!ours)
            unlink(path);
        return srrs_err(-rc, "RAM fragment %d: cannot reserve %zu bytes in %s: %s (RAM fragments live "
                        "in shared memory to survive a crash: make room, or set SRRS_SHM_DIR to "
                        "another tmpfs)", fi, len, path, strerror(rc));
    }
    (void)madvise(m, len, MADV_HUGEPAGE); /* fewer TLB misses where tmpfs allows huge pages */
    f->shm = m;
    f->shm_len = len;
    f->lost = (uint64_t *)((uint8_t *)m + size + MD_PAGE);
    f->lost_blk = (uint64_t *)((uint8_t *)m + size + MD_PAGE + shm_bm_len(size));
    f->fresh = !ours;
    f->ram_gone = !ours && !layout;
    f->shm_dev = st.st_dev;
    f->shm_ino = st.st_ino;
    return 0;
}

/* Control thread. Its lost bits now say the truth: the memory may be trusted
 * by the next open. Bits of clusters no longer mapped are dropped. */
static void shm_seal(struct srrs_pool *p, struct lv_frag *f)
{
    uint64_t words = (f->nclusters + 63) / 64, n = 0;
    for (uint64_t w = 0; w < words; w++) {
        f->lost[w] &= f->used[w];
        n += (uint64_t)__builtin_popcountll(f->lost[w]);
    }
    f->nlost = n;
    for (uint64_t cl = 0; cl < f->nclusters; cl++)
        if (!bm_get(f->lost, cl))
            bm_clr_range_atomic(f->lost_blk, lv_blk0(f, cl), lv_blk0(f, cl) + lv_blks(f));
    struct shm_hdr *h = (void *)((uint8_t *)f->shm + f->size);
    h->magic = SHM_MAGIC;
    h->version = 1;
    memcpy(h->pool_uuid, p->uuid, 16);
    memcpy(h->frag_uuid, f->uuid, 16);
    __atomic_store_n(&h->size, f->size, __ATOMIC_RELEASE);
}

/* Unmaps fragment fi's memory (after its bdev is gone); unlink_file: the
 * fragment is removed on purpose (or was never part of the pool). */
void lv_shm_drop(struct srrs_pool *p, int fi, bool unlink_file)
{
    struct lv_frag *f = &p->frags[fi];
    if (!f->shm)
        return;
    munmap(f->shm, f->shm_len);
    f->shm = NULL;
    f->lost = f->lost_blk = NULL;
    if (unlink_file) {
        char path[512];
        shm_path(p, fi, path, sizeof(path));
        unlink(path);
    }
}

/* Opens (and on a fresh fragment lays out) fragment fi's bdev. */
static int frag_attach(struct srrs_pool *p, int fi, const struct srrs_pool_frag_spec *spec, bool layout,
                       bool md_here, uint32_t md_slots)
{
    struct lv_frag *f = &p->frags[fi];
    f->pool = p;
    snprintf(f->bdev_name, sizeof(f->bdev_name), "%.40s.f%d", p->name, fi & 0xff);
    int rc;
    bool ram = spec->path == NULL;
    if (ram && layout && md_here) {
        /* No persistent fragment: the pool itself does not outlive the process. */
        rc = srrs_bdev_create_malloc(p->core, f->bdev_name, spec->size, LV_BS);
        snprintf(f->path, sizeof(f->path), "ram");
        f->fresh = true;
    } else if (ram) {
        rc = shm_attach(p, fi, spec->size, layout);
        if (!rc)
            rc = srrs_bdev_create_mem(p->core, f->bdev_name, f->shm, spec->size, LV_BS);
        snprintf(f->path, sizeof(f->path), "ram");
    } else {
        struct stat st;
        f->fresh = stat(spec->path, &st) != 0;
        rc = srrs_bdev_create_file(p->core, f->bdev_name, spec->path, layout ? spec->size : 0, LV_BS,
                                   SRRS_FILE_GROW |
                                       (spec->engine & (SRRS_FILE_URING | SRRS_FILE_AIO | SRRS_FILE_THREADS)));
        snprintf(f->path, sizeof(f->path), "%s", spec->path);
    }
    if (rc)
        return rc;
    f->bdev = srrs_bdev_open(p->core, f->bdev_name);
    if (!f->bdev)
        return -ENOENT;
    if (!ram) {
        char label[96];
        snprintf(label, sizeof(label), "fragment %d of pool %s", fi, p->name);
        srrs_file_set_label(f->bdev_name, label);
    }
    f->ram = ram;
    if (layout) {
        f->size = f->bdev->size;
        f->weight = spec->weight ? spec->weight : 100;
        f->md_slots = 0;
        if (md_here) {
            uint64_t auto_slots = f->size / 256 / MD_SLOT; /* 1/256 of the fragment */
            f->md_slots = md_slots ? md_slots : SRRS_MAX(256, SRRS_MIN(auto_slots, 131072));
        }
        f->data_off = f->md_slots ? MD_AREA_OFF + f->md_slots * MD_SLOT : 0;
        f->data_off = (f->data_off + p->cs - 1) & ~((uint64_t)p->cs - 1);
        if (f->size <= f->data_off + p->cs)
            return srrs_err(-ENOSPC, "fragment %s: %llu bytes hold no cluster after %llu bytes of metadata",
                            f->path, (unsigned long long)f->size, (unsigned long long)f->data_off);
        f->nclusters = (f->size - f->data_off) / p->cs;
        if (getrandom(f->uuid, 16, 0) != 16)
            return srrs_err(-EIO, "getrandom failed");
    } else if (f->bdev->size < f->size) {
        return srrs_err(-EINVAL, "fragment %s: %llu bytes, the pool expects %llu", f->path,
                        (unsigned long long)f->bdev->size, (unsigned long long)f->size);
    }
    f->used = calloc((f->nclusters + 63) / 64, 8);
    f->slot_used = calloc((f->md_slots + 63) / 64 + 1, 8);
    if (!f->used || !f->slot_used)
        return srrs_err(-ENOMEM, "out of memory");
    f->state = f->state ? f->state : FS_ACTIVE;
    if (f->shm && layout)
        shm_seal(p, f);
    return 0;
}

/* One metadata page seen by the scan: the newest copy of a (volume, page) identity. */
struct scan_pg {
    struct scan_pg *next;
    uint8_t uuid[16];
    uint32_t idx;
    uint32_t frag;
    uint64_t slot;
    uint64_t seq;
    uint8_t *page;
};

struct scan {
    struct scan_pg **h;
    uint32_t nb;
    struct fixup {
        uint32_t frag;
        uint64_t slot;
        int copy;       /* -1: both copies get a FREE page */
        uint8_t *page;
    } *fix;
    size_t nfix, capfix;
};

static int scan_fix(struct scan *s, uint32_t frag, uint64_t slot, int copy, const uint8_t *page)
{
    if (s->nfix == s->capfix) {
        size_t cap = s->capfix ? s->capfix * 2 : 64;
        void *n = realloc(s->fix, cap * sizeof(*s->fix));
        if (!n)
            return -ENOMEM;
        s->fix = n;
        s->capfix = cap;
    }
    uint8_t *pg = malloc(MD_PAGE);
    if (!pg)
        return -ENOMEM;
    if (page)
        memcpy(pg, page, MD_PAGE);
    s->fix[s->nfix++] = (struct fixup){frag, slot, copy, pg};
    return 0;
}

static bool md_valid(struct srrs_pool *p, const uint8_t *pg)
{
    const struct md_hdr *h = (const struct md_hdr *)pg;
    return h->magic == MD_MAGIC && !memcmp(h->pool_uuid, p->uuid, 16) && crc_ok(pg, MD_PAGE, 4) &&
           (h->kind == PK_VOL || h->kind == PK_MAP || h->kind == PK_FREE);
}

static bool md_ours(struct srrs_pool *p, const uint8_t *pg)
{
    const struct md_hdr *h = (const struct md_hdr *)pg;
    return h->magic == MD_MAGIC || !memcmp(h->pool_uuid, p->uuid, 16);
}

static uint32_t scan_hash(const uint8_t *uuid, uint32_t idx, uint32_t nb)
{
    uint64_t x;
    memcpy(&x, uuid, 8);
    return (uint32_t)((x ^ (idx * 0x9E3779B97F4A7C15ull)) % nb);
}

static int scan_slot(struct srrs_pool *p, struct scan *s, uint32_t fi, uint64_t slot, const uint8_t *a,
                     const uint8_t *b)
{
    struct lv_frag *f = &p->frags[fi];
    bool av = md_valid(p, a), bv = md_valid(p, b);
    if (!av && !bv) {
        if (md_ours(p, a) && md_ours(p, b))
            return srrs_err(-EIO, "pool %s: fragment %s metadata slot %llu: both copies are corrupt; "
                            "refusing to open the pool", p->name, f->path, (unsigned long long)slot);
        if (!all_zero(a, MD_PAGE) && md_ours(p, a))
            lv_pool_msg(p, "fragment %s metadata slot %llu: copy A is invalid (torn first write), copy B "
                     "empty: slot treated as free", f->path, (unsigned long long)slot);
        return 0;
    }
    const struct md_hdr *ha = (const void *)a, *hb = (const void *)b;
    const uint8_t *win = !bv || (av && ha->seq >= hb->seq) ? a : b;
    const uint8_t *other = win == a ? b : a;
    bool other_valid = win == a ? bv : av;
    const struct md_hdr *hw = (const void *)win;
    if (p->seq < hw->seq)
        p->seq = hw->seq;
    if (!other_valid || memcmp(win, other, MD_PAGE)) {
        if (!other_valid && !all_zero(other, MD_PAGE))
            lv_pool_msg(p, "fragment %s metadata slot %llu: copy %c failed its checksum; opened from "
                     "copy %c (seq %llu) and rewrote it", f->path, (unsigned long long)slot,
                     other == a ? 'A' : 'B', win == a ? 'A' : 'B', (unsigned long long)hw->seq);
        if (scan_fix(s, fi, slot, other == a ? 0 : 1, win))
            return -ENOMEM;
    }
    if (hw->kind == PK_FREE)
        return 0;
    uint32_t h = scan_hash(hw->vol_uuid, hw->page_idx, s->nb);
    for (struct scan_pg *e = s->h[h]; e; e = e->next) {
        if (e->idx != hw->page_idx || memcmp(e->uuid, hw->vol_uuid, 16))
            continue;
        /* The same page in two slots (a move cut short): keep the newer, free the other. */
        if (hw->seq > e->seq) {
            if (scan_fix(s, e->frag, e->slot, -1, NULL))
                return -ENOMEM;
            e->frag = fi;
            e->slot = slot;
            e->seq = hw->seq;
            memcpy(e->page, win, MD_PAGE);
        } else if (scan_fix(s, fi, slot, -1, NULL)) {
            return -ENOMEM;
        }
        return 0;
    }
    struct scan_pg *e = calloc(1, sizeof(*e));
    if (!e || !(e->page = malloc(MD_PAGE))) {
        free(e);
        return -ENOMEM;
    }
    memcpy(e->uuid, hw->vol_uuid, 16);
    e->idx = hw->page_idx;
    e->frag = fi;
    e->slot = slot;
    e->seq = hw->seq;
    memcpy(e->page, win, MD_PAGE);
    e->next = s->h[h];
    s->h[h] = e;
    return 0;
}

static int scan_frag(struct srrs_pool *p, struct scan *s, uint32_t fi)
{
    struct lv_frag *f = &p->frags[fi];
    if (!f->md_slots)
        return 0;
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return srrs_err(-errno, "fragment %s: %s", f->path, strerror(errno));
    const uint64_t per = 512; /* slots per read: 4 MiB */
    uint8_t *buf = malloc(per * MD_SLOT);
    int rc = buf ? 0 : -ENOMEM;
    for (uint64_t s0 = 0; !rc && s0 < f->md_slots; s0 += per) {
        uint64_t n = SRRS_MIN(per, f->md_slots - s0);
        rc = pread_full(fd, buf, n * MD_SLOT, MD_AREA_OFF + s0 * MD_SLOT);
        if (rc) {
            rc = srrs_err(rc, "fragment %s: reading metadata: %s", f->path, strerror(-rc));
            break;
        }
        for (uint64_t i = 0; i < n && !rc; i++) {
            const uint8_t *a = buf + i * MD_SLOT;
            if (all_zero(a, 64) && all_zero(a + MD_PAGE, 64) && all_zero(a, MD_SLOT))
                continue;
            rc = scan_slot(p, s, fi, s0 + i, a, a + MD_PAGE);
        }
    }
    free(buf);
    close(fd);
    return rc;
}

static int scan_apply_fixups(struct srrs_pool *p, struct scan *s)
{
    uint8_t *buf = aligned_alloc(4096, MD_PAGE);
    if (!buf)
        return -ENOMEM;
    int rc = 0;
    for (size_t i = 0; i < s->nfix && !rc; i++) {
        struct fixup *x = &s->fix[i];
        struct lv_frag *f = &p->frags[x->frag];
        int fd = open(f->path, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
            rc = srrs_err(-errno, "fragment %s: %s", f->path, strerror(errno));
            break;
        }
        if (x->copy < 0) {
            memset(buf, 0, MD_PAGE);
            struct md_hdr *h = (struct md_hdr *)buf;
            h->magic = MD_MAGIC;
            h->seq = ++p->seq;
            h->kind = PK_FREE;
            h->version = LV_VERSION;
            memcpy(h->pool_uuid, p->uuid, 16);
            h->crc = srrs_crc32c(0, buf, MD_PAGE);
            rc = lv_pwrite_full(fd, buf, MD_PAGE, lv_slot_offset(f, x->slot, 0));
            if (!rc && fdatasync(fd))
                rc = -errno;
            if (!rc)
                rc = lv_pwrite_full(fd, buf, MD_PAGE, lv_slot_offset(f, x->slot, 1));
        } else {
            rc = lv_pwrite_full(fd, x->page, MD_PAGE, lv_slot_offset(f, x->slot, x->copy));
        }
        if (!rc && fdatasync(fd))
            rc = -errno;
        close(fd);
        if (rc)
            rc = srrs_err(rc, "fragment %s: repairing metadata: %s", f->path, strerror(-rc));
        p->repaired++;
    }
    free(buf);
    return rc;
}

static void scan_free(struct scan *s)
{
    for (uint32_t i = 0; s->h && i < s->nb; i++) {
        struct scan_pg *e = s->h[i];
        while (e) {
            struct scan_pg *n = e->next;
            free(e->page);
            free(e);
            e = n;
        }
    }
    free(s->h);
    for (size_t i = 0; i < s->nfix; i++)
        free(s->fix[i].page);
    free(s->fix);
}

static struct scan_pg *scan_find(struct scan *s, const uint8_t *uuid, uint32_t idx)
{
    for (struct scan_pg *e = s->h[scan_hash(uuid, idx, s->nb)]; e; e = e->next)
        if (e->idx == idx && !memcmp(e->uuid, uuid, 16))
            return e;
    return NULL;
}

/* Loads entries of one page into the volume's map, checking every one. */
static int load_entries(struct srrs_pool *p, struct lv_vol *v, struct scan_pg *e)
{
    uint32_t k = e->idx;
    if (k >= v->nchunks)
        return 0; /* beyond the volume (cannot happen: volumes only grow) */
    struct lv_page *pg = calloc(1, sizeof(*pg));
    if (!pg)
        return -ENOMEM;
    pg->pool = p;
    pg->vol = v;
    pg->idx = k;
    pg->frag = e->frag;
    pg->slot = e->slot;
    v->pages[k] = pg;
    struct lv_frag *sf = &p->frags[e->frag];
    bm_set(sf->slot_used, e->slot);
    sf->slots_used++;
    const uint64_t *ent = (const uint64_t *)(e->page + MD_ENTRY_OFF);
    uint64_t *chunk = NULL;
    for (uint32_t i = 0; i < MD_ENTRIES; i++) {
        uint64_t x = ent[i];
        if (!x)
            continue;
        uint64_t c = (uint64_t)k * MD_ENTRIES + i;
        uint32_t fi = e_frag(x);
        struct lv_frag *f = fi < LV_MAX_FRAGS ? &p->frags[fi] : NULL;
        if (!e_alloc(x) || (x & ~E_LOC_MASK) || !f ||
            (f->state != FS_ACTIVE && f->state != FS_DRAINING) || e_cl(x) >= f->nclusters ||
            c >= v->nclusters)
            return srrs_err(-EIO, "pool %s: volume %s cluster %llu maps outside the pool (entry %llx); "
                            "refusing to open", p->name, v->name, (unsigned long long)c,
                            (unsigned long long)x);
        if (f->ram && !f->shm) {
            v->lost++;
            continue;
        }
        if (f->ram_gone && !bm_get(f->lost, e_cl(x))) {
            bm_set(f->lost, e_cl(x));
            for (uint64_t b = lv_blk0(f, e_cl(x)); b < lv_blk0(f, e_cl(x)) + lv_blks(f); b++)
                bm_set(f->lost_blk, b);
            f->nlost++;
        }
        if (f->lost && bm_get(f->lost, e_cl(x)))
            v->lost++; /* mapped still: reads fail until it is rewritten */
        if (!chunk && !(chunk = lv_map_chunk(v, c)))
            return -ENOMEM;
        if (f->missing) { /* mapped, unreachable: its I/O fails until the fragment is back */
            chunk[i] = x;
            v->allocated++;
            continue;
        }
        if (bm_get(f->used, e_cl(x)))
            return srrs_err(-EIO, "pool %s: cluster %llu of fragment %s is mapped twice (volume %s); "
                            "refusing to open", p->name, (unsigned long long)e_cl(x), f->path, v->name);
        bm_set(f->used, e_cl(x));
        f->nused++;
        chunk[i] = x;
        v->allocated++;
    }
    return 0;
}

/* A map page not found while a fragment holding metadata is missing may
 * have been there: its clusters are unknown, not unallocated. */
static int mark_gone(struct srrs_pool *p, struct lv_vol *v, uint32_t k)
{
    bool md_missing = false;
    for (int i = 0; i < LV_MAX_FRAGS; i++)
        md_missing |= p->frags[i].missing && p->frags[i].md_slots;
    if (!md_missing)
        return 0;
    uint64_t *chunk = lv_map_chunk(v, (uint64_t)k * MD_ENTRIES);
    if (!chunk)
        return -ENOMEM;
    for (uint32_t i = 0; i < MD_ENTRIES; i++)
        chunk[i] = E_GONE;
    return 0;
}

static int build_volumes(struct srrs_pool *p, struct scan *s)
{
    for (uint32_t b = 0; b < s->nb; b++) {
        for (struct scan_pg *e = s->h[b]; e; e = e->next) {
            if (e->idx != 0)
                continue;
            const struct md_vol *mv = (const void *)(e->page + sizeof(struct md_hdr));
            struct lv_vol *v = calloc(1, sizeof(*v));
            if (!v)
                return -ENOMEM;
            v->pool = p;
            memcpy(v->uuid, e->uuid, 16);
            snprintf(v->name, sizeof(v->name), "%.*s", (int)sizeof(mv->name) - 1, mv->name);
            snprintf(v->tenant_name, sizeof(v->tenant_name), "%.*s", (int)sizeof(mv->tenant) - 1,
                     mv->tenant);
            v->size = mv->size;
            v->nclusters = mv->size / p->cs;
            v->thin = mv->thin;
            v->ctime = mv->ctime;
            if (!v->size || v->size % p->cs || lv_vol_alloc_top(v, v->nclusters)) {
                free(v);
                return srrs_err(-EIO, "pool %s: volume record %s is inconsistent", p->name, mv->name);
            }
            if (vol_lookup(p, v->name)) {
                lv_vol_free(v);
                return srrs_err(-EIO, "pool %s: two volumes are named %s", p->name, mv->name);
            }
            vol_link(p, v);
            uint32_t nch = v->nchunks;
            for (uint32_t k = 0; k < nch; k++) {
                struct scan_pg *pe = k ? scan_find(s, v->uuid, k) : e;
                int rc = pe ? load_entries(p, v, pe) : mark_gone(p, v, k);
                if (rc)
                    return rc;
            }
            if (v->tenant_name[0]) {
                struct lv_tenant *t = tenant_lookup(p, v->tenant_name);
                if (!t) {
                    t = calloc(1, sizeof(*t));
                    if (!t)
                        return -ENOMEM;
                    snprintf(t->name, sizeof(t->name), "%s", v->tenant_name);
                    t->next = p->tenants;
                    p->tenants = t;
                }
                v->tenant = t;
                t->used += v->allocated;
                t->nvols++;
            }
            if (v->lost)
                lv_pool_msg(p, "volume %s: %llu cluster(s) lived on a RAM fragment whose memory is "
                            "gone (host restart): reads of them fail with a media error until "
                            "rewritten", v->name, (unsigned long long)v->lost);
        }
    }
    return 0;
}

/* ---- open / close ------------------------------------------------------------------ */

/* The pools open in this process: a pool is opened once, whatever path
 * (symlink, hard link, another device node) reaches its fragments. */
static pthread_mutex_t open_pools_lock = PTHREAD_MUTEX_INITIALIZER;
static struct srrs_pool *open_pools;

static void pool_register(struct srrs_pool *p)
{
    pthread_mutex_lock(&open_pools_lock);
    p->onext = open_pools;
    open_pools = p;
    p->registered = true;
    pthread_mutex_unlock(&open_pools_lock);
}

static void pool_unregister(struct srrs_pool *p)
{
    pthread_mutex_lock(&open_pools_lock);
    struct srrs_pool **pp = &open_pools;
    while (*pp && *pp != p)
        pp = &(*pp)->onext;
    if (*pp)
        *pp = p->onext;
    p->registered = false;
    pthread_mutex_unlock(&open_pools_lock);
}

/* -EBUSY naming the open pool whose uuid this is. */
static int pool_uuid_check(const char *name, const char *path, const uint8_t *uuid)
{
    char owner[SRRS_NAME_MAX] = "";
    pthread_mutex_lock(&open_pools_lock);
    for (struct srrs_pool *q = open_pools; q && !owner[0]; q = q->onext)
        if (!memcmp(q->uuid, uuid, 16))
            snprintf(owner, sizeof(owner), "%s", q->name);
    pthread_mutex_unlock(&open_pools_lock);
    if (!owner[0])
        return 0;
    return srrs_err(-EBUSY, "pool %s: fragment %s belongs to pool %s, which is already open in this "
                    "controller", name, path, owner);
}

void lv_drain_stop_msg(void *arg);

struct maint_stop {
    struct srrs_pool *p;
    bool busy;
};

static void md_idle_msg(void *arg)
{
    struct maint_stop *ms = arg;
    ms->busy = ms->p->md_inflight != 0;
}

/* Stops the maintenance poller once no barrier is pending (their waiters and
 * the reactors' acks point at the pool). */
static void maint_stop_msg(void *arg)
{
    struct maint_stop *ms = arg;
    struct srrs_pool *p = ms->p;
    ms->busy = p->bar_running || p->bar_next;
    if (!ms->busy)
        srrs_poller_unregister(&p->maint_poller);
}

/* ---- fragment health ---------------------------------------------------------------- */

#define HEALTH_TICK_US 100000u /* the poller's period */
#define HEALTH_EVERY 3u        /* ticks between checks when no I/O failed */

/* P. A fragment whose file shrank, was deleted or replaced: its bdev already
 * fails every I/O with -EIO (a media error to the host); no new cluster goes
 * there, and the pool reports it as degraded. */
static void frag_failed(struct srrs_pool *p, int fi, const char *why)
{
    struct lv_frag *f = &p->frags[fi];
    snprintf(f->why, sizeof(f->why), "%s", why);
    __atomic_store_n(&f->failed, 1, __ATOMIC_RELEASE);
    p->nfailed++;
    lv_pool_msg(p, "fragment %d (%s) failed: %s; I/O to its clusters fails with a media error",
                fi, f->path, why);
    srrs_event_post(p->core, SRRS_EV_FRAG_FAILED, (uint64_t)fi, 0, p->name,
                    "pool %s degraded: fragment %d (%s) failed: %s", p->name, fi, f->path, why);
}

/* P. A RAM fragment's shared memory file removed under us: the data still
 * serves, but a crash or stop now loses it; say so while it can be saved. */
static void shm_health(struct srrs_pool *p, int fi)
{
    struct lv_frag *f = &p->frags[fi];
    char path[512];
    struct stat st;
    shm_path(p, fi, path, sizeof(path));
    if (!stat(path, &st) && st.st_dev == f->shm_dev && st.st_ino == f->shm_ino)
        return;
    snprintf(f->why, sizeof(f->why), "shared memory file %.80s removed: data lost when this "
             "process stops", path);
    __atomic_store_n(&f->shm_unlinked, true, __ATOMIC_RELEASE);
    lv_pool_msg(p, "RAM fragment %d: %s", fi, f->why);
    srrs_event_post(p->core, SRRS_EV_FRAG_FAILED, (uint64_t)fi, 0, p->name, "pool %s degraded: RAM "
                    "fragment %d: %s", p->name, fi, f->why);
}

/* Any thread. A watch on each live fragment's file (a RAM fragment's shared
 * memory file): unlinking, renaming or replacing it (IN_ATTRIB on the link
 * count, IN_MOVE_SELF, IN_DELETE_SELF) fires the health poller's fd at once,
 * so an idle pool needs no timer to notice before the next write is
 * acknowledged. Truncation raises only IN_MODIFY, which every write of ours
 * raises too: the periodic check, which runs while I/O flows, finds it.
 * Adding a watch the inode already has is a no-op. */
static void health_watch(struct srrs_pool *p)
{
    for (int i = 0; p->health_ifd >= 0 && i < LV_MAX_FRAGS; i++) {
        struct lv_frag *f = &p->frags[i];
        int st = __atomic_load_n(&f->state, __ATOMIC_ACQUIRE);
        if ((st != FS_ACTIVE && st != FS_DRAINING) || f->failed || !f->bdev)
            continue;
        char path[512];
        if (f->ram && (!f->shm || f->shm_unlinked))
            continue;
        if (f->ram)
            shm_path(p, i, path, sizeof(path));
        else
            snprintf(path, sizeof(path), "%s", f->path);
        inotify_add_watch(p->health_ifd, path, IN_ATTRIB | IN_MOVE_SELF | IN_DELETE_SELF);
    }
}

/* P. Empties the inotify fd (level-triggered in the reactor's epoll set);
 * true if a watched file changed. */
static bool health_notified(struct srrs_pool *p)
{
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    bool any = false;
    while (p->health_ifd >= 0 && read(p->health_ifd, buf, sizeof(buf)) > 0)
        any = true;
    return any;
}

static int health_poll(void *arg)
{
    struct srrs_pool *p = arg;
    bool due = __atomic_exchange_n(&p->health_due, 0, __ATOMIC_RELAXED);
    due |= health_notified(p);
    /* I/O owes a check after it: from a tick that saw the fragments' I/O
     * count move until a check runs at a tick that saw it still, the tick
     * bounds the reactor's sleep; then it rests (lazy: an idle pool wakes for
     * its inotify fd alone; docs/architecture.md, Poll modes and adaptive
     * sleep). */
    uint64_t ios = 0;
    for (int i = 0; i < LV_MAX_FRAGS; i++) {
        struct lv_frag *f = &p->frags[i];
        int st = __atomic_load_n(&f->state, __ATOMIC_ACQUIRE);
        if ((st == FS_ACTIVE || st == FS_DRAINING) && f->bdev)
            ios += srrs_bdev_ios(f->bdev);
    }
    bool moved = ios != p->health_ios;
    p->health_ios = ios;
    p->health_owed |= moved;
    if (!due && ++p->health_ticks % HEALTH_EVERY) {
        srrs_poller_set_lazy(p->health_poller, !p->health_owed);
        return 0;
    }
    p->health_owed = moved; /* I/O still flowing owes one more after it */
    srrs_poller_set_lazy(p->health_poller, !p->health_owed);
    health_watch(p);
    for (int i = 0; i < LV_MAX_FRAGS; i++) {
        struct lv_frag *f = &p->frags[i];
        int st = __atomic_load_n(&f->state, __ATOMIC_ACQUIRE);
        if ((st != FS_ACTIVE && st != FS_DRAINING) || f->failed || !f->bdev ||
            __atomic_load_n(&f->hidden, __ATOMIC_ACQUIRE))
            continue;
        if (f->ram) {
            if (f->shm && !f->shm_unlinked)
                shm_health(p, i);
            continue;
        }
        char why[160];
        if (srrs_bdev_file_check(f->bdev, why, sizeof(why)))
            frag_failed(p, i, why);
    }
    return 0;
}

static void health_start_msg(void *arg)
{
    struct srrs_pool *p = arg;
    if (p->health_poller)
        return;
    p->health_poller = srrs_poller_register(p->pr, health_poll, p, HEALTH_TICK_US);
    /* Idle, the reactor sleeps on the inotify fd, not on the tick (without
     * inotify the tick alone remains, as before). fd_wakes, not fd_only: the
     * fd never reports a truncation, so the tick still runs while the reactor
     * is awake however often it sleeps between I/Os (health_watch). */
    if (p->health_poller && p->health_ifd >= 0 &&
        !srrs_poller_set_fd(p->health_poller, p->health_ifd, EPOLLIN, false))
        srrs_poller_set_fd_wakes(p->health_poller);
    health_watch(p);
}

static void health_stop_msg(void *arg)
{
    struct srrs_pool *p = arg;
    srrs_poller_unregister(&p->health_poller);
}

static void health_start(struct srrs_pool *p)
{
    p->health_ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    srrs_reactor_call(p->pr, health_start_msg, p);
}

static void pool_free(struct srrs_pool *p)
{
    if (p->health_poller)
        srrs_reactor_call(p->pr, health_stop_msg, p);
    if (p->health_ifd >= 0)
        close(p->health_ifd);
    if (p->registered)
        pool_unregister(p);
    /* A page commit may still be in flight (the retry after a failed one):
     * it points at the pages. Its end may request a barrier: waited below. */
    for (int tries = 0; tries < 5000 && !srrs_reactor_is_stopping(p->pr); tries++) {
        struct maint_stop ms = {.p = p};
        srrs_reactor_call(p->pr, md_idle_msg, &ms);
        if (!ms.busy)
            break;
        usleep(1000);
    }
    for (int tries = 0; p->maint_poller && tries < 5000; tries++) {
        struct maint_stop ms = {.p = p};
        srrs_reactor_call(p->pr, maint_stop_msg, &ms);
        if (ms.busy)
            usleep(1000);
    }
    for (uint32_t h = 0; h < VHASH; h++) {
        struct lv_vol *v = p->vhash[h];
        while (v) {
            struct lv_vol *n = v->hnext;
            if (v->bdev) {
                v->bdev->ctx = v; /* srrs_bdev_delete -> lv_destroy */
                char bn[SRRS_NAME_MAX]; /* its current name (a pair may hold the volume's) */
                snprintf(bn, sizeof(bn), "%s", v->bdev->name);
                srrs_bdev_delete(p->core, bn);
            }
            lv_vol_free(v);
            v = n;
        }
        p->vhash[h] = NULL;
    }
    for (int i = 0; i < LV_MAX_FRAGS; i++) {
        struct lv_frag *f = &p->frags[i];
        if (f->bdev) {
            srrs_bdev_close(&f->bdev);
            srrs_bdev_delete(p->core, f->bdev_name);
        }
        lv_shm_drop(p, i, false);
        free(f->used);
        free(f->slot_used);
    }
    while (p->tenants) {
        struct lv_tenant *t = p->tenants;
        p->tenants = t->next;
        free(t);
    }
    pthread_mutex_destroy(&p->lock);
    free(p->rs);
    free(p);
}

/* An existing file or device: clear the metadata area so no old page (of
 * another pool, or of this one before the fragment was removed) is read. */
static int md_area_clear(struct lv_frag *f)
{
    if (f->ram || f->fresh)
        return 0;
    int fd = open(f->path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return srrs_err(-errno, "fragment %s: %s", f->path, strerror(errno));
    int rc = 0;
    for (uint64_t off = 0; off < f->data_off && !rc; off += SRRS_BUF_MAX)
        rc = lv_pwrite_full(fd, srrs_zero_buf, SRRS_MIN(SRRS_BUF_MAX, f->data_off - off), off);
    if (!rc && fdatasync(fd))
        rc = -errno;
    close(fd);
    if (rc)
        return srrs_err(rc, "fragment %s: clearing metadata: %s", f->path, strerror(-rc));
    return 0;
}

static int pool_create_new(struct srrs_pool *p, const struct srrs_pool_opts *o,
                           const struct srrs_pool_frag_spec *frags, int nfrags, bool any_persistent)
{
    if (getrandom(p->uuid, 16, 0) != 16)
        return srrs_err(-EIO, "getrandom failed");
    p->created = 1; /* from here a failure removes the files this open made */
    for (int i = 0; i < nfrags; i++) {
        bool md_here = frags[i].path ? true : !any_persistent;
        int rc = frag_attach(p, i, &frags[i], true, md_here, o->md_slots);
        if (rc)
            return rc;
        rc = md_area_clear(&p->frags[i]);
        if (rc)
            return rc;
    }
    return lv_sb_write_all(p);
}

/* Not in the config but in the pool's table: a fragment added online. It is
 * opened from the path the table records; if that is gone or is not this
 * fragment, the pool opens degraded without it (I/O to its clusters fails,
 * no allocation) rather than refusing to start. */
static int frag_from_table(struct srrs_pool *p, const struct sb *best, int fi, bool *rewrite)
{
    const struct sb_frag *t = &best->frags[fi];
    struct lv_frag *f = &p->frags[fi];
    char path[sizeof(t->path) + 1];
    snprintf(path, sizeof(path), "%.*s", (int)sizeof(t->path), t->path);
    int rc = frag_check_free(p->name, path);
    if (rc)
        return rc; /* another owner: a conflict to resolve, not a missing fragment */
    struct frag_probe pr;
    char why[300] = "";
    if ((rc = probe(path, &pr)))
        snprintf(why, sizeof(why), "%s", srrs_last_error());
    else if (pr.kind == FR_MISSING)
        snprintf(why, sizeof(why), "it does not exist");
    else if (pr.kind != FR_OURS || !pr.best || memcmp(pr.best->pool_uuid, p->uuid, 16) ||
             pr.best->frag_idx != (uint32_t)fi || memcmp(pr.best->frags[fi].uuid, t->uuid, 16))
        snprintf(why, sizeof(why), "it is not that fragment any more");
    f->state = (int)t->state;
    f->size = t->size;
    f->nclusters = t->nclusters;
    f->data_off = t->data_off;
    f->md_slots = t->md_slots;
    f->weight = t->weight;
    memcpy(f->uuid, t->uuid, 16);
    if (!why[0]) {
        struct srrs_pool_frag_spec spec = {.path = path};
        rc = frag_attach(p, fi, &spec, false, false, 0);
        if (!rc) {
            f->fresh = false;
            if (pr.best->seq != best->seq || pr.a.seq != pr.b.seq)
                *rewrite = true;
            lv_pool_msg(p, "fragment %d (%s) is not in the configuration: opened from the pool's table",
                        fi, path);
            return 0;
        }
        snprintf(why, sizeof(why), "%s", srrs_last_error());
        if (f->bdev) {
            srrs_bdev_close(&f->bdev);
            srrs_bdev_delete(p->core, f->bdev_name);
        }
        free(f->used);
        free(f->slot_used);
    }
    f->pool = p;
    f->missing = true;
    f->bdev = NULL;
    f->fresh = false;
    snprintf(f->path, sizeof(f->path), "%s", path);
    f->used = calloc((f->nclusters + 63) / 64 + 1, 8);
    f->slot_used = calloc((f->md_slots + 63) / 64 + 1, 8);
    if (!f->used || !f->slot_used)
        return srrs_err(-ENOMEM, "out of memory");
    p->degraded = true;
    snprintf(f->why, sizeof(f->why), "%.150s", why); /* the pool's alert says why */
    lv_pool_msg(p, "fragment %d (%s) of pool %s is missing: %s; the pool is degraded: I/O to the "
                "clusters it held fails and nothing is allocated until it is back", fi, path, p->name,
                why);
    srrs_event_post(p->core, SRRS_EV_FRAG_FAILED, (uint64_t)fi, 0, p->name,
                    "pool %s is degraded: fragment %d (%s) is missing: %s", p->name, fi, path, why);
    return 0;
}

int lv_degraded_err(struct srrs_pool *p, const char *what)
{
    for (int i = 0; i < LV_MAX_FRAGS; i++)
        if (p->frags[i].missing)
            return srrs_err(-EIO, "pool %s is degraded (fragment %d, %s, is missing): %s refused until "
                            "it is back", p->name, i, p->frags[i].path, what);
    return 0;
}

/* The newest superblock among the fragments that carry ours (each must be
 * readable and name this pool). */
static int best_superblock(struct srrs_pool *p, const struct srrs_pool_frag_spec *frags, int nfrags,
                           const struct frag_probe *pr, const struct sb **out)
{
    const struct sb *best = NULL;
    for (int i = 0; i < nfrags; i++) {
        if (!frags[i].path || pr[i].kind != FR_OURS)
            continue;
        if (!pr[i].best)
            return srrs_err(-EIO, "fragment %s: both superblock copies are corrupt; refusing to open "
                            "the pool", frags[i].path);
        int rc = pool_uuid_check(p->name, frags[i].path, pr[i].best->pool_uuid);
        if (rc)
            return rc;
        if (!best || pr[i].best->seq > best->seq)
            best = pr[i].best;
    }
    *out = best;
    return 0;
}

/* A fragment the table says was removed (a crash came before its superblock
 * was cleared): clear it so it is added back as a fresh one. */
static int frag_clear_removed(struct srrs_pool *p, const char *path, const char *pool)
{
    lv_pool_msg(p, "fragment %s had been removed from pool %s; adding it back as new", path, pool);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    int rc = fd < 0 ? -errno : lv_pwrite_full(fd, srrs_zero_buf, 2 * MD_PAGE, 0);
    if (!rc && fdatasync(fd))
        rc = -errno;
    if (fd >= 0)
        close(fd);
    if (rc)
        return srrs_err(rc, "fragment %s: clearing its superblock: %s", path, strerror(-rc));
    return 0;
}

/* A fragment's geometry from its superblock table entry t. */
static void frag_from_sb(struct lv_frag *f, const struct sb_frag *t, uint32_t md_slots)
{
    f->state = (int)t->state;
    f->size = t->size;
    f->nclusters = t->nclusters;
    f->data_off = t->data_off;
    f->md_slots = md_slots;
    f->weight = t->weight;
    memcpy(f->uuid, t->uuid, 16);
}

/* One configured file that carries our superblock: attach it as the table's
 * fragment. 1: attached; 0: it had been removed and is now fresh (added
 * below); < 0: error. *rewrite: its superblock copies need rewriting. */
static int open_own_frag(struct srrs_pool *p, const struct sb *best,
                         const struct srrs_pool_frag_spec *spec, struct frag_probe *pr,
                         bool *rewrite)
{
    const struct sb *own = pr->best;
    if (memcmp(own->pool_uuid, p->uuid, 16)) {
        char us[33], them[33];
        uuid_str(p->uuid, us);
        uuid_str(own->pool_uuid, them);
        return srrs_err(-EINVAL, "fragment %s belongs to another pool (%s, uuid %s), not to %s (uuid %s)",
                        spec->path, own->name, them, best->name, us);
    }
    const struct sb_frag *t = &best->frags[own->frag_idx];
    if ((t->state != FS_ACTIVE && t->state != FS_DRAINING) ||
        memcmp(t->uuid, own->frags[own->frag_idx].uuid, 16)) {
        /* not part of the pool; the configuration lists it, so it comes back fresh */
        int rc = frag_clear_removed(p, spec->path, best->name);
        if (rc)
            return rc;
        pr->kind = FR_FRESH;
        return 0;
    }
    if (!pr->a_ok || !pr->b_ok) {
        lv_pool_msg(p, "fragment %s: superblock copy %c is invalid; opened from copy %c and rewrote it",
                    spec->path, pr->a_ok ? 'B' : 'A', pr->a_ok ? 'A' : 'B');
        *rewrite = true;
    }
    if (own->seq != best->seq || pr->a.seq != pr->b.seq)
        *rewrite = true;
    if (p->frags[own->frag_idx].state)
        return srrs_err(-EINVAL, "fragment %s is listed twice", spec->path);
    struct lv_frag *f = &p->frags[own->frag_idx];
    frag_from_sb(f, t, t->md_slots);
    int rc = frag_attach(p, own->frag_idx, spec, false, false, 0);
    if (rc)
        return rc;
    f->fresh = false;
    return 1;
}

/* The table's fragments no configured file carried: file fragments come back
 * from the table (missing ones degrade the pool), RAM fragments come back
 * empty from the configuration's RAM entries, in table order. */
static int open_table_frags(struct srrs_pool *p, const struct sb *best,
                            const struct srrs_pool_frag_spec *frags, int nfrags, bool *used_spec,
                            bool *rewrite)
{
    int next_ram = 0;
    for (int fi = 0; fi < LV_MAX_FRAGS; fi++) {
        const struct sb_frag *t = &best->frags[fi];
        if (t->state != FS_ACTIVE && t->state != FS_DRAINING)
            continue;
        if (!t->ram) {
            int rc = p->frags[fi].state ? 0 : frag_from_table(p, best, fi, rewrite);
            if (rc)
                return rc;
            /* The config may name the missing fragment too (a saved config
             * lists them all): that entry is this fragment, not one to add. */
            for (int i = 0; i < nfrags && p->frags[fi].missing; i++)
                if (frags[i].path && !used_spec[i] && !strcmp(frags[i].path, p->frags[fi].path))
                    used_spec[i] = true;
            continue;
        }
        while (next_ram < nfrags && frags[next_ram].path)
            next_ram++;
        if (next_ram >= nfrags)
            return srrs_err(-ENOENT, "pool %s: its RAM fragment %d (%llu bytes) is missing from the "
                            "configuration", best->name, fi, (unsigned long long)t->size);
        frag_from_sb(&p->frags[fi], t, 0);
        struct srrs_pool_frag_spec rs = frags[next_ram];
        rs.size = t->size;
        int rc = frag_attach(p, fi, &rs, false, false, 0);
        if (rc)
            return rc;
        used_spec[next_ram++] = true;
    }
    return 0;
}

/* Every fragment attached: read the metadata into volumes, report RAM
 * clusters lost to a host restart, apply the scan's fixups. */
static int pool_scan_all(struct srrs_pool *p)
{
    struct scan s = {.nb = 65536};
    s.h = calloc(s.nb, sizeof(*s.h));
    if (!s.h)
        return -ENOMEM;
    int rc = 0;
    for (int fi = 0; fi < LV_MAX_FRAGS && !rc; fi++)
        if (p->frags[fi].state && !p->frags[fi].ram && !p->frags[fi].missing)
            rc = scan_frag(p, &s, (uint32_t)fi);
    if (!rc)
        rc = build_volumes(p, &s);
    for (int fi = 0; fi < LV_MAX_FRAGS && !rc; fi++) {
        struct lv_frag *f = &p->frags[fi];
        if (!f->shm)
            continue;
        shm_seal(p, f);
        if (f->nlost)
            srrs_event_post(p->core, SRRS_EV_RAM_LOST, (uint64_t)fi, f->nlost, p->name,
                            "pool %s: RAM fragment %d was gone at start (host restart): %llu cluster(s) "
                            "lost; reads of them fail until rewritten", p->name, fi,
                            (unsigned long long)f->nlost);
    }
    if (!rc)
        rc = scan_apply_fixups(p, &s);
    scan_free(&s);
#ifdef __GLIBC__
    /* The scan held a copy of every page (400 MiB at 100,000 volumes), freed
     * now between the volumes' allocations: give those pages back to the
     * system rather than keep them resident for the controller's lifetime. */
    malloc_trim(0);
#endif
    return rc;
}

static int pool_open_existing(struct srrs_pool *p, const struct srrs_pool_frag_spec *frags, int nfrags,
                              struct frag_probe *pr, bool *used_spec)
{
    const struct sb *best = NULL;
    int rc = best_superblock(p, frags, nfrags, pr, &best);
    if (rc)
        return rc;
    memcpy(p->uuid, best->pool_uuid, 16);
    p->cs = best->cluster_size;
    p->cs_shift = (uint32_t)__builtin_ctz(p->cs);
    p->placement = (int)best->placement;
    p->sb_seq = best->seq;
    bool rewrite = false;
    for (int i = 0; i < nfrags; i++) {
        if (!frags[i].path || pr[i].kind != FR_OURS)
            continue;
        rc = open_own_frag(p, best, &frags[i], &pr[i], &rewrite);
        if (rc < 0)
            return rc;
        if (rc == 1)
            used_spec[i] = true;
    }
    rc = open_table_frags(p, best, frags, nfrags, used_spec, &rewrite);
    if (!rc)
        rc = pool_scan_all(p);
    if (!rc && rewrite)
        rc = lv_sb_write_all(p);
    return rc;
}

/* A pool object for name with its options checked, nothing opened yet. */
static int pool_alloc(struct srrs_core *core, const char *name, const struct srrs_pool_opts *o,
                      int nfrags, struct srrs_pool **out)
{
    if (!name || !*name || strlen(name) > 40)
        return srrs_err(-EINVAL, "pool name must be 1..40 bytes");
    if (nfrags < 1 || nfrags > LV_MAX_FRAGS)
        return srrs_err(-EINVAL, "pool %s: 1..%d fragments, got %d", name, LV_MAX_FRAGS, nfrags);
    uint32_t cs = o && o->cluster_size ? o->cluster_size : 1u << 20;
    if (cs & (cs - 1) || cs < 65536 || cs > (64u << 20))
        return srrs_err(-EINVAL, "pool %s: cluster_size must be a power of two in 64KiB..64MiB", name);
    struct srrs_reactor *pr = srrs_core_reactor(core, o ? o->reactor : 0);
    if (!pr)
        return srrs_err(-EINVAL, "pool %s: no reactor %d", name, o ? o->reactor : 0);
    struct srrs_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return srrs_err(-ENOMEM, "out of memory");
    pthread_mutex_init(&p->lock, NULL);
    p->core = core;
    p->pr = pr;
    p->health_ifd = -1;
    snprintf(p->name, sizeof(p->name), "%s", name);
    p->cs = cs;
    p->cs_shift = (uint32_t)__builtin_ctz(cs);
    p->placement = o ? o->placement : 0;
    p->sync_md = o ? o->sync_metadata : 1;
    p->nreactors = srrs_core_num_reactors(core);
    p->rs = aligned_alloc(SRRS_CACHELINE, sizeof(struct lv_rstate) * (size_t)p->nreactors);
    if (!p->rs) {
        pthread_mutex_destroy(&p->lock);
        free(p);
        return srrs_err(-ENOMEM, "out of memory");
    }
    memset(p->rs, 0, sizeof(struct lv_rstate) * (size_t)p->nreactors);
    *out = p;
    return 0;
}

/* What each configured fragment holds (pr[i]); *any_ours: some carry this
 * kind of superblock (the pool exists), *any_persistent: some are files. */
static int probe_frags(const char *name, const struct srrs_pool_opts *o,
                       const struct srrs_pool_frag_spec *frags, int nfrags, struct frag_probe *pr,
                       bool *any_ours, bool *any_persistent)
{
    int rc = 0;
    int nosize = -1; /* a fragment to create without a size: an error unless the pool exists */
    for (int i = 0; i < nfrags && !rc; i++) {
        if (!frags[i].path) {
            if (!frags[i].size || frags[i].size % LV_BS)
                rc = srrs_err(-EINVAL, "pool %s: a RAM fragment needs a size, a multiple of 4096", name);
            continue;
        }
        *any_persistent = true;
        rc = frag_check_free(name, frags[i].path);
        if (!rc)
            rc = probe(frags[i].path, &pr[i]);
        if (rc)
            break;
        if (pr[i].kind == FR_OURS)
            *any_ours = true;
        if (pr[i].kind == FR_FOREIGN && !(o && o->force_create))
            rc = srrs_err(-EEXIST, "fragment %s holds data that is not an SRRS pool; refusing to "
                          "format it (set force_create to overwrite)", frags[i].path);
        if (pr[i].kind == FR_MISSING && !frags[i].size && nosize < 0)
            nosize = i;
    }
    /* In an existing pool the path may be a fragment its table records as
     * missing (the pool opens degraded); else adding it reports the error. */
    if (!rc && !*any_ours && nosize >= 0)
        rc = srrs_err(-ENOENT, "fragment %s does not exist and has no size to create it with",
                      frags[nosize].path);
    return rc;
}

/* Fresh fragments the config lists beyond the pool's table are added now. */
static int add_listed_frags(struct srrs_pool *p, const struct srrs_pool_frag_spec *frags, int nfrags,
                            const struct frag_probe *pr, const bool *used)
{
    int rc = 0;
    for (int i = 0; i < nfrags && !rc; i++) {
        if (used[i])
            continue;
        if (frags[i].path && pr[i].kind == FR_OURS)
            rc = srrs_err(-EINVAL, "fragment %s: already part of the pool", frags[i].path);
        else
            rc = srrs_pool_frag_add(p, &frags[i]) < 0 ? -EINVAL : 0;
        if (rc)
            rc = (int)-EINVAL;
    }
    return rc;
}

/* Every volume becomes a bdev. */
static int register_volumes(struct srrs_pool *p)
{
    int rc = 0;
    for (uint32_t h = 0; h < VHASH && !rc; h++)
        for (struct lv_vol *v = p->vhash[h]; v && !rc; v = v->hnext) {
            rc = vol_register(p, v);
            if (rc)
                rc = srrs_err(rc, "pool %s: volume %s: %s", p->name, v->name, srrs_last_error());
        }
    return rc;
}

/* A failed open leaves nothing behind it made (shared memory, a new file);
 * returns rc with the first error's message. */
static int pool_open_undo(struct srrs_pool *p, int rc)
{
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", srrs_last_error());
    for (int i = 0; i < LV_MAX_FRAGS; i++) {
        struct lv_frag *f = &p->frags[i];
        if (!f->fresh || (f->ram && !f->shm))
            continue;
        if (f->bdev) {
            srrs_bdev_close(&f->bdev);
            srrs_bdev_delete(p->core, f->bdev_name);
        }
        if (f->ram)
            lv_shm_drop(p, i, true);
        else if (p->created && f->path[0]) /* no superblock elsewhere names it */
            unlink(f->path);
    }
    pool_free(p);
    return srrs_err(rc, "%s", msg);
}

int srrs_pool_open(struct srrs_core *core, const char *name, const struct srrs_pool_opts *o,
                   const struct srrs_pool_frag_spec *frags, int nfrags, struct srrs_pool **out)
{
    struct srrs_pool *p = NULL;
    int rc = pool_alloc(core, name, o, nfrags, &p);
    if (rc)
        return rc;
    struct frag_probe *pr = calloc((size_t)nfrags, sizeof(*pr));
    bool used[LV_MAX_FRAGS] = {0};
    bool any_ours = false, any_persistent = false;
    rc = pr ? probe_frags(name, o, frags, nfrags, pr, &any_ours, &any_persistent)
            : srrs_err(-ENOMEM, "out of memory");
    if (!rc && !any_ours) {
        rc = pool_create_new(p, o, frags, nfrags, any_persistent);
        for (int i = 0; i < nfrags; i++)
            used[i] = true;
    } else if (!rc) {
        rc = pool_open_existing(p, frags, nfrags, pr, used);
    }
    if (!rc)
        rc = add_listed_frags(p, frags, nfrags, pr, used);
    free(pr);
    if (!rc)
        rc = register_volumes(p);
    if (rc)
        return pool_open_undo(p, rc);
    health_start(p);
    pool_register(p);
    *out = p;
    return 0;
}

int srrs_pool_close(struct srrs_pool **pp)
{
    struct srrs_pool *p = pp ? *pp : NULL;
    if (!p)
        return 0;
    for (uint32_t h = 0; h < VHASH; h++)
        for (struct lv_vol *v = p->vhash[h]; v; v = v->hnext)
            if (v->bdev && atomic_load(&v->bdev->open_count))
                return srrs_err(-EBUSY, "pool %s: volume %s is still in use", p->name, v->name);
    /* A running drain stops after the batch in flight (it resumes with the
     * next frag_drain: the fragment stays draining in the superblock). */
    for (int tries = 0; __atomic_load_n(&p->drain, __ATOMIC_ACQUIRE); tries++) {
        struct lv_op op = {.p = p};
        srrs_reactor_call(p->pr, lv_drain_stop_msg, &op);
        if (!op.rc)
            break;
        if (tries > 10000)
            return srrs_err(-EBUSY, "pool %s: a drain is still moving clusters", p->name);
        usleep(1000);
    }
    pool_free(p);
    *pp = NULL;
    return 0;
}

int srrs_pool_get_info(struct srrs_pool *p, struct srrs_pool_info *o)
{
    memset(o, 0, sizeof(*o));
    snprintf(o->name, sizeof(o->name), "%s", p->name);
    memcpy(o->uuid, p->uuid, 16);
    o->cluster_size = p->cs;
    o->placement = (uint32_t)p->placement;
    for (int i = 0; i < LV_MAX_FRAGS; i++) {
        struct lv_frag *f = &p->frags[i];
        if (f->state == FS_EMPTY || f->state == FS_REMOVED)
            continue;
        o->nfrags++;
        if (f->missing)
            continue; /* no capacity while it is gone */
        uint64_t used = __atomic_load_n(&f->nused, __ATOMIC_RELAXED);
        o->used_clusters += used;
        if (f->state == FS_ACTIVE) {
            o->total_clusters += f->nclusters;
            o->free_clusters += f->nclusters - used;
        } else {
            o->total_clusters += used;
        }
        o->md_slots_total += f->md_slots;
        o->md_slots_used += __atomic_load_n(&f->slots_used, __ATOMIC_RELAXED);
    }
    o->nvolumes = p->nvols;
    o->seq = p->seq;
    o->alloc_failures = p->alloc_failures;
    o->md_writes = p->md_writes;
    o->md_flushes = __atomic_load_n(&p->md_flushes, __ATOMIC_RELAXED);
    o->md_unsure_pages = __atomic_load_n(&p->md_unsure, __ATOMIC_RELAXED);
    o->created = p->created;
    o->repaired = p->repaired;
    for (int i = 0; i < LV_MAX_FRAGS; i++) {
        struct lv_frag *f = &p->frags[i];
        if (f->state != FS_ACTIVE && f->state != FS_DRAINING)
            continue;
        o->failed_frags += (uint32_t)__atomic_load_n(&f->failed, __ATOMIC_ACQUIRE);
        o->lost_clusters += __atomic_load_n(&f->nlost, __ATOMIC_RELAXED);
    }
    return 0;
}

int srrs_pool_frag_get_info(struct srrs_pool *p, int idx, struct srrs_pool_frag_info *o)
{
    if (idx < 0 || idx >= LV_MAX_FRAGS || p->frags[idx].state == FS_EMPTY)
        return srrs_err(-ENOENT, "pool %s has no fragment %d", p->name, idx);
    struct lv_frag *f = &p->frags[idx];
    memset(o, 0, sizeof(*o));
    o->index = idx;
    o->state = f->missing ? SRRS_FRAG_MISSING : f->state;
    o->ram = f->ram;
    o->weight = f->weight;
    snprintf(o->path, sizeof(o->path), "%s", f->path);
    snprintf(o->bdev, sizeof(o->bdev), "%s", f->bdev_name);
    if (f->bdev)
        snprintf(o->engine, sizeof(o->engine), "%s", f->bdev->engine);
    memcpy(o->uuid, f->uuid, 16);
    o->size = f->size;
    o->total_clusters = f->nclusters;
    o->used_clusters = __atomic_load_n(&f->nused, __ATOMIC_RELAXED);
    o->md_slots = f->md_slots;
    o->md_slots_used = __atomic_load_n(&f->slots_used, __ATOMIC_RELAXED);
    o->drain_moved = f->drain_moved;
    o->drain_total = f->drain_total;
    o->drain_error = f->drain_error;
    o->failed = __atomic_load_n(&f->failed, __ATOMIC_ACQUIRE);
    o->lost_clusters = __atomic_load_n(&f->nlost, __ATOMIC_RELAXED);
    if (o->failed || f->missing || __atomic_load_n(&f->shm_unlinked, __ATOMIC_ACQUIRE))
        snprintf(o->error, sizeof(o->error), "%s", f->why);
    return 0;
}

int srrs_pool_messages(struct srrs_pool *p, char *buf, int len)
{
    pthread_mutex_lock(&p->lock);
    int n = (int)SRRS_MIN((size_t)(len > 0 ? len - 1 : 0), p->msgs_len);
    memcpy(buf, p->msgs, (size_t)n);
    if (len > 0)
        buf[n] = 0;
    pthread_mutex_unlock(&p->lock);
    return n;
}

/* ---- online fragment add ------------------------------------------------------ */

int srrs_pool_frag_add(struct srrs_pool *p, const struct srrs_pool_frag_spec *spec)
{
    if (p->degraded)
        return lv_degraded_err(p, "adding a fragment");
    int fi = -1;
    bool any_persistent = false;
    for (int i = 0; i < LV_MAX_FRAGS; i++) {
        if (p->frags[i].state == FS_EMPTY && fi < 0)
            fi = i;
        if ((p->frags[i].state == FS_ACTIVE || p->frags[i].state == FS_DRAINING) && !p->frags[i].ram)
            any_persistent = true;
    }
    for (int i = 0; i < LV_MAX_FRAGS && fi < 0; i++)
        if (p->frags[i].state == FS_REMOVED)
            fi = i; /* no map entry or page refers to a removed fragment: reuse its index */
    if (fi < 0)
        return srrs_err(-ENOSPC, "pool %s already has %d fragments", p->name, LV_MAX_FRAGS);
    /* Online, the table is the only record of the fragment: a path it cannot
     * hold whole would not be found at the next start. */
    if (spec->path && p->registered && strlen(spec->path) >= sizeof(((struct sb_frag *)0)->path))
        return srrs_err(-ENAMETOOLONG, "fragment %s: the path is longer than %zu bytes, more than "
                        "the pool's table records; use a shorter path (a symlink)", spec->path,
                        sizeof(((struct sb_frag *)0)->path) - 1);
    if (spec->path) {
        struct frag_probe pr;
        int rc = frag_check_free(p->name, spec->path);
        if (!rc)
            rc = probe(spec->path, &pr);
        if (rc)
            return rc;
        if (pr.kind == FR_OURS || pr.kind == FR_FOREIGN)
            return srrs_err(-EEXIST, "fragment %s already holds %s", spec->path,
                            pr.kind == FR_OURS ? "SRRS metadata" : "other data");
        if (pr.kind == FR_MISSING && !spec->size)
            return srrs_err(-ENOENT, "fragment %s does not exist and has no size", spec->path);
    } else if (!spec->size || spec->size % LV_BS) {
        return srrs_err(-EINVAL, "a RAM fragment needs a size, a multiple of 4096");
    }
    struct lv_frag *f = &p->frags[fi];
    if (f->state == FS_REMOVED)
        memset(f, 0, sizeof(*f));
    /* Invisible to the allocator (hidden) until the superblocks that list it
     * are durable: a cluster is never mapped on a fragment the table lacks. */
    __atomic_store_n(&f->hidden, true, __ATOMIC_RELEASE);
    int rc = frag_attach(p, fi, spec, true, spec->path ? true : !any_persistent, 0);
    if (!rc)
        rc = md_area_clear(f);
    if (!rc)
        rc = lv_sb_write_all(p);
    if (rc) {
        char msg[512];
        snprintf(msg, sizeof(msg), "%s", srrs_last_error());
        __atomic_store_n(&f->state, FS_EMPTY, __ATOMIC_RELEASE);
        if (f->bdev) {
            srrs_bdev_close(&f->bdev);
            srrs_bdev_delete(p->core, f->bdev_name);
        }
        lv_shm_drop(p, fi, true);
        free(f->used);
        free(f->slot_used);
        memset(f, 0, sizeof(*f));
        return srrs_err(rc, "%s", msg);
    }
    __atomic_store_n(&f->hidden, false, __ATOMIC_RELEASE);
    health_watch(p);
    lv_pool_msg(p, "fragment %d (%s, %llu clusters) added", fi, f->path, (unsigned long long)f->nclusters);
    return fi;
}

