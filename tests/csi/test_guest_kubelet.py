"""The kubelet's flow on a real Linux host (docs/architecture.md, Kubernetes
CSI plugin): the node plugin, `srrs csi --mode node`, runs inside a QEMU
guest against its kernel (nvme-tcp, native multipath, mkfs, mount:
tests/csi/guest_node.py); the controller plugin runs on the host against a
real etcd and a real pair. The test is the kubelet and the sidecars: it calls
the controller plugin on its Unix socket and the node plugin over TCP (a port
QEMU forwards into the guest), passing what one call returns to the next as
they do.

After every Node call the plugin is killed with SIGKILL (it must still have
been running) and a new one started: each step finds its state on the host
(sysfs, mountinfo), never in the plugin's memory.

Mount (ext4), then Block: CreateVolume -> ControllerPublish -> NodeStage ->
NodePublish -> the guest writes and checksums -> kill -9 one controller of
the pair -> the data reads back the same and more writes succeed, no I/O
error in the guest's kernel log -> NodeGetVolumeStats (a path down:
abnormal) -> the controller back, PAIRED -> ControllerExpandVolume ->
NodeExpandVolume (ext4 grows online) -> NodeUnpublish (the target gone) ->
NodeUnstage (no path, no mount left) -> ControllerUnpublish -> DeleteVolume
(no replica left on either controller). The ext4 flow also makes every Node
call twice, each to its own plugin process (a retry after a crash), and
starts with NodeGetInfo (the node id: the guest's host NQN); the Block flow
makes each once (a plugin start costs 5-7 s of CPU under TCG). No timing asserted:
side lane."""

import re

import grpc
import pytest

from srrs.ctrl import launch
from srrs.ctrl.cluster import volume_nqn
from tests.cluster.etcd import wait_until
from tests.guest import harness as guest_harness

from . import guest_node
from .test_sanity import AM, MiB, World, block, mount, rng

pytestmark = pytest.mark.side

# What the guest's kernel logs when I/O failed (a path's failover is not
# one: native multipath requeues it on the other path).
IO_ERROR = re.compile(r"I/O error|EXT4-fs error|EXT4-fs warning.*error|Aborting journal")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    guest_harness.require_guest()
    addr = guest_node.require_host_address()
    tmp = tmp_path_factory.mktemp("csig")
    with guest_node.guest_with_plugin(lambda: World(tmp, addr=addr),
                                      launch.free_ports(1)[0]) as (w, g, node):
        g.check("cat /sys/module/nvme_core/parameters/multipath")
        yield w, g, node


def _restarted(node):
    """Node calls as the kubelet makes them, each to a new plugin process:
    after every call the plugin is killed (SIGKILL; it must still be running)
    and a new one started, which the next call waits for (it starts while the
    test takes the steps in between)."""
    def call(method, **kw):
        if node.job is None:
            node.start(wait=False)
        r = node.call(method, **kw)
        node.restart(wait=False)
        return r
    return call


def _exported(w, n, vid, size):
    """Controller n exports the grown mirror (ctrl/cluster_sync.py)."""
    ctl = w.pair.nodes[n]
    subs = [s for s in ctl.rpc("nvmf_get_subsystems") if s["nqn"] == volume_nqn(vid)]
    return (subs and [x["nsid"] for x in subs[0]["namespaces"]] == [1]
            and any(b["name"] == f"c-{vid}" and b["size"] == size for b in ctl.rpc("bdev_list")))


def _no_io_error(g, since: int) -> None:
    lines = g.check("dmesg").splitlines()[since:]
    bad = [x for x in lines if IO_ERROR.search(x)]
    assert not bad, "\n".join(bad)


