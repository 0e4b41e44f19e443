/*
 * NVMe-oF controller logic: the target object (subsystems, namespaces,
 * hosts, ANA groups, dynamic controllers), Fabrics commands (Connect,
 * Property Get/Set, Disconnect), the admin command set, the discovery
 * subsystem, asynchronous events and keep-alive.
 *
 * Threads: configuration calls run on control threads under tgt->lock;
 * commands run on the reactor of the queue that received them and take
 * tgt->lock only on the admin path (Connect, Identify, logs). The I/O path
 * reads namespaces and ANA states through atomics (tcp.c).
 */
#include "nvmf/nvmf_int.h"

#include <stdlib.h>

static inline void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

static void put_str(uint8_t *dst, size_t n, const char *s, char pad)
{
    size_t l = strlen(s);
    if (l > n)
        l = n;
    memcpy(dst, s, l);
    memset(dst + l, pad, n - l);
}

/* ---- lookups (under tgt->lock) --------------------------------------------- */

static struct nvmf_subsys *subsys_find(struct srrs_nvmf_tgt *t, const char *nqn)
{
    for (int i = 0; i < NVMF_MAX_SUBSYS; i++)
        if (t->subsys[i] && !strcmp(t->subsys[i]->nqn, nqn))
            return t->subsys[i];
    return NULL;
}

static bool host_allowed(const struct nvmf_subsys *ss, const char *hostnqn)
{
    if (ss->discovery || atomic_load(&ss->allow_any))
        return true;
    for (uint32_t i = 0; i < ss->nhosts; i++)
        if (!strcmp(ss->hosts[i], hostnqn))
            return true;
    return false;
}

static uint32_t cntlid_range(const struct srrs_nvmf_tgt *t)
{
    return (uint32_t)t->opts.cntlid_max - t->opts.cntlid_min + 1;
}

static struct nvmf_ctrlr *ctrlr_find(struct srrs_nvmf_tgt *t, uint16_t cntlid)
{
    if (cntlid < t->opts.cntlid_min || cntlid > t->opts.cntlid_max)
        return NULL;
    return t->ctrlrs[cntlid - t->opts.cntlid_min];
}

/* Every controller of ss gets event bits (and nsid in its changed list). */
static void subsys_notify(struct srrs_nvmf_tgt *t, struct nvmf_subsys *ss, uint32_t bits,
                          uint32_t nsid)
{
    uint32_t n = cntlid_range(t);
    for (uint32_t i = 0; i < n; i++) {
        struct nvmf_ctrlr *ct = t->ctrlrs[i];
        if (!ct || ct->ss != ss)
            continue;
        if (nsid) {
            bool have = false;
            for (uint32_t k = 0; k < ct->n_changed; k++)
                have |= ct->changed_ns[k] == nsid;
            if (!have) {
                if (ct->n_changed < NVMF_MAX_CHANGED_NS)
                    ct->changed_ns[ct->n_changed++] = nsid;
                else
                    ct->changed_overflow = true;
            }
        }
        atomic_fetch_or(&ct->aen_pending, bits);
    }
}

/* ---- target --------------------------------------------------------------- */

/* The default serial: "SRRS" + 16 hex digits from the NQN. Hosts key device
 * identity on it (and multipath on NQN + serial), so subsystems must not share
 * one; both controllers of a pair export one subsystem under one NQN and so
 * present the same serial, stable across restarts. nvmf/target.py
 * (default_serial) computes the same string. */
static void derive_serial(const char *nqn, char out[21])
{
    uint32_t a = srrs_crc32c(0x53525253u, nqn, strlen(nqn));
    uint32_t b = srrs_crc32c(0x9E3779B9u, nqn, strlen(nqn));
    snprintf(out, 21, "SRRS%08X%08X", a, b);
}

static struct nvmf_subsys *subsys_new(const char *nqn, const char *serial, const char *model)
{
    struct nvmf_subsys *ss = calloc(1, sizeof(*ss));
    if (!ss)
        return NULL;
    snprintf(ss->nqn, sizeof(ss->nqn), "%s", nqn);
    if (serial && *serial)
        snprintf(ss->serial, sizeof(ss->serial), "%s", serial);
    else
        derive_serial(nqn, ss->serial);
    snprintf(ss->model, sizeof(ss->model), "%s", model && *model ? model : "SRRS NVMe-oF");
    return ss;
}

int srrs_nvmf_tgt_create(struct srrs_core *core, const struct srrs_nvmf_tgt_opts *o,
                         struct srrs_nvmf_tgt **out)
{
    if (!core || !o || !out)
        return srrs_err(-EINVAL, "nvmf: missing argument");
    struct srrs_nvmf_tgt_opts opts = *o;
    if (!opts.cntlid_min)
        opts.cntlid_min = 1;
    if (!opts.cntlid_max)
        opts.cntlid_max = 0xFFEF;
    if (!opts.max_io_queues)
        opts.max_io_queues = 16;
    if (!opts.max_queue_depth)
        opts.max_queue_depth = 128;
    if (!opts.max_handshaking)
        opts.max_handshaking = NVMF_MAX_HANDSHAKING;
    if (!opts.max_handshaking_per_source)
        opts.max_handshaking_per_source = NVMF_MAX_HANDSHAKING_PER_SOURCE;
    if (!opts.handshake_timeout_ms)
        opts.handshake_timeout_ms = NVMF_HANDSHAKE_TIMEOUT_MS;
    if (opts.cntlid_min > opts.cntlid_max || opts.cntlid_max > 0xFFEF)
        return srrs_err(-EINVAL, "nvmf: cntlid range must lie in 1..65519 with min <= max");
    if (opts.max_io_queues > NVMF_MAX_IOQ)
        return srrs_err(-EINVAL, "nvmf: max_io_queues must be 1..%d", NVMF_MAX_IOQ);
    int nr = srrs_core_num_reactors(core);
    if (opts.listener_reactor < 0 || opts.listener_reactor >= nr)
        return srrs_err(-EINVAL, "nvmf: listener_reactor must be 0..%d", nr - 1);
    if (opts.reactor_mask && !(opts.reactor_mask & (nr >= 64 ? ~0ull : (1ull << nr) - 1)))
        return srrs_err(-EINVAL, "nvmf: reactor_mask names no existing reactor");
    if (opts.max_queue_depth < 2 || opts.max_queue_depth > 1024)
        return srrs_err(-EINVAL, "nvmf: max_queue_depth must be 2..1024");
    struct srrs_nvmf_tgt *t = calloc(1, sizeof(*t));
    if (!t)
        return srrs_err(-ENOMEM, "nvmf: out of memory");
    t->core = core;
    t->opts = opts;
    pthread_mutex_init(&t->lock, NULL);
    pthread_mutex_init(&t->hs_lock, NULL);
    t->ctrlrs = calloc(cntlid_range(t), sizeof(*t->ctrlrs));
    t->subsys[0] = subsys_new(NVMF_DISCOVERY_NQN, "", "SRRS discovery");
    if (!t->ctrlrs || !t->subsys[0]) {
        free(t->ctrlrs);
        free(t->subsys[0]);
        free(t);
        return srrs_err(-ENOMEM, "nvmf: out of memory");
    }
    t->subsys[0]->discovery = true;
    t->next_cntlid = opts.cntlid_min;
    t->genctr = 1;
    *out = t;
    return 0;
}

static void ns_free(struct nvmf_ns *ns)
{
    srrs_bdev_close(&ns->bdev);
    free(ns);
}

static void subsys_free(struct nvmf_subsys *ss)
{
    for (int i = 1; i <= NVMF_MAX_NS; i++) {
        struct nvmf_ns *ns = atomic_load(&ss->ns[i]);
        if (ns)
            ns_free(ns);
    }
    nvmf_auth_subsys_free(ss);
    free(ss->hosts);
    free(ss);
}

