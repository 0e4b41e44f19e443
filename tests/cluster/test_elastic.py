"""The cluster grows and shrinks under load (docs/architecture.md, Cluster,
Rebalance and drain): three real etcd members, up to three pairs of real
controllers (a+b, then c+d and e+f added), each controller in a network
namespace of its own, and a Linux guest in one more that follows the cluster
with deploy/host/srrs-autoconnect (persistent discovery, connect-all on each
change, stale paths dropped) while fio writes and verifies every volume.

test_drain_refused_when_the_rest_lacks_space: a lone pair cannot be drained,
nor can it once another live pair (c+d) joins with too little capacity for its
volume; nothing moves and the refusal says why.
test_scale_out_rebalance_then_drain_back: 1 pair -> 2 pairs added (or c+d,
left too small by the test before, given its capacity) ->
`srrs cluster rebalance` -> `srrs cluster drain` of both new pairs -> back on
one pair; zero I/O errors, the data verifies, the new pairs are retired and
empty, and the catalog, the replicas and the subsystems agree."""

import os
import re
import time

import pytest

from srrs.ctrl import launch
from srrs.ctrl.cluster import volume_nqn
from tests.guest.harness import fio_verify

from . import world as world_mod
from .test_catalog_sync import _agrees, _replicas, _wait, cli

# Runs in the main lane (ci/test): the side lane carries the other cluster guest tests.

MiB = 1 << 20
HOST = "nqn.2014-08.org.nvmexpress:uuid:elastic-host"
PREFIX = "/srrs/el"
NODES = "abcdef"
KEYS = ["e0", "e1", "e2", *NODES, "h"]
AUTOCONNECT = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "host",
                           "srrs-autoconnect")


class World(world_mod.World):
    def nodes(self):
        return [n for p in self.pairs for n in p.nodes]

    def pair(self, names):
        """The running pair of these controllers, started if it is not."""
        return next((p for p in self.pairs if set(p.nodes) == set(names)), None) or \
            self.start_pair(names)

    def start_pair(self, names):
        def node(n):
            return {"bdev": [launch.bdev("v0", "file", "16MiB", path=str(self.tmp / f"{n}.v0"))],
                    "pool": [launch.pool("p0", [launch.fragment(self.tmp / f"{n}.pool",
                                                                "512MiB")])],
                    # every controller may be a path of one subsystem (a move):
                    # each claims a cluster-unique controller-ID range in etcd
                    "nvmf": launch.nvmf([f"{self.addr(n)}:{self.ports[n]}"]),
                    "cluster": {"etcd": self.etcd.endpoints, "prefix": PREFIX, "lease_s": 3}}
        return super().start_pair(names, node)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("el")
    with world_mod.netns_world(World, tmp, KEYS, "srrs-el", NODES, HOST) as w:
        w.start_pair(("a", "b"))
        a = w.ctl("a")
        assert cli(a, "pair-set", "a+b", "--capacity", "400MiB")[0] == 0
        assert cli(a, "tenant-set", "t", "--quota", "4GiB")[0] == 0
        _wait(lambda: {x["name"] for x in cli(a, "pairs")[1] if len(x["members"]) == 2}
              == {"a+b"}, what="a+b registered")
        yield w


def _pairs(ctl):
    return {p["name"]: p for p in cli(ctl, "pairs")[1]}


def _vols(ctl):
    return {v["uuid"]: v for v in ctl.rpc("cluster_volumes", {"tenant": "t"})}


def _active(ctl):
    return [m for m in ctl.rpc("cluster_moves") if m["phase"] in ("copying", "cancelling")]


