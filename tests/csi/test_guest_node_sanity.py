"""Our CSI sanity suite for the Node service (docs/architecture.md, Kubernetes
CSI plugin): every Node RPC of the real `srrs csi --mode node`, inside a Linux
guest against its kernel (tests/csi/guest_node.py), called over the plugin's
gRPC endpoint (a port QEMU forwards into the guest) as the kubelet calls it.
tests/csi/test_sanity.py does the same for Identity and Controller over the
controller plugin's Unix socket; tests/csi/test_guest_kubelet.py is the
kubelet's whole flow with failover and expansion.

What the CSI spec prescribes, beyond the happy path: NodeGetInfo and
NodeGetCapabilities; a REQUIRED field missing is INVALID_ARGUMENT; a publish
without a staging path (we stage) or of a volume not staged is
FAILED_PRECONDITION; stage and publish repeated with the same arguments are OK
and change nothing, a stage or a publish at the same path with other
arguments is ALREADY_EXISTS, a second target of a single writer
FAILED_PRECONDITION; unpublish and unstage of what is not published or staged
are OK; stats and expansion of a path that does not exist, or that is not the
volume's, are NOT_FOUND; expansion beyond the volume's size is OUT_OF_RANGE. An ext4 and a Block volume. One guest, one real pair
and etcd, one plugin process for the module. No timing asserted: side lane."""

import time

import grpc
import pytest

from srrs.ctrl import csi_pb2 as pb
from srrs.ctrl import launch
from srrs.ctrl.cluster import volume_nqn
from srrs.ctrl.csi import TOPOLOGY_ZONE
from tests.guest import harness as guest_harness

from . import guest_node
from .test_sanity import AM, MiB, World, block, mount, rng

pytestmark = pytest.mark.side

C = grpc.StatusCode
RPC = pb.NodeServiceCapability.RPC
NOVOL = "99999999-9999-4999-8999-999999999999"      # no such volume anywhere
KUBELET = "/var/lib/kubelet"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    guest_harness.require_guest()
    addr = guest_node.require_host_address()
    tmp = tmp_path_factory.mktemp("csins")
    with guest_node.guest_with_plugin(lambda: World(tmp, addr=addr), launch.free_ports(1)[0],
                                      node_args=["--zone", "z1"], node_timeout=120,
                                      start_early=True) as env:
        yield env


def code(node, method, **kw):
    """The gRPC status code the plugin's call ends with (OK when it succeeds;
    refusals are expected here: the plugin's log is printed once, at the end)."""
    try:
        node.call(method, quiet=True, **kw)
        return C.OK
    except grpc.RpcError as e:
        return e.code()


def test_info_and_capabilities(env):
    _, g, node = env
    info = node.call("NodeGetInfo")
    assert info.node_id == g.hostnqn            # the guest's /etc/nvme/hostnqn
    assert dict(info.accessible_topology.segments) == {TOPOLOGY_ZONE: "z1"}
    caps = [c.rpc.type for c in node.call("NodeGetCapabilities").capabilities]
    assert sorted(caps) == sorted([RPC.STAGE_UNSTAGE_VOLUME, RPC.GET_VOLUME_STATS,
                                   RPC.EXPAND_VOLUME, RPC.VOLUME_CONDITION,
                                   RPC.SINGLE_NODE_MULTI_WRITER])