void srrs_nvmf_tgt_destroy(struct srrs_nvmf_tgt **pt)
{
    struct srrs_nvmf_tgt *t = pt ? *pt : NULL;
    if (!t)
        return;
    nvmf_transport_fini(t);
    if (t->nconns) { /* a connection would not drain: leak rather than free under it */
        *pt = NULL;
        return;
    }
    for (int i = 0; i < NVMF_MAX_SUBSYS; i++)
        if (t->subsys[i])
            subsys_free(t->subsys[i]);
    while (t->dead_subsys) {
        struct nvmf_subsys *ss = t->dead_subsys;
        t->dead_subsys = ss->next_dead;
        subsys_free(ss);
    }
    while (t->dead_ns) {
        struct nvmf_ns *ns = t->dead_ns;
        t->dead_ns = ns->next_dead;
        ns_free(ns);
    }
    for (uint32_t i = 0; i < cntlid_range(t); i++)
        free(t->ctrlrs[i]);
    free(t->ctrlrs);
    nvmf_disc_free(t);
    pthread_mutex_destroy(&t->lock);
    pthread_mutex_destroy(&t->hs_lock);
    free(t);
    *pt = NULL;
}

int srrs_nvmf_listener_add(struct srrs_nvmf_tgt *t, const char *addr, int port)
{
    return nvmf_listener_add(t, addr, port);
}

int srrs_nvmf_listener_remove(struct srrs_nvmf_tgt *t, const char *addr, int port)
{
    return nvmf_listener_remove(t, addr, port);
}

static bool nqn_ok(const char *nqn)
{
    size_t l = nqn ? strnlen(nqn, 224) : 0;
    return l >= 1 && l <= 223;
}

int srrs_nvmf_subsystem_add(struct srrs_nvmf_tgt *t, const char *nqn, const char *serial,
                            const char *model, int allow_any_host)
{
    if (!nqn_ok(nqn))
        return srrs_err(-EINVAL, "nvmf subsystem: nqn must be 1..223 bytes");
    if ((serial && strlen(serial) > 20) || (model && strlen(model) > 40))
        return srrs_err(-EINVAL, "nvmf subsystem %s: serial <= 20 and model <= 40 bytes", nqn);
    for (const char *s = serial; s && *s; s++)
        if (*s < 0x20 || *s > 0x7e)
            return srrs_err(-EINVAL, "nvmf subsystem %s: serial must be printable ASCII", nqn);
    for (const char *s = model; s && *s; s++)
        if (*s < 0x20 || *s > 0x7e)
            return srrs_err(-EINVAL, "nvmf subsystem %s: model must be printable ASCII", nqn);
    struct nvmf_subsys *ss = subsys_new(nqn, serial, model);
    if (!ss)
        return srrs_err(-ENOMEM, "nvmf: out of memory");
    atomic_store(&ss->allow_any, allow_any_host != 0);
    pthread_mutex_lock(&t->lock);
    int rc = 0, slot = -1;
    if (subsys_find(t, nqn))
        rc = srrs_err(-EEXIST, "nvmf subsystem %s already exists", nqn);
    for (int i = 1; !rc && i < NVMF_MAX_SUBSYS && slot < 0; i++)
        if (!t->subsys[i])
            slot = i;
    if (!rc && slot < 0)
        rc = srrs_err(-ENOSPC, "nvmf: at most %d subsystems", NVMF_MAX_SUBSYS - 1);
    if (!rc) {
        t->subsys[slot] = ss;
        nvmf_disc_changed(t);
    }
    pthread_mutex_unlock(&t->lock);
    if (rc)
        free(ss);
    return rc;
}

static uint64_t ns_inflight(const struct nvmf_ns *ns)
{
    uint64_t n = 0;
    for (int i = 0; i < SRRS_MAX_REACTORS; i++)
        n += atomic_load_explicit(&ns->inflight[i].n, memory_order_acquire);
    return n;
}

static void noop_fn(void *arg) { (void)arg; }

/* After this, no reactor is between loading an old namespace pointer and
 * counting itself in that namespace's inflight. */
static void reactors_barrier(struct srrs_nvmf_tgt *t)
{
    int n = srrs_core_num_reactors(t->core);
    for (int i = 0; i < n; i++)
        srrs_reactor_call(srrs_core_reactor(t->core, i), noop_fn, NULL);
}

static bool wait_until_zero(uint64_t (*fn)(void *), void *arg, int ms)
{
    for (int i = 0; i < ms; i++) {
        if (!fn(arg))
            return true;
        struct timespec d = {0, 1000000};
        nanosleep(&d, NULL);
    }
    return !fn(arg);
}

struct ss_wait {
    struct srrs_nvmf_tgt *t;
    struct nvmf_subsys *ss;
};

static uint64_t ss_ctrlrs(void *arg)
{
    struct ss_wait *w = arg;
    uint64_t n = 0;
    pthread_mutex_lock(&w->t->lock);
    for (uint32_t i = 0; i < cntlid_range(w->t); i++)
        n += w->t->ctrlrs[i] && w->t->ctrlrs[i]->ss == w->ss;
    pthread_mutex_unlock(&w->t->lock);
    return n;
}

int srrs_nvmf_subsystem_remove(struct srrs_nvmf_tgt *t, const char *nqn)
{
    if (!nqn_ok(nqn))
        return srrs_err(-EINVAL, "nvmf subsystem: bad nqn");
    pthread_mutex_lock(&t->lock);
    struct nvmf_subsys *ss = subsys_find(t, nqn);
    if (!ss || ss->discovery) {
        pthread_mutex_unlock(&t->lock);
        return srrs_err(ss ? -EPERM : -ENOENT, "nvmf subsystem %s: %s", nqn,
                        ss ? "the discovery subsystem cannot be removed" : "does not exist");
    }
    for (int i = 0; i < NVMF_MAX_SUBSYS; i++)
        if (t->subsys[i] == ss)
            t->subsys[i] = NULL;
    ss->removed = true;
    nvmf_disc_changed(t);
    for (uint32_t i = 0; i < cntlid_range(t); i++)
        if (t->ctrlrs[i] && t->ctrlrs[i]->ss == ss)
            atomic_store(&t->ctrlrs[i]->dead, true);
    pthread_mutex_unlock(&t->lock);
    nvmf_kick_reactors(t);
    struct ss_wait w = {t, ss};
    if (wait_until_zero(ss_ctrlrs, &w, 10000)) {
        subsys_free(ss);
        return 0;
    }
    pthread_mutex_lock(&t->lock);
    ss->next_dead = t->dead_subsys;
    t->dead_subsys = ss;
    pthread_mutex_unlock(&t->lock);
    return 0;
}

static int subsys_op(struct srrs_nvmf_tgt *t, const char *nqn, struct nvmf_subsys **out)
{
    struct nvmf_subsys *ss = nqn_ok(nqn) ? subsys_find(t, nqn) : NULL;
    if (!ss)
        return srrs_err(-ENOENT, "nvmf subsystem %s does not exist", nqn ? nqn : "(null)");
    if (ss->discovery)
        return srrs_err(-EPERM, "nvmf: the discovery subsystem has no namespaces or hosts");
    *out = ss;
    return 0;
}

int srrs_nvmf_subsystem_allow_any_host(struct srrs_nvmf_tgt *t, const char *nqn, int allow)
{
    struct nvmf_subsys *ss;
    pthread_mutex_lock(&t->lock);
    int rc = subsys_op(t, nqn, &ss);
    if (!rc) {
        atomic_store(&ss->allow_any, allow != 0);
        nvmf_disc_changed(t);
    }
    pthread_mutex_unlock(&t->lock);
    return rc;
}

