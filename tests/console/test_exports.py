"""The console and the metrics show the export sections of a real controller
(NVMe/TCP target with a connected host, a vhost-user device) without knowing
their shape: whatever `status` carries appears."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from .helpers import Controller, scrape, srrs, write_config

nvmf_target = pytest.importorskip("srrs.nvmf.target", reason="NVMe/TCP not in this build")
pytest.importorskip("srrs.vhost.service", reason="vhost-user not in this build")

NQN = "nqn.2026-11.io.srrs:m0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def exports(tmp_path):
    port = _free_port()
    conf, sock = write_config(tmp_path, name="x", extra=f"""
[nvmf]
listen = ["127.0.0.1:{port}"]

[[nvmf.subsystem]]
nqn = "{NQN}"
serial = "SRRS0001"
namespaces = ["m0"]
allow_hosts = ["*"]

[[vhost]]
name = "vh0"
socket = "{tmp_path}/vh0.sock"
bdev = "m0"
num_queues = 2

[metrics]
listen = "127.0.0.1:0"
""")
    c = Controller(conf, sock)
    try:
        yield c, port
    finally:
        c.kill()


def test_console_and_metrics_show_exports(exports):
    from srrs.ffi.binding import BenchOpts, Core

    c, port = exports
    core = Core(reactors=1, poll_mode="adaptive")
    results: list = []
    try:
        with nvmf_target.NvmfHost("127.0.0.1", port, NQN, queues=2, qsize=32) as h:
            t = threading.Thread(target=lambda: results.append(
                h.bench(core, BenchOpts(rw="randrw", bs=4096, qd=16, time_s=8.0), 0)))
            t.start()
            try:
                time.sleep(1.0)
                rj = srrs("console", "-s", c.sock, "--once", "--json")
                r = srrs("console", "-s", c.sock, "--once")
                m = scrape(c.rpc("status")["metrics"]["listen"])
            finally:
                t.join(30)
    finally:
        core.close()
    assert r.returncode == 0 and rj.returncode == 0, r.stderr + rj.stderr
    text = r.stdout
    for word in ("nvmf", "listeners", f"{port}", NQN, "optimized", "cntlid", "queues",
                 "vhost", "vh0", "listening"):
        assert word in text, f"{word!r} not on the console:\n{text}"
    snap = json.loads(rj.stdout)["controllers"][0]
    assert snap["nvmf"]["controllers"][0]["subnqn"] == NQN
    assert snap["nvmf"]["controllers"][0]["io_queues"] == 2
    assert snap["vhost"][0]["name"] == "vh0"
    assert snap["bdevs"][0]["iops"] > 0, "host I/O through NVMe/TCP shows on the bdev"
    names = {name for name, _ in m}
    assert "srrs_nvmf_stats_accepted" in names and "srrs_vhost_num_queues" in names
    assert m[("srrs_nvmf_stats_accepted", frozenset({"controller": "x"}.items()))] >= 1
    assert results and results[0]["ios"] > 0 and results[0]["errors"] == 0