def test_missing_fields(env):
    """Each REQUIRED field left out in turn: INVALID_ARGUMENT, and nothing made
    on the host."""
    _, g, node = env
    staging, target = f"{KUBELET}/ns-missing/globalmount", f"{KUBELET}/ns-missing/mount"
    full = {
        "NodeStageVolume": dict(volume_id=NOVOL, staging_target_path=staging,
                                volume_capability=mount()),
        "NodePublishVolume": dict(volume_id=NOVOL, staging_target_path=staging,
                                  target_path=target, volume_capability=mount()),
        "NodeUnstageVolume": dict(volume_id=NOVOL, staging_target_path=staging),
        "NodeUnpublishVolume": dict(volume_id=NOVOL, target_path=target),
        "NodeGetVolumeStats": dict(volume_id=NOVOL, volume_path=target),
        "NodeExpandVolume": dict(volume_id=NOVOL, volume_path=target),
    }
    required = {
        "NodeStageVolume": ("volume_id", "staging_target_path", "volume_capability"),
        "NodePublishVolume": ("volume_id", "target_path", "volume_capability"),
        "NodeUnstageVolume": ("volume_id", "staging_target_path"),
        "NodeUnpublishVolume": ("volume_id", "target_path"),
        "NodeGetVolumeStats": ("volume_id", "volume_path"),
        "NodeExpandVolume": ("volume_id", "volume_path"),
    }
    got = {}
    for method, fields in required.items():
        for f in fields:
            kw = {k: v for k, v in full[method].items() if k != f}
            got[method, f] = code(node, method, **kw)
    assert got == {k: C.INVALID_ARGUMENT for k in got}
    # an access mode we do not serve on a node is the caller's error too
    bad = pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume())
    assert code(node, "NodeStageVolume", volume_id=NOVOL, staging_target_path=staging,
                volume_capability=bad) == C.INVALID_ARGUMENT
    assert g.run(f"test -e {KUBELET}/ns-missing").rc != 0


def test_publish_before_stage(env):
    """We stage (STAGE_UNSTAGE_VOLUME): no staging path, or a volume not staged,
    is FAILED_PRECONDITION; no target is left behind."""
    _, g, node = env
    staging = f"{KUBELET}/ns-early/globalmount"
    g.check(f"mkdir -p {staging}")              # the CO's directory, nothing mounted
    target = f"{KUBELET}/ns-early/mount"
    assert code(node, "NodePublishVolume", volume_id=NOVOL, target_path=target,
                volume_capability=mount()) == C.FAILED_PRECONDITION
    assert code(node, "NodePublishVolume", volume_id=NOVOL, staging_target_path=staging,
                target_path=target, volume_capability=mount()) == C.FAILED_PRECONDITION
    assert code(node, "NodePublishVolume", volume_id=NOVOL, staging_target_path=staging,
                target_path=target, volume_capability=block()) == C.FAILED_PRECONDITION
    assert g.run(f"test -e {target}").rc != 0


def test_teardown_of_what_is_not_there(env):
    """Unpublish and unstage of a volume not published or staged: OK, twice;
    an unpublish removes the (empty) target the CO left."""
    _, g, node = env
    target = f"{KUBELET}/ns-gone/mount"
    g.check(f"mkdir -p {target}")
    for _ in range(2):
        node.call("NodeUnpublishVolume", volume_id=NOVOL, target_path=target)
        node.call("NodeUnstageVolume", volume_id=NOVOL,
                  staging_target_path=f"{KUBELET}/ns-gone/globalmount")
    assert g.run(f"test -e {target}").rc != 0


def test_stats_and_expand_of_unknown_paths(env):
    _, _, node = env
    nope = f"{KUBELET}/ns-nope/mount"
    assert code(node, "NodeGetVolumeStats", volume_id=NOVOL, volume_path=nope) == C.NOT_FOUND
    assert code(node, "NodeExpandVolume", volume_id=NOVOL, volume_path=nope,
                capacity_range=rng(64 * MiB)) == C.NOT_FOUND
    # a path that exists but holds no volume of that id: a plain directory, a
    # mount of something else
    for path in ("/root", "/proc"):
        assert code(node, "NodeGetVolumeStats", volume_id=NOVOL, volume_path=path) \
            == C.NOT_FOUND, path
        assert code(node, "NodeExpandVolume", volume_id=NOVOL, volume_path=path,
                    capacity_range=rng(64 * MiB)) == C.NOT_FOUND, path


