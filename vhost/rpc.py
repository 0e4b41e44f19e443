"""RPC methods of the vhost module (the only RPC-aware file of vhost/).

Declared in `METHODS` (srrs.rpcdef); the server validates params against the
declaration first. `ctl.vhost` is the VhostService and `ctl.core` the Core.
A bad value raises ValueError("key: msg"); an unknown device VhostNotFound
(a KeyError: the not-found code).
"""

from __future__ import annotations

from ..rpcdef import MethodTable
from ..rpcdef import P as _P
from .config import MAX_QUEUES, parse

METHODS = MethodTable()


def _service(ctl):
    if getattr(ctl, "vhost", None) is None:
        from .device import VhostService

        ctl.vhost = VhostService(ctl.core)
    return ctl.vhost


# Optional params carry no default here: vhost/config.py parse() owns them.
@METHODS.method("vhost_create", _P("name", help="device name"),
                _P("socket", help="vhost-user Unix socket path (QEMU connects to it)"),
                _P("bdev", help="the bdev (or volume) it serves"),
                _P("num_queues", "int", None, f"virtqueues, 1..{MAX_QUEUES} (default 1)"),
                _P("serial", default=None, help="GET_ID serial, at most 20 bytes (default: name)"),
                _P("read_only", "bool", None, "refuse writes (default false)"),
                _P("owner", ("str", "int"), None, "socket owner: user, user:group or a uid"),
                _P("mode", ("str", "int"), None, 'socket permissions, e.g. "0660" (default 0600)'))
def vhost_create(ctl, p: dict):
    """Create a vhost-user-blk device on a bdev and listen on its socket."""
    return _service(ctl).create_from_config(parse(dict(p))).info()


@METHODS.method("vhost_delete", _P("name", help="device name", positional=True))
def vhost_delete(ctl, p: dict):
    """Drop the device's connection (queues drain), close its socket, release the bdev."""
    if not p["name"]:
        raise ValueError("name: missing (required)")
    _service(ctl).delete(p["name"])
    return True


@METHODS.method("vhost_list", _P("name", default=None, help="only this device", positional=True))
def vhost_list(ctl, p: dict):
    """Devices with connection state, last error and per-queue stats."""
    svc = _service(ctl)
    name = p.get("name")
    if name is not None:
        if name not in svc.devices:
            from .device import VhostNotFound

            raise VhostNotFound(f"no vhost device {name!r}")
        return [svc.devices[name].info()]
    return svc.list()
