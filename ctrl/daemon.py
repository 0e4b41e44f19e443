"""One controller process: `srrs start -c FILE.toml` (docs/architecture.md, Threads).

Builds the data plane from a validated config, serves JSON-RPC, logs the
core's events, and on SIGTERM/SIGINT stops cleanly: RPC closed, exports
closed, in-flight I/O drained, every bdev destroyed, exit 0.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import threading
import time
from dataclasses import replace
from typing import Any, Optional

from ..ffi import sockpath
from ..ffi.binding import Core, SrrsError
from ..nvmf import config as nvmf_config
from ..nvmf import service as nvmf_service
from ..vhost import service as vhost_service
from . import cluster as cluster_service
from . import cluster_sync, logs
from . import config as cfg
from . import metrics as metrics_service
from . import pair as pair_service
from . import pool as pool_service
from .iostats import exports_of
from .methods import TABLE as METHODS
from .rpc import RpcServer

log = logging.getLogger("srrs")


class Controller:
    """The running state of one controller: the model that save_config writes."""

    def __init__(self, conf: cfg.Config):
        self.conf = conf
        self.name = conf.controller.name
        self.lock = threading.RLock()
        self.phase = "startup"
        self.started = time.time()
        self.events: list = []
        self.bdevs: dict[str, cfg.BdevConfig] = {}
        # bdevs that began empty at this start ({name: why}): a pair replica
        # among them is a new replica (ctrl/pair.py), whatever its state file says
        self.fresh_bdevs: dict[str, str] = {}
        self.jobs: list = []
        c = conf.controller
        self.core = Core(reactors=c.reactors, poll_mode=c.poll_mode, idle_spin_us=c.idle_spin_us,
                         cpus=c.cpus)
        self.code_lock: dict = {}
        if c.lock_code:
            # docs/architecture.md, Poll modes and adaptive sleep: the first
            # I/O after a quiet spell must not wait on reclaimed code pages
            self.code_lock = self.core.lock_code()
            if "error" in self.code_lock:
                log.warning("controller %s: the I/O path's code is not all locked in memory "
                            "(a first I/O after a quiet spell may wait on disk reads): %s",
                            self.name, self.code_lock["error"])
        self.nvmf: Any = None
        self.vhost: Any = None
        self.pool: Any = None
        self.pair: Any = None
        self.cluster: Any = None
        self.catalog_sync: Any = None
        self.metrics: Any = None
        self.services: dict = {}
        self.rpc: Optional[RpcServer] = None
        try:
            for b in conf.bdevs:
                self.bdev_create(b)
            self._start_exports()
        except BaseException:
            self.close()
            raise

    # -- services, in start order: (attribute, start(ctl, section or None) ->
    # service or None, config section key).
    # The pair comes before the exports: its mirror bdevs (named after the
    # paired volumes; the replicas become internal) are what they export, and
    # the exports close before the pair does (docs/architecture.md, Config).
    SERVICES = (
        ("pool", pool_service.start, "pool"),
        ("cluster", cluster_service.start, "cluster"),
        ("pair", pair_service.start, "pair"),
        ("nvmf", nvmf_service.start, "nvmf"),
        # after the pair and the exports: it adds mirrors and subsystems to them
        ("catalog_sync", cluster_sync.start, "cluster"),
        ("vhost", vhost_service.start, "vhost"),
        ("metrics", metrics_service.start, "metrics"),
    )

    def _start_exports(self) -> None:
        for attr, start, key in self.SERVICES:
            section = self.conf.sections.get(key)
            if attr == "nvmf":
                section = self._nvmf_section(section)
            svc = start(self, section)
            setattr(self, attr, svc)
            self.services[attr] = svc
            if attr == "nvmf" and svc is not None:
                svc.cntlid_from = self._cntlid_from()
        self._wire_ana()

    def _nvmf_section(self, section: Any) -> Any:
        """[nvmf] with the controller-ID range the cluster service claimed in
        etcd before the target is made (docs/architecture.md, Exports)."""
        got = getattr(self.cluster, "cntlids", None)
        if got is None:
            return section
        return replace(section if section is not None else nvmf_config.NvmfConfig(),
                       cntlid_min=got.min, cntlid_max=got.max)

    def _cntlid_from(self) -> str:
        """Where the target's controller-ID range comes from (status)."""
        got = getattr(self.cluster, "cntlids", None)
        if got is not None:
            return f"cluster range {got.index}" + (" (kept copy)" if got.source == "cache" else "")
        if self.conf.cntlid_set:
            return "config"
        return "pair half" if self.conf.pair is not None and self.conf.nvmf is not None \
            else "default"

    def _wire_ana(self) -> None:
        """The pair's ANA state drives the ANA groups of every NVMe/TCP namespace
        that exports one of its mirror bdevs; each change raises the ANA-change
        AEN, so the host's native multipath moves I/O by itself (docs/architecture.md, Pair)."""
        if self.pair is None or self.nvmf is None or not hasattr(self.pair, "ana_listeners"):
            return
        mirrors = {v.name for v in getattr(self.pair.conf, "volumes", ())}

        def apply(state: str) -> None:
            nvme_state = "optimized" if state == "optimized" else "inaccessible"
            for sub in self.nvmf.subsystems():
                groups = {ns.get("ana_group", 1) for ns in sub["namespaces"]
                          if ns.get("bdev") in mirrors}
                for g in groups:
                    self.nvmf.set_ana_state(sub["nqn"], g, nvme_state)

        self.pair.ana_listeners.append(apply)
        apply(self.pair.ana)

    # -- bdevs ---------------------------------------------------------------------
    def bdev_create(self, b: cfg.BdevConfig) -> None:
        if b.type == "malloc":
            self.core.bdev_create_malloc(b.name, b.size, b.block_size)
            self.fresh_bdevs[b.name] = "RAM"
        elif b.type == "null":
            self.core.bdev_create_null(b.name, b.size, b.block_size)
            self.fresh_bdevs[b.name] = "RAM"
        else:
            existed = os.path.exists(b.path)
            self.core.bdev_create_file(b.name, b.path, b.size, b.block_size, grow=b.grow,
                                       engine=b.engine)
            if not existed:
                self.fresh_bdevs[b.name] = f"{b.path} created"
        self.bdevs[b.name] = b

    def bdev_delete(self, name: str) -> None:
        pair = getattr(self, "pair", None)
        if pair is not None and name in {v.name for v in pair.conf.volumes}:
            # Only the pair removes its mirrors (at stop): a deleted mirror would
            # leave the pair service driving a volume that no longer exists.
            raise ValueError(f"bdev {name} is a paired volume: remove it from [pair] volumes "
                             "and restart")
        self.core.bdev_delete(name)
        self.bdevs.pop(name, None)
        self.fresh_bdevs.pop(name, None)

    # -- state ---------------------------------------------------------------------
    def status(self, detail: bool = False, top: int = 32) -> dict:
        """bdevs: every one with detail, else the `top` busiest (by completed
        I/Os) in one C pass, with the count and the summed counters: the answer
        stays small and fast at 100,000 volumes (docs/architecture.md, Control
        plane at scale). Below `top` bdevs both are the same list."""
        reactors = self.core.all_reactor_stats()
        count, totals, bdevs = self.core.bdev_top(top)
        out = {
            "name": self.name,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 3),
            "rpc_socket": self.conf.controller.rpc_socket,
            "poll_mode": self.core.poll_mode,
            "reactors": reactors,
            "bdevs": self.core.bdev_list() if detail else bdevs,
            "bdev_count": count,
            "bdev_totals": totals,
        }
        for name, svc in self.services.items():
            if svc is not None and hasattr(svc, "status"):
                out[name] = svc.status()
        if not detail:
            # exported bdevs too (up to `top` more), idle or not: the console's
            # and the metrics' export rows read their figures from this list
            have = {b["name"] for b in bdevs}
            more = sorted({e["volume"] for e in exports_of(out)} - have)[:top]
            for n in more:
                try:
                    bdevs.append(self.core.bdev_info(n))
                except SrrsError:
                    pass  # gone meanwhile
            if more:
                bdevs.sort(key=lambda b: b["name"])
        return out

    def to_toml_dict(self) -> dict:
        doc: dict = {"controller": cfg.controller_to_dict(
            replace(self.conf.controller, poll_mode=self.core.poll_mode))}
        if self.bdevs:
            doc["bdev"] = [cfg.bdev_to_dict(b) for b in self.bdevs.values()]
        for name, svc in self.services.items():
            if svc is None:
                continue
            if hasattr(svc, "to_toml"):  # {top-level key: value}
                doc.update({k: v for k, v in svc.to_toml().items() if v})
            elif hasattr(svc, "to_toml_dict"):
                d = svc.to_toml_dict()
                if d:
                    doc[name] = d
            elif hasattr(svc, "to_toml_list"):
                lst = svc.to_toml_list()
                if lst:
                    doc[name] = lst
        return doc

    def save_config(self, path: str) -> str:
        text = cfg.dumps(self.to_toml_dict())
        cfg.loads(text, path)  # never write a file that `srrs start` would refuse
        tmp = f"{path}.tmp.{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            # A full disk fails the write, the flush or the close: the old file
            # at path stays as it was and no half-written temporary is left.
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(e, OSError):
                raise SrrsError(e.errno or 0, f"save_config {path}: {e.strerror or e}; "
                                "nothing was written") from None
            raise
        return path

    def poll_events(self) -> None:
        for ev in self.core.events():
            ev["time"] = time.time()
            self.events.append(ev)
            log.info("event %s %s: %s", ev["type"], ev["obj"], ev["msg"])
        del self.events[:-1000]

    # -- lifecycle -----------------------------------------------------------------
    def serve_rpc(self) -> None:
        self.rpc = RpcServer(self.conf.controller.rpc_socket, METHODS, self, self.lock,
                             phase=lambda: self.phase)
        self.phase = "runtime"  # the config is applied: every client sees a running controller
        self.rpc.start()

    def close(self) -> None:
        if self.rpc is not None:
            self.rpc.close()
            self.rpc = None
        for name in reversed(list(self.services)):
            svc = self.services.pop(name)
            setattr(self, name, None)
            if svc is not None and hasattr(svc, "close"):
                try:
                    svc.close()
                except Exception as e:  # keep tearing down the rest
                    log.error("closing %s: %s", name, e)
        if self.core is not None:
            self.core.stop()  # stop hooks end load jobs; in-flight I/O drains
            for j in self.jobs:
                j["_thread"].join(5)
            self.core.close()
            self.core = None


