"""Hostile initiators: malformed and mutated PDUs over many connections while
a well-behaved host runs verified I/O. The target must never crash, must
close (or answer with an error status) each bad connection, and the good
host must see no error."""

import os
import random
import socket
import struct
import threading
import time

import pytest

from srrs.ffi.binding import BenchOpts
from srrs.nvmf.target import NvmfHost

from . import wire
from .conftest import NQN

pytestmark = pytest.mark.side

PDUS = int(os.environ.get("SRRS_NVMF_FUZZ_PDUS", "100000"))
WORKERS = 4


def _drain(c: wire.Conn, timeout: float = 1.0) -> str:
    """Reads until the target closes; 'closed' or 'open' (timed out)."""
    c.s.settimeout(timeout)
    try:
        while True:
            b = c.s.recv(65536)
            if not b:
                return "closed"
    except socket.timeout:
        return "open"
    except OSError:
        return "closed"


def _mutate(rng: random.Random, b: bytes) -> bytes:
    b = bytearray(b)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(b))
        b[i] = rng.choice([0, 0xFF, rng.randrange(256), b[i] ^ (1 << rng.randrange(8))])
    return bytes(b)


def _fatal_pdu(rng: random.Random, c: wire.Conn, cid: int, kinds: list) -> bytes:
    """One PDU of the kinds that must end the connection (kind 11, a mutated
    capsule, may also be a valid command that fails with a status)."""
    k = rng.randrange(12)
    kinds.append(k)
    if k == 0:  # unknown / controller-to-host types
        return c.pdu(rng.choice([1, 3, 5, 7, 8, 9, 10, 0x7F, 0xFF]), bytes(16))
    if k == 1:  # header length that disagrees with the type
        p = bytearray(c.pdu(wire.CMD, wire.sqe(0x02, cid, 1, sgl_len=4096)))
        p[2] = rng.choice([0, 8, 24, 71, 73, 128, 255])
        return bytes(p)
    if k == 2:  # plen shorter than the header / absurdly long
        p = bytearray(c.pdu(wire.CMD, wire.sqe(0x02, cid, 1, sgl_len=4096)))
        struct.pack_into("<I", p, 4, rng.choice([0, 8, 71, 0xFFFFFFFF, 0x7FFFFFFF]))
        return bytes(p)
    if k == 3:  # H2CData with an unknown tag
        return c.pdu(wire.H2C_DATA, struct.pack("<HHIII", cid, rng.randrange(1, 65536), 0, 512, 0),
                     bytes(512), flags=wire.F_LAST)
    if k == 4:  # H2CData for a command that got no R2T (tag of a free slot)
        return c.pdu(wire.H2C_DATA, struct.pack("<HHIII", cid, rng.randrange(0, 4), 0, 512, 0),
                     bytes(512))
    if k == 5:  # in-capsule data above the limit
        return c.pdu(wire.CMD, wire.sqe(0x01, cid, 1, cdw12=3, sgl_len=16384, sgl_type=1),
                     bytes(16384))
    if k == 6:  # bad header digest / digest flag without negotiation
        p = bytearray(c.pdu(wire.CMD, wire.sqe(0x18, cid), hdgst=True))
        return bytes(p)
    if k == 7:  # pdo pointing into the header
        p = bytearray(c.pdu(wire.CMD, wire.sqe(0x01, cid, 1, sgl_len=4096, sgl_type=1),
                            bytes(4096)))
        p[3] = rng.choice([0, 8, 40, 0xFF])  # (pad <= 128 would be legal)
        return bytes(p)
    if k == 8:  # a second ICReq
        return struct.pack("<BBBBI", 0, 0, 128, 0, 128) + bytes(120)
    if k == 9:  # data digest flag set without negotiation
        p = bytearray(c.pdu(wire.CMD, wire.sqe(0x01, cid, 1, sgl_len=4096, sgl_type=1),
                            bytes(4096)))
        p[1] |= wire.F_DDGST
        return bytes(p)
    if k == 10:  # random garbage
        return bytes(rng.randrange(256) for _ in range(rng.randint(8, 200)))
    return _mutate(rng, c.pdu(wire.CMD, wire.sqe(rng.randrange(256), cid, rng.randrange(4),
                                                  sgl_len=rng.randrange(8192))))


