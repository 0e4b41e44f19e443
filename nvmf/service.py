"""The controller's NVMe-oF service (ctrl/daemon.py SERVICES): built from the
parsed `[nvmf]` section at start-up; without one, an empty target (no
listener) that RPC can fill at run time."""

from __future__ import annotations

import logging
from typing import Optional

from . import config as C
from .target import NvmfTarget

log = logging.getLogger("srrs.nvmf")


def start(ctl, section: Optional[C.NvmfConfig]) -> NvmfTarget:
    section = section if section is not None else C.NvmfConfig()
    for s in section.subsystems:
        if not s.allow_hosts:  # deny is the default: say so, a silent refusal looks like a bug
            log.warning("nvmf subsystem %s allows no host: every connect is refused until "
                        "allow_hosts lists host NQNs (or [\"*\"] for any host) or "
                        "nvmf_subsystem_add_host adds one", s.nqn)
    return NvmfTarget.from_config(ctl.core, section)
