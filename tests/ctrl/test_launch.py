"""srrs.ctrl.launch: configs the loader accepts, a controller's life (ready,
stop, kill -9, restart), and a pair that comes up PAIRED."""

from __future__ import annotations

import os
import signal

import pytest
import toml

from srrs.ctrl import launch as L
from srrs.ctrl.config import load


def _full(tmp_path) -> dict:
    """One of every section the helper builds (no pair: that needs its peer)."""
    port, mport = L.free_ports(2)
    return L.config(
        L.controller("t", tmp_path / "t.sock", reactors=1),
        bdevs=[L.bdev("m0", size="16MiB")],
        pools=[L.pool("p0", [L.fragment(tmp_path / 'f0.img', 64 << 20)], cluster_size="1MiB")],
        volumes=[L.volume("v0", "p0", "8MiB")],
        nvmf=L.nvmf([f"127.0.0.1:{port}"], [L.subsystem("nqn.2026-12.io.srrs:l", ["v0"],
                                                        serial="SRRSL")], cntlid_min=1),
        vhosts=[L.vhost("vh0", tmp_path / "vh0.sock", "m0")],
        metrics=L.metrics(f"127.0.0.1:{mport}"),
        extra='[[bdev]]\nname = "m1"\ntype = "malloc"\nsize = "4MiB"\n')


def test_config_is_toml_the_loader_accepts(tmp_path):
    conf = _full(tmp_path)
    # a path with a quote and a backslash: the library's escaping, not a template's
    conf["bdev"].append(L.bdev("f0", "file", "4MiB", path=str(tmp_path / 'we"ird\\name.img')))
    path = L.write_config(tmp_path / "t.toml", conf)
    with open(path) as f:
        assert toml.load(f) == conf
    c = load(path)
    assert c.controller.name == "t" and c.controller.rpc_socket == str(tmp_path / "t.sock")
    assert [b.name for b in c.bdevs] == ["m0", "m1", "f0"]
    assert c.bdevs[2].path.endswith('we"ird\\name.img')
    assert c.nvmf is not None and c.nvmf.cntlid_max == 1000
    assert [v.name for v in c.vhost] == ["vh0"]
    assert open(path).read().startswith("[controller]")


def test_pair_section_is_accepted(tmp_path):
    ports = L.pair_ports()
    keys = L.make_keys(tmp_path / "keys")
    for n, peer in (("a", "b"), ("b", "a")):
        conf = L.config(L.controller(n, tmp_path / f"{n}.sock"), bdevs=[L.bdev("v0")],
                        pair=L.pair(n, peer, ports, tmp_path / f"state-{n}", keys=keys))
        assert load(L.write_config(tmp_path / f"{n}.toml", conf)).controller.name == n
    insecure = L.pair("a", "b", ports, tmp_path / "s")
    assert insecure["insecure"] is True and "secret_key" not in insecure
    assert sorted(os.listdir(keys["allowed"])) == ["a.key", "b.key"]


def test_spawn_ready_stop_kill_restart(tmp_path):
    conf = L.config(L.controller("t", tmp_path / "t.sock"), bdevs=[L.bdev("m0", size="8MiB")])
    c = L.Controller(tmp_path / "t.toml", conf, ready_timeout=30)
    try:
        assert c.rpc("status")["name"] == "t"
        assert c.log_path == str(tmp_path / "t.log")
        assert c.kill9() == -signal.SIGKILL
        assert os.path.exists(c.sock)  # what a crash leaves behind
        c.restart()
        assert c.alive() and [b["name"] for b in c.rpc("bdev_list")] == ["m0"]
        with pytest.raises(RuntimeError, match="still running"):
            c.restart()
        assert c.stop(10) == 0
    finally:
        c.kill9()


def test_exit_before_ready_reports_the_log(tmp_path):
    conf = L.config(L.controller("t", tmp_path / "t.sock", reactors=0))
    with pytest.raises(RuntimeError, match=r"exited [12]:\n.*t.toml:[0-9]+: controller.reactors"):
        L.Controller(tmp_path / "t.toml", conf, ready_timeout=30)


def test_pair_comes_up_paired(tmp_path):
    p = L.Pair(tmp_path, lambda n: {"bdev": [L.bdev("v0", size="16MiB")]}, lease_ms=2000,
               peer_rpc_socket=True)
    try:
        p.start(paired_timeout=30)
        assert p.states() == {"a": "PAIRED", "b": "PAIRED"}
        assert p.nodes["a"].rpc("pair_status")["peer"] == "b"
        with open(p.nodes["b"].config) as f:
            b = toml.load(f)["pair"]
        assert b["peer_rpc_socket"] == str(tmp_path / "a.sock")
        assert b["secret_key"] == p.keys["b"] + "_secret"
    finally:
        p.stop()
    assert not p.witness.alive() and not any(c.alive() for c in p.nodes.values())


def test_merge_appends_arrays_of_tables_and_updates_tables():
    base = L.config(L.controller("t", "/run/t.sock"), bdevs=[L.bdev("m0")],
                    nvmf=L.nvmf(["127.0.0.1:1"], [L.subsystem("nqn.a", ["m0"])]))
    out = L.merge(base, {"bdev": [L.bdev("m1")], "controller": {"reactors": 2},
                         "nvmf": {"listen": ["127.0.0.1:2"], "subsystem": [L.subsystem("nqn.b")]}})
    assert [b["name"] for b in out["bdev"]] == ["m0", "m1"]
    assert out["controller"] == {**L.controller("t", "/run/t.sock"), "reactors": 2}
    assert out["nvmf"]["listen"] == ["127.0.0.1:2"]                  # replaced, not appended
    assert [s["nqn"] for s in out["nvmf"]["subsystem"]] == ["nqn.a", "nqn.b"]
    assert "namespaces" not in out["nvmf"]["subsystem"][1]
    assert L.merge(dict(base), '[metrics]\nlisten = "127.0.0.1:0"\n')["metrics"] == \
        L.metrics("127.0.0.1:0")