def test_drain_refused_when_the_rest_lacks_space(world):
    w = world
    a = w.ctl("a")
    v = a.rpc("cluster_volume_create", {"name": "r0", "size": 64 * MiB, "tenant": "t",
                                        "hosts": [HOST]})
    _wait(lambda: _vols(a)[v["uuid"]]["state"] == "ready", what="r0 ready")

    def refused(n_other, free):
        for dry in ((), ("--dry-run",)):        # a dry run says the same
            rc, out, err = cli(a, "drain", "a+b", *dry)
            assert rc != 0 and out is None, (dry, out, err)
            assert "cannot be drained" in err and "nothing was moved" in err, err
            assert "t/r0" in err and "fit on no other live pair" in err, err
            assert "t/r0, 64.0 MiB" in err, err
            assert f"the other {n_other} live pair(s) have {free} free" in err, err

    def snapshot():
        """The catalog's volumes and pairs; the controllers' replicas."""
        return (_vols(a), {n: {k: p[k] for k in ("state", "capacity", "allocated", "volumes")}
                           for n, p in _pairs(a).items()},
                {n: set(_replicas(w.ctl(n))) for n in w.nodes()})

    def unchanged(before):
        assert a.rpc("cluster_moves", {"all": True}) == []
        assert snapshot() == before

    # a lone pair: there is no other pair at all
    before = snapshot()
    refused(0, "0.0 MiB")
    unchanged(before)
    assert before[0][v["uuid"]]["pair"] == "a+b" and before[1]["a+b"]["state"] == ""
    assert before[2] == {"a": {v["uuid"]}, "b": {v["uuid"]}}
    # another live pair, too small for r0 (c+d gets its real capacity when the
    # cluster scales out, below)
    w.pair(("c", "d"))
    assert cli(a, "pair-set", "c+d", "--capacity", "48MiB")[0] == 0
    _wait(lambda: (lambda p: p and len(p["members"]) == 2 and p["capacity"] == 48 * MiB)(
          _pairs(a).get("c+d")), 60, "c+d registered, 48 MiB")
    before = snapshot()
    refused(1, "48.0 MiB")
    unchanged(before)
    assert before[1]["c+d"]["allocated"] == 0 and before[2]["c"] == before[2]["d"] == set()
    # an unknown pair is not found
    rc, _, err = cli(a, "drain", "nope")
    assert rc != 0 and "no pair" in err


def _guest_devs(g, uuids):
    cmd = ("for d in /sys/block/nvme*n*; do n=${d##*/}; case $n in *c*) continue;; esac; "
           "echo $n $(cat $d/uuid); done")

    def find():
        got = {}
        for ln in g.check(cmd).splitlines():
            p = ln.split()
            if len(p) == 2 and p[1] in uuids:
                got[p[1]] = "/dev/" + p[0]
        return got if set(got) == set(uuids) else None
    return _wait(find, 60, "the guest's devices of every volume")


def _guest_paths(g, nqn):
    """{traddr} of the guest's live controllers of subsystem nqn."""
    out = g.check("for c in /sys/class/nvme/nvme*; do [ -e $c/subsysnqn ] || continue; "
                  f"[ \"$(cat $c/subsysnqn)\" = {nqn} ] || continue; "
                  "echo $(cat $c/state) $(cat $c/address); done")
    got = set()
    for ln in out.splitlines():
        state, _, addr = ln.partition(" ")
        kv = dict(x.split("=", 1) for x in addr.split(",") if "=" in x)
        if state == "live":
            got.add(kv.get("traddr"))
    return got


def _dump(w):
    """What the cluster thought, for a failure report."""
    import json
    for p in w.pairs:
        for n, ctl in p.nodes.items():
            try:
                st = ctl.rpc("cluster_status")
                print(n, json.dumps({k: st.get(k) for k in ("sync", "name", "pair")}, indent=1,
                                    default=str)[:4000])
            except Exception as e:     # a controller that is down
                print(n, e)
    try:
        a = w.ctl("a")
        print(json.dumps({"pairs": _pairs(a), "moves": a.rpc("cluster_moves", {"all": True}),
                          "volumes": _vols(a)}, indent=1, default=str))
    except Exception as e:
        print(e)


def _pre(dev, rw="write"):
    return (f"fio --name=pre --filename={dev} --ioengine=libaio --direct=1 --rw={rw} --bs=64k "
            f"--size=8M --offset=0 --iodepth=4 --verify=crc32c --verify_fatal=1 --do_verify=0")


