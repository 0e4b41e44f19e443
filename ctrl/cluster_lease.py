"""etcd as a pair's witness (docs/architecture.md, Cluster): the solo lease.

A controller that lost its peer may go SOLO only when an etcd transaction
grants it its pair's solo lease. The decision is the witness's own
(`witness.LeaseTable.request`: one holder at a time, never to a controller
whose data is older than the generation the last holder writes under), made
on what etcd holds:

  P/solo/PAIR   {"holder": NODE, "gen": [n, node]} under an etcd lease of
                ceil(lease_s) seconds, granted after the request was sent
  P/gen/PAIR    [n, node]: the generation the last holder writes under
                (no lease: it outlives every holder)

"The holder's lease can still be valid" is "P/solo/PAIR exists": the key
goes only when its etcd lease ends, which etcd times from after the request
was sent and only extends (a new etcd leader renews every lease), while the
holder times its lease from the send and shortens it by ha's drift margin.
So the key outlives the holder's own view of its lease, as the witness's
record does.

One request: read both keys (one revision), decide with the witness's rule,
grant an etcd lease, then a txn that compares both keys' mod revisions and
writes both. A lost race or a lost answer re-reads and decides again until
the deadline; a txn whose answer was lost may have committed, and the
re-read then shows this node as holder: a renewal, granted again. Without
quorum nothing is granted (the lease grant itself needs the leader) and
the answer is ha.WitnessUnreachable: as with the witness, losing the peer
then means FENCED, and losing etcd while PAIRED changes nothing.

The answers are ha's events (LeaseGranted, LeaseDenied, WitnessUnreachable),
so the pair coordinator feeds them to ha.step as it feeds the witness's.
"""

from __future__ import annotations

import json
import logging
import math
import time

from . import etcd, ha
from .witness import MAX_LEASE_S, LeaseTable, PairRecord

log = logging.getLogger("srrs.cluster.lease")


