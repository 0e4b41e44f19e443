"""bdev integrity on malloc, a sparse file and a loop block device; the file
and device tests run with each file I/O engine (io_uring, native AIO and the
worker threads: docs/architecture.md, File I/O engines), flush, write-zeroes
and unmap included.

20,000 random-offset writes of random sizes (512 B .. 1 MiB, aligned and not
aligned to 4 KiB, some from buffers 512 B off a page boundary) recording each
block's CRC32C, then a full sequential read-back and random reads checking it.
"""

import errno
import os

import pytest

from srrs.ffi.binding import BenchOpts, Core, SrrsError, VerifyMap

SIZE = 256 << 20
BS = 512
ENGINES = ("uring", "aio", "threads")


def _integrity(core, name, size):
    vmap = VerifyMap(size // BS, BS)
    w = core.bench_bdev(name, BenchOpts(rw="randwrite", bs=512, bs_max=1 << 20, qd=16,
                                        time_s=0, max_ios=20_000, seed=7, misalign=True), vmap=vmap)
    assert w["errors"] == 0, w
    assert w["writes"] == 20_000
    assert vmap.written_blocks > 0
    full = core.bench_bdev(name, BenchOpts(rw="read", bs=1 << 20, qd=8, time_s=0,
                                           max_ios=size // (1 << 20)), vmap=vmap)
    assert full["errors"] == 0 and full["verify_errors"] == 0, full
    assert full["verified_blocks"] == vmap.written_blocks
    rnd = core.bench_bdev(name, BenchOpts(rw="randread", bs=512, bs_max=1 << 20, qd=16, time_s=0,
                                          max_ios=5_000, seed=9, misalign=True), vmap=vmap)
    assert rnd["errors"] == 0 and rnd["verify_errors"] == 0, rnd
    assert rnd["verified_blocks"] > 0
    vmap.close()


def _edges(core, name, size):
    st, _ = core.test_io(name, "read", size, 4096)
    assert st == -34  # -ERANGE: past the end
    st, _ = core.test_io(name, "read", size - 512, 4096)
    assert st == -34
    st, _ = core.test_io(name, "read", 100, 512)
    assert st == -22  # -EINVAL: not block aligned
    data = os.urandom(8192)
    assert core.test_io(name, "write", 1 << 20, 8192, data)[0] == 0
    assert core.test_io(name, "read", 1 << 20, 8192)[1] == data
    assert core.test_io(name, "write_zeroes", 1 << 20, 4096)[0] == 0
    assert core.test_io(name, "read", 1 << 20, 8192)[1] == bytes(4096) + data[4096:]
    assert core.test_io(name, "unmap", (1 << 20) + 4096, 4096)[0] == 0
    assert core.test_io(name, "read", 1 << 20, 8192)[1] == bytes(8192)
    assert core.test_io(name, "flush", 0, 0)[0] == 0
    info = core.bdev_info(name)
    assert info["errors"] == 3 and info["write_zeroes"] == 1 and info["unmaps"] == 1


def test_malloc_integrity():
    with Core(reactors=1) as core:
        core.bdev_create_malloc("m0", SIZE, BS)
        _integrity(core, "m0", SIZE)
        _edges(core, "m0", SIZE)


@pytest.mark.parametrize("engine", ENGINES)
def test_sparse_file_integrity_direct_and_buffered(tmp_path, engine):
    path = tmp_path / "f0.img"
    with Core(reactors=2) as core:
        core.bdev_create_file("f0", str(path), SIZE, BS, engine=engine)
        assert core.bdev_info("f0")["engine"] == engine
        st = os.stat(path)
        assert st.st_size == SIZE and st.st_blocks * 512 < SIZE // 16, "file is not sparse"
        _integrity(core, "f0", SIZE)
        info = core.bdev_info("f0")
        assert info["direct_ios"] > 100, info
        assert info["buffered_ios"] > 100, info
        _edges(core, "f0", SIZE)


@pytest.mark.parametrize("engine", ENGINES)
def test_loop_device_integrity(loopdev, engine):
    with Core(reactors=1) as core:
        core.bdev_create_file("l0", loopdev, 0, BS, engine=engine)
        assert core.bdev_info("l0")["size"] == SIZE
        _integrity(core, "l0", SIZE)
        _edges(core, "l0", SIZE)


def test_bdev_errors_are_clear(tmp_path):
    with Core(reactors=1) as core:
        core.bdev_create_malloc("m0", 1 << 20, 4096)
        with pytest.raises(SrrsError, match="already exists"):
            core.bdev_create_malloc("m0", 1 << 20, 4096)
        with pytest.raises(SrrsError, match="block_size must be 512 or 4096"):
            core.bdev_create_malloc("m1", 1 << 20, 1000)
        with pytest.raises(SrrsError, match="not a positive multiple"):
            core.bdev_create_null("n1", 1000, 512)
        with pytest.raises(SrrsError, match="does not exist and no size"):
            core.bdev_create_file("f1", str(tmp_path / "nope.img"), 0, 512)
        with pytest.raises(SrrsError, match="does not exist"):
            core.bdev_delete("zz")
        core.bdev_delete("m0")
        assert core.bdev_list() == []


@pytest.mark.parametrize("engine", ENGINES)
def test_file_errors_propagate_as_status(tmp_path, engine):
    """A kernel I/O error becomes the I/O's status, never a crash."""
    path = tmp_path / "f.img"
    with Core(reactors=1) as core:
        core.bdev_create_file("f", str(path), 1 << 20, 512, engine=engine)
        os.truncate(path, 4096)  # the file shrinks under us: past its end is an error, not zeroes
        st, data = core.test_io("f", "read", 8192, 4096)
        assert st == -errno.EIO


def test_bench_writes_two_bdevs_as_one():
    """srrs_bench_bdev2 (ci/bench-pair's "both" row): every write lands on both
    bdevs, verified reads of each see it; a missing one is an error."""
    size = 16 << 20
    with Core(reactors=1) as core:
        core.bdev_create_malloc("m0", size, 4096)
        core.bdev_create_malloc("m1", size, 4096)
        vmap = VerifyMap(size // 4096, 4096)
        w = core.bench_bdev("m0", BenchOpts(rw="randwrite", bs=4096, bs_max=64 << 10, qd=32,
                                            time_s=0, max_ios=3000, seed=3), vmap=vmap, also="m1")
        assert w["errors"] == 0 and w["writes"] == 3000, w
        for name in ("m0", "m1"):
            r = core.bench_bdev(name, BenchOpts(rw="read", bs=1 << 20, qd=4, time_s=0,
                                                max_ios=size >> 20), vmap=vmap)
            assert r["errors"] == 0 and r["verify_errors"] == 0, (name, r)
            assert r["verified_blocks"] == vmap.written_blocks > 0
        vmap.close()
        with pytest.raises(SrrsError):
            core.bench_bdev("m0", BenchOpts(rw="randwrite", bs=4096, qd=4, time_s=0,
                                            max_ios=10), also="nope")
