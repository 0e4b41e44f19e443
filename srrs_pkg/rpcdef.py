"""Declarations of RPC methods: typed parameters, errors with stable codes.

A leaf module (stdlib and srrs.units only): nvmf/ and vhost/ declare their
methods here without importing srrs.ctrl. The server (ctrl/rpc.py) checks
every request against its method's declaration before the handler runs, and
the command line (ctrl/cli.py) is generated from the same declarations
(docs/architecture.md, Control plane; the table of methods is docs/rpc.md).
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

from .units import parse_size

# ---- errors ---------------------------------------------------------------------
# JSON-RPC 2.0 reserves -32768..-32000; -32099..-32000 are the server's own.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_ERROR = -32000      # a failure of no kind below (a core error with another errno)


class RpcError(Exception):
    """An error a method answers with; `code` is its JSON-RPC error code."""

    code = SERVER_ERROR
    kind = "error"

    def __init__(self, *args: Any, data: Any = None):
        # RpcError(message) for the kinds below; RpcError(code, message[, data]) as before.
        if len(args) >= 2 and isinstance(args[0], int):
            self.code = args[0]
            message = args[1]
            if len(args) > 2:
                data = args[2]
        else:
            message = args[0] if args else self.kind
        super().__init__(message)
        self.message = str(message)
        self.data = data

    def __str__(self) -> str:
        return self.message

    def to_json(self) -> dict:
        e = {"code": self.code, "message": self.message}
        if self.data is not None:
            e["data"] = self.data
        return e


# The kinds a service refuses a request with are ValueErrors too: code that
# refuses with ValueError (and catches it, e.g. at start-up) keeps working.
class InvalidParams(RpcError, ValueError):
    code, kind = INVALID_PARAMS, "invalid params"


class NotFound(RpcError, LookupError, ValueError):
    code, kind = -32001, "not found"


class AlreadyExists(RpcError, ValueError):
    code, kind = -32002, "already exists"


class Busy(RpcError, ValueError):
    code, kind = -32003, "busy (in use)"


class InvalidState(RpcError, ValueError):
    code, kind = -32004, "invalid state"


class NoSpace(RpcError, ValueError):
    code, kind = -32005, "no space or over quota"


class Unauthorized(RpcError):
    code, kind = -32006, "unauthorized"


class IoFailed(RpcError):
    code, kind = -32007, "I/O error"


class NotConfigured(RpcError):
    code, kind = -32008, "not configured"


class NotAllowedNow(RpcError):
    code, kind = -32009, "not allowed in this phase"


ERROR_KINDS: tuple = (InvalidParams, NotFound, AlreadyExists, Busy, InvalidState, NoSpace,
                      Unauthorized, IoFailed, NotConfigured, NotAllowedNow)

# errno of a core error (SrrsError, an OSError) -> the kind it is
_ERRNO_KIND = {
    _errno.ENOENT: NotFound, _errno.ENODEV: NotFound, _errno.ENXIO: NotFound,
    _errno.EEXIST: AlreadyExists, _errno.EADDRINUSE: AlreadyExists,
    _errno.EBUSY: Busy,
    _errno.ENOSPC: NoSpace, _errno.EDQUOT: NoSpace,
    _errno.EACCES: Unauthorized, _errno.EPERM: Unauthorized,
    _errno.EIO: IoFailed,
    _errno.EINVAL: InvalidParams, _errno.ERANGE: InvalidParams,
}


def from_exception(e: BaseException) -> RpcError:
    """The RpcError a handler's exception answers with: its own kind, a core
    error's errno mapped to a kind (errno kept in data), a bad value or a
    missing object, else None for the caller to treat as a bug."""
    if isinstance(e, RpcError):
        return e
    if isinstance(e, OSError):
        msg = str(e) if str(e) else _errno.errorcode.get(e.errno or 0, "error")
        kind = _ERRNO_KIND.get(e.errno or 0)
        err = kind(msg) if kind else RpcError(SERVER_ERROR, msg)
        err.data = {"errno": e.errno}
        return err
    if isinstance(e, KeyError):
        return NotFound(e.args[0] if len(e.args) == 1 and isinstance(e.args[0], str) else str(e))
    if isinstance(e, (ValueError, TypeError)):
        return InvalidParams(str(e))
    return None


def error_from_json(e: Any) -> RpcError:
    """The client's side: an error object back to its kind (NotFound, Busy, ...)."""
    e = e if isinstance(e, dict) else {"message": str(e)}
    code = e.get("code", SERVER_ERROR)
    kind = next((k for k in ERROR_KINDS if k.code == code), None)
    err = kind(str(e.get("message", "?"))) if kind else RpcError(
        code if isinstance(code, int) else SERVER_ERROR, str(e.get("message", "?")))
    err.data = e.get("data")
    return err


