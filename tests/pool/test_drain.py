"""Online fragment add and drain: clusters and metadata pages move off a
fragment while verified I/O runs on its volumes; no I/O error, data verifies,
the fragment ends empty and is removed; the pool reopens without it."""

import threading
import time

import pytest

from srrs.ffi.binding import BenchOpts, Core, SrrsError, VerifyMap

from .util import MiB, frag_file, frag_ram, open_pool

VOLS = 6
VSIZE = 48 * MiB


def _load(core, vols, vmaps, stop, results):
    def one(i, v):
        seed = 10 + i
        while not stop.is_set():
            seed += 100
            r = core.bench_bdev(v, BenchOpts(rw="randrw", bs=4096, bs_max=256 << 10, qd=16,
                                             time_s=0.3, seed=seed), reactor=i % 2, vmap=vmaps[v])
            results.append((v, r))

    ts = [threading.Thread(target=one, args=(i, v)) for i, v in enumerate(vols)]
    for t in ts:
        t.start()
    return ts


@pytest.mark.parametrize("cluster_size", [MiB, 4 * MiB])
def test_drain_under_verified_io(tmp_path, cluster_size):
    frags = [frag_file(tmp_path / "a.img", 256 * MiB), frag_file(tmp_path / "b.img", 256 * MiB)]
    with Core(reactors=2) as core:
        pool = open_pool(core, frags, cluster_size=cluster_size)
        vols = [f"d{i}" for i in range(VOLS)]
        vmaps = {v: VerifyMap(VSIZE // 4096, 4096) for v in vols}
        for v in vols:
            pool.volume_create(v, VSIZE)
        for i, v in enumerate(vols):  # fill half of each volume first
            r = core.bench_bdev(v, BenchOpts(rw="randwrite", bs=64 << 10, qd=16, time_s=0,
                                             max_ios=600, seed=i, span=VSIZE // 2), vmap=vmaps[v])
            assert r["errors"] == 0
        before = pool.fragments()
        assert before[0]["used_clusters"] > 0 and before[0]["md_slots_used"] > 0
        # Add a third fragment online, then drain the first while I/O runs.
        idx = pool.frag_add(frag_file(tmp_path / "c.img", 256 * MiB))
        assert idx == 2 and pool.fragments()[2]["state"] == "active"
        stop, results = threading.Event(), []
        ts = _load(core, vols, vmaps, stop, results)
        try:
            time.sleep(0.3)
            pool.frag_drain(0, max_inflight=4)
            with pytest.raises(SrrsError, match="already draining"):
                pool.frag_drain(1)
            deadline = time.time() + 60
            while True:
                f0 = pool.fragments()[0]
                if f0["used_clusters"] == 0 and f0["md_slots_used"] == 0 and \
                        "done" in " ".join(pool.messages()):
                    break
                assert f0["drain"]["error"] == 0, f0
                assert time.time() < deadline, f0
                time.sleep(0.05)
            assert f0["state"] == "draining" and f0["drain"]["moved"] >= before[0]["used_clusters"]
            time.sleep(0.3)  # I/O keeps running after the drain
        finally:
            stop.set()
            for t in ts:
                t.join()
        for v, r in results:
            assert r["errors"] == 0 and r["verify_errors"] == 0, (v, r)
        assert sum(r["verified_blocks"] for _, r in results) > 1000
        pool.frag_remove(0)
        assert pool.fragments()[0]["state"] == "removed"
        for i, v in enumerate(vols):
            r = core.bench_bdev(v, BenchOpts(rw="read", bs=MiB, qd=4, time_s=0,
                                             max_ios=VSIZE // MiB), vmap=vmaps[v], reactor=i % 2)
            assert r["errors"] == 0 and r["verify_errors"] == 0
            assert r["verified_blocks"] == vmaps[v].written_blocks
        used = pool.info()["used_clusters"]
        pool.close()
    with Core(reactors=1) as core:  # reopens from the two remaining fragments
        pool = open_pool(core, [frags[1], frag_file(tmp_path / "c.img")], cluster_size=cluster_size)
        assert pool.info()["used_clusters"] == used
        for v in vols:
            r = core.bench_bdev(v, BenchOpts(rw="read", bs=MiB, qd=4, time_s=0,
                                             max_ios=VSIZE // MiB), vmap=vmaps[v])
            assert r["errors"] == 0 and r["verify_errors"] == 0
            assert r["verified_blocks"] == vmaps[v].written_blocks
        pool.close()


def test_drain_ram_fragment_and_errors(tmp_path):
    with Core(reactors=1) as core:
        pool = open_pool(core, [frag_file(tmp_path / "a.img", 128 * MiB), frag_ram(64 * MiB, weight=200)],
                         placement="fill-first")
        pool.volume_create("v", 96 * MiB)
        with pytest.raises(SrrsError, match="must be drained first"):
            pool.frag_remove(1)
        # fill-first: the heavier RAM fragment first, then the file
        vm = VerifyMap(96 * MiB // 4096, 4096)
        r = core.bench_bdev("v", BenchOpts(rw="write", bs=MiB, qd=4, time_s=0, max_ios=96), vmap=vm)
        assert r["errors"] == 0
        fr = pool.fragments()
        assert fr[1]["used_clusters"] == fr[1]["total_clusters"] and fr[0]["used_clusters"] > 0
        pool.frag_drain(1)
        for _ in range(400):
            if pool.fragments()[1]["used_clusters"] == 0 and "done" in " ".join(pool.messages()):
                break
            time.sleep(0.02)
        pool.frag_remove(1)
        r = core.bench_bdev("v", BenchOpts(rw="read", bs=MiB, qd=4, time_s=0, max_ios=96), vmap=vm)
        assert r["errors"] == 0 and r["verify_errors"] == 0 and r["verified_blocks"] == 96 * 256
        assert pool.fragments()[0]["used_clusters"] == 96
        with pytest.raises(SrrsError, match="free clusters"):
            pool.frag_drain(0)  # nowhere to go
        pool.close()


def test_drain_refuses_the_last_active_fragment(tmp_path):
    """A drain a crash interrupted leaves its fragment `draining` after the
    restart; draining the other (even empty) one would leave no fragment that
    takes new clusters, and every first write would fail with ENOSPC."""
    with Core(reactors=1) as core:
        pool = open_pool(core, [frag_file(tmp_path / "a.img", 64 * MiB),
                                frag_file(tmp_path / "b.img", 64 * MiB)])
        pool.frag_drain(1)
        for _ in range(400):
            if "done" in " ".join(pool.messages()):
                break
            time.sleep(0.02)
        assert pool.fragments()[1]["state"] == "draining"
        with pytest.raises(SrrsError, match="only active fragment"):
            pool.frag_drain(0)
        pool.volume_create("v", 32 * MiB)
        st, _ = core.test_io("v", "write", 0, 4096, b"x" * 4096)
        assert st == 0
        pool.close()
