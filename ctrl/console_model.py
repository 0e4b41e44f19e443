"""The console's model (docs/architecture.md, Console): what an operator needs
to see, computed from the controllers' `status` (and, at a slower rate,
`volume_list`) results as plain typed view objects. No I/O, no rich.

`rates()` turns two samples of one controller into per-second figures (IOPS,
MiB/s, reactor busy %, latency percentiles of the interval): the counters in
`status` are cumulative since start and mean nothing to a reader as they are.
`build()` joins every controller into one `ScreenView`: the volume table
(one row per volume across the pair, ANA state per path), the pair's state
in one sentence with its reason, alerts (only conditions that need an
operator: a healthy state never is one), exports and pools.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from .iostats import interval_latency

MIB = 1 << 20
QUOTA_ALERT_PCT = 90.0    # a tenant's quota or a pool this full is an alert
_BDEV_RATES = (("read_iops", "reads", 1), ("write_iops", "writes", 1),
               ("read_mibps", "bytes_read", 1 / MIB), ("write_mibps", "bytes_written", 1 / MIB))


# ---- rates from counter deltas -----------------------------------------------------------

def rates(t0: float, old: dict, t1: float, new: dict) -> dict:
    """Per-second figures between two status results of one controller:
    {"window_s", "bdevs": {name: {read_iops, write_iops, iops, read_mibps,
    write_mibps, mibps, p50_us, p99_us, p999_us, lat_ios}}, "reactors": {idx:
    {busy_pct_now, loops_per_s}}}. A counter that went backwards (a bdev
    re-created) gives 0, never a negative rate."""
    dt = t1 - t0
    out: dict = {"window_s": dt, "bdevs": {}, "reactors": {}}
    oldb = {b["name"]: b for b in old.get("bdevs", [])}
    for b in new.get("bdevs", []):
        o = oldb.get(b["name"])
        r = {}
        for key, fld, scale in _BDEV_RATES:
            d = (b[fld] - o[fld]) if o is not None and dt > 0 else 0
            r[key] = max(0.0, d * scale / dt) if dt > 0 else 0.0
        r["iops"] = r["read_iops"] + r["write_iops"]
        r["mibps"] = r["read_mibps"] + r["write_mibps"]
        if dt > 0 and o is not None:
            r.update(interval_latency(b, o))
        else:
            r.update(p50_us=None, p99_us=None, p999_us=None, lat_ios=0)
        out["bdevs"][b["name"]] = r
    oldr = {x["reactor"]: x for x in old.get("reactors", [])}
    for x in new.get("reactors", []):
        o = oldr.get(x["reactor"])
        if o is None or dt <= 0:
            out["reactors"][x["reactor"]] = {"busy_pct_now": x["busy_pct"], "loops_per_s": 0.0}
            continue
        busy = x["busy_ns"] - o["busy_ns"]
        total = busy + (x["idle_ns"] - o["idle_ns"]) + (x["sleep_ns"] - o["sleep_ns"])
        out["reactors"][x["reactor"]] = {
            "busy_pct_now": 100.0 * busy / total if total > 0 else 0.0,
            "loops_per_s": max(0.0, (x["loops"] - o["loops"]) / dt)}
    return out


# ---- view objects -------------------------------------------------------------------------

@dataclass(frozen=True)
class Alert:
    level: str          # "error" | "warning"
    obj: str            # what it is about: "pool p0", "volume v0", "pair a+b", "controller b"
    msg: str
    time: float = 0.0   # when the console (or the controller) first saw it
    key: str = ""       # identity across refreshes (the time stays that of the first sight)


@dataclass(frozen=True)
class VolumeRow:
    name: str
    size: int
    used: Optional[int] = None
    tenant: str = ""
    kind: str = ""                     # "pool", "mirror", or the bdev module (malloc, file)
    ana: tuple = ()                    # ((controller, state), …) per exported path
    mirror: str = ""                   # "in sync", "solo", "resync", "fenced", …
    resync_pct: Optional[float] = None
    resync_left: Optional[int] = None  # bytes
    resync_eta_s: Optional[float] = None
    read_iops: float = 0.0
    write_iops: float = 0.0
    mibps: float = 0.0
    p50_us: Optional[float] = None
    p99_us: Optional[float] = None
    errors: int = 0
    bdevs: tuple = ()                  # (controller, bdev) the figures come from (sparklines)


@dataclass(frozen=True)
class PairView:
    name: str                # "a+b"
    state: str               # the worst role of the two (FENCED > SOLO > RESYNC > STARTING > PAIRED)
    sentence: str            # plain language, with the reason
    level: str               # "ok" | "warning" | "error"
    detail: str = ""         # the roles, the witness and the link, briefly


@dataclass(frozen=True)
class ExportView:
    kind: str                # "nvmf" | "vhost"
    controller: str
    name: str                # NQN or vhost device name
    volumes: tuple           # ("1:db0", …) or ("scratch",)
    where: tuple = ()        # listeners (host:port) or the vhost socket path
    ana: str = ""
    clients: tuple = ()      # (("cntlid 1", hostnqn, "2 I/O queues"), …) or guests
    state: str = ""          # vhost: listening / connected


@dataclass(frozen=True)
class PoolView:
    controller: str
    name: str
    capacity: int
    used: int
    health: str              # "ok" | "degraded"
    fragments: tuple         # ((label, used, capacity, state, engine), …)
    tenants: tuple = ()      # ((name, used, quota), …)


@dataclass(frozen=True)
class ClusterPanel:
    """The cluster as one controller's cached catalog has it (status "cluster")."""
    controller: str          # whose view
    member: str              # its member name
    prefix: str
    etcd: str                # "ok", or why etcd is not answering
    revision: int
    volumes: int
    members_total: int
    members_up: int
    members: tuple           # ((name, up, pair, health, allocated, capacity), …)
    pairs: tuple             # ((name, nodes, up, allocated, capacity, volumes), …)
    tenants: tuple           # ((name, used, quota, volumes), …)
    pairs_total: int = 0
    tenants_total: int = 0


