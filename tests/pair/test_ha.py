"""ha.step: the pair's state machine, with a fake clock (it does no I/O and reads no clock)."""

import random

import pytest

from srrs.ctrl import ha
from srrs.ctrl.ha import FENCED, PAIRED, RESYNC, SOLO, STARTING, Gen
from srrs.ctrl.witness import LeaseTable

from .sim import Sim

T = ha.Timing()


def acts_of(sim, name, kind):
    return [a for t, n, a in sim.log if n == name and isinstance(a, kind)]


def test_start_both_pair():
    sim = Sim()
    sim.run(1.0)
    assert sim.roles() == {"a": PAIRED, "b": PAIRED}
    a, b = sim.nodes["a"].state, sim.nodes["b"].state
    assert a.data_gen == b.data_gen and a.base_gen == b.base_gen


def test_decide_directions():
    g5, g6a, g6b = Gen(5, "a"), Gen(6, "a"), Gen(6, "b")
    assert ha.decide("a", g5, g5, "b", g5, g5) == "insync"
    assert ha.decide("a", g6a, g5, "b", g5, g5) == "source"
    assert ha.decide("b", g5, g5, "a", g6a, g5) == "target"
    assert ha.decide("a", g6a, g5, "b", g6b, g5) == "split"
    assert ha.decide("a", ha.NULL_GEN, ha.NULL_GEN, "b", g5, g5) == "full_target"
    assert ha.decide("a", g5, g5, "b", ha.NULL_GEN, ha.NULL_GEN) == "full_source"


def test_peer_death_solo_then_resync_back_to_paired():
    sim = Sim()
    sim.run(1.0)
    sim.kill("b")
    sim.run(T.peer_timeout_s + 0.3)
    assert sim.roles()["a"] == SOLO
    a = sim.nodes["a"].state
    assert a.data_gen == Gen(a.base_gen.n + 1, "a")
    assert ha.SetMirror("solo", a.lease_until) in acts_of(sim, "a", ha.SetMirror)
    sim.run(10)  # lease renewed, still SOLO
    assert sim.roles()["a"] == SOLO
    sim.restart("b")
    sim.run(0.5)
    assert sim.nodes["a"].state.resync_role == "source" or sim.roles()["a"] == PAIRED
    sim.run(1.0)
    assert sim.roles() == {"a": PAIRED, "b": PAIRED}
    a, b = sim.nodes["a"].state, sim.nodes["b"].state
    assert a.data_gen == b.data_gen == a.base_gen == b.base_gen
    assert acts_of(sim, "b", ha.StartResync)[-1] == ha.StartResync("target", False)
    assert ha.ReleaseLease() in acts_of(sim, "a", ha.ReleaseLease)


def test_failover_time_under_host_limit():
    sim = Sim()
    sim.run(1.0)
    sim.kill("a")
    t0 = sim.t
    while sim.roles()["b"] != SOLO:
        sim.tick()
        assert sim.t - t0 < 5.0
    assert sim.t - t0 < 2.0  # default timings: 1 s detection + one witness round trip


def test_partition_of_link_one_solo_other_fenced_then_heal():
    sim = Sim()
    sim.run(1.0)
    sim.cut.add(frozenset("ab"))
    sim.run(3.0)
    r = sorted(sim.roles().values())
    assert r == [FENCED, SOLO]
    fenced = next(k for k, v in sim.roles().items() if v == FENCED)
    assert ha.SetAna("inaccessible") in acts_of(sim, fenced, ha.SetAna)
    sim.run(10)
    assert sorted(sim.roles().values()) == [FENCED, SOLO]
    sim.cut.clear()
    sim.run(2.0)
    assert sim.roles() == {"a": PAIRED, "b": PAIRED}


def test_isolated_node_fences_and_other_goes_solo():
    sim = Sim()
    sim.run(1.0)
    sim.cut |= {frozenset("ab"), frozenset(("a", "w"))}
    sim.run(3.0)
    assert sim.roles() == {"a": FENCED, "b": SOLO}


def test_isolated_solo_node_fences_itself_within_its_lease():
    sim = Sim()
    sim.run(1.0)
    sim.kill("b")
    sim.run(2.0)
    assert sim.roles()["a"] == SOLO
    sim.cut.add(frozenset(("a", "w")))
    t0 = sim.t
    while sim.roles()["a"] == SOLO:
        sim.tick()
    assert sim.t - t0 <= T.lease_s
    assert sim.nodes["a"].state.reason == "lease expired"