def test_stage_and_publish_idempotent(env):
    """A real volume (ext4): stage and publish twice with the same arguments
    are OK and mount once; a publish at the same target with other arguments
    is ALREADY_EXISTS; stats and a no-op expansion answer from the published
    path; unpublish and unstage twice are OK and leave nothing."""
    w, g, node = env
    ctl = lambda m, **kw: w.call("Controller", m, **kw)   # noqa: E731
    cap = mount(AM.SINGLE_NODE_WRITER, "ext4")
    v, ctx = guest_node.published(w, g.hostnqn, "pvc-node-sanity", 32 * MiB, cap)
    vid, nqn = v.volume_id, volume_nqn(v.volume_id)
    staging = f"{KUBELET}/plugins/kubernetes.io/csi/csi.srrs.io/{vid}/globalmount"
    target = f"{KUBELET}/pods/p2/volumes/kubernetes.io~csi/pvc-node-sanity/mount"
    mounts_at = lambda p: int(g.check(f"grep -c ' {p} ' /proc/mounts || true"))  # noqa: E731
    stage = dict(volume_id=vid, publish_context=ctx, staging_target_path=staging,
                 volume_capability=cap, volume_context=v.volume_context)
    for _ in range(2):
        node.call("NodeStageVolume", **stage)
    assert mounts_at(staging) == 1
    assert g.check(f"grep -l {nqn} /sys/class/nvme/*/subsysnqn | wc -l").strip() == "2"
    # staged already, as another filesystem or as Block
    for other in (mount(AM.SINGLE_NODE_WRITER, "xfs"), block()):
        assert code(node, "NodeStageVolume", **dict(stage, volume_capability=other)) \
            == C.ALREADY_EXISTS, other
    publish = dict(stage, target_path=target)
    for _ in range(2):
        node.call("NodePublishVolume", **publish)
    assert mounts_at(target) == 1
    # same target, other arguments
    assert code(node, "NodePublishVolume", **dict(publish, readonly=True)) == C.ALREADY_EXISTS
    assert code(node, "NodePublishVolume", **dict(publish, volume_capability=block())) \
        == C.ALREADY_EXISTS
    assert mounts_at(target) == 1
    # SINGLE_NODE_WRITER: a second target on this node is fine (Kubernetes'
    # ReadWriteOnce lets two pods of one node share it)
    node.call("NodePublishVolume", **dict(publish, target_path=target + "2"))
    node.call("NodeUnpublishVolume", volume_id=vid, target_path=target + "2")
    g.check(f"echo sane > {target}/f && sync")
    st = node.call("NodeGetVolumeStats", volume_id=vid, volume_path=target,
                   staging_target_path=staging)
    units = {u.unit: u for u in st.usage}
    assert 16 * MiB < units[pb.VolumeUsage.BYTES].total <= 32 * MiB, st
    assert units[pb.VolumeUsage.INODES].used > 0, st
    assert not st.volume_condition.abnormal, st
    # the volume is its size already: an expansion to it changes nothing
    r = node.call("NodeExpandVolume", volume_id=vid, volume_path=target,
                  capacity_range=rng(32 * MiB), staging_target_path=staging,
                  volume_capability=cap)
    assert r.capacity_bytes == 32 * MiB
    # beyond the volume (ControllerExpandVolume did not grow it): the range is
    # the caller's error, answered at once from the controller's Identify
    t0 = time.monotonic()
    assert code(node, "NodeExpandVolume", volume_id=vid, volume_path=target,
                capacity_range=rng(64 * MiB)) == C.OUT_OF_RANGE
    assert time.monotonic() - t0 < 10
    assert code(node, "NodeExpandVolume", volume_id=NOVOL, volume_path=target,
                capacity_range=rng(32 * MiB)) == C.NOT_FOUND
    # the volume's id with a path that is not where it is: NOT_FOUND
    assert code(node, "NodeGetVolumeStats", volume_id=vid, volume_path="/root") == C.NOT_FOUND
    assert code(node, "NodeExpandVolume", volume_id=vid, volume_path="/root",
                capacity_range=rng(32 * MiB)) == C.NOT_FOUND
    assert code(node, "NodeGetVolumeStats", volume_id=NOVOL, volume_path=target) == C.NOT_FOUND
    for _ in range(2):
        node.call("NodeUnpublishVolume", volume_id=vid, target_path=target)
    assert g.run(f"test -e {target}").rc != 0
    assert code(node, "NodeGetVolumeStats", volume_id=vid, volume_path=target) == C.NOT_FOUND
    for _ in range(2):
        node.call("NodeUnstageVolume", volume_id=vid, staging_target_path=staging)
    assert mounts_at(staging) == 0
    assert g.run(f"grep -l {nqn} /sys/class/nvme/*/subsysnqn").rc != 0     # no path left
    ctl("ControllerUnpublishVolume", volume_id=vid, node_id=g.hostnqn)
    ctl("DeleteVolume", volume_id=vid)


