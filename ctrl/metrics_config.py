"""`[metrics]`: the optional Prometheus endpoint of a controller.

```toml
[metrics]
listen = "127.0.0.1:9464"   # HOST:PORT ([::1]:9464 for IPv6); port 0 picks a free port
# beyond loopback, a scraper proves itself: a bearer token and/or a client
# certificate (HTTPS); `insecure = true` serves anyone who reaches it
token_file = "/etc/srrs/metrics.token"     # Prometheus: authorization.credentials_file
tls_cert = "/etc/srrs/metrics.crt"         # HTTPS (with tls_key)
tls_key = "/etc/srrs/metrics.key"
client_ca = "/etc/srrs/scrapers-ca.crt"    # require a client certificate it signed
```
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any, Optional

from srrs.schema import SchemaError, address, setting, to_table
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
    token_file: str = setting("", nonempty=True, help="a scrape must carry `Authorization: "
                              "Bearer` with this file's token (mode 0600; Prometheus: "
                              "authorization.credentials_file); others get 401")
    tls_cert: str = setting("", nonempty=True, help="serve HTTPS with this certificate "
                            "(PEM, with tls_key)")
    tls_key: str = setting("", nonempty=True, help="the certificate's key (PEM, mode 0600)")
    client_ca: str = setting("", nonempty=True, help="HTTPS only to scrapers whose client "
                             "certificate this CA signed (PEM)")
    insecure: bool = setting(False, help="serve anyone who reaches a non-loopback listen "
                             "address (no token, no client certificate)")

    @property
    def host_port(self) -> tuple:
        return parse_address(self.listen)

    def _finish(self, raw: Any = None) -> "MetricsConfig":
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SchemaError(("tls_cert",), "tls_cert and tls_key go together")
        if self.client_ca and not self.tls_cert:
            raise SchemaError(("client_ca",), "needs HTTPS: tls_cert and tls_key")
        authed = bool(self.token_file or self.client_ca)
        if authed and self.insecure:
            raise SchemaError(("insecure",), "true, but a token_file or client_ca is "
                              "configured: remove one or the other")
        if not authed and not self.insecure and not _loopback(self.host_port[0]):
            raise SchemaError(("listen",), f"{self.listen} is reachable from the network: "
                              "scrapers must prove themselves (token_file, or client_ca with "
                              "tls_cert and tls_key), or insecure = true")
        for k in ("token_file", "tls_key"):
            path = getattr(self, k)
            if path:
                _private(k, path)
        for k in ("tls_cert", "client_ca"):
            path = getattr(self, k)
            if path and not os.path.isfile(path):
                raise SchemaError((k,), f"{path} does not exist")
        if self.token_file:
            self.token()
        return self

    def token(self) -> Optional[bytes]:
        """The bearer token (the file's first line), or None without one."""
        if not self.token_file:
            return None
        try:
            with open(self.token_file, "rb") as f:
                tok = f.read().strip()
        except OSError as e:
            raise SchemaError(("token_file",), f"{self.token_file}: {e.strerror}") from None
        if len(tok) < 16 or b"\n" in tok or any(c < 0x21 or c > 0x7e for c in tok):
            raise SchemaError(("token_file",), f"{self.token_file}: not a token (one line of "
                              "16 or more printable characters, no spaces)")
        return tok


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _private(key: str, path: str) -> None:
    try:
        st = os.stat(path)
    except OSError as e:
        raise SchemaError((key,), f"{path}: {e.strerror}") from None
    if st.st_mode & 0o077:
        raise SchemaError((key,), f"{path}: readable by others (mode {st.st_mode & 0o777:o}); "
                          "chmod 600 it")


def parse(section: Any, where: tuple = ()) -> MetricsConfig:
    return parse_schema(MetricsConfig, section, where)


def to_toml_dict(c: MetricsConfig) -> dict:
    return to_table(c, defaults=True)
