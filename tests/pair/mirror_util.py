"""Two mirror bdevs over loopback in one process (two Cores), driven by hand."""

from __future__ import annotations

import contextlib
import os
import time

from srrs.ctrl.launch import free_ports
from srrs.ffi import binding
from srrs.ffi.binding import Core, check, ffi, lib

MODES = binding.MIRROR_MODES  # enum srrs_mirror_mode (ffi/mirror.h)


class Side:
    def __init__(self, tmp, name, node, lport, pport, size=64 << 20, kind="malloc", reactors=1,
                 secret=b"", allow=(), ident=0, sole_orderer=0, hold_ms=0):
        self.name = name
        self.hold_ms = hold_ms      # single-path host I/O held while we cannot serve
        self.sole_orderer = sole_orderer   # 0: split by stripe; 1 + n: node n orders all
        self.ident = ident     # our identity in HELLO (0: none)
        self.secret = secret   # b"": no authentication
        self.allow = allow     # source addresses accepted (): any
        self.core = Core(reactors=reactors)
        if kind == "malloc":
            self.core.bdev_create_malloc("r0", size)
        else:
            self.core.bdev_create_file("r0", str(tmp / f"{name}.img"), size)
        self.size = size
        self.bitmap = str(tmp / f"{name}.bitmap")
        self.node, self.lport, self.pport = node, lport, pport
        self.link = None
        self.open_link()

    def open_link(self):
        o = ffi.new("struct srrs_mirror_link_opts *")
        o.reactor = 0
        o.node = self.node
        o.listen_host = b"127.0.0.1"
        o.listen_port = self.lport
        o.peer_host = b"127.0.0.1"
        o.peer_port = self.pport
        o.ping_ms = 20
        o.timeout_ms = 2000
        o.self_id = self.ident
        o.sole_orderer = self.sole_orderer
        o.hold_ms = self.hold_ms
        if self.secret:
            o.secret = self.secret
            o.secret_len = len(self.secret)
        for i, a in enumerate(self.allow):
            o.allow[i] = a.encode()
        self._pl = ffi.new("struct srrs_mirror_link **")
        check(lib.srrs_mirror_link_create(self.core.ptr, o, self._pl), "link")
        self.link = self._pl[0]
        check(lib.srrs_mirror_create(self.link, b"v", b"r0", 0, 1 << 20, self.bitmap.encode()),
              "mirror")

    def close_link(self):
        self.core.bdev_delete("v")
        check(lib.srrs_mirror_link_destroy(self._pl))
        self.link = None

    def mode(self, m, lease_s=30.0):
        dl = int((time.monotonic() + lease_s) * 1e9) if m == "solo" else 0
        check(lib.srrs_mirror_set_mode(self.link, MODES[m], dl))

    def resync(self, full=False):
        check(lib.srrs_mirror_resync_start(self.link, int(full)))

    def up(self):
        li = ffi.new("struct srrs_mirror_link_info *")
        lib.srrs_mirror_link_get_info(self.link, li)
        return bool(li.up)

    def link_info(self):
        li = ffi.new("struct srrs_mirror_link_info *")
        lib.srrs_mirror_link_get_info(self.link, li)
        return {k: getattr(li, k) for k in ("up", "mode", "connects", "crc_errors",
                                            "proto_errors", "held_writes",
                                            "read_lease_left_us", "grant_left_us", "mac_errors",
                                            "auth_failures", "rx_frames", "fwd_bounced",
                                            "held_ios", "hold_retries", "hold_expired")}

    def info(self):
        mi = ffi.new("struct srrs_mirror_info *")
        check(lib.srrs_mirror_get_info(self.link, b"v", mi))
        return {k: getattr(mi, k) for k in ("dirty_stripes", "resync_left", "resync_done",
                                            "resync_active", "resync_bytes", "remote_reads",
                                            "forwarded", "replicated", "fenced_ios",
                                            "local_read_errors")}

    def drop(self):
        lib.srrs_mirror_test_drop(self.link)

    def dump(self):
        lib.srrs_mirror_test_dump(self.link)

    def close(self):
        if self.link is not None:
            self.close_link()
        self.core.close()


# The links of these tests authenticate (one secret per pair), as a pair's do.
def make_pair(tmp, kind="malloc", size=64 << 20, reactors=1, secret=None, sole_orderer=(0, 0),
              hold_ms=(0, 0)):
    if secret is None:
        secret = os.urandom(32)
    pa, pb = free_ports(2)
    a = Side(tmp, "a", 0, pa, pb, size, kind, reactors, secret, sole_orderer=sole_orderer[0],
             hold_ms=hold_ms[0])
    b = Side(tmp, "b", 1, pb, pa, size, kind, reactors, secret, sole_orderer=sole_orderer[1],
             hold_ms=hold_ms[1])
    return a, b


def wait(pred, timeout=10.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def replica_diff(a, b, chunk=1 << 20):
    out = []
    for off in range(0, a.size, chunk):
        s1, d1 = a.core.test_io("r0", "read", off, chunk)
        s2, d2 = b.core.test_io("r0", "read", off, chunk)
        assert s1 == 0 and s2 == 0
        if d1 != d2:
            out.append(off)
    return out


@contextlib.contextmanager
def paired(tmp, kind="malloc"):
    """Two sides of make_pair, both PAIRED with the link up; closed after."""
    a, b = make_pair(tmp, kind)
    try:
        a.mode("paired")
        b.mode("paired")
        wait(lambda: a.up() and b.up(), what="link up")
        yield a, b
    finally:
        a.close()
        b.close()
