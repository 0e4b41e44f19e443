"""Command-sequence fuzzer for the NVMe/TCP target: random command fields
(opcodes incl. vendor-specific and reserved ones, PSDT and fused bits, SGL
descriptor types, lengths and offsets, NSIDs, CDWs, in-capsule data or not)
sent in pipelined batches on an admin and an I/O queue, each R2T answered
with the H2CData a host would send. Every command must get exactly one
completion within a deadline, whatever came before it; a stuck command (or a
second completion, or a connection the target drops) raises `Stuck` with the
sequence that led to it, replayable with `run`.

A sequence is `{"opts": {...}, "batches": [[cmd, ...], ...]}`: opts are the
queues' ICReq choices (hdgst, ddgst, hpda) and `pre`, commands sent on the
admin queue before its Connect; a cmd is `wire.sqe` keyword
arguments plus `q` ("admin" or "io"), `icd` (in-capsule data bytes), `pad`
(bytes between the capsule header and its data) and `h2c` (how many H2CData
PDUs answer an R2T).
"""

from __future__ import annotations

import random
import selectors
import struct
import time
from typing import Dict, List, Optional

from . import wire

ADMIN_OPC = [0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x08, 0x09, 0x0A, 0x0C, 0x0D, 0x10, 0x11,
             0x14, 0x15, 0x18, 0x19, 0x1A, 0x1C, 0x1D, 0x20, 0x24, 0x7C, 0x7F, 0x80, 0x81, 0x82,
             0x84, 0x86, 0xC0, 0xC1, 0xC2, 0xC5, 0xDC, 0xDD, 0xDE, 0xDF, 0xFF]
IO_OPC = [0x00, 0x01, 0x02, 0x04, 0x05, 0x08, 0x09, 0x0C, 0x0D, 0x0E, 0x11, 0x15, 0x19, 0x1D,
          0x30, 0x31, 0x32, 0x7F, 0x80, 0x81, 0x82, 0x83, 0xFF]
SGL_TYPES = [0x5A] * 6 + [0x01] * 4 + [0x00, 0x02, 0x0A, 0x20, 0x30, 0x50, 0x5B, 0x5F, 0x41, 0xFF]
SGL_LENS = [0, 0, 1, 16, 512, 1024, 4096, 4096, 8192, 8193, 65536, 1 << 20, (1 << 20) + 1,
            0xFFFFFFFF]
NSIDS = [1, 1, 1, 0, 2, 0xFFFFFFFF, 0xFFFFFFFE, 257]
FCTYPES = [0x00, 0x01, 0x04, 0x05, 0x06, 0x09, 0x0C, 0x7F, 0xFF]  # no 0x08: Disconnect ends it
ICDSZ = 8192
CC_EN = 1 | 6 << 16 | 4 << 20
NBLOCKS = (64 << 20) // 4096  # namespace 1 of the test target: 64 MiB, 4 KiB blocks
_META = ("q", "icd", "pad", "h2c", "status")


class Stuck(AssertionError):
    pass


def _cdw(rng: random.Random) -> int:
    return rng.choice([0, 0, 1, 0xFFFFFFFF, rng.randrange(1 << 32), rng.randrange(256),
                       rng.randrange(1 << 16) << 16])


def _rw(rng: random.Random) -> dict:
    """A well-formed read or write of namespace 1 (the traffic the odd ones meet)."""
    nlb = rng.choice([1, 1, 2, 8, 64, 256])
    opc = rng.choice([0x01, 0x02])
    ln = nlb * 4096
    ic = opc == 0x01 and ln <= ICDSZ and rng.random() < 0.5
    return dict(q="io", opc=opc, nsid=1, cdw10=rng.randrange(NBLOCKS - nlb), cdw12=nlb - 1,
                sgl_len=ln, sgl_type=0x01 if ic else 0x5A, icd=ln if ic else 0,
                h2c=rng.randint(1, 3))


