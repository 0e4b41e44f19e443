"""Cluster-unique NVMe controller-ID ranges claimed in a real etcd
(ctrl/cluster_cntlid.py; docs/architecture.md, Cluster, Controller-ID ranges):
two members get disjoint ranges, a member claiming again (a restart) gets its
own back, concurrent claimants never share an index, the lowest free index is
taken, a full space is a clear error, etcd down at start falls back to the
copy kept in the pair's state_dir. And controllers: the claim is made before
the NVMe/TCP target, whose Connect hands out IDs from it; explicit [nvmf]
cntlid_min/cntlid_max wins and claims nothing."""

import json
import threading

import pytest

from srrs.ctrl import cluster_cntlid as cc
from srrs.ctrl import etcd, launch
from tests.nvmf import wire

from .etcd import Cluster

P = "/srrs/ids/"
NQN = "nqn.2026-11.io.srrs:ids"


def _client(c: Cluster) -> etcd.Client:
    return etcd.Client(c.endpoints, timeout=1, deadline=5)


def _records(cl: etcd.Client) -> tuple:
    names = {kv.key.rsplit("/", 1)[1]: json.loads(kv.value)["index"]
             for kv in cl.get(P + "cntlids/", prefix=True)[0]}
    index = {int(kv.key.rsplit("/", 1)[1]): kv.value.decode()
             for kv in cl.get(P + "cntlid-index/", prefix=True)[0]}
    return names, index


def test_two_members_disjoint_and_a_restart_keeps_its_range(etcd1):
    cl = _client(etcd1)
    a = cc.claim(cl, P, "a")
    b = cc.claim(cl, P, "b")
    assert (a.index, a.min, a.max) == (0, 1, cc.BLOCK)
    assert (b.index, b.min, b.max) == (1, cc.BLOCK + 1, 2 * cc.BLOCK)
    # a restart: a new client, the same name, the same range
    assert cc.claim(_client(etcd1), P, "a") == a
    assert _records(cl) == ({"a": 0, "b": 1}, {0: "a", 1: "b"})
    # the last range ends inside the 16-bit controller-ID space
    last = cc.range_of(cc.MAX_INDEX - 1)
    assert cc.MAX_INDEX == 63 and last.max <= cc.CNTLID_MAX < last.max + cc.BLOCK


def test_lowest_free_index_and_a_full_space(etcd1):
    cl = _client(etcd1)
    for n in "abc":
        cc.claim(cl, P, n, max_index=3)
    with pytest.raises(cc.CntlidError, match=r"every controller-ID range is taken \(3 members.*"
                                             r"cntlid_min/cntlid_max"):
        cc.claim(cl, P, "d", max_index=3)
    # the operator frees b's range (a member gone for good): d takes index 1
    cl.delete(P + "cntlids/b")
    cl.delete(P + "cntlid-index/00001")
    assert cc.claim(cl, P, "d", max_index=3).index == 1
    assert cc.claim(cl, P, "a", max_index=3).index == 0
    # a record of another range size (or garbage) is refused, not reinterpreted
    cl.put(P + "cntlids/q", {"index": 5, "min": 1, "max": 64})
    with pytest.raises(cc.CntlidError, match=r"cntlids/q: range 1..64 \(index 5\) is not one"):
        cc.claim(cl, P, "q")
    cl.put(P + "cntlids/q", "junk")
    with pytest.raises(cc.CntlidError, match=r"not a controller-ID range record"):
        cc.claim(cl, P, "q")


