/*
 * NVMe/TCP initiator for the load generator and the tests. Setup (ICReq,
 * Connect, enable, Identify) runs on the control thread with blocking
 * sockets; the I/O phase runs on a reactor as a `struct srrs_bench_target`:
 * per poll, per queue, one recv and one sendmsg; read data lands straight in
 * the job's buffers, writes go in-capsule up to IOCCSZ, else by R2T/H2CData.
 */
#include "nvmf/nvmf_int.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define H_RBUF (128u * 1024)
#define H_IOV_MAX 256

struct hq;

struct hreq {
    struct srrs_bench_req *breq;
    struct hq *q;
    uint16_t cid;
    bool busy;
    bool write;
    uint8_t tx_pending;
    bool done_wait;             /* response arrived while PDUs were still queued */
    int status;
    struct tx_pdu tx_cmd, tx_h2c;
    uint8_t h_cmd[PDU_CMD_HLEN + 8];
    uint8_t h_h2c[PDU_DATA_HLEN + 8];
    struct hreq *next;
};

struct hq {
    struct srrs_nvmf_host *h;
    int fd;
    uint16_t qid;
    uint32_t nslots;
    bool hdgst, ddgst;
    struct hreq *slots;
    struct hreq *free;
    struct srrs_poller *wake;
    /* rx */
    uint8_t *rbuf;
    uint32_t rhead, rtail;
    int rx_state;               /* 0 header, 1 data, 2 data digest */
    uint8_t hdr[PDU_MAX_HDR];
    uint32_t hdr_have, hdr_need;
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
    bool rx_ready;              /* epoll said readable (or no epoll set: always) */
};

