"""The cluster's catalog in etcd (docs/architecture.md, Cluster).

Key layout under the cluster prefix P (default "/srrs/"), values compact JSON:

  P/members/NAME        a running controller, under its own etcd lease: gone
                        when it dies (addresses, pair, capacity, allocated,
                        version, health, zone)
  P/pairs/NAME          a pair: nodes, capacity, labels (zone, ...) and the
                        bytes allocated to its volumes
  P/tenants/NAME        a tenant: quota, used bytes and volume count
  P/volumes/UUID        a volume: uuid, name, size, tenant, pair, state, generation
  P/names/TENANT/NAME   the volume uuid of a name (names are unique per tenant)

A volume's create, grow and delete is ONE transaction that compares the mod
revisions of the tenant, the pair and the name (or volume) keys as read, and
writes the volume, its name, the tenant's usage and the pair's allocation
together; a lost race re-reads and decides again. So two creates racing on
different servers can never take the tenant past its quota (both compare the
same tenant revision: one commits, the other re-reads the new usage), and a
name is never given twice.

Controllers follow the catalog with snapshot() then watch(revision + 1).
"""

from __future__ import annotations

import json
import uuid as uuidlib
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional, Tuple

from . import etcd
from .placement import NoPlacement, Request, placement

DEFAULT_PREFIX = "/srrs/"
RETRIES = 32      # lost races before giving up (each one is another writer's commit)
# Mirror slots of a pair: its cluster volumes take mirror volume ids 1023 - slot
# (ffi/mirror_int.h M_MAX_VOLS = 1024), configured [pair] volumes 0, 1, ...; each
# is also one NVMe/TCP subsystem (nvmf/nvmf_int.h NVMF_MAX_SUBSYS = 1024)
MAX_SLOTS = 1000


class CatalogError(Exception):
    """A refused catalog change (its message says why, for the operator)."""


class NotFound(CatalogError):
    pass


class Conflict(CatalogError):
    """The name is taken by a volume of another size, or a shrink was asked."""


class QuotaExceeded(CatalogError):
    pass


# ---- records -------------------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    name: str
    pair: str = ""
    addresses: dict = field(default_factory=dict)   # {"nvmf": [...], "coord": ..., ...}
    capacity: int = 0
    allocated: int = 0
    version: str = ""
    health: str = "ok"
    zone: str = ""


@dataclass(frozen=True)
class Pair:
    name: str
    nodes: tuple = ()
    capacity: int = 0
    allocated: int = 0
    labels: dict = field(default_factory=dict)      # {"zone": "z1", ...}
    # The pair's mirror slots: slots[i] is the uuid of the volume on slot i ("" free).
    # A volume's slot is its mirror volume id on both controllers (Convergence).
    slots: tuple = ()
    # "" (in service) | "draining" (its volumes move away; it takes none) |
    # "retired" (drained: empty, takes none) (Rebalance and drain)
    state: str = ""
    # controllers replaced out of the pair (`srrs cluster replace`): never again
    # one of its nodes, nor a registered member of it (Replacing a server)
    replaced: tuple = ()

    @property
    def free(self) -> int:
        return self.capacity - self.allocated

    def free_slot(self) -> int:
        """The lowest free mirror slot, -1 when all MAX_SLOTS are taken."""
        for i, u in enumerate(self.slots):
            if not u:
                return i
        return len(self.slots) if len(self.slots) < MAX_SLOTS else -1


@dataclass(frozen=True)
class Tenant:
    name: str
    quota: int = 0
    used: int = 0
    volumes: int = 0


@dataclass(frozen=True)
class Volume:
    uuid: str
    name: str
    size: int
    tenant: str
    pair: str
    state: str = "creating"     # creating -> ready (the pair's controllers made it)
    generation: int = 1         # bumped by every change of the record
    hosts: tuple = ()           # host NQNs that may connect ("*": any; none: no host)
    slot: int = -1              # its mirror slot in the pair (Pair.slots)
    labels: dict = field(default_factory=dict)  # what its pair must carry (zone): placement, moves
    # what its pair's replicas were made for: move_key() of the move that brought
    # it to its pair, "" where it was created (or by a controller before this
    # field): a replica made for anything else is stale (ctrl/cluster_sync.py)
    placed: str = ""


def move_key(m: "Move") -> str:
    """One move's identity (its link key is drawn afresh for every move)."""
    return "move:" + m.secret[:16]


