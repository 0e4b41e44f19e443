"""The kubelet's flow on a real Linux host (docs/architecture.md, Kubernetes
CSI plugin): the CSI node service drives a QEMU guest's kernel (nvme-tcp,
native multipath, mkfs, mount), the controller plugin the real catalog and a
real pair; the node plugin is a new process-state (a new NodeService and gRPC
server) before every step, so each step finds its state on the host.

Mount (ext4): CreateVolume -> ControllerPublish -> NodeStage -> NodePublish ->
the guest writes and checksums files -> kill -9 one controller of the pair ->
the files stay readable and writable -> NodeUnpublish -> NodeUnstage (no
path left) -> ControllerUnpublish -> DeleteVolume (no replica left). Then the
same with a Block volume. And online expansion: ControllerExpandVolume, then
NodeExpandVolume grows the mounted filesystem (the controllers' grow keeps
the namespace, ctrl/cluster_sync.py).

The guest has no Python: `GuestHost` answers the node service's few host
calls (ctrl/csi_node.py Host) with shell commands over the guest agent, and
maps the controllers' loopback addresses to the host as the guest sees it
(10.0.2.2). No timing asserted: side lane."""

import shlex

import grpc
import pytest

from srrs.ctrl import csi_node as cn
from srrs.ctrl.cluster import volume_nqn
from srrs.ctrl.csi import Client, Code, Fail, Server
from srrs.ctrl.csi_node import Host, NodeService
from tests.cluster.etcd import wait_until
from tests.guest import harness as guest_harness

from .test_sanity import AM, MiB, World, block, mount, rng

pytestmark = pytest.mark.side

G = guest_harness.HOST_FROM_GUEST
LOOP = "127.0.0.1"


class GuestHost(Host):
    def __init__(self, g):
        super().__init__()
        self.g = g

    def sh(self, cmd: str, timeout: float = 120):
        return self.g.run(cmd, timeout=timeout)

    def run(self, *argv, check=True):
        argv = list(argv)
        if argv[:2] == ["nvme", "connect"] and "-a" in argv:   # the host, as the guest sees it
            i = argv.index("-a") + 1
            argv[i] = G if argv[i] == LOOP else argv[i]
        r = self.sh(shlex.join(argv))

        class R:
            returncode, stdout, stderr = r.rc, r.output, r.output
        if check and r.rc:
            raise Fail(Code.INTERNAL, f"guest: {shlex.join(argv)}: {r.output.strip()}")
        return R

    def read(self, path):
        r = self.sh(f"cat {shlex.quote(path)} 2>/dev/null")
        return r.output.strip() if r.rc == 0 else ""

    def listdir(self, path):
        r = self.sh(f"ls -1 {shlex.quote(path)} 2>/dev/null")
        return sorted(r.output.split()) if r.rc == 0 else []

    def exists(self, path):
        return self.sh(f"test -e {shlex.quote(path)} || test -L {shlex.quote(path)}").rc == 0

    def isdir(self, path):
        return self.sh(f"test -d {shlex.quote(path)}").rc == 0

    def realpath(self, path):
        r = self.sh(f"readlink -f {shlex.quote(path)}")
        return r.output.strip() if r.rc == 0 and r.output.strip() else path

    def makedirs(self, path):
        self.g.check(f"mkdir -p {shlex.quote(path)}")

    def touch(self, path):
        q = shlex.quote(path)
        self.g.check(f"mkdir -p $(dirname {q}) && touch {q}")

    def remove(self, path):
        q = shlex.quote(path)
        self.g.check(f"if [ -d {q} ]; then rmdir {q}; elif [ -e {q} ]; then rm -f {q}; fi")

    def statvfs(self, path):
        bs, b, f, a, c, d = map(int, self.g.check(
            f"stat -f -c '%S %b %f %a %c %d' {shlex.quote(path)}").split())
        return b * bs, f * bs, a * bs, c, d, d

    def filesize(self, path):
        return int(self.g.check(f"blockdev --getsize64 {shlex.quote(path)}").strip())

    def controllers(self, nqn):
        return [dict(c, traddr=LOOP if c["traddr"] == G else c["traddr"])
                for c in super().controllers(nqn)]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    guest_harness.require_guest()
    tmp = tmp_path_factory.mktemp("csig")
    w = World(tmp)
    g = guest_harness.Guest(smp=1, mem="768M", modules=("nvme_tcp", "crc32c_generic", "ext4"))
    try:
        g.start()
        g.check("cat /sys/module/nvme_core/parameters/multipath")
        yield w, g, tmp
    finally:
        print(g.diagnostics())
        g.close()
        w.close()


