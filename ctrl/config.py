"""TOML config, parsed and validated once into frozen dataclasses (docs/architecture.md, Config).

Every section is declared once as a dataclass (srrs.schema: type, default, help,
checks) by the module that owns it, and listed in SECTIONS below. Any problem
(unknown key, wrong type, bad size string, missing file) raises ConfigError
whose message is one line naming the file, the line and the key:
``single.toml:12: bdev[0].size: bad size "12XB" ...``.
"""

from __future__ import annotations

import os
import re
import typing
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import toml

from srrs.nvmf import config as nvmf_config
from srrs.schema import (
    FILE_ENGINES,
    SchemaError,
    Size,
    check_name,
    keypath,
    setting,
    to_table,
    unique,
)
from srrs.schema import parse as parse_schema
from srrs.schema import reference as reference_lines
from srrs.units import SIZE_UNITS, format_size, parse_size  # noqa: F401 (re-exported)
from srrs.vhost import config as vhost_config

from . import cluster_config, metrics_config, pair_config, pool_config


class ConfigError(ValueError):
    """A config problem, already formatted as one line: file:line: key: message."""


def default_runtime_dir() -> str:
    d = os.environ.get("XDG_RUNTIME_DIR")
    return d if d and os.path.isdir(d) else "/tmp"


def default_rpc_socket() -> str:
    return os.path.join(default_runtime_dir(), "srrs.sock")


# ---- the model ---------------------------------------------------------------

def _check_cpus(cpus: tuple) -> None:
    for i, c in enumerate(cpus):
        if not 0 <= c < 4096:
            raise ValueError(f"cpus[{i}] must be a CPU number, got {c!r}")
    ncpu = os.cpu_count() or 1
    for c in cpus:
        if c >= ncpu:
            raise ValueError(f"CPU {c} does not exist (this host has {ncpu})")


@dataclass(frozen=True)
class ControllerConfig:
    """[controller]: this controller's name, its RPC socket and its reactor threads."""
    name: str = setting("srrs", check=check_name, help="names this controller in logs, "
                        "metrics and the console")
    rpc_socket: str = setting(factory=default_rpc_socket,
                              help="JSON-RPC Unix socket (default: $XDG_RUNTIME_DIR/srrs.sock)")
    reactors: int = setting(1, range=(1, 64), doc_default="`1`, or one per cpus entry",
                            help="reactor threads")
    cpus: Tuple[int, ...] = setting((), check=_check_cpus, help="CPUs the reactors are "
                                    "pinned to, one each")
    poll_mode: str = setting("adaptive", choices=("adaptive", "busy"),
                             help="adaptive sleeps in epoll when idle; busy spins")
    idle_spin_us: int = setting(200, range=(0, 1_000_000),
                                help="adaptive: spin this long before sleeping")
    lock_code: bool = setting(True, help="lock the I/O path's code (the core, libc, "
                              "libcrypto: a few MiB) in memory, so that reclaim cannot drop "
                              "it while the controller idles and its first I/O then wait on "
                              "disk reads")

    def _finish(self, raw: dict) -> "ControllerConfig":
        if self.cpus and "reactors" not in raw:
            return replace(self, reactors=len(self.cpus))
        if self.cpus and self.reactors != len(self.cpus):
            raise SchemaError(("reactors",), f"is {self.reactors} but cpus lists "
                              f"{len(self.cpus)} CPUs")
        return self


BDEV_TYPES = ("malloc", "null", "file")


@dataclass(frozen=True)
class BdevConfig:
    """[[bdev]]: a block device (also the params of the bdev_create RPC)."""
    name: str = setting(check=check_name)
    type: str = setting(choices=BDEV_TYPES, help="malloc: RAM; null: discards writes, reads "
                        "zeros; file: a file or block device through io_uring")
    size: Size = setting(0, help="required for malloc and null; a file is created at it")
    block_size: int = setting(4096, choices=(512, 4096))
    path: str = setting("", help="file: its path (required)")
    grow: bool = setting(False, save=False, help="file: an existing smaller file may be "
                         "grown to size")
    engine: str = setting("auto", choices=FILE_ENGINES, help="file: the I/O engine; auto: "
                          "io_uring; where it is missing or refused, native AIO if the file takes "
                          "O_DIRECT, else worker threads")

    def _finish(self, raw: dict) -> "BdevConfig":
        if self.grow and self.type != "file":
            raise SchemaError(("grow",), f"only a file bdev can grow, this one is {self.type}")
        if self.engine != "auto" and self.type != "file":
            raise SchemaError(("engine",), f"only a file bdev has an I/O engine, this one is "
                              f"{self.type}")
        if self.type == "file":
            if not self.path:
                raise SchemaError(("path",), "is required for a file bdev")
        elif self.path:
            raise SchemaError(("path",), f"only a file bdev has a path, this one is {self.type}")
        elif self.size == 0:
            raise SchemaError(("size",), f"is required for a {self.type} bdev")
        if self.size % self.block_size:
            raise SchemaError(("size",), f"{self.size} is not a multiple of block_size "
                              f"{self.block_size}")
        return self


