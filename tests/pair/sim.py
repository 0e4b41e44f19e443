"""A deterministic simulation of a pair: two ha.step machines, the witness's
LeaseTable, a fake clock and a network whose links can be cut."""

from __future__ import annotations

from dataclasses import dataclass, field

from srrs.ctrl import ha
from srrs.ctrl.witness import LeaseTable


@dataclass
class Node:
    name: str
    state: ha.State
    alive: bool = True
    loops: int = 0
    wedged: bool = False
    acts: list = field(default_factory=list)
    resync_left: int = 0      # ticks of resync work remaining


class Sim:
    def __init__(self, timing=None, dt=0.05, resync_ticks=3, witness_start=-100.0):
        self.t = 0.0
        self.dt = dt
        self.timing = timing or ha.Timing()
        self.table = LeaseTable(started=witness_start)
        self.witness_up = True
        self.cut = set()          # frozenset({x, y}) pairs that cannot talk; "w" is the witness
        self.resync_ticks = resync_ticks
        self.nodes = {}
        self.log = []
        self.inflight = []        # (deliver_at, node, event)
        for me, peer in (("a", "b"), ("b", "a")):
            self.start(me, peer)

    def start(self, me, peer, gens=None):
        data, base, behind = gens or (ha.NULL_GEN, ha.NULL_GEN, False)
        s, acts = ha.initial(me, peer, self.t, self.timing, data, base, behind=behind)
        self.nodes[me] = Node(me, s, acts=list(acts))

    def kill(self, name):
        n = self.nodes[name]
        n.alive = False

    def restart(self, name):
        n = self.nodes[name]
        gens = (n.state.data_gen, n.state.base_gen, n.state.behind)  # persisted
        self.start(name, n.state.peer, gens)

    def can(self, x, y):
        return frozenset((x, y)) not in self.cut

    def feed(self, n: Node, ev):
        if not n.alive:
            return
        s, acts = ha.step(n.state, ev, self.t)
        n.state = s
        n.acts += acts
        for a in acts:
            self.log.append((round(self.t, 3), n.name, a))
            self._act(n, a)

    def _act(self, n: Node, a):
        if isinstance(a, ha.RequestLease):
            if not self.witness_up or not self.can(n.name, "w"):
                self.inflight.append((self.t + self.timing.witness_timeout_s + self.dt, n.name,
                                      ha.WitnessUnreachable(a.sent_at)))
                return
            pair = "a+b"
            ok, reason, _ = self.table.request(pair, n.name, self.timing.lease_s,
                                               a.data_gen.to_json(), a.next_gen.to_json(),
                                               self.t + self.dt / 2)
            ev = ha.LeaseGranted(a.sent_at, self.timing.lease_s) if ok else ha.LeaseDenied(
                a.sent_at, reason)
            self.inflight.append((self.t + self.dt, n.name, ev))
        elif isinstance(a, ha.ReleaseLease):
            if self.witness_up and self.can(n.name, "w"):
                self.table.release("a+b", n.name)
        elif isinstance(a, ha.StartResync):
            n.resync_left = self.resync_ticks

    def tick(self):
        self.t = round(self.t + self.dt, 6)
        due = [x for x in self.inflight if x[0] <= self.t]
        self.inflight = [x for x in self.inflight if x[0] > self.t]
        for _, name, ev in due:
            self.feed(self.nodes[name], ev)
        for n in self.nodes.values():
            if n.alive and not n.wedged:
                n.loops += 1
        # heartbeats both ways
        for n in self.nodes.values():
            p = self.nodes[n.state.peer]
            if n.alive and p.alive and self.can(n.name, p.name) and self.can(n.name, "mirror"):
                pass
            if n.alive and p.alive and self.can(n.name, p.name):
                self.feed(p, ha.PeerHeartbeat(n.state.epoch, n.state.role, n.loops,
                                              n.state.data_gen, n.state.base_gen,
                                              ha.peer_alive(n.state, self.t),
                                              n.state.behind))
        # the mirror link: up iff both alive and the link is not cut
        a, b = self.nodes["a"], self.nodes["b"]
        up = a.alive and b.alive and self.can("a", "b") and not a.wedged and not b.wedged
        for n in (a, b):
            if n.alive and n.state.mirror_up != up:
                self.feed(n, ha.MirrorUp() if up else ha.MirrorDown())
        # resync progress: needs both sides in RESYNC and the link
        for n in (a, b):
            p = self.nodes[n.state.peer]
            if (n.alive and n.state.role == ha.RESYNC and n.state.resync_role == "source"
                    and up and p.state.role == ha.RESYNC):
                n.resync_left -= 1
                if n.resync_left <= 0:
                    self.feed(n, ha.ResyncDone())
                    self.feed(p, ha.ResyncDone())
        for n in (a, b):
            self.feed(n, ha.Tick())
        self.check()

    def run(self, seconds):
        for _ in range(int(round(seconds / self.dt))):
            self.tick()

    def serving_alone(self):
        return [n.name for n in self.nodes.values()
                if n.alive and n.state.role == ha.SOLO and ha.lease_valid(n.state, self.t)]

    def check(self):
        assert len(self.serving_alone()) <= 1, f"two SOLO at t={self.t}: {self.log[-20:]}"
        for n in self.nodes.values():
            if n.alive and n.state.role == ha.SOLO:
                assert ha.lease_valid(n.state, self.t)
        # the witness's view of the holder's lease always ends after the holder's
        for n in self.nodes.values():
            rec = self.table.pairs.get("a+b")
            if n.alive and n.state.role == ha.SOLO and rec is not None:
                assert rec.holder == n.name and rec.expires >= n.state.lease_until

    def roles(self):
        return {k: (n.state.role if n.alive else "DEAD") for k, n in self.nodes.items()}
