"""`srrs console --once [--json]` and the Prometheus endpoint against RPC stats."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from srrs.ctrl import launch
from srrs.ffi import lathist

from .helpers import Controller, sample, scrape, srrs, write_config

CONST_REACTOR = ("reactor", "poll_mode", "state", "tid", "cpu", "pollers")
MONO_REACTOR = ("loops", "busy_ns", "idle_ns", "sleep_ns", "msgs", "wakeups")
CONST_BDEV = ("name", "module", "path", "size", "num_blocks", "block_size")
MONO_BDEV = ("reads", "writes", "bytes_read", "bytes_written", "flushes", "unmaps",
             "write_zeroes", "errors", "direct_ios", "buffered_ios")


@pytest.fixture
def ctl(tmp_path):
    conf, sock = write_config(tmp_path, name="m", reactors=2,
                              extra={"metrics": launch.metrics("127.0.0.1:0")})
    c = Controller(conf, sock)
    try:
        yield c
    finally:
        c.kill()


def _between(before, mid, after, key, where):
    assert before[key] <= mid[key] <= after[key], f"{where}.{key}: {before[key]} <= " \
        f"{mid[key]} <= {after[key]} does not hold"


def _lat_count(b, cls="read"):
    return b["latency"][cls]["count"]


def test_once_json_field_by_field(ctl):
    ctl.load(reactor=0, time_s=30)
    # a short job beside it, done before the snapshot: its figures to compare the latency with
    jid = ctl.load(reactor=1, time_s=0.5)
    deadline = time.monotonic() + 10
    while (job := ctl.rpc("bench_bdev_results")[jid])["state"] == "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    before = ctl.rpc("status")
    t0 = time.monotonic()
    r = srrs("console", "-s", ctl.sock, "--once", "--json")
    t1 = time.monotonic()
    after = ctl.rpc("status")
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)
    (c,) = snap["controllers"]
    assert c["state"] == "up" and c["error"] is None
    for k in ("name", "pid", "rpc_socket", "poll_mode"):
        assert c[k] == before[k] == after[k], k
    assert before["uptime_s"] <= c["uptime_s"] <= after["uptime_s"]
    assert c["metrics"]["listen"] == before["metrics"]["listen"]
    assert c["process"]["rss_bytes"] > 0 and c["process"]["cpu_pct"] is not None

    assert [x["reactor"] for x in c["reactors"]] == [x["reactor"] for x in before["reactors"]]
    for b, m, a in zip(before["reactors"], c["reactors"], after["reactors"]):
        where = f"reactor[{m['reactor']}]"
        for k in CONST_REACTOR:
            assert m[k] == b[k] == a[k], f"{where}.{k}"
        for k in MONO_REACTOR:
            _between(b, m, a, k, where)
        assert 0 <= m["busy_pct_now"] <= 100 and m["loops_per_s"] >= 0
    assert c["reactors"][0]["busy_pct_now"] > 50, "reactor 0 runs the load job"

    assert [x["name"] for x in c["bdevs"]] == [x["name"] for x in before["bdevs"]] == ["m0"]
    b, m, a = before["bdevs"][0], c["bdevs"][0], after["bdevs"][0]
    for k in CONST_BDEV:
        assert m[k] == b[k] == a[k], f"bdev.{k}"
    for k in MONO_BDEV:
        _between(b, m, a, k, "bdev")
    # the rates agree with the counters' own rate over the command (loose: shared CPUs)
    rpc_iops = (a["reads"] + a["writes"] - b["reads"] - b["writes"]) / (t1 - t0)
    assert m["iops"] == pytest.approx(m["read_iops"] + m["write_iops"])
    assert 0.2 * rpc_iops < m["iops"] < 5 * rpc_iops, (m["iops"], rpc_iops)
    assert m["mibps"] == pytest.approx(m["read_mibps"] + m["write_mibps"])
    assert [(j["bdev"], j["state"]) for j in c["jobs"]] == [("m0", "running"), ("m0", "done")]
    # latency: the RPC's histograms, and percentiles of the I/Os of the sample interval only
    for cls in lathist.CLASSES:
        _between(b["latency"][cls], m["latency"][cls], a["latency"][cls], "count", f"lat.{cls}")
    done = (a["reads"] + a["writes"]) - (b["reads"] + b["writes"])
    assert 0 < m["lat_ios"] <= 1.01 * done + 100, (m["lat_ios"], done)
    assert 0 < m["p50_us"] <= m["p99_us"] <= m["p999_us"]
    # ... of the same order as a load job's own (which also counts its own path)
    lat = job["result"]["lat_us"]
    assert lat["p50"] / 30 < m["p50_us"] < 10 * lat["p50"], (m["p50_us"], lat)
    assert m["p99_us"] < 10 * lat["p99"], (m["p99_us"], lat)


def test_once_plain_text_and_down(ctl, tmp_path):
    r = srrs("console", "-s", ctl.sock, "--once")
    assert r.returncode == 0, r.stderr
    for word in ("m ", "● up", "reactor", "adaptive", "m0", "malloc", "metrics", "events"):
        assert word in r.stdout, word
    r = srrs("console", "-s", ctl.sock, "-s", str(tmp_path / "none.sock"), "--once", "--json")
    assert r.returncode == 1
    snap = json.loads(r.stdout)
    assert [c["state"] for c in snap["controllers"]] == ["up", "down"]
    assert "cannot connect" in snap["controllers"][1]["error"]
    assert any(e["type"] == "down" for e in snap["events"])


def test_metrics_counters_match_rpc_under_load(ctl):
    ctl.load(reactor=0, time_s=30)
    ctl.load(reactor=1, time_s=30, rw="randread")
    time.sleep(1.0)
    listen = ctl.rpc("status")["metrics"]["listen"]
    before = ctl.rpc("status")
    m = scrape(listen)
    after = ctl.rpc("status")
    assert sample(m, "srrs_up", controller="m") == 1
    b, a = before["bdevs"][0], after["bdevs"][0]
    for metric, field in (("srrs_bdev_read_ops_total", "reads"),
                          ("srrs_bdev_write_ops_total", "writes"),
                          ("srrs_bdev_read_bytes_total", "bytes_read"),
                          ("srrs_bdev_write_bytes_total", "bytes_written"),
                          ("srrs_bdev_errors_total", "errors")):
        v = sample(m, metric, controller="m", bdev="m0")
        assert b[field] <= v <= a[field], metric
    assert sample(m, "srrs_bdev_read_ops_total", controller="m", bdev="m0") > 1000
    # the latency histogram: count, sum and each bucket between the RPC's before and after
    for op in ("read", "write"):
        lab = {"controller": "m", "bdev": "m0", "op": op}
        lb, la = b["latency"][op], a["latency"][op]
        n = sample(m, "srrs_bdev_io_latency_seconds_count", **lab)
        assert lb["count"] <= n <= la["count"] and n > 1000
        assert sample(m, "srrs_bdev_io_latency_seconds_bucket", le="+Inf", **lab) == n
        assert lb["sum_ns"] / 1e9 <= sample(m, "srrs_bdev_io_latency_seconds_sum",
                                            **lab) <= la["sum_ns"] / 1e9
        for (ub, cb), (_, ca) in zip(lathist.cumulative(lb["buckets"]),
                                     lathist.cumulative(la["buckets"])):
            le = "+Inf" if ub == float("inf") else str(ub * 1e-6)
            v = sample(m, "srrs_bdev_io_latency_seconds_bucket", le=le, **lab)
            assert cb <= v <= ca, (op, le)
    assert sample(m, "srrs_bdev_size_bytes", controller="m", bdev="m0") == 64 << 20
    assert sample(m, "srrs_bdev_info", controller="m", bdev="m0", module="malloc") == 1
    for rb, ra in zip(before["reactors"], after["reactors"]):
        lab = {"controller": "m", "reactor": str(rb["reactor"])}
        for metric, field in (("srrs_reactor_busy_seconds_total", "busy_ns"),
                              ("srrs_reactor_idle_seconds_total", "idle_ns"),
                              ("srrs_reactor_sleep_seconds_total", "sleep_ns")):
            v = sample(m, metric, **lab)
            assert rb[field] / 1e9 <= v <= ra[field] / 1e9 + 1e-9, metric
        v = sample(m, "srrs_reactor_loops_total", **lab)
        assert rb["loops"] <= v <= ra["loops"]
        assert sample(m, "srrs_reactor_poll_mode", mode="adaptive", **lab) == 1
    # the client library's process collector (of the controller's process)
    assert sample(m, "process_resident_memory_bytes") > 0
    assert sample(m, "process_cpu_seconds_total") > 0
    # a second scrape moves on: counters read live at scrape time
    time.sleep(0.3)
    m2 = scrape(listen)
    assert (sample(m2, "srrs_bdev_read_ops_total", controller="m", bdev="m0")
            > sample(m, "srrs_bdev_read_ops_total", controller="m", bdev="m0"))
    assert ctl.rpc("status")["metrics"]["scrapes"] == 2
    # finished load jobs carry their latency percentiles
    jid = ctl.rpc("bench_bdev_start", {"bdev": "m0", "reactor": 1, "time_s": 0.3})
    time.sleep(1.0)
    m3 = scrape(listen)
    lat = [v for (name, lab), v in m3.items() if name == "srrs_load_job_latency_seconds"
           and dict(lab)["job"] == str(jid)]
    assert len(lat) == 3 and all(x > 0 for x in lat)


def test_metrics_endpoint_closes_with_the_controller(ctl):
    listen = ctl.rpc("status")["metrics"]["listen"]
    scrape(listen)
    assert ctl.stop() == 0
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://{listen}/metrics", timeout=2)


def test_no_metrics_section_no_endpoint(tmp_path):
    conf, sock = write_config(tmp_path, name="n")
    c = Controller(conf, sock)
    try:
        assert "metrics" not in c.rpc("status")
    finally:
        c.kill()


@pytest.mark.parametrize("listen, err", [
    ("nohost", "metrics.listen: expected HOST:PORT"),
    ("127.0.0.1:99999", "metrics.listen: bad port"),
    (9464, "metrics.listen: expected a string"),
])
def test_metrics_config_errors(tmp_path, listen, err):
    conf, _ = write_config(tmp_path, extra={"metrics": {"listen": listen}})
    r = srrs("start", "-c", conf, timeout=20)
    assert r.returncode == 2
    assert err in r.stderr and ".toml:" in r.stderr, r.stderr


def test_busy_mode_without_io_is_about_0pct_busy(tmp_path):
    """Pollers that find no work count as idle: a spinning reactor is not 'busy'."""
    conf, sock = write_config(tmp_path, name="b", poll_mode="busy",
                              extra={"metrics": launch.metrics("127.0.0.1:0")})
    c = Controller(conf, sock)
    try:
        time.sleep(0.5)
        listen = c.rpc("status")["metrics"]["listen"]
        m0 = scrape(listen)
        s0 = c.rpc("status")["reactors"][0]
        time.sleep(2.0)
        m1 = scrape(listen)
        s1 = c.rpc("status")["reactors"][0]
        assert s1["poll_mode"] == "busy"
        assert s1["loops"] - s0["loops"] > 10_000, "the reactor should be spinning"
        assert s1["sleep_ns"] - s0["sleep_ns"] == 0, "busy mode never sleeps"
        total = sum(s1[k] - s0[k] for k in ("busy_ns", "idle_ns", "sleep_ns"))
        assert 100 * (s1["busy_ns"] - s0["busy_ns"]) / total < 2.0
        lab = {"controller": "b", "reactor": "0"}
        busy = (sample(m1, "srrs_reactor_busy_seconds_total", **lab)
                - sample(m0, "srrs_reactor_busy_seconds_total", **lab))
        idle = (sample(m1, "srrs_reactor_idle_seconds_total", **lab)
                - sample(m0, "srrs_reactor_idle_seconds_total", **lab))
        assert idle > 0.5 and busy / (busy + idle) < 0.02
        assert sample(m1, "srrs_reactor_poll_mode", mode="busy", **lab) == 1
        r = srrs("console", "-s", sock, "--once", "--json")
        x = json.loads(r.stdout)["controllers"][0]["reactors"][0]
        assert x["poll_mode"] == "busy" and x["busy_pct_now"] < 2.0 and x["loops_per_s"] > 10_000
    finally:
        c.kill()


def test_metrics_port_in_use_fails_clearly(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        conf, _ = write_config(tmp_path, extra={"metrics": launch.metrics(f"127.0.0.1:{port}")})
        r = srrs("start", "-c", conf, timeout=20)
    assert r.returncode == 1
    assert f"[metrics] listen 127.0.0.1:{port}" in r.stderr and "in use" in r.stderr, r.stderr
