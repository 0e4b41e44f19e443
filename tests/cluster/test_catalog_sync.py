"""Catalog convergence and `srrs cluster` (docs/architecture.md, Cluster): three
real etcd members and two pairs of real controller processes (a+b, c+d), each
etcd member and each controller in a network namespace of its own on one
bridge (tests/cluster/etcd.py Hub), and a Linux guest in one more.

Volumes created with the CLI land on the emptiest pair; the catalog, the
replicas (pool volumes on both controllers of the pair), the mirrors, the
subsystems and the guest kernel's `nvme discover` of every controller agree,
and `nvme connect-all` gives the guest every volume at its size; two creates
racing through different controllers for the last of a quota: exactly one
wins; a resize grows the replicas and the namespace; a controller restarted
after its catalog changed converges."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from srrs.ctrl import launch
from srrs.ctrl.cluster import volume_nqn
from srrs.nvmf.target import discover
from srrs.rpcdef import NoSpace
from tests.pair.netns import in_netns

from . import world as world_mod

# No timing asserted, only outcomes. It runs in the main lane (ci/test): the
# side lane took the move tests' kill -9 cases, and the two lanes stay even.

MiB = 1 << 20
HOST = "nqn.2014-08.org.nvmexpress:uuid:catalogsync-host"
PREFIX = "/srrs/cs"


KEYS = ["e0", "e1", "e2", "a", "b", "c", "d", "h"]   # etcd x3, controllers, the hosts' side


class World(world_mod.World):
    def discover(self, n):
        """Our initiator's discovery log of controller n, from the hosts' namespace."""
        with in_netns(self.ns_h):
            return discover(self.addr(n), self.ports[n], hostnqn=HOST)


def _node(tmp, etcd, ports, hub):
    def node(n):
        # v0: a configured paired volume beside the catalog's (on a file: a RAM
        # replica would make every restart a full resync of every volume)
        return {"bdev": [launch.bdev("v0", "file", "16MiB", path=str(tmp / f"{n}.v0"))],
                "pool": [launch.pool("p0", [launch.fragment(tmp / f"{n}.pool", "512MiB")])],
                "nvmf": launch.nvmf([f"{hub.hosts[n][1]}:{ports[n]}"]),
                "cluster": {"etcd": etcd.endpoints, "prefix": PREFIX, "lease_s": 3}}
    return node


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cs")
    with world_mod.netns_world(World, tmp, KEYS, "srrs-cs", "abcd", HOST) as w:
        for names in (("a", "b"), ("c", "d")):
            w.start_pair(names, _node(tmp, w.etcd, w.ports, w.hub))
        yield w


def _ctl(pairs, n):
    return next(p.nodes[n] for p in pairs if n in p.nodes)


def cli(ctl, *args):
    r = subprocess.run([sys.executable, "-m", "srrs.ctrl.cli", "-s", ctl.sock,
                        "cluster", *args, "--json"], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ))
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else None), r.stderr


def _wait(fn, timeout=20.0, what="condition"):
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {timeout} s (last: {v!r})")
        time.sleep(0.2)


def _replicas(ctl):
    """{uuid: size} of this controller's cluster replicas in its pool."""
    return {v["name"][2:]: v["size"] for v in ctl.rpc("volume_list")
            if v["name"].startswith("c-")}


def _subsystems(ctl):
    return {s["nqn"]: s for s in ctl.rpc("nvmf_get_subsystems")
            if s["nqn"].startswith("nqn.2026-11.io.srrs:vol:")}


