"""`[cluster]`: this controller is a member of a cluster whose shared state
lives in etcd (docs/architecture.md, Cluster).

```toml
[cluster]
etcd = ["http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://10.0.0.3:2379"]
name = "a"                  # this controller's member name (default: [pair] self)
prefix = "/srrs/"           # every key of the cluster lives under it
zone = "z1"                 # optional label placement may use
pool = "p0"                 # the pool of the cluster volumes' replicas (default: the only one)
lease_s = 5                 # the member key's lease: gone this long after a death
drain_s = 2.0               # a volume leaving this controller: its mirror stays this long
                            #   after its export went, for the host I/O still in flight
move_port = 7400            # volume moves: a destination controller's move links listen on
                            #   its [pair] mirror_listen host, port move_port + the slot
ca_cert = "/etc/srrs/etcd-ca.pem"   # optional TLS to etcd
cert = "/etc/srrs/etcd-client.pem"
key = "/etc/srrs/etcd-client.key"
user = "srrs"               # optional etcd user; the password is read from password_file
password_file = "/etc/srrs/etcd.password"
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from srrs.schema import SchemaError, check_name, setting, to_table
from srrs.schema import parse as parse_schema


def _endpoint(v: str) -> str:
    if not (v.startswith("http://") or v.startswith("https://")) or len(v.split("://", 1)[1]) < 3:
        raise ValueError(f"{v!r} is not an etcd endpoint (use http://HOST:PORT or https://HOST:PORT)")
    return v


def _prefix(v: str) -> str:
    if not v.startswith("/"):
        raise ValueError(f"{v!r} must start with '/'")
    return v if v.endswith("/") else v + "/"


@dataclass(frozen=True)
class ClusterConfig:
    """[cluster]: register in etcd; etcd is the pair's witness and holds the catalog."""
    etcd: Tuple[str, ...] = setting(nonempty=True, each=_endpoint,
                                    help="etcd client URLs (every member, or a load balancer)")
    name: str = setting("", check=lambda v: check_name(v) if v else v,
                        help="this controller's member name (default: [pair] self)")
    prefix: str = setting("/srrs/", check=_prefix, help="key prefix of the cluster in etcd")
    zone: str = setting("", help="a label placement may use")
    pool: str = setting("", help="the pool the replicas of cluster volumes go to "
                                 "(default: the only pool)")
    lease_s: int = setting(5, range=(1, 60), help="the member key's etcd lease, seconds")
    move_port: int = setting(7400, range=(1, 64535),
                             help="volume moves: a destination controller accepts a move's "
                                  "link on its [pair] mirror_listen host at this port plus the "
                                  "volume's mirror slot (0..999)")
    drain_s: float = setting(2.0, range=(0.0, 600.0),
                             help="a volume leaving this controller (deleted, moved away, "
                                  "grown): its mirror and replica stay this long after its "
                                  "export went, for host I/O still in flight, seconds")
    timeout_s: float = setting(1.0, range=(0.05, 30.0), help="one etcd request, seconds")
    ca_cert: str = setting("", help="CA file of etcd's TLS certificates")
    cert: str = setting("", help="client certificate for etcd (with key)")
    key: str = setting("", help="client key for etcd (with cert)")
    user: str = setting("", help="etcd user (with password_file)")
    password_file: str = setting("", help="file holding the etcd user's password (mode 0600)")

    def _finish(self, raw: Any = None) -> "ClusterConfig":
        if bool(self.cert) != bool(self.key):
            raise SchemaError(("cert",), "cert and key go together")
        if bool(self.user) != bool(self.password_file):
            raise SchemaError(("user",), "user and password_file go together")
        return self

    def password(self) -> Optional[str]:
        if not self.password_file:
            return None
        st = os.stat(self.password_file)
        if st.st_mode & 0o077:
            raise ValueError(f"{self.password_file}: others may read it (chmod 600)")
        with open(self.password_file) as f:
            return f.read().strip()


def parse(section: Any, where: tuple = ()) -> ClusterConfig:
    return parse_schema(ClusterConfig, section, where)


def to_toml_dict(c: ClusterConfig) -> dict:
    return to_table(c)
