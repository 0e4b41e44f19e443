"""JSON-RPC 2.0 over a Unix stream socket (mode 0600).

One method table drives the server, the client and the CLI (one place per method):
handlers only decode params, call the controller and return a JSON-able
result. Framing: JSON values back to back (newline-separated when we send);
a request may be a batch. A request larger than MAX_REQUEST, bad JSON, an
unknown method or bad params gets a JSON-RPC error object; the server keeps
serving every other connection (and that one, unless its stream is unparsable).
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import stat
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

MAX_REQUEST = 1 << 20

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_ERROR = -32000


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict:
        e = {"code": self.code, "message": self.message}
        if self.data is not None:
            e["data"] = self.data
        return e


class InvalidParams(RpcError):
    def __init__(self, message: str):
        super().__init__(INVALID_PARAMS, message)


@dataclass(frozen=True)
class Method:
    name: str
    handler: Callable[[Any, dict], Any]
    when: str = "both"          # "startup" | "runtime" | "both"
    help: str = ""


class MethodTable:
    def __init__(self):
        self.methods: dict[str, Method] = {}

    def add(self, name: str, handler, when: str = "both", help: str = "") -> None:
        if name in self.methods:
            raise ValueError(f"RPC method {name} registered twice")
        self.methods[name] = Method(name, handler, when, help or (handler.__doc__ or "").strip())

    def method(self, name: str, when: str = "both"):
        def deco(fn):
            self.add(name, fn, when)
            return fn
        return deco

    def update(self, methods: dict) -> None:
        """Merge a module's METHODS = {name: handler} dict."""
        for name, h in methods.items():
            self.add(name, h)


def param(params: dict, key: str, kind, default=..., check: Optional[Callable] = None):
    """Typed access to a params dict; raises InvalidParams with the key's name."""
    if key not in params:
        if default is ...:
            raise InvalidParams(f"missing param {key!r}")
        return default
    v = params[key]
    ok = isinstance(v, kind) and not (kind in (int, float) and isinstance(v, bool))
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        ok = True
    if not ok:
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise InvalidParams(f"param {key!r} must be {names}, got {type(v).__name__}")
    if check:
        try:
            check(v)
        except ValueError as e:
            raise InvalidParams(f"param {key!r}: {e}") from None
    return v


# ---- server ---------------------------------------------------------------------

class _Framer:
    """Finds where the first top-level JSON object/array in a byte stream ends,
    tracking strings and nesting; resumable across reads (no rescans)."""

    __slots__ = ("pos", "depth", "in_str", "esc", "started", "garbage")

    def __init__(self):
        self.pos = 0
        self.depth = 0
        self.in_str = False
        self.esc = False
        self.started = False
        self.garbage = False

    def feed(self, buf: bytes):
        i, n = self.pos, len(buf)
        while i < n:
            ch = buf[i]
            i += 1
            if not self.started:
                if ch in b" \t\r\n":
                    continue
                if ch not in b"{[":
                    self.garbage = True
                    self.pos = i
                    return None
                self.started = True
                self.depth = 1
                continue
            if self.in_str:
                if self.esc:
                    self.esc = False
                elif ch == 0x5C:  # backslash
                    self.esc = True
                elif ch == 0x22:
                    self.in_str = False
            elif ch == 0x22:
                self.in_str = True
            elif ch in b"{[":
                self.depth += 1
            elif ch in b"}]":
                self.depth -= 1
                if self.depth == 0:
                    self.pos = i
                    return i
        self.pos = i
        return None


class _Conn:
    __slots__ = ("sock", "rbuf", "wbuf", "closing", "frame")

    def __init__(self, sock):
        self.sock = sock
        self.rbuf = b""
        self.wbuf = b""
        self.closing = False
        self.frame = _Framer()


