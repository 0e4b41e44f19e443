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
from tests.guest import harness as guest_harness
from tests.guest.harness import fio_verify

from .etcd import Cluster, Hub
from .test_catalog_sync import _replicas, _wait, cli
from .test_elastic import AUTOCONNECT, _guest_devs, _guest_paths, _pre

MiB = 1 << 20
HOST = "nqn.2014-08.org.nvmexpress:uuid:replace-host"
PREFIX = "/srrs/rp"
NODES = "abc"
KEYS = ["e0", "e1", "e2", *NODES, "h"]
PAIR = "a+b"


class World:
    def __init__(self, tmp, etcd, hub):
        self.tmp, self.etcd, self.hub = tmp, etcd, hub
        self.ports = dict(zip(NODES, launch.free_ports(len(NODES))))
        self.ns_h = hub.hosts["h"][0]
        self.pair = None
        self.c = None
        self._guest = None

    def addr(self, n):
        return self.hub.hosts[n][1]

    def node(self, n):
        return {"bdev": [launch.bdev("v0", "file", "16MiB", path=str(self.tmp / f"{n}.v0"))],
                "pool": [launch.pool("p0", [launch.fragment(self.tmp / f"{n}.pool",
                                                            "256MiB")])],
                "nvmf": launch.nvmf([f"{self.addr(n)}:{self.ports[n]}"],
                                    cntlid_min=1 + 1000 * NODES.index(n)),
                "cluster": {"etcd": self.etcd.endpoints, "prefix": PREFIX, "lease_s": 3}}

    def start_pair(self):
        d = self.tmp / "ab"
        d.mkdir()
        self.pair = launch.Pair(d, node=self.node, names=("a", "b"), volumes=("v0",),
                                secure=True, hosts={n: self.addr(n) for n in "ab"},
                                prefix={n: ("ip", "netns", "exec", self.hub.hosts[n][0])
                                        for n in "ab"}).start()

    def ctl(self, n):
        return self.c if n == "c" else self.pair.nodes[n]

    def start_c(self):
        """The new server: its own CURVE key, the pair's mirror secret, [pair]
        name = "a+b" and a as its peer (what an operator gives it)."""
        if self.c is not None:
            return self.c
        from srrs.ctrl.witness import keygen

        p = self.pair
        kdir = os.path.join(p.keys["dir"], "pair")
        with contextlib.redirect_stdout(io.StringIO()):
            keygen(argparse.Namespace(dir=kdir, name="c", no_mirror_secret=True))
        cport = launch.free_ports(2)
        pa = dict(p.ports, coord_c=cport[0], mirror_c=cport[1])
        pt = launch.pair("c", "a", pa, os.path.join(p.dir, "state-c"), ("v0",),
                         keys=dict(p.keys, c=os.path.join(kdir, "c.key")),
                         host=self.addr("c"), peer_host=self.addr("a"))
        pt["name"] = PAIR          # the pair keeps its name
        pt.pop("witness", None)
        pt.pop("witness_public_key", None)
        sock = os.path.join(p.dir, "c.sock")
        conf = launch.merge({"controller": launch.controller("c", sock)}, self.node("c"))
        conf["pair"] = pt
        self.c = launch.Controller(os.path.join(p.dir, "c.toml"), conf, sock=sock,
                                   prefix=("ip", "netns", "exec", self.hub.hosts["c"][0]),
                                   name="c")
        return self.c

    def guest(self):
        if self._guest is None:
            guest_harness.require_guest()
            self._guest = guest_harness.Guest(smp=1, hostnqn=HOST,
                                              modules=("nvme_tcp", "crc32c_generic"),
                                              prefix=("ip", "netns", "exec", self.ns_h)).start()
        return self._guest


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rp")
    with Hub(KEYS, tag="srrs-rp") as hub:
        etcd = Cluster(hosts=[hub.hosts[k] for k in KEYS[:3]])
        w = World(tmp, etcd, hub)
        try:
            etcd.start()
            w.start_pair()
            a = w.ctl("a")
            assert cli(a, "pair-set", PAIR, "--capacity", "200MiB")[0] == 0
            assert cli(a, "tenant-set", "t", "--quota", "1GiB")[0] == 0
            _wait(lambda: [len(x["members"]) for x in cli(a, "pairs")[1]] == [2],
                  what="a+b registered")
            yield w
        finally:
            if w._guest is not None:
                print(w._guest.diagnostics())
                w._guest.close()
            for c in (w.c,):
                if c is not None:
                    c.stop()
            if w.pair is not None:
                w.pair.stop()
            etcd.stop()


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
    w.start_c()
    _wait(lambda: "c" in _members(a), 30, "c registered")
    rc, _, err = cli(a, "replace", "b", "--with", "c")
    assert rc != 0 and "the survivor a does not serve alone" in err, err
    assert _pairs(a)[PAIR]["nodes"] == ["a", "b"] and "b" in _members(a)
    assert w.pair.states() == {"a": "PAIRED", "b": "PAIRED"}
    # c is no path of the pair's volumes before the catalog names it
    assert w.c.pair_state() in ("STARTING", "FENCED")


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


