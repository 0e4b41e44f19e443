/*
 * NVMe/TCP PDU framing, one set of rules for both ends: the target
 * (tcp.c) and our initiator (initiator.c) build every PDU header, digest,
 * padding and length here, and check every received common header here.
 * docs/architecture.md, Exports (NVMe-oF over TCP).
 *
 * Header digests cover the PDU-specific header (HDGST, CRC32C, after it);
 * the data digest (DDGST) covers the payload and follows it. Data starts at
 * PDO, the first multiple of the receiver's alignment (HPDA for C2H, CPDA
 * for H2C: (value + 1) * 4 bytes) at or past the header and its digest.
 *
 * Everything a poll loop calls per PDU is static inline: no call, no copy,
 * no allocation beyond the CRC itself.
 */
#ifndef SRRS_NVMF_PDU_H
#define SRRS_NVMF_PDU_H

#include "nvmf/nvmf_int.h"

/* What a queue negotiated at ICReq/ICResp: the same on both ends. */
struct pdu_fmt {
    bool hdgst, ddgst;
    uint32_t align;             /* data alignment the peer asked for, bytes; <= 4: none */
};

/* What one end accepts (see pdu_ch_check). */
struct pdu_rules {
    uint16_t types;             /* bit per PDU type this end may receive */
    uint32_t cpda_align;        /* PDO alignment we asked of the peer, bytes; <= 4: none */
    uint32_t max_pad;           /* PDO - header bytes at most */
    uint32_t max_data;          /* payload bytes at most (plen bound) */
};

/* The parts of a checked PDU after its common header. */
struct pdu_geom {
    uint32_t hl;                /* header + header digest */
    uint32_t pad;               /* bytes from hl to PDO */
    uint32_t dlen;              /* payload (without its digest) */
};

#define PDU_BIT(t) ((uint16_t)(1u << (t)))

/* Room for a header we send: the largest (CapsuleCmd, 72) with its digest,
 * padded to any alignment a peer may ask for (up to 128 bytes): at most 144. */
#define PDU_HDR_ROOM 152

/* Per type (index < 16): its header length (0: a type NVMe/TCP does not
 * define), and masks of the types with a header digest (never connection
 * setup or termination), with a payload (a termination request carries the
 * offending header as error data) and the terminations. Tables and masks,
 * not branches: the receive check runs for every PDU. */
static const uint8_t pdu_hlen_tab[16] = {
    [PDU_ICREQ] = PDU_IC_LEN, [PDU_ICRESP] = PDU_IC_LEN, [PDU_H2C_TERM] = PDU_TERM_HLEN,
    [PDU_C2H_TERM] = PDU_TERM_HLEN, [PDU_CMD] = PDU_CMD_HLEN, [PDU_RSP] = PDU_RSP_HLEN,
    [PDU_H2C_DATA] = PDU_DATA_HLEN, [PDU_C2H_DATA] = PDU_DATA_HLEN, [PDU_R2T] = PDU_R2T_HLEN};
#define PDU_TERM_TYPES (PDU_BIT(PDU_H2C_TERM) | PDU_BIT(PDU_C2H_TERM))
#define PDU_HDGST_TYPES (PDU_BIT(PDU_CMD) | PDU_BIT(PDU_RSP) | PDU_BIT(PDU_H2C_DATA) | \
                         PDU_BIT(PDU_C2H_DATA) | PDU_BIT(PDU_R2T))
#define PDU_DATA_TYPES (PDU_BIT(PDU_CMD) | PDU_BIT(PDU_H2C_DATA) | PDU_BIT(PDU_C2H_DATA) | \
                        PDU_TERM_TYPES)

static inline uint8_t pdu_type_hlen(uint8_t type) { return type < 16 ? pdu_hlen_tab[type] : 0; }

static inline bool pdu_type_has_hdgst(uint8_t type)
{
    return type < 16 && (PDU_HDGST_TYPES & PDU_BIT(type));
}

/* Alignment in bytes of an HPDA/CPDA value (0's based dwords). */
static inline uint32_t pdu_align_bytes(uint8_t pda) { return (pda + 1u) * 4u; }

/* PDO for a header of hl bytes: the next multiple of align (hl itself when
 * the peer asked for none; headers are whole dwords). */
static inline uint32_t pdu_pdo(uint32_t hl, uint32_t align)
{
    return align > 4 ? (hl + align - 1) / align * align : hl;
}