def _agrees(pairs, ports, want):
    """Every controller has exactly the volumes of `want` ({uuid: Volume dict}) on its pair."""
    for p in pairs:
        for n, ctl in p.nodes.items():
            mine = {u: v for u, v in want.items() if n in v["pair"].split("+")}
            if set(_replicas(ctl)) != set(mine):
                return False
            subs = _subsystems(ctl)
            if set(subs) != {volume_nqn(u) for u in mine}:
                return False
            for u, v in mine.items():
                s = subs[volume_nqn(u)]
                ns = s["namespaces"]
                if [x["nsid"] for x in ns] != [1] or ns[0]["uuid"] != u:
                    return False
                if sorted(s["hosts"]) != sorted(h for h in v["hosts"] if h != "*"):
                    return False
    return True


def _entries(out):
    """nvme discover's text: one {field: value} per log entry."""
    ents = []
    for block in out.split("=====Discovery Log Entry")[1:]:
        e = {}
        for line in block.splitlines():
            k, sep, v = line.partition(":")
            if sep and k.strip() and " " not in k.strip():
                e[k.strip()] = v.strip()
        ents.append(e)
    return ents


def _guest_agrees(w, cat):
    """The Linux kernel's initiator agrees with the catalog: `nvme discover` of
    every controller lists every volume (HOST is on every allow-list) at the
    two controllers of its pair, and `nvme connect-all` through one of them
    gives the guest one multipath namespace per volume, with its uuid and size."""
    g = w.guest()
    want = {volume_nqn(u): {(w.addr(m), str(w.ports[m])) for m in v["pair"].split("+")}
            for u, v in cat.items()}
    for n in "abcd":
        out = g.check(f"nvme discover -t tcp -a {w.addr(n)} -s {w.ports[n]}", timeout=60)
        got = {}
        for e in _entries(out):
            if e.get("subnqn", "").startswith("nqn.2026-11.io.srrs:vol:"):
                got.setdefault(e["subnqn"], set()).add((e["traddr"], e["trsvcid"]))
        assert got == want, f"discovery of {n}:\n{out}"
    g.check(f"nvme connect-all -t tcp -a {w.addr('a')} -s {w.ports['a']}", timeout=120)
    try:
        # a multipath head nvme<S>n<N> and its paths nvme<S>c<C>n<N>
        heads = ("for d in /sys/block/nvme*; do n=${d##*/}; case $n in *c*) continue;; esac; "
                 "echo $(cat $d/uuid) $(cat $d/size) "
                 "$(ls -d /sys/block/${n%n*}c*n${n##*n} | wc -l); done")
        want_ns = {(u, v["size"] // 512, 2) for u, v in cat.items()}
        seen = set()
        for _ in range(100):       # both paths of every namespace, as they come up
            seen = {(u, int(sz), int(np)) for u, sz, np in
                    (ln.split() for ln in g.check(heads, timeout=30).splitlines() if ln.strip())}
            if seen == want_ns:
                break
            g.check("sleep 0.3")
        assert seen == want_ns, g.run("nvme list-subsys; ls /sys/block")[1]
    finally:
        g.run("nvme disconnect-all", timeout=60)


def _catalog(ctl):
    return {v["uuid"]: v for v in ctl.rpc("cluster_volumes")}


def test_cli_placement_and_agreement(world):
    w = world
    pairs, ports = w.pairs, w.ports
    a, c = _ctl(pairs, "a"), _ctl(pairs, "c")
    assert cli(a, "pair-set", "a+b", "--capacity", "192MiB", "--zone", "z1")[0] == 0
    assert cli(a, "pair-set", "c+d", "--capacity", "320MiB")[0] == 0
    rc, t, err = cli(c, "tenant-set", "t1", "--quota", "4GiB")
    assert rc == 0 and t["quota"] == 4 << 30, err
    _wait(lambda: {x["name"] for x in cli(a, "pairs")[1] if x["members"]} == {"a+b", "c+d"},
          what="both pairs live")
    got = {}
    for name in ("v1", "v2", "v3"):
        rc, v, err = cli(a, "volume-create", name, "--size", "64MiB", "--tenant", "t1",
                         "--hosts", HOST)
        assert rc == 0, err
        got[name] = v
    # most free space first: 320M free -> c+d, 256M -> c+d, then 192M = 192M: a tie,
    # which the new volume's uuid breaks (placement spreads racing creates)
    assert [got[n]["pair"] for n in ("v1", "v2")] == ["c+d", "c+d"]
    assert got["v3"]["pair"] in ("a+b", "c+d")
    # idempotent by name; another size is a conflict (AlreadyExists)
    rc, again, _ = cli(c, "volume-create", "v1", "--size", "64MiB", "--tenant", "t1")
    assert rc == 0 and again["uuid"] == got["v1"]["uuid"]
    rc, _, err = cli(c, "volume-create", "v1", "--size", "1GiB", "--tenant", "t1")
    assert rc != 0 and "exists" in err
    rc, _, err = cli(c, "volume-create", "big", "--size", "4GiB", "--tenant", "t1")
    assert rc != 0 and "quota" in err
    # the zone label: only a+b has z1
    rc, v4, err = cli(c, "volume-create", "v4", "--size", "64MiB", "--tenant", "t1",
                      "--zone", "z1", "--hosts", "*")
    assert rc == 0 and v4["pair"] == "a+b", err
    _wait(lambda: _agrees(pairs, ports, _catalog(a)), what="catalog, replicas and subsystems")
    cat = _catalog(a)
    assert {v["name"] for v in cat.values()} == {"v1", "v2", "v3", "v4"}
    _wait(lambda: all(v["state"] == "ready" for v in _catalog(a).values()), what="ready")
    # the discovery log of every controller lists every volume this host may use,
    # anywhere in the cluster, at the addresses of the two controllers of its pair
    every = {volume_nqn(u) for u in cat}
    for n in "abcd":
        log = w.discover(n)
        assert {e["subnqn"] for e in log if e["subtype"] == "nvme"} == every
    _guest_agrees(w, cat)
    # both controllers of a pair export the mirror (not the replica) and its ANA state
    for n in "cd":
        ctl = _ctl(pairs, n)
        st = ctl.rpc("pair_status")
        # the configured paired volume v0 (mirror volume id 0) and the catalog's
        assert {m["name"] for m in st["volumes"]} == {"v0"} | {
            f"c-{v['uuid']}" for v in got.values() if v["pair"] == "c+d"}
        _wait(lambda ctl=ctl: all(s["ana_groups"][0]["state"] == "optimized"
                                  for s in _subsystems(ctl).values()), what="ANA optimized")
    # the host list follows the catalog
    rc, _, err = cli(a, "volume-hosts", "v1", "--tenant", "t1", "--hosts", "[]")
    assert rc == 0, err
    _wait(lambda: _agrees(pairs, ports, _catalog(a)), what="hosts")
    assert not [e for e in w.discover("c")
                if e["subnqn"] == volume_nqn(got["v1"]["uuid"])]
    rc, tenants, _ = cli(a, "tenants")
    assert rc == 0 and next(t for t in tenants if t["name"] == "t1")["used"] == 4 * 64 * MiB
    rc, st, _ = cli(c, "status")
    assert rc == 0 and st["volumes"] == 4 and st["sync"]["pair"] == "c+d"
    # the catalog's volumes are not the config's: save_config leaves them out
    saved = os.path.join(os.path.dirname(c.config), "saved.toml")
    c.rpc("save_config", {"path": saved})
    text = open(saved).read()
    assert "io.srrs:vol:" not in text and '"c-' not in text


def test_resize_grows_replicas_and_namespace(world):
    pairs = world.pairs
    a = _ctl(pairs, "a")
    v = next(x for x in _catalog(a).values() if x["name"] == "v4")
    rc, nv, err = cli(a, "volume-resize", "v4", "--tenant", "t1", "--size", "96MiB")
    assert rc == 0 and nv["size"] == 96 * MiB, err
    for n in "ab":
        ctl = _ctl(pairs, n)
        _wait(lambda ctl=ctl: _replicas(ctl).get(v["uuid"]) == 96 * MiB, what=f"replica on {n}")
        _wait(lambda ctl=ctl: any(b["name"] == f"c-{v['uuid']}" and b["size"] == 96 * MiB
                                  for b in ctl.rpc("bdev_list")), what=f"mirror on {n}")
        _wait(lambda ctl=ctl: [x["nsid"] for x in
                               _subsystems(ctl)[volume_nqn(v["uuid"])]["namespaces"]] == [1],
              what=f"namespace back on {n}")
    rc, _, err = cli(a, "volume-resize", "v4", "--tenant", "t1", "--size", "32MiB")
    assert rc != 0 and "shrink" in err


def test_quota_race_through_two_controllers(world):
    pairs = world.pairs
    a, c = _ctl(pairs, "a"), _ctl(pairs, "c")
    c.rpc("cluster_tenant_set", {"name": "race", "quota": 0})
    size = 4 * MiB
    for i in range(10):
        c.rpc("cluster_tenant_set", {"name": "race", "quota": (i + 1) * size})
        barrier, res = threading.Barrier(2), {}

        def go(ctl, name, barrier=barrier, res=res):
            barrier.wait()
            try:
                res[name] = ctl.rpc("cluster_volume_create",
                                    {"name": name, "size": size, "tenant": "race"})
            except NoSpace as e:
                res[name] = e

        ts = [threading.Thread(target=go, args=(ctl, f"r{i}{x}")) for ctl, x in ((a, "a"), (c, "c"))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        won = [k for k, v in res.items() if isinstance(v, dict)]
        assert len(won) == 1 and len(res) == 2, res
    t = next(x for x in a.rpc("cluster_tenants") if x["name"] == "race")
    assert t["used"] == 10 * size and t["volumes"] == 10


def test_restart_converges(world):
    w = world
    pairs, ports = w.pairs, w.ports
    a, b = _ctl(pairs, "a"), _ctl(pairs, "b")
    a.rpc("cluster_pair_set", {"name": "a+b", "capacity": 1 << 30, "zone": "z1"})
    a.rpc("cluster_tenant_set", {"name": "rs", "quota": 1 << 30})
    old = a.rpc("cluster_volume_create", {"name": "old", "size": 16 * MiB, "tenant": "rs",
                                          "zone": "z1"})
    _wait(lambda: _agrees(pairs, ports, _catalog(a)), what="converged before")
    assert old["uuid"] in _replicas(b)
    b.stop()
    assert a.rpc("cluster_volume_delete", {"name": "old", "tenant": "rs"}) is True
    nv = a.rpc("cluster_volume_create", {"name": "new", "size": 32 * MiB, "tenant": "rs",
                                         "zone": "z1", "hosts": [HOST]})
    assert nv["pair"] == "a+b"
    _wait(lambda: nv["uuid"] in _replicas(a), what="the new volume on a")
    b.restart()
    try:
        _wait(lambda: _agrees(pairs, ports, _catalog(a)), timeout=30, what="b converged")
        assert nv["uuid"] in _replicas(b) and old["uuid"] not in _replicas(b)
        pairs[0].wait_state("PAIRED", 30)
    except (AssertionError, RuntimeError):
        for x in (a, b):     # what the pair and the sync saw, for the failure report
            print(json.dumps({"pair": x.rpc("pair_status"), "status": x.rpc("cluster_status")},
                             indent=1))
        raise
    log = w.discover("b")
    assert volume_nqn(nv["uuid"]) in {e["subnqn"] for e in log}


AUTOCONNECT = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "host",
                           "srrs-autoconnect")


def _paths(g):
    """{(subnqn, traddr, trsvcid)} of the guest kernel's SRRS I/O controllers."""
    out = g.check("for d in /sys/class/nvme/nvme*; do [ -e $d/subsysnqn ] || continue; "
                  "echo $(cat $d/subsysnqn) $(cat $d/address); done", timeout=30)
    got = set()
    for ln in out.splitlines():
        nqn, _, addr = ln.partition(" ")
        if not nqn.startswith("nqn.2026-11.io.srrs:vol:"):
            continue
        kv = dict(x.split("=", 1) for x in addr.strip().split(",") if "=" in x)
        got.add((nqn, kv.get("traddr"), kv.get("trsvcid")))
    return got


def _discovery_ctrls(g) -> int:
    out = g.check("cat /sys/class/nvme/nvme*/subsysnqn 2>/dev/null; true", timeout=30)
    return sum(ln.strip() == "nqn.2014-08.org.nvmexpress.discovery" for ln in out.splitlines())


def test_plain_host_follows_the_cluster(world):
    """deploy/host/srrs-autoconnect, run in the guest as a user would (busybox
    sh, nvme-cli, the kernel's nvme-tcp): a persistent discovery controller on
    two controllers; a volume created for the host gets both its paths with no
    `nvme connect` by anyone (the discovery-log-change event); a volume whose
    allow-list drops the host, or that is deleted, loses its paths."""
    w = world
    pairs = w.pairs
    a = _ctl(pairs, "a")
    g = w.guest()
    a.rpc("cluster_tenant_set", {"name": "ac", "quota": 1 << 30})
    a.rpc("cluster_pair_set", {"name": "a+b", "capacity": 1 << 30})
    a.rpc("cluster_pair_set", {"name": "c+d", "capacity": 1 << 30})
    g.write_file("/tmp/srrs-autoconnect", open(AUTOCONNECT).read(), mode=0o755)
    eps = f"{w.addr('a')}:{w.ports['a']} {w.addr('c')}:{w.ports['c']}"
    job = g.spawn(f"/tmp/srrs-autoconnect -q {HOST} -i 20 {eps}", name="autoconnect")
    try:
        # its persistent discovery controllers first: the 15 s below are for the
        # event's path, not for a guest still booting on a loaded machine
        _wait(lambda: _discovery_ctrls(g) >= 2, timeout=90, what="the discovery controllers")
        vol = a.rpc("cluster_volume_create", {"name": "auto", "size": 16 * MiB, "tenant": "ac",
                                              "hosts": [HOST]})
        nqn = volume_nqn(vol["uuid"])
        want = {(nqn, w.addr(m), str(w.ports[m])) for m in vol["pair"].split("+")}
        t0 = time.monotonic()
        _wait(lambda: _paths(g) >= want, timeout=15, what="both paths of the new volume")
        took = time.monotonic() - t0
        assert took < 15, took      # the event, not the 20 s periodic pass
        dev = g.check(f"for d in /sys/block/nvme*n1; do [ \"$(cat $d/uuid)\" = {vol['uuid']} ] "
                      "&& echo ${d##*/}; done; true", timeout=30).split()
        assert dev, g.run("nvme list-subsys")[1]
        # the host leaves the allow-list: its paths go (the volume stays)
        a.rpc("cluster_volume_hosts", {"name": "auto", "tenant": "ac", "hosts": []})
        _wait(lambda: not {p for p in _paths(g) if p[0] == nqn}, timeout=40,
              what="paths gone after the allow-list change")
        # back on the list, then deleted: paths come, then go
        a.rpc("cluster_volume_hosts", {"name": "auto", "tenant": "ac", "hosts": [HOST]})
        _wait(lambda: _paths(g) >= want, timeout=40, what="paths back")
        assert a.rpc("cluster_volume_delete", {"name": "auto", "tenant": "ac"}) is True
        _wait(lambda: not {p for p in _paths(g) if p[0] == nqn}, timeout=40,
              what="paths gone after delete")
        assert job.poll() is None, job.output()
    finally:
        print(job.output() if job else "")
        job.kill()
        g.run("nvme disconnect-all", timeout=60)
