"""Prometheus metrics of one controller (`[metrics] listen = "HOST:PORT"`).

Every family is declared once in `TABLE` below: its name, type, base unit,
labels and help text; the collector can emit nothing else (an undeclared
name is a bug that fails the scrape, never a new series). The rules, which
`_check_table()` enforces when this module is imported:

* counters end in `_total`; a figure with a unit carries the base unit in
  its name (`_seconds`, `_bytes`, `_ratio`), before `_total` for counters;
* labels say which thing a sample is about (controller, reactor, bdev,
  export, volume, pool, fragment, tenant, peer, subsystem, ana_group,
  device, job, member, pair), never a figure; three more kinds of label are allowed: `op`
  (read|write|other) splitting an I/O family, `le`/`quantile` of
  histograms and summaries, and the `state`/`mode` of a state set, where
  each possible state is a sample, 1 for the current one and 0 for the
  others (so `srrs_pair_state{state="SOLO"} == 1` is an alert rule);
  `*_info` families carry properties as labels with the value 1;
* what is an address, a path or a port is not a metric.

Figures are read at scrape time from the same `Controller.status()` the
`status` RPC and the console use, so a scrape costs nothing between scrapes
and never shows figures older than the request. The process's own figures
(`process_cpu_seconds_total`, `process_resident_memory_bytes`,
`process_open_fds`, `process_start_time_seconds`, …) and `python_info`
come from the client library's standard collectors.

Busy % of a reactor is rate(busy) / (rate(busy) + rate(idle) + rate(sleep)):
pollers that found no work count as idle, so a busy-polling reactor without
I/O is ~0 % busy.

Latency is submit -> completion of a bdev's successful I/Os (op "other":
flush, unmap, write-zeroes), counted by the bdev layer in log-linear
microsecond buckets (ffi/lathist.py) and exported at power-of-two bounds from
1 us to 8.4 s; a series appears once that bdev has completed an I/O of that
op. p99 over 1 min: histogram_quantile(0.99, rate(srrs_bdev_io_latency_seconds_bucket[1m])).
Volumes are bdevs (pool volumes, the pair's mirror bdevs, raw bdevs). An
export (kind "nvmf": NVMe/TCP namespace "NQN/nsN"; kind "vhost": vhost-user
device) carries the figures of the bdev it serves (label volume): the bdev
layer counts per bdev, so two exports of one bdev show the same figures.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from prometheus_client import PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from ..ffi import lathist
from ..nvmf.config import ANA_STATES
from . import ha
from .iostats import exports_of
from .metrics_config import MetricsConfig, to_toml_dict
from .metrics_http import MetricsHTTP
from .pair import MIRROR_MODES
from .pool import FRAG_STATES

log = logging.getLogger("srrs")


@dataclass(frozen=True)
class Family:
    name: str       # as exposed: counters end in _total
    type: str       # counter | gauge | histogram | summary
    unit: str       # base unit the name carries ("" for a count or a 0/1)
    labels: tuple   # label names, identity first
    help: str


COUNTER, GAUGE, HISTOGRAM, SUMMARY = "counter", "gauge", "histogram", "summary"
_C = ("controller",)
_R = _C + ("reactor",)
_B = _C + ("bdev",)
_E = _C + ("export", "kind", "volume")
_J = _C + ("job", "bdev")
_P = _C + ("pool",)
_F = _P + ("fragment",)
_T = _C + ("tenant",)
_V = _P + ("volume",)
_PR = _C + ("peer",)
_M = _C + ("volume",)
_S = _C + ("subsystem",)
_D = _C + ("device",)
_CM = _C + ("member",)
_CP = _C + ("pair",)


def _f(name, typ, labels, help_, unit=""):
    return Family(name, typ, unit, labels, help_)


TABLE = (
    # -- controller --------------------------------------------------------------------
    _f("srrs_up", GAUGE, _C, "1 while the controller serves"),
    _f("srrs_uptime_seconds", GAUGE, _C, "Time since the controller started", "seconds"),
    # -- reactors (docs/architecture.md, Threads) --------------------------------------------
    _f("srrs_reactor_busy_seconds_total", COUNTER, _R, "Loop time of iterations that found work",
       "seconds"),
    _f("srrs_reactor_idle_seconds_total", COUNTER, _R,
       "Loop time of iterations that found no work", "seconds"),
    _f("srrs_reactor_sleep_seconds_total", COUNTER, _R,
       "Time blocked waiting for events (adaptive polling)", "seconds"),
    _f("srrs_reactor_loops_total", COUNTER, _R, "Loop iterations"),
    _f("srrs_reactor_messages_total", COUNTER, _R, "Messages processed"),
    _f("srrs_reactor_wakeups_total", COUNTER, _R, "Wake-ups from sleep"),
    _f("srrs_reactor_io_outstanding", GAUGE, _R, "I/Os in flight on the reactor"),
    _f("srrs_reactor_poll_mode", GAUGE, _R + ("mode",),
       "Poll mode of the reactor: 1 for the mode in use, 0 for the other"),
    # -- bdevs: every volume is one ---------------------------------------------------------
    _f("srrs_bdevs", GAUGE, _C, "Bdevs of the controller (the per-bdev families below list "
       "the busiest SCRAPE_TOP_BDEVS and the exported ones)"),
    _f("srrs_bdev_info", GAUGE, _B + ("module",), "The bdev exists; its module (malloc, null, "
       "file, lvol, mirror) as a label"),
    _f("srrs_bdev_engine_info", GAUGE, _B + ("engine",), "A file bdev's I/O engine (uring, "
       "aio, threads) as a label"),
    _f("srrs_bdev_size_bytes", GAUGE, _B, "Size of the bdev", "bytes"),
    _f("srrs_bdev_open_descriptors", GAUGE, _B, "Open descriptors of the bdev (its users)"),
    _f("srrs_bdev_read_ops_total", COUNTER, _B, "Read I/Os completed"),
    _f("srrs_bdev_write_ops_total", COUNTER, _B, "Write I/Os completed"),
    _f("srrs_bdev_flush_ops_total", COUNTER, _B, "Flush I/Os completed"),
    _f("srrs_bdev_unmap_ops_total", COUNTER, _B, "Unmap I/Os completed"),
    _f("srrs_bdev_write_zeroes_ops_total", COUNTER, _B, "Write-zeroes I/Os completed"),
    _f("srrs_bdev_read_bytes_total", COUNTER, _B, "Bytes read", "bytes"),
    _f("srrs_bdev_write_bytes_total", COUNTER, _B, "Bytes written", "bytes"),
    _f("srrs_bdev_errors_total", COUNTER, _B, "I/Os completed with an error"),
    _f("srrs_bdev_io_latency_seconds", HISTOGRAM, _B + ("op",),
       "Latency of the bdev's successful I/Os, submit to completion", "seconds"),
    # -- exports: the figures of the bdev each one serves -------------------------------------
    _f("srrs_export_ops_total", COUNTER, _E + ("op",), "I/Os completed by the bdev the export "
       "serves"),
    _f("srrs_export_bytes_total", COUNTER, _E + ("op",), "Bytes moved by the bdev the export "
       "serves", "bytes"),
    _f("srrs_export_errors_total", COUNTER, _E, "I/Os completed with an error by the bdev the "
       "export serves"),
    _f("srrs_export_io_latency_seconds", HISTOGRAM, _E + ("op",),
       "Latency of successful I/Os of the bdev the export serves", "seconds"),
    # -- finished in-controller load jobs (bench_bdev_start) -----------------------------------
    _f("srrs_load_job_bytes_total", COUNTER, _J, "Bytes moved by a finished load job", "bytes"),
    _f("srrs_load_job_errors_total", COUNTER, _J, "I/O errors of a finished load job"),
    _f("srrs_load_job_duration_seconds", GAUGE, _J, "How long a finished load job ran",
       "seconds"),
    _f("srrs_load_job_latency_seconds", SUMMARY, _J + ("quantile",),
       "Latency of a finished load job's I/Os (count: its I/Os)", "seconds"),
    # -- pools (docs/architecture.md, Pool) ------------------------------------------------------
    _f("srrs_pool_capacity_bytes", GAUGE, _P, "Capacity of the pool's fragments", "bytes"),
    _f("srrs_pool_used_bytes", GAUGE, _P, "Allocated clusters of the pool", "bytes"),
    _f("srrs_pool_volumes", GAUGE, _P, "Volumes in the pool"),
    _f("srrs_pool_degraded", GAUGE, _P, "1 while the pool has an alert (fragment failed or "
       "missing, clusters lost)"),
    _f("srrs_pool_alerts", GAUGE, _P, "Alerts the pool has now (its status lists them)"),
    _f("srrs_pool_failed_fragments", GAUGE, _P, "Fragments failed with an I/O error"),
    _f("srrs_pool_lost_clusters", GAUGE, _P, "Clusters lost with a RAM fragment's memory: "
       "reads of them fail until rewritten"),
    _f("srrs_pool_metadata_slots", GAUGE, _P, "Volume metadata slots of the pool"),
    _f("srrs_pool_metadata_slots_used", GAUGE, _P, "Volume metadata slots in use"),
    _f("srrs_pool_metadata_writes_total", COUNTER, _P, "Metadata writes of the pool"),
    _f("srrs_pool_metadata_unsure_pages", GAUGE, _P, "Metadata pages whose last commit failed "
       "and may be on disk: writes to their changed clusters wait for a new commit"),
    _f("srrs_pool_alloc_failures_total", COUNTER, _P, "Cluster allocations that failed (pool "
       "full)"),
    _f("srrs_pool_fragment_capacity_bytes", GAUGE, _F, "Capacity of the fragment", "bytes"),
    _f("srrs_pool_fragment_used_bytes", GAUGE, _F, "Allocated clusters on the fragment",
       "bytes"),
    _f("srrs_pool_fragment_failed", GAUGE, _F, "1 once the fragment failed with an I/O error"),
    _f("srrs_pool_fragment_state", GAUGE, _F + ("state",),
       "State of the fragment: 1 for the current one"),
    _f("srrs_tenant_quota_bytes", GAUGE, _T, "The tenant's quota (0: none)", "bytes"),
    _f("srrs_tenant_used_bytes", GAUGE, _T, "Clusters the tenant's volumes hold, all pools",
       "bytes"),
    _f("srrs_tenant_quota_failures_total", COUNTER, _T, "Allocations refused by the quota"),
    _f("srrs_volume_size_bytes", GAUGE, _V, "Size of the pool volume", "bytes"),
    _f("srrs_volume_allocated_bytes", GAUGE, _V, "Clusters allocated to the pool volume",
       "bytes"),
    # -- the pair (docs/architecture.md, Pair) ------------------------------------------------
    _f("srrs_pair_state", GAUGE, _PR + ("state",),
       "The pair role of this controller: 1 for the current one"),
    _f("srrs_pair_state_seconds", GAUGE, _PR, "Time in the current pair role", "seconds"),
    _f("srrs_pair_epoch", GAUGE, _PR, "Pair epoch (grows with each claim to serve alone)"),
    _f("srrs_pair_peer_alive", GAUGE, _PR, "1 while the peer is heard and its reactors loop"),
    _f("srrs_pair_witness_ok", GAUGE, _PR, "1 while the witness answers"),
    _f("srrs_pair_split_brain", GAUGE, _PR, "1 if both sides wrote alone: an operator decides"),
    _f("srrs_pair_behind", GAUGE, _PR, "1 while this replica is behind the peer's"),
    _f("srrs_pair_lease_remaining_seconds", GAUGE, _PR, "Witness lease left (serving alone)",
       "seconds"),
    _f("srrs_pair_alerts_total", COUNTER, _PR, "Alerts the pair raised"),
    _f("srrs_pair_link_up", GAUGE, _PR, "1 while the mirror link to the peer is up"),
    _f("srrs_pair_link_connects_total", COUNTER, _PR, "Mirror link connections made"),
    _f("srrs_pair_link_sent_bytes_total", COUNTER, _PR, "Bytes sent on the mirror link",
       "bytes"),
    _f("srrs_pair_link_received_bytes_total", COUNTER, _PR, "Bytes received on the mirror link",
       "bytes"),
    _f("srrs_pair_link_sent_frames_total", COUNTER, _PR, "Frames sent on the mirror link"),
    _f("srrs_pair_link_received_frames_total", COUNTER, _PR, "Frames received on the mirror "
       "link"),
    _f("srrs_pair_link_crc_errors_total", COUNTER, _PR, "Frames that failed CRC32C"),
    _f("srrs_pair_link_protocol_errors_total", COUNTER, _PR, "Frames with a bad header, "
       "length, volume or sequence number"),
    _f("srrs_pair_link_mac_errors_total", COUNTER, _PR, "Frames whose MAC failed or that "
       "replayed a sequence number"),
    _f("srrs_pair_link_auth_failures_total", COUNTER, _PR, "Mirror connections refused "
       "(handshake, deadline, address)"),
    _f("srrs_pair_link_forwards_sent_back_total", COUNTER, _PR, "Forwarded writes sent back "
       "to be sent again: the two sides' modes did not agree yet"),
    _f("srrs_pair_link_held_writes", GAUGE, _PR, "Writes waiting for the peer now"),
    _f("srrs_pair_link_held_ios", GAUGE, _PR, "VM (vhost-user) I/Os held now while the mirror "
       "cannot serve, to be started again when it can"),
    _f("srrs_pair_link_hold_retries_total", COUNTER, _PR, "Held VM I/Os started again"),
    _f("srrs_pair_link_hold_expired_total", COUNTER, _PR, "Held VM I/Os failed: the mirror did "
       "not serve within vhost_hold_ms"),
    _f("srrs_pair_link_lease_read_failures_total", COUNTER, _PR,
       "Reads failed for want of a read lease"),
    _f("srrs_mirror_mode", GAUGE, _M + ("mode",), "Mode of the paired volume's mirror: 1 for "
       "the current one"),
    _f("srrs_mirror_dirty_bytes", GAUGE, _M, "Stripes marked dirty (written while the peer "
       "was away): the lag to resync", "bytes"),
    _f("srrs_mirror_resync_active", GAUGE, _M, "1 while a resync runs"),
    _f("srrs_mirror_resync_remaining_bytes", GAUGE, _M, "Left to copy by the resync", "bytes"),
    _f("srrs_mirror_resync_copied_bytes", GAUGE, _M, "Copied since the last resync started",
       "bytes"),
    _f("srrs_mirror_resync_progress_ratio", GAUGE, _M, "Share of the volume in sync (1: all)",
       "ratio"),
    _f("srrs_mirror_writes_total", COUNTER, _M, "Host writes to the paired volume"),
    _f("srrs_mirror_peer_writes_total", COUNTER, _M, "Writes applied for the peer"),
    _f("srrs_mirror_forwarded_writes_total", COUNTER, _M, "Writes forwarded to the stripe's "
       "owner"),
    _f("srrs_mirror_remote_reads_total", COUNTER, _M, "Reads served by the peer (stripe not "
       "yet in sync)"),
    _f("srrs_mirror_fenced_ios_total", COUNTER, _M, "I/Os refused while fenced"),
    _f("srrs_mirror_local_read_errors_total", COUNTER, _M, "Reads our replica failed, asked "
       "of the peer instead"),
    # -- NVMe-oF/TCP target (docs/architecture.md, Exports) ------------------------------------
    _f("srrs_nvmf_connections", GAUGE, _C, "Open NVMe/TCP connections"),
    _f("srrs_nvmf_handshaking_connections", GAUGE, _C, "Connections not yet connected"),
    _f("srrs_nvmf_host_controllers", GAUGE, _C, "NVMe controllers of connected hosts"),
    _f("srrs_nvmf_accepted_connections_total", COUNTER, _C, "Connections accepted"),
    _f("srrs_nvmf_closed_connections_total", COUNTER, _C, "Connections closed"),
    _f("srrs_nvmf_refused_connections_total", COUNTER, _C, "Connections refused (limits)"),
    _f("srrs_nvmf_evicted_connections_total", COUNTER, _C, "Unconnected connections evicted "
       "for new ones"),
    _f("srrs_nvmf_handshake_timeouts_total", COUNTER, _C, "Connections that did not connect in "
       "time"),
    _f("srrs_nvmf_protocol_errors_total", COUNTER, _C, "Connections dropped for a protocol "
       "error"),
    _f("srrs_nvmf_keep_alive_expirations_total", COUNTER, _C, "Controllers ended by keep-alive "
       "timeout"),
    _f("srrs_nvmf_auth_successes_total", COUNTER, _C, "DH-HMAC-CHAP authentications passed"),
    _f("srrs_nvmf_auth_failures_total", COUNTER, _C, "DH-HMAC-CHAP authentications failed"),
    _f("srrs_nvmf_subsystem_namespaces", GAUGE, _S, "Namespaces of the subsystem"),
    _f("srrs_nvmf_subsystem_host_controllers", GAUGE, _S, "Connected host controllers of the "
       "subsystem"),
    _f("srrs_nvmf_ana_state", GAUGE, _S + ("ana_group", "state"),
       "ANA state of the group: 1 for the current one"),
    # -- the cluster as this controller's cached catalog has it (docs/architecture.md, Cluster) --
    _f("srrs_cluster_registered", GAUGE, _C, "1 while this controller's member key is in etcd"),
    _f("srrs_cluster_catalog_synced", GAUGE, _C, "1 while the catalog watch follows etcd (0: "
       "etcd unreachable, the last catalog is kept)"),
    _f("srrs_cluster_members", GAUGE, _C, "Controllers registered in the cluster"),
    _f("srrs_cluster_member_up", GAUGE, _CM, "1 while the member is registered; 0 for a pair's "
       "controller that is not"),
    _f("srrs_cluster_pairs", GAUGE, _C, "Pairs in the catalog"),
    _f("srrs_cluster_pair_capacity_bytes", GAUGE, _CP, "Capacity of the pair", "bytes"),
    _f("srrs_cluster_pair_allocated_bytes", GAUGE, _CP, "Bytes allocated to the pair's volumes",
       "bytes"),
    _f("srrs_cluster_pair_volumes", GAUGE, _CP, "Catalog volumes placed on the pair"),
    _f("srrs_cluster_tenant_quota_bytes", GAUGE, _T, "The tenant's cluster-wide quota", "bytes"),
    _f("srrs_cluster_tenant_used_bytes", GAUGE, _T, "Bytes of the tenant's catalog volumes",
       "bytes"),
    _f("srrs_cluster_volumes", GAUGE, _C, "Volumes in the catalog"),
    _f("srrs_cluster_etcd_errors_total", COUNTER, _C, "etcd requests that failed (a member "
       "down, no leader, refused)"),
    _f("srrs_cluster_registrations_total", COUNTER, _C, "Times this controller registered (1, "
       "then once per lost lease)"),
    _f("srrs_cluster_catalog_changes_total", COUNTER, _C, "Catalog changes applied from the "
       "watch"),
    _f("srrs_cluster_catalog_snapshots_total", COUNTER, _C, "Whole-catalog reads (the first, "
       "then after an etcd outage or a compaction)"),
    _f("srrs_cluster_discovery_updates_total", COUNTER, _C, "Discovery log changes pushed to "
       "the NVMe/TCP target from the catalog"),
    # -- vhost-user devices --------------------------------------------------------------------
    _f("srrs_vhost_connected", GAUGE, _D, "1 while a vhost-user front end is connected"),
    _f("srrs_vhost_connections_total", COUNTER, _D, "Front-end connections accepted"),
    _f("srrs_vhost_refused_connections_total", COUNTER, _D, "Front-end connections refused"),
)
FAMILIES = {f.name: f for f in TABLE}

_STATE_LABELS = {"state", "mode"}  # the last label of a state set


def _check_table() -> None:
    """The naming rules of the module docstring, checked once at import."""
    assert len(FAMILIES) == len(TABLE), "a family is declared twice"
    for f in TABLE:
        base = f.name[:-len("_total")] if f.type == COUNTER else f.name
        assert f.name.startswith("srrs_") and f.type in (COUNTER, GAUGE, HISTOGRAM, SUMMARY), f
        assert (f.type == COUNTER) == f.name.endswith("_total"), f"{f.name}: counters end in _total"
        assert not f.unit or base.endswith("_" + f.unit), f"{f.name}: unit {f.unit} not in the name"
        assert f.help and f.labels[0] == "controller", f.name
        for suffix in ("_seconds", "_bytes", "_ratio"):
            assert not base.endswith(suffix) or f.unit == suffix[1:], f"{f.name}: unit not declared"
        if f.labels[-1] in _STATE_LABELS:
            assert f.type == GAUGE, f.name


_check_table()


class _Families:
    """The samples of one scrape, added by family name; only declared names."""

    def __init__(self):
        self.fams: dict = {}

    def _get(self, name: str) -> Metric:
        m = self.fams.get(name)
        if m is None:
            f = FAMILIES[name]
            labels = list(f.labels)
            if f.type == COUNTER:
                m = CounterMetricFamily(f.name, f.help, labels=labels, unit=f.unit)
            elif f.type == GAUGE:
                m = GaugeMetricFamily(f.name, f.help, labels=labels, unit=f.unit)
            elif f.type == HISTOGRAM:
                m = HistogramMetricFamily(f.name, f.help, labels=labels, unit=f.unit)
            else:
                m = SummaryMetricFamily(f.name, f.help, labels=labels[:-1], unit=f.unit)
            self.fams[name] = m
        return m

    def add(self, name: str, labels: list, value: float) -> None:
        self._get(name).add_metric([str(x) for x in labels], float(value))

    def states(self, name: str, labels: list, states: Iterable[str], current: str) -> None:
        """A state set: one sample per state, 1 for the current one."""
        states = list(states)
        for s in states + ([current] if current not in states else []):
            self.add(name, labels + [s], 1 if s == current else 0)

    def histogram(self, name: str, labels: list, rec: dict) -> None:
        """From a latency class record of bdev_list ({count, sum_ns, buckets})."""
        cum = lathist.cumulative(rec.get("buckets") or [])
        self._get(name).add_metric([str(x) for x in labels],
                                   [(le, n) for le, (_, n) in zip(_LE, cum)],
                                   rec.get("sum_ns", 0) * _NS)

    def summary(self, name: str, labels: list, count: int, total: float, quantiles: dict) -> None:
        m = self._get(name)
        labels = [str(x) for x in labels]
        m.add_metric(labels, count, total)
        names = FAMILIES[name].labels
        for q, v in quantiles.items():
            m.samples.append(Sample(name, dict(zip(names, labels + [q])), v))

    def __iter__(self):
        return iter(self.fams.values())


_NS = 1e-9
_US = 1e-6
_LE = [floatToGoString(b * _US) for b in lathist.PROM_BOUNDS_US] + ["+Inf"]


# ---- the figures, section by section ------------------------------------------------------

def _reactors(out: _Families, c: str, reactors: list) -> None:
    for r in reactors:
        lv = [c, r["reactor"]]
        out.add("srrs_reactor_busy_seconds_total", lv, r["busy_ns"] * _NS)
        out.add("srrs_reactor_idle_seconds_total", lv, r["idle_ns"] * _NS)
        out.add("srrs_reactor_sleep_seconds_total", lv, r["sleep_ns"] * _NS)
        out.add("srrs_reactor_loops_total", lv, r["loops"])
        out.add("srrs_reactor_messages_total", lv, r["msgs"])
        out.add("srrs_reactor_wakeups_total", lv, r["wakeups"])
        out.add("srrs_reactor_io_outstanding", lv, r["io_outstanding"])
        out.states("srrs_reactor_poll_mode", lv, ("adaptive", "busy"), r["poll_mode"])


_BDEV_COUNTERS = (("srrs_bdev_read_ops_total", "reads"), ("srrs_bdev_write_ops_total", "writes"),
                  ("srrs_bdev_flush_ops_total", "flushes"), ("srrs_bdev_unmap_ops_total", "unmaps"),
                  ("srrs_bdev_write_zeroes_ops_total", "write_zeroes"),
                  ("srrs_bdev_read_bytes_total", "bytes_read"),
                  ("srrs_bdev_write_bytes_total", "bytes_written"),
                  ("srrs_bdev_errors_total", "errors"))


def _bdevs(out: _Families, c: str, bdevs: list) -> None:
    for b in bdevs:
        lv = [c, b["name"]]
        out.add("srrs_bdev_info", lv + [b["module"]], 1)
        if b.get("engine"):
            out.add("srrs_bdev_engine_info", lv + [b["engine"]], 1)
        out.add("srrs_bdev_size_bytes", lv, b["size"])
        out.add("srrs_bdev_open_descriptors", lv, b["open_count"])
        for name, field in _BDEV_COUNTERS:
            out.add(name, lv, b[field])
        for op, rec in (b.get("latency") or {}).items():
            if rec.get("count"):
                out.histogram("srrs_bdev_io_latency_seconds", lv + [op], rec)


def _exports(out: _Families, c: str, st: dict) -> None:
    byname = {b["name"]: b for b in st.get("bdevs", [])}
    for e in exports_of(st):
        b = byname.get(e["volume"])
        if b is None:
            continue
        lv = [c, e["export"], e["kind"], e["volume"]]
        out.add("srrs_export_ops_total", lv + ["read"], b["reads"])
        out.add("srrs_export_ops_total", lv + ["write"], b["writes"])
        out.add("srrs_export_ops_total", lv + ["other"],
                b["flushes"] + b["unmaps"] + b["write_zeroes"])
        out.add("srrs_export_bytes_total", lv + ["read"], b["bytes_read"])
        out.add("srrs_export_bytes_total", lv + ["write"], b["bytes_written"])
        out.add("srrs_export_errors_total", lv, b["errors"])
        for op, rec in (b.get("latency") or {}).items():
            if rec.get("count"):
                out.histogram("srrs_export_io_latency_seconds", lv + [op], rec)


def _jobs(out: _Families, c: str, jobs: list) -> None:
    for j in jobs:
        res = j.get("result")
        if not res:
            continue
        lv = [c, j["id"], j["bdev"]]
        lat = res["lat_us"]
        out.add("srrs_load_job_bytes_total", lv, res["bytes"])
        out.add("srrs_load_job_errors_total", lv, res["errors"])
        out.add("srrs_load_job_duration_seconds", lv, res["elapsed_s"])
        out.summary("srrs_load_job_latency_seconds", lv, res["ios"],
                    lat["avg"] * _US * res["ios"],
                    {"0.5": lat["p50"] * _US, "0.99": lat["p99"] * _US,
                     "0.999": lat["p999"] * _US})


def _listed_volumes(pool: Any, bdevs: list) -> list:
    """The pool's volumes among the listed bdevs (the busiest and the exported:
    the scrape stays small at 100,000 volumes), looked up one by one in C."""
    if pool is None:
        return []
    infos = (pool.volume_info(b["name"]) for b in bdevs)  # a mirror bears its volume's name
    return [v for v in infos if v is not None]


def _pools(out: _Families, c: str, st: dict, svc: Any, bdevs: list = ()) -> None:
    for p in st.get("pools", []):
        lv = [c, p["name"]]
        out.add("srrs_pool_capacity_bytes", lv, p["capacity"])
        out.add("srrs_pool_used_bytes", lv, p["used"])
        out.add("srrs_pool_volumes", lv, p["volumes"])
        out.add("srrs_pool_degraded", lv, p["degraded"])
        out.add("srrs_pool_alerts", lv, len(p["alerts"]))
        out.add("srrs_pool_failed_fragments", lv, p["failed_fragments"])
        out.add("srrs_pool_lost_clusters", lv, p["lost_clusters"])
        out.add("srrs_pool_metadata_slots", lv, p["md_slots"])
        out.add("srrs_pool_metadata_slots_used", lv, p["md_slots_used"])
        out.add("srrs_pool_metadata_writes_total", lv, p["md_writes"])
        out.add("srrs_pool_metadata_unsure_pages", lv, p.get("md_unsure_pages", 0))
        out.add("srrs_pool_alloc_failures_total", lv, p["alloc_failures"])
        for f in p["fragments"]:
            fl = lv + [f["index"]]
            out.add("srrs_pool_fragment_capacity_bytes", fl, f["capacity"])
            out.add("srrs_pool_fragment_used_bytes", fl, f["used"])
            out.add("srrs_pool_fragment_failed", fl, f["failed"])
            out.states("srrs_pool_fragment_state", fl, FRAG_STATES.values(), f["state"])
        pool = getattr(svc, "pools", {}).get(p["name"])
        for v in _listed_volumes(pool, bdevs):
            vl = lv + [v["name"]]
            out.add("srrs_volume_size_bytes", vl, v["size"])
            out.add("srrs_volume_allocated_bytes", vl, v["allocated"])
    for t in st.get("tenants", []):
        lv = [c, t["name"]]
        out.add("srrs_tenant_quota_bytes", lv, t["quota"])
        out.add("srrs_tenant_used_bytes", lv, t["used"])
        out.add("srrs_tenant_quota_failures_total", lv,
                sum(i["quota_failures"] for i in t["pools"]))


_LINK = (("srrs_pair_link_connects_total", "connects"),
         ("srrs_pair_link_sent_bytes_total", "tx_bytes"),
         ("srrs_pair_link_received_bytes_total", "rx_bytes"),
         ("srrs_pair_link_sent_frames_total", "tx_frames"),
         ("srrs_pair_link_received_frames_total", "rx_frames"),
         ("srrs_pair_link_crc_errors_total", "crc_errors"),
         ("srrs_pair_link_protocol_errors_total", "proto_errors"),
         ("srrs_pair_link_mac_errors_total", "mac_errors"),
         ("srrs_pair_link_auth_failures_total", "auth_failures"),
         ("srrs_pair_link_forwards_sent_back_total", "fwd_bounced"),
         ("srrs_pair_link_held_writes", "held_writes"),
         ("srrs_pair_link_held_ios", "held_ios"),
         ("srrs_pair_link_hold_retries_total", "hold_retries"),
         ("srrs_pair_link_hold_expired_total", "hold_expired"),
         ("srrs_pair_link_lease_read_failures_total", "lease_reads_failed"))
_MIRROR = (("srrs_mirror_writes_total", "writes"), ("srrs_mirror_peer_writes_total", "replicated"),
           ("srrs_mirror_forwarded_writes_total", "forwarded"),
           ("srrs_mirror_remote_reads_total", "remote_reads"),
           ("srrs_mirror_fenced_ios_total", "fenced_ios"),
           ("srrs_mirror_local_read_errors_total", "local_read_errors"),
           ("srrs_mirror_resync_active", "resync_active"),
           ("srrs_mirror_resync_copied_bytes", "resync_bytes"),
           ("srrs_mirror_resync_progress_ratio", "resync_progress"))


def _pair(out: _Families, c: str, p: dict, svc: Any) -> None:
    lv = [c, p["peer"]]
    out.states("srrs_pair_state", lv, ha.ROLES, p["state"])
    out.add("srrs_pair_state_seconds", lv, p["in_state_s"])
    out.add("srrs_pair_epoch", lv, p["epoch"])
    out.add("srrs_pair_peer_alive", lv, p["peer_alive"])
    out.add("srrs_pair_witness_ok", lv, p["witness_ok"])
    out.add("srrs_pair_split_brain", lv, bool(p["split_brain"]))  # its message, or ""
    out.add("srrs_pair_behind", lv, p["behind"])
    out.add("srrs_pair_lease_remaining_seconds", lv, p["lease_left_s"])
    out.add("srrs_pair_alerts_total", lv, getattr(svc, "alerts_raised", 0))
    link = p["link"]
    out.add("srrs_pair_link_up", lv, link["up"])
    for name, field in _LINK:
        out.add(name, lv, link[field])
    for v in p["volumes"]:
        vl = [c, v["name"]]
        out.states("srrs_mirror_mode", vl, MIRROR_MODES, v["mode"])
        out.add("srrs_mirror_dirty_bytes", vl, v["dirty_stripes"] * v["stripe_size"])
        out.add("srrs_mirror_resync_remaining_bytes", vl, v["resync_left"] * v["stripe_size"])
        for name, field in _MIRROR:
            out.add(name, vl, v[field])


_NVMF = (("srrs_nvmf_connections", "conns"), ("srrs_nvmf_handshaking_connections", "handshaking"),
         ("srrs_nvmf_host_controllers", "ctrlrs"),
         ("srrs_nvmf_accepted_connections_total", "accepted"),
         ("srrs_nvmf_closed_connections_total", "closed"),
         ("srrs_nvmf_refused_connections_total", "refused"),
         ("srrs_nvmf_evicted_connections_total", "evicted"),
         ("srrs_nvmf_handshake_timeouts_total", "handshake_timeouts"),
         ("srrs_nvmf_protocol_errors_total", "proto_errors"),
         ("srrs_nvmf_keep_alive_expirations_total", "kato_expired"))


def _nvmf(out: _Families, c: str, n: dict) -> None:
    for name, field in _NVMF:
        out.add(name, [c], n["stats"][field])
    out.add("srrs_nvmf_auth_successes_total", [c], n["auth"]["auth_ok"])
    out.add("srrs_nvmf_auth_failures_total", [c], n["auth"]["auth_failed"])
    ctrls: dict = {}
    for x in n["controllers"]:
        ctrls[x["subnqn"]] = ctrls.get(x["subnqn"], 0) + 1
    for s in n["subsystems"]:
        lv = [c, s["nqn"]]
        out.add("srrs_nvmf_subsystem_namespaces", lv, len(s["namespaces"]))
        out.add("srrs_nvmf_subsystem_host_controllers", lv, ctrls.get(s["nqn"], 0))
        for g in s["ana_groups"]:
            out.states("srrs_nvmf_ana_state", lv + [g["id"]], ANA_STATES, g["state"])


def _cluster(out: _Families, c: str, st: dict, svc: Any) -> None:
    cat = st.get("catalog") or {}
    out.add("srrs_cluster_registered", [c], st["registered"])
    # the watch retries by itself while etcd is away: the member refresh's error says so
    out.add("srrs_cluster_catalog_synced", [c], bool(cat.get("synced")) and not st.get("error"))
    out.add("srrs_cluster_etcd_errors_total", [c], st.get("etcd_errors", 0))
    out.add("srrs_cluster_registrations_total", [c], st["registrations"])
    out.add("srrs_cluster_catalog_changes_total", [c], cat.get("changes", 0))
    out.add("srrs_cluster_catalog_snapshots_total", [c], cat.get("snapshots", 0))
    out.add("srrs_cluster_discovery_updates_total", [c], st.get("discovery_pushes", 0))
    snap = getattr(getattr(svc, "view", None), "snap", None)
    if snap is None:
        return      # no catalog read yet: no cluster figures rather than zeroes
    out.add("srrs_cluster_members", [c], len(snap.members))
    out.add("srrs_cluster_pairs", [c], len(snap.pairs))
    out.add("srrs_cluster_volumes", [c], len(snap.volumes))
    nodes = {n for p in snap.pairs.values() for n in p.nodes} | set(snap.members)
    for n in sorted(nodes):
        out.add("srrs_cluster_member_up", [c, n], n in snap.members)
    per_pair: dict = {}
    for v in snap.volumes.values():
        per_pair[v.pair] = per_pair.get(v.pair, 0) + 1
    for p in snap.pairs.values():
        out.add("srrs_cluster_pair_capacity_bytes", [c, p.name], p.capacity)
        out.add("srrs_cluster_pair_allocated_bytes", [c, p.name], p.allocated)
        out.add("srrs_cluster_pair_volumes", [c, p.name], per_pair.get(p.name, 0))
    for t in snap.tenants.values():
        out.add("srrs_cluster_tenant_quota_bytes", [c, t.name], t.quota)
        out.add("srrs_cluster_tenant_used_bytes", [c, t.name], t.used)


def _vhost(out: _Families, c: str, devices: list) -> None:
    for d in devices:
        lv = [c, d["name"]]
        out.add("srrs_vhost_connected", lv, d["state"] == "connected")
        out.add("srrs_vhost_connections_total", lv, d["connections"])
        out.add("srrs_vhost_refused_connections_total", lv, d["refused"])


def families(st: dict, services: Optional[dict] = None) -> Iterable[Metric]:
    """Every srrs_* family from a `status` result (plus `jobs`, the
    `bench_bdev_results` list, when present)."""
    out = _Families()
    c = st["name"]
    out.add("srrs_up", [c], 1)
    out.add("srrs_uptime_seconds", [c], st["uptime_s"])
    _reactors(out, c, st.get("reactors", []))
    if "bdev_count" in st:
        out.add("srrs_bdevs", [c], st["bdev_count"])
    _bdevs(out, c, st.get("bdevs", []))
    _exports(out, c, st)
    _jobs(out, c, st.get("jobs", []))
    if st.get("pool"):
        _pools(out, c, st["pool"], (services or {}).get("pool"), st.get("bdevs", []))
    if st.get("pair"):
        _pair(out, c, st["pair"], (services or {}).get("pair"))
    if st.get("nvmf"):
        _nvmf(out, c, st["nvmf"])
    if st.get("vhost"):
        _vhost(out, c, st["vhost"])
    if st.get("cluster"):
        _cluster(out, c, st["cluster"], (services or {}).get("cluster"))
    return out


# Per-bdev and per-volume series of a scrape: the busiest this many (and every
# exported bdev); all of them below that count. 100,000 volumes would be ~2M
# series and seconds per scrape (docs/architecture.md, Control plane at scale).
SCRAPE_TOP_BDEVS = 100


class SrrsCollector:
    """Reads the controller's live stats at scrape time."""

    def __init__(self, ctl: Any):
        self.ctl = ctl
        self.scrapes = 0

    def describe(self) -> list:
        return []  # which series exist depends on what exists at scrape time

    def collect(self) -> Iterable[Metric]:
        ctl = self.ctl
        self.scrapes += 1
        with ctl.lock:
            if ctl.core is None:  # stopping
                out = _Families()
                out.add("srrs_up", [ctl.name], 0)
                return list(out)
            st = ctl.status(top=SCRAPE_TOP_BDEVS)
            st["jobs"] = [{k: v for k, v in j.items() if not k.startswith("_")}
                          for j in ctl.jobs]
            return list(families(st, dict(ctl.services)))


class MetricsService:
    """The HTTP endpoint; owned by the controller, closed before the core."""

    def __init__(self, ctl: Any, conf: MetricsConfig):
        self.conf = conf
        self.collector = SrrsCollector(ctl)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        # the client library's standard process_* and python_info families
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.http = MetricsHTTP(conf, self.registry)
        bound = self.http.server_address
        self.listen = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
        log.info("metrics on %s://%s/metrics (scrapers: %s)", self.http.scheme, self.listen,
                 self.http.auth)

    def status(self) -> dict:
        return {"listen": self.listen, "scrapes": self.collector.scrapes,
                "refused": self.http.refused, "scheme": self.http.scheme,
                "auth": self.http.auth}

    def to_toml_dict(self) -> dict:
        return to_toml_dict(self.conf)

    def close(self) -> None:
        self.http.close()


def start(ctl: Any, section: Optional[MetricsConfig]) -> Optional[MetricsService]:
    """Service entry point (daemon SERVICES): no [metrics] section, no endpoint."""
    if section is None:
        return None
    return MetricsService(ctl, section)
