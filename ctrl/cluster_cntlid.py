"""Cluster-unique NVMe controller-ID ranges (docs/architecture.md, Exports and
Cluster, Controller-ID ranges).

During a volume move the controllers of two pairs are paths of one subsystem,
and a Linux host refuses a path whose controller ID (cntlid) it already has
for that subsystem. So every member of a cluster whose `[nvmf]` does not set
cntlid_min/cntlid_max takes a range of its own, handed out through etcd:

  P/cntlids/NAME        {"index": I, "min": LO, "max": HI}: member NAME's range
  P/cntlid-index/I      NAME: who holds index I

Index I is the range [1 + I*BLOCK, (I+1)*BLOCK]. A claim is ONE transaction
that creates both keys only if neither exists, so no two members ever hold
one index (two claimants of one index: one commits, the other re-reads and
takes the next) and a member never holds two. The keys have no lease: a
restarted controller reads its own key and gets the same range back. The
claim is made before the NVMe/TCP target is created (ctrl/daemon.py), so no
host ever sees a controller ID outside it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Optional

from . import etcd

log = logging.getLogger("srrs.cluster")

# IDs per member. The range is the whole target's (nvmf/ctrlr.c: one table of
# live controllers, every subsystem's and discovery's), so it also bounds the
# host controllers one member serves at once: at least a pair's MAX_SLOTS
# (1000) volumes, each to one host.
BLOCK = 1024
CNTLID_MAX = 0xFFEF                     # the highest dynamic controller ID (NVMe)
MAX_INDEX = CNTLID_MAX // BLOCK         # 63 members: indices 0..62 (IDs 1..64512)
RETRIES = 64                            # lost races before giving up
CACHE = "cntlids.json"                  # in the [pair] state_dir


class CntlidError(ValueError):
    """No range could be claimed (its message says why, for the operator)."""


@dataclass(frozen=True)
class CntlidRange:
    index: int
    min: int
    max: int
    source: str = "etcd"    # "etcd" | "cache" (etcd unreachable at start: the last claim)

    def as_dict(self) -> dict:
        return {"index": self.index, "min": self.min, "max": self.max, "source": self.source}


def range_of(index: int, block: int = BLOCK) -> CntlidRange:
    return CntlidRange(index, 1 + index * block, (index + 1) * block)


def _keys(prefix: str, name: str):
    if not name or "/" in name:
        raise CntlidError(f"bad member name {name!r}")
    p = prefix if prefix.endswith("/") else prefix + "/"
    return p + "cntlids/" + name, p + "cntlid-index/"


def _record(kv: etcd.KV, block: int) -> int:
    """The index of a member's record; one made with another range size is
    refused (its range would overlap ranges of this size)."""
    try:
        d = json.loads(kv.value)
        i, lo, hi = int(d["index"]), int(d["min"]), int(d["max"])
    except (ValueError, KeyError, TypeError):
        raise CntlidError(f"{kv.key}: not a controller-ID range record: {kv.value[:80]!r}") \
            from None
    r = range_of(i, block) if i >= 0 else None
    if r is None or (r.min, r.max) != (lo, hi):
        raise CntlidError(f"{kv.key}: range {lo}..{hi} (index {i}) is not one of this "
                          f"version's ranges of {block} IDs")
    return i


def claim(client: etcd.Client, prefix: str, name: str, block: int = BLOCK,
          max_index: Optional[int] = None) -> CntlidRange:
    """member name's range: the one it holds, else the lowest free index, taken
    in one transaction. Raises CntlidError when every index is taken, EtcdError
    when etcd does not answer."""
    max_index = MAX_INDEX if max_index is None else max_index
    if max_index * block > CNTLID_MAX:
        raise CntlidError(f"{max_index} ranges of {block} IDs pass {CNTLID_MAX}")
    mine, ip = _keys(prefix, name)
    for _ in range(RETRIES):
        r = client.txn([], [etcd.get(mine), etcd.get(ip, prefix=True)])
        if r.responses[0]:
            i = _record(r.responses[0][0], block)
            if i >= max_index:
                raise CntlidError(f"{mine}: index {i} is past the last range ({max_index - 1})")
            return range_of(i, block)
        used = set()
        for kv in r.responses[1]:
            try:
                used.add(int(kv.key[len(ip):]))
            except ValueError:
                continue
        i = next((n for n in range(max_index) if n not in used), -1)
        if i < 0:
            raise CntlidError(f"every controller-ID range is taken ({max_index} members of "
                              f"{block} IDs): set [nvmf] cntlid_min/cntlid_max on this "
                              f"controller, or free the range of a member that is gone "
                              f"(etcd keys {mine.rsplit('/', 1)[0]}/NAME and {ip}INDEX)")
        rng = range_of(i, block)
        ik = f"{ip}{i:05d}"
        t = client.txn([etcd.absent(mine), etcd.absent(ik)],
                       [etcd.put(mine, {"index": i, "min": rng.min, "max": rng.max}),
                        etcd.put(ik, name)])
        if t.succeeded:
            log.info("cluster: controller IDs %d..%d (range %d) claimed for %s",
                     rng.min, rng.max, i, name)
            return rng
        # lost a race (another claimant took index i, or our own earlier txn
        # whose answer was lost committed): read again
    raise CntlidError(f"{mine}: too many concurrent claims")


def _read_cache(path: str, prefix: str, name: str) -> Optional[CntlidRange]:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        if d.get("prefix") != prefix or d.get("name") != name:
            return None
        r = CntlidRange(int(d["index"]), int(d["min"]), int(d["max"]), "cache")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return r if 1 <= r.min <= r.max <= CNTLID_MAX else None


def _write_cache(path: str, prefix: str, name: str, r: CntlidRange) -> None:
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"prefix": prefix, "name": name, "index": r.index, "min": r.min,
                       "max": r.max}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cluster: cannot keep the controller-ID range in %s: %s", path, e)


def keep(state_dir: str, prefix: str, name: str, r: CntlidRange) -> bool:
    """Keep the range in the pair's state_dir for a start without etcd; False
    while that folder does not exist yet (the pair makes it after the claim)."""
    if not state_dir:
        return True
    if not os.path.isdir(state_dir):
        return False
    path = os.path.join(state_dir, CACHE)
    c = _read_cache(path, prefix, name)
    if c is None or (c.index, c.min, c.max) != (r.index, r.min, r.max):
        _write_cache(path, prefix, name, r)
    return True


def claim_at_start(client: etcd.Client, prefix: str, name: str, state_dir: str = "",
                   wait_s: float = 30.0, **kw: Any) -> CntlidRange:
    """The claim a controller makes before its NVMe/TCP target exists: retried
    while etcd does not answer; at once the range kept in the pair's state_dir
    (keep) if there is one, else after wait_s CntlidError. The etcd record
    never changes once made, so the kept copy is the member's range."""
    cache = os.path.join(state_dir, CACHE) if state_dir else ""
    end = time.monotonic() + wait_s
    while True:
        try:
            r = claim(client, prefix, name, **kw)
            keep(state_dir, prefix, name, r)
            return r
        except etcd.EtcdError as e:
            c = _read_cache(cache, prefix, name) if cache else None
            if c is not None:
                log.warning("cluster: etcd: %s: controller IDs %d..%d as last claimed "
                            "(%s)", e, c.min, c.max, cache)
                return c
            if time.monotonic() >= end:
                raise CntlidError(f"cannot claim a controller-ID range in etcd within "
                                  f"{wait_s:g} s ({e}); set [nvmf] cntlid_min/cntlid_max to "
                                  f"start without etcd") from None
            log.warning("cluster: claiming a controller-ID range: etcd: %s (retrying)", e)
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