def gen_cmd(rng: random.Random, q: str) -> dict:
    if q == "io" and rng.random() < 0.3:
        return _rw(rng)
    if q == "admin" and rng.random() < 0.05:  # a valid AER: parked until an event or Abort
        return dict(q=q, opc=0x0C, sgl_type=0x5A)
    opc = rng.choice(ADMIN_OPC if q == "admin" else IO_OPC) if rng.random() < 0.7 \
        else rng.randrange(256)
    psdt = rng.choice([1, 1, 1, 1, 2, 2, 0, 3])
    fuse = rng.choice([0] * 12 + [1, 2, 3])
    flags = psdt << 6 | fuse | (rng.randrange(4) << 2 if rng.random() < 0.1 else 0)
    f = dict(q=q, opc=opc, flags=flags,
             nsid=rng.choice(NSIDS) if rng.random() < 0.9 else rng.randrange(1 << 32))
    for k in ("cdw10", "cdw11", "cdw12", "cdw13", "cdw14", "cdw15"):
        v = _cdw(rng)
        if v:
            f[k] = v
    if opc == 0x7F:
        f["nsid"] = rng.choice(FCTYPES)
        if f["nsid"] == 0x00 and rng.random() < 0.8:  # Property Set CC: mostly enabled
            f["cdw11"] = 0x14
            f["cdw12"] = rng.choice([CC_EN] * 4 + [0, CC_EN | 1 << 14, CC_EN | 2 << 14])
    if q == "admin" and opc == 0x09 and (f.get("cdw10", 0) & 0xFF) == 0x0F:
        f["cdw11"] = 0  # a short keep-alive timeout would tear the controller down on purpose
    t = rng.choice(SGL_TYPES) if rng.random() < 0.95 else rng.randrange(256)
    ln = rng.choice(SGL_LENS) if rng.random() < 0.8 else rng.randrange(1 << 14)
    f["sgl_type"], f["sgl_len"] = t, ln
    if rng.random() < 0.15:
        f["sgl_addr"] = rng.choice([1, 4096, 1 << 40, rng.randrange(1 << 64)])
    if t == 0x01 and rng.random() < 0.8:
        f["icd"] = min(ln, ICDSZ)
    elif rng.random() < 0.1:
        f["icd"] = rng.choice([1, 512, 4096, ICDSZ])
    if f.get("icd") and rng.random() < 0.2:
        f["pad"] = rng.choice([1, 4, 56, 128])
    f["h2c"] = rng.randint(1, 3)
    return f


def gen_sequence(rng: random.Random, batches: int) -> dict:
    opts = {}
    if rng.random() < 0.3:
        opts = {"hdgst": rng.random() < 0.5, "ddgst": rng.random() < 0.5,
                "hpda": rng.choice([0, 0, 1, 7, 31])}
    if rng.random() < 0.2:  # commands before the Connect: each answered too
        opts["pre"] = [gen_cmd(rng, "admin") for _ in range(rng.randint(1, 8))]
    seq = []
    for _ in range(batches):
        qs = rng.choice([["admin"], ["io"], ["io"], ["admin", "io"]])
        n = rng.choice([1, 1, 2, 4, 8, 16])
        b = [gen_cmd(rng, rng.choice(qs)) for _ in range(n)]
        if rng.random() < 0.1:  # a controller reset or shutdown, or back to enabled
            b.insert(rng.randrange(len(b) + 1), dict(
                q="admin", opc=0x7F, nsid=0x00, cdw11=0x14, sgl_type=0x5A,
                cdw12=rng.choice([0, CC_EN, CC_EN, CC_EN | 1 << 14])))
        seq.append(b)
    return {"opts": opts, "batches": seq}


def _payload(f: dict, n: int) -> bytes:
    return random.Random(f.get("cdw10", 0) ^ n).randbytes(n)


def _aer_parkable(f: dict) -> bool:
    """An AER the target may keep without completion (until an event or an
    Abort): one whose capsule is valid."""
    fl = f.get("flags", 0x40)
    return (f["q"] == "admin" and f["opc"] == 0x0C and fl >> 6 in (1, 2) and not fl & 3
            and not f.get("icd") and not f.get("sgl_len"))


class _Queue:
    def __init__(self, name: str, conn: wire.Conn):
        self.name = name
        self.c = conn
        self.c.s.setblocking(False)
        self.rx = bytearray()
        self.cid = 0
        self.pending: Dict[int, List[dict]] = {}  # cid -> commands with that cid in flight

    def next_cid(self, reuse: bool) -> int:
        busy = [c for c, fs in self.pending.items() if not any(_aer_parkable(f) for f in fs)]
        if reuse and busy:
            return busy[0]
        self.cid = (self.cid + 1) & 0xFFFF
        while self.cid in self.pending:
            self.cid = (self.cid + 1) & 0xFFFF
        return self.cid

    def send(self, b: bytes):
        self.c.s.setblocking(True)
        try:
            self.c.s.sendall(b)
        finally:
            self.c.s.setblocking(False)

    def pdus(self):
        """Whole PDUs parsed out of rx: (type, flags, header after the CH, data)."""
        while len(self.rx) >= 8:
            t, fl, hlen, pdo, plen = struct.unpack_from("<BBBBI", self.rx)
            if len(self.rx) < plen:
                return
            raw = bytes(self.rx[:plen])
            del self.rx[:plen]
            data = raw[pdo:plen - (4 if fl & wire.F_DDGST else 0)] if pdo else b""
            yield t, fl, raw[8:hlen], data


