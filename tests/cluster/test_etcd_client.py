"""ctrl/etcd.py against real etcd (Debian's etcd-server): keys, transactions,
leases, watches that survive the loss of their member."""

import time

import pytest

from srrs.ctrl import etcd
from tests.cluster.etcd import Cluster


def test_keys_and_txn(etcd1):
    c = etcd.Client(etcd1.endpoints, timeout=1)
    rev = c.put("/t/a", {"x": 1})
    c.put("/t/b", b"raw")
    c.put("/u", "other")
    kvs, now = c.get("/t/", prefix=True)
    assert [(k.key, k.value) for k in kvs] == [("/t/a", b'{"x":1}'), ("/t/b", b"raw")]
    assert kvs[0].mod_revision == rev and now >= rev and kvs[0].json() == {"x": 1}
    # compare-and-swap: a stale revision fails and returns the failure branch's reads
    r = c.txn([etcd.mod_is("/t/a", rev - 1)], [etcd.put("/t/a", "no")], [etcd.get("/t/a")])
    assert not r.succeeded and r.responses[0][0].value == b'{"x":1}'
    r = c.txn([etcd.mod_is("/t/a", rev), etcd.absent("/t/c")],
              [etcd.put("/t/a", "yes"), etcd.put("/t/c", "new")])
    assert r.succeeded and c.get1("/t/a").value == b"yes" and c.get1("/t/c").value == b"new"
    assert c.txn([etcd.value_is("/t/c", "new")], [etcd.delete("/t/", prefix=True)]).succeeded
    assert c.get("/t/", prefix=True)[0] == [] and c.get1("/u").value == b"other"
    assert c.delete("/u") == 1 and c.delete("/u") == 0


def test_lease_ends_and_takes_its_keys(etcd1):
    c = etcd.Client(etcd1.endpoints, timeout=1)
    lid, ttl = c.grant(1)
    assert ttl >= 1
    c.put("/l/k", "v", lease=lid)
    assert c.get1("/l/k").lease == lid and c.keepalive(lid) >= 1
    deadline = time.monotonic() + ttl + 2
    while c.get1("/l/k") is not None:
        assert time.monotonic() < deadline, "leased key outlived its lease"
        time.sleep(0.1)
    assert c.keepalive(lid) == 0 and c.ttl(lid) == -1
    lid, _ = c.grant(5)
    c.put("/l/k2", "v", lease=lid)
    c.revoke(lid)
    assert c.get1("/l/k2") is None
    c.revoke(lid)                       # twice: not an error


def test_keepalive_thread_holds_the_key(etcd1):
    c = etcd.Client(etcd1.endpoints, timeout=1)
    lid, ttl = c.grant(1)
    c.put("/k/alive", "v", lease=lid)
    ka = etcd.KeepAlive(c, lid, ttl)
    time.sleep(2.5)
    assert c.get1("/k/alive") is not None and not ka.lost
    ka.stop()
    assert c.get1("/k/alive") is None


def test_watch_from_revision_survives_its_member_dying(etcd3):
    c = etcd.Client(etcd3.endpoints, timeout=0.5, deadline=5)
    first = c.put("/w/0", "0")
    w = c.watch("/w/", prefix=True, start_revision=first)   # from the past: replayed
    try:
        assert [e.kv.key for e in w.get(5)] == ["/w/0"]
        etcd3.members[c._cur].kill()                        # the member it reads from
        for i in range(1, 6):
            c.put(f"/w/{i}", str(i))
        c.delete("/w/3")
        got = []
        while len(got) < 6:
            b = w.get(5)
            assert b is not None, f"watch stalled after {got}"
            got += [(e.type, e.kv.key) for e in b]
        assert got == [("put", f"/w/{i}") for i in range(1, 6)] + [("delete", "/w/3")]
        assert w.get(0.3) is None                           # nothing twice
    finally:
        w.close()


def test_watch_from_now_misses_nothing_when_reopened(etcd3):
    c = etcd.Client(etcd3.endpoints, timeout=0.5, deadline=5)
    c.put("/n/old", "x")
    w = c.watch("/n/", prefix=True)                        # from now: /n/old is not news
    try:
        etcd3.members[c._cur].kill()
        for i in range(3):
            c.put(f"/n/{i}", str(i))                       # while the stream is reopened
        got = []
        while len(got) < 3:
            b = w.get(5)
            assert b is not None, f"watch stalled after {got}"
            got += [e.kv.key for e in b]
        assert got == ["/n/0", "/n/1", "/n/2"]
    finally:
        w.close()


def test_watch_of_a_compacted_revision_says_so(etcd1):
    c = etcd.Client(etcd1.endpoints, timeout=1)
    first = c.put("/c/a", "1")
    last = c.put("/c/a", "2")
    c.compact(last)
    w = c.watch("/c/", prefix=True, start_revision=first)
    try:
        with pytest.raises(etcd.Compacted):
            w.get(5)
    finally:
        w.close()


def test_no_member_answers_is_unavailable():
    c = etcd.Client(["http://127.0.0.1:1"], timeout=0.2, deadline=0.5)
    t = time.monotonic()
    with pytest.raises(etcd.Unavailable):
        c.get1("/x")
    assert time.monotonic() - t < 2
    with pytest.raises(ValueError):
        etcd.Client(["127.0.0.1:2379"])


def test_user_and_password(tmp_path):
    """etcd with auth on: requests and watches carry a token, fetched again
    when etcd lets it expire (--auth-token-ttl)."""
    with Cluster(1, extra=("--auth-token-ttl", "1")) as c:
        m = c.members[0]
        m.etcdctl("user", "add", "root:rootpw")
        m.etcdctl("user", "add", "srrs:pw")
        m.etcdctl("role", "add", "srrs")
        m.etcdctl("role", "grant-permission", "srrs", "--prefix=true", "readwrite", "/srrs/")
        m.etcdctl("user", "grant-role", "srrs", "srrs")
        m.etcdctl("auth", "enable")
        with pytest.raises(etcd.EtcdError):
            etcd.Client(c.endpoints, timeout=1).get1("/srrs/x")
        with pytest.raises(etcd.EtcdError):
            etcd.Client(c.endpoints, timeout=1, user="srrs", password="no").get1("/srrs/x")
        cl = etcd.Client(c.endpoints, timeout=1, user="srrs", password="pw")
        rev = cl.put("/srrs/x", "1")
        with pytest.raises(etcd.EtcdError):
            cl.put("/elsewhere", "1")                   # the role's prefix only
        w = cl.watch("/srrs/", prefix=True, start_revision=rev)
        try:
            assert [e.kv.value for e in w.get(5)] == [b"1"]
            time.sleep(2.5)                             # the token expires unused
            cl.put("/srrs/x", "2")
            assert cl.get1("/srrs/x").value == b"2"
            assert [e.kv.value for e in w.get(5)] == [b"2"]
        finally:
            w.close()


def test_tls_with_client_certificate():
    with Cluster(1, tls=True) as c:
        t = c.tls
        with pytest.raises(etcd.Unavailable):       # no client certificate: refused
            etcd.Client(c.endpoints, timeout=1, deadline=1, ca_cert=t["ca"]).get1("/x")
        cl = etcd.Client(c.endpoints, timeout=1, ca_cert=t["ca"], cert=t["client_cert"],
                         key=t["client_key"])
        rev = cl.put("/x", "1")
        assert c.endpoints[0].startswith("https://") and cl.get1("/x").value == b"1"
        w = cl.watch("/x", start_revision=rev)
        try:
            assert [e.kv.value for e in w.get(5)] == [b"1"]
        finally:
            w.close()
