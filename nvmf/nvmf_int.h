/*
 * NVMe-oF/TCP: wire formats (NVMe 1.4, NVMe/TCP transport TP 8000) and the
 * structures shared by the transport (tcp.c), the controller logic
 * (ctrlr.c) and the initiator (initiator.c). Private: never read by cffi.
 */
#ifndef SRRS_NVMF_INT_H
#define SRRS_NVMF_INT_H

#include "ffi/srrs_int.h"
#include "nvmf/nvmf.h"

#include <pthread.h>
#include <sys/uio.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "NVMe wire formats are little-endian; this code reads them in place"
#endif

/* ---- NVMe/TCP PDUs ------------------------------------------------------ */

enum nvme_tcp_pdu_type {
    PDU_ICREQ = 0x00,
    PDU_ICRESP = 0x01,
    PDU_H2C_TERM = 0x02,
    PDU_C2H_TERM = 0x03,
    PDU_CMD = 0x04,
    PDU_RSP = 0x05,
    PDU_H2C_DATA = 0x06,
    PDU_C2H_DATA = 0x07,
    PDU_R2T = 0x09,
};

#define PDU_F_HDGST 0x01
#define PDU_F_DDGST 0x02
#define PDU_F_LAST 0x04   /* H2C/C2HData: last PDU of the transfer */
#define PDU_F_SUCCESS 0x08 /* C2HData: command done, no CapsuleResp follows */

#define PDU_CH_LEN 8
#define PDU_IC_LEN 128
#define PDU_CMD_HLEN 72
#define PDU_RSP_HLEN 24
#define PDU_DATA_HLEN 24
#define PDU_R2T_HLEN 24
#define PDU_TERM_HLEN 24
#define PDU_MAX_HDR (PDU_IC_LEN + 4)

/* Termination request fatal error status (FES) */
#define FES_INVALID_HEADER 0x01
#define FES_PDU_SEQUENCE 0x02
#define FES_HDGST 0x03
#define FES_DATA_RANGE 0x04
#define FES_DATA_LIMIT 0x05
#define FES_UNSUPPORTED 0x06

struct pdu_ch {
    uint8_t type;
    uint8_t flags;
    uint8_t hlen;
    uint8_t pdo;
    uint32_t plen;
} __attribute__((packed));

struct pdu_icreq {
    struct pdu_ch ch;
    uint16_t pfv;
    uint8_t hpda;
    uint8_t dgst; /* bit 0 HDGST_ENABLE, bit 1 DDGST_ENABLE */
    uint32_t maxr2t;
    uint8_t rsvd[112];
} __attribute__((packed));

struct pdu_icresp {
    struct pdu_ch ch;
    uint16_t pfv;
    uint8_t cpda;
    uint8_t dgst;
    uint32_t maxh2cdata;
    uint8_t rsvd[112];
} __attribute__((packed));

/* H2CData, C2HData and R2T share one layout. */
struct pdu_data {
    struct pdu_ch ch;
    uint16_t cccid;
    uint16_t ttag;
    uint32_t off;
    uint32_t len;
    uint32_t rsvd;
} __attribute__((packed));

struct pdu_term {
    struct pdu_ch ch;
    uint16_t fes;
    uint32_t fei;
    uint8_t rsvd[10];
} __attribute__((packed));

/* ---- NVMe commands ------------------------------------------------------- */

struct nvme_sgl {
    uint64_t addr;
    uint32_t len;
    uint8_t rsvd[3];
    uint8_t type; /* type << 4 | subtype */
} __attribute__((packed));

#define SGL_DATA_BLOCK_OFFSET 0x01   /* in-capsule data */
#define SGL_TRANSPORT_DATA_BLOCK 0x5A /* data by R2T/H2CData or C2HData */

struct nvme_sqe {
    uint8_t opc;
    uint8_t flags;
    uint16_t cid;
    uint32_t nsid; /* fabrics: byte 0 is fctype */
    uint32_t cdw2, cdw3;
    uint64_t mptr;
    struct nvme_sgl sgl;
    uint32_t cdw10, cdw11, cdw12, cdw13, cdw14, cdw15;
} __attribute__((packed));

struct nvme_cqe {
    uint32_t dw0;
    uint32_t dw1;
    uint16_t sqhd;
    uint16_t sqid;
    uint16_t cid;
    uint16_t status; /* bit 0 phase, 1..8 SC, 9..11 SCT, 15 DNR */
} __attribute__((packed));

