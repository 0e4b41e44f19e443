/*
 * NVMe in-band authentication: DH-HMAC-CHAP (NVMe base spec 2.0, 8.13) with
 * the Fabrics Authentication Send / Receive commands.
 *
 *  - secrets: "DHHC-1:<hh>:<base64(key || crc32le(key))>:" as nvme-cli's
 *    gen-dhchap-key writes them; hh != 0 names the hash of the transformation
 *    Kx = HMAC-H(key, NQN || "NVMe-over-Fabrics").
 *  - responses: R = HMAC-H(Kx, C' || seq32le || tid16le || 0x00 || "HostHost"
 *    (or "Controller") || NQN1 || 0x00 || NQN2), where with a DH group C' =
 *    HMAC-H(H(g^xy mod p), C), g^xy padded to the group's size.
 *  - the target's state machine per queue (Negotiate -> Challenge -> Reply ->
 *    Success1 [-> Success2]), Failure1 on the next Receive after an error;
 *    the queue is closed after a failure.
 *  - the host side (our initiator) over a caller's synchronous transport.
 *
 * Crypto is OpenSSL libcrypto (HMAC, SHA-2, DH over the RFC 7919 groups).
 * Nothing here runs per I/O; it runs on the queue's reactor per message.
 * Secrets are never printed: error texts name the field that was wrong.
 */
#include "nvmf/nvmf_int.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/dh.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- primitives ------------------------------------------------------------- */

static const EVP_MD *hash_md(uint8_t id)
{
    switch (id) {
    case AUTH_HASH_SHA256:
        return EVP_sha256();
    case AUTH_HASH_SHA384:
        return EVP_sha384();
    case AUTH_HASH_SHA512:
        return EVP_sha512();
    }
    return NULL;
}

uint32_t nvmf_auth_hash_len(uint8_t id)
{
    return id >= AUTH_HASH_SHA256 && id <= AUTH_HASH_SHA512 ? 16u + 16u * id : 0;
}

static const char *const dh_names[] = {NULL, "ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144",
                                       "ffdhe8192"};

uint32_t nvmf_auth_dh_len(uint8_t gid)
{
    static const uint16_t len[] = {0, 256, 384, 512, 768, 1024};
    return gid < SRRS_ARRAY_SIZE(len) ? len[gid] : 0;
}

static bool hmac(uint8_t id, const void *key, size_t klen, const void *d, size_t n, uint8_t *out)
{
    unsigned int ol = 0;
    const EVP_MD *md = hash_md(id);
    return md && HMAC(md, key, (int)klen, d, n, out, &ol) && ol == nvmf_auth_hash_len(id);
}

/* zlib's CRC-32 (reflected 0xEDB88320), the trailer of a DHHC-1 secret. */
static uint32_t crc32_ieee(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
    }
    return ~c;
}

int nvmf_dhchap_parse(const char *s, struct nvmf_dhchap_key *k)
{
    memset(k, 0, sizeof(*k));
    if (!s || strncmp(s, "DHHC-1:", 7) || !isdigit((unsigned char)s[7]) ||
        !isdigit((unsigned char)s[8]) || s[9] != ':')
        return srrs_err(-EINVAL, "DH-HMAC-CHAP secret: not in the DHHC-1:<hh>:<base64>: format");
    uint8_t hid = (uint8_t)((s[7] - '0') * 10 + (s[8] - '0'));
    if (hid > AUTH_HASH_SHA512)
        return srrs_err(-EINVAL, "DH-HMAC-CHAP secret: transformation hash %u is not 0..3", hid);
    const char *b = s + 10;
    size_t n = strcspn(b, ":\r\n \t");
    const char *rest = b + n;
    if (*rest == ':')
        rest++;
    while (*rest == '\n' || *rest == '\r' || *rest == ' ' || *rest == '\t')
        rest++;
    if (*rest)
        return srrs_err(-EINVAL, "DH-HMAC-CHAP secret: unexpected text after the key");
    if (n % 4 || n > 96)
        return srrs_err(-EINVAL, "DH-HMAC-CHAP secret: bad base64 length %zu", n);
    uint8_t raw[80];
    int got = EVP_DecodeBlock(raw, (const unsigned char *)b, (int)n);
    if (got < 0)
        return srrs_err(-EINVAL, "DH-HMAC-CHAP secret: invalid base64");
    for (size_t i = n; i > 0 && b[i - 1] == '='; i--)
        got--;
    if (got != 36 && got != 52 && got != 68) {
        OPENSSL_cleanse(raw, sizeof(raw));
        return srrs_err(-EINVAL, "DH-HMAC-CHAP secret: key is %d bytes, not 32, 48 or 64", got - 4);
    }
    uint32_t len = (uint32_t)got - 4, crc = crc32_ieee(raw, len), tr;
    memcpy(&tr, raw + len, 4);
    if (crc != tr) {
        OPENSSL_cleanse(raw, sizeof(raw));
        return srrs_err(-EINVAL, "DH-HMAC-CHAP secret: CRC-32 trailer mismatch (corrupt secret)");
    }
    /* A transformed key is one digest long: a key of another length with a
     * transformation hash is ambiguous between implementations. */
    if (hid && len != nvmf_auth_hash_len(hid)) {
        OPENSSL_cleanse(raw, sizeof(raw));
        return srrs_err(-EINVAL, "DH-HMAC-CHAP secret: a %u-byte key with transformation hash %u "
                        "(needs %u bytes)", len, hid, nvmf_auth_hash_len(hid));
    }
    memcpy(k->key, raw, len);
    k->len = (uint8_t)len;
    k->hash = hid;
    OPENSSL_cleanse(raw, sizeof(raw));
    return 0;
}

