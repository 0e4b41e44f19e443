"""[pair] of a controller config, and the witness's own config file (docs/architecture.md, Pair).

    [pair]
    self = "a"                          # this controller's name
    peer = "b"                          # the other's name (default: identities are
                                        #   the coordination addresses)
    coord_bind = "tcp://127.0.0.1:5601" # our ZeroMQ endpoint for the peer
    peer_coord = "tcp://127.0.0.1:5602"
    mirror_listen = "127.0.0.1:4521"    # the C mirror link (TCP)
    peer_mirror = "127.0.0.1:4522"
    witness = "tcp://127.0.0.1:5600"    # `srrs witness`; none with a [cluster] section,
                                        #   whose etcd is then the pair's witness
    peer_rpc_socket = "/tmp/srrs-b.sock" # optional: the peer's JSON-RPC socket, so that
                                        #   `srrs console --pair FILE` finds both controllers
    volumes = ["v0"]                    # paired volumes: the mirror bdev takes the name
                                        #   "v0" (exports use it); the replica becomes
                                        #   internal ("v0.replica", never exportable);
                                        #   or { replica = "v0", name = "pv0" }
    state_dir = "/var/tmp/srrs-pair-a"  # generations and dirty bitmaps (persisted; locked
                                        #   by the controller using it). Default:
                                        #   /var/tmp/srrs-pair-<self>-<pair key>, the key a
                                        #   digest of both names and addresses
    stripe_size = "1MiB"
    heartbeat_ms = 200                  # peer dead after heartbeat_ms * miss_count
    miss_count = 5
    lease_ms = 3000                     # witness lease
    read_lease_ms = 500                 # read lease the peer grants while paired (a
                                        #   PAIRED replica serves reads only under it; a
                                        #   controller that lost its peer acks nothing
                                        #   alone until the one it granted ran out)
    secret_key = "keys/a.key_secret"    # CURVE (srrs keygen): coordination and witness
    peer_public_key = "keys/b.key"
    witness_public_key = "keys/w.key"   # (not with etcd as the witness)
    mirror_secret = "keys/mirror.secret" # the mirror link's secret (srrs keygen), the same
                                        #   file on both controllers, mode 0600
    mirror_allow = ["10.0.0.2"]         # optional: the only source addresses the mirror
                                        #   link accepts (numeric)
    name = "a+b"                        # optional: the pair's name (default: both names,
                                        #   sorted, joined by '+'); a replacement server
                                        #   keeps the pair's old name (`srrs cluster replace`)
    insecure = false                    # true: no keys at all (an isolated network only)

The four key files go together; without them a pair refuses to start unless
`insecure = true`. With keys, `peer` names the controllers and the witness
knows each by its public key file's name (a.key is "a").

Defaults give < 5 s of host I/O pause on a controller death: 1 s to declare
the peer dead, one witness round trip for the lease, then the ANA change.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import dataclass, replace
from typing import Any, Optional, Tuple

from srrs.schema import (
    SchemaError,
    Size,
    address,
    at,
    check_name,
    power_of_two,
    setting,
    to_table,
    unix_socket,
)
from srrs.schema import parse as parse_schema
from srrs.units import parse_address

KEY_FILES = ("secret_key", "peer_public_key", "witness_public_key", "mirror_secret")
_REPLICA = ".replica"


def check_zmq(v: str) -> None:
    """A ZeroMQ endpoint: tcp://HOST:PORT (host may be *), ipc://PATH, inproc://NAME."""
    scheme, sep, rest = v.partition("://")
    try:
        if not sep or not rest or any(c.isspace() for c in rest):
            raise ValueError
        if scheme == "tcp":
            parse_address(rest)
        elif scheme not in ("ipc", "inproc"):
            raise ValueError
    except ValueError:
        raise ValueError(f"{v!r} is not a ZeroMQ endpoint like tcp://HOST:PORT") from None


def _volume_name(v: str) -> None:
    check_name(v)
    if len(v) > 63 - len(_REPLICA):
        raise ValueError(f"name {v!r} too long")


