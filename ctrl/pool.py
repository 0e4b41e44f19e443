"""Storage pools and thin volumes: the control-plane service (docs/architecture.md, Pool).

`Pool` owns one C pool handle (ffi/lvol.h); the data path (cluster lookup,
allocation, metadata commits) is all C. `PoolService` builds pools, tenants
and volumes from the config at start, keeps the running model that
save_config writes back, and serves the pool_/volume_/tenant_ RPCs
(ctrl/pool_rpc.py).
"""

from __future__ import annotations

import bisect
import logging
import os
from dataclasses import replace
from typing import Optional

from ..ffi import binding
from ..ffi.binding import PoolPlacement, SrrsError, check, ffi, lib
from ..rpcdef import AlreadyExists, Busy, NotFound
from .pool_config import FragmentConfig, PoolConfig, TenantConfig, VolumeConfig

log = logging.getLogger("srrs.pool")

FRAG_STATES = binding.FRAG_STATES  # enum srrs_frag_state (ffi/lvol.h)
_NAME_MAX = 64  # struct srrs_lvol_info name[]: srrs_lvol_create_many's name stride


def _s(c) -> str:
    return ffi.string(c).decode(errors="replace")


def _uuid(u) -> str:
    h = bytes(ffi.buffer(u, 16)).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _vol_dict(v) -> dict:
    return {"name": _s(v.name), "uuid": _uuid(v.uuid), "tenant": _s(v.tenant), "size": v.size,
            "thin": bool(v.thin), "cluster_size": v.cluster_size,
            "allocated_clusters": v.allocated_clusters,
            "allocated": v.allocated_clusters * v.cluster_size,
            "lost_clusters": v.lost_clusters}


def _frag_specs(frags):
    specs = ffi.new("struct srrs_pool_frag_spec[]", max(len(frags), 1))
    keep = []
    for i, f in enumerate(frags):
        if not f.ram:
            b = ffi.new("char[]", os.fsencode(f.path))
            keep.append(b)
            specs[i].path = b
        specs[i].size = f.size
        specs[i].weight = f.weight
        specs[i].engine = binding.file_engine_flags(f.engine)
    return specs, keep