int nvmf_dhchap_transform(const struct nvmf_dhchap_key *k, const char *nqn, uint8_t *out)
{
    if (!k->hash) {
        memcpy(out, k->key, k->len);
        return k->len;
    }
    uint8_t buf[256];
    size_t nl = strlen(nqn);
    if (nl > 223)
        return -EINVAL;
    memcpy(buf, nqn, nl);
    memcpy(buf + nl, "NVMe-over-Fabrics", 17);
    bool ok = hmac(k->hash, k->key, k->len, buf, nl + 17, out);
    return ok ? (int)nvmf_auth_hash_len(k->hash) : -EIO;
}

/* The response of one side: see the top of the file. sess: the hashed DH
 * session key (hl bytes) or NULL for the NULL group. */
int nvmf_dhchap_response(uint8_t hid, const uint8_t *key, uint32_t klen, const uint8_t *chal,
                         const uint8_t *sess, uint32_t seq, uint16_t tid, bool ctrl,
                         const char *nqn1, const char *nqn2, uint8_t *out)
{
    uint32_t hl = nvmf_auth_hash_len(hid);
    uint8_t aug[64], buf[64 + 7 + 10 + 224 + 1 + 224];
    if (!hl)
        return -EINVAL;
    if (sess) {
        if (!hmac(hid, sess, hl, chal, hl, aug))
            return -EIO;
        chal = aug;
    }
    size_t l1 = strnlen(nqn1, 224), l2 = strnlen(nqn2, 224), n = 0;
    if (l1 > 223 || l2 > 223)
        return -EINVAL;
    const char *tag = ctrl ? "Controller" : "HostHost";
    memcpy(buf, chal, hl);
    n = hl;
    memcpy(buf + n, &seq, 4);
    memcpy(buf + n + 4, &tid, 2);
    buf[n + 6] = 0; /* SC_C: no secure channel concatenation */
    n += 7;
    memcpy(buf + n, tag, strlen(tag));
    n += strlen(tag);
    memcpy(buf + n, nqn1, l1);
    n += l1;
    buf[n++] = 0;
    memcpy(buf + n, nqn2, l2);
    n += l2;
    bool ok = hmac(hid, key, klen, buf, n, out);
    OPENSSL_cleanse(aug, sizeof(aug));
    return ok ? (int)hl : -EIO;
}

/* ---- Diffie-Hellman over the RFC 7919 groups ---------------------------------- */

void nvmf_dh_free(void *pk) { EVP_PKEY_free(pk); }

/* A fresh key pair of group gid; its public value, padded to the group size, in pub. */
void *nvmf_dh_new(uint8_t gid, uint8_t *pub)
{
    uint32_t plen = nvmf_auth_dh_len(gid);
    if (!plen)
        return NULL;
    EVP_PKEY *pk = NULL;
    BIGNUM *y = NULL;
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_name(NULL, "DH", NULL);
    OSSL_PARAM prm[] = {OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)dh_names[gid], 0),
                        OSSL_PARAM_END};
    bool ok = pc && EVP_PKEY_keygen_init(pc) > 0 && EVP_PKEY_CTX_set_params(pc, prm) > 0 &&
              EVP_PKEY_generate(pc, &pk) > 0 &&
              EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_PUB_KEY, &y) > 0 &&
              BN_bn2binpad(y, pub, (int)plen) == (int)plen;
    BN_free(y);
    EVP_PKEY_CTX_free(pc);
    if (!ok) {
        EVP_PKEY_free(pk);
        return NULL;
    }
    return pk;
}

/* H(g^xy mod p) into skey (hash hid), from our key pair and the peer's public
 * value. The peer value is range-checked by OpenSSL (1 < y < p - 1). */
int nvmf_dh_session(void *mine, uint8_t gid, uint8_t hid, const uint8_t *peer, uint32_t plen,
                    uint8_t *skey)
{
    if (!mine || plen != nvmf_auth_dh_len(gid))
        return -EINVAL;
    EVP_PKEY *pk = NULL;
    BIGNUM *y = BN_bin2bn(peer, (int)plen, NULL);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *prm = NULL;
    EVP_PKEY_CTX *fc = EVP_PKEY_CTX_new_from_name(NULL, "DH", NULL), *dc = NULL;
    uint8_t sec[1024];
    size_t slen = plen;
    unsigned int hl = 0;
    bool ok = y && bld && fc &&
              OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, dh_names[gid], 0) &&
              OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PUB_KEY, y) &&
              (prm = OSSL_PARAM_BLD_to_param(bld)) && EVP_PKEY_fromdata_init(fc) > 0 &&
              EVP_PKEY_fromdata(fc, &pk, EVP_PKEY_PUBLIC_KEY, prm) > 0 &&
              (dc = EVP_PKEY_CTX_new(mine, NULL)) && EVP_PKEY_derive_init(dc) > 0 &&
              EVP_PKEY_CTX_set_dh_pad(dc, 1) > 0 && EVP_PKEY_derive_set_peer(dc, pk) > 0 &&
              EVP_PKEY_derive(dc, sec, &slen) > 0 && slen == plen &&
              EVP_Digest(sec, slen, skey, &hl, hash_md(hid), NULL) && hl == nvmf_auth_hash_len(hid);
    OPENSSL_cleanse(sec, sizeof(sec));
    EVP_PKEY_CTX_free(dc);
    EVP_PKEY_CTX_free(fc);
    EVP_PKEY_free(pk);
    OSSL_PARAM_free(prm);
    OSSL_PARAM_BLD_free(bld);
    BN_free(y);
    return ok ? 0 : -EPROTO;
}

