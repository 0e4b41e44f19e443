"""Three etcd members, each in its own network namespace on one bridge
(tests/cluster/etcd.py Hub): the leader cut off from the others loses its
quorum and the majority goes on; healed, it catches up. The base of the
cluster's partition tests."""

import time

import pytest

from tests.cluster.etcd import Cluster, Hub


def test_leader_cut_off_majority_goes_on():
    with Hub(["m0", "m1", "m2", "client"]) as hub:
        members = [hub.hosts[k] for k in ("m0", "m1", "m2")]
        client_ns = hub.hosts["client"][0]
        with Cluster(3, hosts=members) as c:
            old = c.leader()
            old_id = old.status()["id"]
            hub.cut(old.name)
            others = [m for m in c.members if m is not old]
            deadline = time.monotonic() + 10
            while True:               # a leader among the two that still see each other
                try:
                    st = others[0].status()
                    if st["leader"] and st["leader"] != old_id:
                        break
                except (RuntimeError, ValueError, KeyError):
                    pass
                assert time.monotonic() < deadline, "no new leader"
                time.sleep(0.1)
            others[0].etcdctl("put", "/k", "after-cut", netns=client_ns)
            with pytest.raises(RuntimeError):     # the cut-off member has no quorum
                old.etcdctl("put", "/k", "lost")
            hub.heal(old.name)
            deadline = time.monotonic() + 10
            while True:
                try:
                    if "after-cut" in old.etcdctl("get", "/k", "--consistency=s"):
                        break
                except RuntimeError:
                    pass
                assert time.monotonic() < deadline, "the healed member did not catch up"
                time.sleep(0.1)
