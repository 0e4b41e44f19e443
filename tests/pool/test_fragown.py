"""Ownership of fragments and file bdevs, fragments added online surviving a
restart, nothing left allocated by a failed operation, and the size traps of
file bdevs and volumes, all against real controller processes."""

import errno
import os
import shutil
import time

import pytest
from ctrl.helpers import Controller, srrs, write_config  # tests/ is on sys.path (rootdir)

from srrs.ctrl import launch
from srrs.ctrl.rpc import RpcError

MiB = 1 << 20


def _err(c, method, params) -> str:
    with pytest.raises(RpcError) as ei:
        c.rpc(method, params)
    return str(ei.value)


def test_a_fragment_has_one_owner(tmp_path):
    """Two pools, a file bdev, a hard link, a symlink, a copy and a second
    controller process on one fragment: each second owner is refused, naming
    the first; after pool_close the path is usable again."""
    sock = str(tmp_path / "s.sock")
    frag = tmp_path / "f.img"
    c = Controller(write_config(tmp_path / "c.toml", sock), sock)
    other = None
    try:
        c.rpc("pool_create", {"name": "px", "fragments": [{"path": str(frag), "size": "64MiB"}]})
        msg = _err(c, "pool_create", {"name": "py", "fragments": [{"path": str(frag)}]})
        assert "in use by bdev px.f0 (fragment 0 of pool px)" in msg, msg
        msg = _err(c, "bdev_create", {"name": "fb", "type": "file", "path": str(frag)})
        assert "in use by bdev px.f0 (fragment 0 of pool px)" in msg, msg
        os.link(frag, tmp_path / "hard.img")
        os.symlink(frag, tmp_path / "sym.img")
        for alias in ("hard.img", "sym.img"):
            msg = _err(c, "pool_create", {"name": "pz", "fragments": [{"path": str(tmp_path / alias)}]})
            assert "px" in msg, msg
        # A copy is another inode, but the same pool: the superblock's uuid tells.
        shutil.copyfile(frag, tmp_path / "copy.img")
        msg = _err(c, "pool_create", {"name": "pc", "fragments": [{"path": str(tmp_path / "copy.img")}]})
        assert "belongs to pool px" in msg, msg
        assert [p["name"] for p in c.rpc("pool_list")] == ["px"]
        assert [b["name"] for b in c.rpc("bdev_list")] == ["px.f0"]

        # A second controller process configured with the same fragment does not start.
        sock2 = str(tmp_path / "s2.sock")
        cfg2 = write_config(tmp_path / "c2.toml", sock2, extra={"pool": [launch.pool("py", [launch.fragment(frag)])]})
        with pytest.raises(RuntimeError) as ei:
            other = Controller(cfg2, sock2)
        msg = str(ei.value)
        assert "locked by another process" in msg and f"pid {c.proc.pid}" in msg, msg

        # Closed: the lock is gone, the same path opens again (the same pool).
        c.rpc("pool_close", {"name": "px"})
        info = c.rpc("pool_create", {"name": "py", "fragments": [{"path": str(tmp_path / "hard.img")}]})
        assert info["name"] == "py"
        c.rpc("pool_close", {"name": "py"})
        c.rpc("bdev_create", {"name": "fb", "type": "file", "path": str(frag)})
        c.rpc("bdev_delete", {"name": "fb"})
        assert c.stop() == 0
    finally:
        c.kill()
        if other:
            other.kill()


def test_a_block_device_has_one_owner(tmp_path, loopdev):
    sock = str(tmp_path / "s.sock")
    c = Controller(write_config(tmp_path / "c.toml", sock), sock)
    try:
        c.rpc("pool_create", {"name": "px", "fragments": [{"path": loopdev}]})
        msg = _err(c, "bdev_create", {"name": "fb", "type": "file", "path": loopdev})
        assert "px.f0" in msg, msg
        msg = _err(c, "pool_create", {"name": "py", "fragments": [{"path": loopdev}]})
        assert "px" in msg, msg
        c.rpc("pool_close", {"name": "px"})
        c.rpc("bdev_create", {"name": "fb", "type": "file", "path": loopdev})
        assert c.stop() == 0
    finally:
        c.kill()


