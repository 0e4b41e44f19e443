"""The CSI Node service (docs/architecture.md, Kubernetes CSI plugin): a
volume on this host through the kernel's NVMe/TCP initiator.

Stage connects every path the controller published (the listeners of both
controllers of the volume's pair) with native NVMe multipath, waits for the
namespace head whose NGUID is the volume's uuid, and for a Mount volume makes
a filesystem when the device has none (ext4 or xfs) and mounts it at the
staging path. Publish bind-mounts the staging path (Mount) or the device
(Block) at the target. Nothing is kept in memory: every call reads what it
needs from the host (/sys/class/nvme, /sys/block, /proc/self/mountinfo), so
every call is idempotent and a restarted plugin carries on where the last one
stopped.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from typing import List, Optional

from . import csi_pb2 as pb
from .cluster import volume_nqn
from .csi import TOPOLOGY_ZONE, Busy, Code, Fail, need
from .csi_controller import check_capability

log = logging.getLogger("srrs.csi")

CONNECT_S = 30.0        # a path refused until the controllers converged the host list
PARTIAL_S = 5.0         # with one path up, how long the others get before we go on
DEVICE_S = 30.0         # the namespace head appearing after the connect
RPC = pb.NodeServiceCapability.RPC
FS_TYPES = ("ext4", "xfs")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _unescape(s: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def mounts(mountinfo: str = "/proc/self/mountinfo", read=_read) -> List[dict]:
    """Every mount: {target, source, fstype, root, options}."""
    out = []
    for line in read(mountinfo).splitlines():
        pre, _, post = line.partition(" - ")
        a, b = pre.split(), post.split()
        if len(a) < 6 or len(b) < 2:
            continue
        out.append({"root": _unescape(a[3]), "target": _unescape(a[4]), "options": a[5],
                    "fstype": b[0], "source": _unescape(b[1])})
    return out


class Host:
    """Everything the node service reads, runs and changes on the host, in one
    place: the roots are parameters (a fake sysfs in tests/csi/test_node_host.py;
    tests/csi/test_guest_kubelet.py runs the plugin itself in a Linux guest)."""

    def __init__(self, sysfs: str = "/sys", mountinfo: str = "/proc/self/mountinfo",
                 dev: str = "/dev"):
        self.sysfs, self.mountinfo, self.dev = sysfs, mountinfo, dev

    # -- the primitives ---------------------------------------------------------------
    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if check and r.returncode:
            raise Fail(Code.INTERNAL, f"{' '.join(argv)}: {(r.stderr or r.stdout).strip()}")
        return r

    def read(self, path: str) -> str:
        return _read(path)

    def listdir(self, path: str) -> List[str]:
        return sorted(os.listdir(path)) if os.path.isdir(path) else []

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def realpath(self, path: str) -> str:
        return os.path.realpath(path)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def touch(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "a").close()

    def remove(self, path: str) -> None:
        """A target directory or file the CO gave us, once unmounted."""
        if os.path.isdir(path):
            os.rmdir(path)
        elif os.path.lexists(path):
            os.unlink(path)

    def statvfs(self, path: str) -> tuple:
        """(bytes total, free, available; inodes total, free, available)."""
        st = os.statvfs(path)
        return (st.f_blocks * st.f_frsize, st.f_bfree * st.f_frsize, st.f_bavail * st.f_frsize,
                st.f_files, st.f_ffree, st.f_favail)

    def filesize(self, path: str) -> int:
        with open(path, "rb") as f:
            return f.seek(0, os.SEEK_END)

    # -- built on them ----------------------------------------------------------------
    def controllers(self, nqn: str) -> List[dict]:
        """The kernel's NVMe controllers of this subsystem: {name, traddr, trsvcid, state}."""
        base = os.path.join(self.sysfs, "class", "nvme")
        out = []
        for name in self.listdir(base):
            d = os.path.join(base, name)
            if self.read(os.path.join(d, "subsysnqn")) != nqn:
                continue
            addr = dict(kv.split("=", 1) for kv in self.read(os.path.join(d, "address")).split(",")
                        if "=" in kv)
            out.append({"name": name, "traddr": addr.get("traddr", ""),
                        "trsvcid": addr.get("trsvcid", ""),
                        "state": self.read(os.path.join(d, "state"))})
        return out

    def device(self, uuid: str) -> Optional[str]:
        """/dev/nvmeXnY: the multipath head whose NGUID (or UUID) is the volume's."""
        base = os.path.join(self.sysfs, "block")
        want = uuid.lower()
        for name in self.listdir(base):
            if not name.startswith("nvme") or "c" in name[4:]:
                continue        # nvmeXcYnZ: one path of a head, hidden
            for attr in ("nguid", "uuid"):
                if self.read(os.path.join(base, name, attr)).lower() == want:
                    return os.path.join(self.dev, name)
        return None

    def size(self, dev: str) -> int:
        return int(self.read(os.path.join(self.sysfs, "block", os.path.basename(dev), "size"))
                   or 0) * 512

    def ns_size(self, dev: str) -> Optional[int]:
        """The namespace's size as its controller says now (Identify
        Namespace: NSZE blocks of the LBA format in use), whatever the kernel
        has seen yet; None when it cannot be asked."""
        r = self.run("nvme", "id-ns", dev, "-o", "json", check=False)
        try:
            ns = json.loads(r.stdout) if r.returncode == 0 else None
            fmt = ns["lbafs"][ns["flbas"] & 0xF]
            return int(ns["nsze"]) << int(fmt["ds"])
        except (ValueError, KeyError, IndexError, TypeError):
            return None

    def mount_at(self, path: str) -> Optional[dict]:
        path = self.realpath(path)
        found = [m for m in mounts(self.mountinfo, self.read) if m["target"] == path]
        return found[-1] if found else None


