"""Read leases in the pair: a PAIRED replica answers reads only while its peer
grants it a read lease, and a controller that lost its peer acknowledges
nothing alone until the lease it granted has run out. The state machine with
a fake clock, then the C mirror through cffi (two cores over loopback)."""

import errno
import time

import pytest

from srrs.ctrl import ha
from srrs.ctrl.ha import FENCED, PAIRED, SOLO

from .mirror_util import MODES, paired, wait
from .sim import Sim

T = ha.Timing()


# ---- ha.step, fake clock ----------------------------------------------------------

def _paired_then_peer_lost(sim):
    sim.run(1.0)
    assert sim.roles() == {"a": PAIRED, "b": PAIRED}
    sim.kill("b")
    a = sim.nodes["a"]
    while a.state.role == PAIRED:
        sim.tick()
    return a, sim.t  # the step that left PAIRED


def test_solo_waits_for_the_read_lease_it_granted():
    sim = Sim()
    a, left = _paired_then_peer_lost(sim)
    assert a.state.role == FENCED
    assert a.state.peer_read_until == pytest.approx(left + T.read_lease_end_s)
    solo_at = None
    while a.state.role != SOLO:
        sim.tick()
        assert sim.t - left < 3
    solo_at = sim.t
    assert solo_at >= left + T.read_lease_end_s
    # the lease came from the witness long before (one round trip): it was held
    granted = [t for t, n, x in sim.log if n == "a" and isinstance(x, ha.SetMirror)
               and x.mode == "solo"]
    assert granted and min(granted) >= left + T.read_lease_end_s


def test_lease_granted_before_read_lease_end_is_held_not_used():
    s, _ = ha.initial("a", "b", 0.0, T, ha.Gen(3, "a"), ha.Gen(3, "a"))
    s = ha.replace(s, role=PAIRED, peer_seen=0.0, peer_loops_at=0.0, peer_sees_us=True,
                   mirror_up=True, peer_data_gen=ha.Gen(3, "a"), peer_base_gen=ha.Gen(3, "a"),
                   peer_read_until=0.0)
    now = 2.0  # peer silent past its timeout
    s, acts = ha.step(s, ha.Tick(), now)
    assert s.role == FENCED and s.peer_read_until == pytest.approx(now + T.read_lease_end_s)
    req = next(a for a in acts if isinstance(a, ha.RequestLease))
    assert ha.SetMirror("pending") in acts and ha.SetAna(ha.ANA_CHANGE) in acts
    s, acts = ha.step(s, ha.LeaseGranted(req.sent_at, T.lease_s), now + 0.01)
    assert s.role == FENCED and acts == ()           # held: no solo, nothing changes
    assert ha.lease_valid(s, now + 0.01)
    s, acts = ha.step(s, ha.Tick(), now + 0.3)
    assert s.role == FENCED and not any(isinstance(a, ha.RequestLease) for a in acts)
    s, acts = ha.step(s, ha.Tick(), now + T.read_lease_end_s + 0.001)
    assert s.role == SOLO
    assert ha.SetMirror("solo", s.lease_until) in acts and ha.SetAna(ha.ANA_OPTIMIZED) in acts


def test_start_assumes_a_grant_of_the_previous_run():
    s, _ = ha.initial("a", "b", 10.0, T)
    assert s.peer_read_until == pytest.approx(10.0 + T.read_lease_end_s)


def test_held_lease_that_runs_out_is_asked_for_again():
    t = ha.Timing(read_lease_s=2.0, lease_s=1.0)
    s, _ = ha.initial("a", "b", 0.0, t, ha.Gen(3, "a"), ha.Gen(3, "a"))
    s = ha.replace(s, role=PAIRED, peer_seen=0.0, peer_loops_at=0.0, peer_sees_us=True,
                   mirror_up=True, peer_read_until=0.0)
    s, acts = ha.step(s, ha.Tick(), 2.0)
    req = next(a for a in acts if isinstance(a, ha.RequestLease))
    s, _ = ha.step(s, ha.LeaseGranted(req.sent_at, 1.0), 2.01)
    assert s.role == FENCED and s.lease_until > 2.01
    s, acts = ha.step(s, ha.Tick(), 3.5)              # the witness lease ended first
    assert s.role == FENCED
    assert any(isinstance(a, ha.RequestLease) for a in acts)


def test_random_partitions_never_solo_inside_a_granted_read_lease():
    import random

    for seed in range(20):
        rnd = random.Random(seed)
        sim = Sim()
        left = {}
        for _ in range(300):
            if rnd.random() < 0.03:
                sim.cut ^= {frozenset("ab")}
            before = {n: x.state.role for n, x in sim.nodes.items()}
            sim.tick()
            for n, x in sim.nodes.items():
                if ha.granting(before[n]) and not ha.granting(x.state.role):
                    left[n] = sim.t
                if x.state.role == SOLO and before[n] != SOLO and n in left:
                    assert sim.t >= left[n] + T.read_lease_end_s - 1e-9, (seed, n)


# ---- the C mirror -----------------------------------------------------------------

@pytest.fixture
def pair(tmp_path):
    with paired(tmp_path) as ab:
        yield ab


def _lease_left_us(side):
    from srrs.ffi.binding import ffi, lib

    li = ffi.new("struct srrs_mirror_link_info *")
    lib.srrs_mirror_link_get_info(side.link, li)
    return li.read_lease_left_us, li.grant_left_us, li.mode