class Pool:
    """One open pool. Every method is a control-thread call into C."""

    def __init__(self, core, conf: PoolConfig):
        self.core = core
        self.conf = conf
        o = ffi.new("struct srrs_pool_opts *")
        o.cluster_size = conf.cluster_size
        o.placement = (PoolPlacement.FILL_FIRST if conf.placement == "fill-first"
                       else PoolPlacement.SPREAD)
        o.reactor = conf.reactor
        o.sync_metadata = int(conf.sync_metadata)
        o.md_slots = conf.metadata_slots
        o.force_create = int(conf.force_create)
        specs, keep = _frag_specs(conf.fragments)
        pp = ffi.new("struct srrs_pool **")
        check(lib.srrs_pool_open(core.ptr, conf.name.encode(), o, specs, len(conf.fragments), pp),
              f"pool {conf.name}")
        del keep
        self._pp = pp
        self.ptr = pp[0]
        self.name = conf.name
        self._sync_fragments()
        for m in self.messages():
            log.warning("pool %s: %s", self.name, m)

    def _sync_fragments(self, added: tuple = ()) -> None:
        """The config model lists the fragments the pool has (its table may
        name more than the config did: added online), so save_config keeps them."""
        frags = []
        engines = {f.path: f.engine for f in self.conf.fragments + added if not f.ram}
        for f in self.fragments():
            if f["state"] in ("empty", "removed"):
                continue
            frags.append(FragmentConfig(size=f["size"], ram=True, weight=f["weight"]) if f["ram"]
                         else FragmentConfig(path=f["path"], size=f["size"], weight=f["weight"],
                                             engine=engines.get(f["path"], "auto")))
        self.conf = replace(self.conf, fragments=tuple(frags))

    # -- pool ------------------------------------------------------------------
    def close(self) -> None:
        if self.ptr != ffi.NULL:
            check(lib.srrs_pool_close(self._pp), f"pool {self.name}")
            self.ptr = ffi.NULL

    def messages(self) -> list:
        buf = ffi.new("char[]", 16384)
        lib.srrs_pool_messages(self.ptr, buf, 16384)
        return [m for m in _s(buf).split("\n") if m]

    def info(self) -> dict:
        i = ffi.new("struct srrs_pool_info *")
        check(lib.srrs_pool_get_info(self.ptr, i))
        cs = i.cluster_size
        frags = self.fragments()
        alerts = [f"fragment {f['index']} ({f['path']}): "
                  f"{'missing: ' if f['state'] == 'missing' else 'failed: ' if f['failed'] else ''}"
                  f"{f['error']}" for f in frags if f["error"] or f["state"] == "missing"]
        if i.lost_clusters:
            alerts.append(f"{i.lost_clusters} cluster(s) lost with a RAM fragment's memory: "
                          "reads of them fail until rewritten")
        if i.md_unsure_pages:
            alerts.append(f"{i.md_unsure_pages} metadata page(s) failed to commit and may be on "
                          "disk in another state: writes to their changed clusters wait for a new "
                          "commit and fail while the metadata device fails")
        state = "degraded" if alerts else "ok"
        return {"name": self.name, "state": state, "alerts": alerts, "degraded": state != "ok",
                "failed_fragments": i.failed_frags, "lost_clusters": i.lost_clusters,
                "uuid": _uuid(i.uuid), "cluster_size": cs,
                "placement": "fill-first" if i.placement == PoolPlacement.FILL_FIRST else "spread",
                "capacity": i.total_clusters * cs, "used": i.used_clusters * cs,
                "free": i.free_clusters * cs, "total_clusters": i.total_clusters,
                "used_clusters": i.used_clusters, "free_clusters": i.free_clusters,
                "volumes": i.nvolumes, "md_slots": i.md_slots_total, "md_slots_used": i.md_slots_used,
                "md_writes": i.md_writes, "md_flushes": i.md_flushes,
                "md_unsure_pages": i.md_unsure_pages,
                "alloc_failures": i.alloc_failures,
                "created": bool(i.created), "repaired": i.repaired,
                "fragments": frags, "messages": self.messages()}

    def fragment_missing(self) -> bool:
        """A fragment the pool's table records was not found at open."""
        return any(f["state"] == "missing" for f in self.fragments())

    def fragments(self) -> list:
        out = []
        fi = ffi.new("struct srrs_pool_frag_info *")
        for idx in range(16):
            if lib.srrs_pool_frag_get_info(self.ptr, idx, fi) < 0:
                continue
            cs = self.conf.cluster_size
            out.append({"index": idx, "state": FRAG_STATES.get(fi.state, str(fi.state)),
                        "ram": bool(fi.ram), "path": _s(fi.path), "bdev": _s(fi.bdev),
                        "uuid": _uuid(fi.uuid), "size": fi.size, "weight": fi.weight,
                        "total_clusters": fi.total_clusters, "used_clusters": fi.used_clusters,
                        "capacity": fi.total_clusters * cs, "used": fi.used_clusters * cs,
                        "free": (fi.total_clusters - fi.used_clusters) * cs,
                        "md_slots": fi.md_slots, "md_slots_used": fi.md_slots_used,
                        "drain": {"moved": fi.drain_moved, "total": fi.drain_total,
                                  "error": fi.drain_error},
                        "failed": bool(fi.failed), "error": _s(fi.error), "engine": _s(fi.engine),
                        "lost_clusters": fi.lost_clusters})
        return out

    def frag_add(self, frag: FragmentConfig) -> int:
        specs, keep = _frag_specs([frag])
        idx = check(lib.srrs_pool_frag_add(self.ptr, specs), f"pool {self.name}")
        self._sync_fragments(added=(frag,))
        return idx

    def frag_drain(self, idx: int, max_inflight: int = 4) -> None:
        check(lib.srrs_pool_frag_drain(self.ptr, idx, max_inflight), f"pool {self.name}")

    def frag_remove(self, idx: int) -> None:
        frags = self.fragments()
        check(lib.srrs_pool_frag_remove(self.ptr, idx), f"pool {self.name}")
        gone = next((f for f in frags if f["index"] == idx), None)
        if gone is not None:
            keep = [f for f in self.conf.fragments
                    if not ((f.ram and gone["ram"] and f.size == gone["size"]) or
                            (not f.ram and f.path == gone["path"]))]
            if gone["ram"] and len(keep) < len(self.conf.fragments) - 1:
                # Several RAM fragments of that size: drop only one.
                keep = list(self.conf.fragments)
                for i, f in enumerate(keep):
                    if f.ram and f.size == gone["size"]:
                        del keep[i]
                        break
            self.conf = replace(self.conf, fragments=tuple(keep))

    # -- tenants -----------------------------------------------------------------
    def tenant_set(self, name: str, quota: int) -> None:
        check(lib.srrs_pool_tenant_set(self.ptr, name.encode(), quota), f"tenant {name}")

    def tenant_delete(self, name: str) -> None:
        check(lib.srrs_pool_tenant_delete(self.ptr, name.encode()), f"tenant {name}")

    def tenant_info(self, name: str) -> Optional[dict]:
        t = ffi.new("struct srrs_pool_tenant_info *")
        if lib.srrs_pool_tenant_get_info(self.ptr, name.encode(), t) < 0:
            return None
        cs = self.conf.cluster_size
        return {"name": _s(t.name), "pool": self.name, "quota": t.quota,
                "used_clusters": t.used_clusters, "used": t.used_clusters * cs,
                "quota_failures": t.quota_failures}

    # -- volumes ---------------------------------------------------------------------
    def volume_create(self, name: str, size: int, thin: bool = True, tenant: str = "",
                      uuid: Optional[bytes] = None) -> dict:
        """uuid: the volume's 16-byte uuid, kept with its record for life (None:
        a random one); the pool refuses one another volume has."""
        v = ffi.new("struct srrs_lvol_info *")
        if uuid is not None and len(uuid) != 16:
            raise ValueError(f"volume {name}: a uuid is 16 bytes, not {len(uuid)}")
        check(lib.srrs_lvol_create_uuid(self.ptr, name.encode(), size, int(thin),
                                        tenant.encode() if tenant else ffi.NULL,
                                        uuid if uuid is not None else ffi.NULL, v),
              f"volume {name}")
        return _vol_dict(v)

    def volume_create_many(self, names: list, size: int, tenant: str = "") -> tuple:
        """Thin volumes alike, in one call into C: their records are committed
        together, sharing the fragment flushes (group commit), each durable
        before it counts as created (srrs_lvol_create_many, ffi/lvol.h). Returns
        (infos, error): infos[i] the i-th volume's info or None where it was not
        created; error the first failure (a SrrsError) or None."""
        infos: list = [None] * len(names)
        err = None
        step = lib.SRRS_LVOL_MANY_MAX
        for at in range(0, len(names), step):
            part = names[at:at + step]
            n = len(part)
            buf = b"".join(nm.encode().ljust(_NAME_MAX, b"\0")[:_NAME_MAX] for nm in part)
            out = ffi.new("struct srrs_lvol_info[]", n)
            rcs = ffi.new("int[]", n)
            rc = lib.srrs_lvol_create_many(self.ptr, buf, n, size,
                                           tenant.encode() if tenant else ffi.NULL, out, rcs)
            if rc < 0 and err is None:
                try:
                    check(rc, f"pool {self.name}")
                except SrrsError as e:
                    err = e
            if rc < 0 and not any(rcs[i] == 0 for i in range(n)):
                continue
            for i in range(n):
                if rcs[i] == 0:
                    infos[at + i] = _vol_dict(out[i])
        return infos, err

    def volume_delete(self, name: str) -> None:
        check(lib.srrs_lvol_delete(self.ptr, name.encode()), f"volume {name}")

    def volume_resize(self, name: str, size: int) -> None:
        check(lib.srrs_lvol_resize(self.ptr, name.encode(), size), f"volume {name}")

    def volume_info(self, name: str) -> Optional[dict]:
        v = ffi.new("struct srrs_lvol_info *")
        if lib.srrs_lvol_get_info(self.ptr, name.encode(), v) < 0:
            return None
        d = _vol_dict(v)
        d["pool"] = self.name
        return d

    def volume_list(self) -> list:
        n = 256
        while True:
            arr = ffi.new("struct srrs_lvol_info[]", n)
            total = check(lib.srrs_lvol_list(self.ptr, arr, n))
            if total <= n:
                out = []
                for i in range(total):
                    d = _vol_dict(arr[i])
                    d["pool"] = self.name
                    out.append(d)
                return sorted(out, key=lambda d: d["name"])
            n = total + 64


