/*
 * Mirror bdev and its control API (docs/architecture.md, Pair; contract in
 * ffi/mirror.h). The link, the pieces and the resync live in mirror_link.c,
 * mirror_state.c and mirror_resync.c (map in ffi/mirror_int.h); here: the
 * bdev module (submit passes host I/O to the link's reactor), creating and
 * deleting links and mirrors, modes, statistics and the test hooks.
 */
#include "mirror_int.h"

#include <fcntl.h>
#include <netdb.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- the bdev ------------------------------------------------------------------------------ */

static void mirror_submit(struct srrs_bdev *b, void *ch, struct srrs_io *io)
{
    (void)ch;
    struct mirror *m = b->ctx;
    struct hctx *h = (struct hctx *)io->driver_ctx;
    h->held_since = 0; /* never held yet (opts.hold_ms) */
    h->epoch = __atomic_load_n(&m->release_epoch, __ATOMIC_ACQUIRE);
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
    retry_fail(l, m); /* held for a retry: the volume goes, they fail */
    for (uint32_t i = 0; i < M_NPIECES; i++) {
        struct piece *p = &l->pieces[i];
        if (p->kind == P_FREE || p->m != m)
            continue;
        if (x->force && !p->local_wait) {
            /* Deleting under a peer that never answers: fail what waits for it. */
            if (p->waiting) {
                unlist(&l->held, p);
                unlist(&l->rebound, p);
                unlist(&l->rwait, p);
                unlist(&m->lock_wait, p);
                unlist(&l->throttled, p);
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

static void release_fn(void *a)
{
    struct mirror *m = a;
    retry_fail(m->l, m);
}

/* A host stops a queue (vhost-user GET_VRING_BASE, a memory table change, a
 * disconnect): it waits for what it has in flight, so nothing of it may wait
 * here for the mirror to serve again. Its I/O submitted so far is not held
 * from now on (the epoch), what is held fails on the link's reactor. */
static void mirror_release_held(struct srrs_bdev *b)
{
    struct mirror *m = b->ctx;
    __atomic_add_fetch(&m->release_epoch, 1, __ATOMIC_RELEASE);
    srrs_bdev_release_held(m->replica); /* a move link's mirror over the pair's */
    while (srrs_reactor_send(m->l->r, release_fn, m) == -EAGAIN)
        ;
}

static const struct srrs_bdev_module mirror_module = {
    .name = "mirror",
    .submit = mirror_submit,
    .destroy = mirror_destroy,
    .release_held = mirror_release_held,
};

/* ---- control ----------------------------------------------------------------------------------- */

static int link_opts_check(const struct srrs_mirror_link_opts *o)
{
    if (o->node != 0 && o->node != 1)
        return srrs_err(-EINVAL, "mirror link: node must be 0 or 1");
    if (o->sole_orderer < 0 || o->sole_orderer > 2)
        return srrs_err(-EINVAL, "mirror link: sole_orderer must be 0 (split), 1 (node 0) or 2 "
                        "(node 1)");
    return 0;
}

int srrs_mirror_link_create(struct srrs_core *core, const struct srrs_mirror_link_opts *o,
                            struct srrs_mirror_link **out)
{
    struct srrs_reactor *r = srrs_core_reactor(core, o->reactor);
    if (!r)
        return srrs_err(-EINVAL, "mirror link: no reactor %d", o->reactor);
    int rc = link_opts_check(o);
    if (rc)
        return rc;
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
    l->hold_ticks = srrs_us_to_ticks((uint64_t)l->o.hold_ms * 1000);
    /* A previous incarnation of this controller may have granted just now. */
    l->rl_granted = srrs_ticks() + l->rl_len + l->rl_len / 16 + srrs_us_to_ticks(1000);
    l->fd = -1;
    l->lfd = -1;
    l->rxw.fd = -1;
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
    rc = auth_setup(l);
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
                            l->vols[i]->name);
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

/* The replica opened and made the mirror's alone (renamed NAME.replica when
 * the mirror takes its name). On failure nothing is kept open. */
static int mirror_take_replica(struct mirror *m, const char *name, const char *replica,
                               bool shared)
{
    struct mlink *l = m->l;
    m->replica = srrs_bdev_open(l->core, replica);
    if (!m->replica)
        return srrs_err(-ENOENT, "mirror %s: replica bdev %s does not exist", name, replica);
    if (m->replica->owner[0] || (!shared && atomic_load(&m->replica->open_count) > 1)) {
        /* A replica written by anything but this mirror would differ from its peer. */
        int rc = srrs_err(-EBUSY, "mirror %s: replica bdev %s is in use (%s)", name, replica,
                          m->replica->owner[0] ? m->replica->owner : "an export or a job");
        srrs_bdev_close(&m->replica);
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
            return rc;
        }
        m->renamed = true;
    }
    snprintf(m->replica->owner, sizeof(m->replica->owner), "%s", name);
    return 0;
}

/* Stripe geometry, the per-stripe arrays and the dirty bitmap file mapped
 * shared (it survives a kill -9). On failure the caller frees the mirror. */
static int mirror_map_bitmap(struct mirror *m, const char *name, uint64_t stripe_size,
                             const char *bitmap_path)
{
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
        return srrs_err(-e, "mirror %s: bitmap %s: %s", name, bitmap_path, strerror(e));
    }
    if (ftruncate(fd, (off_t)m->bm_len)) {
        int e = errno;
        close(fd);
        return srrs_err(-e, "mirror %s: bitmap %s: %s", name, bitmap_path, strerror(e));
    }
    m->bm = mmap(NULL, m->bm_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m->bm == MAP_FAILED) {
        m->bm = NULL;
        return srrs_err(-ENOMEM, "mirror %s: cannot map bitmap %s", name, bitmap_path);
    }
    return 0;
}

static int mirror_create(struct srrs_mirror_link *link, const char *name, const char *replica,
                         uint32_t vol_id, uint64_t stripe_size, const char *bitmap_path,
                         bool shared)
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
    if (snprintf(m->name, sizeof(m->name), "%s", name) >= (int)sizeof(m->name)) {
        free(m);
        return srrs_err(-ENAMETOOLONG, "mirror %s: name too long", name);
    }
    if (shared && !strcmp(name, replica)) {
        free(m);
        return srrs_err(-EINVAL, "mirror %s: a mirror over a replica in use needs its own name",
                        name);
    }
    int rc = mirror_take_replica(m, name, replica, shared);
    if (rc) {
        free(m);
        return rc;
    }
    rc = mirror_map_bitmap(m, name, stripe_size, bitmap_path);
    if (rc) {
        mirror_free(m);
        return rc;
    }
    struct vol_arg x = {l, m, false, false};
    srrs_reactor_call(l->r, vol_attach_fn, &x);
    if (x.busy) {
        mirror_free(m);
        return srrs_err(-EEXIST, "mirror %s: volume id %u already used", name, vol_id);
    }
    rc = srrs_bdev_register(l->core, name, &mirror_module, m, m->replica->num_blocks,
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

int srrs_mirror_create(struct srrs_mirror_link *link, const char *name, const char *replica,
                       uint32_t vol_id, uint64_t stripe_size, const char *bitmap_path)
{
    return mirror_create(link, name, replica, vol_id, stripe_size, bitmap_path, false);
}

int srrs_mirror_create_over(struct srrs_mirror_link *link, const char *name, const char *replica,
                            uint32_t vol_id, uint64_t stripe_size, const char *bitmap_path)
{
    return mirror_create(link, name, replica, vol_id, stripe_size, bitmap_path, true);
}

struct dirty_arg {
    struct mlink *l;
    const char *name;
    const uint8_t *bits;
    uint64_t len;
    int64_t rc;
};

static void mark_dirty_fn(void *a)
{
    struct dirty_arg *x = a;
    struct mlink *l = x->l;
    x->rc = -ENOENT;
    for (int i = 0; i < M_MAX_VOLS; i++) {
        struct mirror *m = l->vols[i];
        if (!m || strcmp(m->name, x->name))
            continue;
        int64_t n = 0;
        size_t len = SRRS_MIN((size_t)x->len, m->bm_len);
        for (size_t j = 0; j < len; j++) {
            uint8_t b = x->bits[j];
            if (j == m->bm_len - 1 && (m->nstripes & 7))
                b &= (uint8_t)((1u << (m->nstripes & 7)) - 1); /* no stripe past the end */
            m->bm[j] |= b;
            n += __builtin_popcount(b);
        }
        x->rc = n;
        return;
    }
}

int64_t srrs_mirror_mark_dirty(struct srrs_mirror_link *link, const char *name,
                               const uint8_t *bits, uint64_t len)
{
    struct dirty_arg x = {(struct mlink *)link, name, bits, len, 0};
    if (!name || (!bits && len))
        return srrs_err(-EINVAL, "mirror: mark_dirty needs a name and bits");
    srrs_reactor_call(x.l->r, mark_dirty_fn, &x);
    return x.rc == -ENOENT ? srrs_err(-ENOENT, "mirror %s does not exist", name) : x.rc;
}

struct limit_arg {
    struct mlink *l;
    uint32_t copies;
    uint64_t rate;
};

static void copy_limit_fn(void *a)
{
    struct limit_arg *x = a;
    x->l->copy_max = x->copies;
    if (x->l->copy_rate != x->rate) {
        x->l->copy_rate = x->rate;
        x->l->copy_tokens = 0;
        x->l->copy_tok_at = srrs_ticks();
    }
    copy_refill(x->l); /* no limit any more: what waited goes on */
}

int srrs_mirror_set_copy_limit(struct srrs_mirror_link *link, uint32_t copies,
                               uint64_t bytes_per_s)
{
    struct limit_arg x = {(struct mlink *)link, copies, bytes_per_s};
    srrs_reactor_call(x.l->r, copy_limit_fn, &x);
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
        for (struct piece *p = l->rebound; p; p = p->next)
            held++;
        x->li->held_writes = held;
        x->li->held_ios = 0;
        for (struct srrs_io *io = l->retry; io; io = io->next)
            x->li->held_ios++;
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
        if (!m || strcmp(m->name, x->name))
            continue;
        struct srrs_mirror_info *o = x->mi;
        memset(o, 0, sizeof(*o));
        snprintf(o->name, sizeof(o->name), "%s", m->name);
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

struct peer_arg {
    struct mlink *l;
    const char *host;
    uint16_t port;
    int node;
    uint64_t peer_id;
    int rc;
};

static void set_peer_fn(void *a)
{
    struct peer_arg *x = a;
    struct mlink *l = x->l;
    if (l->mode != MODE_SOLO && l->mode != MODE_FENCED && l->mode != MODE_PENDING) {
        x->rc = -EBUSY; /* paired or resyncing: stripe owners and copies depend on the peer */
        return;
    }
    link_drop(l, "peer replaced");
    snprintf(l->o.peer_host, sizeof(l->o.peer_host), "%s", x->host);
    l->o.peer_port = x->port;
    l->o.node = x->node;
    l->o.peer_id = x->peer_id;
    l->last_try = 0;
    x->rc = 0;
}

int srrs_mirror_link_set_peer(struct srrs_mirror_link *link, const char *host, uint16_t port,
                              int node, uint64_t peer_id)
{
    if (!link || !host || !*host || strlen(host) >= sizeof(((struct mlink *)0)->o.peer_host) ||
        !port || (node != 0 && node != 1))
        return srrs_err(-EINVAL, "mirror link: bad peer %s:%u (node %d)", host ? host : "?",
                        port, node);
    struct peer_arg x = {(struct mlink *)link, host, port, node, peer_id, 0};
    srrs_reactor_call(x.l->r, set_peer_fn, &x);
    if (x.rc)
        return srrs_err(x.rc, "mirror link: the peer changes only while solo or fenced");
    return 0;
}

static void drop_fn(void *a) { link_drop(a, "dropped by a test"); }

int srrs_mirror_test_drop(struct srrs_mirror_link *link)
{
    struct mlink *l = (struct mlink *)link;
    srrs_reactor_call(l->r, drop_fn, l);
    return 0;
}
