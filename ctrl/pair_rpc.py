"""RPC methods of the pair (the only RPC-aware file of ctrl/pair.py)."""

from __future__ import annotations

from .rpc import InvalidParams, RpcError, param


def _svc(ctl):
    if getattr(ctl, "pair", None) is None:
        raise RpcError(-32000, "this controller has no [pair] section")
    return ctl.pair


def pair_status(ctl, p: dict):
    """State of the pair: role, epoch, peer, lease, generations, mirror link and per
    volume dirty stripes and resync progress/rate."""
    return _svc(ctl).status()


def pair_resync(ctl, p: dict):
    """Operator resync after a split brain: {source: NAME} keeps NAME's data and
    overwrites the other replica (sent to the peer too)."""
    svc = _svc(ctl)
    try:
        svc.resync(param(p, "source", str))
    except ValueError as e:
        raise InvalidParams(str(e)) from None
    return True


def pair_debug_dump(ctl, p: dict):
    """Test hook: the mirror's live pieces, locks and resync flags to the controller's stderr."""
    svc = _svc(ctl)
    svc._lib.srrs_mirror_test_dump(svc.link)
    return True


METHODS = {"pair_status": pair_status, "pair_resync": pair_resync,
           "pair_debug_dump": pair_debug_dump}
