"""A pair whose replica file is truncated under it (two mirror bdevs over
loopback in one process, real file bdevs): the mirror never answers a read
with the zeroes the file now holds. While the pair is PAIRED, a read through
the side whose replica lost the data is served by the peer's replica (right
data, success, counted in local_read_errors); once that side is alone (SOLO,
no peer to ask) the read fails with -EIO. Writes are not acknowledged while
one replica cannot take them."""

import errno
import os

from .mirror_util import make_pair, wait

MiB = 1 << 20


def test_truncated_replica_reads_served_by_peer_never_zeroes(tmp_path):
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
            assert b.core.test_io("v", "read", k * MiB, MiB) == (0, data), k
            assert a.core.test_io("v", "read", k * MiB, MiB) == (0, data), k
        assert b.info()["local_read_errors"] >= 4 and a.info()["local_read_errors"] == 0
        evs = [e for e in b.core.events() if e["type"] == "mirror_read_error"]
        assert evs and evs[0]["obj"] == "v" and "served by the peer" in evs[0]["msg"]
        # b's replica failed for good (the file bdev noticed its end): writes
        # through either side fail, whichever side orders the stripe.
        new = os.urandom(MiB)
        for s in (a, b):
            for k in (8, 9):
                assert s.core.test_io("v", "write", k * MiB, MiB, new)[0] == -errno.EIO
        assert a.core.test_io("v", "read", 0, MiB)[0] == 0
        # Alone, b has nobody to ask: an error, never zeroes.
        b.mode("solo")
        for k in range(10, 12):
            st, got = b.core.test_io("v", "read", k * MiB, MiB)
            assert st == -errno.EIO, (k, st, got[:16])
    finally:
        a.close()
        b.close()