def test_witness_down_while_paired_changes_nothing_then_death_fences():
    sim = Sim()
    sim.run(1.0)
    sim.witness_up = False
    sim.run(5.0)
    assert sim.roles() == {"a": PAIRED, "b": PAIRED}
    sim.kill("b")
    sim.run(5.0)
    assert sim.roles()["a"] == FENCED
    assert not sim.nodes["a"].state.witness_ok
    assert any("witness" in a.message for a in acts_of(sim, "a", ha.Alert))


def test_wedged_data_plane_counts_as_dead():
    sim = Sim()
    sim.run(1.0)
    sim.nodes["b"].wedged = True   # heartbeats flow, reactor loops do not advance
    sim.run(3.0)
    assert sim.roles()["a"] == SOLO


def test_outdated_replica_never_serves_alone():
    sim = Sim()
    sim.run(1.0)
    sim.kill("b")
    sim.run(2.0)
    assert sim.roles()["a"] == SOLO          # a writes alone: b is outdated
    sim.kill("a")
    sim.restart("b")
    sim.run(10.0)
    assert sim.roles()["b"] == FENCED
    assert "outdated" in sim.nodes["b"].state.lease_denied
    sim.restart("a")                          # a comes back: b resyncs from a
    sim.run(3.0)
    assert sim.roles() == {"a": PAIRED, "b": PAIRED}


def test_split_brain_reported_never_resolved_silently():
    sim = Sim()
    sim.run(1.0)
    sim.kill("b")
    sim.run(2.0)
    assert sim.roles()["a"] == SOLO
    sim.kill("a")
    sim.table = LeaseTable(started=-100.0)   # witness lost its memory (misconfiguration)
    sim.restart("b")
    sim.run(2.0)
    assert sim.roles()["b"] == SOLO           # b wrote alone too: a true split brain
    sim.restart("a")
    sim.run(3.0)
    a, b = sim.nodes["a"].state, sim.nodes["b"].state
    assert a.split_brain and b.split_brain
    assert a.role != RESYNC and b.role != RESYNC
    assert not [x for x in acts_of(sim, "a", ha.StartResync)[1:]]
    assert len([x for x in acts_of(sim, "a", ha.Alert) if "split brain" in x.message]) == 1
    # the operator keeps b's data
    for n in ("a", "b"):
        sim.feed(sim.nodes[n], ha.AdminResync("b"))
    sim.run(2.0)
    assert sim.roles() == {"a": PAIRED, "b": PAIRED}
    a, b = sim.nodes["a"].state, sim.nodes["b"].state
    assert a.data_gen == b.data_gen and not a.split_brain


def test_higher_epoch_wins_when_both_solo():
    s, _ = ha.initial("a", "b", 0.0, T)
    s = ha.replace(s, role=SOLO, epoch=3, lease_until=10.0)
    s2, acts = ha.step(s, ha.PeerHeartbeat(5, SOLO, 1), 1.0)
    assert s2.role == FENCED and ha.SetMirror("fenced") in acts
    s3, _ = ha.step(s, ha.PeerHeartbeat(2, SOLO, 1), 1.0)
    assert s3.role == SOLO


def test_lease_expiry_fences_on_its_own():
    s, _ = ha.initial("a", "b", 0.0, T)
    s = ha.replace(s, role=FENCED, lease_sent_at=1.0, lease_next_gen=Gen(1, "a"))
    s, acts = ha.step(s, ha.LeaseGranted(1.0, 3.0), 1.01)
    assert s.role == SOLO and s.lease_until == pytest.approx(1.0 + 3.0 * (1 - T.drift))
    assert s.lease_until < 1.01 + 3.0     # ends before the witness's view of it
    s, acts = ha.step(s, ha.Tick(), 2.0)
    assert any(isinstance(a, ha.RequestLease) for a in acts)  # renewal
    s, acts = ha.step(s, ha.WitnessUnreachable(s.lease_sent_at), 2.6)
    s, acts = ha.step(s, ha.Tick(), 3.93)
    assert s.role == SOLO
    s, acts = ha.step(s, ha.Tick(), 3.95)
    assert s.role == FENCED and ha.SetMirror("pending") in acts   # nothing acked; lease asked
    s, acts = ha.step(s, ha.LeaseDenied(s.lease_sent_at, "held by b"), 3.96)
    assert ha.SetMirror("fenced") in acts


def test_io_held_while_lease_pending_then_settled():
    s, _ = ha.initial("a", "b", 0.0, T, need_mirror=False)
    s, acts = ha.step(s, ha.Tick(), 1.1)              # peer never heard: fence, ask
    assert s.role == FENCED and acts[0] == ha.SetMirror("pending")
    assert ha.SetAna("change") in acts
    s2, acts = ha.step(s, ha.LeaseGranted(s.lease_sent_at, 3.0), 1.2)
    assert s2.role == SOLO and ha.SetMirror("solo", s2.lease_until) in acts
    s3, acts = ha.step(s, ha.Tick(), 1.1 + T.witness_timeout_s + 0.01)
    assert ha.SetMirror("fenced") in acts and ha.SetAna("inaccessible") in acts