class PoolService:
    """Every pool of one controller, and the config model of pools/tenants/volumes."""

    def __init__(self, ctl):
        self.ctl = ctl
        self.pools: dict[str, Pool] = {}
        self.tenants: dict[str, TenantConfig] = {}
        self.volumes: dict[str, VolumeConfig] = {}
        self._names: Optional[list] = None  # sorted volume names (pages), None: stale

    # -- building ------------------------------------------------------------------
    def pool_create(self, conf: PoolConfig) -> Pool:
        if conf.name in self.pools:
            raise AlreadyExists(f"pool {conf.name} already exists")
        if conf.reactor >= self.ctl.core.num_reactors:
            raise ValueError(f"pool {conf.name}: reactor {conf.reactor} does not exist")
        p = Pool(self.ctl.core, conf)
        self.pools[conf.name] = p
        for t in self.tenants.values():
            if not t.pool or t.pool == conf.name:
                p.tenant_set(t.name, t.quota)
        for v in p.volume_list():
            self.volumes.setdefault(v["name"], VolumeConfig(
                name=v["name"], pool=conf.name, size=v["size"], thin=v["thin"], tenant=v["tenant"]))
        self._names = None
        return p

    def pool_close(self, name: str) -> None:
        p = self.pool(name)
        p.close()
        del self.pools[name]
        for v in [v for v in self.volumes.values() if v.pool == name]:
            del self.volumes[v.name]
        self._names = None

    def pool(self, name: str) -> Pool:
        p = self.pools.get(name)
        if p is None:
            raise NotFound(f"pool {name} does not exist")
        return p

    def tenant_set(self, t: TenantConfig) -> None:
        if t.pool and t.pool not in self.pools:
            raise NotFound(f"tenant {t.name}: pool {t.pool} does not exist")
        for p in self.pools.values():
            if not t.pool or t.pool == p.name:
                p.tenant_set(t.name, t.quota)
        self.tenants[t.name] = t

    def tenant_delete(self, name: str) -> None:
        if name not in self.tenants:
            raise NotFound(f"tenant {name} does not exist")
        users = [v.name for v in self.volumes.values() if v.tenant == name]
        if users:
            raise Busy(f"tenant {name} still has volumes: {', '.join(sorted(users)[:10])}")
        for p in self.pools.values():
            try:
                p.tenant_delete(name)
            except SrrsError:
                pass
        del self.tenants[name]

    def tenant_list(self) -> list:
        out = []
        for t in self.tenants.values():
            d = {"name": t.name, "quota": t.quota, "pool": t.pool, "pools": []}
            for p in self.pools.values():
                i = p.tenant_info(t.name)
                if i is not None:
                    d["pools"].append(i)
            d["used"] = sum(i["used"] for i in d["pools"])
            out.append(d)
        return sorted(out, key=lambda d: d["name"])

    def volume_create_many(self, vols: list) -> list:
        """Create many volumes in one call; checked first (names, pools, tenants),
        then created concurrently so that their metadata commits share the
        pool's fragment flushes (group commit): thousands a second where one
        create per call pays a flush each (docs/architecture.md, Control plane
        at scale). The infos in the order given."""
        seen = set()
        for v in vols:
            if v.name in seen or v.name in self.volumes:
                raise AlreadyExists(f"volume {v.name} already exists")
            seen.add(v.name)
            self.pool(v.pool)
            if v.tenant and v.tenant not in self.tenants:
                raise NotFound(f"volume {v.name}: tenant {v.tenant} does not exist")
        return _create_parallel(self, vols)

    def volume_create(self, v: VolumeConfig) -> dict:
        p = self.pool(v.pool)
        if v.tenant and v.tenant not in self.tenants:
            raise NotFound(f"volume {v.name}: tenant {v.tenant} does not exist")
        cs = p.conf.cluster_size
        size = -(-v.size // cs) * cs  # whole clusters
        info = p.volume_create(v.name, size, v.thin, v.tenant)
        self.volumes[v.name] = replace(v, size=size)
        self._names_add([v.name])
        info["pool"] = v.pool
        return info

    def volume_create_alike(self, vols: list) -> list:
        """Thin volumes of one pool, size and tenant (checked by the caller), in
        one pass of the pool's reactor (Pool.volume_create_many). Their infos in
        order; the first error is raised once every create has ended (the
        others stay created)."""
        v0 = vols[0]
        p = self.pool(v0.pool)
        cs = p.conf.cluster_size
        size = -(-v0.size // cs) * cs
        infos, err = p.volume_create_many([v.name for v in vols], size, v0.tenant)
        made = []
        for v, info in zip(vols, infos):
            if info is None:
                continue
            self.volumes[v.name] = replace(v, size=size)
            info["pool"] = v.pool
            made.append(v.name)
        self._names_add(made)
        if err is not None:
            raise err
        return infos

    def _names_add(self, new: list) -> None:
        """New volume names into the sorted list pages read, kept rather than
        rebuilt: one into its place, many appended and sorted (a sorted run
        and a short tail, which the sort merges in linear time). A list kept
        by the threads of a parallel create is rebuilt instead."""
        names = self._names
        if names is None or not new:
            return
        if len(new) == 1:
            bisect.insort(names, new[0])
        else:
            names.extend(new)
            names.sort()

    def _owner(self, name: str) -> Pool:
        v = self.volumes.get(name)
        if v is None:
            raise NotFound(f"volume {name} does not exist")
        return self.pool(v.pool)

    def volume_delete(self, name: str) -> None:
        self._owner(name).volume_delete(name)
        del self.volumes[name]
        names = self._names
        if names is not None:
            i = bisect.bisect_left(names, name)
            if i < len(names) and names[i] == name:
                del names[i]

    def volume_resize(self, name: str, size: int) -> dict:
        p = self._owner(name)
        cs = p.conf.cluster_size
        size = -(-size // cs) * cs
        p.volume_resize(name, size)
        self.volumes[name] = replace(self.volumes[name], size=size)
        return p.volume_info(name)

    def volume_info(self, name: str) -> dict:
        return self._owner(name).volume_info(name)

    def volume_list(self, pool: str = "") -> list:
        out = []
        for p in self.pools.values():
            if not pool or p.name == pool:
                out += p.volume_list()
        return out

    def volume_names(self, pool: str = "") -> list:
        """Volume names in name order (of one pool if given), from the model:
        a page of volume_list looks up only its own volumes in C."""
        if self._names is None:
            self._names = sorted(self.volumes)
        if not pool:
            return self._names
        return [n for n in self._names if self.volumes[n].pool == pool]

    def volume_page(self, pool: str, offset: int, limit: int) -> list:
        names = self.volume_names(pool)
        names = names[offset:offset + limit] if limit else names[offset:]
        out = []
        for n in names:
            v = self.volumes.get(n)
            info = self.pools[v.pool].volume_info(n) if v and v.pool in self.pools else None
            if info is not None:
                out.append(info)
        return out

    def apply_config_volume(self, v: VolumeConfig) -> None:
        """A [[volume]] at start: create it, or check / grow the existing one."""
        p = self.pool(v.pool)
        have = p.volume_info(v.name)
        if have is None:
            self.volume_create(v)
            return
        cs = p.conf.cluster_size
        want = -(-v.size // cs) * cs
        if want > have["size"]:
            p.volume_resize(v.name, want)
            log.info("volume %s grown to %d bytes as configured", v.name, want)
        elif want < have["size"]:
            log.warning("volume %s is %d bytes, larger than the configured %d; volumes never shrink",
                        v.name, have["size"], want)
        self.volumes[v.name] = replace(v, size=max(want, have["size"]), thin=have["thin"],
                                       tenant=have["tenant"])

    # -- service interface ------------------------------------------------------------
    def status(self) -> dict:
        return {"pools": [p.info() for p in self.pools.values()],
                "tenants": self.tenant_list(),
                "volumes": len(self.volumes)}

    def to_toml(self) -> dict:
        from .pool_config import pool_to_dict, tenant_to_dict, volume_to_dict

        return {"pool": [pool_to_dict(p.conf) for p in self.pools.values()],
                "tenant": [tenant_to_dict(t) for t in self.tenants.values()],
                "volume": [volume_to_dict(v) for v in sorted(self.volumes.values(),
                                                             key=lambda v: v.name)]}

    def close(self) -> None:
        for name in list(self.pools):
            try:
                self.pools.pop(name).close()
            except SrrsError as e:
                log.error("closing pool %s: %s", name, e)


def _create_parallel(svc: PoolService, vols: list, threads: int = 16) -> list:
    """New volumes (a config's, or one volume_create call's), created so that
    their metadata commits share fragment flushes (group commit) instead of
    paying one each: thin volumes of the same pool, size and tenant in one pass
    of the pool's reactor (PoolService.volume_create_alike), the rest (thick
    ones, odd ones out) from threads. Their infos in order; the first error is
    raised once every create has ended (the others stay created)."""
    if len(vols) < 2:
        return [svc.volume_create(v) for v in vols]
    groups: dict = {}
    rest = []
    for i, v in enumerate(vols):
        if v.thin:
            groups.setdefault((v.pool, v.size, v.tenant), []).append(i)
        else:
            rest.append(i)
    out: list = [None] * len(vols)
    errs = []
    for idx in groups.values():
        if len(idx) < 2:
            rest += idx
            continue
        try:
            for i, info in zip(idx, svc.volume_create_alike([vols[i] for i in idx])):
                out[i] = info
        except Exception as e:  # noqa: BLE001 - raised below, after the others ran
            errs.append(e)
    rest.sort()
    if len(rest) < 64:
        for i in rest:
            try:
                out[i] = svc.volume_create(vols[i])
            except Exception as e:  # noqa: BLE001
                errs.append(e)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as ex:
            futs = {i: ex.submit(svc.volume_create, vols[i]) for i in rest}
            for i, f in futs.items():
                if f.exception() is not None:
                    errs.append(f.exception())
                else:
                    out[i] = f.result()
        svc._names = None  # each thread added its own: rebuilt once, from the model
    if errs:
        log.error("creating %d volumes: %d created, the first error: %s", len(vols),
                  sum(x is not None for x in out), errs[0])
        raise errs[0]
    return out


def start(ctl, pools_section) -> PoolService:
    svc = PoolService(ctl)
    conf = ctl.conf
    # volumes that begin empty (or partly) now: a pair replica among them is new
    fresh = ctl.fresh_bdevs if isinstance(getattr(ctl, "fresh_bdevs", None), dict) else {}
    try:
        for t in conf.tenant:
            svc.tenants[t.name] = t
        for pc in pools_section or ():
            svc.pool_create(pc)
        for t in conf.tenant:
            svc.tenant_set(t)
        new = []
        for v in conf.volume:
            if v.pool not in svc.pools:
                raise ValueError(f"volume {v.name}: pool {v.pool} is not configured")
            have = svc.pools[v.pool].volume_info(v.name)
            if have is None and svc.pools[v.pool].fragment_missing():
                # Its record may be on the missing fragment: creating it anew would
                # shadow the real one when the fragment is back.
                log.error("volume %s: not found in pool %s, which is degraded (a fragment is "
                          "missing); not created", v.name, v.pool)
            elif have is None:
                new.append(v)
            else:
                svc.apply_config_volume(v)
                if have["lost_clusters"]:
                    fresh[v.name] = (f"{have['lost_clusters']} cluster(s) lost with a RAM "
                                     "fragment")
        _create_parallel(svc, new)
        for v in new:
            fresh[v.name] = f"volume created in pool {v.pool}"
    except BaseException:
        svc.close()
        raise
    return svc
