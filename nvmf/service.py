"""The controller's NVMe-oF service (ctrl/daemon.py SERVICES): built from the
parsed `[nvmf]` section at start-up; without one, an empty target (no
listener) that RPC can fill at run time."""

from __future__ import annotations

from typing import Optional

from . import config as C
from .target import NvmfTarget


def start(ctl, section: Optional[C.NvmfConfig]) -> NvmfTarget:
    return NvmfTarget.from_config(ctl.core, section if section is not None else C.NvmfConfig())
