"""JSON-RPC against a real controller process: errors are JSON-RPC error
objects and the server keeps serving; CLI; save_config round trip."""

import json
import os
import socket
import stat

import pytest

from srrs.ctrl import launch

from .helpers import Controller, srrs, write_config


@pytest.fixture
def ctl(tmp_path):
    sock = str(tmp_path / "c.sock")
    conf = write_config(tmp_path / "c.toml", sock, reactors=2, extra={"bdev": [
        launch.bdev("m0", "malloc", "16MiB"),
        launch.bdev("f0", "file", "32MiB", path=f"{tmp_path}/f0.img", block_size=512)]})
    c = Controller(conf, sock)
    yield c
    c.kill()


def _raw(sock_path, payload: bytes) -> list:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(sock_path)
    try:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before we finished sending
    data = b""
    while True:
        try:
            d = s.recv(65536)
        except ConnectionResetError:
            break
        if not d:
            break
        data += d
    s.close()
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def test_socket_is_0600(ctl):
    assert stat.S_IMODE(os.stat(ctl.sock).st_mode) == 0o600


def test_errors_are_jsonrpc_objects_and_server_keeps_serving(ctl):
    # unknown method
    r = _raw(ctl.sock, b'{"jsonrpc":"2.0","id":1,"method":"nope"}\n')
    assert r[0]["error"]["code"] == -32601 and r[0]["id"] == 1
    # bad params (type, missing, unknown key)
    r = _raw(ctl.sock, b'{"jsonrpc":"2.0","id":2,"method":"bdev_delete","params":{"name":5}}')
    assert r[0]["error"]["code"] == -32602 and "'name' must be str" in r[0]["error"]["message"]
    r = _raw(ctl.sock, b'{"jsonrpc":"2.0","id":3,"method":"bdev_create","params":{"type":"null"}}')
    assert r[0]["error"]["code"] == -32602 and "param 'name' is required" in r[0]["error"]["message"]
    r = _raw(ctl.sock, b'{"jsonrpc":"2.0","id":4,"method":"bdev_create",'
                       b'"params":{"name":"x","type":"null","size":"1MiB","bogus":1}}')
    assert r[0]["error"]["code"] == -32602 and "param 'bogus' is unknown" in r[0]["error"]["message"]
    # params not an object, not a request, wrong version
    r = _raw(ctl.sock, b'{"jsonrpc":"2.0","id":5,"method":"status","params":[1]}')
    assert r[0]["error"]["code"] == -32602
    r = _raw(ctl.sock, b'{"jsonrpc":"1.0","id":6,"method":"status"} ["x"]')
    assert r[0]["error"]["code"] == -32600 and r[1][0]["error"]["code"] == -32600
    # malformed JSON inside a frame: parse error, and the same connection goes on
    r = _raw(ctl.sock, b'{"jsonrpc": "2.0", "id": 7, "method": oops}{"jsonrpc":"2.0","id":70,'
                       b'"method":"status"}')
    assert r[0]["error"]["code"] == -32700 and r[1]["id"] == 70 and "result" in r[1]
    # bytes that cannot start a request: parse error, that connection closes
    r = _raw(ctl.sock, b"\xff\xfe garbage")
    assert r[0]["error"]["code"] == -32700 and len(r) == 1
    # a long string split across many reads is not mistaken for garbage
    big = b'{"jsonrpc":"2.0","id":71,"method":"status","params":{"x":"' + b"b" * 300000 + b'"}}'
    r = _raw(ctl.sock, big)  # framed and parsed whole: the declaration refuses the param
    assert r[0]["id"] == 71 and "param 'x' is unknown to status" in r[0]["error"]["message"]
    # an error from the core carries its message and errno; ENOENT is the not-found code
    r = _raw(ctl.sock, b'{"jsonrpc":"2.0","id":8,"method":"bdev_delete","params":{"name":"zz"}}')
    assert r[0]["error"]["code"] == -32001 and "bdev zz does not exist" in r[0]["error"]["message"]
    assert r[0]["error"]["data"]["errno"] == 2
    # batch, with a notification that gets no answer
    r = _raw(ctl.sock, b'[{"jsonrpc":"2.0","id":9,"method":"bdev_list"},'
                       b'{"jsonrpc":"2.0","method":"status"},{"jsonrpc":"2.0","id":10,"method":"x"}]')
    assert len(r) == 1 and [x["id"] for x in r[0]] == [9, 10]
    # requests split across writes and several per write
    r = _raw(ctl.sock, b'{"jsonrpc":"2.0","id":11,"method":"status"}{"jsonrpc":"2.0","id":12,"meth'
                       b'od":"bdev_list"}')
    assert [x["id"] for x in r] == [11, 12]
    # oversized request
    r = _raw(ctl.sock, b'{"jsonrpc":"2.0","id":13,"method":"status","params":{"x":"' + b"a" * (2 << 20))
    assert r[0]["error"]["code"] == -32600
    # and it still serves
    assert ctl.rpc("status")["name"] == "t"
    assert ctl.proc.poll() is None


