/*
 * Mirror bdev and mirror link (docs/architecture.md, Pair): the C contract Python may call
 * (read verbatim into cdef after ffi/srrs.h). Plain C, no macros.
 *
 * One link = one TCP connection between the two controllers of a pair, owned
 * by one reactor; every mirror bdev of the pair rides on it (volume id in each
 * frame). Frames: a 64-byte header (magic, type, volume, sequence number,
 * stripe/offset, length, CRC32C of header and payload, MAC) and a payload.
 * With a secret, a connection carries no frame before the mutual HMAC-SHA256
 * handshake of ffi/mirror_auth.h, and every frame then carries a MAC (GMAC).
 * Node index 0 connects, node 1 accepts; stripe i is ordered by node i % 2.
 *
 * Mirror I/O of every reactor is processed on the link's reactor (messages
 * there and back); no Python runs per I/O.
 *
 * Modes (srrs_mirror_set_mode), from the pair's state machine (ctrl/ha.py):
 *   0 fenced         every I/O fails with -ENOTCONN (a path error: the host retries
 *                    on the other path); writes held for the peer fail too. A
 *                    single-path host's I/O (a VM's) is held instead, up to
 *                    opts.hold_ms, and started again whole once the mirror serves
 *   1 paired         writes applied by the stripe owner, then on the peer; ack when
 *                    both have them; reads local
 *   2 solo           writes applied locally and their stripes marked dirty in the
 *                    persistent bitmap; acknowledged alone only while now < the
 *                    lease deadline: past it the mirror fences by itself
 *   3 resync_source  like paired, and dirty stripes (ours | the peer's) are copied to
 *                    the peer; stripes not yet copied are ordered by us
 *   4 resync_target  like paired; reads of stripes not yet copied go to the peer
 *   5 pending        peer lost, lease asked for: new and held I/O waits (nothing is
 *                    acknowledged); the next mode (solo or fenced) settles it
 *
 * Read lease: in paired and resync modes a replica answers a read only while
 * it holds a read lease from its peer. Each side asks every L/4 (a PING with
 * its send time); the peer grants while it is paired or resyncing (the answer
 * echoes that time: the lease runs L from it) and then acknowledges nothing
 * alone (solo) until L plus a clock-rate margin after its last grant -- solo
 * asked earlier stays pending until then. A read without a lease waits for
 * the next grant, at most L while the link is up, then fails with -ENOTCONN
 * (an ANA path error); with the link down it is held like the writes, until
 * the next mode (solo serves it, fenced fails it).
 */

/* srrs_mirror_set_mode's modes (above); the info structs report them too. */
enum srrs_mirror_mode {
    SRRS_MIRROR_FENCED = 0,
    SRRS_MIRROR_PAIRED = 1,
    SRRS_MIRROR_SOLO = 2,
    SRRS_MIRROR_RESYNC_SOURCE = 3,
    SRRS_MIRROR_RESYNC_TARGET = 4,
    SRRS_MIRROR_PENDING = 5,
};

struct srrs_mirror_link;