int srrs_nvmf_host_add(struct srrs_nvmf_tgt *t, const char *nqn, const char *hostnqn)
{
    if (!nqn_ok(hostnqn))
        return srrs_err(-EINVAL, "nvmf host: nqn must be 1..223 bytes");
    struct nvmf_subsys *ss;
    pthread_mutex_lock(&t->lock);
    int rc = subsys_op(t, nqn, &ss);
    for (uint32_t i = 0; !rc && i < ss->nhosts; i++)
        if (!strcmp(ss->hosts[i], hostnqn))
            rc = srrs_err(-EEXIST, "nvmf subsystem %s: host %s already allowed", nqn, hostnqn);
    if (!rc && ss->nhosts == ss->cap_hosts) {
        uint32_t cap = ss->cap_hosts ? ss->cap_hosts * 2 : 8;
        void *n = realloc(ss->hosts, cap * sizeof(*ss->hosts));
        if (!n)
            rc = srrs_err(-ENOMEM, "nvmf: out of memory");
        else {
            ss->hosts = n;
            ss->cap_hosts = cap;
        }
    }
    if (!rc) {
        snprintf(ss->hosts[ss->nhosts++], 224, "%s", hostnqn);
        nvmf_disc_changed(t);
    }
    pthread_mutex_unlock(&t->lock);
    return rc;
}

int srrs_nvmf_host_remove(struct srrs_nvmf_tgt *t, const char *nqn, const char *hostnqn)
{
    struct nvmf_subsys *ss;
    pthread_mutex_lock(&t->lock);
    int rc = subsys_op(t, nqn, &ss);
    if (!rc) {
        rc = srrs_err(-ENOENT, "nvmf subsystem %s: host %s not on the list", nqn,
                      hostnqn ? hostnqn : "(null)");
        for (uint32_t i = 0; hostnqn && i < ss->nhosts; i++) {
            if (!strcmp(ss->hosts[i], hostnqn)) {
                memmove(ss->hosts[i], ss->hosts[i + 1], (ss->nhosts - i - 1) * sizeof(*ss->hosts));
                ss->nhosts--;
                nvmf_disc_changed(t);
                rc = 0;
                break;
            }
        }
    }
    pthread_mutex_unlock(&t->lock);
    return rc;
}

/* Stable identity from the subsystem NQN and bdev name: both controllers of
 * a pair derive the same UUID/NGUID, so host multipath joins the paths. */
static void derive_uuid(const char *nqn, const char *bdev, uint8_t out[16])
{
    for (uint32_t k = 0; k < 4; k++) {
        uint32_t c = srrs_crc32c(k * 0x9E3779B9u, nqn, strlen(nqn));
        c = srrs_crc32c(c, "/", 1);
        c = srrs_crc32c(c, bdev, strlen(bdev));
        memcpy(out + 4 * k, &c, 4);
    }
    out[6] = (uint8_t)((out[6] & 0x0f) | 0x50); /* name-based UUID */
    out[8] = (uint8_t)((out[8] & 0x3f) | 0x80);
}

/* A namespace over bdev, opened as an export (not yet in any subsystem). */
static int ns_open(struct srrs_nvmf_tgt *t, const char *bdev, struct nvmf_ns **out)
{
    struct srrs_bdev *b;
    int rc = srrs_bdev_open_export(t->core, bdev, &b);
    if (rc)
        return rc;
    struct nvmf_ns *ns = calloc(1, sizeof(*ns));
    if (!ns) {
        srrs_bdev_close(&b);
        return srrs_err(-ENOMEM, "nvmf: out of memory");
    }
    ns->bdev = b;
    ns->num_blocks = b->num_blocks;
    ns->block_size = b->block_size;
    ns->block_shift = nvmf_ctz_shift(b->block_size);
    *out = ns;
    return 0;
}

int srrs_nvmf_ns_add(struct srrs_nvmf_tgt *t, const char *nqn, uint32_t nsid, const char *bdev,
                     const uint8_t *uuid, uint32_t anagrpid)
{
    if (nsid > NVMF_MAX_NS)
        return srrs_err(-EINVAL, "nvmf: nsid must be 1..%d", NVMF_MAX_NS);
    if (!anagrpid)
        anagrpid = 1;
    if (anagrpid > NVMF_MAX_ANA)
        return srrs_err(-EINVAL, "nvmf: ANA group must be 1..%d", NVMF_MAX_ANA);
    struct nvmf_ns *ns;
    int orc = ns_open(t, bdev, &ns);
    if (orc)
        return orc;
    struct srrs_bdev *b = ns->bdev;
    ns->anagrpid = anagrpid;
    struct nvmf_subsys *ss;
    pthread_mutex_lock(&t->lock);
    int rc = subsys_op(t, nqn, &ss);
    if (!rc) {
        if (uuid)
            memcpy(ns->uuid, uuid, 16);
        else
            derive_uuid(ss->nqn, bdev, ns->uuid);
        for (uint32_t i = 1; i <= NVMF_MAX_NS && !rc; i++) {
            struct nvmf_ns *o = atomic_load(&ss->ns[i]);
            /* Hosts reject two namespaces with one identity (and one bdev twice
             * would get the same derived UUID). */
            if (o && (o->bdev == b || !memcmp(o->uuid, ns->uuid, 16)))
                rc = srrs_err(-EEXIST, "nvmf subsystem %s: namespace %u already has %s", nqn, i,
                              o->bdev == b ? "this bdev" : "this UUID");
        }
        if (!rc && !nsid)
            for (uint32_t i = 1; i <= NVMF_MAX_NS && !nsid; i++)
                if (!atomic_load(&ss->ns[i]))
                    nsid = i;
        if (!rc && !nsid)
            rc = srrs_err(-ENOSPC, "nvmf subsystem %s: all %d namespaces in use", nqn, NVMF_MAX_NS);
        else if (!rc && atomic_load(&ss->ns[nsid]))
            rc = srrs_err(-EEXIST, "nvmf subsystem %s: nsid %u in use", nqn, nsid);
    }
    if (!rc) {
        ns->nsid = nsid;
        if (!atomic_load(&ss->ana_state[anagrpid]))
            atomic_store(&ss->ana_state[anagrpid], 1);
        atomic_store_explicit(&ss->ns[nsid], ns, memory_order_release);
        subsys_notify(t, ss, AEN_NS_CHANGED, nsid);
    }
    pthread_mutex_unlock(&t->lock);
    if (rc) {
        ns_free(ns);
        return rc;
    }
    nvmf_kick_reactors(t);
    return (int)nsid;
}

static uint64_t ns_inflight_fn(void *arg) { return ns_inflight(arg); }

/* The old namespace's I/O drains before its bdev closes (as srrs_nvmf_ns_remove). */
static void ns_retire(struct srrs_nvmf_tgt *t, struct nvmf_ns *ns)
{
    nvmf_kick_reactors(t);
    reactors_barrier(t);
    if (wait_until_zero(ns_inflight_fn, ns, 10000)) {
        ns_free(ns);
    } else {
        pthread_mutex_lock(&t->lock);
        ns->next_dead = t->dead_ns;
        t->dead_ns = ns;
        pthread_mutex_unlock(&t->lock);
    }
}

/* Under t->lock: subsystem nqn's namespace nsid, or an error that says which is missing. */
static int ns_lookup(struct srrs_nvmf_tgt *t, const char *nqn, uint32_t nsid,
                     struct nvmf_subsys **ss, struct nvmf_ns **ns)
{
    int rc = subsys_op(t, nqn, ss);
    if (rc)
        return rc;
    *ns = nsid >= 1 && nsid <= NVMF_MAX_NS ? atomic_load(&(*ss)->ns[nsid]) : NULL;
    return *ns ? 0 : srrs_err(-ENOENT, "nvmf subsystem %s: no namespace %u", nqn, nsid);
}

int srrs_nvmf_ns_remove(struct srrs_nvmf_tgt *t, const char *nqn, uint32_t nsid)
{
    struct nvmf_subsys *ss;
    struct nvmf_ns *ns = NULL;
    pthread_mutex_lock(&t->lock);
    int rc = ns_lookup(t, nqn, nsid, &ss, &ns);
    if (!rc) {
        atomic_store(&ss->ns[nsid], NULL);
        subsys_notify(t, ss, AEN_NS_CHANGED, nsid);
    }
    pthread_mutex_unlock(&t->lock);
    if (rc)
        return rc;
    ns_retire(t, ns);
    return 0;
}

