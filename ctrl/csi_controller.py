"""The CSI Controller service (docs/architecture.md, Kubernetes CSI plugin):
volumes of the cluster catalog (ctrl/cluster_catalog.py), which the
controllers of the chosen pair then make and export (ctrl/cluster_sync.py).

* volume_id is the catalog volume's uuid; its subsystem is volume_nqn(uuid)
  with NGUID = uuid, which is how the node finds the block device.
* CreateVolume is idempotent by name. A CSI name is a catalog name in the
  tenant of the StorageClass; what the request asked (tenant, parameters,
  Block or Mount) is kept under P/csi/volumes/NAME (a kind the catalog's
  readers skip), written BEFORE the catalog create and removed when the create
  is refused: the same name with other parameters is ALREADY_EXISTS, and a
  refused create (quota, space) leaves nothing behind.
* ControllerPublish adds the node's id (its host NQN) to the volume's hosts
  (the subsystem's allow-list); Unpublish removes it: one compare-and-swap
  each, so nodes attached at once all stay.
* Topology: a pair's `zone` label is the volume's TOPOLOGY_ZONE segment; a
  pair without one is reachable from every node.
"""

from __future__ import annotations

import json
import logging
import re
import uuid as uuidlib
from typing import Optional

from google.protobuf.wrappers_pb2 import Int64Value

from . import cluster_catalog as cat
from . import csi_pb2 as pb
from . import etcd
from .cluster import volume_nqn
from .csi import TOPOLOGY_ZONE, Busy, Code, Fail, need
from .placement import Request, candidates

log = logging.getLogger("srrs.csi")

MiB = 1 << 20
ALIGN = MiB                 # sizes are rounded up to this (the pool rounds to its cluster size)
DEFAULT_SIZE = 1 << 30      # a CreateVolume without a capacity range
PARAMS = ("tenant", "fsType", "zone", "provisioning")
FS_TYPES = ("ext4", "xfs")
# Parameters the external-provisioner adds (--extra-create-metadata): not ours to check.
K8S_PARAM = "csi.storage.k8s.io/"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

M = pb.VolumeCapability.AccessMode
SINGLE_NODE = (M.SINGLE_NODE_WRITER, M.SINGLE_NODE_READER_ONLY, M.SINGLE_NODE_SINGLE_WRITER,
               M.SINGLE_NODE_MULTI_WRITER)
# Several nodes at once only on a raw block device (no filesystem of ours is shared).
MULTI_NODE_BLOCK = (M.MULTI_NODE_READER_ONLY, M.MULTI_NODE_MULTI_WRITER)
RPC = pb.ControllerServiceCapability.RPC


def check_capability(c) -> Optional[str]:
    """Why SRRS cannot give this capability, or None."""
    kind = c.WhichOneof("access_type")
    if kind is None:
        return "a volume capability needs block or mount"
    mode = c.access_mode.mode
    if mode in MULTI_NODE_BLOCK and kind != "block":
        return f"access mode {M.Mode.Name(mode)} only with a Block volume"
    if mode not in SINGLE_NODE + MULTI_NODE_BLOCK:
        return f"access mode {M.Mode.Name(mode)} is not supported"
    if kind == "mount" and c.mount.fs_type and c.mount.fs_type not in FS_TYPES:
        return f"fs_type {c.mount.fs_type!r}: SRRS makes {' or '.join(FS_TYPES)}"
    return None


def check_capabilities(caps) -> None:
    need(list(caps), "volume_capabilities")
    for c in caps:
        why = check_capability(c)
        if why:
            raise Fail(Code.INVALID_ARGUMENT, why)