@dataclass(frozen=True)
class Move:
    """An online volume move (docs/architecture.md, Cluster, Volume moves).

    `tee` is the source controller that serves the volume's hosts and sends
    every write to `target`, a destination controller, over an authenticated
    move link (`secret`); the other source controller stops serving it and
    says so in `quiet`. `epoch` is bumped whenever the tee or the target
    changes (a death): the copy then starts over. The destination pair's
    allocation and mirror slot `dst_slot` are reserved from the start; one
    transaction ends the move (the volume's pair and slot flip, the source
    pair's are freed) or its cancel (the reservation is freed)."""
    uuid: str
    src: str
    dst: str
    dst_slot: int = -1
    size: int = 0
    phase: str = "copying"      # copying -> done | cancelling -> cancelled
    epoch: int = 1
    tee: str = ""
    target: str = ""
    quiet: tuple = ()           # source controllers no longer serving the volume
    secret: str = ""            # hex: the move link's key (32 bytes)
    total: int = 0              # bytes this epoch's copy has to copy (allocated clusters)
    copied: int = 0
    started: float = 0.0        # time.time() of the move's start
    epoch_started: float = 0.0  # ... of this epoch's copy
    updated: float = 0.0        # ... of the last progress written
    finished: float = 0.0
    pause_ms: float = 0.0       # host I/O held at cutover on the tee (ANA change to txn)
    error: str = ""
    # host NQNs connected to the target's export of the volume: the cutover
    # waits until every host connected to the tee is (it would lose its paths)
    dst_hosts: tuple = ()
    waiting: str = ""           # why the cutover waits (for the operator)
    rate: int = 0               # the copy's limit, bytes/s (0: none)


MOVE_ACTIVE = ("copying", "cancelling")
PAIR_STATES = ("", "draining", "retired")

KINDS = {"members": Member, "pairs": Pair, "tenants": Tenant, "volumes": Volume,
         "moves": Move}


def _rec(kind: str, kv: etcd.KV):
    d = json.loads(kv.value)
    for k in ("nodes", "slots", "hosts", "quiet", "dst_hosts", "replaced"):
        if k in d:
            d[k] = tuple(d[k])
    # a field a newer controller wrote is not ours to refuse (mixed versions in a rollout)
    known = KINDS[kind].__dataclass_fields__
    return KINDS[kind](**{k: v for k, v in d.items() if k in known})


def _enc(rec) -> dict:
    d = asdict(rec)
    for k in ("nodes", "slots", "hosts", "quiet", "dst_hosts", "replaced"):
        if k in d:
            d[k] = list(d[k])
    return d


def _released(p: Pair, slot: int, uuid: str, size: int) -> Pair:
    """The pair with a volume's allocation and mirror slot given back."""
    slots = p.slots
    if 0 <= slot < len(slots) and slots[slot] == uuid:
        slots = slots[:slot] + ("",) + slots[slot + 1:]
    return replace(p, allocated=p.allocated - size, slots=slots)


@dataclass(frozen=True)
class Snapshot:
    """The catalog at one revision (pure data: what placement reads)."""
    revision: int = 0
    members: Dict[str, Member] = field(default_factory=dict)
    pairs: Dict[str, Pair] = field(default_factory=dict)
    tenants: Dict[str, Tenant] = field(default_factory=dict)
    volumes: Dict[str, Volume] = field(default_factory=dict)
    moves: Dict[str, Move] = field(default_factory=dict)

    def moving(self, uuid: str) -> Optional[Move]:
        """The volume's move while it runs (copying or being cancelled)."""
        m = self.moves.get(uuid)
        return m if m is not None and m.phase in MOVE_ACTIVE else None

    def apply(self, ch: "Change") -> "Snapshot":
        """This snapshot with one watched change applied."""
        d = dict(getattr(self, ch.kind))
        if ch.record is None:
            d.pop(ch.name, None)
        else:
            d[ch.name] = ch.record
        return replace(self, revision=max(self.revision, ch.revision), **{ch.kind: d})


@dataclass(frozen=True)
class Change:
    kind: str                   # members | pairs | tenants | volumes | moves
    name: str                   # the member, pair or tenant name; the volume uuid
    record: object              # the new record, None when deleted
    revision: int


@dataclass(frozen=True)
class _View:
    """Every pair (KV and record) and member at one revision; never changed
    in place, so creates on several threads share it without a lock."""
    revision: int = 0
    pairs: Dict[str, Tuple[etcd.KV, Pair]] = field(default_factory=dict)
    members: Dict[str, Member] = field(default_factory=dict)

    def advance(self, revision: int, cat: "Catalog", pairs, members) -> "_View":
        """With the pairs and members written since (KVs) applied."""
        if not pairs and not members:
            return replace(self, revision=revision)
        ps, ms = dict(self.pairs), dict(self.members)
        for kv in pairs:
            ps[cat._split(kv.key)[1]] = (kv, _rec("pairs", kv))
        for kv in members:
            ms[cat._split(kv.key)[1]] = _rec("members", kv)
        return _View(revision, ps, ms)


