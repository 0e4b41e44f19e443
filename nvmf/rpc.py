"""JSON-RPC methods of the NVMe-oF target (the only RPC-aware file of nvmf/).

Each handler is `handler(ctl, params) -> JSON-able result`, where `ctl.nvmf`
is the running `NvmfTarget` and `ctl.core` the `Core`. Handlers only decode
params, call the object model and shape the answer; errors are ValueError
(bad params), KeyError (unknown object) or SrrsError (from the core).
`WHEN` says whether a method may run at start-up ("startup"), at run time
("runtime") or both.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict

from . import config as C
from . import dhchap as DH
from .target import discover


def _p(params: dict, key: str, typ=str, default: Any = ...):
    if params is None:
        params = {}
    if key not in params:
        if default is ...:
            raise ValueError(f"{key}: required")
        return default
    v = params[key]
    if typ is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise ValueError(f"{key}: expected an integer")
    if typ is not int and not isinstance(v, typ):
        raise ValueError(f"{key}: expected {typ.__name__}")
    return v


def _tgt(ctl):
    t = getattr(ctl, "nvmf", None)
    if t is None:
        raise ValueError("nvmf: the NVMe-oF target is not configured")
    return t


def subsystem_create(ctl, params: dict):
    """Create an NVMe-oF subsystem: {nqn, serial?, model?, allow_any_host?}."""
    nqn = C.check_nqn(_p(params, "nqn"), "nqn")
    _tgt(ctl).add_subsystem(nqn, _p(params, "serial", str, None), _p(params, "model", str, None),
                            allow_any_host=_p(params, "allow_any_host", bool, False))
    return {"nqn": nqn}


def subsystem_delete(ctl, params: dict):
    """Delete a subsystem (its controllers are torn down first): {nqn}."""
    _tgt(ctl).remove_subsystem(_p(params, "nqn"))
    return True


def get_subsystems(ctl, params: dict):
    """List subsystems with namespaces, hosts and ANA groups."""
    return _tgt(ctl).subsystems()


def subsystem_add_ns(ctl, params: dict):
    """Add a bdev as a namespace: {nqn, bdev, nsid?, uuid?, ana_group?} -> {nsid}."""
    uuid = _p(params, "uuid", str, None)
    if uuid is not None:
        uuid = C.parse_uuid(uuid, "uuid")
    nsid = _tgt(ctl).add_namespace(_p(params, "nqn"), _p(params, "bdev"),
                                   nsid=_p(params, "nsid", int, 0), uuid=uuid,
                                   ana_group=_p(params, "ana_group", int, 1))
    return {"nsid": nsid}


def subsystem_remove_ns(ctl, params: dict):
    """Remove a namespace (waits for its in-flight I/O): {nqn, nsid}."""
    _tgt(ctl).remove_namespace(_p(params, "nqn"), _p(params, "nsid", int))
    return True


def subsystem_add_host(ctl, params: dict):
    """Allow a host NQN on a subsystem: {nqn, host}."""
    _tgt(ctl).add_host(_p(params, "nqn"), _p(params, "host"))
    return True


def subsystem_remove_host(ctl, params: dict):
    """Remove a host NQN from a subsystem's allow-list: {nqn, host}."""
    _tgt(ctl).remove_host(_p(params, "nqn"), _p(params, "host"))
    return True


def subsystem_allow_any_host(ctl, params: dict):
    """Allow any host (or only the list): {nqn, allow}."""
    _tgt(ctl).set_allow_any_host(_p(params, "nqn"), _p(params, "allow", bool, True))
    return True


def subsystem_set_host_auth(ctl, params: dict):
    """A host must authenticate with DH-HMAC-CHAP: {nqn, host, dhchap_secret_file
    (mode 0600; omit to drop authentication), dhchap_ctrl_secret_file?, dhchap_hash?,
    dhchap_dhgroup?}. Secrets are passed as file paths only and never returned."""
    nqn, host = _p(params, "nqn"), C.check_nqn(_p(params, "host"), "host")
    t = _tgt(ctl)
    f = _p(params, "dhchap_secret_file", str, None)
    if f is not None and not os.path.isabs(f):
        raise ValueError("dhchap_secret_file: expected an absolute file path")
    t.set_host_dhchap(nqn, host, f, _p(params, "dhchap_ctrl_secret_file", str, None),
                      _p(params, "dhchap_hash", str, DH.DEFAULT_HASH),
                      _p(params, "dhchap_dhgroup", str, DH.DEFAULT_DHGROUP))
    return True


