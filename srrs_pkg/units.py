"""Units shared by the config files, the RPC parameters and the command line.

A leaf module: it imports nothing of ours, so every folder may import it.
"""

from __future__ import annotations

import re
from typing import Any

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
