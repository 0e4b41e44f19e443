"""The NVMe/TCP framing rules of nvmf/pdu.h, in process: every boundary of
the common-header check (type, hlen per type, digest flags, plen, PDO), as
the target and as the initiator check it, and headers built by pdu_seal
(digests, PDO padding, lengths) that the other end accepts."""

import struct

import pytest

from srrs.ffi.binding import crc32c, ffi, lib

ICREQ, ICRESP, H2C_TERM, C2H_TERM, CMD, RSP, H2C_DATA, C2H_DATA, R2T = 0, 1, 2, 3, 4, 5, 6, 7, 9
HLEN = {ICREQ: 128, ICRESP: 128, H2C_TERM: 24, C2H_TERM: 24, CMD: 72, RSP: 24, H2C_DATA: 24,
        C2H_DATA: 24, R2T: 24}
F_HDGST, F_DDGST = 1, 2
INVALID_HEADER, UNSUPPORTED = 1, 6
# Offsets of the common header's fields: the FEI of a refused header.
FLAGS, HLEN_AT, PDO, PLEN = 1, 2, 3, 4
MAXH2CDATA = 1 << 20
TARGET, HOST = 0, 1


def check(end, type_, hlen, pdo, plen, flags=0, hdgst=False, ddgst=False, cpda=0):
    """(FES, FEI, (header bytes, pad, payload)) of one common header."""
    ch = struct.pack("<BBBBI", type_, flags, hlen, pdo, plen)
    fei, geom = ffi.new("uint32_t *"), ffi.new("uint32_t[3]")
    fes = lib.srrs_nvmf_pdu_check(end, ch, hdgst, ddgst, cpda, fei, geom)
    return fes, fei[0], tuple(geom)


def ok(*a, **kw):
    fes, fei, geom = check(*a, **kw)
    assert fes == 0, (fes, fei)
    return geom


def refused(fei, *a, **kw):
    fes, got, _ = check(*a, **kw)
    assert (fes, got) == (INVALID_HEADER, fei)


@pytest.mark.parametrize("t", [ICRESP, C2H_TERM, RSP, C2H_DATA, R2T, 8, 10, 15, 16, 0x7F, 0xFF])
def test_target_refuses_types_a_host_never_sends(t):
    refused(0, TARGET, t, 24, 0, 24)


@pytest.mark.parametrize("t", [ICREQ, H2C_TERM, CMD, H2C_DATA, 8, 0xFF])
def test_host_refuses_types_a_target_never_sends(t):
    refused(0, HOST, t, HLEN.get(t, 24), 0, HLEN.get(t, 24))


@pytest.mark.parametrize("end,t", [(TARGET, ICREQ), (TARGET, CMD), (TARGET, H2C_DATA),
                                   (TARGET, H2C_TERM), (HOST, RSP), (HOST, C2H_DATA),
                                   (HOST, R2T), (HOST, C2H_TERM)])
def test_hlen_must_be_the_types(end, t):
    want = HLEN[t]
    assert ok(end, t, want, 0, want) == (want, 0, 0)
    for bad in (0, 8, want - 1, want + 1, 72 if want != 72 else 24, 128 if want != 128 else 24,
                255):
        refused(HLEN_AT, end, t, bad, 0, want)


def test_header_digest_flag_must_match_the_negotiation():
    refused(FLAGS, TARGET, CMD, 72, 0, 76, flags=F_HDGST)  # not negotiated
    refused(FLAGS, TARGET, CMD, 72, 0, 76, hdgst=True)     # negotiated, flag missing
    assert ok(TARGET, CMD, 72, 0, 76, flags=F_HDGST, hdgst=True) == (76, 0, 0)
    # ICReq and termination requests never carry one, whatever was negotiated
    assert ok(TARGET, ICREQ, 128, 0, 128, hdgst=True) == (128, 0, 0)
    assert ok(TARGET, H2C_TERM, 24, 0, 24, hdgst=True) == (24, 0, 0)
    assert ok(HOST, RSP, 24, 0, 28, flags=F_HDGST, hdgst=True) == (28, 0, 0)


def test_plen_bounds():
    refused(PLEN, TARGET, CMD, 72, 0, 71)
    refused(PLEN, TARGET, CMD, 72, 0, 75, flags=F_HDGST, hdgst=True)  # < header + digest
    refused(PLEN, TARGET, CMD, 72, 0, 0)
    refused(PLEN, TARGET, ICREQ, 128, 0, 129)                        # ICReq has no data
    refused(PLEN, HOST, RSP, 24, 0, 28)                              # nor has a response
    refused(PLEN, HOST, R2T, 24, 24, 25)
    top = 72 + 256 + MAXH2CDATA + 4
    assert ok(TARGET, CMD, 72, 72, top)[2] == top - 72
    refused(PLEN, TARGET, CMD, 72, 72, top + 1)
    refused(PLEN, TARGET, H2C_DATA, 24, 24, 0xFFFFFFFF)


def test_pdo_below_header_and_digest():
    assert ok(TARGET, CMD, 72, 72, 72 + 512) == (72, 0, 512)
    for pdo in (0, 8, 71):
        refused(PDO, TARGET, CMD, 72, pdo, 72 + 512)
    # with a header digest the data starts after it
    refused(PDO, TARGET, CMD, 72, 72, 76 + 512, flags=F_HDGST, hdgst=True)
    assert ok(TARGET, CMD, 72, 76, 76 + 512, flags=F_HDGST, hdgst=True) == (76, 0, 512)
    refused(PDO, HOST, C2H_DATA, 24, 24, 28 + 512, flags=F_HDGST, hdgst=True)


