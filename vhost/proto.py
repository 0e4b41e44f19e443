"""vhost-user wire format (QEMU docs/interop/vhost-user.rst): message
header, request numbers, feature bits, and framed I/O with fd passing.
Shared by the back end (device.py) and the test/bench client (client.py).
"""

from __future__ import annotations

import array
import socket
import struct
from enum import IntEnum

HDR = struct.Struct("<III")          # request, flags, size
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")   # index, num
VRING_ADDR = struct.Struct("<IIQQQQ")  # index, flags, desc, used, avail, log
MEM_REGION = struct.Struct("<QQQQ")  # guest_phys_addr, memory_size, userspace_addr, mmap_offset
MEM_HDR = struct.Struct("<II")       # nregions, padding
CONFIG_HDR = struct.Struct("<III")   # offset, size, flags
INFLIGHT = struct.Struct("<QQHH4x")  # mmap_size, mmap_offset, num_queues, queue_size (+ C padding)

FLAG_VERSION = 0x1
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
MAX_PAYLOAD = 4096
MAX_FDS = 8
MAX_REGIONS_TABLE = 8                # SET_MEM_TABLE
CONFIG_MAX = 256
VRING_NOFD = 0x100
VRING_IDX_MASK = 0xFF


class Req(IntEnum):
    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    GET_CONFIG = 24
    SET_CONFIG = 25
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    RESET_DEVICE = 34
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38


class PF(IntEnum):
    """Protocol feature bits."""
    MQ = 0
    REPLY_ACK = 3
    CONFIG = 9
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    CONFIGURE_MEM_SLOTS = 15


# Virtio feature bits used here.
F_INDIRECT = 28
F_EVENT_IDX = 29
F_PROTOCOL_FEATURES = 30
F_VERSION_1 = 32
BLK_F_SEG_MAX = 2
BLK_F_RO = 5
BLK_F_BLK_SIZE = 6
BLK_F_FLUSH = 9
BLK_F_MQ = 12
BLK_F_DISCARD = 13
BLK_F_WRITE_ZEROES = 14

# virtio_blk_config offsets we read on the client side
CFG_CAPACITY = struct.Struct("<Q")
CFG_BLK_SIZE_OFF = 20
CFG_NUM_QUEUES_OFF = 34
VIRTIO_BLK_CONFIG_SIZE = 60


class ProtocolError(Exception):
    """The peer broke the protocol: the connection is dropped with this reason."""


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("peer closed the connection")
        buf += chunk
    return bytes(buf)


def recv_msg(sock: socket.socket) -> tuple[int, int, bytes, list[int]]:
    """One message: (request, flags, payload, fds). The caller owns the fds."""
    fds: list[int] = []
    data, anc, mflags, _ = sock.recvmsg(HDR.size, socket.CMSG_SPACE(MAX_FDS * 4))
    for level, typ, cdata in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(cdata[: len(cdata) - (len(cdata) % a.itemsize)])
            fds.extend(a)
    try:
        if not data:
            raise EOFError("peer closed the connection")
        if mflags & socket.MSG_CTRUNC:
            raise ProtocolError("more file descriptors than any message carries")
        if len(data) < HDR.size:
            data += recv_exact(sock, HDR.size - len(data))
        req, flags, size = HDR.unpack(data)
        if size > MAX_PAYLOAD:
            raise ProtocolError(f"request {req}: payload of {size} bytes")
        payload = recv_exact(sock, size) if size else b""
        return req, flags, payload, fds
    except BaseException:
        close_fds(fds)
        raise


def send_msg(sock: socket.socket, req: int, payload: bytes = b"", flags: int = FLAG_VERSION,
             fds: list[int] | None = None) -> None:
    data = HDR.pack(req, flags, len(payload)) + payload
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.sendall(data)


def close_fds(fds) -> None:
    import os
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
