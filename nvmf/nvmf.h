/*
 * SRRS NVMe-oF/TCP: the C API that Python may call (read verbatim into
 * ffi.cdef() after ffi/srrs.h). Plain C, no macros, no includes.
 *
 * Every function returns 0 (or a positive value) on success and -errno on
 * failure with srrs_last_error() set. "control" = any non-reactor thread;
 * those calls may block while reactors do their part.
 */

/* ANA states (srrs_nvmf_ana_set, struct srrs_nvmf_path_info.ana). */
enum srrs_ana_state {
    SRRS_ANA_OPTIMIZED = 1,
    SRRS_ANA_NON_OPTIMIZED = 2,
    SRRS_ANA_INACCESSIBLE = 3,
    SRRS_ANA_PERSISTENT_LOSS = 4,
    SRRS_ANA_CHANGE = 15,
};
/* The log pages the target serves (Get Log Page LID). */
enum srrs_nvme_log_page {
    SRRS_LOG_ERROR = 0x01,
    SRRS_LOG_SMART = 0x02,
    SRRS_LOG_FW_SLOT = 0x03,
    SRRS_LOG_CHANGED_NS = 0x04,
    SRRS_LOG_CMD_EFFECTS = 0x05,
    SRRS_LOG_ANA = 0x0C,
    SRRS_LOG_DISCOVERY = 0x70,
};

/* ---- target ------------------------------------------------------------ */

struct srrs_nvmf_tgt;

struct srrs_nvmf_tgt_opts {
    uint16_t cntlid_min;        /* dynamic controller IDs come from [min, max] */
    uint16_t cntlid_max;        /* (disjoint ranges on the two controllers of a pair) */
    uint32_t max_io_queues;     /* per controller, 1..64 */
    uint32_t max_queue_depth;   /* entries per queue (CAP.MQES + 1), 2..1024 */
    /* Connections without a Connect yet ("handshaking": before ICReq or
     * before the Connect command) cost the target memory and a socket and
     * prove nothing: at most this many in all and from one source address
     * (0: 512 and 128); a new one over a limit evicts the oldest handshaking
     * one (of that source, or of all), so idle sockets cannot lock hosts out. */
    uint32_t max_handshaking;
    uint32_t max_handshaking_per_source;
    uint32_t handshake_timeout_ms; /* accept to Connect (0: 5000) */
    int allow_hdgst;            /* accept header digests when the host asks */
    int allow_ddgst;            /* accept data digests when the host asks */
    uint64_t reactor_mask;      /* reactors that may own queue pairs (0: all) */
    int listener_reactor;       /* reactor that polls the listening sockets */
    uint32_t auth_timeout_ms;   /* DH-HMAC-CHAP: Connect (or a re-authentication's Negotiate)
                                 * to Success, else the queue closes (0: 20 s) */
};

/* control. Creates an empty target (no listener, only the discovery subsystem). */
int srrs_nvmf_tgt_create(struct srrs_core *core, const struct srrs_nvmf_tgt_opts *opts,
                         struct srrs_nvmf_tgt **out);
/* control. Closes listeners and every connection (in-flight I/O drains),
 * closes the bdevs and frees everything. Reactors must still be running
 * (or already stopped). Nulls *tgt. */
void srrs_nvmf_tgt_destroy(struct srrs_nvmf_tgt **tgt);

/* control. Listens on addr (IPv4 or IPv6 literal) : port. Port 0 picks a free
 * one. Returns the bound port. -EADDRINUSE, -EINVAL (bad address). */
int srrs_nvmf_listener_add(struct srrs_nvmf_tgt *tgt, const char *addr, int port);
/* control. -ENOENT if not listening there. Connections already accepted stay. */
int srrs_nvmf_listener_remove(struct srrs_nvmf_tgt *tgt, const char *addr, int port);

/* ---- subsystems --------------------------------------------------------- */

/* control. nqn 1..223 bytes; serial <= 20, model <= 40 ASCII (NULL: defaults;
 * the default serial is derived from the NQN: unique, stable, the same on both
 * controllers of a pair).
 * -EEXIST, -EINVAL, -ENOSPC (too many subsystems). */
int srrs_nvmf_subsystem_add(struct srrs_nvmf_tgt *tgt, const char *nqn, const char *serial,
                            const char *model, int allow_any_host);
