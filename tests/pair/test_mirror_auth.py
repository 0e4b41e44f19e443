"""The mirror link's authentication, on the real C core through cffi: two
Cores in one process over loopback, and raw TCP strangers (issue 11 item 1)."""

import os
import socket
import struct
import time

import pytest

from srrs.ffi.binding import ffi, lib

from .mirror_util import Side, paired, replica_diff, wait
from .procs import free_ports


def hmac(key: bytes, msg: bytes) -> bytes:
    out = ffi.new("uint8_t[32]")
    lib.srrs_mirror_test_hmac(key, len(key), msg, len(msg), out)
    return bytes(out)


# RFC 4231, test cases 1, 2, 3, 4, 6, 7 (HMAC-SHA-256).
RFC4231 = [
    (b"\x0b" * 20, b"Hi There",
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe", b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (b"\xaa" * 20, b"\xdd" * 50,
     "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    (bytes(range(1, 26)), b"\xcd" * 50,
     "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    (b"\xaa" * 131, b"This is a test using a larger than block-size key and a larger than "
     b"block-size data. The key needs to be hashed before being used by the HMAC algorithm.",
     "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
]


@pytest.mark.parametrize("key,msg,want", RFC4231)
def test_hmac_sha256_rfc4231(key, msg, want):
    assert hmac(key, msg).hex() == want


@pytest.fixture
def pair(tmp_path):
    with paired(tmp_path) as ab:
        yield ab


def hello_frame() -> bytes:
    """What the issue's attacker sent: a HELLO as node 0 (magic SRMR, type 1,
    seq 0, a valid CRC32C), in today's 64-byte header."""
    h = bytearray(struct.pack("<IBBHIIQQiIQ16s", 0x524D5253, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                              b"\0" * 16))
    crc = lib.srrs_crc32c(0, ffi.from_buffer(h), len(h))
    struct.pack_into("<I", h, 44, crc)
    return bytes(h)


def stranger(port: int, send: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if send:
        s.sendall(send)
    return s


def read_all(s: socket.socket, timeout: float) -> bytes:
    s.settimeout(timeout)
    got = b""
    try:
        while True:
            k = s.recv(65536)
            if not k:
                return got
            got += k
    except (socket.timeout, ConnectionResetError):
        return got


def test_injected_frame_rejected_counted_link_survives(pair):
    """A forged WRITE (well-formed, valid CRC32C, the next sequence number, but
    no session key) put into the live stream: b discards and counts it, applies
    nothing, and the connection carries on."""
    a, b = pair
    off, n = 5 << 20, 8192
    assert a.core.test_io("v", "write", off, n, b"\x11" * n)[0] == 0
    before_a, before_b = a.link_info(), b.link_info()
    assert lib.srrs_mirror_test_inject(a.link, off, n, 0x5A) == 0
    wait(lambda: b.link_info()["mac_errors"] == 1, what="the forged frame counted")
    assert b.core.test_io("r0", "read", off, n)[1] == b"\x11" * n   # nothing applied
    # the same connection goes on: writes from both sides, replicas identical
    for side, byte in ((a, 0x22), (b, 0x33), (a, 0x44)):
        assert side.core.test_io("v", "write", off, n, bytes([byte]) * n)[0] == 0
    assert b.core.test_io("r0", "read", off, n)[1] == b"\x44" * n
    ia, ib = a.link_info(), b.link_info()
    assert ia["up"] and ib["up"]
    assert (ia["connects"], ib["connects"]) == (before_a["connects"], before_b["connects"])
    assert ib["crc_errors"] == ib["proto_errors"] == 0
    assert replica_diff(a, b) == []


def test_replayed_frame_rejected_counted_link_survives(pair):
    """A frame played back (its MAC genuine, its sequence number spent) is
    discarded and counted; the connection carries on."""
    a, b = pair
    connects = b.link_info()["connects"]
    assert lib.srrs_mirror_test_replay(a.link) == 0
    wait(lambda: b.link_info()["mac_errors"] == 1, what="the replay counted")
    assert a.core.test_io("v", "write", 0, 4096, b"\x07" * 4096)[0] == 0
    assert b.core.test_io("r0", "read", 0, 4096)[1] == b"\x07" * 4096
    li = b.link_info()
    assert li["up"] and li["connects"] == connects and li["proto_errors"] == 0


def test_stranger_gets_no_slot_no_state(pair):
    """The issue's attack on the live link: a raw TCP connection to b's
    mirror port sending a HELLO. It receives nothing (not even a nonce: b
    answers only a handshake), is closed, is counted; the link stays up."""
    a, b = pair
    before = a.link_info()["connects"], b.link_info()["connects"]
    s = stranger(b.lport, hello_frame())
    assert read_all(s, 3) == b""            # closed, nothing sent back
    s.close()
    wait(lambda: b.link_info()["auth_failures"] >= 1, what="refusal counted")
    assert (a.link_info()["connects"], b.link_info()["connects"]) == before
    assert a.up() and b.up()
    assert a.core.test_io("v", "write", 0, 4096, b"\x01" * 4096)[0] == 0


def test_idle_strangers_do_not_keep_the_peer_out(tmp_path):
    """More half-open strangers than b keeps pending, there before a dials:
    a still gets the link; each stranger is closed by the handshake deadline
    (2 s) having received nothing."""
    pa, pb = free_ports(2)
    secret = os.urandom(32)
    b = Side(tmp_path, "b", 1, pb, pa, secret=secret)
    a = None
    try:
        socks = [stranger(pb) for _ in range(12)]
        time.sleep(0.05)
        a = Side(tmp_path, "a", 0, pa, pb, secret=secret)
        a.mode("paired")
        b.mode("paired")
        wait(lambda: a.up() and b.up(), 5, "link up past the strangers")
        t0 = time.monotonic()
        for s in socks:
            assert read_all(s, 4) == b""
            s.close()
        assert time.monotonic() - t0 < 4
        assert b.link_info()["auth_failures"] >= 12
        assert a.up() and b.up() and b.link_info()["connects"] == 1
    finally:
        if a:
            a.close()
        b.close()


def test_wrong_secret_never_links(tmp_path):
    """A peer with another secret: no link, no frame either way (no bitmap,
    no HELLO), refusals counted on b."""
    pa, pb = free_ports(2)
    a = Side(tmp_path, "a", 0, pa, pb, secret=os.urandom(32))
    b = Side(tmp_path, "b", 1, pb, pa, secret=os.urandom(32))
    try:
        a.mode("paired")
        b.mode("paired")
        wait(lambda: b.link_info()["auth_failures"] >= 1, 5, "refusal")
        time.sleep(0.3)
        for side in (a, b):
            li = side.link_info()
            assert not li["up"] and li["rx_frames"] == 0 and li["connects"] == 0, li
        assert a.link_info()["auth_failures"] == 0     # a never got a proof to check
    finally:
        a.close()
        b.close()


def test_allow_list_of_source_addresses(tmp_path):
    """mirror_allow: b accepts the peer's address only; from any other, even
    with the secret, the connection is refused and counted."""
    secret = os.urandom(32)
    pa, pb = free_ports(2)
    b = Side(tmp_path, "b", 1, pb, pa, secret=secret, allow=("127.0.0.2",))
    a = Side(tmp_path, "a", 0, pa, pb, secret=secret)
    try:
        wait(lambda: b.link_info()["auth_failures"] >= 2, 5, "refusals")
        assert not a.up() and a.link_info()["connects"] == 0
    finally:
        a.close()
        b.close()
    pa, pb = free_ports(2)
    b = Side(tmp_path, "b", 1, pb, pa, secret=secret, allow=("::1", "127.0.0.1"))
    a = Side(tmp_path, "a", 0, pa, pb, secret=secret)
    try:
        wait(lambda: a.up() and b.up(), 5, "link up from an allowed address")
        assert b.link_info()["auth_failures"] == 0
    finally:
        a.close()
        b.close()