struct srrs_mirror_link_opts {
    int reactor;               /* reactor that owns the socket and all mirror I/O */
    int node;                  /* 0 or 1 */
    char listen_host[64];      /* node 1 accepts here (node 0 listens too, for restarts) */
    uint16_t listen_port;
    char peer_host[64];
    uint16_t peer_port;
    uint32_t ping_ms;          /* PING period (default 50) */
    uint32_t timeout_ms;       /* link down when nothing arrives this long (default 1000) */
    uint32_t read_lease_ms;    /* read lease length L we grant the peer (default 500) */
    uint8_t secret[32];        /* the pair's mirror secret (srrs keygen), both sides alike */
    uint32_t secret_len;       /* 32: authenticated link; 0: none (insecure, isolated network) */
    char allow[4][64];         /* numeric source addresses accepted ("": any that authenticates) */
    int32_t sole_orderer;      /* 0: stripe i is ordered by node i % 2; 1 + n: node n orders
                                  every stripe, the other forwards all its writes (a volume
                                  move's tee; a pair whose hosts write through one controller).
                                  Both sides alike: HELLO carries it, and a peer whose value
                                  differs is refused (both would order some stripes), as is
                                  one that does not say (a controller before this field)
                                  while ours is not 0, unless sole_orderer_agreed */
    int32_t sole_orderer_agreed; /* 1: both sides' sole_orderer come from one plan (a volume
                                  move's link): a peer that does not say is taken to agree */
    uint64_t self_id;          /* our identity (a digest of our name), sent in HELLO; 0: none */
    uint64_t peer_id;          /* the peer's: a HELLO with another drops the connection;
                                  0: not checked (set by srrs_mirror_link_set_peer) */
    uint32_t hold_ms;          /* a host I/O of a single-path host (SRRS_IO_F_ONE_PATH: a
                                  VM over vhost-user) that would fail with a path error
                                  (fenced, starting, solo past its lease, no read lease) is
                                  held and started again, whole, once the mirror serves
                                  (paired, resync, solo), for up to this long from its
                                  first failure; then it fails. 0: fails at once */
};

struct srrs_mirror_link_info {
    int32_t up;
    int32_t mode;              /* enum srrs_mirror_mode */
    uint64_t connects;
    uint64_t tx_frames;
    uint64_t rx_frames;
    uint64_t tx_bytes;
    uint64_t rx_bytes;
    uint64_t crc_errors;       /* frames that failed CRC32C: connection dropped */
    uint64_t proto_errors;     /* bad header, length, volume or sequence number */
    uint64_t held_writes;      /* writes waiting for the peer right now */
    int64_t read_lease_left_us; /* our read lease from the peer (<= 0: none) */
    int64_t grant_left_us;     /* the peer's read lease from us may run this long yet */
    uint64_t lease_reads_failed; /* reads failed for want of a read lease (path error) */
    uint64_t mac_errors;       /* frames whose MAC failed or that replayed a spent sequence
                                  number: discarded, never acted on */
    uint64_t auth_failures;    /* connections refused: failed handshake, deadline, address */
    uint64_t fwd_bounced;      /* forwards for a stripe we do not order (yet): sent back to be
                                  sent again once both sides' modes agree */
    uint64_t held_ios;         /* single-path host I/Os held right now (hold_ms) */
    uint64_t hold_retries;     /* held host I/Os started again */
    uint64_t hold_expired;     /* held host I/Os failed after hold_ms */
};

struct srrs_mirror_info {
    char name[64];
    char replica[64];
    uint32_t vol_id;
    int32_t mode;
    uint64_t stripe_size;
    uint64_t stripes;
    uint64_t dirty_stripes;    /* bits set in the persistent bitmap */
    uint64_t resync_left;      /* stripes still to copy (source and target) */
    uint64_t resync_bytes;     /* copied since the last resync start */
    int32_t resync_active;
    int32_t resync_done;       /* 1 after a resync completed (until the next start) */
    uint64_t writes;
    uint64_t replicated;       /* writes we applied for the peer */
    uint64_t forwarded;        /* writes we forwarded to the owner */
    uint64_t remote_reads;     /* reads served by the peer (stripe not yet in sync) */
    uint64_t fenced_ios;
    uint64_t local_read_errors; /* host reads our replica failed (media error), asked of
                                   the peer instead */
};

/* control. Creates the link on opts->reactor (socket listening/connecting). */
int srrs_mirror_link_create(struct srrs_core *core, const struct srrs_mirror_link_opts *opts,
                            struct srrs_mirror_link **out);
