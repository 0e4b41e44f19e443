"""Network partitions with `ip netns` + veth (docs/architecture.md, Pair).

Topology (every address in namespaces this test creates):
  ns srrsA (10.77.1.1 to B, 10.77.2.1 to W)   ns srrsB (10.77.1.2 to A, 10.77.3.1 to W)
  ns srrsW (10.77.2.2 to A, 10.77.3.2 to B): the witness
Cutting a link = setting one end of its veth down.
"""

import time

import pytest

from .netns import Topology
from .procs import Ctl, Witness, pair_conf, same_files

NS = {"A": "srrsA", "B": "srrsB", "W": "srrsW"}
LINKS = {  # name: (ns1, ifname1, addr1, ns2, ifname2, addr2)
    "ab": ("A", "ab-a", "10.77.1.1", "B", "ab-b", "10.77.1.2"),
    "aw": ("A", "aw-a", "10.77.2.1", "W", "aw-w", "10.77.2.2"),
    "bw": ("B", "bw-b", "10.77.3.1", "W", "bw-w", "10.77.3.2"),
}


TOPO = Topology(NS, LINKS)


@pytest.fixture
def net():
    with TOPO.up():
        yield


def cut(link, down=True):
    TOPO.set_link(link, not down)


def ports():
    return {"coord_a": 5601, "coord_b": 5602, "mirror_a": 4521, "mirror_b": 4522, "witness": 5600}


@pytest.fixture
def cluster(net, tmp_path):
    p = ports()
    w = Witness(tmp_path, "tcp://0.0.0.0:5600", max_lease=2.0,
                prefix=["ip", "netns", "exec", NS["W"]])
    ctls = {}
    try:
        conf_a = pair_conf("a", "b", p, tmp_path, host="10.77.1.1", peer_host="10.77.1.2",
                           witness_host="10.77.2.2")
        conf_b = pair_conf("b", "a", p, tmp_path, host="10.77.1.2", peer_host="10.77.1.1",
                           witness_host="10.77.3.2")
        ctls["a"] = Ctl(tmp_path, "a", conf_a, prefix=["ip", "netns", "exec", NS["A"]])
        ctls["b"] = Ctl(tmp_path, "b", conf_b, prefix=["ip", "netns", "exec", NS["B"]])
        ctls["a"].wait_state("PAIRED", 20)
        ctls["b"].wait_state("PAIRED", 20)
        yield w, ctls["a"], ctls["b"], tmp_path
    finally:
        for c in ctls.values():
            c.kill9()
        w.kill9()


def test_cut_pair_link_one_solo_one_fenced_then_heal(cluster):
    w, a, b, tmp = cluster
    cut("ab")
    deadline = time.time() + 10
    while time.time() < deadline:
        roles = sorted((a.pair()["state"], b.pair()["state"]))
        if roles == ["FENCED", "SOLO"]:
            break
        time.sleep(0.1)
    assert roles == ["FENCED", "SOLO"]
    solo, fenced = (a, b) if a.pair()["state"] == "SOLO" else (b, a)
    j = fenced.bench(rw="randwrite", time_s=0.5)
    assert j["result"]["ios"] == 0                      # nothing acknowledged by the fenced one
    j = solo.bench(rw="randwrite", time_s=1)
    assert j["result"]["errors"] == 0 and j["result"]["ios"] > 0
    time.sleep(3)                                       # stays so: the lease is renewed
    assert solo.pair()["state"] == "SOLO" and fenced.pair()["state"] == "FENCED"
    cut("ab", down=False)
    a.wait_state("PAIRED", 20)
    b.wait_state("PAIRED", 20)
    assert a.stop() == 0 and b.stop() == 0
    assert same_files(tmp / "a-v0.img", tmp / "b-v0.img") == []


def test_isolate_a_from_b_and_witness(cluster):
    w, a, b, tmp = cluster
    cut("ab")
    cut("aw")
    b.wait_state("SOLO", 10)
    st = a.wait_state("FENCED", 10)
    assert st["lease_left_s"] == 0
    j = a.bench(rw="randwrite", time_s=0.5)
    assert j["result"]["ios"] == 0
    cut("ab", down=False)
    cut("aw", down=False)
    a.wait_state("PAIRED", 20)
    b.wait_state("PAIRED", 20)
    assert a.stop() == 0 and b.stop() == 0
    assert same_files(tmp / "a-v0.img", tmp / "b-v0.img") == []


def test_isolate_solo_node_fences_itself_within_lease(cluster):
    w, a, b, tmp = cluster
    b.kill9()
    a.wait_state("SOLO", 10)
    t0 = time.time()
    cut("aw")                                           # a can no longer renew
    a.wait_state("FENCED", 10)
    assert time.time() - t0 <= 2.5                      # lease_ms = 2000
