"""vhost-user-blk client for tests and `srrs bench vhost`: the handshake in
Python (like QEMU's front end), the rings and the load in C (vhost/client.c).

    with VhostClient("/tmp/vh0.sock", num_queues=2) as cl:
        print(cl.bench(core, BenchOpts(rw="randwrite", qd=32, time_s=5), verify=True))
"""

from __future__ import annotations

import os
import socket
from typing import Optional

from srrs.ffi.binding import BenchOpts, VerifyMap, bench_result_dict, check, ffi, lib

from .proto import (
    BLK_F_BLK_SIZE,
    BLK_F_DISCARD,
    BLK_F_FLUSH,
    BLK_F_MQ,
    BLK_F_SEG_MAX,
    BLK_F_WRITE_ZEROES,
    CONFIG_HDR,
    F_EVENT_IDX,
    F_INDIRECT,
    F_PROTOCOL_FEATURES,
    F_VERSION_1,
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    FLAG_VERSION,
    INFLIGHT,
    MEM_HDR,
    MEM_REGION,
    PF,
    U64,
    VIRTIO_BLK_CONFIG_SIZE,
    VRING_ADDR,
    VRING_STATE,
    ProtocolError,
    Req,
    close_fds,
    recv_msg,
    send_msg,
)

WANT_FEATURES = (1 << F_VERSION_1 | 1 << F_INDIRECT | 1 << F_EVENT_IDX | 1 << F_PROTOCOL_FEATURES
                 | 1 << BLK_F_SEG_MAX | 1 << BLK_F_BLK_SIZE | 1 << BLK_F_FLUSH | 1 << BLK_F_MQ
                 | 1 << BLK_F_DISCARD | 1 << BLK_F_WRITE_ZEROES)
WANT_PROTOCOL = (1 << PF.MQ | 1 << PF.REPLY_ACK | 1 << PF.CONFIG | 1 << PF.INFLIGHT_SHMFD
                 | 1 << PF.CONFIGURE_MEM_SLOTS)

T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13


