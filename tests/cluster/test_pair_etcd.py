"""etcd as the pair's witness, on real etcd and real controller processes
(docs/architecture.md, Cluster: etcd as the pairs' witness). Every etcd member
and every controller runs in a network namespace of its own on one bridge
(tests/cluster/etcd.py Hub); the load, the guest and our etcd reads come from
one more.

A controller with a [cluster] section has no `witness =` in [pair]: its
coordinator asks etcd for the pair's solo lease (cluster_lease.SoloLease).
Shown here: kill -9 of a controller under verified NVMe/TCP multipath load
(`srrs bench nvmf --verify` to both controllers) -> the peer goes SOLO through
etcd with no I/O error, then RESYNC -> PAIRED on restart; a controller cut off
from its peer and etcd (its own netns) fences and the peer goes SOLO and
serves; the etcd leader killed in the middle of a failover; etcd quorum lost
while PAIRED changes nothing. A monitor samples both controllers' states
throughout: never two SOLO."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time

import pytest

from srrs.ctrl import config as cfg
from srrs.ctrl import etcd, ha
from srrs.ctrl.cluster_lease import SoloLease
from tests.cluster.etcd import Cluster, Hub
from tests.pair.netns import in_netns
from tests.pair.procs import SRRS, Ctl, free_ports, nvmf_conf, pair_conf

NQN = "nqn.2026-11.io.srrs:etcdpair"
PAIR = "a+b"
# the peer is dead after 100 ms x MISS: 2 s, so that a machine shared by
# many test runs does not cut a healthy pair (with etcd down that is FENCED)
MISS = 20


def etcd_pair_conf(n, peer, ports, tmp, endpoints, lo, host="127.0.0.1", peer_host="127.0.0.1"):
    """[pair] without a witness, [cluster] on `endpoints`, the subsystem on [nvmf]."""
    extra = nvmf_conf(ports["nvmf_" + n], lo, NQN, "SRRSETCD0001", host=host)
    extra["cluster"] = {"etcd": list(endpoints), "timeout_s": 0.5, "lease_s": 2}
    conf = pair_conf(n, peer, ports, tmp, host=host, peer_host=peer_host, extra=extra,
                     miss=MISS, lease=2000)
    del conf["pair"]["witness"]
    return conf


def _ports():
    p = free_ports(7)
    return {"coord_a": p[0], "coord_b": p[1], "mirror_a": p[2], "mirror_b": p[3],
            "witness": p[4], "nvmf_a": p[5], "nvmf_b": p[6]}


class Monitor:
    """Both controllers' states every 50 ms on a thread: what was seen, and
    whether both were ever SOLO in one sample."""

    def __init__(self, a, b):
        self.a, self.b, self.seen, self.samples = a, b, set(), []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.wait(0.05):
            s = (self.a.pair_state(0.5), self.b.pair_state(0.5))
            self.samples.append(s)
            self.seen.update((("a", s[0]), ("b", s[1])))

    def stop(self):
        self._stop.set()
        self._t.join(5)
        both = [s for s in self.samples if s == ("SOLO", "SOLO")]
        assert not both, f"both SOLO in {len(both)} samples"
        return self


_ROLE_LOG = re.compile(r"pair (\w+): (\w+) -> (\w+) \((.*), epoch \d+\)")


def _log_at(c) -> int:
    """Where c's log (appended to across restarts) ends now."""
    return os.path.getsize(c.log_path)


