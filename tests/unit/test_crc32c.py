"""CRC32C against the published check vectors (RFC 3720 B.4) in both implementations."""

import os

import pytest

from srrs.ffi.binding import crc32c, crc32c_sw, lib

VECTORS = [
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"", 0x0),
]


@pytest.mark.parametrize("data,want", VECTORS)
def test_vectors(data, want):
    assert crc32c(data) == want
    assert crc32c_sw(data) == want


def test_hw_matches_table_on_random_lengths_and_alignments():
    assert lib.srrs_crc32c_hw_available() in (0, 1)
    blob = os.urandom(70000)
    for start in range(0, 9):
        # 4079..4081, 8160..8161: the hardware path's three-lane blocks are 4080 bytes
        for n in (0, 1, 7, 8, 23, 24, 25, 4079, 4080, 4081, 4095, 4096, 8160, 8161, 65537):
            d = blob[start:start + n]
            assert crc32c(d) == crc32c_sw(d)


def test_chaining():
    a, b = os.urandom(1000), os.urandom(333)
    assert crc32c(b, crc32c(a)) == crc32c(a + b)
