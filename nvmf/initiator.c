/*
 * NVMe/TCP initiator for the load generator and the tests. Setup (ICReq,
 * Connect, enable, Identify) runs on the control thread with blocking
 * sockets; the I/O phase runs on a reactor as a `struct srrs_bench_target`:
 * per poll, per queue, one recv and one sendmsg; read data lands straight in
 * the job's buffers, writes go in-capsule up to IOCCSZ, else by R2T/H2CData.
 *
 * Multipath (path_timeout_ms > 0): a host has up to H_MAX_PATHS paths, each
 * a controller of the same subsystem with its own admin queue and I/O
 * queues. Each I/O goes to the next ANA-optimized live path. An I/O that
 * completes with a path-related status (SCT 3, DNR clear) or whose
 * connection drops waits in the host's list (linked through the request
 * itself: no allocation) and is resubmitted on a usable path; it fails only
 * when none comes back within path_timeout_ms. A dropped path's queues are
 * closed on the reactor; its monitor thread reconnects it with backoff and
 * hands the new queues over in a reactor message. The same monitor reads
 * the path's ANA log every 100 ms on the admin queue (the reactor never
 * blocks on it), so a path that answered "inaccessible" comes back once its
 * controller says optimized again, and an admin queue that stops answering
 * drops the path (a keep-alive of sorts).
 */
#include "nvmf/nvmf_int.h"
#include "nvmf/pdu.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define H_RBUF (128u * 1024)
#define H_IOV_MAX 256
#define H_MAX_PATHS 8
#define H_ANA_POLL_MS 100
#define H_PROBE_TIMEOUT_MS 3000    /* admin queue silent this long: the path is dead */
#define H_BACKOFF_MIN_MS 50
#define H_BACKOFF_MAX_MS 1000
#define H_ANA_LOG_LEN 4096

/* ANA states (Asymmetric Namespace Access log, group descriptor byte 16). */
enum { ANA_OPTIMIZED = 1, ANA_NON_OPTIMIZED = 2, ANA_INACCESSIBLE = 3, ANA_PERSISTENT_LOSS = 4,
       ANA_CHANGE = 15 };

struct hq;
struct hpath;

struct hreq {
    struct srrs_bench_req *breq;
    struct hq *q;
    uint16_t cid;
    bool busy;
    bool write;
    bool lost;                  /* its connection broke: the command's fate is unknown */
    bool queued;                /* in the host's done list */
    uint8_t tx_pending;
    bool done_wait;             /* response arrived while PDUs were still queued */
    int status;
    uint16_t nvme;              /* NVMe status of the response (SC | SCT << 8 | DNR) */
    struct tx_pdu tx_cmd, tx_h2c;
    uint8_t h_cmd[PDU_HDR_ROOM];   /* header, digest and padding to the target's CPDA */
    uint8_t h_h2c[PDU_HDR_ROOM];
    struct hreq *next;
};

struct hq {
    struct srrs_nvmf_host *h;
    struct hpath *p;
    int fd;
    uint16_t qid;
    uint32_t nslots;
    struct pdu_fmt fmt;         /* digests and the target's CPDA, from the ICResp */
    struct hreq *slots;
    struct hreq *free;
    /* rx */
    uint8_t *rbuf;
    uint32_t rhead, rtail;
    int rx_state;               /* 0 header, 1 data, 2 data digest */
    uint8_t hdr[PDU_MAX_HDR];
    uint32_t hdr_have, hdr_need;
    struct pdu_geom rx_geo;     /* of the PDU being received (pdu_ch_check) */
    struct hreq *rx_req;
    uint8_t *rx_dst;
    uint32_t rx_left, rx_crc, pad_left;
    uint8_t ddg[4];
    uint32_t ddg_have;
    bool rx_success;
    /* tx */
    struct tx_pdu *tx_head, *tx_tail;
    uint32_t tx_off;
    bool broken;
    bool rx_ready;              /* epoll said readable (or epoll not in use: always) */
};

/* One controller of the subsystem. `state`, `installing` and `drop_req` are
 * the hand-off between the reactor (owns ioq while a job runs) and the
 * path's monitor thread (owns admin while a job runs). */
enum { P_DOWN = 0, P_LIVE = 1 };

struct hpath {
    struct srrs_nvmf_host *h;
    uint32_t idx;
    char addr[64];
    int port;
    struct hq admin;
    struct hq *ioq;             /* [h->nioq] while live */
    struct hq *next_ioq;        /* monitor -> reactor: a reconnection's queues */
    uint16_t cntlid;
    uint32_t anagrpid;
    uint32_t ioccsz_bytes;
    uint32_t mdts_bytes;
    _Atomic int state;          /* P_LIVE / P_DOWN: moved by the reactor (or setup) */
    _Atomic int installing;     /* next_ioq sent to the reactor, not taken yet */
    _Atomic int drop_req;       /* the monitor found the admin queue dead */
    /* seq << 8 | ANA state: the reactor bumps seq when an I/O reports a path
     * error, so an ANA log read that started before it does not undo it. */
    _Atomic uint64_t ana_word;
    bool failing;               /* reactor: a queue broke; dropped at the next delivery */
    /* monitor thread */
    pthread_t thread;
    bool thread_on;
    uint32_t backoff_ms;
    uint64_t next_try_ns;
    uint8_t *ana_log;
    /* counters (reactor while a job runs) */
    uint64_t ios, bytes, path_errors, drops, reconnects, resubmitted, errors;
};

struct srrs_nvmf_host {
    struct srrs_nvmf_host_opts o;
    char subnqn[224], hostnqn[224];
    struct srrs_nvmf_host_info info;
    struct hpath paths[H_MAX_PATHS];
    uint32_t npaths;
    uint32_t nioq;
    uint32_t qsize;             /* requested entries per I/O queue */
    uint8_t hostid[16];
    uint8_t nguid[16];
    uint32_t rr;
    int err;
    bool mp;                    /* path_timeout_ms > 0: retry, reconnect, wait */
    uint64_t path_timeout_ticks;
    /* Completions reach the job from our own poller, never from inside the
     * job's poll callback: the job may finish (and be freed by its waiting
     * thread) on the last one, and its poller must not run on after that. */
    struct hreq *done_head, *done_tail;
    struct srrs_poller *deliver;
    struct srrs_poller *wake;
    /* I/Os without a usable path, oldest first (linked through mp_next). */
    struct srrs_bench_req *wait_head, *wait_tail;
    /* Every I/O queue of every live path is in this epoll set: with several
     * queues, one epoll_wait per poll finds the readable ones instead of a
     * recv per queue. */
    int epfd;
    uint32_t nlive_q;
    struct srrs_reactor *reactor;  /* of the running job */
    _Atomic int mon_stop;
    uint64_t failovers, path_timeouts, max_wait_ticks;
    struct nvmf_host_keys keys; /* DH-HMAC-CHAP */
    bool has_keys;
};

/* ---- blocking setup --------------------------------------------------------- */

static int sock_connect(const char *addr, int port, int timeout_ms)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV};
    char serv[8];
    snprintf(serv, sizeof(serv), "%d", port);
    struct addrinfo *ai = NULL;
    if (getaddrinfo(addr, serv, &hints, &ai) || !ai)
        return srrs_err(-EINVAL, "nvmf host: cannot resolve %s", addr);
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        freeaddrinfo(ai);
        return srrs_err(-errno, "nvmf host: socket: %s", strerror(errno));
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    if (rc) {
        rc = -errno;
        close(fd);
        return srrs_err(rc, "nvmf host: connect to %s:%d: %s", addr, port, strerror(-rc));
    }
    return fd;
}

static int send_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t s = send(fd, b, n, MSG_NOSIGNAL);
        if (s < 0 && errno == EINTR)
            continue;
        if (s <= 0)
            return srrs_err(s < 0 ? -errno : -EPIPE, "nvmf host: send: %s",
                            s < 0 ? strerror(errno) : "closed");
        b += s;
        n -= (size_t)s;
    }
    return 0;
}

static int recv_all(int fd, void *p, size_t n)
{
    uint8_t *b = p;
    while (n) {
        ssize_t s = recv(fd, b, n, 0);
        if (s < 0 && errno == EINTR)
            continue;
        if (s <= 0)
            return srrs_err(s < 0 ? -errno : -ECONNRESET, "nvmf host: receive: %s",
                            s < 0 ? strerror(errno) : "connection closed by the target");
        b += s;
        n -= (size_t)s;
    }
    return 0;
}

/* A received header the rules refuse (nvmf/pdu.h): -EPROTO naming the field. */
static int bad_pdu(const struct pdu_ch *ch, uint16_t fes, uint32_t fei)
{
    return srrs_err(-EPROTO, "nvmf host: bad PDU (type %u): FES %u at byte %u", ch->type, fes, fei);
}

