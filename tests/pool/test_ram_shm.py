"""RAM fragments live in shared memory that outlives the controller: data
acknowledged on a RAM fragment survives kill -9 and reads back; where the
memory is truly gone (its /dev/shm file removed, as by a host reboot), reads
of those clusters fail with Unrecovered Read Error — never zeroes — across
restarts, the loss is an alert in status, console and metrics, and a
whole-cluster rewrite makes each cluster good again. Real controller
processes, NVMe/TCP from `srrs bench nvmf` and raw commands."""

import errno
import os
import re
import subprocess
import urllib.request

import pytest

from srrs.ctrl import launch
from tests.ctrl.helpers import SRRS
from tests.pool.fragwire import (
    NQN,
    SC_OK,
    SC_READ_ERROR,
    Host,
    MiB,
    console_pool,
    free_port,
    pattern,
    pool,
    shm_files,
    start,
    wait_for,
    write_conf,
)

NCL = 32  # clusters in the volume


def _read_all(h: Host) -> list:
    return [h.read(k * MiB, MiB) for k in range(NCL)]


def test_ram_fragment_survives_kill9_and_loss_is_an_error(tmp_path):
    port, mport = free_port(), free_port()
    conf = write_conf(tmp_path, port,
                      [launch.fragment(tmp_path / "frag0.img", "64MiB"), launch.fragment(ram="64MiB")],
                      f"{NCL}MiB", metrics_port=mport)
    c = start(conf)
    try:
        bench = subprocess.run(
            SRRS + ["bench", "nvmf", "--target", f"127.0.0.1:{port}", "--nqn", NQN, "--rw", "write",
                    "--bs", "1MiB", "--qd", "4", "--time", "2", "--verify", "--json"],
            capture_output=True, text=True, timeout=60)
        assert bench.returncode == 0, bench.stderr
        h = Host(port)
        for k in range(NCL):  # every cluster allocated, with content we can name
            assert h.write(k * MiB, pattern(1, k)) == SC_OK
        before = _read_all(h)
        assert all(st == SC_OK for st, _ in before)
        h.close()
        p = pool(c)
        ram = [f for f in p["fragments"] if f["ram"]][0]
        assert ram["used_clusters"] > 0, p  # some clusters live on the RAM fragment
        shm = shm_files(p["uuid"])
        assert len(shm) == 1, shm
    finally:
        c.kill()  # SIGKILL: no clean stop

    # 1. a crash of the process: the RAM data is still there
    c = start(conf)
    try:
        h = Host(port)
        assert _read_all(h) == before
        p = pool(c)
        assert p["lost_clusters"] == 0 and p["state"] == "ok", p
        # its file removed while we run: still served, but an alert says it dies with us
        os.unlink(shm[0])
        p = wait_for(lambda: (lambda p: p["state"] == "degraded" and p)(pool(c)), "shm alert")
        assert any("shared memory file" in a for a in p["alerts"]), p
        assert _read_all(h) == before
        h.close()
    finally:
        c.kill()

    # 2. the memory is gone (as after a host reboot): reads of its clusters fail, never zeroes
    assert not os.path.exists(shm[0])
    c = start(conf)
    try:
        h = Host(port)
        after = _read_all(h)
        lost = [k for k, (st, _) in enumerate(after) if st != SC_OK]
        assert lost and len(lost) == ram["used_clusters"], (lost, ram)
        for k, (st, data) in enumerate(after):
            if k in lost:
                assert st == SC_READ_ERROR, hex(st)
            else:
                assert data == before[k][1], k
        p = pool(c)
        assert p["state"] == "degraded" and p["lost_clusters"] == len(lost), p
        assert any("lost" in a for a in p["alerts"]), p
        assert c.rpc("volume_list")[0]["lost_clusters"] == len(lost)
        assert any(e["type"] == "ram_lost" for e in c.rpc("events"))
        snap = console_pool(str(tmp_path / "c.sock"))
        text = repr(snap)
        assert "degraded" in text and "lost" in text, text[:2000]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
        m = re.search(r'^srrs_pool_lost_clusters\{[^}]*pool="p0"[^}]*\} (\S+)$', metrics, re.M)
        assert m and float(m.group(1)) == len(lost), metrics[-3000:]
        # a partial write makes only the blocks it wrote good: the rest is unknown
        assert h.write(lost[0] * MiB, b"x" * 4096) == SC_OK
        assert h.read(lost[0] * MiB, 4096) == (SC_OK, b"x" * 4096)
        assert h.read(lost[0] * MiB + 4096, 4096)[0] == SC_READ_ERROR
        assert h.read(lost[0] * MiB, 8192)[0] == SC_READ_ERROR
        # nor does a drain copy "unknown" into zeroes elsewhere: it stops with an error
        c.rpc("pool_drain_fragment", {"pool": "p0", "index": 1})
        fr = wait_for(lambda: c.rpc("pool_fragments", {"pool": "p0"})[1]["drain"]["error"] and
                      c.rpc("pool_fragments", {"pool": "p0"})[1], "drain error")
        assert fr["drain"]["error"] == -errno.EIO and fr["lost_clusters"] == len(lost), fr
        assert any("lost with its RAM" in m for m in pool(c)["messages"])
        h.close()
    finally:
        c.stop()

    # 3. the loss is remembered across a restart (the new memory is zeroes, not the data)
    c = start(conf)
    try:
        h = Host(port)
        assert [k for k, (st, _) in enumerate(_read_all(h)) if st != SC_OK] == lost
        # 4. rewriting every block makes a cluster readable again: in one write,
        # or in pieces (a host's smaller I/O, a resync's chunks)
        for i, k in enumerate(lost):
            data = pattern(2, k)
            step = MiB if i % 2 else 256 << 10
            for o in range(0, MiB, step):
                if o + step == MiB and i % 2 == 0:
                    assert h.read(k * MiB, MiB)[0] == SC_READ_ERROR  # one piece still unknown
                assert h.write(k * MiB + o, data[o:o + step]) == SC_OK
        for k in lost:
            assert h.read(k * MiB, MiB) == (SC_OK, pattern(2, k))
        p = pool(c)
        assert p["lost_clusters"] == 0 and p["state"] == "ok", p
        h.close()
    finally:
        c.kill()
    c = start(conf)  # and it stays good after another crash
    try:
        h = Host(port)
        got = _read_all(h)
        assert all(got[k] == (SC_OK, pattern(2, k)) for k in lost)
        assert pool(c)["lost_clusters"] == 0
        # 5. rewritten, the fragment drains; removed on purpose, its memory goes too
        c.rpc("pool_drain_fragment", {"pool": "p0", "index": 1})
        wait_for(lambda: c.rpc("pool_fragments", {"pool": "p0"})[1]["used_clusters"] == 0,
                 "drained", timeout=20)
        c.rpc("pool_remove_fragment", {"pool": "p0", "index": 1})
        assert shm_files(p["uuid"]) == []
        assert _read_all(h) == got
        h.close()
    finally:
        c.kill()


def test_ram_fragment_without_shared_memory_is_a_clear_error(tmp_path, monkeypatch):
    """No room for the RAM fragment's shared memory: the pool is refused with
    a message naming the file, and the fragment file this open made is gone."""
    from srrs.ffi.binding import Core, SrrsError

    from .util import frag_file, frag_ram, open_pool

    monkeypatch.setenv("SRRS_SHM_DIR", str(tmp_path / "missing"))
    (tmp_path / "old.img").write_bytes(b"")
    os.truncate(tmp_path / "old.img", 64 * MiB)
    with Core(reactors=1) as core:
        with pytest.raises(SrrsError) as e:
            open_pool(core, [frag_file(tmp_path / "new.img", 64 * MiB), frag_file(tmp_path / "old.img"),
                             frag_ram(16 * MiB)])
        assert "RAM fragment 2" in str(e.value) and str(tmp_path / "missing") in str(e.value), e.value
    assert sorted(os.listdir(tmp_path)) == ["old.img"]