def _roles(c, since: int) -> list:
    """c's state transitions its log records after offset `since` (ctrl/pair.py
    logs each one): [(old, new, reason)]. Unlike the 50 ms Monitor, this
    misses none, however short."""
    with open(c.log_path, "rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    return [(m[2], m[3], m[4]) for m in _ROLE_LOG.finditer(text) if m[1] == c.name]


def assert_resync_then_paired(a, b, a_at: int, b_at: int) -> None:
    """After a's kill -9 (b's log from b_at) and restart (a's from a_at): b
    went SOLO, then RESYNC as the source, then PAIRED once the resync was done;
    a came back through RESYNC as the target, never PAIRED before it, and ends
    PAIRED."""
    ra, rb = _roles(a, a_at), _roles(b, b_at)
    seq_b = [new for _, new, _ in rb]
    assert "SOLO" in seq_b and seq_b[-1] == "PAIRED", rb
    i = seq_b.index("SOLO")
    assert seq_b[i + 1:] == ["RESYNC", "PAIRED"], rb
    assert "resync as source" in rb[i + 1][2] and rb[i + 2][2] == "resync done", rb
    seq_a = [new for _, new, _ in ra]
    assert "RESYNC" in seq_a and seq_a[-1] == "PAIRED", ra
    j = seq_a.index("RESYNC")
    assert "PAIRED" not in seq_a[:j] and "resync as target" in ra[j][2], ra
    assert ra[-1][0] == "RESYNC" and ra[-1][2] == "resync done", ra


@pytest.fixture
def etcd_pair(tmp_path):
    """3 etcd members and two controllers, each in its own network namespace on
    one bridge, PAIRED; etcd is their witness. The hosts' side (the bench, a
    guest, our etcd reads) lives in a namespace of its own, "h": ports gains
    addr_a, addr_b and ns_h, ec.client_ns is "h"'s namespace."""
    ports = _ports()
    keys = ["e0", "e1", "e2", "a", "b", "h"]
    with Hub(keys, tag="srrs-ep") as hub:
        ec = Cluster(hosts=[hub.hosts[k] for k in keys[:3]])
        ec.client_ns = hub.hosts["h"][0]
        ports.update(addr_a=hub.hosts["a"][1], addr_b=hub.hosts["b"][1], ns_h=ec.client_ns)
        ctls = {}
        try:
            ec.start()
            for n, peer, lo in (("a", "b", 1), ("b", "a", 1001)):
                ns, addr = hub.hosts[n]
                conf = etcd_pair_conf(n, peer, ports, tmp_path, ec.endpoints, lo, host=addr,
                                      peer_host=hub.hosts[peer][1])
                ctls[n] = Ctl(tmp_path, n, conf, prefix=["ip", "netns", "exec", ns])
            ctls["a"].wait_state("PAIRED", 20)
            ctls["b"].wait_state("PAIRED", 20)
            yield ec, ctls["a"], ctls["b"], ports
        finally:
            for c in ctls.values():
                c.kill9()
            ec.stop()


def _holder(ec, gen=False):
    with in_netns(getattr(ec, "client_ns", "")):
        h = SoloLease(etcd.Client(ec.endpoints, timeout=0.5)).holder(PAIR)
    return (h["holder"], h["gen"]) if gen else h["holder"]


def _bench(tmp_path, ports, seconds):
    """`srrs bench nvmf --verify`, round-robin over both controllers' paths."""
    out = open(tmp_path / "bench.json", "w+")
    p = subprocess.Popen(
        ["ip", "netns", "exec", ports["ns_h"]] + SRRS +
        ["bench", "nvmf", "--target", f"{ports['addr_a']}:{ports['nvmf_a']}",
         "--target", f"{ports['addr_b']}:{ports['nvmf_b']}", "--nqn", NQN, "--rw", "randwrite",
         "--bs", "4096", "--qd", "16", "--queues", "2", "--time", str(seconds),
         "--verify", "--path-timeout", "15", "--json"],
        stdout=out, stderr=subprocess.PIPE, text=True)
    p.out = out
    return p


def _bench_result(p) -> dict:
    try:
        rc = p.wait(60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    err = p.stderr.read()
    p.out.seek(0)
    assert rc == 0, err
    res = json.loads(p.out.read())
    assert res["errors"] == 0 and res["path_timeouts"] == 0, res
    assert res["verified"] and res["verify_errors"] == 0 and res["verified_blocks"] > 0, res
    return res


def _moves(*ctls) -> str:
    """The state changes in the controllers' logs (for a failure's message)."""
    return "\n".join(ln for c in ctls for ln in c.output().splitlines() if " -> " in ln)


def _cmds(ctl) -> int:
    return sum(q["cmds"] for q in ctl.rpc("nvmf_get_qpairs") if q["qid"] > 0)


def _wait_load(a, b, bench):
    deadline = time.monotonic() + 10
    while min(_cmds(a), _cmds(b)) < 300:   # both paths carry I/O
        assert time.monotonic() < deadline and bench.poll() is None, bench.stderr.read()
        time.sleep(0.1)


# ---- config ------------------------------------------------------------------------

def test_config_one_witness(tmp_path):
    ports = _ports()
    conf = etcd_pair_conf("a", "b", ports, tmp_path, ["http://127.0.0.1:2379"], 1)
    from srrs.ctrl import launch

    c = cfg.loads(launch.dumps(conf), "x.toml")
    assert c.pair.witness == "" and c.cluster is not None
    conf["pair"]["witness"] = "tcp://127.0.0.1:5600"
    with pytest.raises(cfg.ConfigError, match=r"x.toml:\d+: pair.witness: remove it: with a "
                       r"\[cluster\] section etcd is the pair's witness"):
        cfg.loads(launch.dumps(conf), "x.toml")
    del conf["pair"]["witness"], conf["cluster"]
    with pytest.raises(cfg.ConfigError, match=r"pair.witness: is required"):
        cfg.loads(launch.dumps(conf), "x.toml")


def test_a_grant_never_used_is_unwound_so_the_peer_is_not_outdated(etcd1):
    """A grant whose answer came after ha stopped waiting (a controller under
    load): P/gen names a generation no replica has. Unwound, the peer with the
    shared generation can be granted again; an unwind after the peer took the
    lease changes nothing."""
    solo = SoloLease(etcd.Client(etcd1.endpoints, timeout=0.5))
    g1, g2a = [1, "a"], [2, "a"]
    assert isinstance(solo.request(PAIR, "a", 2.0, g1, g2a, 1.0), ha.LeaseGranted)
    assert isinstance(solo.request(PAIR, "b", 2.0, g1, [2, "b"], 2.0), ha.LeaseDenied)
    assert solo.unwind(PAIR, "a", g2a, g1)
    assert solo.holder(PAIR) == {"holder": "", "gen": g1, "lease": 0}
    assert isinstance(solo.request(PAIR, "b", 2.0, g1, [2, "b"], 3.0), ha.LeaseGranted)
    assert not solo.unwind(PAIR, "a", g2a, g1)          # b holds it now: untouched
    assert solo.holder(PAIR)["holder"] == "b"


# ---- failover ----------------------------------------------------------------------

def test_kill9_under_verified_multipath_load_solo_through_etcd_then_resync(etcd_pair,
                                                                           tmp_path):
    ec, a, b, ports = etcd_pair
    st = b.pair()
    assert st["witness"] == "etcd" and st["witness_ok"]
    assert "etcd ok" in subprocess.run(SRRS + ["-s", b.sock, "pair", "status"],
                                       capture_output=True, text=True).stdout
    mon = Monitor(a, b)
    bench = _bench(tmp_path, ports, 10)
    t0 = time.monotonic()
    try:
        _wait_load(a, b, bench)
        gen0 = b.pair()["data_gen"]
        print(f"\nload on both paths {time.monotonic() - t0:.1f} s")
        b_at = _log_at(b)
        a.kill9()
        b.wait_state("SOLO", timeout=10)
        # granted by etcd, under the new generation b writes alone
        holder, (n, node) = _holder(ec, gen=True)
        assert holder == "b" and node == "b" and b.pair()["data_gen"] == f"{n}:b" != gen0
        c0 = _cmds(b)
        time.sleep(1)
        assert _cmds(b) - c0 > 300         # b alone serves
        print(f"b SOLO {time.monotonic() - t0:.1f} s")
        a_at = _log_at(a)
        a.restart()
        print(f"a restarted {time.monotonic() - t0:.1f} s")
        a.wait_state("PAIRED", timeout=20)
        b.wait_state("PAIRED", timeout=20)
        print(f"PAIRED {time.monotonic() - t0:.1f} s")
        res = _bench_result(bench)
        print(f"bench done {time.monotonic() - t0:.1f} s")
    finally:
        mon.stop()
    assert ("b", "SOLO") in mon.seen
    assert_resync_then_paired(a, b, a_at, b_at)
    assert sum(v["resync_bytes"] for c in (a, b) for v in c.pair()["volumes"]) > 0
    assert res["failovers"] > 0
    assert _holder(ec) == ""               # released once PAIRED again


def test_etcd_leader_killed_in_the_middle_of_a_failover(etcd_pair, tmp_path):
    ec, a, b, ports = etcd_pair
    mon = Monitor(a, b)
    bench = _bench(tmp_path, ports, 12)
    try:
        _wait_load(a, b, bench)
        a.kill9()
        # b declares a dead after 2 s (heartbeat 100 ms x MISS): its lease
        # request meets the election that follows the leader's death
        time.sleep(MISS * 0.1 - 0.1)
        leader = ec.kill_leader()
        b.wait_state("SOLO", timeout=10)
        assert _holder(ec) == "b"
        ec.restart(leader)
        a.restart()
        a.wait_state("PAIRED", timeout=20)
        b.wait_state("PAIRED", timeout=20)
        _bench_result(bench)
    finally:
        mon.stop()
    assert ("b", "SOLO") in mon.seen


def test_quorum_lost_while_paired_changes_nothing(etcd_pair, tmp_path):
    ec, a, b, ports = etcd_pair
    before = {c.name: c.pair() for c in (a, b)}
    mon = Monitor(a, b)
    bench = _bench(tmp_path, ports, 8)
    try:
        _wait_load(a, b, bench)
        killed = ec.members[:2]
        for m in killed:
            m.kill()
        deadline = time.monotonic() + 5
        while any(c.pair()["witness_ok"] for c in (a, b)):   # both see etcd gone
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1.5)
        assert (a.pair_state(), b.pair_state()) == ("PAIRED", "PAIRED")
        for m in killed:
            ec.restart(m)
        ec.wait_healthy()
        res = _bench_result(bench)
        deadline = time.monotonic() + 5
        while not all(c.pair()["witness_ok"] for c in (a, b)):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        mon.stop()
    # (DOWN: a status call that took longer than the monitor waits)
    assert {s for _, s in mon.seen} - {"DOWN"} == {"PAIRED"}, (mon.seen, _moves(a, b))
    for c in (a, b):
        st = c.pair()
        # nothing to repair: same generation, no resync, nothing dirty
        assert st["data_gen"] == before[c.name]["data_gen"] and st["epoch"] == \
            before[c.name]["epoch"]
        vols = [(v["resync_bytes"], v["resync_active"], v["dirty_stripes"]) for v in st["volumes"]]
        assert vols == [(v["resync_bytes"], 0, 0) for v in before[c.name]["volumes"]], vols
    assert res["ios"] > 0


def test_peer_lost_without_etcd_fences_then_etcd_back_goes_solo(etcd_pair):
    ec, a, b, ports = etcd_pair
    for m in ec.members[:2]:
        m.kill()
    mon = Monitor(a, b)
    try:
        b.kill9()
        a.wait_state("FENCED", timeout=10)
        deadline = time.monotonic() + 5
        while a.pair()["witness_ok"]:         # its lease requests go unanswered
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1.5)
        assert a.pair()["ana"] == "inaccessible"
        assert a.pair_state() == "FENCED"      # no lease without etcd: never alone
        before = list(mon.samples)
        for m in ec.members[:2]:
            ec.restart(m)
        a.wait_state("SOLO", timeout=15)
        assert _holder(ec) == "a"
    finally:
        mon.stop()
    assert before and all(sa != "SOLO" for sa, _ in before)


