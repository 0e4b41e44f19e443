"""RPC methods of pools, volumes and tenants (the only RPC-aware file of the
pool module). Handlers decode params, call the PoolService, return JSON."""

from __future__ import annotations

from .config import parse_size
from .pool_config import parse_fragment, parse_pool, parse_tenant, parse_volume
from .rpc import InvalidParams, param


def _svc(ctl):
    if getattr(ctl, "pool", None) is None:
        raise InvalidParams("this controller has no pool service")
    return ctl.pool


def _parse(fn, p):
    try:
        return fn(p)
    except ValueError as e:
        raise InvalidParams(str(e)) from None


def _size(p, key):
    try:
        return parse_size(param(p, key, (int, str)))
    except ValueError as e:
        raise InvalidParams(f"{key}: {e}") from None


def pool_create(ctl, p):
    """Open or create a pool: {name, fragments: [{path, size} | {ram}], cluster_size, placement, ...}."""
    conf = _parse(parse_pool, p)
    return _svc(ctl).pool_create(conf).info()


def pool_close(ctl, p):
    """Close a pool (its volumes must not be exported): {name}. The data stays on the fragments."""
    _svc(ctl).pool_close(param(p, "name", str))
    return True


def pool_list(ctl, p):
    """Pools with capacity, used and free per fragment; {name} for one."""
    svc = _svc(ctl)
    name = param(p, "name", str, None)
    if name is not None:
        return [svc.pool(name).info()]
    return [x.info() for x in svc.pools.values()]


def pool_add_fragment(ctl, p):
    """Add a fragment to a live pool: {pool, path, size, weight} or {pool, ram, weight}."""
    pool = _svc(ctl).pool(param(p, "pool", str))
    frag = _parse(lambda d: parse_fragment({k: v for k, v in d.items() if k != "pool"}), p)
    return {"index": pool.frag_add(frag), "fragments": pool.fragments()}


def pool_drain_fragment(ctl, p):
    """Move every cluster off a fragment while I/O continues: {pool, index, max_inflight}."""
    pool = _svc(ctl).pool(param(p, "pool", str))
    pool.frag_drain(param(p, "index", int), param(p, "max_inflight", int, 4))
    return pool.fragments()


def pool_remove_fragment(ctl, p):
    """Remove a drained (empty) fragment: {pool, index}."""
    pool = _svc(ctl).pool(param(p, "pool", str))
    pool.frag_remove(param(p, "index", int))
    return pool.fragments()


def pool_fragments(ctl, p):
    """Fragments of a pool with state, usage and drain progress: {pool}."""
    return _svc(ctl).pool(param(p, "pool", str)).fragments()


def volume_create(ctl, p):
    """Create a volume (also a bdev): {name, pool, size, thin, tenant}."""
    return _svc(ctl).volume_create(_parse(parse_volume, p))


def volume_delete(ctl, p):
    """Delete a volume that no export uses; its clusters return to the pool: {name}."""
    _svc(ctl).volume_delete(param(p, "name", str))
    return True


def volume_resize(ctl, p):
    """Grow a volume online: {name, size}."""
    return _svc(ctl).volume_resize(param(p, "name", str), _size(p, "size"))


def volume_list(ctl, p):
    """Volumes with size and allocated space: {pool} or {name} to filter."""
    svc = _svc(ctl)
    name = param(p, "name", str, None)
    if name is not None:
        return [svc.volume_info(name)]
    return svc.volume_list(param(p, "pool", str, ""))


def tenant_create(ctl, p):
    """Create or update a tenant: {name, quota, pool}."""
    svc = _svc(ctl)
    t = _parse(parse_tenant, p)
    svc.tenant_set(t)
    return next(x for x in svc.tenant_list() if x["name"] == t.name)


def tenant_delete(ctl, p):
    """Delete a tenant that has no volumes: {name}."""
    _svc(ctl).tenant_delete(param(p, "name", str))
    return True


def tenant_list(ctl, p):
    """Tenants with quota and used space per pool."""
    return _svc(ctl).tenant_list()


METHODS = {
    "pool_create": pool_create,
    "pool_close": pool_close,
    "pool_list": pool_list,
    "pool_add_fragment": pool_add_fragment,
    "pool_drain_fragment": pool_drain_fragment,
    "pool_remove_fragment": pool_remove_fragment,
    "pool_fragments": pool_fragments,
    "volume_create": volume_create,
    "volume_delete": volume_delete,
    "volume_resize": volume_resize,
    "volume_list": volume_list,
    "tenant_create": tenant_create,
    "tenant_set_quota": tenant_create,
    "tenant_delete": tenant_delete,
    "tenant_list": tenant_list,
}