def _bad_command(rng: random.Random, cid: int, nblocks: int):
    """A capsule that must fail with a status (not close): (sqe, in-capsule data, read_len)."""
    k = rng.randrange(10)
    if k == 0:  # LBA out of range
        slba = rng.choice([nblocks, nblocks - 1, 2**63, 2**64 - 1])
        return wire.sqe(0x02, cid, 1, cdw10=slba & 0xFFFFFFFF, cdw11=slba >> 32, cdw12=1,
                        sgl_len=8192), b"", 8192
    if k == 1:  # bad nsid
        return wire.sqe(0x02, cid, rng.choice([0, 2, 33, 0xFFFFFFFF]), cdw12=0,
                        sgl_len=4096), b"", 4096
    if k == 2:  # SGL length disagrees with NLB
        return wire.sqe(0x02, cid, 1, cdw12=1, sgl_len=4096), b"", 4096
    if k == 3:  # bad SGL type
        return wire.sqe(0x02, cid, 1, cdw12=0, sgl_len=4096,
                        sgl_type=rng.choice([0x00, 0x02, 0x20, 0x5B, 0xFF])), b"", 0
    if k == 4:  # in-capsule SGL on a read / offset past the data
        return wire.sqe(0x01, cid, 1, cdw12=0, sgl_len=4096, sgl_type=1,
                        sgl_addr=rng.choice([1, 4096, 2**40])), bytes(4096), 0
    if k == 5:  # unknown opcodes
        return wire.sqe(rng.choice([0x03, 0x05, 0x7E, 0x80, 0xFF]), cid, 1), b"", 0
    if k == 6:  # write zeroes out of range
        return wire.sqe(0x08, cid, 1, cdw10=nblocks - 1, cdw12=5), b"", 0
    if k == 7:  # DSM with a short range list / ranges out of the namespace
        rng_list = struct.pack("<IIQ", 0, 8, nblocks - 2)
        return wire.sqe(0x09, cid, 1, cdw10=rng.choice([0, 5]), cdw11=4, sgl_len=len(rng_list),
                        sgl_type=1), rng_list, 0
    if k == 8:  # fabrics on an I/O queue / second connect
        return wire.sqe(0x7F, cid, rng.choice([0x00, 0x01, 0x04, 0x33]), sgl_len=0), b"", 0
    return wire.sqe(0x02, cid, 1, cdw12=0xFFFF, sgl_len=(0x10000) * 4096 & 0xFFFFFFFF), b"", 0


class Counter:
    def __init__(self):
        self.lock = threading.Lock()
        self.pdus = 0
        self.closed = 0
        self.statuses = 0

    def add(self, pdus=0, closed=0, statuses=0):
        with self.lock:
            self.pdus += pdus
            self.closed += closed
            self.statuses += statuses


