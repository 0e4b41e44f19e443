"""`Catalog.replace_node` in real etcd (docs/architecture.md, Cluster,
Replacing a server): one transaction gives the pair [survivor, new], records
the old node as replaced and deletes its registration; every refusal changes
nothing; the solo lease is refused to a controller that is not one of the
pair's catalog nodes (the replacement before, the replaced server after)."""

import pytest

from srrs.ctrl import etcd, ha
from srrs.ctrl.cluster_catalog import CatalogError, Member, NotFound
from srrs.ctrl.cluster_lease import SoloLease

from .test_catalog import G, catalog

ADDR = {"coord": "tcp://10.0.0.3:5601", "mirror": "10.0.0.3:4521"}


def _lease(etcd1, prefix):
    return SoloLease(etcd.Client(etcd1.endpoints, timeout=0.5, deadline=2), prefix)


def _ask(lease, node, gen=(1, "a")):
    g = ha.Gen(*gen)
    return lease.request("a+b", node, 2.0, g, ha.Gen(g.n + 1, node), 0.0)


def test_replace_node(etcd1):
    p = "/rpl/"
    cat, lease = catalog(etcd1, p), _lease(etcd1, p)
    cat.put_pair("a+b", ["a", "b"], 10 * G)
    cat.put_pair("d+e", ["d", "e"], 10 * G)
    regs = [cat.register(Member(n, pair="a+b", addresses=dict(ADDR)), ttl=5) for n in "ab"]
    before = cat.snapshot().pairs["a+b"]
    with pytest.raises(NotFound, match="x is a node of no pair"):
        cat.replace_node("x", "c")
    with pytest.raises(CatalogError, match="c is not registered"):
        cat.replace_node("b", "c")
    with pytest.raises(CatalogError, match="d is already a node of pair d\\+e"):
        cat.replace_node("b", "d")
    regs.append(cat.register(Member("c", pair="x+y", addresses=dict(ADDR)), ttl=5))
    with pytest.raises(CatalogError, match="registered for pair 'x\\+y'"):
        cat.replace_node("b", "c")
    regs[-1].update(pair="a+b", addresses={})
    with pytest.raises(CatalogError, match="registered no coord and mirror address"):
        cat.replace_node("b", "c")
    regs[-1].update(addresses=dict(ADDR))
    # c is registered for a+b but no node of it: it never serves alone
    ev = _ask(lease, "c")
    assert isinstance(ev, ha.LeaseDenied) and "c is not a node of pair a+b" in ev.reason
    # the survivor must hold the solo lease: b may be serving otherwise
    with pytest.raises(CatalogError, match="the survivor a does not serve alone.*not held"):
        cat.replace_node("b", "c")
    assert isinstance(_ask(lease, "b"), ha.LeaseGranted)
    with pytest.raises(CatalogError, match="does not serve alone.*held by b"):
        cat.replace_node("b", "c")
    assert lease.release("a+b", "b")
    assert isinstance(_ask(lease, "a", (2, "b")), ha.LeaseGranted)
    regs[0].update(health="degraded")
    with pytest.raises(CatalogError, match="survivor a is not healthy"):
        cat.replace_node("b", "c")
    regs[0].update(health="ok")
    assert cat.snapshot().pairs["a+b"] == before and "b" in cat.snapshot().members
    pr = cat.replace_node("b", "c")
    assert (pr.nodes, pr.replaced, pr.capacity) == (("a", "c"), ("b",), 10 * G)
    s = cat.snapshot()
    assert s.pairs["a+b"] == pr and "b" not in s.members and {"a", "c"} <= set(s.members)
    # b never serves alone again, and cannot come back as a replacement
    ev = _ask(lease, "b", (3, "a"))
    assert isinstance(ev, ha.LeaseDenied) and "b is not a node of pair a+b" in ev.reason
    with pytest.raises(CatalogError, match="already a node|node of no pair"):
        cat.replace_node("b", "c")
    # a pair-set without nodes keeps the pair's own
    cat.put_pair("a+b", None, 12 * G, new_nodes=["a", "b"])
    assert cat.snapshot().pairs["a+b"].nodes == ("a", "c")
    for r in regs:
        r.close()


def test_replace_refused_while_a_move_runs(etcd1):
    p = "/rplm/"
    cat, lease = catalog(etcd1, p), _lease(etcd1, p)
    cat.put_pair("a+b", ["a", "b"], 10 * G)
    cat.put_pair("d+e", ["d", "e"], 10 * G)
    regs = [cat.register(Member(n, pair=pr, addresses=dict(ADDR)), ttl=5)
            for n, pr in (("a", "a+b"), ("c", "a+b"), ("d", "d+e"))]
    cat.put_tenant("t", 10 * G)
    v = cat.create_volume("t", "v", G)
    cat.set_volume_state(v.uuid, "ready")
    src, dst = v.pair, ({"a+b", "d+e"} - {v.pair}).pop()
    cat.start_move("t", "v", dst, "a" if src == "a+b" else "d", "d" if dst == "d+e" else "a",
                   "00" * 32, 1.0)
    assert isinstance(_ask(lease, "a"), ha.LeaseGranted)
    with pytest.raises(CatalogError, match="a volume move to or from a\\+b is running"):
        cat.replace_node("b", "c")
    assert cat.snapshot().pairs["a+b"].nodes == ("a", "b")
    for r in regs:
        r.close()
