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
from dataclasses import dataclass
from typing import Any, Optional

from srrs.schema import check_name, setting, to_table, unix_socket
from srrs.schema import parse as parse_schema

MAX_QUEUES = 64
_OWNER_RE = re.compile(r"^[A-Za-z0-9_.-]*(:[A-Za-z0-9_.-]*)?$")


def _owner(v: Any) -> Any:
    return str(v) if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else v


def _check_owner(v: str) -> None:
    if not v or not _OWNER_RE.match(v):
        raise ValueError(f"must be \"user\", \"user:group\" or a uid, got {v!r}")


def _mode(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return int(v, 8)
        except ValueError:
            raise ValueError(f"{v!r} is not an octal mode like \"0660\"") from None
    return v


def _check_mode(v: int) -> None:
    if not 0 <= v <= 0o777:
        raise ValueError(f"must be a permission mode 0..0777, got {v:o}")


def _check_serial(v: str) -> None:
    if len(v.encode()) > 20 or "\0" in v:
        raise ValueError(f"must be a string of at most 20 bytes, got {v!r}")


@dataclass(frozen=True)
class VhostConfig:
    """[[vhost]]: a vhost-user-blk device serving a bdev on a Unix socket."""
    name: str = setting(nonempty=True, check=check_name)
    socket: str = setting(nonempty=True, check=unix_socket, help="the socket QEMU connects to")
    bdev: str = setting(nonempty=True, help="the bdev (or volume, or paired volume) it serves")
    num_queues: int = setting(1, range=(1, MAX_QUEUES))
    serial: str = setting("", check=_check_serial, help="GET_ID, at most 20 bytes "
                          "(default: the name)")
    read_only: bool = setting(False)
    owner: Optional[str] = setting(None, coerce=_owner, check=_check_owner,
                                   help="user[:group] or uid[:gid] of the socket")
    mode: int = setting(0o600, coerce=_mode, check=_check_mode, doc_default='`"0600"`',
                        dump=lambda v: f"{v:04o}",
                        help="socket permissions, an octal string (\"0660\") or an integer")

    @property
    def serial_or_name(self) -> str:
        return self.serial or self.name[:20]


def parse(entry: Any, where: tuple = ()) -> VhostConfig:
    """One [[vhost]] table (also the params of vhost_create) -> VhostConfig;
    raises SchemaError, a ValueError reading "key: message"."""
    return parse_schema(VhostConfig, entry, where)


def to_dict(c: VhostConfig) -> dict:
    """The TOML table that parse() turns back into c (defaults left out)."""
    return to_table(c)