class VhostClient:
    """Connects to a vhost-user-blk socket and sets up num_queues rings.

    features: mask of the virtio features to accept (defaults to all we support);
    pass e.g. `WANT_FEATURES & ~(1 << F_INDIRECT)` to test the direct-descriptor path.
    """

    def __init__(self, socket_path: str, num_queues: int = 1, queue_size: int = 256,
                 max_inflight: int = 256, max_io: int = 1 << 20, features: int = WANT_FEATURES,
                 gpa_base: int = 1 << 32, timeout: float = 30.0, inflight: bool = False,
                 inflight_fd: Optional[int] = None, regions: int = 1, mem_slots: bool = False,
                 pipeline: bool = False):
        self.socket_path = str(socket_path)
        pp = ffi.new("struct srrs_vhost_client **")
        check(lib.srrs_vhost_client_create(num_queues, queue_size, max_inflight, max_io, gpa_base,
                                           pp), "vhost client")
        self._pp = pp
        self.ptr = pp[0]
        self.num_queues = num_queues
        self.want_features = features
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.protocol_features = 0
        self.features = 0
        self.capacity = 0
        self.block_size = 512
        self.device_queues = 1
        self.config = b""
        self.connected = False
        self.use_inflight = inflight or inflight_fd is not None
        self.inflight_fd = inflight_fd      # kept across reconnects, like QEMU
        self.inflight_size = 0
        self.queue_size = queue_size
        self.keep_inflight = False
        self.regions = regions          # split guest memory into this many regions
        self.mem_slots = mem_slots      # send them with ADD_MEM_REG (CONFIGURE_MEM_SLOTS)
        self.pipeline = pipeline        # send the ring set-up at once, then read the acks
        self._unacked: Optional[list] = None

    # -- protocol ---------------------------------------------------------------------
    def call(self, req: int, payload: bytes = b"", fds=None, reply: bool = False,
             ack: bool = False) -> Optional[bytes]:
        """Send one message; return the reply payload (reply=True) or check the ack."""
        flags = FLAG_VERSION
        want_ack = ack and self.protocol_features >> PF.REPLY_ACK & 1 and not reply
        if want_ack:
            flags |= FLAG_NEED_REPLY
        send_msg(self.sock, req, payload, flags, fds)
        if not reply and not want_ack:
            return None
        if want_ack and self._unacked is not None:
            self._unacked.append(req)
            return None
        rreq, rflags, data, rfds = recv_msg(self.sock)
        close_fds(rfds)
        if rreq != req or not rflags & FLAG_REPLY:
            raise ProtocolError(f"reply to {req} is {rreq} flags {rflags:#x}")
        if want_ack:
            (v,) = U64.unpack(data)
            if v:
                raise ProtocolError(f"request {Req(req).name} refused by the back end")
            return None
        return data

    def _u64(self, req: int) -> int:
        return U64.unpack(self.call(req, reply=True))[0]

    def connect(self) -> "VhostClient":
        self.sock.connect(self.socket_path)
        offered = self._u64(Req.GET_FEATURES)
        if offered >> F_PROTOCOL_FEATURES & 1:
            pf = self._u64(Req.GET_PROTOCOL_FEATURES)
            self.protocol_features = pf & WANT_PROTOCOL
            self.call(Req.SET_PROTOCOL_FEATURES, U64.pack(self.protocol_features))
        if self.protocol_features >> PF.MQ & 1:
            self.device_queues = self._u64(Req.GET_QUEUE_NUM)
        if self.protocol_features >> PF.CONFIG & 1:
            # Ask for exactly struct virtio_blk_config: some back ends refuse more.
            r = self.call(Req.GET_CONFIG, CONFIG_HDR.pack(0, VIRTIO_BLK_CONFIG_SIZE, 0)
                          + bytes(VIRTIO_BLK_CONFIG_SIZE), reply=True)
            self.config = r[CONFIG_HDR.size:]
        self.call(Req.SET_OWNER)
        self.features = offered & self.want_features
        self.call(Req.SET_FEATURES, U64.pack(self.features), ack=True)
        cfg = self.config
        if len(cfg) >= 8:
            self.capacity = int.from_bytes(cfg[0:8], "little") * 512
        if self.features >> BLK_F_BLK_SIZE & 1 and len(cfg) >= 24:
            self.block_size = int.from_bytes(cfg[20:24], "little") or 512
        if self.features >> BLK_F_MQ & 1 and len(cfg) >= 36:
            self.device_queues = int.from_bytes(cfg[34:36], "little") or self.device_queues
        if self.num_queues > self.device_queues:
            raise ProtocolError(f"device has {self.device_queues} queues, asked for {self.num_queues}")
        if self.use_inflight:
            self._inflight()
        m = ffi.new("struct srrs_vhost_client_mem *")
        lib.srrs_vhost_client_mem(self.ptr, m)
        self.mem = (m.fd, m.size, m.gpa, m.uaddr)
        # Region boundaries at odd page offsets, so buffers straddle them.
        cuts = [0] + [((m.size * i // self.regions) & ~0xFFF) + 0x3000
                      for i in range(1, self.regions)] + [m.size]
        regs = [MEM_REGION.pack(m.gpa + a, b - a, m.uaddr + a, a) for a, b in zip(cuts, cuts[1:])]
        if self.mem_slots:
            if not self.protocol_features >> PF.CONFIGURE_MEM_SLOTS & 1:
                raise ProtocolError("back end does not offer CONFIGURE_MEM_SLOTS")
            if self._u64(Req.GET_MAX_MEM_SLOTS) < len(regs):
                raise ProtocolError("back end has too few memory slots")
            for r in regs:
                self.call(Req.ADD_MEM_REG, bytes(8) + r, fds=[m.fd], ack=True)
        else:
            self.call(Req.SET_MEM_TABLE, MEM_HDR.pack(len(regs), 0) + b"".join(regs),
                      fds=[m.fd] * len(regs), ack=True)
        self._regs = regs
        check(lib.srrs_vhost_client_setup(self.ptr, self.features, self.capacity, self.block_size,
                                          self.num_queues), "vhost client setup")
        ring = ffi.new("struct srrs_vhost_client_ring *")
        if self.pipeline:
            self._unacked = []
        for i in range(self.num_queues):
            lib.srrs_vhost_client_ring(self.ptr, i, ring)
            self.call(Req.SET_VRING_NUM, VRING_STATE.pack(i, ring.num), ack=True)
            self.call(Req.SET_VRING_BASE, VRING_STATE.pack(i, 0), ack=True)
            self.call(Req.SET_VRING_ADDR, VRING_ADDR.pack(i, 0, ring.desc, ring.used, ring.avail, 0),
                      ack=True)
            self.call(Req.SET_VRING_KICK, U64.pack(i), fds=[ring.kickfd], ack=True)
            self.call(Req.SET_VRING_CALL, U64.pack(i), fds=[ring.callfd], ack=True)
            if self.features >> F_PROTOCOL_FEATURES & 1:
                self.call(Req.SET_VRING_ENABLE, VRING_STATE.pack(i, 1), ack=True)
        self._collect_acks()
        self.connected = True
        return self

    def _collect_acks(self) -> None:
        """Pipelined set-up: the back end answers in order; every ack must be 0."""
        pending, self._unacked = self._unacked or [], None
        for req in pending:
            rreq, rflags, data, rfds = recv_msg(self.sock)
            close_fds(rfds)
            if rreq != req or not rflags & FLAG_REPLY or len(data) != U64.size:
                raise ProtocolError(f"reply to {req} is {rreq} flags {rflags:#x}")
            if U64.unpack(data)[0]:
                raise ProtocolError(f"request {Req(req).name} refused by the back end")

    def _inflight(self) -> None:
        if not self.protocol_features >> PF.INFLIGHT_SHMFD & 1:
            raise ProtocolError("back end does not offer INFLIGHT_SHMFD")
        if self.inflight_fd is None:
            send_msg(self.sock, Req.GET_INFLIGHT_FD, INFLIGHT.pack(0, 0, self.num_queues,
                                                                     self.queue_size))
            rreq, rflags, data, rfds = recv_msg(self.sock)
            if rreq != Req.GET_INFLIGHT_FD or len(rfds) != 1 or len(data) != INFLIGHT.size:
                close_fds(rfds)
                raise ProtocolError("bad GET_INFLIGHT_FD reply")
            self.inflight_size, off, _, _ = INFLIGHT.unpack(data)
            self.inflight_fd = rfds[0]
        else:
            self.inflight_size = os.fstat(self.inflight_fd).st_size
        self.call(Req.SET_INFLIGHT_FD, INFLIGHT.pack(self.inflight_size, 0, self.num_queues,
                                                     self.queue_size),
                  fds=[self.inflight_fd], ack=True)

    def remove_region(self, i: int) -> None:
        """REM_MEM_REG of region i (its rings must not live there)."""
        self.call(Req.REM_MEM_REG, bytes(8) + self._regs[i], fds=[self.mem[0]], ack=True)

    def get_vring_base(self, i: int) -> int:
        r = self.call(Req.GET_VRING_BASE, VRING_STATE.pack(i, 0), reply=True)
        return VRING_STATE.unpack(r)[1]

    def close(self) -> None:
        if self.connected:
            try:
                for i in range(self.num_queues):
                    self.get_vring_base(i)
            except (OSError, ProtocolError, EOFError):
                pass
            self.connected = False
        self.sock.close()
        if self.inflight_fd is not None and not self.keep_inflight:
            os.close(self.inflight_fd)
            self.inflight_fd = None
        if self.ptr != ffi.NULL:
            lib.srrs_vhost_client_destroy(self._pp)
            self.ptr = ffi.NULL

    def __enter__(self) -> "VhostClient":
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- I/O ------------------------------------------------------------------------------
    def bench(self, core, opts: BenchOpts, reactor: int = 0, verify: bool = False,
              vmap: Optional[VerifyMap] = None) -> dict:
        own = None
        if verify and vmap is None:
            own = vmap = VerifyMap(self.capacity // self.block_size, self.block_size)
        res = ffi.new("struct srrs_bench_result *")
        try:
            check(lib.srrs_vhost_client_bench(core.ptr, reactor, self.ptr, opts.to_c(vmap), res),
                  "bench vhost")
        finally:
            if own is not None:
                own.close()
        d = bench_result_dict(res)
        d["verified"] = bool(vmap is not None and d["verify_errors"] == 0 and d["errors"] == 0)
        return d

    def request(self, type_: int, sector: int = 0, data: bytes = b"", length: int = 0,
                queue: int = 0, timeout_ms: int = 5000) -> tuple:
        """One request: returns (virtio status, bytes the device wrote)."""
        n = max(len(data), length)
        buf = ffi.new("uint8_t[]", max(n, 1))
        if data:
            ffi.memmove(buf, data, len(data))
        st = check(lib.srrs_vhost_client_request(self.ptr, queue, type_, sector, buf, n, timeout_ms),
                   "vhost request")
        return st, bytes(ffi.buffer(buf, n))

    def read(self, offset: int, length: int, queue: int = 0) -> bytes:
        st, d = self.request(T_IN, offset // 512, length=length, queue=queue)
        if st:
            raise OSError(5, f"read status {st}")
        return d

    def write(self, offset: int, data: bytes, queue: int = 0) -> None:
        st, _ = self.request(T_OUT, offset // 512, data=data, queue=queue)
        if st:
            raise OSError(5, f"write status {st}")

    def get_id(self) -> bytes:
        st, d = self.request(T_GET_ID, length=20)
        if st:
            raise OSError(5, f"get_id status {st}")
        return d.split(b"\0", 1)[0]

    def discard_like(self, type_: int, offset: int, length: int, flags: int = 0) -> int:
        seg = (offset // 512).to_bytes(8, "little") + (length // 512).to_bytes(4, "little") \
            + flags.to_bytes(4, "little")
        return self.request(type_, 0, data=seg)[0]

    def post_raw(self, queue: int, descs: bytes, heads, idx_delta: Optional[int] = None,
                 scratch: bytes = b"") -> None:
        n = len(descs) // 16
        h = ffi.new("uint16_t[]", list(heads) or [0])
        check(lib.srrs_vhost_client_post_raw(self.ptr, queue, descs, n, h, len(heads),
                                             len(heads) if idx_delta is None else idx_delta,
                                             scratch, len(scratch)), "post raw")

    @property
    def scratch_gpa(self) -> int:
        return lib.srrs_vhost_client_scratch(self.ptr)

    def used_idx(self, queue: int = 0) -> int:
        return check(lib.srrs_vhost_client_used_idx(self.ptr, queue))