@dataclass(frozen=True)
class ReactorRow:
    reactor: int
    state: str
    poll_mode: str
    busy_pct: float
    loops_per_s: float
    in_flight: int
    cpu: int


@dataclass(frozen=True)
class ControllerView:
    name: str
    sock: str
    state: str                           # "up" | "down" | "connecting"
    error: str = ""
    down_since: Optional[float] = None
    pid: Optional[int] = None
    uptime_s: float = 0.0
    poll_mode: str = ""
    cpu_pct: Optional[float] = None
    rss_bytes: Optional[int] = None
    threads: Optional[int] = None
    rpc_socket: str = ""
    pair_state: str = ""
    metrics: str = ""                    # the Prometheus endpoint, host:port
    reactors: tuple = ()
    jobs: tuple = ()                     # load jobs (bench_bdev_results records)


@dataclass
class ScreenView:
    time: float
    controllers: list
    volumes: list = field(default_factory=list)
    pair: Optional[PairView] = None
    alerts: list = field(default_factory=list)
    exports: list = field(default_factory=list)
    pools: list = field(default_factory=list)
    witness: Optional[dict] = None       # {endpoint, state, error, rtt_ms}
    cluster: Optional[ClusterPanel] = None


@dataclass
class Input:
    """One controller as the app knows it: its last status, rates, process
    figures, the volume_list result (slow, cached) and its reachability."""
    sock: str
    name: str
    state: str = "connecting"
    error: str = ""
    down_since: Optional[float] = None
    status: Optional[dict] = None
    rates: dict = field(default_factory=dict)
    process: dict = field(default_factory=dict)
    volumes: list = field(default_factory=list)   # volume_list records
    jobs: list = field(default_factory=list)


