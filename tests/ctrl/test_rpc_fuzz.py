"""Fuzz the RPC framing and dispatch: random and mutated requests never raise
out of the server, every framed request gets a JSON-RPC answer, and a real
server survives a stream of garbage connections and keeps serving."""

import json
import os
import random
import socket
import threading
import time

from srrs.ctrl.rpc import MethodTable, RpcClient, RpcServer, _Framer
from srrs.rpcdef import P

SEEDS = [
    {"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"x": 1}},
    {"jsonrpc": "2.0", "id": "a", "method": "add", "params": {"a": 1, "b": 2}},
    [{"jsonrpc": "2.0", "id": 2, "method": "echo"}, {"jsonrpc": "2.0", "method": "add"}],
]


def _table():
    t = MethodTable()
    t.add("echo", lambda ctx, p: p)
    t.add("add", lambda ctx, p: p["a"] + p["b"], [P("a", "int"), P("b", "int")])
    t.add("boom", lambda ctx, p: 1 / 0)
    return t


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(5)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(pos, len(b) - 1)] = rng.randrange(256)
        elif op == 1:
            b[pos:pos] = bytes(rng.choice(b'{}[]":,\\ 0123456789abcnul') for _ in range(rng.randint(1, 8)))
        elif op == 2 and b:
            del b[pos:pos + rng.randint(1, 8)]
        elif op == 3:
            b[pos:pos] = json.dumps(rng.choice([None, True, -1, 1e308, "x" * 50, [], {}])).encode()
        else:
            b = b[:pos] + b[pos:] * 2
    return bytes(b)


def test_dispatch_and_framer_fuzz(tmp_path):
    srv = RpcServer(str(tmp_path / "f.sock"), _table(), None)
    try:
        rng = random.Random(1234)
        for _ in range(30_000):
            data = _mutate(rng, json.dumps(rng.choice(SEEDS)).encode())
            f = _Framer()
            end = f.feed(data)
            if end is None:
                continue
            try:
                obj = json.loads(data[:end].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            resp = srv.dispatch(obj)
            if resp is not None:
                for r in resp if isinstance(resp, list) else [resp]:
                    assert r["jsonrpc"] == "2.0" and ("result" in r or "error" in r)
                    json.dumps(r)
        assert srv.dispatch({"jsonrpc": "2.0", "id": 1, "method": "boom"})["error"]["code"] == -32603
    finally:
        srv.close()


def _connect(path):
    """A connect that waits out a momentarily full backlog (EAGAIN), like RpcClient."""
    for _ in range(500):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            s.close()
            time.sleep(0.01)
    raise AssertionError("the RPC server's backlog stayed full for 5 s")


def test_server_survives_garbage_connections(tmp_path):
    path = str(tmp_path / "g.sock")
    srv = RpcServer(path, _table(), None)
    srv.start()
    try:
        rng = random.Random(99)

        def attack(seed):
            r = random.Random(seed)
            for _ in range(150):
                s = _connect(path)
                try:
                    s.sendall(r.choice([os.urandom(r.randint(1, 3000)),
                                        _mutate(r, json.dumps(r.choice(SEEDS)).encode())]))
                    if r.random() < 0.5:
                        s.shutdown(socket.SHUT_WR)
                        while s.recv(65536):
                            pass
                except OSError:
                    pass
                finally:
                    s.close()

        threads = [threading.Thread(target=attack, args=(rng.random(),)) for _ in range(4)]
        for t in threads:
            t.start()
        with RpcClient(path) as c:  # a good client alongside
            for i in range(200):
                assert c.call("add", {"a": i, "b": 1}) == i + 1
        for t in threads:
            t.join()
        with RpcClient(path) as c:
            assert c.call("echo", {"ok": True}) == {"ok": True}
    finally:
        srv.close()
