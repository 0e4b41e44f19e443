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
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from srrs.schema import SchemaError, at, setting, to_table, unique
from srrs.schema import parse as parse_schema
from srrs.units import format_address, parse_address

from . import dhchap as DH

ANA_STATES = {"optimized": 1, "non_optimized": 2, "inaccessible": 3, "persistent_loss": 4}
ANA_NAMES = {v: k for k, v in ANA_STATES.items()}
MAX_NS = 256
MAX_ANA = 32
_NQN = re.compile(r"^nqn\.\d{4}-\d{2}\.[^:]+(:.+)?$|^nqn\.2014-08\.org\.nvmexpress:uuid:[0-9a-fA-F-]{36}$")


# ---- checks (also used by the RPC methods, with the param's name as key) ------------------

def _nqn(v: Any) -> None:
    if not isinstance(v, str) or not v:
        raise ValueError("must be a non-empty string")
    if len(v.encode()) > 223:
        raise ValueError("longer than 223 bytes")
    if not _NQN.match(v):
        raise ValueError(f"{v!r} is not an NQN (nqn.yyyy-mm.reverse.domain:name)")


def _uuid_str(v: Any) -> str:
    try:
        return str(_uuid.UUID(str(v)))
    except ValueError:
        raise ValueError(f"{v!r} is not a UUID") from None


def _listen(v: Any) -> "NvmfListen":
    # numeric: the C listener binds the address as given, it resolves no names
    return NvmfListen(*parse_address(v, numeric=True))


def check_nqn(nqn: Any, key: str) -> str:
    at((key,), _nqn, nqn)
    return nqn


def parse_uuid(v: Any, key: str) -> str:
    return at((key,), _uuid_str, v)


def parse_listen(s: Any, key: str = "listen") -> "NvmfListen":
    return at((key,), _listen, s)


def _ascii(maxlen: int):
    def check(v: str) -> None:
        if not v or len(v) > maxlen or not all(0x20 <= ord(c) < 0x7F for c in v):
            raise ValueError(f"expected 1..{maxlen} printable ASCII characters, got {v!r}")
    return check


def _secret_file(v: str) -> None:
    if not os.path.isabs(v):
        raise ValueError("expected an absolute file path")
    try:
        DH.read_secret(v, "")
    except ValueError as e:  # read_secret puts its key first; ours is the path
        raise ValueError(str(e).lstrip(": ")) from None


# ---- the section --------------------------------------------------------------------------

@dataclass(frozen=True)
class NvmfNamespace:
    """A namespace: `"v0"` (nsid = position + 1) or `{ bdev, nsid, uuid, ana_group }`."""
    bdev: str = setting(nonempty=True, help="the bdev (volume, paired volume) it exports")
    nsid: int = setting(range=(1, MAX_NS), doc_default="position + 1")
    uuid: Optional[str] = setting(None, check=_uuid_str, help="default: derived from the nqn "
                                  "and the bdev (stable)")
    ana_group: int = setting(1, range=(1, MAX_ANA))


@dataclass(frozen=True)
class NvmfAnaGroup:
    """An ANA group of a subsystem: `{ id = 2, state = "inaccessible" }`."""
    id: int = setting(range=(1, MAX_ANA))
    state: str = setting("optimized", choices=tuple(ANA_STATES))


@dataclass(frozen=True)
class NvmfHostAuth:
    """[[nvmf.subsystem.host]]: an allowed host that must authenticate (DH-HMAC-CHAP);
    the secret files are read now, so a bad file fails the config load, not a Connect."""
    nqn: str = setting(check=_nqn)
    dhchap_secret_file: str = setting(check=_secret_file, help="DHHC-1 secret, mode 0600")
    dhchap_ctrl_secret_file: Optional[str] = setting(None, check=_secret_file,
                                                     help="bidirectional: the controller's")
    dhchap_hash: str = setting(DH.DEFAULT_HASH, choices=tuple(DH.HASHES))
    dhchap_dhgroup: str = setting(DH.DEFAULT_DHGROUP, choices=tuple(DH.DHGROUPS))


def _ns_tables(raw: Any) -> Any:
    if not isinstance(raw, list):
        return raw
    out = []
    for i, v in enumerate(raw):
        if isinstance(v, str) and not v:
            raise SchemaError((i,), "empty bdev name")
        if not isinstance(v, (str, dict)):
            raise SchemaError((i,), f"expected a bdev name or a table, got {v!r}")
        out.append({"bdev": v, "nsid": i + 1} if isinstance(v, str) else {"nsid": i + 1, **v})
    return out


def _check_nsids(nss: tuple) -> None:
    seen: set = set()
    for i, ns in enumerate(nss):
        if ns.nsid in seen:
            raise SchemaError((i, "nsid"), f"nsid {ns.nsid} used twice")
        seen.add(ns.nsid)