def test_file_bdev_never_grows_an_existing_file(tmp_path):
    sock = str(tmp_path / "s.sock")
    victim = tmp_path / "system.conf"
    victim.write_bytes(b"x" * 4096)
    c = Controller(write_config(tmp_path / "c.toml", sock), sock)
    try:
        msg = _err(c, "bdev_create", {"name": "b", "type": "file", "path": str(victim),
                                      "size": "1MiB"})
        assert "refusing to grow an existing file" in msg and "grow" in msg, msg
        assert victim.stat().st_size == 4096 and victim.read_bytes() == b"x" * 4096
        assert c.rpc("bdev_list") == []
        msg = _err(c, "bdev_create", {"name": "m", "type": "malloc", "size": "1MiB", "grow": True})
        assert "only a file bdev can grow" in msg, msg
        cli = ("-s", sock, "bdev", "create", "--name", "b", "--type", "file", "--path", str(victim),
               "--size", "1MiB")
        r = srrs(*cli)
        assert r.returncode != 0 and "refusing to grow" in r.stderr, r.stderr
        assert victim.stat().st_size == 4096
        # Asked for: it grows.
        r = srrs(*cli, "--grow")
        assert r.returncode == 0, r.stderr
        assert victim.stat().st_size == MiB
        c.rpc("bdev_delete", {"name": "b"})
        c.rpc("bdev_create", {"name": "b", "type": "file", "path": str(victim), "size": "2MiB",
                              "grow": True})
        assert victim.stat().st_size == 2 * MiB
        c.rpc("bdev_delete", {"name": "b"})
        # Without size an existing file is used as it is; a new file is still created.
        c.rpc("bdev_create", {"name": "b", "type": "file", "path": str(victim)})
        c.rpc("bdev_create", {"name": "n", "type": "file", "path": str(tmp_path / "new.img"),
                              "size": "2MiB"})
        assert (tmp_path / "new.img").stat().st_size == 2 * MiB
        assert c.stop() == 0
    finally:
        c.kill()


def test_volume_size_is_capped_by_the_map_and_delete_is_quick(tmp_path):
    """A 1,000,000 TiB thin volume used to be accepted, and deleting it then
    held the RPC thread for 28 s walking its map."""
    sock = str(tmp_path / "s.sock")
    c = Controller(write_config(tmp_path / "c.toml", sock), sock)
    try:
        c.rpc("pool_create", {"name": "p0", "fragments": [{"path": str(tmp_path / "f.img"),
                                                            "size": "64MiB"}]})
        slots = c.rpc("pool_list")[0]["md_slots"]
        most = slots * 480 * MiB  # one 480-entry map page per slot, 1 MiB clusters
        msg = _err(c, "volume_create", {"name": "huge", "pool": "p0", "size": str(1_000_000 << 40),
                                        "thin": True})
        assert "more than pool p0 can map" in msg and str(most) in msg, msg
        msg = _err(c, "volume_create", {"name": "huge", "pool": "p0", "size": most + MiB})
        assert "more than pool p0 can map" in msg, msg
        assert c.rpc("volume_list") == [] and c.rpc("bdev_list")[0]["name"] == "p0.f0"
        c.rpc("volume_create", {"name": "big", "pool": "p0", "size": most, "thin": True})
        msg = _err(c, "volume_resize", {"name": "big", "size": most + MiB})
        assert "more than pool p0 can map" in msg, msg
        t0 = time.monotonic()
        c.rpc("volume_delete", {"name": "big"})
        assert time.monotonic() - t0 < 2.0
        assert c.rpc("pool_list")[0]["md_slots_used"] == 0
        assert c.stop() == 0
    finally:
        c.kill()


def _bench(c, vol, rw, **kw):
    n = len(c.rpc("bench_bdev_results"))
    c.rpc("bench_bdev_start", dict({"bdev": vol, "rw": rw, "time_s": 0, "qd": 8}, **kw))
    for _ in range(400):
        jobs = c.rpc("bench_bdev_results")
        if len(jobs) > n and jobs[n]["state"] != "running":
            return jobs[n]["result"]
        time.sleep(0.05)
    raise AssertionError(f"bench on {vol} did not finish")


