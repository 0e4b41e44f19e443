"""The `[nvmf]` section of the controller config (docs/architecture.md, Config), parsed once into
frozen dataclasses where every default lives.

    [nvmf]
    listen = ["127.0.0.1:4420", "[::1]:4420"]
    cntlid_min = 1
    cntlid_max = 32767
    max_io_queues = 16          # per controller
    max_queue_depth = 128       # entries per queue
    header_digest = true        # accept header digests when a host asks
    data_digest = true
    max_handshaking = 512       # connections without a Connect yet, in all ...
    max_handshaking_per_source = 128  # ... and from one address (the oldest is evicted)
    handshake_timeout_ms = 5000 # accept to Connect

    [[nvmf.subsystem]]
    nqn = "nqn.2026-11.io.srrs:v0"
    serial = "SRRS0001"         # default: "SRRS" + 16 hex digits derived from the nqn
    model = "SRRS volume"
    namespaces = ["v0", { bdev = "v1", nsid = 4, uuid = "…", ana_group = 2 }]
    allow_hosts = ["*"]         # or a list of host NQNs; default [] = no host (deny)
    ana_groups = [{ id = 1, state = "optimized" }, { id = 2, state = "inaccessible" }]
    require_auth = false        # true: hosts without a DH-HMAC-CHAP secret are refused

    [[nvmf.subsystem.host]]     # an allowed host that must authenticate (DH-HMAC-CHAP)
    nqn = "nqn.2014-08.org.nvmexpress:uuid:…"
    dhchap_secret_file = "/etc/srrs/host1.key"        # DHHC-1 secret, mode 0600
    dhchap_ctrl_secret_file = "/etc/srrs/host1.ctrl"  # optional: bidirectional
    dhchap_hash = "sha256"      # sha256 | sha384 | sha512
    dhchap_dhgroup = "ffdhe2048"  # null | ffdhe2048 | 3072 | 4096 | 6144 | 8192

A plain string namespace gets nsid = position + 1.
"""

from __future__ import annotations

import os
import re
import uuid as _uuid
from dataclasses import dataclass, field
from typing import Optional, Tuple

from . import dhchap as DH

ANA_STATES = {"optimized": 1, "non_optimized": 2, "inaccessible": 3, "persistent_loss": 4}
ANA_NAMES = {v: k for k, v in ANA_STATES.items()}
MAX_NS = 256
MAX_ANA = 32
_NQN = re.compile(r"^nqn\.\d{4}-\d{2}\.[^:]+(:.+)?$|^nqn\.2014-08\.org\.nvmexpress:uuid:[0-9a-fA-F-]{36}$")


@dataclass(frozen=True)
class NvmfNamespace:
    bdev: str
    nsid: int
    uuid: Optional[str] = None      # None: derived from nqn + bdev (stable)
    ana_group: int = 1


@dataclass(frozen=True)
class NvmfAnaGroup:
    id: int
    state: str = "optimized"


@dataclass(frozen=True)
class NvmfHostAuth:
    nqn: str
    dhchap_secret_file: str
    dhchap_ctrl_secret_file: Optional[str] = None
    dhchap_hash: str = DH.DEFAULT_HASH
    dhchap_dhgroup: str = DH.DEFAULT_DHGROUP


@dataclass(frozen=True)
class NvmfSubsystem:
    nqn: str
    serial: Optional[str] = None    # None: derived from the nqn (unique, stable, same on a pair)
    model: str = "SRRS NVMe-oF"
    namespaces: Tuple[NvmfNamespace, ...] = ()
    allow_hosts: Tuple[str, ...] = ()   # deny by default, as nvmf_subsystem_create does
    ana_groups: Tuple[NvmfAnaGroup, ...] = ()
    hosts: Tuple[NvmfHostAuth, ...] = ()    # allowed hosts that authenticate
    require_auth: bool = False

    @property
    def allow_any_host(self) -> bool:
        return "*" in self.allow_hosts


@dataclass(frozen=True)
class NvmfListen:
    addr: str
    port: int

    def __str__(self) -> str:
        return f"[{self.addr}]:{self.port}" if ":" in self.addr else f"{self.addr}:{self.port}"