# ---- building the view --------------------------------------------------------------------

def build(inputs: list, now: Optional[float] = None, witness: Optional[dict] = None,
          seen: Optional[dict] = None) -> ScreenView:
    """The whole screen's content from every controller's latest input.
    seen: {alert key: first time} kept by the caller across refreshes, so an
    alert shows when it began, not when the screen was last drawn."""
    now = time.time() if now is None else now
    up = [i for i in inputs if i.status is not None and i.state == "up"]
    v = ScreenView(time=now, controllers=[_controller(i) for i in inputs], witness=witness)
    v.volumes = _safe(_volumes, [], up, [i for i in inputs if i.status is not None
                                         and i.state != "up"])
    v.pair = _safe(pair_view, None, inputs, now)
    v.exports = [e for i in up for e in _safe(_exports, [], i)]
    v.pools = [p for i in up for p in _safe(_pools, [], i)]
    v.cluster = _safe(cluster_panel, None, up)
    v.alerts = _stamp(_safe(alerts, [], inputs, v, witness), now, seen)
    return v


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _dict(x) -> dict:
    return x if isinstance(x, dict) else {}


def _list(x) -> list:
    return x if isinstance(x, list) else []


def _safe(fn, default, *args):
    """A section whose status has a shape this console does not know (a newer
    or older module) is left out instead of taking the whole screen down."""
    try:
        return fn(*args)
    except (AttributeError, KeyError, TypeError, ValueError, ZeroDivisionError):
        return default


def _controller(i: Input) -> ControllerView:
    st = i.status or {}
    rr = i.rates.get("reactors", {})
    reactors = tuple(ReactorRow(
        x["reactor"], x["state"], x["poll_mode"],
        rr.get(x["reactor"], {}).get("busy_pct_now", x["busy_pct"]),
        rr.get(x["reactor"], {}).get("loops_per_s", 0.0), x["io_outstanding"], x["cpu"])
        for x in st.get("reactors", []))
    pair = st.get("pair") if isinstance(st.get("pair"), dict) else {}
    return ControllerView(
        name=i.name, sock=i.sock, state=i.state, error=i.error, down_since=i.down_since,
        pid=st.get("pid"), uptime_s=st.get("uptime_s", 0.0), poll_mode=st.get("poll_mode", ""),
        cpu_pct=i.process.get("cpu_pct"), rss_bytes=i.process.get("rss_bytes"),
        threads=i.process.get("threads"), rpc_socket=st.get("rpc_socket", ""),
        pair_state=str(pair.get("state", "")), reactors=reactors,
        metrics=str(_dict(st.get("metrics")).get("listen") or ""), jobs=tuple(i.jobs[-4:]))


def _hidden_bdevs(st: dict) -> set:
    """Bdevs that are parts, not volumes: pool fragments and mirror replicas."""
    out = set()
    for p in _list(_dict(st.get("pool")).get("pools")):
        out.update(_dict(f).get("bdev") for f in _list(_dict(p).get("fragments")))
    for b in st.get("bdevs", []):
        if b.get("module") == "mirror" and b.get("path"):
            out.add(b["path"])
    return out


def _ana_of(st: dict) -> dict:
    """{bdev: ANA state} of the NVMe/TCP namespaces of one controller."""
    out: dict = {}
    nvmf = st.get("nvmf")
    if not isinstance(nvmf, dict):
        return out
    for sub in nvmf.get("subsystems") or ():
        groups = {g.get("id"): g.get("state") for g in sub.get("ana_groups") or ()}
        for ns in sub.get("namespaces") or ():
            if isinstance(ns, dict) and ns.get("bdev"):
                out[ns["bdev"]] = groups.get(ns.get("ana_group"), "optimized")
    return out