def _split_paths(paths: str) -> List[tuple]:
    """"h:p,[v6]:p" -> [(h, p), ...]."""
    out = []
    for p in filter(None, paths.split(",")):
        host, _, port = p.rpartition(":")
        out.append((host.strip("[]"), port))
    return out


class NodeService:
    def __init__(self, node_id: Optional[str] = None, zone: str = "", host: Optional[Host] = None,
                 connect_s: Optional[float] = None):
        self.node_id = node_id or _read("/etc/nvme/hostnqn")
        self.zone, self.host = zone, host or Host()
        self.connect_s = CONNECT_S if connect_s is None else connect_s
        self.busy = Busy()

    def ready(self) -> bool:
        return bool(self.node_id)

    # -- info ---------------------------------------------------------------------------
    def NodeGetInfo(self, req):
        if not self.node_id:
            raise Fail(Code.FAILED_PRECONDITION, "no host NQN: give --node-id or write "
                                                 "/etc/nvme/hostnqn (nvme gen-hostnqn)")
        topo = pb.Topology(segments={TOPOLOGY_ZONE: self.zone} if self.zone else {})
        return pb.NodeGetInfoResponse(node_id=self.node_id, accessible_topology=topo)

    def NodeGetCapabilities(self, req):
        types = (RPC.STAGE_UNSTAGE_VOLUME, RPC.GET_VOLUME_STATS, RPC.EXPAND_VOLUME,
                 RPC.VOLUME_CONDITION, RPC.SINGLE_NODE_MULTI_WRITER)
        return pb.NodeGetCapabilitiesResponse(capabilities=[
            pb.NodeServiceCapability(rpc=RPC(type=t)) for t in types])

    # -- stage ---------------------------------------------------------------------------
    def _cap(self, req, field: str = "volume_capability"):
        if not req.HasField(field):
            raise Fail(Code.INVALID_ARGUMENT, f"{field} is required")
        why = check_capability(getattr(req, field))
        if why:
            raise Fail(Code.INVALID_ARGUMENT, why)
        return getattr(req, field)

    def NodeStageVolume(self, req):
        vid = need(req.volume_id, "volume_id")
        staging = need(req.staging_target_path, "staging_target_path")
        cap = self._cap(req)
        with self.busy(vid):
            m = self.host.mount_at(staging)
            if m is not None:       # staged already: the same volume, as asked?
                want = cap.mount.fs_type if cap.HasField("mount") else ""
                if cap.HasField("block") or (want and want != m["fstype"]):
                    raise Fail(Code.ALREADY_EXISTS, f"{staging} has {m['fstype']} from "
                                                    f"{m['source']} mounted: not this "
                                                    "capability")
            dev = self._attach(vid, req.publish_context)
            if cap.HasField("mount"):
                self._mount_fs(dev, staging, cap.mount, req.volume_context)
            return pb.NodeStageVolumeResponse()

    def _attach(self, vid: str, pctx) -> str:
        """Every path connected, then the head's device."""
        nqn = pctx.get("nqn") or volume_nqn(vid)
        paths = _split_paths(pctx.get("paths", ""))
        if not paths and not self.host.controllers(nqn):
            raise Fail(Code.INVALID_ARGUMENT, "publish_context has no paths (ControllerPublish "
                                              "gives them)")
        if not self.host.exists(os.path.join(self.host.sysfs, "module", "nvme_tcp")):
            self.host.run("modprobe", "nvme-tcp", check=False)   # a node that never used it
        start, err = time.monotonic(), ""
        while True:
            have = {(c["traddr"], c["trsvcid"]) for c in self.host.controllers(nqn)}
            todo = [p for p in paths if p not in have]
            waited = time.monotonic() - start
            # all paths, or one after a while (its peer may be down: the kernel
            # only reconnects paths it once had), or give up
            if not todo or (have and waited > PARTIAL_S) or waited > self.connect_s:
                break
            for a, port in todo:
                r = self.host.run("nvme", "connect", "-t", "tcp", "-a", a, "-s", port, "-n", nqn,
                                  "--hostnqn", self.node_id, "--ctrl-loss-tmo=-1",
                                  "--reconnect-delay=1", check=False)
                if r.returncode:
                    err = (r.stderr or r.stdout).strip()
            time.sleep(0.2)
        if not have:
            raise Fail(Code.UNAVAILABLE, f"no path of {nqn} connects: {err}")
        end = time.monotonic() + DEVICE_S
        while (dev := self.host.device(vid)) is None:
            if time.monotonic() > end:
                raise Fail(Code.DEADLINE_EXCEEDED, f"no block device with NGUID {vid} "
                                                   f"within {DEVICE_S:.0f} s")
            time.sleep(0.2)
        return dev

    def _mount_fs(self, dev: str, staging: str, mnt, vctx) -> None:
        m = self.host.mount_at(staging)
        if m is not None:
            if self.host.realpath(m["source"]) != self.host.realpath(dev):
                raise Fail(Code.ALREADY_EXISTS, f"{staging} has {m['source']} mounted, not {dev}")
            return
        self.host.makedirs(staging)
        want = mnt.fs_type or vctx.get("fsType") or "ext4"
        have = self.host.run("blkid", "-p", "-o", "value", "-s", "TYPE", dev, check=False)
        fs = have.stdout.strip()
        if have.returncode == 2:                # blkid: nothing on it, a new volume
            args = ("mkfs.ext4", "-F", "-q", "-E", "nodiscard,lazy_itable_init=1") \
                if want == "ext4" else ("mkfs.xfs", "-q", "-K")
            self.host.run(*args, dev)
            fs = want
        elif have.returncode or not fs:         # never make a filesystem over what we cannot name
            raise Fail(Code.INTERNAL, f"{dev}: blkid says {have.returncode} "
                                      f"{(have.stderr or have.stdout).strip()!r}: not formatting it")
        opts = ",".join(mnt.mount_flags)
        self.host.run("mount", "-t", fs, *(("-o", opts) if opts else ()), dev, staging)
        log.info("csi: staged %s (%s) at %s", dev, fs, staging)

    def NodeUnstageVolume(self, req):
        vid = need(req.volume_id, "volume_id")
        staging = need(req.staging_target_path, "staging_target_path")
        with self.busy(vid):
            while self.host.mount_at(staging) is not None:
                self.host.run("umount", staging)
            nqn = volume_nqn(vid)
            if self.host.controllers(nqn):
                self.host.run("nvme", "disconnect", "-n", nqn)
            left = self.host.controllers(nqn)
            if left:
                raise Fail(Code.INTERNAL, f"{nqn}: {[c['name'] for c in left]} still connected")
            return pb.NodeUnstageVolumeResponse()

    # -- publish ---------------------------------------------------------------------------
    def NodePublishVolume(self, req):
        vid = need(req.volume_id, "volume_id")
        target = need(req.target_path, "target_path")
        cap = self._cap(req)
        staging = req.staging_target_path
        if not staging:         # the spec's code: we have STAGE_UNSTAGE_VOLUME, stage first
            raise Fail(Code.FAILED_PRECONDITION, "staging_target_path is required (NodeStage "
                                                 "gives it)")
        with self.busy(vid):
            m = self.host.mount_at(target)
            if m is not None:
                why = self._published_differs(vid, target, m, cap, req.readonly)
                if why:
                    raise Fail(Code.ALREADY_EXISTS, f"{target} is published already, {why}")
                return pb.NodePublishVolumeResponse()
            if cap.access_mode.mode == pb.VolumeCapability.AccessMode.SINGLE_NODE_SINGLE_WRITER:
                other = self._published_elsewhere(vid, staging, target)
                if other:           # the spec's code for a second target of a single writer
                    raise Fail(Code.FAILED_PRECONDITION, f"volume {vid} is SINGLE_NODE_SINGLE_"
                                                         f"WRITER and published at {other}")
            if cap.HasField("block"):
                src = self.host.device(vid)
                if src is None:
                    raise Fail(Code.FAILED_PRECONDITION, f"volume {vid} is not staged")
                self.host.touch(target)
            else:
                if self.host.mount_at(staging) is None:
                    raise Fail(Code.FAILED_PRECONDITION, f"{staging} is not staged")
                src = staging
                self.host.makedirs(target)
            self.host.run("mount", "--bind", src, target)
            if req.readonly:
                self.host.run("mount", "-o", "remount,bind,ro", target)
            return pb.NodePublishVolumeResponse()

    def _published_differs(self, vid: str, target: str, m: dict, cap, readonly: bool) -> str:
        """Why what is mounted at target is not this publish (the spec's
        ALREADY_EXISTS: same target, other arguments), "" when it is."""
        is_block = cap.HasField("block")
        if is_block == self.host.isdir(target):
            return "as a " + ("directory (Mount)" if is_block else "device (Block)")
        if ("ro" in m["options"].split(",")) != bool(readonly):
            return "mounted read-write" if readonly else "mounted read-only"
        dev = self.host.device(vid)
        if dev is not None:     # a bind of our staging mount (its device) or of the device
            src = os.path.basename(m["root"]) if is_block else self.host.realpath(m["source"])
            if src != (os.path.basename(dev) if is_block else self.host.realpath(dev)):
                return f"from {m['source']}{m['root']}, not volume {vid} ({dev})"
        return ""

    def _published_elsewhere(self, vid: str, staging: str, target: str) -> str:
        """A target other than this one where the volume is mounted now (a bind
        of its staging mount or of its device), "" when none."""
        dev = self.host.device(vid)
        if dev is None:
            return ""
        name, mine = os.path.basename(dev), {self.host.realpath(p) for p in (staging, target)}
        for m in mounts(self.host.mountinfo, self.host.read):
            if m["target"] in mine:
                continue
            if (os.path.basename(m["source"]) == name and m["root"] == "/") or \
                    (os.path.basename(m["root"]) == name and m["source"] != dev):
                return m["target"]
        return ""

    def NodeUnpublishVolume(self, req):
        vid = need(req.volume_id, "volume_id")
        target = need(req.target_path, "target_path")
        with self.busy(vid):
            while self.host.mount_at(target) is not None:
                self.host.run("umount", target)
            self.host.remove(target)
            return pb.NodeUnpublishVolumeResponse()

    # -- stats and expansion ----------------------------------------------------------------
    def _condition(self, vid: str):
        cs = self.host.controllers(volume_nqn(vid))
        live = sum(c["state"] == "live" for c in cs)
        if not cs:
            return pb.VolumeCondition(abnormal=True, message="no NVMe/TCP path is connected")
        if live < len(cs):
            return pb.VolumeCondition(abnormal=True, message=f"{len(cs) - live} of {len(cs)} "
                                                              "paths are down")
        return pb.VolumeCondition(abnormal=False, message=f"{live} paths live")

    def _not_there(self, vid: str, path: str) -> str:
        """Why path does not hold volume vid ("" when it does): the spec's
        NOT_FOUND for stats and expansion. It must be a mount (our staging
        mount or a bind of it, or a Block target bound to the device) of the
        volume's namespace head; with the head gone (no path left), a mount of
        an NVMe device that no longer exists still counts (abnormal)."""
        if not self.host.exists(path):
            return f"{path} does not exist"
        m = self.host.mount_at(path)
        if m is None:
            return f"nothing is mounted at {path}"
        # a Block target is a bind of the device node: its root names it
        name = os.path.basename(self.host.realpath(m["source"]) if self.host.isdir(path)
                                else m["root"])
        dev = self.host.device(vid)
        if dev is not None:
            return "" if name == os.path.basename(dev) else \
                f"{path} holds {name}, not volume {vid} ({dev})"
        gone = name.startswith("nvme") and not self.host.exists(
            os.path.join(self.host.sysfs, "block", name))
        return "" if gone else f"{path} holds {name}, not volume {vid}"

    def NodeGetVolumeStats(self, req):
        vid = need(req.volume_id, "volume_id")
        path = need(req.volume_path, "volume_path")
        why = self._not_there(vid, path)
        if why:
            raise Fail(Code.NOT_FOUND, why)
        U = pb.VolumeUsage
        if self.host.isdir(path):
            bt, bf, ba, it, if_, ia = self.host.statvfs(path)
            usage = [U(unit=U.BYTES, total=bt, available=ba, used=bt - bf),
                     U(unit=U.INODES, total=it, available=ia, used=it - if_)]
        else:
            usage = [U(unit=U.BYTES, total=self.host.filesize(path))]
        return pb.NodeGetVolumeStatsResponse(usage=usage, volume_condition=self._condition(vid))

    def NodeExpandVolume(self, req):
        vid = need(req.volume_id, "volume_id")
        path = need(req.volume_path, "volume_path")
        if not self.host.exists(path):
            raise Fail(Code.NOT_FOUND, f"{path} does not exist")
        want = req.capacity_range.required_bytes
        with self.busy(vid):
            dev = self.host.device(vid)
            if dev is None:
                raise Fail(Code.NOT_FOUND, f"volume {vid} is not attached here")
            why = self._not_there(vid, path)
            if why:
                raise Fail(Code.NOT_FOUND, why)
            end = time.monotonic() + DEVICE_S
            asked = False
            while self.host.size(dev) < want:
                for c in self.host.controllers(volume_nqn(vid)):   # the new size, now
                    self.host.run("nvme", "ns-rescan", os.path.join(self.host.dev, c["name"]),
                                  check=False)
                if not asked:
                    # larger than the volume is (ControllerExpandVolume did not
                    # grow it so far): the caller's range, not a wait
                    asked, has = True, self.host.ns_size(dev)
                    if has is not None and has < want:
                        raise Fail(Code.OUT_OF_RANGE, f"volume {vid} is {has} bytes, "
                                   f"not {want}: ControllerExpandVolume grows it first")
                if time.monotonic() > end:
                    raise Fail(Code.INTERNAL, f"{dev} is {self.host.size(dev)} bytes, not {want}")
                time.sleep(0.5)
            m = self.host.mount_at(path)
            if self.host.isdir(path) and m is not None:
                if m["fstype"] == "xfs":
                    self.host.run("xfs_growfs", path)
                else:
                    self.host.run("resize2fs", m["source"])
            return pb.NodeExpandVolumeResponse(capacity_bytes=self.host.size(dev))