static int q_icreq(struct hq *q, bool hd, bool dd)
{
    uint8_t ic[PDU_IC_LEN];
    pdu_ic_build(ic, PDU_ICREQ, 0, hd, dd, 0);
    int rc = send_all(q->fd, ic, sizeof(ic));
    struct pdu_icresp r;
    if (!rc)
        rc = recv_all(q->fd, &r, sizeof(r));
    if (rc)
        return rc;
    struct pdu_fmt none = {0};
    struct pdu_geom g;
    uint32_t fei;
    uint16_t fes = pdu_ch_check(&r.ch, &none, &pdu_rules_host_ic, &g, &fei);
    if (!fes)
        fes = pdu_ic_check((const uint8_t *)&r, &fei);
    if (fes)
        return srrs_err(-EPROTO, "nvmf host: bad ICResp (type %u): FES %u at byte %u", r.ch.type,
                        fes, fei);
    q->fmt.hdgst = r.dgst & 1;
    q->fmt.ddgst = r.dgst & 2;
    q->fmt.align = pdu_align_bytes(r.cpda);
    if (q->h->info.maxh2cdata == 0 || r.maxh2cdata < q->h->info.maxh2cdata)
        q->h->info.maxh2cdata = r.maxh2cdata;
    if (r.maxh2cdata < 4096)
        return srrs_err(-EPROTO, "nvmf host: MAXH2CDATA %u is too small", r.maxh2cdata);
    return 0;
}

/* Reads one PDU header (with digest, and the padding after it) on a blocking
 * socket; *payload: the data bytes that follow (then their digest). */
static int read_pdu_hdr(struct hq *q, uint8_t *hdr, uint32_t *payload)
{
    int rc = recv_all(q->fd, hdr, PDU_CH_LEN);
    if (rc)
        return rc;
    struct pdu_ch *ch = (struct pdu_ch *)hdr;
    struct pdu_geom g;
    uint32_t fei;
    uint16_t fes = pdu_ch_check(ch, &q->fmt, &pdu_rules_host, &g, &fei);
    if (fes)
        return bad_pdu(ch, fes, fei);
    rc = recv_all(q->fd, hdr + PDU_CH_LEN, g.hl - PDU_CH_LEN);
    if (rc)
        return rc;
    if (ch->type == PDU_C2H_TERM)
        return srrs_err(-ECONNRESET, "nvmf host: target sent a termination request (FES %u)",
                        ((struct pdu_term *)hdr)->fes);
    if (g.hl > ch->hlen && !pdu_hdgst_ok(hdr))
        return srrs_err(-EPROTO, "nvmf host: header digest error");
    if (g.pad) {
        uint8_t pad[256];
        rc = recv_all(q->fd, pad, g.pad);
        if (rc)
            return rc;
    }
    *payload = g.dlen;
    return 0;
}

/* One command, synchronously: in-capsule data out, or data in. */
static int sync_cmd(struct hq *q, struct nvme_sqe *sqe, const void *out, uint32_t out_len, void *in,
                    uint32_t in_len, struct nvme_cqe *cqe)
{
    uint8_t hdr[SRRS_MAX(PDU_MAX_HDR, PDU_HDR_ROOM)] = {0};
    sqe->cid = 0x1000 | (sqe->cid & 0xfff);
    sqe->flags = 0x40; /* PSDT: SGL */
    if (out_len) {
        sqe->sgl.type = SGL_DATA_BLOCK_OFFSET;
        sqe->sgl.len = out_len;
    } else if (in_len) {
        sqe->sgl.type = SGL_TRANSPORT_DATA_BLOCK;
        sqe->sgl.len = in_len;
    }
    memcpy(hdr + PDU_CH_LEN, sqe, sizeof(*sqe));
    uint32_t hl = pdu_seal(&q->fmt, hdr, PDU_CMD, 0, out_len);
    int rc = send_all(q->fd, hdr, hl);
    if (!rc && out_len)
        rc = send_all(q->fd, out, out_len);
    if (!rc && out_len && q->fmt.ddgst) {
        uint32_t c = pdu_crc(0, out, out_len);
        rc = send_all(q->fd, &c, 4);
    }
    if (rc)
        return rc;
    for (;;) {
        uint32_t payload = 0;
        rc = read_pdu_hdr(q, hdr, &payload);
        if (rc)
            return rc;
        struct pdu_ch *ch = (struct pdu_ch *)hdr;
        if (ch->type == PDU_RSP) {
            memcpy(cqe, hdr + PDU_CH_LEN, sizeof(*cqe));
            return 0;
        }
        if (ch->type != PDU_C2H_DATA)
            return srrs_err(-EPROTO, "nvmf host: unexpected PDU type %u", ch->type);
        struct pdu_data *d = (struct pdu_data *)hdr;
        uint32_t dd = q->fmt.ddgst ? 4 : 0;
        if (d->len != payload || d->off > in_len || d->len > in_len - d->off)
            return srrs_err(-EPROTO, "nvmf host: C2HData outside the buffer");
        rc = recv_all(q->fd, (uint8_t *)in + d->off, d->len);
        uint32_t got = 0;
        if (!rc && dd)
            rc = recv_all(q->fd, &got, 4);
        if (rc)
            return rc;
        if (dd && got != pdu_crc(0, (uint8_t *)in + d->off, d->len))
            return srrs_err(-EPROTO, "nvmf host: data digest error");
        if (ch->flags & PDU_F_SUCCESS) {
            memset(cqe, 0, sizeof(*cqe));
            cqe->cid = sqe->cid;
            return 0;
        }
    }
}

static int cmd_status(const struct nvme_cqe *cqe) { return cqe->status >> 1; }

/* Authentication Send/Receive for nvmf_auth_host(): 0, -errno or the NVMe status. */
static int auth_xfer(void *arg, bool send, void *buf, uint32_t len)
{
    struct nvme_sqe sqe = {0};
    sqe.opc = OPC_FABRICS;
    sqe.nsid = send ? FCTYPE_AUTH_SEND : FCTYPE_AUTH_RECV;
    sqe.cdw10 = 0xE9u << 24 | 1u << 16 | 1u << 8; /* SECP DH-HMAC-CHAP, SPSP 1/1 */
    sqe.cdw11 = len;
    struct nvme_cqe cqe;
    int rc = send ? sync_cmd(arg, &sqe, buf, len, NULL, 0, &cqe)
                  : sync_cmd(arg, &sqe, NULL, 0, buf, len, &cqe);
    return rc ? rc : cmd_status(&cqe);
}

static int q_connect(struct srrs_nvmf_host *h, struct hq *q, uint16_t qid, uint32_t qsize,
                     uint16_t cntlid, uint32_t kato)
{
    struct nvmf_connect_data d;
    memset(&d, 0, sizeof(d));
    memcpy(d.hostid, h->hostid, 16);
    d.cntlid = cntlid;
    snprintf(d.subnqn, sizeof(d.subnqn), "%s", h->subnqn);
    snprintf(d.hostnqn, sizeof(d.hostnqn), "%s", h->hostnqn);
    struct nvme_sqe sqe = {0};
    sqe.opc = OPC_FABRICS;
    sqe.nsid = FCTYPE_CONNECT;
    sqe.cdw10 = (uint32_t)qid << 16;
    sqe.cdw11 = qsize - 1;
    sqe.cdw12 = kato;
    struct nvme_cqe cqe;
    int rc = sync_cmd(q, &sqe, &d, sizeof(d), NULL, 0, &cqe);
    if (rc)
        return rc;
    if (cmd_status(&cqe))
        return srrs_err(cmd_status(&cqe) == 0x184 ? -EACCES : -ECONNREFUSED,
                        "nvmf host: Connect of queue %u refused (status 0x%x, info 0x%x)", qid,
                        cmd_status(&cqe), cqe.dw0);
    q->qid = qid;
    if ((cqe.dw0 & NVMF_CONNECT_ATR) && !h->has_keys)
        return srrs_err(-EACCES, "nvmf host: queue %u: the target requires DH-HMAC-CHAP "
                        "authentication and no secret was given", qid);
    if (cqe.dw0 & NVMF_CONNECT_ATR) {
        rc = nvmf_auth_host(auth_xfer, q, &h->keys, qid, h->hostnqn, h->subnqn);
        if (rc)
            return rc;
    }
    return (int)(cqe.dw0 & 0xffff);
}