def _worker(seed: int, port: int, cntlid_box: list, stop: threading.Event, cnt: Counter,
            quota: int, errors: list):
    rng = random.Random(seed)
    nblocks = (64 << 20) // 4096
    sent = 0
    try:
        while sent < quota and not stop.is_set():
            mode = rng.randrange(10)
            if mode < 2:
                # Connected I/O queue: a burst of bad commands, each answered with an error.
                a, cntlid = wire.admin_session("127.0.0.1", port, NQN)
                io = wire.io_session("127.0.0.1", port, NQN, cntlid)
                n = 0
                for _ in range(rng.randint(2, 20)):
                    # pipelined: up to 100 capsules in one send, then their answers
                    batch = rng.randint(1, 100)
                    out = b"".join(io.pdu(wire.CMD, s, data) for s, data, _ in
                                   (_bad_command(rng, cid, nblocks) for cid in range(batch)))
                    io.send(out)
                    for _ in range(batch):
                        t, f, hdr, _ = io.recv_pdu()
                        assert t == wire.RSP, f"PDU type {t} for a bad command"
                        status = struct.unpack_from("<H", hdr, 14)[0] >> 1
                        assert status != 0, "bad command accepted"
                    n += batch
                # data-digest error mid-transfer: negotiated digests, corrupted payload
                cnt.add(pdus=n, statuses=n)
                sent += n
                # I/O on a queue whose controller is torn down (admin gone)
                a.close()
                time.sleep(0.01)
                try:
                    io.s.settimeout(2)
                    for _ in range(3):
                        io.send(io.pdu(wire.CMD, wire.sqe(0x02, 1, 1, cdw12=0, sgl_len=4096)))
                        sent += 1
                    cnt.add(pdus=3)
                    _drain(io, 2)
                except OSError:
                    pass
                cnt.add(closed=1)
                io.close()
            elif mode < 4:
                # Digests on; corrupt one data digest of an H2CData mid-transfer.
                c = wire.Conn("127.0.0.1", port)
                c.icreq(hdgst=True, ddgst=True)
                st, dw0, _, _ = c.connect(NQN)
                assert st == 0
                c.enable()
                cntlid = dw0 & 0xFFFF
                io = wire.Conn("127.0.0.1", port)
                io.icreq(hdgst=True, ddgst=True)
                assert io.connect(NQN, qid=1, cntlid=cntlid, sqsize=127)[0] == 0
                for _ in range(rng.randint(5, 40)):
                    cid = io.next_cid()
                    payload = bytes(rng.randrange(256) for _ in range(64)) * 256  # 16 KiB
                    io.send(io.pdu(wire.CMD, wire.sqe(0x01, cid, 1, cdw10=rng.randrange(1000),
                                                      cdw12=3, sgl_len=len(payload))))
                    t, f, hdr, _ = io.recv_pdu()
                    assert t == wire.R2T
                    cccid, ttag, off, ln = struct.unpack_from("<HHII", hdr)
                    half = ln // 2
                    if rng.random() < 0.1:
                        # data offset / length outside the command's range: fatal
                        boff, blen = rng.choice([(ln, 512), (half, ln), (4096, 512), (0, ln + 4)])
                        io.send(io.pdu(wire.H2C_DATA,
                                       struct.pack("<HHIII", cid, ttag, boff, blen, 0),
                                       bytes(blen)))
                        cnt.add(pdus=2, closed=1)
                        sent += 2
                        if _drain(io, 2.0) != "closed":
                            errors.append(f"H2CData {boff}+{blen} of {ln} did not close (seed {seed})")
                        break
                    io.send(io.pdu(wire.H2C_DATA, struct.pack("<HHIII", cid, ttag, 0, half, 0),
                                   payload[:half]))
                    bad = bytearray(io.pdu(wire.H2C_DATA,
                                           struct.pack("<HHIII", cid, ttag, half, ln - half, 0),
                                           payload[half:], flags=wire.F_LAST))
                    bad[-1] ^= 0x5A  # data digest
                    io.send(bytes(bad))
                    st, *_ = io.wait()
                    assert st != 0, "write with a bad data digest succeeded"
                    cnt.add(pdus=3, statuses=1)
                    sent += 3
                for x in (c, io):
                    x.close()
            elif mode < 5:
                # Commands before Connect: each answered with Command Sequence Error.
                c = wire.Conn("127.0.0.1", port)
                c.icreq()
                batch = rng.randint(1, 60)
                out = b"".join(c.pdu(wire.CMD, s, data) for s, data, _ in
                               (_bad_command(rng, cid, nblocks) if rng.random() < 0.5 else
                                (wire.sqe(rng.choice([0x02, 0x06, 0x18, 0x0C]), cid, 1,
                                          sgl_len=4096), b"", 0)
                                for cid in range(batch)))
                c.send(out)
                for _ in range(batch):
                    t, f, hdr, _ = c.recv_pdu()
                    status = struct.unpack_from("<H", hdr, 14)[0] >> 1
                    assert t == wire.RSP and status != 0, f"command before Connect: {t} {status}"
                cnt.add(pdus=batch + 1, statuses=batch)
                sent += batch + 1
                c.close()
            else:
                # Fresh connection, maybe connected, then PDUs that must close it.
                c = wire.Conn("127.0.0.1", port)
                pre = rng.randrange(4)
                if pre == 0:
                    c.send(_mutate(rng, struct.pack("<BBBBI", 0, 0, 128, 0, 128) + bytes(120)))
                    n = 1
                else:
                    c.icreq()
                    n = 1
                    if pre >= 2:
                        assert c.connect(NQN)[0] == 0
                        n += 1
                    kinds = []
                    burst = b"".join(_fatal_pdu(rng, c, rng.randrange(65536), kinds)
                                     for _ in range(rng.randint(1, 8)))
                    try:
                        c.send(burst)
                    except OSError:
                        pass
                    n += len(kinds)
                res = _drain(c, 2.0)
                # A mutated ICReq can still be a valid one (the target then waits), and
                # so can a mutated capsule or garbage that starts like a long PDU.
                if res == "open" and pre != 0 and set(kinds) - {10, 11}:
                    errors.append(f"connection not closed after fatal PDUs {kinds} (seed {seed})")
                cnt.add(pdus=n, closed=1)
                sent += n
                c.close()
    except AssertionError as e:
        errors.append(f"seed {seed}: {e}")
    except (wire.Closed, OSError) as e:
        errors.append(f"seed {seed}: unexpected close: {e!r}")


