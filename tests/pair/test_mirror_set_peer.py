"""srrs_mirror_link_set_peer (docs/architecture.md, Cluster, Replacing a
server): a link serving alone takes a new peer at run time, at a new address
and with either node index, and a full resync makes the new, empty replica
identical; refused while the link serves a peer."""

import time

import pytest

from srrs.ctrl.launch import free_ports
from srrs.ffi.binding import BenchOpts, SrrsError, check, lib

from .mirror_util import Side, make_pair, replica_diff, wait

B_ID, C_ID = 0xB0B, 0xC0C


def _write(side, seed):
    r = side.core.bench_bdev("v", BenchOpts(rw="randwrite", bs=4096, bs_max=65536, qd=8,
                                            time_s=0.3, seed=seed))
    assert r["errors"] == 0 and r["ios"] > 0, r


@pytest.mark.parametrize("new_node", [1, 0], ids=["survivor-stays-node0", "survivor-turns-node1"])
def test_a_solo_link_takes_a_new_peer_and_resyncs_it_full(tmp_path, new_node):
    a, b = make_pair(tmp_path, size=16 << 20)
    c = None
    try:
        a.mode("paired")
        b.mode("paired")
        wait(lambda: a.up() and b.up(), what="link up")
        _write(a, 1)
        # serving a peer: its stripe owners and copies depend on it
        with pytest.raises(SrrsError):
            check(lib.srrs_mirror_link_set_peer(a.link, b"127.0.0.1", b.lport, 0, 0))
        b.close()             # b is gone for good
        wait(lambda: not a.up(), what="link down")
        a.mode("solo")
        _write(a, 2)
        # the replacement: a fresh replica at another port, the pair's secret
        (pc,) = free_ports(1)
        c = Side(tmp_path, "c", new_node, pc, a.lport, 16 << 20, secret=a.secret, ident=C_ID)
        c.mode("fenced")
        time.sleep(0.3)
        assert not a.up()       # a still dials b's (dead) address, or accepts only as node 1
        for bad in ((b"", pc, 0), (b"127.0.0.1", 0, 0), (b"127.0.0.1", pc, 2)):
            with pytest.raises(SrrsError):
                check(lib.srrs_mirror_link_set_peer(a.link, *bad, C_ID))
        check(lib.srrs_mirror_link_set_peer(a.link, b"127.0.0.1", pc, 1 - new_node, C_ID))
        wait(lambda: a.up() and c.up(), what="link to the new peer")
        a.mode("resync_source")
        c.mode("resync_target")
        a.resync(full=True)
        c.resync(full=True)
        wait(lambda: a.info()["resync_done"] and c.info()["resync_done"], 20, "resync")
        a.mode("paired")
        c.mode("paired")
        _write(c, 3)            # writes from the new side are mirrored too
        _write(a, 4)
        assert replica_diff(a, c) == []
        assert a.info()["dirty_stripes"] == 0
    finally:
        for s in (a, b, c):
            if s is not None and s.link is not None:
                s.close()


def test_the_old_peer_holding_the_secret_is_refused_after_set_peer(tmp_path):
    """The survivor accepts (node 1) after the re-target; the replaced peer,
    which still holds the secret, dials it first: its HELLO names another
    controller, so it never takes the link, and the new peer does."""
    a, b = make_pair(tmp_path, size=16 << 20)
    x = c = None
    try:
        b.close()
        a.mode("solo")
        (pc,) = free_ports(1)
        check(lib.srrs_mirror_link_set_peer(a.link, b"127.0.0.1", pc, 1, C_ID))
        # the old peer, back as node 0 with the pair's secret and its own identity
        x = Side(tmp_path, "x", 0, b.lport, a.lport, 16 << 20, secret=a.secret, ident=B_ID)
        x.mode("fenced")
        wait(lambda: a.link_info()["auth_failures"] >= 2, what="the old peer refused")
        assert not a.up()
        x.close()
        c = Side(tmp_path, "c", 0, pc, a.lport, 16 << 20, secret=a.secret, ident=C_ID)
        c.mode("fenced")
        wait(lambda: a.up() and c.up(), what="link to the new peer")
    finally:
        for s in (a, b, x, c):
            if s is not None and s.link is not None:
                s.close()