struct srrs_nvmf_host {
    struct srrs_nvmf_host_opts o;
    char subnqn[224], hostnqn[224], addr[64];
    struct srrs_nvmf_host_info info;
    struct hq admin;
    struct hq *ioq;
    uint32_t nioq;
    uint8_t hostid[16];
    uint32_t rr;
    int err;
    /* Completions reach the job from our own poller, never from inside the
     * job's poll callback: the job may finish (and be freed by its waiting
     * thread) on the last one, and its poller must not run on after that. */
    struct hreq *done_head, *done_tail;
    struct srrs_poller *deliver;
    /* With several queues, one epoll_wait per poll finds the readable ones
     * instead of a recv per queue. */
    int epfd;
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

static int q_icreq(struct hq *q, bool hd, bool dd)
{
    struct pdu_icreq ic = {0};
    ic.ch.type = PDU_ICREQ;
    ic.ch.hlen = PDU_IC_LEN;
    ic.ch.plen = PDU_IC_LEN;
    ic.dgst = (uint8_t)((hd ? 1 : 0) | (dd ? 2 : 0));
    int rc = send_all(q->fd, &ic, sizeof(ic));
    struct pdu_icresp r;
    if (!rc)
        rc = recv_all(q->fd, &r, sizeof(r));
    if (rc)
        return rc;
    if (r.ch.type != PDU_ICRESP || r.ch.plen != PDU_IC_LEN || r.pfv != 0)
        return srrs_err(-EPROTO, "nvmf host: bad ICResp (type %u)", r.ch.type);
    q->hdgst = r.dgst & 1;
    q->ddgst = r.dgst & 2;
    if (q->h->info.maxh2cdata == 0 || r.maxh2cdata < q->h->info.maxh2cdata)
        q->h->info.maxh2cdata = r.maxh2cdata;
    if (r.maxh2cdata < 4096)
        return srrs_err(-EPROTO, "nvmf host: MAXH2CDATA %u is too small", r.maxh2cdata);
    return 0;
}

static uint32_t seal(bool hdgst, bool ddgst, uint8_t *h, uint8_t type, uint8_t flags, uint8_t hlen,
                     uint32_t dlen)
{
    struct pdu_ch *ch = (struct pdu_ch *)h;
    uint32_t hl = hlen + (hdgst ? 4u : 0u);
    bool dd = ddgst && dlen;
    ch->type = type;
    ch->flags = (uint8_t)(flags | (hdgst ? PDU_F_HDGST : 0) | (dd ? PDU_F_DDGST : 0));
    ch->hlen = hlen;
    ch->pdo = dlen ? (uint8_t)hl : 0;
    ch->plen = hl + dlen + (dd ? 4u : 0u);
    if (hdgst) {
        uint32_t c = srrs_crc32c(0, h, hlen);
        memcpy(h + hlen, &c, 4);
    }
    return hl;
}

/* Reads one PDU header (with digest) on a blocking socket. */
static int read_pdu_hdr(struct hq *q, uint8_t *hdr, uint32_t *payload)
{
    int rc = recv_all(q->fd, hdr, PDU_CH_LEN);
    if (rc)
        return rc;
    struct pdu_ch *ch = (struct pdu_ch *)hdr;
    if (ch->hlen < PDU_CH_LEN || ch->hlen > PDU_IC_LEN)
        return srrs_err(-EPROTO, "nvmf host: bad header length %u", ch->hlen);
    bool hd = q->hdgst && ch->type != PDU_C2H_TERM;
    uint32_t hl = ch->hlen + (hd ? 4u : 0u);
    if (ch->plen < hl)
        return srrs_err(-EPROTO, "nvmf host: bad PDU length");
    rc = recv_all(q->fd, hdr + PDU_CH_LEN, hl - PDU_CH_LEN);
    if (rc)
        return rc;
    if (ch->type == PDU_C2H_TERM)
        return srrs_err(-ECONNRESET, "nvmf host: target sent a termination request (FES %u)",
                        ((struct pdu_term *)hdr)->fes);
    if (hd) {
        uint32_t want;
        memcpy(&want, hdr + ch->hlen, 4);
        if (want != srrs_crc32c(0, hdr, ch->hlen))
            return srrs_err(-EPROTO, "nvmf host: header digest error");
    }
    *payload = ch->plen - hl;
    if (*payload && ch->pdo > hl) {
        uint8_t pad[256];
        rc = recv_all(q->fd, pad, ch->pdo - hl);
        if (rc)
            return rc;
        *payload -= ch->pdo - hl;
    }
    return 0;
}

/* One command, synchronously: in-capsule data out, or data in. */
static int sync_cmd(struct hq *q, struct nvme_sqe *sqe, const void *out, uint32_t out_len, void *in,
                    uint32_t in_len, struct nvme_cqe *cqe)
{
    uint8_t hdr[PDU_MAX_HDR + 8] = {0};
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
    uint32_t hl = seal(q->hdgst, q->ddgst, hdr, PDU_CMD, 0, PDU_CMD_HLEN, out_len);
    int rc = send_all(q->fd, hdr, hl);
    if (!rc && out_len)
        rc = send_all(q->fd, out, out_len);
    if (!rc && out_len && q->ddgst) {
        uint32_t c = srrs_crc32c(0, out, out_len);
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
        uint32_t dd = q->ddgst ? 4 : 0;
        if (payload < dd || d->len != payload - dd || d->off > in_len || d->len > in_len - d->off)
            return srrs_err(-EPROTO, "nvmf host: C2HData outside the buffer");
        rc = recv_all(q->fd, (uint8_t *)in + d->off, d->len);
        uint32_t got = 0;
        if (!rc && dd)
            rc = recv_all(q->fd, &got, 4);
        if (rc)
            return rc;
        if (dd && got != srrs_crc32c(0, (uint8_t *)in + d->off, d->len))
            return srrs_err(-EPROTO, "nvmf host: data digest error");
        if (ch->flags & PDU_F_SUCCESS) {
            memset(cqe, 0, sizeof(*cqe));
            cqe->cid = sqe->cid;
            return 0;
        }
    }
}

static int cmd_status(const struct nvme_cqe *cqe) { return cqe->status >> 1; }

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

static int q_open(struct srrs_nvmf_host *h, struct hq *q)
{
    q->h = h;
    q->fd = sock_connect(h->addr, h->o.port, h->o.timeout_ms);
    if (q->fd < 0)
        return q->fd;
    return q_icreq(q, h->o.hdgst, h->o.ddgst);
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

static void host_free(struct srrs_nvmf_host *h)
{
    if (h->epfd >= 0)
        close(h->epfd);
    q_close(&h->admin);
    for (uint32_t i = 0; i < h->nioq; i++)
        q_close(&h->ioq[i]);
    free(h->ioq);
    free(h);
}

static struct srrs_nvmf_host *host_new(const char *addr, int port, const char *subnqn,
                                       const char *hostnqn, int timeout_ms)
{
    struct srrs_nvmf_host *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->admin.fd = -1;
    h->epfd = -1;
    snprintf(h->addr, sizeof(h->addr), "%s", addr);
    snprintf(h->subnqn, sizeof(h->subnqn), "%s", subnqn);
    snprintf(h->hostnqn, sizeof(h->hostnqn), "%s",
             hostnqn && *hostnqn ? hostnqn
                                 : "nqn.2014-08.org.nvmexpress:uuid:5352532d-0000-4000-8000-000000000001");
    for (uint32_t k = 0; k < 4; k++) {
        uint32_t c = srrs_crc32c(k, h->hostnqn, strlen(h->hostnqn));
        memcpy(h->hostid + 4 * k, &c, 4);
    }
    h->o.port = port;
    h->o.timeout_ms = timeout_ms > 0 ? timeout_ms : 5000;
    return h;
}

int srrs_nvmf_host_connect(const struct srrs_nvmf_host_opts *o, struct srrs_nvmf_host **out)
{
    if (!o || !o->addr || !o->subnqn || !out || o->nqueues < 1 || o->nqueues > NVMF_MAX_IOQ ||
        o->qsize < 2 || o->qsize > 1024)
        return srrs_err(-EINVAL, "nvmf host: need addr, subnqn, 1..64 queues of 2..1024 entries");
    struct srrs_nvmf_host *h = host_new(o->addr, o->port, o->subnqn, o->hostnqn, o->timeout_ms);
    if (!h)
        return srrs_err(-ENOMEM, "nvmf host: out of memory");
    int to = h->o.timeout_ms;
    h->o = *o;
    h->o.timeout_ms = to;
    int rc = q_open(h, &h->admin);
    if (!rc) {
        rc = q_connect(h, &h->admin, 0, 32, 0xFFFF, o->kato_ms);
        if (rc >= 0) {
            h->info.cntlid = (uint16_t)rc;
            rc = 0;
        }
    }
    uint64_t cap = 0;
    if (!rc)
        rc = prop(&h->admin, false, PROP_CAP, 0, true, &cap);
    uint32_t qsize = SRRS_MIN(o->qsize, (uint32_t)(cap & 0xffff) + 1); /* CAP.MQES */
    if (!rc)
        rc = enable_ctrlr(&h->admin, to);
    uint8_t *id = calloc(1, 4096);
    if (!id)
        rc = srrs_err(-ENOMEM, "nvmf host: out of memory");
    if (!rc)
        rc = admin_cmd(&h->admin, ADM_IDENTIFY, 0, 1, 0, id, 4096, NULL);
    if (!rc) {
        memcpy(h->info.sn, id + 4, 20);
        memcpy(h->info.mn, id + 24, 40);
        uint32_t ioccsz;
        memcpy(&ioccsz, id + 1792, 4);
        h->info.ioccsz_bytes = ioccsz >= 4 ? ioccsz * 16 - 64 : 0;
        h->info.mdts_bytes = id[77] ? 4096u << id[77] : (1u << 30);
        memcpy(&h->info.nn, id + 516, 4);
        uint32_t dw0 = 0, n = o->nqueues - 1;
        rc = admin_cmd(&h->admin, ADM_SET_FEATURES, 0, 0x07, n | n << 16, NULL, 0, &dw0);
        if (!rc && SRRS_MIN(dw0 & 0xffff, dw0 >> 16) + 1 < o->nqueues)
            rc = srrs_err(-ENOSPC, "nvmf host: target grants only %u I/O queues",
                          SRRS_MIN(dw0 & 0xffff, dw0 >> 16) + 1);
    }
    if (!rc) {
        memset(id, 0, 4096);
        rc = admin_cmd(&h->admin, ADM_IDENTIFY, 1, 0, 0, id, 4096, NULL);
        if (!rc) {
            uint64_t nsze;
            memcpy(&nsze, id, 8);
            uint8_t lbads = id[130 + 4 * (id[26] & 0xf)];
            if (!nsze || lbads < 9 || lbads > 12)
                rc = srrs_err(-ENODEV, "nvmf host: namespace 1 is not active");
            h->info.block_size = 1u << (lbads & 31);
            h->info.size = nsze * h->info.block_size;
        }
    }
    free(id);
    if (!rc) {
        h->ioq = calloc(o->nqueues, sizeof(*h->ioq));
        if (!h->ioq)
            rc = srrs_err(-ENOMEM, "nvmf host: out of memory");
    }
    for (uint32_t i = 0; !rc && i < o->nqueues; i++) {
        struct hq *q = &h->ioq[i];
        q->fd = -1;
        h->nioq++;
        rc = q_open(h, q);
        if (!rc) {
            rc = q_connect(h, q, (uint16_t)(i + 1), qsize, h->info.cntlid, 0);
            rc = rc > 0 ? 0 : rc;
        }
        if (!rc) {
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
        }
    }
    if (!rc && h->nioq >= 2) {
        h->epfd = epoll_create1(EPOLL_CLOEXEC);
        for (uint32_t i = 0; h->epfd >= 0 && i < h->nioq; i++) {
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &h->ioq[i]};
            if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, h->ioq[i].fd, &ev)) {
                close(h->epfd); /* fall back to a recv per queue */
                h->epfd = -1;
            }
        }
    }
    if (rc) {
        host_free(h);
        return rc;
    }
    h->info.nqueues = h->nioq;
    *out = h;
    return 0;
}