class Node:
    """The node plugin, started anew for every call: nothing survives but the host."""

    def __init__(self, g, tmp):
        self.g, self.sock, self.n = g, str(tmp / "node" / "csi.sock"), 0

    def __call__(self, method, **kw):
        srv = Server("unix://" + self.sock, node=NodeService(node_id=self.g.hostnqn,
                                                              host=GuestHost(self.g))).start()
        c = Client("unix://" + self.sock, timeout=180)
        try:
            return c.call("Node", method, **kw)
        finally:
            c.close()
            srv.stop(0)


def _exported(w, n, vid, size):
    """Controller n exports the grown mirror again (a grow takes the namespace
    down and back: ctrl/cluster_sync.py)."""
    ctl = w.pair.nodes[n]
    subs = [s for s in ctl.rpc("nvmf_get_subsystems") if s["nqn"] == volume_nqn(vid)]
    return (subs and [x["nsid"] for x in subs[0]["namespaces"]] == [1]
            and any(b["name"] == f"c-{vid}" and b["size"] == size for b in ctl.rpc("bdev_list")))


def _grow(w, g, node, vid, cap, staging, target, check, want, is_block):
    """ControllerExpand (the catalog, the replicas), then NodeExpand (the
    device's new size, the filesystem grown online)."""
    ctl = lambda m, **kw: w.call("Controller", m, **kw)   # noqa: E731
    r = ctl("ControllerExpandVolume", volume_id=vid, capacity_range=rng(96 * MiB),
            volume_capability=cap)
    assert r.capacity_bytes == 96 * MiB and r.node_expansion_required == (not is_block)
    for n in "ab":
        assert wait_until(lambda n=n: w.replicas(n).get(vid) == 96 * MiB, 30), n
        assert wait_until(lambda n=n: _exported(w, n, vid, 96 * MiB), 30), n
    grown = node("NodeExpandVolume", volume_id=vid, volume_path=target,
                 capacity_range=rng(96 * MiB), staging_target_path=staging, volume_capability=cap)
    assert grown.capacity_bytes == 96 * MiB
    if not is_block:
        total = int(g.check(f"df -Pk {target} | tail -1").split()[1]) * 1024
        assert total > 80 * MiB, total
    assert g.check(check, timeout=120).strip() == want