def wanted_size(r) -> int:
    """The size a capacity range gives (OUT_OF_RANGE when no aligned size fits)."""
    req, lim = r.required_bytes, r.limit_bytes
    if req < 0 or lim < 0:
        raise Fail(Code.INVALID_ARGUMENT, "capacity range: negative bytes")
    if lim and req > lim:
        raise Fail(Code.OUT_OF_RANGE, f"capacity range: required {req} > limit {lim}")
    size = -(-(req or (DEFAULT_SIZE if not lim else min(DEFAULT_SIZE, lim))) // ALIGN) * ALIGN
    if lim and size > lim:
        raise Fail(Code.OUT_OF_RANGE, f"capacity range [{req}, {lim}]: volumes are whole "
                                      f"MiB, the smallest that fits is {size} bytes")
    return size


def fits(size: int, r) -> bool:
    return size >= r.required_bytes and (not r.limit_bytes or size <= r.limit_bytes)


class ControllerService:
    def __init__(self, catalog: cat.Catalog, default_tenant: str = "default",
                 controller_socket: Optional[str] = None):
        self.cat, self.default_tenant = catalog, default_tenant
        self.controller_socket = controller_socket
        self.busy = Busy()

    # -- helpers ----------------------------------------------------------------------
    def ready(self) -> bool:
        """etcd answers, and so does the local controller (when one is named)."""
        try:
            self.cat.etcd.status()
        except (etcd.EtcdError, OSError) as e:
            log.info("csi: probe: etcd: %s", e)
            return False
        if self.controller_socket:
            from .rpc import RpcClient

            try:
                with RpcClient(self.controller_socket, timeout=2.0) as c:
                    c.call("status", {})
            except (OSError, ValueError, Exception) as e:     # noqa: B014 any failure: not ready
                log.info("csi: probe: controller %s: %s", self.controller_socket, e)
                return False
        return True

    def _params(self, params) -> dict:
        p = {k: v for k, v in params.items() if not k.startswith(K8S_PARAM)}
        bad = sorted(set(p) - set(PARAMS))
        if bad:
            raise Fail(Code.INVALID_ARGUMENT, f"unknown StorageClass parameter(s) {', '.join(bad)}"
                                              f" (SRRS knows {', '.join(PARAMS)})")
        if p.get("fsType", "ext4") not in FS_TYPES:
            raise Fail(Code.INVALID_ARGUMENT, f"fsType {p['fsType']!r}: use ext4 or xfs")
        if p.get("provisioning", "thin") != "thin":
            # the replicas are thin pool volumes (ctrl/cluster_sync.py); no thick yet
            raise Fail(Code.INVALID_ARGUMENT, f"provisioning {p['provisioning']!r}: SRRS "
                                              "volumes are thin")
        p.setdefault("tenant", self.default_tenant)
        if not p["tenant"] or "/" in p["tenant"]:
            raise Fail(Code.INVALID_ARGUMENT, f"tenant {p['tenant']!r}: no '/' and not empty")
        return p

    def _rkey(self, name: str) -> str:
        try:
            return self.cat.key("csi", "volumes", name)
        except cat.CatalogError:
            raise Fail(Code.INVALID_ARGUMENT, f"volume name {name!r}: no '/' and not empty") \
                from None

    def _volume(self, volume_id: str) -> Optional[cat.Volume]:
        need(volume_id, "volume_id")
        if not UUID_RE.match(volume_id):
            return None
        return self.cat.get("volumes", volume_id)

    def _snap_pair(self, pair: str, snap=None):
        snap = snap or self.cat.snapshot()
        return snap.pairs.get(pair), [m for m in snap.members.values() if m.pair == pair]

    def _paths(self, v: cat.Volume, snap=None) -> str:
        """The NVMe/TCP listeners of the controllers of the volume's pair, "h:p,h:p"."""
        _, members = self._snap_pair(v.pair, snap)
        return ",".join(a for m in sorted(members, key=lambda m: m.name)
                        for a in m.addresses.get("nvmf", ()))

    def _csi_volume(self, v: cat.Volume, rec: Optional[dict] = None, snap=None):
        p, _ = self._snap_pair(v.pair, snap)
        zone = (p.labels.get("zone") if p else "") or ""
        ctx = {"nqn": volume_nqn(v.uuid), "tenant": v.tenant, "pair": v.pair}
        if rec:
            ctx["fsType"] = rec["params"].get("fsType", "ext4")
        topo = [pb.Topology(segments={TOPOLOGY_ZONE: zone})] if zone else []
        return pb.Volume(capacity_bytes=v.size, volume_id=v.uuid, volume_context=ctx,
                         accessible_topology=topo)

    def _record(self, name: str):
        kv = self.cat.etcd.get1(self._rkey(name))
        return (json.loads(kv.value), kv.mod_revision) if kv else (None, 0)

    # -- Controller RPCs --------------------------------------------------------------
    def ControllerGetCapabilities(self, req):
        types = (RPC.CREATE_DELETE_VOLUME, RPC.PUBLISH_UNPUBLISH_VOLUME, RPC.LIST_VOLUMES,
                 RPC.GET_CAPACITY, RPC.EXPAND_VOLUME, RPC.LIST_VOLUMES_PUBLISHED_NODES,
                 RPC.VOLUME_CONDITION, RPC.GET_VOLUME, RPC.SINGLE_NODE_MULTI_WRITER)
        return pb.ControllerGetCapabilitiesResponse(capabilities=[
            pb.ControllerServiceCapability(rpc=RPC(type=t)) for t in types])

    def CreateVolume(self, req):
        name = need(req.name, "name")
        check_capabilities(req.volume_capabilities)
        if req.HasField("volume_content_source"):
            raise Fail(Code.INVALID_ARGUMENT, "SRRS has no snapshots or clones: no content source")
        size = wanted_size(req.capacity_range)
        params = self._params(req.parameters)
        block = any(c.HasField("block") for c in req.volume_capabilities)
        zones = self._zones(params, req.accessibility_requirements)
        with self.busy(name):
            return pb.CreateVolumeResponse(volume=self._create(name, size, params, block, zones,
                                                               req.capacity_range))

    def _zones(self, params: dict, topo) -> list:
        """The zones to try in order ([""]: any pair). The StorageClass's zone
        must be among the topology's requisite ones when both are given."""
        seg = lambda ts: [t.segments[TOPOLOGY_ZONE] for t in ts   # noqa: E731
                          if TOPOLOGY_ZONE in t.segments]
        pref, req = seg(topo.preferred), seg(topo.requisite)
        if params.get("zone"):
            if req and params["zone"] not in req:
                raise Fail(Code.RESOURCE_EXHAUSTED, f"zone {params['zone']} is not among the "
                                                    f"requisite zones {req}")
            return [params["zone"]]
        out = [z for z in pref + req if z]
        return list(dict.fromkeys(out)) or [""]

    def _create(self, name, size, params, block, zones, rng):
        rk = self._rkey(name)
        for _ in range(cat.RETRIES):
            rec, rev = self._record(name)
            v = self.cat.get("volumes", rec["uuid"]) if rec else None
            if v is not None:
                if rec["params"] != params:
                    raise Fail(Code.ALREADY_EXISTS, f"volume {name} exists with parameters "
                                                    f"{rec['params']}")
                if not fits(v.size, rng):
                    raise Fail(Code.ALREADY_EXISTS, f"volume {name} exists with {v.size} bytes")
                return self._csi_volume(v, rec)
            # new, or the record of a create that never reached the catalog: (re)write it
            new = {"uuid": rec["uuid"] if rec else str(uuidlib.uuid4()), "params": params,
                   "block": block}
            if self.cat.etcd.txn([etcd.mod_is(rk, rev) if rec else etcd.absent(rk)],
                                 [etcd.put(rk, new)]).succeeded:
                return self._create_in_catalog(name, size, new, zones)
            # another plugin wrote it meanwhile: read again
        raise Fail(Code.ABORTED, f"volume {name}: too many concurrent changes")

    def _create_in_catalog(self, name, size, rec, zones):
        rk, tenant = self._rkey(name), rec["params"]["tenant"]
        v = err = None
        for z in zones:
            try:
                v = self.cat.create_volume(tenant, name, size, labels={"zone": z} if z else {},
                                           uuid=rec["uuid"])
                break
            except cat.QuotaExceeded as e:
                err = Fail(Code.RESOURCE_EXHAUSTED, str(e))
                break
            except cat.Conflict as e:           # the name was taken outside CSI
                err = Fail(Code.ALREADY_EXISTS, str(e))
                break
            except cat.NotFound as e:
                err = Fail(Code.INVALID_ARGUMENT, f"{e} (create it: srrs cluster tenant-set)")
                break
            except cat.CatalogError as e:       # no pair with room in this zone: the next
                err = Fail(Code.RESOURCE_EXHAUSTED, str(e))
        if v is None:                           # refused: leave nothing behind
            self.cat.etcd.delete(rk)
            raise err
        # the listeners of the pair as of now (both controllers, normally): a
        # publish while one is down still names its path (the kernel then
        # reconnects it when it is back, never a path it never had)
        rec = dict(rec, uuid=v.uuid, paths=self._paths(v))
        self.cat.etcd.put(rk, rec)
        log.info("csi: created %s/%s = %s on %s (%d bytes)", tenant, name, v.uuid, v.pair, v.size)
        return self._csi_volume(v, rec)

    def DeleteVolume(self, req):
        vid = need(req.volume_id, "volume_id")
        with self.busy(vid):
            v = self._volume(vid)
            if v is None:
                return pb.DeleteVolumeResponse()
            nodes = [h for h in v.hosts if h != "*"]
            if nodes:
                raise Fail(Code.FAILED_PRECONDITION, f"volume {vid} is published to {nodes}")
            self.cat.delete_volume(v.tenant, v.name)
            rec, rev = self._record(v.name)
            if rec is not None and rec["uuid"] == v.uuid:
                self.cat.etcd.txn([etcd.mod_is(self._rkey(v.name), rev)],
                                  [etcd.delete(self._rkey(v.name))])
            log.info("csi: deleted %s/%s = %s", v.tenant, v.name, v.uuid)
            return pb.DeleteVolumeResponse()

    def ControllerPublishVolume(self, req):
        vid, node = need(req.volume_id, "volume_id"), need(req.node_id, "node_id")
        if not req.HasField("volume_capability"):
            raise Fail(Code.INVALID_ARGUMENT, "volume_capability is required")
        why = check_capability(req.volume_capability)
        if why:
            raise Fail(Code.INVALID_ARGUMENT, why)
        if not node.startswith("nqn."):
            raise Fail(Code.NOT_FOUND, f"node {node!r}: an SRRS node id is its host NQN")
        v = self._volume(vid)
        if v is None:
            raise Fail(Code.NOT_FOUND, f"no volume {vid}")
        if req.volume_capability.access_mode.mode in SINGLE_NODE:
            others = [h for h in v.hosts if h not in ("*", node)]
            if others:
                raise Fail(Code.FAILED_PRECONDITION,
                           f"volume {vid} is single-node and published to {others}")
        try:
            v = self.cat.edit_volume_hosts(vid, lambda hs: hs if node in hs else hs + (node,))
        except cat.NotFound:
            raise Fail(Code.NOT_FOUND, f"no volume {vid}") from None
        rec = self._record(v.name)[0] or {}
        known = [p for p in rec.get("paths", "").split(",") if p] if rec.get("uuid") == v.uuid \
            else []
        paths = list(dict.fromkeys([p for p in self._paths(v).split(",") if p] + known))
        return pb.ControllerPublishVolumeResponse(publish_context={
            "nqn": volume_nqn(v.uuid), "paths": ",".join(paths)})

    def ControllerUnpublishVolume(self, req):
        vid = need(req.volume_id, "volume_id")
        node = req.node_id      # none: unpublish from every node
        keep = (lambda h: h != node) if node else (lambda h: h == "*")
        if self._volume(vid) is not None:
            try:
                self.cat.edit_volume_hosts(vid, lambda hs: tuple(h for h in hs if keep(h)))
            except cat.NotFound:
                pass            # deleted meanwhile: unpublished everywhere
        return pb.ControllerUnpublishVolumeResponse()

    def ValidateVolumeCapabilities(self, req):
        v = self._volume(need(req.volume_id, "volume_id"))
        check = [check_capability(c) for c in need(list(req.volume_capabilities),
                                                   "volume_capabilities")]
        if v is None:
            raise Fail(Code.NOT_FOUND, f"no volume {req.volume_id}")
        why = next((w for w in check if w), None)
        if why:
            return pb.ValidateVolumeCapabilitiesResponse(message=why)
        C = pb.ValidateVolumeCapabilitiesResponse.Confirmed
        return pb.ValidateVolumeCapabilitiesResponse(confirmed=C(
            volume_context=req.volume_context, volume_capabilities=req.volume_capabilities,
            parameters=req.parameters))

    def _status(self, v: cat.Volume, snap, cls):
        _, members = self._snap_pair(v.pair, snap)
        live = len(members)
        cond = pb.VolumeCondition(abnormal=False, message="ok")
        if live < 2:
            cond = pb.VolumeCondition(abnormal=True, message=f"{live} of the 2 controllers of "
                                                              f"pair {v.pair} are up")
        elif v.state != "ready":
            cond = pb.VolumeCondition(abnormal=True, message=f"volume is {v.state}")
        return cls(published_node_ids=[h for h in v.hosts if h != "*"], volume_condition=cond)

    def ListVolumes(self, req):
        if req.max_entries < 0:
            raise Fail(Code.INVALID_ARGUMENT, "max_entries must not be negative")
        tok = req.starting_token
        if tok and not UUID_RE.match(tok):
            raise Fail(Code.ABORTED, f"starting_token {tok!r} is not one of ours")
        snap = self.cat.snapshot()
        vols = sorted((v for u, v in snap.volumes.items() if not tok or u > tok),
                      key=lambda v: v.uuid)
        page = vols[:req.max_entries] if req.max_entries else vols
        E = pb.ListVolumesResponse.Entry
        out = pb.ListVolumesResponse(entries=[
            E(volume=self._csi_volume(v, snap=snap),
              status=self._status(v, snap, pb.ListVolumesResponse.VolumeStatus)) for v in page])
        if len(page) < len(vols):
            out.next_token = page[-1].uuid
        return out

    def ControllerGetVolume(self, req):
        v = self._volume(need(req.volume_id, "volume_id"))
        if v is None:
            raise Fail(Code.NOT_FOUND, f"no volume {req.volume_id}")
        snap = self.cat.snapshot()
        return pb.ControllerGetVolumeResponse(
            volume=self._csi_volume(v, snap=snap),
            status=self._status(v, snap, pb.ControllerGetVolumeResponse.VolumeStatus))

    def GetCapacity(self, req):
        """Free bytes of the live pairs of the topology's zone (every pair without
        one), within the tenant's quota: what Kubernetes' storage-capacity
        tracking steers pods by."""
        for c in req.volume_capabilities:
            if check_capability(c):
                return pb.GetCapacityResponse(available_capacity=0)
        params = self._params(req.parameters)
        zone = params.get("zone") or req.accessible_topology.segments.get(TOPOLOGY_ZONE, "")
        snap = self.cat.snapshot()
        labels = {"zone": zone} if zone else {}
        free = [f for f, _ in candidates(snap, Request(size=0, tenant="", labels=labels))]
        total, biggest = sum(free), max(free, default=0)
        t = snap.tenants.get(params["tenant"])
        room = max(0, t.quota - t.used) if t is not None else 0
        return pb.GetCapacityResponse(available_capacity=min(total, room),
                                      maximum_volume_size=Int64Value(value=min(biggest, room)),
                                      minimum_volume_size=Int64Value(value=ALIGN))

    def ControllerExpandVolume(self, req):
        vid = need(req.volume_id, "volume_id")
        if not req.HasField("capacity_range"):
            raise Fail(Code.INVALID_ARGUMENT, "capacity_range is required")
        size = wanted_size(req.capacity_range)
        with self.busy(vid):
            v = self._volume(vid)
            if v is None:
                raise Fail(Code.NOT_FOUND, f"no volume {vid}")
            if size > v.size:
                try:
                    v = self.cat.resize_volume(v.tenant, v.name, size)
                except cat.QuotaExceeded as e:
                    raise Fail(Code.RESOURCE_EXHAUSTED, str(e)) from None
                except cat.NotFound as e:
                    raise Fail(Code.NOT_FOUND, str(e)) from None
                except cat.CatalogError as e:
                    raise Fail(Code.RESOURCE_EXHAUSTED if "free" in str(e)
                               else Code.OUT_OF_RANGE, str(e)) from None
            block = req.volume_capability.HasField("block") if req.HasField(
                "volume_capability") else bool((self._record(v.name)[0] or {}).get("block"))
            return pb.ControllerExpandVolumeResponse(capacity_bytes=v.size,
                                                     node_expansion_required=not block)
