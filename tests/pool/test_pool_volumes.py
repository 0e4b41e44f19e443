"""Pool of three fragments (sparse file, loop device, RAM) with 20 thin volumes:
verified random I/O on all at once; allocated space is what was written,
rounded to clusters; thick volumes, resize, delete, reopen."""

import os
import re
import time

import pytest

from srrs.ffi.binding import BenchOpts, Core, SrrsError, VerifyMap

from .util import MiB, frag_file, frag_ram, open_pool, run_parallel, verified_write_read

CS = 1 * MiB


def test_three_fragments_twenty_thin_volumes(tmp_path, loopdev):
    sparse = tmp_path / "frag0.img"
    with Core(reactors=2) as core:
        pool = open_pool(core, [frag_file(sparse, 512 * MiB), frag_file(loopdev), frag_ram(128 * MiB)])
        try:
            st = os.stat(sparse)
            assert st.st_size == 512 * MiB and st.st_blocks * 512 < 16 * MiB, "not sparse"
            info = pool.info()
            assert info["created"] and len(info["fragments"]) == 3
            assert [f["ram"] for f in info["fragments"]] == [False, False, True]
            vols = [f"v{i:02d}" for i in range(20)]
            for v in vols:
                pool.volume_create(v, 64 * MiB, thin=True)
            assert all(v["allocated_clusters"] == 0 for v in pool.volume_list())
            span_cl = 12  # every volume writes into its first 12 clusters only
            vmaps = {v: VerifyMap(64 * MiB // 4096, 4096) for v in vols}

            def job(i, v):
                return lambda: verified_write_read(core, v, 64 * MiB, vmaps[v], reactor=i % 2,
                                                   ios=1500, seed=100 + i, span=span_cl * CS,
                                                   bs_max=64 << 10)

            res = run_parallel([job(i, v) for i, v in enumerate(vols)])
            for v, (w, r) in zip(vols, res):
                assert w["errors"] == 0 and r["errors"] == 0, (v, w, r)
                assert r["verify_errors"] == 0 and r["verified_blocks"] > 0, (v, r)
            # 1500 random writes over 12 clusters touch all 12 (and nothing else).
            for v in pool.volume_list():
                assert v["allocated_clusters"] == span_cl, v
            info = pool.info()
            assert info["used_clusters"] == 20 * span_cl
            used = [f["used_clusters"] for f in info["fragments"]]
            assert all(u > 0 for u in used), f"spread placement left a fragment empty: {used}"
            # Full read-back of every volume: written blocks verify, the rest read zeroes.
            for i, v in enumerate(vols):
                r = core.bench_bdev(v, BenchOpts(rw="read", bs=1 << 20, qd=4, time_s=0,
                                                 max_ios=64), vmap=vmaps[v], reactor=i % 2)
                assert r["errors"] == 0 and r["verify_errors"] == 0
                assert r["verified_blocks"] == vmaps[v].written_blocks
            st, data = core.test_io("v00", "read", 40 * MiB, 8192)
            assert st == 0 and data == bytes(8192)
        finally:
            pool.close()


def test_allocated_equals_written_rounded_to_clusters(tmp_path):
    with Core(reactors=1) as core:
        pool = open_pool(core, [frag_file(tmp_path / "f.img", 256 * MiB)], cluster_size=256 << 10)
        pool.volume_create("v", 64 * MiB)
        cs = 256 << 10
        writes = [(0, 4096), (cs - 4096, 8192), (5 * cs + 512 * 8, 4096 * 3), (40 * cs, cs),
                  (63 * MiB, MiB)]
        clusters = set()
        for off, ln in writes:
            data = os.urandom(ln)
            assert core.test_io("v", "write", off, ln, data)[0] == 0
            assert core.test_io("v", "read", off, ln)[1] == data
            clusters |= set(range(off // cs, (off + ln - 1) // cs + 1))
        assert pool.volume_info("v")["allocated_clusters"] == len(clusters)
        assert pool.info()["used_clusters"] == len(clusters)
        # The parts of a new cluster that were never written read as zeroes.
        st, data = core.test_io("v", "read", 0, cs)
        assert data[4096:cs - 4096] == bytes(cs - 8192)
        pool.close()


def test_thick_resize_delete_reopen(tmp_path):
    frags = [frag_file(tmp_path / "a.img", 256 * MiB), frag_file(tmp_path / "b.img", 128 * MiB)]
    with Core(reactors=2) as core:
        pool = open_pool(core, frags)
        thick = pool.volume_create("thick", 32 * MiB, thin=False)
        assert thick["allocated_clusters"] == 32
        pool.volume_create("thin", 32 * MiB)
        pool.volume_create("gone", 16 * MiB)
        data = os.urandom(1 << 20)
        for v in ("thick", "thin", "gone"):
            assert core.test_io(v, "write", 3 * MiB, len(data), data)[0] == 0
        pool.volume_resize("thin", 96 * MiB)
        assert core.bdev_info("thin")["size"] == 96 * MiB
        assert core.test_io("thin", "write", 95 * MiB, len(data), data)[0] == 0
        used = pool.info()["used_clusters"]
        pool.volume_delete("gone")
        assert pool.info()["used_clusters"] == used - 1
        with pytest.raises(SrrsError, match="shrinking"):
            pool.volume_resize("thin", 32 * MiB)
        with pytest.raises(SrrsError, match="already exists"):
            pool.volume_create("thin", 32 * MiB)
        uuids = {v["name"]: v["uuid"] for v in pool.volume_list()}
        pool.close()
    with Core(reactors=1) as core:
        pool = open_pool(core, frags)
        assert not pool.info()["created"]
        vols = {v["name"]: v for v in pool.volume_list()}
        assert set(vols) == {"thick", "thin"}
        assert {n: v["uuid"] for n, v in vols.items()} == uuids, "UUIDs are stable"
        assert vols["thick"]["allocated_clusters"] == 32 and not vols["thick"]["thin"]
        assert vols["thin"]["size"] == 96 * MiB and vols["thin"]["allocated_clusters"] == 2
        for v, off in (("thick", 3 * MiB), ("thin", 3 * MiB), ("thin", 95 * MiB)):
            assert core.test_io(v, "read", off, len(data))[1] == data
        pool.close()


def test_open_errors_name_the_fragment(tmp_path):
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    with Core(reactors=1) as core:
        pool = open_pool(core, [frag_file(a, 64 * MiB), frag_file(b, 64 * MiB)])
        pool.close()
        # A fragment the config omits is opened from the pool's table; a missing
        # one leaves the pool degraded, saying which (tests/pool/test_fragown.py).
        again = open_pool(core, [frag_file(a)])
        assert [f["state"] for f in again.fragments()] == ["active", "active"]
        again.close()
        os.rename(b, tmp_path / "b.away")
        again = open_pool(core, [frag_file(a)])
        assert [f["state"] for f in again.fragments()] == ["active", "missing"]
        assert any(re.search(r"fragment 1 \(.*b.img\) of pool p0 is missing", m)
                   for m in again.messages())
        again.close()
        os.rename(tmp_path / "b.away", b)
        other = open_pool(core, [frag_file(tmp_path / "c.img", 64 * MiB)], name="q")
        other.close()
        with pytest.raises(SrrsError, match="c.img belongs to another pool"):
            open_pool(core, [frag_file(a), frag_file(b), frag_file(tmp_path / "c.img")])
        foreign = tmp_path / "foreign.img"
        foreign.write_bytes(b"not a pool" * 1000)
        with pytest.raises(SrrsError, match="not an SRRS pool"):
            open_pool(core, [frag_file(foreign)], name="r")
        assert core.bdev_list() == [], "a failed open leaves no bdev behind"


def test_unmap_frees_whole_clusters(tmp_path):
    with Core(reactors=2) as core:
        pool = open_pool(core, [frag_file(tmp_path / "f.img", 128 * MiB)])
        pool.volume_create("v", 32 * MiB)
        data = os.urandom(4 * MiB)
        for i in range(4):
            assert core.test_io("v", "write", i * MiB, MiB, data[i * MiB:(i + 1) * MiB])[0] == 0
        assert pool.volume_info("v")["allocated_clusters"] == 4
        # Cluster 1 whole and half of cluster 2: 1 freed, 2 zeroed in part.
        assert core.test_io("v", "unmap", MiB, MiB + MiB // 2, reactor=1)[0] == 0
        assert pool.volume_info("v")["allocated_clusters"] == 3
        got = b"".join(core.test_io("v", "read", i * MiB, MiB)[1] for i in range(4))
        want = data[:MiB] + bytes(MiB + MiB // 2) + data[2 * MiB + MiB // 2:]
        assert got == want
        # The freed cluster comes back to the pool (after the barrier) and is reused.
        for _ in range(100):
            if pool.info()["used_clusters"] == 3:
                break
            time.sleep(0.01)
        assert pool.info()["used_clusters"] == 3
        assert core.test_io("v", "write", MiB + 4096, 4096, data[:4096])[0] == 0
        st, got = core.test_io("v", "read", MiB, MiB)
        assert got == bytes(4096) + data[:4096] + bytes(MiB - 8192)
        vm = VerifyMap(32 * MiB // 4096, 4096)
        w, r = verified_write_read(core, "v", 32 * MiB, vm, ios=2000)
        assert w["errors"] == 0 and r["verify_errors"] == 0
        pool.close()
    with Core(reactors=1) as core:  # the free is durable
        pool = open_pool(core, [frag_file(tmp_path / "f.img")])
        assert pool.volume_info("v")["allocated_clusters"] == pool.info()["used_clusters"]
        pool.close()


def test_concurrent_first_writes_to_one_cluster_allocate_once(tmp_path):
    """Two reactors race first writes into the same few clusters: each cluster is
    allocated once (no leaked or double-mapped cluster) and nothing fails."""
    with Core(reactors=2) as core:
        pool = open_pool(core, [frag_file(tmp_path / "f.img", 128 * MiB)], cluster_size=4 * MiB)
        for rnd in range(20):
            name = f"race{rnd}"
            pool.volume_create(name, 64 * MiB)

            def job(reactor, name=name, rnd=rnd):
                return core.bench_bdev(name, BenchOpts(rw="randwrite", bs=4096, qd=32, time_s=0,
                                                       max_ios=500, seed=rnd * 2 + reactor,
                                                       span=8 * MiB), reactor=reactor)

            for r in run_parallel([lambda: job(0), lambda: job(1)]):
                assert r["errors"] == 0, r
            assert pool.volume_info(name)["allocated_clusters"] == 2
            assert pool.info()["used_clusters"] == 2
            pool.volume_delete(name)
        pool.close()


def test_a_volume_created_with_its_uuid_keeps_it_across_reopen(tmp_path):
    """srrs_lvol_create_uuid: the caller's uuid is the volume's for life (the
    cluster's replicas record in it what they were made for,
    docs/architecture.md, Volume moves); one another volume has is refused."""
    frags = [frag_file(tmp_path / "a.img", 128 * MiB)]
    mine = bytes(range(16))
    with Core(reactors=1) as core:
        pool = open_pool(core, frags)
        v = pool.volume_create("tagged", 16 * MiB, uuid=mine)
        assert v["uuid"].replace("-", "") == mine.hex()
        with pytest.raises(SrrsError, match="has that uuid"):
            pool.volume_create("again", 16 * MiB, uuid=mine)
        assert pool.volume_info("again") is None
        with pytest.raises(ValueError, match="16 bytes"):
            pool.volume_create("short", 16 * MiB, uuid=b"\1" * 15)
        data = os.urandom(1 << 20)
        assert core.test_io("tagged", "write", 0, len(data), data)[0] == 0
        pool.volume_delete("tagged")
        other = pool.volume_create("other", 16 * MiB)     # random: not ours
        assert other["uuid"].replace("-", "") != mine.hex()
        pool.volume_create("tagged", 16 * MiB, uuid=mine)  # free again once deleted
        assert core.test_io("tagged", "read", 0, len(data))[1] == bytes(len(data))
        pool.close()
    with Core(reactors=1) as core:
        pool = open_pool(core, frags)
        vols = {v["name"]: v for v in pool.volume_list()}
        assert set(vols) == {"tagged", "other"}
        assert vols["tagged"]["uuid"].replace("-", "") == mine.hex()
        assert core.test_io("tagged", "read", 0, 1 << 20)[1] == bytes(1 << 20)
        pool.close()
