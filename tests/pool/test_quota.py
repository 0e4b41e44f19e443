"""Quota and pool-full: the allocating write fails with -ENOSPC and an event;
what was written stays; other volumes are unaffected."""

import errno
import os

from srrs.ffi.binding import BenchOpts, Core, VerifyMap

from .util import MiB, frag_file, open_pool, verified_write_read


def _events(core):
    return list(core.events())


def test_tenant_quota(tmp_path):
    with Core(reactors=2) as core:
        pool = open_pool(core, [frag_file(tmp_path / "f.img", 256 * MiB)])
        pool.tenant_set("t1", 8 * MiB)
        pool.volume_create("vq", 64 * MiB, tenant="t1")
        pool.volume_create("vo", 64 * MiB)
        kept = os.urandom(MiB)
        assert core.test_io("vq", "write", 0, MiB, kept)[0] == 0
        r = core.bench_bdev("vq", BenchOpts(rw="write", bs=MiB, qd=4, time_s=0, max_ios=32,
                                            offset=MiB))
        assert r["first_error"] == -errno.ENOSPC, r
        assert r["writes"] == 7 and r["errors"] == 25, r  # 1 + 7 clusters = the 8 MiB quota
        assert pool.volume_info("vq")["allocated_clusters"] == 8
        t = pool.tenant_info("t1")
        assert t["used_clusters"] == 8 and t["quota_failures"] >= 25
        # Writes inside what is allocated still work; new clusters do not.
        assert core.test_io("vq", "write", 4096, 4096, bytes(4096))[0] == 0
        assert core.test_io("vq", "write", 40 * MiB, 4096, bytes(4096))[0] == -errno.ENOSPC
        ev = _events(core)
        assert any(e["type"] == "quota" and e["obj"] == "vq" and "t1" in e["msg"] for e in ev), ev
        # The other volume is unaffected.
        vm = VerifyMap(64 * MiB // 4096, 4096)
        w, rd = verified_write_read(core, "vo", 64 * MiB, vm, ios=2000, seed=3)
        assert w["errors"] == 0 and rd["errors"] == 0 and rd["verify_errors"] == 0
        # Raising the quota lets the volume grow again; the first MiB was never touched.
        pool.tenant_set("t1", 16 * MiB)
        assert core.test_io("vq", "write", 40 * MiB, 4096, bytes(4096))[0] == 0
        st, data = core.test_io("vq", "read", 0, MiB)
        assert data[:4096] == kept[:4096] and data[8192:] == kept[8192:]
        pool.close()


def test_pool_full(tmp_path):
    with Core(reactors=1) as core:
        pool = open_pool(core, [frag_file(tmp_path / "f.img", 40 * MiB)], metadata_slots=64)
        cap = pool.info()["total_clusters"]
        pool.volume_create("va", 64 * MiB)
        pool.volume_create("vb", 64 * MiB)
        keep = os.urandom(MiB)
        assert core.test_io("vb", "write", 0, MiB, keep)[0] == 0
        r = core.bench_bdev("va", BenchOpts(rw="write", bs=MiB, qd=8, time_s=0, max_ios=64))
        assert r["first_error"] == -errno.ENOSPC and r["writes"] == cap - 1, (r, cap)
        info = pool.info()
        assert info["free_clusters"] == 0 and info["used_clusters"] == cap
        assert any(e["type"] == "pool_full" for e in _events(core))
        assert core.test_io("vb", "write", 2 * MiB, 4096, bytes(4096))[0] == -errno.ENOSPC
        # vb's allocated cluster keeps its data and takes overwrites.
        assert core.test_io("vb", "read", 0, MiB)[1] == keep
        assert core.test_io("vb", "write", 0, 4096, bytes(4096))[0] == 0
        # Deleting a volume frees its clusters for the others.
        pool.volume_delete("va")
        assert pool.info()["free_clusters"] == cap - 1
        assert core.test_io("vb", "write", 2 * MiB, 4096, bytes(4096))[0] == 0
        pool.close()