static inline uint32_t pdu_crc(uint32_t crc, const void *p, uint32_t n)
{
    return srrs_crc32c(crc, p, n);
}

/* The header digest after h's hlen bytes matches. */
static inline bool pdu_hdgst_ok(const uint8_t *h)
{
    uint8_t hlen = ((const struct pdu_ch *)h)->hlen;
    uint32_t want;
    memcpy(&want, h + hlen, 4);
    return want == pdu_crc(0, h, hlen);
}

/* Fills the common header (header digest, padding) of a PDU whose specific
 * header is already in h (room for the digest and padding after it), for
 * dlen payload bytes; returns the bytes before the payload. */
static inline uint32_t pdu_seal(const struct pdu_fmt *f, uint8_t *h, uint8_t type, uint8_t flags,
                                uint32_t dlen)
{
    struct pdu_ch *ch = (struct pdu_ch *)h;
    uint8_t hlen = pdu_type_hlen(type);
    bool hd = f->hdgst && pdu_type_has_hdgst(type);
    bool dd = f->ddgst && dlen;
    uint32_t hl = hlen + (hd ? 4u : 0u);
    uint32_t pdo = dlen ? pdu_pdo(hl, f->align) : hl;
    if (pdo > hl)
        memset(h + hl, 0, pdo - hl);
    ch->type = type;
    ch->flags = (uint8_t)(flags | (hd ? PDU_F_HDGST : 0) | (dd ? PDU_F_DDGST : 0));
    ch->hlen = hlen;
    ch->pdo = dlen ? (uint8_t)pdo : 0;
    ch->plen = pdo + dlen + (dd ? 4u : 0u);
    if (hd) {
        uint32_t crc = pdu_crc(0, h, hlen);
        memcpy(h + hlen, &crc, 4);
    }
    return pdo;
}

/* A queued PDU: header h (hl bytes, from pdu_seal), then dlen bytes of data
 * and, when negotiated, their digest. owner: the request it belongs to
 * (NULL: the connection's own). */
static inline void pdu_tx_set(const struct pdu_fmt *f, struct tx_pdu *p, void *owner, uint8_t *h,
                              uint32_t hl, void *data, uint32_t dlen)
{
    p->req = owner;
    p->hdr = h;
    p->hlen = hl;
    p->data = data;
    p->dlen = dlen;
    p->has_ddgst = f->ddgst && dlen;
    if (p->has_ddgst)
        p->ddgst = pdu_crc(0, data, dlen);
}

/* The specific header of R2T, H2CData and C2HData (one layout). */
static inline void pdu_data_hdr(uint8_t *h, uint16_t cccid, uint16_t ttag, uint32_t off,
                                uint32_t len)
{
    struct pdu_data *d = (struct pdu_data *)h;
    memset(d, 0, sizeof(*d));
    d->cccid = cccid;
    d->ttag = ttag;
    d->off = off;
    d->len = len;
}

static inline uint16_t pdu_bad(uint32_t *fei, uint32_t at)
{
    *fei = at;
    return FES_INVALID_HEADER;
}

/* Checks a received common header against the rules and what was
 * negotiated; fills g. Returns 0, or the fatal error status (FES) with the
 * offset of the bad field in *fei. Header and data digests are checked when
 * they arrive (pdu_hdgst_ok, pdu_crc). Always inlined: with an end's
 * constant rules most of it folds away. */