@dataclass(frozen=True)
class PairVolume:
    """A paired volume: `"v0"` or `{ replica = "v0", name = "pv0" }`."""
    replica: str = setting(check=_volume_name, help="the local bdev holding this "
                           "controller's replica")
    name: str = setting("", check=_volume_name, help="the mirror bdev exports use (default: "
                        "the replica's name; the replica then becomes internal, NAME.replica)")

    def _finish(self, raw: dict) -> "PairVolume":
        return self if self.name else replace(self, name=self.replica)

    def _table(self, t: dict) -> dict:
        return {"replica": self.replica} if self.name == self.replica else t


def _volume_tables(raw: Any) -> Any:
    if not isinstance(raw, list):
        return raw
    out = []
    for i, v in enumerate(raw):
        if not isinstance(v, (str, dict)):
            raise SchemaError((i,), f"expected a bdev name or a table, got {v!r}")
        out.append({"replica": v} if isinstance(v, str) else v)
    return out


def _check_volumes(vols: tuple) -> None:
    seen: set = set()
    for i, v in enumerate(vols):
        if v.replica in seen or v.name in seen:
            raise SchemaError((i,), f"{v.replica!r} is listed twice")
        seen |= {v.replica, v.name}


def _pair_name(v: str) -> None:
    """A pair's name: names joined by '+' ("a+b", the default form)."""
    if len(v) > 127:
        raise ValueError(f"pair name {v!r} too long")
    for part in v.split("+"):
        check_name(part)


def _check_allow(v: tuple) -> None:
    if len(v) > 4:
        raise ValueError(f"expected a list of at most 4 addresses, got {list(v)!r}")
    for a in v:
        try:
            ipaddress.ip_address(a)
        except ValueError:
            raise ValueError(f"{a!r} is not a numeric IP address") from None


def _zmq(help: str, default: Any = ...):
    kw = {} if default is ... else {"default": default}
    return setting(nonempty=True, check=check_zmq, help=help, doc_type="ZeroMQ endpoint", **kw)


