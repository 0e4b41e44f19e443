"""A crashed owner's writes still in flight: the next owner of the file must
not read or write it before they land.

io_uring keeps a reference to the file of every request in flight, and a
SIGKILLed process's requests complete after the process is reaped (an
O_DIRECT write, or ext4's unwritten-extent conversion that makes it
visible). Before the fix the next owner opened at once: a block it read as
zeroes turned into the dead process's data later, with nobody writing it
(tests/pool/test_crash.py saw this about once in 100 runs), and the late write
could as well overwrite what the new owner wrote and acknowledged since.

The test plays the kernel's part deterministically: it takes a duplicate
(pidfd_getfd) of the dead owner's O_DIRECT descriptor, the open file
description an in-flight request holds a reference to, kills the owner, lets
the next owner open, and only then lands the "late" writes through it and
drops it, as the kernel would."""

import ctypes
import mmap
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from srrs.ffi.binding import Core

from .util import block, frag_file, open_pool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYS_PIDFD_GETFD = 438  # the same number on every architecture

OWNER = """
import sys, time
sys.path.insert(0, {root!r})
from srrs.ffi.binding import Core
from tests.pool.util import MiB, block, frag_file, open_pool
core = Core(reactors=1)
if {pool!r}:
    pool = open_pool(core, [frag_file({path!r}, 16 * MiB)], cluster_size=64 << 10)
    pool.volume_create("cv", 4 * MiB)
    name = "cv"
else:
    core.bdev_create_file("fb", {path!r}, 4 * MiB)
    name = "fb"
st, _ = core.test_io(name, "write", 5 * 4096, 4096, block(1, 5))
print("ready" if st == 0 else f"failed {{st}}", flush=True)
time.sleep(60)
"""


def _dup_io_fd(pid: int, path: str) -> int:
    """A duplicate of a descriptor the owner does I/O on (not its claim: no
    write lock), O_DIRECT if it has one: the open file description itself."""
    libc = ctypes.CDLL(None, use_errno=True)
    best = None
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != path:
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                info = f.read().splitlines()
        except OSError:
            continue
        if any(ln.startswith("lock:") and "WRITE" in ln for ln in info):
            continue
        flags = int(next(ln for ln in info if ln.startswith("flags:")).split()[1], 8)
        if best is None or flags & os.O_DIRECT:
            best = int(fd)
    assert best is not None, f"no I/O descriptor of {path} in process {pid}"
    pidfd = os.pidfd_open(pid)
    try:
        dup = libc.syscall(SYS_PIDFD_GETFD, pidfd, best, 0)
    finally:
        os.close(pidfd)
    if dup < 0:
        pytest.skip(f"pidfd_getfd: {os.strerror(ctypes.get_errno())}")
    return dup


def _phys_offset(path: str, data: bytes) -> int:
    with open(path, "rb") as f:
        img = f.read()
    off = img.find(data)
    assert off >= 0 and off % 4096 == 0, off
    return off


@pytest.mark.parametrize("pool", [True, False], ids=["pool", "file-bdev"])
def test_next_owner_waits_for_a_dead_owners_writes(tmp_path, pool):
    path = str(tmp_path / "f0.img")
    owner = subprocess.Popen([sys.executable, "-c", OWNER.format(root=ROOT, pool=pool, path=path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = owner.stdout.readline()
        assert line.strip() == b"ready", (line, owner.stderr.read() if owner.poll() is not None else "")
        held = _dup_io_fd(owner.pid, path)  # what an in-flight request of the owner holds
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    try:
        phys = _phys_offset(path, block(1, 5))
        late = mmap.mmap(-1, 4096)  # page-aligned, for an O_DIRECT descriptor
        seen = {}

        def next_owner(core):
            """Opens, reads block 5, writes block 6 (acknowledged), as a restarted controller would."""
            try:
                t0 = time.monotonic()
                if pool:
                    seen["pool"] = open_pool(core, [frag_file(path)], cluster_size=64 << 10)
                else:
                    core.bdev_create_file("fb", path)
                seen["open_s"] = time.monotonic() - t0
                seen["first"] = core.test_io(name, "read", 5 * 4096, 4096)[1]
                seen["ack"] = core.test_io(name, "write", 6 * 4096, 4096, block(3, 6))[0]
            except BaseException as e:  # noqa: B902 - reported by the main thread
                seen["error"] = e

        name = "cv" if pool else "fb"
        with Core(reactors=1) as core:
            t = threading.Thread(target=next_owner, args=(core,))
            t.start()
            time.sleep(0.5)
            # The dead owner's writes to blocks 5 and 6 (one cluster) land now,
            # then the kernel drops its reference to the file.
            for blk in (5, 6):
                late.seek(0)
                late.write(block(2, blk))
                os.pwrite(held, late, phys + (blk - 5) * 4096)
            os.close(held)
            held = -1
            t.join(25)
            try:
                assert not t.is_alive() and "error" not in seen, seen.get("error")
                assert seen["ack"] == 0
                now5 = core.test_io(name, "read", 5 * 4096, 4096)[1]
                now6 = core.test_io(name, "read", 6 * 4096, 4096)[1]
                wrong = []
                if seen["first"] != now5:
                    wrong.append(f"block 5 read {seen['first'][:32]!r} right after the open, then "
                                 f"{now5[:32]!r} with nobody writing it")
                if now6 != block(3, 6):
                    wrong.append(f"block 6, written and acknowledged by the next owner, holds the "
                                 f"dead owner's {now6[:32]!r}")
                assert not wrong, (f"the next owner opened {seen['open_s']:.3f} s after the kill, "
                                   f"before the dead owner's writes landed: " + "; ".join(wrong))
                assert now5 == block(2, 5) and seen["open_s"] >= 0.4, seen["open_s"]
            finally:
                if "pool" in seen:
                    seen["pool"].close()
    finally:
        if held >= 0:
            os.close(held)
