"""Traps of the NVMe/TCP front door, with real controller processes:

* idle sockets must not lock hosts out: ~1,100 connections that never send
  an ICReq (from one address, then from many) with the controller at the
  common 1,024-descriptor limit; a real host still connects at once and does
  I/O, and the evictions are counted in nvmf_get_stats;
* a subsystem's default serial is derived from its NQN: unique, stable across
  restarts, the same on two controllers exporting one NQN (a pair)."""

import os
import re
import resource
import socket
import subprocess
import time

import pytest

from srrs.ctrl import launch

from . import wire

NQN = "nqn.2026-11.io.srrs:hs"
NQN2 = "nqn.2026-11.io.srrs:hs-other"


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Ctl(launch.Controller):
    """`srrs start` with, optionally, a lower descriptor limit; extra: more
    [nvmf] keys."""

    def __init__(self, tmp, name, port, nofile=None, extra=None):
        sock = str(tmp / f"{name}.sock")
        conf = launch.config(
            launch.controller(name, sock, reactors=2, poll_mode=None),
            bdevs=[launch.bdev("m0", "malloc", "64MiB", block_size=4096)],
            nvmf=launch.nvmf([f"127.0.0.1:{port}"],
                             [launch.subsystem(NQN, ["m0"]), launch.subsystem(NQN2)],
                             **(extra or {})))
        self.port = port
        pre = None
        if nofile:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

            def pre():
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
        super().__init__(tmp / f"{name}.toml", conf, sock=sock, preexec=pre)

    def stop(self):
        try:
            super().stop(20)
        except subprocess.TimeoutExpired:
            pass  # killed: what matters here is the port and socket free again
        if os.path.exists(self.sock):
            os.unlink(self.sock)

    def start(self, wait=True):
        if self.proc is not None and os.path.exists(self.sock):
            os.unlink(self.sock)
        super().start(wait)


def _idle(port, n, sources):
    """n TCP connections that never send a byte, spread over source addresses."""
    out = []
    for i in range(n):
        s = socket.socket()
        s.bind((sources[i % len(sources)], 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        out.append(s)
    return out


def _real_host(port):
    """Connect, enable, one I/O queue, a verified 4 KiB write and read: seconds taken."""
    t0 = time.monotonic()
    a, cntlid = wire.admin_session("127.0.0.1", port, NQN)
    io = wire.io_session("127.0.0.1", port, NQN, cntlid)
    data = os.urandom(4096)
    st, *_ = io.cmd(wire.sqe(0x01, io.next_cid(), 1, cdw10=7, sgl_len=4096, sgl_type=0x01), data)
    assert st == 0, hex(st)
    st, _, _, back = io.cmd(wire.sqe(0x02, io.next_cid(), 1, cdw10=7, sgl_len=4096),
                            read_len=4096)
    assert st == 0 and back == data
    took = time.monotonic() - t0
    io.close()
    a.close()
    return took


@pytest.fixture
def nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192)
    assert want >= 3000, f"the test needs ~2,500 descriptors; the hard limit is {hard}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_idle_connections_do_not_lock_out_a_host(tmp_path, nofile):
    """Before: every accepted socket held ~1.1 MiB and a descriptor for 10 s,
    so 1,100 idle ones from one address used up a 1,024-descriptor controller
    and a real host waited for those to time out. Now a source keeps at most
    128 connections without a Connect (512 in all), the oldest goes first."""
    c = Ctl(tmp_path, "hs", _free_port(), nofile=1024)
    socks = []
    try:
        slow = wire.Conn("127.0.0.1", c.port)  # mid-handshake: ICReq sent, Connect later
        slow.icreq()
        socks += _idle(c.port, 1100, ["127.0.0.1"])
        # idle sockets are evicted before a connection that has spoken
        st, dw0, _, _ = slow.connect(NQN)
        assert st == 0, hex(st)
        slow.close()
        took = _real_host(c.port)
        assert took < 2.0, f"a real host needed {took:.1f} s behind 1,100 idle sockets"
        st = c.rpc("nvmf_get_stats")
        assert st["evicted"] + st["handshake_timeouts"] >= 1100 - 128 - 16, st
        assert st["handshaking"] <= 128, st
        # many sources: the total limit holds
        socks += _idle(c.port, 1100, [f"127.0.0.{i}" for i in range(2, 13)])
        took = _real_host(c.port)
        assert took < 2.0, f"a real host needed {took:.1f} s behind idle sockets of 11 sources"
        st = c.rpc("nvmf_get_stats")
        assert st["handshaking"] <= 512, st
        assert st["evicted"] + st["handshake_timeouts"] >= 2200 - 512 - 32, st
    finally:
        for s in socks:
            s.close()
        c.stop()


def test_handshake_deadline(tmp_path):
    """A socket without a Connect is closed after [nvmf] handshake_timeout_ms
    (default 5 s, was a fixed 10 s), and counted."""
    c = Ctl(tmp_path, "dl", _free_port(), extra={"handshake_timeout_ms": 1000})
    socks = []
    try:
        socks = _idle(c.port, 5, ["127.0.0.1"])
        ic = wire.Conn("127.0.0.1", c.port)  # ICReq but no Connect: still a handshake
        ic.icreq()
        socks.append(ic.s)
        end = time.monotonic() + 5
        while c.rpc("nvmf_get_stats")["handshake_timeouts"] < 6 and time.monotonic() < end:
            time.sleep(0.1)
        st = c.rpc("nvmf_get_stats")
        assert st["handshake_timeouts"] == 6 and st["handshaking"] == 0, st
        assert _real_host(c.port) < 2.0  # a host that does connect is not affected
    finally:
        for s in socks:
            s.close()
        c.stop()


def _serials(port):
    out = {}
    for nqn in (NQN, NQN2):
        a, _ = wire.admin_session("127.0.0.1", port, nqn)
        st, _, _, d = a.identify(1)
        assert st == 0
        out[nqn] = d[4:24].decode().strip()
        a.close()
    return out


def test_default_serials_unique_stable_and_shared_by_a_pair(tmp_path):
    """Before: every subsystem without `serial` was SRRS0000 (hosts key device
    identity and multipath on it)."""
    a = Ctl(tmp_path, "a", _free_port())
    b = Ctl(tmp_path, "b", _free_port())
    try:
        sa, sb = _serials(a.port), _serials(b.port)
        assert sa[NQN] != sa[NQN2], sa
        assert all(s.startswith("SRRS") and len(s) == 20 and s != "SRRS0000" for s in sa.values())
        assert sa == sb  # the two controllers of a pair present one subsystem
        a.stop()
        a.start()
        assert _serials(a.port) == sa  # stable across a restart
        # created over RPC: derived too, and not written to a saved config
        a.rpc("nvmf_subsystem_create", {"nqn": "nqn.2026-11.io.srrs:hs-rpc"})
        subs = {s["nqn"]: s for s in a.rpc("nvmf_get_subsystems")}
        assert subs["nqn.2026-11.io.srrs:hs-rpc"]["serial"] not in sa.values()
        a.rpc("save_config", {"path": str(tmp_path / "saved.toml")})
        saved = (tmp_path / "saved.toml").read_text()
        assert not re.search(r"^serial\s*=", saved, re.M), saved
    finally:
        a.stop()
        b.stop()