static int prop(struct hq *q, bool set, uint32_t off, uint64_t val, bool size8, uint64_t *out)
{
    struct nvme_sqe sqe = {0};
    sqe.opc = OPC_FABRICS;
    sqe.nsid = set ? FCTYPE_PROP_SET : FCTYPE_PROP_GET;
    sqe.cdw10 = size8 ? 1 : 0;
    sqe.cdw11 = off;
    sqe.cdw12 = (uint32_t)val;
    sqe.cdw13 = (uint32_t)(val >> 32);
    struct nvme_cqe cqe;
    int rc = sync_cmd(q, &sqe, NULL, 0, NULL, 0, &cqe);
    if (rc)
        return rc;
    if (cmd_status(&cqe))
        return srrs_err(-EIO, "nvmf host: property %s 0x%x failed (status 0x%x)",
                        set ? "set" : "get", off, cmd_status(&cqe));
    if (out)
        *out = (uint64_t)cqe.dw0 | (uint64_t)cqe.dw1 << 32;
    return 0;
}

static int admin_cmd(struct hq *q, uint8_t opc, uint32_t nsid, uint32_t cdw10, uint32_t cdw11,
                     void *in, uint32_t in_len, uint32_t *dw0)
{
    struct nvme_sqe sqe = {0};
    sqe.opc = opc;
    sqe.nsid = nsid;
    sqe.cdw10 = cdw10;
    sqe.cdw11 = cdw11;
    struct nvme_cqe cqe;
    int rc = sync_cmd(q, &sqe, NULL, 0, in, in_len, &cqe);
    if (rc)
        return rc;
    if (dw0)
        *dw0 = cqe.dw0;
    return cmd_status(&cqe) ? srrs_err(-EIO, "nvmf host: admin command 0x%x failed (status 0x%x)",
                                       opc, cmd_status(&cqe))
                            : 0;
}

static int q_open(struct hpath *p, struct hq *q, int timeout_ms)
{
    q->h = p->h;
    q->p = p;
    q->fd = sock_connect(p->addr, p->port, timeout_ms);
    if (q->fd < 0)
        return q->fd;
    return q_icreq(q, p->h->o.hdgst, p->h->o.ddgst);
}

static void q_close(struct hq *q)
{
    if (q->fd >= 0)
        close(q->fd);
    q->fd = -1;
    free(q->slots);
    free(q->rbuf);
    q->slots = NULL;
    q->rbuf = NULL;
}

static int enable_ctrlr(struct hq *a, int timeout_ms)
{
    int rc = prop(a, true, PROP_CC, 1u | 6u << 16 | 4u << 20, false, NULL);
    for (int i = 0; !rc && i < timeout_ms; i++) {
        uint64_t csts = 0;
        rc = prop(a, false, PROP_CSTS, 0, false, &csts);
        if (!rc && (csts & 1))
            return 0;
        usleep(1000);
    }
    return rc ? rc : srrs_err(-ETIMEDOUT, "nvmf host: controller did not become ready");
}

static void ioq_free(struct hq *ioq, uint32_t n)
{
    if (!ioq)
        return;
    for (uint32_t i = 0; i < n; i++)
        q_close(&ioq[i]);
    free(ioq);
}

static void host_free(struct srrs_nvmf_host *h)
{
    if (h->epfd >= 0)
        close(h->epfd);
    for (uint32_t i = 0; i < H_MAX_PATHS; i++) {
        struct hpath *p = &h->paths[i];
        q_close(&p->admin);
        ioq_free(p->ioq, h->nioq);
        ioq_free(p->next_ioq, h->nioq);
        free(p->ana_log);
    }
    explicit_bzero(&h->keys, sizeof(h->keys));
    free(h);
}

static void path_init(struct srrs_nvmf_host *h, struct hpath *p, const char *addr, int port)
{
    memset(p, 0, sizeof(*p));
    p->h = h;
    p->idx = (uint32_t)(p - h->paths);
    p->admin.fd = -1;
    p->port = port;
    snprintf(p->addr, sizeof(p->addr), "%s", addr);
    atomic_store(&p->state, P_DOWN);
}

static struct srrs_nvmf_host *host_new(const char *addr, int port, const char *subnqn,
                                       const char *hostnqn, int timeout_ms)
{
    struct srrs_nvmf_host *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->epfd = -1;
    snprintf(h->subnqn, sizeof(h->subnqn), "%s", subnqn);
    snprintf(h->hostnqn, sizeof(h->hostnqn), "%s",
             hostnqn && *hostnqn ? hostnqn
                                 : "nqn.2014-08.org.nvmexpress:uuid:5352532d-0000-4000-8000-000000000001");
    for (uint32_t k = 0; k < 4; k++) {
        uint32_t c = srrs_crc32c(k, h->hostnqn, strlen(h->hostnqn));
        memcpy(h->hostid + 4 * k, &c, 4);
    }
    for (uint32_t i = 0; i < H_MAX_PATHS; i++)
        path_init(h, &h->paths[i], "", 0);
    path_init(h, &h->paths[0], addr, port);
    h->npaths = 1;
    h->o.port = port;
    h->o.timeout_ms = timeout_ms > 0 ? timeout_ms : 5000;
    return h;
}

static inline uint8_t path_ana(struct hpath *p)
{
    return (uint8_t)atomic_load_explicit(&p->ana_word, memory_order_relaxed);
}

/* The state of the namespace's ANA group in an ANA log page (bounds-checked:
 * the page comes from the target). */
static int ana_log_state(const uint8_t *d, uint32_t len, uint32_t grp)
{
    if (!grp)
        return ANA_OPTIMIZED; /* no ANA reporting: always usable */
    uint16_t ngrps;
    memcpy(&ngrps, d + 8, 2);
    uint32_t off = 16;
    for (uint32_t i = 0; i < ngrps; i++) {
        if (off + 32 > len)
            break;
        uint32_t id, nn;
        memcpy(&id, d + off, 4);
        memcpy(&nn, d + off + 4, 4);
        uint8_t st = d[off + 16] & 0xf;
        if (id == grp)
            return st;
        if (nn > (len - off - 32) / 4)
            break;
        off += 32 + 4 * nn;
    }
    return ANA_INACCESSIBLE; /* our group is not reported: do not use the path */
}

static int read_ana(struct hpath *p, int *state)
{
    uint32_t numd = H_ANA_LOG_LEN / 4 - 1;
    memset(p->ana_log, 0, H_ANA_LOG_LEN);
    int rc = admin_cmd(&p->admin, ADM_GET_LOG_PAGE, 0xFFFFFFFF, 0x0C | (numd & 0xffff) << 16,
                       numd >> 16, p->ana_log, H_ANA_LOG_LEN, NULL);
    if (!rc)
        *state = ana_log_state(p->ana_log, H_ANA_LOG_LEN, p->anagrpid);
    return rc;
}

/* Blocking: the admin queue's ICReq, Connect (its cntlid), CAP and enable;
 * *qsize: the I/O queue size the controller allows (CAP.MQES + 1). */
static int path_admin_up(struct hpath *p, int to, uint32_t *qsize)
{
    struct srrs_nvmf_host *h = p->h;
    q_close(&p->admin);
    int rc = q_open(p, &p->admin, to);
    if (!rc) {
        rc = q_connect(h, &p->admin, 0, 32, 0xFFFF, h->o.kato_ms);
        if (rc >= 0) {
            p->cntlid = (uint16_t)rc;
            rc = 0;
        }
    }
    uint64_t cap = 0;
    if (!rc)
        rc = prop(&p->admin, false, PROP_CAP, 0, true, &cap);
    *qsize = SRRS_MIN(h->qsize, (uint32_t)(cap & 0xffff) + 1); /* CAP.MQES */
    if (!rc)
        rc = enable_ctrlr(&p->admin, to);
    return rc;
}

/* Blocking: Identify Controller (in-capsule and transfer limits; the first
 * path also fills the host's info) and the I/O queue count. id: 4 KiB. */
static int path_identify_ctrlr(struct hpath *p, bool first, uint8_t *id)
{
    struct srrs_nvmf_host *h = p->h;
    int rc = admin_cmd(&p->admin, ADM_IDENTIFY, 0, 1, 0, id, 4096, NULL);
    if (rc)
        return rc;
    uint32_t ioccsz;
    memcpy(&ioccsz, id + 1792, 4);
    p->ioccsz_bytes = ioccsz >= 4 ? ioccsz * 16 - 64 : 0;
    p->mdts_bytes = id[77] ? 4096u << id[77] : (1u << 30);
    if (first) {
        memcpy(h->info.sn, id + 4, 20);
        memcpy(h->info.mn, id + 24, 40);
        memcpy(&h->info.nn, id + 516, 4);
        h->info.cntlid = p->cntlid;
        h->info.ioccsz_bytes = p->ioccsz_bytes;
        h->info.mdts_bytes = p->mdts_bytes;
    }
    uint32_t dw0 = 0, n = h->nioq - 1;
    rc = admin_cmd(&p->admin, ADM_SET_FEATURES, 0, 0x07, n | n << 16, NULL, 0, &dw0);
    if (!rc && SRRS_MIN(dw0 & 0xffff, dw0 >> 16) + 1 < h->nioq)
        rc = srrs_err(-ENOSPC, "nvmf host: target grants only %u I/O queues",
                      SRRS_MIN(dw0 & 0xffff, dw0 >> 16) + 1);
    return rc;
}

