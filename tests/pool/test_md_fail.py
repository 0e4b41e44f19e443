"""A metadata page commit that fails may still have reached the disk: copy A
written (and flushed) before copy B failed, or a copy that landed with only
its completion failing. The pool must then never give a cluster that image
may map to another volume, nor acknowledge a write that a reopen would not
find (docs/architecture.md, Metadata and its crash safety).

The failures come from the pool's metadata test hook (srrs_test_pool_md_fail:
a copy written or not, its completion failed) on real fragment files; the
restart is a close and a reopen of the pool from those files."""

import errno
import time

import pytest

from srrs.ffi.binding import Core, SrrsError, lib

from .util import MiB, frag_file, open_pool

CS = 64 << 10  # small clusters: a small fragment has a few dozen
BLK = 4096


def _data(tag: str) -> bytes:
    return (tag * BLK)[:BLK].encode()


ZERO = bytes(BLK)


def _md_fail(pool, step: int, reached: bool, count: int = 1) -> None:
    """The pool's next `count` page commits fail at step (0 copy A, 1 the
    flush, 2 copy B); reached: that copy is written, only its completion fails."""
    assert lib.srrs_test_pool_md_fail(pool.ptr, count, step, int(reached)) == 0


def _write(core, vol, off, data) -> int:
    st, _ = core.test_io(vol, "write", off, len(data), data)
    return st


def _read(core, vol, off, n=BLK) -> bytes:
    st, data = core.test_io(vol, "read", off, n)
    assert st == 0, (vol, off, st)
    return data


