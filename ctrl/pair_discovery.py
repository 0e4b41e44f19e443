"""Discovery across a pair without a cluster (docs/architecture.md, Exports:
Discovery). Each controller of a pair tells the other, in its heartbeats, the
NVMe/TCP subsystem ports it serves (subsystem, address, port, the hosts it
admits), and lists its own and the peer's in its discovery log: a host that
asks either controller learns both paths, so `nvme connect-all` against one
of them sets up the pair's multipath. With `[cluster]` the catalog feeds the
log instead (ctrl/cluster_view.py, DiscoveryFeed) and this stays idle.

Pure data in, the target's table out: `local()` and `table()` are plain
functions of the target's listeners and subsystems and of what the peer said;
`PairDiscovery` keeps the digests the heartbeats carry and pushes a table only
when it changed."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, List, Optional, Sequence, Tuple

log = logging.getLogger("srrs.pair")

WILDCARDS = ("0.0.0.0", "::")
MAX_PORTS = 100_000      # a peer's list longer than this is refused (a bad heartbeat)


def ports(listeners: Sequence[dict], subsystems: Sequence[dict],
          wildcard: bool) -> List[dict]:
    """One entry per subsystem and listener: {subnqn, traddr, trsvcid, hosts}
    (hosts ["*"] for a subsystem that admits any host). wildcard False leaves
    out wildcard listeners: nobody can reach a peer's 0.0.0.0 (our own target
    reports its wildcard at the address the host connected to)."""
    out = []
    for s in sorted(subsystems, key=lambda s: s["nqn"]):
        hosts = ["*"] if s.get("allow_any_host") else sorted(s.get("hosts", ()))
        if not hosts:
            continue            # admits nobody: listed to nobody
        for x in listeners:
            if not wildcard and x["addr"] in WILDCARDS:
                continue
            out.append({"subnqn": s["nqn"], "traddr": x["addr"], "trsvcid": str(x["port"]),
                        "hosts": hosts})
    return out


def check_ports(v: Any) -> List[dict]:
    """The peer's list, from its heartbeat: ValueError unless well formed."""
    if not isinstance(v, list) or len(v) > MAX_PORTS:
        raise ValueError("exports: not a list (or too long)")
    out = []
    for e in v:
        if not isinstance(e, dict):
            raise ValueError("exports: an entry is not a table")
        d = {k: e.get(k) for k in ("subnqn", "traddr", "trsvcid")}
        if not all(isinstance(x, str) and 0 < len(x) <= 223 for x in d.values()):
            raise ValueError(f"exports: bad entry {e!r:.200}")
        if d["traddr"] in WILDCARDS or len(d["traddr"]) > 63 or len(d["trsvcid"]) > 31:
            raise ValueError(f"exports: bad address in {e!r:.200}")
        hosts = e.get("hosts")
        if (not isinstance(hosts, list) or not hosts
                or not all(isinstance(h, str) and 0 < len(h) <= 223 and "\n" not in h
                           for h in hosts)):
            raise ValueError(f"exports: bad hosts in {e!r:.200}")
        d["hosts"] = list(hosts)
        out.append(d)
    return out


def digest(entries: Sequence[dict]) -> str:
    return hashlib.blake2b(json.dumps(entries, sort_keys=True).encode(),
                           digest_size=8).hexdigest()


class PairDiscovery:
    """The pair's half of the discovery log: ours (every listener) and the
    peer's ports, pushed to our target whenever either changes."""

    def __init__(self, ctl: Any):
        self.ctl = ctl
        self.pushes = 0
        self._seen: Tuple[Any, int] = (None, -1)     # (target, changes) computed from
        self._mine: List[dict] = []                   # our ports, wildcards included
        self._out: List[dict] = []                    # what the peer gets: no wildcards
        self._out_digest = digest([])
        self.peer: List[dict] = []
        self.peer_digest: Optional[str] = None
        self._peer_ver = 0                            # bumped by each new peer list
        self._synced: Tuple[Any, ...] = ()            # what the last sync was made from
        self._pushed: Tuple[Any, Optional[list]] = (None, None)

    def _target(self) -> Any:
        if getattr(self.ctl, "cluster", None) is not None:
            return None         # the catalog feeds the log
        tgt = getattr(self.ctl, "nvmf", None)
        return tgt if tgt is not None and hasattr(tgt, "set_discovery") else None

    def outgoing(self) -> Tuple[str, List[dict]]:
        """(digest, entries) of our ports for the peer; recomputed only when
        the target changed (its `changes` counter)."""
        tgt = self._target()
        if tgt is None:
            if self._seen[0] is not None:
                self._seen, self._mine, self._out = (None, -1), [], []
                self._out_digest = digest([])
            return self._out_digest, self._out
        n = tgt.changes
        if self._seen != (tgt, n):
            ls, subs = tgt.listeners(), tgt.subsystems()
            self._mine = ports(ls, subs, wildcard=True)
            self._out = ports(ls, subs, wildcard=False)
            self._out_digest = digest(self._out)
            self._seen = (tgt, n)
        return self._out_digest, self._out

    def status(self) -> dict:
        return {"ports": len(self._mine), "peer_ports": len(self.peer), "pushes": self.pushes}

    def peer_says(self, d: Optional[str], entries: Any) -> None:
        """From a heartbeat: the peer's digest, and its entries when it sent
        them (None: unchanged since the last that did). Bad ones are refused."""
        if entries is not None:
            try:
                self.peer = check_ports(entries)
            except ValueError as e:
                log.warning("pair: the peer's discovery ports refused: %s", e)
                return
            self.peer_digest = d if isinstance(d, str) else None
            self._peer_ver += 1

    def sync(self) -> None:
        """Our target's table = our ports and the peer's, when it changed."""
        tgt = self._target()
        if tgt is None:
            return
        self.outgoing()
        key = (tgt, self._seen[1], self._peer_ver)
        if key == self._synced:
            return
        self._synced = key
        mine = {(e["subnqn"], e["traddr"], e["trsvcid"]) for e in self._mine}
        table = self._mine + [e for e in self.peer
                              if (e["subnqn"], e["traddr"], e["trsvcid"]) not in mine]
        last_tgt, last = self._pushed
        if (last_tgt is tgt and last == table) or (last_tgt is not tgt and not table):
            return          # unchanged; or nothing to list, and no table yet to empty
        tgt.set_discovery(table)
        self._pushed = (tgt, table)
        self.pushes += 1
        log.info("pair: discovery log: %d ports of ours, %d of the peer's", len(self._mine),
                 len(table) - len(self._mine))
