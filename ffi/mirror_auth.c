/*
 * Mirror link authentication: HMAC-SHA256 and the connect handshake (the
 * protocol is described in ffi/mirror_auth.h). Runs on the link's reactor.
 */
#include "mirror_auth.h"

#include <openssl/crypto.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <unistd.h>

/* ---- HMAC-SHA256 (RFC 2104) ------------------------------------------------- */

void mac_key_set(struct mac_key *k, const uint8_t *key, size_t len)
{
    uint8_t b[64] = {0}, p[64];
    if (len > sizeof(b))
        SHA256(key, len, b); /* a key longer than the block is hashed first */
    else
        memcpy(b, key, len);
    for (int i = 0; i < 64; i++)
        p[i] = b[i] ^ 0x36;
    SHA256_Init(&k->in);
    SHA256_Update(&k->in, p, sizeof(p));
    for (int i = 0; i < 64; i++)
        p[i] = b[i] ^ 0x5c;
    SHA256_Init(&k->out);
    SHA256_Update(&k->out, p, sizeof(p));
    OPENSSL_cleanse(b, sizeof(b));
    OPENSSL_cleanse(p, sizeof(p));
}

void mac_end(const struct mac_key *k, SHA256_CTX *x, uint8_t out[32])
{
    uint8_t d[32];
    SHA256_Final(d, x);
    SHA256_CTX o = k->out;
    SHA256_Update(&o, d, sizeof(d));
    SHA256_Final(out, &o);
}

int mac_diff(const uint8_t *a, const uint8_t *b, size_t n) { return CRYPTO_memcmp(a, b, n); }

/* ---- frame MAC: GMAC (AES-256-GCM, authenticated data only) ---------------------- */

/* block128_f for the GCM128 functions: one AES-256 block through the EVP ECB
 * context (AES-NI where the CPU has it). `key` is the struct fmac. */
static void fmac_block(const unsigned char in[16], unsigned char out[16], const void *key)
{
    struct fmac *f = (struct fmac *)key;
    int ol = 0;
    if (!EVP_EncryptUpdate(f->c, out, &ol, in, 16) || ol != 16) {
        memset(out, 0, 16);
        f->bad = true;
    }
}

static int fmac_set(struct fmac *f, const uint8_t key[MA_KEY])
{
    if (!EVP_EncryptInit_ex(f->c, NULL, NULL, key, NULL))
        return -EPROTO;
    f->bad = false;
    CRYPTO_gcm128_init(f->g, f, fmac_block); /* H = AES(K, 0) */
    return f->bad ? -EPROTO : 0;
}

/* The tag of this implementation against EVP's AES-256-GCM for one key,
 * nonce and AAD in two parts: a libcrypto that computed them differently
 * would make a link that only talks to itself (or whose tags mean nothing). */
static int fmac_selftest(struct fmac *f)
{
    uint8_t key[MA_KEY], aad[100], iv[12] = {0}, a[MA_MAC], b[MA_MAC], none[16];
    uint64_t seq = 0x0102030405060708ull;
    for (unsigned i = 0; i < sizeof(key); i++)
        key[i] = (uint8_t)(i * 7 + 1);
    for (unsigned i = 0; i < sizeof(aad); i++)
        aad[i] = (uint8_t)(i * 13 + 5);
    memcpy(iv + 4, &seq, sizeof(seq));
    if (fmac_set(f, key))
        return -EPROTO;
    fmac_begin(f, seq);
    fmac_update(f, aad, 64);
    fmac_update(f, aad + 64, sizeof(aad) - 64);
    if (!fmac_end(f, a))
        return -EPROTO;
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int ol, ok = c && EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, iv) &&
                 EVP_EncryptUpdate(c, NULL, &ol, aad, sizeof(aad)) &&
                 EVP_EncryptFinal_ex(c, none, &ol) &&
                 EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, MA_MAC, b);
    EVP_CIPHER_CTX_free(c);
    OPENSSL_cleanse(key, sizeof(key));
    if (!ok)
        return -ENOMEM;
    return memcmp(a, b, MA_MAC) ? -EPROTO : 0;
}

int fmac_init(struct fmac *f)
{
    f->c = EVP_CIPHER_CTX_new();
    if (!f->c || !EVP_EncryptInit_ex(f->c, EVP_aes_256_ecb(), NULL, NULL, NULL) ||
        !EVP_CIPHER_CTX_set_padding(f->c, 0))
        goto fail;
    /* keyed with zeros until the first connection's key (fmac_key) */
    static const uint8_t zero[MA_KEY];
    if (!EVP_EncryptInit_ex(f->c, NULL, NULL, zero, NULL))
        goto fail;
    f->bad = false;
    f->g = CRYPTO_gcm128_new(f, fmac_block);
    if (!f->g || f->bad)
        goto fail;
    int rc = fmac_selftest(f);
    if (rc) {
        fmac_free(f);
        return rc;
    }
    return 0;
fail:
    fmac_free(f);
    return -ENOMEM;
}

