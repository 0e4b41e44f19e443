"""RPC methods of pools, volumes and tenants (the only RPC-aware file of the
pool module). Declared in `METHODS` (srrs.rpcdef); handlers call the
PoolService and return JSON. Optional params without a default here are
defaulted by ctrl/pool_config.py, which parses them like a config table."""

from __future__ import annotations

from dataclasses import replace

from ..rpcdef import InvalidParams, MethodTable, NotConfigured
from ..rpcdef import P as _P
from ..schema import FILE_ENGINES, check_name
from .pool_config import PLACEMENTS, parse_fragment, parse_pool, parse_tenant, parse_volume

METHODS = MethodTable()


def _svc(ctl):
    if getattr(ctl, "pool", None) is None:
        raise NotConfigured("this controller has no pool service")
    return ctl.pool


def _parse(fn, p):
    try:
        return fn(p)
    except ValueError as e:
        raise InvalidParams(str(e)) from None


_NAME = _P("name", help="pool name")
_POOL = _P("pool", help="pool name")
_FRAGS = "fragments: list of {path, size, weight} or {ram: SIZE, weight} (JSON on the command line)"


@METHODS.method("pool_create", _NAME, _P("fragments", "list", None, _FRAGS),
                _P("fragment", "list", None, "more fragments (the config's [[pool.fragment]])"),
                _P("cluster_size", "size", None, "allocation unit, 64KiB..64MiB (default 1MiB)"),
                _P("placement", default=None, choices=tuple(PLACEMENTS),
                   help="how clusters spread over fragments (default spread)"),
                _P("reactor", "int", None, "the reactor that allocates (default 0)"),
                _P("sync_metadata", "bool", None, "flush metadata writes (default true)"),
                _P("metadata_slots", "int", None, "metadata slots (default: sized to the pool)"),
                _P("force_create", "bool", None, "format fragments that hold other data"))
def pool_create(ctl, p):
    """Open or create a pool on its fragments."""
    return _svc(ctl).pool_create(_parse(parse_pool, p)).info()


@METHODS.method("pool_close", _P("name", help="pool name", positional=True))
def pool_close(ctl, p):
    """Close a pool (its volumes must not be exported). The data stays on the fragments."""
    _svc(ctl).pool_close(p["name"])
    return True


@METHODS.method("pool_list", _P("name", default=None, help="only this pool", positional=True))
def pool_list(ctl, p):
    """Pools with capacity, used and free per fragment."""
    svc = _svc(ctl)
    if p.get("name") is not None:
        return [svc.pool(p["name"]).info()]
    return [x.info() for x in svc.pools.values()]


@METHODS.method("pool_add_fragment", _POOL, _P("path", default=None, help="absolute file or device path"),
                _P("size", "size", None, "size of a file fragment (default: the file's)"),
                _P("ram", "size", None, "a RAM fragment of this size instead of a path"),
                _P("weight", "int", None, "placement weight 1..1000 (default 100)"),
                _P("engine", default=None, choices=FILE_ENGINES,
                   help="a path: auto (io_uring, else aio, else threads), uring, aio or threads"))
def pool_add_fragment(ctl, p):
    """Add a fragment to a live pool."""
    pool = _svc(ctl).pool(p["pool"])
    frag = _parse(lambda d: parse_fragment({k: v for k, v in d.items() if k != "pool"}), p)
    return {"index": pool.frag_add(frag), "fragments": pool.fragments()}


_INDEX = _P("index", "int", help="fragment index (pool fragments)")


@METHODS.method("pool_drain_fragment", _POOL, _INDEX,
                _P("max_inflight", "int", 4, "cluster moves in flight at once"))
def pool_drain_fragment(ctl, p):
    """Move every cluster off a fragment while I/O continues."""
    pool = _svc(ctl).pool(p["pool"])
    pool.frag_drain(p["index"], p["max_inflight"])
    return pool.fragments()


@METHODS.method("pool_remove_fragment", _POOL, _INDEX)
def pool_remove_fragment(ctl, p):
    """Remove a drained (empty) fragment."""
    pool = _svc(ctl).pool(p["pool"])
    pool.frag_remove(p["index"])
    return pool.fragments()


