"""etcd as the pair's witness (ctrl/cluster_lease.py) against real etcd: the
solo lease goes to one controller at a time, to the peer only once the
holder's lease can no longer run, never to an outdated replica; it survives
the loss of the etcd leader mid-grant; without quorum nothing is granted."""

import threading
import time

from srrs.ctrl import etcd, ha
from srrs.ctrl.cluster_lease import SoloLease
from srrs.ctrl.ha import Gen


def lease(cluster, **kw):
    return SoloLease(etcd.Client(cluster.endpoints, timeout=0.5, deadline=2), "/srrs/", **kw)


def test_one_holder_peer_only_after_expiry_outdated_never(etcd1):
    a, b = lease(etcd1), lease(etcd1)
    # a lost b and goes alone on a new generation
    t_a = time.monotonic()
    assert a.request("p", "a", 1.0, Gen(2, "a"), Gen(3, "a"), t_a) == ha.LeaseGranted(t_a, 1.0)
    assert a.holder("p")["holder"] == "a" and a.holder("p")["gen"] == [3, "a"]
    # b was resynced to (3, a) since, then a died without releasing
    t_b = time.monotonic()
    r = b.request("p", "b", 1.0, Gen(3, "a"), Gen(4, "b"), t_b)
    assert isinstance(r, ha.LeaseDenied) and r.reason == "lease held by a"
    while True:
        t = time.monotonic()
        r = b.request("p", "b", 1.0, Gen(3, "a"), Gen(4, "b"), t)
        if isinstance(r, ha.LeaseGranted):
            break
        assert r.reason == "lease held by a" and t - t_a < 4
        time.sleep(0.05)
    # a's own view of its lease (sent_at + lease_s) had ended before b got it
    assert t >= t_a + 1.0
    assert b.holder("p") == {"holder": "b", "gen": [4, "b"], "lease": b.holder("p")["lease"]}
    # a comes back: b holds it; and once b gives it up, a's data is outdated
    r = a.request("p", "a", 1.0, Gen(3, "a"), Gen(4, "a"), time.monotonic())
    assert isinstance(r, ha.LeaseDenied) and r.reason == "lease held by b"
    assert a.release("p", "a") is False
    assert b.release("p", "b") is True and b.holder("p")["holder"] == ""
    r = a.request("p", "a", 1.0, Gen(3, "a"), Gen(4, "a"), time.monotonic())
    assert isinstance(r, ha.LeaseDenied) and r.reason.startswith("outdated")
    # lease_s out of the witness's range
    r = b.request("p", "b", 60.0, Gen(4, "b"), Gen(4, "b"), time.monotonic())
    assert isinstance(r, ha.LeaseDenied) and "lease_s" in r.reason


def test_renewals_keep_the_peer_out(etcd1):
    a, b = lease(etcd1), lease(etcd1)
    first = None
    end = time.monotonic() + 3
    while time.monotonic() < end:       # renew every 1/3 lease, as ha does
        t = time.monotonic()
        assert isinstance(a.request("p", "a", 1.0, Gen(3, "a"), Gen(3, "a"), t), ha.LeaseGranted)
        first = first or a.holder("p")["lease"]
        r = b.request("p", "b", 1.0, Gen(3, "a"), Gen(4, "b"), time.monotonic())
        assert isinstance(r, ha.LeaseDenied), r
        time.sleep(0.3)
    # each renewal moved the key to a new etcd lease and revoked the previous one
    assert a.holder("p")["lease"] != first and a.etcd.ttl(first) == -1


def _ask(sl, node, pair, out, go):
    go.wait()
    t = time.monotonic()
    out[node] = sl.request(pair, node, 1.0, Gen(5, "a"), Gen(6, node), t)


def test_racing_requests_never_grant_both(etcd1):
    ls = {"a": lease(etcd1), "b": lease(etcd1)}
    for r in range(20):
        out, go = {}, threading.Barrier(2)
        ts = [threading.Thread(target=_ask, args=(ls[n], n, f"p{r}", out, go)) for n in ls]
        for t in ts:
            t.start()
        for t in ts:
            t.join(5)
        won = [n for n, e in out.items() if isinstance(e, ha.LeaseGranted)]
        assert len(won) == 1, out
        lost = "b" if won == ["a"] else "a"
        assert out[lost].reason == f"lease held by {won[0]}"
        assert ls["a"].holder(f"p{r}")["holder"] == won[0]


