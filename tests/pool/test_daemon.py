"""A real controller (`srrs start -c`) with [[pool]], [[tenant]] and [[volume]]
sections: RPC and CLI for pools, volumes and tenants, verified load through
bench_bdev_start, save_config, restart with the data kept."""

import json
import time

from ctrl.helpers import Controller, srrs, write_config  # tests/ is on sys.path (rootdir)

from srrs.ctrl import launch
from srrs.ctrl.config import loads

MiB = 1 << 20


def _wait_jobs(c, n):
    for _ in range(200):
        jobs = c.rpc("bench_bdev_results")
        if len(jobs) >= n and all(j["state"] != "running" for j in jobs):
            return jobs
        time.sleep(0.05)
    raise AssertionError(f"jobs did not finish: {jobs}")


def test_controller_pool_config_rpc_restart(tmp_path):
    sock = str(tmp_path / "s.sock")
    frag = tmp_path / "frag0.img"
    extra = {"pool": [launch.pool("p0", [launch.fragment(frag, "512MiB"),
                                         launch.fragment(ram="64MiB", weight=50)],
                                  cluster_size="1MiB")],
             "tenant": [{"name": "t1", "quota": "1GiB"}],
             "volume": [launch.volume("v0", "p0", "128MiB", tenant="t1")]}
    cfg = write_config(tmp_path / "c.toml", sock, reactors=2, extra=extra)
    c = Controller(cfg, sock)
    try:
        pools = c.rpc("pool_list")
        assert pools[0]["name"] == "p0" and len(pools[0]["fragments"]) == 2
        v1 = c.rpc("volume_create", {"name": "v1", "pool": "p0", "size": "64MiB", "thin": True})
        assert v1["allocated_clusters"] == 0
        assert c.rpc("volume_resize", {"name": "v1", "size": "96MiB"})["size"] == 96 * MiB
        out = srrs("-s", sock, "volume", "list", "--json")
        assert out.returncode == 0, out.stderr
        assert {v["name"] for v in json.loads(out.stdout)} == {"v0", "v1"}
        assert srrs("-s", sock, "tenant", "list", "--json").returncode == 0
        bad = srrs("-s", sock, "volume", "create", "--name", "v2", "--pool", "nope", "--size", "1MiB")
        assert bad.returncode != 0 and "pool nope does not exist" in bad.stderr
        c.rpc("bench_bdev_start", {"bdev": "v0", "rw": "randrw", "time_s": 1, "verify": True,
                                   "qd": 16})
        jobs = _wait_jobs(c, 1)
        res = jobs[0]["result"]
        assert res["errors"] == 0 and res["verify_errors"] == 0 and res["writes"] > 0, jobs
        alloc = c.rpc("volume_list", {"name": "v0"})[0]["allocated_clusters"]
        assert alloc > 0
        saved = str(tmp_path / "saved.toml")
        c.rpc("save_config", {"path": saved})
        conf = loads(open(saved).read(), saved)
        assert {v.name for v in conf.sections["volume"]} == {"v0", "v1"}
        assert c.stop() == 0
    finally:
        c.kill()
    c = Controller(saved, sock)
    try:
        vols = {v["name"]: v for v in c.rpc("volume_list")}
        assert vols["v0"]["allocated_clusters"] == alloc  # RAM clusters, if any, are reported lost
        assert vols["v1"]["size"] == 96 * MiB
        assert c.stop() == 0
    finally:
        c.kill()
