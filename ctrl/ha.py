"""The pair's state machine as a pure function (docs/architecture.md, Pair).

    step(state, event, now) -> (state, actions)

No I/O, no clock of its own: sockets and timers turn what they see into
events, the caller carries out the actions (ANA state, mirror mode, lease
requests, resync, persisting generations, alerts). Tested with a fake clock.

Roles
  STARTING  just started, peer not heard yet: no I/O (ANA inaccessible).
  PAIRED    peer alive and in sync: both acknowledge, each write on both replicas.
  SOLO      peer lost, witness lease held: acknowledge alone, mark stripes dirty.
  FENCED    peer lost, no lease (or lease expired, or this replica is behind):
            no I/O, ANA inaccessible (ANA change while a lease request is out).
  RESYNC    peer back: dirty stripes are copied source -> target while both serve.

Safety rules this module enforces:
  * never acknowledge alone (SOLO) without an unexpired lease; the lease is
    timed from when the request was *sent*, shrunk by a drift margin, so it
    always ends before the witness's view of it;
  * the lease's end fences on its own (Tick), and the mirror in C is given the
    same deadline so a stuck control plane cannot extend it;
  * read leases: while PAIRED (or RESYNC) we grant the peer a read lease of
    read_lease_s (the mirror in C renews it); after leaving those roles we
    acknowledge nothing alone until it has run out (read_lease_s and a
    clock-rate margin), so the peer never serves a read older than our solo
    writes: a witness lease that comes earlier is held, FENCED, until then;
  * a higher epoch wins when both sides claim to serve alone;
  * data generations decide the resync direction; a true split brain (both
    wrote alone since their last common generation) is reported, never
    resolved without an operator (AdminResync).

Data generations: a replica carries (data_gen, base_gen). In PAIRED both are
the shared generation. Going SOLO from in-sync data starts a new generation
(n+1, me); base_gen stays the last common one. On reconnect:
  data equal                  -> in sync (resync only stripes in flight at the cut)
  peer.base == my data        -> the peer wrote alone since: it is the source
  my base == peer.data        -> I wrote alone since: I am the source
  my data is NULL_GEN         -> new or replaced replica: full copy from the peer
  otherwise                   -> split brain: both wrote alone, report it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Tuple

STARTING = "STARTING"
PAIRED = "PAIRED"
SOLO = "SOLO"
FENCED = "FENCED"
RESYNC = "RESYNC"
ROLES = (STARTING, PAIRED, SOLO, FENCED, RESYNC)

# ANA states pushed to the exports
ANA_OPTIMIZED = "optimized"
ANA_INACCESSIBLE = "inaccessible"
ANA_CHANGE = "change"


@dataclass(frozen=True, order=True)
class Gen:
    """A data generation: a counter and the controller that started it."""
    n: int = 0
    node: str = ""

    def to_json(self) -> list:
        return [self.n, self.node]

    @staticmethod
    def from_json(v) -> "Gen":
        if isinstance(v, Gen):
            return v
        if not (isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], int)
                and isinstance(v[1], str)):
            raise ValueError(f"bad generation {v!r}")
        return Gen(v[0], v[1])

    def __str__(self) -> str:
        return f"{self.n}:{self.node}" if self.node else str(self.n)


NULL_GEN = Gen()


@dataclass(frozen=True)
class Timing:
    heartbeat_s: float = 0.2     # heartbeat interval
    miss_count: int = 5          # heartbeats missed before the peer counts as dead
    lease_s: float = 3.0         # witness lease length
    drift: float = 0.02          # our lease ends this fraction early (clock rate drift)
    retry_s: float = 0.5         # lease request retry when denied / unanswered
    witness_timeout_s: float = 0.5  # no answer to a lease request in this long: unreachable
    read_lease_s: float = 0.5    # the read lease we grant the peer while paired

    @property
    def read_lease_end_s(self) -> float:
        """After our last possible grant: when the peer's read lease has surely ended
        (the margin covers a clock-rate difference, as the C mirror's does)."""
        return self.read_lease_s * (1 + 1 / 16) + 0.001

    @property
    def peer_timeout_s(self) -> float:
        return self.heartbeat_s * self.miss_count


# ---- events ---------------------------------------------------------------------

@dataclass(frozen=True)
class Tick:
    """Timer: peer timeout, lease expiry and renewal, request retries."""


@dataclass(frozen=True)
class PeerHeartbeat:
    epoch: int
    role: str
    loops: int                       # sum of the peer's reactor loop counters
    data_gen: Gen = NULL_GEN
    base_gen: Gen = NULL_GEN
    sees_peer: bool = True           # the peer hears us (asymmetric partitions)
    behind: bool = False             # the peer is a resync target whose copy is not complete


@dataclass(frozen=True)
class PeerTimeout:
    """Explicit peer loss (e.g. the peer announced it is stopping)."""


@dataclass(frozen=True)
class LeaseGranted:
    sent_at: float                   # our send time of the request it answers
    lease_s: float


@dataclass(frozen=True)
class LeaseDenied:
    sent_at: float
    reason: str = ""


@dataclass(frozen=True)
class WitnessUnreachable:
    sent_at: float = 0.0


@dataclass(frozen=True)
class WitnessReachable:
    pass


@dataclass(frozen=True)
class MirrorDown:
    pass


@dataclass(frozen=True)
class MirrorUp:
    pass


@dataclass(frozen=True)
class ResyncDone:
    pass


@dataclass(frozen=True)
class AdminResync:
    """Operator's decision after a split brain: `source` keeps its data."""
    source: str


# ---- actions --------------------------------------------------------------------

@dataclass(frozen=True)
class SetAna:
    state: str


@dataclass(frozen=True)
class SetMirror:
    """Data-plane mode: paired | solo | fenced | resync_source | resync_target.
    lease_until (caller's monotonic clock) bounds how long solo may ack alone."""
    mode: str
    lease_until: float = 0.0


@dataclass(frozen=True)
class RequestLease:
    sent_at: float
    data_gen: Gen
    next_gen: Gen


@dataclass(frozen=True)
class ReleaseLease:
    pass


@dataclass(frozen=True)
class StartResync:
    role: str                        # "source" | "target"
    full: bool = False


@dataclass(frozen=True)
class SaveGens:
    data_gen: Gen
    base_gen: Gen
    behind: bool = False             # a resync target until its resync completes


@dataclass(frozen=True)
class Alert:
    level: str                       # "warning" | "error"
    message: str


# ---- state ----------------------------------------------------------------------

@dataclass(frozen=True)
class State:
    me: str
    peer: str
    timing: Timing = field(default_factory=Timing)
    need_mirror: bool = True         # rejoin waits for the mirror link
    role: str = STARTING
    epoch: int = 0
    reason: str = "starting"
    since: float = 0.0               # when role was entered
    started: float = 0.0
    data_gen: Gen = NULL_GEN
    base_gen: Gen = NULL_GEN
    # the peer as we last heard it
    peer_seen: Optional[float] = None
    peer_loops: int = -1
    peer_loops_at: Optional[float] = None
    peer_role: str = ""
    peer_epoch: int = 0
    peer_data_gen: Gen = NULL_GEN
    peer_base_gen: Gen = NULL_GEN
    peer_sees_us: bool = False
    peer_behind: bool = False
    peer_rs_since: Optional[float] = None   # we PAIRED, the peer in RESYNC since
    mirror_up: bool = False
    # lease
    lease_until: float = 0.0
    lease_sent_at: Optional[float] = None    # outstanding request
    lease_next_gen: Gen = NULL_GEN
    lease_retry_at: float = 0.0
    lease_denied: str = ""
    witness_ok: bool = True
    # resync / split brain
    resync_role: str = ""
    split_brain: str = ""
    behind: bool = False             # resync target not yet complete: never serve alone
    # the peer may hold a read lease from us until then: nothing acknowledged alone before
    peer_read_until: float = 0.0

    def to_json(self, now: float) -> dict:
        return {
            "self": self.me, "peer": self.peer, "state": self.role, "epoch": self.epoch,
            "reason": self.reason, "in_state_s": round(now - self.since, 3),
            "data_gen": str(self.data_gen), "base_gen": str(self.base_gen),
            "peer_state": self.peer_role, "peer_alive": peer_alive(self, now),
            "peer_epoch": self.peer_epoch, "peer_data_gen": str(self.peer_data_gen),
            "mirror_up": self.mirror_up, "witness_ok": self.witness_ok,
            "lease_left_s": round(max(0.0, self.lease_until - now), 3),
            "lease_pending": self.lease_sent_at is not None, "lease_denied": self.lease_denied,
            "resync_role": self.resync_role, "split_brain": self.split_brain,
            "behind": self.behind,
            "peer_read_lease_left_s": round(max(0.0, self.peer_read_until - now), 3),
        }


def initial(me: str, peer: str, now: float, timing: Optional[Timing] = None,
            data_gen: Gen = NULL_GEN, base_gen: Gen = NULL_GEN, need_mirror: bool = True,
            epoch: int = 0, behind: bool = False) -> Tuple[State, tuple]:
    """The state at start-up (generations and `behind` as persisted) and the
    actions that put the data plane in it."""
    t = timing or Timing()
    # A previous run of ours may have granted the peer a read lease just now.
    s = State(me=me, peer=peer, timing=t, need_mirror=need_mirror, since=now,
              started=now, data_gen=data_gen, base_gen=base_gen, epoch=epoch, behind=behind,
              peer_read_until=now + t.read_lease_end_s)
    return s, (SetAna(ANA_INACCESSIBLE), SetMirror("fenced"))


# ---- predicates -----------------------------------------------------------------

def peer_alive(s: State, now: float) -> bool:
    """Heard recently, and its reactors are still looping (a wedged data plane is dead)."""
    t = s.timing.peer_timeout_s
    return (s.peer_seen is not None and now - s.peer_seen <= t
            and s.peer_loops_at is not None and now - s.peer_loops_at <= t)


def peer_usable(s: State, now: float) -> bool:
    """We can pair with it: alive both ways, and the data link is up."""
    return peer_alive(s, now) and s.peer_sees_us and (s.mirror_up or not s.need_mirror)


def lease_valid(s: State, now: float) -> bool:
    return now < s.lease_until


def granting(role: str) -> bool:
    """Roles in which the mirror grants the peer read leases."""
    return role in (PAIRED, RESYNC)


def may_ack_alone(s: State, now: float) -> bool:
    """Witness lease held and the peer's read lease from us over."""
    return lease_valid(s, now) and now >= s.peer_read_until and not granting(s.role)


def decide(me: str, data: Gen, base: Gen, peer: str, pdata: Gen, pbase: Gen,
           behind: bool = False, pbehind: bool = False) -> str:
    """Resync direction from both replicas' generations (and `behind` flags):
    'insync' | 'source' | 'target' | 'full_target' | 'full_source' | 'split'."""
    if data == NULL_GEN and pdata == NULL_GEN:
        return "insync"
    if data == NULL_GEN:
        return "full_target"
    if pdata == NULL_GEN:
        return "full_source"
    if pbehind != behind:
        # One side is a resync target whose copy did not complete: it never
        # wrote alone since, and all it lacks is in the two bitmaps (its own
        # keeps every stripe not yet copied). Its generations are still the
        # old ones while the other's may already be the new pair's (its
        # resync-done came, the target's did not): by generations alone that
        # looks like a split brain.
        return "source" if pbehind else "target"
    if data == pdata:
        # The same generation, but one side may have written alone under it
        # after the other's copy completed (the creator's own resync-done was
        # lost to a cut, and it went SOLO again on the generation it still
        # held as its own): that side (base not yet its data) is the source.
        if base != data and pbase == pdata:
            return "source"
        if pbase != pdata and base == data:
            return "target"
        return "insync"
    if pbase == data:
        return "target"
    if base == pdata:
        return "source"
    return "split"


def _next_gen(s: State) -> Gen:
    """The generation we write under when alone: a new one if we were in sync."""
    if s.data_gen != s.base_gen:
        return s.data_gen
    return Gen(max(s.data_gen.n, s.peer_data_gen.n) + 1, s.me)


# ---- transitions ----------------------------------------------------------------

def _enter(s: State, role: str, now: float, reason: str, **kw) -> State:
    epoch = s.epoch
    if role in (PAIRED, SOLO, RESYNC) and role != s.role:
        epoch = max(s.epoch, s.peer_epoch) + 1
    return replace(s, role=role, since=now, reason=reason, epoch=epoch, peer_rs_since=None, **kw)


def _fence(s: State, now: float, reason: str, request: bool = True) -> Tuple[State, list]:
    """Stop acknowledging. With request: ask the witness for the lease at once,
    and hold I/O (mirror "pending", ANA change) until it answers."""
    acts: list = []
    entering = s.role != FENCED
    if entering:
        s = _enter(s, FENCED, now, reason, lease_until=0.0, resync_role="")
    else:
        s = replace(s, reason=reason)
    if (request and not s.behind and s.lease_sent_at is None and now >= s.lease_retry_at
            and not lease_valid(s, now)):
        s, a = _request(s, now)
        acts += a
    pending = s.lease_sent_at is not None or lease_valid(s, now)
    if entering:
        acts.insert(0, SetMirror("pending" if pending else "fenced"))
    acts.append(SetAna(ANA_CHANGE if pending else ANA_INACCESSIBLE))
    return s, acts


def _request(s: State, now: float) -> Tuple[State, list]:
    ng = _next_gen(s) if s.role != SOLO else s.data_gen
    s = replace(s, lease_sent_at=now, lease_next_gen=ng)
    return s, [RequestLease(now, s.data_gen, ng)]


def _rejoin(s: State, now: float) -> Tuple[State, list]:
    """Peer usable again while we are not paired: resync in the direction the
    generations say, or report a split brain and stay as we are."""
    d = decide(s.me, s.data_gen, s.base_gen, s.peer, s.peer_data_gen, s.peer_base_gen,
               s.behind, s.peer_behind)
    if d == "split":
        if s.split_brain:
            return s, []
        msg = (f"split brain: {s.me} has generation {s.data_gen} (base {s.base_gen}), "
               f"{s.peer} has {s.peer_data_gen} (base {s.peer_base_gen}); both wrote alone. "
               f"Not resolved automatically: choose the survivor with "
               f"`srrs pair resync --source NAME` (the other replica's solo writes are discarded)")
        return replace(s, split_brain=msg), [Alert("error", msg)]
    insync = d == "insync"
    if insync:
        # Only stripes in flight at the cut may differ (never an acknowledged
        # write); the lower name copies, and neither replica is behind.
        d = "source" if s.me < s.peer else "target"
    full = d.startswith("full_")
    role = d.replace("full_", "")
    acts: list = []
    if s.role == SOLO and role == "target":
        # Should be impossible (we hold a lease and our data is newer or equal);
        # still, never keep acknowledging while being overwritten.
        acts.append(Alert("error", f"{s.me} was SOLO but generations make it the resync target"))
    behind = s.behind or (role == "target" and not insync)
    s = _enter(s, RESYNC, now, f"peer {s.peer} back: resync as {role}" + (" (full)" if full else ""),
               resync_role=role, lease_sent_at=None, behind=behind)
    if behind:
        acts.append(SaveGens(s.data_gen, s.base_gen, True))
    acts += [SetMirror("resync_" + role, s.lease_until), StartResync(role, full),
             SetAna(ANA_OPTIMIZED)]
    return s, acts


def _peer_lost(s: State, now: float, why: str) -> Tuple[State, list]:
    if s.role == RESYNC and s.resync_role == "target":
        # This replica is behind: it must never serve alone.
        s, acts = _fence(s, now, f"{why} during resync: this replica is behind", request=False)
        return s, acts + [Alert("warning", f"{s.me}: {why} while resyncing from it; fenced")]
    return _fence(s, now, why)


def _tick(s: State, now: float) -> Tuple[State, list]:
    acts: list = []
    t = s.timing
    if s.lease_sent_at is not None and now - s.lease_sent_at > t.witness_timeout_s:
        s = replace(s, lease_sent_at=None, witness_ok=False, lease_retry_at=now)
        acts.append(Alert("warning", "witness did not answer the lease request"))
        if s.role == FENCED:
            acts += [SetMirror("fenced"), SetAna(ANA_INACCESSIBLE)]
    usable = peer_usable(s, now)
    if s.role in (PAIRED, RESYNC) and not usable:
        why = ("peer lost" if not peer_alive(s, now)
               else "peer does not hear us" if not s.peer_sees_us else "mirror link down")
        s, a = _peer_lost(s, now, why)
        return s, acts + a
    if (s.role == PAIRED and s.peer_role == RESYNC and s.peer_rs_since is not None
            and now - s.peer_rs_since > 2 * t.peer_timeout_s):
        # The peer waits in a resync we are not part of: it left and rejoined
        # while ours ended (our resync-done came, and its epoch tied ours, so
        # its heartbeats looked like the end of our own resync). A target's
        # resync-done follows the source's within moments; this long, it is
        # waiting for us. Rejoin: a resync again, the peer's bitmap says what.
        s2, a = _rejoin(s, now)
        return s2, acts + a
    if s.role == SOLO:
        if not lease_valid(s, now):
            s, a = _fence(s, now, "lease expired")
            return s, acts + a + [Alert("warning", f"{s.me}: lease expired, fenced")]
        if (s.lease_sent_at is None and now >= s.lease_retry_at
                and s.lease_until - now <= t.lease_s * 2 / 3):
            s, a = _request(s, now)
            acts += a
        if usable:
            s2, a = _rejoin(s, now)
            return s2, acts + a
        return s, acts
    if s.role == STARTING:
        if usable:
            s2, a = _rejoin(s, now)
            return s2, acts + a
        if now - s.started > t.peer_timeout_s:
            s, a = _fence(s, now, "peer not heard since start")
            return s, acts + a
        return s, acts
    if s.role == FENCED:
        if usable:
            s2, a = _rejoin(s, now)
            if s2 is not s:
                return s2, acts + a
            acts += a
        if s.lease_until and not usable:
            if may_ack_alone(s, now):
                s, a = _go_solo(s, now, s.lease_until)
                return s, acts + a
            if lease_valid(s, now):
                return s, acts        # held until the peer's read lease is over
            s = replace(s, lease_until=0.0)
        if (s.lease_sent_at is None and now >= s.lease_retry_at and not s.behind
                and not peer_usable(s, now)):
            s, a = _request(s, now)   # a retry: I/O keeps failing meanwhile
            acts += a
    return s, acts


def _heartbeat(s: State, e: PeerHeartbeat, now: float) -> Tuple[State, list]:
    loops_at = now if e.loops != s.peer_loops else s.peer_loops_at
    was_alive = peer_alive(s, now)
    rs_since = None
    if s.role == PAIRED and e.role == RESYNC:
        rs_since = s.peer_rs_since if s.peer_rs_since is not None else now
    s = replace(s, peer_seen=now, peer_loops=e.loops, peer_loops_at=loops_at, peer_role=e.role,
                peer_epoch=e.epoch, peer_data_gen=e.data_gen, peer_base_gen=e.base_gen,
                peer_sees_us=e.sees_peer, peer_behind=e.behind, peer_rs_since=rs_since)
    acts: list = []
    if not was_alive and peer_alive(s, now):
        acts.append(Alert("warning", f"peer {s.peer} alive ({e.role}, epoch {e.epoch})"))
    if s.role == SOLO and e.role == SOLO:
        # Two controllers acknowledging alone: only possible if the witness
        # lost its state. The higher epoch wins; the other fences at once.
        if (e.epoch, s.peer) > (s.epoch, s.me):
            s, a = _fence(s, now, f"peer {s.peer} is SOLO with a higher epoch", request=False)
            return s, acts + a + [Alert("error", f"{s.me}: both SOLO; peer epoch {e.epoch} > "
                                                 f"{s.epoch}: fenced")]
        return s, acts
    if s.role in (PAIRED, RESYNC) and e.role == SOLO and e.epoch >= s.epoch:
        # (A SOLO heartbeat from before our rejoin has a lower epoch: stale.)
        # It went on alone (it lost us): whatever we hold is stale now.
        s, a = _peer_lost(s, now, f"peer {s.peer} went SOLO")
        return s, acts + a
    if (s.role == PAIRED and e.role == RESYNC and peer_usable(s, now)
            and (e.epoch > s.epoch or e.data_gen.n > s.data_gen.n)):
        # It left the pair and came back between two of its heartbeats (FENCED,
        # or even SOLO on a new generation, for less than a heartbeat): it began
        # a resync that we are not part of, and would wait for us forever while
        # we serve reads that may be stale. (A resync of ours it is finishing
        # has an epoch not above our PAIRED one, and no newer generation.)
        s2, a = _rejoin(s, now)
        return s2, acts + a
    if (s.role in (PAIRED, RESYNC) and e.role in (STARTING, FENCED) and peer_usable(s, now)
            and (s.role == PAIRED or e.epoch >= s.epoch)):
        # It left the pair (restarted, or fenced and back): pair again through
        # a resync of what was in flight at the cut.
        s2, a = _rejoin(s, now)
        return s2, acts + a
    if s.role in (STARTING, FENCED, SOLO) and peer_usable(s, now):
        s2, a = _rejoin(s, now)
        return s2, acts + a
    return s, acts


def _lease_granted(s: State, e: LeaseGranted, now: float) -> Tuple[State, list]:
    if s.lease_sent_at is None or e.sent_at != s.lease_sent_at:
        return s, []  # an answer to an older request: its time base is not ours
    until = e.sent_at + e.lease_s * (1.0 - s.timing.drift)
    s = replace(s, lease_sent_at=None, witness_ok=True, lease_denied="", lease_retry_at=now)
    if until <= now:
        return s, [Alert("warning", "lease granted too late to use")]
    if s.role == SOLO:
        s = replace(s, lease_until=until)
        return s, [SetMirror("solo", until)]
    if s.role == FENCED and not peer_usable(s, now):
        if now < s.peer_read_until:
            # The peer may still answer reads on our grant: hold the lease
            # (I/O waits, mirror pending) and go SOLO on the Tick after it.
            return replace(s, lease_until=until,
                           reason="lease held; waiting for the peer's read lease to end"), []
        return _go_solo(s, now, until)
    return s, [ReleaseLease()]  # no longer needed


def _go_solo(s: State, now: float, until: float) -> Tuple[State, list]:
    ng = s.lease_next_gen
    s = _enter(s, SOLO, now, "peer lost, lease held", lease_until=until, data_gen=ng,
               split_brain="")
    return s, [SaveGens(s.data_gen, s.base_gen), SetMirror("solo", until), SetAna(ANA_OPTIMIZED)]


def _lease_denied(s: State, e: LeaseDenied, now: float) -> Tuple[State, list]:
    if s.lease_sent_at is None or e.sent_at != s.lease_sent_at:
        return s, []
    s = replace(s, lease_sent_at=None, witness_ok=True, lease_denied=e.reason,
                lease_retry_at=now + s.timing.retry_s)
    if s.role == SOLO:
        s, a = _fence(s, now, f"lease renewal denied: {e.reason}", request=False)
        return s, a + [Alert("error", f"{s.me}: lease renewal denied ({e.reason}); fenced")]
    if s.role == FENCED:
        return replace(s, reason=f"no lease: {e.reason}"), [SetMirror("fenced"),
                                                             SetAna(ANA_INACCESSIBLE)]
    return s, []


def _resync_done(s: State, now: float) -> Tuple[State, list]:
    if s.role != RESYNC:
        return s, []
    g = s.data_gen if s.resync_role == "source" else s.peer_data_gen
    if s.resync_role == "target" and s.peer_data_gen == NULL_GEN:
        g = s.data_gen
    if g == NULL_GEN:
        # Two new replicas paired for the first time: their common history starts here.
        g = Gen(1, min(s.me, s.peer))
    acts: list = []
    if s.lease_until:
        acts.append(ReleaseLease())
    s = _enter(s, PAIRED, now, "resync done", data_gen=g, base_gen=g, resync_role="",
               lease_until=0.0, lease_sent_at=None, split_brain="", behind=False)
    return s, acts + [SaveGens(g, g), SetMirror("paired"), SetAna(ANA_OPTIMIZED)]


def _admin_resync(s: State, e: AdminResync, now: float) -> Tuple[State, list]:
    if e.source not in (s.me, s.peer):
        return s, [Alert("error", f"resync source must be {s.me} or {s.peer}, not {e.source}")]
    if not peer_usable(s, now):
        return s, [Alert("error", "resync needs the peer alive and the mirror link up")]
    role = "source" if e.source == s.me else "target"
    if role == "target":
        # Our solo writes are discarded: we take the peer's generation line.
        s = replace(s, base_gen=s.peer_data_gen)
    acts: list = [Alert("warning", f"operator resync: {e.source} is the source (full copy)")]
    if s.lease_until and role == "target":
        acts.append(ReleaseLease())
    s = _enter(s, RESYNC, now, f"operator resync as {role}", resync_role=role, split_brain="",
               lease_sent_at=None, lease_until=s.lease_until if role == "source" else 0.0,
               behind=s.behind or role == "target")
    if role == "target":
        acts.append(SaveGens(s.data_gen, s.base_gen, True))
    return s, acts + [SetMirror("resync_" + role, s.lease_until), StartResync(role, True),
                      SetAna(ANA_OPTIMIZED)]


def step(s: State, e, now: float) -> Tuple[State, tuple]:
    """One event in, the new state and the actions for the caller out."""
    pre: list = []
    s0 = s
    if s.role == SOLO and not lease_valid(s, now):
        # Whatever the event, an ended lease fences first.
        s, pre = _fence(s, now, "lease expired")
        pre.append(Alert("warning", f"{s.me}: lease expired, fenced"))
    if isinstance(e, Tick):
        s, a = _tick(s, now)
    elif isinstance(e, PeerHeartbeat):
        s, a = _heartbeat(s, e, now)
    elif isinstance(e, PeerTimeout):
        s = replace(s, peer_seen=None, peer_loops_at=None)
        s, a = _tick(s, now)
    elif isinstance(e, LeaseGranted):
        s, a = _lease_granted(s, e, now)
    elif isinstance(e, LeaseDenied):
        s, a = _lease_denied(s, e, now)
    elif isinstance(e, WitnessUnreachable):
        a = []
        if s.lease_sent_at is not None and (not e.sent_at or e.sent_at == s.lease_sent_at):
            s = replace(s, lease_sent_at=None, lease_retry_at=now + s.timing.retry_s)
            if s.role == FENCED:
                a = [SetMirror("fenced"), SetAna(ANA_INACCESSIBLE)]
        s = replace(s, witness_ok=False)
    elif isinstance(e, WitnessReachable):
        s, a = replace(s, witness_ok=True), []
    elif isinstance(e, MirrorDown):
        s = replace(s, mirror_up=False)
        s, a = _tick(s, now)
    elif isinstance(e, MirrorUp):
        s = replace(s, mirror_up=True)
        s, a = _tick(s, now)
    elif isinstance(e, ResyncDone):
        s, a = _resync_done(s, now)
    elif isinstance(e, AdminResync):
        s, a = _admin_resync(s, e, now)
    else:
        raise TypeError(f"unknown event {e!r}")
    if granting(s0.role) and not granting(s.role):
        # Our last grant may be as late as now.
        s = replace(s, peer_read_until=max(s.peer_read_until, now + s.timing.read_lease_end_s))
    assert s.role != SOLO or lease_valid(s, now), "SOLO without a valid lease"
    assert s.role != SOLO or s0.role == SOLO or now >= s.peer_read_until, \
        "SOLO while the peer may hold a read lease"
    return s, tuple(pre) + tuple(a)
