/*
 * NVMe/TCP transport of the target: listeners, connections, the PDU
 * receive/send state machines, command data movement (in-capsule data,
 * R2T/H2CData, C2HData) and the I/O commands.
 *
 * Threads: a connection lives on one reactor (round-robin at accept) inside
 * that reactor's poll group (one epoll set over its sockets, itself in the
 * reactor's epoll set so adaptive polling sleeps on it). Per poll a ready
 * connection does one recv into its staging buffer (or straight into the
 * command's data buffer for large payloads) and one sendmsg of every queued
 * PDU. Nothing here allocates, locks or runs Python per I/O.
 */
#include "nvmf/nvmf_int.h"
#include "nvmf/pdu.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define RBUF_SIZE (128u * 1024)
#define DIRECT_RECV_MIN 4096u
#define TX_IOV_MAX 256
#define RX_ROUNDS 16
#define GROUP_TICK_US 100000
#define LISTEN_POLL_US 1000

enum conn_state {
    CONN_IC = 0,   /* accepted; the next PDU must be ICReq (rx moves it on) */
    CONN_READY,    /* ICResp sent; commands flow */
    CONN_CLOSED,   /* socket shut; waits for commands at the bdev to return */
};

enum rx_state {
    RX_HDR = 0,    /* common header + PDU-specific header (+ header digest) */
    RX_PAD,        /* bytes between the header and PDO */
    RX_DATA,       /* payload into rx_dst (NULL: discard) */
    RX_DDGST,      /* data digest */
};

typedef void (*req_resume_fn)(struct nvmf_req *req);

struct nvmf_conn {
    struct nvmf_conn_pub pub;
    struct nvmf_group *grp;
    struct srrs_reactor *r;
    struct srrs_poller *watch;  /* the socket in the reactor's own set (conn_woken) */
    int fd;
    uint8_t state;
    struct pdu_fmt fmt;         /* digests and the host's HPDA, from the ICReq */
    struct srrs_flush flush;    /* the round's responses, sent at its end (conn_flush_end) */
    bool rx_ready;
    bool want_out;
    bool fatal;
    uint32_t maxr2t;
    uint16_t sqhd;
    /* receive */
    uint8_t *rbuf;
    uint32_t rhead, rtail;
    uint8_t rx_state;
    uint8_t hdr[PDU_MAX_HDR] __attribute__((aligned(8)));
    uint32_t hdr_have, hdr_need;
    uint32_t pad_left;
    uint8_t rx_type;
    struct pdu_geom rx_geo;     /* of the PDU being received (pdu_ch_check) */
    bool rx_has_data;           /* the PDU carries a payload (and so a data digest) */
    struct nvmf_req *rx_req;
    uint8_t *rx_dst;
    uint32_t rx_left;
    uint32_t rx_crc;
    uint8_t ddg[4];
    uint32_t ddg_have;
    /* send */
    struct tx_pdu *tx_head, *tx_tail;
    uint32_t tx_off;
    struct tx_pdu tx_misc;      /* ICResp or C2HTermReq */
    uint8_t misc_hdr[PDU_TERM_HLEN + PDU_MAX_HDR + 8];
    /* commands */
    struct nvmf_req *reqs;
    uint32_t nreqs;
    struct nvmf_req *free_reqs;
    struct nvmf_req *wait_head, *wait_tail;
    uint32_t outstanding;
    uint8_t *icmem;
    struct nvmf_req *aer[NVMF_MAX_AER];
    uint32_t naer;
    /* stats (read racily by the control thread) */
    uint64_t st_cmds, st_reads, st_writes, st_bread, st_bwritten, st_errors;
    uint64_t born;              /* ticks at accept */
    struct nvmf_conn *gnext, *tnext;
    /* handshaking (no Connect yet): on tgt->hs list, under tgt->hs_lock */
    struct nvmf_conn *hs_prev, *hs_next;
    _Atomic bool hs_linked;
    _Atomic bool evict;         /* the listener wants it closed for a newer one */
    _Atomic bool spoke;         /* an ICReq came: not an idle socket */
    int ri;                     /* reactor it was handed to */
    char src[48];               /* peer address without the port */
};

struct nvmf_group {
    struct srrs_nvmf_tgt *tgt;
    struct srrs_reactor *r;
    int epfd;
    struct srrs_poller *poller, *tick;
    int stop_hook;
    struct nvmf_conn *conns;
    uint32_t nconns;
    bool polled_empty;          /* the last epoll_wait found nothing */
    bool woken;                 /* a sleep reported its ready sockets (conn_woken) */
};

struct nvmf_listener {
    struct srrs_nvmf_tgt *tgt;
    struct srrs_reactor *r;
    struct srrs_poller *poller;
    int fd;
    int spare_fd;               /* given up to accept-and-close when out of descriptors */
    char addr[64];
    int port;
    struct nvmf_listener *next;
};

struct nvmf_conn_pub *nvmf_conn_pub(struct nvmf_conn *c) { return &c->pub; }
int nvmf_conn_reactor(struct nvmf_conn *c) { return srrs_reactor_idx(c->r); }

static inline uint32_t sqe_dir(const struct nvme_sqe *cmd)
{
    /* Data direction is the low two opcode bits (fabrics: of fctype). */
    uint8_t op = cmd->opc == OPC_FABRICS ? (uint8_t)(cmd->nsid & 0xff) : cmd->opc;
    return op & 3u;
}

/* ---- send path ------------------------------------------------------------ */

static void tx_queue(struct nvmf_conn *c, struct tx_pdu *p)
{
    p->next = NULL;
    if (c->tx_tail)
        c->tx_tail->next = p;
    else
        c->tx_head = p;
    c->tx_tail = p;
    if (p->req)
        p->req->tx_pending++;
}

/* A queued PDU of this connection (nvmf/pdu.h frames it). */
static void tx_set(struct nvmf_conn *c, struct tx_pdu *p, struct nvmf_req *req, uint8_t *h,
                   uint32_t hl, void *data, uint32_t dlen)
{
    pdu_tx_set(&c->fmt, p, req, h, hl, data, dlen);
}

static void req_free(struct nvmf_req *req);
static void req_put_ns(struct nvmf_req *req);
static void hs_unlink(struct nvmf_conn *c);

static void pdu_sent(struct nvmf_conn *c, struct tx_pdu *p)
{
    struct nvmf_req *req = p->req;
    if (!req)
        return;
    req->tx_pending--;
    if (req->state == REQ_TX && !req->tx_pending)
        req_free(req);
}