def test_concurrent_claims_never_collide(etcd1):
    """24 members and 3 incarnations of one more claim at once, each on its own
    client: 25 distinct indices 0..24, one per name, both key sets agree."""
    names = [f"m{i}" for i in range(24)] + ["dup"] * 3
    go = threading.Barrier(len(names))
    got: dict = {}
    errors: list = []

    def run(i, n):
        cl = _client(etcd1)
        try:
            go.wait()
            got[i] = (n, cc.claim(cl, P, n).index)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)
        finally:
            cl.close()

    ts = [threading.Thread(target=run, args=(i, n)) for i, n in enumerate(names)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors
    by_name: dict = {}
    for n, idx in got.values():
        by_name.setdefault(n, set()).add(idx)
    assert all(len(v) == 1 for v in by_name.values()), by_name   # one index per name
    idx = sorted(next(iter(v)) for v in by_name.values())
    assert idx == list(range(25)), idx                             # none shared, lowest first
    names_rec, index_rec = _records(_client(etcd1))
    assert names_rec == {n: next(iter(v)) for n, v in by_name.items()}
    assert index_rec == {i: n for n, i in names_rec.items()}


def test_etcd_down_at_start_uses_the_kept_copy(tmp_path):
    sd = tmp_path / "state"
    sd.mkdir()
    with Cluster(1) as c:
        cl = _client(c)
        cc.claim(cl, P, "x")
        r = cc.claim_at_start(cl, P, "y", state_dir=str(sd))
        assert r.index == 1 and r.source == "etcd"
        assert json.loads((sd / cc.CACHE).read_text())["index"] == 1
    # etcd gone: y starts on its kept range at once, z (nothing kept) fails clearly
    dead = etcd.Client(c.endpoints, timeout=0.2, deadline=0.3)
    k = cc.claim_at_start(dead, P, "y", state_dir=str(sd), wait_s=5)
    assert (k.index, k.min, k.max, k.source) == (1, r.min, r.max, "cache")
    with pytest.raises(cc.CntlidError, match=r"within 1 s .*set \[nvmf\] cntlid_min"):
        cc.claim_at_start(dead, P, "z", state_dir=str(tmp_path / "none"), wait_s=1)
    # a kept copy of another cluster (prefix) or member is not ours
    with pytest.raises(cc.CntlidError):
        cc.claim_at_start(dead, "/other/", "y", state_dir=str(sd), wait_s=0.5)


# ---- controllers ---------------------------------------------------------------------

def _conf(tmp_path, c: Cluster, name: str, **nvmf_kw):
    conf = launch.config(launch.controller(name, tmp_path / f"{name}.sock"),
                         bdevs=[launch.bdev("m0", "malloc", size="16MiB")])
    conf["nvmf"] = launch.nvmf(["127.0.0.1:0"], [launch.subsystem(NQN, ["m0"])], **nvmf_kw)
    conf["cluster"] = {"etcd": c.endpoints, "name": name, "prefix": P, "lease_s": 2}
    return conf


def _port(ctl) -> int:
    return ctl.rpc("status")["nvmf"]["listeners"][0]["port"]


def test_controllers_take_their_range_before_hosts_connect(tmp_path, etcd1):
    a = launch.Controller(tmp_path / "a.toml", conf=_conf(tmp_path, etcd1, "a"))
    b = launch.Controller(tmp_path / "b.toml", conf=_conf(tmp_path, etcd1, "b"))
    x = launch.Controller(tmp_path / "x.toml", conf=_conf(tmp_path, etcd1, "x", cntlid_min=1))
    try:
        ids = {}
        for n, ctl in (("a", a), ("b", b)):
            st = ctl.rpc("status")
            ids[n] = st["nvmf"]["cntlids"]
            assert st["cluster"]["cntlids"]["min"] == ids[n]["min"]
            assert ids[n]["from"].startswith("cluster range ")
            conn, cntlid = wire.admin_session("127.0.0.1", _port(ctl), NQN)
            conn.close()
            assert ids[n]["min"] <= cntlid <= ids[n]["max"], (n, cntlid, ids[n])
        assert {ids["a"]["min"], ids["b"]["min"]} == {1, cc.BLOCK + 1}
        assert ids["a"]["max"] - ids["a"]["min"] + 1 == cc.BLOCK
        # explicit config wins: its own range, nothing claimed in etcd
        assert x.rpc("status")["nvmf"]["cntlids"] == {"min": 1, "max": 1000, "from": "config"}
        assert x.rpc("status")["cluster"]["cntlids"] is None
        assert set(_records(_client(etcd1))[0]) == {"a", "b"}
        # save_config leaves a derived range out (the next start claims it again)
        saved = tmp_path / "a.saved.toml"
        a.rpc("save_config", {"path": str(saved)})
        assert "cntlid" not in saved.read_text()
        assert "cntlid_min = 1\n" in (x.rpc("save_config", {"path": str(tmp_path / "x.s.toml")})
                                      and (tmp_path / "x.s.toml").read_text())
        # a restart (kill -9) gets its range back
        a.kill9()
        a.restart()
        assert a.rpc("status")["nvmf"]["cntlids"] == ids["a"]
    finally:
        for ctl in (a, b, x):
            ctl.stop()
