"""Declared config schemas (docs/architecture.md, Config).

A config section is a frozen dataclass; each field declares its type, its one
default, its help text and its checks with `setting()`. `parse(cls, table,
where)` turns a TOML table (or RPC params) into the dataclass: unknown keys,
wrong types, failed checks raise SchemaError carrying the key path, which
ctrl/config.py turns into `file:line: key.path: message`.

Types understood: str, int, bool, Size (an int written as bytes or "4GiB"),
Optional[T] (None only as a default: TOML has no null), Tuple[T, ...] (a TOML
list or array of tables) and nested dataclasses (tables). Rules across the
fields of one table go in the dataclass's `_finish(self, raw)`, which returns
the final instance (derived defaults) or raises SchemaError with a path
relative to the table.

A leaf module: it imports only the standard library and srrs.units, so
nvmf/ and vhost/ declare their sections without importing ctrl/.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any, Callable, Dict, NewType, Optional

from .units import format_size, parse_address, parse_size

Size = NewType("Size", int)
MISSING = dataclasses.MISSING

#: The I/O engines of a file bdev or fragment (docs/architecture.md, File I/O
#: engines): auto is io_uring; where it is refused, native AIO if the file
#: takes O_DIRECT, else the worker threads.
FILE_ENGINES = ("auto", "uring", "aio", "threads")


class SchemaError(ValueError):
    """A config value that does not fit; str() is "key.path: message"."""

    def __init__(self, path: tuple, msg: str):
        self.path, self.msg = tuple(path), msg
        super().__init__(f"{keypath(self.path)}: {msg}" if self.path else msg)

    def under(self, where: tuple) -> "SchemaError":
        return SchemaError(tuple(where) + self.path, self.msg)


def keypath(path: tuple) -> str:
    """("nvmf", "subsystem", 0, "nqn") -> "nvmf.subsystem[0].nqn"."""
    key = ""
    for p in path:
        key += f"[{p}]" if isinstance(p, int) else (f".{p}" if key else str(p))
    return key


def setting(default: Any = MISSING, *, help: str = "", key: str = "",
            factory: Any = MISSING, choices: tuple = (), range: Optional[tuple] = None,
            nonempty: bool = False, coerce: Optional[Callable] = None,
            check: Optional[Callable] = None, each: Optional[Callable] = None,
            doc_type: str = "", doc_default: str = "", dump: Optional[Callable] = None,
            save: bool = True):
    """A field of a section. key: its TOML name when it differs from the field's;
    coerce(raw) -> raw runs before the type check (e.g. "0660" -> 0o660); check(v)
    and each(item) raise ValueError and may return a replacement value; doc_type:
    and doc_default: what the reference shows when the TOML spelling differs;
    dump(v): the TOML value to_table() writes (when it is not the plain one); save:
    False for one-time flags (force a format) that a saved config must not repeat."""
    md = {"help": help, "key": key, "choices": choices, "range": range, "nonempty": nonempty,
          "coerce": coerce, "check": check, "each": each, "doc_type": doc_type,
          "doc_default": doc_default, "dump": dump, "save": save}
    return dataclasses.field(default=default, default_factory=factory, metadata=md)


def at(where: tuple, fn: Callable, *args):
    """fn(*args), a ValueError from it reported at `where`."""
    try:
        return fn(*args)
    except SchemaError as e:
        raise e.under(where) from None
    except ValueError as e:
        raise SchemaError(where, str(e)) from None


# ---- checks shared by the sections ------------------------------------------------------

_NAME_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,63}$")


def check_name(v: str) -> None:
    """Object names (bdevs, pools, volumes, controllers): safe in paths and NQNs."""
    if not _NAME_RE.match(v):
        raise ValueError(f"bad name {v!r}: 1..63 of letters, digits, _ . : -")


def power_of_two(lo: int, hi: int):
    """A check for sizes such as cluster and stripe sizes."""
    def check(v: int) -> None:
        if v & (v - 1) or not lo <= v <= hi:
            raise ValueError(f"must be a power of two in {format_size(lo)}..{format_size(hi)}, "
                             f"got {v}")
    return check


def unix_socket(v: str) -> None:
    """A path that fits a Unix socket address (sun_path: 108 bytes with the NUL)."""
    if "\0" in v or len(v.encode()) > 107:
        raise ValueError(f"{v!r} is not a Unix socket path (at most 107 bytes, no NUL)")


def address(default_port: Optional[int] = None, min_port: int = 0, numeric: bool = False):
    """A check keeping an address string after parsing it once (units.parse_address)."""
    def check(v: str) -> None:
        parse_address(v, default_port, min_port=min_port, numeric=numeric)
    return check


# ---- the parser ----------------------------------------------------------------------------

_HINTS: Dict[type, dict] = {}


def _hints(cls: type) -> dict:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def fields(cls: type) -> list:
    """(toml key, dataclass field, resolved type) of every setting, declared order."""
    hints = _hints(cls)
    return [(f.metadata.get("key") or f.name, f, hints[f.name])
            for f in dataclasses.fields(cls) if f.init]


def _type_name(v: Any) -> str:
    return f"{type(v).__name__} {v!r}"


def _convert(tp: Any, v: Any, path: tuple, nonempty: bool = False) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return _convert(next(a for a in args if a is not type(None)), v, path, nonempty)
    if origin is tuple:
        if not isinstance(v, list):
            raise SchemaError(path, f"expected a list, got {_type_name(v)}")
        return tuple(_convert(args[0], x, path + (i,), nonempty) for i, x in enumerate(v))
    if dataclasses.is_dataclass(tp):
        return v if isinstance(v, tp) else parse(tp, v, path)  # a coerce may build it
    if tp is Size:
        return at(path, parse_size, v)
    if tp is bool:
        if not isinstance(v, bool):
            raise SchemaError(path, f"expected true or false, got {v!r}")
    elif tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise SchemaError(path, f"expected an integer, got {_type_name(v)}")
    elif tp is str:
        if nonempty and (not isinstance(v, str) or not v):
            raise SchemaError(path, f"expected a non-empty string, got {v!r}")
        if not isinstance(v, str):
            raise SchemaError(path, f"expected a string, got {_type_name(v)}")
    return v


def _value(f: dataclasses.Field, tp: Any, v: Any, path: tuple) -> Any:
    md = f.metadata
    if md.get("coerce"):
        v = at(path, md["coerce"], v)
    v = _convert(tp, v, path, md.get("nonempty", False))
    if md.get("choices") and v not in md["choices"]:
        raise SchemaError(path, f"must be one of {', '.join(map(str, md['choices']))}, got {v!r}")
    if md.get("range"):
        lo, hi = md["range"]
        if not lo <= v <= hi:
            raise SchemaError(path, f"must be in {lo}..{hi}, got {v}")
    if md.get("each"):
        v = tuple(x if r is None else r for x, r in
                  ((x, at(path + (i,), md["each"], x)) for i, x in enumerate(v)))
    if md.get("check"):
        r = at(path, md["check"], v)
        v = v if r is None else r
    return v


def parse(cls: type, raw: Any, where: tuple = ()) -> Any:
    """The dataclass `cls` from a table; SchemaError names the key path under `where`."""
    if not isinstance(raw, dict):
        raise SchemaError(where, f"expected a table, got {_type_name(raw)}")
    fl = fields(cls)
    known = {k for k, _, _ in fl}
    for k in raw:
        if k not in known:
            raise SchemaError(where + (k,), f"unknown key (allowed: {', '.join(sorted(known))})")
    kw = {}
    for k, f, tp in fl:
        if k in raw:
            kw[f.name] = _value(f, tp, raw[k], where + (k,))
        elif f.default is MISSING and f.default_factory is MISSING:
            raise SchemaError(where + (k,), "is required")
    obj = cls(**kw)
    finish = getattr(obj, "_finish", None)
    return at(where, finish, raw) if finish else obj


def unique(attr: str, what: str) -> Callable:
    """A cross-entry check: no two entries of an array of tables share `attr`."""
    def check(entries: tuple, where: tuple = ()) -> None:
        seen = set()
        for i, e in enumerate(entries):
            v = getattr(e, attr)
            if v in seen:
                raise SchemaError(where + (i, attr), f"{what} {v!r} is defined twice")
            seen.add(v)
    return check


# ---- back to TOML (save_config) -------------------------------------------------------------

def _plain(tp: Any, v: Any, defaults: bool) -> Any:
    if isinstance(v, tuple):
        inner = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else None
        return [_plain(inner, x, defaults) for x in v]
    if dataclasses.is_dataclass(v):
        return to_table(v, defaults)
    return format_size(v) if tp is Size else v


def to_table(obj: Any, defaults: bool = False) -> dict:
    """The TOML table that parse() turns back into obj. Values equal to their
    declared default are left out (with defaults: only empty ones), factory
    defaults always written (a derived default is derived again from the same
    table); a dataclass may reshape its table with `_table(self, table)`."""
    out: dict = {}
    for k, f, tp in fields(type(obj)):
        md, v = f.metadata, getattr(obj, f.name)
        if not md.get("save", True) or v is None:
            continue
        if v == f.default and (not defaults or v in ((), "")):
            continue
        out[k] = md["dump"](v) if md.get("dump") else _plain(tp, v, defaults)
    shape = getattr(obj, "_table", None)
    return shape(out) if shape else out


# ---- the reference ---------------------------------------------------------------------------

def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return _describe(next(a for a in args if a is not type(None)))
    if origin is tuple:
        return f"list of {_describe(args[0])}"
    if dataclasses.is_dataclass(tp):
        return "table"
    return {Size: "size", int: "integer", bool: "bool", str: "string"}.get(tp, str(tp))


def _default(f: dataclasses.Field, tp: Any) -> str:
    if f.metadata.get("doc_default"):
        return f.metadata["doc_default"]
    if f.default is MISSING:
        return "(derived)" if f.default_factory is not MISSING else "required"
    if f.default is None or f.default == () or f.default == "":
        return "-"
    if tp is Size:
        return f"`{format_size(f.default)}`"
    return f"`{str(f.default).lower() if isinstance(f.default, bool) else f.default}`"


def reference(cls: type, name: str, array: bool = False) -> list:
    """Markdown lines describing a section and its nested tables, from the declaration."""
    out = [f"### `[[{name}]]`" if array else f"### `[{name}]`", ""]
    doc = (cls.__doc__ or "").strip().splitlines()
    if doc and not doc[0].startswith(cls.__name__ + "("):
        text = " ".join(x.strip() for x in doc)
        text = text.split(": ", 1)[1] if text.startswith("[") else text
        out += [text[:1].upper() + text[1:], ""]
    out += ["| key | type | default | notes |", "| --- | --- | --- | --- |"]
    nested = []
    for k, f, tp in fields(cls):
        md = f.metadata
        notes = [md["help"]] if md.get("help") else []
        if md.get("choices"):
            notes.append(f"one of {', '.join(map(str, md['choices']))}")
        if md.get("range"):
            notes.append(f"{md['range'][0]}..{md['range'][1]}")
        shown = md.get("doc_type") or _describe(tp)
        out.append(f"| `{k}` | {shown} | {_default(f, tp)} | {'; '.join(notes)} |")
        inner = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp
        if dataclasses.is_dataclass(inner) and not md.get("doc_type"):
            nested.append((inner, f"{name}.{k}", inner is not tp))
    out.append("")
    for inner, n, arr in nested:
        out += reference(inner, n, arr)
    return out


__all__ = ["MISSING", "SchemaError", "Size", "address", "at", "check_name", "fields", "keypath",
           "parse", "power_of_two", "reference", "setting", "to_table", "unique", "unix_socket"]