int srrs_nvmf_host_get_info(struct srrs_nvmf_host *h, struct srrs_nvmf_host_info *out)
{
    *out = h->info;
    return 0;
}

void srrs_nvmf_host_disconnect(struct srrs_nvmf_host **ph)
{
    struct srrs_nvmf_host *h = ph ? *ph : NULL;
    if (!h)
        return;
    if (h->admin.fd >= 0)
        prop(&h->admin, true, PROP_CC, 1u | 1u << 14 | 6u << 16 | 4u << 20, false, NULL);
    host_free(h);
    *ph = NULL;
}

int srrs_nvmf_discover(const char *addr, int port, const char *hostnqn, uint8_t *buf, int max,
                       int timeout_ms)
{
    if (!addr || max < 0)
        return srrs_err(-EINVAL, "nvmf discover: bad arguments");
    struct srrs_nvmf_host *h = host_new(addr, port, NVMF_DISCOVERY_NQN, hostnqn, timeout_ms);
    if (!h)
        return srrs_err(-ENOMEM, "nvmf discover: out of memory");
    int rc = q_open(h, &h->admin);
    if (!rc) {
        rc = q_connect(h, &h->admin, 0, 32, 0xFFFF, 0);
        rc = rc > 0 ? 0 : rc;
    }
    if (!rc)
        rc = enable_ctrlr(&h->admin, h->o.timeout_ms);
    uint32_t len = 1024u * (uint32_t)(max + 1);
    uint8_t *log = calloc(1, len);
    if (!log)
        rc = srrs_err(-ENOMEM, "nvmf discover: out of memory");
    uint64_t numrec = 0;
    if (!rc) {
        uint32_t numd = len / 4 - 1;
        rc = admin_cmd(&h->admin, ADM_GET_LOG_PAGE, 0, 0x70 | (numd & 0xffff) << 16, numd >> 16,
                       log, len, NULL);
    }
    if (!rc) {
        memcpy(&numrec, log + 8, 8);
        uint64_t n = SRRS_MIN(numrec, (uint64_t)max);
        if (buf)
            memcpy(buf, log + 1024, n * 1024);
    }
    free(log);
    host_free(h);
    return rc ? rc : (int)numrec;
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
    if (h->done_tail)
        h->done_tail->next = r;
    else
        h->done_head = r;
    h->done_tail = r;
}