static void conn_set_out(struct nvmf_conn *c, bool on)
{
    if (c->want_out == on || c->fd < 0)
        return;
    c->want_out = on;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(c->grp->epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* One sendmsg of as much of the queue as fits; returns 1 if it sent. */
static int conn_flush(struct nvmf_conn *c)
{
    if (!c->tx_head || c->fd < 0)
        return 0;
    struct iovec iov[TX_IOV_MAX];
    int n = pdu_queue_iov(c->tx_head, c->tx_off, iov, TX_IOV_MAX);
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n};
    ssize_t s = sendmsg(c->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (s < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            conn_set_out(c, true);
            return 0;
        }
        nvmf_conn_close(c, "send failed");
        return 1;
    }
    uint64_t left = (uint64_t)s;
    struct tx_pdu *p;
    while ((p = pdu_queue_pop_sent(&c->tx_head, &c->tx_tail, &c->tx_off, &left)))
        pdu_sent(c, p);
    conn_set_out(c, c->tx_head != NULL);
    return 1;
}

/* End of the round in which requests completed: their responses go out now,
 * in one sendmsg with whatever else the round queued, not on the next round's
 * poll (docs/architecture.md, Threads: flushes). */
static void conn_flush_end(void *arg)
{
    struct nvmf_conn *c = arg;
    if (c->state != CONN_CLOSED && !c->want_out) /* want_out: the socket was full, EPOLLOUT says when */
        conn_flush(c);
}

/* ---- requests ----------------------------------------------------------------- */

static void req_free(struct nvmf_req *req)
{
    struct nvmf_conn *c = req->c;
    if (req->pool_len)
        srrs_buf_put(c->r, req->buf, req->pool_len);
    req->pool_len = 0;
    req->buf = NULL;
    req->state = REQ_FREE;
    req->next = c->free_reqs;
    c->free_reqs = req;
    c->outstanding--;
}

static void req_wait(struct nvmf_req *req, req_resume_fn fn)
{
    struct nvmf_conn *c = req->c;
    req->state = REQ_WAIT;
    /* The resume function rides in the unused R2T PDU's data pointer. */
    req->tx_r2t.data = (void *)fn;
    req->next = NULL;
    if (c->wait_tail)
        c->wait_tail->next = req;
    else
        c->wait_head = req;
    c->wait_tail = req;
}

static int conn_run_waits(struct nvmf_conn *c)
{
    int n = 0;
    struct nvmf_req *req = c->wait_head;
    c->wait_head = c->wait_tail = NULL;
    while (req) {
        struct nvmf_req *next = req->next;
        if (c->state == CONN_CLOSED) {
            req_put_ns(req);
            req_free(req);
        } else {
            req_resume_fn fn = (req_resume_fn)req->tx_r2t.data;
            req->state = REQ_EXEC;
            fn(req);
            n++;
        }
        req = next;
    }
    return n;
}

uint8_t *nvmf_req_data_buf(struct nvmf_req *req, uint32_t len)
{
    if (req->buf)
        return req->buf;
    if (len <= NVMF_ICDSZ) {
        req->buf = req->icbuf;
        return req->buf;
    }
    req->buf = srrs_buf_get(req->c->r, len);
    if (req->buf)
        req->pool_len = len;
    return req->buf;
}

void nvmf_req_complete(struct nvmf_req *req, uint16_t status, uint64_t result)
{
    struct nvmf_conn *c = req->c;
    req_put_ns(req);
    if (c->state == CONN_CLOSED) {
        req_free(req);
        return;
    }
    if (status)
        c->st_errors++;
    struct nvme_cqe *cqe = &req->cpl;
    memset(cqe, 0, sizeof(*cqe));
    cqe->dw0 = (uint32_t)result;
    cqe->dw1 = (uint32_t)(result >> 32);
    cqe->sqhd = c->sqhd;
    cqe->sqid = c->pub.qid;
    cqe->cid = req->cmd.cid;
    cqe->status = (uint16_t)(status << 1);
    req->state = REQ_TX;
    if (!status && req->c2h && req->dlen && req->buf) {
        pdu_data_hdr(req->h_data, req->cmd.cid, 0, 0, req->dlen);
        bool success = c->pub.sqhd_disabled;
        uint32_t hl = pdu_seal(&c->fmt, req->h_data, PDU_C2H_DATA,
                               PDU_F_LAST | (success ? PDU_F_SUCCESS : 0), req->dlen);
        tx_set(c, &req->tx_data, req, req->h_data, hl, req->buf, req->dlen);
        tx_queue(c, &req->tx_data);
        if (success) {
            if (srrs_likely(c->r == srrs_reactor_self()))
                srrs_reactor_flush(c->r, &c->flush);
            return;
        }
    }
    struct pdu_rsp *r = (struct pdu_rsp *)req->h_rsp;
    r->cqe = *cqe;
    uint32_t hl = pdu_seal(&c->fmt, req->h_rsp, PDU_RSP, 0, 0);
    tx_set(c, &req->tx_rsp, req, req->h_rsp, hl, NULL, 0);
    tx_queue(c, &req->tx_rsp);
    if (srrs_likely(c->r == srrs_reactor_self()))
        srrs_reactor_flush(c->r, &c->flush);
}

void nvmf_conn_park_aer(struct nvmf_req *req)
{
    struct nvmf_conn *c = req->c;
    if (c->naer >= NVMF_MAX_AER) {
        nvmf_req_complete(req, SC_AER_LIMIT, 0);
        return;
    }
    req->state = REQ_AER;
    c->aer[c->naer++] = req;
}

struct nvmf_req *nvmf_aer_take(struct nvmf_conn *c)
{
    if (!c->naer)
        return NULL;
    struct nvmf_req *req = c->aer[0];
    memmove(&c->aer[0], &c->aer[1], (c->naer - 1) * sizeof(c->aer[0]));
    c->naer--;
    return req;
}

struct nvmf_req *nvmf_aer_take_cid(struct nvmf_conn *c, uint16_t cid)
{
    for (uint32_t i = 0; i < c->naer; i++) {
        struct nvmf_req *req = c->aer[i];
        if (req->cmd.cid == cid) {
            memmove(&c->aer[i], &c->aer[i + 1], (c->naer - i - 1) * sizeof(c->aer[0]));
            c->naer--;
            return req;
        }
    }
    return NULL;
}

/* ---- I/O commands -------------------------------------------------------- */

static uint16_t io_status(int err, int op)
{
    switch (err) {
    case 0:
        return SC_SUCCESS;
    case -ERANGE:
        return SC_LBA_RANGE;
    case -ENOSPC:
    case -EDQUOT:
        return SC_CAPACITY_EXCEEDED;
    case -EIO:
        return op == SRRS_IO_READ ? SC(2, 0x81) : SC(2, 0x80);
    case -ENOTCONN:
        /* A fenced replica (docs/architecture.md, Pair): path error, no DNR, so the host's
         * multipath retries the I/O on the other controller. */
        return SC(3, 0x02); /* ANA Inaccessible */
    case -EAGAIN:
        return SC(3, 0x03); /* ANA Transition: the pair is asking the witness */
    default:
        return SC_INTERNAL;
    }
}

static void io_done(struct srrs_io *io, void *arg)
{
    struct nvmf_req *req = arg;
    uint16_t st = io_status(io->status, io->op);
    srrs_io_put(io);
    if (st && !req->first_status)
        req->first_status = st;
    if (--req->pending)
        return;
    nvmf_req_complete(req, req->first_status, 0);
}

struct dsm_range {
    uint32_t cattr;
    uint32_t nlb;
    uint64_t slba;
} __attribute__((packed));

static void io_step(struct nvmf_req *req);

static void io_submit(struct nvmf_req *req, int op, uint64_t off, uint64_t len, void *buf)
{
    struct srrs_io *io = srrs_io_get(req->c->r);
    if (!io) {
        req_wait(req, io_step);
        return;
    }
    srrs_io_prep(io, req->ns->bdev, op, off, len, buf, io_done, req);
    req->pending = 1;
    req->state = REQ_EXEC;
    srrs_bdev_submit(io);
}

/* Resumable: called again from the wait list when a buffer or I/O object
 * was missing. */
static void io_step(struct nvmf_req *req)
{
    struct nvmf_ns *ns = req->ns;
    const struct nvme_sqe *cmd = &req->cmd;
    uint64_t slba = (uint64_t)cmd->cdw10 | (uint64_t)cmd->cdw11 << 32;
    uint64_t len = ((uint64_t)(cmd->cdw12 & 0xffff) + 1) << ns->block_shift;
    uint64_t off = slba << ns->block_shift;
    switch (cmd->opc) {
    case IO_READ:
        if (!nvmf_req_data_buf(req, req->dlen)) {
            req_wait(req, io_step);
            return;
        }
        io_submit(req, SRRS_IO_READ, off, len, req->buf);
        return;
    case IO_WRITE:
        io_submit(req, SRRS_IO_WRITE, off, len, req->buf);
        return;
    case IO_WRITE_ZEROES:
        io_submit(req, SRRS_IO_WRITE_ZEROES, off, len, NULL);
        return;
    case IO_FLUSH:
        io_submit(req, SRRS_IO_FLUSH, 0, 0, NULL);
        return;
    case IO_DSM: {
        uint32_t nr = (cmd->cdw10 & 0xff) + 1;
        struct srrs_io *ios[256];
        uint32_t got = 0;
        for (; got < nr; got++) {
            ios[got] = srrs_io_get(req->c->r);
            if (!ios[got])
                break;
        }
        if (got < nr) {
            while (got)
                srrs_io_put(ios[--got]);
            req_wait(req, io_step);
            return;
        }
        const struct dsm_range *rg = (const struct dsm_range *)req->buf;
        req->pending = nr;
        req->state = REQ_EXEC;
        for (uint32_t i = 0; i < nr; i++) {
            uint64_t nlb = rg[i].nlb;
            /* A zero-length range deallocates nothing: complete it as a flush-free no-op. */
            if (!nlb) {
                srrs_io_prep(ios[i], NULL, SRRS_IO_UNMAP, 0, 0, NULL, io_done, req);
                srrs_io_complete(ios[i], 0);
                continue;
            }
            srrs_io_prep(ios[i], ns->bdev, SRRS_IO_UNMAP, rg[i].slba << ns->block_shift,
                         nlb << ns->block_shift, NULL, io_done, req);
            srrs_bdev_submit(ios[i]);
        }
        return;
    }
    }
    nvmf_req_complete(req, SC_INVALID_OPCODE, 0);
}

static inline bool lba_range_ok(const struct nvmf_ns *ns, uint64_t slba, uint64_t nlb)
{
    return slba < ns->num_blocks && nlb <= ns->num_blocks - slba;
}

static uint16_t ana_status(uint8_t state)
{
    switch (state) {
    case 1:
    case 2:
        return 0;
    case 3:
        return SC_ANA_INACCESSIBLE;
    case 4:
        return SC_ANA_PERSISTENT_LOSS;
    default:
        return SC_ANA_TRANSITION;
    }
}

static void io_exec(struct nvmf_req *req)
{
    struct nvmf_conn *c = req->c;
    struct nvmf_ctrlr *ct = c->pub.ctrlr;
    const struct nvme_sqe *cmd = &req->cmd;
    uint32_t cc = atomic_load_explicit(&ct->cc, memory_order_relaxed);
    if (!(cc & 1) || (cc >> 14 & 3)) {
        nvmf_req_complete(req, SC_CMD_SEQ_ERROR, 0);
        return;
    }
    if (atomic_load_explicit(&ct->dead, memory_order_relaxed)) {
        /* Torn down (its subsystem removed, its admin queue gone, keep-alive
         * expired): the queue closes at the poll group's next check. A command
         * that came meanwhile gets a path error without DNR, which a multipath
         * host retries on another path (docs/architecture.md, ANA and
         * multipath); with DNR, Linux would return it to the application. */
        nvmf_req_complete(req, SC_ANA_INACCESSIBLE, 0);
        return;
    }
    uint32_t nsid = cmd->nsid;
    struct nvmf_ns *ns = nsid >= 1 && nsid <= NVMF_MAX_NS
                             ? atomic_load_explicit(&ct->ss->ns[nsid], memory_order_acquire)
                             : NULL;
    if (!ns) {
        nvmf_req_complete(req, SC_INVALID_NS, 0);
        return;
    }
    uint16_t st = ana_status(atomic_load_explicit(&ct->ss->ana_state[ns->anagrpid],
                                                  memory_order_relaxed));
    if (st) {
        nvmf_req_complete(req, st, 0);
        return;
    }
    uint64_t slba = (uint64_t)cmd->cdw10 | (uint64_t)cmd->cdw11 << 32;
    uint64_t nlb = (uint64_t)(cmd->cdw12 & 0xffff) + 1;
    switch (cmd->opc) {
    case IO_READ:
    case IO_WRITE:
        if (!lba_range_ok(ns, slba, nlb))
            st = SC_LBA_RANGE;
        else if (req->dlen != nlb << ns->block_shift)
            st = SC_SGL_LEN_INVALID;
        break;
    case IO_WRITE_ZEROES:
        if (!lba_range_ok(ns, slba, nlb))
            st = SC_LBA_RANGE;
        break;
    case IO_FLUSH:
        break;
    case IO_DSM: {
        if (!(cmd->cdw11 & 4)) { /* no deallocate attribute: nothing to do */
            nvmf_req_complete(req, 0, 0);
            return;
        }
        uint32_t nr = (cmd->cdw10 & 0xff) + 1;
        if (!req->h2c || req->dlen < nr * sizeof(struct dsm_range) || !req->buf) {
            st = SC_SGL_LEN_INVALID;
            break;
        }
        const struct dsm_range *rg = (const struct dsm_range *)req->buf;
        for (uint32_t i = 0; i < nr && !st; i++)
            if (rg[i].nlb && !lba_range_ok(ns, rg[i].slba, rg[i].nlb))
                st = SC_LBA_RANGE;
        break;
    }
    default:
        st = SC_INVALID_OPCODE;
    }
    if (st) {
        nvmf_req_complete(req, st, 0);
        return;
    }
    int ri = srrs_reactor_idx(c->r);
    atomic_store_explicit(&ns->inflight[ri].n,
                          atomic_load_explicit(&ns->inflight[ri].n, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    req->ns = ns;
    req->first_status = 0;
    if (cmd->opc == IO_READ) {
        c->st_reads++;
        c->st_bread += req->dlen;
    } else if (cmd->opc == IO_WRITE) {
        c->st_writes++;
        c->st_bwritten += req->dlen;
    }
    io_step(req);
}

/* ---- command dispatch ---------------------------------------------------------- */

static void req_exec(struct nvmf_req *req)
{
    struct nvmf_conn *c = req->c;
    req->state = REQ_EXEC;
    if (req->data_err) {
        nvmf_req_complete(req, SC_TRANSIENT_XPORT, 0);
        return;
    }
    if (req->cmd.opc == OPC_FABRICS) {
        nvmf_fabrics_exec(req);
        /* Connected, and authenticated where the host must be: a queue, no
         * longer a handshake that the caps may evict. */
        if (c->pub.ctrlr && !c->pub.unauth)
            hs_unlink(c);
        return;
    }
    if (!c->pub.ctrlr) {
        nvmf_req_complete(req, SC_CMD_SEQ_ERROR, 0);
        return;
    }
    if (__builtin_expect(c->pub.unauth, 0)) { /* DH-HMAC-CHAP not done on this queue */
        nvmf_req_complete(req, SC_AUTH_REQUIRED, 0);
        return;
    }
    if (c->pub.qid == 0)
        nvmf_admin_exec(req);
    else
        io_exec(req);
}

static void r2t_send(struct nvmf_req *req)
{
    struct nvmf_conn *c = req->c;
    /* dlen <= MDTS = MAXH2CDATA: one R2T per command */
    pdu_data_hdr(req->h_r2t, req->cmd.cid, req->idx, 0, req->dlen);
    uint32_t hl = pdu_seal(&c->fmt, req->h_r2t, PDU_R2T, 0, 0);
    tx_set(c, &req->tx_r2t, req, req->h_r2t, hl, NULL, 0);
    req->state = REQ_H2C;
    req->r2t_at = srrs_ticks();
    tx_queue(c, &req->tx_r2t);
}

/* The capsule (and its in-capsule data) is in: fetch H2C data if the
 * command has more, else run it. */
static void req_start(struct nvmf_req *req)
{
    if (req->h2c && !req->in_capsule && req->dlen && req->rcvd < req->dlen) {
        if (!nvmf_req_data_buf(req, req->dlen)) {
            req_wait(req, req_start);
            return;
        }
        r2t_send(req);
        return;
    }
    req_exec(req);
}

static uint16_t capsule_check(struct nvmf_req *req, uint32_t icd)
{
    const struct nvme_sgl *sgl = &req->cmd.sgl;
    uint32_t dir = sqe_dir(&req->cmd);
    /* Fabrics data pointers are SGLs: PSDT 01b or 10b (00b is PRP, 11b reserved);
     * fused operations are not supported. */
    uint8_t psdt = req->cmd.flags >> 6;
    if ((psdt != 1 && psdt != 2) || (req->cmd.flags & 3))
        return SC_INVALID_FIELD;
    req->dlen = sgl->len;
    if (!sgl->len)
        return icd ? SC_SGL_LEN_INVALID : 0;
    if (dir == 3)
        return SC_INVALID_FIELD;
    req->h2c = dir == 1;
    req->c2h = dir == 2;
    if (sgl->type == SGL_DATA_BLOCK_OFFSET) {
        if (!req->h2c)
            return SC_SGL_TYPE_INVALID;
        if (sgl->addr != 0 || sgl->len != icd)
            return SC_SGL_LEN_INVALID;
        req->in_capsule = true;
        req->buf = req->icbuf;
        req->rcvd = icd;
        return 0;
    }
    if (sgl->type != SGL_TRANSPORT_DATA_BLOCK)
        return SC_SGL_TYPE_INVALID;
    if (icd)
        return SC_SGL_LEN_INVALID;
    if (sgl->len > NVMF_MDTS_BYTES)
        return SC_SGL_LEN_INVALID;
    if (!req->h2c && !req->c2h)
        return SC_INVALID_FIELD;
    return 0;
}

/* ---- receive path ------------------------------------------------------------------ */

static void req_put_ns(struct nvmf_req *req)
{
    struct nvmf_ns *ns = req->ns;
    if (!ns)
        return;
    int ri = srrs_reactor_idx(req->c->r);
    atomic_store_explicit(&ns->inflight[ri].n,
                          atomic_load_explicit(&ns->inflight[ri].n, memory_order_relaxed) - 1,
                          memory_order_release);
    req->ns = NULL;
}

static void conn_post(struct nvmf_conn *c, uint32_t type, const char *what)
{
    struct nvmf_ctrlr *ct = c->pub.ctrlr;
    srrs_event_post(c->pub.tgt->core, type, ct ? ct->cntlid : 0, c->pub.qid, c->pub.peer,
                    "%s%s%s", what, ct ? " " : "", ct ? ct->ss->nqn : "");
}

/* ---- handshaking connections ---------------------------------------------------- */

/* Under t->hs_lock. */
static void hs_unlink_locked(struct srrs_nvmf_tgt *t, struct nvmf_conn *c)
{
    if (!atomic_load(&c->hs_linked))
        return;
    if (c->hs_prev)
        c->hs_prev->hs_next = c->hs_next;
    else
        t->hs_head = c->hs_next;
    if (c->hs_next)
        c->hs_next->hs_prev = c->hs_prev;
    else
        t->hs_tail = c->hs_prev;
    c->hs_prev = c->hs_next = NULL;
    atomic_store(&c->hs_linked, false);
    t->hs_count--;
}

/* The connection got its Connect, or goes away: it no longer counts. A false
 * read needs no lock: only accept links, before the connection is handed on. */
static void hs_unlink(struct nvmf_conn *c)
{
    struct srrs_nvmf_tgt *t = c->pub.tgt;
    if (!atomic_load(&c->hs_linked))
        return;
    pthread_mutex_lock(&t->hs_lock);
    hs_unlink_locked(t, c);
    pthread_mutex_unlock(&t->hs_lock);
}

static void group_evict_fn(void *arg);

/* Under t->hs_lock: takes victim off the list and asks its reactor to close it. */
static void hs_evict_locked(struct srrs_nvmf_tgt *t, struct nvmf_conn *victim)
{
    if (!victim)
        return;
    hs_unlink_locked(t, victim);
    atomic_store(&victim->evict, true);
    srrs_reactor_send(srrs_core_reactor(t->core, victim->ri), group_evict_fn, t);
}

/* Listener, for a new connection c: a source at its limit loses one of its
 * handshaking connections, a full list one of all; then c joins the list.
 * The victim is the oldest idle one (no ICReq yet), else the oldest: a real
 * host's handshake takes milliseconds, an idle socket waits for the deadline. */
static void hs_admit(struct srrs_nvmf_tgt *t, struct nvmf_conn *c)
{
    pthread_mutex_lock(&t->hs_lock);
    uint32_t same = 0;
    struct nvmf_conn *same_idle = NULL, *same_any = NULL, *all_idle = NULL;
    for (struct nvmf_conn *x = t->hs_head; x; x = x->hs_next) {
        bool idle = !atomic_load(&x->spoke);
        if (idle && !all_idle)
            all_idle = x;
        if (!strcmp(x->src, c->src)) {
            same++;
            if (!same_any)
                same_any = x;
            if (idle && !same_idle)
                same_idle = x;
        }
    }
    if (same >= t->opts.max_handshaking_per_source)
        hs_evict_locked(t, same_idle ? same_idle : same_any);
    else if (t->hs_count >= t->opts.max_handshaking)
        hs_evict_locked(t, all_idle ? all_idle : t->hs_head);
    c->hs_prev = t->hs_tail;
    c->hs_next = NULL;
    if (t->hs_tail)
        t->hs_tail->hs_next = c;
    else
        t->hs_head = c;
    t->hs_tail = c;
    t->hs_count++;
    atomic_store(&c->hs_linked, true);
    pthread_mutex_unlock(&t->hs_lock);
}

void nvmf_conn_close(struct nvmf_conn *c, const char *why)
{
    if (c->state == CONN_CLOSED)
        return;
    c->state = CONN_CLOSED;
    hs_unlink(c);
    if (c->fd >= 0) {
        srrs_fd_watch_del(&c->watch);
        epoll_ctl(c->grp->epfd, EPOLL_CTL_DEL, c->fd, NULL);
        shutdown(c->fd, SHUT_RDWR);
        close(c->fd);
        c->fd = -1;
    }
    /* Drop unsent PDUs: their commands are over. */
    for (struct tx_pdu *p = c->tx_head; p; p = p->next)
        if (p->req)
            p->req->tx_pending--;
    c->tx_head = c->tx_tail = NULL;
    c->tx_off = 0;
    c->naer = 0;
    c->rx_req = NULL;
    /* Everything not at the bdev ends now; the rest ends in nvmf_req_complete. */
    for (uint32_t i = 0; i < c->nreqs; i++) {
        struct nvmf_req *req = &c->reqs[i];
        switch (req->state) {
        case REQ_RECV_CAPSULE:
        case REQ_H2C:
        case REQ_AER:
        case REQ_TX:
            req_put_ns(req);
            req_free(req);
            break;
        default:
            break;
        }
    }
    conn_post(c, SRRS_EV_CONN_DOWN, why);
}

static void conn_fatal(struct nvmf_conn *c, uint16_t fes, uint32_t fei)
{
    if (c->state == CONN_CLOSED || c->fatal)
        return;
    c->fatal = true;
    atomic_fetch_add(&c->pub.tgt->st_proto_errors, 1);
    srrs_event_post(c->pub.tgt->core, SRRS_EV_PROTO_ERROR, fes, fei, c->pub.peer,
                    "bad PDU (type %u): FES %u at byte %u; closing the connection",
                    c->hdr_have ? c->hdr[0] : 0xff, fes, fei);
    /* C2HTermReq carrying the offending header, then close. */
    uint32_t len = pdu_term_build(c->misc_hdr, PDU_C2H_TERM, fes, fei, c->hdr, c->hdr_have);
    tx_set(c, &c->tx_misc, NULL, c->misc_hdr, len, NULL, 0);
    tx_queue(c, &c->tx_misc);
    conn_flush(c);
    nvmf_conn_close(c, "protocol error");
}

/* Request slots and in-capsule buffers (~1 MiB at queue depth 128) come with
 * the ICReq, not the accept: an idle socket costs the target little. */
static bool conn_alloc_reqs(struct nvmf_conn *c)
{
    uint32_t n = c->pub.tgt->opts.max_queue_depth;
    c->reqs = calloc(n, sizeof(*c->reqs));
    c->icmem = aligned_alloc(4096, (size_t)n * NVMF_ICDSZ);
    if (!c->reqs || !c->icmem) {
        free(c->reqs);
        free(c->icmem);
        c->reqs = NULL;
        c->icmem = NULL;
        return false;
    }
    for (uint32_t i = n; i-- > 0;) {
        struct nvmf_req *req = &c->reqs[i];
        req->c = c;
        req->idx = (uint16_t)i;
        req->icbuf = c->icmem + (size_t)i * NVMF_ICDSZ;
        req->next = c->free_reqs;
        c->free_reqs = req;
    }
    c->nreqs = n;
    return true;
}

static void icreq_handle(struct nvmf_conn *c)
{
    const struct pdu_icreq *ic = (const struct pdu_icreq *)c->hdr;
    uint32_t fei;
    uint16_t fes = pdu_ic_check(c->hdr, &fei);
    if (fes) {
        conn_fatal(c, fes, fei);
        return;
    }
    if (!conn_alloc_reqs(c)) {
        nvmf_conn_close(c, "out of memory for the queue's request slots");
        return;
    }
    atomic_store(&c->spoke, true);
    const struct srrs_nvmf_tgt_opts *o = &c->pub.tgt->opts;
    c->fmt.hdgst = (ic->dgst & 1) && o->allow_hdgst;
    c->fmt.ddgst = (ic->dgst & 2) && o->allow_ddgst;
    c->fmt.align = pdu_align_bytes(ic->hpda);
    c->maxr2t = ic->maxr2t;
    pdu_ic_build(c->misc_hdr, PDU_ICRESP, 0, c->fmt.hdgst, c->fmt.ddgst, NVMF_MAXH2CDATA);
    tx_set(c, &c->tx_misc, NULL, c->misc_hdr, PDU_IC_LEN, NULL, 0);
    tx_queue(c, &c->tx_misc);
    c->state = CONN_READY;
}

static void rx_next_pdu(struct nvmf_conn *c)
{
    c->rx_state = RX_HDR;
    c->hdr_have = 0;
    c->hdr_need = PDU_CH_LEN;
    c->rx_req = NULL;
}

static void cmd_ready(struct nvmf_req *req)
{
    if (req->first_status) {
        uint16_t st = req->first_status;
        req->first_status = 0;
        req->state = REQ_EXEC;
        nvmf_req_complete(req, st, 0);
        return;
    }
    req_start(req);
}

/* Payload (and its digest) of the current PDU is in. */
static void rx_data_end(struct nvmf_conn *c)
{
    bool ok = true;
    if (c->fmt.ddgst && c->rx_has_data) {
        uint32_t got;
        memcpy(&got, c->ddg, 4);
        ok = got == c->rx_crc;
    }
    struct nvmf_req *req = c->rx_req;
    uint8_t type = c->rx_type;
    rx_next_pdu(c);
    if (!req)
        return;
    if (!ok) {
        req->data_err = true;
        srrs_event_post(c->pub.tgt->core, SRRS_EV_PROTO_ERROR, req->cmd.cid, 0, c->pub.peer,
                        "data digest error: command %u fails", req->cmd.cid);
    }
    if (type == PDU_CMD) {
        cmd_ready(req);
    } else if (req->rcvd == req->dlen) {
        req_exec(req);
    }
}

static void rx_begin_data(struct nvmf_conn *c, struct nvmf_req *req, uint8_t *dst, uint32_t len,
                          uint32_t pad)
{
    c->rx_req = req;
    c->rx_dst = dst;
    c->rx_left = len;
    c->rx_crc = 0;
    c->ddg_have = 0;
    c->pad_left = pad;
    c->rx_has_data = len > 0;
    if (!len) {
        rx_data_end(c);
        return;
    }
    c->rx_state = pad ? RX_PAD : RX_DATA;
}

static void rx_data(struct nvmf_conn *c, const uint8_t *src, uint32_t n, bool copy)
{
    if (c->rx_dst) {
        if (copy)
            memcpy(c->rx_dst, src, n);
        if (c->fmt.ddgst)
            c->rx_crc = pdu_crc(c->rx_crc, c->rx_dst, n);
        c->rx_dst += n;
    } else if (c->fmt.ddgst) {
        c->rx_crc = pdu_crc(c->rx_crc, src, n);
    }
    c->rx_left -= n;
    if (c->rx_left)
        return;
    if (c->fmt.ddgst)
        c->rx_state = RX_DDGST;
    else
        rx_data_end(c);
}

/* The common header is in: check it against the PDU type and what was
 * negotiated (nvmf/pdu.h), and learn how long the whole header is. false: fatal. */
static bool rx_ch_check(struct nvmf_conn *c)
{
    const struct pdu_ch *ch = (const struct pdu_ch *)c->hdr;
    bool known = ch->type < 16 && (pdu_rules_target.types & PDU_BIT(ch->type));
    if (known && (c->state == CONN_IC) != (ch->type == PDU_ICREQ) && ch->type != PDU_H2C_TERM) {
        conn_fatal(c, FES_PDU_SEQUENCE, 0);
        return false;
    }
    uint32_t fei;
    uint16_t fes = pdu_ch_check(ch, &c->fmt, &pdu_rules_target, &c->rx_geo, &fei);
    if (fes) {
        conn_fatal(c, fes, fei);
        return false;
    }
    c->hdr_need = c->rx_geo.hl;
    return true;
}

/* A command capsule's header is in: take a request slot and receive its
 * in-capsule data. */
static void rx_cmd_hdr(struct nvmf_conn *c)
{
    const struct pdu_geom *g = &c->rx_geo;
    if (g->dlen > NVMF_ICDSZ) {
        conn_fatal(c, FES_DATA_LIMIT, 4);
        return;
    }
    struct nvmf_req *req = c->free_reqs;
    if (!req) { /* more commands than the queue has entries */
        conn_fatal(c, FES_PDU_SEQUENCE, 0);
        return;
    }
    c->free_reqs = req->next;
    c->outstanding++;
    memcpy(&req->cmd, c->hdr + PDU_CH_LEN, sizeof(req->cmd));
    req->state = REQ_RECV_CAPSULE;
    req->h2c = req->c2h = req->in_capsule = req->data_err = false;
    req->dlen = req->rcvd = 0;
    req->buf = NULL;
    req->pool_len = 0;
    req->ns = NULL;
    req->pending = 0;
    req->tx_pending = 0;
    req->next = NULL;
    req->first_status = capsule_check(req, g->dlen);
    c->sqhd = c->pub.sqsize ? (uint16_t)((c->sqhd + 1u) % c->pub.sqsize) : (uint16_t)(c->sqhd + 1u);
    c->st_cmds++;
    rx_begin_data(c, req, req->icbuf, g->dlen, g->pad);
}

/* An H2CData header is in: it must continue its R2T's transfer exactly. */
static void rx_h2c_hdr(struct nvmf_conn *c)
{
    const struct pdu_ch *ch = (const struct pdu_ch *)c->hdr;
    const struct pdu_data *d = (const struct pdu_data *)c->hdr;
    if (d->ttag >= c->nreqs) {
        conn_fatal(c, FES_INVALID_HEADER, offsetof(struct pdu_data, ttag));
        return;
    }
    struct nvmf_req *req = &c->reqs[d->ttag];
    uint16_t fes = 0;
    uint32_t fei = 0;
    if (req->state != REQ_H2C)
        fes = FES_PDU_SEQUENCE, fei = offsetof(struct pdu_data, ttag);
    else if (d->cccid != req->cmd.cid)
        fes = FES_INVALID_HEADER, fei = offsetof(struct pdu_data, cccid);
    else if (d->off != req->rcvd)
        fes = FES_DATA_RANGE, fei = offsetof(struct pdu_data, off);
    else if (!d->len || d->len > req->dlen - req->rcvd)
        fes = FES_DATA_RANGE, fei = offsetof(struct pdu_data, len);
    else if (c->rx_geo.dlen != d->len)
        fes = FES_INVALID_HEADER, fei = 4;
    else if ((ch->flags & PDU_F_LAST) && d->off + d->len != req->dlen)
        fes = FES_PDU_SEQUENCE, fei = 1;
    if (fes) {
        conn_fatal(c, fes, fei);
        return;
    }
    uint8_t *dst = req->buf + d->off;
    req->rcvd += d->len; /* counted now; rx_data_end runs the command when all is in */
    rx_begin_data(c, req, dst, d->len, c->rx_geo.pad);
}

/* The whole header (and its digest) is in. */
static void rx_hdr_done(struct nvmf_conn *c)
{
    const struct pdu_ch *ch = (const struct pdu_ch *)c->hdr;
    if (c->rx_geo.hl > ch->hlen && !pdu_hdgst_ok(c->hdr)) {
        conn_fatal(c, FES_HDGST, 0);
        return;
    }
    c->rx_type = ch->type;
    switch (ch->type) {
    case PDU_ICREQ:
        rx_next_pdu(c);
        icreq_handle(c);
        return;
    case PDU_H2C_TERM: {
        const struct pdu_term *t = (const struct pdu_term *)c->hdr;
        srrs_event_post(c->pub.tgt->core, SRRS_EV_PROTO_ERROR, t->fes, t->fei, c->pub.peer,
                        "host terminated the connection: FES %u", t->fes);
        nvmf_conn_close(c, "host termination request");
        return;
    }
    case PDU_CMD:
        rx_cmd_hdr(c);
        return;
    default: /* H2CData: pdu_ch_check let no other type through */
        rx_h2c_hdr(c);
    }
}

/* Consumes the staging buffer. */
static void rx_parse(struct nvmf_conn *c)
{
    while (c->rhead < c->rtail && c->state != CONN_CLOSED) {
        uint32_t avail = c->rtail - c->rhead;
        const uint8_t *p = c->rbuf + c->rhead;
        uint32_t n;
        switch (c->rx_state) {
        case RX_HDR: {
            uint32_t upto = c->hdr_have < PDU_CH_LEN ? PDU_CH_LEN : c->hdr_need;
            n = SRRS_MIN(upto - c->hdr_have, avail);
            memcpy(c->hdr + c->hdr_have, p, n);
            c->hdr_have += n;
            c->rhead += n;
            if (c->hdr_have == PDU_CH_LEN && !rx_ch_check(c))
                return;
            if (c->hdr_have == c->hdr_need && c->hdr_have > PDU_CH_LEN)
                rx_hdr_done(c);
            break;
        }
        case RX_PAD:
            n = SRRS_MIN(c->pad_left, avail);
            c->pad_left -= n;
            c->rhead += n;
            if (!c->pad_left)
                c->rx_state = RX_DATA;
            break;
        case RX_DATA:
            n = SRRS_MIN(c->rx_left, avail);
            c->rhead += n;
            rx_data(c, p, n, true);
            break;
        case RX_DDGST:
            n = SRRS_MIN(4 - c->ddg_have, avail);
            memcpy(c->ddg + c->ddg_have, p, n);
            c->ddg_have += n;
            c->rhead += n;
            if (c->ddg_have == 4)
                rx_data_end(c);
            break;
        }
    }
}

static int conn_rx(struct nvmf_conn *c)
{
    int work = 0;
    for (int round = 0; round < RX_ROUNDS && c->state != CONN_CLOSED; round++) {
        if (c->rhead < c->rtail) {
            rx_parse(c);
            work = 1;
            continue;
        }
        c->rhead = c->rtail = 0;
        if (!c->rx_ready)
            break;
        ssize_t n;
        bool direct = c->rx_state == RX_DATA && c->rx_dst && c->rx_left >= DIRECT_RECV_MIN;
        if (direct)
            n = recv(c->fd, c->rx_dst, c->rx_left, MSG_DONTWAIT);
        else
            n = recv(c->fd, c->rbuf, RBUF_SIZE, MSG_DONTWAIT);
        if (n > 0) {
            work = 1;
            /* Short read: the socket is drained; epoll (level-triggered) says
             * when more comes, which saves an EAGAIN recv per poll. */
            if ((size_t)n < (direct ? c->rx_left : RBUF_SIZE))
                c->rx_ready = false;
            if (direct)
                rx_data(c, c->rx_dst, (uint32_t)n, false);
            else
                c->rtail = (uint32_t)n;
            continue;
        }
        if (n == 0) {
            nvmf_conn_close(c, "host closed the connection");
            return 1;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            c->rx_ready = false;
            break;
        }
        nvmf_conn_close(c, "receive failed");
        return 1;
    }
    return work;
}

static int conn_process(struct nvmf_conn *c)
{
    int work = 0;
    if (c->state != CONN_CLOSED)
        work += conn_rx(c);
    if (c->wait_head)
        work += conn_run_waits(c);
    if (c->state != CONN_CLOSED) {
        work += conn_flush(c);
        if (c->pub.close_after_tx && !c->tx_head)
            nvmf_conn_close(c, "disconnect");
    }
    return work;
}

/* ---- poll groups and connections ---------------------------------------------- */

static void conn_destroy(struct nvmf_conn *c)
{
    struct nvmf_group *g = c->grp;
    struct srrs_nvmf_tgt *t = g->tgt;
    for (struct nvmf_conn **pp = &g->conns; *pp; pp = &(*pp)->gnext) {
        if (*pp == c) {
            *pp = c->gnext;
            break;
        }
    }
    g->nconns--;
    if (c->pub.ctrlr)
        nvmf_ctrlr_detach(c);
    pthread_mutex_lock(&t->lock);
    for (struct nvmf_conn **pp = &t->conns; *pp; pp = &(*pp)->tnext) {
        if (*pp == c) {
            *pp = c->tnext;
            break;
        }
    }
    t->nconns--;
    pthread_mutex_unlock(&t->lock);
    atomic_fetch_add(&t->st_closed, 1);
    srrs_reactor_flush_cancel(c->r, &c->flush);
    free(c->reqs);
    free(c->icmem);
    free(c->rbuf);
    free(c);
}

static int group_poll(void *arg)
{
    struct nvmf_group *g = arg;
    struct epoll_event evs[64];
    int n = 0;
    /* Woken from a sleep whose epoll_wait named the ready sockets (each socket
     * is also in the reactor's own set): they are marked, no call needed; one
     * that did not fit in the sleep's events is found by the next round.
     * Adaptive reactor: after an epoll_wait that found nothing, skip one. If
     * the round then finds no work the reactor sleeps in epoll_wait on a set
     * that holds the sockets (level-triggered: one that became readable
     * meanwhile wakes it at once); if it spins on, the next round looks. At
     * QD1 this saves the empty call of the round before each sleep and the
     * call after it (docs/architecture.md, Poll modes and adaptive sleep).
     * Busy: every round. */
    if (g->woken) {
        g->woken = false;
        g->polled_empty = false;
    } else if (g->polled_empty && srrs_reactor_poll_mode(g->r) == SRRS_POLL_ADAPTIVE) {
        g->polled_empty = false;
    } else {
        n = epoll_wait(g->epfd, evs, 64, 0);
        g->polled_empty = n <= 0;
    }
    for (int i = 0; i < n; i++) {
        struct nvmf_conn *c = evs[i].data.ptr;
        if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP))
            c->rx_ready = true;
    }
    int work = 0;
    struct nvmf_conn *next;
    for (struct nvmf_conn *c = g->conns; c; c = next) {
        next = c->gnext;
        if (c->rx_ready || c->tx_head || c->wait_head || c->rhead < c->rtail ||
            c->state == CONN_CLOSED)
            work += conn_process(c);
        if (c->state == CONN_CLOSED && !c->outstanding)
            conn_destroy(c);
    }
    return work;
}

/* A host that takes R2Ts and never sends the data would pin pool buffers. */
static bool conn_h2c_stuck(const struct nvmf_conn *c, uint64_t now)
{
    uint64_t limit = srrs_us_to_ticks(NVMF_H2C_TIMEOUT_MS * 1000ull);
    for (uint32_t i = 0; i < c->nreqs; i++)
        if (c->reqs[i].state == REQ_H2C && now - c->reqs[i].r2t_at > limit)
            return true;
    return false;
}

static void group_tick_conns(struct nvmf_group *g)
{
    uint64_t now = srrs_ticks();
    uint64_t connect_limit = srrs_us_to_ticks(g->tgt->opts.handshake_timeout_ms * 1000ull);
    for (struct nvmf_conn *c = g->conns; c; c = c->gnext) {
        struct nvmf_ctrlr *ct = c->pub.ctrlr;
        if (c->state == CONN_CLOSED)
            continue;
        if (atomic_load(&c->evict)) { /* missed by group_evict_fn; a queue still authenticating */
            atomic_fetch_add(&g->tgt->st_evicted, 1);
            nvmf_conn_close(c, "evicted: too many connections not yet connected and authenticated");
            continue;
        }
        if (!ct) { /* a socket that never becomes a queue must not hold memory forever */
            if (now - c->born > connect_limit) {
                atomic_fetch_add(&g->tgt->st_hs_timeouts, 1);
                nvmf_conn_close(c, "no ICReq/Connect in time");
            }
            continue;
        }
        if (atomic_load(&ct->dead)) {
            nvmf_conn_close(c, "controller torn down");
            continue;
        }
        if (nvmf_auth_expired(&c->pub, now)) {
            nvmf_conn_close(c, "DH-HMAC-CHAP authentication not finished in time");
            continue;
        }
        if (conn_h2c_stuck(c, now)) {
            srrs_event_post(c->pub.tgt->core, SRRS_EV_PROTO_ERROR, ct->cntlid, c->pub.qid,
                            c->pub.peer, "no H2CData for an R2T in %u ms: closing the queue",
                            NVMF_H2C_TIMEOUT_MS);
            nvmf_conn_close(c, "R2T data timeout");
            continue;
        }
        if (c->pub.qid == 0)
            nvmf_ctrlr_admin_tick(c, now);
    }
}

/* Message from the listener: close this reactor's evicted handshaking
 * connections (a connection that got its Connect meanwhile stays). */
static void group_evict_fn(void *arg)
{
    struct srrs_nvmf_tgt *t = arg;
    struct nvmf_group *g = t->groups[srrs_reactor_idx(srrs_reactor_self())];
    for (struct nvmf_conn *c = g ? g->conns : NULL; c; c = c->gnext) {
        if (c->state != CONN_CLOSED && atomic_load(&c->evict)) {
            atomic_fetch_add(&t->st_evicted, 1);
            nvmf_conn_close(c, "evicted: too many connections not yet connected and authenticated");
        }
    }
}

static int group_tick(void *arg)
{
    group_tick_conns(arg);
    return 0;
}

/* Whether a connection of the group has a deadline the tick must watch: a
 * handshake, an authentication, an R2T waiting for its data, a keep-alive
 * timeout, an AEN to deliver, or a close another thread asked for. */
static bool group_needs_tick(const struct nvmf_group *g)
{
    for (const struct nvmf_conn *c = g->conns; c; c = c->gnext) {
        const struct nvmf_ctrlr *ct = c->pub.ctrlr;
        if (c->state == CONN_CLOSED)
            continue;
        if (!ct || atomic_load(&c->evict) || atomic_load(&ct->dead) || c->pub.unauth ||
            nvmf_auth_running(&c->pub))
            return true;
        if (c->pub.qid == 0 && (ct->kato_ms || atomic_load(&ct->aen_pending)))
            return true;
        for (uint32_t i = 0; i < c->nreqs; i++)
            if (c->reqs[i].state == REQ_H2C)
                return true;
    }
    return false;
}

/* Before the reactor sleeps: the tick bounds the sleep only while a
 * connection needs it (docs/architecture.md, Poll modes and adaptive sleep);
 * an idle host's connections leave the reactor asleep with no timeout. Work
 * that comes from another thread (an AEN, a controller torn down, an
 * eviction) sends its message (nvmf_kick_reactors), which wakes it. */
static int group_tick_presleep(void *arg)
{
    struct nvmf_group *g = arg;
    srrs_poller_set_lazy(g->tick, !group_needs_tick(g));
    return 0;
}

static void group_close_all_fn(void *arg);

/* The reactor stops: its connections stop taking commands; what is at the
 * bdev drains before the reactor returns. */
static void group_stop_hook(void *arg)
{
    struct nvmf_group *g = arg;
    g->stop_hook = -1;
    group_close_all_fn(g);
}

static struct nvmf_group *group_get(struct srrs_nvmf_tgt *t, struct srrs_reactor *r)
{
    int ri = srrs_reactor_idx(r);
    if (t->groups[ri])
        return t->groups[ri];
    struct nvmf_group *g = calloc(1, sizeof(*g));
    if (!g)
        return NULL;
    g->tgt = t;
    g->r = r;
    g->epfd = epoll_create1(EPOLL_CLOEXEC);
    g->poller = srrs_poller_register(r, group_poll, g, 0);
    g->tick = srrs_poller_register(r, group_tick, g, GROUP_TICK_US);
    if (g->tick)
        srrs_poller_set_presleep(g->tick, group_tick_presleep);
    if (g->epfd < 0 || !g->poller || !g->tick ||
        srrs_poller_set_fd(g->poller, g->epfd, EPOLLIN, false)) {
        srrs_poller_unregister(&g->poller);
        srrs_poller_unregister(&g->tick);
        if (g->epfd >= 0)
            close(g->epfd);
        free(g);
        return NULL;
    }
    g->stop_hook = srrs_reactor_add_stop_hook(r, group_stop_hook, g);
    t->groups[ri] = g;
    return g;
}

/* A sleeping reactor's epoll_wait named the socket (srrs_fd_watch_add). */
static void conn_woken(void *arg)
{
    struct nvmf_conn *c = arg;
    c->rx_ready = true;
    c->grp->woken = true;
}

static void conn_adopt(void *arg)
{
    struct nvmf_conn *c = arg;
    struct srrs_nvmf_tgt *t = c->pub.tgt;
    c->r = srrs_reactor_self();
    struct nvmf_group *g = t->destroying ? NULL : group_get(t, c->r);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (!g || epoll_ctl(g->epfd, EPOLL_CTL_ADD, c->fd, &ev)) {
        hs_unlink(c);
        atomic_fetch_add(&t->st_closed, 1);
        close(c->fd);
        free(c->reqs);
        free(c->icmem);
        free(c->rbuf);
        free(c);
        return;
    }
    c->grp = g;
    /* No watch (out of memory): the group's epoll fd in the reactor's set
     * still wakes a sleep; the group then looks with its own epoll_wait. */
    c->watch = srrs_fd_watch_add(c->r, c->fd, EPOLLIN, conn_woken, c);
    c->gnext = g->conns;
    g->conns = c;
    g->nconns++;
    pthread_mutex_lock(&t->lock);
    c->tnext = t->conns;
    t->conns = c;
    t->nconns++;
    pthread_mutex_unlock(&t->lock);
    c->rx_ready = true;
    conn_post(c, SRRS_EV_CONN_UP, "connection accepted");
}

static struct nvmf_conn *conn_alloc(struct srrs_nvmf_tgt *t, int fd, const char *peer,
                                    const char *src)
{
    struct nvmf_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->rbuf = malloc(RBUF_SIZE);
    if (!c->rbuf) {
        free(c);
        return NULL;
    }
    c->outstanding = 0; /* slots come with the ICReq (conn_alloc_reqs) */
    c->flush = (struct srrs_flush){.fn = conn_flush_end, .arg = c};
    c->fd = fd;
    c->pub.tgt = t;
    c->fmt.align = 4;
    c->born = srrs_ticks();
    snprintf(c->pub.peer, sizeof(c->pub.peer), "%s", peer);
    snprintf(c->src, sizeof(c->src), "%s", src);
    rx_next_pdu(c);
    return c;
}

/* ---- listeners ------------------------------------------------------------------ */

/* Round-robin over the reactors the target may use. */
static uint32_t nvmf_pick_reactor(struct srrs_nvmf_tgt *t)
{
    uint32_t n = (uint32_t)srrs_core_num_reactors(t->core);
    uint64_t mask = t->opts.reactor_mask;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t ri = atomic_fetch_add(&t->rr, 1) % n;
        if (!mask || (mask >> ri & 1))
            return ri;
    }
    return 0;
}

