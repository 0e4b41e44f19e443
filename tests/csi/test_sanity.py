"""Our CSI sanity suite (docs/architecture.md, Kubernetes CSI plugin): every
Identity and Controller RPC of `srrs csi --mode controller`, called over the
plugin's Unix socket as the Kubernetes sidecars call it, against a real etcd
and a real pair of controllers (a+b, zone z1) that converge what the plugin
puts in the catalog. A second pair c+d (zone z2) is only a catalog record with
a registered member: enough for placement, topology and capacity.

Idempotency, the error codes the CSI spec prescribes, pagination, capacity per
topology segment, publish/unpublish (the subsystem's host list), expansion
(the replicas grow), and Probe false once etcd or the local controller is gone.
One module-scoped world; the Probe test, which takes it down, runs last.
No timing asserted, only outcomes: the side lane (ci/test), as
tests/cluster/test_catalog_sync.py."""

import os

import grpc
import pytest

from srrs.ctrl import csi_pb2 as pb
from srrs.ctrl import etcd, launch
from srrs.ctrl.cluster import volume_nqn
from srrs.ctrl.cluster_catalog import Catalog, Member
from srrs.ctrl.csi import DRIVER, TOPOLOGY_ZONE, Client
from tests.cluster.etcd import Cluster, wait_until

pytestmark = pytest.mark.side

MiB = 1 << 20
PREFIX = "/srrs/csi/"
N1 = "nqn.2014-08.org.nvmexpress:uuid:csi-node-1"
N2 = "nqn.2014-08.org.nvmexpress:uuid:csi-node-2"
C = grpc.StatusCode
AM = pb.VolumeCapability.AccessMode


def mount(mode=AM.SINGLE_NODE_WRITER, fs=""):
    return pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(fs_type=fs),
                               access_mode=AM(mode=mode))


def block(mode=AM.SINGLE_NODE_WRITER):
    return pb.VolumeCapability(block=pb.VolumeCapability.BlockVolume(), access_mode=AM(mode=mode))


def rng(req, lim=0):
    return pb.CapacityRange(required_bytes=req, limit_bytes=lim)


def code(fn, *a, **kw):
    """The gRPC status code fn's call ends with (OK when it succeeds)."""
    try:
        fn(*a, **kw)
        return C.OK
    except grpc.RpcError as e:
        return e.code()


class World:
    """addr: where the controllers' NVMe/TCP listeners are (what a publish
    context names); a guest needs one it reaches (tests/csi/guest_node.py)."""

    def __init__(self, tmp, addr: str = "127.0.0.1"):
        self.addr = addr
        self.etcd = Cluster(1).start()
        port = launch.free_ports(2)
        self.ports = dict(zip("ab", port))
        node = lambda n: {   # noqa: E731
            "bdev": [launch.bdev("v0", "file", "16MiB", path=str(tmp / f"{n}.v0"))],
            "pool": [launch.pool("p0", [launch.fragment(tmp / f"{n}.pool", "512MiB")])],
            # each claims its own controller-ID range in etcd: a host joins the
            # pair's two paths (multipath)
            "nvmf": launch.nvmf([f"{addr}:{self.ports[n]}"]),
            "cluster": {"etcd": self.etcd.endpoints, "prefix": PREFIX, "lease_s": 3}}
        (tmp / "ab").mkdir()
        self.pair = launch.Pair(tmp / "ab", node=node, secure=False)
        self.plugin = None
        try:
            self.pair.start()
            self.cat = Catalog(etcd.Client(self.etcd.endpoints, timeout=1, deadline=5), PREFIX)
            self.cat.put_pair("a+b", ["a", "b"], 256 * MiB, {"zone": "z1"})
            self.cat.put_pair("c+d", ["c", "d"], 128 * MiB, {"zone": "z2"})
            self.fake = self.cat.register(Member("c", pair="c+d", addresses={
                "nvmf": ["127.0.0.1:9"]}), ttl=30)
            self.cat.put_tenant("t1", 1 << 30)
            self.cat.put_tenant("small", 8 * MiB)
            self.sock = str(tmp / "csi" / "csi.sock")
            self.plugin = launch.Proc(["csi", "--mode", "controller", "--endpoint",
                                       "unix://" + self.sock, "--etcd", self.etcd.endpoints[0],
                                       "--prefix", PREFIX, "--tenant", "t1",
                                       "--controller-socket", self.pair.nodes["a"].sock],
                                      tmp / "csi.log")
            self.c = Client("unix://" + self.sock, timeout=20)
            assert wait_until(lambda: os.path.exists(self.sock) and self.ready(), 20), \
                self.plugin.tail()
            # both controllers registered: placement sees a+b live
            assert wait_until(lambda: {"a", "b"} <= set(self.cat.snapshot().members), 15)
        except BaseException:
            self.close()
            raise

    def ready(self) -> bool:
        try:
            return self.call("Identity", "Probe").ready.value
        except grpc.RpcError:
            return False

    def call(self, svc, method, **kw):
        return self.c.call(svc, method, **kw)

    def create(self, name, size=8 * MiB, caps=None, **kw):
        return self.call("Controller", "CreateVolume", name=name, capacity_range=rng(size),
                         volume_capabilities=caps or [mount()], **kw).volume

    def replicas(self, n):
        return {v["name"][2:]: v["size"] for v in self.pair.nodes[n].rpc("volume_list")
                if v["name"].startswith("c-")}

    def close(self):
        if self.plugin is not None:
            self.plugin.stop()
        self.pair.stop()
        self.etcd.stop()


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    world = World(tmp_path_factory.mktemp("csi"))
    yield world
    world.close()