class SoloLease:
    def __init__(self, client: etcd.Client, prefix: str = "/srrs/",
                 max_lease_s: float = MAX_LEASE_S):
        self.etcd = client
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.max_lease_s = max_lease_s

    def keys(self, pair: str):
        return self.prefix + "solo/" + pair, self.prefix + "gen/" + pair

    def holder(self, pair: str) -> dict:
        """{"holder": NODE or "", "gen": [n, node] or None, "lease": etcd lease id}."""
        (solo, gen), _ = self._read(pair)
        s = json.loads(solo.value) if solo else {}
        return {"holder": s.get("holder", ""), "gen": json.loads(gen.value) if gen else None,
                "lease": solo.lease if solo else 0}

    def _read(self, pair: str):
        r = self.etcd.txn([], [etcd.get(k) for k in self.keys(pair)])
        return tuple(v[0] if v else None for v in r.responses), r.revision

    def _read3(self, pair: str):
        """The solo key, the generation and the pair's catalog record, at one revision."""
        ks = (*self.keys(pair), self.prefix + "pairs/" + pair)
        r = self.etcd.txn([], [etcd.get(k) for k in ks])
        return tuple(v[0] if v else None for v in r.responses)

    def _decide(self, pair, node, lease_s, data_gen, next_gen, solo, gen) -> tuple:
        """The witness's rule on etcd's record: (ok, reason). A key that
        exists is a lease that may still run (its end is etcd's business)."""
        holder = json.loads(solo.value)["holder"] if solo else ""
        rec = PairRecord(holder=holder, expires=math.inf if solo else 0.0,
                         gen=json.loads(gen.value) if gen else None)
        # started far in the past: etcd keeps its leases across restarts, so
        # the witness's "just restarted" wait has no counterpart here
        table = LeaseTable(started=-2 * self.max_lease_s, max_lease_s=self.max_lease_s,
                           pairs={pair: rec})
        ok, reason, holder = table.request(pair, node, lease_s, data_gen, next_gen, 0.0)
        if not ok and "held by" in reason:
            reason = f"lease held by {holder}"
        return ok, reason

    def request(self, pair: str, node: str, lease_s: float, data_gen: ha.Gen,
                next_gen: ha.Gen, sent_at: float, deadline: float = 2.0):
        """Ask for (or renew) the pair's solo lease; sent_at is the caller's
        monotonic send time (ha.RequestLease.sent_at). Blocks up to deadline s.
        -> ha.LeaseGranted | ha.LeaseDenied | ha.WitnessUnreachable."""
        end = time.monotonic() + deadline
        dg, ng = list(ha.Gen.from_json(data_gen).to_json()), list(ha.Gen.from_json(next_gen).to_json())
        solo_k, gen_k = self.keys(pair)
        why = "no answer"
        while True:
            left = end - time.monotonic()
            if left <= 0:
                log.info("solo lease %s for %s: etcd unreachable (%s)", pair, node, why)
                return ha.WitnessUnreachable(sent_at)
            try:
                solo, gen, pr = self._read3(pair)
                nodes = json.loads(pr.value).get("nodes") if pr is not None else None
                if nodes and node not in nodes:
                    # The catalog's node list fences: a controller registered for
                    # the pair ahead of `srrs cluster replace`, or one replaced out
                    # of it, never serves alone (Replacing a server).
                    reason = f"{node} is not a node of pair {pair} ({', '.join(nodes)})"
                    log.info("solo lease %s refused to %s: %s", pair, node, reason)
                    return ha.LeaseDenied(sent_at, reason)
                ok, reason = self._decide(pair, node, lease_s, dg, ng, solo, gen)
                if not ok:
                    log.info("solo lease %s refused to %s: %s", pair, node, reason)
                    return ha.LeaseDenied(sent_at, reason)
                lid, _ = self.etcd.grant(math.ceil(lease_s), deadline=left)
                r = self.etcd.txn(
                    [etcd.mod_is(solo_k, solo.mod_revision if solo else 0),
                     etcd.mod_is(gen_k, gen.mod_revision if gen else 0),
                     etcd.mod_is(self.prefix + "pairs/" + pair, pr.mod_revision if pr else 0)],
                    [etcd.put(solo_k, {"holder": node, "gen": ng}, lid), etcd.put(gen_k, ng)],
                    deadline=max(0.01, end - time.monotonic()))
                if r.succeeded:
                    if solo is not None and solo.lease != lid:
                        self._revoke(solo.lease)  # our previous grant: no key is on it now
                    return ha.LeaseGranted(sent_at, lease_s)
                self._revoke(lid)
                why = "lost a race"
            except etcd.Unavailable as e:
                why = str(e)
            except etcd.EtcdError as e:
                # refused outright (not a lost member): an answer, not a silence
                return ha.LeaseDenied(sent_at, f"etcd: {e}")

    def unwind(self, pair: str, node: str, granted_gen, data_gen) -> bool:
        """Undo a grant its requester never used: its answer came after the
        requester stopped waiting for it (ha ignores it), so the node never
        acknowledged a write under granted_gen. Left in place, P/gen would
        name a generation no replica has, and the peer (data_gen equal to
        ours) would be refused as outdated for ever. Only while P/gen is still
        granted_gen and the solo key is ours or gone: P/gen back to data_gen
        (the requester's current one), the solo key deleted. The caller makes
        sure it holds no lease and waits for none. True when undone."""
        solo_k, gen_k = self.keys(pair)
        (solo, gen), _ = self._read(pair)
        if gen is None or json.loads(gen.value) != list(ha.Gen.from_json(granted_gen).to_json()):
            return False
        if solo is not None and json.loads(solo.value).get("holder") != node:
            return False
        ops = [etcd.put(gen_k, list(ha.Gen.from_json(data_gen).to_json()))]
        ops += [etcd.delete(solo_k)] if solo is not None else []
        r = self.etcd.txn([etcd.mod_is(gen_k, gen.mod_revision),
                           etcd.mod_is(solo_k, solo.mod_revision if solo else 0)], ops)
        if r.succeeded and solo is not None:
            self._revoke(solo.lease)
        return r.succeeded

    def release(self, pair: str, node: str, deadline: float = 2.0) -> bool:
        """Give the lease back (ha.ReleaseLease): only its holder can. True when
        this node held it and it is gone now."""
        solo_k, _ = self.keys(pair)
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                (solo, _), _ = self._read(pair)
                if solo is None or json.loads(solo.value).get("holder") != node:
                    return False
                if self.etcd.txn([etcd.mod_is(solo_k, solo.mod_revision)],
                                 [etcd.delete(solo_k)]).succeeded:
                    self._revoke(solo.lease)
                    return True
            except etcd.Unavailable:
                time.sleep(0.05)
        return False

    def _revoke(self, lease: int) -> None:
        try:
            self.etcd.revoke(lease)
        except etcd.EtcdError:
            pass   # it ends at its TTL; it holds no key of ours