def test_fuzz_pdus_alongside_verified_io(core, target):
    good = NvmfHost("127.0.0.1", target.port, NQN, queues=2, qsize=64)
    vmap = good.verify_map()
    # Fill a range so reads verify, then run mixed verified I/O while fuzzing.
    span = 16 << 20
    r = good.bench(core, BenchOpts(rw="write", bs=128 * 1024, qd=8, time_s=0,
                                   max_ios=span // (128 * 1024), span=span), reactor=1, vmap=vmap)
    assert r["errors"] == 0
    stop = threading.Event()
    results = []

    def io_loop():
        while not stop.is_set():
            results.append(good.bench(core, BenchOpts(rw="randrw", bs=4096, bs_max=64 * 1024,
                                                      qd=32, time_s=0.5, span=span),
                                      reactor=1, vmap=vmap))

    io_thread = threading.Thread(target=io_loop)
    io_thread.start()
    cnt, errors = Counter(), []
    threads = [threading.Thread(target=_worker,
                                args=(1000 + i, target.port, [], stop, cnt, PDUS // WORKERS,
                                      errors)) for i in range(WORKERS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    stop.set()
    io_thread.join(60)
    elapsed = time.monotonic() - t0
    print(f"fuzz: {cnt.pdus} PDUs, {cnt.statuses} error statuses, {cnt.closed} connections "
          f"closed, {elapsed:.1f} s; good host: {sum(x['ios'] for x in results)} I/Os")
    assert not errors, errors[:5]
    assert cnt.pdus >= PDUS * 0.9
    assert results and all(x["errors"] == 0 and x["verify_errors"] == 0 for x in results), \
        [(x["errors"], x["verify_errors"], x["first_error"]) for x in results]
    assert sum(x["verified_blocks"] for x in results) > 0
    st = target.stats()
    assert st["proto_errors"] > 0
    # the target still serves new hosts
    with NvmfHost("127.0.0.1", target.port, NQN) as h2:
        r = h2.bench(core, BenchOpts(rw="randread", qd=4, time_s=0.2), reactor=0)
        assert r["errors"] == 0
    good.close()
    vmap.close()
