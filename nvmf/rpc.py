"""JSON-RPC methods of the NVMe-oF target (the only RPC-aware file of nvmf/).

Each method is declared in `METHODS` (srrs.rpcdef: typed params, help, the
phases it runs in); the server validates params against it before the
handler runs, so a handler reads `p[key]` (defaults filled in) or
`p.get(key)` (optional without a default). Handlers call the object model
and shape the answer; errors are the kinds of srrs.rpcdef, ValueError (a bad
value: -32602) or SrrsError (from the core: its errno picks the kind).
"""

from __future__ import annotations

import os

from ..rpcdef import MethodTable, NotConfigured
from ..rpcdef import P as _P
from . import config as C
from . import dhchap as DH
from .target import discover

METHODS = MethodTable()
_NQN = _P("nqn", help="subsystem NQN")


def _tgt(ctl):
    t = getattr(ctl, "nvmf", None)
    if t is None:
        raise NotConfigured("nvmf: the NVMe-oF target is not configured")
    return t


@METHODS.method("nvmf_subsystem_create", _NQN,
                _P("serial", default=None, help="serial number (default: derived from the NQN)"),
                _P("model", default=None, help="model number"),
                _P("allow_any_host", "bool", False, "serve any host NQN (no allow-list)"))
def subsystem_create(ctl, p: dict):
    """Create an NVMe-oF subsystem."""
    nqn = C.check_nqn(p["nqn"], "nqn")
    _tgt(ctl).add_subsystem(nqn, p.get("serial"), p.get("model"),
                            allow_any_host=p["allow_any_host"])
    return {"nqn": nqn}


@METHODS.method("nvmf_subsystem_delete", _NQN)
def subsystem_delete(ctl, p: dict):
    """Delete a subsystem (its controllers are torn down first)."""
    _tgt(ctl).remove_subsystem(p["nqn"])
    return True


@METHODS.method("nvmf_get_subsystems")
def get_subsystems(ctl, p: dict):
    """List subsystems with namespaces, hosts and ANA groups."""
    return _tgt(ctl).subsystems()


@METHODS.method("nvmf_subsystem_add_ns", _NQN, _P("bdev", help="the bdev (or volume) to export"),
                _P("nsid", "int", 0, "namespace ID (0: the lowest free one)"),
                _P("uuid", default=None, help="namespace UUID (default: derived from NQN and bdev)"),
                _P("ana_group", "int", 1, "ANA group of the namespace"))
def subsystem_add_ns(ctl, p: dict):
    """Add a bdev as a namespace; returns its nsid."""
    uuid = p.get("uuid")
    if uuid is not None:
        uuid = C.parse_uuid(uuid, "uuid")
    nsid = _tgt(ctl).add_namespace(p["nqn"], p["bdev"], nsid=p["nsid"], uuid=uuid,
                                   ana_group=p["ana_group"])
    return {"nsid": nsid}


@METHODS.method("nvmf_subsystem_remove_ns", _NQN, _P("nsid", "int", help="namespace ID"))
def subsystem_remove_ns(ctl, p: dict):
    """Remove a namespace (waits for its in-flight I/O)."""
    _tgt(ctl).remove_namespace(p["nqn"], p["nsid"])
    return True


_HOST = _P("host", help="host NQN")


@METHODS.method("nvmf_subsystem_add_host", _NQN, _HOST)
def subsystem_add_host(ctl, p: dict):
    """Allow a host NQN on a subsystem."""
    _tgt(ctl).add_host(p["nqn"], p["host"])
    return True


@METHODS.method("nvmf_subsystem_remove_host", _NQN, _HOST)
def subsystem_remove_host(ctl, p: dict):
    """Remove a host NQN from a subsystem's allow-list."""
    _tgt(ctl).remove_host(p["nqn"], p["host"])
    return True


@METHODS.method("nvmf_subsystem_allow_any_host", _NQN,
                _P("allow", "bool", True, "true: any host; false: only the allow-list"))
def subsystem_allow_any_host(ctl, p: dict):
    """Allow any host, or only the hosts on the list."""
    _tgt(ctl).set_allow_any_host(p["nqn"], p["allow"])
    return True


