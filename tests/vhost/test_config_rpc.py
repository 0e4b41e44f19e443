"""[[vhost]] config parsing, the vhost RPC methods, and a controller process
serving vhost devices from its config (RPC add/remove at run time,
save_config, SIGTERM with a connected front end)."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from srrs.ctrl import launch
from srrs.ffi.binding import BenchOpts
from srrs.vhost import config, rpc
from srrs.vhost.client import VhostClient

from .conftest import wait_for


def test_parse_defaults_and_round_trip():
    c = config.parse({"name": "vh0", "socket": "/tmp/a.sock", "bdev": "v0"})
    assert (c.num_queues, c.serial, c.read_only, c.owner, c.mode) == (1, "", False, None, 0o600)
    full = {"name": "vh1", "socket": "/tmp/b.sock", "bdev": "v1", "num_queues": 4,
            "serial": "S" * 20, "read_only": True, "owner": "root:root", "mode": "0660"}
    c = config.parse(full)
    assert c.mode == 0o660 and c.num_queues == 4
    assert config.parse(config.to_dict(c)) == c


@pytest.mark.parametrize("entry,key", [
    ({"socket": "/s", "bdev": "b"}, "name"),
    ({"name": "x", "bdev": "b"}, "socket"),
    ({"name": "x", "socket": "/s"}, "bdev"),
    ({"name": "x", "socket": "/s", "bdev": "b", "num_queues": 0}, "num_queues"),
    ({"name": "x", "socket": "/s", "bdev": "b", "num_queues": 65}, "num_queues"),
    ({"name": "x", "socket": "/s", "bdev": "b", "num_queues": True}, "num_queues"),
    ({"name": "x", "socket": "/s", "bdev": "b", "serial": "s" * 21}, "serial"),
    ({"name": "x", "socket": "/s", "bdev": "b", "read_only": "yes"}, "read_only"),
    ({"name": "x", "socket": "/s", "bdev": "b", "mode": "rw"}, "mode"),
    ({"name": "x", "socket": "/s", "bdev": "b", "mode": 0o1777}, "mode"),
    ({"name": "x", "socket": "/s", "bdev": "b", "owner": "a b"}, "owner"),
    ({"name": "x", "socket": "/s" * 60, "bdev": "b"}, "socket"),
    ({"name": "x", "socket": "/s", "bdev": "b", "queues": 2}, "queues"),
    ({"name": "a/b", "socket": "/s", "bdev": "b"}, "name"),
])
def test_parse_errors_name_the_key(entry, key):
    with pytest.raises(ValueError) as e:
        config.parse(entry)
    assert str(e.value).startswith(f"{key}: "), str(e.value)


def test_rpc_methods(core, tmp_path, bench_core):
    core.bdev_create_malloc("r0", 16 << 20, 4096)
    ctl = SimpleNamespace(core=core, vhost=None)
    sock = str(tmp_path / "r.sock")
    try:
        info = rpc.METHODS["vhost_create"](ctl, {"name": "r", "socket": sock, "bdev": "r0",
                                                 "num_queues": 2, "mode": "0640"})
        assert info["state"] == "listening" and info["num_queues"] == 2
        assert os.stat(sock).st_mode & 0o777 == 0o640
        with pytest.raises(ValueError):
            rpc.METHODS["vhost_create"](ctl, {"name": "r", "socket": sock + "2", "bdev": "r0"})
        with pytest.raises(ValueError):
            rpc.METHODS["vhost_create"](ctl, {"name": "r2", "socket": sock, "bdev": "r0"})
        with pytest.raises(OSError):
            rpc.METHODS["vhost_create"](ctl, {"name": "r3", "socket": sock + "3", "bdev": "nope"})
        with VhostClient(sock, num_queues=2) as cl:
            cl.bench(bench_core, BenchOpts(rw="randwrite", qd=8, time_s=0.3))
            [d] = rpc.METHODS["vhost_list"](ctl, {"name": "r"})
            assert d["state"] == "connected" and d["connections"] == 1
            assert sum(q["writes"] for q in d["queues"]) > 0
            assert {q["state"] for q in d["queues"]} == {"running"}
        with pytest.raises(KeyError):
            rpc.METHODS["vhost_list"](ctl, {"name": "zz"})
        assert rpc.METHODS["vhost_delete"](ctl, {"name": "r"}) is True
        assert not os.path.exists(sock)
        with pytest.raises(KeyError):
            rpc.METHODS["vhost_delete"](ctl, {"name": "r"})
        assert rpc.METHODS["vhost_list"](ctl, {}) == []
        core.bdev_delete("r0")   # the device released its bdev
    finally:
        if ctl.vhost is not None:
            ctl.vhost.close()


def _srrs(*args, sock):
    return subprocess.run([sys.executable, "-c", "import sys; from srrs.ctrl.cli import main; "
                           "sys.exit(main())", "-s", sock, *args], capture_output=True, text=True,
                          timeout=60)


def test_controller_process(tmp_path):
    rpc_sock = str(tmp_path / "rpc.sock")
    conf = launch.config(
        launch.controller("t", rpc_sock, reactors=2, poll_mode=None),
        bdevs=[launch.bdev("m0", "malloc", "32MiB"), launch.bdev("m1", "malloc", "32MiB")],
        vhosts=[launch.vhost("vh0", tmp_path / "vh0.sock", "m0", num_queues=2,
                             serial="CFG-SERIAL")])
    p = launch.Controller(tmp_path / "c.toml", conf, ready_timeout=20)
    try:
        assert wait_for(lambda: os.path.exists(tmp_path / "vh0.sock"), 20)
        r = _srrs("vhost", "create", "--name", "vh1", "--socket", f"{tmp_path}/vh1.sock",
                  "--bdev", "m1", "--json", sock=rpc_sock)
        assert r.returncode == 0, r.stderr
        with VhostClient(str(tmp_path / "vh0.sock"), num_queues=2) as a, \
                VhostClient(str(tmp_path / "vh1.sock")) as b:
            assert a.get_id() == b"CFG-SERIAL"
            a.write(0, b"A" * 4096)
            b.write(0, b"B" * 4096)
            assert a.read(0, 4096) == b"A" * 4096 and b.read(0, 4096) == b"B" * 4096
            lst = json.loads(_srrs("vhost", "list", "--json", sock=rpc_sock).stdout)
            assert sorted(d["name"] for d in lst) == ["vh0", "vh1"]
            assert all(d["state"] == "connected" for d in lst)
            saved = tmp_path / "saved.toml"
            r = _srrs("rpc", "save_config", json.dumps({"path": str(saved)}), sock=rpc_sock)
            assert r.returncode == 0, r.stderr
            text = saved.read_text()
            assert 'name = "vh1"' in text and 'serial = "CFG-SERIAL"' in text
            # SIGTERM with front ends connected: queues drain, exit 0
            assert p.stop(30) == 0, p.output()
    finally:
        p.kill9()


def test_vhost_on_a_thin_volume(tmp_path):
    """A pool volume (thin, clusters allocated on first write) exported over
    vhost-user: verified random writes/reads through the controller process."""
    rpc_sock = str(tmp_path / "rpc.sock")
    conf = launch.config(
        launch.controller("lv", rpc_sock, reactors=2, poll_mode=None),
        pools=[launch.pool("p0", [launch.fragment(tmp_path / "frag0.img", "256MiB"),
                                  launch.fragment(ram="128MiB")], cluster_size="1MiB")],
        volumes=[launch.volume("v0", "p0", "128MiB", thin=True)],
        vhosts=[launch.vhost("vh0", tmp_path / "vh0.sock", "v0", num_queues=2)])
    p = launch.Controller(tmp_path / "c.toml", conf, ready_timeout=30)
    try:
        assert wait_for(lambda: os.path.exists(tmp_path / "vh0.sock") or not p.alive(), 30)
        assert p.alive(), p.output()
        from srrs.ffi.binding import Core
        with Core(reactors=1, poll_mode="busy") as bc, \
                VhostClient(str(tmp_path / "vh0.sock"), num_queues=2) as cl:
            r = cl.bench(bc, BenchOpts(rw="randrw", qd=32, time_s=2), verify=True)
            assert r["errors"] == 0 and r["verify_errors"] == 0 and r["verified_blocks"] > 0, r
        assert p.stop(30) == 0
    finally:
        p.kill9()
