"""vhost-user-blk back end, control plane: one Unix socket per device, one
front end at a time, served from a Python thread per device (the reactors
never wait on it). Each message is decoded here and turned into calls on the
C device (vhost/vq.c), which owns guest memory and the rings.

A protocol violation, or a queue the C side stopped because the guest broke
the ring, drops that connection with a logged reason; the device then listens
again, so a restarted VM (or QEMU with reconnect=1) can come back.
"""

from __future__ import annotations

import grp
import itertools
import logging
import os
import pwd
import selectors
import socket
import threading
import time
from typing import Callable, Optional

from srrs.ffi import sockpath
from srrs.ffi.binding import check, ffi, lib
from srrs.rpcdef import AlreadyExists, Busy

from .proto import (
    CONFIG_HDR,
    CONFIG_MAX,
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    FLAG_VERSION,
    INFLIGHT,
    MAX_REGIONS_TABLE,
    MEM_HDR,
    MEM_REGION,
    PF,
    U64,
    VRING_ADDR,
    VRING_IDX_MASK,
    VRING_NOFD,
    VRING_STATE,
    ProtocolError,
    Req,
    close_fds,
    recv_msg,
    send_msg,
)

log = logging.getLogger("srrs.vhost")

PROTOCOL_FEATURES = (1 << PF.MQ | 1 << PF.REPLY_ACK | 1 << PF.CONFIG | 1 << PF.INFLIGHT_SHMFD
                     | 1 << PF.RESET_DEVICE | 1 << PF.CONFIGURE_MEM_SLOTS)
F_PROTOCOL_FEATURES = 1 << 30
MAX_MEM_SLOTS = 64
STOP_TIMEOUT_MS = 30000
VQ_STATES = {0: "stopped", 1: "running", 2: "stopping", 3: "broken"}
_VQ_FIELDS = ("reactor", "num", "last_avail_idx", "used_idx", "inflight", "event_idx", "requests",
              "reads", "writes", "flushes", "discards", "write_zeroes", "get_ids", "errors",
              "bytes_read", "bytes_written", "calls", "resubmitted", "left_inflight")


def _is_eventfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False


class _Ring:
    __slots__ = ("num", "addr", "kick", "enabled", "started")

    def __init__(self):
        self.num = 0
        self.addr = False
        self.kick = False
        self.enabled = False
        self.started = False


def resolve_owner(owner: Optional[str]) -> tuple:
    """"user[:group]" / "uid[:gid]" -> (uid, gid), -1 for a part not given;
    an unknown name raises ValueError("owner: ...")."""
    if not owner:
        return -1, -1
    user, _, group = str(owner).partition(":")
    try:
        uid = int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid if user else -1
    except KeyError:
        raise ValueError(f"owner: no such user {user!r} on this host") from None
    try:
        gid = (int(group) if group.isdigit() else grp.getgrnam(group).gr_gid) if group else -1
    except KeyError:
        raise ValueError(f"owner: no such group {group!r} on this host") from None
    return uid, gid


