"""A controller's cached view of the cluster catalog (docs/architecture.md, Cluster).

`ClusterView` follows the catalog in one thread (a snapshot, then the watch
from the revision after it; a fresh snapshot after a compaction or an etcd
outage) and keeps the latest `Snapshot`. Readers never go to etcd: `status()`
and metrics read `summary()` (computed once per catalog change), and
listeners (`add_listener`) run in the view's thread after every change and
once a second while nothing changes (so a listener whose target appeared late
catches up).

`discovery_entries()` is the cluster part of the NVMe/TCP discovery log, a pure
function of a snapshot; `DiscoveryFeed` pushes it to the C target when it
changes (nvmf/discovery.c filters it per host at each log request).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from . import etcd
from .cluster_catalog import Catalog, Snapshot

log = logging.getLogger("srrs.cluster")

TICK_S = 1.0
MAX_ROWS = 256          # rows per list in summary(): the console shows "+N more"
HIDDEN_STATES = ("creating", "deleting")    # not exported (yet / any more)


class ClusterView:
    def __init__(self, catalog: Catalog, name: str = ""):
        self.catalog, self.name = catalog, name
        self.snap: Optional[Snapshot] = None
        self.synced = False             # the watch is running from the snapshot
        self.error = ""
        self.changes = 0                # watched changes applied
        self.snapshots = 0              # snapshots read (the first, then after outages)
        self.updated = 0.0              # time.time() of the last applied change
        self._listeners: List[Callable[[Snapshot], None]] = []
        self._summary: tuple = (None, None)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="srrs-cluster-view", daemon=True)
        self._thread.start()

    def add_listener(self, fn: Callable[[Snapshot], None]) -> None:
        with self._lock:
            self._listeners.append(fn)

    # -- the thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except etcd.Compacted:
                log.info("cluster: catalog watch compacted: reading a new snapshot")
            except (etcd.EtcdError, OSError, ValueError) as e:
                self._fail(e)
            self.synced = False

    def _follow(self) -> None:
        snap = self.catalog.snapshot()
        self.snapshots += 1
        self._set(snap, 0)
        w = self.catalog.watch(snap.revision + 1)
        self.synced, self.error = True, ""
        try:
            while not self._stop.is_set():
                chs = w.get(TICK_S)
                if chs:
                    for ch in chs:
                        snap = snap.apply(ch)
                    self._set(snap, len(chs))
                else:
                    self._notify(snap)
        finally:
            w.close()

    def _fail(self, e: Exception) -> None:
        if str(e) != self.error:
            log.warning("cluster: following the catalog: %s", e)
        self.error = str(e)
        if self.snap is not None:
            self._notify(self.snap)     # listeners keep the last view meanwhile
        self._stop.wait(TICK_S)

    def _set(self, snap: Snapshot, n: int) -> None:
        self.snap, self.updated = snap, time.time()
        self.changes += n
        self._notify(snap)

    def _notify(self, snap: Snapshot) -> None:
        with self._lock:
            fns = list(self._listeners)
        for fn in fns:
            try:
                fn(snap)
            except Exception:   # one listener's bug must not stop the view
                log.exception("cluster: catalog listener %r failed", fn)

    # -- readers ----------------------------------------------------------------------------
    def summary(self) -> dict:
        """Counts and per-member / pair / tenant figures of the cached catalog
        (recomputed only when the snapshot changed: a status call costs a dict copy)."""
        snap = self.snap
        key, val = self._summary
        if snap is None or key is not snap:
            val = summarize(snap) if snap is not None else {}
            self._summary = (snap, val)
        return dict(val, synced=self.synced, error=self.error, changes=self.changes,
                    snapshots=self.snapshots,
                    age_s=round(time.time() - self.updated, 3) if self.updated else None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def summarize(snap: Snapshot) -> dict:
    """Members (registered, and the pairs' nodes that are not: down), pairs
    with free space and volume counts, tenants with quota use."""
    per_pair: Dict[str, int] = {}
    for v in snap.volumes.values():
        per_pair[v.pair] = per_pair.get(v.pair, 0) + 1
    names = set(snap.members)
    for p in snap.pairs.values():
        names.update(p.nodes)
    members = []
    for n in sorted(names):
        m = snap.members.get(n)
        pair = m.pair if m else next((p.name for p in snap.pairs.values() if n in p.nodes), "")
        members.append({"name": n, "up": m is not None, "pair": pair,
                        "health": m.health if m else "down",
                        "capacity": m.capacity if m else 0, "allocated": m.allocated if m else 0,
                        "zone": m.zone if m else "", "version": m.version if m else ""})
    pairs = [{"name": p.name, "nodes": list(p.nodes), "capacity": p.capacity,
              "allocated": p.allocated, "free": p.free, "labels": dict(p.labels),
              "volumes": per_pair.get(p.name, 0),
              "up": sum(1 for n in p.nodes if n in snap.members)}
             for p in sorted(snap.pairs.values(), key=lambda p: p.name)]
    tenants = [{"name": t.name, "quota": t.quota, "used": t.used, "volumes": t.volumes}
               for t in sorted(snap.tenants.values(), key=lambda t: t.name)]
    moves = [move_row(m, snap) for m in sorted(snap.moves.values(), key=lambda m: m.uuid)
             if m.phase in ("copying", "cancelling")]
    return {"revision": snap.revision, "volumes": len(snap.volumes), "moves": moves[:MAX_ROWS],
            "moves_active": len(moves),
            "members_total": len(members), "members_up": len(snap.members),
            "pairs_total": len(pairs), "tenants_total": len(tenants),
            "members": members[:MAX_ROWS], "pairs": pairs[:MAX_ROWS], "tenants": tenants[:MAX_ROWS]}


def move_row(m, snap: Optional[Snapshot] = None) -> dict:
    """A move as `srrs cluster moves` shows it: the record, its volume's name,
    progress (0..1), rate (bytes/s of this epoch's copy) and ETA (seconds)."""
    v = snap.volumes.get(m.uuid) if snap is not None else None
    el = (m.updated - m.epoch_started) if m.updated and m.epoch_started else 0.0
    rate = m.copied / el if el > 0 else 0.0
    left = max(0, m.total - m.copied)
    d = {k: getattr(m, k) for k in ("uuid", "src", "dst", "phase", "epoch", "tee", "target",
                                    "total", "copied", "started", "finished", "pause_ms",
                                    "error", "size", "waiting")}
    d.update(limit=m.rate, quiet=list(m.quiet), dst_hosts=list(m.dst_hosts), name=f"{v.tenant}/{v.name}" if v is not None else "",
             progress=round(m.copied / m.total, 4) if m.total else (1.0 if m.phase == "done"
                                                                   else 0.0),
             rate=round(rate), eta_s=round(left / rate, 1) if rate > 0 and
             m.phase == "copying" else None)
    return d


# ---- cluster-wide discovery ------------------------------------------------------------

def _split_listen(s: str):
    """"IPv4:PORT" or "[IPv6]:PORT" -> (addr, port) or None."""
    host, _, port = str(s).rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return (host, port) if host and port.isdigit() else None


def pair_addresses(snap: Snapshot, pair: str, self_name: str = "") -> List[tuple]:
    """The NVMe/TCP (addr, port) of the running controllers of a pair, from
    their registrations (its two nodes once the catalog names them). A wildcard address is kept only for this controller
    (its C target reports it at the address the host connected to); nobody can
    reach a peer's wildcard."""
    p = snap.pairs.get(pair)
    if p is not None and len(p.nodes) == 2:
        # the pair's nodes only: a controller registered for it ahead of a replace
        # (`srrs cluster replace`) is no path before the catalog names it
        nodes = set(p.nodes)
    else:
        nodes = {m.name for m in snap.members.values() if m.pair == pair} | set(
            p.nodes if p else ())
        nodes -= set(p.replaced if p else ())
    out = []
    for n in sorted(nodes):
        m = snap.members.get(n)
        for a in (m.addresses.get("nvmf", ()) if m else ()):
            hp = _split_listen(a)
            if hp and (n == self_name or hp[0] not in ("0.0.0.0", "::")):
                out.append(hp)
    return out


def discovery_entries(snap: Snapshot, self_name: str = "") -> List[dict]:
    """One entry per exported volume and address of its pair, for the hosts of
    the volume's allow-list (a volume without one is listed to nobody)."""
    from .cluster import volume_nqn  # cluster imports this module

    addrs: Dict[str, List[tuple]] = {}
    out = []
    for v in sorted(snap.volumes.values(), key=lambda v: v.uuid):
        if not v.hosts or v.state in HIDDEN_STATES:
            continue
        pairs = [v.pair]
        m = snap.moving(v.uuid)
        if m is not None and m.phase == "copying":
            # a move: the destination's paths too, so hosts connect them before
            # the cutover (docs/architecture.md, Cluster, Volume moves)
            pairs.append(m.dst)
        for pr in pairs:
            if pr not in addrs:
                addrs[pr] = pair_addresses(snap, pr, self_name)
            for a, p in addrs[pr]:
                out.append({"subnqn": volume_nqn(v.uuid), "traddr": a, "trsvcid": p,
                            "hosts": sorted(v.hosts)})
    return out


class DiscoveryFeed:
    """Keeps the C target's cluster discovery table equal to the catalog's
    (a view listener). Recomputes only when volumes, pairs or the members'
    addresses changed; pushes only a different table (each push bumps the
    log's generation and raises the discovery-log-change AEN)."""

    def __init__(self, ctl: Any, self_name: str):
        self.ctl, self.self_name = ctl, self_name
        self.pushes = 0
        self._key: tuple = ()
        self._entries: Optional[List[dict]] = None
        self._pushed = (None, None)     # (target, entries) last pushed

    def __call__(self, snap: Snapshot) -> None:
        key = (snap.volumes, snap.pairs, snap.moves,
               {n: (m.pair, repr(m.addresses)) for n, m in snap.members.items()})
        if (self._entries is None or any(key[i] is not self._key[i] for i in range(3))
                or key[3] != self._key[3]):
            self._entries = discovery_entries(snap, self.self_name)
            self._key = key
        tgt = getattr(self.ctl, "nvmf", None)
        if tgt is None or not hasattr(tgt, "set_discovery"):
            return
        last_tgt, last = self._pushed
        if last_tgt is tgt and (last is self._entries or last == self._entries):
            return
        tgt.set_discovery(self._entries)
        self._pushed = (tgt, self._entries)
        self.pushes += 1
        log.info("cluster: discovery log: %d cluster subsystem ports", len(self._entries))
