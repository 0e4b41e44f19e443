"""A failed operation leaves nothing allocated: volume_create and first writes
on a pool whose fragment's filesystem is full (a small tmpfs), through the
real C core. Once space is freed, creates and writes work again at once."""

import errno
import os
import subprocess

import pytest

from srrs.ffi.binding import Core, SrrsError

from .util import MiB, frag_file, open_pool


@pytest.fixture
def small_fs(tmp_path):
    """A 24 MiB tmpfs (root only)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path):
    """Fill the filesystem of path; returns the filler file."""
    with open(path, "wb") as f:
        chunk = b"\xff" * MiB
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return path


def _slots(pool):
    i = pool.info()
    return i["md_slots_used"], i["used_clusters"]


def test_failed_creates_and_writes_leave_nothing_allocated(small_fs):
    frag = small_fs / "f.img"
    with Core(reactors=1) as core:
        pool = open_pool(core, [frag_file(frag, 64 * MiB)])
        try:
            pool.volume_create("a", 1024 * MiB, thin=True)  # spans 3 map pages
            st, _ = core.test_io("a", "write", 0, 4096, b"a" * 4096)
            assert st == 0
            before = _slots(pool)
            filler = _fill(small_fs / "filler")
            for i in range(300):  # more than the 256 metadata slots
                with pytest.raises(SrrsError):
                    pool.volume_create(f"x{i}", 4 * MiB, thin=i % 2 == 0)
            # First writes into a new map page fail (no space for the page), with an error.
            for off in (500 * MiB, 1000 * MiB):
                st, _ = core.test_io("a", "write", off, 4096, b"b" * 4096)
                assert st != 0
            assert _slots(pool) == before
            assert [v["name"] for v in pool.volume_list()] == ["a"]
            os.unlink(filler)
            # Space is back: every create and every new map page works.
            for i in range(20):
                pool.volume_create(f"y{i}", (1 if i < 4 else 4) * MiB, thin=i >= 4)
            for off in (500 * MiB, 1000 * MiB):
                st, _ = core.test_io("a", "write", off, 4096, b"c" * 4096)
                assert st == 0, off
                st, data = core.test_io("a", "read", off, 4096)
                assert st == 0 and data == b"c" * 4096
            st, data = core.test_io("a", "read", 0, 4096)
            assert st == 0 and data == b"a" * 4096
        finally:
            pool.close()
        # Reopened: exactly the volumes that were created.
        pool = open_pool(core, [frag_file(frag)])
        try:
            assert sorted(v["name"] for v in pool.volume_list()) == ["a"] + sorted(
                f"y{i}" for i in range(20))
            st, data = core.test_io("a", "read", 1000 * MiB, 4096)
            assert st == 0 and data == b"c" * 4096
        finally:
            pool.close()