def test_stale_and_mismatched_grants_ignored():
    s, _ = ha.initial("a", "b", 0.0, T)
    s = ha.replace(s, role=FENCED, lease_sent_at=5.0)
    s2, acts = ha.step(s, ha.LeaseGranted(4.0, 3.0), 5.1)
    assert s2 == s and acts == ()
    s3, acts = ha.step(s, ha.LeaseGranted(5.0, 3.0), 9.0)   # arrived after it ended
    assert s3.role == FENCED


def test_grant_after_peer_returned_is_released():
    s, _ = ha.initial("a", "b", 0.0, T, need_mirror=False)
    s = ha.replace(s, role=RESYNC, lease_sent_at=1.0, resync_role="source", peer_seen=1.0,
                   peer_loops_at=1.0, peer_sees_us=True)
    s2, acts = ha.step(s, ha.LeaseGranted(1.0, 3.0), 1.1)
    assert s2.role == RESYNC and acts == (ha.ReleaseLease(),)


def test_target_losing_source_fences_without_lease_request():
    sim = Sim()
    sim.run(1.0)
    sim.resync_ticks = 200
    sim.kill("b")
    sim.run(2.0)
    sim.restart("b")
    sim.run(0.5)
    assert sim.roles()["b"] == RESYNC and sim.nodes["b"].state.resync_role == "target"
    sim.kill("a")
    sim.run(5.0)
    assert sim.roles()["b"] == FENCED and sim.nodes["b"].state.behind
    assert not [a for t, n, a in sim.log if n == "b" and isinstance(a, ha.RequestLease)
                and t > 3.5]
    sim.restart("b")   # `behind` is persisted: still never alone after a restart
    sim.run(5.0)
    assert sim.roles()["b"] == FENCED


def test_in_sync_rejoin_target_is_not_behind_and_goes_solo_when_the_source_dies():
    """Seen in the 20-event test under load (CI): right after a heal both were
    PAIRED, b fenced on a late heartbeat and rejoined in sync (same generation)
    as the copying target; a was killed during that copy. Only stripes in
    flight at the cut differ in an in-sync rejoin, never an acknowledged
    write: b is not behind and must go SOLO, not stay fenced for ever."""
    sim = Sim()
    sim.run(1.0)
    assert sim.roles() == {"a": PAIRED, "b": PAIRED}
    sim.resync_ticks = 200
    b = sim.nodes["b"]
    sim.feed(b, ha.MirrorDown())          # b alone sees a link flap
    assert sim.roles()["b"] == FENCED
    sim.run(0.5)
    st = b.state
    assert st.role == RESYNC and st.resync_role == "target" and not st.behind
    assert st.data_gen == sim.nodes["a"].state.data_gen
    sim.kill("a")
    sim.run(T.peer_timeout_s + 1.0)
    assert sim.roles()["b"] == SOLO
    assert b.state.data_gen == Gen(b.state.base_gen.n + 1, "b")


def test_same_generation_written_alone_after_the_peers_copy_is_not_in_sync():
    """b wrote alone under 7:b, a's copy completed (a holds 7:b/7:b), the
    link went before b saw its own resync end (b still 7:b over base 6:b) and
    b went SOLO again on 7:b: b's later writes exist only on b. Equal data
    generations are not 'in sync' then: b is the source, a the target (behind),
    whatever the names say (the lower name would otherwise copy, over b's writes)."""
    g6, g7 = Gen(6, "b"), Gen(7, "b")
    assert ha.decide("b", g7, g6, "a", g7, g7) == "source"
    assert ha.decide("a", g7, g7, "b", g7, g6) == "target"
    s, _ = ha.initial("a", "b", 0.0, T, g7, g7)
    s, acts = ha.step(s, ha.PeerHeartbeat(3, FENCED, 1, g7, g6), 0.01)
    s, acts = ha.step(s, ha.PeerHeartbeat(3, FENCED, 2, g7, g6, True), 0.02)
    s, acts = ha.step(s, ha.MirrorUp(), 0.03)
    s, acts = ha.step(s, ha.Tick(), 0.04)
    assert s.role == RESYNC and s.resync_role == "target" and s.behind


