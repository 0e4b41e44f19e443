"""The catalog's volume-move transactions in real etcd (docs/architecture.md,
Cluster, Volume moves): a start reserves the destination's allocation and a
mirror slot in the same transaction as the record; a moving volume refuses
resize and delete; the cutover flips the volume's pair and slot and frees the
source's in one transaction, only at the epoch it was asked for (and again
after a lost answer); a cancel frees the reservation; the watch delivers the
records."""

import threading
from dataclasses import replace

import pytest

from srrs.ctrl.cluster_catalog import CatalogError, Conflict, move_key

from .test_catalog import G, catalog, two_pairs


def _start(cat, name="v", dst="p1"):
    return cat.start_move("t", name, dst, "a2", "a1", "00" * 32, 1.0)


def test_move_reserves_flips_and_frees(etcd1):
    cat = catalog(etcd1, "/mv1/")
    regs = two_pairs(cat)
    cat.put_tenant("t", 100 * G)
    v = cat.create_volume("t", "v", 4 * G)
    assert v.pair == "p2" and v.slot == 0
    with pytest.raises(CatalogError, match="not ready"):
        _start(cat)
    cat.set_volume_state(v.uuid, "ready")
    with pytest.raises(Conflict, match="on p2 already"):
        _start(cat, dst="p2")
    m = _start(cat)
    assert (m.src, m.dst, m.dst_slot, m.size, m.phase, m.epoch) == ("p2", "p1", 0, 4 * G,
                                                                     "copying", 1)
    assert _start(cat) == m                         # the same move again
    s = cat.snapshot()
    assert s.moving(v.uuid) == m
    assert s.pairs["p1"].allocated == 4 * G and s.pairs["p1"].slots == (v.uuid,)
    assert s.pairs["p2"].allocated == 4 * G         # still there: both hold it now
    # a moving volume is neither grown nor deleted
    with pytest.raises(Conflict, match="moving"):
        cat.resize_volume("t", "v", 5 * G)
    with pytest.raises(Conflict, match="moving"):
        cat.delete_volume("t", "v")
    # the cutover only at the record's epoch
    cat.update_move(v.uuid, lambda x: replace(x, epoch=2, tee="b2"))
    assert cat.finish_move(v.uuid, 1, 2.0) is False
    assert cat.finish_move(v.uuid, 2, 2.0, 12.5) is True
    assert cat.finish_move(v.uuid, 2, 2.0) is True  # a repeat after a lost answer
    s = cat.snapshot()
    nv = s.volumes[v.uuid]
    assert (nv.pair, nv.slot, nv.generation) == ("p1", 0, v.generation + 2)
    assert v.placed == "" and nv.placed == move_key(s.moves[v.uuid])   # what p1's replicas are for
    assert s.pairs["p2"].allocated == 0 and s.pairs["p2"].slots == ("",)
    assert s.pairs["p1"].allocated == 4 * G
    assert s.moves[v.uuid].phase == "done" and s.moves[v.uuid].pause_ms == 12.5
    assert s.moving(v.uuid) is None
    # done: it can be resized and moved again (back)
    cat.resize_volume("t", "v", 5 * G)
    m2 = cat.start_move("t", "v", "p2", "a1", "a2", "11" * 32, 3.0)
    assert m2.epoch == 1 and m2.src == "p1" and m2.dst_slot == 0
    # cancel: the reservation goes
    assert cat.end_cancel(v.uuid, 4.0) is False     # not being cancelled
    cat.update_move(v.uuid, lambda x: replace(x, phase="cancelling"))
    assert cat.finish_move(v.uuid, 1, 4.0) is False
    assert cat.end_cancel(v.uuid, 4.0) is True
    s = cat.snapshot()
    assert s.moves[v.uuid].phase == "cancelled" and s.volumes[v.uuid].pair == "p1"
    assert s.pairs["p2"].allocated == 0 and s.pairs["p2"].slots == ("",)
    for r in regs:
        r.close()


def test_move_refused_without_room_and_watched(etcd1):
    cat = catalog(etcd1, "/mv2/")
    regs = two_pairs(cat)
    cat.put_tenant("t", 100 * G)
    v = cat.create_volume("t", "big", 12 * G)      # p2 (20 GiB); p1 has 10
    cat.set_volume_state(v.uuid, "ready")
    with pytest.raises(CatalogError, match="free"):
        cat.start_move("t", "big", "p1", "a2", "a1", "00" * 32, 1.0)
    snap = cat.snapshot()
    assert not snap.moves
    small = cat.create_volume("t", "small", G)
    cat.set_volume_state(small.uuid, "ready")
    got, stop = [], threading.Event()

    def follow():
        for s, _ in cat.follow(stop):
            got.append(s)
            if s.moves:
                stop.set()
    t = threading.Thread(target=follow)
    t.start()
    cat.start_move("t", "small", "p1" if small.pair == "p2" else "p2", "x", "y", "00" * 32, 1.0)
    t.join(10)
    stop.set()
    assert got and got[-1].moving(small.uuid) is not None
    for r in regs:
        r.close()
