"""Metadata corruption: one bad copy -> the pool opens from the other, says so
and rewrites it; every copy bad -> it refuses to open with a clear error and
serves nothing."""

import os
import struct

import pytest

from srrs.ffi.binding import Core, SrrsError

from .util import MiB, frag_file, open_pool

MD_AREA = 8192
SLOT = 8192


def _md_slots(path, kind=None):
    """(slot, kind, seq) of every metadata slot whose copy A holds a page."""
    out = []
    with open(path, "rb") as f:
        f.seek(MD_AREA)
        area = f.read(256 * SLOT)
    for s in range(len(area) // SLOT):
        magic, _crc, seq = struct.unpack_from("<IIQ", area, s * SLOT)
        if magic == 0x444D5253:
            k = struct.unpack_from("<I", area, s * SLOT + 48)[0]
            if kind is None or k == kind:
                out.append((s, k, seq))
    return out


def _flip(path, off, n=4):
    with open(path, "r+b") as f:
        f.seek(off)
        b = bytearray(f.read(n))
        f.seek(off)
        f.write(bytes(x ^ 0x5A for x in b))


def _make(tmp_path):
    frag = tmp_path / "f.img"
    data = os.urandom(2 * MiB)
    with Core(reactors=1) as core:
        pool = open_pool(core, [frag_file(frag, 128 * MiB)])
        pool.volume_create("v", 32 * MiB)
        assert core.test_io("v", "write", 5 * MiB, MiB, data[:MiB])[0] == 0
        assert core.test_io("v", "write", 20 * MiB, MiB, data[MiB:])[0] == 0
        pool.close()
    return frag, data


def _check_data(core, data):
    assert core.test_io("v", "read", 5 * MiB, MiB)[1] == data[:MiB]
    assert core.test_io("v", "read", 20 * MiB, MiB)[1] == data[MiB:]


def test_one_bad_copy_opens_from_the_other_and_says_so(tmp_path):
    frag, data = _make(tmp_path)
    (slot, kind, seq), = _md_slots(frag, kind=1)
    _flip(frag, MD_AREA + slot * SLOT + 300)          # the volume page, copy A
    _flip(frag, 200)                                   # the superblock, copy A
    with Core(reactors=1) as core:
        pool = open_pool(core, [frag_file(frag)])
        msgs = "\n".join(pool.messages())
        assert f"metadata slot {slot}: copy A failed its checksum; opened from copy B" in msgs, msgs
        assert "superblock copy A is invalid; opened from copy B" in msgs, msgs
        assert pool.info()["repaired"] >= 1
        _check_data(core, data)
        pool.close()
    with Core(reactors=1) as core:  # repaired: the next open is clean
        pool = open_pool(core, [frag_file(frag)])
        assert pool.messages() == []
        _check_data(core, data)
        pool.close()
    # Now copy B: A (rewritten) serves.
    _flip(frag, MD_AREA + slot * SLOT + 4096 + 1000)
    with Core(reactors=1) as core:
        pool = open_pool(core, [frag_file(frag)])
        assert "copy B failed its checksum; opened from copy A" in "\n".join(pool.messages())
        _check_data(core, data)
        pool.close()


def test_all_copies_bad_refuses_to_open(tmp_path):
    frag, _ = _make(tmp_path)
    (slot, _, _), = _md_slots(frag, kind=1)
    _flip(frag, MD_AREA + slot * SLOT + 300)
    _flip(frag, MD_AREA + slot * SLOT + 4096 + 300)
    with Core(reactors=1) as core:
        with pytest.raises(SrrsError, match=rf"f.img metadata slot {slot}: both copies are corrupt; "
                                            r"refusing to open the pool"):
            open_pool(core, [frag_file(frag)])
        assert core.bdev_list() == [], "a refused pool serves nothing"


def test_all_superblock_copies_bad_refuses_to_open(tmp_path):
    frag, _ = _make(tmp_path)
    _flip(frag, 200)
    _flip(frag, 4096 + 200)
    with Core(reactors=1) as core:
        with pytest.raises(SrrsError, match="f.img: both superblock copies are corrupt; refusing"):
            open_pool(core, [frag_file(frag)])
        assert core.bdev_list() == []
