/*
 * The framing rules of nvmf/pdu.h behind two plain functions, so the unit
 * tests check them through cffi without a socket (tests/unit/test_pdu.py).
 * The data path calls the inline versions directly.
 */
#include "nvmf/pdu.h"

int srrs_nvmf_pdu_check(int host, const uint8_t *ch, int hdgst, int ddgst, uint32_t cpda_align,
                        uint32_t *fei, uint32_t *geom)
{
    struct pdu_fmt f = {.hdgst = hdgst, .ddgst = ddgst};
    struct pdu_rules r = host ? pdu_rules_host : pdu_rules_target;
    struct pdu_geom g = {0};
    r.cpda_align = cpda_align;
    uint16_t fes = pdu_ch_check((const struct pdu_ch *)ch, &f, &r, &g, fei);
    geom[0] = g.hl;
    geom[1] = g.pad;
    geom[2] = g.dlen;
    return fes;
}

uint32_t srrs_nvmf_pdu_seal(uint8_t *h, uint8_t type, uint8_t flags, uint32_t dlen, int hdgst,
                            int ddgst, uint32_t align)
{
    struct pdu_fmt f = {.hdgst = hdgst, .ddgst = ddgst, .align = align};
    return pdu_seal(&f, h, type, flags, dlen);
}
