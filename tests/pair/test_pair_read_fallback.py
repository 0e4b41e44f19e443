"""A replica's fragment truncated under a running, PAIRED controller (real
processes, pool replicas, NVMe/TCP): reads through that controller keep
returning the right data with success -- its mirror asks the peer's replica for
each read its own replica fails (counted in `local_read_errors`, a
`mirror_read_error` event) -- while a verified reader runs across the
truncation. Writes are not acknowledged while one replica cannot take them:
a write through either controller fails with a media error, and the data read
back afterwards is, block for block, either what was there or what the failed
write carried -- never zeroes, never another block's data."""

import os
import subprocess
import threading
import time

import pytest

from tests.nvmf import wire

from .procs import SRRS, Ctl, Witness, free_ports, nvmf_conf, pair_conf

NQN = "nqn.2026-11.io.srrs:fallback"
BS = 4096
LBAS = range(0, 8192, 61)  # both stripe owners, the whole 32 MiB volume


def _nvmf(port, lo):
    return nvmf_conf(port, lo, NQN, "SRRSFALLBK01")


@pytest.fixture
def pair(tmp_path):
    p = free_ports(7)
    ports = {"coord_a": p[0], "coord_b": p[1], "mirror_a": p[2], "mirror_b": p[3],
             "witness": p[4], "nvmf_a": p[5], "nvmf_b": p[6]}
    w = Witness(tmp_path, f"tcp://127.0.0.1:{ports['witness']}", max_lease=2.0)
    ctls = {}
    try:
        for n, peer, lo in (("a", "b", 1), ("b", "a", 1001)):
            ctls[n] = Ctl(tmp_path, n, pair_conf(n, peer, ports, tmp_path, size="32MiB",
                                                 extra=_nvmf(ports["nvmf_" + n], lo),
                                                 replica="pool"))
        ctls["a"].wait_state("PAIRED", 20)
        ctls["b"].wait_state("PAIRED", 20)
        yield ctls["a"], ctls["b"], ports, tmp_path
    finally:
        for c in ctls.values():
            c.kill9()
        w.kill9()


class Host:
    def __init__(self, port):
        self.adm, cntlid = wire.admin_session("127.0.0.1", port, NQN)
        self.io = wire.io_session("127.0.0.1", port, NQN, cntlid)

    def write(self, lba, data):
        s = wire.sqe(0x01, self.io.next_cid(), nsid=1, cdw10=lba, cdw12=len(data) // BS - 1,
                     sgl_len=len(data), sgl_type=0x01)
        return self.io.cmd(s, data)[0]

    def read(self, lba):
        s = wire.sqe(0x02, self.io.next_cid(), nsid=1, cdw10=lba, cdw12=0, sgl_len=BS)
        st, _, _, d = self.io.cmd(s, read_len=BS)
        return st, d

    def close(self):
        self.io.close()
        self.adm.close()


