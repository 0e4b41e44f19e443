"""I/O figures of volumes and exports from `status` records, shared by the
console and the metrics endpoint (plain Python: no compiled core, no rich).

A volume is any bdev (pool volumes, mirror bdevs of the pair, raw bdevs). An
export is an NVMe/TCP namespace or a vhost-user device; it serves one bdev,
and its figures are that bdev's (two exports of one bdev show the same
counters: the bdev layer counts per bdev, not per export).
"""

from __future__ import annotations

from typing import Optional

from ..ffi import lathist

MIB = 1 << 20


def exports_of(st: dict) -> list:
    """[{export, kind, volume}] for every export in a status result that names
    its bdev: `nvmf` namespaces as "NQN/nsN", `vhost` devices by name."""
    out = []
    nvmf = st.get("nvmf")
    if isinstance(nvmf, dict):
        for sub in nvmf.get("subsystems") or ():
            for ns in sub.get("namespaces") or ():
                if isinstance(ns, dict) and ns.get("bdev"):
                    out.append({"export": f"{sub.get('nqn')}/ns{ns.get('nsid')}",
                                "kind": "nvmf", "volume": ns["bdev"]})
    vhost = st.get("vhost")
    if isinstance(vhost, list):
        for dev in vhost:
            if isinstance(dev, dict) and dev.get("bdev"):
                out.append({"export": str(dev.get("name")), "kind": "vhost",
                            "volume": dev["bdev"]})
    return out


def _hist(b: Optional[dict], cls: str) -> list:
    lat = (b or {}).get("latency") or {}
    return (lat.get(cls) or {}).get("buckets") or []


def interval_latency(new: dict, old: Optional[dict]) -> dict:
    """p50_us, p99_us, p999_us and lat_ios of the I/Os (all classes) that
    completed between two records of one bdev: percentiles of the histograms'
    difference, not of all time. None figures when nothing completed."""
    acc = [0] * lathist.NBUCKETS
    for cls in lathist.CLASSES:
        for i, n in _hist(new, cls):
            acc[i] += n
    if old is not None:
        for cls in lathist.CLASSES:
            for i, n in _hist(old, cls):
                acc[i] -= n
        if min(acc) < 0:  # the counters started over (the bdev was re-created)
            return interval_latency(new, None)
    p50, p99, p999 = lathist.percentiles_dense(acc)
    return {"p50_us": p50, "p99_us": p99, "p999_us": p999, "lat_ios": sum(acc)}
