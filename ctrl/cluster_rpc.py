"""RPC methods of the cluster (`srrs cluster ...`), declared in `METHODS`
(srrs.rpcdef). Any controller with [cluster] answers them from etcd: the
catalog is the same from everywhere, and a change is one catalog transaction
(ctrl/cluster_catalog.py) that the controllers of the volume's pair then
converge to (ctrl/cluster_sync.py)."""

from __future__ import annotations

from dataclasses import asdict

from ..rpcdef import (
    AlreadyExists,
    InvalidParams,
    MethodTable,
    NoSpace,
    NotConfigured,
    NotFound,
    RpcError,
)
from ..rpcdef import P as _P
from . import cluster_catalog as cat
from . import etcd
from .cluster import volume_nqn

METHODS = MethodTable()


def _svc(ctl):
    if getattr(ctl, "cluster", None) is None:
        raise NotConfigured("this controller has no [cluster] section")
    return ctl.cluster


def _call(fn, *a, **kw):
    """A catalog call, its refusals as the RPC error kinds."""
    try:
        return fn(*a, **kw)
    except cat.QuotaExceeded as e:
        raise NoSpace(str(e)) from None
    except cat.Conflict as e:
        raise AlreadyExists(str(e)) from None
    except cat.NotFound as e:
        raise NotFound(str(e)) from None
    except cat.CatalogError as e:
        msg = str(e)
        raise (NoSpace if "free" in msg else InvalidParams)(msg) from None
    except etcd.EtcdError as e:
        raise RpcError(f"etcd: {e}") from None


def _vol(v: cat.Volume) -> dict:
    d = asdict(v)
    d["hosts"] = list(v.hosts)
    d["nqn"] = volume_nqn(v.uuid)
    return d


_TENANT = _P("tenant", help="the tenant owning the volume")
_VNAME = _P("name", help="volume name (unique per tenant)", positional=True)


@METHODS.method("cluster_status")
def cluster_status(ctl, p: dict):
    """This controller in the cluster (registration, convergence) and the cluster's totals."""
    svc = _svc(ctl)
    out = dict(svc.status())
    sync = getattr(ctl, "catalog_sync", None)
    out["sync"] = sync.status() if sync is not None else None
    try:        # this controller's view still answers while etcd does not
        snap = svc.catalog.snapshot()
    except etcd.EtcdError as e:
        out["catalog_error"] = str(e)
        return out
    out.update(revision=snap.revision, members=sorted(snap.members), pairs=len(snap.pairs),
               tenants=len(snap.tenants), volumes=len(snap.volumes))
    return out


@METHODS.method("cluster_pairs")
def cluster_pairs(ctl, p: dict):
    """Every pair: nodes, capacity, allocated, free, labels, live members, volume count."""
    snap = _call(_svc(ctl).catalog.snapshot)
    nvol: dict = {}
    for v in snap.volumes.values():
        nvol[v.pair] = nvol.get(v.pair, 0) + 1
    out = []
    for name, pr in sorted(snap.pairs.items()):
        d = asdict(pr)
        d.update(nodes=list(pr.nodes), free=pr.free, volumes=nvol.get(name, 0),
                 members=sorted(m.name for m in snap.members.values() if m.pair == name))
        d.pop("slots", None)
        out.append(d)
    return out


@METHODS.method("cluster_volumes", _P("tenant", default="", help="only this tenant's"))
def cluster_volumes(ctl, p: dict):
    """Every volume of the catalog (uuid, name, size, tenant, pair, state, hosts, NQN)."""
    snap = _call(_svc(ctl).catalog.snapshot)
    return [_vol(v) for v in sorted(snap.volumes.values(), key=lambda v: (v.tenant, v.name))
            if not p["tenant"] or v.tenant == p["tenant"]]


@METHODS.method("cluster_tenants")
def cluster_tenants(ctl, p: dict):
    """Every tenant: quota, used bytes, volume count."""
    snap = _call(_svc(ctl).catalog.snapshot)
    return [asdict(t) for _, t in sorted(snap.tenants.items())]


@METHODS.method("cluster_tenant_set", _P("name", help="tenant name", positional=True),
                _P("quota", "size", help="bytes the tenant's volumes may total"))
def cluster_tenant_set(ctl, p: dict):
    """Create a tenant or change its quota (its usage is kept)."""
    return asdict(_call(_svc(ctl).catalog.put_tenant, p["name"], p["quota"]))


@METHODS.method("cluster_pair_set", _P("name", help="pair name (its controllers' names, "
                                                    "sorted, joined by '+')", positional=True),
                _P("capacity", "size", help="bytes its volumes may total"),
                _P("zone", default="", help="zone label placement may ask for"),
                _P("nodes", "list", None, help="its two controllers' names"))
