"""`srrs demo`: runs, reports non-zero IOPS, exits 0, leaves no process or file."""

from __future__ import annotations

import os
import re
import time

import psutil
import pytest
from conftest import need

from srrs.ctrl.rpc import RpcClient, RpcError

from .helpers import SRRS, Tmux, bdev_row, srrs


def _leftovers(tmpdir: str) -> list:
    procs = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(tmpdir in a for a in p.info["cmdline"] or []):
                procs.append((p.pid, p.info["cmdline"]))
        except psutil.Error:
            pass
    return procs


def test_demo_duration_20(tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir))
    t0 = time.monotonic()
    r = srrs("demo", "--duration", "20", env=env, timeout=120)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"srrs demo: demo .*: ([\d,]+) IOPS\s+([\d,.]+) MiB/s\s+lat p50 (\d+) us"
                  r"\s+p99 (\d+) us.*errors 0", r.stdout)
    assert m, r.stdout
    assert int(m.group(1).replace(",", "")) > 0
    assert float(m.group(2).replace(",", "")) > 0
    assert 20 <= took < 60, took
    # progress lines while it ran (stdout is not a terminal here)
    assert re.search(r"demo: [\d,]+ IOPS", r.stdout)
    assert os.listdir(tmpdir) == []
    assert _leftovers(str(tmpdir)) == []


def test_demo_console_quit_early(tmp_path):
    need("tmux")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
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
    assert _leftovers(str(tmpdir)) == []


@pytest.mark.parametrize("sig", ["TERM", "INT", "HUP"])
def test_demo_sigterm_cleans_up(tmp_path, sig):
    import signal
    import subprocess

    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir))
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
                    if c.call("bench_bdev_results"):
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
    assert _leftovers(str(tmpdir)) == []
