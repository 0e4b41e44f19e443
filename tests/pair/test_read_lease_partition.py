"""Read leases around a failover, with a real partition (network namespaces) in
which each controller keeps its host path: the side that goes SOLO
acknowledges writes alone while the other, slow to notice (a long peer
timeout), is still PAIRED; a read through that other side must never return
the old data with success (it fails with an ANA path error instead).

  ns rlA (10.78.1.1 to B, 10.78.2.1 to W, 10.78.4.2 host)
  ns rlB (10.78.1.2 to A, 10.78.3.1 to W, 10.78.5.2 host)
  ns rlW (the witness); the test process is the host (10.78.4.1, 10.78.5.1).
"""

import os
import subprocess
import time

import pytest

from tests.nvmf import wire

from .netns import Topology, sh
from .procs import Ctl, Witness, nvmf_conf, pair_conf

NS = {"A": "srrs-rlA", "B": "srrs-rlB", "W": "srrs-rlW"}
LINKS = {
    "ab": ("A", "rlab-a", "10.78.1.1", "B", "rlab-b", "10.78.1.2"),
    "aw": ("A", "rlaw-a", "10.78.2.1", "W", "rlaw-w", "10.78.2.2"),
    "bw": ("B", "rlbw-b", "10.78.3.1", "W", "rlbw-w", "10.78.3.2"),
}
HOST = {"a": ("A", "rlh-a", "10.78.4.1", "10.78.4.2"), "b": ("B", "rlh-b", "10.78.5.1", "10.78.5.2")}
TOPO = Topology(NS, LINKS)
NQN = "nqn.2026-11.io.srrs:leased"
PORTS = {"coord_a": 5611, "coord_b": 5612, "mirror_a": 4531, "mirror_b": 4532, "witness": 5610}


def _host_links():
    """A veth from this (the host's) namespace into each controller's."""
    for ns, ifname, mine, theirs in HOST.values():
        subprocess.run(["ip", "link", "del", ifname], capture_output=True)
        sh("ip", "link", "add", ifname, "type", "veth", "peer", "name", ifname + "x", "netns",
           NS[ns])
        sh("ip", "addr", "add", f"{mine}/24", "dev", ifname)
        sh("ip", "link", "set", ifname, "up")
        TOPO.nsx(ns, "ip", "addr", "add", f"{theirs}/24", "dev", ifname + "x")
        TOPO.nsx(ns, "ip", "link", "set", ifname + "x", "up")


def _nvmf(name, lo):
    return nvmf_conf(4420, lo, NQN, "SRRSLEASE001", host=HOST[name][3])


@pytest.fixture
def cluster(tmp_path):
    with TOPO.up():
        _host_links()
        w = Witness(tmp_path, f"tcp://0.0.0.0:{PORTS['witness']}", max_lease=2.0,
                    prefix=["ip", "netns", "exec", NS["W"]])
        ctls = {}
        try:
            # a is slow to notice a lost peer (6 s), b quick (1 s): the window in
            # which b acknowledges alone while a still believes it is PAIRED
            ctls["a"] = Ctl(tmp_path, "a", pair_conf(
                "a", "b", PORTS, tmp_path, miss=60, host="10.78.1.1", peer_host="10.78.1.2",
                witness_host="10.78.2.2", extra=_nvmf("a", 1)),
                prefix=["ip", "netns", "exec", NS["A"]])
            ctls["b"] = Ctl(tmp_path, "b", pair_conf(
                "b", "a", PORTS, tmp_path, miss=10, host="10.78.1.2", peer_host="10.78.1.1",
                witness_host="10.78.3.2", extra=_nvmf("b", 1001)),
                prefix=["ip", "netns", "exec", NS["B"]])
            ctls["a"].wait_state("PAIRED", 20)
            ctls["b"].wait_state("PAIRED", 20)
            yield w, ctls["a"], ctls["b"]
        finally:
            for c in ctls.values():
                c.kill9()
            w.kill9()
            for _, ifname, _, _ in HOST.values():
                subprocess.run(["ip", "link", "del", ifname], capture_output=True)


class Path:
    def __init__(self, name):
        addr = HOST[name][3]
        self.adm, cntlid = wire.admin_session(addr, 4420, NQN)
        self.io = wire.io_session(addr, 4420, NQN, cntlid)

    def write(self, lba, data):
        s = wire.sqe(0x01, self.io.next_cid(), nsid=1, cdw10=lba, cdw12=len(data) // 4096 - 1,
                     sgl_len=len(data), sgl_type=0x01)
        return self.io.cmd(s, data)[0]

    def read(self, lba, n=4096):
        s = wire.sqe(0x02, self.io.next_cid(), nsid=1, cdw10=lba, cdw12=n // 4096 - 1, sgl_len=n)
        st, _, _, d = self.io.cmd(s, read_len=n)
        return st, d

    def close(self):
        self.io.close()
        self.adm.close()


def _path_error(st):
    return (st >> 8) & 7 == 3 and not st & 0x4000  # path related, DNR clear


def test_partition_no_stale_read_through_the_paired_side(cluster):
    w, a, b = cluster
    pa, pb = Path("a"), Path("b")
    try:
        lbas = (0, 256, 300, 1000)                     # stripes of either owner
        old = {x: os.urandom(4096) for x in lbas}
        for x in lbas:
            assert pa.write(x, old[x]) == 0
            assert pb.read(x) == (0, old[x]) and pa.read(x) == (0, old[x])
        TOPO.set_link("ab", False)
        b.wait_state("SOLO", 10)
        assert a.pair()["state"] == "PAIRED"          # the window: a has not noticed
        new = {x: os.urandom(4096) for x in lbas}
        for x in lbas:
            deadline = time.time() + 5
            while (st := pb.write(x, new[x])) != 0:
                assert _path_error(st) and time.time() < deadline, hex(st)
                time.sleep(0.05)
        served = 0
        while a.pair()["state"] == "PAIRED" and served < 20:
            for x in lbas:
                st, d = pa.read(x)
                assert not (st == 0 and d == old[x]), f"stale read at lba {x} through a"
                assert st == 0 and d == new[x] or _path_error(st), hex(st)
                served += 1
        assert served >= 4, "a left PAIRED before it could be read"
        # a hears nothing from b: its reads wait (no lease, never the old data) until
        # the link's silence timeout and the fence turn them into path errors;
        # only a peer that keeps talking without granting fails them after L
        # (test_read_lease.py::test_paired_reads_need_the_peers_grant)
        TOPO.set_link("ab", True)
        a.wait_state("PAIRED", 30)
        b.wait_state("PAIRED", 30)
        for x in lbas:
            assert pa.read(x) == (0, new[x])
    finally:
        pa.close()
        pb.close()