@METHODS.method("nvmf_subsystem_set_host_auth", _NQN, _HOST,
                _P("dhchap_secret_file", default=None,
                   help="absolute path of the host's DHHC-1 secret (mode 0600); omit to drop "
                        "authentication"),
                _P("dhchap_ctrl_secret_file", default=None,
                   help="the controller's secret: the controller authenticates too"),
                _P("dhchap_hash", default=DH.DEFAULT_HASH, choices=tuple(DH.HASHES),
                   help="hash function"),
                _P("dhchap_dhgroup", default=DH.DEFAULT_DHGROUP, choices=tuple(DH.DHGROUPS),
                   help="Diffie-Hellman group"))
def subsystem_set_host_auth(ctl, p: dict):
    """A host must authenticate with DH-HMAC-CHAP. Secrets are passed as file
    paths only and never returned."""
    nqn, host = p["nqn"], C.check_nqn(p["host"], "host")
    t = _tgt(ctl)
    f = p.get("dhchap_secret_file")
    if f is not None and not os.path.isabs(f):
        raise ValueError("dhchap_secret_file: expected an absolute file path")
    t.set_host_dhchap(nqn, host, f, p.get("dhchap_ctrl_secret_file"), p["dhchap_hash"],
                      p["dhchap_dhgroup"])
    return True


@METHODS.method("nvmf_subsystem_require_auth", _NQN,
                _P("require", "bool", True, "true: refuse hosts without a secret"))
def subsystem_require_auth(ctl, p: dict):
    """Refuse hosts without a DH-HMAC-CHAP secret (or stop refusing)."""
    _tgt(ctl).set_require_auth(p["nqn"], p["require"])
    return True


def _addr_port(p: dict, default_port) -> tuple:
    if p.get("address") is not None:
        lst = C.parse_listen(p["address"], "address")
        return lst.addr, lst.port
    if p.get("addr") is None:
        raise ValueError("address: required (or addr and port)")
    port = p["port"] if p.get("port") is not None else default_port
    if port is None:
        raise ValueError("port: required with addr")
    return p["addr"], port


_ADDRESS = (_P("address", default=None, help="HOST:PORT (or give addr and port)"),
            _P("addr", default=None, help="IP address"))


@METHODS.method("nvmf_listener_add", *_ADDRESS,
                _P("port", "int", None, "TCP port (default 4420; 0: any free port)"))
def listener_add(ctl, p: dict):
    """Listen for NVMe/TCP; returns the address and the port bound."""
    addr, port = _addr_port(p, 4420)
    return {"addr": addr, "port": _tgt(ctl).add_listener(addr, port)}


@METHODS.method("nvmf_listener_remove", *_ADDRESS, _P("port", "int", None, "TCP port"))
def listener_remove(ctl, p: dict):
    """Stop listening on an address."""
    addr, port = _addr_port(p, None)
    _tgt(ctl).remove_listener(addr, port)
    return True


@METHODS.method("nvmf_get_listeners")
def get_listeners(ctl, p: dict):
    """List NVMe/TCP listeners."""
    return _tgt(ctl).listeners()


@METHODS.method("nvmf_set_ana_state", _NQN, _P("ana_group", "int", 1, "ANA group"),
                _P("state", help="optimized, non_optimized, inaccessible or persistent_loss"))
def set_ana_state(ctl, p: dict):
    """Set an ANA group's state (hosts get an ANA-change notice)."""
    _tgt(ctl).set_ana_state(p["nqn"], p["ana_group"], p["state"])
    return True


@METHODS.method("nvmf_get_controllers", _P("nqn", default=None, help="only this subsystem's"),
                when="runtime")
def get_controllers(ctl, p: dict):
    """Connected controllers with per-queue stats."""
    nqn = p.get("nqn")
    return [c for c in _tgt(ctl).list_controllers() if nqn is None or c["subnqn"] == nqn]


@METHODS.method("nvmf_get_qpairs", when="runtime")
def get_qpairs(ctl, p: dict):
    """Connected queue pairs with their counters."""
    return _tgt(ctl).list_qpairs()


@METHODS.method("nvmf_get_stats", when="runtime")
def get_stats(ctl, p: dict):
    """Target counters: accepted, closed, proto_errors, kato_expired, ctrlrs, conns."""
    return _tgt(ctl).stats()


@METHODS.method("nvmf_discover", _P("addr", help="IP address of the target"),
                _P("port", "int", 4420, "TCP port"),
                _P("hostnqn", default=None, help="host NQN to ask as"), when="runtime")
def discover_rpc(ctl, p: dict):
    """Read a discovery log (this or another target)."""
    return discover(p["addr"], p["port"], p.get("hostnqn"))
