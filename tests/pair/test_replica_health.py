"""A pair whose replica file is truncated under it (two mirror bdevs over
loopback in one process, real file bdevs): a read through the side whose
replica lost the data fails with -EIO — the mirror never answers it with the
zeroes the file now holds — while the healthy side still serves the data."""

import errno
import os

from .mirror_util import make_pair, wait

MiB = 1 << 20


def test_truncated_replica_reads_fail_not_zeroes(tmp_path):
    a, b = make_pair(tmp_path, "file", size=16 * MiB)
    try:
        a.mode("paired")
        b.mode("paired")
        wait(lambda: a.up() and b.up(), what="link up")
        data = os.urandom(MiB)
        for k in range(8, 12):
            assert a.core.test_io("v", "write", k * MiB, MiB, data)[0] == 0
        os.truncate(tmp_path / "b.img", 4 * MiB)
        for k in range(8, 12):
            st, got = b.core.test_io("v", "read", k * MiB, MiB)
            assert st == -errno.EIO, (k, st, got[:16])
            assert a.core.test_io("v", "read", k * MiB, MiB) == (0, data)
    finally:
        a.close()
        b.close()