def _kill_leader_after(client, method, cluster, lose_answer):
    """The first `method` call that writes reaches etcd, then the leader is
    kill -9'd (and with lose_answer the caller never hears the result)."""
    orig = getattr(client, method)
    fired = []

    def hooked(*a, **kw):
        if fired or (method == "txn" and not a[0]):   # reads are txns without compares
            return orig(*a, **kw)
        fired.append(1)
        r = orig(*a, **kw)
        cluster.kill_leader()
        if lose_answer:
            raise etcd.Unavailable("the answer was lost with the leader")
        return r
    setattr(client, method, hooked)
    return fired


def test_leader_killed_mid_grant(etcd3):
    """Killed between the etcd lease and the txn, after the txn, and after
    the txn with its answer lost: the request retries on the survivors and
    ends granted, once; the peer is refused."""
    for r, (method, lose) in enumerate((("grant", False), ("txn", False), ("txn", True))):
        a, b = lease(etcd3), lease(etcd3)
        a.etcd.deadline = b.etcd.deadline = 5
        pair = f"p{r}"
        fired = _kill_leader_after(a.etcd, method, etcd3, lose)
        t = time.monotonic()
        out = a.request(pair, "a", 2.0, Gen(1, "a"), Gen(2, "a"), t, deadline=5.0)
        assert fired and out == ha.LeaseGranted(t, 2.0), (method, lose, out)
        rb = b.request(pair, "b", 2.0, Gen(1, "a"), Gen(2, "b"), time.monotonic(), 5.0)
        assert isinstance(rb, ha.LeaseDenied) and rb.reason == "lease held by a", rb
        assert b.holder(pair)["holder"] == "a" and b.holder(pair)["gen"] == [2, "a"]
        for m in etcd3.members:
            if not m.alive():
                etcd3.restart(m)
        etcd3.wait_healthy()


def test_quorum_lost_grants_nothing(etcd3):
    a = lease(etcd3)
    # the holder's own renewal and a new grant alike need quorum
    dead = [m for m in etcd3.members if m is not etcd3.members[0]]
    for m in dead:
        m.kill()
    t = time.monotonic()
    r = a.request("p", "a", 1.0, Gen(1, "a"), Gen(2, "a"), t, deadline=1.5)
    assert r == ha.WitnessUnreachable(t)
    assert time.monotonic() - t < 3
    etcd3.restart(dead[0])
    etcd3.wait_healthy()
    time.sleep(1.0)                   # nothing of the refused request lands late
    assert a.holder("p") == {"holder": "", "gen": None, "lease": 0}
    assert isinstance(a.request("p", "a", 1.0, Gen(1, "a"), Gen(2, "a"), time.monotonic()),
                      ha.LeaseGranted)


def test_ha_goes_solo_through_etcd(etcd1):
    """ha.step's RequestLease answered by SoloLease: the pair's coordinator
    can use etcd where it used the witness."""
    sl = lease(etcd1)
    T = ha.Timing(lease_s=2.0)
    s, _ = ha.initial("a", "b", 0.0, T, data_gen=Gen(1, "a"), base_gen=Gen(1, "a"),
                      need_mirror=False)
    now = 0.1
    s, _ = ha.step(s, ha.PeerHeartbeat(1, ha.STARTING, 1, Gen(1, "a"), Gen(1, "a")), now)
    s, _ = ha.step(s, ha.ResyncDone(), now)
    assert s.role == ha.PAIRED
    now = 5.0                         # the peer went silent
    s, acts = ha.step(s, ha.Tick(), now)
    req = next(x for x in acts if isinstance(x, ha.RequestLease))
    assert s.role == ha.FENCED and req.next_gen == Gen(2, "a")
    ev = sl.request("pair-ab", "a", T.lease_s, req.data_gen, req.next_gen, req.sent_at)
    s, acts = ha.step(s, ev, now + 0.01)
    assert s.role == ha.FENCED and s.lease_until   # held: the peer's read lease may run
    s, acts = ha.step(s, ha.Tick(), now + T.read_lease_end_s + 0.01)
    assert s.role == ha.SOLO and s.data_gen == Gen(2, "a")
    assert sl.holder("pair-ab")["gen"] == [2, "a"]
