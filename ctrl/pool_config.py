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
from typing import Any, Tuple

from srrs.schema import (
    FILE_ENGINES,
    SchemaError,
    Size,
    at,
    check_name,
    power_of_two,
    setting,
    to_table,
)
from srrs.schema import parse as parse_schema
from srrs.units import parse_size

PLACEMENTS = ("spread", "fill-first")
MAX_FRAGMENTS = 16


@dataclass(frozen=True)
class FragmentConfig:
    """A fragment: a file, a partition, a block device, or RAM."""
    path: str = setting("", help="absolute path of a file, partition or block device")
    size: Size = setting(0, help="a file: the size to create it with")
    ram: bool = setting(False, doc_type="size", doc_default="-", help="RAM of this size instead of a path "
                        "(at least 4MiB)")
    weight: int = setting(100, range=(1, 1000), help="share of new clusters")
    engine: str = setting("auto", choices=FILE_ENGINES, help="a path: its I/O engine; auto: "
                          "io_uring; where it is refused, native AIO if the file takes O_DIRECT, "
                          "else worker threads")

    def _finish(self, raw: dict) -> "FragmentConfig":
        if self.ram and self.engine != "auto":
            raise SchemaError(("engine",), "a RAM fragment has no I/O engine")
        if self.ram:
            if self.size < (4 << 20) or self.size % 4096:
                raise SchemaError(("ram",), "must be at least 4MiB and a multiple of 4096")
        elif not self.path:
            raise SchemaError(("path",), "is required")
        elif not self.path.startswith("/"):
            raise SchemaError(("path",), f"must be absolute, got {self.path!r}")
        return self

    def _table(self, t: dict) -> dict:
        if t.get("engine") == "auto":
            del t["engine"]  # the default, and a RAM fragment has none: saved configs stay as written
        ram, size = t.pop("ram", False), t.pop("size", 0)
        if ram:
            return {"ram": size, **t}
        return {**t, "size": size} if size else t


def _fragment_table(d: Any) -> Any:
    """The TOML shape `{ ram = "512MiB" }` as the dataclass's ram + size."""
    if not isinstance(d, dict) or "ram" not in d:
        return d
    if "path" in d:
        raise SchemaError(("ram",), "a fragment is either a path or RAM, not both")
    if "size" in d or isinstance(d["ram"], bool):
        raise SchemaError(("ram",), "expected the RAM size (ram = \"512MiB\")")
    return dict(d, ram=True, size=at(("ram",), parse_size, d["ram"]))


def _fragment_tables(raw: Any) -> Any:
    if not isinstance(raw, list):
        return raw
    return [at((i,), _fragment_table, d) for i, d in enumerate(raw)]


def _check_fragments(frags: tuple) -> None:
    if len(frags) > MAX_FRAGMENTS:
        raise ValueError(f"at most {MAX_FRAGMENTS} fragments")
    paths = [f.path for f in frags if f.path]
    if len(set(paths)) != len(paths):
        raise ValueError("a path is listed twice")


def _pool_name(v: str) -> None:
    check_name(v)
    if len(v) > 40:
        raise ValueError("a pool name is at most 40 bytes")


def _volume_size(v: int) -> None:
    if v <= 0 or v % 4096:
        raise ValueError(f"must be a positive multiple of 4096, got {v}")


@dataclass(frozen=True)
class PoolConfig:
    """[[pool]]: fragments pooled into one allocator of clusters."""
    name: str = setting(check=_pool_name, help="at most 40 bytes")
    fragments: Tuple[FragmentConfig, ...] = setting(
        (), coerce=_fragment_tables, check=_check_fragments,
        help="1..16 tables `{ path, size, weight }` or `{ ram, weight }`; or "
             "[[pool.fragment]] tables")
    cluster_size: Size = setting(1 << 20, check=power_of_two(64 << 10, 64 << 20),
                                 help="allocation unit")
    placement: str = setting("spread", choices=PLACEMENTS,
                             help="spread: by weight over the fragments; fill-first: in order")
    reactor: int = setting(0, range=(0, 63), help="the reactor that owns the pool")
    sync_metadata: bool = setting(True, help="write metadata synchronously")
    metadata_slots: int = setting(0, range=(0, 1 << 22), help="per persistent fragment; "
                                  "0: 1/256 of it (256..131072)")
    force_create: bool = setting(False, save=False,
                                 help="format fragments that hold another pool")

    def _finish(self, raw: dict) -> "PoolConfig":
        if not self.fragments:
            raise SchemaError(("fragments",), "a pool needs at least one fragment")
        return self


@dataclass(frozen=True)
class TenantConfig:
    """[[tenant]]: a quota on the volumes that name it."""
    name: str = setting(check=check_name)
    quota: Size = setting(0, help="bytes per pool, 0: unlimited")
    pool: str = setting("", help="bind the quota to one pool (default: every pool)")


@dataclass(frozen=True)
class VolumeConfig:
    """[[volume]]: a volume of a pool, exportable by its name."""
    name: str = setting(check=check_name)
    pool: str = setting(help="the pool it lives in")
    size: Size = setting(check=_volume_size, help="a multiple of 4096")
    thin: bool = setting(True, help="allocate clusters on first write")
    tenant: str = setting("", help="the tenant whose quota it counts against")


def parse_fragment(d: Any, where: tuple = ()) -> FragmentConfig:
    """One fragment table (also the params of pool_add_fragment)."""
    return parse_schema(FragmentConfig, at(where, _fragment_table, d), where)


def parse_pool(entry: Any, where: tuple = ()) -> PoolConfig:
    """One [[pool]] table (also the params of pool_create); [[pool.fragment]]
    tables count as further entries of fragments."""
    if isinstance(entry, dict) and "fragment" in entry:
        entry = dict(entry)
        more = entry.pop("fragment")
        if not isinstance(more, list) or not isinstance(entry.get("fragments", []), list):
            raise SchemaError(where + ("fragments",), "expected a list of fragment tables")
        entry["fragments"] = list(entry.get("fragments", [])) + more
    return parse_schema(PoolConfig, entry, where)


def parse_tenant(entry: Any, where: tuple = ()) -> TenantConfig:
    return parse_schema(TenantConfig, entry, where)


def parse_volume(entry: Any, where: tuple = ()) -> VolumeConfig:
    return parse_schema(VolumeConfig, entry, where)


# ---- back to TOML (save_config) ----------------------------------------------

def pool_to_dict(p: PoolConfig) -> dict:
    return to_table(p, defaults=True)


def tenant_to_dict(t: TenantConfig) -> dict:
    return to_table(t, defaults=True)


def volume_to_dict(v: VolumeConfig) -> dict:
    return to_table(v, defaults=True)


__all__ = ["FragmentConfig", "PoolConfig", "TenantConfig", "VolumeConfig", "parse_fragment",
           "parse_pool", "parse_tenant", "parse_volume"]