int srrs_nvmf_ns_drain(struct srrs_nvmf_tgt *t, const char *nqn, uint32_t nsid, int timeout_ms)
{
    struct nvmf_subsys *ss;
    struct nvmf_ns *ns = NULL;
    pthread_mutex_lock(&t->lock);
    int rc = ns_lookup(t, nqn, nsid, &ss, &ns);
    pthread_mutex_unlock(&t->lock);
    if (rc)
        return rc;
    /* The namespace stays (it is freed only by remove/replace on this control
     * thread's side of the target lock, which the caller serialises with). */
    nvmf_kick_reactors(t);
    reactors_barrier(t);
    if (!wait_until_zero(ns_inflight_fn, ns, timeout_ms > 0 ? timeout_ms : 1))
        return srrs_err(-ETIMEDOUT, "nvmf subsystem %s: namespace %u still has I/O in flight",
                        nqn, nsid);
    return 0;
}

int srrs_nvmf_ns_replace(struct srrs_nvmf_tgt *t, const char *nqn, uint32_t nsid,
                         const char *bdev)
{
    if (nsid < 1 || nsid > NVMF_MAX_NS)
        return srrs_err(-EINVAL, "nvmf: nsid must be 1..%d", NVMF_MAX_NS);
    struct nvmf_ns *ns, *old = NULL;
    int rc = ns_open(t, bdev, &ns);
    if (rc)
        return rc;
    struct srrs_bdev *b = ns->bdev;
    ns->nsid = nsid;
    struct nvmf_subsys *ss;
    pthread_mutex_lock(&t->lock);
    rc = ns_lookup(t, nqn, nsid, &ss, &old);
    if (!rc) {
        if (old->block_size != b->block_size)
            rc = srrs_err(-EINVAL, "nvmf subsystem %s: namespace %u has %u-byte blocks, %s %u",
                          nqn, nsid, old->block_size, bdev, b->block_size);
        for (uint32_t i = 1; i <= NVMF_MAX_NS && !rc; i++) {
            struct nvmf_ns *o = atomic_load(&ss->ns[i]);
            if (o && i != nsid && o->bdev == b)
                rc = srrs_err(-EEXIST, "nvmf subsystem %s: namespace %u already has this bdev",
                              nqn, i);
        }
    }
    if (!rc) {
        memcpy(ns->uuid, old->uuid, 16);
        ns->anagrpid = old->anagrpid;
        atomic_store_explicit(&ss->ns[nsid], ns, memory_order_release);
        subsys_notify(t, ss, AEN_NS_CHANGED, nsid);
    }
    pthread_mutex_unlock(&t->lock);
    if (rc) {
        ns_free(ns);
        return rc;
    }
    ns_retire(t, old);
    return 0;
}

int srrs_nvmf_ana_set(struct srrs_nvmf_tgt *t, const char *nqn, uint32_t anagrpid, int state)
{
    if (anagrpid < 1 || anagrpid > NVMF_MAX_ANA)
        return srrs_err(-EINVAL, "nvmf: ANA group must be 1..%d", NVMF_MAX_ANA);
    if (state < 1 || state > 4)
        return srrs_err(-EINVAL, "nvmf: ANA state must be 1 optimized, 2 non-optimized, "
                                 "3 inaccessible or 4 persistent loss");
    struct nvmf_subsys *ss;
    pthread_mutex_lock(&t->lock);
    int rc = subsys_op(t, nqn, &ss);
    if (!rc) {
        atomic_store(&ss->ana_state[anagrpid], (uint8_t)state);
        ss->ana_chgcnt++;
        subsys_notify(t, ss, AEN_ANA_CHANGE, 0);
    }
    pthread_mutex_unlock(&t->lock);
    if (!rc)
        nvmf_kick_reactors(t);
    return rc;
}

int srrs_nvmf_qpair_list(struct srrs_nvmf_tgt *t, struct srrs_nvmf_qpair_info *out, int max)
{
    int n = 0;
    pthread_mutex_lock(&t->lock);
    for (struct nvmf_conn *c = t->conns; c; c = nvmf_conn_next(c)) {
        if (!nvmf_conn_pub(c)->ctrlr)
            continue;
        if (n < max)
            nvmf_conn_info(c, &out[n]);
        n++;
    }
    pthread_mutex_unlock(&t->lock);
    return n;
}

int srrs_nvmf_tgt_get_stats(struct srrs_nvmf_tgt *t, struct srrs_nvmf_tgt_stats *o)
{
    memset(o, 0, sizeof(*o));
    o->accepted = atomic_load(&t->st_accepted);
    o->closed = atomic_load(&t->st_closed);
    o->proto_errors = atomic_load(&t->st_proto_errors);
    o->kato_expired = atomic_load(&t->st_kato_expired);
    o->refused = atomic_load(&t->st_refused);
    o->evicted = atomic_load(&t->st_evicted);
    o->handshake_timeouts = atomic_load(&t->st_hs_timeouts);
    pthread_mutex_lock(&t->hs_lock);
    o->handshaking = t->hs_count;
    pthread_mutex_unlock(&t->hs_lock);
    pthread_mutex_lock(&t->lock);
    o->ctrlrs = t->nctrlrs;
    o->conns = t->nconns;
    pthread_mutex_unlock(&t->lock);
    return 0;
}

/* ---- Fabrics commands --------------------------------------------------------- */

#define IPO_DATA(field) ((1u << 16) | (uint32_t)offsetof(struct nvmf_connect_data, field))

/* A Connect's answer: status and DW0 (the cntlid, or where a bad field is). */
struct connect_res {
    uint16_t st;
    uint32_t res;
};

/* The parts of a Connect checked before the target is looked at: 0 or the
 * status (out->res: the offending field). */
static uint16_t connect_check(struct nvmf_req *req, const struct nvmf_connect_data *d,
                              struct connect_res *out)
{
    struct srrs_nvmf_tgt *t = nvmf_conn_pub(req->c)->tgt;
    const struct nvme_sqe *cmd = &req->cmd;
    uint32_t sqsize = cmd->cdw11 & 0xffff;
    if (cmd->cdw10 & 0xffff) /* RECFMT */
        return out->st = SC_CONNECT_FORMAT;
    out->st = SC_CONNECT_INVALID_PARAM;
    if (!memchr(d->subnqn, 0, sizeof(d->subnqn)) || !d->subnqn[0])
        out->res = IPO_DATA(subnqn);
    /* An empty host NQN (SPDK's initiator sends one unless told otherwise) is
     * accepted as the Linux and SPDK targets do: it can only match a subsystem
     * that allows any host, never a named allow-list entry. */
    else if (!memchr(d->hostnqn, 0, sizeof(d->hostnqn)) || strlen(d->hostnqn) > 223)
        out->res = IPO_DATA(hostnqn);
    else if (sqsize < 1 || sqsize + 1 > t->opts.max_queue_depth)
        out->res = 44;
    else if ((cmd->cdw10 >> 16) > NVMF_MAX_IOQ)
        out->res = 42;
    else
        out->st = 0;
    return out->st;
}

/* Under t->lock: an admin queue's Connect makes a controller in the first
 * free cntlid slot (round-robin over the range). NULL: out says why. */