void fmac_free(struct fmac *f)
{
    if (f->g)
        CRYPTO_gcm128_release(f->g); /* cleansed as it is freed */
    f->g = NULL;
    EVP_CIPHER_CTX_free(f->c);
    f->c = NULL;
}

int fmac_key(struct fmac *f, const uint8_t key[MA_KEY]) { return fmac_set(f, key); }

void fmac_begin(struct fmac *f, uint64_t seq)
{
    uint8_t iv[12] = {0};
    memcpy(iv + 4, &seq, sizeof(seq));
    f->bad = false;
    CRYPTO_gcm128_setiv(f->g, iv, sizeof(iv)); /* one AES block: the tag's mask */
}

void fmac_update(struct fmac *f, const void *p, size_t n)
{
    if (CRYPTO_gcm128_aad(f->g, p, n))
        f->bad = true; /* past GCM's AAD limit (2^61 bytes): not for frames */
}

bool fmac_end(struct fmac *f, uint8_t tag[MA_MAC])
{
    CRYPTO_gcm128_tag(f->g, tag, MA_MAC);
    return !f->bad;
}

/* ---- handshake ---------------------------------------------------------------- */

enum { S_CONNECT, S_M1, S_M2, S_P0, S_P1 };
static const uint8_t step_len[] = {0, 40, 40, 32, 32};
static const char AUTH_LABEL[] = "SRRS mirror auth v1";
static const char KEY_LABEL[] = "SRRS mirror key v1";

/* HMAC(K, label || role || M1 || M2): a proof (AUTH_LABEL) or a session key (KEY_LABEL). */
static void derive(const struct ma_conn *c, const char *label, uint8_t role, uint8_t out[32])
{
    struct mac_key k;
    SHA256_CTX x;
    mac_key_set(&k, c->a->secret, MA_KEY);
    mac_begin(&k, &x);
    mac_update(&x, label, strlen(label));
    mac_update(&x, &role, 1);
    mac_update(&x, c->m1, sizeof(c->m1));
    mac_update(&x, c->m2, sizeof(c->m2));
    mac_end(&k, &x, out);
    OPENSSL_cleanse(&k, sizeof(k));
}

static void conn_release(struct ma_conn *c)
{
    srrs_poller_unregister(&c->p);
    c->fd = -1;
}

/* count: a stranger's failure (the link counts and reports it); a dial the
 * peer refused or a connect that failed is not one. */
static void ma_fail(struct ma_conn *c, bool count, const char *why)
{
    struct sockaddr_storage from = c->from;
    close(c->fd);
    conn_release(c);
    if (count && c->a->fail)
        c->a->fail(c->a->arg, &from, why);
}

static bool ma_send(struct ma_conn *c, const void *p, size_t n)
{
    /* A few dozen bytes into an empty socket buffer: all or broken. */
    return send(c->fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)n;
}

static bool hello_make(uint8_t m[40], uint8_t role)
{
    memcpy(m, "SRMA", 4);
    m[4] = 1;
    m[5] = role;
    m[6] = m[7] = 0;
    return getrandom(m + 8, 32, 0) == 32;
}

static bool hello_ok(const uint8_t m[40], uint8_t role)
{
    return !memcmp(m, "SRMA", 4) && m[4] == 1 && m[5] == role && !m[6] && !m[7];
}

