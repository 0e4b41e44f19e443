"""The pair's coordination service (docs/architecture.md, Pair): one thread that feeds ctrl/ha.py.

It owns three ZeroMQ sockets: a ROUTER at coord_bind (the peer's heartbeats
and commands come in), a DEALER to the peer's ROUTER (ours go out) and a
DEALER to the witness (lease requests, pings); or, when the controller has a
[cluster] section, etcd is the witness: ha's lease requests go to
cluster_lease.SoloLease on a thread of their own (etcd calls block) and its
answers come back as the same ha events (docs/architecture.md, Cluster).
Every heartbeat_ms it sends a heartbeat carrying the sum of our reactors'
loop counters (a wedged data plane stops it, so the peer counts us dead),
polls the mirror link's state, and feeds Tick; every message becomes an ha
event. The actions that come back are carried out here: mirror mode and
lease deadline into C, ANA state to the exports, lease requests to the
witness, generations to state_dir.

Time is time.monotonic() (CLOCK_MONOTONIC), the clock the C mirror checks the
lease deadline against.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from typing import Any, Callable, Optional

from srrs.units import parse_address

from ..ffi import binding
from . import ha
from .pair_config import PairConfig
from .pair_discovery import PairDiscovery

log = logging.getLogger("srrs.pair")

# The C mirror's modes by name, and back (enum srrs_mirror_mode, ffi/mirror.h).
MIRROR_MODES = binding.MIRROR_MODES
MODE_NAMES = binding.MIRROR_MODE_NAMES


_Z85 = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                 ".-:+=^!/*?&<>()[]{}@%$#")
REDIAL_S = 2.0     # the peer's DEALER opened again this often while the peer is unheard


def link_id(name: str) -> int:
    """A controller's identity on the mirror link (its HELLO): 64 bits of a
    digest of its name, never 0 (0: none)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little") or 1


class _Retarget:
    """A new peer for the coordination thread (PairService.retarget)."""

    def __init__(self, conf: PairConfig):
        self.conf = conf
        self.done = threading.Event()