/* control. Mirror bdevs of the link must be deleted first (-EBUSY). Nulls *link. */
int srrs_mirror_link_destroy(struct srrs_mirror_link **link);
/* control. A new peer for the link (docs/architecture.md, Cluster, Replacing a
 * server): its mirror address and our node index with it. Only while the link
 * does not serve a peer (mode solo, fenced or pending): -EBUSY otherwise. A
 * connection to the old peer is dropped; the next is dialled (node 0) or
 * accepted (node 1) under the new settings, and from now on a connection whose
 * HELLO carries another identity than peer_id (0: any) is dropped: the old
 * peer, which still holds the secret, cannot take the link's place. */
int srrs_mirror_link_set_peer(struct srrs_mirror_link *link, const char *host, uint16_t port,
                              int node, uint64_t peer_id);
/* control. A mirror bdev `name` over local bdev `replica` (opened; must match
 * the peer's size). bitmap_path: file holding the dirty bitmap (created). */
int srrs_mirror_create(struct srrs_mirror_link *link, const char *name, const char *replica,
                       uint32_t vol_id, uint64_t stripe_size, const char *bitmap_path);
/* control. The same over a replica that may be open elsewhere: the export
 * that reads and writes it now is switched onto the new mirror with
 * srrs_nvmf_ns_replace (which waits for the I/O in flight on the replica).
 * name must differ from replica. A volume move's tee (docs/architecture.md,
 * Cluster, Volume moves). */
int srrs_mirror_create_over(struct srrs_mirror_link *link, const char *name, const char *replica,
                            uint32_t vol_id, uint64_t stripe_size, const char *bitmap_path);
/* control. ORs bits (one per stripe, LSB first, len bytes) into the mirror's
 * dirty bitmap: what the next resync copies besides the peer's. Returns the
 * number of bits given (set), or -ENOENT. */
int64_t srrs_mirror_mark_dirty(struct srrs_mirror_link *link, const char *name,
                               const uint8_t *bits, uint64_t len);
/* control. Throttles the resync copy of the link's mirrors: at most copies
 * stripes at once (0: 16) and bytes_per_s (0: no limit; a token bucket, 100 ms
 * of burst). A volume move's rate (docs/architecture.md, Volume moves). */
int srrs_mirror_set_copy_limit(struct srrs_mirror_link *link, uint32_t copies,
                               uint64_t bytes_per_s);
/* control. Every mirror of the link; lease_deadline_ns (CLOCK_MONOTONIC) bounds solo. */
int srrs_mirror_set_mode(struct srrs_mirror_link *link, int mode, uint64_t lease_deadline_ns);
/* control. Start copying: source (mode 3) copies dirty stripes of both sides
 * (full: every stripe); target (mode 4) waits for them. */
int srrs_mirror_resync_start(struct srrs_mirror_link *link, int full);
int srrs_mirror_link_get_info(struct srrs_mirror_link *link, struct srrs_mirror_link_info *out);
int srrs_mirror_get_info(struct srrs_mirror_link *link, const char *name,
                         struct srrs_mirror_info *out);
/* any thread. Posts a no-op to every reactor (an idle one wakes and loops)
 * and returns the sum of their loop counters: a wedged reactor stops it. */
uint64_t srrs_core_loops_poke(struct srrs_core *core);
/* control. Test hook: every live piece, lock and resync flag to stderr. */
int srrs_mirror_test_dump(struct srrs_mirror_link *link);
/* control. Test hook: put a frame with a forged MAC into the stream now (a
 * third party's injection): a WRITE of `len` bytes of `byte` at `off` of
 * volume 0 carrying the next sequence number. */
int srrs_mirror_test_inject(struct srrs_mirror_link *link, uint64_t off, uint32_t len, int byte);
/* control. Test hook: send a frame, then the same frame again (a replay). */
int srrs_mirror_test_replay(struct srrs_mirror_link *link);
/* any thread. HMAC-SHA256 as the link computes it (for its test vectors). */
int srrs_mirror_test_hmac(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t len,
                          uint8_t *out32);
/* control. Test hook: drop the connection now (as if the peer vanished). */
int srrs_mirror_test_drop(struct srrs_mirror_link *link);
