"""The console and the metrics show the export sections of a real controller
(NVMe/TCP target with a connected host, a vhost-user device): the console
without knowing their shape (whatever `status` carries appears), the metrics
as the families ctrl/metrics.py declares."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from srrs.ctrl import launch
from srrs.nvmf import target as nvmf_target

from .helpers import Controller, sample, scrape, srrs, write_config

NQN = "nqn.2026-11.io.srrs:m0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def exports(tmp_path):
    port = _free_port()
    conf, sock = write_config(tmp_path, name="x", extra={
        "nvmf": launch.nvmf([f"127.0.0.1:{port}"],
                            [launch.subsystem(NQN, ["m0"], serial="SRRS0001")]),
        "vhost": [launch.vhost("vh0", f"{tmp_path}/vh0.sock", "m0", num_queues=2)],
        "metrics": launch.metrics("127.0.0.1:0")})
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
                before = c.rpc("status")
                m = scrape(before["metrics"]["listen"])
                after = c.rpc("status")
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
    # each export with the figures of the bdev it serves, latency of the last interval
    ex = {e["kind"]: e for e in snap["exports"]}
    assert (ex["nvmf"]["export"], ex["nvmf"]["volume"]) == (f"{NQN}/ns1", "m0")
    assert (ex["vhost"]["export"], ex["vhost"]["volume"]) == ("vh0", "m0")
    e = ex["nvmf"]
    assert e["iops"] == snap["bdevs"][0]["iops"] > 0 and e["mibps"] > 0
    assert 0 < e["p50_us"] <= e["p99_us"] and e["lat_ios"] > 0
    lab = {"controller": "x", "export": f"{NQN}/ns1", "kind": "nvmf", "volume": "m0"}
    b, a = before["bdevs"][0], after["bdevs"][0]
    for op, field in (("read", "reads"), ("write", "writes")):
        assert b[field] <= sample(m, "srrs_export_ops_total", op=op, **lab) <= a[field] > 0
        n = sample(m, "srrs_export_io_latency_seconds_count", op=op, **lab)
        assert b["latency"][op]["count"] <= n <= a["latency"][op]["count"]
        assert n == sample(m, "srrs_bdev_io_latency_seconds_count", controller="x", bdev="m0",
                           op=op)
    assert b["bytes_read"] <= sample(m, "srrs_export_bytes_total", op="read",
                                     **lab) <= a["bytes_read"]
    assert sample(m, "srrs_export_errors_total", **lab) == 0
    assert ("srrs_export_ops_total", frozenset({**lab, "export": "vh0", "kind": "vhost",
                                               "op": "read"}.items())) in m
    assert sample(m, "srrs_nvmf_accepted_connections_total", controller="x") >= 1
    assert sample(m, "srrs_nvmf_subsystem_host_controllers", controller="x", subsystem=NQN) == 1
    assert sample(m, "srrs_vhost_connected", controller="x", device="vh0") == 0
    assert results and results[0]["ios"] > 0 and results[0]["errors"] == 0
    # the bdev's part of the host's latency (each I/O's is inside the host's)
    assert e["p50_us"] <= 1.1 * results[0]["lat_us"]["p50"] + 1, (e, results[0]["lat_us"])