@METHODS.method("pool_fragments", _POOL)
def pool_fragments(ctl, p):
    """Fragments of a pool with state, usage and drain progress."""
    return _svc(ctl).pool(p["pool"]).fragments()


@METHODS.method("volume_create", _P("name", default=None, help="volume name"), _POOL,
                _P("size", "size", help="e.g. 10GiB (a multiple of 4096)"),
                _P("thin", "bool", None, "allocate on first write (default true)"),
                _P("tenant", default=None, help="tenant whose quota it counts against"),
                _P("names", "list", None, "instead of name: many volumes alike, in one call "
                   "(their metadata commits grouped); returns their infos"))
def volume_create(ctl, p):
    """Create a volume (also a bdev), or with `names` many alike."""
    if (p.get("name") is None) == (p.get("names") is None):
        raise InvalidParams("give name or names (one of them)")
    if p.get("name") is not None:
        return _svc(ctl).volume_create(_parse(parse_volume, p))
    if not p["names"] or not all(isinstance(n, str) for n in p["names"]):
        raise InvalidParams("names: a non-empty list of volume names")
    base = {k: v for k, v in p.items() if k != "names" and v is not None}
    first = _parse(parse_volume, {**base, "name": p["names"][0]})
    # the rest differ only by name: checked as [[volume]] names are, without
    # parsing the whole table again (a tenth of a create's cost)
    for n in p["names"]:
        _parse(check_name, n)
    return _svc(ctl).volume_create_many([replace(first, name=n) for n in p["names"]])


@METHODS.method("volume_delete", _P("name", help="volume name", positional=True))
def volume_delete(ctl, p):
    """Delete a volume that no export uses; its clusters return to the pool."""
    _svc(ctl).volume_delete(p["name"])
    return True


@METHODS.method("volume_resize", _P("name", help="volume name"),
                _P("size", "size", help="the new, larger size"))
def volume_resize(ctl, p):
    """Grow a volume online."""
    return _svc(ctl).volume_resize(p["name"], p["size"])


@METHODS.method("volume_list", _P("name", default=None, help="only this volume", positional=True),
                _P("pool", "str", "", "only this pool's volumes"),
                _P("offset", "int", 0, "skip this many (in name order)"),
                _P("limit", "int", 0, "at most this many (0: all)"),
                _P("names", "list", None, "only these volumes (unknown names are left out)"))
def volume_list(ctl, p):
    """Volumes with size and allocated space, in name order; a page of them
    with offset/limit (the count is the pools' `volumes` in status)."""
    svc = _svc(ctl)
    if p.get("name") is not None:
        return [svc.volume_info(p["name"])]
    if p.get("names") is not None:
        want = sorted({n for n in p["names"] if isinstance(n, str) and n in svc.volumes})
        return [i for i in map(svc.volume_info, want)
                if i is not None and (not p["pool"] or i["pool"] == p["pool"])]
    if p["offset"] < 0 or p["limit"] < 0:
        raise InvalidParams("offset and limit must be >= 0")
    if p["offset"] or p["limit"]:
        return svc.volume_page(p["pool"], p["offset"], p["limit"])
    return svc.volume_list(p["pool"])


_TENANT = (_P("name", help="tenant name"),
           _P("quota", "size", None, "space it may allocate, 0: unlimited (default 0)"),
           _P("pool", default=None, help="the pool the quota applies to (default: every pool)"))


def tenant_create(ctl, p):
    """Create or update a tenant."""
    svc = _svc(ctl)
    t = _parse(parse_tenant, p)
    svc.tenant_set(t)
    return next(x for x in svc.tenant_list() if x["name"] == t.name)


METHODS.add("tenant_create", tenant_create, _TENANT)
METHODS.add("tenant_set_quota", tenant_create, _TENANT, help="Set a tenant's quota (as tenant_create).")


@METHODS.method("tenant_delete", _P("name", help="tenant name", positional=True))
def tenant_delete(ctl, p):
    """Delete a tenant that has no volumes."""
    _svc(ctl).tenant_delete(p["name"])
    return True


@METHODS.method("tenant_list")
def tenant_list(ctl, p):
    """Tenants with quota and used space per pool."""
    return _svc(ctl).tenant_list()
