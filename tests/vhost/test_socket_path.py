"""A vhost socket path never costs anyone a file (real controller processes):
only a stale socket is replaced; a regular file, the controller's own RPC
socket or a socket someone serves is refused untouched with a clear error; an
unknown owner is refused before anything is created."""

import os
import socket

import pytest

from srrs.ctrl import launch
from srrs.ctrl.rpc import RpcClient, RpcError
from tests.ctrl.helpers import Controller, srrs, write_config

BDEV = {"bdev": [launch.bdev("m0", "malloc", "16MiB")]}


def _with_vhost(name, socket, **kw) -> dict:
    return {**BDEV, "vhost": [launch.vhost(name, socket, "m0", **kw)]}


@pytest.fixture
def ctl(tmp_path):
    sock = str(tmp_path / "c.sock")
    c = Controller(write_config(tmp_path / "c.toml", sock, extra=BDEV), sock)
    yield c
    c.kill()


def _create(ctl, path, **kw):
    return ctl.rpc("vhost_create", {"name": "vh0", "socket": str(path), "bdev": "m0", **kw})


def _refused(ctl, path, words, **kw):
    with pytest.raises(RpcError) as e:
        _create(ctl, path, **kw)
    assert all(w in e.value.message for w in words), e.value.message
    assert ctl.rpc("vhost_list") == []
    return e.value


def test_own_rpc_socket_is_refused(ctl):
    _refused(ctl, ctl.sock, [ctl.sock, "live socket"])
    with RpcClient(ctl.sock) as c:   # still the RPC server, not a vhost device
        assert c.call("status")["name"] == "t"


def test_regular_file_is_refused_untouched(ctl, tmp_path):
    f = tmp_path / "disk.img"
    f.write_bytes(b"precious" * 512)
    _refused(ctl, f, [str(f), "regular file"])
    assert f.read_bytes() == b"precious" * 512
    d = tmp_path / "dir"
    d.mkdir()
    _refused(ctl, d, [str(d), "directory"])
    link = tmp_path / "link.sock"
    link.symlink_to(f)
    _refused(ctl, link, [str(link), "symbolic link"])
    assert link.is_symlink() and f.exists()


def test_live_socket_of_another_server_is_refused(ctl, tmp_path):
    path = str(tmp_path / "busy.sock")
    other = socket.socket(socket.AF_UNIX)
    other.bind(path)
    other.listen(1)
    try:
        _refused(ctl, path, [path, "live socket"])
        c = socket.socket(socket.AF_UNIX)
        c.connect(path)   # still the other server's
        c.close()
    finally:
        other.close()


def test_stale_socket_is_replaced(ctl, tmp_path):
    path = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()                 # the inode stays, nobody listens: a killed run's leftover
    assert _create(ctl, path)["state"] == "listening"
    c = socket.socket(socket.AF_UNIX)
    c.connect(path)
    c.close()
    ctl.rpc("vhost_delete", {"name": "vh0"})
    assert not os.path.exists(path)


def test_unknown_owner_is_refused_and_leaves_nothing(ctl, tmp_path):
    path = tmp_path / "vh.sock"
    _refused(ctl, path, ["owner", "no such user", "nosuchuser"], owner="nosuchuser")
    assert not os.path.lexists(path)
    _refused(ctl, path, ["owner", "no such group", "nosuchgroup"], owner="root:nosuchgroup")
    assert not os.path.lexists(path)
    # Nothing held on to the bdev either: the same device is created with a real owner.
    assert _create(ctl, path, owner="root:root")["state"] == "listening"


def test_config_vhost_on_regular_file_refuses_start(tmp_path):
    f = tmp_path / "data.bin"
    f.write_bytes(b"keep me")
    sock = str(tmp_path / "c.sock")
    conf = write_config(tmp_path / "c.toml", sock, extra=_with_vhost("vh0", f))
    r = srrs("start", "-c", conf)
    assert r.returncode != 0 and str(f) in r.stderr and "regular file" in r.stderr, r.stderr
    assert f.read_bytes() == b"keep me" and not os.path.exists(sock)


def test_rpc_socket_path_on_regular_file_or_live_socket_refuses_start(tmp_path, ctl):
    f = tmp_path / "notasock"
    f.write_text("x")
    r = srrs("start", "-c", write_config(tmp_path / "a.toml", str(f)))
    assert r.returncode != 0 and "regular file" in r.stderr and f.read_text() == "x"
    # Another controller's live socket: refused before that config builds anything.
    r = srrs("start", "-c", write_config(tmp_path / "b.toml", ctl.sock,
                                         extra=_with_vhost("vh9", tmp_path / "vh9.sock")))
    assert r.returncode != 0 and "live socket" in r.stderr, r.stderr
    assert not os.path.exists(tmp_path / "vh9.sock")
    assert ctl.rpc("status")["name"] == "t"


def test_config_vhost_unknown_owner_refuses_start_cleanly(tmp_path):
    vsock = tmp_path / "vh0.sock"
    sock = str(tmp_path / "c.sock")
    conf = write_config(tmp_path / "c.toml", sock, extra=_with_vhost("vh0", vsock,
                                                                  owner="nosuchuser:kvm"))
    r = srrs("start", "-c", conf)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "no such user 'nosuchuser'" in r.stderr, r.stderr
    assert not os.path.lexists(vsock) and not os.path.exists(sock)


def test_stop_removes_only_its_own_socket(tmp_path):
    # The path was reused while the controller ran: stopping the device and the
    # controller must not take the new file with them.
    sock = str(tmp_path / "c.sock")
    ctl = Controller(write_config(tmp_path / "c.toml", sock, extra=BDEV), sock)
    try:
        vpath = tmp_path / "vh.sock"
        _create(ctl, vpath)
        os.unlink(vpath)
        vpath.write_text("someone else's")
        ctl.rpc("vhost_delete", {"name": "vh0"})
        assert vpath.read_text() == "someone else's"
        os.unlink(sock)
        with open(sock, "w") as f:
            f.write("not the controller's")
        assert ctl.stop() == 0
        with open(sock) as f:
            assert f.read() == "not the controller's"
    finally:
        ctl.kill()