def _volumes(up: list, down: tuple = ()) -> list:
    """One row per volume: the same name on both controllers of a pair is one
    volume with two paths; its I/O figures are the sum of both paths'. A
    controller that does not answer adds only its paths, as unreachable."""
    rows: dict = {}
    acc: dict = {}
    for i in up:
        st = i.status
        hidden = _hidden_bdevs(st)
        lv = {v["name"]: v for v in i.volumes}
        ana = _ana_of(st)
        vhost = {d.get("bdev") for d in _list(st.get("vhost")) if isinstance(d, dict)}
        mirrors = {m.get("name"): m for m in _list(_dict(st.get("pair")).get("volumes"))
                   if isinstance(m, dict)}
        br = i.rates.get("bdevs", {})
        for b in st.get("bdevs", []):
            name = b["name"]
            if name in hidden:
                continue
            kind = b.get("module", "") + (f"/{b['engine']}" if b.get("engine") else "")
            a = acc.setdefault(name, {"size": b["size"], "kind": kind, "ana": [],
                                      "r": 0.0, "w": 0.0, "m": 0.0, "p50": None, "p99": None,
                                      "errors": 0, "bdevs": [], "used": None, "tenant": ""})
            # a mirror's replica is the pool volume of the same name, opened as NAME.replica
            rec = lv.get(name) or (lv.get(b.get("path")) if b.get("module") == "mirror" else None)
            if rec is not None:
                a["used"] = rec.get("allocated", a["used"])
                a["tenant"] = rec.get("tenant") or a["tenant"]
                if a["kind"] == "lvol":
                    a["kind"] = "pool"
            if name in ana:
                a["ana"].append((i.name, ana[name]))
            elif name in vhost:
                a["ana"].append((i.name, "vhost"))
            r = br.get(name, {})
            a["r"] += r.get("read_iops", 0.0)
            a["w"] += r.get("write_iops", 0.0)
            a["m"] += r.get("mibps", 0.0)
            for k, rk in (("p50", "p50_us"), ("p99", "p99_us")):
                if r.get(rk) is not None:
                    a[k] = max(a[k] or 0.0, r[rk])
            a["errors"] += b.get("errors", 0)
            a["bdevs"].append((i.name, name))
            m = mirrors.get(name)
            if m is not None:
                a.setdefault("mirrors", []).append(m)
    for i in down:  # its paths are still there for the hosts, and fail: say so
        for name in _ana_of(i.status):
            if name in acc:
                acc[name]["ana"].append((i.name, "unreachable"))
    for name, a in sorted(acc.items()):
        mstate, pct, left, eta = _mirror_state(a.get("mirrors", []))
        rows[name] = VolumeRow(
            name=name, size=a["size"], used=a["used"], tenant=a["tenant"],
            kind="mirror" if a.get("mirrors") else a["kind"], ana=tuple(a["ana"]), mirror=mstate,
            resync_pct=pct, resync_left=left, resync_eta_s=eta, read_iops=a["r"],
            write_iops=a["w"], mibps=a["m"], p50_us=a["p50"], p99_us=a["p99"],
            errors=a["errors"], bdevs=tuple(a["bdevs"]))
    return list(rows.values())


_MODE_WORDS = {"paired": "in sync", "solo": "solo", "fenced": "fenced",
               "resync_source": "resync", "resync_target": "resync"}


def _mirror_state(ms: list) -> tuple:
    """(state words, resync %, bytes left, ETA s) of one volume from the
    mirror records of both sides: the side copying knows the progress."""
    if not ms:
        return "", None, None, None
    modes = [str(m.get("mode", "")) for m in ms]
    rs = [m for m in ms if str(m.get("mode", "")).startswith("resync")]
    if rs:
        m = max(rs, key=lambda m: m.get("resync_left", 0))
        left = m.get("resync_left", 0) * m.get("stripe_size", 0)
        pct = 100.0 * (1.0 - m["resync_left"] / m["stripes"]) if m.get("stripes") else None
        return "resync", pct, left, m.get("resync_eta_s")
    if "fenced" in modes and all(x in ("fenced", "") for x in modes):
        return "fenced", None, None, None
    if "solo" in modes:
        m = ms[modes.index("solo")]
        dirty = m.get("dirty_stripes", 0) * m.get("stripe_size", 0)
        return "solo", None, dirty or None, None
    return _MODE_WORDS.get(modes[0], modes[0]), None, None, None