def test_peer_waiting_in_a_resync_we_ended_is_rejoined_not_left_for_ever():
    """Seen in CI's 20-event test (seed 801255063): after a heal b fenced
    during its resync as target (a heartbeat said a did not hear it), and
    rejoined as target with an epoch that tied the one a took on PAIRED when
    its resync-done came. a took b's RESYNC heartbeats for the end of its own
    resync and stayed PAIRED; b waited for a resync a was not part of, for
    ever. By generations alone (a on the new pair's g/g, b still on its old
    h/h) the two also looked like a split brain."""
    g, h = Gen(5, "a"), Gen(4, "b")
    s, _ = ha.initial("a", "b", 0.0, T, g, g)
    t = 0.1
    s, _ = ha.step(s, ha.MirrorUp(), t)
    s, _ = ha.step(s, ha.PeerHeartbeat(3, FENCED, 1, g, g, True), t)
    assert s.role == RESYNC
    s, _ = ha.step(s, ha.ResyncDone(), t + 0.1)
    assert s.role == PAIRED
    ep = s.epoch
    assert ha.decide("a", g, g, "b", h, h) == "split"           # by generations alone
    assert ha.decide("a", g, g, "b", h, h, False, True) == "source"
    assert ha.decide("b", h, h, "a", g, g, True, False) == "target"
    rejoined = None
    for i in range(int(4 * T.peer_timeout_s / 0.1)):
        t += 0.1
        s, acts = ha.step(s, ha.PeerHeartbeat(ep, RESYNC, 10 + i, h, h, True, True), t)
        s, acts2 = ha.step(s, ha.Tick(), t)
        if s.role != PAIRED:
            rejoined = (t, acts + acts2)
            break
    assert rejoined, "a stayed PAIRED while b waited in RESYNC"
    assert rejoined[0] - 0.2 <= 2 * T.peer_timeout_s + 0.3
    assert s.role == RESYNC and s.resync_role == "source" and not s.split_brain
    assert ha.StartResync("source", False) in rejoined[1]


def test_peer_finishing_our_resync_is_not_rejoined():
    """The other side of that rule: a target's resync-done follows the
    source's within moments; its RESYNC heartbeats meanwhile change nothing."""
    g = Gen(5, "a")
    s, _ = ha.initial("a", "b", 0.0, T, g, g)
    s, _ = ha.step(s, ha.MirrorUp(), 0.1)
    s, _ = ha.step(s, ha.PeerHeartbeat(3, FENCED, 1, g, g, True), 0.1)
    s, _ = ha.step(s, ha.ResyncDone(), 0.2)
    ep, t = s.epoch, 0.2
    for i in range(int(T.peer_timeout_s / 0.1)):
        t += 0.1
        s, acts = ha.step(s, ha.PeerHeartbeat(ep - 1, RESYNC, 10 + i, g, g, True, True), t)
        s, acts = ha.step(s, ha.Tick(), t)
        assert s.role == PAIRED and not acts
    s, _ = ha.step(s, ha.PeerHeartbeat(ep, PAIRED, 99, g, g, True), t + 0.1)
    s, acts = ha.step(s, ha.Tick(), t + 0.2)
    assert s.role == PAIRED and s.peer_rs_since is None


def test_stale_heartbeat_is_ignored():
    """A heartbeat older than one already heard from the same process (ROUTER
    fair-queues between the peer's old and new connections) must not undo
    what the newer one said: it made b fence ("peer does not hear us") right
    after a heal, twice in CI."""
    import json
    from types import SimpleNamespace

    from srrs.ctrl.pair import PairService
    from srrs.ctrl.pair_discovery import PairDiscovery

    svc = PairService.__new__(PairService)
    svc.discovery, svc._peer_ex_seen = PairDiscovery(SimpleNamespace()), None
    got = []
    svc.feed = got.append
    svc.conf = type("C", (), {"peer_id": "a", "self_name": "b"})()
    svc.agreement = [["v0", 1, 2]]
    svc._disagree, svc._peer_hb = "", ("", -1)
    svc.peer_runtime, svc._peer_rt, svc._peer_rt_seen = {}, None, None

    def hb(seq, sees, boot="b1"):
        return json.dumps({"type": "hb", "node": "a", "epoch": 3, "role": PAIRED, "loops": seq,
                           "data_gen": [5, "a"], "base_gen": [5, "a"], "sees_peer": sees,
                           "behind": False, "boot": boot, "seq": seq,
                           "volumes": [["v0", 1, 2]]}).encode()

    svc._on_peer(hb(5, True))
    svc._on_peer(hb(3, False))          # older, from the same process: stale
    svc._on_peer(hb(5, False))          # not newer either
    assert [e.sees_peer for e in got] == [True]
    svc._on_peer(hb(6, False))
    svc._on_peer(hb(1, True, boot="b2"))   # a restarted peer starts again
    assert [e.sees_peer for e in got] == [True, False, True]


