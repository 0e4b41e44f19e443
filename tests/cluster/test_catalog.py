"""The catalog in real etcd: volumes created, grown and deleted in one
transaction with the tenant's quota; idempotent by name; quota races; the
watcher; registrations that vanish when their controller is kill -9'd."""

import os
import subprocess
import sys
import threading
import time

import pytest

from srrs.ctrl import etcd
from srrs.ctrl.cluster_catalog import (
    Catalog,
    CatalogError,
    Conflict,
    Member,
    NotFound,
    QuotaExceeded,
)

G = 1 << 30


def catalog(cluster, prefix="/srrs/"):
    return Catalog(etcd.Client(cluster.endpoints, timeout=1, deadline=5), prefix)


def two_pairs(cat, scale=1):
    """p1 (10 GiB) and p2 (20 GiB), each with a registered controller."""
    cat.put_pair("p1", ["a1", "b1"], 10 * G * scale, {"zone": "z1"})
    cat.put_pair("p2", ["a2", "b2"], 20 * G * scale, {"zone": "z2"})
    return [cat.register(Member(n, pair=p), ttl=5) for n, p in (("a1", "p1"), ("a2", "p2"))]


def test_create_grow_delete_keep_usage(etcd1):
    cat = catalog(etcd1)
    regs = two_pairs(cat)
    cat.put_tenant("t", 15 * G)
    v = cat.create_volume("t", "v0", 4 * G)
    assert v.pair == "p2" and v.state == "creating" and v.generation == 1
    w = cat.create_volume("t", "v1", 7 * G)
    assert w.pair == "p2"                           # 16 free on p2 > 10 on p1
    x = cat.create_volume("t", "v2", 1 * G)
    assert x.pair == "p1"                           # 10 free on p1 > 9 on p2
    s = cat.snapshot()
    assert s.tenants["t"].used == 12 * G and s.tenants["t"].volumes == 3
    assert s.pairs["p2"].allocated == 11 * G and s.pairs["p1"].allocated == G
    assert set(s.volumes) == {v.uuid, w.uuid, x.uuid}
    assert cat.volume_by_name("t", "v1") == w

    g = cat.resize_volume("t", "v2", 3 * G)
    assert g.size == 3 * G and g.generation == 2 and g.uuid == x.uuid
    with pytest.raises(QuotaExceeded):
        cat.resize_volume("t", "v2", 10 * G)
    with pytest.raises(Conflict):
        cat.resize_volume("t", "v2", G)             # no shrink
    s = cat.snapshot()
    assert s.tenants["t"].used == 14 * G and s.pairs["p1"].allocated == 3 * G

    assert cat.delete_volume("t", "v0") is True
    assert cat.delete_volume("t", "v0") is False    # repeated: nothing left to do
    s = cat.snapshot()
    assert s.tenants["t"].used == 10 * G and s.tenants["t"].volumes == 2
    assert s.pairs["p2"].allocated == 7 * G and v.uuid not in s.volumes
    assert cat.volume_by_name("t", "v0") is None
    with pytest.raises(NotFound):
        cat.resize_volume("t", "v0", G)
    with pytest.raises(NotFound):
        cat.create_volume("nobody", "v", G)
    for r in regs:
        r.close()


def test_create_is_idempotent_by_name(etcd1):
    cat = catalog(etcd1)
    regs = two_pairs(cat)
    cat.put_tenant("t", 10 * G)
    v = cat.create_volume("t", "db", 2 * G)
    assert cat.create_volume("t", "db", 2 * G) == v                 # same name and size
    with pytest.raises(Conflict):
        cat.create_volume("t", "db", 3 * G)
    assert cat.snapshot().tenants["t"].used == 2 * G                # counted once
    cat.put_tenant("u", 10 * G)
    assert cat.create_volume("u", "db", 2 * G).uuid != v.uuid       # names are per tenant
    for r in regs:
        r.close()


def test_placement_follows_labels_and_live_pairs(etcd1):
    cat = catalog(etcd1)
    regs = two_pairs(cat)
    cat.put_tenant("t", 100 * G)
    assert cat.create_volume("t", "a", G, labels={"zone": "z1"}).pair == "p1"
    with pytest.raises(CatalogError, match="no live pair"):
        cat.create_volume("t", "b", G, labels={"zone": "z9"})
    regs[1].close()                                  # p2's only controller leaves
    assert cat.create_volume("t", "c", G).pair == "p1"
    regs[0].close()


def _create(cat, tenant, name, go, out, i):
    go.wait()
    try:
        out[i] = cat.create_volume(tenant, name, 2 * G)
    except QuotaExceeded as e:
        out[i] = e


