"""JSON-RPC 2.0 over a Unix stream socket (mode 0600).

One method table (srrs.rpcdef declarations, merged in ctrl/methods.py) drives
the server and the CLI: the server checks each request's params against its
method's declaration (unknown, missing or mistyped -> -32602 naming the
param) before the handler runs; handlers call the controller and return a
JSON-able result, and raise the error kinds of srrs.rpcdef (each its own
code, listed in docs/rpc.md).

Framing: JSON values back to back (newline-separated when we send); a
request may be a batch. A request larger than MAX_REQUEST, nested deeper
than MAX_DEPTH, a batch longer than MAX_BATCH, bad JSON, a request cut short
by the client's EOF, an unknown method or bad params gets a JSON-RPC error
object; the server keeps serving every other connection (and that one, unless
its stream is unparsable or too large).
"""

from __future__ import annotations

import json
import logging
import os
import re
import selectors
import socket
import threading
import time
from typing import Any, Callable, Optional

from ..ffi import sockpath

# The declarations (typed params, error kinds and their codes) live in the leaf
# module srrs.rpcdef, which nvmf/ and vhost/ import too; re-exported here.
from ..rpcdef import (  # noqa: F401 (re-exported)
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    SERVER_ERROR,
    InvalidParams,
    Method,
    MethodTable,
    NotAllowedNow,
    RpcError,
    error_from_json,
    from_exception,
)

MAX_REQUEST = 1 << 20

log = logging.getLogger("srrs.rpc")

# ---- server ---------------------------------------------------------------------

MAX_BATCH = 1000            # requests in one batch
MAX_DEPTH = 64              # nesting of one request; json.loads recurses per level
MAX_BUFFERED = 64 << 20     # unfinished request bytes over all clients
MAX_CONNS = 1000            # beyond this, new clients wait in the listen backlog
OUT_HIGH = 1 << 20          # stop reading a client whose unread answers pass this
WRITE_TIMEOUT = 10.0        # a client that takes none of its answers for this long is dropped
LINGER = 2.0                # after a last answer, how long unread input is drained before close
READ_TIMEOUT = 30.0         # a request left half-sent for this long is answered and dropped
BACKLOG = max(socket.SOMAXCONN, 1024)  # the kernel caps it at net.core.somaxconn

_OUT = re.compile(rb'[][{}"]')
_IN_STR = re.compile(rb'["\\]')


class _Framer:
    """Finds where the first top-level JSON object/array in a byte stream ends,
    tracking strings and nesting; resumable across reads (no rescans). It stops
    at the first level past MAX_DEPTH (max_depth says so), so a request too deep
    for json.loads' recursion is refused before it is parsed."""

    __slots__ = ("pos", "depth", "max_depth", "in_str", "esc", "started", "garbage")

    def __init__(self):
        self.pos = 0
        self.depth = 0
        self.max_depth = 0
        self.in_str = False
        self.esc = False
        self.started = False
        self.garbage = False

    def feed(self, buf) -> Optional[int]:
        i, n = self.pos, len(buf)
        while not self.started:
            if i >= n:
                self.pos = i
                return None
            ch = buf[i]
            i += 1
            if ch in b" \t\r\n":
                continue
            if ch not in b"{[":
                self.garbage = True
                self.pos = i
                return None
            self.started = True
            self.depth = self.max_depth = 1
        while True:
            if self.esc:  # the byte after a backslash in a string is never special
                if i >= n:
                    break
                i += 1
                self.esc = False
                continue
            m = (_IN_STR if self.in_str else _OUT).search(buf, i)
            if m is None:
                i = n
                break
            i = m.end()
            ch = buf[i - 1]
            if self.in_str:
                if ch == 0x5C:
                    self.esc = True
                else:
                    self.in_str = False
            elif ch == 0x22:
                self.in_str = True
            elif ch in b"{[":
                self.depth += 1
                if self.depth > self.max_depth:
                    self.max_depth = self.depth
                    if self.depth > MAX_DEPTH:  # refuse now: no need to scan the rest
                        self.pos = i
                        return None
            else:
                self.depth -= 1
                if self.depth == 0:
                    self.pos = i
                    return i
        self.pos = i
        return None


