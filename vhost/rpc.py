"""RPC methods of the vhost module (the only RPC-aware file of vhost/).

Each handler is `handler(ctl, params) -> JSON-able`; `ctl.vhost` is the
VhostService and `ctl.core` the Core. Bad params raise ValueError("key: msg");
an unknown device raises KeyError.

    vhost_create {"name", "socket", "bdev", "num_queues"?, "serial"?, "read_only"?,
                  "owner"?, "mode"?}          -> the device's info
    vhost_delete {"name"}                     -> true
    vhost_list   {"name"?}                    -> [info, ...]
"""

from __future__ import annotations

from .config import parse


def _service(ctl):
    if getattr(ctl, "vhost", None) is None:
        from .device import VhostService

        ctl.vhost = VhostService(ctl.core)
    return ctl.vhost


def vhost_create(ctl, params: dict):
    """Create a vhost-user-blk device on a bdev and listen on its socket."""
    c = parse(dict(params or {}))
    return _service(ctl).create_from_config(c).info()


def vhost_delete(ctl, params: dict):
    """Drop the device's connection (queues drain), close its socket, release the bdev."""
    name = (params or {}).get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("name: missing (required)")
    _service(ctl).delete(name)
    return True


def vhost_list(ctl, params: dict):
    """Devices with connection state, last error and per-queue stats."""
    svc = _service(ctl)
    name = (params or {}).get("name")
    if name is not None:
        if name not in svc.devices:
            from .device import VhostNotFound

            raise VhostNotFound(f"no vhost device {name!r}")
        return [svc.devices[name].info()]
    return svc.list()


METHODS = {"vhost_create": vhost_create, "vhost_delete": vhost_delete, "vhost_list": vhost_list}
