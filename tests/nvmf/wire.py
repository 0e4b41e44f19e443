"""A small NVMe/TCP client in pure Python for protocol tests and fuzzing
(never on a data path: one PDU at a time, blocking sockets)."""

from __future__ import annotations

import socket
import struct
from typing import Optional, Tuple

from srrs.ffi.binding import crc32c

ICREQ, ICRESP, H2C_TERM, C2H_TERM, CMD, RSP, H2C_DATA, C2H_DATA, R2T = 0, 1, 2, 3, 4, 5, 6, 7, 9
F_HDGST, F_DDGST, F_LAST, F_SUCCESS = 1, 2, 4, 8
HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:5352532d-0000-4000-8000-0000000000aa"
HOSTID = bytes(range(16))


def sqe(opc: int, cid: int = 0, nsid: int = 0, cdw10: int = 0, cdw11: int = 0, cdw12: int = 0,
        cdw13: int = 0, sgl_len: int = 0, sgl_type: int = 0x5A, sgl_addr: int = 0,
        flags: int = 0x40, cdw14: int = 0, cdw15: int = 0) -> bytes:
    sgl = struct.pack("<QI3xB", sgl_addr, sgl_len, sgl_type)
    return struct.pack("<BBHIII Q", opc, flags, cid, nsid, 0, 0, 0) + sgl + struct.pack(
        "<6I", cdw10, cdw11, cdw12, cdw13, cdw14, cdw15)


def connect_data(subnqn: str, hostnqn: str = HOSTNQN, cntlid: int = 0xFFFF,
                 hostid: bytes = HOSTID) -> bytes:
    d = bytearray(1024)
    d[0:16] = hostid
    d[16:18] = struct.pack("<H", cntlid)
    d[256:256 + len(subnqn)] = subnqn.encode()
    d[512:512 + len(hostnqn)] = hostnqn.encode()
    return bytes(d)


class Closed(Exception):
    pass


