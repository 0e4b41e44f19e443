"""Convergence: a controller's replicas and exports follow the catalog
(docs/architecture.md, Cluster, Convergence).

A controller with [cluster] and [pair] follows the catalog (a snapshot, then
its changes; a full snapshot again after a compaction or a restart) and makes
its part of the volumes of ITS pair match it. For a volume with uuid U:

  * a thin pool volume `c-U` in the cluster pool ([cluster] pool, else the
    only pool), grown (never shrunk) to the catalog size;
  * a mirror bdev `c-U` over it on the pair's link (the replica steps aside to
    `c-U.replica`), mirror volume id 1023 - the catalog slot, the same on both
    controllers;
  * one NVMe/TCP subsystem `volume_nqn(U)`: NSID 1 with NGUID/UUID = U, ANA
    group 1 following the pair's ANA state (inaccessible until the peer has
    the mirror too, except SOLO), the catalog's host allow-list.

Everything named `c-*` in the cluster pool that the catalog no longer has on
this pair is taken down and deleted. A change that fails (a full pool, a
busy export) is retried every second until it succeeds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from typing import Any, Optional

from . import etcd, ha
from .cluster import pair_name, volume_nqn
from .cluster_balance import Balancer
from .cluster_catalog import Snapshot, Volume
from .cluster_move import Mover, move_key
from .cluster_replace import Replacer

log = logging.getLogger("srrs.cluster.sync")

PREFIX = "c-"           # pool volume / mirror bdev name of a cluster volume: c-UUID
MADE_FILE = "cluster-made.json"


class Made(dict):
    """uuid -> what our replica of it was made for (CatalogSync.made), kept
    across restarts in the pair's state_dir: a controller restarted while a
    replica is on its way out ("gone") or was made for a move ("move:...")
    must not take it for a home replica (docs/architecture.md, Volume
    moves). Only those entries are written ("home" is what an unknown
    replica is), so a file write is as rare as a move or a delete."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        try:
            with open(path) as f:
                raw = json.load(f)
            if not isinstance(raw, dict):
                raise ValueError("not an object")
            for u, v in raw.items():
                if isinstance(u, str) and isinstance(v, str) and (
                        v == "gone" or v.startswith("move:")):
                    super().__setitem__(u, v)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            log.warning("catalog sync: %s: %s (replicas found are taken as home ones)", path, e)

    def _save(self) -> None:
        keep = {u: v for u, v in self.items() if v != "home"}
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(keep, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            log.error("catalog sync: writing %s: %s", self.path, e)

    def __setitem__(self, u: str, v: str) -> None:
        old = self.get(u, "home")
        super().__setitem__(u, v)
        if old != v and (old != "home" or v != "home"):
            self._save()

    def setdefault(self, u: str, v: str) -> str:
        if u not in self:
            self[u] = v
        return self[u]

    def pop(self, u: str, *default):
        had = self.get(u, "home")
        out = super().pop(u, *default)
        if had != "home":
            self._save()
        return out
STATUS_WAIT_S = 0.2     # status(): the wait for the lock before a view without it
MAX_VOL_ID = 1023       # ffi/mirror_int.h M_MAX_VOLS - 1


def bdev_name(uuid: str) -> str:
    return PREFIX + uuid


# A replica's pool-volume uuid records what it was made for, with the replica
# itself, from its create on: TAG, then 6 bytes of a hash of the volume's uuid
# and its placement ("home", or move_key() of the move that brought it), then 6
# random bytes (a pool volume's uuid must be unique). Pool volumes made before
# this (random uuids) carry no such record.
REPLICA_TAG = b"SRp\x01"


def _placement_hash(u: str, placed: str) -> bytes:
    return hashlib.sha256(f"{u}|{placed}".encode()).digest()[:6]


def replica_uuid(u: str, placed: str) -> bytes:
    return REPLICA_TAG + _placement_hash(u, placed) + os.urandom(6)


def replica_made_for(pool_uuid: str, u: str, placed: str) -> Optional[bool]:
    """Whether the replica whose pool-volume uuid this is was made for `placed`;
    None when it does not say (made before replicas recorded it)."""
    try:
        b = bytes.fromhex(pool_uuid.replace("-", ""))
    except ValueError:
        return None
    if len(b) != 16 or b[:4] != REPLICA_TAG:
        return None
    return b[4:10] == _placement_hash(u, placed)


def vol_id(v: Volume) -> int:
    return MAX_VOL_ID - v.slot


class CatalogSync:
    def __init__(self, ctl: Any, cluster: Any):
        self.ctl, self.cluster = ctl, cluster
        self.pair = ctl.pair
        self.pair_name = pair_name(ctl.conf.pair)
        self.pool = self._pick_pool(cluster.conf.pool)
        # Host I/O of a volume stopped here this long before its mirror goes
        # (delete, grow, moved away): the peer, told by the same catalog change,
        # has stopped its own by then, so no write it replicates reaches a
        # mirror we no longer have (that would drop the link).
        self.grace_s = cluster.conf.drain_s
        self.lock = threading.RLock()
        self.snap: Optional[Snapshot] = None
        self.have: dict = {}         # uuid -> Volume as made here
        self.errors: dict = {}       # uuid -> the last error making it
        self.converged = 0           # full passes done
        self._quiet: dict = {}       # uuid -> when its host I/O stopped here (delete, grow)
        self._growing: set = set()   # uuids whose grow has begun here
        # uuid -> what our replica of it was made for: "home" (the catalog
        # places it here) or "move:<id>" (the destination of that move). A
        # volume moved away and straight back must not find its old replica
        # (stale where the tee's clusters are unallocated, and holding the old
        # mirror slot): docs/architecture.md, Volume moves.
        self.made = Made(os.path.join(self.pair.conf.state_dir, MADE_FILE))
        self._ana: dict = {}         # nqn -> the ANA state we set
        self._stop = threading.Event()
        # The pair calls its listeners under its own lock; ours only wakes the tick
        # thread (a converge holding self.lock may be waiting on the pair).
        self._kick = threading.Event()
        self.pair.ana_listeners.append(lambda _s: self._kick.set())
        self.mover = Mover(self)       # volume moves (ctrl/cluster_move.py)
        self.balancer = Balancer(self)  # rebalance and drains (ctrl/cluster_balance.py)
        self.replacer = Replacer(self)  # a replaced peer (ctrl/cluster_replace.py)
        self._threads = [threading.Thread(target=fn, name=n, daemon=True) for fn, n in
                         ((self._follow, "srrs-catalog"), (self._tick, "srrs-catalog-tick"))]
        for t in self._threads:
            t.start()

    def _pick_pool(self, name: str):
        pools = self.ctl.pool.pools if self.ctl.pool is not None else {}
        if name:
            if name not in pools:
                raise ValueError(f"cluster.pool: no pool {name!r}")
            return pools[name]
        if len(pools) != 1:
            raise ValueError("cluster.pool: is required with "
                             f"{'no' if not pools else 'several'} pools")
        return next(iter(pools.values()))

    # -- threads -------------------------------------------------------------------
    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                for snap, _changes in self.cluster.catalog.follow(self._stop):
                    self.converge(snap)
            except (etcd.EtcdError, OSError) as e:
                # etcd gone past its deadline: what we serve stays; read it all again
                log.warning("catalog sync: following the catalog: %s", e)
                self._stop.wait(1.0)

    def _tick(self) -> None:
        """Retries what failed; ANA once the peer has the mirror; `ready` in the catalog."""
        while not self._stop.is_set():
            self._kick.wait(1.0)
            self._kick.clear()
            if self._stop.is_set():
                return
            try:
                with self.lock:
                    if (self.errors or self._quiet) and self.snap is not None:
                        self.converge(self.snap)
                if self.replacer.waiting and self.snap is not None:
                    self.replacer.update(self.snap)
                self._apply_ana()
                self._mark_ready()
            except Exception as e:  # never let the thread die silently
                log.error("catalog sync: %s", e)

    # -- converging -------------------------------------------------------------------
    def converge(self, snap: Snapshot) -> None:
        self.replacer.update(snap)  # a server replaced: our pair's new peer
        self.mover.update(snap)     # first: its ANA rules apply to what we export now
        self.balancer.update(snap)
        with self.lock:
            self.snap = snap
            want = {u: v for u, v in snap.volumes.items() if v.pair == self.pair_name}
            made = {u: "home" for u in want}
            # what a replica here must have been made for (replica_uuid): the move
            # that brought the volume to this pair ("" where unknown: not checked)
            placed = {u: v.placed for u, v in want.items()}
            # volumes moving here: replicas and an inaccessible export before the cutover
            moving = self.mover.wanted(snap)
            want.update(moving)
            made.update({u: move_key(snap.moves[u]) for u in moving})
            placed.update({u: made[u] for u in moving})
            found = {d["name"][len(PREFIX):]: d["uuid"] for d in self.pool.volume_list()
                     if d["name"].startswith(PREFIX)}
            here = set(found) | set(self.have)
            for u in sorted(here - set(want)):
                self._try(u, self._remove, u)
            for u, v in sorted(want.items()):
                old = self.made.setdefault(u, made[u]) if u in here else None
                if old is not None and old != made[u] and (made[u] != "home" or old == "gone"):
                    # an older incarnation of a volume moving here (or back home while
                    # its old replica is still on its way out): gone first. A replica
                    # made for a move that completed here (move:... -> home) stays.
                    stale = True
                else:
                    # not made in this run: what the replica itself says it was made
                    # for (a controller down while the volume moved away and back
                    # finds its replica of before with no note: stale where the
                    # move's copy did not write)
                    stale = (u in found and u not in self.have and placed[u] != "" and
                             replica_made_for(found[u], u, placed[u]) is False)
                    if stale:
                        log.warning("cluster volume %s: the replica here was made before the "
                                    "volume left this pair (it is now here by %s): a fresh one "
                                    "replaces it", u, placed[u])
                if stale:
                    self._try(u, self._remove, u)
                    if u in self._quiet or self.pool.volume_info(bdev_name(u)) is not None:
                        continue        # still quiescing: the tick comes back
                self._try(u, self._ensure_as, (v, made[u], placed[u] or "home"))
            self.converged += 1
        self._apply_ana()

    def _try(self, u: str, fn, arg) -> None:
        try:
            fn(arg)
            self.errors.pop(u, None)
        except Exception as e:
            if str(e) != self.errors.get(u):
                log.error("catalog sync: volume %s: %s", u, e)
            self.errors[u] = str(e)

    def _ensure_as(self, arg) -> None:
        v, made, placed = arg
        self._ensure(v, placed)
        self.made[v.uuid] = made

    def _ensure(self, v: Volume, placed: str = "home") -> None:
        name, nqn = bdev_name(v.uuid), volume_nqn(v.uuid)
        cs = self.pool.conf.cluster_size
        size = -(-v.size // cs) * cs
        info = self.pool.volume_info(name)
        if info is None:
            self.pool.volume_create(name, size, thin=True, uuid=replica_uuid(v.uuid, placed))
            log.info("cluster volume %s/%s (%s): replica created, %d bytes", v.tenant, v.name,
                     v.uuid, size)
        elif info["size"] < size and not self._grow(v, name, nqn, size):
            return              # the next tick goes on
        self.pair.add_volume(name, name, vol_id(v))
        nv = self.ctl.nvmf
        subs = {s["nqn"]: s for s in nv.subsystems()}
        if nqn not in subs:
            nv.add_subsystem(nqn, allow_any_host="*" in v.hosts, persist=False)
            self._ana.pop(nqn, None)
            subs[nqn] = {"hosts": [], "allow_any_host": "*" in v.hosts, "namespaces": []}
        s = subs[nqn]
        if not any(ns["nsid"] == 1 for ns in s["namespaces"]):
            # its ANA state first: the namespace must not appear optimized before
            # the peer has the mirror (of this size)
            self._set_ana(nqn, self._state(v.uuid), force=True)
            nv.add_namespace(nqn, name, nsid=1, uuid=v.uuid, ana_group=1)
        if s["allow_any_host"] != ("*" in v.hosts):
            nv.set_allow_any_host(nqn, "*" in v.hosts)
        want = {h for h in v.hosts if h != "*"}
        for h in sorted(want - set(s["hosts"])):
            nv.add_host(nqn, h)
        for h in sorted(set(s["hosts"]) - want):
            nv.remove_host(nqn, h)
        self.have[v.uuid] = v

    def _quiesced(self, u: str, name: str) -> bool:
        """True once [cluster] drain_s has passed since host I/O stopped here (or there is no
        mirror to protect)."""
        since = self._quiet.setdefault(u, time.monotonic())
        if name in self.pair.runtime and time.monotonic() - since < self.grace_s:
            return False
        del self._quiet[u]
        return True

    def _grow(self, v: Volume, name: str, nqn: str, size: int) -> bool:
        """Online: a mirror bdev has its size for life, so the namespace stays
        (hosts keep their device) but turns ANA-inaccessible here (host I/O
        moves to no path and waits); drain_s later it rests on a placeholder of
        its size while the mirror goes, the replica grows and a new mirror
        comes, then reads and writes that one, and hosts take the new size
        from the namespace-changed AEN. It turns accessible again once the
        peer has the mirror of the new size (_state). False while waiting."""
        nv, core = self.ctl.nvmf, self.ctl.core
        exported = any(s["nqn"] == nqn and s["namespaces"] for s in nv.subsystems())
        self._growing.add(v.uuid)       # _state: inaccessible until done
        if exported:
            self._set_ana(nqn, "inaccessible")
        if not self._quiesced(v.uuid, name):
            return False
        hold = name + ".hold"
        held = any(b["name"] == hold for b in core.bdev_list())   # a grow that failed midway
        if exported and not held:
            # never read or written: the namespace is inaccessible until it is back
            # on a mirror (commands check the ANA state before the bdev)
            info = core.bdev_info(name)
            core.bdev_create_null(hold, info["size"], info["block_size"])
            nv.replace_namespace(nqn, 1, hold)
            held = True
        self.pair.remove_volume(name, forget=False)
        self.pool.volume_resize(name, size)
        self.pair.add_volume(name, name, vol_id(v))
        if held:    # back on the (new) mirror only: never on the bare replica
            nv.replace_namespace(nqn, 1, name)
            core.bdev_delete(hold)
        self._growing.discard(v.uuid)
        log.info("cluster volume %s/%s (%s): grown online to %d bytes", v.tenant, v.name,
                 v.uuid, size)
        return True

    def _remove(self, u: str) -> None:
        name, nqn = bdev_name(u), volume_nqn(u)
        nv = self.ctl.nvmf
        if any(s["nqn"] == nqn for s in nv.subsystems()):
            nv.remove_subsystem(nqn)
        self._ana.pop(nqn, None)
        self.mover.release(u)       # a move's mirror over the replica goes first
        self.have.pop(u, None)
        self.made[u] = "gone"       # whatever comes next gets a fresh replica
        self._growing.discard(u)
        self.pair.retire(name)      # the peer must not pair a new mirror with this one
        if not self._quiesced(u, name):
            return
        self.pair.remove_volume(name)
        if any(b["name"] == name + ".hold" for b in self.ctl.core.bdev_list()):
            self.ctl.core.bdev_delete(name + ".hold")   # a grow that failed midway
        if self.pool.volume_info(name) is not None:
            self.pool.volume_delete(name)
            log.info("cluster volume %s: replica deleted", u)
        self.made.pop(u, None)

    # -- ANA and readiness -----------------------------------------------------------
    def _state(self, u: str) -> str:
        """The volume's ANA state: the pair's, but inaccessible while the peer has
        not made its mirror yet (a write replicated to it would break the link)."""
        if self.pair.ana != ha.ANA_OPTIMIZED or u in self._growing:
            return "inaccessible"
        if self.mover.ana(u):
            return "inaccessible"   # a move: not ours yet, not the tee, or cutting over
        alone = self.pair.state.role == ha.SOLO
        return "optimized" if alone or self.pair.peer_has(bdev_name(u)) else "inaccessible"

    def _apply_ana(self) -> None:
        with self.lock:
            for u in list(self.have):
                self._set_ana(volume_nqn(u), self._state(u))

    def _set_ana(self, nqn: str, st: str, force: bool = False) -> None:
        if self._ana.get(nqn) == st and not force:
            return              # every change raises an AEN on the hosts' controllers
        try:
            self.ctl.nvmf.set_ana_state(nqn, 1, st)
            self._ana[nqn] = st
        except (OSError, KeyError) as e:
            log.warning("catalog sync: ANA of %s: %s", nqn, e)

    def _mark_ready(self) -> None:
        """Node 0 of the pair writes `ready` once both controllers have the volume."""
        if self.pair.conf.me_id > self.pair.conf.peer_id:
            return
        with self.lock:
            todo = [v for u, v in self.have.items() if v.state == "creating"
                    and u not in self.errors and self.pair.peer_has(bdev_name(u))]
        for v in todo:
            try:
                self.cluster.catalog.set_volume_state(v.uuid, "ready")
            except Exception as e:  # a catalog refusal or etcd away: next tick
                log.info("catalog sync: %s ready: %s", v.uuid, e)

    # -- service interface -------------------------------------------------------------
    def status(self) -> dict:
        """A converge or a move step holds self.lock across etcd and pair
        calls (seconds when etcd is slow), and `srrs cluster status` must
        answer meanwhile: past STATUS_WAIT_S the view is taken without the
        lock (each field one read, the dicts copied whole: atomic under the
        interpreter lock), less the moves' live link figures, which need the
        links to stay open while they are read ("moves": {"busy": true})."""
        locked = self.lock.acquire(timeout=STATUS_WAIT_S)
        try:
            snap = self.snap
            return {"pair": self.pair_name, "pool": self.pool.name,
                    "revision": snap.revision if snap else 0,
                    "volumes": len(self.have), "converged": self.converged,
                    "errors": dict(self.errors),
                    "moves": self.mover.status() if locked else {"busy": True},
                    "balance": self.balancer.status(),
                    "replace": self.replacer.status()}
        finally:
            if locked:
                self.lock.release()

    def close(self) -> None:
        self._stop.set()
        self._kick.set()
        self.balancer.close()
        self.mover.close()
        for t in self._threads:
            t.join(5)


def start(ctl: Any, section: Any) -> Optional[CatalogSync]:
    """After the pair and the exports: it makes mirrors and subsystems."""
    if section is None or ctl.cluster is None or ctl.pair is None or ctl.nvmf is None:
        return None
    if not section.pool and (ctl.pool is None or not ctl.pool.pools):
        # a controller without a pool holds no catalog volumes; its pair may
        # still use etcd as its witness
        log.info("cluster: no pool, so no catalog volumes on this controller")
        return None
    return CatalogSync(ctl, ctl.cluster)