class _Conn:
    __slots__ = ("sock", "rbuf", "wbuf", "closing", "draining", "frame", "rtime", "wtime")

    def __init__(self, sock):
        self.sock = sock
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.closing = False
        self.draining = False   # answered and shut for writing: input is discarded until EOF
        self.frame = _Framer()
        self.rtime = self.wtime = time.monotonic()


class RpcServer:
    """Serves a MethodTable on a Unix socket from one thread (selectors).

    No client can take the server down or hold up the others: requests are
    bounded in size and depth before they are parsed, every failure gets a
    JSON-RPC error object, a client that stops reading its answers stops being
    read (bounded output) and is dropped after WRITE_TIMEOUT, and nothing a
    request does escapes the loop."""

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
        self._ident = sockpath.identity(path)
        self._conns: dict = {}
        self._accepting = False
        self._accept_pause = 0.0
        self._closing = False

    @staticmethod
    def _listen(path: str) -> socket.socket:
        sockpath.claim(path, "RPC socket")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)  # the socket is born 0600: no window where others can connect
        try:
            s.bind(path)
        except BaseException:
            s.close()
            raise
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        s.listen(BACKLOG)
        s.setblocking(False)
        return s

    def start(self) -> None:
        self._set_accepting(True)
        self._sel.register(self._stop_r, selectors.EVENT_READ, "stop")
        self._thread = threading.Thread(target=self._loop, name="srrs-rpc", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closing = True
        if self._thread:
            os.write(self._stop_w, b"x")
            self._thread.join(5)
            self._thread = None
        for c in list(self._conns.values()):
            self._drop(c)
        self._set_accepting(False)
        self._lsock.close()
        self._sel.close()
        os.close(self._stop_r)
        os.close(self._stop_w)
        sockpath.release(self.path, self._ident)

    def _set_accepting(self, on: bool) -> None:
        if on == self._accepting:
            return
        if on:
            self._sel.register(self._lsock, selectors.EVENT_READ, None)
        else:
            self._sel.unregister(self._lsock)
        self._accepting = on

    def _drop(self, c: _Conn) -> None:
        c.closing = True
        if self._conns.pop(id(c), None) is None:
            return
        try:
            self._sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def _loop(self) -> None:
        last_tick = time.monotonic()
        while True:
            try:
                for key, ev in self._sel.select(self._tick_timeout()):
                    if key.data == "stop":
                        return
                    if key.data is None:
                        self._accept()
                    else:
                        self._event(key.data, ev)
                now = time.monotonic()
                if now - last_tick >= 1.0:
                    last_tick = now
                    self._tick(now)
            except Exception:  # a bug here must not end RPC for the controller's lifetime
                if self._closing:
                    return
                log.exception("RPC server loop")
                time.sleep(0.01)

    def _accept(self) -> None:
        while len(self._conns) < MAX_CONNS:
            try:
                s, _ = self._lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: let clients wait in the backlog
                log.warning("RPC accept: %s; pausing new connections for 1 s", e)
                self._set_accepting(False)
                self._accept_pause = time.monotonic() + 1.0
                return
            s.setblocking(False)
            c = _Conn(s)
            self._conns[id(c)] = c
            self._sel.register(s, selectors.EVENT_READ, c)
        self._set_accepting(False)  # full: the backlog holds the rest until one leaves

    def _event(self, c: _Conn, ev: int) -> None:
        try:
            if ev & selectors.EVENT_WRITE and self._flush(c):
                if c.rbuf and not c.closing and len(c.wbuf) < OUT_HIGH:
                    self._process(c)  # answers drained: go on with requests already read
                else:
                    self._arm(c)
            if id(c) in self._conns and ev & selectors.EVENT_READ:
                self._on_read(c)
        except Exception as e:  # one client's trouble is that client's, never the server's
            log.exception("RPC connection")
            if id(c) in self._conns:
                c.wbuf.clear()
                c.closing = True
                self._send(c, _error(None, RpcError(INTERNAL_ERROR, f"{type(e).__name__}: {e}")))
                self._arm(c)
        if len(self._conns) < MAX_CONNS and not self._accept_pause:
            self._set_accepting(True)

    def _tick_timeout(self) -> Optional[float]:
        # The tick's duties (timeouts of connections, the accept pause) exist only
        # with connections or accepting off: an idle controller's RPC thread
        # sleeps in select until a client comes (docs/architecture.md, Other threads).
        return 1.0 if self._conns or not self._accepting or self._accept_pause else None

    def _tick(self, now: float) -> None:
        for c in list(self._conns.values()):
            if c.draining:
                if now - c.wtime > LINGER:
                    self._drop(c)
            elif c.wbuf and now - c.wtime > WRITE_TIMEOUT:
                log.warning("RPC client took none of its %d bytes of answers for %.0f s: dropped",
                            len(c.wbuf), WRITE_TIMEOUT)
                self._drop(c)
            elif c.frame.started and not c.closing and not c.wbuf and now - c.rtime > READ_TIMEOUT:
                c.closing = True
                self._send(c, _error(None, RpcError(
                    PARSE_ERROR, f"parse error: request still incomplete after {READ_TIMEOUT:.0f} s")))
                self._arm(c)
        if self._accept_pause and now >= self._accept_pause:
            self._accept_pause = 0.0
        if not self._accept_pause and len(self._conns) < MAX_CONNS:
            self._set_accepting(True)

    def _on_read(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(c)
            return
        if not c.frame.started:  # READ_TIMEOUT runs from a request's first read
            c.rtime = time.monotonic()
        if c.draining:
            if not data:
                self._drop(c)
            return
        if not data:
            if c.rbuf.strip() and not c.closing:
                # Half-closed with a request unfinished: say so (the client may still read).
                self._send(c, _error(None, RpcError(
                    PARSE_ERROR, "parse error: connection closed in the middle of a request")))
            c.rbuf.clear()
            c.closing = True
            self._arm(c)
            return
        c.rbuf += data
        if len(c.rbuf) > 65536 and self._buffered() > MAX_BUFFERED:
            # Many clients each holding a big half-sent request: refuse the one
            # that crossed the line rather than grow without bound.
            c.closing = True
            self._send(c, _error(None, RpcError(
                SERVER_ERROR, f"server busy: more than {MAX_BUFFERED >> 20} MiB of unfinished "
                "requests buffered; retry later")))
            self._arm(c)
            return
        self._process(c)

    def _buffered(self) -> int:
        return sum(len(x.rbuf) for x in self._conns.values())

    def _process(self, c: _Conn) -> None:
        """Answers every whole request in rbuf while the client takes its answers."""
        while not c.closing and len(c.wbuf) < OUT_HIGH:
            end = c.frame.feed(c.rbuf)
            if end is None:
                if len(c.rbuf) > MAX_REQUEST:
                    c.closing = True
                    self._send(c, _error(None, RpcError(
                        INVALID_REQUEST, f"request larger than {MAX_REQUEST} bytes")))
                elif c.frame.max_depth > MAX_DEPTH:
                    c.closing = True
                    self._send(c, _error(None, RpcError(
                        INVALID_REQUEST, f"request nested deeper than {MAX_DEPTH} levels")))
                elif c.frame.garbage:
                    c.closing = True
                    self._send(c, _error(None, RpcError(
                        PARSE_ERROR, "parse error: a request must be a JSON object or array")))
                break
            raw = bytes(c.rbuf[:end])
            del c.rbuf[:end]
            c.frame = _Framer()
            # The frame is known, so the stream stays in sync whatever its content.
            try:
                obj = json.loads(raw.decode("utf-8"))
            except Exception as e:  # bad UTF-8/JSON, an int past the digit limit, ...
                self._send(c, _error(None, RpcError(PARSE_ERROR, f"parse error: {e}")))
                continue
            resp = self.dispatch(obj)
            if resp is not None:
                self._send(c, resp)
        self._arm(c)

    def _send(self, c: _Conn, obj: Any) -> None:
        try:
            data = json.dumps(obj).encode()
        except (TypeError, ValueError) as e:  # a handler returned something unencodable
            rid = obj.get("id") if isinstance(obj, dict) else None
            data = json.dumps(_error(rid, RpcError(INTERNAL_ERROR, f"result not JSON: {e}"))).encode()
        if not c.wbuf:
            c.wtime = time.monotonic()
        c.wbuf += data + b"\n"
        self._flush(c)

    def _flush(self, c: _Conn) -> bool:
        """Sends what the socket takes; False if the client is gone."""
        try:
            while c.wbuf:
                n = c.sock.send(c.wbuf)
                del c.wbuf[:n]
                c.wtime = time.monotonic()
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._drop(c)
            return False
        return True

    def _linger(self, c: _Conn) -> None:
        """Closing a socket with unread input resets it, and the client loses
        the error that explains why: shut writing, read to EOF, then close."""
        try:
            c.sock.shutdown(socket.SHUT_WR)
            self._sel.modify(c.sock, selectors.EVENT_READ, c)
        except (OSError, KeyError, ValueError):
            self._drop(c)
            return
        c.draining = True
        c.wtime = time.monotonic()

    def _arm(self, c: _Conn) -> None:
        """Read while the client takes its answers; write while answers wait."""
        if id(c) not in self._conns or c.draining:
            return
        if c.closing and not c.wbuf:
            self._linger(c)
            return
        ev = (selectors.EVENT_WRITE if c.wbuf else 0) | (
            selectors.EVENT_READ if not c.closing and len(c.wbuf) < OUT_HIGH else 0)
        try:
            if ev:
                self._sel.modify(c.sock, ev, c)
        except (KeyError, ValueError):
            self._drop(c)

    # -- dispatch ------------------------------------------------------------------
    def dispatch(self, obj: Any) -> Any:
        if isinstance(obj, list):
            if not obj:
                return _error(None, RpcError(INVALID_REQUEST, "empty batch"))
            if len(obj) > MAX_BATCH:  # bounds the answer a single request can make us buffer
                return _error(None, RpcError(
                    INVALID_REQUEST, f"batch of {len(obj)} requests (at most {MAX_BATCH})"))
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
        try:
            if m.when != "both" and m.when != phase:
                raise NotAllowedNow(f"{m.name} is allowed only at {m.when}")
            p = m.validate(params)  # the declaration, before the handler sees anything
            with self.lock:
                result = m.handler(self.ctx, p)
        except Exception as e:
            err = from_exception(e)
            if err is None:  # a bug: report it, keep serving
                err = RpcError(INTERNAL_ERROR, f"{type(e).__name__}: {e}")
            return None if notify else _error(rid, err)
        return None if notify else {"jsonrpc": "2.0", "id": rid, "result": result}


def _error(rid: Any, e: RpcError) -> dict:
    return {"jsonrpc": "2.0", "id": rid, "error": e.to_json()}


# ---- client -------------------------------------------------------------------------

class RpcClient:
    """connect_retry: how long to keep trying a connect that the server's full
    backlog (EAGAIN) or a restart window (ECONNREFUSED) turned away."""

    def __init__(self, path: str, timeout: float = 30.0, connect_retry: float = 1.0):
        self.path = path
        self.sock = _connect(path, timeout, connect_retry)
        self._id = 0
        self._buf = bytearray()

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
        seen = 0
        while True:
            # The server ends every answer with a newline and never puts one inside.
            nl = self._buf.find(b"\n", seen)
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[:nl + 1]
                seen = 0
                if line.strip():
                    return json.loads(line.decode("utf-8"))
                continue
            seen = len(self._buf)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("controller closed the connection")
            self._buf += data

    def call(self, method: str, params: Optional[dict] = None) -> Any:
        resp = self.call_raw(method, params)
        if "error" in resp:
            raise error_from_json(resp["error"])
        return resp.get("result")


def _connect(path: str, timeout: float, retry: float) -> socket.socket:
    deadline = time.monotonic() + retry
    pause = 0.005
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            return sock
        except OSError as e:
            sock.close()
            busy = isinstance(e, (BlockingIOError, ConnectionRefusedError, InterruptedError))
            if not busy or time.monotonic() + pause > deadline:
                raise ConnectionError(f"cannot connect to the controller at {path}: "
                                      f"{e.strerror or e}") from None
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
