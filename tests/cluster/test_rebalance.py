"""plan_rebalance() and plan_drain(): pure functions of a catalog snapshot."""

import random

import pytest

from srrs.ctrl.cluster_catalog import Member, Pair, Snapshot, Tenant, Volume
from srrs.ctrl.rebalance import DrainRefused, plan_drain, plan_rebalance

G = 1 << 30


def cluster(pairs, vols, dead=()):
    """pairs: {name: (capacity, labels)}; vols: [(uuid, pair, size, labels)]"""
    alloc: dict = {}
    slots: dict = {}
    volumes = {}
    for i, (u, pr, size, *lab) in enumerate(vols):
        alloc[pr] = alloc.get(pr, 0) + size
        slots.setdefault(pr, []).append(u)
        volumes[u] = Volume(u, f"v{i}", size, "t", pr, state="ready",
                            labels=lab[0] if lab else {})
    ps = {n: Pair(n, capacity=cap, allocated=alloc.get(n, 0), labels=lab,
                  slots=tuple(slots.get(n, ())))
          for n, (cap, lab) in pairs.items()}
    members = {f"{n}-{i}": Member(f"{n}-{i}", pair=n) for n in pairs for i in "ab"
               if n not in dead}
    return Snapshot(1, members=members, pairs=ps, tenants={"t": Tenant("t", quota=10**6 * G)},
                    volumes=volumes)


def settle(snap, plan):
    """The snapshot with the plan's moves done."""
    vols = dict(snap.volumes)
    for m in plan.moves:
        vols[m.volume] = Volume(**{**vols[m.volume].__dict__, "pair": m.dst})
    return cluster({n: (p.capacity, p.labels) for n, p in snap.pairs.items()},
                   [(v.uuid, v.pair, v.size, v.labels) for v in vols.values()])


def uses(snap):
    return {n: p.allocated / p.capacity for n, p in snap.pairs.items()}


def test_balanced_cluster_plans_nothing():
    s = cluster({"a": (10 * G, {}), "b": (10 * G, {})}, [("1", "a", G), ("2", "b", G)])
    p = plan_rebalance(s, spread=0.1)
    assert p.moves == () and p.balanced and p.spread_before == 0


def test_new_empty_pairs_take_volumes_until_within_the_spread():
    vols = [(f"v{i}", "p1", G) for i in range(30)]
    s = cluster({"p1": (40 * G, {}), "p2": (40 * G, {}), "p3": (40 * G, {})}, vols)
    p = plan_rebalance(s, spread=0.05, max_moves=100)
    assert p.balanced and p.spread_after <= 0.05 and p.spread_before == pytest.approx(0.75)
    after = settle(s, p)
    assert {n: round(u, 3) for n, u in uses(after).items()} == {"p1": 0.25, "p2": 0.25, "p3": 0.25}
    assert all(m.src == "p1" for m in p.moves) and len(p.moves) == 20
    # the same snapshot gives the same plan (every controller plans alike)
    assert plan_rebalance(s, spread=0.05, max_moves=100) == p


def test_max_moves_bounds_a_round_and_says_so():
    vols = [(f"v{i}", "p1", G) for i in range(30)]
    s = cluster({"p1": (40 * G, {}), "p2": (40 * G, {})}, vols)
    p = plan_rebalance(s, spread=0.05, max_moves=4)
    assert len(p.moves) == 4 and not p.balanced and "4 moves" in p.reason
    assert p.spread_after < p.spread_before


def test_moves_respect_capacity_slots_labels_and_liveness():
    vols = [("z", "p1", 4 * G, {"zone": "z1"})] + [(f"v{i}", "p1", G) for i in range(4)]
    s = cluster({"p1": (10 * G, {"zone": "z1"}), "p2": (10 * G, {"zone": "z2"}),
                 "p3": (100 * G, {}), "p4": (100 * G, {})}, vols, dead=("p4",))
    p = plan_rebalance(s, spread=0.0, max_moves=100)
    assert all(m.dst != "p4" for m in p.moves)             # no live controller
    assert all(m.volume != "z" for m in p.moves)           # zone z1: only p1 carries it
    s2 = cluster({"p1": (10 * G, {}), "p2": (G // 2, {})}, [("big", "p1", G)])
    assert plan_rebalance(s2, spread=0.0).moves == ()      # no room on p2
    assert not plan_rebalance(s2, spread=0.0).balanced


def test_a_move_never_widens_the_gap():
    # one huge volume: moving it would just swap the roles of the pairs
    s = cluster({"a": (100 * G, {}), "b": (100 * G, {})}, [("h", "a", 60 * G)])
    p = plan_rebalance(s, spread=0.0)
    assert p.moves == () and "narrow" in p.reason


def test_busy_volumes_and_excluded_pairs():
    vols = [(f"v{i}", "p1", G) for i in range(10)]
    s = cluster({"p1": (10 * G, {}), "p2": (10 * G, {}), "p3": (10 * G, {})}, vols)
    p = plan_rebalance(s, spread=0.0, max_moves=100, busy={"v0", "v1"}, exclude={"p3"})
    assert {m.dst for m in p.moves} == {"p2"} and not {"v0", "v1"} & {m.volume for m in p.moves}


def test_random_clusters_converge_and_stay_consistent():
    rnd = random.Random(7)
    for _ in range(20):
        pairs = {f"p{i}": (rnd.choice([50, 100, 200]) * G, {}) for i in range(rnd.randint(2, 12))}
        names = sorted(pairs)
        vols = []
        for j in range(rnd.randint(10, 200)):
            pr = rnd.choice(names[: max(1, len(names) // 3)])
            vols.append((f"u{j}", pr, rnd.randint(1, 8) * G))
        s = cluster(pairs, [v for v in vols])
        if any(p.allocated > p.capacity for p in s.pairs.values()):
            continue
        p = plan_rebalance(s, spread=0.1, max_moves=10_000)
        after = settle(s, p)
        assert all(pr.allocated <= pr.capacity for pr in after.pairs.values())
        assert len({m.volume for m in p.moves}) == len(p.moves)    # each volume moves once
        assert p.spread_after <= p.spread_before
        assert max(uses(after).values()) - min(uses(after).values()) == pytest.approx(p.spread_after)


def test_drain_places_everything_largest_first():
    vols = [("a", "p1", 5 * G), ("b", "p1", 3 * G), ("c", "p1", 2 * G), ("d", "p2", 1 * G)]
    s = cluster({"p1": (20 * G, {}), "p2": (6 * G, {}), "p3": (6 * G, {})}, vols)
    p = plan_drain(s, "p1")
    assert [m.volume for m in p.moves] == ["a", "b", "c"] and all(m.src == "p1" for m in p.moves)
    after = settle(s, p)
    assert after.pairs["p1"].allocated == 0
    assert all(pr.allocated <= pr.capacity for pr in after.pairs.values())


def test_drain_refused_when_the_rest_lacks_space():
    vols = [("a", "p1", 5 * G), ("b", "p1", 3 * G)]
    s = cluster({"p1": (20 * G, {}), "p2": (6 * G, {}), "p3": (G, {})}, vols)
    with pytest.raises(DrainRefused) as e:
        plan_drain(s, "p1")
    msg = str(e.value)
    assert "cannot be drained" in msg and "nothing was moved" in msg and "t/v1" in msg
    with pytest.raises(DrainRefused, match="zone=z9"):
        plan_drain(cluster({"p1": (9 * G, {}), "p2": (9 * G, {})},
                           [("z", "p1", G, {"zone": "z9"})]), "p1")
    with pytest.raises(DrainRefused, match="no pair"):
        plan_drain(s, "nope")