def _race(etcd1, rounds, same_name):
    """Two threads, each with its own client, create at the same instant."""
    cats = [catalog(etcd1), catalog(etcd1)]
    regs = two_pairs(cats[0], scale=100)
    results = []
    for r in range(rounds):
        tenant = f"t{r}"
        cats[0].put_tenant(tenant, 5 * G)
        cats[0].create_volume(tenant, "base", 3 * G)  # 2 GiB left
        go = threading.Barrier(2)
        out = [None, None]
        ts = [threading.Thread(target=_create, args=(cats[i], tenant,
                                                     "last" if same_name else f"v{i}",
                                                     go, out, i)) for i in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(10)
        results.append(out)
        assert cats[0].snapshot().tenants[tenant].used == 5 * G
    for reg in regs:
        reg.close()
    return results


def test_quota_race_has_exactly_one_winner(etcd1):
    for out in _race(etcd1, 20, same_name=False):
        won = [o for o in out if not isinstance(o, Exception)]
        assert len(won) == 1, out
        assert sum(isinstance(o, QuotaExceeded) for o in out) == 1, out


def test_same_name_race_makes_one_volume(etcd1):
    for a, b in _race(etcd1, 5, same_name=True):
        assert a == b                                # both got the one volume


def test_watch_follows_the_catalog(etcd1):
    cat = catalog(etcd1)
    regs = two_pairs(cat)
    cat.put_tenant("t", 10 * G)
    snap = cat.snapshot()
    w = cat.watch(snap.revision + 1)
    try:
        v = cat.create_volume("t", "v0", G)
        cat.resize_volume("t", "v0", 2 * G)
        cat.delete_volume("t", "v0")
        regs[0].close()
        want = {"volume gone", "member gone"}
        seen, mirror = set(), snap
        deadline = time.monotonic() + 10
        while want - seen:
            assert time.monotonic() < deadline, seen
            for ch in w.get(1) or ():
                mirror = mirror.apply(ch)
                if ch.kind == "volumes" and ch.record is not None:
                    seen.add(f"volume size {ch.record.size}")
                if ch.kind == "volumes" and ch.record is None and ch.name == v.uuid:
                    seen.add("volume gone")
                if ch.kind == "members" and ch.record is None and ch.name == "a1":
                    seen.add("member gone")
        assert {f"volume size {G}", f"volume size {2 * G}"} <= seen
        # the watched mirror equals a fresh read
        now = cat.snapshot()
        assert (mirror.volumes, mirror.tenants, mirror.pairs, mirror.members) == \
               (now.volumes, now.tenants, now.pairs, now.members)
    finally:
        w.close()
        regs[1].close()


REGISTRANT = """
import sys, time
from srrs.ctrl import etcd
from srrs.ctrl.cluster_catalog import Catalog, Member
cat = Catalog(etcd.Client(sys.argv[1].split(","), timeout=1))
cat.register(Member("ctl-a", pair="p1", addresses={"nvmf": ["10.0.0.1:4420"]},
                    capacity=1 << 40, version="0.1.0"), ttl=int(sys.argv[2]))
print("registered", flush=True)
time.sleep(60)
"""


def test_registration_vanishes_within_ttl_after_kill_9(etcd1):
    cat = catalog(etcd1)
    ttl = 2
    p = subprocess.Popen([sys.executable, "-c", REGISTRANT, ",".join(etcd1.endpoints), str(ttl)],
                         stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert p.stdout.readline().strip() == "registered"
        time.sleep(ttl * 1.5)                       # kept alive past its TTL
        m = cat.get("members", "ctl-a")
        assert m is not None and m.pair == "p1" and m.addresses == {"nvmf": ["10.0.0.1:4420"]}
        p.kill()
        p.wait()
        t0 = time.monotonic()
        while cat.get("members", "ctl-a") is not None:
            # etcd ends an expired lease within its TTL plus its 0.5 s expiry check
            assert time.monotonic() - t0 < ttl + 1.5, "member key outlived its controller"
            time.sleep(0.05)
    finally:
        p.kill()
        p.wait()


def test_registration_update_and_close(etcd1):
    cat = catalog(etcd1)
    r = cat.register(Member("c1", pair="p1", capacity=100), ttl=2)
    r.update(allocated=40, health="degraded")
    m = cat.get("members", "c1")
    assert (m.allocated, m.health, m.capacity) == (40, "degraded", 100)
    r.close()
    assert cat.get("members", "c1") is None          # revoked: gone at once


def test_follow_starts_over_after_compaction(etcd1):
    cat = catalog(etcd1)
    cat.put_tenant("t", G)
    stop = threading.Event()
    it = cat.follow(stop, timeout=0.2)
    snap, chs = next(it)
    assert chs is None and snap.tenants["t"].quota == G
    # changes the follower has not read yet are compacted away under it
    cat.put_tenant("t", 2 * G)
    rev = cat.etcd.put("/srrs/other", "x")
    cat.etcd.compact(rev)
    cat.put_tenant("u", 3 * G)
    snap, chs = next(it)
    assert chs is None                              # a fresh snapshot, not a gap
    assert snap.tenants["t"].quota == 2 * G and snap.tenants["u"].quota == 3 * G
    cat.put_tenant("t", 5 * G)
    snap, chs = next(it)
    assert [c.name for c in chs] == ["t"] and snap.tenants["t"].quota == 5 * G
    stop.set()
    assert list(it) == []