# ---- parameters -------------------------------------------------------------------

TYPES = ("str", "int", "float", "bool", "size", "list", "dict")
REQUIRED: Any = ...


@dataclass(frozen=True)
class Param:
    """One parameter. type: one of TYPES or a tuple of them (any one is accepted);
    "size" is bytes from an int or "10GiB" (srrs.units.parse_size). A default of
    None means "absent unless given" (the handler or the config parser decides);
    any other default is filled in before the handler runs."""

    name: str
    type: Union[str, tuple] = "str"
    default: Any = REQUIRED
    help: str = ""
    choices: Optional[tuple] = None
    positional: bool = False    # CLI: may also be given as the verb's one positional argument

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def types(self) -> tuple:
        return self.type if isinstance(self.type, tuple) else (self.type,)

    def check(self, v: Any) -> Any:
        """v if it has this param's type (a size becomes bytes); InvalidParams otherwise."""
        for t in self.types:
            ok, out = _convert(t, v)
            if ok:
                if self.choices is not None and out not in self.choices:
                    raise InvalidParams(f"param {self.name!r} must be one of "
                                        f"{', '.join(map(str, self.choices))}; got {v!r}")
                return out
        if "size" in self.types and isinstance(v, str):
            try:
                parse_size(v)
            except ValueError as e:
                raise InvalidParams(f"param {self.name!r}: {e}") from None
        raise InvalidParams(f"param {self.name!r} must be {'|'.join(self.types)}, "
                            f"got {type(v).__name__}")

    def to_json(self) -> dict:
        d = {"name": self.name, "type": "|".join(self.types), "required": self.required,
             "help": self.help}
        if not self.required:
            d["default"] = self.default
        if self.choices is not None:
            d["choices"] = list(self.choices)
        return d


def _convert(t: str, v: Any) -> tuple:
    if t == "str":
        return isinstance(v, str), v
    if t == "bool":
        return isinstance(v, bool), v
    if isinstance(v, bool):  # True is an int to Python, never to us
        return False, v
    if t == "int":
        return isinstance(v, int), v
    if t == "float":
        return isinstance(v, (int, float)), v
    if t == "size":
        try:
            return True, parse_size(v)
        except ValueError:
            return False, v
    if t == "list":
        return isinstance(v, list), v
    if t == "dict":
        return isinstance(v, dict), v
    raise AssertionError(f"unknown param type {t}")


# ---- methods ---------------------------------------------------------------------

WHEN = ("both", "startup", "runtime")