# ---- the pair -----------------------------------------------------------------------------

_ROLE_RANK = {"FENCED": 4, "SOLO": 3, "RESYNC": 2, "STARTING": 1, "PAIRED": 0}


def pair_view(inputs: list, now: float) -> Optional[PairView]:
    """The pair in one sentence, from the pair records of the controllers that
    answer (a down controller says nothing: its peer's record tells why)."""
    recs = {}
    down = []
    for i in inputs:
        p = (i.status or {}).get("pair")
        if isinstance(p, dict) and i.state == "up":
            recs[str(p.get("self", i.name))] = p
        elif i.status is not None and isinstance(i.status.get("pair"), dict):
            down.append(i)
    if not recs:
        return None
    any_rec = next(iter(recs.values()))
    name = str(any_rec.get("pair") or "+".join(sorted(recs)))
    role = max((str(p.get("state")) for p in recs.values()), key=lambda r: _ROLE_RANK.get(r, 5))
    detail = _pair_detail(recs, down)
    split = next((p for p in recs.values() if p.get("split_brain")), None)
    if split is not None:
        return PairView(name, role, f"Split brain — both replicas wrote alone: "
                        f"{split['split_brain']} (an operator chooses: srrs pair resync)",
                        "error", detail)
    solo = next((p for p in recs.values() if p.get("state") == "SOLO"), None)
    fenced = [p for p in recs.values() if p.get("state") == "FENCED"]
    resync = next((p for p in recs.values() if p.get("state") == "RESYNC"
                   and p.get("resync_role") == "source"), None) or \
        next((p for p in recs.values() if p.get("state") == "RESYNC"), None)
    if solo is not None:
        since = _clock(now - float(solo.get("in_state_s", 0.0)))
        lease = f"{_witness(solo)} granted lease" if solo.get("witness_ok") else "lease held"
        return PairView(name, "SOLO", f"Solo on {solo['self']} — {solo['peer']} unreachable "
                        f"since {since}, {lease}", "warning", detail)
    if fenced and len(fenced) == len(recs):
        p = fenced[0]
        if not p.get("peer_alive") and not p.get("witness_ok"):
            why = f"cannot reach peer or {_witness(p)}"
        elif p.get("lease_denied"):
            who = "etcd" if _witness(p) == "etcd" else "the witness"
            why = f"{who} denied the lease ({p['lease_denied']})"
        elif p.get("behind"):
            why = "this replica is behind: waiting for the peer to resync it"
        else:
            why = str(p.get("reason") or "no lease")
        on = "" if len(recs) > 1 else f" on {p['self']}"
        return PairView(name, "FENCED", f"Fenced{on} — {why}; no I/O is served", "error", detail)
    if resync is not None:
        target = resync["peer"] if resync.get("resync_role") == "source" else resync["self"]
        st, pct, left, eta = _mirror_state([m for p in recs.values()
                                            for m in p.get("volumes") or ()])
        if pct is None:
            return PairView(name, "RESYNC", f"Resyncing {target}: starting", "warning", detail)
        bits = ([fmt_bytes(left) + " left"] if left else []) + \
            ([f"ETA {fmt_duration(eta)}"] if eta else [])
        more = f" ({', '.join(bits)})" if bits else ""
        return PairView(name, "RESYNC", f"Resyncing {target}: {pct:.0f} %{more}", "warning",
                        detail)
    if role == "STARTING" or fenced:
        who = ", ".join(sorted(p["self"] for p in recs.values() if p.get("state") != "PAIRED"))
        return PairView(name, role, f"Starting — {who} waiting for its peer", "warning", detail)
    if down:
        return PairView(name, "PAIRED", f"Paired — {', '.join(i.name for i in down)} not "
                        "answering the console", "warning", detail)
    return PairView(name, "PAIRED", "Paired — both replicas current", "ok", detail)