class PairService:
    def __init__(self, ctl: Any, conf: PairConfig):
        self.ctl = ctl
        self.conf = conf
        self.lock = threading.RLock()
        self.ana = ha.ANA_INACCESSIBLE
        self.ana_listeners: list[Callable[[str], None]] = []
        self.alerts: list = []      # the last 100
        self.alerts_raised = 0      # all of them (a counter for ctrl/metrics.py)
        self.link = None
        self._link_pp = None
        self._mirrors: list = []
        self._resync_started = 0.0
        # Runtime paired volumes (add_volume): {mirror name: size}, and the ones the
        # peer's last heartbeat listed. Not part of the agreement (see add_volume).
        self.runtime: dict = {}
        self.peer_runtime: dict = {}
        # The heartbeat carries the list's digest, and the list itself only until
        # the peer's heartbeat says it holds that digest (rt_seen): at 1,000
        # cluster volumes the list is ~45 KB, ten times a second.
        self._rt_ver = 0                # bumped by add_volume / remove_volume / retire
        # Mirrors on their way out (retire): kept until their host I/O is over,
        # no longer listed to the peer, so it never takes them for a new one.
        self._retired: set = set()
        self._rt_out = (-1, [], "")     # (version, sorted list, digest) last built
        self._peer_rt = None            # digest of the peer's list we hold
        self._peer_rt_seen = None       # digest of our list the peer holds
        # both controllers' NVMe/TCP ports in each one's discovery log, without
        # a cluster (ctrl/pair_discovery.py): digests as for the runtime list
        self.discovery = PairDiscovery(ctl)
        self._peer_ex_seen = None       # digest of our ports the peer holds
        # Heartbeats carry this process's boot id and a sequence number: one
        # older than the newest heard from the same boot is stale (ROUTER
        # fair-queues between the peer's old and new connections after a
        # redial or a heal) and would undo what a newer one said.
        self._hb_boot = os.urandom(8).hex()
        self._hb_seq = 0
        self._peer_hb = ("", -1)
        # Not self.lock: a mirror create waits for the link's reactor, and the
        # coordination thread (heartbeats, lease timing) must never wait for that.
        self._rt_lock = threading.Lock()
        legacy = f"/var/tmp/srrs-pair-{conf.self_name}"
        if (conf.state_dir.startswith(legacy + "-") and not os.path.exists(conf.state_dir)
                and os.path.exists(os.path.join(legacy, "pair.json"))):
            # The old default was shared by every pair with a controller of this
            # name; starting empty here would forget its generations and bitmaps.
            raise ValueError(f"pair state of an older version in {legacy}: set [pair] "
                             f"state_dir = \"{legacy}\" if it is this pair's, else remove it")
        os.makedirs(conf.state_dir, exist_ok=True)
        self._lock_fd = self._lock_state_dir()
        try:
            self._init(ctl, conf)
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _lock_state_dir(self) -> int:
        """Hold state_dir for this controller's lifetime: a second controller given
        the same directory would overwrite our generations and bitmaps."""
        import fcntl

        path = os.path.join(self.conf.state_dir, "lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                who = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise ValueError(f"pair state_dir {self.conf.state_dir} is in use by another "
                             f"controller (pid {who}): give each controller its own "
                             "[pair] state_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _init(self, ctl: Any, conf: PairConfig) -> None:
        import zmq

        persisted = self._load_state()
        fresh = self._fresh_replicas()
        if fresh:
            # A replica that began empty at this start (RAM, a file or pool
            # volume created now, clusters lost with a RAM fragment) is a new
            # replica, whatever the state file says: a full resync from the
            # peer, and never serving alone before it (the witness refuses an
            # empty generation). Trusting the old generations would pair it
            # as in sync, and its reads would return zeroes.
            log.warning("pair: new replica (%s): no data generation, a full copy from the "
                        "peer if it has data", "; ".join(f"{k}: {v}" for k, v in fresh.items()))
            persisted = {}
            for v in conf.volumes:
                try:
                    os.unlink(os.path.join(conf.state_dir, f"{v.replica}.bitmap"))
                except FileNotFoundError:
                    pass
        timing = ha.Timing(heartbeat_s=conf.heartbeat_ms / 1000, miss_count=conf.miss_count,
                           lease_s=conf.lease_ms / 1000,
                           read_lease_s=conf.read_lease_ms / 1000,
                           witness_timeout_s=max(0.2, min(1.0, conf.lease_ms / 4000)))
        self.timing = timing
        self._etcd_setup(ctl, conf, timing)
        now = time.monotonic()
        self.state, acts = ha.initial(
            conf.me_id, conf.peer_id, now, timing,
            data_gen=ha.Gen.from_json(persisted.get("data_gen", [0, ""])),
            base_gen=ha.Gen.from_json(persisted.get("base_gen", [0, ""])),
            need_mirror=bool(conf.volumes), epoch=int(persisted.get("epoch", 0)),
            behind=bool(persisted.get("behind", False)))
        self._mirror_setup()
        sizes = {b["name"]: b["size"] for b in ctl.core.bdev_list()}
        # What both controllers must agree on before they pair (docs/architecture.md, Pair).
        self.agreement = [[v.name, sizes.get(v.name, 0), conf.stripe_size]
                          for v in conf.volumes]
        self._disagree = ""
        self.zctx = zmq.Context()
        self._auth = None
        self._open_sockets()
        self._apply(acts, now)
        self._stop = threading.Event()
        self._cmds: list = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name="srrs-pair", daemon=True)
        self._thread.start()
        self._probe = threading.Thread(target=self._probe_run, name="srrs-pair-probe",
                                       daemon=True)
        self._probe.start()
        if self.solo is not None:
            self._etcd = threading.Thread(target=self._etcd_run, name="srrs-pair-etcd",
                                          daemon=True)
            self._etcd.start()

    # -- persistence ------------------------------------------------------------
    def _fresh_replicas(self) -> dict:
        """{replica: why} for the replicas that began empty at this start."""
        mods = {b["name"]: b["module"] for b in self.ctl.core.bdev_list()}
        fresh = getattr(self.ctl, "fresh_bdevs", {})
        out = {}
        for v in self.conf.volumes:
            if v.replica in fresh:
                out[v.replica] = fresh[v.replica]
            elif mods.get(v.replica) in ("malloc", "null"):
                out[v.replica] = "RAM"
        return out

    @property
    def _state_file(self) -> str:
        return os.path.join(self.conf.state_dir, "pair.json")

    def _load_state(self) -> dict:
        try:
            with open(self._state_file, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise ValueError(f"pair state {self._state_file}: {e}") from None

    def _save_state(self, data: ha.Gen, base: ha.Gen, behind: bool) -> None:
        tmp = self._state_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"data_gen": data.to_json(), "base_gen": base.to_json(),
                       "behind": behind, "epoch": self.state.epoch}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._state_file)
        dfd = os.open(self.conf.state_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    # -- the C mirror -------------------------------------------------------------
    def _mirror_setup(self) -> None:
        from ..ffi.binding import check, ffi, lib

        self._ffi, self._lib, self._check = ffi, lib, check
        core = self.ctl.core.ptr
        o = ffi.new("struct srrs_mirror_link_opts *")
        o.reactor = 0
        o.node = 0 if self.conf.me_id < self.conf.peer_id else 1
        host, port = parse_address(self.conf.mirror_listen)
        o.listen_host = host.encode()
        o.listen_port = port
        host, port = parse_address(self.conf.peer_mirror)
        o.peer_host = host.encode()
        o.peer_port = port
        o.ping_ms = max(10, self.conf.heartbeat_ms // 4)
        o.timeout_ms = self.conf.heartbeat_ms * self.conf.miss_count
        o.read_lease_ms = self.conf.read_lease_ms
        o.hold_ms = self.conf.vhost_hold_ms
        o.self_id = link_id(self.conf.me_id)   # in HELLO: a replaced peer is told apart
        o.sole_orderer = self.conf.sole_orderer
        self._mirror_auth_opts(o)
        pp = ffi.new("struct srrs_mirror_link **")
        check(lib.srrs_mirror_link_create(core, o, pp), "mirror link")
        self._link_pp = pp
        self.link = pp[0]
        try:
            for i, v in enumerate(self.conf.volumes):
                bitmap = os.path.join(self.conf.state_dir, f"{v.replica}.bitmap")
                check(lib.srrs_mirror_create(self.link, v.name.encode(), v.replica.encode(), i,
                                             self.conf.stripe_size, bitmap.encode()),
                      f"mirror {v.name}")
                self._mirrors.append(v.name)
        except BaseException:
            self._mirror_teardown()
            raise

    def _mirror_auth_opts(self, o) -> None:
        """The link's secret (no connection gets a frame before it proved it
        holds it) and the source addresses it accepts."""
        from .pair_config import read_mirror_secret

        if self.conf.insecure:
            log.warning("pair %s runs insecure (insecure = true): the mirror link, the peer "
                        "and the witness believe anyone who reaches them", self.conf.self_name)
        if self.conf.mirror_secret:
            o.secret = read_mirror_secret(self.conf.mirror_secret)
            o.secret_len = 32
        for i, a in enumerate(self.conf.mirror_allow):
            o.allow[i] = a.encode()

    def _mirror_teardown(self) -> None:
        if self.link is not None:
            # Whatever still uses the mirrors (an export closed after us) gets path errors.
            self._lib.srrs_mirror_set_mode(self.link, MIRROR_MODES["fenced"], 0)
        busy = []
        for name in reversed(self._mirrors):
            try:
                self.ctl.core.bdev_delete(name)
            except OSError as e:
                log.warning("mirror %s left to the core's teardown: %s", name, e)
                busy.append(name)
        self._mirrors.clear()
        if busy:
            self._link_pp = None  # the link outlives its mirrors; freed with the process
            return
        if self._link_pp is not None:
            self._lib.srrs_mirror_link_destroy(self._link_pp)
            self._link_pp = None
            self.link = None

    def mirror_info(self) -> list:
        out = []
        for name in list(self._mirrors):   # runtime volumes come and go meanwhile
            i = self._ffi.new("struct srrs_mirror_info *")
            rc = self._lib.srrs_mirror_get_info(self.link, name.encode(), i)
            if rc < 0 and name not in self._mirrors:
                continue
            self._check(rc)
            d = {k: getattr(i, k) for k in ("vol_id", "stripe_size", "stripes", "dirty_stripes",
                                            "resync_left", "resync_bytes", "resync_active",
                                            "resync_done", "writes", "replicated", "forwarded",
                                            "remote_reads", "fenced_ios", "local_read_errors")}
            d.update(name=name, replica=self._ffi.string(i.replica).decode(),
                     mode=MODE_NAMES.get(i.mode, str(i.mode)))
            el = time.monotonic() - self._resync_started if self._resync_started else 0
            d["resync_mibps"] = round(d["resync_bytes"] / el / (1 << 20), 1) if el > 0 else 0.0
            d["resync_progress"] = (round(1 - d["resync_left"] / d["stripes"], 4)
                                    if d["stripes"] else 1.0)
            # the time left at the rate so far (None until there is a rate to go by)
            rate = d["resync_bytes"] / el if el > 0 else 0.0
            d["resync_eta_s"] = (round(d["resync_left"] * d["stripe_size"] / rate, 1)
                                 if d["resync_active"] and rate > 0 else None)
            out.append(d)
        return out

    def link_info(self) -> dict:
        i = self._ffi.new("struct srrs_mirror_link_info *")
        self._check(self._lib.srrs_mirror_link_get_info(self.link, i))
        d = {k: getattr(i, k) for k in ("up", "connects", "tx_frames", "rx_frames", "tx_bytes",
                                        "rx_bytes", "crc_errors", "proto_errors",
                                        "held_writes", "lease_reads_failed", "mac_errors",
                                        "auth_failures", "fwd_bounced", "held_ios",
                                        "hold_retries", "hold_expired")}
        d["read_lease_left_s"] = round(max(0, i.read_lease_left_us) / 1e6, 3)
        d["grant_left_s"] = round(max(0, i.grant_left_us) / 1e6, 3)
        d["mode"] = MODE_NAMES.get(i.mode, str(i.mode))
        return d

    # -- sockets ------------------------------------------------------------------
    def _open_sockets(self) -> None:
        import zmq

        from .witness import curve_client_setup

        c = self.conf
        self.router = self.zctx.socket(zmq.ROUTER)
        self.router.linger = 0
        if c.secret_key:
            self._auth = self._curve_server(self.router)
        self.router.bind(c.coord_bind)
        self._open_peer_sock()
        self.wit = None
        if self.solo is not None:
            return
        self.wit = self.zctx.socket(zmq.DEALER)
        self.wit.linger = 0
        self.wit.sndhwm = 4
        self.wit.immediate = True
        curve_client_setup(self.wit, c.secret_key or None, c.witness_public_key or None)
        self.wit.connect(c.witness)

    def _open_peer_sock(self) -> None:
        import zmq

        from .witness import curve_client_setup

        c = self.conf
        self.peer_sock = self.zctx.socket(zmq.DEALER)
        self.peer_sock.linger = 0
        self.peer_sock.sndhwm = 4
        self.peer_sock.immediate = True    # nothing queued for a peer that is not there
        curve_client_setup(self.peer_sock, c.secret_key or None, c.peer_public_key or None)
        self.peer_sock.connect(c.peer_coord)

    def _redial(self, now: float) -> None:
        """A CURVE handshake the peer's ROUTER refused is never retried by ZeroMQ:
        a controller started before the catalog named it its survivor's peer
        (Replacing a server), or whose peer had another key for a while, would
        stay unheard for ever. While the peer does not hear us, the DEALER is opened
        again every REDIAL_S (its heartbeats say whether it hears ours)."""
        st = self.state
        if not self.conf.secret_key or (ha.peer_alive(st, now) and st.peer_sees_us):
            self._redial_at = now + REDIAL_S
            return
        if now < getattr(self, "_redial_at", 0.0):
            return
        self._redial_at = now + REDIAL_S
        self.peer_sock.close(0)
        self._open_peer_sock()

    def _curve_server(self, sock):
        """Our ROUTER accepts only the peer's public key."""
        import zmq.auth
        from zmq.auth.thread import ThreadAuthenticator

        pub, sec = zmq.auth.load_certificate(self.conf.secret_key)
        self._peer_pub, _ = zmq.auth.load_certificate(self.conf.peer_public_key)
        svc = self

        class _Only:
            def callback(self, domain, key):
                return key == svc._peer_pub     # a replace changes it (retarget)

        auth = ThreadAuthenticator(self.zctx)
        auth.start()
        auth.configure_curve_callback(domain="*", credentials_provider=_Only())
        sock.curve_secretkey = sec
        sock.curve_publickey = pub
        sock.curve_server = True
        return auth

    def _send(self, sock, msg: dict) -> None:
        import zmq

        try:
            sock.send(json.dumps(msg).encode(), zmq.NOBLOCK)
        except zmq.Again:
            pass  # not connected / queue full: the protocol tolerates loss

    # -- the loop -------------------------------------------------------------------
    def _run(self) -> None:
        import zmq

        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        if self.wit is not None:
            poller.register(self.wit, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        period = self.conf.heartbeat_ms / 1000
        next_beat = 0.0
        next_ping = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + period
                self._drain()
                self._beat()
                self._redial(now)
                if (self.wit is not None and now >= next_ping
                        and self.state.lease_sent_at is None):
                    next_ping = now + 1.0
                    self._send(self.wit, {"op": "ping", "sent_at": now})
            timeout = max(0, int((next_beat - time.monotonic()) * 1000))
            try:
                ready = dict(poller.poll(timeout))
            except zmq.ZMQError:
                if self._stop.is_set():
                    return
                raise
            if self._wake_r in ready:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            if ready:
                self._drain()
            with self.lock:
                cmds, self._cmds = self._cmds, []
            for ev in cmds:
                if isinstance(ev, _Retarget):
                    self._retarget_here(ev)
                elif isinstance(ev, tuple):
                    self._mirror_seen(*ev)
                else:
                    self.feed(ev)

    def _drain(self) -> None:
        """Everything the peer and the witness sent so far, fed in. Called
        before we judge the peer or tell it whether we hear it: after a stall of
        this thread (a slow reactor call, the GIL, the scheduler) their messages
        are waiting here, and the peer must not be taken for dead, nor told so,
        for our own delay."""
        import zmq

        while True:
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._on_peer(frames[-1])
        while self.wit is not None:
            try:
                body = self.wit.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._on_witness(body)

    def _beat(self) -> None:
        """Heartbeat out, then Tick. Called right after a _drain(), so what we
        tell the peer is current. Nothing here waits for a reactor: the loop
        counter is read, not asked for, and the mirror link is polled by the
        probe thread, so a busy reactor cannot delay our heartbeats past the
        peer's timeout (a reactor that stops looping still shows as dead)."""
        now = time.monotonic()
        loops = int(self._lib.srrs_core_loops_poke(self.ctl.core.ptr))
        s = self.state
        ver = self._rt_ver
        if ver != self._rt_out[0]:
            retired = set(self._retired)
            rt = sorted((n, z) for n, z in dict(self.runtime).items() if n not in retired)
            self._rt_out = (ver, rt, hashlib.blake2b(json.dumps(rt).encode(),
                                                     digest_size=8).hexdigest())
        _, rt, digest = self._rt_out
        hb = {"type": "hb", "node": self.conf.me_id, "epoch": s.epoch, "role": s.role,
              "loops": loops, "data_gen": s.data_gen.to_json(), "base_gen": s.base_gen.to_json(),
              "sees_peer": ha.peer_alive(s, now), "behind": s.behind,
              "boot": self._hb_boot, "seq": self._hb_seq, "volumes": self.agreement,
              "rt": digest, "rt_seen": self._peer_rt}
        self._hb_seq += 1
        if self._peer_rt_seen != digest:    # lost or not yet sent: (again) in full
            hb["runtime"] = rt
        ex, ports = self.discovery.outgoing()
        hb["ex"], hb["ex_seen"] = ex, self.discovery.peer_digest
        if self._peer_ex_seen != ex:
            hb["exports"] = ports
        self._send(self.peer_sock, hb)
        self.feed(ha.Tick())
        try:
            self.discovery.sync()
        except Exception as e:   # the log stays as it was; the heartbeats go on
            log.error("pair: discovery log: %s", e)

    def _probe_run(self) -> None:
        """Every heartbeat: the mirror link's state (and resync completion), asked
        of the reactor here, and handed to the coordination thread."""
        period = self.conf.heartbeat_ms / 1000
        while not self._stop.wait(period):
            try:
                up = bool(self.link_info()["up"])
                started = self._resync_started if self.state.role == ha.RESYNC else 0.0
                done = bool(started) and all(i["resync_done"] for i in self.mirror_info())
            except Exception as e:  # never let the probe die silently
                log.error("pair: mirror probe: %s", e)
                continue
            if up == self.state.mirror_up and not done:
                continue
            with self.lock:
                self._cmds.append((up, started, done))
            try:
                os.write(self._wake_w, b"!")
            except (BlockingIOError, OSError):
                pass

    def _mirror_seen(self, up: bool, started: float, done: bool) -> None:
        if up != self.state.mirror_up:
            self.feed(ha.MirrorUp() if up else ha.MirrorDown())
        if done and self.state.role == ha.RESYNC and self._resync_started == started:
            self.feed(ha.ResyncDone())

    def _on_peer(self, body: bytes) -> None:
        try:
            m = json.loads(body)
            if m.get("node") != self.conf.peer_id:
                log.warning("coordination message from %r, expected %r", m.get("node"),
                            self.conf.peer_id)
                return
            if m["type"] == "hb":
                boot, seq = str(m.get("boot", "")), int(m.get("seq", -1))
                if boot and boot == self._peer_hb[0] and seq <= self._peer_hb[1]:
                    log.debug("stale heartbeat from %s (seq %d, newest %d): ignored",
                              m.get("node"), seq, self._peer_hb[1])
                    return
                if boot:
                    self._peer_hb = (boot, seq)
                if m.get("volumes") != self.agreement:
                    # Never pair over different volumes: the peer stays "dead" to us.
                    msg = (f"peer {self.conf.peer_id} declares volumes {m.get('volumes')}, we "
                           f"have {self.agreement} ([name, size, stripe]): not pairing")
                    if msg != self._disagree:
                        self._disagree = msg
                        self._apply([ha.Alert("error", msg)], time.monotonic())
                    return
                self._disagree = ""
                if "runtime" in m or "rt" not in m:   # (a peer before digests: always)
                    self.peer_runtime = {str(n): int(z) for n, z in m.get("runtime", ())}
                    self._peer_rt = m.get("rt")
                self._peer_rt_seen = m.get("rt_seen")
                self._peer_ex_seen = m.get("ex_seen")
                if m.get("ex") != self.discovery.peer_digest or "exports" in m:
                    self.discovery.peer_says(m.get("ex"), m.get("exports"))
                ev = ha.PeerHeartbeat(int(m["epoch"]), str(m["role"]), int(m["loops"]),
                                      ha.Gen.from_json(m["data_gen"]),
                                      ha.Gen.from_json(m["base_gen"]), bool(m["sees_peer"]),
                                      bool(m.get("behind", False)))
            elif m["type"] == "resync":
                ev = ha.AdminResync(str(m["source"]))
            else:
                return
        except (ValueError, KeyError, TypeError) as e:
            log.warning("bad coordination message: %s", e)
            return
        self.feed(ev)

    def _on_witness(self, body: bytes) -> None:
        try:
            m = json.loads(body)
            op = m.get("op")
            if op == "pong":
                self.feed(ha.WitnessReachable())
            elif op == "lease":
                sent = float(m["sent_at"])
                ev = (ha.LeaseGranted(sent, float(m["lease_s"])) if m.get("ok")
                      else ha.LeaseDenied(sent, str(m.get("reason", ""))))
                self.feed(ev)
        except (ValueError, KeyError, TypeError) as e:
            log.warning("bad witness message: %s", e)

    def _witness_unwind(self, old, ev, now: float) -> None:
        """A grant that came after ha stopped waiting for it (ignored): the
        witness recorded its next generation as the pair's, though we never
        write under it, and would refuse our peer as outdated for ever. Give it
        back while we hold no lease and wait for none (a newer request with the
        same next generation makes it real instead)."""
        ng = self._wit_asked.pop(ev.sent_at, None)
        s = self.state
        if (ng is None or old.lease_sent_at == ev.sent_at or s.lease_sent_at is not None
                or s.role == ha.SOLO or ha.lease_valid(s, now)):
            return
        log.warning("pair: the witness granted a lease after we stopped waiting for it: "
                    "giving it back, the pair's generation back to %s", s.data_gen.to_json())
        self._send(self.wit, {"op": "unwind", "pair": self.conf.pair_id,
                              "node": self.conf.me_id, "granted_gen": ng.to_json(),
                              "data_gen": s.data_gen.to_json()})

    # -- etcd as the witness (docs/architecture.md, Cluster) -------------------------
    def _etcd_setup(self, ctl: Any, conf: PairConfig, timing: ha.Timing) -> None:
        self.solo = None
        self._wit_asked: dict = {}  # sent_at -> next_gen of lease requests sent to the witness
        cluster = getattr(ctl, "cluster", None)
        if conf.witness:
            return
        if cluster is None:
            raise ValueError("pair: witness: is required without a [cluster] section")
        from .cluster_lease import SoloLease

        # One etcd call may take at most the witness timeout: an answer after
        # it is ignored by ha anyway (the request is retried).
        wt = timing.witness_timeout_s
        client = cluster.new_client(timeout=min(cluster.conf.timeout_s, wt), deadline=wt)
        self.solo = SoloLease(client, cluster.conf.prefix)
        self._etcd_q: queue.Queue = queue.Queue()
        self._granted: dict = {}   # sent_at -> next_gen of grants not yet fed to ha

    def _etcd_run(self) -> None:
        """Carries out ha's RequestLease and ReleaseLease against etcd, in order;
        idle, checks once a second that etcd answers (the witness's ping)."""
        while not self._stop.is_set():
            try:
                a = self._etcd_q.get(timeout=1.0)
            except queue.Empty:
                a = "ping"
            if a is None:
                return
            try:
                ev = self._etcd_do(a)
            except Exception as e:   # never let the thread die: a silent witness fences
                log.error("pair: etcd witness: %s", e)
                ev = ha.WitnessUnreachable(a.sent_at if isinstance(a, ha.RequestLease) else -1.0)
            if ev is not None:
                with self.lock:
                    self._cmds.append(ev)
                try:
                    os.write(self._wake_w, b"!")
                except (BlockingIOError, OSError):
                    pass

    def _etcd_do(self, a):
        from . import etcd

        c, t = self.conf, self.timing
        if isinstance(a, ha.RequestLease):
            if self.state.lease_sent_at != a.sent_at:
                return None   # superseded while queued: ha waits for a newer one
            ev = self.solo.request(c.pair_id, c.me_id, t.lease_s, a.data_gen, a.next_gen,
                                   a.sent_at, deadline=t.witness_timeout_s)
            if isinstance(ev, ha.LeaseGranted):
                with self.lock:
                    self._granted[a.sent_at] = a.next_gen
            return ev
        if isinstance(a, tuple):   # ("unwind", next_gen): a grant ha did not take
            with self.lock:
                s = self.state
                if (s.lease_sent_at is not None or ha.lease_valid(s, time.monotonic())
                        or s.role == ha.SOLO):
                    return None    # a lease in use or coming: nothing to undo
                data = s.data_gen
            if self.solo.unwind(c.pair_id, c.me_id, a[1], data):
                log.warning("pair: etcd granted a lease after we stopped waiting for it: "
                            "given back, the pair's generation back to %s", data)
            return None
        if isinstance(a, ha.ReleaseLease):
            self.solo.release(c.pair_id, c.me_id, deadline=2 * t.lease_s)
            return None
        if self.state.lease_sent_at is not None or not self._etcd_q.empty():
            return None
        try:
            self.solo.holder(c.pair_id)
            return ha.WitnessReachable()
        except etcd.EtcdError:
            # sent_at -1 answers no request: only witness_ok changes
            return ha.WitnessUnreachable(-1.0)

    # -- the state machine ---------------------------------------------------------
    def feed(self, ev) -> None:
        with self.lock:
            now = time.monotonic()
            old = self.state
            self.state, acts = ha.step(self.state, ev, now)
            if isinstance(ev, ha.LeaseGranted) and self.solo is not None:
                ng = self._granted.pop(ev.sent_at, None)
                if old.lease_sent_at != ev.sent_at and ng is not None:
                    # etcd wrote ng as the pair's generation; we will never write under it
                    self._etcd_q.put(("unwind", ng))
            elif isinstance(ev, ha.LeaseGranted) and self.wit is not None:
                self._witness_unwind(old, ev, now)
            if self.state.role != old.role:
                log.warning("pair %s: %s -> %s (%s, epoch %d)", self.conf.self_name, old.role,
                            self.state.role, self.state.reason, self.state.epoch)
            self._apply(acts, now)

    def _apply(self, acts, now: float) -> None:
        for a in acts:
            if isinstance(a, ha.SetMirror):
                deadline = 0
                if a.lease_until:
                    deadline = int(a.lease_until * 1e9)
                self._check(self._lib.srrs_mirror_set_mode(self.link, MIRROR_MODES[a.mode],
                                                           deadline), "mirror mode")
            elif isinstance(a, ha.SetAna):
                self.ana = a.state
                for fn in self.ana_listeners:
                    try:
                        fn(a.state)
                    except Exception as e:
                        log.error("ANA listener: %s", e)
            elif isinstance(a, (ha.RequestLease, ha.ReleaseLease)) and self.solo is not None:
                self._etcd_q.put(a)
            elif isinstance(a, ha.RequestLease):
                self._wit_asked[a.sent_at] = a.next_gen
                while len(self._wit_asked) > 64:   # answers that never came
                    self._wit_asked.pop(next(iter(self._wit_asked)))
                self._send(self.wit, {"op": "lease", "pair": self.conf.pair_id,
                                      "node": self.conf.me_id, "sent_at": a.sent_at,
                                      "lease_s": self.timing.lease_s,
                                      "data_gen": a.data_gen.to_json(),
                                      "next_gen": a.next_gen.to_json()})
            elif isinstance(a, ha.ReleaseLease):
                self._send(self.wit, {"op": "release", "pair": self.conf.pair_id,
                                      "node": self.conf.me_id})
            elif isinstance(a, ha.StartResync):
                self._resync_started = now
                self._check(self._lib.srrs_mirror_resync_start(self.link, int(a.full)),
                            "resync")
            elif isinstance(a, ha.SaveGens):
                self._save_state(a.data_gen, a.base_gen, a.behind)
            elif isinstance(a, ha.Alert):
                self.alerts.append({"time": time.time(), "level": a.level, "msg": a.message})
                del self.alerts[:-100]
                self.alerts_raised += 1
                (log.error if a.level == "error" else log.warning)("pair: %s", a.message)

    # -- runtime paired volumes ---------------------------------------------------------
    # Cluster volumes (ctrl/cluster_sync.py) come and go while the pair runs. Each is
    # a mirror over a local replica like a configured volume, on vol id `vol_id`
    # (the same on both controllers: the catalog's slot), with its dirty bitmap in
    # state_dir. They are left out of the agreement: the two controllers add them
    # at different moments, and a difference must not make the peer "dead". The
    # heartbeat lists them with their sizes instead (peer_has), so an export can wait
    # for the peer's mirror of the same size.
    def add_volume(self, name: str, replica: str, vol_id: int) -> None:
        """A mirror bdev `name` over `replica` (renamed `name`.replica when equal)."""
        with self._rt_lock:
            if name in self.runtime or name in self._mirrors:
                return
            bitmap = os.path.join(self.conf.state_dir, f"{name}.bitmap")
            self._check(self._lib.srrs_mirror_create(self.link, name.encode(), replica.encode(),
                                                     vol_id, self.conf.stripe_size,
                                                     bitmap.encode()), f"mirror {name}")
            self._mirrors.append(name)
            self.runtime[name] = self.ctl.core.bdev_info(name)["size"]
            self._rt_ver += 1

    def remove_volume(self, name: str, forget: bool = True) -> None:
        """The mirror goes (its replica gets its name back); forget: its bitmap too
        (the volume is deleted, not being grown)."""
        with self._rt_lock:
            if name not in self.runtime:
                return
            self._mirrors.remove(name)     # first: status stops asking for it
            try:
                self.ctl.core.bdev_delete(name)
            except BaseException:
                self._mirrors.append(name)
                raise
            del self.runtime[name]
            self._retired.discard(name)
            self._rt_ver += 1
        if forget:
            try:
                os.unlink(os.path.join(self.conf.state_dir, f"{name}.bitmap"))
            except FileNotFoundError:
                pass

    def retire(self, name: str) -> None:
        """The mirror `name` is on its way out (remove_volume once its host I/O
        is over): the peer no longer sees it listed, so a new mirror of that
        name there never takes this one for its partner (docs/architecture.md,
        Volume moves: a volume moved away and straight back)."""
        with self._rt_lock:
            if name in self.runtime and name not in self._retired:
                self._retired.add(name)
                self._rt_ver += 1

    def peer_has(self, name: str) -> bool:
        """The peer's last heartbeat listed the mirror `name` with our size."""
        if name in self._retired:
            return False
        mine = self.runtime.get(name)
        return mine is not None and self.peer_runtime.get(name) == mine

    # -- a replaced peer (docs/architecture.md, Cluster, Replacing a server) ------------
    def retarget(self, peer: str, coord: str, mirror: str, public_key: str = "",
                 name: str = "", timeout: float = 10.0) -> None:
        """Take `peer` (coordination endpoint coord, mirror link at mirror, CURVE
        public key public_key in Z85) as our peer from now on, the pair keeping
        its name: the catalog replaced the old one. Only while we serve no peer
        (STARTING, FENCED or SOLO): the mirror link drops the old peer's
        connection and dials or accepts the new one, the coordination sockets
        take the new endpoint and key, and ha forgets what it heard of the old
        peer. Generations stay: the new, empty replicas make ha choose a full
        copy from us. save_config writes the new [pair]."""
        from dataclasses import replace

        from .pair_config import check_zmq

        c = self.conf
        if not c.peer:
            raise ValueError("pair: a replace needs named controllers ([pair] peer)")
        from srrs.schema import check_name

        check_name(peer)       # the catalog's: outside input (a file name below)
        if peer == c.self_name:
            raise ValueError(f"pair: bad new peer {peer!r}")
        check_zmq(coord)
        host, port = parse_address(mirror)
        with self.lock:
            role = self.state.role
        if role not in (ha.STARTING, ha.FENCED, ha.SOLO):
            raise ValueError(f"pair: the peer changes only while not paired ({role})")
        key_path = c.peer_public_key
        if c.secret_key:
            if len(public_key) != 40 or any(ch not in _Z85 for ch in public_key):
                raise ValueError(f"pair: {peer} registered no CURVE public key (Z85, 40 "
                                 "characters)")
            key_path = os.path.join(c.state_dir, f"peer-{peer}.key")
            tmp = key_path + ".tmp"
            with open(tmp, "w", encoding="ascii") as f:
                # the format `srrs keygen` writes (zmq.auth.load_certificate reads it)
                f.write(f"# the CURVE public key of {peer}, taken from the catalog\n"
                        f"metadata\ncurve\n    public-key = \"{public_key}\"\n")
            os.replace(tmp, key_path)
        new = replace(c, peer=peer, peer_coord=coord, peer_mirror=mirror,
                      peer_public_key=key_path, name=name or c.pair_id)
        node = 0 if new.me_id < new.peer_id else 1
        self._check(self._lib.srrs_mirror_link_set_peer(self.link, host.encode(), port, node,
                                                        link_id(new.peer_id)),
                    "mirror link peer")
        cmd = _Retarget(new)
        with self.lock:
            self._cmds.append(cmd)
        try:
            os.write(self._wake_w, b"!")
        except (BlockingIOError, OSError):
            pass
        if not cmd.done.wait(timeout):
            raise TimeoutError("pair: the coordination thread did not take the new peer")
        log.warning("pair %s: new peer %s (coordination %s, mirror %s, node %d); pair %s",
                    c.self_name, peer, coord, mirror, node, new.pair_id)

    def _retarget_here(self, cmd: "_Retarget") -> None:
        """On the coordination thread (the one that uses the sockets)."""
        from dataclasses import replace

        import zmq.auth

        new = cmd.conf
        try:
            if self._auth is not None:
                self._peer_pub, _ = zmq.auth.load_certificate(new.peer_public_key)
            self.peer_sock.close(0)
            with self.lock:
                self.conf = new
                self.state = replace(self.state, peer=new.peer_id, peer_seen=None, peer_loops=-1,
                                     peer_loops_at=None, peer_role="", peer_epoch=0,
                                     peer_data_gen=ha.NULL_GEN, peer_base_gen=ha.NULL_GEN,
                                     peer_sees_us=False, split_brain="")
                self.peer_runtime, self._peer_rt, self._peer_rt_seen = {}, None, None
                self._peer_ex_seen = None
                self.discovery.peer_says(None, [])
                self._peer_hb = ("", -1)
                self._disagree = ""
            self._open_peer_sock()
        finally:
            cmd.done.set()

    # -- operator ---------------------------------------------------------------------
    def resync(self, source: str) -> None:
        """After a split brain: `source` keeps its data, the other is overwritten.
        Names: this controller's or the peer's (self/peer of the config)."""
        ids = {self.conf.self_name: self.conf.me_id, self.conf.me_id: self.conf.me_id}
        if self.conf.peer:
            ids[self.conf.peer] = self.conf.peer_id
        ids[self.conf.peer_id] = self.conf.peer_id
        if source not in ids:
            raise ValueError(f"source must be {self.conf.self_name} or "
                             f"{self.conf.peer or self.conf.peer_id}")
        src = ids[source]
        self._send(self.peer_sock, {"type": "resync", "node": self.conf.me_id, "source": src})
        with self.lock:
            self._cmds.append(ha.AdminResync(src))

    def status(self) -> dict:
        # Calls into the reactor, so not under the lock: a busy reactor must not
        # hold up the coordination thread (its heartbeats and lease timing).
        link, vols = self.link_info(), self.mirror_info()
        with self.lock:
            now = time.monotonic()
            st = self.state.to_json(now)
            st.update(name=self.conf.self_name, ana=self.ana, pair=self.conf.pair_id,
                      witness="etcd" if self.solo is not None else self.conf.witness,
                      config_mismatch=self._disagree,
                      alerts=self.alerts[-10:], link=link, volumes=vols,
                      discovery=self.discovery.status())
            return st

    def to_toml_dict(self) -> dict:
        from .pair_config import to_toml_dict

        return to_toml_dict(self.conf)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._probe.join(5)
        if self.solo is not None:
            self._etcd_q.put(None)
            self._etcd.join(5)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        for s in (self.router, self.peer_sock, self.wit):
            if s is not None:
                s.close(0)
        if self._auth is not None:
            self._auth.stop()
        self.zctx.term()
        self._mirror_teardown()
        os.close(self._lock_fd)


def start(ctl: Any, section: Optional[PairConfig]) -> Optional[PairService]:
    if section is None:
        return None
    return PairService(ctl, section)