def _flow(w, g, node, name, cap, is_block, repeat):
    """repeat: NodeGetInfo first, and every Node call of the flow made twice
    (the retry of a call whose answer a crash lost): a no-op the second time."""
    ctl = lambda m, **kw: w.call("Controller", m, **kw)   # noqa: E731
    call = _restarted(node)
    times = range(2 if repeat else 1)
    node_id = call("NodeGetInfo").node_id if repeat else g.hostnqn
    assert node_id == g.hostnqn         # the guest's /etc/nvme/hostnqn
    v, ctx = guest_node.published(w, node_id, name, 64 * MiB, cap)
    vid, nqn = v.volume_id, volume_nqn(v.volume_id)
    assert sorted(ctx["paths"].split(",")) == sorted(f"{w.addr}:{p}" for p in w.ports.values())
    staging = f"/var/lib/kubelet/plugins/kubernetes.io/csi/csi.srrs.io/{vid}/globalmount"
    target = f"/var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/{name}/mount"
    for _ in times:
        call("NodeStageVolume", volume_id=vid, publish_context=ctx, staging_target_path=staging,
             volume_capability=cap, volume_context=v.volume_context)
    paths = g.check(f"grep -l {nqn} /sys/class/nvme/*/subsysnqn | wc -l").strip()
    assert paths == "2", g.check("nvme list-subsys")
    for _ in times:
        call("NodePublishVolume", volume_id=vid, publish_context=ctx, staging_target_path=staging,
             target_path=target, volume_capability=cap, volume_context=v.volume_context)
    if is_block:
        assert g.run(f"test -b {target}").rc == 0
        write = (f"dd if=/dev/urandom of=/root/blk bs=1M count=8 2>/dev/null && "
                 f"dd if=/root/blk of={target} bs=1M oflag=direct 2>&1 && sync && "
                 f"md5sum /root/blk | cut -d' ' -f1")
        check = f"dd if={target} bs=1M count=8 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1"
    else:
        assert g.check(f"grep ' {target} ' /proc/mounts").split()[2] == "ext4"
        write = (f"for i in 1 2 3; do dd if=/dev/urandom of={target}/f$i bs=1M count=4 "
                 f"2>/dev/null || exit 1; done; sync; cat {target}/f* | md5sum | cut -d' ' -f1")
        check = f"cat {target}/f1 {target}/f2 {target}/f3 | md5sum | cut -d' ' -f1"
    want = g.check(write, timeout=120).strip().splitlines()[-1]
    assert g.check(check).strip() == want
    # kill -9 one controller of the pair: the other path carries on, no I/O error
    since = len(g.check("dmesg").splitlines())
    b = w.pair.nodes["b"]
    b.kill9()
    after = (f"dd if=/dev/urandom of={target}/g bs=1M count=2 2>/dev/null && sync"
             if not is_block else
             f"dd if=/dev/urandom of={target} bs=1M seek=16 count=2 oflag=direct 2>/dev/null")
    g.check(after, timeout=120)
    drop = "" if is_block else "echo 3 > /proc/sys/vm/drop_caches; "
    assert g.check(drop + check, timeout=120).strip() == want
    stats = call("NodeGetVolumeStats", volume_id=vid, volume_path=target)
    assert stats.volume_condition.abnormal, stats          # one path is down
    b.start()
    w.pair.wait_state("PAIRED", 60)
    assert g.check(drop + check, timeout=120).strip() == want
    _no_io_error(g, since)
    # online expansion: the replicas, then the device and the filesystem in the guest
    r = ctl("ControllerExpandVolume", volume_id=vid, capacity_range=rng(96 * MiB),
            volume_capability=cap)
    assert r.capacity_bytes == 96 * MiB and r.node_expansion_required == (not is_block)
    for n in "ab":
        assert wait_until(lambda n=n: w.replicas(n).get(vid) == 96 * MiB, 30), n
        assert wait_until(lambda n=n: _exported(w, n, vid, 96 * MiB), 30), n
    grown = call("NodeExpandVolume", volume_id=vid, volume_path=target,
                 capacity_range=rng(96 * MiB), staging_target_path=staging,
                 volume_capability=cap)
    assert grown.capacity_bytes == 96 * MiB
    if is_block:
        assert int(g.check(f"blockdev --getsize64 {target}")) == 96 * MiB
    else:
        total = int(g.check(f"df -Pk {target} | tail -1").split()[1]) * 1024
        assert total > 80 * MiB, total
        g.check(f"dd if=/dev/urandom of={target}/h bs=1M count=56 2>/dev/null && sync",
                timeout=120)                # more than the first size held
    assert g.check(drop + check, timeout=120).strip() == want
    for _ in times:
        call("NodeUnpublishVolume", volume_id=vid, target_path=target)
    assert g.run(f"test -e {target} || grep -q ' {target} ' /proc/mounts").rc != 0
    for _ in times:
        call("NodeUnstageVolume", volume_id=vid, staging_target_path=staging)
    assert g.run(f"grep -l {nqn} /sys/class/nvme/*/subsysnqn").rc != 0     # no path left
    assert g.run(f"grep -q ' {staging} ' /proc/mounts").rc != 0
    _no_io_error(g, since)
    ctl("ControllerUnpublishVolume", volume_id=vid, node_id=node_id)
    ctl("DeleteVolume", volume_id=vid)
    for n in "ab":
        assert wait_until(lambda n=n: vid not in w.replicas(n), 30), n


def test_kubelet_flow_mount_ext4(env):
    w, g, node = env
    _flow(w, g, node, "pvc-guest-fs", mount(AM.SINGLE_NODE_WRITER, "ext4"), is_block=False,
          repeat=True)


def test_kubelet_flow_block(env):
    w, g, node = env
    _flow(w, g, node, "pvc-guest-blk", block(AM.SINGLE_NODE_WRITER), is_block=True,
          repeat=False)


def test_stage_refused_without_publish(env):
    """Not in the volume's host list: the connect is refused, the stage fails
    and leaves no path behind."""
    w, g, node = env
    v = w.call("Controller", "CreateVolume", name="pvc-guest-nopub", capacity_range=rng(8 * MiB),
               volume_capabilities=[mount()], parameters={"zone": "z1"}).volume
    ctx = {"nqn": volume_nqn(v.volume_id),
           "paths": ",".join(f"{w.addr}:{p}" for p in w.ports.values())}
    node.start(args=["--connect-timeout", "3"])
    with pytest.raises(grpc.RpcError) as e:
        node.call("NodeStageVolume", volume_id=v.volume_id, publish_context=ctx,
                  staging_target_path="/var/lib/kubelet/x", volume_capability=mount())
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert g.run(f"grep -l {ctx['nqn']} /sys/class/nvme/*/subsysnqn").rc != 0
    w.call("Controller", "DeleteVolume", volume_id=v.volume_id)