static struct nvmf_ctrlr *connect_new_ctrlr_locked(struct srrs_nvmf_tgt *t, struct nvmf_subsys *ss,
                                                   const struct nvmf_connect_data *d,
                                                   uint32_t kato_ms, int auth,
                                                   struct connect_res *out)
{
    if (d->cntlid != 0xFFFF && d->cntlid != 0xFFFE) {
        out->st = SC_CONNECT_INVALID_PARAM;
        out->res = IPO_DATA(cntlid);
        return NULL;
    }
    uint32_t range = cntlid_range(t), slot = UINT32_MAX;
    for (uint32_t k = 0; k < range; k++) {
        uint32_t i = (t->next_cntlid - t->opts.cntlid_min + k) % range;
        if (!t->ctrlrs[i]) {
            slot = i;
            break;
        }
    }
    struct nvmf_ctrlr *ct = slot == UINT32_MAX ? NULL : calloc(1, sizeof(*ct));
    if (!ct) {
        out->st = SC_CONNECT_BUSY;
        return NULL;
    }
    ct->tgt = t;
    ct->ss = ss;
    ct->cntlid = (uint16_t)(t->opts.cntlid_min + slot);
    t->next_cntlid = ct->cntlid + 1u > t->opts.cntlid_max ? t->opts.cntlid_min : ct->cntlid + 1u;
    memcpy(ct->hostnqn, d->hostnqn, strlen(d->hostnqn) + 1); /* <= 223, checked */
    memcpy(ct->hostid, d->hostid, 16);
    atomic_store(&ct->refs, 1);
    ct->kato_ms = kato_ms;
    ct->last_ka = srrs_ticks();
    ct->num_io_queues = t->opts.max_io_queues;
    ct->vwc = true;
    ct->auth = auth > 0;
    t->ctrlrs[slot] = ct;
    t->nctrlrs++;
    out->res = ct->cntlid;
    return ct;
}

/* Under t->lock: an I/O queue's Connect joins the live controller of the same
 * subsystem, host NQN and host ID, once per qid. *auth: it must authenticate. */
static struct nvmf_ctrlr *connect_join_ctrlr_locked(struct srrs_nvmf_tgt *t, struct nvmf_subsys *ss,
                                                    const struct nvmf_connect_data *d,
                                                    uint16_t qid, struct nvmf_conn *c, int *auth,
                                                    struct connect_res *out)
{
    struct nvmf_ctrlr *ct = ctrlr_find(t, d->cntlid);
    out->st = SC_CONNECT_INVALID_PARAM;
    if (!ct || ct->ss != ss || atomic_load(&ct->dead) || strcmp(ct->hostnqn, d->hostnqn) ||
        memcmp(ct->hostid, d->hostid, 16)) {
        out->res = IPO_DATA(cntlid);
        return NULL;
    }
    if (qid > ct->num_io_queues || ct->ioq[qid]) {
        out->res = 42;
        return NULL;
    }
    out->st = 0;
    ct->ioq[qid] = c;
    atomic_fetch_add(&ct->refs, 1);
    out->res = ct->cntlid;
    *auth |= ct->auth; /* every I/O queue authenticates, as the admin queue did */
    return ct;
}

/* Under t->lock: the subsystem and host checks, then the controller. */
static struct nvmf_ctrlr *connect_locked(struct nvmf_req *req, const struct nvmf_connect_data *d,
                                         int *auth, struct connect_res *out)
{
    struct srrs_nvmf_tgt *t = nvmf_conn_pub(req->c)->tgt;
    uint16_t qid = (uint16_t)(req->cmd.cdw10 >> 16);
    struct nvmf_subsys *ss = subsys_find(t, d->subnqn);
    if (!ss) {
        out->st = SC_CONNECT_INVALID_PARAM;
        out->res = IPO_DATA(subnqn);
        return NULL;
    }
    if (!host_allowed(ss, d->hostnqn) || (*auth = nvmf_auth_connect_check(ss, d->hostnqn)) < 0) {
        out->st = SC_CONNECT_INVALID_HOST;
        out->res = IPO_DATA(hostnqn);
        return NULL;
    }
    if (qid == 0)
        return connect_new_ctrlr_locked(t, ss, d, req->cmd.cdw12, *auth, out);
    return connect_join_ctrlr_locked(t, ss, d, qid, req->c, auth, out);
}

/* The queue is now the controller's: its size, SQ flow control and, when the
 * host must authenticate, DH-HMAC-CHAP state (AUTHREQ.ATR in the answer). */
static void connect_attach(struct nvmf_req *req, struct nvmf_ctrlr *ct, int auth,
                           struct connect_res *out)
{
    struct nvmf_conn_pub *cp = nvmf_conn_pub(req->c);
    uint16_t qid = (uint16_t)(req->cmd.cdw10 >> 16);
    cp->ctrlr = ct;
    cp->qid = qid;
    cp->sqsize = (uint16_t)((req->cmd.cdw11 & 0xffff) + 1);
    cp->sqhd_disabled = (req->cmd.cdw11 >> 16) & 0x04; /* CATTR */
    if (auth > 0 && nvmf_auth_qp_init(cp)) {
        out->st = SC_CONNECT_BUSY;
        cp->close_after_tx = true;
    } else if (auth > 0) {
        out->res |= NVMF_CONNECT_ATR;
    }
    srrs_event_post(cp->tgt->core, SRRS_EV_CONN_UP, ct->cntlid, qid, cp->peer,
                    "%s queue %u of controller %u connected to %s by %s",
                    qid ? "I/O" : "admin", qid, ct->cntlid, ct->ss->nqn, ct->hostnqn);
}

static void fabrics_connect(struct nvmf_req *req)
{
    struct nvmf_conn_pub *cp = nvmf_conn_pub(req->c);
    struct srrs_nvmf_tgt *t = cp->tgt;
    if (cp->ctrlr) {
        nvmf_req_complete(req, SC_CMD_SEQ_ERROR, 0);
        return;
    }
    if (!req->h2c || req->dlen != sizeof(struct nvmf_connect_data) || !req->buf) {
        nvmf_req_complete(req, SC_SGL_LEN_INVALID, 0);
        return;
    }
    struct nvmf_connect_data d;
    memcpy(&d, req->buf, sizeof(d));
    struct connect_res out = {0, 0};
    if (connect_check(req, &d, &out)) {
        nvmf_req_complete(req, out.st, out.res);
        return;
    }
    int auth = 0;
    pthread_mutex_lock(&t->lock);
    struct nvmf_ctrlr *ct = connect_locked(req, &d, &auth, &out);
    pthread_mutex_unlock(&t->lock);
    if (ct)
        connect_attach(req, ct, auth, &out);
    nvmf_req_complete(req, out.st, out.res);
}

static uint64_t prop_cap(const struct srrs_nvmf_tgt *t)
{
    uint64_t mqes = t->opts.max_queue_depth - 1;
    return mqes | 1ull << 16 /* CQR */ | 15ull << 24 /* TO: 7.5 s */ | 1ull << 37 /* NVM set */;
}

static void fabrics_prop(struct nvmf_req *req, bool set)
{
    struct nvmf_conn_pub *cp = nvmf_conn_pub(req->c);
    struct nvmf_ctrlr *ct = cp->ctrlr;
    const struct nvme_sqe *cmd = &req->cmd;
    uint8_t size8 = cmd->cdw10 & 1; /* attrib: 0 = 4 bytes, 1 = 8 bytes */
    uint32_t off = cmd->cdw11;
    if (cp->qid != 0) {
        nvmf_req_complete(req, SC_INVALID_FIELD, 0);
        return;
    }
    if (!set) {
        uint64_t v;
        switch (off) {
        case PROP_CAP:
            v = prop_cap(cp->tgt);
            break;
        case PROP_VS:
            v = 0x00010400;
            break;
        case PROP_CC:
            v = atomic_load(&ct->cc);
            break;
        case PROP_CSTS:
            v = atomic_load(&ct->csts);
            break;
        default:
            nvmf_req_complete(req, SC_INVALID_FIELD, 0);
            return;
        }
        nvmf_req_complete(req, 0, size8 ? v : (uint32_t)v);
        return;
    }
    if (off != PROP_CC || size8) {
        nvmf_req_complete(req, SC_INVALID_FIELD, 0);
        return;
    }
    uint32_t cc = cmd->cdw12, old = atomic_load(&ct->cc), csts = atomic_load(&ct->csts);
    if ((cc & 1) && !(old & 1))
        csts |= 1;
    if (!(cc & 1) && (old & 1))
        csts &= ~1u; /* reset */
    if (cc >> 14 & 3)
        csts = (csts & ~0xCu) | 2u << 2; /* shutdown complete at once: writes are not cached */
    else
        csts &= ~0xCu;
    atomic_store(&ct->cc, cc);
    atomic_store(&ct->csts, csts);
    nvmf_req_complete(req, 0, 0);
    /* A reset (EN 1 -> 0) or a shutdown ends the parked AERs: each gets its one
     * completion now, else they would hold the AER limit across the reset and
     * later complete under command IDs the host has reused. */
    if (((old & 1) && !(cc & 1)) || ((cc >> 14 & 3) && !(old >> 14 & 3))) {
        struct nvmf_req *aer;
        while ((aer = nvmf_aer_take(req->c)))
            nvmf_req_complete(aer, SC_SQ_DELETED, 0);
        ct->aen_masked = 0;
    }
}

