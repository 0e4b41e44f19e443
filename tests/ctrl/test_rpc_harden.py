"""Hostile RPC clients against a real controller process: no single request or
client can kill the RPC server or hold up the others, every parse failure is
answered with a JSON-RPC error object, and a normal call answers promptly
after each attack."""

import json
import socket
import threading
import time

import pytest

from srrs.ctrl.rpc import RpcClient

from .helpers import Controller, write_config


@pytest.fixture
def ctl(tmp_path):
    sock = str(tmp_path / "c.sock")
    c = Controller(write_config(tmp_path / "c.toml", sock), sock)
    yield c
    c.kill()


def _still_serving(ctl, within=2.0):
    t0 = time.monotonic()
    with RpcClient(ctl.sock, timeout=10) as c:
        assert c.call("status")["name"] == "t"
    assert time.monotonic() - t0 < within, "a normal RPC was slow after the attack"
    assert ctl.proc.poll() is None


def _exchange(path, payload: bytes, half_close=False) -> list:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    try:
        s.sendall(payload)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        buf = b""
        while True:
            try:
                d = s.recv(65536)
            except socket.timeout:
                break
            if not d:
                break
            buf += d
            if not half_close and buf.endswith(b"\n"):
                break
    finally:
        s.close()
    return [json.loads(line) for line in buf.splitlines() if line.strip()]


def test_deep_nesting_answered_not_fatal(ctl):
    # 10 KB of nested brackets blew json.loads' recursion and ended the RPC thread.
    for payload in (b"[" * 5000 + b"]" * 5000,
                    b'{"jsonrpc": "2.0", "id": 7, "method": "status", "params": {"x": '
                    + b"[" * 5000 + b"]" * 5000 + b"}}"):
        (r,) = _exchange(ctl.sock, payload)
        assert r["error"]["code"] == -32600 and "deep" in r["error"]["message"]
    _still_serving(ctl)


def test_huge_integer_answered_not_fatal(ctl):
    # int() refuses more than 4300 digits with ValueError, which killed the thread.
    req = b'{"jsonrpc": "2.0", "id": 1, "method": "status", "params": {"n": ' + b"7" * 5000 + b"}}"
    (r,) = _exchange(ctl.sock, req)
    assert r["error"]["code"] == -32700
    _still_serving(ctl)


def test_truncated_request_then_eof_gets_an_error(ctl):
    (r,) = _exchange(ctl.sock, b'{"jsonrpc": "2.0", "id": 1, "meth', half_close=True)
    assert r["error"]["code"] == -32700 and "closed" in r["error"]["message"]
    _still_serving(ctl)


def test_oversized_request_refused(ctl):
    (r,) = _exchange(ctl.sock, b'{"x": "' + b"a" * (1 << 20) + b"a" * 70000, half_close=True)
    assert r["error"]["code"] == -32600 and "larger" in r["error"]["message"]
    _still_serving(ctl)


def test_batch_bounded(ctl):
    one = {"jsonrpc": "2.0", "id": 1, "method": "rpc_methods"}
    (r,) = _exchange(ctl.sock, json.dumps([one] * 1001).encode())
    assert r["error"]["code"] == -32600 and "batch" in r["error"]["message"]
    _still_serving(ctl)


def test_hundred_clients_at_once(ctl):
    # All connect before any is served: a backlog of 16 refused most of them.
    socks = []
    try:
        for _ in range(100):
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(10)   # non-blocking connect underneath: a full backlog is EAGAIN
            s.connect(ctl.sock)
            socks.append(s)
        for i, s in enumerate(socks):
            s.sendall(json.dumps({"jsonrpc": "2.0", "id": i, "method": "rpc_methods"}).encode())
        for i, s in enumerate(socks):
            buf = b""
            while not buf.endswith(b"\n"):
                d = s.recv(65536)
                assert d, f"client {i} got no answer"
                buf += d
            assert json.loads(buf)["id"] == i
    finally:
        for s in socks:
            s.close()
    _still_serving(ctl)


def test_client_that_never_reads_does_not_block_others(ctl):
    hog = socket.socket(socket.AF_UNIX)
    hog.connect(ctl.sock)
    hog.settimeout(0.2)
    req = (json.dumps({"jsonrpc": "2.0", "id": 1, "method": "rpc_methods"}) + "\n").encode() * 200
    stop = threading.Event()

    def push():  # pipelined requests, never a read: its answers pile up at the server
        while not stop.is_set():
            try:
                hog.sendall(req)
            except socket.timeout:
                continue
            except OSError:
                return

    t = threading.Thread(target=push, daemon=True)
    t.start()
    try:
        time.sleep(0.5)
        worst = 0.0
        with RpcClient(ctl.sock, timeout=10) as c:
            for _ in range(20):
                t0 = time.monotonic()
                c.call("status")
                worst = max(worst, time.monotonic() - t0)
                time.sleep(0.05)
        assert worst < 1.0, f"a normal client waited {worst:.2f} s behind a client that never reads"
    finally:
        stop.set()
        hog.close()
        t.join(5)
    _still_serving(ctl)