def test_pdo_padding_limit():
    assert ok(TARGET, H2C_DATA, 24, 24 + 128, 24 + 128 + 1) == (24, 128, 1)
    refused(PDO, TARGET, H2C_DATA, 24, 24 + 129, 24 + 129 + 1)
    assert ok(HOST, C2H_DATA, 24, 32, 32 + 4096) == (24, 8, 4096)  # HPDA 3: 16-byte aligned


def test_pdo_must_be_a_multiple_of_the_alignment_asked_for():
    assert ok(TARGET, CMD, 72, 76, 76 + 8) == (72, 4, 8)           # none asked: any PDO
    refused(PDO, TARGET, CMD, 72, 76, 76 + 8, cpda=16)
    assert ok(TARGET, CMD, 72, 80, 80 + 8, cpda=16) == (72, 8, 8)
    refused(PDO, HOST, C2H_DATA, 24, 24, 24 + 8, cpda=32)
    assert ok(HOST, C2H_DATA, 24, 32, 32 + 8, cpda=32) == (24, 8, 8)


def test_plen_below_pdo_and_data_digest():
    refused(PDO, TARGET, CMD, 72, 80, 79)       # plen < pdo
    refused(PDO, TARGET, CMD, 72, 80, 80)       # data section without data
    refused(PDO, TARGET, CMD, 72, 72, 76, flags=F_DDGST, ddgst=True)  # only the digest
    assert ok(TARGET, CMD, 72, 72, 77, flags=F_DDGST, ddgst=True) == (72, 0, 1)


def test_data_digest_flag_must_match_when_data_comes():
    refused(FLAGS, TARGET, CMD, 72, 72, 72 + 16, flags=F_DDGST)
    refused(FLAGS, TARGET, CMD, 72, 72, 72 + 16 + 4, ddgst=True)
    refused(FLAGS, HOST, C2H_DATA, 24, 24, 24 + 16, flags=F_DDGST)
    assert ok(TARGET, CMD, 72, 0, 72, ddgst=True) == (72, 0, 0)  # no data: no flag


def test_termination_error_data_needs_no_pdo():
    assert ok(TARGET, H2C_TERM, 24, 0, 24 + 72) == (24, 0, 72)
    assert ok(HOST, C2H_TERM, 24, 0, 24 + 128, ddgst=True) == (24, 0, 128)


def seal(t, dlen, hdgst=False, ddgst=False, align=0, flags=0, body=b""):
    h = ffi.new("uint8_t[152]", b"\x00" * 8 + body + b"\xee" * (144 - len(body)))
    n = lib.srrs_nvmf_pdu_seal(h, t, flags, dlen, hdgst, ddgst, align)
    return n, bytes(ffi.buffer(h, 152))


def test_seal_lengths_digest_and_padding():
    n, h = seal(CMD, 0)
    assert n == 72 and struct.unpack_from("<BBBBI", h) == (CMD, 0, 72, 0, 72)
    n, h = seal(CMD, 4096, hdgst=True, ddgst=True, body=bytes(range(64)))
    assert n == 76 and struct.unpack_from("<BBBBI", h) == (CMD, 3, 72, 76, 76 + 4096 + 4)
    assert struct.unpack_from("<I", h, 72)[0] == crc32c(h[:72])
    n, h = seal(C2H_DATA, 4096, align=16, flags=4)  # a host's HPDA 3
    assert n == 32 and struct.unpack_from("<BBBBI", h) == (C2H_DATA, 4, 24, 32, 32 + 4096)
    assert h[24:32] == bytes(8)
    n, h = seal(CMD, 8, hdgst=True, align=72)  # the widest padding a CapsuleCmd gets
    assert n == 144 and h[76:144] == bytes(68)
    n, h = seal(R2T, 0, hdgst=True, ddgst=True, align=128)  # no data: no PDO, no padding
    assert n == 28 and struct.unpack_from("<BBBBI", h) == (R2T, 1, 24, 0, 28)
    n, h = seal(ICRESP, 0, hdgst=True)
    assert n == 128 and struct.unpack_from("<BBBBI", h) == (ICRESP, 0, 128, 0, 128)


@pytest.mark.parametrize("t,end", [(CMD, TARGET), (H2C_DATA, TARGET), (C2H_DATA, HOST),
                                   (RSP, HOST), (R2T, HOST)])
@pytest.mark.parametrize("hd,dd", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("align", [0, 4, 16, 72, 128])
def test_what_one_end_seals_the_other_accepts(t, end, hd, dd, align):
    dlen = 0 if t in (RSP, R2T) else 512
    n, h = seal(t, dlen, hdgst=hd, ddgst=dd, align=align)
    t_, flags, hlen, pdo, plen = struct.unpack_from("<BBBBI", h)
    fes, fei, (hl, pad, got) = check(end, t_, hlen, pdo, plen, flags, hdgst=hd, ddgst=dd,
                                     cpda=align)
    assert fes == 0, (fes, fei)
    assert (hl + pad, got) == (n, dlen)