def test_fragment_added_online_survives_a_restart(tmp_path):
    """pool_add_fragment, SIGTERM, start with the same config: the pool comes
    back with both fragments. Without the added one it comes back degraded
    (status and event say so, I/O to its clusters fails), not down."""
    sock = str(tmp_path / "s.sock")
    f0, f1 = tmp_path / "f0.img", tmp_path / "f1.img"
    cfg = write_config(tmp_path / "c.toml", sock, extra={"pool": [launch.pool("p0", [launch.fragment(f0, "64MiB")])]})
    c = Controller(cfg, sock)
    try:
        c.rpc("volume_create", {"name": "v", "pool": "p0", "size": "96MiB", "thin": True})
        c.rpc("volume_create", {"name": "big", "pool": "p0", "size": "600MiB", "thin": True})
        msg = _err(c, "pool_add_fragment", {"pool": "p0", "path": "/tmp/" + "d" * 100 + "/f.img",
                                            "size": "64MiB"})
        assert "longer than 95 bytes" in msg, msg
        r = c.rpc("pool_add_fragment", {"pool": "p0", "path": str(f1), "size": "64MiB"})
        assert r["index"] == 1
        # Metadata goes to the fragment with most free slots, the new one: the
        # record of "late" and the second map page of "big" live on f1.
        c.rpc("volume_create", {"name": "late", "pool": "p0", "size": "8MiB", "thin": True})
        for vol, off in (("late", 0), ("big", 500 * MiB)):
            res = _bench(c, vol, "write", bs=MiB, max_ios=2, offset=off, span=2 * MiB)
            assert res["errors"] == 0, res
        res = _bench(c, "v", "write", bs=MiB, max_ios=96)  # every cluster, spread over both
        assert res["errors"] == 0, res
        frags = c.rpc("pool_fragments", {"pool": "p0"})
        used = [f["used_clusters"] for f in frags]
        assert len(used) == 2 and all(used), used
        assert c.stop() == 0
    finally:
        c.kill()

    c = Controller(cfg, sock)  # the same config: it names only f0
    try:
        pool = c.rpc("pool_list")[0]
        assert [f["path"] for f in pool["fragments"]] == [str(f0), str(f1)], pool
        assert [f["used_clusters"] for f in pool["fragments"]] == used
        assert not pool["degraded"] and all(f["state"] == "active" for f in pool["fragments"])
        res = _bench(c, "v", "randrw", max_ios=2000, verify=True)
        assert res["errors"] == 0 and res["verify_errors"] == 0, res
        saved = str(tmp_path / "saved.toml")
        c.rpc("save_config", {"path": saved})
        text = open(saved).read()
        assert str(f0) in text and str(f1) in text, text
        assert c.stop() == 0
    finally:
        c.kill()

    os.rename(f1, tmp_path / "away.img")
    c = Controller(cfg, sock)
    try:
        pool = c.rpc("pool_list")[0]
        assert pool["degraded"], pool
        assert [f["state"] for f in pool["fragments"]] == ["active", "missing"], pool
        assert any("fragment 1" in m and "missing" in m for m in pool["messages"]), pool
        for _ in range(100):  # the controller collects events periodically
            if any("degraded" in e["msg"] for e in c.rpc("events")):
                break
            time.sleep(0.1)
        assert any("degraded" in e["msg"] for e in c.rpc("events")), c.rpc("events")
        vols = {v["name"]: v for v in c.rpc("volume_list")}
        assert sorted(vols) == ["big", "v"] and vols["v"]["allocated_clusters"] == 96, vols
        # A map page that may have been on f1: unknown clusters fail, never read as zeroes.
        res = _bench(c, "big", "read", bs=MiB, max_ios=2, offset=500 * MiB, span=2 * MiB)
        assert res["errors"] == 2 and res["first_error"] == -errno.EIO, res
        res = _bench(c, "big", "write", bs=MiB, max_ios=2, offset=500 * MiB, span=2 * MiB)
        assert res["errors"] == 2, res
        res = _bench(c, "big", "read", bs=MiB, max_ios=4, span=4 * MiB)  # page 0 is on f0
        assert res["errors"] == 0, res
        # Clusters on the missing fragment fail; never zeroes with success.
        res = _bench(c, "v", "read", bs=MiB, max_ios=96, qd=1)
        assert res["errors"] > 0 and res["ios"] > 0 and res["errors"] + res["ios"] == 96, res
        assert res["first_error"] == -errno.EIO  # a media error for the host
        msg = _err(c, "volume_create", {"name": "w", "pool": "p0", "size": "8MiB"})
        assert "degraded" in msg, msg
        assert c.stop() == 0
    finally:
        c.kill()

    os.rename(tmp_path / "away.img", f1)
    c = Controller(cfg, sock)
    try:
        pool = c.rpc("pool_list")[0]
        assert not pool["degraded"] and [f["used_clusters"] for f in pool["fragments"]] == used
        assert sorted(v["name"] for v in c.rpc("volume_list")) == ["big", "late", "v"]
        res = _bench(c, "v", "read", bs=MiB, max_ios=96)
        assert res["errors"] == 0, res
        res = _bench(c, "big", "read", bs=MiB, max_ios=2, offset=500 * MiB, span=2 * MiB)
        assert res["errors"] == 0, res
        assert c.stop() == 0
    finally:
        c.kill()


def test_kill9_with_io_in_flight_frees_the_fragment(tmp_path):
    """The claim dies with the process, even while io_uring still holds the
    files of requests in flight: a restart right after kill -9 opens the pool."""
    sock = str(tmp_path / "s.sock")
    cfg = write_config(tmp_path / "c.toml", sock, extra={
        "pool": [launch.pool("p0", [launch.fragment(tmp_path / "f0.img", "64MiB")])],
        "volume": [launch.volume("v", "p0", "32MiB")]})
    for _ in range(2):
        c = Controller(cfg, sock)
        try:
            c.rpc("bench_bdev_start", {"bdev": "v", "rw": "randwrite", "time_s": 10, "qd": 32})
            time.sleep(0.3)
        finally:
            c.kill()
        if os.path.exists(sock):
            os.unlink(sock)
    c = Controller(cfg, sock)
    try:
        assert c.rpc("pool_list")[0]["name"] == "p0"
        assert c.stop() == 0
    finally:
        c.kill()