def test_identity_and_capabilities(w):
    info = w.call("Identity", "GetPluginInfo")
    assert info.name == DRIVER and info.vendor_version
    caps = w.call("Identity", "GetPluginCapabilities").capabilities
    S = pb.PluginCapability.Service
    assert {c.service.type for c in caps if c.HasField("service")} == {
        S.CONTROLLER_SERVICE, S.VOLUME_ACCESSIBILITY_CONSTRAINTS}
    assert [c.volume_expansion.type for c in caps if c.HasField("volume_expansion")] == [
        pb.PluginCapability.VolumeExpansion.ONLINE]
    assert w.call("Identity", "Probe").ready.value is True
    R = pb.ControllerServiceCapability.RPC
    got = {c.rpc.type for c in w.call("Controller", "ControllerGetCapabilities").capabilities}
    assert {R.CREATE_DELETE_VOLUME, R.PUBLISH_UNPUBLISH_VOLUME, R.LIST_VOLUMES, R.GET_CAPACITY,
            R.EXPAND_VOLUME, R.GET_VOLUME} <= got and R.CREATE_DELETE_SNAPSHOT not in got
    # no snapshots; the node service is not served in controller mode
    assert code(w.call, "Controller", "CreateSnapshot", name="s", source_volume_id="x") == \
        C.UNIMPLEMENTED
    assert code(w.call, "Node", "NodeGetInfo") == C.UNIMPLEMENTED


def test_create_is_idempotent_and_converges(w):
    v = w.create("pvc-1", 9 * MiB + 1, parameters={"fsType": "xfs"})
    assert v.capacity_bytes == 10 * MiB       # whole MiB
    assert v.volume_context["nqn"] == volume_nqn(v.volume_id)
    assert v.volume_context["fsType"] == "xfs"
    # same name, same request: the same volume
    again = w.create("pvc-1", 9 * MiB + 1, parameters={"fsType": "xfs"})
    assert again.volume_id == v.volume_id and again.capacity_bytes == v.capacity_bytes
    # same name, other size or other parameters: ALREADY_EXISTS
    assert code(w.create, "pvc-1", 64 * MiB, parameters={"fsType": "xfs"}) == C.ALREADY_EXISTS
    assert code(w.create, "pvc-1", 9 * MiB, parameters={"fsType": "ext4"}) == C.ALREADY_EXISTS
    # the pair's controllers make it: a replica on both, then `ready`
    for n in "ab":
        assert wait_until(lambda n=n: w.replicas(n).get(v.volume_id) == 10 * MiB, 20), n
    assert wait_until(lambda: w.cat.get("volumes", v.volume_id).state == "ready", 20)
    # a Block volume, shared by several nodes
    b = w.create("pvc-blk", 4 * MiB, caps=[block(AM.MULTI_NODE_MULTI_WRITER)])
    assert b.capacity_bytes == 4 * MiB and b.volume_id != v.volume_id