def test_starting_alone_goes_solo_with_lease():
    sim = Sim()
    sim.kill("b")
    sim.run(2.0)
    assert sim.roles()["a"] == SOLO
    assert sim.nodes["a"].state.data_gen == Gen(1, "a")


def test_starting_has_no_io():
    s, acts = ha.initial("a", "b", 0.0)
    assert s.role == STARTING and ha.SetAna("inaccessible") in acts
    assert ha.SetMirror("fenced") in acts


def test_mirror_link_down_with_heartbeats_up():
    sim = Sim()
    sim.run(1.0)
    # heartbeats flow (coordination), the data link is cut
    orig = sim.can
    sim.can = lambda x, y: orig(x, y)
    a, b = sim.nodes["a"], sim.nodes["b"]
    for n in (a, b):
        sim.feed(n, ha.MirrorDown())
    assert sorted(sim.roles().values()) == [FENCED, FENCED]
    sim.tick()   # mirror comes back up in the sim
    sim.run(2.0)
    assert sim.roles() == {"a": PAIRED, "b": PAIRED}


def test_peer_away_for_less_than_a_heartbeat_is_rejoined():
    """Seen in the 20-event test under load: b left PAIRED (a's heartbeat said
    it did not hear b), took the lease, was SOLO on a new generation for 30 ms
    and rejoined as resync source, all between two of its heartbeats. a, still
    PAIRED, must not stay so: b waits for it to resync, and a's reads may be stale."""
    sim = Sim()
    sim.run(1.0)
    a = sim.nodes["a"]
    s = a.state
    assert s.role == PAIRED
    t = sim.t
    # b's resync of ours, finishing: same generation, epoch not above ours -> nothing
    s2, acts = ha.step(s, ha.PeerHeartbeat(s.epoch, RESYNC, 10**6, s.data_gen, s.base_gen), t)
    assert s2.role == PAIRED and not acts
    # b back from a SOLO blip: newer generation, higher epoch -> resync as its target
    g = Gen(s.data_gen.n + 1, "b")
    s2, acts = ha.step(s, ha.PeerHeartbeat(s.epoch + 2, RESYNC, 10**6 + 1, g, s.data_gen), t)
    assert s2.role == RESYNC and s2.resync_role == "target" and s2.behind
    assert ha.StartResync("target", False) in acts and ha.SetMirror("resync_target") in acts
    # b back from a FENCED blip (no new generation): resync too, lower name is the source
    s2, acts = ha.step(s, ha.PeerHeartbeat(s.epoch + 1, RESYNC, 10**6 + 1, s.data_gen,
                                           s.base_gen), t)
    assert s2.role == RESYNC and s2.resync_role == "source"


def test_unknown_event_rejected():
    s, _ = ha.initial("a", "b", 0.0)
    with pytest.raises(TypeError):
        ha.step(s, object(), 0.0)


@pytest.mark.parametrize("seed", range(60))
def test_random_faults_keep_invariants_and_converge(seed):
    rnd = random.Random(seed)
    sim = Sim()
    sim.run(1.0)
    for _ in range(25):
        what = rnd.choice(["kill", "restart", "cut_ab", "cut_aw", "cut_bw", "heal", "witness",
                           "wedge", "run"])
        name = rnd.choice("ab")
        if what == "kill":
            sim.kill(name)
        elif what == "restart" and not sim.nodes[name].alive:
            sim.restart(name)
        elif what == "cut_ab":
            sim.cut.add(frozenset("ab"))
        elif what == "cut_aw":
            sim.cut.add(frozenset(("a", "w")))
        elif what == "cut_bw":
            sim.cut.add(frozenset(("b", "w")))
        elif what == "heal":
            sim.cut.clear()
        elif what == "witness":
            sim.witness_up = not sim.witness_up
        elif what == "wedge":
            sim.nodes[name].wedged = not sim.nodes[name].wedged
        sim.run(rnd.choice([0.1, 0.5, 1.5, 4.0]))   # check() runs every tick
    # heal everything: the pair must come back (the witness never lost state,
    # so there can be no split brain)
    sim.cut.clear()
    sim.witness_up = True
    for n in sim.nodes.values():
        n.wedged = False
        if not n.alive:
            sim.restart(n.name)
    sim.run(8.0)
    assert sim.roles() == {"a": PAIRED, "b": PAIRED}, sim.log[-30:]
    a, b = sim.nodes["a"].state, sim.nodes["b"].state
    assert a.data_gen == b.data_gen and not a.split_brain
