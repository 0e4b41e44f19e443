"""Replacing one server of a pair under load (docs/architecture.md, Cluster,
Replacing a server): three real etcd members, a pair a+b of real controllers
with CURVE keys and a mirror secret, each controller in a network namespace of
its own, and a Linux guest in one more that follows the cluster with
deploy/host/srrs-autoconnect while fio writes and verifies every volume.

test_replace_refused: `srrs cluster replace` refuses, with nothing changed, a
node in no pair, a new node that is not registered or already a node, and a
survivor that does not serve alone (its peer may still be serving).
test_replace_a_dead_server_under_load: b is killed (-9); a new controller c,
started for pair a+b and naming a as its peer, replaces it; a re-targets its
running pair to c, which gets a full copy while a serves; PAIRED a+c, zero I/O
errors, the data verifies, the replicas of a and c are byte-identical on disk,
b's registration is gone, the guest's paths are a and c, and b cannot come
back."""

import argparse
import contextlib
import hashlib
import io
import os
import re
import time

import pytest

from srrs.ctrl import launch
from srrs.ctrl.cluster import volume_nqn
from tests.guest.harness import fio_verify

from . import world as world_mod
from .test_catalog_sync import _replicas, _wait, cli
from .test_elastic import AUTOCONNECT, _guest_devs, _guest_paths, _pre

MiB = 1 << 20
HOST = "nqn.2014-08.org.nvmexpress:uuid:replace-host"
PREFIX = "/srrs/rp"
NODES = "abcd"
KEYS = ["e0", "e1", "e2", *NODES, "h"]
PAIR = "a+b"


class World(world_mod.World):
    def __init__(self, *a):
        super().__init__(*a)
        self.new = {}      # the replacement servers started

    @property
    def ab(self):
        return self.pairs[0]

    def node(self, n):
        return {"bdev": [launch.bdev("v0", "file", "16MiB", path=str(self.tmp / f"{n}.v0"))],
                "pool": [launch.pool("p0", [launch.fragment(self.tmp / f"{n}.pool",
                                                            "256MiB")])],
                "nvmf": launch.nvmf([f"{self.addr(n)}:{self.ports[n]}"],
                                    cntlid_min=1 + 1000 * NODES.index(n)),
                "cluster": {"etcd": self.etcd.endpoints, "prefix": PREFIX, "lease_s": 3}}

    def ctl(self, n):
        return self.new[n] if n in self.new else super().ctl(n)

    def start_new(self, n):
        """A new server n for pair a+b: its own CURVE key, the pair's mirror
        secret, [pair] name = "a+b" and the survivor a as its peer (what an
        operator gives it)."""
        if n in self.new:
            return self.new[n]
        from srrs.ctrl.witness import keygen

        p = self.ab
        kdir = os.path.join(p.keys["dir"], "pair")
        with contextlib.redirect_stdout(io.StringIO()):
            keygen(argparse.Namespace(dir=kdir, name=n, no_mirror_secret=True))
        cport = launch.free_ports(2)
        pa = dict(p.ports, **{f"coord_{n}": cport[0], f"mirror_{n}": cport[1]})
        pt = launch.pair(n, "a", pa, os.path.join(p.dir, f"state-{n}"), ("v0",),
                         keys=dict(p.keys, **{n: os.path.join(kdir, f"{n}.key")}),
                         host=self.addr(n), peer_host=self.addr("a"))
        pt["name"] = PAIR          # the pair keeps its name
        pt.pop("witness", None)
        pt.pop("witness_public_key", None)
        sock = os.path.join(p.dir, f"{n}.sock")
        conf = launch.merge({"controller": launch.controller(n, sock)}, self.node(n))
        conf["pair"] = pt
        self.new[n] = launch.Controller(os.path.join(p.dir, f"{n}.toml"), conf, sock=sock,
                                        prefix=self.netns(n),
                                        name=n)
        return self.new[n]

    def peer_of_a(self):
        """a's current peer (b, or whoever replaced it)."""
        return self.ctl("a").rpc("pair_status")["peer"]

    def close(self):
        for c in self.new.values():
            c.stop()
        super().close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rp")
    with world_mod.netns_world(World, tmp, KEYS, "srrs-rp", NODES, HOST) as w:
        w.start_pair(("a", "b"), w.node, secure=True)
        a = w.ctl("a")
        assert cli(a, "pair-set", PAIR, "--capacity", "200MiB")[0] == 0
        assert cli(a, "tenant-set", "t", "--quota", "1GiB")[0] == 0
        _wait(lambda: [len(x["members"]) for x in cli(a, "pairs")[1]] == [2],
              what="a+b registered")
        yield w