def test_scale_out_rebalance_then_drain_back(world):
    w = world
    a = w.ctl("a")
    g = w.guest()
    vols = [a.rpc("cluster_volume_create", {"name": f"e{i}", "size": 64 * MiB, "tenant": "t",
                                            "hosts": [HOST]}) for i in range(3)]
    uuids = [v["uuid"] for v in vols] + [u for u, v in _vols(a).items() if v["name"] == "r0"]
    _wait(lambda: all(v["state"] == "ready" for v in _vols(a).values()), what="ready")
    g.write_file("/tmp/srrs-autoconnect", open(AUTOCONNECT).read(), mode=0o755)
    eps = f"{w.addr('a')}:{w.ports['a']} {w.addr('b')}:{w.ports['b']}"
    ac = g.spawn(f"/tmp/srrs-autoconnect -q {HOST} -i 5 {eps}", name="autoconnect")
    jobs = []
    try:
        devs = _guest_devs(g, uuids)
        for u in uuids:
            g.check(_pre(devs[u]), timeout=300)
            jobs.append(g.spawn(fio_verify(devs[u], "24M", 900, name=f"l{u[:6]}",
                                           extra="--offset=16M"), name=f"l{u[:6]}"))
        time.sleep(3)
        # scale out: two pairs join (they register; placement and rebalance see them)
        t0 = time.monotonic()
        w.pair(("c", "d"))          # running already, too small, after the drain test
        w.pair(("e", "f"))
        for p in ("c+d", "e+f"):
            assert cli(a, "pair-set", p, "--capacity", "400MiB")[0] == 0
        _wait(lambda: sum(len(x["members"]) == 2 for x in _pairs(a).values()) == 3,
              60, "three pairs registered")
        rc, plan, err = cli(a, "rebalance", "--spread", "0.2", "--max-moves", "2")
        assert rc == 0 and plan["moves"] and not plan["dry_run"], (plan, err)
        # the rebalance stands until reached; one controller drives it
        _wait(lambda: a.rpc("cluster_status")["sync"]["balance"]["driver"] is not None, 30,
              "a driver")
        _wait(lambda: (lambda ps: max(ps) - min(ps) <= 0.2 and not _active(a))(
              [p["allocated"] / p["capacity"] for p in _pairs(a).values()]), 300, "balanced")
        spread = {v["pair"] for v in _vols(a).values()}
        assert spread >= {"c+d", "e+f"}, _vols(a)
        t_rebal = time.monotonic() - t0
        # scale in: drain both new pairs back onto a+b
        for p in ("c+d", "e+f"):
            rc, plan, err = cli(a, "drain", p)
            assert rc == 0 and plan["state"] == "draining", err
        _wait(lambda: all(_pairs(a)[p]["state"] == "retired" for p in ("c+d", "e+f")), 300,
              "both drained and retired")
        t_drain = time.monotonic() - t0 - t_rebal
        assert {v["pair"] for v in _vols(a).values()} == {"a+b"}
        # the host's usable paths end on a and b only (autoconnect dropped the rest)
        for u in uuids:
            _wait(lambda u=u: _guest_paths(g, volume_nqn(u)) == {w.addr("a"), w.addr("b")},
                  60, f"guest paths of {u} on a+b only")
        # catalog, replicas and subsystems agree on every controller; the new ones are empty
        _wait(lambda: _agrees(w.pairs, w.ports, _vols(a)), 60, "agreement")
        for n in "cdef":
            assert not _replicas(w.ctl(n)), n
        # placement skips the retired pairs
        v9 = a.rpc("cluster_volume_create", {"name": "after", "size": 16 * MiB, "tenant": "t"})
        assert v9["pair"] == "a+b"
        assert ac.poll() is None, ac.output()
    except BaseException:
        _dump(w)
        raise
    finally:
        for j in jobs:
            j.kill("INT")           # fio stops, having verified what it wrote as it went
        print(ac.output())
        ac.kill()
    for j in jobs:
        r = j.wait(timeout=120)
        errs = re.findall(r"err=\s*(\d+)", r.output)
        assert errs and all(e == "0" for e in errs), r.output
        assert "verify:" not in r.output and "bad magic" not in r.output, r.output
    for u in uuids:
        g.check(_pre(devs[u]) + " --verify_only", timeout=300)
    print(f"rebalance {t_rebal:.1f} s, drain back {t_drain:.1f} s")
