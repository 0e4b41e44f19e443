"""`[[vhost]]` config entries (docs/architecture.md, Config), parsed once into a frozen dataclass.

    [[vhost]]
    name = "vh0"
    socket = "/tmp/srrs-vh0.sock"
    bdev = "v0"
    num_queues = 2          # default 1
    serial = "SRRS-vh0"     # default: the name (GET_ID, 20 bytes at most)
    read_only = false
    owner = "qemu:kvm"      # optional: user[:group] or uid[:gid] of the socket
    mode = "0660"           # socket permissions, default 0600 (string or integer)
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Optional

KEYS = ("name", "socket", "bdev", "num_queues", "serial", "read_only", "owner", "mode")
MAX_QUEUES = 64
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,63}$")
_OWNER_RE = re.compile(r"^[A-Za-z0-9_.-]*(:[A-Za-z0-9_.-]*)?$")


@dataclass(frozen=True)
class VhostConfig:
    name: str
    socket: str
    bdev: str
    num_queues: int = 1
    serial: str = ""
    read_only: bool = False
    owner: Optional[str] = None
    mode: int = 0o600

    @property
    def serial_or_name(self) -> str:
        return self.serial or self.name[:20]


def _str(entry: dict, key: str, required: bool = True, default: Any = None) -> Any:
    if key not in entry:
        if required:
            raise ValueError(f"{key}: missing (required)")
        return default
    v = entry[key]
    if not isinstance(v, str) or not v:
        raise ValueError(f"{key}: must be a non-empty string, got {v!r}")
    return v


def parse(entry: dict) -> VhostConfig:
    """One [[vhost]] table → VhostConfig; raises ValueError("key: message")."""
    if not isinstance(entry, dict):
        raise ValueError(f"must be a table, got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(KEYS))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key (known: {', '.join(KEYS)})")
    name = _str(entry, "name")
    if not _NAME_RE.match(name):
        raise ValueError(f"name: {name!r} must be 1..63 of [A-Za-z0-9_.:-]")
    sock = _str(entry, "socket")
    if len(sock.encode()) > 107:
        raise ValueError(f"socket: path longer than a Unix socket address allows (107 bytes): {sock}")
    bdev = _str(entry, "bdev")
    nq = entry.get("num_queues", 1)
    if not isinstance(nq, int) or isinstance(nq, bool) or not 1 <= nq <= MAX_QUEUES:
        raise ValueError(f"num_queues: must be an integer in 1..{MAX_QUEUES}, got {nq!r}")
    serial = entry.get("serial", "")
    if not isinstance(serial, str) or len(serial.encode()) > 20 or "\0" in serial:
        raise ValueError(f"serial: must be a string of at most 20 bytes, got {serial!r}")
    ro = entry.get("read_only", False)
    if not isinstance(ro, bool):
        raise ValueError(f"read_only: must be true or false, got {ro!r}")
    owner = entry.get("owner")
    if owner is not None:
        if isinstance(owner, int) and not isinstance(owner, bool) and owner >= 0:
            owner = str(owner)
        if not isinstance(owner, str) or not owner or not _OWNER_RE.match(owner):
            raise ValueError(f"owner: must be \"user\", \"user:group\" or a uid, got {owner!r}")
    mode = entry.get("mode", 0o600)
    if isinstance(mode, str):
        try:
            mode = int(mode, 8)
        except ValueError:
            raise ValueError(f"mode: {entry['mode']!r} is not an octal mode like \"0660\"") from None
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o777:
        raise ValueError(f"mode: must be a permission mode 0..0777, got {entry.get('mode')!r}")
    return VhostConfig(name=name, socket=sock, bdev=bdev, num_queues=nq, serial=serial,
                       read_only=ro, owner=owner, mode=mode)


def to_dict(c: VhostConfig) -> dict:
    """The TOML table that parse() turns back into c (defaults left out)."""
    d = asdict(c)
    out = {"name": d["name"], "socket": d["socket"], "bdev": d["bdev"]}
    if c.num_queues != 1:
        out["num_queues"] = c.num_queues
    if c.serial:
        out["serial"] = c.serial
    if c.read_only:
        out["read_only"] = True
    if c.owner:
        out["owner"] = c.owner
    if c.mode != 0o600:
        out["mode"] = f"{c.mode:04o}"
    return out