/* Out of descriptors: accept the waiting connection with the spare one and
 * close it (else it stays queued and the listener spins on it), and make
 * room by evicting the oldest handshaking connection. */
static void listener_out_of_fds(struct nvmf_listener *l)
{
    struct srrs_nvmf_tgt *t = l->tgt;
    if (l->spare_fd >= 0) {
        close(l->spare_fd);
        int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0) {
            close(fd);
            atomic_fetch_add(&t->st_refused, 1);
        }
        l->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    pthread_mutex_lock(&t->hs_lock);
    if (t->hs_head)
        hs_evict_locked(t, t->hs_head);
    pthread_mutex_unlock(&t->hs_lock);
}

static void conn_free_unadopted(struct srrs_nvmf_tgt *t, struct nvmf_conn *c)
{
    hs_unlink(c);
    atomic_fetch_add(&t->st_closed, 1);
    close(c->fd);
    free(c->rbuf);
    free(c);
}

static int listener_poll(void *arg)
{
    struct nvmf_listener *l = arg;
    struct srrs_nvmf_tgt *t = l->tgt;
    int work = 0;
    for (int i = 0; i < 16; i++) {
        struct sockaddr_storage sa;
        socklen_t sl = sizeof(sa);
        int fd = accept4(l->fd, (struct sockaddr *)&sa, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE) {
                listener_out_of_fds(l);
                work++;
            }
            break;
        }
        work++;
        if (atomic_load(&t->st_accepted) - atomic_load(&t->st_closed) >= NVMF_MAX_CONNS) {
            close(fd); /* over the limit: refuse rather than run out of memory */
            atomic_fetch_add(&t->st_refused, 1);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        char host[48] = "?", serv[8] = "?", peer[64];
        getnameinfo((struct sockaddr *)&sa, sl, host, sizeof(host), serv, sizeof(serv),
                    NI_NUMERICHOST | NI_NUMERICSERV);
        snprintf(peer, sizeof(peer), "%s:%s", host, serv);
        struct nvmf_conn *c = conn_alloc(t, fd, peer, host);
        if (!c) {
            close(fd);
            atomic_fetch_add(&t->st_refused, 1);
            continue;
        }
        sl = sizeof(sa);
        if (!getsockname(fd, (struct sockaddr *)&sa, &sl))
            getnameinfo((struct sockaddr *)&sa, sl, c->pub.local_addr, sizeof(c->pub.local_addr),
                        NULL, 0, NI_NUMERICHOST);
        atomic_fetch_add(&t->st_accepted, 1);
        uint32_t ri = nvmf_pick_reactor(t);
        c->ri = (int)ri;
        hs_admit(t, c);
        if (srrs_reactor_send(srrs_core_reactor(t->core, (int)ri), conn_adopt, c))
            conn_free_unadopted(t, c);
    }
    return work;
}