@pytest.mark.parametrize("kw,want", [
    ({"name": ""}, C.INVALID_ARGUMENT),
    ({"volume_capabilities": []}, C.INVALID_ARGUMENT),
    ({"volume_capabilities": [mount(AM.MULTI_NODE_MULTI_WRITER)]}, C.INVALID_ARGUMENT),
    ({"volume_capabilities": [mount(fs="btrfs")]}, C.INVALID_ARGUMENT),
    ({"volume_capabilities": [pb.VolumeCapability(access_mode=AM(mode=AM.SINGLE_NODE_WRITER))]},
     C.INVALID_ARGUMENT),
    ({"capacity_range": rng(8 * MiB, 4 * MiB)}, C.OUT_OF_RANGE),
    ({"capacity_range": rng(1000, 2000)}, C.OUT_OF_RANGE),
    ({"capacity_range": rng(-1)}, C.INVALID_ARGUMENT),
    ({"parameters": {"color": "red"}}, C.INVALID_ARGUMENT),
    ({"parameters": {"provisioning": "thick"}}, C.INVALID_ARGUMENT),
    ({"parameters": {"tenant": "nobody"}}, C.INVALID_ARGUMENT),
    ({"name": "a/b"}, C.INVALID_ARGUMENT),
])
def test_create_refusals(w, kw, want):
    req = dict(name="pvc-bad", capacity_range=rng(4 * MiB), volume_capabilities=[mount()])
    req.update(kw)
    assert code(w.call, "Controller", "CreateVolume", **req) == want
    assert w.cat.volume_by_name("t1", "pvc-bad") is None


def _nothing_left(w, tenant, name):
    return (w.cat.volume_by_name(tenant, name) is None
            and w.cat.etcd.get1(w.cat.key("csi", "volumes", name)) is None)


def test_quota_or_space_exhausted_leaves_nothing(w):
    used = w.cat.get("tenants", "small").used
    assert code(w.create, "pvc-quota", 16 * MiB, parameters={"tenant": "small"}) == \
        C.RESOURCE_EXHAUSTED
    assert _nothing_left(w, "small", "pvc-quota") and w.cat.get("tenants", "small").used == used
    # more than any pair has free
    assert code(w.create, "pvc-huge", 512 * MiB) == C.RESOURCE_EXHAUSTED
    assert _nothing_left(w, "t1", "pvc-huge")
    # a zone no pair has
    topo = pb.TopologyRequirement(requisite=[pb.Topology(segments={TOPOLOGY_ZONE: "z9"})])
    assert code(w.create, "pvc-z9", 4 * MiB, accessibility_requirements=topo) == \
        C.RESOURCE_EXHAUSTED
    assert _nothing_left(w, "t1", "pvc-z9")
    # and the same name works once there is room
    v = w.create("pvc-quota", 4 * MiB, parameters={"tenant": "small"})
    assert w.cat.get("volumes", v.volume_id).tenant == "small"


def test_topology_steers_placement(w):
    seg = lambda z: pb.Topology(segments={TOPOLOGY_ZONE: z})   # noqa: E731
    v = w.create("pvc-z2", 4 * MiB, accessibility_requirements=pb.TopologyRequirement(
        requisite=[seg("z1"), seg("z2")], preferred=[seg("z2")]))
    assert w.cat.get("volumes", v.volume_id).pair == "c+d"
    assert [dict(t.segments) for t in v.accessible_topology] == [{TOPOLOGY_ZONE: "z2"}]
    v1 = w.create("pvc-sc-zone", 4 * MiB, parameters={"zone": "z1"})
    assert w.cat.get("volumes", v1.volume_id).pair == "a+b"


