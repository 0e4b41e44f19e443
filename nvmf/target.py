"""NVMe-oF/TCP object model over the C target (nvmf/nvmf.h).

`NvmfTarget` owns the C target and mirrors its configuration (listeners,
subsystems, namespaces, hosts, ANA states) so that the running state can be
listed and written back as config (`to_config`). Every method runs on the
control plane; the C side does the per-I/O work on the reactors.

`NvmfHost` is the C initiator (load generator and tests); `discover()` reads
a discovery log.
"""

from __future__ import annotations

import enum
import threading
import uuid as _uuid
from dataclasses import replace
from typing import Dict, List, Optional, Sequence

from ..ffi.binding import BenchOpts, Core, VerifyMap, bench_result_dict, check, crc32c, ffi, lib
from . import config as C
from . import dhchap as DH

DISCOVERY_NQN = "nqn.2014-08.org.nvmexpress.discovery"
DEFAULT_HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:5352532d-0000-4000-8000-000000000001"


def default_serial(nqn: str) -> str:
    """A subsystem's serial when none is configured: derived from the NQN
    (unique per subsystem, stable across restarts, equal on both controllers
    of a pair); the C target derives the same (nvmf/ctrlr.c derive_serial)."""
    b = nqn.encode()
    return f"SRRS{crc32c(b, 0x53525253):08X}{crc32c(b, 0x9E3779B9):08X}"


def _s(cdata) -> str:
    return ffi.string(cdata).decode(errors="replace")


def _ana_state(state) -> int:
    if isinstance(state, int) and state in C.ANA_NAMES:
        return state
    if isinstance(state, str) and state.replace("-", "_") in C.ANA_STATES:
        return C.ANA_STATES[state.replace("-", "_")]
    raise ValueError(f"ANA state must be one of {', '.join(C.ANA_STATES)}, got {state!r}")


_QP_FIELDS = ("cntlid", "qid", "reactor", "sqsize", "outstanding", "hdgst", "ddgst", "cmds",
              "reads", "writes", "bytes_read", "bytes_written", "errors")