@dataclass(frozen=True)
class Config:
    """A whole config file: one typed field per section of SECTIONS."""
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    bdevs: Tuple[BdevConfig, ...] = ()
    nvmf: Optional[nvmf_config.NvmfConfig] = None
    vhost: Tuple[vhost_config.VhostConfig, ...] = ()
    pool: Tuple[pool_config.PoolConfig, ...] = ()
    tenant: Tuple[pool_config.TenantConfig, ...] = ()
    volume: Tuple[pool_config.VolumeConfig, ...] = ()
    pair: Optional[pair_config.PairConfig] = None
    metrics: Optional[metrics_config.MetricsConfig] = None
    cluster: Optional[cluster_config.ClusterConfig] = None
    source: str = ""
    # [nvmf] sets cntlid_min or cntlid_max: then neither the pair's halves nor
    # a cluster range (ctrl/cluster_cntlid.py) replace them
    cntlid_set: bool = False

    @property
    def sections(self) -> Dict[str, Any]:
        """The module-owned sections the file has, by section name."""
        return {n: getattr(self, s.attr) for n, s in SECTIONS.items()
                if n not in ("controller", "bdev") and getattr(self, s.attr) not in (None, ())}


def parse_bdev(d: dict, fail: Callable[[tuple, str], Exception], where: tuple = ()) -> BdevConfig:
    """One [[bdev]] table (also the params of the bdev_create RPC)."""
    try:
        return parse_schema(BdevConfig, d, tuple(where))
    except SchemaError as e:
        raise fail(e.path, e.msg) from None


def _table_parser(cls: type) -> Callable:
    return lambda raw, where: parse_schema(cls, raw, where)


class Section(NamedTuple):
    attr: str                       # the Config field it fills
    parse: Callable                 # parse(table, where) -> dataclass; SchemaError on a problem
    array: bool                     # [[name]] entries (a tuple), else one [name] table
    check: Optional[Callable] = None  # check(entries, where): rules across the entries


# Every section a config file may have, its owner's parse function imported above.
SECTIONS: Dict[str, Section] = {
    "controller": Section("controller", _table_parser(ControllerConfig), False),
    "bdev": Section("bdevs", _table_parser(BdevConfig), True, unique("name", "bdev")),
    "nvmf": Section("nvmf", nvmf_config.parse, False),
    "vhost": Section("vhost", vhost_config.parse, True, unique("name", "vhost")),
    "pool": Section("pool", pool_config.parse_pool, True, unique("name", "pool")),
    "tenant": Section("tenant", pool_config.parse_tenant, True, unique("name", "tenant")),
    "volume": Section("volume", pool_config.parse_volume, True, unique("name", "volume")),
    "pair": Section("pair", pair_config.parse, False),
    "metrics": Section("metrics", metrics_config.parse, False),
    "cluster": Section("cluster", cluster_config.parse, False),
}


# ---- line numbers for error messages -------------------------------------------

_HDR = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+|\"[^\"]*\")\s*=")


def _line_index(text: str) -> dict:
    """(path...) -> line for table headers and keys, arrays of tables indexed."""
    idx: dict = {}
    cur: tuple = ()
    counts: dict = {}
    for n, line in enumerate(text.splitlines(), 1):
        m = _HDR.match(line)
        if m:
            parts = tuple(p.strip().strip('"') for p in m.group(2).split("."))
            # An array of tables nested under an array element belongs to the latest element.
            base: tuple = ()
            for p in parts[:-1]:
                base = base + (p,)
                if base in counts:
                    base = base + (counts[base],)
            name = base + (parts[-1],)
            if m.group(1) == "[[":
                counts[name] = counts.get(name, -1) + 1
                cur = name + (counts[name],)
            else:
                cur = name
            idx.setdefault(cur, n)
            continue
        m = _KEY.match(line)
        if m:
            idx.setdefault(cur + (m.group(1).strip('"'),), n)
    return idx