# ---- partition (network namespaces) -------------------------------------------------

def test_cut_off_from_peer_and_etcd_fences_within_its_lease_peer_goes_solo(tmp_path):
    keys = ["e0", "e1", "e2", "a", "b"]
    with Hub(keys, tag="srrs-pe") as hub:
        ec = Cluster(hosts=[hub.hosts[k] for k in keys[:3]])
        ctls = {}
        try:
            ec.start()
            ports = _ports()
            for n, peer, lo in (("a", "b", 1), ("b", "a", 1001)):
                ns, addr = hub.hosts[n]
                conf = etcd_pair_conf(n, peer, ports, tmp_path, ec.endpoints, lo, host=addr,
                                      peer_host=hub.hosts[peer][1])
                ctls[n] = Ctl(tmp_path, n, conf, prefix=["ip", "netns", "exec", ns])
            a, b = ctls["a"], ctls["b"]
            a.wait_state("PAIRED", 20)
            b.wait_state("PAIRED", 20)
            mon = Monitor(a, b)
            try:
                t0 = time.monotonic()
                hub.cut("a")
                a.wait_state("FENCED", timeout=10)
                fenced = time.monotonic() - t0
                b.wait_state("SOLO", timeout=10)
                solo = time.monotonic() - t0
                j = b.bench(rw="randrw", time_s=1, verify=True)   # b serves alone
                assert j["result"]["errors"] == 0 and j["result"]["verify_errors"] == 0
                assert j["result"]["ios"] > 0
                assert a.pair_state() == "FENCED"
                hub.heal("a")
                a.wait_state("PAIRED", timeout=20)
                b.wait_state("PAIRED", timeout=20)
            finally:
                mon.stop()
            print(f"\ncut: a FENCED after {fenced:.2f} s, b SOLO after {solo:.2f} s")
            # a never served alone; it fenced once it lost the peer (2 s) plus one
            # etcd attempt, within its lease (2 s) of the cut
            assert ("a", "SOLO") not in mon.seen
            assert fenced < MISS * 0.1 + 2.0
        finally:
            for c in ctls.values():
                c.kill9()
            ec.stop()