struct pdu_cmd {
    struct pdu_ch ch;
    struct nvme_sqe sqe;
} __attribute__((packed));

struct pdu_rsp {
    struct pdu_ch ch;
    struct nvme_cqe cqe;
} __attribute__((packed));

_Static_assert(sizeof(struct pdu_icreq) == 128, "icreq");
_Static_assert(sizeof(struct pdu_icresp) == 128, "icresp");
_Static_assert(sizeof(struct pdu_data) == 24, "data pdu");
_Static_assert(sizeof(struct pdu_term) == 24, "term pdu");
_Static_assert(sizeof(struct nvme_sqe) == 64, "sqe");
_Static_assert(sizeof(struct nvme_cqe) == 16, "cqe");

struct nvmf_connect_data {
    uint8_t hostid[16];
    uint16_t cntlid;
    uint8_t rsvd[238];
    char subnqn[256];
    char hostnqn[256];
    uint8_t rsvd2[256];
} __attribute__((packed));
_Static_assert(sizeof(struct nvmf_connect_data) == 1024, "connect data");

/* Opcodes */
enum {
    ADM_GET_LOG_PAGE = 0x02,
    ADM_IDENTIFY = 0x06,
    ADM_ABORT = 0x08,
    ADM_SET_FEATURES = 0x09,
    ADM_GET_FEATURES = 0x0A,
    ADM_AER = 0x0C,
    ADM_KEEP_ALIVE = 0x18,
    OPC_FABRICS = 0x7F,
    IO_FLUSH = 0x00,
    IO_WRITE = 0x01,
    IO_READ = 0x02,
    IO_WRITE_ZEROES = 0x08,
    IO_DSM = 0x09,
};

enum { FCTYPE_PROP_SET = 0x00, FCTYPE_CONNECT = 0x01, FCTYPE_PROP_GET = 0x04,
       FCTYPE_AUTH_SEND = 0x05, FCTYPE_AUTH_RECV = 0x06, FCTYPE_DISCONNECT = 0x08 };

/* Status = SCT << 8 | SC, with DNR at bit 14 of this 15-bit value. */
#define NVME_DNR 0x4000
#define SC(sct, sc) ((uint16_t)(((sct) << 8) | (sc)))
#define SC_SUCCESS 0
#define SC_INVALID_OPCODE (SC(0, 0x01) | NVME_DNR)
#define SC_INVALID_FIELD (SC(0, 0x02) | NVME_DNR)
#define SC_DATA_XFER_ERROR SC(0, 0x04)
#define SC_INTERNAL SC(0, 0x06)
#define SC_ABORT_REQ SC(0, 0x07)
#define SC_SQ_DELETED SC(0, 0x08)
#define SC_INVALID_NS (SC(0, 0x0B) | NVME_DNR)
#define SC_CMD_SEQ_ERROR (SC(0, 0x0C) | NVME_DNR)
#define SC_SGL_LEN_INVALID (SC(0, 0x0F) | NVME_DNR)
#define SC_SGL_TYPE_INVALID (SC(0, 0x11) | NVME_DNR)
#define SC_TRANSIENT_XPORT SC(0, 0x22)
#define SC_LBA_RANGE (SC(0, 0x80) | NVME_DNR)
#define SC_CAPACITY_EXCEEDED (SC(0, 0x81) | NVME_DNR)
#define SC_INVALID_QID (SC(1, 0x01) | NVME_DNR)
#define SC_AER_LIMIT (SC(1, 0x05) | NVME_DNR)
#define SC_INVALID_LOG_PAGE (SC(1, 0x09) | NVME_DNR)
#define SC_FEAT_NOT_SAVEABLE (SC(1, 0x0D) | NVME_DNR)
#define SC_CONNECT_FORMAT (SC(1, 0x80) | NVME_DNR)
#define SC_CONNECT_BUSY (SC(1, 0x81) | NVME_DNR)
#define SC_CONNECT_INVALID_PARAM (SC(1, 0x82) | NVME_DNR)
#define SC_CONNECT_INVALID_HOST (SC(1, 0x84) | NVME_DNR)
#define SC_AUTH_REQUIRED (SC(1, 0x91) | NVME_DNR)
/* Connect response DW0: the host must authenticate (AUTHREQ.ATR, as Linux reads it). */
#define NVMF_CONNECT_ATR (1u << 17)
#define SC_ANA_PERSISTENT_LOSS SC(3, 0x01)
#define SC_ANA_INACCESSIBLE SC(3, 0x02)
#define SC_ANA_TRANSITION SC(3, 0x03)
#define SC_PATH_ERROR SC(3, 0x00)