def test_paired_reads_need_the_peers_grant(pair):
    a, b = pair
    old = b"o" * 4096
    assert a.core.test_io("v", "write", 0, 4096, old)[0] == 0
    assert a.core.test_io("v", "read", 0, 4096) == (0, old)
    wait(lambda: _lease_left_us(a)[0] > 0 and _lease_left_us(b)[1] > 0, what="leases")
    # b leaves the pair (its state machine fenced it): it grants nothing any more
    b.mode("fenced")
    time.sleep(0.6)                                    # > L (500 ms): a's lease is over
    t0 = time.monotonic()
    st, _ = a.core.test_io("v", "read", 0, 4096)
    assert st == -errno.ENOTCONN                       # an ANA path error, never stale data
    assert time.monotonic() - t0 < 1.5                 # waited one lease length at most
    b.mode("paired")                                   # grants again: reads are served
    assert a.core.test_io("v", "read", 0, 4096) == (0, old)


def test_solo_acknowledges_only_after_the_granted_read_lease(pair):
    a, b = pair
    wait(lambda: _lease_left_us(b)[1] > 300_000, what="b grants a read lease")
    t0 = time.monotonic()
    granted_left = _lease_left_us(b)[1] / 1e6 - 0.01
    b.mode("solo")                                     # straight from granting
    assert _lease_left_us(b)[2] == 5                   # pending: a may still read alone
    new = b"n" * 4096
    assert b.core.test_io("v", "write", 1 << 20, 4096, new)[0] == 0
    took = time.monotonic() - t0
    assert took >= granted_left, took                  # L (+margin) after the last grant
    assert _lease_left_us(b)[2] == 2                   # solo now
    # a never granted back after b stopped: it cannot serve the old data
    assert a.core.test_io("v", "read", 1 << 20, 4096)[0] == -errno.ENOTCONN


@pytest.mark.parametrize("then", ["solo", "fenced"])
def test_read_without_lease_and_link_waits_for_the_mode(pair, then):
    """Peer gone (link down): like the writes, a read is held until the mode
    says what the loss means -- so a single-path host (vhost) rides through a
    failover: served in solo, a path error when fenced."""
    import threading

    a, b = pair
    data = b"d" * 4096
    assert a.core.test_io("v", "write", 0, 4096, data)[0] == 0
    a.drop()
    wait(lambda: not a.up(), what="link down")
    wait(lambda: _lease_left_us(a)[0] <= 0 and _lease_left_us(a)[1] <= 0, what="leases over")
    res = {}
    t = threading.Thread(target=lambda: res.setdefault("r", a.core.test_io("v", "read", 0, 4096)))
    t.start()
    t.join(0.8)
    assert t.is_alive(), f"answered without a lease: {res}"
    a.mode(then)
    t.join(5)
    assert not t.is_alive()
    assert res["r"] == ((0, data) if then == "solo" else (-errno.ENOTCONN, bytes(4096)))


def test_rejoined_peer_gets_time_for_its_first_grant(pair):
    """A peer that just restarted talks before its control plane joins the
    pair (a restart under load takes longer than L): the current side, back
    in a resync as source, holds its reads for the peer's first grant instead
    of failing them after L -- a single-path host (vhost) saw I/O errors there
    (srrs demo --chaos). Nothing is read without the grant meanwhile."""
    import threading

    a, b = pair
    data = b"r" * 4096
    assert a.core.test_io("v", "write", 0, 4096, data)[0] == 0
    b.mode("fenced")                                   # b "restarts": it grants nothing
    a.mode("solo")
    wait(lambda: _lease_left_us(a)[2] == MODES["solo"], what="a solo")
    # b's last grant to a may outlive a's to b (which a's solo waited out): a
    # read under it is served, rightly, and would end the test early (CI)
    wait(lambda: _lease_left_us(a)[0] <= 0, what="b's last grant to a over")
    a.mode("resync_source")                            # b is heard again: a rejoins it
    res = {}
    t = threading.Thread(target=lambda: res.setdefault("r", a.core.test_io("v", "read", 0, 4096)))
    t.start()
    t.join(1.5)                                        # 3 L: the old rule failed it at L
    assert t.is_alive(), f"answered without the peer's grant: {res}"
    b.mode("resync_target")                            # b's control plane joins: it grants
    t.join(5)
    assert not t.is_alive()
    assert res["r"] == (0, data)
    assert a.link_info()["read_lease_left_us"] > 0


def test_rejoined_peer_that_never_grants_fails_reads_in_the_end(pair):
    """...but a peer that talks and never grants is not waited for forever."""
    a, b = pair
    b.mode("fenced")
    a.mode("solo")
    wait(lambda: _lease_left_us(a)[2] == MODES["solo"], what="a solo")
    # b's last grant to a may outlive a's to b (which a's solo waited out): a
    # read under it is served, rightly, and would end the test early (CI)
    wait(lambda: _lease_left_us(a)[0] <= 0, what="b's last grant to a over")
    a.mode("resync_source")
    t0 = time.monotonic()
    assert a.core.test_io("v", "read", 0, 4096)[0] == -errno.ENOTCONN
    took = time.monotonic() - t0
    assert 3.5 < took < 8, took                        # RL_FIRST_GRANT (8) lease lengths
