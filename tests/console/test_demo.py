"""`srrs demo`: runs, reports non-zero IOPS, exits 0, leaves no process or file."""

from __future__ import annotations

import importlib.util
import os
import re
import time

import psutil
import pytest
from conftest import need

from srrs.ctrl.rpc import RpcClient, RpcError

from .helpers import SRRS, Tmux, bdev_row, srrs


def _leftovers(tmpdir: str, since: float) -> list:
    """Processes of a demo: its controller (config in tmpdir), its vhost load (socket in
    tmpdir) and its NVMe/TCP load (the NQN names the demo's srrs-demo-* directory)."""
    procs = []
    for p in psutil.process_iter(["cmdline", "create_time"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if p.info["create_time"] >= since - 1 and (tmpdir in cmd or "srrs-demo-" in cmd):
                procs.append((p.pid, cmd))
        except psutil.Error:
            pass
    return [x for x in procs if "pytest" not in x[1]]


def test_demo_duration_20(tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir))
    since = time.time()
    t0 = time.monotonic()
    r = srrs("demo", "--duration", "20", env=env, timeout=120)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    paths = re.findall(r"srrs demo: (\w+) .*: ([\d,]+) IOPS\s+([\d,.]+) MiB/s\s+lat p50 (\d+) us"
                       r"\s+p99 (\d+) us.*errors 0", r.stdout)
    assert paths, r.stdout
    for kind, iops, mibps, p50, p99 in paths:
        assert int(iops.replace(",", "")) > 0 and float(mibps.replace(",", "")) > 0, kind
        assert 0 < int(p50) <= int(p99), kind
    kinds = {p[0] for p in paths}
    for mod, kind in (("srrs.nvmf.service", "nvmf"), ("srrs.vhost.service", "vhost")):
        if importlib.util.find_spec(mod) is not None:
            assert kind in kinds, f"{kind} is built but the demo did not drive it"
    assert "no I/O errors" in r.stdout
    assert 20 <= took < 60, took
    # progress lines while it ran (stdout is not a terminal here)
    assert re.search(r"demo: [\d,]+ IOPS", r.stdout)
    assert os.listdir(tmpdir) == []
    assert _leftovers(str(tmpdir), since) == []


def test_demo_console_quit_early(tmp_path):
    need("tmux")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    since = time.time()
    t = Tmux(tmp_path, ["env", f"TMPDIR={tmpdir}"] + SRRS + ["demo", "--duration", "60"])
    try:
        s = t.wait_for(lambda s: "s left" in s and (bdev_row(s, "f0") or (0,))[0] > 0,
                       timeout=30, what="demo console with IOPS")
        assert "demo" in s and "f0" in s
        t.send("q")
        assert t.rc(timeout=20) == 0
    finally:
        t.close()
    assert os.listdir(tmpdir) == []
    assert _leftovers(str(tmpdir), since) == []


@pytest.mark.parametrize("sig", ["TERM", "INT", "HUP"])
def test_demo_sigterm_cleans_up(tmp_path, sig):
    import signal
    import subprocess

    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir))
    since = time.time()
    p = subprocess.Popen(SRRS + ["demo", "--duration", "60"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    # signal once the load runs (earlier, the demo stops with "interrupted", exit 1)
    deadline = time.monotonic() + 30
    while True:
        assert time.monotonic() < deadline and p.poll() is None
        socks = [os.path.join(d, f) for d, _, fs in os.walk(tmpdir) for f in fs
                 if f.endswith(".sock")]
        try:
            if socks:
                with RpcClient(socks[0]) as c:
                    if any(b["reads"] for b in c.call("bdev_list")):
                        break
        except (ConnectionError, OSError, RpcError):
            pass
        time.sleep(0.1)
    time.sleep(1.0)
    p.send_signal(getattr(signal, f"SIG{sig}"))
    out, err = p.communicate(timeout=30)
    # like q: the run stops early, the summary is still printed
    assert p.returncode == 0, err
    assert re.search(r"[\d,]+ IOPS .*stopped early.*errors 0", out), out
    assert os.listdir(tmpdir) == []
    assert _leftovers(str(tmpdir), since) == []