class Conn:
    def __init__(self, addr: str, port: int, timeout: float = 5.0):
        self.s = socket.create_connection((addr, port), timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.hdgst = self.ddgst = False
        self.cid = 0

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

    # -- raw --
    def send(self, b: bytes):
        self.s.sendall(b)

    def recv_exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            try:
                b = self.s.recv(n - len(out))
            except ConnectionResetError as e:
                raise Closed() from e
            if not b:
                raise Closed()
            out += b
        return bytes(out)

    def pdu(self, type_: int, hdr_rest: bytes, data: bytes = b"", flags: int = 0,
            hdgst: Optional[bool] = None, ddgst: Optional[bool] = None) -> bytes:
        hd = self.hdgst if hdgst is None else hdgst
        dd = (self.ddgst if ddgst is None else ddgst) and bool(data)
        hlen = 8 + len(hdr_rest)
        hl = hlen + (4 if hd else 0)
        plen = hl + len(data) + (4 if dd else 0)
        f = flags | (F_HDGST if hd else 0) | (F_DDGST if dd else 0)
        h = struct.pack("<BBBBI", type_, f, hlen, hl if data else 0, plen) + hdr_rest
        out = h + (struct.pack("<I", crc32c(h)) if hd else b"") + data
        if dd:
            out += struct.pack("<I", crc32c(data))
        return out

    def icreq(self, hdgst: bool = False, ddgst: bool = False, hpda: int = 0) -> dict:
        body = struct.pack("<HBBI", 0, hpda, (1 if hdgst else 0) | (2 if ddgst else 0), 0)
        body += bytes(112)
        self.send(struct.pack("<BBBBI", ICREQ, 0, 128, 0, 128) + body)
        r = self.recv_exact(128)
        t, _, hlen, _, plen = struct.unpack_from("<BBBBI", r)
        assert t == ICRESP and hlen == 128 and plen == 128, r[:8]
        pfv, cpda, dg, maxh2c = struct.unpack_from("<HBBI", r, 8)
        self.hdgst, self.ddgst = bool(dg & 1), bool(dg & 2)
        return {"cpda": cpda, "dgst": dg, "maxh2cdata": maxh2c}

    def recv_pdu(self) -> Tuple[int, int, bytes, bytes]:
        """(type, flags, header (without CH), data)."""
        ch = self.recv_exact(8)
        t, f, hlen, pdo, plen = struct.unpack("<BBBBI", ch)
        rest = self.recv_exact(plen - 8)
        hd = self.hdgst and t not in (ICRESP, C2H_TERM)
        hl = hlen + (4 if hd else 0)
        hdr = rest[:hlen - 8]
        if hd:
            (want,) = struct.unpack_from("<I", rest, hlen - 8)
            assert want == crc32c(ch + hdr), "header digest"
        data = b""
        if plen > hl:
            end = plen - (4 if (f & F_DDGST) else 0)
            data = (ch + rest)[pdo:end]
            if f & F_DDGST:
                (want,) = struct.unpack_from("<I", rest, plen - 8 - 4)
                assert want == crc32c(data), "data digest"
        return t, f, hdr, data

    # -- commands --
    def next_cid(self) -> int:
        self.cid = (self.cid + 1) & 0xFFFF
        return self.cid

    def cmd(self, s: bytes, data: bytes = b"", read_len: int = 0):
        """Sends a capsule, returns (status, dw0, dw1, data_in). Handles R2T."""
        self.send(self.pdu(CMD, s, data))
        return self.wait(read_len, s)

    def wait(self, read_len: int = 0, s: bytes = b"", out: bytes = b""):
        buf = bytearray(read_len)
        while True:
            t, f, hdr, data = self.recv_pdu()
            if t == RSP:
                dw0, dw1, sqhd, sqid, cid, status = struct.unpack("<IIHHHH", hdr[:16])
                return status >> 1, dw0, dw1, bytes(buf)
            if t == C2H_DATA:
                cccid, ttag, off, ln = struct.unpack_from("<HHII", hdr)
                buf[off:off + ln] = data
                if f & F_SUCCESS:
                    return 0, 0, 0, bytes(buf)
            elif t == R2T:
                cccid, ttag, off, ln = struct.unpack_from("<HHII", hdr)
                self.send(self.pdu(H2C_DATA, struct.pack("<HHIII", cccid, ttag, off, ln, 0),
                                   self._out[off:off + ln], flags=F_LAST))
            elif t == C2H_TERM:
                raise Closed(f"termination request FES {struct.unpack_from('<H', hdr)[0]}")
            else:
                raise AssertionError(f"unexpected PDU {t}")

    def write_r2t(self, s: bytes, data: bytes):
        self._out = data
        self.send(self.pdu(CMD, s))
        return self.wait()

    def connect(self, subnqn: str, qid: int = 0, sqsize: int = 31, cntlid: int = 0xFFFF,
                kato: int = 0, hostnqn: str = HOSTNQN, cattr: int = 0):
        d = connect_data(subnqn, hostnqn, cntlid)
        s = sqe(0x7F, self.next_cid(), nsid=0x01, cdw10=qid << 16, cdw11=sqsize | cattr << 16,
                cdw12=kato, sgl_len=len(d), sgl_type=0x01)
        return self.cmd(s, d)

    def prop_set(self, off: int, val: int):
        return self.cmd(sqe(0x7F, self.next_cid(), nsid=0x00, cdw11=off, cdw12=val))

    def prop_get(self, off: int, size8: bool = False):
        st, dw0, dw1, _ = self.cmd(sqe(0x7F, self.next_cid(), nsid=0x04, cdw10=int(size8),
                                       cdw11=off))
        return st, dw0 | dw1 << 32

    def enable(self):
        st, *_ = self.prop_set(0x14, 1 | 6 << 16 | 4 << 20)
        assert st == 0
        st, csts = self.prop_get(0x1C)
        assert st == 0 and csts & 1

    def admin(self, opc: int, nsid: int = 0, cdw10: int = 0, cdw11: int = 0, cdw12: int = 0,
              cdw13: int = 0, read_len: int = 0):
        s = sqe(opc, self.next_cid(), nsid=nsid, cdw10=cdw10, cdw11=cdw11, cdw12=cdw12,
                cdw13=cdw13, sgl_len=read_len)
        return self.cmd(s, read_len=read_len)

    def identify(self, cns: int, nsid: int = 0):
        return self.admin(0x06, nsid=nsid, cdw10=cns, read_len=4096)

    def get_log(self, lid: int, length: int, lsp: int = 0, rae: bool = False, offset: int = 0):
        numd = length // 4 - 1
        return self.admin(0x02, nsid=0xFFFFFFFF,
                          cdw10=lid | lsp << 8 | int(rae) << 15 | (numd & 0xFFFF) << 16,
                          cdw11=numd >> 16, cdw12=offset & 0xFFFFFFFF, cdw13=offset >> 32,
                          read_len=length)


def admin_session(addr: str, port: int, nqn: str, kato: int = 0, hostnqn: str = HOSTNQN,
                  hdgst: bool = False, ddgst: bool = False) -> Tuple[Conn, int]:
    c = Conn(addr, port)
    c.icreq(hdgst, ddgst)
    st, dw0, _, _ = c.connect(nqn, kato=kato, hostnqn=hostnqn)
    assert st == 0, hex(st)
    c.enable()
    return c, dw0 & 0xFFFF


def io_session(addr: str, port: int, nqn: str, cntlid: int, qid: int = 1,
               hostnqn: str = HOSTNQN, sqsize: int = 127) -> Conn:
    c = Conn(addr, port)
    c.icreq()
    st, *_ = c.connect(nqn, qid=qid, cntlid=cntlid, hostnqn=hostnqn, sqsize=sqsize)
    assert st == 0, hex(st)
    return c