def _witness(p: dict) -> str:
    """Who grants the pair's lease: etcd (a cluster's pair) or its witness."""
    return "etcd" if p.get("witness") == "etcd" else "witness"


def _pair_detail(recs: dict, down: list) -> str:
    parts = [f"{n} {p.get('state')} (ANA {p.get('ana', '?')})" for n, p in sorted(recs.items())]
    parts += [f"{i.name} not answering" for i in down]
    p = next(iter(recs.values()))
    parts.append(f"{_witness(p)} " + ("ok" if p.get("witness_ok") else "unreachable"))
    parts.append("mirror link " + ("up" if p.get("mirror_up") else "down"))
    return " · ".join(parts)


# ---- exports and pools --------------------------------------------------------------------

def _exports(i: Input) -> list:
    st = i.status
    out = []
    nvmf = st.get("nvmf")
    if isinstance(nvmf, dict):
        where = tuple(f"{x.get('addr')}:{x.get('port')}" for x in nvmf.get("listeners") or ()
                      if isinstance(x, dict))
        ctrls = [c for c in nvmf.get("controllers") or () if isinstance(c, dict)]
        for sub in nvmf.get("subsystems") or ():
            nqn = str(sub.get("nqn"))
            vols = tuple(f"{ns.get('nsid')}:{ns.get('bdev')}" for ns in sub.get("namespaces") or ()
                         if isinstance(ns, dict))
            ana = ",".join(sorted({str(g.get("state")) for g in sub.get("ana_groups") or ()}))
            clients = tuple((f"cntlid {c.get('cntlid')}", str(c.get("hostnqn", "")),
                             _plural(int(c.get('io_queues', 0) or 0), "I/O queue"))
                            for c in ctrls if c.get("subnqn") == nqn)
            out.append(ExportView("nvmf", i.name, nqn, vols, where, ana, clients))
    for d in st.get("vhost") or ():
        if isinstance(d, dict):
            n = int(d.get("connections", 0) or 0)
            guests = (_plural(n, "guest") + " connected",) if n else ()
            out.append(ExportView("vhost", i.name, str(d.get("name")), (str(d.get("bdev")),),
                                  (str(d.get("socket", "")),), "", guests, str(d.get("state", ""))))
    return out


def _pools(i: Input) -> list:
    sec = i.status.get("pool")
    if not isinstance(sec, dict):
        return []
    tenants = {}
    for t in sec.get("tenants") or ():
        for tp in t.get("pools") or ():
            tenants.setdefault(tp.get("pool"), []).append(
                (str(t.get("name")), int(tp.get("used", 0)), int(tp.get("quota", 0))))
    out = []
    for p in sec.get("pools") or ():
        frags = tuple((("ram" if f.get("ram") else str(f.get("path") or f.get("bdev"))),
                       int(f.get("used", 0)), int(f.get("capacity", 0)),
                       "failed" if f.get("failed") else str(f.get("state", "")),
                       str(f.get("engine") or ""))
                      for f in p.get("fragments") or ())
        out.append(PoolView(i.name, str(p.get("name")), int(p.get("capacity", 0)),
                            int(p.get("used", 0)), str(p.get("state", "ok")), frags,
                            tuple(tenants.get(p.get("name"), ()))))
    return out