class RpcServer:
    """Serves a MethodTable on a Unix socket from one thread (selectors)."""

    def __init__(self, path: str, table: MethodTable, ctx: Any, lock: Optional[threading.Lock] = None,
                 phase: Callable[[], str] = lambda: "runtime"):
        self.path = path
        self.table = table
        self.ctx = ctx
        self.lock = lock or threading.Lock()
        self.phase = phase
        self._sel = selectors.DefaultSelector()
        self._stop_r, self._stop_w = os.pipe()
        os.set_blocking(self._stop_r, False)
        self._thread: Optional[threading.Thread] = None
        self._lsock = self._listen(path)
        self._conns: dict = {}

    @staticmethod
    def _listen(path: str) -> socket.socket:
        d = os.path.dirname(path) or "."
        if not os.path.isdir(d):
            raise OSError(f"RPC socket directory {d} does not exist")
        if os.path.exists(path) or os.path.islink(path):
            st = os.lstat(path)
            if not stat.S_ISSOCK(st.st_mode):
                raise OSError(f"RPC socket path {path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # stale socket of a dead controller
            else:
                raise OSError(f"another controller is serving {path}")
            finally:
                probe.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)  # the socket is born 0600: no window where others can connect
        try:
            s.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        s.listen(16)
        s.setblocking(False)
        return s

    def start(self) -> None:
        self._sel.register(self._lsock, selectors.EVENT_READ, None)
        self._sel.register(self._stop_r, selectors.EVENT_READ, "stop")
        self._thread = threading.Thread(target=self._loop, name="srrs-rpc", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread:
            os.write(self._stop_w, b"x")
            self._thread.join(5)
            self._thread = None
        for c in list(self._conns.values()):
            self._drop(c)
        try:
            self._sel.unregister(self._lsock)
        except (KeyError, ValueError):
            pass
        self._lsock.close()
        self._sel.close()
        os.close(self._stop_r)
        os.close(self._stop_w)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _drop(self, c: _Conn) -> None:
        self._conns.pop(c.sock.fileno(), None)
        try:
            self._sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def _loop(self) -> None:
        while True:
            for key, ev in self._sel.select():
                if key.data == "stop":
                    return
                if key.data is None:
                    try:
                        s, _ = self._lsock.accept()
                    except OSError:
                        continue
                    s.setblocking(False)
                    c = _Conn(s)
                    self._conns[s.fileno()] = c
                    self._sel.register(s, selectors.EVENT_READ, c)
                    continue
                c = key.data
                if ev & selectors.EVENT_READ:
                    self._on_read(c)
                if c.sock.fileno() >= 0 and ev & selectors.EVENT_WRITE:
                    self._flush(c)

    def _on_read(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(c)
            return
        if not data:
            self._drop(c)
            return
        c.rbuf += data
        while not c.closing:
            end = c.frame.feed(c.rbuf)
            if end is None:
                if len(c.rbuf) > MAX_REQUEST:
                    self._send(c, _error(None, RpcError(
                        INVALID_REQUEST, f"request larger than {MAX_REQUEST} bytes")))
                    c.closing = True
                elif c.frame.garbage:
                    self._send(c, _error(None, RpcError(
                        PARSE_ERROR, "parse error: a request must be a JSON object or array")))
                    c.closing = True
                break
            raw, c.rbuf = c.rbuf[:end], c.rbuf[end:]
            c.frame = _Framer()
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                # The frame is known, so the stream stays in sync: answer and go on.
                self._send(c, _error(None, RpcError(PARSE_ERROR, f"parse error: {e}")))
                continue
            resp = self.dispatch(obj)
            if resp is not None:
                self._send(c, resp)
        if c.closing and not c.wbuf:
            self._drop(c)

    def _send(self, c: _Conn, obj: Any) -> None:
        c.wbuf += json.dumps(obj).encode() + b"\n"
        self._flush(c)

    def _flush(self, c: _Conn) -> None:
        try:
            while c.wbuf:
                n = c.sock.send(c.wbuf)
                c.wbuf = c.wbuf[n:]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._drop(c)
            return
        try:
            self._sel.modify(c.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if c.wbuf else 0), c)
        except (KeyError, ValueError):
            return
        if c.closing and not c.wbuf:
            self._drop(c)

    # -- dispatch ------------------------------------------------------------------
    def dispatch(self, obj: Any) -> Any:
        if isinstance(obj, list):
            if not obj:
                return _error(None, RpcError(INVALID_REQUEST, "empty batch"))
            out = [r for r in (self._one(o) for o in obj) if r is not None]
            return out or None
        return self._one(obj)

    def _one(self, req: Any) -> Any:
        if not isinstance(req, dict) or req.get("jsonrpc") != "2.0" or not isinstance(
                req.get("method"), str):
            rid = req.get("id") if isinstance(req, dict) else None
            return _error(rid, RpcError(INVALID_REQUEST,
                                        'invalid request: need {"jsonrpc": "2.0", "method": ...}'))
        rid = req.get("id")
        notify = "id" not in req
        if rid is not None and not isinstance(rid, (str, int)):
            return _error(None, RpcError(INVALID_REQUEST, "id must be a string, a number or null"))
        params = req.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            return _error(rid, RpcError(INVALID_PARAMS, "params must be an object"))
        m = self.table.methods.get(req["method"])
        if m is None:
            return None if notify else _error(
                rid, RpcError(METHOD_NOT_FOUND, f"method not found: {req['method']}"))
        phase = self.phase()
        if m.when != "both" and m.when != phase:
            return None if notify else _error(
                rid, RpcError(SERVER_ERROR, f"{m.name} is allowed only at {m.when}"))
        try:
            with self.lock:
                result = m.handler(self.ctx, params)
        except RpcError as e:
            return None if notify else _error(rid, e)
        except OSError as e:  # SrrsError and friends: errno + the core's message
            return None if notify else _error(rid, RpcError(
                SERVER_ERROR, str(e) or os.strerror(e.errno or 0),
                {"errno": e.errno}))
        except (ValueError, KeyError, TypeError) as e:
            return None if notify else _error(rid, RpcError(INVALID_PARAMS, str(e)))
        except Exception as e:  # a bug: report it, keep serving
            return None if notify else _error(rid, RpcError(INTERNAL_ERROR,
                                                            f"{type(e).__name__}: {e}"))
        return None if notify else {"jsonrpc": "2.0", "id": rid, "result": result}


def _error(rid: Any, e: RpcError) -> dict:
    return {"jsonrpc": "2.0", "id": rid, "error": e.to_json()}


# ---- client -------------------------------------------------------------------------

class RpcClient:
    def __init__(self, path: str, timeout: float = 30.0):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise ConnectionError(f"cannot connect to the controller at {path}: "
                                  f"{e.strerror or e}") from None
        self._id = 0
        self._buf = ""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def call_raw(self, method: str, params: Optional[dict] = None) -> dict:
        self._id += 1
        req = {"jsonrpc": "2.0", "id": self._id, "method": method}
        if params is not None:
            req["params"] = params
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        dec = json.JSONDecoder()
        while True:
            s = self._buf.lstrip()
            if s:
                try:
                    obj, end = dec.raw_decode(s)
                    self._buf = s[end:]
                    return obj
                except json.JSONDecodeError:
                    pass
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("controller closed the connection")
            self._buf += data.decode()

    def call(self, method: str, params: Optional[dict] = None) -> Any:
        resp = self.call_raw(method, params)
        if "error" in resp:
            e = resp["error"]
            raise RpcError(e.get("code", SERVER_ERROR), e.get("message", "?"), e.get("data"))
        return resp.get("result")
