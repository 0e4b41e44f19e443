"""placement(): a pure function of a catalog snapshot (no etcd)."""

import pytest

from srrs.ctrl.cluster_catalog import Member, Pair, Snapshot, Tenant
from srrs.ctrl.placement import NoPlacement, Request, candidates, placement

G = 1 << 30


def snap(pairs, tenants=None, dead=()):
    members = {f"{n}-{i}": Member(f"{n}-{i}", pair=n) for n in pairs for i in "ab"
               if n not in dead}
    return Snapshot(1, members=members, pairs=pairs,
                    tenants=tenants or {"t": Tenant("t", quota=100 * G)})


def test_most_free_space_wins():
    s = snap({"p1": Pair("p1", capacity=10 * G, allocated=2 * G),
              "p2": Pair("p2", capacity=20 * G, allocated=11 * G),
              "p3": Pair("p3", capacity=4 * G)})
    assert placement(s, Request(1 * G, "t")) == "p2"          # 9 GiB free > 8 > 4
    assert [n for _, n in candidates(s, Request(5 * G, "t"))] == ["p2", "p1"]


def test_ties_go_to_the_smaller_name():
    s = snap({"b": Pair("b", capacity=G), "a": Pair("a", capacity=G)})
    assert placement(s, Request(1, "t")) == "a"


def test_must_fit():
    s = snap({"p1": Pair("p1", capacity=10 * G, allocated=9 * G)})
    with pytest.raises(NoPlacement) as e:
        placement(s, Request(2 * G, "t"))
    assert not e.value.quota
    assert placement(s, Request(G, "t")) == "p1"              # exactly full is fine


def test_quota_refuses_before_space():
    s = snap({"p1": Pair("p1", capacity=100 * G)}, {"t": Tenant("t", quota=5 * G, used=4 * G)})
    assert placement(s, Request(G, "t")) == "p1"
    with pytest.raises(NoPlacement) as e:
        placement(s, Request(G + 1, "t"))
    assert e.value.quota and "quota" in str(e.value)
    with pytest.raises(NoPlacement):
        placement(s, Request(1, "nobody"))


def test_zone_labels():
    s = snap({"p1": Pair("p1", capacity=50 * G, labels={"zone": "z1"}),
              "p2": Pair("p2", capacity=10 * G, labels={"zone": "z2", "ssd": "yes"}),
              "p3": Pair("p3", capacity=90 * G)})
    assert placement(s, Request(G, "t")) == "p3"
    assert placement(s, Request(G, "t", {"zone": "z2"})) == "p2"
    assert placement(s, Request(G, "t", {"zone": "z2", "ssd": "yes"})) == "p2"
    with pytest.raises(NoPlacement, match="zone=z3"):
        placement(s, Request(G, "t", {"zone": "z3"}))


def test_pairs_without_a_live_controller_are_skipped():
    s = snap({"p1": Pair("p1", capacity=50 * G), "p2": Pair("p2", capacity=10 * G)},
             dead=("p1",))
    assert placement(s, Request(G, "t")) == "p2"
    s = snap({"p1": Pair("p1", capacity=50 * G)}, dead=("p1",))
    with pytest.raises(NoPlacement):
        placement(s, Request(G, "t"))


def test_racing_creates_spread_over_near_equal_pairs_only():
    """With a spread key (the new volume's uuid) creates racing on many
    controllers pick different near-equal pairs instead of all losing the
    compare-and-swap on one; a clearly emptier pair still always wins."""
    even = snap({f"p{i}": Pair(f"p{i}", capacity=100 * G, allocated=i * G // 4) for i in range(8)})
    picks = {placement(even, Request(G, "t", spread=f"uuid-{k}")) for k in range(64)}
    assert len(picks) >= 6 and picks <= {f"p{i}" for i in range(8)}
    assert placement(even, Request(G, "t", spread="x")) == placement(even, Request(G, "t", spread="x"))
    lopsided = snap({"big": Pair("big", capacity=100 * G),
                     "small": Pair("small", capacity=100 * G, allocated=10 * G)})
    assert {placement(lopsided, Request(G, "t", spread=f"u{k}")) for k in range(64)} == {"big"}