/* Blocking: Identify Namespace 1. The first path defines the host's
 * namespace (size, block size, NGUID); the others must show the same one. */
static int path_identify_ns(struct hpath *p, bool first, uint8_t *id)
{
    struct srrs_nvmf_host *h = p->h;
    memset(id, 0, 4096);
    int rc = admin_cmd(&p->admin, ADM_IDENTIFY, 1, 0, 0, id, 4096, NULL);
    if (rc)
        return rc;
    uint64_t nsze;
    memcpy(&nsze, id, 8);
    uint8_t lbads = id[130 + 4 * (id[26] & 0xf)];
    if (!nsze || lbads < 9 || lbads > 12)
        rc = srrs_err(-ENODEV, "nvmf host: namespace 1 is not active at %s:%d", p->addr,
                      p->port);
    uint32_t bs = 1u << (lbads & 31);
    memcpy(&p->anagrpid, id + 92, 4);
    if (!rc && first) {
        h->info.block_size = bs;
        h->info.size = nsze * bs;
        memcpy(h->nguid, id + 104, 16);
    } else if (!rc && (bs != h->info.block_size || nsze * bs != h->info.size ||
                       memcmp(h->nguid, id + 104, 16))) {
        rc = srrs_err(-EINVAL, "nvmf host: %s:%d serves another namespace (NGUID, size or "
                      "block size differ): not a path to the same one", p->addr, p->port);
    }
    return rc;
}

/* Blocking: the path's ANA state now (optimized when it reports none). */
static int path_read_ana(struct hpath *p)
{
    int ana = ANA_OPTIMIZED;
    int rc = p->anagrpid ? read_ana(p, &ana) : 0;
    if (!rc) {
        uint64_t w = atomic_load(&p->ana_word);
        atomic_store(&p->ana_word, ((w >> 8) + 1) << 8 | (uint8_t)ana);
    }
    return rc;
}

/* Blocking: one I/O queue (ICReq, Connect), its request slots and receive
 * buffer; left non-blocking for the reactor. */
static int ioq_open(struct hpath *p, struct hq *q, uint16_t qid, uint32_t qsize, int to)
{
    int rc = q_open(p, q, to);
    if (!rc) {
        rc = q_connect(p->h, q, qid, qsize, p->cntlid, 0);
        rc = rc > 0 ? 0 : rc;
    }
    if (rc)
        return rc;
    q->nslots = qsize - 1;
    q->slots = calloc(q->nslots, sizeof(*q->slots));
    q->rbuf = malloc(H_RBUF);
    if (!q->slots || !q->rbuf)
        rc = srrs_err(-ENOMEM, "nvmf host: out of memory");
    for (uint32_t k = q->nslots; !rc && k-- > 0;) {
        q->slots[k].cid = (uint16_t)k;
        q->slots[k].q = q;
        q->slots[k].next = q->free;
        q->free = &q->slots[k];
    }
    fcntl(q->fd, F_SETFL, fcntl(q->fd, F_GETFL) | O_NONBLOCK);
    return rc;
}

/* Blocking: h->nioq I/O queues of qsize entries into *out (freed on failure). */
static int path_ioqs_open(struct hpath *p, uint32_t qsize, int to, struct hq **out)
{
    struct srrs_nvmf_host *h = p->h;
    struct hq *ioq = calloc(h->nioq, sizeof(*ioq));
    if (!ioq)
        return srrs_err(-ENOMEM, "nvmf host: out of memory");
    for (uint32_t i = 0; i < h->nioq; i++)
        ioq[i].fd = -1;
    int rc = 0;
    for (uint32_t i = 0; !rc && i < h->nioq; i++)
        rc = ioq_open(p, &ioq[i], (uint16_t)(i + 1), qsize, to);
    if (rc) {
        ioq_free(ioq, h->nioq);
        return rc;
    }
    *out = ioq;
    return 0;
}

/* Blocking: admin queue (connect, enable, identify, queue count), namespace
 * 1's identity, the ANA state and h->nioq I/O queues. The first path defines
 * the host's namespace; the others must show the same one. */
static int path_setup(struct hpath *p, bool first, int to, struct hq **ioq_out)
{
    if (!p->ana_log && !(p->ana_log = malloc(H_ANA_LOG_LEN)))
        return srrs_err(-ENOMEM, "nvmf host: out of memory");
    uint32_t qsize = 0;
    int rc = path_admin_up(p, to, &qsize);
    uint8_t *id = calloc(1, 4096);
    if (!id && !rc)
        rc = srrs_err(-ENOMEM, "nvmf host: out of memory");
    if (!rc)
        rc = path_identify_ctrlr(p, first, id);
    if (!rc)
        rc = path_identify_ns(p, first, id);
    free(id);
    if (!rc)
        rc = path_read_ana(p);
    struct hq *ioq = NULL;
    if (!rc)
        rc = path_ioqs_open(p, qsize, to, &ioq);
    if (rc)
        return rc;
    /* From here the admin queue only answers the monitor's ANA reads. */
    struct timeval tv = {H_PROBE_TIMEOUT_MS / 1000, (H_PROBE_TIMEOUT_MS % 1000) * 1000};
    setsockopt(p->admin.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(p->admin.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    *ioq_out = ioq;
    return 0;
}

static int ioq_watch(struct srrs_nvmf_host *h, struct hq *ioq)
{
    for (uint32_t i = 0; i < h->nioq; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &ioq[i]};
        if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, ioq[i].fd, &ev))
            return srrs_err(-errno, "nvmf host: epoll_ctl: %s", strerror(errno));
        ioq[i].rx_ready = true;
    }
    return 0;
}

static void ioq_unwatch(struct srrs_nvmf_host *h, struct hq *ioq)
{
    for (uint32_t i = 0; i < h->nioq; i++)
        if (ioq[i].fd >= 0)
            epoll_ctl(h->epfd, EPOLL_CTL_DEL, ioq[i].fd, NULL);
}

/* Control thread: connect path p now (it stays down when that fails). */
static int path_connect(struct hpath *p, bool first)
{
    struct srrs_nvmf_host *h = p->h;
    struct hq *ioq = NULL;
    int rc = path_setup(p, first, h->o.timeout_ms, &ioq);
    if (!rc) {
        rc = ioq_watch(h, ioq);
        if (rc) {
            ioq_unwatch(h, ioq);
            ioq_free(ioq, h->nioq);
        }
    }
    if (rc)
        return rc;
    if (!first && p->mdts_bytes < h->info.mdts_bytes)
        h->info.mdts_bytes = p->mdts_bytes;
    p->ioq = ioq;
    h->nlive_q += h->nioq;
    atomic_store(&p->state, P_LIVE);
    return 0;
}

int srrs_nvmf_host_connect(const struct srrs_nvmf_host_opts *o, struct srrs_nvmf_host **out)
{
    if (!o || !o->addr || !o->subnqn || !out || o->nqueues < 1 || o->nqueues > NVMF_MAX_IOQ ||
        o->qsize < 2 || o->qsize > 1024)
        return srrs_err(-EINVAL, "nvmf host: need addr, subnqn, 1..64 queues of 2..1024 entries");
    if (o->path_timeout_ms > 3600u * 1000)
        return srrs_err(-EINVAL, "nvmf host: path timeout above one hour");
    struct srrs_nvmf_host *h = host_new(o->addr, o->port, o->subnqn, o->hostnqn, o->timeout_ms);
    if (!h)
        return srrs_err(-ENOMEM, "nvmf host: out of memory");
    int to = h->o.timeout_ms;
    h->o = *o;
    h->o.timeout_ms = to;
    h->o.addr = h->o.subnqn = h->o.hostnqn = NULL; /* copies live in h and its paths */
    h->o.dhchap_secret = h->o.dhchap_ctrl_secret = NULL; /* parsed into h->keys */
    h->nioq = o->nqueues;
    h->qsize = o->qsize;
    h->mp = o->path_timeout_ms > 0;
    h->path_timeout_ticks = srrs_us_to_ticks((uint64_t)o->path_timeout_ms * 1000);
    h->epfd = epoll_create1(EPOLL_CLOEXEC);
    int rc = h->epfd < 0 ? srrs_err(-errno, "nvmf host: epoll_create1: %s", strerror(errno)) : 0;
    if (!rc && o->dhchap_secret) {
        rc = nvmf_dhchap_parse(o->dhchap_secret, &h->keys.host);
        h->has_keys = !rc;
    }
    if (!rc && o->dhchap_ctrl_secret) {
        if (!o->dhchap_secret)
            rc = srrs_err(-EINVAL, "nvmf host: a controller secret needs a host secret");
        else if (!(rc = nvmf_dhchap_parse(o->dhchap_ctrl_secret, &h->keys.ctrl)))
            h->keys.has_ctrl = true;
    }
    if (!rc)
        rc = path_connect(&h->paths[0], true);
    if (rc) {
        host_free(h);
        return rc;
    }
    h->info.nqueues = h->nioq;
    *out = h;
    return 0;
}

