"""Cluster-wide discovery seen by the Linux kernel's initiator: `nvme discover`
in a QEMU guest against one controller lists the volume of another pair at
that pair's registered addresses, and not a volume whose allow-list leaves
the guest's host NQN out. Real etcd, real controller processes (the guest
reaches the host's loopback at 10.0.2.2; tests/guest/harness.py). Under CI a
missing QEMU or guest image fails the run instead of skipping."""

import pytest

from srrs.ctrl.cluster import volume_nqn
from tests.guest import harness as guest_harness

from .etcd import Cluster
from .test_discovery import H1, H2, _cluster, _publish

# No timing asserted, only outcomes: the side lane (ci/test) runs it beside the
# main one, which keeps the main lane inside CI's budget.
pytestmark = pytest.mark.side

H = guest_harness.HOST_FROM_GUEST


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    guest_harness.require_guest()
    with Cluster(1) as c:
        gen = _cluster(tmp_path_factory.mktemp("discg"), c)
        env_ = next(gen)
        g = guest_harness.Guest(smp=1, hostnqn=H1, modules=("nvme_tcp", "crc32c_generic"))
        try:
            g.start()
            yield env_, g
        finally:
            print(g.diagnostics())
            g.close()
            gen.close()


def test_guest_nvme_discover_sees_the_cluster(env):
    (cat, a1, pa, b1, pb, b2), g = env
    mine = _publish(cat, "t", "guest-vol", [H1])
    other = _publish(cat, "t", "other-host-vol", [H2])
    assert mine.pair == "b1+b2"
    cmd = (f"for i in $(seq 50); do out=$(nvme discover -t tcp -a {H} -s {pa}) && "
           f"echo \"$out\" | grep -q {volume_nqn(mine.uuid)} && break; sleep 0.2; done; "
           f"echo \"$out\"")
    out = g.check(cmd, timeout=120)
    entries = [e for e in out.split("=====Discovery Log Entry") if volume_nqn(mine.uuid) in e]
    where = {(line.split(":", 1)[1].strip()) for e in entries for line in e.splitlines()
             if line.strip().startswith(("traddr:", "trsvcid:"))}
    assert {"127.0.0.1", str(pb), "127.0.0.3", "4420"} <= where, out
    assert volume_nqn(other.uuid) not in out
