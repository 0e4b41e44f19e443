"""A host that logs every acknowledged write (issue 6, "no acknowledged write lost").

    python tests/pair/ack_client.py --path HOST:PORT --path HOST:PORT --nqn NQN
        --log FILE --blocks N [--hot H] [--threads T] [--seed S] [--summary FILE]

Writes 4 KiB blocks to namespace 1 of the subsystem through both controllers
of a pair over NVMe/TCP (tests/nvmf/wire.py), each block's content naming
(block, seq). Thread t owns the hot blocks b % T == t (overwritten at random)
and a slice of the rest (each written once, in order: a lost acknowledgement
there cannot be hidden by a later overwrite). A thread writes one block at a
time (queue depth 1 per thread), so the writes to one block are ordered and
the latest acknowledged one is well defined. Paths are used round-robin; like
the Linux host's native multipath, a write that fails with a path error (or
whose connection drops) is retried as is on the other path until it is
acknowledged.

The log is written line by line with os.write on an O_APPEND fd, so what it
says does not depend on this process surviving:
    I <block> <seq>             issued (about to be sent, on any path)
    A <block> <seq> <path>      acknowledged (status 0)
    F <block> <seq> <path> <st> <time>  failed on that path (NVMe status, "drop"
                                or "timeout"; time.time(), to match the controllers' logs)
SIGTERM: every thread finishes the write it has (until acknowledged, or
--grace seconds), then the process prints a JSON summary and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.nvmf import wire  # noqa: E402

BS = 4096
MAGIC = b"ACKLOG01"


def content(block: int, seq: int) -> bytes:
    """4 KiB that name the block and the write; every byte depends on both."""
    head = MAGIC + struct.pack("<QQ", block, seq)
    word = struct.pack("<QQ", block * 0x9E3779B97F4A7C15 & (2**64 - 1),
                       seq * 0xC2B2AE3D27D4EB4F & (2**64 - 1))
    return head + word * ((BS - len(head)) // 16) + head[: (BS - len(head)) % 16]


def decode(data: bytes):
    """(block, seq) a block claims to hold; None for zeros; 'garbage' otherwise."""
    if data == bytes(len(data)):
        return None
    if data[:8] != MAGIC:
        return "garbage"
    block, seq = struct.unpack_from("<QQ", data, 8)
    return (block, seq) if data == content(block, seq) else "garbage"


def is_path_error(st: int) -> bool:
    """Path Related Status (SCT 3) without DNR: the host retries elsewhere."""
    return (st >> 8) & 7 == 3 and not st & 0x4000


class Path:
    """One thread's association with one controller: admin + one I/O queue."""

    def __init__(self, idx: int, addr: str, port: int, nqn: str, hostnqn: str, timeout: float):
        self.idx, self.addr, self.port, self.nqn = idx, addr, port, nqn
        self.hostnqn, self.timeout = hostnqn, timeout
        self.adm = self.io = None
        self.down_until = 0.0

    def close(self) -> None:
        for c in (self.io, self.adm):
            if c is not None:
                c.close()
        self.adm = self.io = None

    def open(self) -> None:
        adm = io = None
        try:
            adm = wire.Conn(self.addr, self.port, timeout=self.timeout)
            adm.icreq()
            st, dw0, _, _ = adm.connect(self.nqn, hostnqn=self.hostnqn)
            if st:
                raise OSError(f"connect status {st:#x}")
            adm.enable()
            io = wire.Conn(self.addr, self.port, timeout=self.timeout)
            io.icreq()
            st, *_ = io.connect(self.nqn, qid=1, cntlid=dw0 & 0xFFFF, hostnqn=self.hostnqn,
                                sqsize=31)
            if st:
                raise OSError(f"I/O queue connect status {st:#x}")
        except BaseException:
            for c in (io, adm):
                if c is not None:
                    c.close()
            raise
        self.adm, self.io = adm, io

    def write(self, block: int, data: bytes) -> int:
        io = self.io
        s = wire.sqe(0x01, io.next_cid(), nsid=1, cdw10=block, cdw12=0, sgl_len=len(data),
                     sgl_type=0x01)
        return io.cmd(s, data)[0]