void nvmf_fabrics_exec(struct nvmf_req *req)
{
    struct nvmf_conn_pub *cp = nvmf_conn_pub(req->c);
    uint8_t fctype = req->cmd.nsid & 0xff;
    if (fctype == FCTYPE_CONNECT) {
        fabrics_connect(req);
        return;
    }
    if (!cp->ctrlr) {
        nvmf_req_complete(req, SC_CMD_SEQ_ERROR, 0);
        return;
    }
    if (fctype == FCTYPE_AUTH_SEND || fctype == FCTYPE_AUTH_RECV) {
        nvmf_auth_exec(req, fctype == FCTYPE_AUTH_SEND);
        return;
    }
    if (cp->unauth) {
        nvmf_req_complete(req, SC_AUTH_REQUIRED, 0);
        return;
    }
    switch (fctype) {
    case FCTYPE_PROP_GET:
        fabrics_prop(req, false);
        return;
    case FCTYPE_PROP_SET:
        fabrics_prop(req, true);
        return;
    case FCTYPE_DISCONNECT:
        cp->close_after_tx = true;
        nvmf_req_complete(req, 0, 0);
        return;
    default:
        nvmf_req_complete(req, SC_INVALID_FIELD, 0);
    }
}

void nvmf_ctrlr_detach(struct nvmf_conn *c)
{
    struct nvmf_conn_pub *cp = nvmf_conn_pub(c);
    struct nvmf_ctrlr *ct = cp->ctrlr;
    struct srrs_nvmf_tgt *t = cp->tgt;
    bool kick = false;
    pthread_mutex_lock(&t->lock);
    if (cp->qid && ct->ioq[cp->qid] == c)
        ct->ioq[cp->qid] = NULL;
    if (cp->qid == 0 && !atomic_exchange(&ct->dead, true))
        kick = true; /* the admin queue is the controller: its I/O queues go too */
    if (atomic_fetch_sub(&ct->refs, 1) == 1) {
        t->ctrlrs[ct->cntlid - t->opts.cntlid_min] = NULL;
        t->nctrlrs--;
        free(ct);
    }
    pthread_mutex_unlock(&t->lock);
    nvmf_auth_qp_free(cp);
    cp->ctrlr = NULL;
    if (kick)
        nvmf_kick_reactors(t);
}

/* ---- asynchronous events and keep-alive --------------------------------------- */

static void aen_deliver(struct nvmf_conn *c)
{
    struct nvmf_ctrlr *ct = nvmf_conn_pub(c)->ctrlr;
    static const struct {
        uint32_t bit, cfg, info, lid;
    } kinds[] = {{AEN_NS_CHANGED, 1u << 8, 0x00, 0x04}, {AEN_ANA_CHANGE, 1u << 11, 0x03, 0x0C},
                 {AEN_DISC_CHANGED, 1u << 31, 0xF0, 0x70}};
    for (size_t k = 0; k < SRRS_ARRAY_SIZE(kinds); k++) {
        uint32_t pend = atomic_load(&ct->aen_pending);
        if (!(pend & kinds[k].bit))
            continue;
        if (!(ct->aen_cfg & kinds[k].cfg)) {
            atomic_fetch_and(&ct->aen_pending, ~kinds[k].bit); /* host did not ask for it */
            continue;
        }
        if (ct->aen_masked & kinds[k].bit)
            continue; /* wait until the host reads the log */
        struct nvmf_req *aer = nvmf_aer_take(c);
        if (!aer)
            return;
        atomic_fetch_and(&ct->aen_pending, ~kinds[k].bit);
        ct->aen_masked |= kinds[k].bit;
        nvmf_req_complete(aer, 0, 2u /* notice */ | kinds[k].info << 8 | kinds[k].lid << 16);
    }
}

void nvmf_ctrlr_admin_tick(struct nvmf_conn *c, uint64_t now)
{
    struct nvmf_conn_pub *cp = nvmf_conn_pub(c);
    struct nvmf_ctrlr *ct = cp->ctrlr;
    /* A keep-alive interval of grace over KATO: hosts send at KATO or KATO/2. */
    if (ct->kato_ms && now - ct->last_ka > srrs_us_to_ticks(((uint64_t)ct->kato_ms + 1000) * 1000)) {
        atomic_fetch_add(&cp->tgt->st_kato_expired, 1);
        srrs_event_post(cp->tgt->core, SRRS_EV_KATO_EXPIRED, ct->cntlid, ct->kato_ms, cp->peer,
                        "controller %u of %s: no keep-alive for %u ms; tearing it down",
                        ct->cntlid, ct->ss->nqn, ct->kato_ms);
        atomic_store(&ct->dead, true);
        nvmf_conn_close(c, "keep-alive timeout");
        nvmf_kick_reactors(cp->tgt);
        return;
    }
    aen_deliver(c);
}

/* ---- admin commands ------------------------------------------------------------- */

/* Sends len bytes of src (zero-filled past len) as the command's data. */
static void reply_data(struct nvmf_req *req, const void *src, size_t len, uint64_t result)
{
    if (!req->c2h || !req->dlen) {
        nvmf_req_complete(req, SC_SGL_LEN_INVALID, 0);
        return;
    }
    uint8_t *buf = nvmf_req_data_buf(req, req->dlen);
    if (!buf) {
        nvmf_req_complete(req, SC_INTERNAL, 0);
        return;
    }
    size_t n = SRRS_MIN(len, (size_t)req->dlen);
    memcpy(buf, src, n);
    memset(buf + n, 0, req->dlen - n);
    nvmf_req_complete(req, 0, result);
}

static void identify_ctrlr(struct nvmf_req *req, struct nvmf_ctrlr *ct)
{
    const struct srrs_nvmf_tgt *t = ct->tgt;
    const struct nvmf_subsys *ss = ct->ss;
    bool disc = ss->discovery;
    uint8_t d[4096] = {0};
    put16(d + 0, 0x1d1d); /* VID/SSVID: not a PCI device */
    put16(d + 2, 0x1d1d);
    put_str(d + 4, 20, ss->serial, ' ');
    put_str(d + 24, 40, ss->model, ' ');
    put_str(d + 64, 8, "0.1.0", ' ');
    d[72] = 6;                                    /* RAB */
    d[76] = disc ? 0 : 0x0B;                      /* CMIC: multi-port, multi-ctrl, ANA */
    d[77] = 8;                                    /* MDTS: 2^8 x 4 KiB = 1 MiB */
    put16(d + 78, ct->cntlid);
    put32(d + 80, 0x00010400);
    put32(d + 92, disc ? 1u << 31 : (1u << 8 | 1u << 11)); /* OAES: log change; ns attr, ANA */
    put32(d + 96, 1);                             /* CTRATT: 128-bit host identifier */
    d[111] = disc ? 2 : 1;                        /* CNTRLTYPE */
    d[258] = 3;                                   /* ACL */
    d[259] = NVMF_MAX_AER - 1;                    /* AERL */
    d[260] = 0x03;                                /* FRMW: slot 1 read-only, 1 slot */
    d[261] = disc ? 0x04 : 0x06;                  /* LPA: effects log, extended data */
    put16(d + 266, 0x157);                        /* WCTEMP */
    put16(d + 268, 0x175);                        /* CCTEMP */
    put16(d + 320, 10);                           /* KAS: 1 s granularity */
    if (!disc) {
        d[343] = 10;                              /* ANATT */
        d[344] = 0x1F;                            /* ANACAP: all states, change state */
        put32(d + 345, NVMF_MAX_ANA);             /* ANAGRPMAX */
        put32(d + 349, NVMF_MAX_ANA);             /* NANAGRPID */
        d[512] = 0x66;
        d[513] = 0x44;
        put32(d + 516, NVMF_MAX_NS);              /* NN */
        put16(d + 520, 1u << 2 | 1u << 3);        /* ONCS: DSM, write zeroes */
        d[525] = 0x05;                            /* VWC present, no broadcast flush */
        put32(d + 540, NVMF_MAX_NS);              /* MNAN */
    }
    put16(d + 514, (uint16_t)t->opts.max_queue_depth); /* MAXCMD */
    put32(d + 536, 1u | 1u << 20);                /* SGLS: supported, offsets */
    put_str(d + 768, 256, ss->nqn, 0);
    put32(d + 1792, (64 + NVMF_ICDSZ) / 16);      /* IOCCSZ */
    put32(d + 1796, 1);                           /* IORCSZ */
    d[1803] = 1;                                  /* MSDBD */
    reply_data(req, d, sizeof(d), 0);
}