/* Properties */
#define PROP_CAP 0x00
#define PROP_VS 0x08
#define PROP_CC 0x14
#define PROP_CSTS 0x1C

#define NVMF_DISCOVERY_NQN "nqn.2014-08.org.nvmexpress.discovery"

/* ---- limits ------------------------------------------------------------- */

#define NVMF_MAX_NS 256        /* namespaces per subsystem (NN): 10,000 volumes fit 40 subsystems */
#define NVMF_MAX_ANA 32        /* ANA groups per subsystem */
#define NVMF_MAX_SUBSYS 1024 /* one per cluster volume of the pair, plus configured ones */
#define NVMF_MAX_IOQ 64
#define NVMF_MAX_AER 4
#define NVMF_ICDSZ 8192        /* in-capsule data per command */
#define NVMF_MDTS_BYTES (1u << 20)
#define NVMF_MAXH2CDATA (1u << 20)
#define NVMF_MAX_CHANGED_NS 1024
#define NVMF_MAX_CONNS 4096
#define NVMF_AUTH_TIMEOUT_MS 20000 /* default: Connect or Negotiate to a finished authentication */
#define NVMF_HANDSHAKE_TIMEOUT_MS 5000 /* accept to Connect (default) */
#define NVMF_MAX_HANDSHAKING 512
#define NVMF_MAX_HANDSHAKING_PER_SOURCE 128
#define NVMF_H2C_TIMEOUT_MS 30000 /* R2T to its last H2CData: buffers are not held forever */

/* ---- target object model (ctrlr.c) -------------------------------------- */

struct nvmf_ns {
    uint32_t nsid;
    uint32_t anagrpid;
    struct srrs_bdev *bdev;
    uint64_t num_blocks;
    uint32_t block_size;
    uint32_t block_shift;
    uint8_t uuid[16];
    /* per reactor: commands that hold this namespace (removal waits for 0) */
    struct {
        _Atomic uint64_t n;
        uint8_t pad[SRRS_CACHELINE - 8];
    } inflight[SRRS_MAX_REACTORS];
    struct nvmf_ns *next_dead;
};

struct nvmf_subsys {
    char nqn[224];
    char serial[21];
    char model[41];
    bool discovery;
    bool removed;
    _Atomic bool allow_any;
    char (*hosts)[224];
    uint32_t nhosts, cap_hosts;
    struct nvmf_ns *_Atomic ns[NVMF_MAX_NS + 1];        /* index = nsid */
    _Atomic uint8_t ana_state[NVMF_MAX_ANA + 1];       /* index = anagrpid */
    uint64_t ana_chgcnt;                                /* under tgt->lock */
    struct nvmf_host_auth *auth;    /* DH-HMAC-CHAP secrets per host (auth.c), under tgt->lock */
    bool require_auth;              /* hosts without a secret are refused */
    struct nvmf_subsys *next_dead;
};

/* Asynchronous events a controller has pending (ctrlr->aen_pending bits). */
#define AEN_NS_CHANGED 0x1
#define AEN_ANA_CHANGE 0x2
#define AEN_DISC_CHANGED 0x4

struct nvmf_conn;

struct nvmf_ctrlr {
    struct srrs_nvmf_tgt *tgt;
    struct nvmf_subsys *ss;
    uint16_t cntlid;
    char hostnqn[224];
    uint8_t hostid[16];
    _Atomic int refs;           /* connections attached */
    _Atomic bool dead;          /* torn down: every queue closes */
    _Atomic uint32_t cc;        /* written on the admin reactor, read by I/O queues */
    _Atomic uint32_t csts;
    uint32_t kato_ms;
    uint64_t last_ka;           /* ticks, admin reactor */
    uint32_t num_io_queues;     /* granted */
    uint32_t aen_cfg;
    bool vwc;
    bool auth;                  /* DH-HMAC-CHAP: every queue must authenticate */
    _Atomic uint32_t aen_pending;
    uint32_t aen_masked;        /* sent, waiting for the host to read the log */
    struct nvmf_conn *ioq[NVMF_MAX_IOQ + 1]; /* under tgt->lock (dup check only) */
    uint32_t changed_ns[NVMF_MAX_CHANGED_NS]; /* under tgt->lock */
    uint32_t n_changed;
    bool changed_overflow;
    uint64_t err_count;
};

