"""Online volume moves between pairs (docs/architecture.md, Cluster, Volume moves).

A move of volume U from pair S to pair D lives in etcd (`P/moves/U`,
cluster_catalog.Move). Every controller of S and D follows it here, in one
thread that works under the catalog sync's lock (it changes the same
namespaces and ANA states):

* the destination pair makes U's replicas as a pair volume of its own (the
  catalog sync does: the volume is "wanted" on D while it moves there) and
  exports U's subsystem -- same NQN, NSID 1, NGUID -- ANA-inaccessible, so a
  host that connects the new paths (the discovery log lists them) sees more
  paths of the same namespace;
* the source controller that is not the *tee* stops serving U (ANA
  inaccessible), waits for its I/O in flight and says so in the record
  (`quiet`): from then on every host write of U passes the tee;
* the tee (one source controller) puts a *move mirror* `mv-U` over its pair
  mirror `c-U` -- the C mirror of ffi/mirror*.c on a link of its own, to the
  *target* (one destination controller, whose `mv-U` lies over its own
  `c-U`), keyed with the record's per-move secret -- and moves its namespace
  onto it (srrs_nvmf_ns_replace: same NSID and UUID, waits for the I/O in
  flight on `c-U`). Every write the tee acknowledges is then on the target's
  pair too (the link's synchronous writes, ordered per stripe like a pair's).
  The copy is the mirror's resync: the tee marks U's allocated clusters dirty
  (a thin volume stays thin) and the resync copies them, stripe by stripe
  under the stripe lock, while host I/O goes on. While the link is down the
  tee's move mirror runs solo (writes local, their stripes dirty) and resumes
  the resync when it is back;
* cutover, on the tee: ANA inaccessible, wait for the namespace's I/O in
  flight, check that the link is up and no stripe is dirty, then ONE etcd
  transaction (Catalog.finish_move) gives the volume the destination's pair
  and slot. The destination's controllers see it and turn optimized; the
  source's see U gone and delete their replicas (catalog sync).

A death changes the tee or the target and bumps the record's epoch: the copy
starts over from the current allocation (resumes) on the new link. The tee's
source peer takes over when the tee's member key is gone and it serves the
pair alone (SOLO: the etcd lease says the tee is fenced); the target's
destination peer when the target's member key is gone. A cancel (RPC) is
carried out by the tee: its namespace goes back onto `c-U` and the record
becomes `cancelled` with the destination's reservation freed, and the
destination deletes its replicas.

No Python runs per I/O: the tee and the copy are the C mirror; this thread
polls the link's state every 100 ms while a move involves this controller.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import replace
from typing import Any, Optional

from srrs.units import parse_address

from ..ffi import binding
from . import etcd, ha
from .cluster import volume_nqn
from .cluster_catalog import CatalogError, Move, Snapshot, move_key  # noqa: F401 (re-exported)

log = logging.getLogger("srrs.cluster.move")

MOVE_PREFIX = "mv-"
POLL_S = 0.1            # link state while a move runs here
PROGRESS_S = 1.0        # progress written to etcd at most this often
RESYNC_ASK_S = 2.0      # a copy whose bitmaps have not met this long asks again
DRAIN_MS = 5000         # cutover: the namespace's I/O in flight must end within this
FAR = 10 * 365 * 86400  # solo "lease" of a move mirror: it never fences by itself
MODES = binding.MIRROR_MODES
MODE_NAMES = binding.MIRROR_MODE_NAMES


def move_name(u: str) -> str:
    return MOVE_PREFIX + u


def _host(addr: str) -> str:
    host, _ = parse_address(addr)
    return host


class _Link:
    """One move link and its mirror `mv-U` (C objects, ffi/mirror.h)."""

    def __init__(self, ctl: Any, u: str, epoch: int, node: int, listen: tuple, peer: tuple,
                 secret: str, stripe: int, bitmap: str):
        from ..ffi.binding import check, ffi, lib

        self.ffi, self.lib, self.check = ffi, lib, check
        self.ctl, self.u, self.epoch, self.name = ctl, u, epoch, move_name(u)
        o = ffi.new("struct srrs_mirror_link_opts *")
        o.reactor = 0           # the pair's link reactor: the replica c-U is served there
        o.node = node
        o.listen_host = listen[0].encode()
        o.listen_port = listen[1]
        o.peer_host = peer[0].encode()
        o.peer_port = peer[1]
        o.ping_ms = 50
        o.timeout_ms = 1000
        o.read_lease_ms = 500
        pair = getattr(ctl, "pair", None)   # a VM on the tee: its I/O held there too
        o.hold_ms = pair.conf.vhost_hold_ms if pair is not None else 0
        # only the tee (node 0) has host I/O: it orders every stripe and never
        # forwards one (both legs of a write then run at once)
        o.sole_orderer = 1     # node 0, the tee
        o.sole_orderer_agreed = 1   # both ends' from the one move record
        key = bytes.fromhex(secret)
        if len(key) != 32:
            raise ValueError("move secret: not 32 bytes")
        o.secret = key
        o.secret_len = 32
        self.pp = ffi.new("struct srrs_mirror_link **")
        check(lib.srrs_mirror_link_create(ctl.core.ptr, o, self.pp), f"move link of {u}")
        self.link = self.pp[0]
        self.bitmap = bitmap
        self.mirror = False
        self.down = 0           # polls in a row that found the link down
        self.rate = 0           # the copy limit set (bytes/s)
        self.rs_at = 0.0
        try:
            if os.path.exists(bitmap):
                os.unlink(bitmap)       # a new copy: nothing of an earlier epoch counts
            check(lib.srrs_mirror_create_over(self.link, self.name.encode(),
                                              ("c-" + u).encode(), 0, stripe, bitmap.encode()),
                  f"move mirror {self.name}")
            self.mirror = True
        except BaseException:
            self.close()
            raise

    def set_mode(self, mode: str) -> None:
        dl = int((time.monotonic() + FAR) * 1e9) if mode == "solo" else 0
        self.check(self.lib.srrs_mirror_set_mode(self.link, MODES[mode], dl), "move link mode")

    def limit(self, rate: int) -> None:
        """The copy's bytes/s (0: no limit)."""
        if rate != self.rate:
            self.check(self.lib.srrs_mirror_set_copy_limit(self.link, 0, max(0, int(rate))),
                       "move copy limit")
            self.rate = rate

    def resync(self) -> None:
        self.check(self.lib.srrs_mirror_resync_start(self.link, 0), "move resync")
        self.rs_at = time.monotonic()

    def arm_target(self) -> None:
        """The target side enters resync_target and asks the tee for its bitmap.
        A copy starts once the two sides' dirty bitmaps have met, and a side
        that is not yet in a resync mode ignores the other's: the tee may have
        connected, gone resync_source and sent its bitmap before this side's
        mode was set (the link listens from its creation). Asking on entry
        starts the copy whichever side came first (before, the copy waited
        forever with the link up and the tee's host writes held)."""
        self.set_mode("resync_target")
        self.resync()

    def info(self) -> dict:
        li = self.ffi.new("struct srrs_mirror_link_info *")
        self.check(self.lib.srrs_mirror_link_get_info(self.link, li))
        mi = self.ffi.new("struct srrs_mirror_info *")
        self.check(self.lib.srrs_mirror_get_info(self.link, self.name.encode(), mi))
        return {"up": bool(li.up), "mode": MODE_NAMES.get(li.mode, str(li.mode)),
                "dirty": mi.dirty_stripes, "left": mi.resync_left, "done": bool(mi.resync_done),
                "active": bool(mi.resync_active), "bytes": mi.resync_bytes,
                "stripe": mi.stripe_size, "tx_bytes": li.tx_bytes}

    def mark(self, bits: bytes) -> int:
        buf = self.ffi.from_buffer("uint8_t[]", bits)
        return self.check(self.lib.srrs_mirror_mark_dirty(self.link, self.name.encode(), buf,
                                                          len(bits)), "move mirror bitmap")

    def close(self) -> None:
        """The mirror (nothing may export it any more) and the link go."""
        if self.mirror:
            self.lib.srrs_mirror_set_mode(self.link, MODES["fenced"], 0)
            self.ctl.core.bdev_delete(self.name)
            self.mirror = False
        if self.pp is not None and self.pp[0] != self.ffi.NULL:
            self.check(self.lib.srrs_mirror_link_destroy(self.pp), "move link")
        try:
            os.unlink(self.bitmap)
        except FileNotFoundError:
            pass


