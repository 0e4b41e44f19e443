"""A fragment the pool recorded but that is gone at start: the pool opens
degraded (state, alert, event), also when the configuration names that
fragment (a saved config lists every fragment), and the health check leaves
it alone. Real controller processes."""

import errno
import os
import time

from ctrl.helpers import Controller, write_config  # tests/ is on sys.path (rootdir)

from srrs.ctrl import launch

MiB = 1 << 20


def _bench(c, vol, rw, **kw) -> dict:
    n = len(c.rpc("bench_bdev_results"))
    c.rpc("bench_bdev_start", {"bdev": vol, "rw": rw, "bs": MiB, "qd": 1, "time_s": 10, **kw})
    for _ in range(400):
        jobs = c.rpc("bench_bdev_results")
        if len(jobs) > n and jobs[n]["state"] != "running":
            return jobs[n]["result"]
        time.sleep(0.05)
    raise AssertionError(f"bench on {vol} did not finish")


def test_missing_fragment_named_by_the_config_degrades(tmp_path):
    sock = str(tmp_path / "s.sock")
    f0, f1 = tmp_path / "f0.img", tmp_path / "f1.img"
    cfg = write_config(tmp_path / "c.toml", sock, extra={"pool": [launch.pool("p0", [launch.fragment(f0, "64MiB")])]})
    saved = tmp_path / "saved.toml"
    c = Controller(cfg, sock)
    try:
        c.rpc("volume_create", {"name": "v", "pool": "p0", "size": "96MiB", "thin": True})
        c.rpc("pool_add_fragment", {"pool": "p0", "path": str(f1), "size": "64MiB"})
        res = _bench(c, "v", "write", max_ios=96)  # every cluster, spread over both
        assert res["errors"] == 0, res
        c.rpc("save_config", {"path": str(saved)})
        assert str(f1) in saved.read_text()
        assert c.stop() == 0
    finally:
        c.kill()

    os.rename(f1, tmp_path / "away.img")
    # The saved config names f1 (with a size): it is the missing fragment of
    # the table, not a new fragment to create and add.
    c = Controller(str(saved), sock)
    try:
        time.sleep(0.5)  # a few health checks: a missing fragment has no file to check
        pool = c.rpc("pool_list")[0]
        assert pool["state"] == "degraded" and pool["degraded"], pool
        assert [f["state"] for f in pool["fragments"]] == ["active", "missing"], pool
        assert not pool["fragments"][1]["failed"] and pool["failed_fragments"] == 0, pool
        assert any(a.startswith(f"fragment 1 ({f1}): missing: ") for a in pool["alerts"]), pool
        assert not f1.exists(), "a missing fragment was created anew"
        res = _bench(c, "v", "read", max_ios=96)
        assert res["errors"] > 0 and res["first_error"] == -errno.EIO, res
        for _ in range(100):  # the controller collects events periodically
            evs = [e for e in c.rpc("events") if e.get("type") == "frag_failed"]
            if evs:
                break
            time.sleep(0.1)
        assert any("missing" in e["msg"] for e in evs), c.rpc("events")
        assert c.stop() == 0
    finally:
        c.kill()

    # A config written by hand may name it without a size: degraded too.
    nosize = write_config(tmp_path / "n.toml", sock, extra={"pool": [launch.pool("p0", [launch.fragment(f0), launch.fragment(f1)])]})
    c = Controller(nosize, sock)
    try:
        pool = c.rpc("pool_list")[0]
        assert [f["state"] for f in pool["fragments"]] == ["active", "missing"], pool
        assert pool["state"] == "degraded" and not f1.exists(), pool
        assert c.stop() == 0
    finally:
        c.kill()

    os.rename(tmp_path / "away.img", f1)
    c = Controller(str(saved), sock)
    try:
        pool = c.rpc("pool_list")[0]
        assert pool["state"] == "ok" and not pool["alerts"] and not pool["degraded"], pool
        res = _bench(c, "v", "read", max_ios=96)
        assert res["errors"] == 0, res
        assert c.stop() == 0
    finally:
        c.kill()