class VhostBlkDevice:
    """One vhost-user-blk device: a listening socket and the C device behind it.

    Threads: start()/stop()/info() from the control plane; the protocol runs on
    the device's own thread.
    """

    def __init__(self, core, name: str, socket_path: str, bdev: str, num_queues: int = 1,
                 serial: str = "", read_only: bool = False, owner: Optional[str] = None,
                 mode: int = 0o600, pick_reactor: Optional[Callable[[], int]] = None):
        self.core = core
        self.name = name
        self.socket_path = str(socket_path)
        self.bdev = bdev
        self.num_queues = int(num_queues)
        self.serial = serial or name[:20]
        self.read_only = bool(read_only)
        self.owner = owner
        self._uid, self._gid = resolve_owner(owner)  # before anything exists to clean up
        self.mode = mode
        rr = itertools.count()
        self._pick = pick_reactor or (lambda: next(rr) % core.num_reactors)
        pp = ffi.new("struct srrs_vhost_dev **")
        check(lib.srrs_vhost_dev_create(core.ptr, name.encode(), bdev.encode(), self.num_queues,
                                        int(self.read_only), self.serial.encode()[:20], pp),
              f"vhost {name}")
        self._pp = pp
        self._dev = pp[0]
        self._lsock: Optional[socket.socket] = None
        self._conn: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._lock = threading.Lock()   # serialises C calls: device thread vs info()/stop()
        self.config = None  # the VhostConfig it came from, if any
        self.state = "created"
        self.connections = 0
        self.refused = 0
        self.last_error = ""
        self._reset_session()

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        path = self.socket_path
        # Only a stale socket (a previous run killed -9) is replaced; any other
        # file there, or a socket someone serves, is refused untouched.
        sockpath.claim(path, f"vhost {self.name} socket")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bound = False
        try:
            s.bind(path)
            bound = True
            self._ident = sockpath.identity(path)
            os.chmod(path, self.mode)
            if self._uid != -1 or self._gid != -1:
                os.chown(path, self._uid, self._gid)
            s.listen(1)
        except BaseException:
            s.close()
            if bound:  # the inode we just made: nothing is left behind
                try:
                    os.unlink(path)
                except OSError:
                    pass
            raise
        self._lsock = s
        self.state = "listening"
        self._thread = threading.Thread(target=self._serve, name=f"vhost-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Drop the connection (queues drain), close the socket, free the device."""
        self._stop.set()
        for s in (self._conn, self._lsock):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join(60)
        if self._lsock is not None:
            self._lsock.close()
            self._lsock = None
            sockpath.release(self.socket_path, self._ident)
        with self._lock:
            if self._dev != ffi.NULL:
                lib.srrs_vhost_dev_destroy(self._pp)
                self._dev = ffi.NULL
        self.state = "stopped"

    # -- introspection ----------------------------------------------------------------
    def info(self) -> dict:
        queues = []
        with self._lock:
            if self._dev != ffi.NULL:
                vi = ffi.new("struct srrs_vhost_vq_info *")
                for i in range(self.num_queues):
                    check(lib.srrs_vhost_vq_get_info(self._dev, i, vi))
                    q = {"index": i, "state": VQ_STATES.get(vi.state, str(vi.state))}
                    q.update({f: getattr(vi, f) for f in _VQ_FIELDS})
                    queues.append(q)
        return {
            "name": self.name, "socket": self.socket_path, "bdev": self.bdev,
            "num_queues": self.num_queues, "serial": self.serial, "read_only": self.read_only,
            "state": self.state, "connections": self.connections, "refused": self.refused,
            "last_error": self.last_error,
            "queues": queues,
        }

    # -- the device thread ---------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._lsock.accept()
            except OSError:
                if self._stop.is_set():
                    break
                time.sleep(0.05)
                continue
            self._conn = conn
            self.connections += 1
            self.state = "connected"
            reason = self._session(conn)
            if reason:   # recorded before the front end can see the close
                self.last_error = reason
            with self._lock:
                lib.srrs_vhost_dev_reset(self._dev)
            self._reset_session()
            self._conn = None
            conn.close()
            if reason:
                log.warning("vhost %s: connection dropped: %s", self.name, reason)
            self.state = "listening" if not self._stop.is_set() else "stopping"

    def _session(self, conn: socket.socket) -> str:
        sel = selectors.DefaultSelector()
        sel.register(conn, selectors.EVENT_READ)
        sel.register(lib.srrs_vhost_dev_event_fd(self._dev), selectors.EVENT_READ)
        sel.register(self._lsock, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                broken = self._broken()
                if broken:
                    return f"device stopped: {broken}"
                # no timeout: a broken queue writes the device's event fd and
                # stop() shuts both sockets down, so every reason to look again
                # is an fd here; an idle connected front end costs no wake-up
                ready = sel.select()
                if any(key.fileobj is self._lsock for key, _ in ready):
                    if self._peer_gone(conn):
                        return ""   # the new front end is accepted next
                    self._refuse_second()
                if not any(key.fileobj is conn for key, _ in ready):
                    continue
                try:
                    req, flags, payload, fds = recv_msg(conn)
                except EOFError:
                    return ""
                try:
                    self._dispatch(conn, req, flags, payload, fds)
                finally:
                    close_fds(fds)
            return ""
        except ProtocolError as e:
            return str(e)
        except OSError as e:
            return "" if self._stop.is_set() else f"socket error: {e}"
        except Exception as e:  # a bug of ours must drop the session, not the device thread
            log.exception("vhost %s: internal error", self.name)
            return f"internal error: {type(e).__name__}: {e}"
        finally:
            sel.close()

    @staticmethod
    def _peer_gone(conn: socket.socket) -> bool:
        try:
            return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _refuse_second(self) -> None:
        """One front end at a time: a second one is closed at once (QEMU with
        reconnect= retries, and gets in once the first has gone)."""
        try:
            extra, _ = self._lsock.accept()
        except OSError:
            return
        self.refused += 1   # counted before the front end can see the close
        extra.close()
        log.warning("vhost %s: refused a second front end while one is connected", self.name)

    def _broken(self) -> str:
        buf = ffi.new("char[192]")
        with self._lock:
            if lib.srrs_vhost_dev_broken(self._dev, buf, 192) == 1:
                return ffi.string(buf).decode(errors="replace")
        return ""

    # -- dispatch --------------------------------------------------------------------------
    def _reset_session(self) -> None:
        self.features = 0
        self.protocol_features = 0
        self.rings = [_Ring() for _ in range(self.num_queues)]
        self.mem_regions = 0

    def _dispatch(self, conn, req: int, flags: int, payload: bytes, fds: list) -> None:
        if flags & 0x3 != FLAG_VERSION:
            raise ProtocolError(f"request {req}: bad version flags {flags:#x}")
        handler = _HANDLERS.get(req)
        if handler is None:
            raise ProtocolError(f"unknown request {req}")
        name, size, nfds, fn = handler
        if size is not None and len(payload) != size:
            raise ProtocolError(f"{name}: payload of {len(payload)} bytes, expected {size}")
        if nfds is not None and len(fds) != nfds:
            raise ProtocolError(f"{name}: {len(fds)} file descriptors, expected {nfds}")
        try:
            with self._lock:
                reply = fn(self, payload, fds)
            ok = True
        except _Nack as e:
            log.info("vhost %s: %s refused: %s", self.name, name, e)
            reply, ok = None, False
        if reply is not None:
            data, rfds = reply if isinstance(reply, tuple) else (reply, None)
            send_msg(conn, req, data, FLAG_VERSION | FLAG_REPLY, rfds)
            if rfds:
                close_fds(rfds)
        elif flags & FLAG_NEED_REPLY and self.protocol_features >> PF.REPLY_ACK & 1:
            send_msg(conn, req, U64.pack(0 if ok else 1), FLAG_VERSION | FLAG_REPLY)
        elif not ok:
            raise ProtocolError(f"{name} failed and the front end asked for no reply")

    def _ring(self, index: int) -> _Ring:
        if index >= self.num_queues:
            raise ProtocolError(f"queue index {index} but the device has {self.num_queues}")
        return self.rings[index]

    def _c(self, rc: int, what: str) -> int:
        """A C call the peer's message caused: failure breaks the session."""
        if rc < 0:
            msg = ffi.string(lib.srrs_last_error()).decode(errors="replace")
            raise ProtocolError(f"{what}: {msg}")
        return rc

    def _try_start(self, i: int) -> None:
        r = self.rings[i]
        enabled = r.enabled or not self.features & F_PROTOCOL_FEATURES
        if r.started or not (r.num and r.addr and r.kick and enabled):
            return
        if not lib.srrs_vhost_mem_count(self._dev):
            raise ProtocolError(f"queue {i} started before SET_MEM_TABLE")
        self._c(lib.srrs_vhost_vq_start(self._dev, i, self._pick()), f"start queue {i}")
        r.started = True

    def _stop_ring(self, i: int) -> int:
        r = self.rings[i]
        base = self._c(lib.srrs_vhost_vq_stop(self._dev, i, STOP_TIMEOUT_MS), f"stop queue {i}")
        r.started = False
        return base

    # handlers: (self, payload, fds) -> None | bytes | (bytes, [fds to send])
    def _get_features(self, p, fds):
        return U64.pack(lib.srrs_vhost_dev_features(self._dev))

    def _set_features(self, p, fds):
        (f,) = U64.unpack(p)
        self._c(lib.srrs_vhost_dev_set_features(self._dev, f), "SET_FEATURES")
        self.features = f

    def _get_protocol_features(self, p, fds):
        return U64.pack(PROTOCOL_FEATURES)

    def _set_protocol_features(self, p, fds):
        (f,) = U64.unpack(p)
        if f & ~PROTOCOL_FEATURES:
            raise ProtocolError(f"protocol features {f & ~PROTOCOL_FEATURES:#x} not offered")
        self.protocol_features = f

    def _noop(self, p, fds):
        return None

    def _reset_owner(self, p, fds):
        for i in range(self.num_queues):
            if self.rings[i].started:
                self._stop_ring(i)
        lib.srrs_vhost_dev_reset(self._dev)
        feats, pf = self.features, self.protocol_features
        self._reset_session()
        self.protocol_features = pf
        if lib.srrs_vhost_dev_set_features(self._dev, feats) == 0:
            self.features = feats

    def _set_mem_table(self, p, fds):
        if len(p) < MEM_HDR.size:
            raise ProtocolError("SET_MEM_TABLE: short payload")
        n, _ = MEM_HDR.unpack_from(p)
        if n > MAX_REGIONS_TABLE or len(p) != MEM_HDR.size + n * MEM_REGION.size:
            raise ProtocolError(f"SET_MEM_TABLE: {n} regions in {len(p)} bytes")
        if len(fds) != n:
            raise ProtocolError(f"SET_MEM_TABLE: {n} regions but {len(fds)} fds")
        regs = [MEM_REGION.unpack_from(p, MEM_HDR.size + i * MEM_REGION.size) for i in range(n)]
        arr = [ffi.new("uint64_t[]", [r[k] for r in regs] or [0]) for k in range(4)]
        cfds = ffi.new("int[]", list(fds) or [0])
        self._c(lib.srrs_vhost_mem_set(self._dev, n, cfds, arr[0], arr[1], arr[2], arr[3]),
                "SET_MEM_TABLE")

    def _get_max_mem_slots(self, p, fds):
        return U64.pack(MAX_MEM_SLOTS)

    def _add_mem_reg(self, p, fds):
        gpa, size, ua, off = MEM_REGION.unpack_from(p, 8)
        self._c(lib.srrs_vhost_mem_add(self._dev, fds[0], gpa, size, ua, off), "ADD_MEM_REG")

    def _rem_mem_reg(self, p, fds):
        if len(fds) > 1:
            raise ProtocolError(f"REM_MEM_REG: {len(fds)} fds")
        gpa, size, ua, off = MEM_REGION.unpack_from(p, 8)
        if lib.srrs_vhost_mem_remove(self._dev, gpa, size) < 0:
            # unknown region, or the rings live in it: refuse, keep the session
            raise _Nack(ffi.string(lib.srrs_last_error()).decode(errors="replace"))

    def _set_vring_num(self, p, fds):
        i, num = VRING_STATE.unpack(p)
        r = self._ring(i)
        self._c(lib.srrs_vhost_vq_set_num(self._dev, i, num), "SET_VRING_NUM")
        r.num = num

    def _set_vring_addr(self, p, fds):
        i, _flags, desc, used, avail, _log = VRING_ADDR.unpack(p)
        r = self._ring(i)
        self._c(lib.srrs_vhost_vq_set_addr(self._dev, i, desc, used, avail), "SET_VRING_ADDR")
        r.addr = True
        self._try_start(i)

    def _set_vring_base(self, p, fds):
        i, base = VRING_STATE.unpack(p)
        self._ring(i)
        self._c(lib.srrs_vhost_vq_set_base(self._dev, i, base), "SET_VRING_BASE")

    def _get_vring_base(self, p, fds):
        i, _ = VRING_STATE.unpack(p)
        r = self._ring(i)
        base = self._stop_ring(i)
        # The ring is stopped until the next kick fd (spec: GET_VRING_BASE).
        lib.srrs_vhost_vq_set_kick(self._dev, i, -1)
        lib.srrs_vhost_vq_set_call(self._dev, i, -1)
        r.kick = False
        return VRING_STATE.pack(i, base)

    def _vring_fd(self, p, fds, what: str):
        (v,) = U64.unpack(p)
        i = v & VRING_IDX_MASK
        if v & ~(VRING_IDX_MASK | VRING_NOFD):
            raise ProtocolError(f"{what}: bad argument {v:#x}")
        self._ring(i)
        nofd = bool(v & VRING_NOFD)
        if len(fds) != (0 if nofd else 1):
            raise ProtocolError(f"{what}: {len(fds)} fds with the no-fd flag {'set' if nofd else 'clear'}")
        if nofd:
            return i, -1
        if not _is_eventfd(fds[0]):
            raise ProtocolError(f"{what}: queue {i}: fd is not an eventfd")
        return i, fds[0]

    def _take_fd(self, fd: int) -> int:
        if fd < 0:
            return -1
        fd = os.dup(fd)  # the C side owns this copy; the message's fds are closed after dispatch
        os.set_blocking(fd, False)
        return fd

    def _set_vring_kick(self, p, fds):
        i, fd = self._vring_fd(p, fds, "SET_VRING_KICK")
        fd = self._take_fd(fd)
        self._c(lib.srrs_vhost_vq_set_kick(self._dev, i, fd), "SET_VRING_KICK")
        self.rings[i].kick = True
        self._try_start(i)

    def _set_vring_call(self, p, fds):
        i, fd = self._vring_fd(p, fds, "SET_VRING_CALL")
        fd = self._take_fd(fd)
        self._c(lib.srrs_vhost_vq_set_call(self._dev, i, fd), "SET_VRING_CALL")

    def _set_vring_err(self, p, fds):
        self._vring_fd(p, fds, "SET_VRING_ERR")  # validated; we never report through it
        return None

    def _get_queue_num(self, p, fds):
        return U64.pack(self.num_queues)

    def _set_vring_enable(self, p, fds):
        i, on = VRING_STATE.unpack(p)
        r = self._ring(i)
        if on not in (0, 1):
            raise ProtocolError(f"SET_VRING_ENABLE: value {on}")
        r.enabled = bool(on)
        if on:
            self._try_start(i)
        elif r.started:
            self._stop_ring(i)

    def _get_config(self, p, fds):
        if len(p) < CONFIG_HDR.size:
            raise ProtocolError("GET_CONFIG: short payload")
        off, size, fl = CONFIG_HDR.unpack_from(p)
        if size > CONFIG_MAX or off > CONFIG_MAX or off + size > CONFIG_MAX:
            raise ProtocolError(f"GET_CONFIG: offset {off} size {size}")
        buf = ffi.new("uint8_t[]", CONFIG_MAX)
        lib.srrs_vhost_dev_get_config(self._dev, buf, CONFIG_MAX)
        return CONFIG_HDR.pack(off, size, fl) + bytes(ffi.buffer(buf, CONFIG_MAX))[off:off + size]

    def _set_config(self, p, fds):
        # Only `wce` is writable in virtio_blk_config and we do not offer CONFIG_WCE.
        raise _Nack("no writable config fields")

    @staticmethod
    def _inflight_args(p):
        # QEMU sends the padded C struct (24 bytes); accept the packed 20 too.
        if len(p) not in (INFLIGHT.size, INFLIGHT.size - 4):
            raise ProtocolError(f"inflight message of {len(p)} bytes")
        return INFLIGHT.unpack(p.ljust(INFLIGHT.size, b"\0"))

    def _get_inflight_fd(self, p, fds):
        size0, _off, nq, qs = self._inflight_args(p)
        if not 1 <= nq <= self.num_queues or not 1 <= qs <= 1024:
            raise ProtocolError(f"GET_INFLIGHT_FD: {nq} queues of {qs}")
        size = lib.srrs_vhost_inflight_size(nq, qs)
        fd = os.memfd_create(f"srrs-inflight-{self.name}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            self._c(lib.srrs_vhost_set_inflight(self._dev, fd, size, 0, nq, qs), "GET_INFLIGHT_FD")
        except BaseException:
            os.close(fd)
            raise
        return INFLIGHT.pack(size, 0, nq, qs), [fd]

    def _set_inflight_fd(self, p, fds):
        size, off, nq, qs = self._inflight_args(p)
        self._c(lib.srrs_vhost_set_inflight(self._dev, fds[0], size, off, nq, qs),
                "SET_INFLIGHT_FD")

    def _reset_device(self, p, fds):
        self._reset_owner(p, fds)


class VhostNotFound(KeyError):
    """No such device (a KeyError whose message prints without quotes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no such vhost device"


class _Nack(Exception):
    """A request refused without breaking the session (REPLY_ACK failure)."""


D = VhostBlkDevice
_U64 = U64.size
_VS = VRING_STATE.size
#  request: (name, exact payload size or None, exact fd count or None, handler)
_HANDLERS = {
    Req.GET_FEATURES: ("GET_FEATURES", 0, 0, D._get_features),
    Req.SET_FEATURES: ("SET_FEATURES", _U64, 0, D._set_features),
    Req.SET_OWNER: ("SET_OWNER", 0, 0, D._noop),
    Req.RESET_OWNER: ("RESET_OWNER", 0, 0, D._reset_owner),
    Req.SET_MEM_TABLE: ("SET_MEM_TABLE", None, None, D._set_mem_table),
    Req.SET_VRING_NUM: ("SET_VRING_NUM", _VS, 0, D._set_vring_num),
    Req.SET_VRING_ADDR: ("SET_VRING_ADDR", VRING_ADDR.size, 0, D._set_vring_addr),
    Req.SET_VRING_BASE: ("SET_VRING_BASE", _VS, 0, D._set_vring_base),
    Req.GET_VRING_BASE: ("GET_VRING_BASE", _VS, 0, D._get_vring_base),
    Req.SET_VRING_KICK: ("SET_VRING_KICK", _U64, None, D._set_vring_kick),
    Req.SET_VRING_CALL: ("SET_VRING_CALL", _U64, None, D._set_vring_call),
    Req.SET_VRING_ERR: ("SET_VRING_ERR", _U64, None, D._set_vring_err),
    Req.GET_PROTOCOL_FEATURES: ("GET_PROTOCOL_FEATURES", 0, 0, D._get_protocol_features),
    Req.SET_PROTOCOL_FEATURES: ("SET_PROTOCOL_FEATURES", _U64, 0, D._set_protocol_features),
    Req.GET_QUEUE_NUM: ("GET_QUEUE_NUM", 0, 0, D._get_queue_num),
    Req.SET_VRING_ENABLE: ("SET_VRING_ENABLE", _VS, 0, D._set_vring_enable),
    Req.GET_CONFIG: ("GET_CONFIG", None, 0, D._get_config),
    Req.SET_CONFIG: ("SET_CONFIG", None, 0, D._set_config),
    Req.GET_INFLIGHT_FD: ("GET_INFLIGHT_FD", None, 0, D._get_inflight_fd),
    Req.SET_INFLIGHT_FD: ("SET_INFLIGHT_FD", None, 1, D._set_inflight_fd),
    Req.RESET_DEVICE: ("RESET_DEVICE", 0, 0, D._reset_device),
    Req.GET_MAX_MEM_SLOTS: ("GET_MAX_MEM_SLOTS", 0, 0, D._get_max_mem_slots),
    Req.ADD_MEM_REG: ("ADD_MEM_REG", 8 + MEM_REGION.size, 1, D._add_mem_reg),
    Req.REM_MEM_REG: ("REM_MEM_REG", 8 + MEM_REGION.size, None, D._rem_mem_reg),
}


class VhostService:
    """The vhost devices of one controller; vrings go to reactors round-robin."""

    def __init__(self, core):
        self.core = core
        self.devices: dict[str, VhostBlkDevice] = {}
        self._rr = itertools.count()
        self._lock = threading.Lock()

    def _next_reactor(self) -> int:
        return next(self._rr) % self.core.num_reactors

    def create(self, name: str, socket_path: str, bdev: str, num_queues: int = 1,
               serial: str = "", read_only: bool = False, owner: Optional[str] = None,
               mode: int = 0o600) -> VhostBlkDevice:
        with self._lock:
            if name in self.devices:
                raise AlreadyExists(f"vhost device {name!r} already exists")
            for d in self.devices.values():
                if os.path.abspath(d.socket_path) == os.path.abspath(str(socket_path)):
                    raise Busy(f"socket {socket_path} is already used by vhost device {d.name!r}")
            dev = VhostBlkDevice(self.core, name, socket_path, bdev, num_queues, serial, read_only,
                                 owner, mode, pick_reactor=self._next_reactor)
            try:
                dev.start()
            except BaseException:
                dev.stop()
                raise
            self.devices[name] = dev
            return dev

    def create_from_config(self, c) -> VhostBlkDevice:
        """c: srrs.vhost.config.VhostConfig."""
        dev = self.create(c.name, c.socket, c.bdev, c.num_queues, c.serial, c.read_only, c.owner,
                          c.mode)
        dev.config = c
        return dev

    def delete(self, name: str) -> None:
        with self._lock:
            dev = self.devices.pop(name, None)
        if dev is None:
            raise VhostNotFound(f"no vhost device {name!r}")
        dev.stop()

    def get(self, name: str) -> VhostBlkDevice:
        return self.devices[name]

    def list(self) -> list:
        return [d.info() for d in sorted(self.devices.values(), key=lambda d: d.name)]

    def status(self) -> list:
        """Per device: connection state, last error and per-queue stats."""
        return self.list()

    def to_toml_list(self) -> list:
        """The running devices as [[vhost]] tables (save_config)."""
        from .config import VhostConfig, to_dict

        out = []
        for d in sorted(self.devices.values(), key=lambda d: d.name):
            c = getattr(d, "config", None) or VhostConfig(
                name=d.name, socket=d.socket_path, bdev=d.bdev, num_queues=d.num_queues,
                serial=d.serial if d.serial != d.name[:20] else "", read_only=d.read_only,
                owner=d.owner, mode=d.mode)
            out.append(to_dict(c))
        return out

    def close(self) -> None:
        for name in list(self.devices):
            self.delete(name)