/* control. Tears down its controllers (their I/O drains) first. -ENOENT. */
int srrs_nvmf_subsystem_remove(struct srrs_nvmf_tgt *tgt, const char *nqn);
int srrs_nvmf_subsystem_allow_any_host(struct srrs_nvmf_tgt *tgt, const char *nqn, int allow);
int srrs_nvmf_host_add(struct srrs_nvmf_tgt *tgt, const char *nqn, const char *hostnqn);
int srrs_nvmf_host_remove(struct srrs_nvmf_tgt *tgt, const char *nqn, const char *hostnqn);

/* ---- DH-HMAC-CHAP in-band authentication ---------------------------------- */

/* control. Host hostnqn of subsystem nqn must authenticate with secret (a
 * "DHHC-1:<hh>:<base64>:" string as nvme gen-dhchap-key writes it; CRC
 * checked, transformed with the host NQN when hh != 0). ctrl_secret (or
 * NULL) lets the host authenticate the controller too (bidirectional).
 * hash 1..3 (SHA-256/384/512) and dhgroup 0..5 (NULL, ffdhe2048..8192) are
 * what the target picks; a host that does not offer them is refused.
 * secret NULL: no authentication for this host any more. Queues already
 * authenticated stay; a re-authentication uses the new secret. Errors name
 * the field, never the secret. -ENOENT, -EINVAL. */
int srrs_nvmf_host_set_dhchap(struct srrs_nvmf_tgt *tgt, const char *nqn, const char *hostnqn,
                              const char *secret, const char *ctrl_secret, int hash, int dhgroup);
/* control. require: hosts without a secret are refused at Connect. */
int srrs_nvmf_subsystem_require_auth(struct srrs_nvmf_tgt *tgt, const char *nqn, int require);
/* control. Queue authentications that succeeded / failed since the start. */
int srrs_nvmf_auth_stats(struct srrs_nvmf_tgt *tgt, uint64_t *ok, uint64_t *failed);
/* Test vectors: the transformed key of a secret for nqn (out: 64 bytes),
 * returns its length; and one side's response (ctrl 0: host, "HostHost"; 1:
 * controller), sess NULL for the NULL DH group else H(g^xy), out: 64 bytes. */
int srrs_nvmf_dhchap_transform(const char *secret, const char *nqn, uint8_t *out, int max);
int srrs_nvmf_dhchap_response(int hash, const uint8_t *key, int klen, const uint8_t *chal,
                              const uint8_t *sess, uint32_t seq, uint16_t tid, int ctrl,
                              const char *nqn1, const char *nqn2, uint8_t *out);

/* control. Adds bdev as namespace nsid (0: lowest free) in ANA group
 * anagrpid (1..32). uuid: 16 bytes or NULL (derived from nqn + bdev name,
 * stable across restarts); the NGUID equals the UUID bytes. Returns the
 * nsid. Connected hosts get a namespace-attribute-changed AEN. -ENOENT (no
 * bdev or subsystem), -EEXIST (nsid, bdev or UUID already in the subsystem),
 * -ENOSPC, -EINVAL. */
int srrs_nvmf_ns_add(struct srrs_nvmf_tgt *tgt, const char *nqn, uint32_t nsid, const char *bdev,
                     const uint8_t *uuid, uint32_t anagrpid);
/* control. Waits for the namespace's in-flight I/O, then closes the bdev. */
int srrs_nvmf_ns_remove(struct srrs_nvmf_tgt *tgt, const char *nqn, uint32_t nsid);
/* control. Namespace nsid now reads and writes bdev, with the same NSID,
 * UUID/NGUID and ANA group: hosts keep the namespace (and its block device)
 * and take its new size from the namespace-attribute-changed AEN. Waits for
 * the I/O in flight on the old bdev, then closes it. The block size must not
 * change. */
int srrs_nvmf_ns_replace(struct srrs_nvmf_tgt *tgt, const char *nqn, uint32_t nsid,
                         const char *bdev);
/* control. Waits until no I/O is in flight on namespace nsid (after an ANA
 * change to inaccessible: every command that passed the ANA check before it
 * has completed). -ETIMEDOUT after timeout_ms. */
int srrs_nvmf_ns_drain(struct srrs_nvmf_tgt *tgt, const char *nqn, uint32_t nsid, int timeout_ms);
/* control. state: enum srrs_ana_state (1..3). Raises an
 * ANA-change AEN on every controller of the subsystem. */
int srrs_nvmf_ana_set(struct srrs_nvmf_tgt *tgt, const char *nqn, uint32_t anagrpid, int state);

/* ---- cluster-wide discovery (nvmf/discovery.c) ---------------------------- */

