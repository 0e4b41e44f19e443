"""Cluster-wide discovery (docs/architecture.md, Exports: Discovery) against a
real etcd and real controller processes: the discovery controller of any
controller lists the volumes of every pair that admit the connecting host,
at the addresses their pair's controllers registered, and a persistent
discovery connection gets the discovery-log-change AEN when that list
changes. Volume records are written with the Catalog API (convergence, which
creates the replicas, is not needed to discover them)."""

import struct
from dataclasses import replace

import pytest

from srrs.ctrl import etcd, launch
from srrs.ctrl.cluster import volume_nqn
from srrs.ctrl.cluster_catalog import Catalog, Member, _enc
from srrs.nvmf.target import DISCOVERY_NQN, discover
from tests.nvmf import wire

from .etcd import Cluster
from .etcd import wait_until as _wait

PREFIX = "/srrs/disc"
H1 = "nqn.2014-08.org.nvmexpress:uuid:5352532d-0000-4000-8000-0000000000d1"
H2 = "nqn.2014-08.org.nvmexpress:uuid:5352532d-0000-4000-8000-0000000000d2"
GiB = 1 << 30


def _controller(tmp_path, c, name: str, port: int) -> launch.Controller:
    conf = launch.config(launch.controller(name, tmp_path / f"{name}.sock"),
                         bdevs=[launch.bdev("m0", "malloc", size="16MiB")],
                         nvmf=launch.nvmf([f"127.0.0.1:{port}"]))
    conf["cluster"] = {"etcd": c.endpoints, "name": name, "prefix": PREFIX, "lease_s": 3}
    c = launch.Controller(tmp_path / f"{name}.toml", conf=conf, start=False)
    c.start(wait=False)
    return c


