"""The target's PDU framing rules on the wire (nvmf/pdu.h): headers crafted at
each boundary — header length per type, digest flags, PDO against the header
and its digest, padding, the alignment asked for, plen against PDO and the
header, wrong header and data digests — get the termination request (FES and
the offending byte) or the answer the rules say, on one real target; and the
C initiator, against a scripted target, keeps the same rules (its data padded
to the target's CPDA, a bad ICResp or a response with data refused)."""

import socket
import struct
import threading

import pytest

from srrs.ffi.binding import SrrsError
from srrs.nvmf.target import NvmfHost

from . import wire
from .conftest import NQN

INVALID_HEADER, PDU_SEQUENCE, HDGST = 1, 2, 3
FLAGS, HLEN, PDO, PLEN = 1, 2, 3, 4
SC_TRANSIENT_XPORT = 0x22


def raw(type_, rest, hlen=None, pdo=None, plen=None, flags=0, pad=0, data=b"", hdgst=False,
        ddgst=False, bad_hdgst=False, bad_ddgst=False):
    """One PDU as the rules see it; every field of the common header may be forced."""
    hl = 8 + len(rest)
    f = flags | (wire.F_HDGST if hdgst else 0) | (wire.F_DDGST if ddgst and data else 0)
    body_at = hl + (4 if hdgst else 0) + pad
    size = body_at + len(data) + (4 if ddgst and data else 0)
    ch = struct.pack("<BBBBI", type_, f, hl if hlen is None else hlen,
                     (body_at if data else 0) if pdo is None else pdo, size if plen is None else plen)
    out = ch + rest
    if hdgst:
        out += struct.pack("<I", wire.crc32c(out) ^ (1 if bad_hdgst else 0))
    out += bytes(pad) + data
    if ddgst and data:
        out += struct.pack("<I", wire.crc32c(data) ^ (1 if bad_ddgst else 0))
    return out


def connect_pdu(**kw):
    d = wire.connect_data(NQN)
    s = wire.sqe(0x7F, 1, nsid=0x01, cdw10=0, cdw11=31, sgl_len=len(d), sgl_type=0x01)
    return raw(wire.CMD, s, data=d, **kw)


def session(target, hdgst=False, ddgst=False, icreq=True):
    c = wire.Conn("127.0.0.1", target.port)
    if icreq:
        c.icreq(hdgst, ddgst)
    return c


def terminated(c, pdu):
    """(FES, FEI) of the termination request the target answers pdu with; it then closes."""
    c.send(pdu)
    t, _, hlen, _, plen = struct.unpack("<BBBBI", c.recv_exact(8))
    rest = c.recv_exact(plen - 8)
    assert (t, hlen) == (wire.C2H_TERM, 24) and plen >= 24
    fes, fei = struct.unpack_from("<HI", rest)
    with pytest.raises(wire.Closed):
        c.recv_exact(1)
    c.close()
    return fes, fei


def answered(c, pdu):
    """The status of the command pdu carries (the connection stays up)."""
    c.send(pdu)
    return c.wait()[0]


def test_header_length_must_be_the_types(target):
    assert terminated(session(target, icreq=False),
                      raw(wire.ICREQ, bytes(120), hlen=72, plen=128)) == (INVALID_HEADER, HLEN)
    s = wire.sqe(0x18, 1)
    for hlen in (24, 71, 73, 128):
        assert terminated(session(target), raw(wire.CMD, s, hlen=hlen)) == (INVALID_HEADER, HLEN)
    h2c = struct.pack("<HHIII", 1, 0, 0, 8, 0)
    assert terminated(session(target), raw(wire.H2C_DATA, h2c, hlen=72, data=bytes(8))) == \
        (INVALID_HEADER, HLEN)
    assert terminated(session(target), raw(wire.H2C_TERM, bytes(16), hlen=72)) == \
        (INVALID_HEADER, HLEN)


def test_type_and_sequence(target):
    for t in (wire.ICRESP, wire.RSP, wire.C2H_DATA, wire.R2T, 8, 0xFF):
        assert terminated(session(target), raw(t, bytes(16))) == (INVALID_HEADER, 0)
    assert terminated(session(target, icreq=False), raw(wire.CMD, wire.sqe(0x18, 1))) == \
        (PDU_SEQUENCE, 0)
    assert terminated(session(target), raw(wire.ICREQ, bytes(120))) == (PDU_SEQUENCE, 0)


def test_plen_bounds(target):
    s = wire.sqe(0x18, 1)
    assert terminated(session(target), raw(wire.CMD, s, plen=71)) == (INVALID_HEADER, PLEN)
    assert terminated(session(target, hdgst=True), raw(wire.CMD, s, hdgst=True, plen=75)) == \
        (INVALID_HEADER, PLEN)
    assert terminated(session(target, icreq=False), raw(wire.ICREQ, bytes(120), plen=132)) == \
        (INVALID_HEADER, PLEN)
    assert terminated(session(target), raw(wire.CMD, s, pdo=72, plen=72 + 256 + (1 << 20) + 5)) \
        == (INVALID_HEADER, PLEN)