static void identify_ns(struct nvmf_req *req, const struct nvmf_ns *ns)
{
    uint8_t d[4096] = {0};
    if (ns) {
        put64(d + 0, ns->num_blocks);
        put64(d + 8, ns->num_blocks);
        put64(d + 16, ns->num_blocks);
        d[30] = 1;                            /* NMIC: shared */
        put32(d + 92, ns->anagrpid);
        memcpy(d + 104, ns->uuid, 16);        /* NGUID */
        d[130] = (uint8_t)ns->block_shift;    /* LBAF0.LBADS */
    }
    reply_data(req, d, sizeof(d), 0);
}

static void admin_identify(struct nvmf_req *req, struct nvmf_ctrlr *ct)
{
    uint8_t cns = req->cmd.cdw10 & 0xff;
    uint32_t nsid = req->cmd.nsid;
    struct nvmf_subsys *ss = ct->ss;
    if (cns == 0x01) {
        identify_ctrlr(req, ct);
        return;
    }
    if (ss->discovery) {
        nvmf_req_complete(req, SC_INVALID_FIELD, 0);
        return;
    }
    struct nvmf_ns *ns = nsid >= 1 && nsid <= NVMF_MAX_NS ? atomic_load(&ss->ns[nsid]) : NULL;
    switch (cns) {
    case 0x00:
        if (nsid < 1 || nsid > NVMF_MAX_NS)
            nvmf_req_complete(req, SC_INVALID_NS, 0);
        else
            identify_ns(req, ns); /* inactive: zeroes */
        return;
    case 0x02: {
        uint32_t list[1024] = {0}, n = 0;
        if (nsid >= 0xFFFFFFFE) {
            nvmf_req_complete(req, SC_INVALID_NS, 0);
            return;
        }
        for (uint32_t i = nsid + 1; i <= NVMF_MAX_NS; i++)
            if (atomic_load(&ss->ns[i]))
                list[n++] = i;
        reply_data(req, list, sizeof(list), 0);
        return;
    }
    case 0x03: {
        if (!ns) {
            nvmf_req_complete(req, SC_INVALID_NS, 0);
            return;
        }
        uint8_t d[4096] = {0};
        d[0] = 2; /* NGUID */
        d[1] = 16;
        memcpy(d + 4, ns->uuid, 16);
        d[20] = 3; /* UUID */
        d[21] = 16;
        memcpy(d + 24, ns->uuid, 16);
        d[40] = 4; /* CSI: NVM */
        d[41] = 1;
        reply_data(req, d, sizeof(d), 0);
        return;
    }
    case 0x05:   /* I/O command set specific namespace (NVM: nothing beyond CNS 0) */
    case 0x06: { /* I/O command set specific controller (NVM: no extra limits) */
        uint8_t csi = (uint8_t)(req->cmd.cdw11 >> 24);
        if (csi != 0 || (cns == 0x05 && !ns)) {
            nvmf_req_complete(req, cns == 0x05 && !ns ? SC_INVALID_NS : SC_INVALID_FIELD, 0);
            return;
        }
        uint8_t d[4096] = {0};
        reply_data(req, d, sizeof(d), 0);
        return;
    }
    default:
        nvmf_req_complete(req, SC_INVALID_FIELD, 0);
    }
}

static size_t log_ana(struct nvmf_ctrlr *ct, uint8_t *d, size_t cap, bool rgo)
{
    struct nvmf_subsys *ss = ct->ss;
    size_t off = 16;
    uint16_t ngrps = 0;
    for (uint32_t g = 1; g <= NVMF_MAX_ANA; g++) {
        uint8_t st = atomic_load(&ss->ana_state[g]);
        if (!st || off + 32 > cap)
            continue;
        uint8_t *desc = d + off;
        uint32_t nn = 0;
        off += 32;
        for (uint32_t i = 1; i <= NVMF_MAX_NS && !rgo; i++) {
            struct nvmf_ns *ns = atomic_load(&ss->ns[i]);
            if (ns && ns->anagrpid == g && off + 4 <= cap) {
                put32(d + off, i);
                off += 4;
                nn++;
            }
        }
        put32(desc, g);
        put32(desc + 4, nn);
        put64(desc + 8, ss->ana_chgcnt);
        desc[16] = st;
        ngrps++;
    }
    put64(d, ss->ana_chgcnt);
    put16(d + 8, ngrps);
    return off;
}

static size_t log_discovery(struct nvmf_ctrlr *ct, const char *local, uint8_t *d, size_t cap)
{
    struct srrs_nvmf_tgt *t = ct->tgt;
    char addrs[16][64];
    int ports[16];
    int nl = nvmf_listeners_snapshot(t, addrs, ports, 16);
    size_t off = 1024;
    uint64_t n = 0;
    for (int i = 0; i < NVMF_MAX_SUBSYS; i++) {
        struct nvmf_subsys *ss = t->subsys[i];
        if (!ss || ss->discovery || !host_allowed(ss, ct->hostnqn) || nvmf_disc_lists(t, ss->nqn))
            continue;
        for (int l = 0; l < nl; l++) {
            n++;
            if (off + 1024 > cap)
                continue;
            char port[32];
            snprintf(port, sizeof(port), "%d", ports[l]);
            /* A wildcard listener is reached at the address this host used. */
            bool any = !strcmp(addrs[l], "0.0.0.0") || !strcmp(addrs[l], "::");
            nvmf_disc_entry_put(d + off, (uint16_t)(l + 1), any && local[0] ? local : addrs[l],
                                port, ss->nqn);
            off += 1024;
        }
    }
    off = nvmf_disc_log_cluster(t, ct->hostnqn, local, d, off, cap, &n);
    put64(d, t->genctr);
    put64(d + 8, n);
    return off;
}

static size_t log_smart(struct nvmf_ctrlr *ct, uint8_t *d)
{
    uint64_t br = 0, bw = 0, rd = 0, wr = 0;
    int nr = srrs_core_num_reactors(ct->tgt->core);
    for (uint32_t i = 1; i <= NVMF_MAX_NS; i++) {
        struct nvmf_ns *ns = atomic_load(&ct->ss->ns[i]);
        if (!ns)
            continue;
        for (int r = 0; r < nr; r++) {
            const struct srrs_bdev_stats *s = &ns->bdev->stats[r];
            br += s->bytes_read;
            bw += s->bytes_written;
            rd += s->reads;
            wr += s->writes;
        }
    }
    put16(d + 1, 300); /* composite temperature, K */
    d[3] = 100;        /* available spare */
    d[4] = 10;         /* threshold */
    put64(d + 32, (br + 511999) / 512000);
    put64(d + 48, (bw + 511999) / 512000);
    put64(d + 64, rd);
    put64(d + 80, wr);
    put64(d + 176, ct->err_count);
    return 512;
}