def test_idle_client_kept_half_sent_request_timed_out(tmp_path, monkeypatch):
    # In-process server with short timeouts: an idle client between requests
    # (the trailing newline of its last request still buffered) is kept; a
    # request left half-sent is answered with an error and closed.
    from srrs.ctrl import rpc

    monkeypatch.setattr(rpc, "READ_TIMEOUT", 1.0)
    t = rpc.MethodTable()
    t.add("echo", lambda ctx, p: p)
    srv = rpc.RpcServer(str(tmp_path / "s.sock"), t, None)
    srv.start()
    try:
        with RpcClient(srv.path) as c:
            assert c.call("echo", {"a": 1}) == {"a": 1}
            time.sleep(2.5)
            assert c.call("echo", {"a": 2}) == {"a": 2}
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(srv.path)
        s.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "ec')
        t0 = time.monotonic()
        buf = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            buf += d
        s.close()
        assert json.loads(buf)["error"]["code"] == -32700 and time.monotonic() - t0 < 5
    finally:
        srv.close()


def test_client_retries_a_connect_refused_during_restart(tmp_path):
    # A stale socket (the controller is restarting): the client keeps trying
    # briefly and reaches the server that comes up 0.3 s later.
    from srrs.ctrl import rpc

    path = str(tmp_path / "r.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    t = rpc.MethodTable()
    t.add("echo", lambda ctx, p: p)
    box = {}

    def later():
        time.sleep(0.3)
        box["srv"] = rpc.RpcServer(path, t, None)
        box["srv"].start()

    th = threading.Thread(target=later)
    th.start()
    try:
        with RpcClient(path, connect_retry=5.0) as c:
            assert c.call("echo", {"x": 1}) == {"x": 1}
    finally:
        th.join()
        if "srv" in box:
            box["srv"].close()


def test_client_that_never_reads_is_dropped_after_write_timeout(tmp_path, monkeypatch):
    # In-process server, write timeout cut to 1 s: a client that takes none of
    # its answers is dropped; one that reads on is kept.
    from srrs.ctrl import rpc

    monkeypatch.setattr(rpc, "WRITE_TIMEOUT", 1.0)
    t = rpc.MethodTable()
    t.add("big", lambda ctx, p: "x" * 100_000)
    srv = rpc.RpcServer(str(tmp_path / "w.sock"), t, None)
    srv.start()
    hog = socket.socket(socket.AF_UNIX)
    try:
        hog.connect(srv.path)
        hog.settimeout(0.2)
        req = (json.dumps({"jsonrpc": "2.0", "id": 1, "method": "big"}) + "\n").encode()
        try:
            for _ in range(100):   # ~10 MB of answers it never reads
                hog.sendall(req)
        except (socket.timeout, OSError):
            pass
        time.sleep(3.5)           # past the write timeout and the next 1 s tick
        hog.settimeout(2)
        dropped = False
        try:
            while hog.recv(1 << 20):
                pass
            dropped = True
        except socket.timeout:
            pass
        except OSError:
            dropped = True
        assert dropped, "the server never dropped a client that takes none of its answers"
        with RpcClient(srv.path) as c:
            assert len(c.call("big")) == 100_000
    finally:
        hog.close()
        srv.close()


def test_total_unfinished_input_is_bounded(tmp_path, monkeypatch):
    # In-process server with the total cut to 1 MiB: clients each parking a big
    # half-sent request are refused once the total passes it; others are served.
    from srrs.ctrl import rpc

    monkeypatch.setattr(rpc, "MAX_BUFFERED", 1 << 20)
    t = rpc.MethodTable()
    t.add("echo", lambda ctx, p: p)
    srv = rpc.RpcServer(str(tmp_path / "b.sock"), t, None)
    srv.start()
    socks = []
    try:
        answers = []
        for _ in range(3):
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(3)
            s.connect(srv.path)
            s.sendall(b'{"x": "' + b"a" * (600 << 10))
            socks.append(s)
            time.sleep(0.3)
        for s in socks:
            try:
                d = s.recv(65536)
            except socket.timeout:
                d = b""
            answers.append(json.loads(d) if d.strip() else None)
        busy = [a for a in answers if a and "busy" in a["error"]["message"]]
        assert answers[0] is None and len(busy) >= 1, answers
        with RpcClient(srv.path) as c:
            assert c.call("echo", {"ok": 1}) == {"ok": 1}
    finally:
        for s in socks:
            s.close()
        srv.close()
