"""RPC methods of the pair (the only RPC-aware file of ctrl/pair.py), declared
in `METHODS` (srrs.rpcdef)."""

from __future__ import annotations

from ..rpcdef import InvalidParams, MethodTable, NotConfigured
from ..rpcdef import P as _P

METHODS = MethodTable()


def _svc(ctl):
    if getattr(ctl, "pair", None) is None:
        raise NotConfigured("this controller has no [pair] section")
    return ctl.pair


@METHODS.method("pair_status")
def pair_status(ctl, p: dict):
    """State of the pair: role, epoch, peer, lease, generations, mirror link and per
    volume dirty stripes and resync progress/rate."""
    return _svc(ctl).status()


@METHODS.method("pair_resync", _P("source", help="the controller whose data is kept"))
def pair_resync(ctl, p: dict):
    """Operator resync after a split brain: keeps SOURCE's data and overwrites the
    other replica (sent to the peer too)."""
    svc = _svc(ctl)
    try:
        svc.resync(p["source"])
    except ValueError as e:
        raise InvalidParams(str(e)) from None
    return True


@METHODS.method("pair_debug_dump")
def pair_debug_dump(ctl, p: dict):
    """Test hook: the mirror's live pieces, locks and resync flags to the controller's stderr."""
    svc = _svc(ctl)
    svc._lib.srrs_mirror_test_dump(svc.link)
    return True
