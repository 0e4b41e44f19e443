"""The CSI Node service's view of the host (docs/architecture.md, Kubernetes
CSI plugin), on a fake sysfs and mountinfo: the kernel's NVMe controllers of a
volume's subsystem, its multipath head by NGUID (never a hidden path device),
mounts with escaped paths, and what the node answers from them (info, stats
and the paths' condition, the refusals of missing fields, idempotent
unpublish/unstage of what is not there). The kernel flow itself needs a Linux
guest: tests/guest (see tests/csi/README.md)."""

import os

import grpc
import pytest

from srrs.ctrl import csi_pb2 as pb
from srrs.ctrl.cluster import volume_nqn
from srrs.ctrl.csi import TOPOLOGY_ZONE, Fail
from srrs.ctrl.csi_node import Host, NodeService, mounts

U = "0f0e0d0c-0b0a-4908-8706-050403020100"
NQN = volume_nqn(U)
HOST = "nqn.2014-08.org.nvmexpress:uuid:node-test"


def _w(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text + "\n")


@pytest.fixture
def host(tmp_path):
    sys = tmp_path / "sys"
    for i, (port, state) in enumerate((("4420", "live"), ("4421", "connecting"))):
        d = sys / "class" / "nvme" / f"nvme{i}"
        _w(str(d / "subsysnqn"), NQN)
        _w(str(d / "address"), f"traddr=10.0.0.{i + 1},trsvcid={port},src_addr=10.0.0.9")
        _w(str(d / "state"), state)
    _w(str(sys / "class" / "nvme" / "nvme2" / "subsysnqn"), "nqn.other")
    # the head and its two hidden paths carry the same NGUID
    for dev in ("nvme0c0n1", "nvme0c1n1", "nvme0n1"):
        _w(str(sys / "block" / dev / "nguid"), U)
        _w(str(sys / "block" / dev / "size"), str(32 << 11))
    _w(str(sys / "block" / "nvme1n1" / "nguid"), "11111111-2222-3333-4444-555555555555")
    mi = tmp_path / "mountinfo"
    staged = tmp_path / "staging dir"
    mi.write_text(
        "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
        f"40 22 259:3 / {str(staged).replace(' ', chr(92) + '040')} rw,relatime - ext4 "
        "/dev/nvme0n1 rw\n"
        # a volume whose every path is gone: its head left sysfs, its mount stayed
        f"41 22 259:9 / {tmp_path / 'orphan'} rw,relatime - ext4 /dev/nvme7n1 rw\n")
    return Host(sysfs=str(sys), mountinfo=str(mi), dev="/dev"), staged


def test_sysfs_and_mountinfo(host):
    h, staged = host
    cs = h.controllers(NQN)
    assert [(c["name"], c["traddr"], c["trsvcid"], c["state"]) for c in cs] == [
        ("nvme0", "10.0.0.1", "4420", "live"), ("nvme1", "10.0.0.2", "4421", "connecting")]
    assert h.device(U) == "/dev/nvme0n1" and h.device(U.upper()) == "/dev/nvme0n1"
    assert h.device("22222222-2222-2222-2222-222222222222") is None
    assert h.size("/dev/nvme0n1") == 32 << 20
    m = h.mount_at(str(staged))
    assert m["source"] == "/dev/nvme0n1" and m["fstype"] == "ext4"
    assert [x["target"] for x in mounts(h.mountinfo)] == ["/proc", str(staged),
                                                           str(staged.parent / "orphan")]


def test_node_answers_from_the_host(host, tmp_path):
    h, staged = host
    staged.mkdir()
    (tmp_path / "orphan").mkdir()
    node = NodeService(node_id=HOST, zone="z1", host=h)
    info = node.NodeGetInfo(pb.NodeGetInfoRequest())
    assert info.node_id == HOST and dict(info.accessible_topology.segments) == {TOPOLOGY_ZONE: "z1"}
    R = pb.NodeServiceCapability.RPC
    assert {c.rpc.type for c in node.NodeGetCapabilities(None).capabilities} >= {
        R.STAGE_UNSTAGE_VOLUME, R.GET_VOLUME_STATS, R.EXPAND_VOLUME, R.VOLUME_CONDITION}
    st = node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(volume_id=U,
                                                               volume_path=str(staged)))
    units = {u.unit: u for u in st.usage}
    assert units[pb.VolumeUsage.BYTES].total > 0 and units[pb.VolumeUsage.INODES].total > 0
    # one of the two paths is reconnecting: abnormal, and says so
    assert st.volume_condition.abnormal and "1 of 2" in st.volume_condition.message
    gone = node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(
        volume_id="99999999-9999-9999-9999-999999999999", volume_path=str(tmp_path / "orphan")))
    assert gone.volume_condition.abnormal and "no NVMe/TCP path" in gone.volume_condition.message
    # a path that is not the volume's: a plain directory, or another volume's mount
    for vid, path in ((U, tmp_path), ("99999999-9999-9999-9999-999999999999", staged),
                      ("11111111-2222-3333-4444-555555555555", staged)):
        with pytest.raises(Fail) as e:
            node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(volume_id=vid,
                                                                 volume_path=str(path)))
        assert e.value.code == grpc.StatusCode.NOT_FOUND, (vid, path)


def _code(fn, req):
    try:
        fn(req)
        return grpc.StatusCode.OK
    except Fail as e:
        return e.code


def test_node_refusals_and_idempotent_teardown(host, tmp_path):
    h, _ = host
    node = NodeService(node_id=HOST, host=h)
    C = grpc.StatusCode
    cap = pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(),
                              access_mode=pb.VolumeCapability.AccessMode(mode=1))
    assert _code(node.NodeStageVolume, pb.NodeStageVolumeRequest(
        staging_target_path="/x", volume_capability=cap)) == C.INVALID_ARGUMENT
    assert _code(node.NodeStageVolume, pb.NodeStageVolumeRequest(
        volume_id=U, volume_capability=cap)) == C.INVALID_ARGUMENT
    assert _code(node.NodeStageVolume, pb.NodeStageVolumeRequest(
        volume_id=U, staging_target_path="/x")) == C.INVALID_ARGUMENT
    assert _code(node.NodePublishVolume, pb.NodePublishVolumeRequest(
        volume_id=U, staging_target_path="/x", volume_capability=cap)) == C.INVALID_ARGUMENT
    # we have STAGE_UNSTAGE_VOLUME: a publish without a staging path is the spec's
    # FAILED_PRECONDITION (stage first), not a malformed request
    assert _code(node.NodePublishVolume, pb.NodePublishVolumeRequest(
        volume_id=U, target_path="/t", volume_capability=cap)) == C.FAILED_PRECONDITION
    assert _code(node.NodeGetVolumeStats, pb.NodeGetVolumeStatsRequest(
        volume_id=U, volume_path=str(tmp_path / "nope"))) == C.NOT_FOUND
    assert _code(node.NodeExpandVolume, pb.NodeExpandVolumeRequest(
        volume_id=U, volume_path=str(tmp_path / "nope"))) == C.NOT_FOUND
    # nothing mounted there and no path of that volume: done, twice
    other = "99999999-9999-9999-9999-999999999999"
    target = tmp_path / "target"
    target.mkdir()
    for _ in range(2):
        node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=other,
                                                               target_path=str(target)))
        node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id=other,
                                                           staging_target_path=str(tmp_path / "s")))
    assert not target.exists()
    assert node.ready()
