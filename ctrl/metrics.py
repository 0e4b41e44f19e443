"""Prometheus metrics of one controller (`[metrics] listen = "HOST:PORT"`).

Served with the `prometheus-client` library from a custom Collector that reads
the live stats at scrape time (the same `Controller.status()` the `status` RPC
and the console use), so a scrape costs nothing between scrapes and can never
show figures older than the request. Names and labels are stable:

    srrs_up{controller}                                   1 while serving
    srrs_uptime_seconds{controller}
    srrs_process_cpu_seconds_total{controller}            user + system
    srrs_process_resident_memory_bytes{controller}
    srrs_process_threads{controller}
    srrs_reactor_busy_seconds_total{controller,reactor}   loop time that found work
    srrs_reactor_idle_seconds_total{controller,reactor}   spinning without work
    srrs_reactor_sleep_seconds_total{controller,reactor}  blocked in epoll (adaptive)
    srrs_reactor_loops_total / _messages_total / _wakeups_total{controller,reactor}
    srrs_reactor_io_outstanding{controller,reactor}
    srrs_reactor_poll_mode{controller,reactor,mode}       1
    srrs_bdev_{read,write,flush,unmap,write_zeroes}_ops_total{controller,bdev}
    srrs_bdev_{read,write}_bytes_total{controller,bdev}
    srrs_bdev_errors_total{controller,bdev}
    srrs_bdev_size_bytes / srrs_bdev_open_count{controller,bdev,module}
    srrs_bdev_io_latency_seconds{controller,bdev,op}      histogram, op read|write|other
    srrs_export_ops_total{controller,export,kind,volume,op}          op read|write|other
    srrs_export_bytes_total{controller,export,kind,volume,op}        op read|write
    srrs_export_errors_total{controller,export,kind,volume}
    srrs_export_io_latency_seconds{controller,export,kind,volume,op} histogram
    srrs_load_job_{iops,mibps,errors}{controller,job,bdev}            finished load jobs
    srrs_load_job_latency_microseconds{controller,job,bdev,quantile}  finished load jobs

Busy % is rate(busy) / (rate(busy) + rate(idle) + rate(sleep)): pollers that
found no work count as idle, so a busy-polling reactor without I/O is ~0 % busy.

Latency is submit -> completion of the bdev's successful I/Os (op "other":
flush, unmap, write-zeroes), counted by the bdev layer in log-linear
microsecond buckets (ffi/lathist.py) and exported at power-of-two bounds from
1 us to 8.4 s; a series appears once that bdev has completed an I/O of that op.
p99 over 1 min: histogram_quantile(0.99, rate(srrs_bdev_io_latency_seconds_bucket[1m])).
An export (kind "nvmf": NVMe/TCP namespace "NQN/nsN"; kind "vhost": vhost-user
device) carries the figures of the bdev it serves (label volume): the bdev
layer counts per bdev, so two exports of one bdev show the same figures.

Sections of export/pool/pair services: a service with `metrics(controller)`
yielding prometheus metric families is asked for them; otherwise the numeric
leaves of its `status()` are exported as gauges `srrs_<section>_<path>` with
the identifying keys of list entries (name, nqn, …) as labels, and string
leaves named `state`/`*_state` as `srrs_<section>_<path>_<key>{<key>="…"} 1`.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Iterable, Optional

import psutil
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import start_http_server
from prometheus_client.utils import floatToGoString

from ..ffi import lathist
from .iostats import exports_of
from .metrics_config import MetricsConfig, split_host_port, to_toml_dict

log = logging.getLogger("srrs")

_NS = 1e-9
# (metric suffix, bdev_list field, help)
_BDEV_COUNTERS = [
    ("read_ops", "reads", "Read I/Os completed"),
    ("write_ops", "writes", "Write I/Os completed"),
    ("read_bytes", "bytes_read", "Bytes read"),
    ("write_bytes", "bytes_written", "Bytes written"),
    ("flush_ops", "flushes", "Flush I/Os completed"),
    ("unmap_ops", "unmaps", "Unmap I/Os completed"),
    ("write_zeroes_ops", "write_zeroes", "Write-zeroes I/Os completed"),
    ("errors", "errors", "I/Os completed with an error"),
]
_REACTOR_COUNTERS = [
    ("busy_seconds", "busy_ns", _NS, "Loop time of iterations that found work"),
    ("idle_seconds", "idle_ns", _NS, "Loop time of iterations that found no work"),
    ("sleep_seconds", "sleep_ns", _NS, "Time blocked waiting for events (adaptive polling)"),
    ("loops", "loops", 1, "Loop iterations"),
    ("messages", "msgs", 1, "Messages processed"),
    ("wakeups", "wakeups", 1, "Wake-ups from sleep"),
]
_CORE_KEYS = {"name", "pid", "uptime_s", "rpc_socket", "poll_mode", "reactors", "bdevs", "metrics"}
_ID_KEYS = ("name", "nqn", "id", "cntlid", "qid", "index", "path", "volume", "bdev", "host",
            "socket", "addr", "listen")


class SrrsCollector:
    """Reads the controller's live stats at scrape time."""

    def __init__(self, ctl: Any):
        self.ctl = ctl
        self.scrapes = 0
        self._proc = psutil.Process(os.getpid())

    def describe(self) -> list:
        return []  # families depend on what exists at scrape time

    def collect(self) -> Iterable[Metric]:
        ctl = self.ctl
        with ctl.lock:
            if ctl.core is None:
                st = None
            else:
                st = ctl.status()
                st["jobs"] = [{k: v for k, v in j.items() if not k.startswith("_")}
                              for j in ctl.jobs]
                services = dict(ctl.services)
        self.scrapes += 1
        name = ctl.name
        up = GaugeMetricFamily("srrs_up", "1 while the controller serves", labels=["controller"])
        up.add_metric([name], 0 if st is None else 1)
        yield up
        if st is None:
            return
        yield from core_families(st, self._proc)
        for key, val in st.items():
            if key in _CORE_KEYS or key == "jobs":
                continue
            svc = services.get(key)
            if svc is not None and hasattr(svc, "metrics"):
                yield from svc.metrics(name)
            else:
                yield from section_families(name, key, val)