struct listener_op {
    struct nvmf_listener *l;
    int rc;
};

static void listener_start_fn(void *arg)
{
    struct listener_op *op = arg;
    struct nvmf_listener *l = op->l;
    /* accept4() allocates a socket and a file before it finds the queue
     * empty: never call it every loop. 1 ms adds at most 1 ms to a connect
     * while the reactor spins; a sleeping reactor sleeps on the socket alone
     * (fd_only: no 1 ms wake-ups when idle, no accept4 after a sleep that saw
     * no connection) and accepts as soon as it fires. */
    l->poller = srrs_poller_register(l->r, listener_poll, l, LISTEN_POLL_US);
    if (!l->poller) {
        op->rc = -ENOMEM;
        return;
    }
    op->rc = srrs_poller_set_fd(l->poller, l->fd, EPOLLIN, false);
    if (op->rc)
        srrs_poller_unregister(&l->poller);
    else
        srrs_poller_set_fd_only(l->poller);
}

static void listener_stop_fn(void *arg)
{
    struct listener_op *op = arg;
    srrs_poller_unregister(&op->l->poller);
}

int nvmf_listener_add(struct srrs_nvmf_tgt *t, const char *addr, int port)
{
    if (!addr || port < 0 || port > 65535)
        return srrs_err(-EINVAL, "nvmf listener: bad address or port");
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_PASSIVE | AI_NUMERICSERV};
    char serv[8];
    snprintf(serv, sizeof(serv), "%d", port);
    struct addrinfo *ai = NULL;
    if (getaddrinfo(addr, serv, &hints, &ai) || !ai)
        return srrs_err(-EINVAL, "nvmf listener: %s is not an IPv4/IPv6 address", addr);
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1, rc = 0;
    if (fd < 0) {
        rc = -errno;
    } else {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ai->ai_family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 1024))
            rc = -errno;
    }
    freeaddrinfo(ai);
    if (rc) {
        if (fd >= 0)
            close(fd);
        /* the one privilege a listener may need: say which */
        return srrs_err(rc, "nvmf listener %s:%d: %s%s", addr, port, strerror(-rc),
                        rc == -EACCES ? " (a port below net.ipv4.ip_unprivileged_port_start, 1024 "
                                        "by default, needs root or CAP_NET_BIND_SERVICE)" : "");
    }
    struct sockaddr_storage sa;
    socklen_t sl = sizeof(sa);
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    int bound = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                                : ((struct sockaddr_in *)&sa)->sin_port);
    struct nvmf_listener *l = calloc(1, sizeof(*l));
    if (!l) {
        close(fd);
        return srrs_err(-ENOMEM, "nvmf listener: out of memory");
    }
    l->tgt = t;
    l->fd = fd;
    l->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    l->port = bound;
    snprintf(l->addr, sizeof(l->addr), "%s", addr);
    l->r = srrs_core_reactor(t->core, t->opts.listener_reactor);
    struct listener_op op = {.l = l};
    srrs_reactor_call(l->r, listener_start_fn, &op);
    if (op.rc) {
        close(fd);
        if (l->spare_fd >= 0)
            close(l->spare_fd);
        free(l);
        return srrs_err(op.rc, "nvmf listener: cannot poll the socket");
    }
    pthread_mutex_lock(&t->lock);
    l->next = t->listeners;
    t->listeners = l;
    t->genctr++;
    pthread_mutex_unlock(&t->lock);
    return bound;
}