# ---- a Linux guest ----------------------------------------------------------------

@pytest.mark.side
def test_linux_guest_fio_verify_rides_through_kill9_with_etcd_witness(etcd_pair):
    """The kernel's native NVMe multipath over both controllers, fio verify
    running; kill -9 of a: b goes SOLO through etcd, a restarts, RESYNC ->
    PAIRED, fio sees no error."""
    from tests.guest.harness import Guest, fio_verify, require_guest

    require_guest()
    ec, a, b, ports = etcd_pair
    # QEMU in the hosts' namespace: its user networking reaches the controllers'
    with Guest(smp=2, kernel_args=("nvme_core.multipath=Y",),
               prefix=("ip", "netns", "exec", ports["ns_h"])) as g:
        dev = g.connect_paths(NQN, [(ports[f"addr_{n}"], ports[f"nvmf_{n}"]) for n in "ab"],
                              "--ctrl-loss-tmo=-1 --reconnect-delay=1")
        mon = Monitor(a, b)
        try:
            fio = g.spawn(fio_verify(dev, "48M", 14))
            time.sleep(3)
            b_at = _log_at(b)
            a.kill9()
            b.wait_state("SOLO", timeout=10)
            assert _holder(ec) == "b"
            time.sleep(1)
            a_at = _log_at(a)
            a.restart(wait=False)
            a.wait_ready(60)     # the guest's CPU load slows a controller's start
            a.wait_state("PAIRED", timeout=30)
            b.wait_state("PAIRED", timeout=30)
            rc, out = fio.wait(timeout=120)
        finally:
            mon.stop()
        # --verify_backlog read back and checked what was written, the failover included
        assert rc == 0 and "err= 0" in out, out
        g.run("nvme disconnect-all", timeout=60)
    assert ("b", "SOLO") in mon.seen
    # the restarted pair went through RESYNC before PAIRED, both sides (their logs)
    assert_resync_then_paired(a, b, a_at, b_at)
    assert sum(v["resync_bytes"] for c in (a, b) for v in c.pair()["volumes"]) > 0