def core_families(st: dict, proc: Optional[psutil.Process] = None) -> Iterable[Metric]:
    """The controller, reactor, bdev and load-job families from a `status` result
    (plus `jobs`, the `bench_bdev_results` list, when present)."""
    c = st["name"]
    g = GaugeMetricFamily("srrs_uptime_seconds", "Seconds since the controller started",
                          labels=["controller"])
    g.add_metric([c], st["uptime_s"])
    yield g
    if proc is not None:
        try:
            with proc.oneshot():
                t = proc.cpu_times()
                rss = proc.memory_info().rss
                nthreads = proc.num_threads()
        except psutil.Error:
            pass
        else:
            cpu = CounterMetricFamily("srrs_process_cpu_seconds", "Controller process CPU time "
                                      "(user + system)", labels=["controller"])
            cpu.add_metric([c], t.user + t.system)
            yield cpu
            m = GaugeMetricFamily("srrs_process_resident_memory_bytes", "Controller process RSS",
                                  labels=["controller"])
            m.add_metric([c], rss)
            yield m
            n = GaugeMetricFamily("srrs_process_threads", "Controller process threads",
                                  labels=["controller"])
            n.add_metric([c], nthreads)
            yield n

    rl = ["controller", "reactor"]
    reactors = st.get("reactors", [])
    for suffix, field, scale, help_ in _REACTOR_COUNTERS:
        f = CounterMetricFamily(f"srrs_reactor_{suffix}", help_, labels=rl)
        for r in reactors:
            f.add_metric([c, str(r["reactor"])], r[field] * scale)
        yield f
    f = GaugeMetricFamily("srrs_reactor_io_outstanding", "I/Os in flight on the reactor", labels=rl)
    for r in reactors:
        f.add_metric([c, str(r["reactor"])], r["io_outstanding"])
    yield f
    f = GaugeMetricFamily("srrs_reactor_poll_mode", "Poll mode of the reactor (1 for the mode "
                          "label in use)", labels=rl + ["mode"])
    for r in reactors:
        f.add_metric([c, str(r["reactor"]), r["poll_mode"]], 1)
    yield f

    bl = ["controller", "bdev"]
    bdevs = st.get("bdevs", [])
    for suffix, field, help_ in _BDEV_COUNTERS:
        f = CounterMetricFamily(f"srrs_bdev_{suffix}", help_, labels=bl)
        for b in bdevs:
            f.add_metric([c, b["name"]], b[field])
        yield f
    size = GaugeMetricFamily("srrs_bdev_size_bytes", "Size of the bdev", labels=bl + ["module"])
    opens = GaugeMetricFamily("srrs_bdev_open_count", "Open descriptors of the bdev", labels=bl)
    for b in bdevs:
        size.add_metric([c, b["name"], b["module"]], b["size"])
        opens.add_metric([c, b["name"]], b["open_count"])
    yield size
    yield opens
    yield from latency_families(c, bdevs)
    yield from export_families(c, st)

    jobs = [j for j in st.get("jobs", []) if j.get("result")]
    if jobs:
        jl = ["controller", "job", "bdev"]
        iops = GaugeMetricFamily("srrs_load_job_iops", "IOPS of a finished load job", labels=jl)
        mibps = GaugeMetricFamily("srrs_load_job_mibps", "MiB/s of a finished load job", labels=jl)
        errs = GaugeMetricFamily("srrs_load_job_errors", "I/O errors of a finished load job",
                                 labels=jl)
        lat = GaugeMetricFamily("srrs_load_job_latency_microseconds", "Latency percentiles of a "
                                "finished load job", labels=jl + ["quantile"])
        for j in jobs:
            lv = [c, str(j["id"]), j["bdev"]]
            res = j["result"]
            iops.add_metric(lv, res["iops"])
            mibps.add_metric(lv, res["mibps"])
            errs.add_metric(lv, res["errors"])
            for q, k in (("0.5", "p50"), ("0.99", "p99"), ("0.999", "p999")):
                lat.add_metric(lv + [q], res["lat_us"][k])
        yield from (iops, mibps, errs, lat)