def cluster_panel(up: list) -> Optional[ClusterPanel]:
    """The newest catalog among the controllers that are in a cluster (all of
    them follow the same one; a controller cut off from etcd lags)."""
    best = None
    for i in up:
        c = i.status.get("cluster")
        if isinstance(c, dict) and isinstance(c.get("catalog"), dict) and c["catalog"]:
            if best is None or c["catalog"].get("revision", 0) > best[1]["catalog"]["revision"]:
                best = (i, c)
    if best is None:
        return None
    i, c = best
    cat = c["catalog"]
    err = c.get("error") or cat.get("error") or ""
    return ClusterPanel(
        controller=i.name, member=str(c.get("name", "")), prefix=str(c.get("prefix", "")),
        etcd=f"unreachable: {err}" if err else "ok", revision=int(cat.get("revision", 0)),
        volumes=int(cat.get("volumes", 0)), members_total=int(cat.get("members_total", 0)),
        members_up=int(cat.get("members_up", 0)),
        members=tuple((str(m["name"]), bool(m["up"]), str(m.get("pair", "")),
                       str(m.get("health", "")), int(m.get("allocated", 0)),
                       int(m.get("capacity", 0))) for m in cat.get("members") or ()),
        pairs=tuple((str(p["name"]), tuple(p.get("nodes") or ()), int(p.get("up", 0)),
                     int(p.get("allocated", 0)), int(p.get("capacity", 0)),
                     int(p.get("volumes", 0))) for p in cat.get("pairs") or ()),
        tenants=tuple((str(t["name"]), int(t.get("used", 0)), int(t.get("quota", 0)),
                       int(t.get("volumes", 0))) for t in cat.get("tenants") or ()),
        pairs_total=int(cat.get("pairs_total", 0)), tenants_total=int(cat.get("tenants_total", 0)))


# ---- alerts -------------------------------------------------------------------------------

def alerts(inputs: list, v: ScreenView, witness: Optional[dict] = None) -> list:
    """Conditions an operator must act on, worst first. Healthy states (a peer
    alive, a pair paired, a pool ok) are never alerts; pair log lines of level
    warning are the event log's, not alerts."""
    out: list = []
    for i in inputs:
        if i.state == "down":
            since = f" since {_clock(i.down_since)}" if i.down_since else ""
            out.append(Alert("error", f"controller {i.name}", f"not answering{since}: {i.error}",
                             i.down_since or 0.0, f"down:{i.name}"))
    if witness and witness.get("state") == "down":
        out.append(Alert("warning", "witness", f"not answering: {witness.get('error') or ''}"
                         .rstrip(": "), 0.0, "witness"))
    if v.pair is not None and v.pair.state in ("SOLO", "FENCED") or \
            v.pair is not None and v.pair.level == "error":  # a resync is recovery, not an alert
        out.append(Alert(v.pair.level, f"pair {v.pair.name}", v.pair.sentence, 0.0,
                         f"pair:{v.pair.state}"))
    for i in inputs:
        if i.status is None or i.state != "up":
            continue
        out += _controller_alerts(i)
    for p in v.pools:
        out += _pool_alerts(p)
    for r in v.volumes:
        if r.errors:
            out.append(Alert("error", f"volume {r.name}", f"{r.errors} I/O errors", 0.0,
                             f"ioerr:{r.name}"))
    if v.cluster is not None:
        out += _cluster_alerts(v.cluster)
    out.sort(key=lambda a: a.level != "error")
    return out