/* One subsystem port of the cluster, as the discovery log lists it to the
 * hosts that hosts admits ('\n'-separated host NQNs; "*" admits any; empty:
 * none). traddr "0.0.0.0" or "::" is this target's wildcard listener,
 * reported at the address the host connected to. */
struct srrs_nvmf_disc_entry {
    const char *subnqn;
    const char *traddr;
    const char *trsvcid;
    const char *hosts;
};
/* control. Replaces the cluster table (copied); the discovery log lists its
 * entries a host may access besides the local subsystems (a local subsystem
 * the table lists is reported at the table's addresses only). Bumps the log
 * generation and raises the discovery-log-change AEN on every discovery
 * controller. n 0 empties it. -EINVAL, -ENOMEM. */
int srrs_nvmf_discovery_set(struct srrs_nvmf_tgt *tgt, const struct srrs_nvmf_disc_entry *e,
                            uint32_t n);

/* ---- introspection ------------------------------------------------------- */

struct srrs_nvmf_qpair_info {
    char subnqn[224];
    char hostnqn[224];
    char peer[64];
    uint16_t cntlid;
    uint16_t qid;
    int32_t reactor;
    uint32_t sqsize;            /* entries */
    uint32_t outstanding;       /* commands in the target now */
    int32_t hdgst;
    int32_t ddgst;
    uint64_t cmds;
    uint64_t reads;
    uint64_t writes;
    uint64_t bytes_read;
    uint64_t bytes_written;
    uint64_t errors;            /* commands completed with a non-zero status */
};

/* control. Fills up to max, returns how many queue pairs exist (connected ones). */
int srrs_nvmf_qpair_list(struct srrs_nvmf_tgt *tgt, struct srrs_nvmf_qpair_info *out, int max);

struct srrs_nvmf_tgt_stats {
    uint64_t accepted;          /* TCP connections accepted */
    uint64_t closed;
    uint64_t proto_errors;      /* connections closed for a bad PDU */
    uint64_t kato_expired;      /* controllers torn down by keep-alive */
    uint64_t ctrlrs;            /* controllers now */
    uint64_t conns;             /* connections now */
    uint64_t refused;           /* connections closed at accept (over the connection limit) */
    uint64_t evicted;           /* handshaking connections closed for a newer one */
    uint64_t handshake_timeouts; /* connections closed: no Connect within handshake_timeout_ms */
    uint64_t handshaking;       /* connections without a Connect now */
};
int srrs_nvmf_tgt_get_stats(struct srrs_nvmf_tgt *tgt, struct srrs_nvmf_tgt_stats *out);

/* ---- initiator (load generator and tests) ------------------------------- */

struct srrs_nvmf_host;

struct srrs_nvmf_host_opts {
    const char *addr;
    int port;
    const char *subnqn;
    const char *hostnqn;        /* NULL: a fixed test host NQN */
    uint32_t nqueues;           /* I/O queues */
    uint32_t qsize;             /* entries per I/O queue (clamped to the target's CAP.MQES + 1) */
    int hdgst;
    int ddgst;
    uint32_t kato_ms;           /* 0: no keep-alive (this initiator never sends Keep Alive) */
    int timeout_ms;             /* for each setup step */
    uint32_t path_timeout_ms;   /* multipath: an I/O that lost its path (connection lost, or
                                 * a path-related status without DNR) is resubmitted on another
                                 * path; a lost path is reconnected in the background; the I/O
                                 * fails only after this long without a usable path.
                                 * 0: no retry, no reconnection (an I/O fails at once). */
    const char *dhchap_secret;  /* "DHHC-1:..." or NULL: authenticate when the target asks */
    const char *dhchap_ctrl_secret; /* or NULL: also authenticate the controller */
};

struct srrs_nvmf_host_info {
    uint16_t cntlid;
    uint32_t nqueues;           /* I/O queues connected */
    uint32_t nn;
    uint64_t size;              /* namespace 1, bytes */
    uint32_t block_size;
    uint32_t ioccsz_bytes;      /* in-capsule data limit */
    uint32_t mdts_bytes;
    uint32_t maxh2cdata;
    char sn[21];
    char mn[41];
    uint32_t npaths;            /* paths (controllers of the subsystem) */
    uint64_t failovers;         /* I/Os resubmitted on another path */
    uint64_t path_timeouts;     /* I/Os failed: no usable path within path_timeout_ms */
    double max_wait_us;         /* longest an I/O took from losing its path to completing */
};