def test_pdo_against_header_digest_and_padding(target):
    # below the header, and below header + digest
    assert terminated(session(target), connect_pdu(pdo=40)) == (INVALID_HEADER, PDO)
    assert terminated(session(target, hdgst=True), connect_pdu(hdgst=True, pdo=72)) == \
        (INVALID_HEADER, PDO)
    # more than 128 bytes of padding
    assert terminated(session(target), connect_pdu(pad=129)) == (INVALID_HEADER, PDO)
    # 128 bytes of padding, and a PDO off any multiple: the target asks for no
    # alignment (CPDA 0), so both are data where PDO says
    for pad in (128, 1):
        c = session(target, hdgst=True)
        assert answered(c, connect_pdu(hdgst=True, pad=pad)) == 0
        c.close()


def test_plen_below_pdo(target):
    assert terminated(session(target), connect_pdu(pdo=80, plen=79)) == (INVALID_HEADER, PDO)
    assert terminated(session(target), connect_pdu(pdo=80, plen=80)) == (INVALID_HEADER, PDO)
    # data digest negotiated: plen must leave room for data and its digest
    assert terminated(session(target, ddgst=True), connect_pdu(ddgst=True, plen=72 + 4)) == \
        (INVALID_HEADER, PDO)


def test_digest_flags_must_match(target):
    s = wire.sqe(0x18, 1)
    assert terminated(session(target), raw(wire.CMD, s, flags=wire.F_HDGST)) == (INVALID_HEADER,
                                                                               FLAGS)
    assert terminated(session(target, hdgst=True), raw(wire.CMD, s)) == (INVALID_HEADER, FLAGS)
    assert terminated(session(target), connect_pdu(flags=wire.F_DDGST)) == (INVALID_HEADER, FLAGS)
    assert terminated(session(target, ddgst=True), connect_pdu()) == (INVALID_HEADER, FLAGS)


def test_wrong_digests(target):
    assert terminated(session(target, hdgst=True), connect_pdu(hdgst=True, bad_hdgst=True)) == \
        (HDGST, 0)
    # a wrong data digest fails the command only; the queue goes on
    c = session(target, hdgst=True, ddgst=True)
    assert answered(c, connect_pdu(hdgst=True, ddgst=True, bad_ddgst=True)) == SC_TRANSIENT_XPORT
    assert answered(c, connect_pdu(hdgst=True, ddgst=True)) == 0
    c.close()


# ---- the initiator's end: the same rules on what a target sends ---------------------------

class FakeTarget:
    """Accepts one connection, answers its ICReq with `icresp`, then each PDU
    the initiator sends with the next of `answers` (none left: close), and
    records what it received."""

    def __init__(self, icresp: bytes, answers=()):
        self.icresp, self.answers = icresp, list(answers)
        self.got = []
        self.ls = socket.create_server(("127.0.0.1", 0))
        self.port = self.ls.getsockname()[1]
        self.t = threading.Thread(target=self._serve, daemon=True)
        self.t.start()

    def _recv(self, s, n):
        out = b""
        while len(out) < n:
            b = s.recv(n - len(out))
            if not b:
                raise EOFError
            out += b
        return out

    def _serve(self):
        s, _ = self.ls.accept()
        s.settimeout(5)
        try:
            self._recv(s, 128)
            s.sendall(self.icresp)
            while True:
                ch = self._recv(s, 8)
                plen = struct.unpack_from("<I", ch, 4)[0]
                self.got.append(ch + self._recv(s, plen - 8))
                if not self.answers:
                    break
                s.sendall(self.answers.pop(0))
        except (EOFError, OSError):
            pass
        finally:
            s.close()
            self.ls.close()

    def join(self):
        self.t.join(10)
        return self.got


def icresp(cpda=0, hlen=128, plen=128, pfv=0):
    return struct.pack("<BBBBIHBBI", wire.ICRESP, 0, hlen, 0, plen, pfv, cpda, 0, 1 << 20) + \
        bytes(112)


def host_connect(port):
    with pytest.raises(SrrsError):
        NvmfHost("127.0.0.1", port, NQN, timeout_ms=2000)


def test_initiator_pads_its_data_to_the_targets_cpda():
    ft = FakeTarget(icresp(cpda=3))  # 16-byte alignment
    host_connect(ft.port)
    (connect,) = ft.join()
    t, _, hlen, pdo, plen = struct.unpack_from("<BBBBI", connect)
    assert (t, hlen, pdo, plen) == (wire.CMD, 72, 80, 80 + 1024)
    assert connect[72:80] == bytes(8)


@pytest.mark.parametrize("resp", [icresp(hlen=24), icresp(plen=132), icresp(pfv=1),
                                  icresp(cpda=32)], ids=["hlen", "plen", "pfv", "cpda"])
def test_initiator_refuses_a_bad_icresp(resp):
    ft = FakeTarget(resp)
    host_connect(ft.port)
    assert ft.join() == []  # no Connect after it


def test_initiator_refuses_a_response_with_data():
    cqe = struct.pack("<IIHHHH", 0, 0, 0, 0, 0x1001, 0)  # Connect's cid, success
    rsp = struct.pack("<BBBBI", wire.RSP, 0, 24, 0, 28) + cqe + bytes(4)
    ft = FakeTarget(icresp(), [rsp, rsp])
    host_connect(ft.port)
    assert len(ft.join()) == 1  # the Connect only: the answer was refused