static inline __attribute__((always_inline)) uint16_t
pdu_ch_check(const struct pdu_ch *ch, const struct pdu_fmt *f, const struct pdu_rules *r,
             struct pdu_geom *g, uint32_t *fei)
{
    uint32_t bit = ch->type < 16 ? PDU_BIT(ch->type) : 0;
    if (!(r->types & bit))
        return pdu_bad(fei, 0);
    uint32_t want = pdu_hlen_tab[ch->type];
    if (ch->hlen != want)
        return pdu_bad(fei, offsetof(struct pdu_ch, hlen));
    bool hd = f->hdgst && (bit & PDU_HDGST_TYPES);
    if ((bit & PDU_HDGST_TYPES) && !!(ch->flags & PDU_F_HDGST) != hd)
        return pdu_bad(fei, offsetof(struct pdu_ch, flags));
    uint32_t hl = want + (hd ? 4u : 0u);
    g->hl = hl;
    g->pad = 0;
    g->dlen = 0;
    if (ch->plen < hl || (!(bit & PDU_DATA_TYPES) && ch->plen != hl) ||
        (uint64_t)ch->plen > (uint64_t)hl + 256u + r->max_data + 4u)
        return pdu_bad(fei, offsetof(struct pdu_ch, plen));
    if (ch->plen == hl || (bit & PDU_TERM_TYPES)) {
        g->dlen = ch->plen - hl; /* a termination's error data: no PDO, no digest */
        *fei = 0;
        return 0;
    }
    uint32_t dd = f->ddgst ? 4u : 0u;
    if (!!(ch->flags & PDU_F_DDGST) != f->ddgst)
        return pdu_bad(fei, offsetof(struct pdu_ch, flags));
    if (ch->pdo < hl || ch->pdo - hl > r->max_pad || ch->plen < (uint32_t)ch->pdo + dd + 1 ||
        (r->cpda_align > 4 && ch->pdo % r->cpda_align))
        return pdu_bad(fei, offsetof(struct pdu_ch, pdo));
    g->pad = ch->pdo - hl;
    g->dlen = ch->plen - ch->pdo - dd;
    *fei = 0;
    return 0;
}

/* ICReq and ICResp share a layout: PFV, then HPDA/CPDA, then the digests. */
static inline void pdu_ic_build(uint8_t *h, uint8_t type, uint8_t pda, bool hd, bool dd,
                                uint32_t maxdata)
{
    struct pdu_icresp *r = (struct pdu_icresp *)h;
    memset(r, 0, sizeof(*r));
    r->ch.type = type;
    r->ch.hlen = PDU_IC_LEN;
    r->ch.plen = PDU_IC_LEN;
    r->cpda = pda;
    r->dgst = (uint8_t)((hd ? 1 : 0) | (dd ? 2 : 0));
    r->maxh2cdata = maxdata; /* ICReq: MAXR2T */
}

/* The fields of a received ICReq/ICResp (its common header already
 * checked): 0 or the FES with *fei. */
static inline uint16_t pdu_ic_check(const uint8_t *h, uint32_t *fei)
{
    const struct pdu_icresp *r = (const struct pdu_icresp *)h;
    *fei = offsetof(struct pdu_icresp, pfv);
    if (r->pfv != 0)
        return FES_UNSUPPORTED;
    *fei = offsetof(struct pdu_icresp, cpda);
    if (r->cpda > 31)
        return FES_INVALID_HEADER;
    *fei = 0;
    return 0;
}

/* A termination request (type H2C/C2H_TERM) with FES, FEI and up to
 * PDU_IC_LEN bytes of the offending header as error data (h has room for
 * both); returns its length. */
static inline uint32_t pdu_term_build(uint8_t *h, uint8_t type, uint16_t fes, uint32_t fei,
                                      const uint8_t *bad, uint32_t bad_len)
{
    uint32_t copy = SRRS_MIN(bad_len, (uint32_t)PDU_IC_LEN);
    struct pdu_term *t = (struct pdu_term *)h;
    memset(t, 0, sizeof(*t));
    t->ch.type = type;
    t->ch.hlen = PDU_TERM_HLEN;
    t->ch.plen = PDU_TERM_HLEN + copy;
    t->fes = fes;
    t->fei = fei;
    memcpy(h + PDU_TERM_HLEN, bad, copy);
    return PDU_TERM_HLEN + copy;
}

/* The receive rules of each end, constants so the checks above fold. The
 * target asks for no alignment (CPDA 0) and the initiator for none (HPDA 0);
 * a peer may still pad its data up to 128 bytes past the header. */
static const struct pdu_rules pdu_rules_target = {
    .types = PDU_BIT(PDU_ICREQ) | PDU_BIT(PDU_CMD) | PDU_BIT(PDU_H2C_DATA) | PDU_BIT(PDU_H2C_TERM),
    .max_pad = 128, .max_data = NVMF_MAXH2CDATA};
static const struct pdu_rules pdu_rules_host = {
    .types = PDU_BIT(PDU_RSP) | PDU_BIT(PDU_C2H_DATA) | PDU_BIT(PDU_R2T) | PDU_BIT(PDU_C2H_TERM),
    .max_pad = 128, .max_data = 1u << 30};
static const struct pdu_rules pdu_rules_host_ic = {.types = PDU_BIT(PDU_ICRESP)};

#endif