int nvmf_listener_remove(struct srrs_nvmf_tgt *t, const char *addr, int port)
{
    pthread_mutex_lock(&t->lock);
    struct nvmf_listener *l = NULL;
    for (struct nvmf_listener **pp = &t->listeners; *pp; pp = &(*pp)->next) {
        if ((*pp)->port == port && (!addr || !strcmp((*pp)->addr, addr))) {
            l = *pp;
            *pp = l->next;
            t->genctr++;
            break;
        }
    }
    pthread_mutex_unlock(&t->lock);
    if (!l)
        return srrs_err(-ENOENT, "nvmf: not listening on %s:%d", addr ? addr : "*", port);
    struct listener_op op = {.l = l};
    srrs_reactor_call(l->r, listener_stop_fn, &op);
    close(l->fd);
    if (l->spare_fd >= 0)
        close(l->spare_fd);
    free(l);
    return 0;
}

/* Discovery log needs the listeners: copy them out under the lock. */
int nvmf_listeners_snapshot(struct srrs_nvmf_tgt *t, char (*addrs)[64], int *ports, int max)
{
    int n = 0;
    for (struct nvmf_listener *l = t->listeners; l && n < max; l = l->next) {
        memcpy(addrs[n], l->addr, 64);
        ports[n++] = l->port;
    }
    return n;
}