class NvmfTarget:
    """The NVMe/TCP target of one controller (docs/architecture.md, Exports)."""

    def __init__(self, core: Core, cntlid_min: int = 1, cntlid_max: int = 32767,
                 max_io_queues: int = 16, max_queue_depth: int = 128,
                 header_digest: bool = True, data_digest: bool = True,
                 reactors: Optional[Sequence[int]] = None, listener_reactor: int = 0,
                 auth_timeout_ms: int = 0, max_handshaking: int = 512,
                 max_handshaking_per_source: int = 128, handshake_timeout_ms: int = 5000):
        """reactors: the reactors that may own queue pairs (default: all, round-robin).
        auth_timeout_ms: DH-HMAC-CHAP deadline per transaction (0: 20 s).
        max_handshaking(_per_source): connections without a Connect yet, in all and
        from one address; a new one over a limit evicts the oldest such one."""
        self.core = core
        o = ffi.new("struct srrs_nvmf_tgt_opts *")
        o.auth_timeout_ms = auth_timeout_ms
        mask = 0
        for r in reactors or ():
            if not 0 <= r < core.num_reactors:
                raise ValueError(f"reactor {r} does not exist")
            mask |= 1 << r
        o.reactor_mask = mask
        o.listener_reactor = listener_reactor
        o.cntlid_min = cntlid_min
        o.cntlid_max = cntlid_max
        o.max_io_queues = max_io_queues
        o.max_queue_depth = max_queue_depth
        o.allow_hdgst = int(header_digest)
        o.allow_ddgst = int(data_digest)
        o.max_handshaking = max_handshaking
        o.max_handshaking_per_source = max_handshaking_per_source
        o.handshake_timeout_ms = handshake_timeout_ms
        pp = ffi.new("struct srrs_nvmf_tgt **")
        check(lib.srrs_nvmf_tgt_create(core.ptr, o, pp), "nvmf target")
        self._pp = pp
        self.ptr = pp[0]
        self._lock = threading.Lock()
        self._cfg = C.NvmfConfig(cntlid_min=cntlid_min, cntlid_max=cntlid_max,
                                 max_io_queues=max_io_queues, max_queue_depth=max_queue_depth,
                                 header_digest=header_digest, data_digest=data_digest,
                                 auth_timeout_ms=auth_timeout_ms,
                                 max_handshaking=max_handshaking,
                                 max_handshaking_per_source=max_handshaking_per_source,
                                 handshake_timeout_ms=handshake_timeout_ms)
        self._listeners: List[C.NvmfListen] = []
        self._subsys: Dict[str, dict] = {}
        self._discovery: List[dict] = []   # the cluster's table (set_discovery)
        # bumped by every change of what the discovery log lists (listeners,
        # subsystems, their hosts): a pair's discovery (ctrl/pair_discovery.py)
        # recomputes its ports only then
        self.changes = 0
        # where cntlid_min/max came from, set by the daemon: "config" (the file
        # sets them), "pair half", "cluster range N", "default"; "" not said.
        # Only "config" and "" are saved by save_config (the others are derived again).
        self.cntlid_from = ""

    @classmethod
    def from_config(cls, core: Core, cfg: C.NvmfConfig) -> "NvmfTarget":
        t = cls(core, cfg.cntlid_min, cfg.cntlid_max, cfg.max_io_queues, cfg.max_queue_depth,
                cfg.header_digest, cfg.data_digest, auth_timeout_ms=cfg.auth_timeout_ms,
                max_handshaking=cfg.max_handshaking,
                max_handshaking_per_source=cfg.max_handshaking_per_source,
                handshake_timeout_ms=cfg.handshake_timeout_ms)
        try:
            for s in cfg.subsystems:
                t.add_subsystem(s.nqn, s.serial, s.model, allow_any_host=s.allow_any_host)
                for h in s.allow_hosts:
                    if h != "*":
                        t.add_host(s.nqn, h)
                for a in s.hosts:
                    if a.nqn not in s.allow_hosts:
                        t.add_host(s.nqn, a.nqn)
                    t.set_host_dhchap(s.nqn, a.nqn, a.dhchap_secret_file,
                                      a.dhchap_ctrl_secret_file, a.dhchap_hash, a.dhchap_dhgroup)
                if s.require_auth:
                    t.set_require_auth(s.nqn, True)
                for g in s.ana_groups:
                    t.set_ana_state(s.nqn, g.id, g.state)
                for ns in s.namespaces:
                    t.add_namespace(s.nqn, ns.bdev, nsid=ns.nsid, uuid=ns.uuid,
                                    ana_group=ns.ana_group)
            for lst in cfg.listen:
                t.add_listener(lst.addr, lst.port)
        except Exception:
            t.close()
            raise
        return t

    # -- lifecycle -----------------------------------------------------------
    def close(self) -> None:
        """Closes listeners and connections (in-flight I/O drains), frees the target."""
        with self._lock:    # set_discovery runs on the cluster view's thread
            if self.ptr != ffi.NULL:
                lib.srrs_nvmf_tgt_destroy(self._pp)
                self.ptr = ffi.NULL

    def __enter__(self) -> "NvmfTarget":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- listeners -------------------------------------------------------------
    def add_listener(self, addr: str, port: int = 4420) -> int:
        """Listens on addr:port (port 0: any free one); returns the bound port."""
        bound = check(lib.srrs_nvmf_listener_add(self.ptr, addr.encode(), port),
                      f"nvmf listener {addr}:{port}")
        with self._lock:
            self._listeners.append(C.NvmfListen(addr, bound))
            self.changes += 1
        return bound

    def remove_listener(self, addr: str, port: int) -> None:
        check(lib.srrs_nvmf_listener_remove(self.ptr, addr.encode(), port),
              f"nvmf listener {addr}:{port}")
        with self._lock:
            self._listeners = [x for x in self._listeners if (x.addr, x.port) != (addr, port)]
            self.changes += 1

    def listeners(self) -> List[dict]:
        with self._lock:
            return [{"addr": x.addr, "port": x.port, "trtype": "tcp"} for x in self._listeners]

    # -- subsystems --------------------------------------------------------------
    def add_subsystem(self, nqn: str, serial: Optional[str] = None, model: Optional[str] = None,
                      allow_any_host: bool = False, persist: bool = True) -> None:
        """persist=False: made at run time from elsewhere (the cluster catalog,
        ctrl/cluster_sync.py) and left out of save_config."""
        C.check_nqn(nqn, "nqn")
        serial = serial or default_serial(nqn)
        model = model or "SRRS NVMe-oF"
        check(lib.srrs_nvmf_subsystem_add(self.ptr, nqn.encode(), serial.encode(), model.encode(),
                                          int(allow_any_host)), f"nvmf subsystem {nqn}")
        with self._lock:
            self._subsys[nqn] = {"serial": serial, "model": model, "allow_any_host": allow_any_host,
                                 "hosts": [], "namespaces": {}, "ana": {}, "persist": persist}
            self.changes += 1

    def remove_subsystem(self, nqn: str) -> None:
        check(lib.srrs_nvmf_subsystem_remove(self.ptr, nqn.encode()), f"nvmf subsystem {nqn}")
        with self._lock:
            self._subsys.pop(nqn, None)
            self.changes += 1

    def _sub(self, nqn: str) -> dict:
        s = self._subsys.get(nqn)
        if s is None:
            raise KeyError(f"nvmf subsystem {nqn} does not exist")
        return s

    def add_namespace(self, nqn: str, bdev: str, nsid: int = 0, uuid: Optional[str] = None,
                      ana_group: int = 1) -> int:
        """Adds bdev as a namespace; returns its nsid. Hosts get an AEN."""
        ub = ffi.NULL
        if uuid is not None:
            ub = ffi.new("uint8_t[16]", list(_uuid.UUID(str(uuid)).bytes))
        got = check(lib.srrs_nvmf_ns_add(self.ptr, nqn.encode(), nsid, bdev.encode(), ub,
                                         ana_group), f"nvmf namespace {bdev} in {nqn}")
        with self._lock:
            s = self._sub(nqn)
            s["namespaces"][got] = {"bdev": bdev, "uuid": uuid, "ana_group": ana_group}
            s["ana"].setdefault(ana_group, "optimized")
        return got

    def remove_namespace(self, nqn: str, nsid: int) -> None:
        check(lib.srrs_nvmf_ns_remove(self.ptr, nqn.encode(), nsid),
              f"nvmf namespace {nsid} of {nqn}")
        with self._lock:
            self._sub(nqn)["namespaces"].pop(nsid, None)

    def replace_namespace(self, nqn: str, nsid: int, bdev: str) -> None:
        """Namespace nsid reads and writes bdev from now on: same NSID, UUID and
        ANA group, so hosts keep the device and take the new size from the
        namespace-changed AEN (an online grow)."""
        check(lib.srrs_nvmf_ns_replace(self.ptr, nqn.encode(), nsid, bdev.encode()),
              f"nvmf namespace {nsid} of {nqn} onto {bdev}")
        with self._lock:
            ns = self._sub(nqn)["namespaces"].get(nsid)
            if ns is not None:
                ns["bdev"] = bdev

    def drain_namespace(self, nqn: str, nsid: int, timeout_ms: int = 10000) -> None:
        """Waits until namespace nsid has no I/O in flight (after its ANA group went
        inaccessible: every command admitted before has completed); TimeoutError
        after timeout_ms."""
        check(lib.srrs_nvmf_ns_drain(self.ptr, nqn.encode(), nsid, timeout_ms),
              f"nvmf namespace {nsid} of {nqn}")

    def add_host(self, nqn: str, hostnqn: str) -> None:
        C.check_nqn(hostnqn, "hostnqn")
        check(lib.srrs_nvmf_host_add(self.ptr, nqn.encode(), hostnqn.encode()),
              f"nvmf host {hostnqn} in {nqn}")
        with self._lock:
            self._sub(nqn)["hosts"].append(hostnqn)
            self.changes += 1

    def remove_host(self, nqn: str, hostnqn: str) -> None:
        check(lib.srrs_nvmf_host_remove(self.ptr, nqn.encode(), hostnqn.encode()),
              f"nvmf host {hostnqn} in {nqn}")
        with self._lock:
            hosts = self._sub(nqn)["hosts"]
            if hostnqn in hosts:
                hosts.remove(hostnqn)
            self.changes += 1

    def set_host_dhchap(self, nqn: str, hostnqn: str, secret_file: Optional[str],
                        ctrl_secret_file: Optional[str] = None, hash: str = DH.DEFAULT_HASH,
                        dhgroup: str = DH.DEFAULT_DHGROUP) -> None:
        """hostnqn must authenticate (DH-HMAC-CHAP) with the secret in secret_file
        (mode 0600); ctrl_secret_file also lets the host authenticate us.
        secret_file None: no authentication for this host any more."""
        C.check_nqn(hostnqn, "hostnqn")
        hid, gid = DH.hash_id(hash), DH.dhgroup_id(dhgroup)
        sec = DH.read_secret(secret_file) if secret_file else None
        csec = DH.read_secret(ctrl_secret_file, "dhchap_ctrl_secret_file") \
            if ctrl_secret_file and sec else None
        check(lib.srrs_nvmf_host_set_dhchap(
            self.ptr, nqn.encode(), hostnqn.encode(), sec.encode() if sec else ffi.NULL,
            csec.encode() if csec else ffi.NULL, hid, gid), f"nvmf host {hostnqn} in {nqn}")
        with self._lock:
            auth = self._sub(nqn).setdefault("auth", {})
            if sec:
                auth[hostnqn] = {"dhchap_secret_file": secret_file,
                                 "dhchap_ctrl_secret_file": ctrl_secret_file if csec else None,
                                 "dhchap_hash": hash, "dhchap_dhgroup": dhgroup}
            else:
                auth.pop(hostnqn, None)

    def set_require_auth(self, nqn: str, require: bool) -> None:
        """Hosts without a DH-HMAC-CHAP secret are refused at Connect."""
        check(lib.srrs_nvmf_subsystem_require_auth(self.ptr, nqn.encode(), int(require)),
              f"nvmf subsystem {nqn}")
        with self._lock:
            self._sub(nqn)["require_auth"] = bool(require)

    def auth_stats(self) -> dict:
        ok, failed = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        lib.srrs_nvmf_auth_stats(self.ptr, ok, failed)
        return {"auth_ok": ok[0], "auth_failed": failed[0]}

    def set_allow_any_host(self, nqn: str, allow: bool) -> None:
        check(lib.srrs_nvmf_subsystem_allow_any_host(self.ptr, nqn.encode(), int(allow)),
              f"nvmf subsystem {nqn}")
        with self._lock:
            self._sub(nqn)["allow_any_host"] = bool(allow)
            self.changes += 1

    def set_ana_state(self, nqn: str, group: int, state) -> None:
        """state: optimized / non_optimized / inaccessible / persistent_loss (or 1..4).
        Raises an ANA-change AEN on every controller of the subsystem."""
        st = _ana_state(state)
        check(lib.srrs_nvmf_ana_set(self.ptr, nqn.encode(), group, st),
              f"nvmf ANA group {group} of {nqn}")
        with self._lock:
            self._sub(nqn)["ana"][group] = C.ANA_NAMES[st]

    def set_discovery(self, entries: Sequence[dict]) -> None:
        """The cluster's subsystem ports for the discovery log (ctrl/cluster_view.py):
        [{"subnqn", "traddr", "trsvcid", "hosts": [host NQN or "*", ...]}, ...],
        replacing the previous table; the C target filters it per host at each
        log request and raises the discovery-log-change AEN."""
        keep = []
        arr = ffi.new("struct srrs_nvmf_disc_entry[]", max(len(entries), 1))
        for i, e in enumerate(entries):
            for f in ("subnqn", "traddr", "trsvcid"):
                keep.append(ffi.new("char[]", str(e[f]).encode()))
                setattr(arr[i], f, keep[-1])
            keep.append(ffi.new("char[]", "\n".join(e.get("hosts", ())).encode()))
            arr[i].hosts = keep[-1]
        with self._lock:
            if self.ptr == ffi.NULL:
                return      # closed meanwhile
            check(lib.srrs_nvmf_discovery_set(self.ptr, arr, len(entries)), "nvmf discovery")
            self._discovery = [dict(e, hosts=list(e.get("hosts", ()))) for e in entries]

    def discovery_table(self) -> List[dict]:
        with self._lock:
            return list(self._discovery)

    def subsystems(self) -> List[dict]:
        with self._lock:
            out = []
            for nqn, s in self._subsys.items():
                out.append({
                    "nqn": nqn, "serial": s["serial"], "model": s["model"],
                    "allow_any_host": s["allow_any_host"], "hosts": list(s["hosts"]),
                    "namespaces": [{"nsid": k, **v} for k, v in sorted(s["namespaces"].items())],
                    "ana_groups": [{"id": g, "state": st} for g, st in sorted(s["ana"].items())],
                    "require_auth": s.get("require_auth", False),
                    # file paths and choices only: a secret never leaves the core
                    "dhchap_hosts": [{"nqn": h, **a} for h, a in sorted(s.get("auth", {}).items())],
                })
            return out

    # -- introspection ---------------------------------------------------------------
    def list_qpairs(self) -> List[dict]:
        n = 64
        while True:
            arr = ffi.new("struct srrs_nvmf_qpair_info[]", n)
            total = check(lib.srrs_nvmf_qpair_list(self.ptr, arr, n))
            if total <= n:
                break
            n = total + 16
        out = []
        for i in range(total):
            q = arr[i]
            d = {"subnqn": _s(q.subnqn), "hostnqn": _s(q.hostnqn), "peer": _s(q.peer)}
            d.update({f: getattr(q, f) for f in _QP_FIELDS})
            d["hdgst"] = bool(d["hdgst"])
            d["ddgst"] = bool(d["ddgst"])
            out.append(d)
        return out

    def list_controllers(self) -> List[dict]:
        """Connected controllers, each with its queues and their counters."""
        ctrls: Dict[int, dict] = {}
        for q in self.list_qpairs():
            c = ctrls.setdefault(q["cntlid"], {"cntlid": q["cntlid"], "subnqn": q["subnqn"],
                                               "hostnqn": q["hostnqn"], "queues": []})
            c["queues"].append({k: v for k, v in q.items() if k not in ("subnqn", "hostnqn",
                                                                           "cntlid")})
        for c in ctrls.values():
            c["queues"].sort(key=lambda q: q["qid"])
            c["io_queues"] = sum(1 for q in c["queues"] if q["qid"])
        return [ctrls[k] for k in sorted(ctrls)]

    def stats(self) -> dict:
        st = ffi.new("struct srrs_nvmf_tgt_stats *")
        check(lib.srrs_nvmf_tgt_get_stats(self.ptr, st))
        return {f: getattr(st, f) for f in ("accepted", "closed", "proto_errors", "kato_expired",
                                            "ctrlrs", "conns", "refused", "evicted",
                                            "handshake_timeouts", "handshaking")}

    def status(self) -> dict:
        """For `srrs status` and the console."""
        return {"listeners": self.listeners(), "subsystems": self.subsystems(),
                "controllers": self.list_controllers(), "stats": self.stats(),
                "auth": self.auth_stats(),
                "cntlids": {"min": self._cfg.cntlid_min, "max": self._cfg.cntlid_max,
                            "from": self.cntlid_from or "config"}}

    def to_toml_dict(self) -> dict:
        """The `[nvmf]` table for save_config ({} when there is nothing to save)."""
        cfg = self.to_config()
        if not cfg.listen and not cfg.subsystems:
            return {}
        d = C.to_dict(cfg)
        if self.cntlid_from not in ("", "config"):
            d.pop("cntlid_min", None)
            d.pop("cntlid_max", None)
        return d

    def to_config(self) -> C.NvmfConfig:
        """The running state as config (for save_config)."""
        subs = []
        with self._lock:
            skip = {n for n, s in self._subsys.items() if not s.get("persist", True)}
        for s in self.subsystems():
            if s["nqn"] in skip:
                continue
            auth = tuple(C.NvmfHostAuth(**a) for a in s["dhchap_hosts"])
            named = {a.nqn for a in auth}
            hosts = (["*"] if s["allow_any_host"] else []) + [
                h for h in s["hosts"] if h not in named]
            subs.append(C.NvmfSubsystem(
                nqn=s["nqn"], model=s["model"],
                serial=None if s["serial"] == default_serial(s["nqn"]) else s["serial"],
                namespaces=tuple(C.NvmfNamespace(n["bdev"], n["nsid"], n["uuid"], n["ana_group"])
                                 for n in s["namespaces"]),
                allow_hosts=tuple(hosts),
                ana_groups=tuple(C.NvmfAnaGroup(g["id"], g["state"]) for g in s["ana_groups"]),
                hosts=auth, require_auth=s["require_auth"],
            ))
        with self._lock:
            return replace(self._cfg, listen=tuple(self._listeners), subsystems=tuple(subs))