struct nvmf_group;
struct nvmf_listener;

struct srrs_nvmf_tgt {
    struct srrs_core *core;
    struct srrs_nvmf_tgt_opts opts;
    pthread_mutex_t lock;       /* config and controller registry; admin path only */
    struct nvmf_subsys *subsys[NVMF_MAX_SUBSYS];
    struct nvmf_subsys *dead_subsys;
    struct nvmf_ns *dead_ns;
    struct nvmf_ctrlr **ctrlrs; /* index cntlid - cntlid_min */
    uint32_t next_cntlid;
    uint64_t genctr;            /* discovery log generation */
    struct nvmf_disc_table *disc; /* the cluster's subsystems (discovery.c), under lock */
    struct nvmf_listener *listeners;
    struct nvmf_group *groups[SRRS_MAX_REACTORS];
    struct nvmf_conn *conns;    /* every connection, under lock */
    _Atomic uint32_t rr;
    bool destroying;
    _Atomic uint64_t st_accepted, st_closed, st_proto_errors, st_kato_expired;
    _Atomic uint64_t st_auth_ok, st_auth_failed;
    uint64_t nctrlrs, nconns;
    _Atomic uint64_t st_refused, st_evicted, st_hs_timeouts;
    /* handshaking connections (no Connect yet), oldest first (tcp.c) */
    pthread_mutex_t hs_lock;
    struct nvmf_conn *hs_head, *hs_tail;
    uint32_t hs_count;
};

/* ---- transport request (tcp.c) -------------------------------------------- */

struct tx_pdu {
    struct tx_pdu *next;
    uint8_t *hdr;
    uint32_t hlen;              /* header + header digest + pad */
    uint32_t dlen;
    void *data;
    uint32_t ddgst;
    bool has_ddgst;
    struct nvmf_req *req;       /* NULL: connection-owned */
};

/* Bytes a queued PDU puts on the wire. */
static inline uint32_t pdu_total(const struct tx_pdu *p)
{
    return p->hlen + p->dlen + (p->has_ddgst ? 4u : 0u);
}

/* The unsent bytes of a PDU queue (head, `off` bytes of it already sent) as at
 * most `max` iovecs, whole PDUs only; returns the count. Shared by the
 * target's connections and the initiator's queues. */
static inline int pdu_queue_iov(struct tx_pdu *head, uint32_t off, struct iovec *iov, int max)
{
    int n = 0;
    for (struct tx_pdu *p = head; p && n + 3 <= max; p = p->next) {
        struct iovec seg[3] = {{p->hdr, p->hlen}, {p->data, p->dlen}, {&p->ddgst, 4}};
        int nseg = p->has_ddgst ? 3 : (p->dlen ? 2 : 1);
        for (int i = 0; i < nseg; i++) {
            if (off >= seg[i].iov_len) {
                off -= (uint32_t)seg[i].iov_len;
                continue;
            }
            iov[n].iov_base = (uint8_t *)seg[i].iov_base + off;
            iov[n++].iov_len = seg[i].iov_len - off;
            off = 0;
        }
    }
    return n;
}

/* Accounts `*left` sent bytes against the queue: returns the next PDU now sent
 * in full (unlinked; the caller completes it), or NULL once the bytes run out
 * (a partly sent PDU keeps its progress in *off). */
static inline struct tx_pdu *pdu_queue_pop_sent(struct tx_pdu **head, struct tx_pdu **tail,
                                                uint32_t *off, uint64_t *left)
{
    struct tx_pdu *p = *head;
    if (!p || !*left)
        return NULL;
    uint32_t rem = pdu_total(p) - *off;
    if (*left < rem) {
        *off += (uint32_t)*left;
        *left = 0;
        return NULL;
    }
    *left -= rem;
    *off = 0;
    *head = p->next;
    if (!*head)
        *tail = NULL;
    return p;
}