def test_truncated_replica_reads_served_by_peer(pair):
    a, b, ports, tmp = pair
    ha, hb = Host(ports["nvmf_a"]), Host(ports["nvmf_b"])
    reader = None
    try:
        data = {}
        for i, lba in enumerate(LBAS):
            data[lba] = os.urandom(BS)
            assert (ha if i % 2 else hb).write(lba, data[lba]) == 0
        # A verified reader through b on its own connection, across the truncation.
        bad, reads, stop = [], [0], threading.Event()

        def read_loop():
            h = Host(ports["nvmf_b"])
            try:
                while not stop.is_set():
                    for lba in LBAS:
                        st, d = h.read(lba)
                        reads[0] += 1
                        if st != 0 or d != data[lba]:
                            bad.append((lba, st, d[:8] if d else d))
            finally:
                h.close()

        reader = threading.Thread(target=read_loop, daemon=True)
        reader.start()
        time.sleep(0.3)
        before = reads[0]
        os.truncate(tmp / "b-pool.img", 16 << 20)
        deadline = time.time() + 10   # the pool notices (an I/O error or its health check)
        while time.time() < deadline and not b.pair()["volumes"][0]["local_read_errors"]:
            time.sleep(0.05)
        time.sleep(0.5)
        stop.set()
        reader.join(20)
        assert not reader.is_alive()
        assert bad == [], f"{len(bad)} bad reads through b, first {bad[:3]}"
        assert reads[0] > before + len(LBAS), "the reader made no progress after the truncation"
        vb = b.pair()["volumes"][0]
        assert vb["local_read_errors"] > 0 and vb["remote_reads"] >= vb["local_read_errors"]
        assert b.pair()["state"] == "PAIRED"
        evs = [e for e in b.rpc("events") if e["type"] == "mirror_read_error"]
        assert evs and "served by the peer" in evs[0]["msg"]
        out = subprocess.run(SRRS + ["-s", b.sock, "pair", "status"], capture_output=True,
                             text=True, timeout=20).stdout
        assert "REPLICA READ ERRORS" in out, out
        # Reads through either side: the right data, with success.
        for lba in LBAS:
            assert hb.read(lba) == (0, data[lba]), lba
            assert ha.read(lba) == (0, data[lba]), lba
        # Writes: not acknowledged while b's replica cannot take them (through
        # either side, either stripe owner); what reads back is old or new.
        tried = {}
        for i, lba in enumerate(list(LBAS)[:8]):
            new = os.urandom(BS)
            st = (ha if i % 2 else hb).write(lba, new)
            assert st != 0, f"write at {lba} acknowledged with one replica broken"
            tried[lba] = new
        for lba, new in tried.items():
            for h in (ha, hb):
                st, d = h.read(lba)
                assert st == 0 and d in (data[lba], new), (lba, st)
    finally:
        if reader is not None and reader.is_alive():
            stop.set()
            reader.join(10)
        ha.close()
        hb.close()


def test_resync_target_reads_served_by_source(tmp_path):
    """Core level: b is the resync target (a is the current side): a read
    b's replica fails is asked of a. With b the source (a behind), b's failed
    read is not asked of a: it fails with -EIO."""
    import errno

    from .mirror_util import make_pair, wait

    MiB = 1 << 20
    a, b = make_pair(tmp_path, "file", size=16 * MiB)
    try:
        a.mode("paired")
        b.mode("paired")
        wait(lambda: a.up() and b.up(), what="link up")
        data = os.urandom(MiB)
        for k in range(4):
            assert a.core.test_io("v", "write", k * MiB, MiB, data)[0] == 0
        a.mode("resync_source")
        b.mode("resync_target")
        a.resync()
        b.resync()
        wait(lambda: a.info()["resync_done"] and b.info()["resync_done"], what="resync")
        os.truncate(tmp_path / "b.img", MiB // 2)
        for k in range(4):
            assert b.core.test_io("v", "read", k * MiB, MiB) == (0, data), k
        assert b.info()["local_read_errors"] >= 4
        # b the source: a is taken to be behind, so b's failed read is not
        # asked of a's replica: it fails.
        b.mode("resync_source")
        a.mode("resync_target")
        n = b.info()["local_read_errors"]
        st, got = b.core.test_io("v", "read", 2 * MiB, MiB)
        assert st == -errno.EIO, (st, got[:16])
        assert b.info()["local_read_errors"] == n
    finally:
        a.close()
        b.close()


def test_behind_peer_refuses_to_serve_a_fallback_read(tmp_path):
    """Core level: the moment modes differ (b still PAIRED, a already the
    resync target that has not met b's bitmap): b's failed read is asked of a,
    whose replica may be behind, and a answers with an error, not its data."""
    import errno

    from .mirror_util import make_pair, wait

    MiB = 1 << 20
    a, b = make_pair(tmp_path, "file", size=16 * MiB)
    try:
        a.mode("paired")
        b.mode("paired")
        wait(lambda: a.up() and b.up(), what="link up")
        data = os.urandom(MiB)
        assert a.core.test_io("v", "write", 3 * MiB, MiB, data)[0] == 0
        os.truncate(tmp_path / "b.img", MiB // 2)
        assert b.core.test_io("v", "read", 3 * MiB, MiB) == (0, data)
        a.mode("resync_target")                       # no resync started: not ready
        st, got = b.core.test_io("v", "read", 3 * MiB, MiB)
        assert st == -errno.EIO, (st, got[:16])
        assert b.info()["local_read_errors"] == 2
    finally:
        a.close()
        b.close()
