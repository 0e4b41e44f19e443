"""TOML config, parsed and validated once into frozen dataclasses (docs/architecture.md, Config).

Every default lives here. Any problem (unknown key, wrong type, bad size
string, missing file) raises ConfigError whose message is one line naming the
file, the line and the key: ``single.toml:12: bdev[0].size: bad size "12XB" ...``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import toml

from srrs.units import SIZE_UNITS, format_size, parse_size  # noqa: F401 (re-exported)


class ConfigError(ValueError):
    """A config problem, already formatted as one line: file:line: key: message."""


def default_runtime_dir() -> str:
    d = os.environ.get("XDG_RUNTIME_DIR")
    return d if d and os.path.isdir(d) else "/tmp"


def default_rpc_socket() -> str:
    return os.path.join(default_runtime_dir(), "srrs.sock")


# ---- the model ---------------------------------------------------------------

@dataclass(frozen=True)
class ControllerConfig:
    name: str = "srrs"
    rpc_socket: str = field(default_factory=default_rpc_socket)
    reactors: int = 1
    cpus: tuple = ()
    poll_mode: str = "adaptive"
    idle_spin_us: int = 200


@dataclass(frozen=True)
class BdevConfig:
    name: str
    type: str
    size: int = 0
    block_size: int = 4096
    path: str = ""
    grow: bool = False  # file: an existing smaller file may be grown to size


@dataclass(frozen=True)
class Config:
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    bdevs: tuple = ()
    nvmf: Any = None          # srrs.nvmf.config.NvmfConfig when [nvmf] is present
    vhost: tuple = ()         # srrs.vhost.config.VhostConfig per [[vhost]]
    source: str = ""
    sections: dict = field(default_factory=dict)  # every module-owned section, parsed


# Sections owned by a module of this build: name -> (module with parse(), "table" | "array").
# The module's parse(section_or_entry) raises ValueError("key: message"); a
# module may also define check_all(entries) for rules across entries.
MODULE_SECTIONS = {
    "nvmf": ("srrs.nvmf.config", "table"),
    "vhost": ("srrs.vhost.config", "array"),
    "pool": ("srrs.ctrl.pool_config", "array"),
    "tenant": ("srrs.ctrl.pool_config", "array"),
    "volume": ("srrs.ctrl.pool_config", "array"),
    "pair": ("srrs.ctrl.pair_config", "table"),
    "metrics": ("srrs.ctrl.metrics_config", "table"),
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

    def fail(self, keypath: tuple, msg: str) -> ConfigError:
        key = ""
        for p in keypath:
            key += f"[{p}]" if isinstance(p, int) else (f".{p}" if key else str(p))
        return ConfigError(f"{self.path}:{self.line(keypath)}: {key}: {msg}")


def _get(ctx: _Ctx, d: dict, where: tuple, key: str, kind, default=None, required=False,
         check: Optional[Callable[[Any], Any]] = None):
    if key not in d:
        if required:
            raise ctx.fail(where + (key,), "is required")
        return default
    v = d[key]
    if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise ctx.fail(where + (key,), f"expected an integer, got {type(v).__name__} {v!r}")
    if kind is str and not isinstance(v, str):
        raise ctx.fail(where + (key,), f"expected a string, got {type(v).__name__} {v!r}")
    if kind is bool and not isinstance(v, bool):
        raise ctx.fail(where + (key,), f"expected true or false, got {v!r}")
    if kind is list and not isinstance(v, list):
        raise ctx.fail(where + (key,), f"expected a list, got {type(v).__name__} {v!r}")
    if kind == "size":
        try:
            v = parse_size(v)
        except ValueError as e:
            raise ctx.fail(where + (key,), str(e)) from None
    if check:
        try:
            r = check(v)
        except ValueError as e:
            raise ctx.fail(where + (key,), str(e)) from None
        if r is not None:
            v = r
    return v


def _no_unknown(ctx: _Ctx, d: dict, where: tuple, allowed) -> None:
    for k in d:
        if k not in allowed:
            raise ctx.fail(where + (k,), f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _one_of(*choices):
    def check(v):
        if v not in choices:
            raise ValueError(f"must be one of {', '.join(map(repr, choices))}, got {v!r}")
    return check


def _range(lo, hi):
    def check(v):
        if not lo <= v <= hi:
            raise ValueError(f"must be in {lo}..{hi}, got {v}")
    return check


_NAME_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,63}$")


def check_name(v: str) -> None:
    if not _NAME_RE.match(v):
        raise ValueError(f"bad name {v!r}: 1..63 of letters, digits, _ . : -")


def _controller(ctx: _Ctx, d: Any) -> ControllerConfig:
    w = ("controller",)
    if not isinstance(d, dict):
        raise ctx.fail(w, "must be a table")
    _no_unknown(ctx, d, w, {"name", "rpc_socket", "reactors", "cpus", "poll_mode", "idle_spin_us"})
    cpus = _get(ctx, d, w, "cpus", list, [])
    for i, c in enumerate(cpus):
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < 4096:
            raise ctx.fail(w + ("cpus",), f"cpus[{i}] must be a CPU number, got {c!r}")
    ncpu = os.cpu_count() or 1
    for c in cpus:
        if c >= ncpu:
            raise ctx.fail(w + ("cpus",), f"CPU {c} does not exist (this host has {ncpu})")
    reactors = _get(ctx, d, w, "reactors", int, len(cpus) or 1, check=_range(1, 64))
    if cpus and "reactors" in d and reactors != len(cpus):
        raise ctx.fail(w + ("reactors",), f"is {reactors} but cpus lists {len(cpus)} CPUs")
    return ControllerConfig(
        name=_get(ctx, d, w, "name", str, "srrs", check=check_name),
        rpc_socket=_get(ctx, d, w, "rpc_socket", str, default_rpc_socket()),
        reactors=reactors,
        cpus=tuple(cpus),
        poll_mode=_get(ctx, d, w, "poll_mode", str, "adaptive", check=_one_of("adaptive", "busy")),
        idle_spin_us=_get(ctx, d, w, "idle_spin_us", int, 200, check=_range(0, 1_000_000)),
    )


BDEV_TYPES = ("malloc", "null", "file")


def parse_bdev(d: dict, fail: Callable[[tuple, str], Exception], where: tuple = ()) -> BdevConfig:
    """One [[bdev]] table (also the params of the bdev_create RPC)."""
    ctx = _DictCtx(fail)
    if not isinstance(d, dict):
        raise fail(where, "must be a table")
    _no_unknown(ctx, d, where, {"name", "type", "size", "block_size", "path", "grow"})
    name = _get(ctx, d, where, "name", str, required=True, check=check_name)
    typ = _get(ctx, d, where, "type", str, required=True, check=_one_of(*BDEV_TYPES))
    size = _get(ctx, d, where, "size", "size", 0)
    bs = _get(ctx, d, where, "block_size", int, 4096, check=_one_of(512, 4096))
    path = _get(ctx, d, where, "path", str, "")
    grow = _get(ctx, d, where, "grow", bool, False)
    if grow and typ != "file":
        raise fail(where + ("grow",), f"only a file bdev can grow, this one is {typ}")
    if typ == "file":
        if not path:
            raise fail(where + ("path",), "is required for a file bdev")
    elif path:
        raise fail(where + ("path",), f"only a file bdev has a path, this one is {typ}")
    elif size == 0:
        raise fail(where + ("size",), f"is required for a {typ} bdev")
    if size % bs:
        raise fail(where + ("size",), f"{size} is not a multiple of block_size {bs}")
    return BdevConfig(name=name, type=typ, size=size, block_size=bs, path=path, grow=grow)


class _DictCtx(_Ctx):
    def __init__(self, fail):
        self._f = fail

    def fail(self, keypath, msg):
        return self._f(keypath, msg)


TOP_KEYS = {"controller", "bdev"} | set(MODULE_SECTIONS)


def loads(text: str, path: str = "<config>") -> Config:
    ctx = _Ctx(path, text)
    try:
        raw = toml.loads(text)
    except toml.TomlDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: TOML syntax: {e.msg}") from None
    except (TypeError, ValueError, IndexError) as e:
        raise ConfigError(f"{path}:1: TOML syntax: {e}") from None
    for k in raw:
        if k not in TOP_KEYS:
            raise ctx.fail((k,), f"unknown section (known: {', '.join(sorted(TOP_KEYS))})")
    ctrl = _controller(ctx, raw.get("controller", {}))
    bdevs = raw.get("bdev", [])
    if not isinstance(bdevs, list):
        raise ctx.fail(("bdev",), "must be an array of tables: [[bdev]]")
    parsed = []
    seen = set()
    for i, b in enumerate(bdevs):
        bc = parse_bdev(b, ctx.fail, ("bdev", i))
        if bc.name in seen:
            raise ctx.fail(("bdev", i, "name"), f"bdev {bc.name!r} is defined twice")
        seen.add(bc.name)
        parsed.append(bc)
    sections: dict = {}
    for name, (modname, kind) in MODULE_SECTIONS.items():
        if name not in raw:
            continue
        sec = raw[name]
        if kind == "array":
            if not isinstance(sec, list):
                raise ctx.fail((name,), f"must be an array of tables: [[{name}]]")
            sections[name] = tuple(_section_from_module(ctx, modname, e, (name, i), name)
                                   for i, e in enumerate(sec))
            _check_all(ctx, modname, name, sections[name])
        else:
            if not isinstance(sec, dict):
                raise ctx.fail((name,), f"must be a table: [{name}]")
            sections[name] = _section_from_module(ctx, modname, sec, (name,), name)
    return Config(controller=ctrl, bdevs=tuple(parsed), nvmf=sections.get("nvmf"),
                  vhost=sections.get("vhost", ()), source=path, sections=sections)


def _check_all(ctx: _Ctx, modname: str, name: str, entries: tuple) -> None:
    import importlib

    fn = getattr(importlib.import_module(modname), "check_all", None)
    if fn is None:
        return
    try:
        fn(name, entries) if fn.__code__.co_argcount == 2 else fn(entries)
    except ValueError as e:
        raise _module_error(ctx, (name,), str(e)) from None


def _section_from_module(ctx: _Ctx, modname: str, section: Any, where: tuple, name: str = ""):
    """Sections owned by a module: its parse() raises ValueError("key: msg").
    A module owning several sections gets parse_<section>() or parse(section, name)."""
    import importlib

    try:
        mod = importlib.import_module(modname)
    except ImportError:
        raise ctx.fail(where, "is not supported by this build") from None
    fn = getattr(mod, f"parse_{name}", None)
    try:
        return fn(section) if fn is not None else mod.parse(section)
    except ValueError as e:
        raise _module_error(ctx, where, str(e)) from None


def _module_error(ctx: _Ctx, where: tuple, msg: str) -> ConfigError:
    key, sep, rest = msg.partition(": ")
    if sep and re.match(r"^[A-Za-z0-9_.\[\]]+$", key):
        sub = tuple(int(p) if p.isdigit() else p for p in re.split(r"[.\[\]]+", key) if p)
        return ctx.fail(where + sub, rest)
    return ctx.fail(where, msg)


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
    d: dict = {"name": b.name, "type": b.type}
    if b.size:
        d["size"] = format_size(b.size)
    d["block_size"] = b.block_size
    if b.path:
        d["path"] = b.path
    return d


def controller_to_dict(c: ControllerConfig) -> dict:
    d: dict = {"name": c.name, "rpc_socket": c.rpc_socket, "poll_mode": c.poll_mode,
               "idle_spin_us": c.idle_spin_us}
    if c.cpus:
        d["cpus"] = list(c.cpus)
    else:
        d["reactors"] = c.reactors
    return d


def dumps(doc: dict) -> str:
    return toml.dumps(doc)