enum req_state {
    REQ_FREE = 0,
    REQ_RECV_CAPSULE,   /* header read, in-capsule data arriving */
    REQ_WAIT,           /* waiting for a buffer or an I/O object */
    REQ_H2C,            /* R2T sent, H2CData arriving */
    REQ_EXEC,           /* at the bdev */
    REQ_AER,            /* parked until an asynchronous event */
    REQ_TX,             /* completed, response being sent */
};

struct nvmf_req {
    struct nvmf_conn *c;
    struct nvme_sqe cmd;
    struct nvme_cqe cpl;
    uint8_t state;
    bool h2c;                   /* data host to controller */
    bool c2h;
    bool in_capsule;
    bool data_err;              /* data digest failed: fail the command */
    uint16_t idx;               /* also the R2T transfer tag */
    uint32_t dlen;              /* data transfer length */
    uint32_t rcvd;              /* H2C bytes received */
    uint8_t *buf;               /* data: icbuf or a pool buffer */
    uint32_t pool_len;          /* > 0: buf is from the reactor pool */
    uint8_t *icbuf;             /* this slot's in-capsule buffer */
    struct nvmf_ns *ns;
    uint32_t pending;           /* child I/Os (DSM) */
    uint64_t r2t_at;            /* ticks when the R2T was queued */
    uint16_t first_status;
    uint8_t tx_pending;
    struct tx_pdu tx_r2t, tx_data, tx_rsp;
    uint8_t h_r2t[32], h_rsp[48], h_data[136]; /* h_data: header + digest + HPDA pad */
    struct nvmf_req *next;
};

struct nvmf_req *nvmf_aer_take(struct nvmf_conn *c);
struct nvmf_req *nvmf_aer_take_cid(struct nvmf_conn *c, uint16_t cid);

/* ---- between tcp.c and ctrlr.c ------------------------------------------- */

/* Controller logic (ctrlr.c), on the connection's reactor. Each completes
 * req through nvmf_req_complete() now or later. */
void nvmf_fabrics_exec(struct nvmf_req *req);
void nvmf_admin_exec(struct nvmf_req *req);
/* A connection attached to ctrlr closes: drop its reference. */
void nvmf_ctrlr_detach(struct nvmf_conn *c);
/* Timed check on the admin queue's reactor: KATO, pending AENs. */
void nvmf_ctrlr_admin_tick(struct nvmf_conn *c, uint64_t now);

/* Transport helpers (tcp.c). */
void nvmf_req_complete(struct nvmf_req *req, uint16_t status, uint64_t result);
/* Gets a data buffer of req->dlen bytes for c2h data; false: none free now. */
uint8_t *nvmf_req_data_buf(struct nvmf_req *req, uint32_t len);
void nvmf_conn_close(struct nvmf_conn *c, const char *why);
void nvmf_conn_park_aer(struct nvmf_req *req);
int nvmf_conn_reactor(struct nvmf_conn *c);

/* Connection fields controller code reads. */
struct nvmf_conn_pub {
    struct srrs_nvmf_tgt *tgt;
    struct nvmf_ctrlr *ctrlr;
    uint16_t qid;
    uint16_t sqsize;
    bool sqhd_disabled;
    bool close_after_tx;
    char peer[64];
    char local_addr[48];        /* our address on this connection (numeric) */
    bool unauth;                /* connected, must authenticate before any other command */
    struct nvmf_auth_qp *auth;  /* DH-HMAC-CHAP state (auth.c); NULL: no authentication */
};
struct nvmf_conn_pub *nvmf_conn_pub(struct nvmf_conn *c);

/* Listener management and teardown (tcp.c), control thread. */
int nvmf_listener_add(struct srrs_nvmf_tgt *tgt, const char *addr, int port);
int nvmf_listener_remove(struct srrs_nvmf_tgt *tgt, const char *addr, int port);
void nvmf_transport_fini(struct srrs_nvmf_tgt *tgt);
/* Under tgt->lock. */
/* discovery.c: the cluster's subsystems in the discovery log (under tgt->lock) */
struct nvmf_disc_table;
void nvmf_disc_changed(struct srrs_nvmf_tgt *tgt);
bool nvmf_disc_lists(const struct srrs_nvmf_tgt *tgt, const char *nqn);
void nvmf_disc_entry_put(uint8_t *e, uint16_t portid, const char *traddr, const char *trsvcid,
                         const char *subnqn);