int srrs_nvmf_host_add_path(struct srrs_nvmf_host *h, const char *addr, int port)
{
    if (!h || !addr || port <= 0 || port > 65535)
        return srrs_err(-EINVAL, "nvmf host: add path: need an address and a port");
    if (!h->mp)
        return srrs_err(-EINVAL, "nvmf host: several paths need a path timeout (multipath)");
    if (h->npaths >= H_MAX_PATHS)
        return srrs_err(-ENOSPC, "nvmf host: at most %d paths", H_MAX_PATHS);
    for (uint32_t i = 0; i < h->npaths; i++)
        if (h->paths[i].port == port && !strcmp(h->paths[i].addr, addr))
            return srrs_err(-EEXIST, "nvmf host: %s:%d is already a path", addr, port);
    struct hpath *p = &h->paths[h->npaths];
    path_init(h, p, addr, port);
    int rc = path_connect(p, false);
    if (rc == -EINVAL || rc == -ENOMEM) {
        q_close(&p->admin);
        return rc;
    }
    h->npaths++;
    return rc ? 1 : 0;
}

int srrs_nvmf_host_get_info(struct srrs_nvmf_host *h, struct srrs_nvmf_host_info *out)
{
    *out = h->info;
    out->npaths = h->npaths;
    out->failovers = h->failovers;
    out->path_timeouts = h->path_timeouts;
    out->max_wait_us = (double)srrs_ticks_to_ns(h->max_wait_ticks) / 1000.0;
    return 0;
}

int srrs_nvmf_host_path_info(struct srrs_nvmf_host *h, struct srrs_nvmf_path_info *out, int max)
{
    if (!h || max < 0)
        return srrs_err(-EINVAL, "nvmf host: bad arguments");
    for (uint32_t i = 0; i < h->npaths && (int)i < max; i++) {
        struct hpath *p = &h->paths[i];
        struct srrs_nvmf_path_info *d = &out[i];
        memset(d, 0, sizeof(*d));
        snprintf(d->addr, sizeof(d->addr), "%s", p->addr);
        d->port = p->port;
        d->cntlid = p->cntlid;
        d->live = atomic_load(&p->state) == P_LIVE;
        d->ana = path_ana(p);
        d->ios = p->ios;
        d->bytes = p->bytes;
        d->path_errors = p->path_errors;
        d->drops = p->drops;
        d->reconnects = p->reconnects;
        d->resubmitted = p->resubmitted;
        d->errors = p->errors;
    }
    return (int)h->npaths;
}

void srrs_nvmf_host_disconnect(struct srrs_nvmf_host **ph)
{
    struct srrs_nvmf_host *h = ph ? *ph : NULL;
    if (!h)
        return;
    for (uint32_t i = 0; i < h->npaths; i++) {
        struct hpath *p = &h->paths[i];
        if (p->admin.fd >= 0 && atomic_load(&p->state) == P_LIVE)
            prop(&p->admin, true, PROP_CC, 1u | 1u << 14 | 6u << 16 | 4u << 20, false, NULL);
    }
    host_free(h);
    *ph = NULL;
}

/* Part of a log page: len bytes at offset off (one transfer; len <= LOG_CHUNK). */
static int get_log_part(struct hq *q, uint8_t lid, uint8_t *buf, uint32_t len, uint64_t off)
{
    struct nvme_sqe sqe = {0};
    uint32_t numd = len / 4 - 1;
    sqe.opc = ADM_GET_LOG_PAGE;
    sqe.cdw10 = lid | (numd & 0xffff) << 16;
    sqe.cdw11 = numd >> 16;
    sqe.cdw12 = (uint32_t)off;
    sqe.cdw13 = (uint32_t)(off >> 32);
    struct nvme_cqe cqe;
    int rc = sync_cmd(q, &sqe, NULL, 0, buf, len, &cqe);
    if (!rc && cmd_status(&cqe))
        rc = srrs_err(-EIO, "nvmf host: get log page 0x%x at %llu failed (status 0x%x)", lid,
                      (unsigned long long)off, cmd_status(&cqe));
    return rc;
}

/* Transfers small enough for any target's MDTS we might meet (4 KiB pages x 32). */
#define LOG_CHUNK (128u * 1024)

/* The discovery log: its header, then the records in LOG_CHUNK pieces at
 * increasing offsets, then the header again; a generation counter that moved
 * meanwhile (the log changed under us) starts it over. Returns numrec. */
static int read_discovery_log(struct hq *a, uint8_t *log, uint32_t len)
{
    for (int attempt = 0; attempt < 4; attempt++) {
        uint64_t gen, numrec, again;
        uint32_t first = SRRS_MIN(len, LOG_CHUNK);
        int rc = get_log_part(a, 0x70, log, first, 0);
        if (rc)
            return rc;
        memcpy(&gen, log, 8);
        memcpy(&numrec, log + 8, 8);
        uint64_t want = SRRS_MIN((uint64_t)len, 1024 * (numrec + 1));
        for (uint64_t off = first; !rc && off < want; off += LOG_CHUNK)
            rc = get_log_part(a, 0x70, log + off, (uint32_t)SRRS_MIN(want - off, LOG_CHUNK), off);
        uint8_t hdr[16];
        if (!rc && want > first)
            rc = get_log_part(a, 0x70, hdr, sizeof(hdr), 0);
        else
            memcpy(hdr, log, sizeof(hdr));
        if (rc)
            return rc;
        memcpy(&again, hdr, 8);
        if (again == gen)
            return numrec > INT32_MAX ? INT32_MAX : (int)numrec;
    }
    return srrs_err(-EAGAIN, "nvmf discover: the log kept changing while being read");
}

int srrs_nvmf_discover(const char *addr, int port, const char *hostnqn, uint8_t *buf, int max,
                       int timeout_ms)
{
    if (!addr || max < 0 || max > 1 << 20)
        return srrs_err(-EINVAL, "nvmf discover: bad arguments");
    struct srrs_nvmf_host *h = host_new(addr, port, NVMF_DISCOVERY_NQN, hostnqn, timeout_ms);
    if (!h)
        return srrs_err(-ENOMEM, "nvmf discover: out of memory");
    struct hq *a = &h->paths[0].admin;
    int rc = q_open(&h->paths[0], a, h->o.timeout_ms);
    if (!rc) {
        rc = q_connect(h, a, 0, 32, 0xFFFF, 0);
        rc = rc > 0 ? 0 : rc;
    }
    if (!rc)
        rc = enable_ctrlr(a, h->o.timeout_ms);
    uint32_t len = 1024u * (uint32_t)(max + 1);
    uint8_t *log = calloc(1, len);
    if (!log && !rc)
        rc = srrs_err(-ENOMEM, "nvmf discover: out of memory");
    int numrec = 0;
    if (!rc) {
        numrec = read_discovery_log(a, log, len);
        rc = numrec < 0 ? numrec : 0;
    }
    if (!rc && buf)
        memcpy(buf, log + 1024, (size_t)SRRS_MIN(numrec, max) * 1024);
    free(log);
    host_free(h);
    return rc ? rc : numrec;
}

/* ---- I/O phase (reactor) --------------------------------------------------------- */

static void hq_fail(struct hq *q, const char *why);

static void htx_queue(struct hq *q, struct tx_pdu *p)
{
    p->next = NULL;
    if (q->tx_tail)
        q->tx_tail->next = p;
    else
        q->tx_head = p;
    q->tx_tail = p;
}

static void hreq_finish(struct hq *q, struct hreq *r)
{
    struct srrs_nvmf_host *h = q->h;
    r->next = NULL;
    r->queued = true;
    if (h->done_tail)
        h->done_tail->next = r;
    else
        h->done_head = r;
    h->done_tail = r;
}

static inline bool path_usable(struct hpath *p)
{
    return atomic_load_explicit(&p->state, memory_order_relaxed) == P_LIVE && !p->failing;
}

/* The next live path in round-robin order whose ANA state is optimized (else
 * non-optimized), or NULL. */