def test_block_stage_and_publish_idempotent(env):
    """A Block volume, SINGLE_NODE_SINGLE_WRITER: stage and publish twice are OK
    (the target is the device, bound once); a Mount publish or a read-only one
    at that target is ALREADY_EXISTS, a second target FAILED_PRECONDITION;
    stats answer from the target; teardown twice leaves nothing."""
    w, g, node = env
    ctl = lambda m, **kw: w.call("Controller", m, **kw)   # noqa: E731
    cap = block(AM.SINGLE_NODE_SINGLE_WRITER)
    v, ctx = guest_node.published(w, g.hostnqn, "pvc-node-sanity-blk", 16 * MiB, cap)
    vid, nqn = v.volume_id, volume_nqn(v.volume_id)
    staging = f"{KUBELET}/plugins/kubernetes.io/csi/volumeDevices/staging/{vid}"
    target = f"{KUBELET}/plugins/kubernetes.io/csi/volumeDevices/publish/{vid}/p3"
    stage = dict(volume_id=vid, publish_context=ctx, staging_target_path=staging,
                 volume_capability=cap, volume_context=v.volume_context)
    publish = dict(stage, target_path=target)
    for _ in range(2):
        node.call("NodeStageVolume", **stage)
        node.call("NodePublishVolume", **publish)
    assert int(g.check(f"grep -c ' {target} ' /proc/mounts")) == 1
    assert g.run(f"test -b {target}").rc == 0
    assert code(node, "NodePublishVolume", **dict(publish, readonly=True)) == C.ALREADY_EXISTS
    assert code(node, "NodePublishVolume", **dict(publish, volume_capability=mount())) \
        == C.ALREADY_EXISTS
    assert code(node, "NodePublishVolume", **dict(publish, target_path=target + "b")) \
        == C.FAILED_PRECONDITION
    assert g.run(f"test -e {target}b").rc != 0
    st = node.call("NodeGetVolumeStats", volume_id=vid, volume_path=target)
    assert [(u.unit, u.total) for u in st.usage] == [(pb.VolumeUsage.BYTES, 16 * MiB)]
    assert not st.volume_condition.abnormal, st
    assert code(node, "NodeGetVolumeStats", volume_id=NOVOL, volume_path=target) == C.NOT_FOUND
    for _ in range(2):
        node.call("NodeUnpublishVolume", volume_id=vid, target_path=target)
        assert g.run(f"test -e {target}").rc != 0
    for _ in range(2):
        node.call("NodeUnstageVolume", volume_id=vid, staging_target_path=staging)
    assert g.run(f"grep -l {nqn} /sys/class/nvme/*/subsysnqn").rc != 0
    ctl("ControllerUnpublishVolume", volume_id=vid, node_id=g.hostnqn)
    ctl("DeleteVolume", volume_id=vid)