def _publish(cat: Catalog, tenant: str, name: str, hosts, size=GiB, state="ready"):
    """A volume record as convergence leaves it: placed, exported, with its hosts."""
    v = replace(cat.create_volume(tenant, name, size), hosts=tuple(hosts), state=state)
    cat.etcd.put(cat.key("volumes", v.uuid), _enc(v))
    return v


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Controller a1 (pair a1+a2, small) and b1 (pair b1+b2, roomy) as real
    processes; a2 and b2 registrations only (at 127.0.0.4 and 127.0.0.3). One for the
    module: the tests use distinct volume names."""
    with Cluster(1) as c:
        yield from _cluster(tmp_path_factory.mktemp("disc"), c)


def _cluster(tmp_path, etcd1):
    cat = Catalog(etcd.Client(etcd1.endpoints), PREFIX)
    cat.put_pair("a1+a2", nodes=("a1", "a2"), capacity=2 * GiB)
    cat.put_pair("b1+b2", nodes=("b1", "b2"), capacity=100 * GiB)
    cat.put_tenant("t", quota=50 * GiB)
    pa, pb = launch.free_ports(2)
    a1, b1 = _controller(tmp_path, etcd1, "a1", pa), _controller(tmp_path, etcd1, "b1", pb)
    b2 = cat.register(Member("b2", pair="b1+b2", addresses={"nvmf": ["127.0.0.3:4420"]}), ttl=5)
    a2 = cat.register(Member("a2", pair="a1+a2", addresses={"nvmf": ["127.0.0.4:4420"]}), ttl=5)
    try:
        a1.wait_ready()
        b1.wait_ready()
        assert _wait(lambda: set(cat.snapshot().members) >= {"a1", "b1", "b2"})
        yield cat, a1, pa, b1, pb, b2
    finally:
        b2.keeper.stop(revoke=False)
        a2.keeper.stop(revoke=False)
        a1.stop()
        b1.stop()


def _nqns(port, hostnqn):
    return {(e["subnqn"], e["traddr"], e["trsvcid"]) for e in discover("127.0.0.1", port,
                                                                       hostnqn=hostnqn)}


def test_discovers_volumes_of_another_pair_by_allow_list(cluster):
    cat, a1, pa, b1, pb, b2 = cluster
    v = _publish(cat, "t", "v1", [H1])
    open_ = _publish(cat, "t", "v2", ["*"])
    hidden = _publish(cat, "t", "v3", [])           # no host: listed to nobody
    creating = _publish(cat, "t", "v4", [H1], state="creating")
    assert v.pair == "b1+b2"                        # the emptiest pair
    want = {(volume_nqn(v.uuid), "127.0.0.1", str(pb)), (volume_nqn(v.uuid), "127.0.0.3", "4420")}
    got = _wait(lambda: (lambda s: s if s >= want else None)(_nqns(pa, H1)))
    assert got and got >= want, got
    # the same from b1: every controller answers for the whole cluster (each
    # follows the catalog on its own watch: b1's view may be a moment behind a1's)
    got_b = _wait(lambda: (lambda s: s if s >= want else None)(_nqns(pb, H1)))
    assert got_b and got_b >= want, got_b
    nqns = {n for n, _, _ in got}
    assert volume_nqn(open_.uuid) in nqns
    assert volume_nqn(hidden.uuid) not in nqns and volume_nqn(creating.uuid) not in nqns
    # H2 is not on v1's list: it sees only the volume open to any host
    got2 = {n for n, _, _ in _nqns(pa, H2)}
    assert volume_nqn(open_.uuid) in got2 and volume_nqn(v.uuid) not in got2
    st = a1.rpc("status")["cluster"]
    assert st["catalog"]["volumes"] == 4 and st["discovery_pushes"] >= 1
    # b2's registration goes (its controller died): its address leaves the log
    b2.close()
    gone = (volume_nqn(v.uuid), "127.0.0.3", "4420")
    assert _wait(lambda: gone not in _nqns(pa, H1))
    assert (volume_nqn(v.uuid), "127.0.0.1", str(pb)) in _nqns(pa, H1)


def _aer(a):
    cid = a.next_cid()
    a.send(a.pdu(wire.CMD, wire.sqe(0x0C, cid)))
    return cid


def _wait_rsp(a, cid, timeout=10.0):
    a.s.settimeout(timeout)
    while True:
        t, _, hdr, _ = a.recv_pdu()
        dw0, _, _, _, rcid, status = struct.unpack("<IIHHHH", hdr[:16])
        if t == wire.RSP and rcid == cid:
            return status >> 1, dw0


def _log(a):
    st, _, _, d = a.get_log(0x70, 16 * 1024)
    assert st == 0
    gen, n = struct.unpack("<QQ", d[:16])
    return gen, {d[o + 256:o + 512].rstrip(b"\0").decode() for o in range(1024, 1024 * (1 + n), 1024)
                 if o + 1024 <= len(d)}


def test_persistent_discovery_connection_gets_the_log_change_aen(cluster):
    cat, a1, pa, b1, pb, b2 = cluster
    a, _ = wire.admin_session("127.0.0.1", pa, DISCOVERY_NQN, kato=30000, hostnqn=H1)
    try:
        # OAES advertises the discovery-log-change notice; the host enables it
        st, _, _, ident = a.identify(1)
        assert struct.unpack_from("<I", ident, 92)[0] & 1 << 31
        assert a.admin(0x09, cdw10=0x0B, cdw11=1 << 31)[0] == 0
        gen0, before = _log(a)
        cid = _aer(a)
        v = _publish(cat, "t", "new", [H1])
        st, dw0 = _wait_rsp(a, cid)
        assert st == 0 and dw0 & 7 == 2 and (dw0 >> 8) & 0xFF == 0xF0 and (dw0 >> 16) & 0xFF == 0x70
        gen1, after = _log(a)
        assert gen1 > gen0 and volume_nqn(v.uuid) in after and volume_nqn(v.uuid) not in before
        # the notice comes again once the log was read: the volume is deleted
        cid = _aer(a)
        cat.delete_volume("t", "new")
        st, dw0 = _wait_rsp(a, cid)
        assert st == 0 and (dw0 >> 16) & 0xFF == 0x70
        assert volume_nqn(v.uuid) not in _log(a)[1]
    finally:
        a.close()


def test_target_table_filters_per_host_and_replaces_local_listing():
    """The C table alone (no etcd): per-host filtering, a local subsystem the
    table lists is reported at the table's addresses only, a wildcard entry at
    the address the host used, and a local change raises the notice too."""
    from srrs.ffi.binding import Core
    from srrs.nvmf.target import NvmfTarget

    core = Core(reactors=1)
    tgt = NvmfTarget(core)
    try:
        port = tgt.add_listener("127.0.0.1", 0)
        both = "nqn.2026-11.io.srrs:vol:both"
        tgt.add_subsystem(both, allow_any_host=True)
        tgt.set_discovery([
            {"subnqn": both, "traddr": "0.0.0.0", "trsvcid": "4420", "hosts": [H1]},
            {"subnqn": both, "traddr": "10.9.9.9", "trsvcid": "4420", "hosts": [H1]}])
        assert _nqns(port, H1) == {(both, "127.0.0.1", "4420"), (both, "10.9.9.9", "4420")}
        assert _nqns(port, H2) == set()   # the cluster's list rules for a cluster volume
        assert tgt.discovery_table()[1]["traddr"] == "10.9.9.9"
        a, _ = wire.admin_session("127.0.0.1", port, DISCOVERY_NQN, kato=30000, hostnqn=H2)
        try:
            assert a.admin(0x09, cdw10=0x0B, cdw11=1 << 31)[0] == 0
            gen0 = _log(a)[0]
            cid = _aer(a)
            tgt.add_subsystem("nqn.2026-11.io.srrs:local2", allow_any_host=True)
            st, dw0 = _wait_rsp(a, cid)
            assert st == 0 and (dw0 >> 16) & 0xFF == 0x70
            gen1, seen = _log(a)
            assert gen1 > gen0 and seen == {"nqn.2026-11.io.srrs:local2"}
            tgt.set_discovery([])
            assert (both, "127.0.0.1", str(port)) in _nqns(port, H2)
        finally:
            a.close()
    finally:
        tgt.close()
        core.close()


def test_discovery_entries_pure():
    """From a snapshot: a volume at every registered address of its pair's
    controllers, a peer's wildcard address left out (nobody can reach it), this
    controller's own wildcard kept (the C target reports the address the host
    used), no entry for a volume without hosts or not exported yet."""
    from srrs.ctrl.cluster_catalog import Pair, Snapshot, Volume
    from srrs.ctrl.cluster_view import discovery_entries

    snap = Snapshot(9, members={
        "x1": Member("x1", "x1+x2", {"nvmf": ["0.0.0.0:4420", "[fd00::1]:4421"]}),
        "x2": Member("x2", "x1+x2", {"nvmf": ["0.0.0.0:4420", "10.0.0.2:4420"]})},
        pairs={"x1+x2": Pair("x1+x2", ("x1", "x2"))},
        volumes={u: Volume(u, u, 1, "t", "x1+x2", st, 1, h) for u, st, h in (
            ("u1", "ready", ("*",)), ("u2", "ready", ()), ("u3", "creating", ("*",)))})
    got = [(e["subnqn"], e["traddr"], e["trsvcid"], tuple(e["hosts"]))
           for e in discovery_entries(snap, "x1")]
    n = volume_nqn("u1")
    assert got == [(n, "0.0.0.0", "4420", ("*",)), (n, "fd00::1", "4421", ("*",)),
                   (n, "10.0.0.2", "4420", ("*",))]
