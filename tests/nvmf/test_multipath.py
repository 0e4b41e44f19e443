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
from tests.pair.procs import SRRS, Ctl, Witness, free_ports, pair_conf

NQN = "nqn.2026-11.io.srrs:mpath"


def _nvmf(name, port, lo):
    return f"""
[nvmf]
listen = ["127.0.0.1:{port}"]
cntlid_min = {lo}
cntlid_max = {lo + 999}

[[nvmf.subsystem]]
nqn = "{NQN}"
serial = "SRRSMPATH001"
namespaces = ["v0.mirror"]
allow_hosts = ["*"]
"""


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
                "--bs", "4096", "--qd", "16", "--queues", "2", "--time", "12", "--verify",
                "--path-timeout", "15", "--json"],
        stdout=out, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while min(_qpair_cmds(a), _qpair_cmds(b)) < 1000:  # both paths carry I/O
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
        deadline = time.monotonic() + 5
        while _qpair_cmds(a) < 500:
            assert time.monotonic() < deadline and bench.poll() is None, bench.stderr.read()
            time.sleep(0.1)
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
    assert pa["live"] and pa["ana"] == "optimized"
