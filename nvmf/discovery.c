/*
 * Cluster-wide discovery (docs/architecture.md, Exports: Discovery).
 *
 * The control plane pushes one table of subsystems exported anywhere in the
 * cluster (each subsystem once per NVMe/TCP address of its pair, with its
 * host allow-list); the discovery log page filters it per connecting host
 * here, in C, under tgt->lock: a log request costs no Python. A new table
 * bumps the log's generation counter and raises the discovery-log-change
 * AEN on every discovery controller, as does a change of the local
 * subsystems (nvmf_disc_changed).
 */
#include "nvmf/nvmf_int.h"

#include <stdlib.h>

struct nvmf_disc_rec {
    char subnqn[224];
    char traddr[64];
    char trsvcid[32];
    bool any_host;
    const char *hosts; /* '\n'-separated host NQNs, in the table's blob */
};

struct nvmf_disc_table {
    uint32_t n;
    struct nvmf_disc_rec *rec;
    char *blob;
};

static void copy_str(char *dst, size_t n, const char *s)
{
    snprintf(dst, n, "%s", s ? s : "");
}

static bool host_listed(const char *hosts, const char *hostnqn)
{
    size_t l = strlen(hostnqn);
    for (const char *p = hosts; p && *p;) {
        const char *e = strchr(p, '\n');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == l && !memcmp(p, hostnqn, l))
            return true;
        p = e ? e + 1 : p + n;
    }
    return false;
}

static void table_free(struct nvmf_disc_table *d)
{
    if (d) {
        free(d->rec);
        free(d->blob);
        free(d);
    }
}

static struct nvmf_disc_table *table_build(const struct srrs_nvmf_disc_entry *e, uint32_t n)
{
    size_t blob = 1;
    for (uint32_t i = 0; i < n; i++)
        blob += strlen(e[i].hosts ? e[i].hosts : "") + 1;
    struct nvmf_disc_table *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->rec = calloc(n ? n : 1, sizeof(*d->rec));
    d->blob = malloc(blob);
    if (!d->rec || !d->blob) {
        table_free(d);
        return NULL;
    }
    char *p = d->blob;
    for (uint32_t i = 0; i < n; i++) {
        struct nvmf_disc_rec *r = &d->rec[i];
        const char *h = e[i].hosts ? e[i].hosts : "";
        copy_str(r->subnqn, sizeof(r->subnqn), e[i].subnqn);
        copy_str(r->traddr, sizeof(r->traddr), e[i].traddr);
        copy_str(r->trsvcid, sizeof(r->trsvcid), e[i].trsvcid);
        r->any_host = host_listed(h, "*");
        r->hosts = p;
        p += sprintf(p, "%s", h) + 1;
    }
    d->n = n;
    return d;
}

int srrs_nvmf_discovery_set(struct srrs_nvmf_tgt *t, const struct srrs_nvmf_disc_entry *e,
                            uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (!e[i].subnqn || !e[i].subnqn[0] || strlen(e[i].subnqn) > 223 || !e[i].traddr ||
            !e[i].traddr[0] || strlen(e[i].traddr) > 63 || !e[i].trsvcid ||
            strlen(e[i].trsvcid) > 31)
            return srrs_err(-EINVAL, "nvmf discovery: entry %u: subnqn (1..223 bytes), traddr "
                            "(1..63) and trsvcid (..31) are required", i);
    struct nvmf_disc_table *d = table_build(e, n);
    if (!d)
        return srrs_err(-ENOMEM, "nvmf discovery: out of memory");
    pthread_mutex_lock(&t->lock);
    struct nvmf_disc_table *old = t->disc;
    t->disc = d;
    nvmf_disc_changed(t);
    pthread_mutex_unlock(&t->lock);
    table_free(old);
    return 0;
}

/* Under tgt->lock: a new log generation, and every discovery controller owes
 * its host the discovery-log-change notice (delivered by aen_deliver). */
void nvmf_disc_changed(struct srrs_nvmf_tgt *t)
{
    t->genctr++;
    uint32_t n = (uint32_t)t->opts.cntlid_max - t->opts.cntlid_min + 1;
    bool any = false;
    for (uint32_t i = 0; i < n; i++) {
        struct nvmf_ctrlr *ct = t->ctrlrs[i];
        if (ct && ct->ss->discovery) {
            atomic_fetch_or(&ct->aen_pending, AEN_DISC_CHANGED);
            any = true;
        }
    }
    if (any) /* the reactors deliver it now: their tick may be off (group_tick_presleep) */
        nvmf_kick_reactors(t);
}

/* Under tgt->lock: the cluster table lists nqn (its pair's addresses replace
 * this target's own listeners for it in the log). */
bool nvmf_disc_lists(const struct srrs_nvmf_tgt *t, const char *nqn)
{
    for (uint32_t i = 0; t->disc && i < t->disc->n; i++)
        if (!strcmp(t->disc->rec[i].subnqn, nqn))
            return true;
    return false;
}

/* One 1024-byte discovery log entry of a TCP subsystem port, into zeroes
 * (string fields are NUL-padded). */
void nvmf_disc_entry_put(uint8_t *e, uint16_t portid, const char *traddr, const char *trsvcid,
                         const char *subnqn)
{
    e[0] = 3;                               /* TRTYPE: TCP */
    e[1] = strchr(traddr, ':') ? 2 : 1;     /* ADRFAM */
    e[2] = 2;                               /* SUBTYPE: NVMe subsystem */
    e[3] = 0x04; /* TREQ: secure channel not specified (no TLS); SQ flow control disable ok */
    memcpy(e + 4, &portid, 2);              /* PORTID */
    uint16_t dyn = 0xFFFF, asqsz = 32;
    memcpy(e + 6, &dyn, 2);                 /* CNTLID: dynamic */
    memcpy(e + 8, &asqsz, 2);               /* ASQSZ */
    memcpy(e + 32, trsvcid, strnlen(trsvcid, 32));
    memcpy(e + 256, subnqn, strnlen(subnqn, 256));
    memcpy(e + 512, traddr, strnlen(traddr, 256));
}

/* Under tgt->lock: appends the cluster table's entries hostnqn may access
 * from offset off (entries past cap are counted in *n, not written). A
 * wildcard address (this controller's own wildcard listener) is reported at
 * local, the address the host connected to. Returns the new offset. */
size_t nvmf_disc_log_cluster(const struct srrs_nvmf_tgt *t, const char *hostnqn,
                             const char *local, uint8_t *d, size_t off, size_t cap, uint64_t *n)
{
    for (uint32_t i = 0; t->disc && i < t->disc->n; i++) {
        const struct nvmf_disc_rec *r = &t->disc->rec[i];
        if (!r->any_host && !host_listed(r->hosts, hostnqn))
            continue;
        (*n)++;
        if (off + 1024 > cap)
            continue;
        bool any = !strcmp(r->traddr, "0.0.0.0") || !strcmp(r->traddr, "::");
        nvmf_disc_entry_put(d + off, (uint16_t)(0x100 + i), any && local[0] ? local : r->traddr,
                            r->trsvcid, r->subnqn);
        off += 1024;
    }
    return off;
}

void nvmf_disc_free(struct srrs_nvmf_tgt *t)
{
    table_free(t->disc);
    t->disc = NULL;
}
