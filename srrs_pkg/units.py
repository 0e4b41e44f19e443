"""Units shared by the config files, the RPC parameters and the command line:
sizes ("4GiB") and addresses ("HOST:PORT", "[v6]:PORT").

A leaf module: it imports nothing of ours, so every folder may import it.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Optional, Tuple

SIZE_UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(v: Any) -> int:
    """Bytes from an int or a string with a binary unit ("512MiB", "4GiB", "4096")."""
    if isinstance(v, bool):
        raise ValueError(f"expected a size, got {v!r}")
    if isinstance(v, int):
        if v < 0:
            raise ValueError(f"size must not be negative, got {v}")
        return v
    if isinstance(v, str):
        m = _SIZE_RE.match(v)
        if m and m.group(2) in SIZE_UNITS:
            n = float(m.group(1)) * SIZE_UNITS[m.group(2)]
            if n != int(n):
                raise ValueError(f"size {v!r} is not a whole number of bytes")
            return int(n)
        raise ValueError(f"bad size {v!r} (use bytes or a binary unit: KiB, MiB, GiB, TiB)")
    raise ValueError(f"expected a size, got {type(v).__name__} {v!r}")


def format_size(n: int) -> Any:
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if n and n % SIZE_UNITS[unit] == 0:
            return f"{n // SIZE_UNITS[unit]}{unit}"
    return n


_HOST_RE = re.compile(r"^(\*|[A-Za-z0-9_]([A-Za-z0-9_.\-]*[A-Za-z0-9_])?)$")


def parse_address(v: Any, default_port: Optional[int] = None, *, min_port: int = 0,
                  numeric: bool = False) -> Tuple[str, int]:
    """(host, port) from "HOST:PORT", "[v6]:PORT", or a bare host when a
    default port is given: the one parser of every address in the config, the
    RPC params and the command line. numeric: the host must be an IP address
    (what the C listeners bind); otherwise a host name (or "*") is accepted."""
    if not isinstance(v, str):
        raise ValueError(f"expected a string HOST:PORT, got {type(v).__name__} {v!r}")
    if v.startswith("["):
        host, _, rest = v[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"expected [IPv6]:PORT, got {v!r}")
        port = rest[1:] if rest else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {v!r} is not an IPv6 address") from None
    else:
        host, sep, port = v.rpartition(":")
        if not sep:
            host, port = v, None
        elif ":" in host:
            raise ValueError(f"an IPv6 address goes in brackets: [{host}]:{port}")
        if not host or not _HOST_RE.match(host):
            raise ValueError(f"expected HOST:PORT, got {v!r}")
        if numeric:
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"{host!r} is not an IPv4/IPv6 address") from None
    if port is None:
        if default_port is None:
            raise ValueError(f"expected HOST:PORT, got {v!r}")
        return host, default_port
    if not port.isdigit() or not min_port <= int(port) <= 65535:
        raise ValueError(f"bad port {port!r} in {v!r} ({min_port}..65535)")
    return host, int(port)


def format_address(host: str, port: int) -> str:
    """The inverse of parse_address: brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