def _session(port: int, nqn: str, opts: dict, qid: int = 0, cntlid: int = 0xFFFF,
             pre=None) -> wire.Conn:
    c = wire.Conn("127.0.0.1", port)
    c.icreq(opts.get("hdgst", False), opts.get("ddgst", False), opts.get("hpda", 0))
    if pre:
        pre(c)
    st, dw0, _, _ = c.connect(nqn, qid=qid, cntlid=cntlid, sqsize=31 if qid == 0 else 127)
    assert st == 0, hex(st)
    if qid == 0:
        c.enable()
        c.cntlid = dw0 & 0xFFFF
    return c


class Runner:
    def __init__(self, port: int, nqn: str, opts: Optional[dict] = None, deadline: float = 5.0):
        self.deadline = deadline
        opts = opts or {}
        self.log: List[List[dict]] = []
        self.opts = opts
        self.q: Dict[str, _Queue] = {}
        a = _session(port, nqn, opts, pre=self._pre if opts.get("pre") else None)
        io = _session(port, nqn, opts, qid=1, cntlid=a.cntlid)
        self.q = {"admin": _Queue("admin", a), "io": _Queue("io", io)}
        self.sel = selectors.DefaultSelector()
        for q in self.q.values():
            self.sel.register(q.c.s, selectors.EVENT_READ, q)

    def _pre(self, c: wire.Conn):
        """The opts' commands on the admin queue before its Connect."""
        self.q = {"admin": _Queue("admin", c)}
        self.sel = selectors.DefaultSelector()
        self.sel.register(c.s, selectors.EVENT_READ, self.q["admin"])
        try:
            self.batch([dict(f, q="admin") for f in self.opts["pre"]], log=False)
        finally:
            self.sel.close()
        assert not self.q["admin"].rx, "bytes after the pre-Connect completions"
        self.q["admin"].c.s.settimeout(self.deadline)
        c.cid = self.q["admin"].cid

    def close(self):
        self.sel.close()
        for q in self.q.values():
            q.c.close()

    def _fail(self, why: str):
        out = [f for q in self.q.values() for fs in q.pending.values() for f in fs]
        raise Stuck(f"{why}\nstill waiting: {out!r}\n"
                    f"sequence: {{'opts': {self.opts!r}, 'batches': {self.log!r}}}")

    def _complete(self, q: _Queue, cid: int, status: int, what: str):
        fs = q.pending.get(cid)
        if not fs:
            self._fail(f"{q.name} queue: {what} for cid {cid}, which has no command in flight "
                       f"(a second completion?)")
        # With a cid reused, a parked AER is the least likely owner of a completion.
        i = next((i for i, x in enumerate(fs) if not _aer_parkable(x)), 0)
        fs.pop(i)["status"] = status
        if not fs:
            del q.pending[cid]

    def _h2c(self, q: _Queue, cid: int, ttag: int, off: int, ln: int):
        fs = [f for f in q.pending.get(cid, ()) if f.get("sgl_len")]
        if not fs:
            self._fail(f"{q.name} queue: R2T for cid {cid}, which wants no data")
        f = fs[0]
        data = _payload(f, off + ln)[off:]
        n = max(1, min(f.get("h2c", 1), ln // 512 or 1))
        step = -(-ln // n)
        out = []
        for i in range(0, ln, step):
            k = min(step, ln - i)
            out.append(q.c.pdu(wire.H2C_DATA, struct.pack("<HHIII", cid, ttag, off + i, k, 0),
                               data[i:i + k], flags=wire.F_LAST if i + k >= ln else 0))
        q.send(b"".join(out))

    def _on_pdu(self, q: _Queue, t: int, fl: int, hdr: bytes, data: bytes):
        if t == wire.RSP:
            _, _, _, _, cid, status = struct.unpack_from("<IIHHHH", hdr)
            self._complete(q, cid, status >> 1, "response")
        elif t == wire.C2H_DATA:
            cid, _, off, ln = struct.unpack_from("<HHII", hdr)
            if cid not in q.pending:
                self._fail(f"{q.name} queue: C2HData for cid {cid}, not in flight")
            if fl & wire.F_SUCCESS:
                self._complete(q, cid, 0, "C2HData with SUCCESS")
        elif t == wire.R2T:
            self._h2c(q, *struct.unpack_from("<HHII", hdr))
        elif t == wire.C2H_TERM:
            self._fail(f"{q.name} queue: the target terminated the connection "
                       f"(FES {struct.unpack_from('<H', hdr)[0]})")
        else:
            self._fail(f"{q.name} queue: unexpected PDU type {t}")

    def _pump(self, done) -> None:
        until = time.monotonic() + self.deadline
        while not done():
            left = until - time.monotonic()
            if left <= 0:
                self._fail(f"no completion within {self.deadline} s")
            for key, _ in self.sel.select(min(left, 0.2)):
                q = key.data
                try:
                    b = q.c.s.recv(1 << 20)
                except BlockingIOError:
                    continue
                except OSError as e:
                    self._fail(f"{q.name} queue: connection error {e!r}")
                if not b:
                    self._fail(f"{q.name} queue: the target closed the connection")
                q.rx += b
                for pdu in q.pdus():
                    self._on_pdu(q, *pdu)

    def _waiting(self, parked_ok: bool) -> int:
        return sum(1 for q in self.q.values() for fs in q.pending.values() for f in fs
                   if not (parked_ok and _aer_parkable(f)))

    def _capsule(self, q: _Queue, f: dict) -> bytes:
        fields = {k: v for k, v in f.items() if k not in _META}
        icd = _payload(f, f["icd"]) if f.get("icd") else b""
        p = q.c.pdu(wire.CMD, wire.sqe(**fields), icd)
        if icd and f.get("pad"):  # data at a larger PDO: pad bytes after the header
            hl = 72 + (4 if q.c.hdgst else 0)
            ch = bytearray(p[:72])
            ch[3] = hl + f["pad"]
            struct.pack_into("<I", ch, 4, len(p) + f["pad"])
            dg = struct.pack("<I", wire.crc32c(bytes(ch))) if q.c.hdgst else b""
            p = bytes(ch) + dg + bytes(f["pad"]) + p[hl:]
        return p

    def batch(self, cmds: List[dict], reuse: Optional[random.Random] = None,
              log: bool = True) -> None:
        out: Dict[str, list] = {"admin": [], "io": []}
        sent = []
        for f in cmds:
            f = dict(f)
            q = self.q[f["q"]]
            if "cid" not in f:
                f["cid"] = q.next_cid(reuse is not None and reuse.random() < 0.1
                                      and not f.get("sgl_len"))
            q.pending.setdefault(f["cid"], []).append(f)
            sent.append(dict(f))
            out[f["q"]].append(self._capsule(q, f))
        if log:
            self.log.append(sent)
        for name, caps in out.items():
            if caps:
                self.q[name].send(b"".join(caps))
        self._pump(lambda: self._waiting(True) == 0)

    def finish(self) -> None:
        """Aborts parked AERs (each must then complete once), then a barrier
        command per queue: any completion nobody waits for is a second one."""
        a = self.q["admin"]
        aers = [f["cid"] for fs in a.pending.values() for f in fs if _aer_parkable(f)]
        if aers:
            self.batch([dict(q="admin", opc=0x08, cdw10=cid << 16, sgl_type=0) for cid in aers])
        self._pump(lambda: self._waiting(False) == 0)
        self.batch([dict(q="admin", opc=0x18, sgl_type=0), dict(q="io", opc=0x00, nsid=1,
                                                                  sgl_type=0)])


def run(port: int, nqn: str, seq: dict, deadline: float = 5.0,
        rng: Optional[random.Random] = None, check=None, between=None) -> None:
    """Replays (or, with rng, fuzzes cid reuse into) a sequence; `between(i)`
    runs before batch i (control-plane events), `check(runner)` before the
    connections close."""
    r = Runner(port, nqn, seq.get("opts"), deadline)
    try:
        for i, b in enumerate(seq["batches"]):
            if between:
                between(i)
            r.batch(b, rng)
        r.finish()
        if check:
            check(r)
    finally:
        r.close()