/* ---- target-wide -------------------------------------------------------------- */

static void group_kick_fn(void *arg) { group_tick_conns(arg); }

void nvmf_kick_reactors(struct srrs_nvmf_tgt *t)
{
    int n = srrs_core_num_reactors(t->core);
    for (int i = 0; i < n; i++) {
        struct nvmf_group *g = t->groups[i];
        if (g)
            srrs_reactor_send(g->r, group_kick_fn, g);
    }
}

static void group_close_all_fn(void *arg)
{
    struct nvmf_group *g = arg;
    struct nvmf_conn *next;
    for (struct nvmf_conn *c = g->conns; c; c = next) {
        next = c->gnext;
        nvmf_conn_close(c, "target shutting down");
        if (!c->outstanding)
            conn_destroy(c);
    }
}

static void group_free_fn(void *arg)
{
    struct nvmf_group *g = arg;
    srrs_poller_unregister(&g->poller);
    srrs_poller_unregister(&g->tick);
    if (g->stop_hook >= 0)
        srrs_reactor_del_stop_hook(g->r, g->stop_hook);
    g->stop_hook = -1;
}

void nvmf_transport_fini(struct srrs_nvmf_tgt *t)
{
    while (t->listeners)
        nvmf_listener_remove(t, t->listeners->addr, t->listeners->port);
    t->destroying = true;
    int n = srrs_core_num_reactors(t->core);
    for (int i = 0; i < n; i++)
        if (t->groups[i])
            srrs_reactor_call(t->groups[i]->r, group_close_all_fn, t->groups[i]);
    for (int ms = 0; ms < 10000; ms++) {
        pthread_mutex_lock(&t->lock);
        uint64_t left = t->nconns;
        pthread_mutex_unlock(&t->lock);
        if (!left)
            break;
        struct timespec d = {0, 1000000};
        nanosleep(&d, NULL);
    }
    for (int i = 0; i < n; i++) {
        struct nvmf_group *g = t->groups[i];
        if (!g)
            continue;
        srrs_reactor_call(g->r, group_free_fn, g);
        if (!g->conns) { /* else a stuck connection still points at it: leak, never crash */
            close(g->epfd);
            free(g);
        }
        t->groups[i] = NULL;
    }
}