def test_bdev_cli(ctl):
    s = ["-s", ctl.sock]
    r = srrs(*s, "bdev", "create", "--name", "n0", "--type", "null", "--size", "1GiB", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["size"] == 1 << 30
    r = srrs(*s, "bdev", "list", "--json")
    assert sorted(b["name"] for b in json.loads(r.stdout)) == ["f0", "m0", "n0"]
    r = srrs(*s, "bdev", "delete", "n0")
    assert r.returncode == 0
    r = srrs(*s, "bdev", "delete", "n0")
    assert r.returncode == 1 and "bdev n0 does not exist (code -32001)" in r.stderr
    r = srrs(*s, "bdev", "create", "--name", "b", "--type", "malloc", "--size", "12XB")
    assert r.returncode == 2 and "bad size" in r.stderr
    r = srrs(*s, "status")
    assert r.returncode == 0 and "reactor 1" in r.stdout and "f0" in r.stdout
    st = json.loads(srrs(*s, "status", "--json").stdout)
    assert len(st["reactors"]) == 2 and st["reactors"][0]["state"] == "running"
    r = srrs(*s, "rpc", "bdev_list", '{"name": "m0"}')
    assert json.loads(r.stdout)[0]["name"] == "m0"
    r = srrs("-s", "/nonexistent/x.sock", "status")
    assert r.returncode == 3 and "cannot connect to the controller" in r.stderr


def test_save_config_round_trip(ctl, tmp_path):
    ctl.rpc("bdev_create", {"name": "n1", "type": "null", "size": "2GiB", "block_size": 512})
    ctl.rpc("bdev_delete", {"name": "m0"})
    ctl.rpc("reactor_set_poll_mode", {"poll_mode": "busy"})
    ctl.rpc("reactor_set_poll_mode", {"poll_mode": "adaptive"})
    before = {b["name"]: (b["module"], b["size"], b["block_size"], b["path"])
              for b in ctl.rpc("bdev_list")}
    saved = str(tmp_path / "saved.toml")
    assert ctl.rpc("save_config", {"path": saved}) == {"path": saved}
    assert ctl.stop() == 0
    c2 = Controller(saved, ctl.sock)
    try:
        after = {b["name"]: (b["module"], b["size"], b["block_size"], b["path"])
                 for b in c2.rpc("bdev_list")}
        assert after == before
        assert len(c2.rpc("reactor_stats")) == 2
    finally:
        assert c2.stop() == 0


def test_second_controller_on_same_socket_refused(ctl, tmp_path):
    conf = write_config(tmp_path / "d.toml", ctl.sock)
    r = srrs("start", "-c", conf)
    assert r.returncode == 1 and "another controller is serving" in r.stderr