# ---- the process ---------------------------------------------------------------------

def run(config_path: str, log_level: Optional[str] = None, log_format: str = "text") -> int:
    """Foreground controller. Returns the exit code."""
    logs.setup(log_level, log_format, "srrs")
    try:
        conf = cfg.load(config_path)
    except cfg.ConfigError as e:
        print(f"srrs: config error: {e}", file=sys.stderr)
        return 2
    stop_r, stop_w = os.pipe()
    os.set_blocking(stop_w, False)

    def on_signal(signo, frame):
        try:
            os.write(stop_w, bytes([signo]))
        except OSError:
            pass

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    # A signal taken by a reactor, RPC or ZeroMQ thread runs the Python handler
    # only when the main thread leaves poll(); the C-level handler writes the
    # wakeup fd on whatever thread took it, so the main loop wakes at once.
    old_wakeup = signal.set_wakeup_fd(stop_w)
    ctl = None
    try:
        try:
            # Before anything is built: a live RPC socket means another controller
            # owns this config's exports too; a non-socket file is never ours.
            sockpath.claim(conf.controller.rpc_socket, "RPC socket")
            ctl = Controller(conf)
            ctl.serve_rpc()
        except (SrrsError, OSError, ValueError) as e:
            print(f"srrs: cannot start controller {conf.controller.name}: {e}", file=sys.stderr)
            return 1
        log.info("controller %s running: %d reactor(s), %s polling, RPC on %s", ctl.name,
                 conf.controller.reactors, conf.controller.poll_mode, conf.controller.rpc_socket)
        efd = ctl.core.event_fd
        waiter = select.poll()   # poll, not select: fds past 1024 are normal with many exports
        waiter.register(stop_r, select.POLLIN)
        waiter.register(efd, select.POLLIN)
        while True:
            r = {fd for fd, _ in waiter.poll()}
            if efd in r:
                with ctl.lock:
                    ctl.poll_events()
            if stop_r in r:
                signo = os.read(stop_r, 1)[0]
                log.info("signal %d: stopping", signo)
                break
        return 0
    finally:
        if ctl is not None:
            ctl.close()
            log.info("stopped")
        signal.set_wakeup_fd(old_wakeup)
        for s, h in old.items():
            signal.signal(s, h)
        os.close(stop_r)
        os.close(stop_w)
