"""`[metrics]`: the optional Prometheus endpoint of a controller.

```toml
[metrics]
listen = "127.0.0.1:9464"   # HOST:PORT ([::1]:9464 for IPv6); port 0 picks a free port
```
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_LISTEN = "127.0.0.1:9464"


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = DEFAULT_LISTEN

    @property
    def host_port(self) -> tuple:
        return split_host_port(self.listen)


def split_host_port(addr: str) -> tuple:
    """("127.0.0.1", 9464) from "127.0.0.1:9464"; ("::1", 9464) from "[::1]:9464"."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {addr!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address goes in brackets: [{host}]:{port}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bad port {port!r} in {addr!r} (0..65535)")
    return host, int(port)


def parse(section: dict) -> MetricsConfig:
    if not isinstance(section, dict):
        raise ValueError("must be a table: [metrics]")
    for k in section:
        if k != "listen":
            raise ValueError(f"{k}: unknown key (allowed: listen)")
    listen = section.get("listen", DEFAULT_LISTEN)
    if not isinstance(listen, str):
        raise ValueError(f"listen: expected a string HOST:PORT, got {type(listen).__name__} {listen!r}")
    try:
        split_host_port(listen)
    except ValueError as e:
        raise ValueError(f"listen: {e}") from None
    return MetricsConfig(listen=listen)


def to_toml_dict(c: MetricsConfig) -> dict:
    return {"listen": c.listen}
