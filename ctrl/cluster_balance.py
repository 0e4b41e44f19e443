"""The standing rebalance and the drains of pairs, carried out (docs/architecture.md,
Cluster, Rebalance and drain).

`srrs cluster rebalance` and `srrs cluster drain PAIR` only record an intent
in etcd (the rebalance goal; the pair's state "draining"). One controller of
the cluster drives them: the first by name among the live members that take
move links, so a dead driver's job passes to the next as soon as its
registration lapses. Every DRIVE_S it plans from its catalog view with the
pure planners (ctrl/rebalance.py) and starts moves (Volume moves) while
fewer than the goal's max_moves run: the moves themselves are carried out by
the controllers of the pairs involved. A pair whose volumes have all left
and that has no move running to or from it becomes "retired"; a rebalance
whose plan is balanced with no move running is deleted. Two controllers
that both think they drive (their views a moment apart) can only start the
same moves twice, which the move's start transaction makes harmless (the
same move again is the move already running), or one move more than the
bound."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Optional

from . import etcd
from .cluster_catalog import MOVE_ACTIVE, CatalogError, Snapshot
from .rebalance import DrainRefused, plan_drain, plan_rebalance

log = logging.getLogger("srrs.cluster.balance")

DRIVE_S = 1.0
DRAIN_MOVES = 2         # moves at a time of a drain (a rebalance says its own)


def driver(snap: Snapshot) -> Optional[str]:
    """The controller that drives: the first live member (by name) that takes move links."""
    names = sorted(n for n, m in snap.members.items()
                   if m.health != "down" and "move" in (m.addresses or {}))
    return names[0] if names else None


class Balancer:
    def __init__(self, sync: Any):
        self.sync = sync
        self.me = sync.cluster.name
        self.catalog = sync.cluster.catalog
        self.snap: Optional[Snapshot] = None
        self.started = 0                # moves this controller started
        self.last: dict = {}            # what the last pass did or why it did nothing
        self.errors: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="srrs-cluster-balance",
                                        daemon=True)
        self._thread.start()

    def update(self, snap: Snapshot) -> None:
        self.snap = snap

    def status(self) -> dict:
        snap = self.snap
        return {"driver": driver(snap) if snap else None, "started": self.started,
                "last": dict(self.last), "errors": dict(self.errors)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(DRIVE_S):
            snap = self.snap
            if snap is None or driver(snap) != self.me:
                continue
            try:
                self.drive(snap)
            except (etcd.EtcdError, CatalogError, OSError) as e:
                if self.errors.get("drive") != str(e):
                    log.warning("rebalance/drain: %s", e)
                self.errors["drive"] = str(e)
            except Exception as e:  # never let the thread die silently
                log.exception("rebalance/drain: %s", e)

    def drive(self, snap: Snapshot) -> None:
        active = {u for u, m in snap.moves.items() if m.phase in MOVE_ACTIVE}
        draining = sorted(n for n, p in snap.pairs.items() if p.state == "draining")
        for name in draining:
            self._drain(snap, name, active)
        goal = self.catalog.rebalance_goal()
        if goal is not None and not draining:
            self._rebalance(snap, goal, active)

    def _start(self, snap: Snapshot, mv) -> bool:
        from .cluster_rpc import _first_up  # one rule for the tee and the target
        v = snap.volumes.get(mv.volume)
        if v is None:
            return False
        try:
            self.catalog.start_move(v.tenant, v.name, mv.dst, _first_up(snap, mv.src),
                                    _first_up(snap, mv.dst), os.urandom(32).hex(), time.time())
        except Exception as e:      # CatalogError, etcd, RpcError (no controller to run it)
            self.errors[mv.volume] = f"move of {mv.name} to {mv.dst}: {e}"
            log.warning("%s", self.errors[mv.volume])
            return False
        self.errors.pop(mv.volume, None)
        self.started += 1
        log.info("moving %s (%d bytes) from %s to %s", mv.name, mv.size, mv.src, mv.dst)
        return True

    def _drain(self, snap: Snapshot, name: str, active: set) -> None:
        left = [v for v in snap.volumes.values() if v.pair == name]
        running = [u for u in active if name in (snap.moves[u].src, snap.moves[u].dst)]
        if not left and not running:
            if self.catalog.set_pair_state(name, "retired", only_from=("draining",)):
                log.info("pair %s drained: retired", name)
                self.last[name] = "retired"
            return
        room = DRAIN_MOVES - len(running)
        if room <= 0:
            self.last[name] = f"draining: {len(left)} volume(s) left, {len(running)} moving"
            return
        try:
            plan = plan_drain(snap, name, busy=active)
        except DrainRefused as e:
            # the rest filled up since the drain began: it waits, and says why
            self.last[name] = f"draining, stalled: {e}"
            return
        n = sum(self._start(snap, mv) for mv in plan.moves[:room])
        self.last[name] = f"draining: {len(left)} volume(s) left, {len(running) + n} moving"

    def _rebalance(self, snap: Snapshot, goal: dict, active: set) -> None:
        spread = float(goal.get("spread", 0.10))
        bound = max(1, int(goal.get("max_moves", 2)))
        room = bound - len(active)
        plan = plan_rebalance(snap, spread=spread, max_moves=max(0, room), busy=active)
        if plan.spread_before <= spread and not active:     # reached, nothing running
            self.catalog.set_rebalance_goal(None)
            self.last["rebalance"] = f"balanced (spread {plan.spread_before:.3f})"
            log.info("rebalance done: spread %.3f within %.3f", plan.spread_before, spread)
            return
        if not plan.moves and not active:
            # nothing left that helps: the goal cannot be reached; stop, saying why
            self.catalog.set_rebalance_goal(None)
            self.last["rebalance"] = (f"stopped at spread {plan.spread_before:.3f} "
                                      f"(goal {spread}): {plan.reason}")
            log.warning("rebalance: %s", self.last["rebalance"])
            return
        n = sum(self._start(snap, mv) for mv in plan.moves)
        self.last["rebalance"] = (f"spread {plan.spread_before:.3f} (goal {spread}), "
                                  f"{len(active) + n} moving")
