"""The cluster service of a controller (docs/architecture.md, Cluster).

With a `[cluster]` section the controller joins the cluster: it registers
itself in etcd under a lease (its addresses, its pair, capacity, allocated
bytes, version, health), keeps the lease alive, refreshes its figures every
few seconds, and registers again if the lease is lost (etcd down longer than
the lease). etcd is never on the I/O path: a controller that cannot reach
etcd keeps serving; only the pair's solo lease (ctrl/cluster_lease.py) and
catalog changes need it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Optional

from srrs import __version__
from srrs.units import parse_address

from . import cluster_cntlid, etcd
from .cluster_catalog import Catalog, Member
from .cluster_config import ClusterConfig
from .cluster_view import ClusterView, DiscoveryFeed

log = logging.getLogger("srrs.cluster")

REFRESH_S = 5.0


NQN_PREFIX = "nqn.2026-11.io.srrs:vol:"


def volume_nqn(uuid: str) -> str:
    """A cluster volume's subsystem NQN, derived from its uuid: the same on both
    controllers of its pair and after any move, so hosts keep one namespace."""
    return NQN_PREFIX + uuid.lower()


def pair_name(pc: Any) -> str:
    """A pair's name in the catalog: its two controllers' names, sorted ("a+b")."""
    if pc is None or not pc.peer:
        return ""
    return getattr(pc, "name", "") or "+".join(sorted((pc.self_name, pc.peer)))


class Replaced(ValueError):
    """This controller was replaced out of its pair."""


def _public_key(secret_key_file: str) -> str:
    """The CURVE public key (Z85 text) of a `srrs keygen` secret key file."""
    import zmq.auth

    pub, _ = zmq.auth.load_certificate(secret_key_file)
    return pub.decode("ascii")


class ClusterService:
    def __init__(self, ctl: Any, conf: ClusterConfig):
        self.ctl, self.conf = ctl, conf
        self.name = conf.name or self._pair_self()
        if not self.name:
            raise ValueError("cluster: name: is required without a [pair] section")
        self.client = self.new_client()
        # before the NVMe/TCP target exists (the daemon starts us first): its
        # controller-ID range, with [nvmf] unless that sets one (ctrl/cluster_cntlid.py)
        self.cntlids: Optional[cluster_cntlid.CntlidRange] = None
        pc = getattr(ctl.conf, "pair", None)
        self._state_dir = getattr(pc, "state_dir", "") if pc is not None else ""
        self._kept = False      # the range is kept in state_dir (a start without etcd)
        if getattr(ctl.conf, "nvmf", None) is not None and not getattr(ctl.conf, "cntlid_set",
                                                                         False):
            try:
                self.cntlids = cluster_cntlid.claim_at_start(
                    self.client, conf.prefix, self.name, state_dir=self._state_dir)
            except BaseException:
                self.client.close()
                raise
        self.catalog = Catalog(self.client, conf.prefix)
        try:
            self.check_not_replaced()
        except etcd.EtcdError as e:   # the thread checks again before it registers
            log.warning("cluster: etcd: %s (checked again before registering)", e)
        # the cached catalog: status, console, metrics and cluster-wide discovery read it
        self.view = ClusterView(self.catalog, self.name)
        self.discovery = DiscoveryFeed(ctl, self.name)
        self.view.add_listener(self.discovery)
        self.reg = None
        self.registrations = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._thread = threading.Thread(target=self._run, name="srrs-cluster", daemon=True)
        self._thread.start()

    def new_client(self, timeout: Optional[float] = None,
                   deadline: Optional[float] = None) -> etcd.Client:
        """A client of our etcd with this section's TLS and user; the pair takes
        its own, with its own timeouts (its lease requests must not wait behind
        a registration, nor for longer than its witness timeout)."""
        c = self.conf
        return etcd.Client(list(c.etcd), timeout=timeout or c.timeout_s, deadline=deadline,
                           ca_cert=c.ca_cert or None, cert=c.cert or None, key=c.key or None,
                           user=c.user or None, password=c.password())

    # -- what we register ---------------------------------------------------------------
    def _pair_self(self) -> str:
        pc = getattr(self.ctl.conf, "pair", None)
        return pc.self_name if pc is not None and getattr(pc, "self_name", "") else ""

    def member(self) -> Member:
        pools = self.ctl.pool.status()["pools"] if getattr(self.ctl, "pool", None) else []
        addrs = {}
        nv = getattr(self.ctl.conf, "nvmf", None)
        if nv is not None:
            addrs["nvmf"] = [str(x) for x in nv.listen]
        pc = self._pair_conf()
        if pc is not None and getattr(pc, "mirror_listen", ""):
            # where this controller takes a volume move's link (ctrl/cluster_move.py)
            host, _ = parse_address(str(pc.mirror_listen))
            host = f"[{host}]" if ":" in host else host
            addrs["move"] = f"{host}:{self.conf.move_port}"
            # what a survivor needs to take us as its new peer (Replacing a server)
            addrs["coord"] = str(pc.coord_bind)
            addrs["mirror"] = str(pc.mirror_listen)
            if getattr(pc, "secret_key", ""):
                addrs["curve"] = _public_key(pc.secret_key)
        health = "degraded" if any(p.get("degraded") for p in pools) else "ok"
        return Member(name=self.name, pair=pair_name(pc),
                      addresses=addrs, capacity=sum(p["capacity"] for p in pools),
                      allocated=sum(p["used"] for p in pools), version=__version__,
                      health=health, zone=self.conf.zone)

    def _pair_conf(self):
        """The running pair's [pair] (a replace re-targets it), else the file's."""
        svc = getattr(self.ctl, "pair", None)
        return svc.conf if svc is not None else getattr(self.ctl.conf, "pair", None)

    def check_not_replaced(self) -> None:
        """A controller replaced out of its pair (`srrs cluster replace`) never
        comes back into it: it does not start, nor register (docs/architecture.md,
        Cluster, Replacing a server)."""
        pn = pair_name(self._pair_conf())
        if not pn:
            return
        pr = self.catalog.snapshot().pairs.get(pn)
        if pr is not None and self.name in pr.replaced:
            raise Replaced(f"cluster: {self.name} was replaced out of pair {pn} (its nodes are "
                           f"now {', '.join(pr.nodes)}): it never rejoins it; give this server "
                           "a new name and another pair")

    # -- the thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
                self.last_error = ""
            except (etcd.EtcdError, OSError, ValueError) as e:
                if str(e) != self.last_error:
                    log.warning("cluster: etcd: %s", e)
                self.last_error = str(e)
            self._kick.wait(REFRESH_S if not self.last_error else 1.0)
            self._kick.clear()

    def _tick(self) -> None:
        if self.cntlids is not None and not self._kept:
            self._kept = cluster_cntlid.keep(self._state_dir, self.conf.prefix, self.name,
                                             self.cntlids)
        if self.reg is not None and self.reg.lost:
            log.warning("cluster: member key lost (%s): registering again", self.reg.lost)
            self.reg = None
        snap, pn = self.view.snap, pair_name(self._pair_conf())
        pr = snap.pairs.get(pn) if snap is not None and pn else None
        if self.reg is not None and pr is not None and self.name in pr.replaced:
            # replaced while running (its key is deleted, its lease is not): the
            # registration goes for good, never to be written again by update()
            log.error("cluster: %s was replaced out of pair %s: deregistering", self.name, pn)
            self.reg.close()
            self.reg = None
        m = self.member()
        if self.reg is None:
            self.check_not_replaced()
            self.reg = self.catalog.register(m, ttl=self.conf.lease_s, on_lost=self._kick.set)
            self.registrations += 1
            log.info("cluster: registered as %s under %s", self.name, self.conf.prefix)
        elif m != self.reg.member:
            self.reg.update(**{k: getattr(m, k) for k in ("capacity", "allocated", "health",
                                                          "addresses", "zone", "pair")})

    # -- service interface ----------------------------------------------------------------
    def status(self) -> dict:
        return {"name": self.name, "prefix": self.conf.prefix, "etcd": list(self.conf.etcd),
                "registered": self.reg is not None and not self.reg.lost,
                "registrations": self.registrations, "error": self.last_error,
                "etcd_errors": self.client.errors, "discovery_pushes": self.discovery.pushes,
                "cntlids": self.cntlids.as_dict() if self.cntlids is not None else None,
                "catalog": self.view.summary()}

    def to_toml_dict(self) -> dict:
        from .cluster_config import to_toml_dict

        return to_toml_dict(self.conf)

    def close(self) -> None:
        self._stop.set()
        self._kick.set()
        self._thread.join(5)
        if self.reg is not None:
            try:
                self.reg.close()
            except (etcd.EtcdError, OSError) as e:
                log.info("cluster: revoking the member lease: %s", e)
        self.view.close()   # after the revoke: the member key goes first


def start(ctl: Any, section: Optional[ClusterConfig]) -> Optional[ClusterService]:
    if section is None:
        return None
    return ClusterService(ctl, section)