_LE = [floatToGoString(b * 1e-6) for b in lathist.PROM_BOUNDS_US] + ["+Inf"]


def _add_histogram(f: HistogramMetricFamily, labels: list, rec: dict) -> None:
    """One labelled histogram from a latency class record of bdev_list
    ({count, sum_ns, buckets}) at the exported bounds."""
    cum = lathist.cumulative(rec.get("buckets") or [])
    f.add_metric(labels, [(le, n) for le, (_, n) in zip(_LE, cum)], rec.get("sum_ns", 0) * _NS)


def latency_families(c: str, bdevs: list) -> Iterable[Metric]:
    f = HistogramMetricFamily("srrs_bdev_io_latency_seconds", "Latency of the bdev's "
                              "successful I/Os, submit to completion", labels=["controller",
                                                                               "bdev", "op"])
    for b in bdevs:
        for op, rec in (b.get("latency") or {}).items():
            if rec.get("count"):
                _add_histogram(f, [c, b["name"], op], rec)
    yield f


def export_families(c: str, st: dict) -> Iterable[Metric]:
    """Each export with the figures of the bdev it serves (see the module docstring)."""
    byname = {b["name"]: b for b in st.get("bdevs", [])}
    el = ["controller", "export", "kind", "volume"]
    ops = CounterMetricFamily("srrs_export_ops", "I/Os completed by the bdev the export "
                              "serves", labels=el + ["op"])
    nbytes = CounterMetricFamily("srrs_export_bytes", "Bytes moved by the bdev the export "
                                 "serves", labels=el + ["op"])
    errs = CounterMetricFamily("srrs_export_errors", "I/Os completed with an error by the bdev "
                               "the export serves", labels=el)
    lat = HistogramMetricFamily("srrs_export_io_latency_seconds", "Latency of successful I/Os "
                                "of the bdev the export serves", labels=el + ["op"])
    for e in exports_of(st):
        b = byname.get(e["volume"])
        if b is None:
            continue
        lv = [c, e["export"], e["kind"], e["volume"]]
        ops.add_metric(lv + ["read"], b["reads"])
        ops.add_metric(lv + ["write"], b["writes"])
        ops.add_metric(lv + ["other"], b["flushes"] + b["unmaps"] + b["write_zeroes"])
        nbytes.add_metric(lv + ["read"], b["bytes_read"])
        nbytes.add_metric(lv + ["write"], b["bytes_written"])
        errs.add_metric(lv, b["errors"])
        for op, rec in (b.get("latency") or {}).items():
            if rec.get("count"):
                _add_histogram(lat, lv + [op], rec)
    yield from (ops, nbytes, errs, lat)