class _Tee:
    def __init__(self, link: _Link, total: int):
        self.link, self.total = link, total
        self.epoch = link.epoch
        self.done = False
        self.unsure = False         # the cutover's transaction had no answer
        self.waiting = ""
        self.progress_at = 0.0
        self.copied = -1


class Mover:
    def __init__(self, sync: Any):
        self.sync, self.ctl = sync, sync.ctl
        self.me = sync.cluster.name
        self.catalog = sync.cluster.catalog
        self.snap: Optional[Snapshot] = None
        self.tees: dict = {}            # uuid -> _Tee (we are the move's tee)
        self.targets: dict = {}         # uuid -> _Link (we are the move's target)
        self._dark: set = set()         # uuids whose namespace we keep inaccessible here
        self.errors: dict = {}
        self.cutovers = 0
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._thread = threading.Thread(target=self._run, name="srrs-cluster-move", daemon=True)
        self._thread.start()

    # -- called by the catalog sync ----------------------------------------------------
    def update(self, snap: Snapshot) -> None:
        """A new catalog snapshot (no lock: the thread reads it next)."""
        self.snap = snap
        self._kick.set()

    def ana(self, u: str) -> Optional[str]:
        """'inaccessible' where the move says this controller must not serve U:
        U moves in and is not ours yet, or it moves out and we are not the tee,
        or the tee is switching (cutover, unwinding). None: the pair's rules."""
        if u in self._dark:
            return "inaccessible"
        snap = self.snap
        if snap is None:
            return None
        v = snap.volumes.get(u)
        if v is not None and v.pair != self.sync.pair_name:
            return "inaccessible"       # moving in: the destination serves after the cutover
        m = snap.moving(u)
        if m is not None and m.phase == "copying" and m.src == self.sync.pair_name \
                and m.tee != self.me:
            return "inaccessible"
        return None

    def wanted(self, snap: Snapshot) -> dict:
        """{uuid: Volume} moving to our pair: the sync makes their replicas and
        exports (with the destination's slot)."""
        out = {}
        for u, m in snap.moves.items():
            if m.phase == "copying" and m.dst == self.sync.pair_name and u in snap.volumes:
                out[u] = replace(snap.volumes[u], slot=m.dst_slot)
        return out

    def release(self, u: str) -> None:
        """The volume leaves this controller (its subsystem is gone): our move
        mirror and link of it go too (the sync then deletes the replica)."""
        t = self.tees.pop(u, None)
        if t is not None:
            t.link.close()
        tl = self.targets.pop(u, None)
        if tl is not None:
            tl.close()
        self._dark.discard(u)

    def busy(self, u: str) -> bool:
        return u in self.tees or u in self.targets

    def status(self) -> dict:
        out = {}
        for u, t in list(self.tees.items()):
            try:
                out[u] = dict(t.link.info(), role="tee", epoch=t.epoch, total=t.total)
            except OSError as e:
                out[u] = {"role": "tee", "error": str(e)}
        for u, tl in list(self.targets.items()):
            try:
                out[u] = dict(tl.info(), role="target", epoch=tl.epoch)
            except OSError as e:
                out[u] = {"role": "target", "error": str(e)}
        return {"moves": out, "errors": dict(self.errors), "cutovers": self.cutovers}

    def close(self) -> None:
        self._stop.set()
        self._kick.set()
        self._thread.join(10)

    # -- the thread ----------------------------------------------------------------------
    def _involved(self) -> bool:
        snap = self.snap
        if self.tees or self.targets:
            return True
        return snap is not None and any(
            m.phase in ("copying", "cancelling") and self.sync.pair_name in (m.src, m.dst)
            for m in snap.moves.values())

    def _run(self) -> None:
        while not self._stop.is_set():
            self._kick.wait(POLL_S if self._involved() else 1.0)
            self._kick.clear()
            if self._stop.is_set():
                return
            try:
                with self.sync.lock:
                    self._step()
            except Exception as e:  # never let the thread die silently
                log.exception("volume move: %s", e)

    def _try(self, u: str, fn, *a) -> None:
        try:
            fn(*a)
            self.errors.pop(u, None)
        except (OSError, etcd.EtcdError, CatalogError, ValueError, KeyError) as e:
            if str(e) != self.errors.get(u):
                log.error("volume move %s: %s", u, e)
            self.errors[u] = str(e)

    def _step(self) -> None:
        snap = self.snap
        if snap is None:
            return
        mine = self.sync.pair_name
        for u, m in sorted(snap.moves.items()):
            if m.phase not in ("copying", "cancelling"):
                continue
            if m.src == mine:
                self._try(u, self._source, snap, m)
            elif m.dst == mine:
                self._try(u, self._dest, snap, m)
        # what the record no longer asks of us
        for u in list(self.tees):
            t, m = self.tees[u], snap.moves.get(u)
            if m is not None and m.phase == "done" and m.epoch == t.epoch:
                t.done = True
                self._dark.add(u)
            if t.done:
                continue        # the volume left: the sync removes it (release)
            if m is None or m.phase != "copying" or m.tee != self.me or m.epoch != t.epoch:
                self._try(u, self._unwind, u)
        for u in list(self.targets):
            tl, m = self.targets[u], snap.moves.get(u)
            if m is None or m.phase != "copying" or m.target != self.me or m.epoch != tl.epoch:
                self.targets.pop(u)
                self._try(u, tl.close)
                log.info("volume move %s: target side closed", u)

    # -- source pair ---------------------------------------------------------------------
    def _peer(self) -> str:
        pc = self.ctl.pair.conf
        return pc.peer if pc.self_name == self.me else pc.self_name

    def _solo(self) -> bool:
        return self.ctl.pair.state.role == ha.SOLO

    def _source(self, snap: Snapshot, m: Move) -> None:
        u, now = m.uuid, time.time()
        if m.phase == "cancelling":
            if m.tee == self.me or m.tee not in snap.members:
                if u in self.tees:
                    self._unwind(u)
                if self.catalog.end_cancel(u, now):
                    log.info("volume move %s: cancelled", u)
            return
        if m.tee == self.me:
            self._tee(snap, m)
            return
        # not the tee: stop serving it (ana()), let what is in flight end, say so
        if self.me not in m.quiet:
            self.sync._apply_ana()
            self._drain(u)
            self.catalog.update_move(u, lambda x: replace(x, quiet=x.quiet + (self.me,))
                                     if x.phase == "copying" and self.me not in x.quiet
                                     else None)
            log.info("volume move %s: %s stopped serving it for the tee %s", u, self.me, m.tee)
        if m.tee not in snap.members and self._solo():
            # the tee is dead (its key went) and the pair's etcd lease says we
            # serve alone: we are the tee now, and the copy starts over
            def take(x: Move) -> Optional[Move]:
                if x.phase != "copying" or x.tee != m.tee:
                    return None
                return replace(x, tee=self.me, epoch=x.epoch + 1, quiet=(), total=0, copied=0,
                               epoch_started=now, updated=now)
            if self.catalog.update_move(u, take):
                log.warning("volume move %s: the tee %s is gone; %s takes over (the copy "
                            "starts over)", u, m.tee, self.me)

    def _drain(self, u: str) -> None:
        nqn = volume_nqn(u)
        if any(s["nqn"] == nqn and s["namespaces"] for s in self.ctl.nvmf.subsystems()):
            self.ctl.nvmf.drain_namespace(nqn, 1, DRAIN_MS)

    def _hosts(self, u: str) -> set:
        """Host NQNs with a controller of the volume's subsystem here."""
        nqn = volume_nqn(u)
        return {c["hostnqn"] for c in self.ctl.nvmf.list_controllers() if c["subnqn"] == nqn}

    def _ns_bdev(self, u: str) -> Optional[str]:
        nqn = volume_nqn(u)
        for s in self.ctl.nvmf.subsystems():
            if s["nqn"] == nqn:
                for ns in s["namespaces"]:
                    if ns["nsid"] == 1:
                        return ns.get("bdev")
        return None

    def _tee(self, snap: Snapshot, m: Move) -> None:
        u = m.uuid
        t = self.tees.get(u)
        if t is not None and t.epoch != m.epoch:
            self._unwind(u)
            t = None
        if t is None:
            if self._peer() not in m.quiet and not self._solo():
                return          # the other source controller still serves it
            if self._ns_bdev(u) != "c-" + u:
                return          # not exported here (yet): the sync makes it
            tm = snap.members.get(m.target)
            if tm is None or "move" not in tm.addresses:
                return          # the target is not registered (a new one will be)
            self._tee_setup(m, tm.addresses["move"])
            return
        if t.done:
            return
        if t.unsure:
            # the cutover's transaction had no answer: ask again (it is idempotent)
            if self.catalog.finish_move(u, t.epoch, time.time(), 0.0):
                t.done = True
                self.cutovers += 1
                log.info("volume move %s: cut over to %s", u, m.dst)
            else:
                t.unsure = False
                self._dark.discard(u)
                self.sync._apply_ana()
            return
        t.link.limit(m.rate)
        li = t.link.info()
        if li["up"] and li["mode"] == "solo":
            t.link.set_mode("resync_source")
            t.link.resync()
            log.info("volume move %s: link up, copying (%d stripes dirty)", u, li["dirty"])
        elif not li["up"] and li["mode"] in ("resync_source", "paired"):
            # the target is gone: writes go on here alone, their stripes dirty
            t.link.set_mode("solo")
            log.warning("volume move %s: link to %s down: the tee goes on alone", u, m.target)
        elif li["up"] and li["mode"] == "resync_source" and not (li["active"] or li["done"]) \
                and time.monotonic() - t.link.rs_at >= RESYNC_ASK_S:
            # the bitmaps have not met (one was sent to a side not yet in its resync
            # mode): ask again; a side already copying ignores it
            t.link.resync()
            log.warning("volume move %s: the copy has not started: bitmaps asked for again", u)
        now = time.monotonic()
        copied = max(0, t.total - li["dirty"] * li["stripe"])
        if copied != t.copied and now - t.progress_at >= PROGRESS_S:
            t.progress_at, t.copied = now, copied
            wall = time.time()
            self.catalog.update_move(u, lambda x: replace(x, copied=copied, updated=wall)
                                     if x.phase == "copying" and x.epoch == t.epoch else None)
        if li["up"] and li["mode"] == "resync_source" and li["done"]:
            missing = sorted(self._hosts(u) - set(m.dst_hosts))
            why = f"hosts not connected to {m.dst}: {', '.join(missing)}" if missing else ""
            if why != t.waiting:
                t.waiting = why
                self.catalog.update_move(u, lambda x: replace(x, waiting=why)
                                         if x.phase == "copying" and x.epoch == t.epoch
                                         else None)
                if why:
                    log.warning("volume move %s: copied; the cutover waits for %s", u, why)
            if not missing:
                self._cutover(m, t)

    def _tee_setup(self, m: Move, target_addr: str) -> None:
        u = m.uuid
        pc = self.ctl.pair.conf
        cs = self.sync.pool.conf.cluster_size
        host, port = parse_address(target_addr)
        link = _Link(self.ctl, u, m.epoch, 0, (_host(pc.mirror_listen), 0),
                     (host, port + m.dst_slot), m.secret, cs,
                     os.path.join(pc.state_dir, f"{move_name(u)}.bitmap"))
        try:
            link.set_mode("solo")
            end = time.monotonic() + 3.0
            while link.info()["mode"] != "solo":    # pending while our first read lease runs
                if time.monotonic() > end:
                    raise OSError("move mirror did not go solo")
                time.sleep(0.05)
            # every host write of U passes the tee from now on (the I/O in flight
            # on c-U has ended when this returns)
            self.ctl.nvmf.replace_namespace(volume_nqn(u), 1, link.name)
            # what is allocated now is what the copy needs; later writes are teed
            info = self.sync.pool.volume_info("c-" + u)
            nclusters = -(-info["size"] // cs)
            bits = _alloc_bitmap(self.sync.pool, "c-" + u, nclusters)
            n = link.mark(bits)
        except BaseException:
            if self._ns_bdev(u) == link.name:
                self._swap_back(u, link)
            else:
                link.close()
            raise
        self.tees[u] = _Tee(link, n * cs)
        now = time.time()
        self.catalog.update_move(u, lambda x: replace(x, total=n * cs, copied=0,
                                                      epoch_started=now, updated=now)
                                 if x.phase == "copying" and x.epoch == m.epoch else None)
        log.info("volume move %s: tee %s -> %s (epoch %d): %d clusters to copy", u, self.me,
                 m.target, m.epoch, n)

    def _cutover(self, m: Move, t: _Tee) -> None:
        u, nqn = m.uuid, volume_nqn(m.uuid)
        t0 = time.monotonic()
        self._dark.add(u)
        self.sync._set_ana(nqn, "inaccessible")
        ok = False
        try:
            try:
                self.ctl.nvmf.drain_namespace(nqn, 1, DRAIN_MS)
            except OSError as e:
                log.warning("volume move %s: cutover put off: %s", u, e)
                return
            li = t.link.info()
            if not (li["up"] and li["mode"] == "resync_source" and li["done"]
                    and li["dirty"] == 0):
                log.warning("volume move %s: cutover put off: link %s, mode %s, %d stripes "
                            "dirty", u, "up" if li["up"] else "down", li["mode"], li["dirty"])
                return
            pause = (time.monotonic() - t0) * 1000
            try:
                ok = self.catalog.finish_move(u, t.epoch, time.time(), pause)
            except (etcd.EtcdError, OSError):
                # committed or not: stay inaccessible until etcd says (_tee retries)
                t.unsure, ok = True, True
                raise
            if ok:
                t.done = True
                self.cutovers += 1
                log.info("volume move %s: cut over to %s (tee held host I/O %.0f ms)", u,
                         m.dst, (time.monotonic() - t0) * 1000)
        finally:
            if not ok:
                self._dark.discard(u)
                self.sync._apply_ana()

    def _swap_back(self, u: str, link: _Link) -> None:
        """The namespace leaves the move mirror for c-U again, through a null
        placeholder while it is inaccessible (the move mirror holds c-U until it
        goes); then the mirror and the link go."""
        nqn, name = volume_nqn(u), "c-" + u
        core, nv = self.ctl.core, self.ctl.nvmf
        self._dark.add(u)
        self.sync._set_ana(nqn, "inaccessible")
        try:
            hold = name + ".mvhold"
            if self._ns_bdev(u) == link.name:
                # writes held for a target that is gone (or going) are applied
                # here alone first: the namespace's I/O must drain
                link.set_mode("solo")
                end = time.monotonic() + 3.0
                while link.info()["mode"] != "solo" and time.monotonic() < end:
                    time.sleep(0.05)
                if not any(b["name"] == hold for b in core.bdev_list()):
                    info = core.bdev_info(link.name)
                    core.bdev_create_null(hold, info["size"], info["block_size"])
                nv.replace_namespace(nqn, 1, hold)
            link.close()
            if self._ns_bdev(u) == hold:
                nv.replace_namespace(nqn, 1, name)
            if any(b["name"] == hold for b in core.bdev_list()):
                core.bdev_delete(hold)
        finally:
            self._dark.discard(u)
            self.sync._apply_ana()

    def _unwind(self, u: str) -> None:
        """We are not this move's tee (any more, or at this epoch): the namespace
        goes back onto c-U."""
        t = self.tees.get(u)
        if t is None:
            return
        if self._ns_bdev(u) is None:
            t.link.close()      # not exported any more
        else:
            self._swap_back(u, t.link)
        del self.tees[u]
        log.info("volume move %s: tee side undone (epoch %d)", u, t.epoch)

    # -- destination pair ------------------------------------------------------------------
    def _dest(self, snap: Snapshot, m: Move) -> None:
        u = m.uuid
        if m.phase != "copying":
            return
        if m.target != self.me:
            if m.target not in snap.members and self.me in snap.members:
                now = time.time()

                def take(x: Move) -> Optional[Move]:
                    if x.phase != "copying" or x.target != m.target:
                        return None
                    return replace(x, target=self.me, epoch=x.epoch + 1, total=0, copied=0,
                                   epoch_started=now, updated=now)
                if self.catalog.update_move(u, take):
                    log.warning("volume move %s: the target %s is gone; %s takes over (the "
                                "copy starts over)", u, m.target, self.me)
            return
        tl = self.targets.get(u)
        if tl is not None and tl.epoch != m.epoch:
            self.targets.pop(u)
            tl.close()
            tl = None
        if tl is None:
            name, pair = "c-" + u, self.ctl.pair
            if name not in pair.runtime or not (pair.peer_has(name) or self._solo()):
                return          # our pair's mirror of it first, on both controllers
            if self.sync.made.get(u) != move_key(m):
                return          # a replica made for this move, never an older one's
            if self._ns_bdev(u) != name:
                return          # and our export of it (the move mirror then holds it)
            tee = snap.members.get(m.tee)
            if tee is None or "move" not in tee.addresses:
                return
            pc = self.ctl.pair.conf
            me = snap.members.get(self.me)
            port = parse_address(me.addresses["move"])[1] if me and "move" in me.addresses \
                else self.sync.cluster.conf.move_port
            tl = _Link(self.ctl, u, m.epoch, 1, (_host(pc.mirror_listen), port + m.dst_slot),
                       (_host(tee.addresses["move"]), 1), m.secret,
                       self.sync.pool.conf.cluster_size,
                       os.path.join(pc.state_dir, f"{move_name(u)}.bitmap"))
            try:
                tl.arm_target()
            except BaseException:
                tl.close()
                raise
            self.targets[u] = tl
            log.info("volume move %s: target %s ready for the tee %s (epoch %d)", u, self.me,
                     m.tee, m.epoch)
            return
        hosts = tuple(sorted(self._hosts(u)))
        if hosts != m.dst_hosts:
            self.catalog.update_move(u, lambda x: replace(x, dst_hosts=hosts)
                                     if x.phase == "copying" and x.dst_hosts != hosts else None)
        li = tl.info()
        tl.down = 0 if li["up"] else tl.down + 1
        if tl.down % 10 == 2:
            # a dropped link stays down in a resync mode until the mode changes:
            # re-armed (every second while down), it takes the tee's next connection
            tl.set_mode("fenced")
            tl.arm_target()


def _alloc_bitmap(pool: Any, name: str, nclusters: int) -> bytes:
    """One bit per allocated cluster of pool volume `name` (ffi/lvol.h)."""
    from ..ffi.binding import check, ffi, lib

    n = (nclusters + 7) // 8
    buf = ffi.new("uint8_t[]", max(1, n))
    check(lib.srrs_lvol_alloc_bitmap(pool.ptr, name.encode(), buf, n), f"volume {name}")
    return bytes(ffi.buffer(buf, n))