class Client:
    def __init__(self, a):
        self.a = a
        self.stop = threading.Event()
        self.fd = os.open(a.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.lock = threading.Lock()
        self.stats = {"acks": 0, "issued": 0, "retries": 0, "drops": 0, "timeouts": 0,
                      "path_errors": {}, "other_errors": {}, "max_ack_s": 0.0,
                      "acks_per_path": [0] * len(a.path), "unfinished": 0}

    def log(self, line: str) -> None:
        os.write(self.fd, line.encode())

    def count(self, key: str, sub=None, add=1) -> None:
        with self.lock:
            if sub is None:
                self.stats[key] += add
            else:
                d = self.stats[key]
                d[sub] = d.get(sub, 0) + add

    def run_thread(self, t: int) -> None:
        a = self.a
        rnd = random.Random(a.seed * 1000 + t)
        paths = []
        for i, hp in enumerate(a.path):
            host, port = hp.rsplit(":", 1)
            paths.append(Path(i, host, int(port), a.nqn,
                              f"nqn.2026-11.io.srrs:acklog-host-{t}", a.timeout))
        hot = list(range(t, a.hot, a.threads))
        per = (a.blocks - a.hot) // a.threads
        fresh = iter(range(a.hot + t * per, a.hot + (t + 1) * per))
        seq = 0
        turn = t
        try:
            while not self.stop.is_set():
                block = None
                if rnd.random() < a.fresh:
                    block = next(fresh, None)
                if block is None:
                    block = rnd.choice(hot)
                seq += 1
                turn += 1
                if not self.write_until_acked(paths, turn, block, seq):
                    self.count("unfinished")
                    return
        finally:
            for p in paths:
                p.close()

    def write_until_acked(self, paths, turn: int, block: int, seq: int) -> bool:
        """True once acknowledged; False if stopped with the write still not acknowledged."""
        a = self.a
        data = content(block, seq)
        self.log(f"I {block} {seq}\n")
        self.count("issued")
        t0 = time.monotonic()
        tries = attempts = 0
        while True:
            if self.stop.is_set() and time.monotonic() > self.stop_at + a.grace:
                return False
            p = paths[(turn + tries) % len(paths)]
            tries += 1
            if time.monotonic() < p.down_until:
                if all(time.monotonic() < q.down_until for q in paths):
                    time.sleep(0.02)
                continue
            if attempts:
                self.count("retries")
            attempts += 1
            try:
                if p.io is None:
                    p.open()
                st = p.write(block, data)
            except (wire.Closed, OSError, AssertionError) as e:
                # A dropped connection or a refused one: like multipath, try the
                # other path; this one is retried after a short while.
                timeout = isinstance(e, socket.timeout)
                self.count("timeouts" if timeout else "drops")
                self.log(f"F {block} {seq} {p.idx} {'timeout' if timeout else 'drop'} "
                         f"{time.time():.3f}\n")
                p.close()
                p.down_until = time.monotonic() + 0.05
                continue
            if st == 0:
                self.log(f"A {block} {seq} {p.idx}\n")
                dt = time.monotonic() - t0
                with self.lock:
                    self.stats["acks"] += 1
                    self.stats["acks_per_path"][p.idx] += 1
                    self.stats["max_ack_s"] = max(self.stats["max_ack_s"], dt)
                return True
            self.log(f"F {block} {seq} {p.idx} {st:#x} {time.time():.3f}\n")
            self.count("path_errors" if is_path_error(st) else "other_errors", f"{st:#x}")
            # An ANA state change is what the host waits out: back off a little.
            p.down_until = time.monotonic() + 0.01

    def main(self) -> int:
        self.stop_at = 0.0

        def on_term(signo, frame):
            self.stop_at = time.monotonic()
            self.stop.set()

        signal.signal(signal.SIGTERM, on_term)
        threads = [threading.Thread(target=self.run_thread, args=(t,), daemon=True)
                   for t in range(self.a.threads)]
        for th in threads:
            th.start()
        while any(th.is_alive() for th in threads):
            for th in threads:
                th.join(0.2)
        os.close(self.fd)
        self.stats["max_ack_s"] = round(self.stats["max_ack_s"], 3)
        out = json.dumps(self.stats)
        if self.a.summary:
            with open(self.a.summary, "w") as f:
                f.write(out)
        print(out, flush=True)
        return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--path", action="append", required=True, help="HOST:PORT, one per path")
    ap.add_argument("--nqn", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--blocks", type=int, required=True)
    ap.add_argument("--hot", type=int, default=0,
                    help="blocks 0..hot-1 are overwritten at random; the others are written "
                         "once each, in order (every acknowledgement of those stays checkable)")
    ap.add_argument("--fresh", type=float, default=0.5,
                    help="share of writes that go to a not yet written block")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=10.0, help="per command, seconds")
    ap.add_argument("--grace", type=float, default=20.0)
    ap.add_argument("--summary", default="")
    a = ap.parse_args(argv)
    if a.hot == 0:
        a.hot = a.blocks
    if not a.threads <= a.hot <= a.blocks or a.threads < 1:
        ap.error("need at least one hot block per thread, and hot <= blocks")
    return Client(a).main()


if __name__ == "__main__":
    sys.exit(main())
