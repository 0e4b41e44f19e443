"""An independent DH-HMAC-CHAP host for tests: secrets, the key transform, the
responses and the RFC 7919 groups computed with hashlib / hmac / pow() only
(no OpenSSL, no code shared with the target), and the exchange over real
NVMe/TCP PDUs (tests/nvmf/wire.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import struct
import zlib
from typing import Optional

from . import wire

HASH = {1: "sha256", 2: "sha384", 3: "sha512"}
HLEN = {1: 32, 2: 48, 3: 64}
GROUP_BITS = {1: 2048, 2: 3072, 3: 4096, 4: 6144, 5: 8192}
# RFC 7919 appendix A: p = 2^b - 2^(b-64) + (floor(2^(b-130) * e) + X) * 2^64 - 1
_X = {2048: 560316, 3072: 2625351, 4096: 5736041, 6144: 15705020, 8192: 10965728}
_primes: dict = {}
FAIL_FAILED, FAIL_HASH, FAIL_DHGROUP, FAIL_MESSAGE = 1, 4, 5, 7


def ffdhe_prime(bits: int) -> int:
    """The RFC 7919 prime of that size, derived from e (series of 1/k!)."""
    if bits not in _primes:
        n, guard = bits - 130, 64
        one = 1 << (n + guard)
        term, acc, k = one, 0, 0
        while term:
            acc += term
            k += 1
            term //= k
        e_scaled = acc >> guard  # floor(2^n * e)
        _primes[bits] = (1 << bits) - (1 << (bits - 64)) + (e_scaled + _X[bits]) * (1 << 64) - 1
    return _primes[bits]


def gen_secret(hash_id: int = 0, length: int = 32) -> str:
    key = secrets.token_bytes(length)
    crc = struct.pack("<I", zlib.crc32(key) & 0xFFFFFFFF)
    return f"DHHC-1:{hash_id:02d}:{base64.b64encode(key + crc).decode()}:"


def parse_secret(s: str):
    _, hh, b64 = s.strip().rstrip(":").split(":")
    raw = base64.b64decode(b64)
    key, crc = raw[:-4], raw[-4:]
    assert struct.pack("<I", zlib.crc32(key) & 0xFFFFFFFF) == crc
    return int(hh), key


def transform(secret: str, nqn: str) -> bytes:
    hid, key = parse_secret(secret)
    if hid == 0:
        return key
    return hmac.new(key, nqn.encode() + b"NVMe-over-Fabrics", HASH[hid]).digest()


def response(hid: int, key: bytes, chal: bytes, seq: int, tid: int, ctrl: bool, nqn1: str,
             nqn2: str, sess: Optional[bytes] = None) -> bytes:
    """sess: H(g^xy) for a DH group, None for the NULL group."""
    if sess is not None:
        chal = hmac.new(sess, chal, HASH[hid]).digest()
    msg = (chal + struct.pack("<IHB", seq, tid, 0) + (b"Controller" if ctrl else b"HostHost")
           + nqn1.encode() + b"\0" + nqn2.encode())
    return hmac.new(key, msg, HASH[hid]).digest()


def write_secret_file(path, secret: str, mode: int = 0o600) -> str:
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.write(fd, (secret + "\n").encode())
    os.close(fd)
    os.chmod(str(path), mode)
    return str(path)


# ---- the exchange over the wire --------------------------------------------------

SECP = 0xE9 << 24 | 1 << 16 | 1 << 8


class AuthFailed(Exception):
    def __init__(self, stage: str, reason: int = 0, status: int = 0):
        super().__init__(f"{stage}: reason {reason} status {status:#x}")
        self.stage, self.reason, self.status = stage, reason, status


def auth_send(c: wire.Conn, data: bytes):
    s = wire.sqe(0x7F, c.next_cid(), nsid=0x05, cdw10=SECP, cdw11=len(data), sgl_len=len(data),
                 sgl_type=0x01)
    return c.cmd(s, data)[0]


def auth_recv(c: wire.Conn, al: int = 4096):
    s = wire.sqe(0x7F, c.next_cid(), nsid=0x06, cdw10=SECP, cdw11=al, sgl_len=al)
    st, _, _, d = c.cmd(s, read_len=al)
    return st, d


def negotiate_msg(tid: int, hashes=(1, 2, 3), groups=(0, 1, 2, 3, 4, 5), sc_c: int = 0) -> bytes:
    ids = bytearray(60)
    ids[:len(hashes)] = bytes(hashes)
    ids[30:30 + len(groups)] = bytes(groups)
    return struct.pack("<BBHHBB", 0, 0, 0, tid, sc_c, 1) + struct.pack(
        "<BBBB", 1, 0, len(hashes), len(groups)) + bytes(ids)


class Host:
    """One host identity; authenticate() runs a transaction on a connected queue."""

    def __init__(self, hostnqn: str, subnqn: str, secret: str, ctrl_secret: Optional[str] = None,
                 hashes=(1, 2, 3), groups=(0, 1, 2, 3, 4, 5)):
        self.hostnqn, self.subnqn = hostnqn, subnqn
        self.secret, self.ctrl_secret = secret, ctrl_secret
        self.hashes, self.groups = hashes, groups
        self.tid = secrets.randbelow(0xFFFF)
        self.last = {}

    def authenticate(self, c: wire.Conn) -> dict:
        self.tid = (self.tid + 1) & 0xFFFF
        tid = self.tid
        st = auth_send(c, negotiate_msg(tid, self.hashes, self.groups))
        if st:
            raise AuthFailed("negotiate", status=st)
        st, m = auth_recv(c)
        if st:
            raise AuthFailed("challenge", status=st)
        typ, mid = m[0], m[1]
        if (typ, mid) == (0, 0xF1):
            raise AuthFailed("challenge", reason=m[7])
        assert (typ, mid) == (1, 1), (typ, mid)
        _, _, _, t, hl, _, hid, gid, dhvlen, s1 = struct.unpack_from("<BBHHBBBBHI", m)
        assert t == tid and hl == HLEN[hid]
        c1 = m[16:16 + hl]
        sess = pub = None
        if gid:
            bits = GROUP_BITS[gid]
            assert dhvlen == bits // 8
            p = ffdhe_prime(bits)
            y_ctrl = int.from_bytes(m[16 + hl:16 + hl + dhvlen], "big")
            assert 1 < y_ctrl < p - 1
            x = secrets.randbits(512) | 1 << 511
            pub = pow(2, x, p).to_bytes(bits // 8, "big")
            shared = pow(y_ctrl, x, p).to_bytes(bits // 8, "big")
            sess = hashlib.new(HASH[hid], shared).digest()
        else:
            assert dhvlen == 0
        kh = transform(self.secret, self.hostnqn)
        r1 = response(hid, kh, c1, s1, tid, False, self.hostnqn, self.subnqn, sess)
        c2, s2 = bytes(hl), 0
        if self.ctrl_secret:
            c2, s2 = secrets.token_bytes(hl), secrets.randbits(31) | 1
        reply = struct.pack("<BBHHBBBBHI", 1, 2, 0, tid, hl, 0, int(bool(s2)), 0,
                            len(pub or b""), s2) + r1 + c2 + (pub or b"")
        st = auth_send(c, reply)
        if st:
            raise AuthFailed("reply", status=st)
        st, m = auth_recv(c)
        if st:
            raise AuthFailed("success1", status=st)
        if (m[0], m[1]) == (0, 0xF1):
            raise AuthFailed("success1", reason=m[7])
        assert (m[0], m[1]) == (1, 3), (m[0], m[1])
        _, _, _, t, hl1, _, rvalid = struct.unpack_from("<BBHHBBB", m)
        assert t == tid and hl1 == hl
        self.last = {"hash": hid, "dhgroup": gid}
        if self.ctrl_secret:
            kc = transform(self.ctrl_secret, self.subnqn)
            want = response(hid, kc, c2, s2, tid, True, self.subnqn, self.hostnqn, sess)
            if not rvalid or m[16:16 + hl] != want:
                auth_send(c, struct.pack("<BBHHBB", 0, 0xF0, 0, tid, 1, FAIL_FAILED))
                raise AuthFailed("controller", reason=FAIL_FAILED)
            st = auth_send(c, struct.pack("<BBHH", 1, 4, 0, tid) + bytes(10))
            if st:
                raise AuthFailed("success2", status=st)
        return self.last


def connect_admin(port: int, host: Host, kato: int = 0):
    """Connect an admin queue as host.hostnqn; returns (conn, cntlid, connect dw0)."""
    c = wire.Conn("127.0.0.1", port)
    c.icreq()
    st, dw0, _, _ = c.connect(host.subnqn, kato=kato, hostnqn=host.hostnqn)
    if st:
        raise AuthFailed("connect", status=st)
    return c, dw0 & 0xFFFF, dw0


def connect_io(port: int, host: Host, cntlid: int, qid: int = 1):
    c = wire.Conn("127.0.0.1", port)
    c.icreq()
    st, dw0, _, _ = c.connect(host.subnqn, qid=qid, cntlid=cntlid, hostnqn=host.hostnqn,
                              sqsize=31)
    if st:
        raise AuthFailed("connect", status=st)
    return c, dw0


def hash_id_of(name: str) -> int:
    return {"sha256": 1, "sha384": 2, "sha512": 3}[name]


def group_id_of(name: str) -> int:
    return {"null": 0, "ffdhe2048": 1, "ffdhe3072": 2, "ffdhe4096": 3, "ffdhe6144": 4,
            "ffdhe8192": 5}[name]