size_t nvmf_disc_log_cluster(const struct srrs_nvmf_tgt *tgt, const char *hostnqn,
                             const char *local, uint8_t *d, size_t off, size_t cap, uint64_t *n);
void nvmf_disc_free(struct srrs_nvmf_tgt *tgt);

int nvmf_listeners_snapshot(struct srrs_nvmf_tgt *tgt, char (*addrs)[64], int *ports, int max);
void nvmf_conn_info(struct nvmf_conn *c, struct srrs_nvmf_qpair_info *out);
struct nvmf_conn *nvmf_conn_next(struct nvmf_conn *c);
/* Control thread: make every reactor with connections look at controller
 * flags (dead, pending AENs) now rather than at its next tick. */
void nvmf_kick_reactors(struct srrs_nvmf_tgt *tgt);

/* ---- DH-HMAC-CHAP (auth.c) ------------------------------------------------------ */

enum { AUTH_HASH_SHA256 = 1, AUTH_HASH_SHA384 = 2, AUTH_HASH_SHA512 = 3 };
enum { AUTH_DH_NULL = 0, AUTH_DH_2048, AUTH_DH_3072, AUTH_DH_4096, AUTH_DH_6144, AUTH_DH_8192 };
/* Failure reason code explanations */
enum { AUTH_FAIL_FAILED = 1, AUTH_FAIL_PROTOCOL = 2, AUTH_FAIL_CONCAT = 3, AUTH_FAIL_HASH = 4,
       AUTH_FAIL_DHGROUP = 5, AUTH_FAIL_PAYLOAD = 6, AUTH_FAIL_MESSAGE = 7 };

struct nvmf_dhchap_key {
    uint8_t key[64];
    uint8_t len;
    uint8_t hash;               /* transformation hash id, 0: none */
};
struct nvmf_host_keys {
    struct nvmf_dhchap_key host, ctrl;
    bool has_ctrl;
};

uint32_t nvmf_auth_hash_len(uint8_t id);
uint32_t nvmf_auth_dh_len(uint8_t gid);
int nvmf_dhchap_parse(const char *s, struct nvmf_dhchap_key *k);
int nvmf_dhchap_transform(const struct nvmf_dhchap_key *k, const char *nqn, uint8_t *out);
int nvmf_dhchap_response(uint8_t hid, const uint8_t *key, uint32_t klen, const uint8_t *chal,
                         const uint8_t *sess, uint32_t seq, uint16_t tid, bool ctrl,
                         const char *nqn1, const char *nqn2, uint8_t *out);
void *nvmf_dh_new(uint8_t gid, uint8_t *pub);
int nvmf_dh_session(void *mine, uint8_t gid, uint8_t hid, const uint8_t *peer, uint32_t plen,
                    uint8_t *skey);
void nvmf_dh_free(void *pk);
/* Target, under tgt->lock. */
int nvmf_auth_host_set(struct nvmf_subsys *ss, const char *hostnqn, const char *secret,
                       const char *ctrl_secret, int hash, int dhgroup);
int nvmf_auth_connect_check(struct nvmf_subsys *ss, const char *hostnqn);
void nvmf_auth_subsys_free(struct nvmf_subsys *ss);
/* Target, on the queue's reactor. */
int nvmf_auth_qp_init(struct nvmf_conn_pub *cp);
void nvmf_auth_qp_free(struct nvmf_conn_pub *cp);
bool nvmf_auth_expired(struct nvmf_conn_pub *cp, uint64_t now);
/* A transaction is under way: it has a deadline (nvmf_auth_expired). */
bool nvmf_auth_running(const struct nvmf_conn_pub *cp);
void nvmf_auth_exec(struct nvmf_req *req, bool send);
/* Host: one authentication transaction on queue q over xfer (see auth.c). */
typedef int (*nvmf_auth_xfer_fn)(void *q, bool send, void *buf, uint32_t len);
int nvmf_auth_host(nvmf_auth_xfer_fn xfer, void *q, const struct nvmf_host_keys *k, uint16_t qid,
                   const char *hostnqn, const char *subnqn);

static inline uint32_t nvmf_ctz_shift(uint32_t bs) { return (uint32_t)__builtin_ctz(bs); }

#endif
