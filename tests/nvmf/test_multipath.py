"""Multipath in the C initiator (`srrs bench nvmf --target A --target B`) over a
real active/active pair: both controllers serve the subsystem, the bench sends
I/O round-robin to both; kill -9 of one controller under verified load costs
no I/O error (in-flight I/O moves to the other path, which keeps serving), and
the restarted controller's path is reconnected in the background and serves
I/O again once its pair is back in sync."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from srrs.nvmf.bench import targets
from tests.pair.procs import SRRS, Ctl, Witness, free_ports, nvmf_conf, pair_conf

from .conftest import NQN as TEST_NQN  # the in-process `target` fixture's subsystem

NQN = "nqn.2026-11.io.srrs:mpath"


def _nvmf(name, port, lo):
    return nvmf_conf(port, lo, NQN, "SRRSMPATH001")


@pytest.fixture
def pair(tmp_path):
    p = free_ports(7)
    ports = {"coord_a": p[0], "coord_b": p[1], "mirror_a": p[2], "mirror_b": p[3],
             "witness": p[4], "nvmf_a": p[5], "nvmf_b": p[6]}
    w = Witness(tmp_path, f"tcp://127.0.0.1:{ports['witness']}", max_lease=2.0)
    ctls = {}
    try:
        for n, peer, lo in (("a", "b", 1), ("b", "a", 1001)):
            ctls[n] = Ctl(tmp_path, n, pair_conf(n, peer, ports, tmp_path, size="64MiB",
                                                 extra=_nvmf(n, ports["nvmf_" + n], lo)))
        yield ctls["a"], ctls["b"], ports
    finally:
        for c in ctls.values():
            c.kill9()
        w.kill9()


def _qpair_cmds(ctl) -> int:
    return sum(q["cmds"] for q in ctl.rpc("nvmf_get_qpairs") if q["qid"] > 0)


def test_targets_parsing():
    t = targets(["127.0.0.1:4420,127.0.0.1:4421", "[::1]:4420", "127.0.0.1:4420"])
    assert [str(x) for x in t] == ["127.0.0.1:4420", "127.0.0.1:4421", "[::1]:4420"]
    assert [str(x) for x in targets("10.0.0.1:4420")] == ["10.0.0.1:4420"]
    for bad in ([], ["host"], ["1.2.3.4:4420,"] * 0, [",".join(f"127.0.0.1:{p}"
                                                                 for p in range(1, 10))]):
        with pytest.raises(ValueError):
            targets(bad)


def test_kill9_one_path_under_verified_load_zero_errors(pair, tmp_path):
    a, b, ports = pair
    a.wait_state("PAIRED")
    b.wait_state("PAIRED")
    out = open(tmp_path / "bench.json", "w+")
    bench = subprocess.Popen(
        SRRS + ["bench", "nvmf", "--target", f"127.0.0.1:{ports['nvmf_a']}",
                "--target", f"127.0.0.1:{ports['nvmf_b']}", "--nqn", NQN, "--rw", "randwrite",
                "--bs", "4096", "--qd", "16", "--queues", "2", "--time", "14", "--verify",
                "--path-timeout", "15", "--json"],
        stdout=out, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while min(_qpair_cmds(a), _qpair_cmds(b)) < 300:  # both paths carry I/O
            assert time.monotonic() < deadline and bench.poll() is None, bench.stderr.read()
            time.sleep(0.1)
        t_kill = time.monotonic()
        a.kill9()
        b.wait_state("SOLO", timeout=10)
        c0 = _qpair_cmds(b)
        a.restart()  # meanwhile, I/O goes on through b alone
        assert _qpair_cmds(b) - c0 > 500
        a.wait_state("PAIRED", timeout=20)
        back = time.monotonic() - t_kill
        # the restarted controller serves I/O again through the reconnected path
        while _qpair_cmds(a) < 200 and bench.poll() is None:
            time.sleep(0.1)
        served = _qpair_cmds(a)
        rc = bench.wait(60)
        err = bench.stderr.read()
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    out.seek(0)
    res = json.loads(out.read())
    print(f"\nmultipath: {json.dumps(res['paths'])} failovers {res['failovers']} "
          f"max wait {res['max_wait_us'] / 1000:.0f} ms; a back in {back:.1f} s")
    assert rc == 0, err
    assert res["errors"] == 0 and res["path_timeouts"] == 0
    assert res["verified"] and res["verify_errors"] == 0 and res["verified_blocks"] > 0
    pa, pb = res["paths"]
    assert pa["target"].endswith(str(ports["nvmf_a"])) and pb["ios"] > pa["ios"] > 0
    assert pa["drops"] >= 1 and pa["reconnects"] >= 1 and pb["drops"] == 0
    assert res["failovers"] > 0 and res["max_wait_us"] < 10e6
    assert pa["live"] and pa["ana"] == "optimized" and served > 0


@pytest.fixture
def two_targets(core):
    """One namespace (same bdev, same UUID) behind two targets of one subsystem:
    two controllers, two paths, in this process."""
    from srrs.nvmf.target import NvmfTarget

    core.bdev_create_malloc("mp0", 32 << 20, 4096)
    tgts = []
    for lo in (1, 1001):
        t = NvmfTarget(core, cntlid_min=lo, cntlid_max=lo + 99, max_io_queues=4)
        t.port = t.add_listener("127.0.0.1", 0)
        t.add_subsystem(NQN, "SRRSMP", "SRRS mp", allow_any_host=True)
        t.add_namespace(NQN, "mp0", uuid="5a5a5a5a-0000-4000-8000-00000000000a")
        tgts.append(t)
    yield tgts
    for t in tgts:
        t.close()
    core.bdev_delete("mp0")


def _run(h, load, **kw):
    import threading

    from srrs.ffi.binding import BenchOpts

    res = {}
    th = threading.Thread(target=lambda: res.update(h.bench(load, BenchOpts(**kw), 0)))
    th.start()
    return th, res


def test_ana_inaccessible_path_moves_io_and_comes_back(two_targets):
    """A path whose ANA group turns inaccessible answers with a path error
    (SCT 3, no DNR): its I/O goes to the other path with no error; once the
    group is optimized again the monitor's ANA read puts the path back."""
    from srrs.ffi.binding import Core
    from srrs.nvmf.target import NvmfHost

    t1, t2 = two_targets
    load = Core(reactors=1, poll_mode="busy")
    try:
        with NvmfHost("127.0.0.1", t1.port, NQN, queues=2, qsize=32,
                      path_timeout_ms=1500) as h:
            assert h.add_path("127.0.0.1", t2.port) is True
            with pytest.raises(Exception, match="already a path"):
                h.add_path("127.0.0.1", t2.port)
            assert [p["ana"] for p in h.paths()] == ["optimized", "optimized"]
            th, res = _run(h, load, rw="randrw", qd=16, time_s=2.5)
            time.sleep(0.5)
            t1.set_ana_state(NQN, 1, "inaccessible")
            time.sleep(0.8)
            mid = h.paths()
            t1.set_ana_state(NQN, 1, "optimized")
            th.join(10)
            p1, p2 = h.paths()
            assert res["errors"] == 0 and res["ios"] > 0
            assert p1["path_errors"] > 0 and p1["resubmitted"] >= p1["path_errors"]
            assert mid[0]["ana"] == "inaccessible" and p1["ana"] == "optimized"
            # no I/O on the inaccessible path meanwhile, and back on it afterwards
            assert p1["ios"] - mid[0]["ios"] > 100 and p2["ios"] > mid[1]["ios"]
            assert p1["drops"] == 0 and p2["path_errors"] == 0
            # every path inaccessible for longer than the path timeout: I/O fails
            for t in (t1, t2):
                t.set_ana_state(NQN, 1, "inaccessible")
            # timed from before the I/Os start: their path timeout runs from
            # their submission, which a thread started first may make before a
            # clock read after it (CI measured 1.4997 s that way)
            t0 = time.monotonic()
            th, res = _run(h, load, rw="randread", qd=8, time_s=0, max_ios=8)
            th.join(10)
            assert 1.5 <= time.monotonic() - t0 < 5
            assert res["errors"] == 8 and h.multipath_stats()["path_timeouts"] == 8
            for t in (t1, t2):
                t.set_ana_state(NQN, 1, "optimized")
    finally:
        load.close()


def test_path_to_another_namespace_is_refused(core, target):
    """A second path must show the same namespace (NGUID, size, block size)."""
    from srrs.nvmf.target import NvmfHost, NvmfTarget

    core.bdev_create_malloc("other", 64 << 20, 4096)
    t2 = NvmfTarget(core)
    try:
        port = t2.add_listener("127.0.0.1", 0)
        t2.add_subsystem(TEST_NQN, allow_any_host=True)
        t2.add_namespace(TEST_NQN, "other")
        with NvmfHost("127.0.0.1", target.port, TEST_NQN, path_timeout_ms=1000) as h:
            with pytest.raises(Exception, match="serves another namespace"):
                h.add_path("127.0.0.1", port)
            assert len(h.paths()) == 1
            # a path that is down now is kept, to be reconnected during a job
            assert h.add_path("127.0.0.1", 1) is False
            assert [p["live"] for p in h.paths()] == [True, False]
        with NvmfHost("127.0.0.1", target.port, TEST_NQN) as h:  # no path timeout: one path
            with pytest.raises(Exception, match="path timeout"):
                h.add_path("127.0.0.1", port)
    finally:
        t2.close()
        core.bdev_delete("other")