static int host_deliver(void *ctx)
{
    struct srrs_nvmf_host *h = ctx;
    struct hreq *r = h->done_head;
    int n = 0;
    h->done_head = h->done_tail = NULL;
    while (r) {
        struct hreq *next = r->next;
        struct hq *q = r->q;
        struct srrs_bench_req *b = r->breq;
        int st = r->status;
        r->busy = false;
        r->breq = NULL;
        r->next = q->free;
        q->free = r;
        srrs_bench_req_done(b, st);
        r = next;
        n++;
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
    int n = 0;
    uint32_t skip = q->tx_off;
    for (struct tx_pdu *p = q->tx_head; p && n + 3 <= H_IOV_MAX; p = p->next) {
        struct iovec seg[3] = {{p->hdr, p->hlen}, {p->data, p->dlen}, {&p->ddgst, 4}};
        int nseg = p->has_ddgst ? 3 : (p->dlen ? 2 : 1);
        for (int i = 0; i < nseg; i++) {
            if (skip >= seg[i].iov_len) {
                skip -= (uint32_t)seg[i].iov_len;
                continue;
            }
            iov[n].iov_base = (uint8_t *)seg[i].iov_base + skip;
            iov[n++].iov_len = seg[i].iov_len - skip;
            skip = 0;
        }
    }
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n};
    ssize_t s = sendmsg(q->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (s < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            hq_fail(q, "send failed");
        return 0;
    }
    uint64_t left = (uint64_t)s;
    while (left && q->tx_head) {
        struct tx_pdu *p = q->tx_head;
        uint32_t rem = p->hlen + p->dlen + (p->has_ddgst ? 4u : 0u) - q->tx_off;
        if (left < rem) {
            q->tx_off += (uint32_t)left;
            break;
        }
        left -= rem;
        q->tx_off = 0;
        q->tx_head = p->next;
        if (!q->tx_head)
            q->tx_tail = NULL;
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
    q->h->err = -EIO;
    for (uint32_t i = 0; i < q->nslots; i++) {
        struct hreq *r = &q->slots[i];
        if (r->busy) {
            r->status = -EIO;
            r->tx_pending = 0;
            r->done_wait = false;
            hreq_finish(q, r);
        }
    }
    (void)why;
}

static void hpdu_set(struct hq *q, struct tx_pdu *p, struct hreq *r, uint8_t *h, uint32_t hl,
                     void *data, uint32_t dlen)
{
    p->req = (struct nvmf_req *)(void *)r; /* opaque owner tag */
    p->hdr = h;
    p->hlen = hl;
    p->data = data;
    p->dlen = dlen;
    p->has_ddgst = q->ddgst && dlen;
    if (p->has_ddgst)
        p->ddgst = srrs_crc32c(0, data, dlen);
    r->tx_pending++;
    htx_queue(q, p);
}

static int host_submit(void *ctx, struct srrs_bench_req *b)
{
    struct srrs_nvmf_host *h = ctx;
    struct hq *q = &h->ioq[b->slot % h->nioq];
    struct hreq *r = q->free;
    if (!r)
        return -EAGAIN;
    q->free = r->next;
    r->busy = true;
    r->breq = b;
    r->status = 0;
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
    bool incap = r->write && b->len <= h->info.ioccsz_bytes;
    sqe->sgl.type = incap ? SGL_DATA_BLOCK_OFFSET : SGL_TRANSPORT_DATA_BLOCK;
    uint32_t hl = seal(q->hdgst, q->ddgst, r->h_cmd, PDU_CMD, 0, PDU_CMD_HLEN, incap ? b->len : 0);
    hpdu_set(q, &r->tx_cmd, r, r->h_cmd, hl, incap ? b->buf : NULL, incap ? b->len : 0);
    return 0;
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
    if (q->ddgst) {
        uint32_t got;
        memcpy(&got, q->ddg, 4);
        if (got != q->rx_crc && r)
            r->status = -EILSEQ;
    }
    h_rx_next(q);
    if (r && success)
        hreq_done(q, r, r->status);
}

static void h_hdr_done(struct hq *q)
{
    struct pdu_ch *ch = (struct pdu_ch *)q->hdr;
    bool hd = q->hdgst;
    if (hd) {
        uint32_t want;
        memcpy(&want, q->hdr + ch->hlen, 4);
        if (want != srrs_crc32c(0, q->hdr, ch->hlen)) {
            hq_fail(q, "header digest");
            return;
        }
    }
    uint32_t hl = q->hdr_need;
    switch (ch->type) {
    case PDU_RSP: {
        struct nvme_cqe cqe;
        memcpy(&cqe, q->hdr + PDU_CH_LEN, sizeof(cqe));
        h_rx_next(q);
        struct hreq *r = h_req(q, cqe.cid);
        if (r)
            hreq_done(q, r, cqe.status >> 1 ? -EIO : r->status);
        return;
    }
    case PDU_C2H_DATA: {
        struct pdu_data *d = (struct pdu_data *)q->hdr;
        uint32_t dd = q->ddgst ? 4 : 0;
        struct hreq *r = h_req(q, d->cccid);
        if (!r)
            return;
        if (r->write || ch->plen < (uint32_t)ch->pdo + dd || ch->pdo < hl ||
            ch->plen - ch->pdo - dd != d->len || d->off > r->breq->len ||
            d->len > r->breq->len - d->off || !d->len) {
            hq_fail(q, "bad C2HData");
            return;
        }
        q->rx_req = r;
        q->rx_dst = (uint8_t *)r->breq->buf + d->off;
        q->rx_left = d->len;
        q->rx_crc = 0;
        q->ddg_have = 0;
        q->pad_left = ch->pdo - hl;
        q->rx_success = ch->flags & PDU_F_SUCCESS;
        q->rx_state = 1;
        return;
    }
    case PDU_R2T: {
        struct pdu_data *d = (struct pdu_data *)q->hdr;
        struct hreq *r = h_req(q, d->cccid);
        h_rx_next(q);
        if (!r)
            return;
        if (!r->write || d->off > r->breq->len || d->len > r->breq->len - d->off || !d->len ||
            d->len > q->h->info.maxh2cdata) {
            hq_fail(q, "bad R2T");
            return;
        }
        struct pdu_data *o = (struct pdu_data *)r->h_h2c;
        memset(r->h_h2c, 0, sizeof(r->h_h2c));
        o->cccid = r->cid;
        o->ttag = d->ttag;
        o->off = d->off;
        o->len = d->len;
        bool last = d->off + d->len == r->breq->len;
        uint32_t h2 = seal(q->hdgst, q->ddgst, r->h_h2c, PDU_H2C_DATA, last ? PDU_F_LAST : 0,
                           PDU_DATA_HLEN, d->len);
        hpdu_set(q, &r->tx_h2c, r, r->h_h2c, h2, (uint8_t *)r->breq->buf + d->off, d->len);
        return;
    }
    default:
        hq_fail(q, "unexpected PDU");
    }
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
            if (q->hdr_have == PDU_CH_LEN) {
                struct pdu_ch *ch = (struct pdu_ch *)q->hdr;
                if (ch->type == PDU_C2H_TERM || ch->hlen != PDU_DATA_HLEN) {
                    hq_fail(q, "termination or bad header");
                    return;
                }
                q->hdr_need = ch->hlen + (q->hdgst ? 4u : 0u);
            }
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
            if (q->ddgst)
                q->rx_crc = srrs_crc32c(q->rx_crc, q->rx_dst, n);
            q->rx_dst += n;
            q->rx_left -= n;
            q->rhead += n;
            if (!q->rx_left) {
                if (q->ddgst)
                    q->rx_state = 2;
                else
                    h_data_end(q);
            }
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
            if (drained && q->h->epfd >= 0)
                q->rx_ready = false;
            if (direct) {
                if (q->ddgst)
                    q->rx_crc = srrs_crc32c(q->rx_crc, q->rx_dst, (size_t)n);
                q->rx_dst += n;
                q->rx_left -= (uint32_t)n;
                if (!q->rx_left) {
                    if (q->ddgst)
                        q->rx_state = 2;
                    else
                        h_data_end(q);
                }
            } else {
                q->rtail = (uint32_t)n;
            }
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            hq_fail(q, "connection lost");
        else if (q->h->epfd >= 0)
            q->rx_ready = false;
        break;
    }
    return work;
}

static int host_poll(void *ctx)
{
    struct srrs_nvmf_host *h = ctx;
    int work = 0;
    if (h->epfd >= 0) {
        struct epoll_event evs[NVMF_MAX_IOQ];
        int n = epoll_wait(h->epfd, evs, NVMF_MAX_IOQ, 0);
        for (int i = 0; i < n; i++)
            ((struct hq *)evs[i].data.ptr)->rx_ready = true;
    }
    for (uint32_t i = 0; i < h->nioq; i++) {
        struct hq *q = &h->ioq[i];
        work += hq_flush(q);
        if (h->epfd < 0 || q->rx_ready || q->rhead < q->rtail)
            work += hq_rx(q);
        work += hq_flush(q);
        if (q->tx_head)
            work++; /* keep polling: the socket is only watched for input */
    }
    return work;
}

static int wake_noop(void *arg)
{
    (void)arg;
    return 0;
}

static void host_watch_fn(void *arg)
{
    /* The reactor's adaptive sleep must wake on our sockets. */
    struct srrs_nvmf_host *h = arg;
    struct srrs_reactor *r = srrs_reactor_self();
    h->done_head = h->done_tail = NULL;
    h->deliver = srrs_poller_register(r, host_deliver, h, 0);
    for (uint32_t i = 0; i < h->nioq; i++)
        h->ioq[i].rx_ready = true;
    if (h->epfd >= 0) {
        struct hq *q0 = &h->ioq[0];
        q0->wake = srrs_poller_register(r, wake_noop, q0, 0);
        if (q0->wake)
            srrs_poller_set_fd(q0->wake, h->epfd, EPOLLIN, false);
        return;
    }
    for (uint32_t i = 0; i < h->nioq; i++) {
        struct hq *q = &h->ioq[i];
        q->wake = srrs_poller_register(r, wake_noop, q, 0);
        if (q->wake)
            srrs_poller_set_fd(q->wake, q->fd, EPOLLIN, false);
    }
}

static void host_unwatch_fn(void *arg)
{
    struct srrs_nvmf_host *h = arg;
    for (uint32_t i = 0; i < h->nioq; i++)
        srrs_poller_unregister(&h->ioq[i].wake);
    /* The job ended with nothing in flight; never hand it anything now. */
    for (struct hreq *r = h->done_head; r; r = r->next) {
        r->busy = false;
        r->breq = NULL;
    }
    h->done_head = h->done_tail = NULL;
    for (uint32_t i = 0; i < h->nioq; i++) {
        struct hq *q = &h->ioq[i];
        q->free = NULL;
        for (uint32_t k = q->nslots; k-- > 0;)
            if (!q->slots[k].busy) {
                q->slots[k].next = q->free;
                q->free = &q->slots[k];
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
    for (uint32_t i = 0; i < h->nioq; i++)
        if (h->ioq[i].broken)
            return srrs_err(-EIO, "nvmf bench: queue %u is broken", i + 1);
    uint32_t maxlen = SRRS_MAX(opts->bs, opts->bs_max);
    if (maxlen > h->info.mdts_bytes)
        return srrs_err(-EINVAL, "nvmf bench: I/O size %u above the target's MDTS %u", maxlen,
                        h->info.mdts_bytes);
    struct srrs_bench_target t = {.size = h->info.size, .block_size = h->info.block_size,
                                  .ctx = h, .submit = host_submit, .poll = host_poll};
    srrs_reactor_call(r, host_watch_fn, h);
    if (!h->deliver) {
        srrs_reactor_call(r, host_unwatch_fn, h);
        return srrs_err(-ENOMEM, "nvmf bench: cannot register a poller");
    }
    h->err = 0;
    int rc = srrs_bench_run(r, &t, opts, out);
    srrs_reactor_call(r, host_unwatch_fn, h);
    return rc;
}
