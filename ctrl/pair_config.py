"""[pair] of a controller config, and the witness's own config file (docs/architecture.md, Pair).

    [pair]
    self = "a"                          # this controller's name
    peer = "b"                          # the other's name (default: identities are
                                        #   the coordination addresses)
    coord_bind = "tcp://127.0.0.1:5601" # our ZeroMQ endpoint for the peer
    peer_coord = "tcp://127.0.0.1:5602"
    mirror_listen = "127.0.0.1:4521"    # the C mirror link (TCP)
    peer_mirror = "127.0.0.1:4522"
    witness = "tcp://127.0.0.1:5600"
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
    witness_public_key = "keys/w.key"
    mirror_secret = "keys/mirror.secret" # the mirror link's secret (srrs keygen), the same
                                        #   file on both controllers, mode 0600
    mirror_allow = ["10.0.0.2"]         # optional: the only source addresses the mirror
                                        #   link accepts (numeric)
    insecure = false                    # true: no keys at all (an isolated network only)

The four key files go together; without them a pair refuses to start unless
`insecure = true`. With keys, `peer` names the controllers and the witness
knows each by its public key file's name (a.key is "a").

Defaults give < 5 s of host I/O pause on a controller death: 1 s to declare
the peer dead, one witness round trip for the lease, then the ANA change.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Optional

from .config import check_name, parse_size

_ZMQ_RE = re.compile(r"^(tcp://[^\s]+:\d+|ipc://\S+|inproc://\S+)$")
_HOSTPORT_RE = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})$")


@dataclass(frozen=True)
class PairVolume:
    replica: str          # the local bdev holding this controller's replica
    name: str             # the mirror bdev that exports use (may be the replica's name:
                          #   the replica then becomes internal, NAME.replica)


@dataclass(frozen=True)
class PairConfig:
    self_name: str
    coord_bind: str
    peer_coord: str
    mirror_listen: str
    peer_mirror: str
    witness: str
    peer: str = ""
    volumes: tuple = ()
    state_dir: str = ""
    stripe_size: int = 1 << 20
    heartbeat_ms: int = 200
    miss_count: int = 5
    lease_ms: int = 3000
    read_lease_ms: int = 500
    secret_key: str = ""
    peer_public_key: str = ""
    witness_public_key: str = ""
    peer_rpc_socket: str = ""   # the peer's JSON-RPC socket (for the console), "" unknown
    mirror_secret: str = ""     # file of the mirror link's 32-byte secret (hex)
    mirror_allow: tuple = ()    # numeric source addresses the mirror link accepts (): any
    insecure: bool = False      # no keys: nothing authenticated

    @property
    def me_id(self) -> str:
        return self.self_name if self.peer else self.coord_bind

    @property
    def peer_id(self) -> str:
        return self.peer if self.peer else self.peer_coord

    @property
    def pair_id(self) -> str:
        return "+".join(sorted((self.me_id, self.peer_id)))


KEYS = {"self", "peer", "coord_bind", "peer_coord", "mirror_listen", "peer_mirror", "witness",
        "volumes", "state_dir", "stripe_size", "heartbeat_ms", "miss_count", "lease_ms",
        "read_lease_ms",
        "secret_key", "peer_public_key", "witness_public_key", "peer_rpc_socket",
        "mirror_secret", "mirror_allow", "insecure"}
KEY_FILES = ("secret_key", "peer_public_key", "witness_public_key", "mirror_secret")


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


def _allow(d: dict) -> tuple:
    import ipaddress

    raw = d.get("mirror_allow", [])
    if not isinstance(raw, list) or len(raw) > 4:
        raise ValueError(f"mirror_allow: expected a list of at most 4 addresses, got {raw!r}")
    for a in raw:
        try:
            ipaddress.ip_address(a)
        except (ValueError, TypeError):
            raise ValueError(f"mirror_allow: {a!r} is not a numeric IP address") from None
    return tuple(raw)


def _keys(d: dict, peer: str) -> dict:
    """All four key files, or none and insecure = true."""
    keys = {k: _str(d, k, required=False) for k in KEY_FILES}
    insecure = d.get("insecure", False)
    if not isinstance(insecure, bool):
        raise ValueError(f"insecure: expected true or false, got {insecure!r}")
    if not any(keys.values()):
        if not insecure:
            raise ValueError("secret_key: a pair needs keys (secret_key, peer_public_key, "
                             "witness_public_key, mirror_secret: make them with `srrs keygen`),"
                             " or insecure = true on an isolated network")
        return keys
    if insecure:
        raise ValueError("insecure: true, but keys are configured: remove one or the other")
    if not all(keys.values()):
        missing = [k for k, v in keys.items() if not v][0]
        raise ValueError(f"{missing}: the keys go together: secret_key, peer_public_key, "
                         "witness_public_key and mirror_secret")
    for k, v in keys.items():
        if not os.path.exists(v):
            raise ValueError(f"{k}: {v} does not exist (make keys with `srrs keygen`)")
    st = os.stat(keys["secret_key"]).st_mode
    if st & 0o077:
        raise ValueError(f"secret_key: {keys['secret_key']}: readable by others "
                         f"(mode {st & 0o777:o}); chmod 600 it")
    try:
        read_mirror_secret(keys["mirror_secret"])
    except ValueError as e:
        raise ValueError(f"mirror_secret: {e}") from None
    if not peer:
        raise ValueError("peer: is required with keys (the witness knows each controller "
                         "by the name of its public key file)")
    return keys


def _str(d: dict, key: str, required: bool = True, default: str = "") -> str:
    if key not in d:
        if required:
            raise ValueError(f"{key}: is required")
        return default
    v = d[key]
    if not isinstance(v, str) or not v:
        raise ValueError(f"{key}: expected a non-empty string, got {v!r}")
    return v


def _int(d: dict, key: str, default: int, lo: int, hi: int) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{key}: expected an integer, got {v!r}")
    if not lo <= v <= hi:
        raise ValueError(f"{key}: must be in {lo}..{hi}, got {v}")
    return v


def _zmq(d: dict, key: str) -> str:
    v = _str(d, key)
    if not _ZMQ_RE.match(v):
        raise ValueError(f"{key}: {v!r} is not a ZeroMQ endpoint like tcp://HOST:PORT")
    return v


def _hostport(d: dict, key: str) -> str:
    v = _str(d, key)
    m = _HOSTPORT_RE.match(v)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ValueError(f"{key}: {v!r} is not HOST:PORT")
    return v


def split_hostport(v: str) -> tuple:
    m = _HOSTPORT_RE.match(v)
    if not m:
        raise ValueError(f"{v!r} is not HOST:PORT")
    return m.group(1).strip("[]"), int(m.group(2))


def _unix_socket(d: dict, key: str) -> str:
    v = _str(d, key, required=False)
    if v and ("\0" in v or len(v.encode()) > 107):
        raise ValueError(f"{key}: {v!r} is not a Unix socket path (at most 107 bytes, no NUL)")
    return v


def _volumes(d: dict) -> tuple:
    raw = d.get("volumes", [])
    if not isinstance(raw, list):
        raise ValueError(f"volumes: expected a list, got {raw!r}")
    out, seen = [], set()
    for i, v in enumerate(raw):
        if isinstance(v, str):
            vol = PairVolume(v, v)
        elif isinstance(v, dict):
            unknown = set(v) - {"replica", "name"}
            if unknown:
                raise ValueError(f"volumes[{i}].{sorted(unknown)[0]}: unknown key "
                                 "(allowed: name, replica)")
            if not isinstance(v.get("replica"), str):
                raise ValueError(f"volumes[{i}].replica: is required (a bdev name)")
            vol = PairVolume(v["replica"], v.get("name", v["replica"]))
        else:
            raise ValueError(f"volumes[{i}]: expected a bdev name or a table, got {v!r}")
        for n in (vol.replica, vol.name):
            try:
                check_name(n)
            except ValueError as e:
                raise ValueError(f"volumes[{i}]: {e}") from None
            if len(n) > 63 - len(".replica"):
                raise ValueError(f"volumes[{i}]: name {n!r} too long")
        if vol.replica in seen or vol.name in seen:
            raise ValueError(f"volumes[{i}]: {vol.replica!r} is listed twice")
        seen |= {vol.replica, vol.name}
        out.append(vol)
    return tuple(out)


def parse(d: dict) -> PairConfig:
    if not isinstance(d, dict):
        raise ValueError("must be a table")
    for k in d:
        if k not in KEYS:
            raise ValueError(f"{k}: unknown key (allowed: {', '.join(sorted(KEYS))})")
    me = _str(d, "self")
    check_name(me)
    peer = _str(d, "peer", required=False)
    if peer:
        check_name(peer)
        if peer == me:
            raise ValueError(f"peer: must differ from self ({me!r})")
    coord_bind, peer_coord = _zmq(d, "coord_bind"), _zmq(d, "peer_coord")
    if coord_bind == peer_coord:
        raise ValueError("peer_coord: must differ from coord_bind")
    ml, pm = _hostport(d, "mirror_listen"), _hostport(d, "peer_mirror")
    if ml == pm:
        raise ValueError("peer_mirror: must differ from mirror_listen")
    try:
        stripe = parse_size(d.get("stripe_size", 1 << 20))
    except ValueError as e:
        raise ValueError(f"stripe_size: {e}") from None
    if stripe < 65536 or stripe > (64 << 20) or stripe & (stripe - 1):
        raise ValueError(f"stripe_size: must be a power of two in 64KiB..64MiB, got {stripe}")
    hb = _int(d, "heartbeat_ms", 200, 10, 60000)
    miss = _int(d, "miss_count", 5, 2, 1000)
    lease = _int(d, "lease_ms", 3000, 100, 10000)  # the witness grants at most 10 s
    if lease < 2 * hb:
        raise ValueError(f"lease_ms: must be at least two heartbeats ({2 * hb}), got {lease}")
    read_lease = _int(d, "read_lease_ms", min(500, lease // 2), 20, 10000)
    if read_lease * 2 > lease:
        # The wait for it comes out of the witness lease of the side going SOLO.
        raise ValueError(f"read_lease_ms: must be at most half of lease_ms ({lease // 2}), "
                         f"got {read_lease}")
    keys = _keys(d, peer)
    key = hashlib.sha256("\0".join((me, peer, coord_bind, peer_coord, ml, pm)).encode())
    # Two pairs on one host whose controllers share a name must not share state.
    state_dir = _str(d, "state_dir", required=False,
                     default=f"/var/tmp/srrs-pair-{me}-{key.hexdigest()[:12]}")
    return PairConfig(self_name=me, peer=peer, coord_bind=coord_bind, peer_coord=peer_coord,
                      mirror_listen=ml, peer_mirror=pm, witness=_zmq(d, "witness"),
                      volumes=_volumes(d), state_dir=state_dir, stripe_size=stripe,
                      heartbeat_ms=hb, miss_count=miss, lease_ms=lease,
                      read_lease_ms=read_lease, peer_rpc_socket=_unix_socket(d, "peer_rpc_socket"),
                      mirror_allow=_allow(d), insecure=d.get("insecure", False), **keys)


def to_toml_dict(c: PairConfig) -> dict:
    d: dict = {"self": c.self_name, "coord_bind": c.coord_bind, "peer_coord": c.peer_coord,
               "mirror_listen": c.mirror_listen, "peer_mirror": c.peer_mirror,
               "witness": c.witness, "state_dir": c.state_dir, "stripe_size": c.stripe_size,
               "heartbeat_ms": c.heartbeat_ms, "miss_count": c.miss_count,
               "lease_ms": c.lease_ms, "read_lease_ms": c.read_lease_ms}
    if c.peer:
        d["peer"] = c.peer
    d["volumes"] = [v.replica if v.name == v.replica else
                    {"replica": v.replica, "name": v.name} for v in c.volumes]
    for k in KEY_FILES + ("peer_rpc_socket",):
        if getattr(c, k):
            d[k] = getattr(c, k)
    if c.mirror_allow:
        d["mirror_allow"] = list(c.mirror_allow)
    if c.insecure:
        d["insecure"] = True
    return d


# ---- the witness's file: configs/witness.toml ------------------------------------

@dataclass(frozen=True)
class WitnessConfig:
    bind: str
    state: str = ""
    secret_key: str = ""
    authorized_keys: str = ""   # directory of the controllers' public keys
    max_lease_ms: int = 0       # longest lease granted (0: 10 s); also the start-up wait
    insecure: bool = False      # run without keys: anyone who reaches it is believed


def parse_witness(d: dict) -> WitnessConfig:
    allowed = {"bind", "state", "secret_key", "authorized_keys", "max_lease_ms", "insecure"}
    for k in d:
        if k not in allowed:
            raise ValueError(f"{k}: unknown key (allowed: {', '.join(sorted(allowed))})")
    return WitnessConfig(bind=_zmq(d, "bind"), state=_str(d, "state", False),
                         secret_key=_str(d, "secret_key", False),
                         authorized_keys=_str(d, "authorized_keys", False),
                         max_lease_ms=_int(d, "max_lease_ms", 0, 0, 10000),
                         insecure=_bool(d, "insecure"))


def _bool(d: dict, key: str) -> bool:
    v = d.get(key, False)
    if not isinstance(v, bool):
        raise ValueError(f"{key}: expected true or false, got {v!r}")
    return v


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