static struct hpath *path_pick(struct srrs_nvmf_host *h)
{
    struct hpath *alt = NULL;
    for (uint32_t k = 0; k < h->npaths; k++) {
        uint32_t i = h->rr + k;
        struct hpath *p = &h->paths[i >= h->npaths ? i - h->npaths : i];
        if (!path_usable(p))
            continue;
        uint8_t ana = path_ana(p);
        if (ana == ANA_OPTIMIZED) {
            alt = p;
            break;
        }
        if (ana == ANA_NON_OPTIMIZED && !alt)
            alt = p;
    }
    if (alt)
        h->rr = alt->idx + 1 >= h->npaths ? 0 : alt->idx + 1;
    return alt;
}

/* Path Related Status (SCT 3) without Do Not Retry: another path may serve it. */
static inline bool nvme_path_error(uint16_t st)
{
    return ((st >> 8) & 7) == 3 && !(st & NVME_DNR);
}

/* An I/O answered with a path error says the path's ANA state before the
 * monitor's next log read does: stop sending there now. */
static void path_mark_ana(struct hpath *p, uint16_t st)
{
    uint8_t sc = st & 0xff;
    uint8_t ana = sc == 0x01 ? ANA_PERSISTENT_LOSS : sc == 0x03 ? ANA_CHANGE : ANA_INACCESSIBLE;
    uint64_t w = atomic_load_explicit(&p->ana_word, memory_order_relaxed);
    while (!atomic_compare_exchange_weak(&p->ana_word, &w, ((w >> 8) + 1) << 8 | ana))
        ;
}

static void wait_push(struct srrs_nvmf_host *h, struct srrs_bench_req *b, uint64_t now)
{
    if (!b->mp_t0)
        b->mp_t0 = now;
    b->mp_next = NULL;
    if (h->wait_tail)
        h->wait_tail->mp_next = b;
    else
        h->wait_head = b;
    h->wait_tail = b;
}

/* Ticks since t0; 0 when t0 is later than now (taken after a caller's `now`). */
static inline uint64_t ticks_since(uint64_t t0, uint64_t now)
{
    return now > t0 ? now - t0 : 0;
}

static void mp_complete(struct srrs_nvmf_host *h, struct srrs_bench_req *b, int st, uint64_t now)
{
    if (b->mp_t0) {
        if (ticks_since(b->mp_t0, now) > h->max_wait_ticks)
            h->max_wait_ticks = ticks_since(b->mp_t0, now);
        b->mp_t0 = 0;
    }
    srrs_bench_req_done(b, st);
}

static int hq_submit(struct hq *q, struct srrs_bench_req *b);

/* I/Os waiting for a path: resubmit on a usable one, or fail those that have
 * waited path_timeout_ms. */
static int wait_run(struct srrs_nvmf_host *h, uint64_t now)
{
    struct srrs_bench_req *b = h->wait_head, *kh = NULL, *kt = NULL;
    h->wait_head = h->wait_tail = NULL;
    int n = 0;
    while (b) {
        struct srrs_bench_req *next = b->mp_next;
        struct hpath *p = path_pick(h);
        if (p && !hq_submit(&p->ioq[b->slot % h->nioq], b)) {
            h->failovers++;
            n++;
        } else if (ticks_since(b->mp_t0, now) >= h->path_timeout_ticks) {
            h->path_timeouts++;
            mp_complete(h, b, -ETIMEDOUT, now);
            n++;
        } else {
            b->mp_next = NULL;
            if (kt)
                kt->mp_next = b;
            else
                kh = b;
            kt = b;
        }
        b = next;
    }
    if (kh) { /* the older ones first, then any pushed meanwhile */
        kt->mp_next = h->wait_head;
        if (!h->wait_head)
            h->wait_tail = kt;
        h->wait_head = kh;
    }
    return n;
}

/* Reactor: a lost path's queues are closed and freed; its monitor reconnects. */
static void path_drop(struct hpath *p)
{
    struct srrs_nvmf_host *h = p->h;
    if (p->ioq) {
        ioq_unwatch(h, p->ioq);
        ioq_free(p->ioq, h->nioq);
        p->ioq = NULL;
        h->nlive_q -= h->nioq;
    }
    p->failing = false;
    p->drops++;
    atomic_store(&p->drop_req, 0);
    atomic_store(&p->state, P_DOWN);
}

static int host_deliver(void *ctx)
{
    struct srrs_nvmf_host *h = ctx;
    int n = 0;
    uint64_t now = srrs_ticks();
    if (h->mp) {
        /* One broken queue (or a dead admin queue) takes the whole path down:
         * every command in flight on it goes to the wait list below. */
        for (uint32_t i = 0; i < h->npaths; i++) {
            struct hpath *p = &h->paths[i];
            if (atomic_load_explicit(&p->state, memory_order_relaxed) != P_LIVE)
                continue;
            if (atomic_load_explicit(&p->drop_req, memory_order_relaxed))
                p->failing = true;
            for (uint32_t k = 0; p->failing && k < h->nioq; k++)
                hq_fail(&p->ioq[k], "path lost");
        }
    }
    struct hreq *r = h->done_head;
    h->done_head = h->done_tail = NULL;
    while (r) {
        struct hreq *next = r->next;
        struct hq *q = r->q;
        struct hpath *p = q->p;
        struct srrs_bench_req *b = r->breq;
        int st = r->status;
        bool lost = r->lost, path_err = nvme_path_error(r->nvme);
        uint16_t nvme = r->nvme;
        r->busy = false;
        r->lost = false;
        r->queued = false;
        r->breq = NULL;
        r->next = q->free;
        q->free = r;
        if (h->mp && (lost || path_err)) {
            p->resubmitted++;
            if (path_err) {
                p->path_errors++;
                path_mark_ana(p, nvme);
            }
            wait_push(h, b, now);
        } else {
            if (st)
                p->errors++;
            else {
                p->ios++;
                p->bytes += b->len;
            }
            mp_complete(h, b, st, now);
        }
        r = next;
        n++;
    }
    if (h->mp) {
        for (uint32_t i = 0; i < h->npaths; i++)
            if (h->paths[i].failing) {
                path_drop(&h->paths[i]);
                n++;
            }
        if (h->wait_head) {
            wait_run(h, srrs_ticks());
            n++; /* keep polling: paths come back without an fd event */
        }
    }
    return n;
}

static void hreq_done(struct hq *q, struct hreq *r, int status)
{
    r->status = status;
    if (r->tx_pending) /* a PDU of ours still references the buffer */
        r->done_wait = true;
    else
        hreq_finish(q, r);
}

static int hq_flush(struct hq *q)
{
    if (!q->tx_head || q->broken)
        return 0;
    struct iovec iov[H_IOV_MAX];
    int n = pdu_queue_iov(q->tx_head, q->tx_off, iov, H_IOV_MAX);
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n};
    ssize_t s = sendmsg(q->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (s < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            hq_fail(q, "send failed");
        return 0;
    }
    uint64_t left = (uint64_t)s;
    struct tx_pdu *p;
    while ((p = pdu_queue_pop_sent(&q->tx_head, &q->tx_tail, &q->tx_off, &left))) {
        struct hreq *r = (struct hreq *)(void *)p->req;
        if (r && !--r->tx_pending && r->done_wait) {
            r->done_wait = false;
            hreq_finish(q, r);
        }
    }
    return 1;
}

static void hq_fail(struct hq *q, const char *why)
{
    if (q->broken)
        return;
    q->broken = true;
    q->tx_head = q->tx_tail = NULL;
    q->tx_off = 0;
    q->h->err = -EIO;
    q->p->failing = q->h->mp; /* multipath: the path is dropped at the next delivery */
    for (uint32_t i = 0; i < q->nslots; i++) {
        struct hreq *r = &q->slots[i];
        if (!r->busy || r->queued)
            continue; /* free, or completed and waiting for delivery */
        if (!r->done_wait) { /* no response: whether it ran is unknown */
            r->status = -EIO;
            r->lost = true;
        }
        r->tx_pending = 0;
        r->done_wait = false;
        hreq_finish(q, r);
    }
    (void)why;
}

static void hpdu_set(struct hq *q, struct tx_pdu *p, struct hreq *r, uint8_t *h, uint32_t hl,
                     void *data, uint32_t dlen)
{
    pdu_tx_set(&q->fmt, p, r, h, hl, data, dlen); /* r: an opaque owner tag here */
    r->tx_pending++;
    htx_queue(q, p);
}