/* Control thread, under t->lock: one connection's numbers. */
void nvmf_conn_info(struct nvmf_conn *c, struct srrs_nvmf_qpair_info *o)
{
    memset(o, 0, sizeof(*o));
    struct nvmf_ctrlr *ct = c->pub.ctrlr;
    if (ct) {
        snprintf(o->subnqn, sizeof(o->subnqn), "%s", ct->ss->nqn);
        snprintf(o->hostnqn, sizeof(o->hostnqn), "%s", ct->hostnqn);
        o->cntlid = ct->cntlid;
    }
    snprintf(o->peer, sizeof(o->peer), "%s", c->pub.peer);
    o->qid = c->pub.qid;
    o->reactor = c->r ? srrs_reactor_idx(c->r) : -1;
    o->sqsize = c->pub.sqsize;
    o->outstanding = c->outstanding;
    o->hdgst = c->fmt.hdgst;
    o->ddgst = c->fmt.ddgst;
    o->cmds = c->st_cmds;
    o->reads = c->st_reads;
    o->writes = c->st_writes;
    o->bytes_read = c->st_bread;
    o->bytes_written = c->st_bwritten;
    o->errors = c->st_errors;
}

struct nvmf_conn *nvmf_conn_next(struct nvmf_conn *c) { return c->tnext; }