# ---- the catalog ---------------------------------------------------------------------

class Catalog:
    def __init__(self, client: etcd.Client, prefix: str = DEFAULT_PREFIX):
        self.etcd = client
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self._view = _View()        # pairs and members as of its revision (creates)

    def key(self, kind: str, *names: str) -> str:
        for n in names:
            if not n or "/" in n:
                raise CatalogError(f"bad {kind} name {n!r}")
        return self.prefix + kind + "/" + "/".join(names)

    def _split(self, key: str) -> Tuple[str, str]:
        kind, _, name = key[len(self.prefix):].partition("/")
        return kind, name

    # -- reads --
    def snapshot(self) -> Snapshot:
        """Every member, pair, tenant and volume at one revision."""
        kvs, rev = self.etcd.get(self.prefix, prefix=True)
        out: Dict[str, dict] = {k: {} for k in KINDS}
        for kv in kvs:
            kind, name = self._split(kv.key)
            if kind in KINDS:
                out[kind][name] = _rec(kind, kv)
        return Snapshot(rev, **out)

    def _read(self, *keys: str) -> Tuple[Dict[str, Optional[etcd.KV]], int]:
        """Several keys at one revision: {key: KV or None}, revision."""
        r = self.etcd.txn([], [etcd.get(k) for k in keys])
        return {k: (v[0] if v else None) for k, v in zip(keys, r.responses)}, r.revision

    def get(self, kind: str, name: str):
        kv = self.etcd.get1(self.key(kind, name))
        return _rec(kind, kv) if kv else None

    def volume_by_name(self, tenant: str, name: str) -> Optional[Volume]:
        kv = self.etcd.get1(self.key("names", tenant, name))
        return self.get("volumes", kv.value.decode()) if kv else None

    # -- members --
    def register(self, member: Member, ttl: int = 5, on_lost=None) -> "Registration":
        """Put the member's key under a new lease and keep it alive."""
        lease, ttl = self.etcd.grant(ttl)
        self.etcd.put(self.key("members", member.name), _enc(member), lease)
        return Registration(self, member, lease, etcd.KeepAlive(self.etcd, lease, ttl, on_lost))

    # -- pairs and tenants (the operator's) --
    def put_pair(self, name: str, nodes=(), capacity: int = 0, labels=None,
                 new_nodes=None) -> Pair:
        """Create or update a pair; its allocation is kept. nodes None: an
        existing pair keeps its nodes (a replaced server stays out), a new one
        gets new_nodes."""
        return self._upsert("pairs", name, lambda p: replace(
            p or Pair(name), capacity=int(capacity), labels=dict(labels or {}),
            nodes=tuple(nodes) if nodes is not None else
            (p.nodes if p is not None else tuple(new_nodes or ()))))

    def replace_node(self, old: str, new: str) -> Pair:
        """`srrs cluster replace OLD --with NEW` (docs/architecture.md, Cluster,
        Replacing a server): one transaction gives the pair the nodes
        [survivor, NEW], records OLD as replaced (never again a node nor a
        member of it) and deletes OLD's registration; the survivor re-targets
        its pair to NEW (ctrl/cluster_replace.py). Refused, nothing changed,
        unless OLD is a node of a pair, NEW is registered for that pair and in
        no pair's nodes, the survivor is registered and healthy and serves
        alone under the pair's solo lease (so OLD is fenced), and no move runs
        to or from the pair."""
        if old == new:
            raise CatalogError(f"{old} cannot replace itself")
        for _ in range(RETRIES):
            snap = self.snapshot()
            pr = next((p for p in snap.pairs.values() if old in p.nodes), None)
            if pr is None:
                raise NotFound(f"{old} is a node of no pair")
            if len(pr.nodes) != 2:
                raise CatalogError(f"pair {pr.name} has nodes {list(pr.nodes)}, not two")
            other = next((p.name for p in snap.pairs.values() if new in p.nodes), None)
            if other is not None:
                raise CatalogError(f"{new} is already a node of pair {other}")
            if new in pr.replaced:
                raise CatalogError(f"{new} was replaced out of pair {pr.name}: it never "
                                   "comes back")
            nm = snap.members.get(new)
            if nm is None:
                raise CatalogError(f"{new} is not registered: start it first, with [pair] "
                                   f"name = \"{pr.name}\" naming the survivor as its peer")
            if nm.pair != pr.name:
                raise CatalogError(f"{new} is registered for pair {nm.pair or '(none)'!r}, "
                                   f"not {pr.name!r}: start it with [pair] name = "
                                   f"\"{pr.name}\"")
            missing = [k for k in ("coord", "mirror") if not nm.addresses.get(k)]
            if missing:
                raise CatalogError(f"{new} registered no {' and '.join(missing)} address "
                                   "(a controller of this version with a [pair] section)")
            surv = next(n for n in pr.nodes if n != old)
            sm = snap.members.get(surv)
            if sm is None:
                raise CatalogError(f"the survivor {surv} is not registered: replacing {old} "
                                   "would leave the pair with no server holding its data")
            if sm.health != "ok":
                raise CatalogError(f"the survivor {surv} is not healthy ({sm.health})")
            sk = self.key("solo", pr.name)
            solo = self.etcd.get1(sk)
            holder = json.loads(solo.value).get("holder", "") if solo is not None else ""
            if holder != surv:
                raise CatalogError(f"the survivor {surv} does not serve alone (the solo lease "
                                   f"of {pr.name} is {'held by ' + holder if holder else 'not held'}"
                                   f"): {old} may still be serving; stop it (or wait until "
                                   f"{surv} is SOLO) and try again")
            busy = [m for m in snap.moves.values()
                    if m.phase in MOVE_ACTIVE and pr.name in (m.src, m.dst)]
            if busy:
                raise CatalogError(f"a volume move to or from {pr.name} is running "
                                   f"({len(busy)}): cancel it or let it finish first")
            nodes = tuple(sorted((surv, new)))
            rec = replace(pr, nodes=nodes, replaced=tuple(sorted(set(pr.replaced) | {old})))
            pk, mk = self.key("pairs", pr.name), self.key("members", new)
            kvs = {k: self.etcd.get1(k) for k in (pk, mk)}
            if kvs[pk] is None or kvs[mk] is None or _rec("pairs", kvs[pk]) != pr:
                continue
            cmp = [etcd.mod_is(pk, kvs[pk].mod_revision), etcd.mod_is(mk, kvs[mk].mod_revision),
                   etcd.mod_is(sk, solo.mod_revision)]
            if self.etcd.txn(cmp, [etcd.put(pk, _enc(rec)),
                                   etcd.delete(self.key("members", old))]).succeeded:
                return rec
        raise CatalogError(f"replacing {old}: too many concurrent changes")

    def set_pair_state(self, name: str, state: str, only_from=None) -> Optional[Pair]:
        """Set a pair's state ("", "draining", "retired"); with only_from, only
        if its state is one of those (else None, nothing changed)."""
        if state not in PAIR_STATES:
            raise CatalogError(f"pair state {state!r}: expected one of {PAIR_STATES}")
        k = self.key("pairs", name)
        for _ in range(RETRIES):
            kv = self.etcd.get1(k)
            if kv is None:
                raise NotFound(f"no pair {name!r}")
            p = _rec("pairs", kv)
            if only_from is not None and p.state not in only_from:
                return None
            if p.state == state:
                return p
            new = replace(p, state=state)
            if self.etcd.txn([etcd.mod_is(k, kv.mod_revision)],
                             [etcd.put(k, _enc(new))]).succeeded:
                return new
        raise CatalogError(f"pair {name}: too many concurrent changes")

    def rebalance_goal(self) -> Optional[dict]:
        """The standing rebalance (spread, max_moves, started), None when none."""
        kv = self.etcd.get1(self.key("rebalance", "goal"))
        return json.loads(kv.value) if kv is not None else None

    def set_rebalance_goal(self, goal: Optional[dict]) -> None:
        k = self.key("rebalance", "goal")
        if goal is None:
            self.etcd.txn([], [etcd.delete(k)])
        else:
            self.etcd.txn([], [etcd.put(k, goal)])

    def put_tenant(self, name: str, quota: int) -> Tenant:
        """Create a tenant or change its quota (its usage is kept; a quota
        below the usage refuses new bytes but takes nothing away)."""
        return self._upsert("tenants", name, lambda t: replace(t or Tenant(name), quota=int(quota)))

    def _upsert(self, kind: str, name: str, fn):
        k = self.key(kind, name)
        for _ in range(RETRIES):
            kv = self.etcd.get1(k)
            rec = fn(_rec(kind, kv) if kv else None)
            if self.etcd.txn([etcd.mod_is(k, kv.mod_revision if kv else 0)],
                             [etcd.put(k, _enc(rec))]).succeeded:
                return rec
        raise CatalogError(f"{kind} {name}: too many concurrent changes")

    # -- volumes --
    def create_volume(self, tenant: str, name: str, size: int, labels=None,
                      uuid: Optional[str] = None, hosts=()) -> Volume:
        """One transaction: the volume on the pair placement chooses, the name,
        the tenant's usage and the pair's allocation. The same name and size
        again returns the existing volume."""
        if size <= 0:
            raise CatalogError(f"volume size must be positive, not {size}")
        tk, nk = self.key("tenants", tenant), self.key("names", tenant, name)
        vid = uuid or str(uuidlib.uuid4())
        for _ in range(RETRIES):
            snap, kvs = self._placement_view(tk, nk)
            if kvs[nk] is not None:
                old = self.get("volumes", kvs[nk].value.decode())
                if old is None:
                    continue            # being deleted: read again
                if old.size != size:
                    raise Conflict(f"volume {tenant}/{name} exists with size {old.size}")
                return old
            t = snap.tenants.get(tenant)
            if t is None:
                raise NotFound(f"no tenant {tenant!r}")
            try:
                pname = placement(snap, Request(size=size, tenant=tenant, labels=labels or {},
                                                spread=vid))
            except NoPlacement as e:
                raise (QuotaExceeded if e.quota else CatalogError)(str(e)) from None
            p, pk = snap.pairs[pname], self.key("pairs", pname)
            slot = p.free_slot()
            slots = p.slots + ("",) * (slot + 1 - len(p.slots))
            slots = slots[:slot] + (vid,) + slots[slot + 1:]
            vol = Volume(vid, name, size, tenant, pname, slot=slot, hosts=tuple(hosts),
                         labels=dict(labels or {}))
            # Placement decided on these revisions of the tenant and the pair: a
            # commit to either since (another create, a resize) fails the txn.
            ok = self.etcd.txn(
                [etcd.mod_is(tk, kvs[tk].mod_revision), etcd.mod_is(pk, kvs[pk].mod_revision),
                 etcd.absent(nk)],
                [etcd.put(self.key("volumes", vid), _enc(vol)), etcd.put(nk, vid),
                 etcd.put(tk, _enc(replace(t, used=t.used + size, volumes=t.volumes + 1))),
                 etcd.put(pk, _enc(replace(p, allocated=p.allocated + size,
                                           slots=slots)))]).succeeded
            if ok:
                return vol
        raise CatalogError(f"volume {tenant}/{name}: too many concurrent changes")

    def _placement_view(self, tk: str, nk: str) -> Tuple[Snapshot, dict]:
        """What a create decides on, at one revision: pairs, members, the
        tenant (no volumes: placement needs none). kvs: {key: KV or None} of
        the tenant, the name and every pair.

        Pairs and members are kept from the last call (_View) and only what
        was written since is read: a range with min_mod_revision returns the
        keys written after the view's revision, and its count says whether a
        key went (then the range is read whole). So the view is exactly the
        store at this read's revision, as fresh as reading every key, without
        sending every pair and member (docs/architecture.md, Cluster)."""
        pp, mp = self.prefix + "pairs/", self.prefix + "members/"
        v = self._view
        since = v.revision + 1 if v.revision else 0
        r = self.etcd.txn([], [etcd.get(pp, prefix=True, min_mod_revision=since),
                               etcd.get(mp, prefix=True, min_mod_revision=since),
                               etcd.get(tk), etcd.get(nk)])
        (pairs, members, t, n), (npairs, nmembers, _, _) = r.responses, r.counts
        v = v.advance(r.revision, self, pairs, members)
        if (len(v.pairs), len(v.members)) != (npairs, nmembers):
            # a pair or member went since (a controller died): read them whole
            r2 = self.etcd.txn([], [etcd.get(pp, prefix=True), etcd.get(mp, prefix=True),
                                    etcd.get(tk), etcd.get(nk)])
            (pairs, members, t, n), r = r2.responses, r2
            v = _View().advance(r.revision, self, pairs, members)
        self._view = v if v.revision >= self._view.revision else self._view
        kvs = {self.key("pairs", name): kv for name, (kv, _) in v.pairs.items()}
        kvs[tk], kvs[nk] = (t[0] if t else None), (n[0] if n else None)
        snap = Snapshot(r.revision, members=v.members,
                        pairs={name: rec for name, (_, rec) in v.pairs.items()},
                        tenants={self._split(tk)[1]: _rec("tenants", t[0])} if t else {})
        return snap, kvs

    def resize_volume(self, tenant: str, name: str, size: int) -> Volume:
        """Grow (never shrink) within the tenant's quota and the pair's space."""
        return self._change(tenant, name, size)

    def delete_volume(self, tenant: str, name: str) -> bool:
        """False when there is no such volume (a repeated delete)."""
        return self._change(tenant, name, None) is not None

    def set_volume_state(self, uuid: str, state: str) -> Volume:
        return self._update_volume(uuid, state=state)

    def set_volume_hosts(self, tenant: str, name: str, hosts) -> Volume:
        """The host NQNs the volume's subsystem admits (replaces the list)."""
        v = self.volume_by_name(tenant, name)
        if v is None:
            raise NotFound(f"no volume {tenant}/{name}")
        return self._update_volume(v.uuid, hosts=tuple(hosts))

    def edit_volume_hosts(self, uuid: str, fn) -> Volume:
        """hosts = fn(hosts) in one compare-and-swap of the volume, so that two
        nodes attached at once (CSI ControllerPublish) both stay; unchanged
        hosts write nothing."""
        return self._update_volume(uuid, hosts=lambda v: tuple(fn(v.hosts)))

    def _update_volume(self, uuid: str, **fields) -> Volume:
        """fields: new values, or functions of the current record."""
        k = self.key("volumes", uuid)
        for _ in range(RETRIES):
            kv = self.etcd.get1(k)
            if kv is None:
                raise NotFound(f"no volume {uuid}")
            v = _rec("volumes", kv)
            new = {f: (x(v) if callable(x) else x) for f, x in fields.items()}
            if all(getattr(v, f) == x for f, x in new.items()):
                return v
            nv = replace(v, generation=v.generation + 1, **new)
            if self.etcd.txn([etcd.mod_is(k, kv.mod_revision)], [etcd.put(k, _enc(nv))]).succeeded:
                return nv
        raise CatalogError(f"volume {uuid}: too many concurrent changes")

    def _change(self, tenant: str, name: str, size: Optional[int]):
        """size None: delete. One transaction over volume, name, tenant and pair."""
        nk, tk = self.key("names", tenant, name), self.key("tenants", tenant)
        for _ in range(RETRIES):
            nkv = self.etcd.get1(nk)
            if nkv is None:
                if size is None:
                    return None
                raise NotFound(f"no volume {tenant}/{name}")
            vk = self.key("volumes", nkv.value.decode())
            vkv = self.etcd.get1(vk)
            if vkv is None:
                continue                # deleted meanwhile: re-read the name
            v = _rec("volumes", vkv)
            pk, mk = self.key("pairs", v.pair), self.key("moves", v.uuid)
            kv2, _ = self._read(tk, pk, mk)
            if kv2[tk] is None or kv2[pk] is None:
                raise CatalogError(f"volume {tenant}/{name}: its tenant or pair is gone")
            if kv2[mk] is not None and _rec("moves", kv2[mk]).phase in MOVE_ACTIVE:
                raise Conflict(f"volume {tenant}/{name} is moving to "
                               f"{_rec('moves', kv2[mk]).dst}: cancel the move or wait")
            t, p = _rec("tenants", kv2[tk]), _rec("pairs", kv2[pk])
            delta = -v.size if size is None else size - v.size
            if size is not None:
                if delta < 0:
                    raise Conflict(f"volume {tenant}/{name}: cannot shrink {v.size} to {size}")
                if delta == 0:
                    return v
                if t.used + delta > t.quota:
                    raise QuotaExceeded(f"tenant {tenant}: {t.used} + {delta} bytes exceed "
                                        f"the quota of {t.quota}")
                if delta > p.free:
                    raise CatalogError(f"pair {p.name}: {p.free} bytes free, {delta} asked")
            cmp = [etcd.mod_is(vk, vkv.mod_revision), etcd.mod_is(tk, kv2[tk].mod_revision),
                   etcd.mod_is(pk, kv2[pk].mod_revision),
                   etcd.mod_is(mk, kv2[mk].mod_revision if kv2[mk] else 0)]
            slots = p.slots
            if size is None and 0 <= v.slot < len(slots) and slots[v.slot] == v.uuid:
                slots = slots[:v.slot] + ("",) + slots[v.slot + 1:]
            ops = [etcd.put(tk, _enc(replace(t, used=t.used + delta,
                                             volumes=t.volumes - (size is None)))),
                   etcd.put(pk, _enc(replace(p, allocated=p.allocated + delta, slots=slots)))]
            nv = v
            if size is None:
                ops += [etcd.delete(vk), etcd.delete(nk)]
                if kv2[mk] is not None:
                    ops.append(etcd.delete(mk))     # a finished move's record goes too
            else:
                nv = replace(v, size=size, generation=v.generation + 1)
                ops.append(etcd.put(vk, _enc(nv)))
            if self.etcd.txn(cmp, ops).succeeded:
                return nv
        raise CatalogError(f"volume {tenant}/{name}: too many concurrent changes")

    # -- volume moves (docs/architecture.md, Cluster, Volume moves) --
    def start_move(self, tenant: str, name: str, dst: str, tee: str, target: str,
                   secret: str, now: float, rate: int = 0) -> Move:
        """One transaction: the move record and the destination pair's
        reservation (allocation and a mirror slot), if the volume, the pair and
        any earlier move record are still as read."""
        nk, pk = self.key("names", tenant, name), self.key("pairs", dst)
        for _ in range(RETRIES):
            nkv = self.etcd.get1(nk)
            if nkv is None:
                raise NotFound(f"no volume {tenant}/{name}")
            u = nkv.value.decode()
            vk, mk = self.key("volumes", u), self.key("moves", u)
            kvs, _ = self._read(vk, pk, mk)
            if kvs[vk] is None:
                continue
            v = _rec("volumes", kvs[vk])
            if kvs[pk] is None:
                raise NotFound(f"no pair {dst!r}")
            p = _rec("pairs", kvs[pk])
            old = _rec("moves", kvs[mk]) if kvs[mk] is not None else None
            if old is not None and old.phase in MOVE_ACTIVE:
                if old.dst == dst:
                    return old          # the same move again
                raise Conflict(f"volume {tenant}/{name} is already moving to {old.dst}")
            if v.pair == dst:
                raise Conflict(f"volume {tenant}/{name} is on {dst} already")
            if v.state != "ready":
                raise CatalogError(f"volume {tenant}/{name} is {v.state}, not ready")
            if v.size > p.free:
                raise CatalogError(f"pair {dst}: {p.free} bytes free, {v.size} asked")
            slot = p.free_slot()
            if slot < 0:
                raise CatalogError(f"pair {dst}: no free mirror slot")
            slots = p.slots + ("",) * (slot + 1 - len(p.slots))
            slots = slots[:slot] + (u,) + slots[slot + 1:]
            mv = Move(u, v.pair, dst, slot, v.size, tee=tee, target=target, secret=secret,
                      started=now, epoch_started=now, updated=now, rate=int(rate))
            ok = self.etcd.txn(
                [etcd.mod_is(vk, kvs[vk].mod_revision), etcd.mod_is(pk, kvs[pk].mod_revision),
                 etcd.mod_is(mk, kvs[mk].mod_revision if kvs[mk] else 0)],
                [etcd.put(mk, _enc(mv)),
                 etcd.put(pk, _enc(replace(p, allocated=p.allocated + v.size, slots=slots)))]
            ).succeeded
            if ok:
                return mv
        raise CatalogError(f"volume {tenant}/{name}: too many concurrent changes")

    def update_move(self, uuid: str, fn) -> Optional[Move]:
        """move = fn(move) in one compare-and-swap; fn returns None to change
        nothing (then None is returned, as for no move)."""
        k = self.key("moves", uuid)
        for _ in range(RETRIES):
            kv = self.etcd.get1(k)
            if kv is None:
                return None
            new = fn(_rec("moves", kv))
            if new is None:
                return None
            if self.etcd.txn([etcd.mod_is(k, kv.mod_revision)], [etcd.put(k, _enc(new))]).succeeded:
                return new
        raise CatalogError(f"move of {uuid}: too many concurrent changes")

    def finish_move(self, uuid: str, epoch: int, now: float, pause_ms: float = 0.0) -> bool:
        """The cutover, one transaction: the volume's pair and slot become the
        destination's, the source pair's allocation and slot are freed, the
        move is done -- only if the move is still copying at `epoch`. False
        when it is not (cancelled, or another tee or target took over)."""
        mk, vk = self.key("moves", uuid), self.key("volumes", uuid)
        for _ in range(RETRIES):
            kvs, _ = self._read(mk, vk)
            if kvs[mk] is None or kvs[vk] is None:
                return False
            m, v = _rec("moves", kvs[mk]), _rec("volumes", kvs[vk])
            if m.phase == "done" and m.epoch == epoch and v.pair == m.dst:
                return True         # committed by us, the answer lost
            if m.phase != "copying" or m.epoch != epoch:
                return False
            sk = self.key("pairs", v.pair)
            skv = self.etcd.get1(sk)
            ops = [etcd.put(vk, _enc(replace(v, pair=m.dst, slot=m.dst_slot, placed=move_key(m),
                                             generation=v.generation + 1))),
                   etcd.put(mk, _enc(replace(m, phase="done", finished=now, copied=m.total,
                                             updated=now, pause_ms=pause_ms)))]
            cmp = [etcd.mod_is(mk, kvs[mk].mod_revision), etcd.mod_is(vk, kvs[vk].mod_revision),
                   etcd.mod_is(sk, skv.mod_revision if skv else 0)]
            if skv is not None:
                ops.append(etcd.put(sk, _enc(_released(_rec("pairs", skv), v.slot, uuid,
                                                        v.size))))
            if self.etcd.txn(cmp, ops).succeeded:
                return True
        raise CatalogError(f"move of {uuid}: too many concurrent changes")

    def end_cancel(self, uuid: str, now: float, error: str = "") -> bool:
        """A cancelled move's end: the destination's reservation is freed, the
        move is `cancelled`. False when it is not being cancelled."""
        mk = self.key("moves", uuid)
        for _ in range(RETRIES):
            kv = self.etcd.get1(mk)
            if kv is None:
                return False
            m = _rec("moves", kv)
            if m.phase != "cancelling":
                return False
            dk = self.key("pairs", m.dst)
            dkv = self.etcd.get1(dk)
            ops = [etcd.put(mk, _enc(replace(m, phase="cancelled", finished=now, updated=now,
                                             error=error or m.error)))]
            cmp = [etcd.mod_is(mk, kv.mod_revision), etcd.mod_is(dk, dkv.mod_revision if dkv else 0)]
            if dkv is not None:
                ops.append(etcd.put(dk, _enc(_released(_rec("pairs", dkv), m.dst_slot, uuid,
                                                        m.size))))
            if self.etcd.txn(cmp, ops).succeeded:
                return True
        raise CatalogError(f"move of {uuid}: too many concurrent changes")

    # -- following it --
    def watch(self, from_revision: int) -> "CatalogWatch":
        return CatalogWatch(self, from_revision)

    def follow(self, stop, timeout: float = 1.0):
        """Yields (snapshot, changes) until stop (a threading.Event) is set:
        first (snapshot, None), then each batch of changes with the snapshot
        they lead to (a watch that loses its member resumes where it was); after
        a compaction, a fresh (snapshot, None): the caller converges to the
        whole snapshot again."""
        while not stop.is_set():
            try:
                snap = self.snapshot()
            except etcd.Unavailable:
                stop.wait(timeout)
                continue
            yield snap, None
            w = self.watch(snap.revision + 1)
            try:
                while not stop.is_set():
                    chs = w.get(timeout)
                    if chs:
                        for ch in chs:
                            snap = snap.apply(ch)
                        yield snap, chs
            except etcd.Compacted:
                continue
            finally:
                w.close()