static void admin_get_log(struct nvmf_req *req, struct nvmf_ctrlr *ct)
{
    const struct nvme_sqe *cmd = &req->cmd;
    struct srrs_nvmf_tgt *t = ct->tgt;
    uint8_t lid = cmd->cdw10 & 0xff, lsp = (cmd->cdw10 >> 8) & 0x7f;
    bool rae = cmd->cdw10 >> 15 & 1;
    uint64_t numd = ((uint64_t)(cmd->cdw10 >> 16) | (uint64_t)(cmd->cdw11 & 0xffff) << 16) + 1;
    uint64_t len = numd * 4, lpo = (uint64_t)cmd->cdw12 | (uint64_t)cmd->cdw13 << 32;
    if (len > req->dlen || (lpo & 3)) {
        nvmf_req_complete(req, SC_INVALID_FIELD, 0);
        return;
    }
    /* Room for 16,384 discovery entries (a host may reach thousands of cluster
     * volumes, two paths each): calloc of this size maps fresh zero pages, so
     * only the pages a log fills cost anything. Admin path: allocation is fine. */
    size_t cap = 1024 + 1024 * 16384;
    uint8_t *d = calloc(1, cap);
    if (!d) {
        nvmf_req_complete(req, SC_INTERNAL, 0);
        return;
    }
    size_t n = 0;
    bool disc = ct->ss->discovery;
    pthread_mutex_lock(&t->lock);
    switch (lid) {
    case 0x01: /* error information: one empty entry */
        n = 64;
        break;
    case 0x02:
        if (!disc)
            n = log_smart(ct, d);
        break;
    case 0x03:
        if (!disc) {
            d[0] = 1;
            put_str(d + 8, 8, "0.1.0", ' ');
            n = 512;
        }
        break;
    case 0x04:
        if (!disc) {
            uint32_t *l = (uint32_t *)d;
            if (ct->changed_overflow)
                l[0] = 0xFFFFFFFF;
            else
                memcpy(l, ct->changed_ns, ct->n_changed * 4);
            ct->n_changed = 0;
            ct->changed_overflow = false;
            if (!rae)
                ct->aen_masked &= ~(uint32_t)AEN_NS_CHANGED;
            n = 4096;
        }
        break;
    case 0x05: {
        uint32_t *e = (uint32_t *)d;
        static const uint8_t adm[] = {ADM_GET_LOG_PAGE, ADM_IDENTIFY, ADM_ABORT, ADM_SET_FEATURES,
                                      ADM_GET_FEATURES, ADM_AER, ADM_KEEP_ALIVE};
        for (size_t i = 0; i < sizeof(adm); i++)
            e[adm[i]] = 1;
        if (!disc) {
            e[256 + IO_FLUSH] = 1;
            e[256 + IO_READ] = 1;
            e[256 + IO_WRITE] = 1 | 2;        /* CSUPP, LBCC */
            e[256 + IO_WRITE_ZEROES] = 1 | 2;
            e[256 + IO_DSM] = 1 | 2;
        }
        n = 4096;
        break;
    }
    case 0x0C:
        if (!disc) {
            n = log_ana(ct, d, cap, lsp & 1);
            if (!rae)
                ct->aen_masked &= ~(uint32_t)AEN_ANA_CHANGE;
        }
        break;
    case 0x70:
        if (disc) {
            n = log_discovery(ct, nvmf_conn_pub(req->c)->local_addr, d, cap);
            if (!rae)
                ct->aen_masked &= ~(uint32_t)AEN_DISC_CHANGED;
        }
        break;
    }
    pthread_mutex_unlock(&t->lock);
    if (!n) {
        free(d);
        nvmf_req_complete(req, SC_INVALID_LOG_PAGE, 0);
        return;
    }
    /* Variable-length logs (ANA, discovery, changed namespaces) are read by
     * hosts in chunks up to their maximum size: past our end is zeroes. */
    reply_data(req, d + SRRS_MIN(lpo, (uint64_t)n), lpo >= n ? 0 : SRRS_MIN(n - lpo, len), 0);
    free(d);
    aen_deliver(req->c);
}

static void admin_features(struct nvmf_req *req, struct nvmf_ctrlr *ct, bool set)
{
    const struct nvme_sqe *cmd = &req->cmd;
    uint8_t fid = cmd->cdw10 & 0xff;
    uint32_t v = cmd->cdw11;
    if (set && (cmd->cdw10 >> 31)) {
        nvmf_req_complete(req, SC_FEAT_NOT_SAVEABLE, 0);
        return;
    }
    if (!set && ((cmd->cdw10 >> 8) & 7) == 3) { /* supported capabilities */
        nvmf_req_complete(req, 0, fid == 0x07 || fid == 0x0B || fid == 0x0F || fid == 0x06 ? 4 : 0);
        return;
    }
    uint32_t res = 0;
    switch (fid) {
    case 0x07: /* number of queues */
        if (set) {
            if ((v & 0xffff) == 0xffff || (v >> 16) == 0xffff) {
                nvmf_req_complete(req, SC_INVALID_FIELD, 0);
                return;
            }
            uint32_t want = SRRS_MIN(v & 0xffff, v >> 16) + 1;
            ct->num_io_queues = SRRS_MIN(want, ct->tgt->opts.max_io_queues);
        }
        res = (ct->num_io_queues - 1) | (ct->num_io_queues - 1) << 16;
        break;
    case 0x0B:
        if (set)
            ct->aen_cfg = v;
        res = ct->aen_cfg;
        break;
    case 0x0F:
        if (set)
            ct->kato_ms = v;
        res = ct->kato_ms;
        break;
    case 0x06:
        if (ct->ss->discovery) {
            nvmf_req_complete(req, SC_INVALID_FIELD, 0);
            return;
        }
        if (set)
            ct->vwc = v & 1;
        res = ct->vwc;
        break;
    case 0x04:
        res = set ? 0 : 0x157;
        break;
    case 0x01:
    case 0x02:
    case 0x08:
    case 0x0A:
        res = 0;
        break;
    case 0x09:
        res = set ? 0 : (v & 0xffff);
        break;
    default:
        nvmf_req_complete(req, SC_INVALID_FIELD, 0);
        return;
    }
    nvmf_req_complete(req, 0, res);
    if (set && fid == 0x0B)
        aen_deliver(req->c);
}

void nvmf_admin_exec(struct nvmf_req *req)
{
    struct nvmf_conn_pub *cp = nvmf_conn_pub(req->c);
    struct nvmf_ctrlr *ct = cp->ctrlr;
    const struct nvme_sqe *cmd = &req->cmd;
    ct->last_ka = srrs_ticks();
    if (!(atomic_load(&ct->cc) & 1)) {
        nvmf_req_complete(req, SC_CMD_SEQ_ERROR, 0);
        return;
    }
    switch (cmd->opc) {
    case ADM_IDENTIFY:
        admin_identify(req, ct);
        return;
    case ADM_GET_LOG_PAGE:
        admin_get_log(req, ct);
        return;
    case ADM_GET_FEATURES:
        admin_features(req, ct, false);
        return;
    case ADM_SET_FEATURES:
        admin_features(req, ct, true);
        return;
    case ADM_AER:
        nvmf_conn_park_aer(req);
        aen_deliver(req->c);
        return;
    case ADM_KEEP_ALIVE:
        nvmf_req_complete(req, 0, 0);
        return;
    case ADM_ABORT: {
        /* Best effort: a parked AER is aborted; anything else either finishes
         * quickly or waits on the bdev, which cannot take it back, so it is
         * reported "not aborted" (dw0 bit 0). */
        uint16_t sqid = cmd->cdw10 & 0xffff, cid = (uint16_t)(cmd->cdw10 >> 16);
        struct nvmf_req *victim = sqid == 0 ? nvmf_aer_take_cid(req->c, cid) : NULL;
        if (victim)
            nvmf_req_complete(victim, SC_ABORT_REQ, 0);
        nvmf_req_complete(req, 0, victim ? 0 : 1);
        return;
    }
    default:
        nvmf_req_complete(req, SC_INVALID_OPCODE, 0);
    }
}