struct srrs_nvmf_path_info {
    char addr[64];
    int port;
    uint16_t cntlid;
    int32_t live;               /* 1: connected; 0: down, reconnecting during a job */
    int32_t ana;                /* last known ANA state: enum srrs_ana_state */
    uint64_t ios;               /* I/Os completed successfully on this path */
    uint64_t bytes;
    uint64_t path_errors;       /* completions with a path-related status (SCT 3, no DNR) */
    uint64_t drops;             /* connection losses */
    uint64_t reconnects;        /* successful background reconnections */
    uint64_t resubmitted;       /* I/Os moved off this path (path error or connection loss) */
    uint64_t errors;            /* I/Os failed on this path with another status */
};

/* control. Connects admin + nqueues I/O queues (blocking, with timeouts),
 * enables the controller and identifies namespace 1. */
int srrs_nvmf_host_connect(const struct srrs_nvmf_host_opts *opts, struct srrs_nvmf_host **out);
int srrs_nvmf_host_get_info(struct srrs_nvmf_host *h, struct srrs_nvmf_host_info *out);
/* control. Adds another controller of the same subsystem as a path (up to 8):
 * its own admin queue and nqueues I/O queues; namespace 1 must have the same
 * NGUID, size and block size. Returns 0 when connected, 1 when it could not
 * connect now (kept as a down path, reconnected in the background while a
 * job runs with path_timeout_ms > 0). -EINVAL (not the same namespace, or
 * path_timeout_ms is 0), -ENOSPC (too many paths). */
int srrs_nvmf_host_add_path(struct srrs_nvmf_host *h, const char *addr, int port);
/* control (not while a job runs). Fills up to max path records, returns the count. */
int srrs_nvmf_host_path_info(struct srrs_nvmf_host *h, struct srrs_nvmf_path_info *out, int max);
/* control. Runs a load job (srrs_bench_run) on reactor `reactor` over the
 * host's I/O queues (request slot i uses queue i % nqueues). With several
 * paths, each I/O goes to the next ANA-optimized live path (round-robin, like
 * Linux iopolicy=round-robin; non-optimized ones only when no optimized one
 * is usable). While the job runs, one monitor thread per path reads the
 * path's ANA log every 100 ms on its admin queue and reconnects a lost path
 * with backoff; no allocation and no thread hand-off per I/O. */
int srrs_nvmf_host_bench(struct srrs_core *core, int reactor, struct srrs_nvmf_host *h,
                         const struct srrs_bench_opts *opts, struct srrs_bench_result *out);
/* control. Discovery: connects to the discovery subsystem and fills up to
 * max log entries (1024 bytes each, raw) into buf. Returns numrec. */
int srrs_nvmf_discover(const char *addr, int port, const char *hostnqn, uint8_t *buf, int max,
                       int timeout_ms);
/* control. Shuts the controller down (CC.SHN) and closes the sockets. Nulls *h. */
void srrs_nvmf_host_disconnect(struct srrs_nvmf_host **h);

/* ---- PDU framing rules (nvmf/pdu.h), for tests --------------------------- */

/* any. Checks a received common header (8 bytes at ch) as the target (host 0)
 * or the initiator (host 1) does on a queue with these digests, having asked
 * the peer for cpda_align (bytes; <= 4: none; both ends ask for none today):
 * 0 or the fatal error status (FES), *fei the offending byte; geom[3]:
 * header + digest, padding and payload bytes. */
int srrs_nvmf_pdu_check(int host, const uint8_t *ch, int hdgst, int ddgst, uint32_t cpda_align,
                        uint32_t *fei, uint32_t *geom);
/* any. Frames the header whose specific part is in h (room: 152 bytes) for
 * dlen payload bytes, padding to align (the peer's HPDA/CPDA in bytes);
 * returns the bytes before the payload. */
uint32_t srrs_nvmf_pdu_seal(uint8_t *h, uint8_t type, uint8_t flags, uint32_t dlen, int hdgst,
                            int ddgst, uint32_t align);

/* ---- transport floor (benchmark only) ------------------------------------ */

/* control. Busy-polled TCP ping-pong on loopback (server thread on
 * server_cpu, named "srrs-pingpong", client on the calling thread pinned to
 * client_cpu; -1: no pinning), qd messages in flight: req_len bytes out,
 * resp_len back. server_blocks: the server blocks in recv instead of
 * polling. Fills ios, iops, mibps, lat_avg/p50/p99/p999 of out. */
int srrs_tcp_pingpong(uint32_t req_len, uint32_t resp_len, uint32_t qd, double seconds,
                      int server_cpu, int client_cpu, int server_blocks,
                      struct srrs_bench_result *out);
