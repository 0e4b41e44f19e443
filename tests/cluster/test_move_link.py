"""A volume move's link and mirrors (ctrl/cluster_move.py _Link) driven by hand:
two Cores in one process over loopback, as the tee and the target set them up
(docs/architecture.md, Volume moves, steps 3-4)."""

import os
import secrets
import time
import types

from srrs.ctrl import cluster_move
from srrs.ctrl.launch import free_ports
from srrs.ffi.binding import Core

MiB = 1 << 20


def _side(tmp_path, name, u, size):
    core = Core(reactors=1)
    core.bdev_create_file("c-" + u, str(tmp_path / f"{name}.img"), size)
    return types.SimpleNamespace(core=core)


def _wait(fn, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if fn():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s")


def test_copy_starts_when_the_tee_sent_its_bitmap_before_the_target_armed(tmp_path):
    """Seen in tests/cluster/test_elastic.py under load: the target's link
    listens from its creation, so the tee connected, went resync_source and
    sent its dirty bitmap before the target had entered resync_target; the
    target ignored it, and neither side sent another. The copy never started,
    with the link up and the tee holding its hosts' writes (their I/O timed
    out) for 5 minutes. Arming the target now asks for the tee's bitmap."""
    u, size, cs = "x", 64 * MiB, MiB
    port, = free_ports(1)
    secret = secrets.token_hex(32)
    a, b = _side(tmp_path, "tee", u, size), _side(tmp_path, "target", u, size)
    data = os.urandom(cs)
    tee = tgt = None
    try:
        for off in (0, 17 * cs, 40 * cs):   # what the tee's replica holds
            assert a.core.test_io("c-" + u, "write", off, cs, data)[0] == 0
        tee = cluster_move._Link(a, u, 1, 0, ("127.0.0.1", 0), ("127.0.0.1", port), secret, cs,
                                 str(tmp_path / "tee.bitmap"))
        tee.set_mode("solo")
        _wait(lambda: tee.info()["mode"] == "solo", 5, "tee solo")
        bits = bytearray(size // cs // 8)
        for c in (0, 17, 40):
            bits[c // 8] |= 1 << (c % 8)
        assert tee.mark(bytes(bits)) == 3
        # the target's link exists (it listens) but its mode is not set yet
        tgt = cluster_move._Link(b, u, 1, 1, ("127.0.0.1", port), ("127.0.0.1", 1), secret, cs,
                                 str(tmp_path / "target.bitmap"))
        _wait(lambda: tee.info()["up"], 10, "link up")
        tee.set_mode("resync_source")       # what the tee does once the link is up
        tee.resync()
        time.sleep(0.5)                     # its bitmap reaches a side not in a resync mode
        assert not tee.info()["active"] and not tee.info()["done"]
        tgt.arm_target()
        _wait(lambda: tee.info()["done"], 10, "the copy")
        for off in (0, 17 * cs, 40 * cs):
            assert b.core.test_io("c-" + u, "read", off, cs)[1] == data
        assert b.core.test_io("c-" + u, "read", cs, cs)[1] == bytes(cs)
    finally:
        for link in (tee, tgt):
            if link is not None:
                link.close()
        a.core.close()
        b.core.close()