_BAD = re.compile(r"[^a-zA-Z0-9_]")


def _metric_name(parts: list) -> str:
    return _BAD.sub("_", "_".join(p for p in parts if p)).strip("_")


def section_families(controller: str, section: str, value: Any) -> Iterable[Metric]:
    """Generic gauges from a service's status() (see the module docstring)."""
    samples: dict = {}  # name -> list of (labels dict, value)

    def walk(v: Any, path: list, labels: dict, skip: str = "") -> None:
        if isinstance(v, bool):
            samples.setdefault(_metric_name(path), []).append((labels, 1 if v else 0))
        elif isinstance(v, (int, float)):
            samples.setdefault(_metric_name(path), []).append((labels, v))
        elif isinstance(v, dict):
            for k, x in v.items():
                if isinstance(x, str) and (k == "state" or k.endswith("_state")):
                    samples.setdefault(_metric_name(path + [k]), []).append(
                        ({**labels, _metric_name([k]): x}, 1))
                elif k != skip and (k not in _ID_KEYS or not isinstance(x, str)):
                    walk(x, path + [str(k)], labels)
        elif isinstance(v, list):
            for i, x in enumerate(v):
                lab = dict(labels)
                key = None
                if isinstance(x, dict):
                    key = next((k for k in _ID_KEYS if isinstance(x.get(k), (str, int))
                                and not isinstance(x.get(k), bool)), None)
                lname = _metric_name([path[-1] if path else "item", key or "index"])
                lab[lname] = str(x[key]) if key else str(i)
                walk(x, path, lab, key or "")

    walk(value, ["srrs", section], {})
    for name, rows in sorted(samples.items()):
        keys = sorted({k for lab, _ in rows for k in lab})
        f = GaugeMetricFamily(name, f"{section} status field (generic)",
                              labels=["controller"] + keys)
        seen = set()
        for lab, v in rows:
            lv = tuple([controller] + [lab.get(k, "") for k in keys])
            if lv in seen:
                continue  # two entries with the same identity: keep the first
            seen.add(lv)
            f.add_metric(list(lv), v)
        yield f


class MetricsService:
    """The HTTP endpoint; owned by the controller, closed before the core."""

    def __init__(self, ctl: Any, conf: MetricsConfig):
        self.conf = conf
        self.collector = SrrsCollector(ctl)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        host, port = split_host_port(conf.listen)
        try:
            self.httpd, self.thread = start_http_server(port, host, self.registry)
        except OSError as e:
            raise OSError(e.errno, f"[metrics] listen {conf.listen}: {e.strerror or e}") from None
        bound = self.httpd.server_address
        self.listen = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
        log.info("metrics on http://%s/metrics", self.listen)

    def status(self) -> dict:
        return {"listen": self.listen, "scrapes": self.collector.scrapes}

    def to_toml_dict(self) -> dict:
        return to_toml_dict(self.conf)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def start(ctl: Any, section: Optional[MetricsConfig]) -> Optional[MetricsService]:
    """Service entry point (daemon SERVICES): no [metrics] section, no endpoint."""
    if section is None:
        return None
    return MetricsService(ctl, section)