/* ---- message layouts (little-endian, packed) -------------------------------------- */

struct auth_hdr {               /* the common head of every message */
    uint8_t type, id;
    uint16_t rsvd;
    uint16_t tid;
} __attribute__((packed));

struct auth_negotiate {
    struct auth_hdr h;
    uint8_t sc_c, napd;
    struct {
        uint8_t authid, rsvd, halen, dhlen;
        uint8_t ids[60];        /* hash ids at 0..29, DH group ids at 30..59 */
    } d[];
} __attribute__((packed));

struct auth_chal {              /* Challenge and Reply share this head */
    struct auth_hdr h;
    uint8_t hl, rsvd;
    uint8_t a, b;               /* Challenge: hash id, DH group; Reply: cvalid, rsvd */
    uint16_t dhvlen;
    uint32_t seq;
    uint8_t v[];
} __attribute__((packed));

struct auth_success1 {
    struct auth_hdr h;
    uint8_t hl, rsvd, rvalid, rsvd2[7];
    uint8_t rval[];
} __attribute__((packed));

struct auth_failure {
    struct auth_hdr h;
    uint8_t rescode, exp;
} __attribute__((packed));

_Static_assert(sizeof(struct auth_chal) == 16, "auth challenge");
_Static_assert(sizeof(struct auth_success1) == 16, "auth success1");
_Static_assert(sizeof(struct auth_failure) == 8, "auth failure");

enum { MSG_COMMON = 0, MSG_DHCHAP = 1 };
enum { ID_NEGOTIATE = 0, ID_CHALLENGE = 1, ID_REPLY = 2, ID_SUCCESS1 = 3, ID_SUCCESS2 = 4,
       ID_FAILURE2 = 0xf0, ID_FAILURE1 = 0xf1 };
#define AUTHID_DHCHAP 0x01
#define SECP_DHCHAP 0xE9
#define AUTH_MSG_MAX 4096

static const char *fail_text(uint8_t r)
{
    static const char *t[] = {"?", "authentication failed", "protocol not usable",
                              "secure channel concatenation mismatch", "hash function not usable",
                              "DH group not usable", "incorrect payload", "incorrect message"};
    return r < SRRS_ARRAY_SIZE(t) ? t[r] : "?";
}

/* ---- target: configuration ---------------------------------------------------------- */

struct nvmf_host_auth {
    char hostnqn[224];
    uint8_t hkey[64], ckey[64]; /* transformed: with the host's / the subsystem's NQN */
    uint8_t hklen, cklen;       /* cklen 0: no controller secret (unidirectional only) */
    uint8_t hash, dhgroup;      /* what the target picks from the host's offer */
    struct nvmf_host_auth *next;
};

static struct nvmf_host_auth *host_auth_find(struct nvmf_subsys *ss, const char *hostnqn)
{
    for (struct nvmf_host_auth *a = ss->auth; a; a = a->next)
        if (!strcmp(a->hostnqn, hostnqn))
            return a;
    return NULL;
}

static void host_auth_free(struct nvmf_host_auth *a)
{
    OPENSSL_cleanse(a, sizeof(*a));
    free(a);
}

void nvmf_auth_subsys_free(struct nvmf_subsys *ss)
{
    while (ss->auth) {
        struct nvmf_host_auth *a = ss->auth;
        ss->auth = a->next;
        host_auth_free(a);
    }
}

/* Under tgt->lock. */
int nvmf_auth_host_set(struct nvmf_subsys *ss, const char *hostnqn, const char *secret,
                       const char *ctrl_secret, int hash, int dhgroup)
{
    struct nvmf_host_auth **pp = &ss->auth;
    while (*pp && strcmp((*pp)->hostnqn, hostnqn))
        pp = &(*pp)->next;
    if (!secret) {
        if (*pp) {
            struct nvmf_host_auth *a = *pp;
            *pp = a->next;
            host_auth_free(a);
        }
        return 0;
    }
    if (!nvmf_auth_hash_len((uint8_t)hash) || dhgroup < 0 || dhgroup > AUTH_DH_8192)
        return srrs_err(-EINVAL, "nvmf host %s: DH-HMAC-CHAP hash %d / DH group %d unknown",
                        hostnqn, hash, dhgroup);
    struct nvmf_host_auth *a = calloc(1, sizeof(*a));
    if (!a)
        return srrs_err(-ENOMEM, "nvmf: out of memory");
    struct nvmf_dhchap_key k;
    int rc = nvmf_dhchap_parse(secret, &k);
    if (!rc && (rc = nvmf_dhchap_transform(&k, hostnqn, a->hkey)) > 0) {
        a->hklen = (uint8_t)rc;
        rc = 0;
    }
    const char *which = "";
    if (!rc && ctrl_secret) {
        which = "controller ";
        rc = strcmp(secret, ctrl_secret) ? nvmf_dhchap_parse(ctrl_secret, &k)
                                         : srrs_err(-EINVAL, "secret equals the host secret");
        if (!rc && (rc = nvmf_dhchap_transform(&k, ss->nqn, a->ckey)) > 0) {
            a->cklen = (uint8_t)rc;
            rc = 0;
        }
    }
    OPENSSL_cleanse(&k, sizeof(k));
    if (rc) {
        char why[256];
        snprintf(why, sizeof(why), "%s", srrs_last_error());
        host_auth_free(a);
        return srrs_err(rc, "nvmf subsystem %s host %s: %s%s", ss->nqn, hostnqn, which, why);
    }
    snprintf(a->hostnqn, sizeof(a->hostnqn), "%s", hostnqn);
    a->hash = (uint8_t)hash;
    a->dhgroup = (uint8_t)dhgroup;
    if (*pp) { /* replace in place: queues authenticated with the old key stay */
        a->next = (*pp)->next;
        host_auth_free(*pp);
    }
    *pp = a;
    return 0;
}

