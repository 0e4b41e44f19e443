"""A fragment truncated or deleted under a running controller: reads never
come back as zeroes with success, the pool goes degraded with an event,
status and the console say which fragment and why, and I/O to its clusters
fails with a media error (Unrecovered Read Error / Write Fault) while the
rest of the pool keeps serving. Real controller processes over NVMe/TCP,
plus the file bdev's short-read rule through the C core."""

import errno
import os
import time

from srrs.ctrl import launch
from srrs.ffi.binding import Core
from tests.pool.fragwire import (
    SC_OK,
    SC_READ_ERROR,
    SC_WRITE_FAULT,
    Host,
    MiB,
    console_pool,
    free_port,
    pattern,
    pool,
    start,
    wait_for,
    write_conf,
)


def test_file_bdev_read_past_a_truncated_end_is_an_error(tmp_path):
    path = tmp_path / "f.img"
    with Core(reactors=1) as core:
        core.bdev_create_file("f0", str(path), 8 * MiB)
        data = os.urandom(64 << 10)
        assert core.test_io("f0", "write", 6 * MiB, len(data), data)[0] == 0
        assert core.test_io("f0", "read", 6 * MiB, len(data)) == (0, data)
        os.truncate(path, 4 * MiB)
        for off, ln in ((6 * MiB, 64 << 10),        # wholly past the new end (O_DIRECT)
                        (4 * MiB - 4096, 8192),      # across it
                        (5 * MiB + 4096, 4096)):
            st, got = core.test_io("f0", "read", off, ln)
            assert st == -errno.EIO, (off, ln, st, got[:16])
        core.bdev_delete("f0")


def test_fragment_truncated_under_load_fails_its_clusters(tmp_path):
    port = free_port()
    conf = write_conf(tmp_path, port,
                      [launch.fragment(tmp_path / "frag0.img", "64MiB"),
                       launch.fragment(tmp_path / "frag1.img", "64MiB")], "96MiB")
    c = start(conf)
    try:
        h = Host(port)
        n = 48
        for k in range(n):
            assert h.write(k * MiB, pattern(1, k)) == SC_OK
        f1 = pool(c)["fragments"][1]
        assert f1["used_clusters"] > 10, f1
        os.truncate(tmp_path / "frag1.img", 16 * MiB)
        # At once, before or after the health check: data or a media error, never zeroes.
        for k in range(n):
            st, data = h.read(k * MiB, MiB)
            assert (st, data) == (SC_OK, pattern(1, k)) or st == SC_READ_ERROR, (k, hex(st))
        p = wait_for(lambda: (lambda p: p["state"] == "degraded" and p)(pool(c)), "degraded pool")
        frag = p["fragments"][1]
        assert frag["failed"] and "shrank" in frag["error"], frag
        assert p["failed_fragments"] == 1 and any("frag1.img" in a for a in p["alerts"]), p
        bad = []
        for k in range(n):
            st, data = h.read(k * MiB, MiB)
            if st == SC_OK:
                assert data == pattern(1, k), k
            else:
                assert st == SC_READ_ERROR, hex(st)
                bad.append(k)
        assert len(bad) == f1["used_clusters"], (bad, f1)
        # writes to its clusters are not acknowledged; new clusters go to the healthy fragment
        assert h.write(bad[0] * MiB, pattern(2, bad[0])) == SC_WRITE_FAULT
        for k in range(n, n + 8):
            assert h.write(k * MiB, pattern(2, k)) == SC_OK
            assert h.read(k * MiB, MiB) == (SC_OK, pattern(2, k))
        assert pool(c)["fragments"][1]["used_clusters"] == f1["used_clusters"]
        ev = [e for e in c.rpc("events") if e["type"] == "frag_failed"]
        assert ev and "frag1.img" in ev[0]["msg"], ev
        text = repr(console_pool(str(tmp_path / "c.sock")))
        assert "degraded" in text and "shrank" in text, text[:2000]
        st = c.rpc("status")["pool"]["pools"][0]
        assert st["state"] == "degraded" and st["fragments"][1]["failed"], st
        h.close()
    finally:
        c.kill()


def test_fragment_deleted_stops_acknowledging_writes(tmp_path):
    port = free_port()
    conf = write_conf(tmp_path, port, [launch.fragment(tmp_path / "frag0.img", "64MiB")], "32MiB")
    c = start(conf)
    try:
        h = Host(port)
        for k in range(8):
            assert h.write(k * MiB, pattern(1, k)) == SC_OK
        os.unlink(tmp_path / "frag0.img")
        deadline = time.time() + 5
        while h.write(3 * MiB, pattern(2, 3)) == SC_OK:  # lands in the unlinked inode
            assert time.time() < deadline, "writes still acknowledged into the deleted file after 5 s"
            time.sleep(0.05)
        p = pool(c)
        assert p["state"] == "degraded", p
        frag = p["fragments"][0]
        assert frag["failed"] and "deleted" in frag["error"], frag
        # nothing more goes into the unlinked file with success
        assert h.write(0, pattern(2, 0)) == SC_WRITE_FAULT
        assert h.write(2 * MiB + 4096, b"y" * 4096) == SC_WRITE_FAULT
        assert h.read(MiB, MiB)[0] == SC_READ_ERROR
        assert h.write(20 * MiB, pattern(2, 20)) != SC_OK  # no healthy fragment to allocate on
        h.close()
    finally:
        c.kill()