def _wait(cond, what, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, what
        time.sleep(0.01)


def _md_writes(pool) -> int:
    return pool.info()["md_writes"]


def _wait_commits(pool, since: int, n: int, timeout=2.0) -> None:
    """Wait (a while at most) for n page commits to end since md_writes was
    `since`: the failed one and the retry it starts at once. A write arriving
    while that retry is in flight would share its outcome; a pool that does
    not retry (the defect this file tests) simply goes on after the timeout."""
    end = time.monotonic() + timeout
    while _md_writes(pool) - since < n and time.monotonic() < end:
        time.sleep(0.01)


@pytest.mark.parametrize("step,reached", [(0, False), (0, True), (1, False), (2, False), (2, True)],
                         ids=["A-refused", "A-landed", "flush", "B-refused", "B-landed"])
@pytest.mark.parametrize("delete_b", [True, False], ids=["b-deleted", "b-kept"])
def test_failed_allocation_never_shares_its_cluster(tmp_path, step, reached, delete_b):
    """Volume a's first write fails because its page commit failed; b then
    gets the pool's one free cluster and writes it. After a restart a reads
    zeroes (never b's data) and the pool opens (no cluster mapped twice)."""
    frag = frag_file(tmp_path / "f.img", 4 * MiB)
    with Core(reactors=1) as core:
        pool = open_pool(core, [frag], cluster_size=CS)
        try:
            n = pool.info()["total_clusters"]
            pool.volume_create("fill", (n - 1) * CS)
            for c in range(n - 1):
                assert _write(core, "fill", c * CS, _data("f")) == 0
            pool.volume_create("a", 4 * CS)
            pool.volume_create("b", 4 * CS)
            assert pool.info()["free_clusters"] == 1
            _md_fail(pool, step, reached)
            assert _write(core, "a", 0, _data("a")) == -errno.EIO
            assert _read(core, "a", 0) == ZERO
            # The cluster comes back once the page is known not to map it.
            _wait(lambda: pool.info()["free_clusters"] == 1, "the failed allocation's cluster")
            assert _write(core, "b", 0, _data("b")) == 0
            assert pool.info()["free_clusters"] == 0
            if delete_b:
                pool.volume_delete("b")
        finally:
            pool.close()
        pool = open_pool(core, [frag], cluster_size=CS)
        try:
            assert _read(core, "a", 0) == ZERO
            assert pool.volume_info("a")["allocated_clusters"] == 0
            if not delete_b:
                assert _read(core, "b", 0) == _data("b")
        finally:
            pool.close()


@pytest.mark.parametrize("step,reached", [(0, True), (1, False), (2, False), (2, True)],
                         ids=["A-landed", "flush", "B-refused", "B-landed"])
def test_write_after_a_failed_unmap_survives_a_restart(tmp_path, step, reached):
    """An unmap whose commit failed keeps the cluster in RAM while the disk
    may say unmapped; the retry right after fails too (not written). A write
    to the cluster is acknowledged only once the page is committed again, so
    a restart finds it."""
    frag = frag_file(tmp_path / "f.img", 4 * MiB)
    with Core(reactors=1) as core:
        pool = open_pool(core, [frag], cluster_size=CS)
        try:
            pool.volume_create("a", 4 * CS)
            assert _write(core, "a", 0, _data("1")) == 0
            _md_fail(pool, step, reached)  # the unmap's commit
            _md_fail(pool, 0, False)       # the retry right after it
            w0 = _md_writes(pool)
            st, _ = core.test_io("a", "unmap", 0, CS)
            assert st == -errno.EIO
            _wait_commits(pool, w0, 2)
            assert _read(core, "a", 0) == _data("1")  # RAM kept the cluster
            assert _write(core, "a", 0, _data("2")) == 0
            assert _read(core, "a", 0) == _data("2")
        finally:
            pool.close()
        pool = open_pool(core, [frag], cluster_size=CS)
        try:
            assert _read(core, "a", 0) == _data("2")
        finally:
            pool.close()


def test_writes_fail_while_the_metadata_keeps_failing(tmp_path):
    """While the page cannot be committed again, writes to the suspect
    cluster fail with a media error (never success), the pool says so, and
    the first write after the device recovers commits the page and lands."""
    frag = frag_file(tmp_path / "f.img", 4 * MiB)
    with Core(reactors=1) as core:
        pool = open_pool(core, [frag], cluster_size=CS)
        try:
            pool.volume_create("a", 4 * CS)
            assert _write(core, "a", 0, _data("1")) == 0
            assert _write(core, "a", CS, _data("x")) == 0
            _md_fail(pool, 2, True)             # the unmap: landed, reported failed
            _md_fail(pool, 0, False, count=3)   # the retry, then two writes' retries
            w0 = _md_writes(pool)
            st, _ = core.test_io("a", "unmap", 0, CS)
            assert st == -errno.EIO
            _wait_commits(pool, w0, 2)
            for tag in "23":
                assert _write(core, "a", 0, _data(tag)) == -errno.EIO
            info = pool.info()
            assert info["md_unsure_pages"] == 1 and info["state"] == "degraded", info
            assert any("metadata page" in a for a in info["alerts"]), info["alerts"]
            assert _read(core, "a", 0) == _data("1")
            # Other clusters of the page agree with every image: not held up.
            assert _write(core, "a", CS, _data("y")) == 0
            assert _write(core, "a", 0, _data("4")) == 0
            info = pool.info()
            assert info["md_unsure_pages"] == 0 and info["state"] == "ok", info
        finally:
            pool.close()
        pool = open_pool(core, [frag], cluster_size=CS)
        try:
            assert _read(core, "a", 0) == _data("4")
            assert _read(core, "a", CS) == _data("y")
        finally:
            pool.close()


@pytest.mark.parametrize("step,reached", [(1, False), (2, True)], ids=["flush", "B-landed"])
def test_write_after_a_failed_move_survives_a_restart(tmp_path, step, reached):
    """A drain's move whose commit failed: RAM keeps the old cluster, the disk
    may point at the copy. A later write must be what a restart reads, not
    the copy's stale data."""
    fa = frag_file(tmp_path / "a.img", 4 * MiB)
    with Core(reactors=1) as core:
        pool = open_pool(core, [fa], cluster_size=CS)
        try:
            pool.volume_create("a", 4 * CS)
            assert _write(core, "a", 0, _data("1")) == 0
            assert pool.frag_add(frag_file(tmp_path / "b.img", 4 * MiB)) == 1
            _md_fail(pool, step, reached)  # the move's commit
            _md_fail(pool, 0, False)       # the retry right after it
            w0 = _md_writes(pool)
            pool.frag_drain(0, max_inflight=1)
            _wait(lambda: pool.fragments()[0]["drain"]["error"] != 0, "the drain to stop")
            _wait_commits(pool, w0, 2)
            assert pool.fragments()[0]["drain"]["error"] == -errno.EIO
            assert _read(core, "a", 0) == _data("1")
            assert _write(core, "a", 0, _data("2")) == 0
            assert _read(core, "a", 0) == _data("2")
        finally:
            pool.close()
        pool = open_pool(core, [fa], cluster_size=CS)
        try:
            assert _read(core, "a", 0) == _data("2")
        finally:
            pool.close()


def test_failed_resize_keeps_the_size_after_a_restart(tmp_path):
    """A thin resize whose record commit failed (the record landed) keeps the
    old size, in RAM and, after a restart, on disk."""
    frag = frag_file(tmp_path / "f.img", 4 * MiB)
    with Core(reactors=1) as core:
        pool = open_pool(core, [frag], cluster_size=CS)
        try:
            pool.volume_create("a", 4 * CS)
            _md_fail(pool, 2, True)
            with pytest.raises(SrrsError):
                pool.volume_resize("a", 8 * CS)
            assert pool.volume_info("a")["size"] == 4 * CS
        finally:
            pool.close()
        pool = open_pool(core, [frag], cluster_size=CS)
        try:
            assert pool.volume_info("a")["size"] == 4 * CS
        finally:
            pool.close()


def test_failed_delete_keeps_the_volume_after_a_restart(tmp_path):
    """A delete whose tombstone commit failed (the tombstone landed) keeps the
    volume, in RAM and, after a restart, on disk, with its data; deleting it
    again works."""
    frag = frag_file(tmp_path / "f.img", 4 * MiB)
    with Core(reactors=1) as core:
        pool = open_pool(core, [frag], cluster_size=CS)
        try:
            pool.volume_create("a", 4 * CS)
            assert _write(core, "a", CS, _data("1")) == 0
            _md_fail(pool, 2, True)
            with pytest.raises(SrrsError):
                pool.volume_delete("a")
            assert [v["name"] for v in pool.volume_list()] == ["a"]
        finally:
            pool.close()
        pool = open_pool(core, [frag], cluster_size=CS)
        try:
            assert [v["name"] for v in pool.volume_list()] == ["a"]
            assert _read(core, "a", CS) == _data("1")
            pool.volume_delete("a")
            assert pool.volume_list() == [] and pool.info()["used_clusters"] == 0
        finally:
            pool.close()