def _flow(w, g, tmp, name, cap, is_block, expand=False):
    ctl = lambda m, **kw: w.call("Controller", m, **kw)   # noqa: E731
    node = Node(g, tmp)
    v = ctl("CreateVolume", name=name, capacity_range=rng(64 * MiB), volume_capabilities=[cap],
            parameters={"zone": "z1"}).volume
    vid, nqn = v.volume_id, volume_nqn(v.volume_id)
    assert wait_until(lambda: w.cat.get("volumes", vid).state == "ready", 30)
    ctx = ctl("ControllerPublishVolume", volume_id=vid, node_id=g.hostnqn,
              volume_capability=cap).publish_context
    staging = f"/var/lib/kubelet/plugins/kubernetes.io/csi/csi.srrs.io/{vid}/globalmount"
    target = f"/var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/{name}/mount"
    for _ in range(2):      # a repeated stage is a no-op
        node("NodeStageVolume", volume_id=vid, publish_context=ctx, staging_target_path=staging,
             volume_capability=cap, volume_context=v.volume_context)
    paths = g.check(f"grep -l {nqn} /sys/class/nvme/*/subsysnqn | wc -l").strip()
    assert paths == "2", g.check("nvme list-subsys")
    for _ in range(2):
        node("NodePublishVolume", volume_id=vid, publish_context=ctx, staging_target_path=staging,
             target_path=target, volume_capability=cap, volume_context=v.volume_context)
    if is_block:
        write = (f"dd if=/dev/urandom of=/root/blk bs=1M count=8 2>/dev/null && "
                 f"dd if=/root/blk of={target} bs=1M oflag=direct 2>&1 && sync && "
                 f"md5sum /root/blk | cut -d' ' -f1")
        check = f"dd if={target} bs=1M count=8 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1"
    else:
        write = (f"for i in 1 2 3; do dd if=/dev/urandom of={target}/f$i bs=1M count=4 "
                 f"2>/dev/null || exit 1; done; sync; cat {target}/f* | md5sum | cut -d' ' -f1")
        check = f"cat {target}/f1 {target}/f2 {target}/f3 | md5sum | cut -d' ' -f1"
    want = g.check(write, timeout=120).strip().splitlines()[-1]
    assert g.check(check).strip() == want
    # kill -9 one controller of the pair: the other path carries on, no I/O error
    b = w.pair.nodes["b"]
    b.kill9()
    after = (f"dd if=/dev/urandom of={target}/g bs=1M count=2 2>/dev/null && sync"
             if not is_block else
             f"dd if=/dev/urandom of={target} bs=1M seek=16 count=2 oflag=direct 2>/dev/null")
    g.check(after, timeout=120)
    drop = "" if is_block else "echo 3 > /proc/sys/vm/drop_caches; "
    assert g.check(drop + check, timeout=120).strip() == want
    stats = node("NodeGetVolumeStats", volume_id=vid, volume_path=target)
    assert stats.volume_condition.abnormal           # one path is down
    b.start()
    w.pair.wait_state("PAIRED", 60)
    if expand:
        _grow(w, g, node, vid, cap, staging, target, check, want, is_block)
    # tear down, each step twice (a retried call after a crash)
    for _ in range(2):
        node("NodeUnpublishVolume", volume_id=vid, target_path=target)
    for _ in range(2):
        node("NodeUnstageVolume", volume_id=vid, staging_target_path=staging)
    assert g.run(f"grep -l {nqn} /sys/class/nvme/*/subsysnqn").rc != 0     # no path left
    ctl("ControllerUnpublishVolume", volume_id=vid, node_id=g.hostnqn)
    ctl("DeleteVolume", volume_id=vid)
    for n in "ab":
        assert wait_until(lambda n=n: vid not in w.replicas(n), 30), n


def test_kubelet_flow_mount_ext4(env):
    w, g, tmp = env
    _flow(w, g, tmp, "pvc-guest-fs", mount(AM.SINGLE_NODE_WRITER, "ext4"), is_block=False)


def test_kubelet_flow_block(env):
    w, g, tmp = env
    _flow(w, g, tmp, "pvc-guest-blk", block(AM.SINGLE_NODE_WRITER), is_block=True)


def test_kubelet_flow_online_expansion(env):
    w, g, tmp = env
    _flow(w, g, tmp, "pvc-guest-grow", mount(AM.SINGLE_NODE_WRITER, "ext4"), is_block=False,
          expand=True)


def test_stage_refused_without_publish(env):
    """Not in the volume's host list: the connect is refused, the stage fails
    and leaves no path behind."""
    w, g, tmp = env
    v = w.call("Controller", "CreateVolume", name="pvc-guest-nopub", capacity_range=rng(8 * MiB),
               volume_capabilities=[mount()], parameters={"zone": "z1"}).volume
    ctx = {"nqn": volume_nqn(v.volume_id),
           "paths": ",".join(f"{LOOP}:{p}" for p in w.ports.values())}
    node = Node(g, tmp)
    old = cn.CONNECT_S, cn.PARTIAL_S
    cn.CONNECT_S, cn.PARTIAL_S = 3.0, 1.0
    try:
        with pytest.raises(grpc.RpcError) as e:
            node("NodeStageVolume", volume_id=v.volume_id, publish_context=ctx,
                 staging_target_path="/var/lib/kubelet/x", volume_capability=mount())
    finally:
        cn.CONNECT_S, cn.PARTIAL_S = old
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    w.call("Controller", "DeleteVolume", volume_id=v.volume_id)