class AnaState(enum.IntEnum):
    """enum srrs_ana_state (nvmf/nvmf.h)."""

    OPTIMIZED = lib.SRRS_ANA_OPTIMIZED
    NON_OPTIMIZED = lib.SRRS_ANA_NON_OPTIMIZED
    INACCESSIBLE = lib.SRRS_ANA_INACCESSIBLE
    PERSISTENT_LOSS = lib.SRRS_ANA_PERSISTENT_LOSS
    CHANGE = lib.SRRS_ANA_CHANGE


# A path's ANA state as the initiator's status shows it.
_ANA_NAMES = {m.value: m.name.lower().replace("_", "-") for m in AnaState}
_PATH_FIELDS = ("port", "cntlid", "ios", "bytes", "path_errors", "drops", "reconnects",
                "resubmitted", "errors")


class NvmfHost:
    """The C initiator: an admin queue plus `queues` I/O queues to one subsystem.

    Multipath: with `path_timeout_ms` > 0, `add_path()` adds other controllers
    of the subsystem; I/O goes round-robin to the ANA-optimized live paths, an
    I/O whose path fails is resubmitted on another, a lost path reconnects in
    the background, and an I/O fails only after `path_timeout_ms` without a
    usable path (nvmf/nvmf.h)."""

    def __init__(self, addr: str, port: int, nqn: str, hostnqn: Optional[str] = None,
                 queues: int = 1, qsize: int = 128, header_digest: bool = False,
                 data_digest: bool = False, kato_ms: int = 0, timeout_ms: int = 5000,
                 path_timeout_ms: int = 0, dhchap_secret_file: Optional[str] = None,
                 dhchap_ctrl_secret_file: Optional[str] = None):
        """dhchap_secret_file (mode 0600): authenticate (DH-HMAC-CHAP) when the
        target asks; dhchap_ctrl_secret_file: also make the controller prove itself."""
        o = ffi.new("struct srrs_nvmf_host_opts *")
        secrets = []
        if dhchap_secret_file:
            secrets.append(ffi.new("char[]", DH.read_secret(dhchap_secret_file).encode()))
            o.dhchap_secret = secrets[-1]
        if dhchap_ctrl_secret_file:
            secrets.append(ffi.new("char[]", DH.read_secret(
                dhchap_ctrl_secret_file, "dhchap_ctrl_secret_file").encode()))
            o.dhchap_ctrl_secret = secrets[-1]
        self._keep = [ffi.new("char[]", addr.encode()), ffi.new("char[]", nqn.encode()),
                      ffi.new("char[]", (hostnqn or DEFAULT_HOSTNQN).encode())]
        o.addr, o.subnqn, o.hostnqn = self._keep
        o.port = port
        o.nqueues = queues
        o.qsize = qsize
        o.hdgst = int(header_digest)
        o.ddgst = int(data_digest)
        o.kato_ms = kato_ms
        o.timeout_ms = timeout_ms
        o.path_timeout_ms = path_timeout_ms
        pp = ffi.new("struct srrs_nvmf_host **")
        try:
            check(lib.srrs_nvmf_host_connect(o, pp), f"nvmf connect {addr}:{port} {nqn}")
        finally:
            for b in secrets:  # the core keeps its own parsed copy
                ffi.memmove(b, bytes(len(ffi.string(b))), len(ffi.string(b)))
        self._pp = pp
        self.ptr = pp[0]
        info = ffi.new("struct srrs_nvmf_host_info *")
        lib.srrs_nvmf_host_get_info(self.ptr, info)
        self.info = {
            "cntlid": info.cntlid, "queues": info.nqueues, "nn": info.nn, "size": info.size,
            "block_size": info.block_size, "ioccsz_bytes": info.ioccsz_bytes,
            "mdts_bytes": info.mdts_bytes, "maxh2cdata": info.maxh2cdata,
            "serial": _s(info.sn).strip(), "model": _s(info.mn).strip(),
        }

    @property
    def size(self) -> int:
        return self.info["size"]

    @property
    def block_size(self) -> int:
        return self.info["block_size"]

    def add_path(self, addr: str, port: int) -> bool:
        """Another controller of the subsystem; False when it could not be
        reached now (kept, and reconnected in the background during a job)."""
        return check(lib.srrs_nvmf_host_add_path(self.ptr, addr.encode(), port),
                     f"nvmf add path {addr}:{port}") == 0

    def paths(self) -> List[dict]:
        """Per path: address, live, ANA state and counters since connect."""
        out = ffi.new("struct srrs_nvmf_path_info[8]")
        n = check(lib.srrs_nvmf_host_path_info(self.ptr, out, 8), "nvmf path info")
        res = []
        for i in range(min(n, 8)):
            p = out[i]
            d = {"addr": _s(p.addr), "live": bool(p.live),
                 "ana": _ANA_NAMES.get(p.ana, str(p.ana))}
            d.update({k: getattr(p, k) for k in _PATH_FIELDS})
            res.append(d)
        return res

    def multipath_stats(self) -> dict:
        info = ffi.new("struct srrs_nvmf_host_info *")
        lib.srrs_nvmf_host_get_info(self.ptr, info)
        return {"npaths": info.npaths, "failovers": info.failovers,
                "path_timeouts": info.path_timeouts, "max_wait_us": info.max_wait_us}

    def verify_map(self) -> VerifyMap:
        return VerifyMap(self.size // self.block_size, self.block_size)

    def bench(self, core: Core, opts: BenchOpts, reactor: int = 0,
              vmap: Optional[VerifyMap] = None) -> dict:
        res = ffi.new("struct srrs_bench_result *")
        check(lib.srrs_nvmf_host_bench(core.ptr, reactor, self.ptr, opts.to_c(vmap), res),
              "nvmf bench")
        d = bench_result_dict(res)
        d["verified"] = vmap is not None and d["verify_errors"] == 0 and d["errors"] == 0
        return d

    def close(self) -> None:
        if self.ptr != ffi.NULL:
            lib.srrs_nvmf_host_disconnect(self._pp)
            self.ptr = ffi.NULL

    def __enter__(self) -> "NvmfHost":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_TRTYPE = {1: "rdma", 2: "fc", 3: "tcp", 254: "loop"}
_ADRFAM = {1: "ipv4", 2: "ipv6"}
_SUBTYPE = {1: "referral", 2: "nvme", 3: "discovery"}


def discover(addr: str, port: int = 8009, hostnqn: Optional[str] = None,
             max_entries: int = 64, timeout_ms: int = 5000) -> List[dict]:
    """Reads the discovery log of the target at addr:port."""
    buf = ffi.new("uint8_t[]", 1024 * max_entries)
    n = check(lib.srrs_nvmf_discover(addr.encode(), port,
                                     (hostnqn or DEFAULT_HOSTNQN).encode(), buf, max_entries,
                                     timeout_ms), f"nvmf discover {addr}:{port}")
    raw = bytes(ffi.buffer(buf, 1024 * min(n, max_entries)))
    out = []
    for i in range(min(n, max_entries)):
        e = raw[i * 1024:(i + 1) * 1024]
        out.append({
            "trtype": _TRTYPE.get(e[0], str(e[0])),
            "adrfam": _ADRFAM.get(e[1], str(e[1])),
            "subtype": _SUBTYPE.get(e[2], str(e[2])),
            "portid": int.from_bytes(e[4:6], "little"),
            "cntlid": int.from_bytes(e[6:8], "little"),
            "trsvcid": e[32:64].rstrip(b"\0 ").decode(),
            "subnqn": e[256:512].rstrip(b"\0 ").decode(),
            "traddr": e[512:768].rstrip(b"\0 ").decode(),
        })
    return out


def bench_nvmf(core: Core, addr: str, port: int, nqn: str, opts: BenchOpts, queues: int = 1,
               reactor: int = 0, verify: bool = False, hostnqn: Optional[str] = None,
               header_digest: bool = False, data_digest: bool = False) -> dict:
    """`srrs bench nvmf`: connect, run one job, disconnect."""
    with NvmfHost(addr, port, nqn, hostnqn=hostnqn, queues=queues,
                  qsize=max(2, min(1024, opts.qd // max(1, queues) + 2)),
                  header_digest=header_digest, data_digest=data_digest) as h:
        vmap = h.verify_map() if verify else None
        try:
            if vmap is not None and opts.rw in ("randread", "read"):
                # Reads verify only what was written: fill the range first.
                span = opts.span or (h.size - opts.offset)
                bs = 128 * 1024 if span >= 128 * 1024 else h.block_size
                fill = replace(opts, rw="write", bs=bs, bs_max=0, qd=8, time_s=0,
                               max_ios=max(1, span // bs))
                h.bench(core, fill, reactor, vmap)
            return h.bench(core, opts, reactor, vmap)
        finally:
            if vmap is not None:
                vmap.close()


def seq_fill_opts(size: int, bs: int = 128 * 1024) -> BenchOpts:
    return BenchOpts(rw="write", bs=bs, qd=8, time_s=0, max_ios=max(1, size // bs))


__all__: Sequence[str] = ("NvmfTarget", "NvmfHost", "discover", "bench_nvmf", "DISCOVERY_NQN")