class _Ctx:
    def __init__(self, path: str, text: str):
        self.path = path
        self.idx = _line_index(text)

    def line(self, keypath: tuple) -> int:
        kp = tuple(keypath)
        while kp:
            if kp in self.idx:
                return self.idx[kp]
            kp = kp[:-1]
        return 1

    def fail(self, path: tuple, msg: str) -> ConfigError:
        return ConfigError(f"{self.path}:{self.line(path)}: {keypath(path)}: {msg}")


def _section(name: str, sec: Section, raw: Any) -> Any:
    if not sec.array:
        if not isinstance(raw, dict):
            raise SchemaError((name,), f"must be a table: [{name}]")
        return sec.parse(raw, (name,))
    if not isinstance(raw, list):
        raise SchemaError((name,), f"must be an array of tables: [[{name}]]")
    entries = tuple(sec.parse(e, (name, i)) for i, e in enumerate(raw))
    if sec.check:
        sec.check(entries, (name,))
    return entries


def loads(text: str, path: str = "<config>") -> Config:
    ctx = _Ctx(path, text)
    try:
        raw = toml.loads(text)
    except toml.TomlDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: TOML syntax: {e.msg}") from None
    except (TypeError, ValueError, IndexError) as e:
        raise ConfigError(f"{path}:1: TOML syntax: {e}") from None
    for k in raw:
        if k not in SECTIONS:
            raise ctx.fail((k,), f"unknown section (known: {', '.join(sorted(SECTIONS))})")
    raw.setdefault("controller", {})
    try:
        kw = {s.attr: _section(n, s, raw[n]) for n, s in SECTIONS.items() if n in raw}
        pair_config.check_witness(kw.get("pair"), kw.get("cluster"))
        if kw.get("nvmf") is not None and kw.get("pair") is not None:
            kw["nvmf"] = _pair_cntlids(kw["nvmf"], kw["pair"], raw["nvmf"])
    except SchemaError as e:
        raise ctx.fail(e.path, e.msg) from None
    nv = raw.get("nvmf")
    return Config(source=path, cntlid_set=isinstance(nv, dict) and (
        "cntlid_min" in nv or "cntlid_max" in nv), **kw)


def _pair_cntlids(nv, pair, raw: dict):
    """Both controllers of a pair export the same subsystems (the paired
    volumes, every cluster volume), and a host refuses a second path whose
    controller ID another path of the subsystem has ("duplicate cntlid"): the
    two take disjoint halves of the range unless [nvmf] sets one — the name
    that sorts first the lower half (docs/architecture.md, Exports)."""
    if "cntlid_min" in raw or "cntlid_max" in raw:
        return nv
    half = (nv.cntlid_min + nv.cntlid_max) // 2
    lo, hi = ((nv.cntlid_min, half) if pair.me_id < pair.peer_id
              else (half + 1, nv.cntlid_max))
    return replace(nv, cntlid_min=lo, cntlid_max=hi)


def load(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}:0: (file): cannot read config: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}:0: (file): not UTF-8 text: {e}") from None
    return loads(text, path)


# ---- writing the running state back -----------------------------------------

def bdev_to_dict(b: BdevConfig) -> dict:
    return to_table(b)


def controller_to_dict(c: ControllerConfig) -> dict:
    return to_table(c, defaults=True)


def dumps(doc: dict) -> str:
    return toml.dumps(doc)


# ---- the reference (docs/config.md) ---------------------------------------------

def reference() -> str:
    """docs/config.md, written from the declarations: `python3 -m srrs.ctrl.config`."""
    out = ["# Config reference", "",
           "Generated from the declared schemas by `python3 -m srrs.ctrl.config > docs/config.md`;",
           "tests/ctrl/test_schema.py fails when it is out of date. Sizes are bytes or a",
           "string with a binary unit (`\"4GiB\"`); addresses are `HOST:PORT` or `[IPv6]:PORT`.",
           ""]
    for name, sec in SECTIONS.items():
        cls = typing.get_type_hints(Config)[sec.attr]
        cls = typing.get_args(cls)[0] if typing.get_origin(cls) in (tuple, typing.Union) else cls
        out += reference_lines(cls, name, sec.array)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(reference(), end="")
