"""Ownership of fragments and file bdevs, fragments added online surviving a
restart, nothing left allocated by a failed operation, and the size traps of
file bdevs and volumes, all against real controller processes."""

import os
import shutil
import time

import pytest
from ctrl.helpers import Controller, write_config  # tests/ is on sys.path (rootdir)

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
        assert "px" in msg and "in use" in msg, msg
        msg = _err(c, "bdev_create", {"name": "fb", "type": "file", "path": str(frag)})
        assert "px.f0" in msg, msg
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
        cfg2 = write_config(tmp_path / "c2.toml", sock2, extra=f"""
[[pool]]
name = "py"
fragments = [ {{ path = "{frag}" }} ]
""")
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
        # Asked for: it grows.
        c.rpc("bdev_create", {"name": "b", "type": "file", "path": str(victim), "size": "1MiB",
                              "grow": True})
        assert victim.stat().st_size == MiB
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