@dataclass(frozen=True)
class Method:
    """name: the RPC method; noun/verb: `srrs NOUN VERB` (verb "" for a
    top-level command `srrs NOUN`); when: the controller phases it runs in."""

    name: str
    handler: Callable[[Any, dict], Any]
    params: tuple = ()
    help: str = ""
    when: str = "both"
    noun: str = ""
    verb: str = ""
    strict: bool = True   # unknown params are refused (False: passed to the handler as is)

    def validate(self, params: Optional[dict]) -> dict:
        """The params the handler gets: every key declared and of its type,
        the required ones present, defaults filled in."""
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise InvalidParams("params must be an object")
        decl = {p.name: p for p in self.params}
        out = {}
        for k, v in params.items():
            p = decl.get(k)
            if p is None:
                if self.strict:
                    known = ", ".join(decl) or "none"
                    raise InvalidParams(f"param {k!r} is unknown to {self.name} (known: {known})")
                out[k] = v
            else:
                out[k] = p.check(v)
        for p in self.params:
            if p.name not in out:
                if p.required:
                    raise InvalidParams(f"param {p.name!r} is required by {self.name}")
                if p.default is not None:
                    out[p.name] = p.default
        return out

    def __call__(self, ctx: Any, params: Optional[dict] = None) -> Any:
        """Validate, then run the handler (what the server does, minus the socket)."""
        return self.handler(ctx, self.validate(params))

    def to_json(self) -> dict:
        return {"name": self.name, "when": self.when, "help": self.help,
                "cli": f"{self.noun} {self.verb}".strip(),
                "params": [p.to_json() for p in self.params]}


def method(name: str, handler: Callable, params: Sequence[Param] = (), help: str = "",
           when: str = "both", noun: str = "", verb: Optional[str] = None,
           strict: bool = True) -> Method:
    """A Method; noun/verb default to the name split at its first '_'
    (nvmf_subsystem_add_ns -> `srrs nvmf subsystem-add-ns`)."""
    if when not in WHEN:
        raise ValueError(f"{name}: when must be one of {WHEN}")
    if not noun:
        noun, _, rest = name.partition("_")
        verb = rest.replace("_", "-") if verb is None else verb
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ValueError(f"{name}: a param is declared twice")
    doc = help or (handler.__doc__ or "").strip()
    return Method(name, handler, tuple(params), doc, when, noun, verb or "", strict)


class MethodTable:
    """Methods by name; a module declares its own table and the controller
    merges them (ctrl/methods.py) into the one it serves."""

    def __init__(self, methods: Sequence[Method] = ()):
        self.methods: dict[str, Method] = {}
        for m in methods:
            self.put(m)

    def put(self, m: Method) -> Method:
        if not isinstance(m, Method):  # a bare handler would skip the param checks
            raise TypeError(f"{m!r}: not a declared Method")
        if m.name in self.methods:
            raise ValueError(f"RPC method {m.name} declared twice")
        self.methods[m.name] = m
        return m

    def add(self, name: str, handler: Callable, params: Sequence[Param] = (), **kw) -> Method:
        # Without params a quick table for tests: any params go to the handler as they are.
        kw.setdefault("strict", bool(params))
        return self.put(method(name, handler, params, **kw))

    def method(self, name: str, *params: Param, **kw):
        """Decorator: declare the function below as the handler of `name`."""
        def deco(fn):
            self.put(method(name, fn, params, **kw))
            return fn
        return deco

    def merge(self, other: "MethodTable") -> None:
        for m in other:
            self.put(m)

    def __getitem__(self, name: str) -> Method:
        return self.methods[name]

    def __contains__(self, name: object) -> bool:
        return name in self.methods

    def __iter__(self):
        return iter(sorted(self.methods.values(), key=lambda m: m.name))

    def __len__(self) -> int:
        return len(self.methods)


P = Param  # short form for the declarations


def kinds_table() -> list:
    """(code, kind, exception class name) of every error an RPC can answer with."""
    std = [(PARSE_ERROR, "parse error", "-"), (INVALID_REQUEST, "invalid request", "-"),
           (METHOD_NOT_FOUND, "method not found", "-"),
           (INTERNAL_ERROR, "internal error (a bug)", "-"),
           (SERVER_ERROR, "other failure (a core error with another errno)", "RpcError")]
    return sorted(std + [(k.code, k.kind, k.__name__) for k in ERROR_KINDS], key=lambda r: -r[0])