@dataclass(frozen=True)
class NvmfConfig:
    listen: Tuple[NvmfListen, ...] = ()
    cntlid_min: int = 1
    cntlid_max: int = 32767
    max_io_queues: int = 16
    max_queue_depth: int = 128
    max_handshaking: int = 512
    max_handshaking_per_source: int = 128
    handshake_timeout_ms: int = 5000
    header_digest: bool = True
    data_digest: bool = True
    subsystems: Tuple[NvmfSubsystem, ...] = field(default_factory=tuple)
    auth_timeout_ms: int = 0    # DH-HMAC-CHAP transaction deadline (0: the core's 20 s)


def _fail(key: str, msg: str) -> ValueError:
    return ValueError(f"{key}: {msg}")


def parse_listen(s: str, key: str = "listen") -> NvmfListen:
    if not isinstance(s, str):
        raise _fail(key, f"expected \"host:port\", got {s!r}")
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", s)
    if not m:
        raise _fail(key, f"expected \"host:port\" or \"[v6addr]:port\", got {s!r}")
    addr = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        raise _fail(key, f"port {port} out of range")
    import ipaddress

    try:
        ipaddress.ip_address(addr)
    except ValueError:
        raise _fail(key, f"{addr!r} is not an IPv4/IPv6 address") from None
    return NvmfListen(addr, port)


def check_nqn(nqn, key: str) -> str:
    if not isinstance(nqn, str) or not nqn:
        raise _fail(key, "must be a non-empty string")
    if len(nqn.encode()) > 223:
        raise _fail(key, "longer than 223 bytes")
    if not _NQN.match(nqn):
        raise _fail(key, f"{nqn!r} is not an NQN (nqn.yyyy-mm.reverse.domain:name)")
    return nqn