@dataclass(frozen=True)
class PairConfig:
    """[pair]: this controller's half of an active/active pair."""
    self_name: str = setting(key="self", nonempty=True, check=check_name,
                             help="this controller's name")
    coord_bind: str = _zmq("our ZeroMQ endpoint for the peer")
    peer_coord: str = _zmq("the peer's coordination endpoint")
    mirror_listen: str = setting(nonempty=True, check=address(min_port=1), doc_type="address",
                                 help="the C mirror link's TCP HOST:PORT")
    peer_mirror: str = setting(nonempty=True, check=address(min_port=1), doc_type="address",
                               help="the peer's mirror link HOST:PORT")
    witness: str = _zmq("the witness's endpoint (`srrs witness`); none with [cluster], whose "
                        "etcd is then the witness", default="")
    peer: str = setting("", nonempty=True, check=check_name, help="the other's name (default: "
                        "identities are the coordination addresses); required with keys")
    volumes: Tuple[PairVolume, ...] = setting((), coerce=_volume_tables, check=_check_volumes,
                                              help="paired volumes")
    state_dir: str = setting("", nonempty=True, doc_default="(derived)", help="generations and dirty bitmaps (default: "
                             "/var/tmp/srrs-pair-SELF-KEY, KEY a digest of both names and "
                             "addresses)")
    stripe_size: Size = setting(1 << 20, check=power_of_two(64 << 10, 64 << 20))
    orderer: str = setting("", nonempty=True, check=check_name, doc_default="(split)",
                           help="the controller (self or peer) that orders every write, "
                           "for hosts that write through that one: the other forwards all of "
                           "its writes; default: each orders every other stripe. The same on "
                           "both (a peer set otherwise is refused)")
    heartbeat_ms: int = setting(200, range=(10, 60000),
                                help="the peer is dead after heartbeat_ms * miss_count")
    miss_count: int = setting(5, range=(2, 1000))
    lease_ms: int = setting(3000, range=(100, 10000), help="witness lease (at least two "
                            "heartbeats; the witness grants at most 10 s)")
    read_lease_ms: int = setting(500, range=(20, 10000), doc_default="`500` or lease_ms / 2",
                                 help="read lease the peer grants while paired, at most half "
                                 "of lease_ms")
    vhost_hold_ms: int = setting(120000, range=(0, 86400000),
                                 help="how long a VM's (vhost-user's) I/O waits while this "
                                 "controller cannot serve (fenced, starting) before it fails: "
                                 "held, and started again when it can (a VM has no other "
                                 "path); 0 fails it at once, as NVMe/TCP's (ANA: the host "
                                 "turns to the peer)")
    secret_key: str = setting("", nonempty=True, help="CURVE secret key (srrs keygen), mode 0600")
    peer_public_key: str = setting("", nonempty=True, help="the peer's CURVE public key")
    witness_public_key: str = setting("", nonempty=True, help="the witness's CURVE public key")
    peer_rpc_socket: str = setting("", nonempty=True, check=unix_socket,
                                   help="the peer's JSON-RPC socket (for the console)")
    mirror_secret: str = setting("", nonempty=True, help="the mirror link's secret file "
                                 "(srrs keygen), the same on both, mode 0600")
    mirror_allow: Tuple[str, ...] = setting((), check=_check_allow, help="the only numeric "
                                            "source addresses the mirror link accepts")
    insecure: bool = setting(False, help="no keys at all (an isolated network only)")
    name: str = setting("", nonempty=True, check=_pair_name, help="the pair's name: its solo "
                        "lease and, with [cluster], its catalog name (default: both controllers' "
                        "names, sorted, joined by '+'; kept when a server is replaced)")

    @property
    def me_id(self) -> str:
        return self.self_name if self.peer else self.coord_bind

    @property
    def peer_id(self) -> str:
        return self.peer if self.peer else self.peer_coord

    @property
    def sole_orderer(self) -> int:
        """srrs_mirror_link_opts.sole_orderer: 0 split, 1 + the orderer's node
        (node 0 is the smaller of the two identities)."""
        if not self.orderer:
            return 0
        ident = self.me_id if self.orderer == self.self_name else self.peer_id
        return 1 if ident == min(self.me_id, self.peer_id) else 2

    @property
    def pair_id(self) -> str:
        return self.name or "+".join(sorted((self.me_id, self.peer_id)))

    def _finish(self, raw: dict) -> "PairConfig":
        if self.peer == self.self_name:
            raise SchemaError(("peer",), f"must differ from self ({self.self_name!r})")
        if self.coord_bind == self.peer_coord:
            raise SchemaError(("peer_coord",), "must differ from coord_bind")
        if self.mirror_listen == self.peer_mirror:
            raise SchemaError(("peer_mirror",), "must differ from mirror_listen")
        if self.orderer and self.orderer not in (self.self_name, self.peer):
            raise SchemaError(("orderer",), f"must be {self.self_name!r} (self) or the peer"
                              + (f" ({self.peer!r})" if self.peer else " (name it: peer)")
                              + f", got {self.orderer!r}")
        lease, hb = self.lease_ms, self.heartbeat_ms
        if lease < 2 * hb:
            raise SchemaError(("lease_ms",), f"must be at least two heartbeats ({2 * hb}), "
                              f"got {lease}")
        c = self if "read_lease_ms" in raw else replace(self, read_lease_ms=min(500, lease // 2))
        if c.read_lease_ms * 2 > lease:
            # The wait for it comes out of the witness lease of the side going SOLO.
            raise SchemaError(("read_lease_ms",), f"must be at most half of lease_ms "
                              f"({lease // 2}), got {c.read_lease_ms}")
        _check_keys(c)
        if not c.state_dir:
            key = hashlib.sha256("\0".join((c.self_name, c.peer, c.coord_bind, c.peer_coord,
                                             c.mirror_listen, c.peer_mirror)).encode())
            # Two pairs on one host whose controllers share a name must not share state.
            c = replace(c, state_dir=f"/var/tmp/srrs-pair-{c.self_name}-{key.hexdigest()[:12]}")
        return c


def read_mirror_secret(path: str) -> bytes:
    """The 32 bytes of a mirror secret file (64 hex digits, as `srrs keygen`
    writes it); refused when others may read it, like an ssh key."""
    try:
        st = os.stat(path)
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: {e}") from None
    if st.st_mode & 0o077:
        raise ValueError(f"{path}: readable by others (mode {st.st_mode & 0o777:o}); "
                         "chmod 600 it")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ValueError(f"{path}: not a mirror secret (64 hex digits; make one with "
                         "`srrs keygen`)")
    return key


def check_witness(pair: Optional[PairConfig], cluster: Any) -> None:
    """One witness: `srrs witness` (pair.witness) or, with a [cluster] section,
    etcd (docs/architecture.md, Cluster). Both is refused, not ranked: an
    operator who moved a pair to etcd must not have its old witness grant a
    lease as well."""
    if pair is None:
        return
    if cluster is not None and pair.witness:
        raise SchemaError(("pair", "witness"), "remove it: with a [cluster] section etcd is "
                          "the pair's witness")
    if cluster is None and not pair.witness:
        raise SchemaError(("pair", "witness"), "is required (the `srrs witness` endpoint), "
                          "unless a [cluster] section makes etcd the witness")
    if cluster is not None and pair.witness_public_key:
        raise SchemaError(("pair", "witness_public_key"), "remove it: etcd is the pair's "
                          "witness ([cluster] has its TLS settings)")


def _check_keys(c: PairConfig) -> None:
    """All four key files (three with etcd as the witness: no witness key), or
    none and insecure = true."""
    keys = {k: getattr(c, k) for k in KEY_FILES if c.witness or k != "witness_public_key"}
    if not any(keys.values()):
        if not c.insecure:
            raise SchemaError(("secret_key",), "a pair needs keys (secret_key, peer_public_key,"
                              " witness_public_key, mirror_secret: make them with `srrs "
                              "keygen`), or insecure = true on an isolated network")
        return
    if c.insecure:
        raise SchemaError(("insecure",), "true, but keys are configured: remove one or the other")
    if not all(keys.values()):
        missing = [k for k, v in keys.items() if not v][0]
        raise SchemaError((missing,), "the keys go together: secret_key, peer_public_key, "
                          "witness_public_key (with a witness) and mirror_secret")
    for k, v in keys.items():
        if not os.path.exists(v):
            raise SchemaError((k,), f"{v} does not exist (make keys with `srrs keygen`)")
    st = os.stat(keys["secret_key"]).st_mode
    if st & 0o077:
        raise SchemaError(("secret_key",), f"{keys['secret_key']}: readable by others "
                          f"(mode {st & 0o777:o}); chmod 600 it")
    at(("mirror_secret",), read_mirror_secret, keys["mirror_secret"])
    if not c.peer:
        raise SchemaError(("peer",), "is required with keys (the witness knows each "
                          "controller by the name of its public key file)")


def parse(d: Any, where: tuple = ()) -> PairConfig:
    """The [pair] table; raises SchemaError, a ValueError reading "key: message"."""
    return parse_schema(PairConfig, d, where)


def to_toml_dict(c: PairConfig) -> dict:
    return to_table(c, defaults=True)


# ---- the witness's file: configs/witness.toml ------------------------------------

@dataclass(frozen=True)
class WitnessConfig:
    """[witness] of the witness's own file."""
    bind: str = _zmq("the endpoint the controllers reach")
    state: str = setting("", nonempty=True, help="file of the granted leases")
    secret_key: str = setting("", nonempty=True, help="the witness's CURVE secret key")
    authorized_keys: str = setting("", nonempty=True, help="directory of the controllers' "
                                   "public keys")
    max_lease_ms: int = setting(0, range=(0, 10000), help="longest lease granted (0: 10 s); "
                                "also the start-up wait")
    insecure: bool = setting(False, help="run without keys: anyone who reaches it is believed")


def parse_witness(d: Any) -> WitnessConfig:
    return parse_schema(WitnessConfig, d)


def parse_witness_file(path: str) -> WitnessConfig:
    import toml

    try:
        with open(path, encoding="utf-8") as f:
            raw = toml.load(f)
    except (OSError, toml.TomlDecodeError) as e:
        raise ValueError(f"{path}: {e}") from None
    sec: Optional[dict] = raw.get("witness")
    if not isinstance(sec, dict) or set(raw) != {"witness"}:
        raise ValueError(f"{path}: needs exactly one [witness] table")
    try:
        return parse_witness(sec)
    except ValueError as e:
        raise ValueError(f"{path}: witness.{e}") from None