def test_list_volumes_pages(w):
    for i in range(5):
        w.create(f"pvc-list-{i}", 2 * MiB)
    every = set(w.cat.snapshot().volumes)
    seen, tok, pages = [], "", 0
    while True:
        r = w.call("Controller", "ListVolumes", max_entries=2, starting_token=tok)
        assert len(r.entries) <= 2
        seen += [e.volume.volume_id for e in r.entries]
        pages += 1
        tok = r.next_token
        if not tok:
            break
    assert sorted(seen) == sorted(every) and pages == -(-len(every) // 2)
    whole = w.call("Controller", "ListVolumes")
    assert len(whole.entries) == len(every) and not whole.next_token
    assert code(w.call, "Controller", "ListVolumes", starting_token="nope") == C.ABORTED
    assert code(w.call, "Controller", "ListVolumes", max_entries=-1) == C.INVALID_ARGUMENT


def test_get_capacity_per_segment(w):
    snap = w.cat.snapshot()
    free = {n: p.capacity - p.allocated for n, p in snap.pairs.items()}

    def cap(zone=None, **params):
        t = pb.Topology(segments={TOPOLOGY_ZONE: zone}) if zone else None
        return w.call("Controller", "GetCapacity", parameters=params, accessible_topology=t)

    z1, z2, every = cap("z1"), cap("z2"), cap()
    assert z1.available_capacity == free["a+b"] and z2.available_capacity == free["c+d"]
    assert every.available_capacity == free["a+b"] + free["c+d"]
    assert every.maximum_volume_size.value == max(free.values())
    assert cap("z9").available_capacity == 0
    # within the tenant's quota
    t = w.cat.get("tenants", "small")
    assert cap("z1", tenant="small").available_capacity == t.quota - t.used
    # after a create, the zone has that much less
    w.create("pvc-cap", 8 * MiB, parameters={"zone": "z1"})
    assert cap("z1").available_capacity == free["a+b"] - 8 * MiB


def test_publish_unpublish_edit_the_host_list(w):
    v = w.create("pvc-pub", 4 * MiB, parameters={"zone": "z1"})
    vid, nqn = v.volume_id, volume_nqn(v.volume_id)

    def publish(node, cap=None):
        return w.call("Controller", "ControllerPublishVolume", volume_id=vid, node_id=node,
                      volume_capability=cap or mount())

    ctx = publish(N1).publish_context
    assert ctx["nqn"] == nqn
    assert sorted(ctx["paths"].split(",")) == sorted(f"127.0.0.1:{p}" for p in w.ports.values())
    assert publish(N1).publish_context == ctx              # idempotent
    assert w.cat.get("volumes", vid).hosts == (N1,)

    def hosts(n):
        s = [x for x in w.pair.nodes[n].rpc("nvmf_get_subsystems") if x["nqn"] == nqn]
        return s[0]["hosts"] if s else None
    for n in "ab":                                         # both controllers admit the node
        assert wait_until(lambda n=n: hosts(n) == [N1], 20), (n, hosts(n))
    # single-node elsewhere: FAILED_PRECONDITION; a deleted or unknown one: NOT_FOUND
    assert code(publish, N2) == C.FAILED_PRECONDITION
    assert code(publish, "node-without-nqn") == C.NOT_FOUND
    assert code(w.call, "Controller", "ControllerPublishVolume", volume_id=vid, node_id=N1) == \
        C.INVALID_ARGUMENT
    assert code(w.call, "Controller", "ControllerPublishVolume",
                volume_id="00000000-0000-0000-0000-000000000000", node_id=N1,
                volume_capability=mount()) == C.NOT_FOUND
    # a published volume is not deleted
    assert code(w.call, "Controller", "DeleteVolume", volume_id=vid) == C.FAILED_PRECONDITION
    for _ in range(2):                                     # unpublish is idempotent
        w.call("Controller", "ControllerUnpublishVolume", volume_id=vid, node_id=N1)
    assert w.cat.get("volumes", vid).hosts == ()
    for n in "ab":
        assert wait_until(lambda n=n: hosts(n) == [], 20), (n, hosts(n))
    w.call("Controller", "ControllerUnpublishVolume", volume_id="nope", node_id=N1)
    # a Block volume for several writers: both nodes at once
    b = w.create("pvc-blk2", 4 * MiB, caps=[block(AM.MULTI_NODE_MULTI_WRITER)])
    for node in (N1, N2):
        w.call("Controller", "ControllerPublishVolume", volume_id=b.volume_id, node_id=node,
               volume_capability=block(AM.MULTI_NODE_MULTI_WRITER))
    assert sorted(w.cat.get("volumes", b.volume_id).hosts) == sorted([N1, N2])


def test_validate_and_get_volume(w):
    v = w.create("pvc-val", 4 * MiB, parameters={"zone": "z1"})
    ok = w.call("Controller", "ValidateVolumeCapabilities", volume_id=v.volume_id,
                volume_capabilities=[mount()])
    assert len(ok.confirmed.volume_capabilities) == 1
    no = w.call("Controller", "ValidateVolumeCapabilities", volume_id=v.volume_id,
                volume_capabilities=[mount(AM.MULTI_NODE_MULTI_WRITER)])
    assert not no.HasField("confirmed") and "Block" in no.message
    assert code(w.call, "Controller", "ValidateVolumeCapabilities",
                volume_id="00000000-0000-0000-0000-000000000001",
                volume_capabilities=[mount()]) == C.NOT_FOUND
    assert code(w.call, "Controller", "ValidateVolumeCapabilities", volume_id=v.volume_id) == \
        C.INVALID_ARGUMENT
    assert wait_until(lambda: not w.call("Controller", "ControllerGetVolume", volume_id=v.volume_id)
                      .status.volume_condition.abnormal, 20)
    assert code(w.call, "Controller", "ControllerGetVolume", volume_id="x") == C.NOT_FOUND


def test_expand_grows_the_replicas(w):
    v = w.create("pvc-grow", 4 * MiB, parameters={"zone": "z1"})
    vid = v.volume_id

    def expand(req, **kw):
        return w.call("Controller", "ControllerExpandVolume", volume_id=vid,
                      capacity_range=rng(req), **kw)
    r = expand(12 * MiB)
    assert r.capacity_bytes == 12 * MiB and r.node_expansion_required
    assert expand(12 * MiB).capacity_bytes == 12 * MiB      # idempotent
    assert expand(2 * MiB).capacity_bytes == 12 * MiB       # never shrinks
    assert not expand(16 * MiB, volume_capability=block()).node_expansion_required
    for n in "ab":
        assert wait_until(lambda n=n: w.replicas(n).get(vid) == 16 * MiB, 20), n
    assert code(expand, 1 << 40) == C.RESOURCE_EXHAUSTED
    assert w.cat.get("volumes", vid).size == 16 * MiB
    assert code(w.call, "Controller", "ControllerExpandVolume", volume_id=vid) == \
        C.INVALID_ARGUMENT
    assert code(w.call, "Controller", "ControllerExpandVolume",
                volume_id="00000000-0000-0000-0000-000000000002",
                capacity_range=rng(MiB)) == C.NOT_FOUND


def test_delete_is_idempotent_and_removes_the_replicas(w):
    v = w.create("pvc-del", 4 * MiB, parameters={"zone": "z1"})
    vid = v.volume_id
    for n in "ab":
        assert wait_until(lambda n=n: vid in w.replicas(n), 20), n
    for _ in range(2):
        w.call("Controller", "DeleteVolume", volume_id=vid)
    assert w.cat.get("volumes", vid) is None and _nothing_left(w, "t1", "pvc-del")
    for n in "ab":
        assert wait_until(lambda n=n: vid not in w.replicas(n), 20), n
    w.call("Controller", "DeleteVolume", volume_id="not-a-volume")
    assert code(w.call, "Controller", "DeleteVolume", volume_id="") == C.INVALID_ARGUMENT
    # the name is free again: a new volume
    assert w.create("pvc-del", 4 * MiB).volume_id != vid


def test_probe_false_without_controller_or_etcd(w):
    """Last: it takes the world down. On the way: a publish while a controller
    is down still names its path (remembered at create)."""
    v = w.create("pvc-down", 4 * MiB, parameters={"zone": "z1"})
    a = w.pair.nodes["a"]
    a.stop()
    assert wait_until(lambda: not w.ready(), 10)
    assert wait_until(lambda: "a" not in w.cat.snapshot().members, 15)
    ctx = w.call("Controller", "ControllerPublishVolume", volume_id=v.volume_id, node_id=N1,
                 volume_capability=mount()).publish_context
    assert sorted(ctx["paths"].split(",")) == sorted(f"127.0.0.1:{p}" for p in w.ports.values())
    a.start()
    assert wait_until(w.ready, 20)
    w.etcd.members[0].kill()
    assert wait_until(lambda: not w.ready(), 15)
