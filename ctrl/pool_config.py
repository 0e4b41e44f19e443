"""[[pool]], [[tenant]] and [[volume]] sections (docs/architecture.md, Pool), parsed once
into frozen dataclasses where every default lives.

    [[pool]]
    name = "p0"
    cluster_size = "1MiB"
    placement = "spread"            # or "fill-first"
    fragments = [ { path = "/var/tmp/frag0.img", size = "2GiB" }, { path = "/dev/loop3" },
                  { ram = "512MiB", weight = 200 } ]
    # or [[pool.fragment]] tables with the same keys

    [[tenant]]
    name = "t1"
    quota = "8GiB"                  # per pool; pool = "p0" to bind it to one pool

    [[volume]]
    name = "v0"
    pool = "p0"
    size = "10GiB"
    thin = true
    tenant = "t1"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import check_name, format_size, parse_size

PLACEMENTS = ("spread", "fill-first")


@dataclass(frozen=True)
class FragmentConfig:
    path: str = ""          # file, partition or block device; "" for RAM
    size: int = 0           # file: size to create it with; RAM: bytes
    ram: bool = False
    weight: int = 100


@dataclass(frozen=True)
class PoolConfig:
    name: str
    fragments: tuple = ()
    cluster_size: int = 1 << 20
    placement: str = "spread"
    reactor: int = 0
    sync_metadata: bool = True
    metadata_slots: int = 0     # per persistent fragment; 0: 1/256 of it (256..131072)
    force_create: bool = False


@dataclass(frozen=True)
class TenantConfig:
    name: str
    quota: int = 0              # bytes, 0: unlimited
    pool: str = ""              # "": every pool


@dataclass(frozen=True)
class VolumeConfig:
    name: str
    pool: str
    size: int
    thin: bool = True
    tenant: str = ""


def _table(d: Any, what: str) -> dict:
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be a table")
    return d


def _unknown(d: dict, allowed: set, prefix: str = "") -> None:
    for k in d:
        if k not in allowed:
            raise ValueError(f"{prefix}{k}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _str(d: dict, key: str, default: Any = ..., prefix: str = "") -> str:
    if key not in d:
        if default is ...:
            raise ValueError(f"{prefix}{key}: is required")
        return default
    if not isinstance(d[key], str):
        raise ValueError(f"{prefix}{key}: expected a string, got {d[key]!r}")
    return d[key]


def _bool(d: dict, key: str, default: bool) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise ValueError(f"{key}: expected true or false, got {v!r}")
    return v


def _int(d: dict, key: str, default: int, lo: int, hi: int, prefix: str = "") -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{prefix}{key}: expected an integer in {lo}..{hi}, got {v!r}")
    return v


def _size(d: dict, key: str, default: Any = ..., prefix: str = "") -> int:
    if key not in d:
        if default is ...:
            raise ValueError(f"{prefix}{key}: is required")
        return default
    try:
        return parse_size(d[key])
    except ValueError as e:
        raise ValueError(f"{prefix}{key}: {e}") from None


def _name(d: dict, prefix: str = "") -> str:
    n = _str(d, "name", prefix=prefix)
    try:
        check_name(n)
    except ValueError as e:
        raise ValueError(f"{prefix}name: {e}") from None
    return n


def parse_fragment(d: Any, prefix: str) -> FragmentConfig:
    d = _table(d, prefix.rstrip("."))
    _unknown(d, {"path", "size", "ram", "weight"}, prefix)
    weight = _int(d, "weight", 100, 1, 1000, prefix)
    if "ram" in d:
        if "path" in d:
            raise ValueError(f"{prefix}ram: a fragment is either a path or RAM, not both")
        size = _size(d, "ram", prefix=prefix)
        if size < (4 << 20) or size % 4096:
            raise ValueError(f"{prefix}ram: must be at least 4MiB and a multiple of 4096")
        return FragmentConfig(size=size, ram=True, weight=weight)
    path = _str(d, "path", prefix=prefix)
    if not path.startswith("/"):
        raise ValueError(f"{prefix}path: must be absolute, got {path!r}")
    return FragmentConfig(path=path, size=_size(d, "size", 0, prefix), weight=weight)


def parse_pool(entry: Any) -> PoolConfig:
    d = _table(entry, "pool")
    _unknown(d, {"name", "fragments", "fragment", "cluster_size", "placement", "reactor",
                 "sync_metadata", "metadata_slots", "force_create"})
    name = _name(d)
    if len(name) > 40:
        raise ValueError("name: a pool name is at most 40 bytes")
    raw = list(d.get("fragments", [])) + list(d.get("fragment", []))
    if not raw:
        raise ValueError("fragments: a pool needs at least one fragment")
    if len(raw) > 16:
        raise ValueError("fragments: at most 16 fragments")
    frags = tuple(parse_fragment(f, f"fragments[{i}].") for i, f in enumerate(raw))
    paths = [f.path for f in frags if f.path]
    if len(set(paths)) != len(paths):
        raise ValueError("fragments: a path is listed twice")
    cs = _size(d, "cluster_size", 1 << 20)
    if cs & (cs - 1) or not (64 << 10) <= cs <= (64 << 20):
        raise ValueError(f"cluster_size: must be a power of two in 64KiB..64MiB, got {cs}")
    placement = _str(d, "placement", "spread")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement: must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    return PoolConfig(name=name, fragments=frags, cluster_size=cs, placement=placement,
                      reactor=_int(d, "reactor", 0, 0, 63),
                      sync_metadata=_bool(d, "sync_metadata", True),
                      metadata_slots=_int(d, "metadata_slots", 0, 0, 1 << 22),
                      force_create=_bool(d, "force_create", False))


def parse_tenant(entry: Any) -> TenantConfig:
    d = _table(entry, "tenant")
    _unknown(d, {"name", "quota", "pool"})
    return TenantConfig(name=_name(d), quota=_size(d, "quota", 0), pool=_str(d, "pool", ""))


def parse_volume(entry: Any) -> VolumeConfig:
    d = _table(entry, "volume")
    _unknown(d, {"name", "pool", "size", "thin", "tenant"})
    size = _size(d, "size")
    if size <= 0 or size % 4096:
        raise ValueError(f"size: must be a positive multiple of 4096, got {size}")
    return VolumeConfig(name=_name(d), pool=_str(d, "pool"), size=size,
                        thin=_bool(d, "thin", True), tenant=_str(d, "tenant", ""))


def check_all(name: str, entries: tuple) -> None:
    seen = set()
    for i, e in enumerate(entries):
        if e.name in seen:
            raise ValueError(f"[{i}].name: {name} {e.name!r} is defined twice")
        seen.add(e.name)


# ---- back to TOML (save_config) ----------------------------------------------

def pool_to_dict(p: PoolConfig) -> dict:
    frags = []
    for f in p.fragments:
        fd: dict = {"ram": format_size(f.size)} if f.ram else {"path": f.path}
        if not f.ram and f.size:
            fd["size"] = format_size(f.size)
        if f.weight != 100:
            fd["weight"] = f.weight
        frags.append(fd)
    d: dict = {"name": p.name, "cluster_size": format_size(p.cluster_size), "placement": p.placement,
               "fragments": frags}
    if p.reactor:
        d["reactor"] = p.reactor
    if not p.sync_metadata:
        d["sync_metadata"] = False
    if p.metadata_slots:
        d["metadata_slots"] = p.metadata_slots
    return d


def tenant_to_dict(t: TenantConfig) -> dict:
    d: dict = {"name": t.name, "quota": format_size(t.quota) if t.quota else 0}
    if t.pool:
        d["pool"] = t.pool
    return d


def volume_to_dict(v: VolumeConfig) -> dict:
    d: dict = {"name": v.name, "pool": v.pool, "size": format_size(v.size), "thin": v.thin}
    if v.tenant:
        d["tenant"] = v.tenant
    return d


__all__ = ["FragmentConfig", "PoolConfig", "TenantConfig", "VolumeConfig", "parse_pool",
           "parse_tenant", "parse_volume", "check_all"]