def subsystem_require_auth(ctl, params: dict):
    """Refuse hosts without a DH-HMAC-CHAP secret (or stop refusing): {nqn, require}."""
    _tgt(ctl).set_require_auth(_p(params, "nqn"), _p(params, "require", bool, True))
    return True


def listener_add(ctl, params: dict):
    """Listen for NVMe/TCP: {address: "HOST:PORT"} or {addr, port} -> {addr, port}."""
    if "address" in params:
        lst = C.parse_listen(_p(params, "address"), "address")
        addr, port = lst.addr, lst.port
    else:
        addr, port = _p(params, "addr"), _p(params, "port", int, 4420)
    return {"addr": addr, "port": _tgt(ctl).add_listener(addr, port)}


def listener_remove(ctl, params: dict):
    """Stop listening: {address} or {addr, port}."""
    if "address" in params:
        lst = C.parse_listen(_p(params, "address"), "address")
        addr, port = lst.addr, lst.port
    else:
        addr, port = _p(params, "addr"), _p(params, "port", int)
    _tgt(ctl).remove_listener(addr, port)
    return True


def get_listeners(ctl, params: dict):
    """List NVMe/TCP listeners."""
    return _tgt(ctl).listeners()


def set_ana_state(ctl, params: dict):
    """Set an ANA group's state (optimized|non_optimized|inaccessible|persistent_loss): {nqn, ana_group, state}."""
    _tgt(ctl).set_ana_state(_p(params, "nqn"), _p(params, "ana_group", int, 1),
                            _p(params, "state"))
    return True


def get_controllers(ctl, params: dict):
    """Connected controllers with per-queue stats: {nqn?}."""
    nqn = _p(params or {}, "nqn", str, None)
    return [c for c in _tgt(ctl).list_controllers() if nqn is None or c["subnqn"] == nqn]


def get_qpairs(ctl, params: dict):
    """Connected queue pairs with their counters."""
    return _tgt(ctl).list_qpairs()


def get_stats(ctl, params: dict):
    """Target counters: accepted, closed, proto_errors, kato_expired, ctrlrs, conns."""
    return _tgt(ctl).stats()


def discover_rpc(ctl, params: dict):
    """Read a discovery log (this or another target): {addr, port?, hostnqn?}."""
    return discover(_p(params, "addr"), _p(params, "port", int, 4420),
                    _p(params, "hostnqn", str, None))


METHODS: Dict[str, Callable] = {
    "nvmf_subsystem_create": subsystem_create,
    "nvmf_subsystem_delete": subsystem_delete,
    "nvmf_get_subsystems": get_subsystems,
    "nvmf_subsystem_add_ns": subsystem_add_ns,
    "nvmf_subsystem_remove_ns": subsystem_remove_ns,
    "nvmf_subsystem_add_host": subsystem_add_host,
    "nvmf_subsystem_remove_host": subsystem_remove_host,
    "nvmf_subsystem_allow_any_host": subsystem_allow_any_host,
    "nvmf_subsystem_set_host_auth": subsystem_set_host_auth,
    "nvmf_subsystem_require_auth": subsystem_require_auth,
    "nvmf_listener_add": listener_add,
    "nvmf_listener_remove": listener_remove,
    "nvmf_get_listeners": get_listeners,
    "nvmf_set_ana_state": set_ana_state,
    "nvmf_get_controllers": get_controllers,
    "nvmf_get_qpairs": get_qpairs,
    "nvmf_get_stats": get_stats,
    "nvmf_discover": discover_rpc,
}

WHEN: Dict[str, str] = {name: "both" for name in METHODS}
for _m in ("nvmf_get_controllers", "nvmf_get_qpairs", "nvmf_get_stats", "nvmf_discover"):
    WHEN[_m] = "runtime"
