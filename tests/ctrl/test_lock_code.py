"""The I/O path's code is locked in memory (docs/architecture.md, Poll modes
and adaptive sleep): reclaim (here MADV_PAGEOUT, as DAMON's pageout or
memory.reclaim does to a quiet process's file pages) drops the core's code
pages before, and cannot after. Not in tests/unit: these start processes
(no such thing under qemu-user, the aarch64 lane) and AddressSanitizer makes
mlock a no-op (the sanitizer lane)."""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

# In a child: the core's code mapping, resident pages before and after a
# pageout, unlocked, then locked; one line of figures.
CHILD = textwrap.dedent("""
    import ctypes, mmap, os, sys, time
    from srrs.ffi.binding import Core
    ext = sys.modules["srrs.ffi._srrs"]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    MADV_PAGEOUT = 21
    real = os.path.realpath(ext.__file__)
    spans = []
    for line in open("/proc/self/maps"):
        f = line.split()
        if len(f) >= 6 and f[1].startswith("r-x") and os.path.realpath(f[5]) == real:
            a, e = (int(x, 16) for x in f[0].split("-"))
            spans.append((a, e))
    assert spans, "no code mapping of the core"

    def resident():
        n = tot = 0
        for a, e in spans:
            pages = (e - a) // mmap.PAGESIZE
            vec = ctypes.create_string_buffer(pages)
            assert libc.mincore(a, e - a, vec) == 0, ctypes.get_errno()
            n += sum(b & 1 for b in vec.raw)
            tot += pages
        return n, tot

    def pageout():
        # 0, or EINVAL where the range is locked (the kernel refuses it)
        for a, e in spans:
            if libc.madvise(a, e - a, MADV_PAGEOUT):
                return ctypes.get_errno()
        return 0

    with Core(reactors=1) as core:
        # a page still in another CPU's LRU batch, or just touched, is passed
        # over by one pageout: a few more, a moment apart, take the rest
        for _ in range(8):
            assert pageout() == 0
            before, tot = resident()
            if before < tot // 2:
                break
            time.sleep(0.05)
        lk = core.lock_code()
        assert pageout() in (0, 22)
        after, _ = resident()
        vmlck = next(int(x.split()[1]) for x in open("/proc/self/status")
                     if x.startswith("VmLck"))
        print(before, after, tot, lk["locked"], lk["wanted"], vmlck, lk.get("error", ""))
""")


def test_locked_code_survives_a_pageout():
    if os.geteuid() != 0:
        pytest.skip("MADV_PAGEOUT of a shared library's pages needs to own it or be root")
    # a copy of the core that only the child maps: a page another process
    # maps too (this one, the other lane's) is never paged out by madvise
    import srrs.ffi.binding  # noqa: F401

    tmp = tempfile.mkdtemp(prefix="srrs-lock.", dir="/var/tmp")  # a disk: tmpfs pages stay
    own = os.path.join(tmp, "_srrs_copy.so")
    shutil.copyfile(sys.modules["srrs.ffi._srrs"].__file__, own)
    fd = os.open(own, os.O_RDONLY)
    os.fsync(fd)  # clean pages: a dirty one waits for its writeback, resident
    os.close(fd)
    env = dict(os.environ, SRRS_EXT_PATH=str(own))
    try:
        r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                           timeout=60, env=env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert r.returncode == 0, r.stderr
    before, after, tot, locked, wanted, vmlck, *err = r.stdout.split()
    before, after, tot = int(before), int(after), int(tot)
    locked, wanted, vmlck = int(locked), int(wanted), int(vmlck)
    assert not err, err
    assert locked == wanted and locked >= tot * 4096, (locked, wanted, tot)
    assert vmlck * 1024 >= locked, (vmlck, locked)
    # unlocked, a pageout drops most of the code; locked, none of it. Where
    # the kernel keeps the unlocked pages anyway (another mapping of the file,
    # reclaim off for the cgroup) the test shows nothing either way: skipped
    if before >= tot // 2:
        pytest.skip(f"an unlocked pageout left {before} of {tot} code pages resident here:"
                    " the kernel does not page this code out, locked or not")
    assert after == tot, f"locked, {tot - after} of {tot} code pages were paged out"


def test_controller_locks_its_code_unless_told_not_to(tmp_path):
    from srrs.ctrl import launch as L

    def vmlck(pid):
        with open(f"/proc/{pid}/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("VmLck"))

    for lock, n in ((True, "on"), (False, "off")):
        c = L.Controller(f"{tmp_path}/{n}.toml", L.config(
            L.controller(f"lk-{n}", f"{tmp_path}/{n}.sock", lock_code=lock)), ready_timeout=60)
        try:
            kib = vmlck(c.pid)
            if lock:
                assert kib >= 1024, f"a controller locked only {kib} KiB"
            else:
                assert kib == 0, f"lock_code = false, yet {kib} KiB locked"
        finally:
            c.stop()