/* Under tgt->lock, from Connect: 1 when the host must authenticate, 0 when not,
 * -EACCES when the subsystem requires authentication and the host has no secret. */
int nvmf_auth_connect_check(struct nvmf_subsys *ss, const char *hostnqn)
{
    if (host_auth_find(ss, hostnqn))
        return 1;
    return ss->require_auth ? -EACCES : 0;
}

/* ---- target: per-queue state machine ----------------------------------------------- */

enum { ST_NEGOTIATE = 0, ST_CHALLENGE, ST_REPLY, ST_SUCCESS1, ST_SUCCESS2, ST_FAILURE1, ST_DONE };

struct nvmf_auth_qp {
    uint8_t step;
    uint8_t fail;               /* reason code explanation of a pending Failure1 */
    uint8_t hash, hlen, dhg;
    bool done_once;             /* authenticated at least once: a failed re-auth closes the queue */
    uint16_t tid;
    uint32_t s1, s2;
    uint8_t c1[64], c2[64], skey[64];
    struct nvmf_host_auth key;  /* copy taken at Negotiate */
    void *dh;
    uint64_t deadline;          /* ticks; 0: no transaction running */
};

static uint64_t auth_limit(struct srrs_nvmf_tgt *t)
{
    uint32_t ms = t->opts.auth_timeout_ms ? t->opts.auth_timeout_ms : NVMF_AUTH_TIMEOUT_MS;
    return srrs_us_to_ticks((uint64_t)ms * 1000);
}

static void qp_reset(struct nvmf_auth_qp *a)
{
    nvmf_dh_free(a->dh);
    a->dh = NULL;
    OPENSSL_cleanse(a->skey, sizeof(a->skey));
    OPENSSL_cleanse(&a->key, sizeof(a->key));
    a->s2 = 0;
}

