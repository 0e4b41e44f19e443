"""Hostile front ends: malformed vhost-user messages and malicious rings,
through the test client. The process must survive, a bad device must stop
(drop the connection) with a reason, and another device serving verified
I/O alongside must see no error.

SRRS_FUZZ_CASES (default 3000 per test) sets the number of cases; the
acceptance run uses 100000.
"""

import os
import random
import select
import socket
import struct
import sys
import threading
import time

import pytest

from srrs.ffi.binding import BenchOpts, Core, ffi, lib
from srrs.vhost import proto
from srrs.vhost.client import WANT_FEATURES, VhostClient
from srrs.vhost.proto import F_INDIRECT, Req

from .conftest import wait_for

pytestmark = pytest.mark.side

CASES = int(os.environ.get("SRRS_FUZZ_CASES", "3000"))

DESC = struct.Struct("<QIHH")
NEXT, WRITE, INDIRECT = 1, 2, 4
QS = 16


@pytest.fixture(autouse=True)
def _quick_gil_handoff():
    """Front ends and device threads are Python threads of one process, a
    message each way per step: with the default 5 ms switch interval, a thread
    woken by a reply waits up to that long for the interpreter while another
    runs Python. 0.2 ms makes the ring fuzz ~40 % faster (same cases)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    yield
    sys.setswitchinterval(old)


class Bystander:
    """A second device with verified random I/O the whole time: bursts of
    20 ms every 50 ms. Flat out, its client's and the back end's reactors would
    poll two cores busy, and the fuzzing front end and the device threads
    would wait for a core at every message (3-4 ms a case instead of well
    under one)."""

    def __init__(self, svc, bench_core, tmp_path):
        svc.core.bdev_create_malloc("ok0", 16 << 20, 4096)
        self.sock = str(tmp_path / "ok.sock")
        svc.create("ok", self.sock, "ok0", num_queues=1)
        self.core = bench_core
        self.results = []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        with VhostClient(self.sock) as cl:
            while not self.stop.is_set():
                self.results.append(cl.bench(self.core, BenchOpts(rw="randrw", qd=16, time_s=0.02),
                                             verify=True))
                self.stop.wait(0.03)

    def check(self):
        self.stop.set()
        self.t.join(30)
        assert self.results
        for r in self.results:
            assert r["errors"] == 0 and r["verify_errors"] == 0, r


def _peer_closed(cl, timeout):
    if not _readable(cl.sock, timeout):
        return False
    try:
        return cl.sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


# ---- ring fuzz -----------------------------------------------------------------------------

def _ring_case(rng, cl):
    """(raw descriptors, heads, idx_delta, scratch, must_break)."""
    g0, size = cl.mem[2], cl.mem[1]
    s0 = cl.scratch_gpa
    hdr = s0                    # a request header at the start of scratch
    data = s0 + 4096
    status = s0 + 64 * 1024 - 1
    scratch = bytearray(64 * 1024)
    struct.pack_into("<IIQ", scratch, 0, rng.choice([0, 1, 4, 8, 11, 13, 77]), 0,
                     rng.randrange(0, 1 << 16))
    bad_addrs = [0, g0 - 4096, g0 + size, g0 + size - 8, (1 << 64) - 16, rng.randrange(1 << 64),
                 g0 - 1]
    kind = rng.randrange(12)
    d = [DESC.pack(0, 0, 0, 0)] * QS
    heads, delta, must_break = [0], None, True
    if kind == 0:     # head out of range
        heads = [rng.randrange(QS, 1 << 16)]
    elif kind == 1:   # avail idx jumps past the ring
        heads, delta = [], rng.randrange(QS + 1, 1 << 16)
    elif kind == 2:   # buffer outside guest memory
        a = rng.choice(bad_addrs)
        n = rng.choice([4096, 1, 1 << 20]) if a != g0 + size - 8 else rng.choice([9, 4096])
        d[0] = DESC.pack(hdr, 16, NEXT, 1)
        d[1] = DESC.pack(a, n, NEXT | WRITE, 2)
        d[2] = DESC.pack(status, 1, WRITE, 0)
    elif kind == 3:   # loop
        n = rng.randrange(1, QS)
        for i in range(n):
            d[i] = DESC.pack(hdr, 16, NEXT, (i + 1) % n)
    elif kind == 4:   # next index out of range
        d[0] = DESC.pack(hdr, 16, NEXT, rng.randrange(QS, 1 << 16))
    elif kind == 5:   # indirect table: bad length / outside / nested / with NEXT / loop
        sub = rng.randrange(5)
        if sub == 0:
            d[0] = DESC.pack(s0 + 8192, rng.choice([0, 15, 17, 33]), INDIRECT, 0)
        elif sub == 1:
            d[0] = DESC.pack(rng.choice(bad_addrs), 48, INDIRECT, 0)
        elif sub == 2:
            struct.pack_into("<QIHH", scratch, 8192, s0 + 8192, 16, INDIRECT, 0)
            d[0] = DESC.pack(s0 + 8192, 16, INDIRECT, 0)
        elif sub == 3:
            d[0] = DESC.pack(s0 + 8192, 48, INDIRECT | NEXT, 1)
        else:
            for i in range(3):
                struct.pack_into("<QIHH", scratch, 8192 + 16 * i, hdr, 16, NEXT, (i + 1) % 3)
            d[0] = DESC.pack(s0 + 8192, 48, INDIRECT, 0)
    elif kind == 6:   # lengths that overflow
        for i in range(3):
            d[i] = DESC.pack(hdr, 0xFFFFFFFF, NEXT | WRITE, i + 1)
        d[3] = DESC.pack(status, 1, WRITE, 0)
    elif kind == 7:   # no device-writable status byte / readable after writable
        if rng.randrange(2):
            d[0] = DESC.pack(hdr, 16, 0, 0)
        else:
            d[0] = DESC.pack(status, 1, NEXT | WRITE, 1)
            d[1] = DESC.pack(hdr, 16, 0, 0)
    elif kind == 8:   # a chain longer than the ring with distinct indices
        for i in range(QS):
            d[i] = DESC.pack(hdr, 16, NEXT, i + 1 if i + 1 < QS else QS)
    elif kind == 9:   # well-formed but odd requests: must complete, not break
        must_break = False
        n = rng.choice([0, 512, 4096, 8192, 4095])
        dw = rng.randrange(2)
        d[0] = DESC.pack(hdr, 16, NEXT, 1)
        if n:
            d[1] = DESC.pack(data, n, NEXT | (WRITE if dw else 0), 2)
            d[2] = DESC.pack(status, 1, WRITE, 0)
        else:
            d[0] = DESC.pack(hdr, 16, NEXT, 2)
            d[2] = DESC.pack(status, 1, WRITE, 0)
    elif kind == 10:  # random garbage descriptors and heads: anything but a crash
        must_break = None
        d = [DESC.pack(rng.choice([rng.randrange(1 << 64), g0 + rng.randrange(size)]),
                       rng.choice([rng.randrange(1 << 32), rng.randrange(1 << 13)]),
                       rng.randrange(8), rng.randrange(QS + 2)) for _ in range(QS)]
        heads = [rng.randrange(QS + 1) for _ in range(rng.randrange(1, 4))]
    else:             # valid descriptors, valid indirect table in scratch with random entries
        must_break = None
        for i in range(rng.randrange(1, 8)):
            struct.pack_into("<QIHH", scratch, 8192 + 16 * i,
                             rng.choice([hdr, data, status, rng.randrange(1 << 64)]),
                             rng.choice([1, 16, 512, 4096, 1 << 31]), rng.randrange(4),
                             rng.randrange(9))
        d[0] = DESC.pack(s0 + 8192, 16 * rng.randrange(1, 9), INDIRECT, 0)
    return b"".join(d), heads, delta, bytes(scratch), must_break


def _waiter(cl):
    """wait(timeout) -> True when the back end closed the socket; returns early
    when the call eventfd fires (a completion) so a case costs microseconds."""
    ring = ffi.new("struct srrs_vhost_client_ring *")
    lib.srrs_vhost_client_ring(cl.ptr, 0, ring)
    callfd = ring.callfd
    p = select.poll()
    p.register(cl.sock, select.POLLIN)
    if callfd >= 0:
        p.register(callfd, select.POLLIN)

    def wait(timeout):
        for fd, _ in p.poll(timeout * 1000):
            if fd == callfd:
                try:
                    os.eventfd_read(callfd)
                except OSError:
                    pass
            else:
                return _peer_closed(cl, 0)
        return False
    return wait


def _new_client(sock):
    cl = VhostClient(sock, queue_size=QS, max_inflight=4, max_io=4096, pipeline=True)
    cl.connect()
    return cl


WORKERS = 2   # fuzzing front ends at once, one device each


def _in_parallel(fn, cases):
    """Run fn(worker, n) on WORKERS threads, the cases split between them;
    return the summed tuples; the first failure fails the test."""
    out, errors = [], []

    def run(w):
        try:
            out.append(fn(w, cases // WORKERS + (w < cases % WORKERS)))
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
            errors.append(e)
    ts = [threading.Thread(target=run, args=(w,)) for w in range(WORKERS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    return tuple(map(sum, zip(*out)))


def _fuzz_rings(dev, sock, rng, cases):
    cl = _new_client(sock)
    broke = completed = 0
    try:
        for case in range(cases):
            descs, heads, delta, scratch, must_break = _ring_case(rng, cl)
            used0 = cl.used_idx()
            cl.post_raw(0, descs, heads, delta, scratch)
            n = len(heads) if delta is None else delta
            want = (used0 + n) & 0xFFFF
            closed = False
            end = time.time() + 5
            waiter = _waiter(cl)
            while time.time() < end:
                if cl.used_idx() == want:
                    break
                if waiter(0.002):
                    closed = True
                    break
            else:
                pytest.fail(f"{dev.name} case {case}: neither completed nor stopped the device")
            if not closed and must_break:
                closed = _peer_closed(cl, 2.0)
            if must_break is True:
                assert closed, f"{dev.name} case {case}: a malicious ring did not stop the device"
            if must_break is False:
                assert not closed, f"{dev.name} case {case}: a valid request stopped the " \
                                   f"device: {dev.info()['last_error']}"
            if closed:
                broke += 1
                assert wait_for(lambda: dev.info()["last_error"]), "stopped without a reason"
                cl.close()
                cl = _new_client(sock)
            else:
                completed += 1
    finally:
        cl.close()
    return broke, completed


def test_malicious_rings(svc, bench_core, tmp_path):
    devs = []
    for w in range(WORKERS):
        svc.core.bdev_create_malloc(f"fz{w}", 16 << 20, 4096)
        sock = str(tmp_path / f"fz{w}.sock")
        devs.append((svc.create(f"fz{w}", sock, f"fz{w}"), sock))
    by = Bystander(svc, bench_core, tmp_path)
    broke, completed = _in_parallel(
        lambda w, n: _fuzz_rings(*devs[w], random.Random(1234 + w), n), CASES)
    by.check()
    assert broke + completed == CASES
    assert broke and completed
    # every fuzzed device still serves a good front end
    for _dev, sock in devs:
        with VhostClient(sock) as good:
            good.write(0, b"z" * 4096)
            assert good.read(0, 4096) == b"z" * 4096


# ---- message fuzz ----------------------------------------------------------------------------

def _eventfd():
    return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)


def _bad_message(rng, cl):
    """(request, flags, payload, fds): one malformed or hostile message."""
    mem_fd, mem_size, gpa, ua = cl.mem
    kind = rng.randrange(14)
    V = proto.FLAG_VERSION | proto.FLAG_NEED_REPLY
    if kind == 0:
        known = {int(r) for r in Req}
        req = rng.choice([r for r in range(0, 64) if r not in known] + [0xFFFFFFFF])
        return req, V, bytes(rng.randrange(0, 64)), []
    if kind == 1:   # wrong payload size for a known request
        req = rng.choice(list(Req))
        return req, V, bytes(rng.choice([1, 3, 7, 9, 17, 41, 300])), []
    if kind == 2:   # extra fds
        req = rng.choice([Req.SET_FEATURES, Req.SET_VRING_NUM, Req.GET_FEATURES, Req.SET_VRING_BASE])
        size = {Req.SET_FEATURES: 8, Req.SET_VRING_NUM: 8, Req.GET_FEATURES: 0,
                Req.SET_VRING_BASE: 8}[req]
        return req, V, bytes(size), [_eventfd() for _ in range(rng.randrange(1, 4))]
    if kind == 3:   # missing fd for kick/call/inflight/add_mem_reg
        req = rng.choice([Req.SET_VRING_KICK, Req.SET_VRING_CALL])
        return req, V, proto.U64.pack(0), []
    if kind == 4:   # bad version flags
        return Req.GET_FEATURES, rng.choice([0, 2, 3]), b"", []
    if kind == 5:   # vring index the device does not have
        req = rng.choice([Req.SET_VRING_NUM, Req.SET_VRING_BASE, Req.GET_VRING_BASE,
                          Req.SET_VRING_ENABLE])
        return req, V, proto.VRING_STATE.pack(rng.randrange(1, 300), 1), []
    if kind == 6:   # ring size not a power of two / too big
        return Req.SET_VRING_NUM, V, proto.VRING_STATE.pack(0, rng.choice([0, 3, 100, 2048, 1 << 31])), []
    if kind == 7:   # mem table: too many regions / overlapping / beyond the file / fd mismatch
        sub = rng.randrange(4)
        if sub == 0:
            n = 9
            return Req.SET_MEM_TABLE, V, proto.MEM_HDR.pack(n, 0) + bytes(32 * n), []
        if sub == 1:
            r = proto.MEM_REGION.pack(gpa, mem_size, ua, 0)
            return Req.SET_MEM_TABLE, V, proto.MEM_HDR.pack(2, 0) + r + r, [os.dup(mem_fd), os.dup(mem_fd)]
        if sub == 2:
            r = proto.MEM_REGION.pack(gpa, mem_size * 4, ua, rng.randrange(0, 1 << 40) & ~4095)
            return Req.SET_MEM_TABLE, V, proto.MEM_HDR.pack(1, 0) + r, [os.dup(mem_fd)]
        r = proto.MEM_REGION.pack(gpa, mem_size, ua, 0)
        return Req.SET_MEM_TABLE, V, proto.MEM_HDR.pack(1, 0) + r, []
    if kind == 8:   # ring addresses outside the memory table, then a kick
        return "ring_outside", 0, b"", []
    if kind == 9:   # GET_CONFIG larger than 256 / offset past the end
        off, size = rng.choice([(0, 257), (250, 10), (1 << 31, 4), (0, 1 << 20)])
        return Req.GET_CONFIG, V, proto.CONFIG_HDR.pack(off, min(size, 300), 0) + bytes(min(size, 300)), []
    if kind == 10:  # inflight fd too small / absurd geometry
        return Req.SET_INFLIGHT_FD, V, proto.INFLIGHT.pack(rng.choice([1, 4096, 1 << 40]), 0,
                                                           rng.randrange(0, 80), rng.randrange(0, 5000)), [_eventfd()]
    if kind == 11:  # a kick fd that is not an eventfd
        r, w = os.pipe()
        os.close(w)
        return Req.SET_VRING_KICK, V, proto.U64.pack(0), [r]
    if kind == 12:  # header announcing a huge payload
        return "huge", 0, b"", []
    return "truncated", 0, b"", []


def test_malformed_messages(svc, bench_core, tmp_path):
    svc.core.bdev_create_malloc("fm0", 16 << 20, 4096)
    sock = str(tmp_path / "fm.sock")
    dev = svc.create("fm", sock, "fm0", num_queues=1)
    by = Bystander(svc, bench_core, tmp_path)
    rng = random.Random(99)
    dropped = answered = 0
    for case in range(CASES):
        cl = VhostClient(sock, queue_size=QS, max_inflight=4, max_io=4096, timeout=10,
                         pipeline=True)
        try:
            if rng.randrange(3):
                cl.connect()             # a set-up device …
            else:
                cl.sock.connect(sock)    # … or a fresh connection
                cl.protocol_features = 1 << proto.PF.REPLY_ACK
                cl.call(Req.SET_PROTOCOL_FEATURES, proto.U64.pack(cl.protocol_features))
                m = ffi.new("struct srrs_vhost_client_mem *")
                lib.srrs_vhost_client_mem(cl.ptr, m)
                cl.mem = (m.fd, m.size, m.gpa, m.uaddr)
            req, flags, payload, fds = _bad_message(rng, cl)
            try:
                if req == "ring_outside":
                    cl.call(Req.SET_VRING_NUM, proto.VRING_STATE.pack(0, QS))
                    cl.call(Req.SET_VRING_ADDR, proto.VRING_ADDR.pack(0, 0, 1 << 60, 1 << 61, 1 << 62, 0))
                    efd = _eventfd()
                    proto.send_msg(cl.sock, Req.SET_VRING_KICK, proto.U64.pack(0), fds=[efd])
                    os.close(efd)
                elif req == "huge":
                    cl.sock.sendall(proto.HDR.pack(Req.SET_FEATURES, 1, 1 << 30))
                elif req == "truncated":
                    cl.sock.sendall(proto.HDR.pack(Req.SET_FEATURES, 1, 8) + b"\1\2")
                    cl.sock.shutdown(socket.SHUT_WR)
                else:
                    proto.send_msg(cl.sock, req, payload, flags, fds)
            except OSError:
                pass
            finally:
                proto.close_fds(fds)
            assert _readable(cl.sock, 5), f"case {case}: no reply and no close for {req}"
            try:
                data = cl.sock.recv(4096)
            except OSError:
                data = b""
            if data:
                answered += 1
            else:
                dropped += 1
        finally:
            cl.connected = False
            cl.close()
    by.check()
    assert dropped and answered
    assert wait_for(lambda: dev.info()["state"] == "listening")
    assert dev.info()["last_error"]
    with VhostClient(sock) as good:
        good.write(4096, b"m" * 4096)
        assert good.read(4096, 4096) == b"m" * 4096


def test_queue_index_out_of_range_and_hot_add(svc, bench_core, tmp_path):
    """A vring message for a queue the device does not have drops only that
    connection; a device hot-added meanwhile serves verified I/O."""
    svc.core.bdev_create_malloc("a0", 16 << 20, 4096)
    sock = str(tmp_path / "a.sock")
    dev = svc.create("a", sock, "a0", num_queues=1)
    cl = VhostClient(sock, num_queues=2, features=WANT_FEATURES & ~(1 << F_INDIRECT))
    with pytest.raises((proto.ProtocolError, EOFError, OSError)):
        # the client refuses too (device has 1 queue); force the message
        cl.sock.connect(sock)
        cl.call(Req.SET_VRING_NUM, proto.VRING_STATE.pack(5, 16))
        cl.call(Req.GET_FEATURES, reply=True)
    cl.close()
    assert wait_for(lambda: "queue index 5" in dev.info()["last_error"])
    svc.core.bdev_create_malloc("b0", 16 << 20, 4096)
    sock_b = str(tmp_path / "b.sock")
    svc.create("b", sock_b, "b0", num_queues=2)
    with VhostClient(sock_b, num_queues=2) as cb:
        r = cb.bench(bench_core, BenchOpts(rw="randrw", qd=32, time_s=1), verify=True)
        assert r["errors"] == 0 and r["verify_errors"] == 0
    with VhostClient(sock) as ca:
        assert ca.read(0, 4096) == bytes(4096)


def _readable(sock, timeout):
    p = select.poll()
    p.register(sock, select.POLLIN)
    return bool(p.poll(timeout * 1000))


def _random_sequence_message(rng, cl, efds):
    """A well-framed message with plausible-to-hostile arguments, in any order."""
    mem_fd, mem_size, gpa, ua = cl.mem
    i = rng.choice([0, 0, 0, 1, 2])
    V = proto.FLAG_VERSION | (proto.FLAG_NEED_REPLY if rng.randrange(2) else 0)
    ring = ffi.new("struct srrs_vhost_client_ring *")
    lib.srrs_vhost_client_ring(cl.ptr, 0, ring)
    choices = [
        (Req.GET_FEATURES, b"", []),
        (Req.SET_FEATURES, proto.U64.pack(rng.choice([0, WANT_FEATURES, rng.randrange(1 << 64)])), []),
        (Req.SET_OWNER, b"", []),
        (Req.RESET_OWNER, b"", []),
        (Req.RESET_DEVICE, b"", []),
        (Req.SET_MEM_TABLE, proto.MEM_HDR.pack(1, 0) + proto.MEM_REGION.pack(
            rng.choice([gpa, 0]), rng.choice([mem_size, 4096]), ua, 0), [os.dup(mem_fd)]),
        (Req.ADD_MEM_REG, bytes(8) + proto.MEM_REGION.pack(
            gpa + mem_size * rng.randrange(0, 3), rng.choice([mem_size, 1 << 20]),
            ua + mem_size * rng.randrange(0, 3), 0), [os.dup(mem_fd)]),
        (Req.REM_MEM_REG, bytes(8) + proto.MEM_REGION.pack(gpa, mem_size, ua, 0), []),
        (Req.SET_VRING_NUM, proto.VRING_STATE.pack(i, rng.choice([QS, 1, 1024, 8])), []),
        (Req.SET_VRING_ADDR, proto.VRING_ADDR.pack(i, 0, rng.choice([ring.desc, ua, 0]),
                                                   rng.choice([ring.used, ua + mem_size - 8]),
                                                   rng.choice([ring.avail, ua + 1]), 0), []),
        (Req.SET_VRING_BASE, proto.VRING_STATE.pack(i, rng.randrange(0, 70000)), []),
        (Req.GET_VRING_BASE, proto.VRING_STATE.pack(i, 0), []),
        (Req.SET_VRING_KICK, proto.U64.pack(i), [os.dup(efds[0])]),
        (Req.SET_VRING_KICK, proto.U64.pack(i | proto.VRING_NOFD), []),
        (Req.SET_VRING_CALL, proto.U64.pack(i), [os.dup(efds[1])]),
        (Req.SET_VRING_ERR, proto.U64.pack(i), [os.dup(efds[1])]),
        (Req.SET_VRING_ENABLE, proto.VRING_STATE.pack(i, rng.randrange(0, 2)), []),
        (Req.GET_PROTOCOL_FEATURES, b"", []),
        (Req.SET_PROTOCOL_FEATURES, proto.U64.pack(rng.choice([0, 8, 1 << 12 | 8, 1 << 15 | 9])), []),
        (Req.GET_QUEUE_NUM, b"", []),
        (Req.GET_CONFIG, proto.CONFIG_HDR.pack(0, 60, 0) + bytes(60), []),
        (Req.GET_INFLIGHT_FD, proto.INFLIGHT.pack(0, 0, 1, rng.choice([QS, 1024, 0])), []),
        (Req.GET_MAX_MEM_SLOTS, b"", []),
    ]
    pick = rng.randrange(len(choices))
    for k, (_, _, fds) in enumerate(choices):   # only the chosen message's fds travel
        if k != pick:
            proto.close_fds(fds)
    return choices[pick], V


def test_random_message_sequences(svc, bench_core, tmp_path):
    """Valid-looking messages in random order and with random arguments (starts,
    stops, table changes while rings run): the process survives, the device
    serves a good front end afterwards, the bystander sees no error."""
    svc.core.bdev_create_malloc("sq0", 16 << 20, 4096)
    sock = str(tmp_path / "sq.sock")
    dev = svc.create("sq", sock, "sq0", num_queues=2)
    by = Bystander(svc, bench_core, tmp_path)
    rng = random.Random(7)
    efds = [_eventfd(), _eventfd()]
    cases = min(max(CASES // 10, 50), 500)  # sequences are slow; the 100k cases are above
    try:
        for _case in range(cases):
            cl = VhostClient(sock, queue_size=QS, max_inflight=4, max_io=4096, timeout=15)
            try:
                cl.connect()
                for _ in range(rng.randrange(1, 12)):
                    (req, payload, fds), flags = _random_sequence_message(rng, cl, efds)
                    try:
                        proto.send_msg(cl.sock, req, payload, flags, fds)
                    finally:
                        proto.close_fds(fds)
                    # drain whatever comes back (replies, acks) or notice the close
                    while _readable(cl.sock, 0.005):
                        try:
                            rq, _, _, rfds = proto.recv_msg(cl.sock)
                            proto.close_fds(rfds)
                        except (EOFError, OSError, proto.ProtocolError):
                            raise StopIteration from None
                    if rng.randrange(4) == 0:
                        cl.post_raw(0, b"", [rng.randrange(QS)], None, b"")
            except StopIteration:
                pass
            except (OSError, EOFError, proto.ProtocolError):
                pass
            finally:
                cl.connected = False
                cl.close()
    finally:
        proto.close_fds(efds)
    by.check()
    assert wait_for(lambda: dev.info()["state"] == "listening", 10)
    with VhostClient(sock, num_queues=2) as good:
        r = good.bench(bench_core, BenchOpts(rw="randrw", qd=16, time_s=0.5), verify=True)
        assert r["errors"] == 0 and r["verify_errors"] == 0



@pytest.fixture
def bench_core():
    """The bystander's client reactor, adaptive here: a busy one would take a
    whole core of two from the fuzzing front end and the back end."""
    c = Core(reactors=1, poll_mode="adaptive")
    yield c
    c.close()
