"""The CPU's CRC32C path (SSE4.2 on x86-64, the ARMv8 CRC instructions on
aarch64, which CI runs under qemu-aarch64: ci/arm64) against the portable
table and against one pinned digest, on the same vectors on every
architecture: a value the x86 path and the table agreed on is what the arm
path must give too."""

import os
import platform
import random
import struct

from srrs.ffi.binding import crc32c, crc32c_sw, lib

# Offsets 0..8 (every alignment of the 8-byte steps) times lengths around each
# path's boundaries: the 8-byte steps, the three-lane blocks (3 x 1360 = 4080
# bytes) and their multiples, with tails of every size below 8.
LENGTHS = (0, 1, 3, 7, 8, 9, 15, 16, 63, 64, 65, 511, 4079, 4080, 4081, 4087, 4095, 4096, 8160,
           8161, 8167, 12240, 12247, 65536, 65543)
STARTS = range(9)
# crc32c_sw over the little-endian CRCs of every (start, length) above, in
# order: computed with the table and the SSE4.2 path of an x86-64 machine.
DIGEST = 0x2BD9A98B


def _vectors():
    blob = random.Random(16).randbytes(max(LENGTHS) + max(STARTS))
    for s in STARTS:
        for n in LENGTHS:
            yield blob[s:s + n]


def test_cpu_path_matches_table_and_pinned_digest():
    if os.environ.get("CI") == "true" and platform.machine() in ("x86_64", "aarch64"):
        # CI's CPUs (and qemu-aarch64's default one) have the instructions: the
        # CPU path must be the one checked here, not the table twice
        assert lib.srrs_crc32c_hw_available() == 1
    hw, sw = [], []
    for d in _vectors():
        hw.append(crc32c(d))
        sw.append(crc32c_sw(d))
    assert hw == sw
    packed = struct.pack(f"<{len(hw)}I", *hw)
    assert crc32c_sw(packed) == DIGEST, f"{platform.machine()}: digest {crc32c_sw(packed):#010x}"


def test_cpu_path_chains_across_lane_blocks():
    blob = random.Random(3).randbytes(3 * 4080 + 11)
    for cut in (1, 7, 4080, 4081, 8163):
        assert crc32c(blob[cut:], crc32c(blob[:cut])) == crc32c_sw(blob)
