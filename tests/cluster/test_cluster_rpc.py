"""`srrs cluster` without etcd: status still answers with this controller's
view and says why the catalog does not; catalog commands fail with an error;
a controller without [cluster] answers "not configured"."""

import pytest

from srrs.ctrl import launch
from srrs.rpcdef import NotConfigured, RpcError

from .etcd import free_port


def test_status_without_etcd_and_without_cluster(tmp_path):
    conf = launch.config(launch.controller("m1", tmp_path / "c.sock"),
                         bdevs=[launch.bdev("m0", "malloc", size="16MiB")])
    conf["cluster"] = {"etcd": [f"http://127.0.0.1:{free_port()}"], "name": "m1",
                       "timeout_s": 0.2}
    ctl = launch.Controller(tmp_path / "c.toml", conf=conf)
    try:
        st = ctl.rpc("cluster_status")
        assert st["name"] == "m1" and not st["registered"] and st["catalog_error"]
        assert st["sync"] is None           # no [pair]: nothing to converge
        with pytest.raises(RpcError, match="etcd"):
            ctl.rpc("cluster_volumes")
    finally:
        ctl.stop()
    del conf["cluster"]
    ctl = launch.Controller(tmp_path / "d.toml", conf=conf)
    try:
        with pytest.raises(NotConfigured):
            ctl.rpc("cluster_volume_create", {"name": "v", "size": 1 << 20, "tenant": "t"})
    finally:
        ctl.stop()