/* A whole message of step_len[c->step] bytes is in c->rx. */
static void ma_step(struct ma_conn *c)
{
    uint8_t mine[32], want[32], ktx[32], krx[32];
    switch (c->step) {
    case S_M1: /* acceptor */
        if (!hello_ok(c->rx, 0)) {
            ma_fail(c, true, "not a mirror handshake");
            return;
        }
        memcpy(c->m1, c->rx, 40);
        if (!hello_make(c->m2, 1) || !ma_send(c, c->m2, 40)) {
            ma_fail(c, true, "send failed");
            return;
        }
        c->step = S_P0;
        return;
    case S_M2: /* dialer */
        if (!hello_ok(c->rx, 1)) {
            ma_fail(c, true, "the peer's answer is not a mirror handshake");
            return;
        }
        memcpy(c->m2, c->rx, 40);
        derive(c, AUTH_LABEL, 0, mine);
        if (!ma_send(c, mine, 32)) {
            ma_fail(c, false, "send failed");
            return;
        }
        c->step = S_P1;
        return;
    case S_P0: /* acceptor: the dialer proves first, so we are no oracle */
        derive(c, AUTH_LABEL, 0, want);
        if (mac_diff(want, c->rx, 32)) {
            ma_fail(c, true, "wrong proof (not the pair's secret)");
            return;
        }
        derive(c, AUTH_LABEL, 1, mine);
        if (!ma_send(c, mine, 32)) {
            ma_fail(c, true, "send failed");
            return;
        }
        derive(c, KEY_LABEL, 1, ktx);
        derive(c, KEY_LABEL, 0, krx);
        break;
    case S_P1: /* dialer */
        derive(c, AUTH_LABEL, 1, want);
        if (mac_diff(want, c->rx, 32)) {
            ma_fail(c, true, "the peer's proof is wrong (not the pair's secret)");
            return;
        }
        derive(c, KEY_LABEL, 0, ktx);
        derive(c, KEY_LABEL, 1, krx);
        break;
    default:
        ma_fail(c, true, "handshake state");
        return;
    }
    int fd = c->fd;
    struct mauth *a = c->a;
    conn_release(c);
    a->done(a->arg, fd, ktx, krx);
    OPENSSL_cleanse(ktx, sizeof(ktx));
    OPENSSL_cleanse(krx, sizeof(krx));
}

static int ma_poll(void *arg)
{
    struct ma_conn *c = arg;
    if (srrs_ticks() > c->deadline) {
        ma_fail(c, !c->dialer || c->step > S_M2, "no handshake within the deadline");
        return 1;
    }
    if (c->connecting) {
        int err = 0;
        socklen_t sl = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &sl);
        if (err) {
            ma_fail(c, false, "connect failed");
            return 1;
        }
        struct sockaddr_storage ss;
        sl = sizeof(ss);
        if (getpeername(c->fd, (struct sockaddr *)&ss, &sl))
            return 0; /* still connecting */
        c->connecting = false;
        srrs_poller_mod_fd(c->p, EPOLLIN);
        if (!hello_make(c->m1, 0) || !ma_send(c, c->m1, 40)) {
            ma_fail(c, false, "send failed");
            return 1;
        }
        c->step = S_M2;
    }
    /* Exactly the bytes of this step: what follows the last one is the link's. */
    ssize_t k = recv(c->fd, c->rx + c->got, step_len[c->step] - c->got, MSG_DONTWAIT);
    if (k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        /* A peer that already has its link closes our dial: not a stranger. */
        ma_fail(c, !c->dialer, "closed during the handshake");
        return 1;
    }
    if (k < 0)
        return 0;
    c->got += (size_t)k;
    if (c->got == step_len[c->step]) {
        c->got = 0;
        ma_step(c);
    }
    return 1;
}

void mauth_add(struct mauth *a, int fd, bool dialer, bool connecting,
               const struct sockaddr_storage *from)
{
    struct ma_conn *c = NULL, *oldest = NULL;
    for (int i = 0; i < MA_PENDING && !c; i++) {
        if (a->c[i].fd < 0 || !a->c[i].p)
            c = &a->c[i];
        else if (!a->c[i].dialer && (!oldest || a->c[i].deadline < oldest->deadline))
            oldest = &a->c[i];
    }
    if (!c && oldest) {
        /* Strangers that hold every place must not keep the peer out. */
        ma_fail(oldest, true, "displaced by a newer connection");
        c = oldest;
    }
    if (!c) {
        close(fd);
        return;
    }
    memset(c, 0, sizeof(*c));
    c->a = a;
    c->fd = fd;
    c->dialer = dialer;
    c->connecting = connecting;
    c->step = dialer ? S_CONNECT : S_M1;
    c->deadline = srrs_ticks() + srrs_us_to_ticks((uint64_t)MA_DEADLINE_MS * 1000);
    if (from)
        c->from = *from;
    c->p = srrs_poller_register(a->r, ma_poll, c, 1000);
    if (!c->p || srrs_poller_set_fd(c->p, fd, connecting ? EPOLLOUT : EPOLLIN, false)) {
        close(fd);
        conn_release(c);
        return;
    }
    if (dialer && !connecting) {
        c->connecting = true; /* connected at once: ma_poll sends M1 */
    }
}

bool mauth_dialing(const struct mauth *a)
{
    for (int i = 0; i < MA_PENDING; i++)
        if (a->c[i].p && a->c[i].dialer)
            return true;
    return false;
}

void mauth_close_all(struct mauth *a)
{
    for (int i = 0; i < MA_PENDING; i++)
        if (a->c[i].p) {
            close(a->c[i].fd);
            conn_release(&a->c[i]);
        }
}