def _int(v, key: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(key, f"expected an integer, got {v!r}")
    if not lo <= v <= hi:
        raise _fail(key, f"must be {lo}..{hi}, got {v}")
    return v


def _bool(v, key: str) -> bool:
    if not isinstance(v, bool):
        raise _fail(key, f"expected true or false, got {v!r}")
    return v


def _ascii(v, key: str, maxlen: int) -> str:
    if not isinstance(v, str) or not v or len(v) > maxlen or not all(0x20 <= ord(c) < 0x7F for c in v):
        raise _fail(key, f"expected 1..{maxlen} printable ASCII characters, got {v!r}")
    return v


def _unknown(d: dict, known: set, key: str) -> None:
    extra = sorted(set(d) - known)
    if extra:
        raise _fail(f"{key}.{extra[0]}", "unknown key")


def parse_uuid(v, key: str) -> str:
    try:
        return str(_uuid.UUID(str(v)))
    except ValueError:
        raise _fail(key, f"{v!r} is not a UUID") from None


def _namespace(v, i: int, key: str) -> NvmfNamespace:
    if isinstance(v, str):
        if not v:
            raise _fail(key, "empty bdev name")
        return NvmfNamespace(bdev=v, nsid=i + 1)
    if not isinstance(v, dict):
        raise _fail(key, f"expected a bdev name or a table, got {v!r}")
    _unknown(v, {"bdev", "nsid", "uuid", "ana_group"}, key)
    if not isinstance(v.get("bdev"), str) or not v["bdev"]:
        raise _fail(f"{key}.bdev", "required bdev name")
    return NvmfNamespace(
        bdev=v["bdev"],
        nsid=_int(v.get("nsid", i + 1), f"{key}.nsid", 1, MAX_NS),
        uuid=parse_uuid(v["uuid"], f"{key}.uuid") if "uuid" in v else None,
        ana_group=_int(v.get("ana_group", 1), f"{key}.ana_group", 1, MAX_ANA),
    )


def _host_auth(h, key: str) -> NvmfHostAuth:
    """One [[nvmf.subsystem.host]]; the secret files are checked (mode 0600,
    DHHC-1 format) now, so a bad file fails the config load, not a Connect."""
    if not isinstance(h, dict):
        raise _fail(key, "expected a table")
    _unknown(h, {"nqn", "dhchap_secret_file", "dhchap_ctrl_secret_file", "dhchap_hash",
                 "dhchap_dhgroup", "require_auth"}, key)
    nqn = check_nqn(h.get("nqn"), f"{key}.nqn")
    files = {}
    for f in ("dhchap_secret_file", "dhchap_ctrl_secret_file"):
        v = h.get(f)
        if v is not None:
            if not isinstance(v, str) or not os.path.isabs(v):
                raise _fail(f"{key}.{f}", "expected an absolute file path")
            DH.read_secret(v, f"{key}.{f}")
        files[f] = v
    if not files["dhchap_secret_file"]:
        raise _fail(f"{key}.dhchap_secret_file", "required (a host entry is for authentication; "
                    "list hosts without a secret in allow_hosts)")
    if not _bool(h.get("require_auth", True), f"{key}.require_auth"):
        raise _fail(f"{key}.require_auth", "a host with a secret always authenticates")
    hs, dg = h.get("dhchap_hash", DH.DEFAULT_HASH), h.get("dhchap_dhgroup", DH.DEFAULT_DHGROUP)
    DH.hash_id(hs, f"{key}.dhchap_hash")
    DH.dhgroup_id(dg, f"{key}.dhchap_dhgroup")
    return NvmfHostAuth(nqn, files["dhchap_secret_file"], files["dhchap_ctrl_secret_file"], hs, dg)


def _subsystem(d, key: str) -> NvmfSubsystem:
    if not isinstance(d, dict):
        raise _fail(key, "expected a table")
    _unknown(d, {"nqn", "serial", "model", "namespaces", "allow_hosts", "ana_groups", "host",
                 "require_auth"}, key)
    nqn = check_nqn(d.get("nqn"), f"{key}.nqn")
    nss = d.get("namespaces", [])
    if not isinstance(nss, list):
        raise _fail(f"{key}.namespaces", "expected a list")
    namespaces = tuple(_namespace(v, i, f"{key}.namespaces[{i}]") for i, v in enumerate(nss))
    seen = set()
    for i, ns in enumerate(namespaces):
        if ns.nsid in seen:
            raise _fail(f"{key}.namespaces[{i}].nsid", f"nsid {ns.nsid} used twice")
        seen.add(ns.nsid)
    hosts = d.get("allow_hosts", [])
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise _fail(f"{key}.allow_hosts", "expected a list of host NQNs or [\"*\"]")
    for i, h in enumerate(hosts):
        if h != "*":
            check_nqn(h, f"{key}.allow_hosts[{i}]")
    groups = []
    for i, g in enumerate(d.get("ana_groups", [])):
        gk = f"{key}.ana_groups[{i}]"
        if not isinstance(g, dict):
            raise _fail(gk, "expected { id = N, state = \"optimized\" }")
        _unknown(g, {"id", "state"}, gk)
        state = g.get("state", "optimized")
        if state not in ANA_STATES:
            raise _fail(f"{gk}.state", f"must be one of {', '.join(ANA_STATES)}")
        groups.append(NvmfAnaGroup(_int(g.get("id"), f"{gk}.id", 1, MAX_ANA), state))
    ha = d.get("host", [])
    if not isinstance(ha, list):
        raise _fail(f"{key}.host", "expected [[nvmf.subsystem.host]] tables")
    auth = tuple(_host_auth(h, f"{key}.host[{i}]") for i, h in enumerate(ha))
    if len({h.nqn for h in auth}) != len(auth):
        raise _fail(f"{key}.host", "a host NQN appears twice")
    return NvmfSubsystem(
        nqn=nqn,
        serial=_ascii(d["serial"], f"{key}.serial", 20) if "serial" in d else None,
        model=_ascii(d.get("model", "SRRS NVMe-oF"), f"{key}.model", 40),
        namespaces=namespaces,
        allow_hosts=tuple(hosts),
        ana_groups=tuple(groups),
        hosts=auth,
        require_auth=_bool(d.get("require_auth", False), f"{key}.require_auth"),
    )


def parse(section: dict) -> NvmfConfig:
    """Validates the `[nvmf]` table; raises ValueError("key: message")."""
    if section is None:
        return NvmfConfig()
    if not isinstance(section, dict):
        raise _fail("nvmf", "expected a table")
    _unknown(section, {"listen", "cntlid_min", "cntlid_max", "max_io_queues", "max_queue_depth",
                       "header_digest", "data_digest", "subsystem", "auth_timeout_ms",
                       "max_handshaking", "max_handshaking_per_source", "handshake_timeout_ms"},
             "nvmf")
    listen = section.get("listen", [])
    if isinstance(listen, str):
        listen = [listen]
    if not isinstance(listen, list):
        raise _fail("nvmf.listen", "expected a list of \"host:port\"")
    lst = tuple(parse_listen(s, f"nvmf.listen[{i}]") for i, s in enumerate(listen))
    cmin = _int(section.get("cntlid_min", 1), "nvmf.cntlid_min", 1, 0xFFEF)
    cmax = _int(section.get("cntlid_max", 32767), "nvmf.cntlid_max", 1, 0xFFEF)
    if cmin > cmax:
        raise _fail("nvmf.cntlid_max", f"must be >= cntlid_min ({cmin})")
    subs = section.get("subsystem", [])
    if not isinstance(subs, list):
        raise _fail("nvmf.subsystem", "expected [[nvmf.subsystem]] tables")
    subsystems = tuple(_subsystem(d, f"nvmf.subsystem[{i}]") for i, d in enumerate(subs))
    nqns = set()
    for i, s in enumerate(subsystems):
        if s.nqn in nqns:
            raise _fail(f"nvmf.subsystem[{i}].nqn", f"{s.nqn} defined twice")
        nqns.add(s.nqn)
    return NvmfConfig(
        listen=lst,
        cntlid_min=cmin,
        cntlid_max=cmax,
        max_io_queues=_int(section.get("max_io_queues", 16), "nvmf.max_io_queues", 1, 64),
        max_queue_depth=_int(section.get("max_queue_depth", 128), "nvmf.max_queue_depth", 2, 1024),
        max_handshaking=_int(section.get("max_handshaking", 512), "nvmf.max_handshaking",
                             1, 4096),
        max_handshaking_per_source=_int(section.get("max_handshaking_per_source", 128),
                                        "nvmf.max_handshaking_per_source", 1, 4096),
        handshake_timeout_ms=_int(section.get("handshake_timeout_ms", 5000),
                                  "nvmf.handshake_timeout_ms", 100, 60000),
        header_digest=_bool(section.get("header_digest", True), "nvmf.header_digest"),
        data_digest=_bool(section.get("data_digest", True), "nvmf.data_digest"),
        subsystems=subsystems,
        auth_timeout_ms=_int(section.get("auth_timeout_ms", 0), "nvmf.auth_timeout_ms", 0,
                             600000),
    )


def to_dict(cfg: NvmfConfig) -> dict:
    """The inverse of parse(), for save_config."""
    subs = []
    for s in cfg.subsystems:
        nss = []
        for ns in s.namespaces:
            e = {"bdev": ns.bdev, "nsid": ns.nsid}
            if ns.uuid:
                e["uuid"] = ns.uuid
            if ns.ana_group != 1:
                e["ana_group"] = ns.ana_group
            nss.append(e)
        d = {"nqn": s.nqn, "model": s.model, "namespaces": nss, "allow_hosts": list(s.allow_hosts)}
        if s.serial:
            d["serial"] = s.serial
        if s.ana_groups:
            d["ana_groups"] = [{"id": g.id, "state": g.state} for g in s.ana_groups]
        if s.require_auth:
            d["require_auth"] = True
        if s.hosts:
            d["host"] = [{k: v for k, v in vars(h).items() if v is not None} for h in s.hosts]
        subs.append(d)
    return {
        "listen": [str(x) for x in cfg.listen],
        "cntlid_min": cfg.cntlid_min,
        "cntlid_max": cfg.cntlid_max,
        "max_io_queues": cfg.max_io_queues,
        "max_queue_depth": cfg.max_queue_depth,
        "max_handshaking": cfg.max_handshaking,
        "max_handshaking_per_source": cfg.max_handshaking_per_source,
        "handshake_timeout_ms": cfg.handshake_timeout_ms,
        "header_digest": cfg.header_digest,
        "data_digest": cfg.data_digest,
        **({"auth_timeout_ms": cfg.auth_timeout_ms} if cfg.auth_timeout_ms else {}),
        "subsystem": subs,
    }
