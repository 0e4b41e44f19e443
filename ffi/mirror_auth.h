/*
 * Mirror link authentication (private to the mirror files, ffi/mirror_int.h;
 * used by ffi/mirror_link.c; never read by cffi).
 *
 * Both controllers of a pair hold the same 32-byte secret K (`srrs keygen`
 * writes it). A new TCP connection gets nothing from the link, no slot, no
 * state, no data, until this handshake has proved that the other end holds K:
 *
 *   dialer (node 0)   M1 = "SRMA" 1 0 0 0 || n0 (32 random bytes)        40 bytes
 *   acceptor (node 1) M2 = "SRMA" 1 1 0 0 || n1                          40 bytes
 *   dialer            P0 = HMAC(K, "SRRS mirror auth v1" 0 M1 M2)        32 bytes
 *   acceptor          P1 = HMAC(K, "SRRS mirror auth v1" 1 M1 M2)        32 bytes
 *
 * The acceptor answers P1 only after P0 verified, so a stranger never gets a
 * proof out of it; the role byte keeps a proof from being reflected back.
 * Each direction then has its own session key HMAC(K, "SRRS mirror key v1" r
 * M1 M2) (r: the sender's role), fresh per connection, and every frame
 * carries a 16-byte GMAC (AES-256-GCM authenticating header with the MAC
 * zeroed || payload, nothing encrypted) under that key, with the frame's
 * sequence number as the nonce: unique per key, as a key lives for one
 * connection and direction and the sender never reuses a number. A replayed
 * or reordered frame fails the sequence check the MAC covers.
 *
 * Why GMAC for frames: on this machine's SHA and AES instructions it costs a
 * fraction of HMAC-SHA256 per 4 KiB payload (the write path's figure). It is
 * computed with libcrypto's GCM128 functions (GHASH with the CPU's carry-less
 * multiply) over an AES-256 block cipher held in an EVP ECB context, not with
 * an EVP AES-GCM context: that one, re-initialised per frame for the nonce and
 * asked for the tag through OpenSSL 3's parameter lookups (string compares),
 * cost a fifth of the link reactor's CPU at 350k paired writes/s. The tag is
 * the same AES-256-GCM tag (checked against EVP at fmac_init).
 * The handshake's HMAC-SHA256 runs over OpenSSL's SHA256_CTX (a plain struct):
 * keyed inner and outer states computed once per key and copied per message
 * (OpenSSL 3's EVP_MAC/HMAC_CTX re-initialisation allocates twice per message).
 */
#ifndef SRRS_MIRROR_AUTH_H
#define SRRS_MIRROR_AUTH_H

#define OPENSSL_SUPPRESS_DEPRECATED /* SHA256_CTX: see above */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/modes.h>
#include <openssl/sha.h>
#include <sys/socket.h>

#include "srrs_int.h"

#define MA_KEY 32       /* secret and session key bytes */
#define MA_MAC 16       /* MAC bytes carried by a frame */
#define MA_PENDING 8    /* unauthenticated connections at once */
#define MA_DEADLINE_MS 2000

struct mac_key {
    SHA256_CTX in, out; /* after absorbing key ^ ipad, key ^ opad */
};

void mac_key_set(struct mac_key *k, const uint8_t *key, size_t len);

static inline void mac_begin(const struct mac_key *k, SHA256_CTX *x) { *x = k->in; }
static inline void mac_update(SHA256_CTX *x, const void *p, size_t n) { SHA256_Update(x, p, n); }
void mac_end(const struct mac_key *k, SHA256_CTX *x, uint8_t out[32]);
/* Constant time: 0 when equal. */
int mac_diff(const uint8_t *a, const uint8_t *b, size_t n);

/* The frame MAC of one direction of one connection (GMAC, AES-256-GCM). */
struct fmac {
    EVP_CIPHER_CTX *c;    /* AES-256-ECB under the session key: the block cipher */
    GCM128_CONTEXT *g;    /* GHASH state, keyed from c */
    bool bad;             /* the block cipher failed since the last fmac_begin: no tag */
};

/* Control or reactor: allocate once per link (-ENOMEM; -EPROTO: the tags
 * would differ from AES-256-GCM's) / free. */
int fmac_init(struct fmac *f);
void fmac_free(struct fmac *f);
/* Reactor: a new connection's key (-EPROTO: the cipher refused it). */
int fmac_key(struct fmac *f, const uint8_t key[MA_KEY]);
/* Reactor, per frame: nonce = seq; then the authenticated bytes; the tag
 * (false: no tag could be computed; a frame must then not be accepted). */
void fmac_begin(struct fmac *f, uint64_t seq);
void fmac_update(struct fmac *f, const void *p, size_t n);
bool fmac_end(struct fmac *f, uint8_t tag[MA_MAC]);

struct mauth;

struct ma_conn {
    struct mauth *a;
    int fd;                         /* -1: free */
    bool dialer, connecting;
    uint8_t step;                   /* bytes expected next: see mirror_auth.c */
    uint64_t deadline;              /* ticks */
    uint8_t m1[40], m2[40];
    uint8_t rx[40];
    size_t got;
    struct sockaddr_storage from;
    struct srrs_poller *p;
};

struct mauth {
    struct srrs_reactor *r;
    uint8_t secret[MA_KEY];
    /* The connection fd proved it holds the secret: it now belongs to the link. */
    void (*done)(void *arg, int fd, const uint8_t ktx[MA_KEY], const uint8_t krx[MA_KEY]);
    /* A connection failed the handshake (closed already; `why` names the step). */
    void (*fail)(void *arg, const struct sockaddr_storage *from, const char *why);
    void *arg;
    struct ma_conn c[MA_PENDING];
};

/* Reactor thread. Takes fd (connected, or connecting when dialer && connecting).
 * A full set gives the oldest stranger's place to the new connection. */
void mauth_add(struct mauth *a, int fd, bool dialer, bool connecting,
               const struct sockaddr_storage *from);
/* A dial of ours is still in its handshake. */
bool mauth_dialing(const struct mauth *a);
/* Reactor thread: closes every pending connection. */
void mauth_close_all(struct mauth *a);

#endif