class CatalogWatch:
    """The catalog's changes from a revision (snapshot().revision + 1), in
    order: get() -> [Change, ...] or None on timeout. Raises etcd.Compacted
    when that revision is gone: take a new snapshot and watch again."""

    def __init__(self, cat: Catalog, from_revision: int):
        self.cat = cat
        self._w = cat.etcd.watch(cat.prefix, prefix=True, start_revision=from_revision)

    def get(self, timeout: Optional[float] = None) -> Optional[List[Change]]:
        evs = self._w.get(timeout)
        if evs is None:
            return None
        out = []
        for e in evs:
            kind, name = self.cat._split(e.kv.key)
            if kind not in KINDS:
                continue        # names/ are an index of volumes/
            rec = _rec(kind, e.kv) if e.type == "put" else None
            out.append(Change(kind, name, rec, e.kv.mod_revision))
        return out

    def close(self) -> None:
        self._w.close()


class Registration:
    """A controller's member key, kept alive under its lease."""

    def __init__(self, cat: Catalog, member: Member, lease: int, keeper: etcd.KeepAlive):
        self.cat, self.member, self.lease, self.keeper = cat, member, lease, keeper

    def update(self, **fields) -> Member:
        """New figures (allocated, health, ...) under the same lease."""
        self.member = replace(self.member, **fields)
        self.cat.etcd.put(self.cat.key("members", self.member.name), _enc(self.member),
                          self.lease)
        return self.member

    @property
    def lost(self) -> str:
        return self.keeper.lost

    def close(self) -> None:
        """Stop renewing and revoke: the key goes at once."""
        self.keeper.stop(revoke=True)