def _host_tables(raw: Any) -> Any:
    """require_auth may be written on a host, and must then be true."""
    if not isinstance(raw, list):
        return raw
    out = []
    for i, h in enumerate(raw):
        if isinstance(h, dict):
            h = dict(h)
            if not h.get("dhchap_secret_file"):
                raise SchemaError((i, "dhchap_secret_file"), "required (a host entry is for "
                                  "authentication; list hosts without a secret in allow_hosts)")
            if h.pop("require_auth", True) is not True:
                raise SchemaError((i, "require_auth"), "a host with a secret always "
                                  "authenticates")
        out.append(h)
    return out


def _allowed_host(v: str) -> None:
    if v != "*":
        _nqn(v)


def _unique_hosts(hosts: tuple) -> None:
    if len({h.nqn for h in hosts}) != len(hosts):
        raise ValueError("a host NQN appears twice")


@dataclass(frozen=True)
class NvmfSubsystem:
    """[[nvmf.subsystem]]: an NVM subsystem and the namespaces it exports."""
    nqn: str = setting(check=_nqn)
    serial: Optional[str] = setting(None, check=_ascii(20), help="default: derived from the "
                                    "nqn (unique, stable, the same on a pair)")
    model: str = setting("SRRS NVMe-oF", check=_ascii(40))
    namespaces: Tuple[NvmfNamespace, ...] = setting((), coerce=_ns_tables, check=_check_nsids,
                                                    help="bdev names or tables")
    allow_hosts: Tuple[str, ...] = setting((), each=_allowed_host, help="host NQNs, or "
                                           "[\"*\"]; none: deny every host")
    ana_groups: Tuple[NvmfAnaGroup, ...] = setting(())
    hosts: Tuple[NvmfHostAuth, ...] = setting((), key="host", coerce=_host_tables,
                                              check=_unique_hosts)
    require_auth: bool = setting(False, help="hosts without a DH-HMAC-CHAP secret are refused")

    @property
    def allow_any_host(self) -> bool:
        return "*" in self.allow_hosts


@dataclass(frozen=True)
class NvmfListen:
    """An NVMe/TCP listener: "IPv4:PORT" or "[IPv6]:PORT" (port 0: any free port)."""
    addr: str
    port: int

    def __str__(self) -> str:
        return format_address(self.addr, self.port)


def _listen_list(raw: Any) -> Any:
    raw = [raw] if isinstance(raw, str) else raw
    if not isinstance(raw, list):
        return raw
    return [at((i,), _listen, v) for i, v in enumerate(raw)]


@dataclass(frozen=True)
class NvmfConfig:
    """[nvmf]: the NVMe-oF/TCP target."""
    listen: Tuple[NvmfListen, ...] = setting(
        (), coerce=_listen_list, dump=lambda v: list(map(str, v)),
        doc_type="address or list of addresses", help="numeric; port 0: any free port")
    cntlid_min: int = setting(1, range=(1, 0xFFEF), help="with neither key set: a [cluster] "
                              "member's own range from etcd; else in a [pair] each controller "
                              "takes half of min..max")
    cntlid_max: int = setting(32767, range=(1, 0xFFEF))
    max_io_queues: int = setting(16, range=(1, 64), help="per controller")
    max_queue_depth: int = setting(128, range=(2, 1024), help="entries per queue")
    max_handshaking: int = setting(512, range=(1, 4096), help="connections without a "
                                   "Connect yet, in all")
    max_handshaking_per_source: int = setting(128, range=(1, 4096), help="... from one "
                                              "address (the oldest is evicted)")
    handshake_timeout_ms: int = setting(5000, range=(100, 60000), help="accept to Connect")
    header_digest: bool = setting(True, help="accept header digests when a host asks")
    data_digest: bool = setting(True)
    subsystems: Tuple[NvmfSubsystem, ...] = setting((), key="subsystem",
                                                    check=unique("nqn", "subsystem"))
    auth_timeout_ms: int = setting(0, range=(0, 600000), help="DH-HMAC-CHAP transaction "
                                   "deadline (0: the core's 20 s)")

    def _finish(self, raw: dict) -> "NvmfConfig":
        if self.cntlid_min > self.cntlid_max:
            raise SchemaError(("cntlid_max",), f"must be >= cntlid_min ({self.cntlid_min})")
        return self


def parse(section: Any, where: tuple = ("nvmf",)) -> NvmfConfig:
    """Validates the `[nvmf]` table; raises SchemaError, a ValueError reading
    "nvmf.key: message"."""
    if section is None:
        return NvmfConfig()
    return parse_schema(NvmfConfig, section, where)


def to_dict(cfg: NvmfConfig) -> dict:
    """The inverse of parse(), for save_config."""
    return to_table(cfg, defaults=True)