def test_replace_a_dead_server_under_load(world):
    w = world
    a, b = w.ctl("a"), w.ctl("b")
    g = w.guest()
    vols = [a.rpc("cluster_volume_create", {"name": f"r{i}", "size": 40 * MiB, "tenant": "t",
                                            "hosts": [HOST]}) for i in range(3)]
    uuids = [v["uuid"] for v in vols]
    _wait(lambda: all(v["state"] == "ready" for v in a.rpc("cluster_volumes")), 60, "ready")
    g.write_file("/tmp/srrs-autoconnect", open(AUTOCONNECT).read(), mode=0o755)
    eps = f"{w.addr('a')}:{w.ports['a']} {w.addr('b')}:{w.ports['b']}"
    ac = g.spawn(f"/tmp/srrs-autoconnect -q {HOST} -i 2 {eps}", name="autoconnect")
    jobs = []
    t = {}
    try:
        devs = _guest_devs(g, uuids)
        for u in uuids:
            g.check(_pre(devs[u]), timeout=300)
            jobs.append(g.spawn(fio_verify(devs[u], "16M", 600, name=f"r{u[:6]}",
                                           extra="--offset=16M"), name=f"r{u[:6]}"))
        time.sleep(2)
        # b dies; a serves alone
        t0 = time.monotonic()
        b.kill9()
        _wait(lambda: a.pair_state() == "SOLO", 30, "a SOLO")
        t["solo"] = time.monotonic() - t0
        c = w.start_c()
        _wait(lambda: "c" in _members(a), 30, "c registered")
        rc, out, err = cli(a, "replace", "b", "--with", "c")
        assert rc == 0, err
        assert out == {"pair": PAIR, "nodes": ["a", "c"], "replaced": ["b"], "survivor": "a"}
        t1 = time.monotonic()
        # a takes c as its peer; c gets a full copy while a serves
        _wait(lambda: a.pair_state() == "PAIRED" and c.pair_state() == "PAIRED", 90,
              "PAIRED a+c")
        t["paired"] = time.monotonic() - t1
        st = a.rpc("pair_status")
        assert st["peer"] == "c" and st["pair"] == PAIR, st
        # the catalog: a+c keeps the pair's name; b's registration is gone
        pr = _pairs(a)[PAIR]
        assert pr["nodes"] == ["a", "c"] and pr["members"] == ["a", "c"], pr
        assert "b" not in _members(a)
        assert set(_replicas(c)) == set(uuids)
        # the host's usable paths: a and c, not b (autoconnect follows discovery)
        for u in uuids:
            _wait(lambda u=u: _guest_paths(g, volume_nqn(u)) == {w.addr("a"), w.addr("c")},
                  60, f"guest paths of {u} on a+c")
        time.sleep(2)     # more load on the new pair
        assert ac.poll() is None, ac.output()
    except BaseException:
        for n in "ac":
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
    # b cannot come back: replaced out of the pair, it does not start
    with pytest.raises(RuntimeError, match="replaced out of pair a\\+b"):
        b.restart()
    # replicas byte-identical on disk (both stopped once idle and PAIRED)
    _wait(lambda: all(v["dirty_stripes"] == 0 for v in a.rpc("pair_status")["volumes"]), 30,
          "nothing dirty")
    w.c.stop()
    w.pair.nodes["a"].stop()
    da, dc = _digests(w.tmp, "a", uuids), _digests(w.tmp, "c", uuids)
    for u in uuids:
        diff = [i for i, (x, y) in enumerate(zip(da[u], dc[u])) if x != y]
        assert len(da[u]) == len(dc[u]) and not diff, (u, diff)
    print(f"SOLO after {t['solo']:.1f} s, PAIRED a+c {t['paired']:.1f} s after the replace")
