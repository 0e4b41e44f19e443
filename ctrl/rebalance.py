"""Which volumes to move where (docs/architecture.md, Cluster → Rebalance and
drain): pure functions of a catalog snapshot, like placement — no etcd, no
clock, the same plan from the same snapshot on every controller.

    plan_rebalance(snapshot, spread=0.10, max_moves=8) -> Plan
    plan_drain(snapshot, pair) -> Plan            (raises DrainRefused)

A pair's *use* is allocated / capacity. A rebalance moves volumes from the
most used pair to the least used one until the difference between the most
and the least used live pair is at most `spread` (0.10: ten percentage
points), or `max_moves` moves are planned, or no move would shrink the
difference. Each move takes, from the fullest pair, the volume whose size is
nearest the amount that would level the two pairs (a volume under twice that
amount always narrows their gap); the destination must be live, carry the
volume's labels (its zone), have room and a free mirror slot. A drain plans a
destination for every volume of a pair, largest first, each to the live
pair with the most room left that meets its constraints; when any volume
fits nowhere, nothing is planned and the refusal says which and why.

Volumes already moving (`busy`) stay where they are; pairs in `exclude`
(being drained, or the target of a drain in progress) take nothing. A move
leaves the tenant's usage unchanged (the volume is counted once, on its
pair), so tenant quotas never refuse one.
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

from .placement import _live_pairs


@dataclass(frozen=True)
class Move:
    volume: str     # uuid
    name: str       # tenant/name, for people
    size: int
    src: str
    dst: str


@dataclass(frozen=True)
class Plan:
    moves: Tuple[Move, ...] = ()
    spread_before: float = 0.0      # most minus least used live pair, 0..1+
    spread_after: float = 0.0       # the same once the moves are done
    balanced: bool = True           # spread_after within the asked spread
    reason: str = ""                # why it stopped short, when it did

    def as_dict(self) -> dict:
        return {"moves": [m.__dict__ for m in self.moves], "spread_before": self.spread_before,
                "spread_after": self.spread_after, "balanced": self.balanced,
                "reason": self.reason}


class DrainRefused(Exception):
    """A drain that cannot be done: nothing was planned (the message says why)."""


def _use(alloc: int, cap: int) -> float:
    if cap <= 0:
        return 0.0 if alloc <= 0 else float("inf")
    return alloc / cap


def _fits(labels: dict, plabels: dict) -> bool:
    return all(plabels.get(k) == v for k, v in labels.items())


def _free_slots(p) -> int:
    from .cluster_catalog import MAX_SLOTS
    return MAX_SLOTS - sum(1 for u in p.slots if u)


class _State:
    """The pairs as the planned moves leave them."""

    def __init__(self, snap, busy: Iterable[str], exclude: Iterable[str]):
        live = _live_pairs(snap)
        self.exclude = set(exclude)
        self.cap: Dict[str, int] = {}
        self.alloc: Dict[str, int] = {}
        self.slots: Dict[str, int] = {}
        self.labels: Dict[str, dict] = {}
        for name, p in snap.pairs.items():
            if name not in live:
                continue
            if getattr(p, "state", ""):
                self.exclude.add(name)      # draining or retired: takes nothing
            self.cap[name], self.alloc[name] = p.capacity, p.allocated
            self.slots[name], self.labels[name] = _free_slots(p), dict(p.labels)
        busy = set(busy)
        # per live pair: its movable volumes as (size, uuid) sorted, and the records
        self.vols: Dict[str, List[Tuple[int, str]]] = {n: [] for n in self.cap}
        self.rec = {}
        for v in snap.volumes.values():
            if v.pair in self.vols and v.uuid not in busy and v.state == "ready":
                self.vols[v.pair].append((v.size, v.uuid))
                self.rec[v.uuid] = v
        for lst in self.vols.values():
            lst.sort()

    def use(self, name: str) -> float:
        return _use(self.alloc[name], self.cap[name])

    def spread(self) -> float:
        names = [n for n in self.cap if n not in self.exclude]
        if len(names) < 2:
            return 0.0
        uses = [self.use(n) for n in names]
        return max(uses) - min(uses)

    def can_take(self, dst: str, v) -> bool:
        return (dst not in self.exclude and dst != v.pair and self.slots[dst] > 0
                and self.alloc[dst] + v.size <= self.cap[dst]
                and _fits(getattr(v, "labels", None) or {}, self.labels[dst]))

    def apply(self, v, src: str, dst: str) -> Move:
        self.alloc[src] -= v.size
        self.alloc[dst] += v.size
        self.slots[src] += 1
        self.slots[dst] -= 1
        lst = self.vols[src]
        del lst[bisect.bisect_left(lst, (v.size, v.uuid))]
        return Move(v.uuid, f"{v.tenant}/{v.name}", v.size, src, dst)


# how many volumes around the ideal size, and how many destinations, one step tries
_NEAR_VOLS = 16
_NEAR_DSTS = 8


def plan_rebalance(snap, spread: float = 0.10, max_moves: int = 8, busy: Iterable[str] = (),
                   exclude: Iterable[str] = ()) -> Plan:
    if not 0 <= spread:
        raise ValueError(f"spread must be >= 0, not {spread}")
    st = _State(snap, busy, exclude)
    before = st.spread()
    moves: List[Move] = []
    # min-heap of (use, name) for destinations, max-heap (-use, name) for sources;
    # entries go stale when a move changes a pair's use and are skipped on pop.
    lo = [(st.use(n), n) for n in st.cap if n not in st.exclude]
    hi = [(-st.use(n), n) for n in st.cap if n not in st.exclude]
    heapq.heapify(lo)
    heapq.heapify(hi)
    stuck: set = set()          # sources with nothing left that helps
    reason = ""
    while len(moves) < max_moves:
        src = _top(hi, st, stuck)
        if src is None:
            reason = "no pair has a volume whose move would narrow the spread"
            break
        dsts = _lowest(lo, st, _NEAR_DSTS, skip=src)
        if not dsts:
            reason = "no other live pair can take a volume"
            break
        if st.use(src) - st.use(dsts[0]) <= spread:
            if stuck:       # the pairs above are left: nothing they hold helps
                reason = "no pair has a volume whose move would narrow the spread"
            break
        mv = _best_move(st, src, dsts)
        if mv is None:
            stuck.add(src)
            continue
        v, dst = mv
        moves.append(st.apply(v, src, dst))
        for n in (src, dst):
            heapq.heappush(hi, (-st.use(n), n))
        heapq.heappush(lo, (st.use(src), src))
        heapq.heappush(lo, (st.use(dst), dst))
        stuck.discard(dst)
    after = st.spread()
    if len(moves) >= max_moves and after > spread:
        reason = f"stopped at {max_moves} moves (run it again when they are done)"
    return Plan(tuple(moves), before, after, after <= spread, "" if after <= spread else reason)


def _top(heap, st: _State, stuck: set) -> Optional[str]:
    """The most used source not stuck, its heap entry current (left in the heap)."""
    while heap:
        u, n = heap[0]
        if n in stuck or -u != st.use(n):
            heapq.heappop(heap)         # stale (its use changed since) or stuck
            continue
        return n
    return None


def _lowest(heap, st: _State, k: int, skip: str) -> List[str]:
    """Up to k least used destinations (current entries), without removing them."""
    out, seen, popped = [], set(), []
    while heap and len(out) < k:
        u, n = heapq.heappop(heap)
        if u != st.use(n) or n in seen:
            continue            # stale or duplicate: dropped
        seen.add(n)
        popped.append((u, n))
        if n != skip:
            out.append(n)
    for e in popped:
        heapq.heappush(heap, e)
    return out


def _best_move(st: _State, src: str, dsts: List[str]):
    """(volume, destination) narrowing the gap between src and a destination
    the most, or None. For each destination (least used first) the volumes
    nearest in size to the levelling amount are tried."""
    lst = st.vols[src]
    if not lst:
        return None
    a_s, c_s = st.alloc[src], st.cap[src]
    for dst in dsts:
        a_d, c_d = st.alloc[dst], st.cap[dst]
        if c_d <= 0:
            continue
        gap = _use(a_s, c_s) - _use(a_d, c_d)
        if gap <= 0:
            return None
        x = (a_s * c_d - a_d * c_s) / (c_s + c_d)       # bytes that level the two
        i = bisect.bisect_left(lst, (int(x), ""))
        cands = lst[max(0, i - _NEAR_VOLS // 2): i + _NEAR_VOLS // 2]
        cands.sort(key=lambda e: abs(e[0] - x))
        for size, uuid in cands:
            after = abs(_use(a_s - size, c_s) - _use(a_d + size, c_d))
            if after >= gap:
                continue        # would not narrow the gap
            v = st.rec[uuid]
            if st.can_take(dst, v):
                return v, dst
    return None


def plan_drain(snap, pair: str, busy: Iterable[str] = (), exclude: Iterable[str] = ()) -> Plan:
    """A destination for every volume of `pair`; DrainRefused (nothing planned)
    when the rest of the cluster cannot take them all."""
    if pair not in snap.pairs:
        raise DrainRefused(f"no pair {pair!r}")
    busy = set(busy)
    moving = [v.uuid for v in snap.volumes.values() if v.pair == pair and v.uuid in busy]
    st = _State(snap, busy, set(exclude) | {pair})
    if pair not in st.cap:
        raise DrainRefused(f"pair {pair} has no live controller: its volumes cannot be "
                           f"copied off it until one is back")
    vols = sorted((v for v in snap.volumes.values() if v.pair == pair and v.uuid not in busy),
                  key=lambda v: (-v.size, v.uuid))
    not_ready = [v for v in vols if v.state != "ready"]
    if not_ready:
        raise DrainRefused(f"pair {pair}: {len(not_ready)} volume(s) are not ready yet "
                           f"(e.g. {not_ready[0].tenant}/{not_ready[0].name}: "
                           f"{not_ready[0].state}); drain again when they are")
    before = st.spread()
    room = [(-(st.cap[n] - st.alloc[n]), n) for n in st.cap if n not in st.exclude]
    heapq.heapify(room)
    moves, refused = [], []
    for v in vols:
        popped, dst = [], None
        # the roomiest pair that takes it; pairs passed over go back afterwards
        while room:
            r, n = heapq.heappop(room)
            if -r != st.cap[n] - st.alloc[n]:
                continue                                # stale
            popped.append((r, n))
            if -r < v.size:
                break                                   # nothing roomier is left
            if st.can_take(n, v):
                dst = n
                break
        for e in popped:
            if e[1] != dst:
                heapq.heappush(room, e)
        if dst is None:
            refused.append(v)
            continue
        st.vols[pair].append((v.size, v.uuid))          # apply() removes it
        st.vols[pair].sort()
        st.rec[v.uuid] = v
        moves.append(st.apply(v, pair, dst))
        heapq.heappush(room, (-(st.cap[dst] - st.alloc[dst]), dst))
    if refused:
        need = sum(v.size for v in refused)
        free = sum(st.cap[n] - st.alloc[n] for n in st.cap if n not in st.exclude)
        others = [n for n in st.cap if n not in st.exclude]
        best = max((st.cap[n] - st.alloc[n] for n in others), default=0)
        v = refused[0]
        lab = "".join(f", {k}={x}" for k, x in sorted((getattr(v, "labels", None) or {}).items()))
        raise DrainRefused(
            f"pair {pair} cannot be drained: {len(refused)} of its {len(vols)} volume(s) "
            f"({_gib(need)}) fit on no other live pair (largest: {v.tenant}/{v.name}, "
            f"{_gib(v.size)}{lab}); after placing the rest, the other {len(others)} live "
            f"pair(s) have {_gib(free)} free, at most {_gib(best)} on one. Add capacity or a "
            f"pair, or delete volumes; nothing was moved")
    reason = f"{len(moving)} volume(s) already moving off it" if moving else ""
    return Plan(tuple(moves), before, st.spread(), True, reason)


def _gib(n: int) -> str:
    """GiB, or MiB below one GiB (a 48 MiB pair is not "0.0 GiB" free)."""
    if n < 1 << 30:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / (1 << 30):.1f} GiB"