int nvmf_auth_qp_init(struct nvmf_conn_pub *cp)
{
    struct nvmf_auth_qp *a = calloc(1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    a->deadline = srrs_ticks() + auth_limit(cp->tgt);
    cp->auth = a;
    cp->unauth = true;
    return 0;
}

void nvmf_auth_qp_free(struct nvmf_conn_pub *cp)
{
    struct nvmf_auth_qp *a = cp->auth;
    if (!a)
        return;
    qp_reset(a);
    OPENSSL_cleanse(a, sizeof(*a));
    free(a);
    cp->auth = NULL;
}

bool nvmf_auth_running(const struct nvmf_conn_pub *cp)
{
    return cp->auth && cp->auth->deadline;
}

bool nvmf_auth_expired(struct nvmf_conn_pub *cp, uint64_t now)
{
    struct nvmf_auth_qp *a = cp->auth;
    return a && a->deadline && now > a->deadline;
}

static void auth_event(struct nvmf_conn_pub *cp, bool ok, const char *what)
{
    struct nvmf_ctrlr *ct = cp->ctrlr;
    if (ok)
        atomic_fetch_add(&cp->tgt->st_auth_ok, 1);
    else
        atomic_fetch_add(&cp->tgt->st_auth_failed, 1);
    srrs_event_post(cp->tgt->core, ok ? SRRS_EV_LOG : SRRS_EV_PROTO_ERROR, ct->cntlid, cp->qid,
                    cp->peer, "DH-HMAC-CHAP %s queue %u of controller %u (host %s): %s",
                    ok ? "authenticated" : "failed on", cp->qid, ct->cntlid, ct->hostnqn, what);
}

static void fail1(struct nvmf_auth_qp *a, uint8_t why)
{
    qp_reset(a);
    a->fail = why;
    a->step = ST_FAILURE1;
}

static void on_negotiate(struct nvmf_conn_pub *cp, struct nvmf_auth_qp *a, const uint8_t *m,
                         uint32_t len)
{
    const struct auth_negotiate *n = (const void *)m;
    qp_reset(a);
    a->tid = n->h.tid;
    a->deadline = srrs_ticks() + auth_limit(cp->tgt);
    struct srrs_nvmf_tgt *t = cp->tgt;
    pthread_mutex_lock(&t->lock);
    struct nvmf_host_auth *k = host_auth_find(cp->ctrlr->ss, cp->ctrlr->hostnqn);
    if (k)
        a->key = *k;
    pthread_mutex_unlock(&t->lock);
    if (!k)
        return fail1(a, AUTH_FAIL_FAILED); /* the secret was removed since Connect */
    if (len < sizeof(*n) || !n->napd || len < sizeof(*n) + n->napd * sizeof(n->d[0]))
        return fail1(a, AUTH_FAIL_PAYLOAD);
    if (n->sc_c)
        return fail1(a, AUTH_FAIL_CONCAT);
    for (uint32_t i = 0; i < n->napd; i++) {
        if (n->d[i].authid != AUTHID_DHCHAP)
            continue;
        if (n->d[i].halen > 30 || n->d[i].dhlen > 30)
            return fail1(a, AUTH_FAIL_PAYLOAD);
        bool h = false, g = false;
        for (uint32_t j = 0; j < n->d[i].halen; j++)
            h |= n->d[i].ids[j] == a->key.hash;
        for (uint32_t j = 0; j < n->d[i].dhlen; j++)
            g |= n->d[i].ids[30 + j] == a->key.dhgroup;
        if (!h)
            return fail1(a, AUTH_FAIL_HASH);
        if (!g)
            return fail1(a, AUTH_FAIL_DHGROUP);
        a->hash = a->key.hash;
        a->hlen = (uint8_t)nvmf_auth_hash_len(a->hash);
        a->dhg = a->key.dhgroup;
        a->step = ST_CHALLENGE;
        return;
    }
    fail1(a, AUTH_FAIL_PROTOCOL);
}

static void on_reply(struct nvmf_conn_pub *cp, struct nvmf_auth_qp *a, const uint8_t *m,
                     uint32_t len)
{
    const struct auth_chal *r = (const void *)m;
    uint32_t hl = a->hlen, dl = nvmf_auth_dh_len(a->dhg);
    if (a->step != ST_REPLY || r->h.tid != a->tid)
        return fail1(a, AUTH_FAIL_MESSAGE);
    if (len < sizeof(*r) + 2 * hl + dl || r->hl != hl || r->dhvlen != dl)
        return fail1(a, AUTH_FAIL_PAYLOAD);
    if (dl && nvmf_dh_session(a->dh, a->dhg, a->hash, r->v + 2 * hl, dl, a->skey))
        return fail1(a, AUTH_FAIL_PAYLOAD);
    uint8_t want[64];
    const struct nvmf_ctrlr *ct = cp->ctrlr;
    int rc = nvmf_dhchap_response(a->hash, a->key.hkey, a->key.hklen, a->c1, dl ? a->skey : NULL,
                                  a->s1, a->tid, false, ct->hostnqn, ct->ss->nqn, want);
    bool ok = rc > 0 && !CRYPTO_memcmp(want, r->v, hl);
    OPENSSL_cleanse(want, sizeof(want));
    if (!ok)
        return fail1(a, AUTH_FAIL_FAILED);
    if (r->a & 1) { /* the host wants the controller to prove itself too */
        if (!a->key.cklen || !r->seq)
            return fail1(a, AUTH_FAIL_FAILED);
        memcpy(a->c2, r->v + hl, hl);
        a->s2 = r->seq;
    }
    a->step = ST_SUCCESS1;
}

static void auth_done(struct nvmf_conn_pub *cp, struct nvmf_auth_qp *a)
{
    qp_reset(a);
    a->step = ST_DONE;
    a->deadline = 0;
    a->done_once = true;
    cp->unauth = false;
    auth_event(cp, true, "ok");
}

/* Authentication Send: the host's Negotiate, Reply, Success2 or Failure2. */
static void auth_send(struct nvmf_req *req, struct nvmf_conn_pub *cp, struct nvmf_auth_qp *a)
{
    uint32_t tl = req->cmd.cdw11;
    if (!req->h2c || !tl || tl != req->dlen || tl > AUTH_MSG_MAX || !req->buf) {
        nvmf_req_complete(req, SC_INVALID_FIELD, 0);
        return;
    }
    const uint8_t *m = req->buf;
    const struct auth_hdr *h = (const void *)m;
    if (tl < sizeof(*h)) {
        nvmf_req_complete(req, SC_INVALID_FIELD, 0);
        return;
    }
    if (h->type == MSG_COMMON && h->id == ID_NEGOTIATE) {
        on_negotiate(cp, a, m, tl);
    } else if (h->type == MSG_DHCHAP && h->id == ID_REPLY) {
        on_reply(cp, a, m, tl);
    } else if (h->type == MSG_DHCHAP && h->id == ID_SUCCESS2 && a->step == ST_SUCCESS2 &&
               h->tid == a->tid) {
        auth_done(cp, a);
    } else if (h->type == MSG_COMMON && h->id == ID_FAILURE2) {
        /* The host did not accept our response (wrong controller secret?). */
        uint8_t exp = tl >= sizeof(struct auth_failure) ? ((const struct auth_failure *)m)->exp : 0;
        qp_reset(a);
        a->step = ST_NEGOTIATE;
        auth_event(cp, false, fail_text(exp));
        cp->close_after_tx = true;
    } else {
        fail1(a, AUTH_FAIL_MESSAGE);
    }
    nvmf_req_complete(req, 0, 0);
}

static uint32_t build_challenge(struct nvmf_conn_pub *cp, struct nvmf_auth_qp *a, uint8_t *m)
{
    struct auth_chal *c = (void *)m;
    uint32_t hl = a->hlen, dl = nvmf_auth_dh_len(a->dhg);
    memset(c, 0, sizeof(*c));
    if (RAND_bytes(a->c1, (int)hl) != 1 || RAND_bytes((uint8_t *)&a->s1, 4) != 1)
        return 0;
    a->s1 |= 1; /* 0 would mean "no sequence number" */
    if (dl && !(a->dh = nvmf_dh_new(a->dhg, c->v + hl)))
        return 0;
    c->h.type = MSG_DHCHAP;
    c->h.id = ID_CHALLENGE;
    c->h.tid = a->tid;
    c->hl = (uint8_t)hl;
    c->a = a->hash;
    c->b = a->dhg;
    c->dhvlen = (uint16_t)dl;
    c->seq = a->s1;
    memcpy(c->v, a->c1, hl);
    a->step = ST_REPLY;
    return (uint32_t)sizeof(*c) + hl + dl;
}

static uint32_t build_success1(struct nvmf_conn_pub *cp, struct nvmf_auth_qp *a, uint8_t *m)
{
    struct auth_success1 *s = (void *)m;
    const struct nvmf_ctrlr *ct = cp->ctrlr;
    memset(s, 0, sizeof(*s));
    s->h.type = MSG_DHCHAP;
    s->h.id = ID_SUCCESS1;
    s->h.tid = a->tid;
    s->hl = a->hlen;
    if (!a->s2) {
        auth_done(cp, a);
        return sizeof(*s);
    }
    if (nvmf_dhchap_response(a->hash, a->key.ckey, a->key.cklen, a->c2, a->dhg ? a->skey : NULL,
                             a->s2, a->tid, true, ct->ss->nqn, ct->hostnqn, s->rval) <= 0)
        return 0;
    s->rvalid = 1;
    a->step = ST_SUCCESS2;
    return (uint32_t)sizeof(*s) + a->hlen;
}

/* Authentication Receive: our Challenge, Success1 or Failure1. */
static void auth_recv(struct nvmf_req *req, struct nvmf_conn_pub *cp, struct nvmf_auth_qp *a)
{
    uint32_t al = req->cmd.cdw11;
    if (!req->c2h || !al || al != req->dlen || al > AUTH_MSG_MAX) {
        nvmf_req_complete(req, SC_INVALID_FIELD, 0);
        return;
    }
    uint8_t *m = nvmf_req_data_buf(req, al);
    if (!m) {
        nvmf_req_complete(req, SC_INTERNAL, 0);
        return;
    }
    uint8_t msg[AUTH_MSG_MAX];
    uint32_t n = 0;
    uint32_t need = a->step == ST_CHALLENGE ? sizeof(struct auth_chal) + a->hlen +
                                                  nvmf_auth_dh_len(a->dhg)
                    : a->step == ST_SUCCESS1 ? sizeof(struct auth_success1) + a->hlen
                                             : sizeof(struct auth_failure);
    if (al < need) { /* the host's buffer cannot hold the message: nothing changes */
        nvmf_req_complete(req, SC_INVALID_FIELD, 0);
        return;
    }
    if (a->step == ST_CHALLENGE)
        n = build_challenge(cp, a, msg);
    else if (a->step == ST_SUCCESS1)
        n = build_success1(cp, a, msg);
    else if (a->step != ST_FAILURE1)
        fail1(a, AUTH_FAIL_MESSAGE);
    if (!n && a->step != ST_FAILURE1)
        fail1(a, AUTH_FAIL_FAILED); /* a local crypto error */
    if (a->step == ST_FAILURE1 && !n) {
        struct auth_failure *f = (void *)msg;
        memset(f, 0, sizeof(*f));
        f->h.type = MSG_COMMON;
        f->h.id = ID_FAILURE1;
        f->h.tid = a->tid;
        f->rescode = 1;
        f->exp = a->fail;
        n = sizeof(*f);
        auth_event(cp, false, fail_text(a->fail));
        qp_reset(a);
        a->step = ST_NEGOTIATE;
        cp->close_after_tx = true; /* the queue is not (or no longer) trusted */
    }
    memset(m, 0, al);
    memcpy(m, msg, n);
    OPENSSL_cleanse(msg, n);
    nvmf_req_complete(req, 0, 0);
}

/* A Fabrics Authentication Send/Receive on a connected queue. */
void nvmf_auth_exec(struct nvmf_req *req, bool send)
{
    struct nvmf_conn_pub *cp = nvmf_conn_pub(req->c);
    struct nvmf_auth_qp *a = cp->auth;
    uint32_t c10 = req->cmd.cdw10;
    if ((c10 >> 24) != SECP_DHCHAP || ((c10 >> 8) & 0xff) != 1 || ((c10 >> 16) & 0xff) != 1) {
        nvmf_req_complete(req, SC_INVALID_FIELD, 0);
        return;
    }
    if (!a) { /* this host has no secret: nothing to authenticate */
        nvmf_req_complete(req, SC_CMD_SEQ_ERROR, 0);
        return;
    }
    if (send)
        auth_send(req, cp, a);
    else
        auth_recv(req, cp, a);
}

/* ---- target: C API ---------------------------------------------------------------------- */

static struct nvmf_subsys *subsys_get(struct srrs_nvmf_tgt *t, const char *nqn)
{
    for (int i = 0; nqn && i < NVMF_MAX_SUBSYS; i++)
        if (t->subsys[i] && !t->subsys[i]->discovery && !strcmp(t->subsys[i]->nqn, nqn))
            return t->subsys[i];
    srrs_err(-ENOENT, "nvmf subsystem %s does not exist", nqn ? nqn : "(null)");
    return NULL;
}

int srrs_nvmf_host_set_dhchap(struct srrs_nvmf_tgt *t, const char *nqn, const char *hostnqn,
                              const char *secret, const char *ctrl_secret, int hash, int dhgroup)
{
    if (!hostnqn || !*hostnqn || strlen(hostnqn) > 223)
        return srrs_err(-EINVAL, "nvmf host: nqn must be 1..223 bytes");
    pthread_mutex_lock(&t->lock);
    struct nvmf_subsys *ss = subsys_get(t, nqn);
    int rc = ss ? nvmf_auth_host_set(ss, hostnqn, secret, ctrl_secret, hash, dhgroup) : -ENOENT;
    pthread_mutex_unlock(&t->lock);
    return rc;
}

int srrs_nvmf_subsystem_require_auth(struct srrs_nvmf_tgt *t, const char *nqn, int require)
{
    pthread_mutex_lock(&t->lock);
    struct nvmf_subsys *ss = subsys_get(t, nqn);
    if (ss)
        ss->require_auth = require != 0;
    pthread_mutex_unlock(&t->lock);
    return ss ? 0 : -ENOENT;
}

int srrs_nvmf_auth_stats(struct srrs_nvmf_tgt *t, uint64_t *ok, uint64_t *failed)
{
    *ok = atomic_load(&t->st_auth_ok);
    *failed = atomic_load(&t->st_auth_failed);
    return 0;
}

int srrs_nvmf_dhchap_transform(const char *secret, const char *nqn, uint8_t *out, int max)
{
    struct nvmf_dhchap_key k;
    uint8_t tmp[64];
    if (!nqn || !out || max < 64)
        return srrs_err(-EINVAL, "nvmf: dhchap transform: need an NQN and 64 bytes of output");
    int rc = nvmf_dhchap_parse(secret, &k);
    if (!rc)
        rc = nvmf_dhchap_transform(&k, nqn, tmp);
    if (rc > 0)
        memcpy(out, tmp, (size_t)rc);
    OPENSSL_cleanse(&k, sizeof(k));
    OPENSSL_cleanse(tmp, sizeof(tmp));
    return rc;
}

int srrs_nvmf_dhchap_response(int hash, const uint8_t *key, int klen, const uint8_t *chal,
                              const uint8_t *sess, uint32_t seq, uint16_t tid, int ctrl,
                              const char *nqn1, const char *nqn2, uint8_t *out)
{
    if (!nvmf_auth_hash_len((uint8_t)hash) || klen < 1 || klen > 64)
        return srrs_err(-EINVAL, "nvmf: dhchap response: bad hash or key length");
    return nvmf_dhchap_response((uint8_t)hash, key, (uint32_t)klen, chal, sess, seq, tid, ctrl,
                                nqn1, nqn2, out);
}

/* ---- host side (our initiator) ------------------------------------------------------ */

/* One exchange on a queue that answered Connect with "authentication required".
 * xfer(q, send, buf, len): Authentication Send (send) or Receive of len bytes;
 * returns 0, -errno, or the NVMe status (> 0). */
int nvmf_auth_host(nvmf_auth_xfer_fn xfer, void *q, const struct nvmf_host_keys *k, uint16_t qid,
                   const char *hostnqn, const char *subnqn)
{
    static _Atomic uint16_t tids;
    uint8_t m[AUTH_MSG_MAX], hkey[64], ckey[64], skey[64], c2[64], r2[64];
    int hk = nvmf_dhchap_transform(&k->host, hostnqn, hkey);
    int ck = k->has_ctrl ? nvmf_dhchap_transform(&k->ctrl, subnqn, ckey) : 0;
    void *dh = NULL;
    int rc = hk > 0 && ck >= 0 ? 0 : srrs_err(-EINVAL, "nvmf host: DH-HMAC-CHAP key transform");
    uint16_t tid = atomic_fetch_add(&tids, 1);
    uint8_t fail = 0;
    /* Negotiate: every hash and group we support. */
    struct auth_negotiate *n = (void *)m;
    memset(m, 0, sizeof(*n) + sizeof(n->d[0]));
    n->h.type = MSG_COMMON;
    n->h.id = ID_NEGOTIATE;
    n->h.tid = tid;
    n->napd = 1;
    n->d[0].authid = AUTHID_DHCHAP;
    n->d[0].halen = 3;
    n->d[0].dhlen = 6;
    for (uint8_t i = 0; i < 3; i++)
        n->d[0].ids[i] = (uint8_t)(AUTH_HASH_SHA256 + i);
    for (uint8_t i = 0; i < 6; i++)
        n->d[0].ids[30 + i] = i;
    if (!rc)
        rc = xfer(q, true, m, sizeof(*n) + sizeof(n->d[0]));
    if (!rc)
        rc = xfer(q, false, m, AUTH_MSG_MAX);
    struct auth_chal *c = (void *)m;
    uint32_t hl = 0, dl = 0, s1 = 0, s2 = 0;
    uint8_t hid = 0, gid = 0, c1[64];
    if (!rc && c->h.type == MSG_COMMON && c->h.id == ID_FAILURE1)
        rc = srrs_err(-EACCES, "nvmf host: queue %u: target refused authentication (%s)", qid,
                      fail_text(((struct auth_failure *)m)->exp));
    if (!rc && (c->h.type != MSG_DHCHAP || c->h.id != ID_CHALLENGE || c->h.tid != tid))
        rc = srrs_err(-EPROTO, "nvmf host: queue %u: expected a DH-HMAC-CHAP Challenge", qid), fail =
            AUTH_FAIL_MESSAGE;
    if (!rc) {
        hid = c->a;
        gid = c->b;
        hl = nvmf_auth_hash_len(hid);
        dl = nvmf_auth_dh_len(gid);
        if (!hl || c->hl != hl || gid > AUTH_DH_8192 || c->dhvlen != dl)
            rc = srrs_err(-EPROTO, "nvmf host: queue %u: unusable challenge (hash %u group %u)",
                          qid, hid, gid), fail = AUTH_FAIL_PAYLOAD;
    }
    uint8_t pub[1024];
    if (!rc) {
        s1 = c->seq;
        memcpy(c1, c->v, hl);
        if (dl && (!(dh = nvmf_dh_new(gid, pub)) || nvmf_dh_session(dh, gid, hid, c->v + hl, dl, skey)))
            rc = srrs_err(-EPROTO, "nvmf host: queue %u: DH exchange failed", qid), fail =
                AUTH_FAIL_PAYLOAD;
    }
    struct auth_chal *r = (void *)m;
    if (!rc) {
        memset(r, 0, sizeof(*r) + 2 * hl + dl);
        r->h.type = MSG_DHCHAP;
        r->h.id = ID_REPLY;
        r->h.tid = tid;
        r->hl = (uint8_t)hl;
        r->dhvlen = (uint16_t)dl;
        if (nvmf_dhchap_response(hid, hkey, (uint32_t)hk, c1, dl ? skey : NULL, s1, tid, false,
                                 hostnqn, subnqn, r->v) <= 0)
            rc = srrs_err(-EIO, "nvmf host: DH-HMAC-CHAP response");
        if (ck > 0) {
            if (RAND_bytes(c2, (int)hl) != 1 || RAND_bytes((uint8_t *)&s2, 4) != 1)
                rc = srrs_err(-EIO, "nvmf host: no randomness");
            s2 |= 1;
            r->a = 1;
            r->seq = s2;
            memcpy(r->v + hl, c2, hl);
        }
        memcpy(r->v + 2 * hl, pub, dl);
    }
    if (!rc)
        rc = xfer(q, true, m, sizeof(*r) + 2 * hl + dl);
    if (!rc)
        rc = xfer(q, false, m, AUTH_MSG_MAX);
    struct auth_success1 *s = (void *)m;
    if (!rc && s->h.type == MSG_COMMON && s->h.id == ID_FAILURE1)
        rc = srrs_err(-EACCES, "nvmf host: queue %u: target refused authentication (%s)", qid,
                      fail_text(((struct auth_failure *)m)->exp));
    if (!rc && (s->h.type != MSG_DHCHAP || s->h.id != ID_SUCCESS1 || s->h.tid != tid ||
                s->hl != hl))
        rc = srrs_err(-EPROTO, "nvmf host: queue %u: expected DH-HMAC-CHAP Success1", qid), fail =
            AUTH_FAIL_MESSAGE;
    if (!rc && ck > 0) {
        bool ok = s->rvalid && nvmf_dhchap_response(hid, ckey, (uint32_t)ck, c2, dl ? skey : NULL, s2,
                                                    tid, true, subnqn, hostnqn, r2) > 0 &&
                  !CRYPTO_memcmp(r2, s->rval, hl);
        if (!ok)
            rc = srrs_err(-EACCES, "nvmf host: queue %u: the controller failed to authenticate "
                          "(wrong controller secret?)", qid), fail = AUTH_FAIL_FAILED;
    }
    if (!rc && ck > 0) {
        memset(m, 0, 16);
        s->h.type = MSG_DHCHAP;
        s->h.id = ID_SUCCESS2;
        s->h.tid = tid;
        rc = xfer(q, true, m, 16);
    }
    if (fail) { /* tell the controller why (best effort; the queue is closed anyway) */
        struct auth_failure *f = (void *)m;
        memset(f, 0, sizeof(*f));
        f->h.type = MSG_COMMON;
        f->h.id = ID_FAILURE2;
        f->h.tid = tid;
        f->rescode = 1;
        f->exp = fail;
        xfer(q, true, m, sizeof(*f));
    }
    nvmf_dh_free(dh);
    OPENSSL_cleanse(hkey, sizeof(hkey));
    OPENSSL_cleanse(ckey, sizeof(ckey));
    OPENSSL_cleanse(skey, sizeof(skey));
    return rc > 0 ? srrs_err(-EACCES, "nvmf host: queue %u: authentication command failed "
                             "(status 0x%x)", qid, rc)
                  : rc;
}