def _pairs(ctl):
    return {p["name"]: p for p in cli(ctl, "pairs")[1]}


def _members(ctl):
    return set(ctl.rpc("cluster_status")["members"])


def test_replace_refused(world):
    w = world
    a = w.ctl("a")
    rc, _, err = cli(a, "replace", "nope", "--with", "c")
    assert rc != 0 and "nope is a node of no pair" in err, err
    rc, _, err = cli(a, "replace", "b", "--with", "c")
    assert rc != 0 and "c is not registered" in err and 'name = "a+b"' in err, err
    rc, _, err = cli(a, "replace", "b", "--with", "a")
    assert rc != 0 and "a is already a node of pair a+b" in err, err
    # c registers for a+b, but a is PAIRED with b: b may be serving, nothing changes
    w.start_new("c")
    _wait(lambda: "c" in _members(a), 30, "c registered")
    rc, _, err = cli(a, "replace", "b", "--with", "c")
    assert rc != 0 and "the survivor a does not serve alone" in err, err
    assert _pairs(a)[PAIR]["nodes"] == ["a", "b"] and "b" in _members(a)
    assert w.ab.states() == {"a": "PAIRED", "b": "PAIRED"}
    # c is no path of the pair's volumes before the catalog names it
    assert w.ctl("c").pair_state() in ("STARTING", "FENCED")


def _digests(tmp, n, uuids):
    """{uuid: per-MiB digests} of controller n's replicas, read from its pool
    opened offline in this process (the controller stopped): what is on disk."""
    from srrs.ctrl.pool import Pool
    from srrs.ctrl.pool_config import FragmentConfig, PoolConfig
    from srrs.ffi.binding import Core

    out = {}
    with Core(reactors=1) as core:
        pool = Pool(core, PoolConfig(name="p0", fragments=(FragmentConfig(
            path=str(tmp / f"{n}.pool")),)))
        try:
            for u in uuids:
                size = core.bdev_info(f"c-{u}")["size"]
                ds = []
                for off in range(0, size, MiB):
                    st, d = core.test_io(f"c-{u}", "read", off, min(MiB, size - off))
                    assert st == 0, f"{n}: read of c-{u} at {off}: {st}"
                    ds.append(hashlib.blake2b(d, digest_size=16).hexdigest())
                out[u] = ds
        finally:
            pool.close()
    return out


def test_replace_a_live_server_cut_off(world):
    """b is alive but cut off (its network down): a goes SOLO, c replaces b;
    healed, b stays out: its registration does not come back, it gets no solo
    lease, a does not hear it, and it cannot start again."""
    w = world
    if w.peer_of_a() != "b":
        pytest.skip("b was replaced already")
    a, b = w.ctl("a"), w.ctl("b")
    c = w.start_new("c")
    _wait(lambda: "c" in _members(a), 30, "c registered")
    w.hub.cut("b")
    try:
        _wait(lambda: a.pair_state() == "SOLO", 30, "a SOLO")
        rc, out, err = cli(a, "replace", "b", "--with", "c")
        assert rc == 0 and out["nodes"] == ["a", "c"], err
        _wait(lambda: a.pair_state() == "PAIRED" and c.pair_state() == "PAIRED", 60,
              "PAIRED a+c")
    finally:
        w.hub.heal("b")
    _wait(lambda: "replaced out of pair" in open(b.log_path).read(), 30,
          "b sees it was replaced")
    time.sleep(4)       # more than b's lease TTL and a few of its heartbeats
    assert "b" not in _members(a) and b.alive()
    assert b.pair_state() in ("STARTING", "FENCED"), b.rpc("pair_status")
    assert a.pair_state() == "PAIRED" and w.peer_of_a() == "c"
    assert _pairs(a)[PAIR]["nodes"] == ["a", "c"]
    b.stop()
    with pytest.raises(RuntimeError, match="replaced out of pair a\\+b"):
        b.restart()
    # a restarted with its old file (peer b) takes c again from the catalog
    a.stop()
    a.restart()
    _wait(lambda: a.pair_state() == "PAIRED" and c.pair_state() == "PAIRED", 60,
          "PAIRED a+c after a's restart")
    assert w.peer_of_a() == "c"


