"""A create reads only the pairs and members written since its catalog's
last create (docs/architecture.md, Cluster), and is still exactly as fresh as
reading them all: changes made through another client (a pair added or
changed, a controller gone, one come back) are seen by the very next create."""

from srrs.ctrl import etcd
from srrs.ctrl.cluster_catalog import Catalog, Member

G = 1 << 30


class Counting(etcd.Client):
    """Counts the keys etcd sends back in transactions."""
    kvs = 0

    def txn(self, *a, **kw):
        r = super().txn(*a, **kw)
        self.kvs += sum(len(x) for x in r.responses if x)
        return r


def test_create_reads_only_what_changed(etcd1):
    other = Catalog(etcd.Client(etcd1.endpoints, timeout=1, deadline=5))
    regs = []
    for i in range(20):
        other.put_pair(f"p{i:02d}", [f"a{i}", f"b{i}"], 100 * G)
        regs += [other.register(Member(f"{s}{i}", pair=f"p{i:02d}"), ttl=5) for s in "ab"]
    other.put_tenant("t", 1000 * G)
    c = Counting(etcd1.endpoints, timeout=1, deadline=5)
    cat = Catalog(c)
    cat.create_volume("t", "v0", G)
    first = c.kvs
    assert first >= 60                          # the first create reads every pair and member
    for i in range(1, 6):
        c.kvs = 0
        cat.create_volume("t", f"v{i}", G)
        # tenant + the one pair the last create changed (+ one the lost race, if any)
        assert c.kvs <= 4, c.kvs
    for r in regs:
        r.close()


def test_the_view_sees_other_clients_changes_at_once(etcd1):
    other = Catalog(etcd.Client(etcd1.endpoints, timeout=1, deadline=5))
    other.put_pair("p1", ["a1", "b1"], 10 * G)
    other.put_pair("p2", ["a2", "b2"], 20 * G)
    r1 = other.register(Member("a1", pair="p1"), ttl=5)
    r2 = other.register(Member("a2", pair="p2"), ttl=5)
    other.put_tenant("t", 1000 * G)
    cat = Catalog(etcd.Client(etcd1.endpoints, timeout=1, deadline=5))
    assert cat.create_volume("t", "v0", G).pair == "p2"
    r2.close()                                  # p2's only controller went
    assert cat.create_volume("t", "v1", G).pair == "p1"
    r2 = other.register(Member("a2", pair="p2"), ttl=5)     # back
    other.put_pair("p3", ["a3"], 50 * G)        # a bigger pair, no controller yet
    assert cat.create_volume("t", "v2", G).pair == "p2"
    r3 = other.register(Member("a3", pair="p3"), ttl=5)
    assert cat.create_volume("t", "v3", G).pair == "p3"
    other.put_pair("p3", ["a3"], 2 * G)         # shrunk below p2's free space
    assert cat.create_volume("t", "v4", G).pair == "p2"
    r2.close()
    r3.close()
    assert cat.create_volume("t", "v5", G).pair == "p1"
    # a controller gone and another come in its place (same count of members)
    r1.close()
    r1b = other.register(Member("a1b", pair="p2"), ttl=5)
    assert cat.create_volume("t", "v6", G).pair == "p2"
    s = cat.snapshot()
    assert s.pairs["p1"].allocated == 2 * G and s.pairs["p2"].allocated == 4 * G
    assert s.tenants["t"].used == 7 * G
    r1b.close()
