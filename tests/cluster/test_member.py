"""A controller with [cluster] registers itself in a real etcd under a lease:
its key carries its figures, disappears within the lease after kill -9, comes
back when the controller restarts, and survives an etcd restart (the
controller registers again). The controller keeps serving while etcd is down."""

import json
import time

import pytest

from srrs.ctrl import config as cfg
from srrs.ctrl import launch

from .etcd import Cluster
from .etcd import wait_until as _wait


def _member(c: Cluster, name: str):
    out = c.members[0].etcdctl("get", f"/srrs/t1/members/{name}", "--print-value-only")
    return json.loads(out) if out.strip() else None


def _conf(tmp_path, c: Cluster, **kw):
    conf = launch.config(launch.controller("m1", tmp_path / "c.sock"),
                         bdevs=[launch.bdev("m0", "malloc", size="16MiB")])
    conf["cluster"] = dict({"etcd": c.endpoints, "name": "m1", "prefix": "/srrs/t1",
                            "lease_s": 2}, **kw)
    return conf


def test_cluster_section_errors(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[cluster]\netcd = ["tcp://x:1"]\nname = "a"\n')
    with pytest.raises(cfg.ConfigError, match=r"c.toml:2: cluster.etcd\[0\]: .*http://"):
        cfg.load(str(p))
    p.write_text('[cluster]\nname = "a"\n')
    with pytest.raises(cfg.ConfigError, match=r"cluster.etcd: is required"):
        cfg.load(str(p))
    p.write_text('[cluster]\netcd = ["http://127.0.0.1:2379"]\nprefix = "srrs"\n')
    with pytest.raises(cfg.ConfigError, match=r"cluster.prefix: .*start with '/'"):
        cfg.load(str(p))


def test_member_registers_and_vanishes_after_kill9(tmp_path, etcd1):
    ctl = launch.Controller(tmp_path / "c.toml", conf=_conf(tmp_path, etcd1))
    try:
        m = _wait(lambda: _member(etcd1, "m1"))
        assert m and m["name"] == "m1" and m["health"] == "ok" and m["version"]
        st = ctl.rpc("status")["cluster"]
        assert st["registered"] and st["name"] == "m1"
        ctl.kill9()
        t0 = time.monotonic()
        assert _wait(lambda: _member(etcd1, "m1") is None, 6), "member key outlived its lease"
        assert time.monotonic() - t0 < 4.5
        ctl.restart()
        assert _wait(lambda: _member(etcd1, "m1"))
    finally:
        ctl.stop()
    assert _member(etcd1, "m1") is None  # a clean stop revokes at once


def test_member_survives_an_etcd_outage(tmp_path, etcd1):
    ctl = launch.Controller(tmp_path / "c.toml", conf=_conf(tmp_path, etcd1))
    try:
        assert _wait(lambda: _member(etcd1, "m1"))
        m = etcd1.members[0]
        m.kill()
        time.sleep(3)  # past the lease: etcd itself will expire the key on return
        assert ctl.rpc("status")["bdevs"]  # still serving without etcd
        st = _wait(lambda: (lambda c: c if not c["registered"] else None)(
            ctl.rpc("status")["cluster"]), 8)
        assert st and not st["registered"], st
        etcd1.restart(m)
        etcd1.wait_healthy()
        assert _wait(lambda: _member(etcd1, "m1"), 15), "the controller did not register again"
    finally:
        ctl.stop()