static int hq_submit(struct hq *q, struct srrs_bench_req *b)
{
    struct srrs_nvmf_host *h = q->h;
    struct hreq *r = q->free;
    if (!r)
        return -EAGAIN;
    q->free = r->next;
    r->busy = true;
    r->breq = b;
    r->status = 0;
    r->nvme = 0;
    r->lost = false;
    r->tx_pending = 0;
    r->done_wait = false;
    if (q->broken) {
        /* Fail it through the completion path: a job bounded by an I/O count
         * must still reach its count. */
        r->status = -EIO;
        hreq_finish(q, r);
        return 0;
    }
    r->write = b->op == SRRS_IO_WRITE;
    uint32_t bs = h->info.block_size;
    struct nvme_sqe *sqe = (struct nvme_sqe *)(r->h_cmd + PDU_CH_LEN);
    memset(r->h_cmd, 0, sizeof(r->h_cmd));
    sqe->opc = r->write ? IO_WRITE : IO_READ;
    sqe->flags = 0x40;
    sqe->cid = r->cid;
    sqe->nsid = 1;
    uint64_t slba = b->offset / bs;
    sqe->cdw10 = (uint32_t)slba;
    sqe->cdw11 = (uint32_t)(slba >> 32);
    sqe->cdw12 = b->len / bs - 1;
    sqe->sgl.len = b->len;
    bool incap = r->write && b->len <= q->p->ioccsz_bytes;
    sqe->sgl.type = incap ? SGL_DATA_BLOCK_OFFSET : SGL_TRANSPORT_DATA_BLOCK;
    uint32_t hl = pdu_seal(&q->fmt, r->h_cmd, PDU_CMD, 0, incap ? b->len : 0);
    hpdu_set(q, &r->tx_cmd, r, r->h_cmd, hl, incap ? b->buf : NULL, incap ? b->len : 0);
    return 0;
}

static int host_submit(void *ctx, struct srrs_bench_req *b)
{
    struct srrs_nvmf_host *h = ctx;
    b->mp_t0 = 0;
    if (!h->mp)
        return hq_submit(&h->paths[0].ioq[b->slot % h->nioq], b);
    struct hpath *p = path_pick(h);
    if (!p) { /* no usable path now: wait for one (the job counts it in flight) */
        wait_push(h, b, srrs_ticks());
        return 0;
    }
    return hq_submit(&p->ioq[b->slot % h->nioq], b);
}

static void h_rx_next(struct hq *q)
{
    q->rx_state = 0;
    q->hdr_have = 0;
    q->hdr_need = PDU_CH_LEN;
    q->rx_req = NULL;
}

static struct hreq *h_req(struct hq *q, uint16_t cid)
{
    if (cid >= q->nslots || !q->slots[cid].busy) {
        hq_fail(q, "response for an unknown command");
        return NULL;
    }
    return &q->slots[cid];
}

static void h_data_end(struct hq *q)
{
    struct hreq *r = q->rx_req;
    bool success = q->rx_success;
    if (q->fmt.ddgst) {
        uint32_t got;
        memcpy(&got, q->ddg, 4);
        if (got != q->rx_crc && r)
            r->status = -EILSEQ;
    }
    h_rx_next(q);
    if (r && success)
        hreq_done(q, r, r->status);
}

/* n payload bytes landed at rx_dst (copied there, or received there). */
static void h_data_in(struct hq *q, uint32_t n)
{
    if (q->fmt.ddgst)
        q->rx_crc = pdu_crc(q->rx_crc, q->rx_dst, n);
    q->rx_dst += n;
    q->rx_left -= n;
    if (q->rx_left)
        return;
    if (q->fmt.ddgst)
        q->rx_state = 2;
    else
        h_data_end(q);
}

static void h_rsp_hdr(struct hq *q)
{
    struct nvme_cqe cqe;
    memcpy(&cqe, q->hdr + PDU_CH_LEN, sizeof(cqe));
    h_rx_next(q);
    struct hreq *r = h_req(q, cqe.cid);
    if (r) {
        r->nvme = cqe.status >> 1;
        hreq_done(q, r, r->nvme ? -EIO : r->status);
    }
}

/* Read data for a command of ours: straight into the job's buffer. */
static void h_c2h_hdr(struct hq *q)
{
    const struct pdu_ch *ch = (const struct pdu_ch *)q->hdr;
    const struct pdu_data *d = (const struct pdu_data *)q->hdr;
    struct hreq *r = h_req(q, d->cccid);
    if (!r)
        return;
    if (r->write || q->rx_geo.dlen != d->len || d->off > r->breq->len ||
        d->len > r->breq->len - d->off || !d->len) {
        hq_fail(q, "bad C2HData");
        return;
    }
    q->rx_req = r;
    q->rx_dst = (uint8_t *)r->breq->buf + d->off;
    q->rx_left = d->len;
    q->rx_crc = 0;
    q->ddg_have = 0;
    q->pad_left = q->rx_geo.pad;
    q->rx_success = ch->flags & PDU_F_SUCCESS;
    q->rx_state = 1;
}

/* The target asks for a write's data: queue one H2CData with it. */
static void h_r2t_hdr(struct hq *q)
{
    const struct pdu_data *d = (const struct pdu_data *)q->hdr;
    uint16_t ttag = d->ttag;
    uint32_t off = d->off, len = d->len;
    struct hreq *r = h_req(q, d->cccid);
    h_rx_next(q);
    if (!r)
        return;
    if (!r->write || off > r->breq->len || len > r->breq->len - off || !len ||
        len > q->h->info.maxh2cdata) {
        hq_fail(q, "bad R2T");
        return;
    }
    bool last = off + len == r->breq->len;
    pdu_data_hdr(r->h_h2c, r->cid, ttag, off, len);
    uint32_t hl = pdu_seal(&q->fmt, r->h_h2c, PDU_H2C_DATA, last ? PDU_F_LAST : 0, len);
    hpdu_set(q, &r->tx_h2c, r, r->h_h2c, hl, (uint8_t *)r->breq->buf + off, len);
}

static void h_hdr_done(struct hq *q)
{
    const struct pdu_ch *ch = (const struct pdu_ch *)q->hdr;
    if (q->rx_geo.hl > ch->hlen && !pdu_hdgst_ok(q->hdr)) {
        hq_fail(q, "header digest");
        return;
    }
    switch (ch->type) {
    case PDU_RSP:
        h_rsp_hdr(q);
        return;
    case PDU_C2H_DATA:
        h_c2h_hdr(q);
        return;
    case PDU_R2T:
        h_r2t_hdr(q);
        return;
    default:
        hq_fail(q, "unexpected PDU");
    }
}

/* The common header is in: check it (nvmf/pdu.h) and learn the header's length. */
static bool h_ch_check(struct hq *q)
{
    const struct pdu_ch *ch = (const struct pdu_ch *)q->hdr;
    uint32_t fei;
    if (pdu_ch_check(ch, &q->fmt, &pdu_rules_host, &q->rx_geo, &fei) ||
        ch->type == PDU_C2H_TERM) {
        hq_fail(q, "termination or bad header");
        return false;
    }
    q->hdr_need = q->rx_geo.hl;
    return true;
}

static void h_parse(struct hq *q)
{
    while (q->rhead < q->rtail && !q->broken) {
        uint32_t avail = q->rtail - q->rhead, n;
        const uint8_t *p = q->rbuf + q->rhead;
        if (q->rx_state == 0) {
            uint32_t upto = q->hdr_have < PDU_CH_LEN ? PDU_CH_LEN : q->hdr_need;
            n = SRRS_MIN(upto - q->hdr_have, avail);
            memcpy(q->hdr + q->hdr_have, p, n);
            q->hdr_have += n;
            q->rhead += n;
            if (q->hdr_have == PDU_CH_LEN && !h_ch_check(q))
                return;
            if (q->hdr_have == q->hdr_need && q->hdr_have > PDU_CH_LEN)
                h_hdr_done(q);
        } else if (q->rx_state == 1) {
            if (q->pad_left) {
                n = SRRS_MIN(q->pad_left, avail);
                q->pad_left -= n;
                q->rhead += n;
                continue;
            }
            n = SRRS_MIN(q->rx_left, avail);
            memcpy(q->rx_dst, p, n);
            q->rhead += n;
            h_data_in(q, n);
        } else {
            n = SRRS_MIN(4 - q->ddg_have, avail);
            memcpy(q->ddg + q->ddg_have, p, n);
            q->ddg_have += n;
            q->rhead += n;
            if (q->ddg_have == 4)
                h_data_end(q);
        }
    }
}