def cluster_pair_set(ctl, p: dict):
    """Declare a pair (or change its capacity / zone); its allocation is kept."""
    # without --nodes an existing pair keeps its own (a replaced server stays out)
    labels = {"zone": p["zone"]} if p["zone"] else {}
    pr = _call(_svc(ctl).catalog.put_pair, p["name"], p.get("nodes") or None, p["capacity"],
               labels, new_nodes=p["name"].split("+"))
    return {**asdict(pr), "nodes": list(pr.nodes), "slots": list(pr.slots)}


@METHODS.method("cluster_volume_create", _VNAME, _P("size", "size", help="bytes"), _TENANT,
                _P("zone", default="", help="only a pair with this zone label"),
                _P("hosts", "list", None, help="host NQNs allowed (\"*\": any; default none)"))
def cluster_volume_create(ctl, p: dict):
    """Create a volume on the pair placement picks (most free space), within the
    tenant's quota; the same name and size again returns the existing volume."""
    labels = {"zone": p["zone"]} if p["zone"] else {}
    return _vol(_call(_svc(ctl).catalog.create_volume, p["tenant"], p["name"], p["size"],
                      labels=labels, hosts=tuple(p.get("hosts") or ())))


@METHODS.method("cluster_volume_delete", _VNAME, _TENANT)
def cluster_volume_delete(ctl, p: dict):
    """Delete a volume (its replicas and subsystem go); false when there was none."""
    return _call(_svc(ctl).catalog.delete_volume, p["tenant"], p["name"])


@METHODS.method("cluster_volume_resize", _VNAME, _TENANT, _P("size", "size", help="new size"))
def cluster_volume_resize(ctl, p: dict):
    """Grow a volume (never shrink) within the tenant's quota and its pair's space."""
    return _vol(_call(_svc(ctl).catalog.resize_volume, p["tenant"], p["name"], p["size"]))


@METHODS.method("cluster_volume_hosts", _VNAME, _TENANT,
                _P("hosts", "list", help="host NQNs allowed (replaces the list; \"*\": any)"))
def cluster_volume_hosts(ctl, p: dict):
    """Set the host allow-list of a volume's subsystem (both controllers follow)."""
    return _vol(_call(_svc(ctl).catalog.set_volume_hosts, p["tenant"], p["name"], p["hosts"]))


# ---- volume moves (docs/architecture.md, Cluster, Volume moves) ----------------------------

def _first_up(snap: cat.Snapshot, pair: str) -> str:
    """The pair's first registered controller (by name) that takes move links."""
    p = snap.pairs.get(pair)
    nodes = sorted(set(p.nodes if p else ()) |
                   {m.name for m in snap.members.values() if m.pair == pair})
    for n in nodes:
        m = snap.members.get(n)
        if m is not None and "move" in m.addresses:
            return n
    raise InvalidParams(f"pair {pair}: no registered controller to run the move")


@METHODS.method("cluster_volume_move", _VNAME, _TENANT,
                _P("to", help="the destination pair"),
                _P("rate", "size", 0, help="the copy's limit in bytes/s (0: none); again "
                                           "on a running move: its new limit"))
def cluster_volume_move(ctl, p: dict):
    """Move a volume to another pair online: the destination builds its replicas
    while hosts keep using it, then one etcd transaction cuts over (`srrs cluster
    moves` shows progress, rate and ETA; `move-cancel` stops it)."""
    import os
    import time

    from .cluster_view import move_row

    c = _svc(ctl).catalog
    snap = _call(c.snapshot)
    v = next((x for x in snap.volumes.values()
              if x.tenant == p["tenant"] and x.name == p["name"]), None)
    if v is None:
        raise NotFound(f"no volume {p['tenant']}/{p['name']}")
    if p["to"] not in snap.pairs:
        raise NotFound(f"no pair {p['to']!r}")
    old = snap.moving(v.uuid)
    if old is not None:
        tee, target = old.tee, old.target
    else:
        tee, target = _first_up(snap, v.pair), _first_up(snap, p["to"])
    m = _call(c.start_move, p["tenant"], p["name"], p["to"], tee, target,
              os.urandom(32).hex(), time.time(), p["rate"])
    if m.rate != p["rate"]:
        from dataclasses import replace

        m = _call(c.update_move, v.uuid, lambda x: replace(x, rate=p["rate"])
                  if x.phase == "copying" else None) or m
    return move_row(m, snap)


@METHODS.method("cluster_moves", _P("all", "bool", False, help="finished moves too"))
def cluster_moves(ctl, p: dict):
    """Volume moves: phase, source and destination, tee and target, progress,
    rate (bytes/s) and ETA (s)."""
    from .cluster_view import move_row

    snap = _call(_svc(ctl).catalog.snapshot)
    return [move_row(m, snap) for m in sorted(snap.moves.values(), key=lambda m: m.started)
            if p["all"] or m.phase in cat.MOVE_ACTIVE]


