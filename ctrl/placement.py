"""Where a new volume goes (docs/architecture.md, Cluster): a pure function of
a catalog snapshot, no etcd, no clock.

    placement(snapshot, Request(size, tenant, labels)) -> pair name

The snapshot needs `.tenants` ({name: record with quota, used}), `.pairs`
({name: record with capacity, allocated, labels, nodes}) and `.members`
({name: record with pair}). The tenant's quota must hold the size; then,
among the pairs whose labels include every requested label (zone = "z1")
and that have a registered (live) controller and are in service (not
draining or retired), the one with the most free
space that fits the volume; ties go to the smaller name so every controller
picks the same pair from the same snapshot.

Creates racing on many controllers would all pick the one emptiest pair and
all but one lose its compare-and-swap (ci/bench-cluster: 8 clients, 2.6
creates/s). So a request with a `spread` key (the new volume's uuid) chooses
among the pairs within NEAR of the most free space by a hash of that key:
still a pure function, still "the emptiest" whenever one pair clearly is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

# Pairs within this share of the best free space count as equally empty.
NEAR = 0.02


class NoPlacement(Exception):
    """No pair can take the volume; quota=True when the tenant's quota refused it."""

    def __init__(self, msg: str, quota: bool = False):
        super().__init__(msg)
        self.quota = quota


@dataclass(frozen=True)
class Request:
    size: int
    tenant: str
    labels: dict = field(default_factory=dict)
    spread: str = ""      # the volume's uuid: spreads racing creates over near-equal pairs


def _live_pairs(snap) -> set:
    return {m.pair for m in snap.members.values() if m.pair and m.health != "down"}


def _has_slot(p) -> bool:
    """A pair takes at most as many cluster volumes as its mirror has slots."""
    free_slot = getattr(p, "free_slot", None)
    return free_slot is None or free_slot() >= 0


def candidates(snap, req: Request) -> list:
    """(free bytes, pair name) of the pairs that could take it, best first."""
    live = _live_pairs(snap)
    out = [(p.capacity - p.allocated, name) for name, p in snap.pairs.items()
           if name in live and all(p.labels.get(k) == v for k, v in req.labels.items())
           and p.capacity - p.allocated >= req.size and _has_slot(p)
           and not getattr(p, "state", "")]        # draining or retired: takes nothing
    return sorted(out, key=lambda c: (-c[0], c[1]))


def placement(snap, req: Request) -> str:
    t = snap.tenants.get(req.tenant)
    if t is None:
        raise NoPlacement(f"no tenant {req.tenant!r}")
    if t.used + req.size > t.quota:
        raise NoPlacement(f"tenant {req.tenant}: {t.used} used + {req.size} asked exceed the "
                          f"quota of {t.quota} bytes", quota=True)
    c = candidates(snap, req)
    if not c:
        want = "".join(f", {k}={v}" for k, v in sorted(req.labels.items()))
        raise NoPlacement(f"no live pair has {req.size} bytes free{want}")
    if not req.spread:
        return c[0][1]
    near = [name for free, name in c if free >= c[0][0] * (1 - NEAR)]
    h = int.from_bytes(hashlib.sha256(req.spread.encode()).digest()[:8], "big")
    return near[h % len(near)]