static int hq_rx(struct hq *q)
{
    int work = 0;
    bool drained = false;
    for (int round = 0; round < 8 && !q->broken; round++) {
        if (q->rhead < q->rtail) {
            h_parse(q);
            work = 1;
            continue;
        }
        if (drained)
            break;
        q->rhead = q->rtail = 0;
        ssize_t n;
        bool direct = q->rx_state == 1 && !q->pad_left && q->rx_left >= 4096;
        size_t want = direct ? q->rx_left : H_RBUF;
        n = recv(q->fd, direct ? q->rx_dst : q->rbuf, want, MSG_DONTWAIT);
        if (n > 0) {
            work = 1;
            drained = (size_t)n < want; /* parse this, then stop for this poll */
            if (drained)
                q->rx_ready = false;
            if (direct) {
                h_data_in(q, (uint32_t)n);
            } else {
                q->rtail = (uint32_t)n;
            }
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            hq_fail(q, "connection lost");
        else
            q->rx_ready = false;
        break;
    }
    return work;
}

static int host_poll(void *ctx)
{
    struct srrs_nvmf_host *h = ctx;
    int work = 0;
    bool ep = h->nlive_q > 1;
    if (ep) {
        struct epoll_event evs[NVMF_MAX_IOQ];
        int n = epoll_wait(h->epfd, evs, NVMF_MAX_IOQ, 0);
        for (int i = 0; i < n; i++)
            ((struct hq *)evs[i].data.ptr)->rx_ready = true;
    }
    for (uint32_t k = 0; k < h->npaths; k++) {
        struct hpath *p = &h->paths[k];
        if (atomic_load_explicit(&p->state, memory_order_relaxed) != P_LIVE)
            continue;
        for (uint32_t i = 0; i < h->nioq; i++) {
            struct hq *q = &p->ioq[i];
            work += hq_flush(q);
            if (!ep || q->rx_ready || q->rhead < q->rtail)
                work += hq_rx(q);
            work += hq_flush(q);
            if (q->tx_head)
                work++; /* keep polling: the socket is only watched for input */
        }
    }
    return work;
}

static int wake_noop(void *arg)
{
    (void)arg;
    return 0;
}

/* ---- path monitors (one thread per path while a job runs) ------------------- */

/* Reactor: a reconnected path's queues take over. */
static void path_install_fn(void *arg)
{
    struct hpath *p = arg;
    struct srrs_nvmf_host *h = p->h;
    struct hq *ioq = p->next_ioq;
    p->next_ioq = NULL;
    if (ioq_watch(h, ioq)) {
        ioq_unwatch(h, ioq);
        ioq_free(ioq, h->nioq);
        atomic_store(&p->installing, 0);
        return;
    }
    p->ioq = ioq;
    p->failing = false;
    p->reconnects++;
    h->nlive_q += h->nioq;
    atomic_store(&p->state, P_LIVE);
    atomic_store(&p->installing, 0);
}

static void path_reconnect(struct hpath *p)
{
    struct srrs_nvmf_host *h = p->h;
    struct hq *ioq = NULL;
    int rc = path_setup(p, false, SRRS_MIN(h->o.timeout_ms, H_PROBE_TIMEOUT_MS), &ioq);
    if (!rc && p->mdts_bytes < h->info.mdts_bytes) {
        ioq_free(ioq, h->nioq);
        rc = -EINVAL;
    }
    if (rc) {
        q_close(&p->admin);
        p->backoff_ms = p->backoff_ms ? SRRS_MIN(2 * p->backoff_ms, H_BACKOFF_MAX_MS)
                                      : H_BACKOFF_MIN_MS;
        p->next_try_ns = srrs_now_ns() + (uint64_t)p->backoff_ms * 1000000;
        return;
    }
    p->backoff_ms = 0;
    p->next_ioq = ioq;
    atomic_store(&p->installing, 1);
    while ((rc = srrs_reactor_send(h->reactor, path_install_fn, p)) == -EAGAIN)
        usleep(100);
    if (rc) { /* the reactor has stopped: the job is over */
        p->next_ioq = NULL;
        ioq_free(ioq, h->nioq);
        atomic_store(&p->installing, 0);
    }
}

static void *path_monitor(void *arg)
{
    struct hpath *p = arg;
    struct srrs_nvmf_host *h = p->h;
    uint64_t next_ana = 0;
    while (!atomic_load(&h->mon_stop)) {
        uint64_t now = srrs_now_ns();
        int st = atomic_load(&p->state);
        if (st == P_DOWN && !atomic_load(&p->installing) && now >= p->next_try_ns) {
            path_reconnect(p);
        } else if (st == P_LIVE && !atomic_load(&p->drop_req) && p->admin.fd >= 0 &&
                   now >= next_ana) {
            next_ana = now + H_ANA_POLL_MS * 1000000ull;
            uint64_t w = atomic_load(&p->ana_word);
            int ana = 0;
            if (read_ana(p, &ana)) {
                /* No answer from the controller: take the path down (its I/O
                 * queues may be stuck as well); it is reconnected from scratch. */
                q_close(&p->admin);
                atomic_store(&p->drop_req, 1);
            } else {
                /* Unless an I/O reported a path error since the read began. */
                atomic_compare_exchange_strong(&p->ana_word, &w, (w & ~0xffull) | (uint8_t)ana);
            }
        }
        usleep(10000);
    }
    return NULL;
}

static void monitors_start(struct srrs_nvmf_host *h)
{
    atomic_store(&h->mon_stop, 0);
    for (uint32_t i = 0; i < h->npaths; i++) {
        struct hpath *p = &h->paths[i];
        p->next_try_ns = 0;
        p->thread_on = !pthread_create(&p->thread, NULL, path_monitor, p);
    }
}

static void monitors_stop(struct srrs_nvmf_host *h)
{
    atomic_store(&h->mon_stop, 1);
    for (uint32_t i = 0; i < h->npaths; i++)
        if (h->paths[i].thread_on) {
            pthread_join(h->paths[i].thread, NULL);
            h->paths[i].thread_on = false;
        }
}

/* ---- the job ------------------------------------------------------------------ */

static void host_watch_fn(void *arg)
{
    /* The reactor's adaptive sleep must wake on our sockets. */
    struct srrs_nvmf_host *h = arg;
    struct srrs_reactor *r = srrs_reactor_self();
    h->done_head = h->done_tail = NULL;
    h->wait_head = h->wait_tail = NULL;
    h->deliver = srrs_poller_register(r, host_deliver, h, 0);
    for (uint32_t k = 0; k < h->npaths; k++)
        for (uint32_t i = 0; h->paths[k].ioq && i < h->nioq; i++)
            h->paths[k].ioq[i].rx_ready = true;
    h->wake = srrs_poller_register(r, wake_noop, h, 0);
    if (h->wake)
        srrs_poller_set_fd(h->wake, h->epfd, EPOLLIN, false);
}

static void host_unwatch_fn(void *arg)
{
    struct srrs_nvmf_host *h = arg;
    srrs_poller_unregister(&h->wake);
    /* The job ended with nothing in flight; never hand it anything now. */
    for (struct hreq *r = h->done_head; r; r = r->next) {
        r->busy = false;
        r->queued = false;
        r->breq = NULL;
    }
    h->done_head = h->done_tail = NULL;
    h->wait_head = h->wait_tail = NULL;
    for (uint32_t k = 0; k < h->npaths; k++) {
        struct hpath *p = &h->paths[k];
        if (h->mp && atomic_load(&p->state) == P_LIVE &&
            (p->failing || atomic_load(&p->drop_req)))
            path_drop(p);
        for (uint32_t i = 0; p->ioq && i < h->nioq; i++) {
            struct hq *q = &p->ioq[i];
            q->free = NULL;
            for (uint32_t s = q->nslots; s-- > 0;)
                if (!q->slots[s].busy) {
                    q->slots[s].next = q->free;
                    q->free = &q->slots[s];
                }
        }
    }
    srrs_poller_unregister(&h->deliver);
}

int srrs_nvmf_host_bench(struct srrs_core *core, int reactor, struct srrs_nvmf_host *h,
                         const struct srrs_bench_opts *opts, struct srrs_bench_result *out)
{
    struct srrs_reactor *r = srrs_core_reactor(core, reactor);
    if (!r || !h)
        return srrs_err(-EINVAL, "nvmf bench: bad reactor or host");
    for (uint32_t i = 0; !h->mp && i < h->nioq; i++)
        if (h->paths[0].ioq[i].broken)
            return srrs_err(-EIO, "nvmf bench: queue %u is broken", i + 1);
    uint32_t maxlen = SRRS_MAX(opts->bs, opts->bs_max);
    if (maxlen > h->info.mdts_bytes)
        return srrs_err(-EINVAL, "nvmf bench: I/O size %u above the target's MDTS %u", maxlen,
                        h->info.mdts_bytes);
    struct srrs_bench_target t = {.size = h->info.size, .block_size = h->info.block_size,
                                  .ctx = h, .submit = host_submit, .poll = host_poll};
    h->reactor = r;
    srrs_reactor_call(r, host_watch_fn, h);
    if (!h->deliver || !h->wake) {
        srrs_reactor_call(r, host_unwatch_fn, h);
        return srrs_err(-ENOMEM, "nvmf bench: cannot register a poller");
    }
    h->err = 0;
    if (h->mp)
        monitors_start(h);
    int rc = srrs_bench_run(r, &t, opts, out);
    if (h->mp)
        monitors_stop(h);
    srrs_reactor_call(r, host_unwatch_fn, h);
    return rc;
}
