"""The catalog parts convergence needs, in real etcd: each volume of a pair
gets a mirror slot (its mirror volume id on both controllers), freed on delete
and reused; a pair whose slots are all taken gets no new volume; the host
allow-list is a field of the volume, set by one transaction."""

import pytest

from srrs.ctrl import etcd
from srrs.ctrl.cluster_catalog import MAX_SLOTS, Catalog, CatalogError, Member, NotFound, Pair
from srrs.ctrl.placement import Request, candidates

M = 1 << 20


def test_slots_assigned_freed_reused(etcd1):
    cat = Catalog(etcd.Client(etcd1.endpoints, timeout=1, deadline=5), "/srrs/slots/")
    cat.put_pair("p", ["a", "b"], 1 << 30)
    reg = cat.register(Member("a", pair="p"), ttl=5)
    try:
        cat.put_tenant("t", 1 << 30)
        vs = [cat.create_volume("t", f"v{i}", M) for i in range(3)]
        assert [v.slot for v in vs] == [0, 1, 2]
        assert cat.get("pairs", "p").slots == tuple(v.uuid for v in vs)
        assert cat.delete_volume("t", "v1")
        assert cat.get("pairs", "p").slots == (vs[0].uuid, "", vs[2].uuid)
        v3 = cat.create_volume("t", "v3", M, hosts=["nqn.2014-08.h:a"])
        assert v3.slot == 1 and v3.hosts == ("nqn.2014-08.h:a",)
        # a resize keeps the slot; the put_pair of an operator keeps the slots
        assert cat.resize_volume("t", "v3", 2 * M).slot == 1
        cat.put_pair("p", ["a", "b"], 2 << 30)
        assert cat.get("pairs", "p").slots[1] == v3.uuid
        h = cat.set_volume_hosts("t", "v3", ["*"])
        assert h.hosts == ("*",) and h.generation == cat.get("volumes", v3.uuid).generation
        with pytest.raises(NotFound):
            cat.set_volume_hosts("t", "nope", [])
    finally:
        reg.close()


def test_a_pair_without_a_free_slot_takes_no_volume():
    class Snap:
        members = {"a": Member("a", pair="full"), "c": Member("c", pair="room")}
        pairs = {"full": Pair("full", capacity=100 * M, slots=("x",) * MAX_SLOTS),
                 "room": Pair("room", capacity=10 * M, slots=("x", ""))}
    assert Pair("p", slots=("x", "", "y")).free_slot() == 1
    assert Pair("p", slots=("x",) * MAX_SLOTS).free_slot() == -1
    assert [c[1] for c in candidates(Snap, Request(M, "t"))] == ["room"]


def test_bad_names_refused(etcd1):
    cat = Catalog(etcd.Client(etcd1.endpoints, timeout=1, deadline=5), "/srrs/slots2/")
    with pytest.raises(CatalogError):
        cat.set_volume_hosts("t", "a/b", [])