def test_replace_a_dead_server_under_load(world):
    """The peer of a (b, or c after the test above) is killed (-9) under a
    guest's fio verify on three volumes; a new server replaces it."""
    w = world
    a = w.ctl("a")
    old = w.peer_of_a()
    new = "c" if old == "b" else "d"
    g = w.guest()
    vols = [a.rpc("cluster_volume_create", {"name": f"r{i}", "size": 40 * MiB, "tenant": "t",
                                            "hosts": [HOST]}) for i in range(3)]
    uuids = [v["uuid"] for v in vols]
    _wait(lambda: all(v["state"] == "ready" for v in a.rpc("cluster_volumes")), 60, "ready")
    g.write_file("/tmp/srrs-autoconnect", open(AUTOCONNECT).read(), mode=0o755)
    eps = f"{w.addr('a')}:{w.ports['a']} {w.addr(old)}:{w.ports[old]}"
    ac = g.spawn(f"/tmp/srrs-autoconnect -q {HOST} -i 2 {eps}", name="autoconnect")
    jobs = []
    t = {}
    try:
        devs = _guest_devs(g, uuids)
        for u in uuids:
            _wait(lambda u=u: _guest_paths(g, volume_nqn(u)) == {w.addr("a"), w.addr(old)},
                  60, f"guest paths of {u} on a+{old}")
            g.check(_pre(devs[u]), timeout=300)
            jobs.append(g.spawn(fio_verify(devs[u], "16M", 600, name=f"r{u[:6]}",
                                           extra="--offset=16M"), name=f"r{u[:6]}"))
        time.sleep(2)
        # the old server dies; a serves alone
        t0 = time.monotonic()
        w.ctl(old).kill9()
        _wait(lambda: a.pair_state() == "SOLO", 30, "a SOLO")
        t["solo"] = time.monotonic() - t0
        c = w.start_new(new)
        _wait(lambda: new in _members(a), 30, f"{new} registered")
        rc, out, err = cli(a, "replace", old, "--with", new)
        assert rc == 0, err
        assert out["nodes"] == ["a", new] and old in out["replaced"] and out["survivor"] == "a"
        t1 = time.monotonic()
        # a takes the new server as its peer, which gets a full copy while a serves
        _wait(lambda: a.pair_state() == "PAIRED" and c.pair_state() == "PAIRED", 90,
              f"PAIRED a+{new}")
        t["paired"] = time.monotonic() - t1
        st = a.rpc("pair_status")
        assert st["peer"] == new and st["pair"] == PAIR, st
        # the catalog: the pair keeps its name; the old registration is gone
        pr = _pairs(a)[PAIR]
        assert pr["nodes"] == ["a", new] and pr["members"] == ["a", new], pr
        assert old not in _members(a)
        assert set(uuids) <= set(_replicas(c))
        # the host's usable paths: a and the new server (autoconnect follows discovery)
        for u in uuids:
            _wait(lambda u=u: _guest_paths(g, volume_nqn(u)) == {w.addr("a"), w.addr(new)},
                  60, f"guest paths of {u} on a+{new}")
        time.sleep(2)     # more load on the new pair
        assert ac.poll() is None, ac.output()
    except BaseException:
        for n in ("a", new):
            try:
                print(n, w.ctl(n).rpc("pair_status"), w.ctl(n).rpc("cluster_status"))
            except Exception as e:
                print(n, e)
        raise
    finally:
        for j in jobs:
            j.kill("INT")
        print(ac.output())
        ac.kill()
    for j in jobs:
        r = j.wait(timeout=120)
        errs = re.findall(r"err=\s*(\d+)", r.output)
        assert errs and all(e == "0" for e in errs), r.output
        assert "verify:" not in r.output and "bad magic" not in r.output, r.output
    for u in uuids:
        g.check(_pre(devs[u]) + " --verify_only", timeout=300)
    # the dead server cannot come back: replaced out of the pair, it does not start
    with pytest.raises(RuntimeError, match="replaced out of pair a\\+b"):
        w.ctl(old).restart()
    # replicas byte-identical on disk (both stopped once idle and PAIRED)
    _wait(lambda: all(v["dirty_stripes"] == 0 for v in a.rpc("pair_status")["volumes"]), 30,
          "nothing dirty")
    c.stop()
    a.stop()
    da, dc = _digests(w.tmp, "a", uuids), _digests(w.tmp, new, uuids)
    for u in uuids:
        diff = [i for i, (x, y) in enumerate(zip(da[u], dc[u])) if x != y]
        assert len(da[u]) == len(dc[u]) and not diff, (u, diff)
    print(f"SOLO after {t['solo']:.1f} s, PAIRED a+{new} {t['paired']:.1f} s after the "
          "replace")