def _controller_alerts(i: Input) -> list:
    st, n = i.status, i.name
    out = []
    p = st.get("pair")
    if isinstance(p, dict):
        if p.get("config_mismatch"):
            out.append(Alert("error", f"pair on {n}", f"config differs from the peer's: "
                             f"{p['config_mismatch']}", 0.0, f"mismatch:{n}"))
        link = p.get("link") or {}
        bad = int(link.get("auth_failures", 0) or 0) + int(link.get("mac_errors", 0) or 0)
        if bad:
            out.append(Alert("error", f"mirror link on {n}", f"{bad} authentication failures",
                             0.0, f"mauth:{n}"))
        for a in p.get("alerts") or ():
            if a.get("level") == "error":
                out.append(Alert("error", f"pair on {n}", str(a.get("msg")),
                                 float(a.get("time", 0.0)), f"pairerr:{n}:{a.get('msg')}"))
    nvmf = st.get("nvmf")
    if isinstance(nvmf, dict):
        failed = int((nvmf.get("auth") or {}).get("auth_failed", 0) or 0)
        if failed:
            out.append(Alert("error", f"nvmf on {n}", f"{failed} host authentication failures",
                             0.0, f"nauth:{n}"))
    for vol in i.volumes:
        if vol.get("lost_clusters"):
            out.append(Alert("error", f"volume {vol['name']}",
                             f"{vol['lost_clusters']} clusters lost with a RAM fragment "
                             "(reads fail until rewritten)", 0.0, f"lost:{n}:{vol['name']}"))
    return out


def _pool_alerts(p: PoolView) -> list:
    out = []
    obj = f"pool {p.name} on {p.controller}"
    for label, _, _, state, _ in p.fragments:
        if state in ("failed", "missing"):
            out.append(Alert("error", obj, f"fragment {label} {state}", 0.0,
                             f"frag:{p.controller}:{p.name}:{label}"))
    if p.health != "ok" and not out:
        out.append(Alert("error", obj, f"{p.health}", 0.0, f"pool:{p.controller}:{p.name}"))
    if p.capacity and 100.0 * p.used / p.capacity >= QUOTA_ALERT_PCT:
        out.append(Alert("warning", obj, f"{100.0 * p.used / p.capacity:.0f} % full", 0.0,
                         f"full:{p.controller}:{p.name}"))
    for t, used, quota in p.tenants:
        if quota and 100.0 * used / quota >= QUOTA_ALERT_PCT:
            out.append(Alert("warning", f"tenant {t}", f"quota {100.0 * used / quota:.0f} % used "
                             f"({fmt_bytes(used)} of {fmt_bytes(quota)})", 0.0,
                             f"quota:{p.controller}:{t}"))
    return out


def _cluster_alerts(c: ClusterPanel) -> list:
    out = []
    if c.etcd != "ok":
        out.append(Alert("warning", "cluster", f"etcd {c.etcd} (I/O goes on; catalog changes "
                         "wait)", 0.0, "cluster:etcd"))
    down = [m for m in c.members if not m[1]]
    if len(down) > 3:
        out.append(Alert("warning", "cluster", f"{c.members_total - c.members_up} members not "
                         "registered", 0.0, "cluster:down"))
    else:
        out += [Alert("warning", f"cluster member {m[0]}", f"not registered (pair {m[2]})"
                      if m[2] else "not registered", 0.0, f"cluster:down:{m[0]}") for m in down]
    for name, used, quota, _ in c.tenants:
        if quota and 100.0 * used / quota >= QUOTA_ALERT_PCT:
            out.append(Alert("warning", f"cluster tenant {name}", f"quota {100.0 * used / quota:.0f}"
                             f" % used ({fmt_bytes(used)} of {fmt_bytes(quota)})", 0.0,
                             f"cluster:quota:{name}"))
    return out


def _stamp(alerts_: list, now: float, seen: Optional[dict]) -> list:
    """Each alert with the time it was first seen (its own when it has one)."""
    if seen is None:
        seen = {}
    keys = set()
    out = []
    for a in alerts_:
        keys.add(a.key)
        t = a.time or seen.setdefault(a.key, now)
        out.append(Alert(a.level, a.obj, a.msg, t, a.key))
    for k in [k for k in seen if k not in keys]:
        del seen[k]  # gone: a new occurrence starts its own clock
    return out


# ---- formatting shared by the renderer and the model's sentences -------------------------

def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n:.0f} B"


def fmt_duration(s: float) -> str:
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _clock(t: Optional[float]) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else "?"
