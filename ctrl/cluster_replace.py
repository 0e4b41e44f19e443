"""The survivor's side of `srrs cluster replace` (docs/architecture.md, Cluster,
Replacing a server).

The catalog is the source of truth for who a pair's two nodes are: once
`Catalog.replace_node` has given the pair the nodes [survivor, new], the
survivor sees, in the snapshot it follows, that its configured peer is no
longer a node, reads the new node's registration (coordination endpoint,
mirror link address, CURVE public key) and re-targets its running pair to it
(`PairService.retarget`), without a restart and keeping the pair's name. The
same check at every start re-targets a survivor restarted with its old file.
"""

from __future__ import annotations

import logging
from typing import Any

from .cluster_catalog import Snapshot

log = logging.getLogger("srrs.cluster")


class Replacer:
    def __init__(self, sync: Any):
        self.sync = sync
        self.done = 0          # re-targets carried out
        self.waiting = ""      # why a re-target waits (status)

    def update(self, snap: Snapshot) -> None:
        try:
            self._update(snap)
        except Exception as e:     # the sync's threads must not die of it
            self._say(f"re-targeting the pair: {e}")

    def _update(self, snap: Snapshot) -> None:
        pair, me = self.sync.pair, self.sync.cluster.name
        pr = snap.pairs.get(self.sync.pair_name)
        if pr is None or me not in pr.nodes or len(pr.nodes) != 2:
            return
        want = next(n for n in pr.nodes if n != me)
        if want == pair.conf.peer:
            self.waiting = ""
            return
        m = snap.members.get(want)
        if m is None:
            self._say(f"the catalog names {want} as our peer; waiting for its registration")
            return
        a = m.addresses
        if not a.get("coord") or not a.get("mirror"):
            self._say(f"{want} registered no coordination or mirror address")
            return
        log.warning("cluster: pair %s: %s replaced by %s in the catalog: re-targeting",
                    pr.name, pair.conf.peer, want)
        try:
            pair.retarget(want, a["coord"], a["mirror"], a.get("curve", ""), name=pr.name)
        except (ValueError, OSError, TimeoutError) as e:
            self._say(f"re-targeting to {want}: {e}")
            return
        self.done += 1
        self.waiting = ""

    def _say(self, msg: str) -> None:
        if msg != self.waiting:
            log.warning("cluster: %s", msg)
        self.waiting = msg

    def status(self) -> dict:
        return {"retargets": self.done, "waiting": self.waiting}
