"""Inflight resume without a guest: the inflight region and rings are left as
a back end killed mid-I/O would leave them; a fresh device given that region
(SET_INFLIGHT_FD) must resubmit the in-flight requests in counter order,
fix up the last batch, and not fetch them from the avail ring again."""

import mmap
import os
import struct
import time

import pytest

from srrs.ffi.binding import lib
from srrs.vhost.client import WANT_FEATURES, VhostClient
from srrs.vhost.proto import F_INDIRECT

QS = 16
DESC = struct.Struct("<QIHH")
NEXT, WRITE = 1, 2


def _queue_size():
    return lib.srrs_vhost_inflight_size(1, QS)


def _post_writes(cl, writes):
    """writes: [(head_slot, sector, byte)] as OUT requests at heads 3*slot.. (direct)."""
    s0 = cl.scratch_gpa
    descs = [DESC.pack(0, 0, 0, 0)] * QS
    scratch = bytearray(64 * 1024)
    heads = []
    for slot, sector, byte in writes:
        hdr, status, data = s0 + slot * 64, s0 + 4096 + slot, s0 + 8192 + slot * 4096
        struct.pack_into("<IIQ", scratch, slot * 64, 1, 0, sector)
        scratch[4096 + slot] = 0xFF
        scratch[8192 + slot * 4096: 8192 + (slot + 1) * 4096] = bytes([byte]) * 4096
        h = 3 * slot
        descs[h] = DESC.pack(hdr, 16, NEXT, h + 1)
        descs[h + 1] = DESC.pack(data, 4096, NEXT, h + 2)
        descs[h + 2] = DESC.pack(status, 1, WRITE, 0)
        heads.append(h)
    cl.post_raw(0, b"".join(descs), heads, None, bytes(scratch))
    return heads


def _inflight_region(entries, used_idx=0, last_batch_head=0):
    """entries: {head: counter} marked in flight."""
    size = _queue_size()
    fd = os.memfd_create("test-inflight")
    os.ftruncate(fd, size)
    with mmap.mmap(fd, size) as m:
        struct.pack_into("<QHHHH", m, 0, 0, 1, QS, last_batch_head, used_idx)
        for head, counter in entries.items():
            struct.pack_into("<B5xHQ", m, 16 + 16 * head, 1, 0, counter)
    return fd


@pytest.mark.parametrize("fixup", [False, True], ids=["clean", "last-batch-fixup"])
def test_resume_in_counter_order(svc, tmp_path, fixup):
    svc.core.bdev_create_malloc("i0", 16 << 20, 4096)
    sock = str(tmp_path / "i.sock")
    dev = svc.create("i", sock, "i0")
    feats = WANT_FEATURES & ~(1 << F_INDIRECT)
    cl = VhostClient(sock, queue_size=QS, max_inflight=4, max_io=4096, features=feats)
    # Three writes the dead back end had taken: slot 0 and 1 hit sector 0 (slot 1
    # was taken first: counter 1), slot 2 writes sector 8.
    heads = _post_writes(cl, [(0, 0, 0xAA), (1, 0, 0xBB), (2, 8, 0xCC)])
    entries = {heads[0]: 2, heads[1]: 1, heads[2]: 3}
    fd = _inflight_region(entries)
    try:
        cl.inflight_fd = fd
        cl.use_inflight = True
        cl.keep_inflight = True
        if fixup:
            # It had published slot 2's completion (used->idx = 1) but died before
            # clearing its bit: the region still says used_idx 0.
            _mark_used(cl, heads[2])
            with mmap.mmap(fd, _queue_size()) as m:
                struct.pack_into("<H", m, 12, heads[2])   # last_batch_head
        cl.connect()
        end = time.time() + 5
        while cl.used_idx() != 3 and time.time() < end:
            time.sleep(0.001)
        assert cl.used_idx() == 3
        q = dev.info()["queues"][0]
        assert q["resubmitted"] == (2 if fixup else 3), q
        assert q["errors"] == 0
        # counter order: slot 1 (0xBB) then slot 0 (0xAA) on sector 0
        assert cl.read(0, 4096) == b"\xaa" * 4096
        assert cl.read(8 * 512, 4096) == (bytes(4096) if fixup else b"\xcc" * 4096)
        # nothing is left marked in flight
        with mmap.mmap(fd, _queue_size()) as m:
            assert all(m[16 + 16 * h] == 0 for h in range(QS))
    finally:
        cl.close()
        os.close(fd)


def _mark_used(cl, head):
    """Write one used entry for head and used->idx = 1, as the dead back end did."""
    from srrs.ffi.binding import ffi
    ring = ffi.new("struct srrs_vhost_client_ring *")
    lib.srrs_vhost_client_ring(cl.ptr, 0, ring)
    used = ffi.cast("uint8_t *", ring.used)
    ffi.memmove(used + 4, struct.pack("<II", head, 1), 8)
    ffi.memmove(used + 2, struct.pack("<H", 1), 2)