@METHODS.method("cluster_move_cancel", _VNAME, _TENANT)
def cluster_move_cancel(ctl, p: dict):
    """Cancel a volume's move: it stays on its pair, the destination's replicas go."""
    from dataclasses import replace

    c = _svc(ctl).catalog
    v = _call(c.volume_by_name, p["tenant"], p["name"])
    if v is None:
        raise NotFound(f"no volume {p['tenant']}/{p['name']}")
    m = _call(c.update_move, v.uuid, lambda x: replace(x, phase="cancelling")
              if x.phase == "copying" else None)
    if m is None:
        raise NotFound(f"volume {p['tenant']}/{p['name']} is not moving")
    return True


# ---- rebalance and drain (docs/architecture.md, Cluster, Rebalance and drain) --------------

def _busy(snap: cat.Snapshot) -> set:
    return {u for u, m in snap.moves.items() if m.phase in cat.MOVE_ACTIVE}


@METHODS.method("cluster_rebalance",
                _P("spread", "float", 0.10, help="most minus least used pair to reach (0.10: "
                                                 "ten points of capacity)"),
                _P("max_moves", "int", 2, help="moves running at a time"),
                _P("dry_run", "bool", False, help="only show the first round's plan"),
                _P("stop", "bool", False, help="drop the standing rebalance (moves running "
                                               "finish)"))
def cluster_rebalance(ctl, p: dict):
    """Move volumes until every pair's use (allocated / capacity) is within the
    spread, a bounded number of moves at a time; returns the first round's plan.
    The rebalance stands in etcd until reached; one controller drives it."""
    from .rebalance import plan_rebalance

    c = _svc(ctl).catalog
    if p["stop"]:
        _call(c.set_rebalance_goal, None)
        return {"stopped": True}
    if not 0 <= p["spread"] <= 1:
        raise InvalidParams(f"spread {p['spread']}: expected 0 to 1")
    if p["max_moves"] < 1:
        raise InvalidParams("max_moves must be at least 1")
    snap = _call(c.snapshot)
    busy = _busy(snap)
    plan = plan_rebalance(snap, spread=p["spread"], max_moves=max(0, p["max_moves"] - len(busy)),
                          busy=busy)
    out = dict(plan.as_dict(), running=len(busy), dry_run=p["dry_run"])
    if not p["dry_run"]:
        import time

        _call(c.set_rebalance_goal, {"spread": p["spread"], "max_moves": p["max_moves"],
                                     "started": time.time()})
    return out


@METHODS.method("cluster_drain", _P("pair", help="the pair to empty", positional=True),
                _P("dry_run", "bool", False, help="only show the plan"))
def cluster_drain(ctl, p: dict):
    """Move every volume off a pair, then retire it (it takes no new volume from
    the start). Refused, with nothing moved, when the rest of the cluster cannot
    take its volumes."""
    from .rebalance import DrainRefused, plan_drain

    c = _svc(ctl).catalog
    snap = _call(c.snapshot)
    pr = snap.pairs.get(p["pair"])
    if pr is None:
        raise NotFound(f"no pair {p['pair']!r}")
    if pr.state == "retired":
        return {"pair": p["pair"], "state": "retired", "moves": []}
    try:
        plan = plan_drain(snap, p["pair"], busy=_busy(snap))
    except DrainRefused as e:
        raise NoSpace(str(e)) from None
    if not p["dry_run"]:
        _call(c.set_pair_state, p["pair"], "draining")
    return dict(plan.as_dict(), pair=p["pair"], dry_run=p["dry_run"],
                state=pr.state if p["dry_run"] else "draining")


@METHODS.method("cluster_undrain", _P("pair", help="the pair", positional=True))
def cluster_undrain(ctl, p: dict):
    """Put a draining or retired pair back in service (moves running finish)."""
    pr = _call(_svc(ctl).catalog.set_pair_state, p["pair"], "")
    return {**asdict(pr), "nodes": list(pr.nodes), "slots": list(pr.slots)}


@METHODS.method("cluster_replace", _P("node", help="the controller to replace (a dead or "
                                                   "fenced server of a pair)", positional=True),
                _P("with", help="the new controller, started and registered for that pair"))
def cluster_replace(ctl, p: dict):
    """Replace one server of a pair: the new controller becomes the survivor's
    peer and gets a full copy of every volume while the survivor serves; the
    old one's registration goes and it never rejoins (docs/architecture.md,
    Cluster, Replacing a server). Refused, nothing changed, unless the survivor
    is healthy and SOLO, the new controller registered for the pair and no move
    runs on the pair."""
    pr = _call(_svc(ctl).catalog.replace_node, p["node"], p["with"])
    return {"pair": pr.name, "nodes": list(pr.nodes), "replaced": list(pr.replaced),
            "survivor": next(n for n in pr.nodes if n != p["with"])}
