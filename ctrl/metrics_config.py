"""`[metrics]`: the optional Prometheus endpoint of a controller.

```toml
[metrics]
listen = "127.0.0.1:9464"   # HOST:PORT ([::1]:9464 for IPv6); port 0 picks a free port
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from srrs.schema import address, setting, to_table
from srrs.schema import parse as parse_schema
from srrs.units import parse_address

DEFAULT_LISTEN = "127.0.0.1:9464"

# metrics.py splits the listen address with this name: the one address parser.
split_host_port = parse_address


@dataclass(frozen=True)
class MetricsConfig:
    """[metrics]: serve Prometheus metrics over HTTP."""
    listen: str = setting(DEFAULT_LISTEN, check=address(), doc_type="address",
                          help="HOST:PORT or [IPv6]:PORT; port 0 picks a free port")

    @property
    def host_port(self) -> tuple:
        return parse_address(self.listen)


def parse(section: Any, where: tuple = ()) -> MetricsConfig:
    return parse_schema(MetricsConfig, section, where)


def to_toml_dict(c: MetricsConfig) -> dict:
    return to_table(c, defaults=True)
