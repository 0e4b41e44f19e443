"""Entry point the controller calls at start-up (ctrl/daemon.py):
`start(ctl, confs)` builds the VhostService and creates every [[vhost]] device
(none when the config has no [[vhost]]: confs is None)."""

from __future__ import annotations

from .device import VhostBlkDevice, VhostService

__all__ = ["VhostBlkDevice", "VhostService", "start"]


def start(ctl, confs) -> VhostService:
    svc = VhostService(ctl.core)
    try:
        for c in confs or ():
            svc.create_from_config(c)
    except BaseException:
        svc.close()
        raise
    return svc
