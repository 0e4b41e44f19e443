"""NVMe in-band authentication (DH-HMAC-CHAP) of the target, seen on the wire
by an independent Python host (tests/nvmf/dhchap_host.py), plus test vectors
of the C secret transform and response against hashlib/hmac."""

import os
import time

import pytest

from srrs.ffi.binding import SrrsError, ffi, lib

from . import dhchap_host as D
from . import wire
from .conftest import NQN, wait_for

HOST = "nqn.2014-08.org.nvmexpress:uuid:5352532d-0000-4000-8000-00000000a001"
OTHER = "nqn.2014-08.org.nvmexpress:uuid:5352532d-0000-4000-8000-00000000a002"
SC_AUTH_REQUIRED = 0x4191
SC_CONNECT_INVALID_HOST = 0x4184
ATR = 1 << 17


def _c_transform(secret: str, nqn: str) -> bytes:
    out = ffi.new("uint8_t[64]")
    n = lib.srrs_nvmf_dhchap_transform(secret.encode(), nqn.encode(), out, 64)
    assert n > 0, ffi.string(lib.srrs_last_error())
    return bytes(out[0:n])


@pytest.mark.parametrize("hid,length", [(0, 32), (0, 48), (0, 64), (1, 32), (2, 48), (3, 64)])
def test_secret_transform_vectors(hid, length):
    s = D.gen_secret(hid, length)
    assert _c_transform(s, HOST) == D.transform(s, HOST)
    assert _c_transform(s, NQN) != _c_transform(s, HOST) or hid == 0


def test_secret_format_errors():
    good = D.gen_secret(1, 32)
    hh, b64 = good.split(":")[1:3]
    import base64
    raw = bytearray(base64.b64decode(b64))
    raw[0] ^= 1  # CRC no longer matches
    bad_crc = f"DHHC-1:{hh}:{base64.b64encode(bytes(raw)).decode()}:"
    out = ffi.new("uint8_t[64]")
    cases = {bad_crc: "CRC-32", "DHHC-1:01:abc:": "base64", "DHHC-2:00:AAAA:": "format",
             "DHHC-1:07:" + b64 + ":": "hash", D.gen_secret(1, 48): "needs 32"}
    for s, why in cases.items():
        assert lib.srrs_nvmf_dhchap_transform(s.encode(), HOST.encode(), out, 64) == -22
        err = ffi.string(lib.srrs_last_error()).decode()
        assert why in err and b64[:12] not in err, err


@pytest.mark.parametrize("hid", [1, 2, 3])
@pytest.mark.parametrize("ctrl", [False, True])
@pytest.mark.parametrize("dh", [False, True])
def test_response_vectors(hid, ctrl, dh):
    hl = D.HLEN[hid]
    key, chal = os.urandom(hl), os.urandom(hl)
    sess = os.urandom(hl) if dh else None
    out = ffi.new("uint8_t[64]")
    n = lib.srrs_nvmf_dhchap_response(hid, key, hl, chal, sess if dh else ffi.NULL, 0x12345679,
                                      0xBEEF, int(ctrl), NQN.encode(), HOST.encode(), out)
    assert n == hl
    assert bytes(out[0:hl]) == D.response(hid, key, chal, 0x12345679, 0xBEEF, ctrl, NQN, HOST,
                                          sess)


def test_ffdhe_primes_are_rfc7919():
    # Independent of OpenSSL: the derivation from e must give the RFC's tails.
    assert hex(D.ffdhe_prime(2048)).endswith("886b423861285c97ffffffffffffffff")
    assert hex(D.ffdhe_prime(3072)).endswith("25e41d2b66c62e37ffffffffffffffff")
    for bits in D.GROUP_BITS.values():
        p = D.ffdhe_prime(bits)
        assert p.bit_length() == bits and p >> (bits - 64) == (1 << 64) - 1
    p = D.ffdhe_prime(2048)
    assert pow(2, (p - 1) // 2, p) == 1  # 2 generates the prime-order subgroup


@pytest.fixture
def auth_target(target, tmp_path):
    """The shared target with HOST allowed on NQN and its secret files."""
    target.set_allow_any_host(NQN, False)
    target.add_host(NQN, HOST)
    hs, cs = D.gen_secret(1, 32), D.gen_secret(0, 48)
    target.secrets = {"host": hs, "ctrl": cs,
                      "host_file": D.write_secret_file(tmp_path / "host.key", hs),
                      "ctrl_file": D.write_secret_file(tmp_path / "ctrl.key", cs)}
    return target


def _use(t, hash="sha256", dhgroup="ffdhe2048", bidir=False):
    t.set_host_dhchap(NQN, HOST, t.secrets["host_file"],
                      t.secrets["ctrl_file"] if bidir else None, hash=hash, dhgroup=dhgroup)


def _read_block(c: wire.Conn):
    return c.cmd(wire.sqe(0x02, c.next_cid(), nsid=1, cdw10=0, cdw12=0, sgl_len=4096),
                 read_len=4096)[0]


@pytest.mark.parametrize("hash,dhgroup,bidir", [
    ("sha256", "null", False), ("sha256", "ffdhe2048", False), ("sha256", "ffdhe2048", True),
    ("sha384", "ffdhe3072", True), ("sha512", "ffdhe4096", False), ("sha512", "null", True)])
def test_auth_success(auth_target, hash, dhgroup, bidir):
    t = auth_target
    _use(t, hash, dhgroup, bidir)
    h = D.Host(HOST, NQN, t.secrets["host"], t.secrets["ctrl"] if bidir else None)
    c, cntlid, dw0 = D.connect_admin(t.port, h)
    assert dw0 & ATR
    # Nothing but authentication before it is done.
    assert c.prop_get(0x00)[0] == SC_AUTH_REQUIRED
    assert c.identify(1)[0] == SC_AUTH_REQUIRED
    got = h.authenticate(c)
    assert got == {"hash": D.hash_id_of(hash), "dhgroup": D.group_id_of(dhgroup)}
    c.enable()
    assert c.identify(1)[0] == 0
    # Each I/O queue authenticates too.
    io, dw0 = D.connect_io(t.port, h, cntlid)
    assert dw0 & ATR
    assert _read_block(io) == SC_AUTH_REQUIRED
    h.authenticate(io)
    assert _read_block(io) == 0
    assert t.auth_stats()["auth_ok"] >= 2
    # Secrets never show in status.
    text = repr(t.status())
    assert t.secrets["host"].split(":")[2][:16] not in text and "host.key" in text
    io.close()
    c.close()


def test_ffdhe8192_and_6144(auth_target):
    for g in ("ffdhe6144", "ffdhe8192"):
        _use(auth_target, "sha512", g, True)
        h = D.Host(HOST, NQN, auth_target.secrets["host"], auth_target.secrets["ctrl"])
        c, _, _ = D.connect_admin(auth_target.port, h)
        assert h.authenticate(c)["dhgroup"] == D.group_id_of(g)
        c.enable()
        c.close()


def _closed(c: wire.Conn, timeout=5.0) -> bool:
    c.s.settimeout(timeout)
    try:
        return c.s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_wrong_secret_refused(auth_target):
    t = auth_target
    _use(t)
    before = t.auth_stats()["auth_failed"]
    h = D.Host(HOST, NQN, D.gen_secret(1, 32))
    c, _, _ = D.connect_admin(t.port, h)
    with pytest.raises(D.AuthFailed) as e:
        h.authenticate(c)
    assert e.value.stage == "success1" and e.value.reason == D.FAIL_FAILED
    assert _closed(c)
    assert t.auth_stats()["auth_failed"] == before + 1
    assert wait_for(lambda: not t.list_controllers())


def test_missing_secret_refused(core, tmp_path):
    """A host that connects and never authenticates: every command is refused
    and the queue closes at the deadline."""
    from srrs.nvmf.target import NvmfTarget
    core.bdev_create_malloc("ma", 8 << 20, 4096)
    t = NvmfTarget(core, auth_timeout_ms=700)
    try:
        port = t.add_listener("127.0.0.1", 0)
        t.add_subsystem(NQN, allow_any_host=False)
        t.add_namespace(NQN, "ma")
        t.add_host(NQN, HOST)
        sec = D.gen_secret(0, 32)
        t.set_host_dhchap(NQN, HOST, D.write_secret_file(tmp_path / "k", sec), dhgroup="null")
        h = D.Host(HOST, NQN, sec)
        c, cntlid, dw0 = D.connect_admin(port, h)
        assert dw0 & ATR
        assert c.prop_get(0x14)[0] == SC_AUTH_REQUIRED
        assert c.prop_set(0x14, 1)[0] == SC_AUTH_REQUIRED
        t0 = time.monotonic()
        assert _closed(c, 5.0)
        assert 0.5 < time.monotonic() - t0 < 3.0
    finally:
        t.close()


def test_require_auth_refuses_allowed_host_without_secret(auth_target):
    t = auth_target
    t.add_host(NQN, OTHER)
    c, _ = wire.admin_session("127.0.0.1", t.port, NQN, hostnqn=OTHER)  # allowed, no auth yet
    c.close()
    t.set_require_auth(NQN, True)
    c = wire.Conn("127.0.0.1", t.port)
    c.icreq()
    assert c.connect(NQN, hostnqn=OTHER)[0] == SC_CONNECT_INVALID_HOST
    c.close()
    t.set_allow_any_host(NQN, True)  # any host may come, but only with a secret
    c = wire.Conn("127.0.0.1", t.port)
    c.icreq()
    assert c.connect(NQN, hostnqn=OTHER)[0] == SC_CONNECT_INVALID_HOST
    c.close()
    assert t.subsystems()[0]["require_auth"] is True


def test_wrong_controller_secret_detected_by_host(auth_target):
    t = auth_target
    _use(t, bidir=True)
    h = D.Host(HOST, NQN, t.secrets["host"], D.gen_secret(0, 48))
    c, _, _ = D.connect_admin(t.port, h)
    with pytest.raises(D.AuthFailed) as e:
        h.authenticate(c)
    assert e.value.stage == "controller"
    assert _closed(c)  # Failure2 from the host: the target drops the queue


def test_bidirectional_without_controller_secret_refused(auth_target):
    t = auth_target
    _use(t, bidir=False)
    h = D.Host(HOST, NQN, t.secrets["host"], D.gen_secret(0, 32))
    c, _, _ = D.connect_admin(t.port, h)
    with pytest.raises(D.AuthFailed) as e:
        h.authenticate(c)
    assert e.value.reason == D.FAIL_FAILED
    assert _closed(c)


def test_unoffered_hash_or_group_refused(auth_target):
    t = auth_target
    _use(t, "sha256", "ffdhe3072")
    h = D.Host(HOST, NQN, t.secrets["host"], hashes=(3,))
    c, _, _ = D.connect_admin(t.port, h)
    with pytest.raises(D.AuthFailed) as e:
        h.authenticate(c)
    assert (e.value.stage, e.value.reason) == ("challenge", D.FAIL_HASH)
    h = D.Host(HOST, NQN, t.secrets["host"], groups=(0, 1))
    c, _, _ = D.connect_admin(t.port, h)
    with pytest.raises(D.AuthFailed) as e:
        h.authenticate(c)
    assert (e.value.stage, e.value.reason) == ("challenge", D.FAIL_DHGROUP)


def test_reauthentication(auth_target, tmp_path):
    t = auth_target
    _use(t, bidir=True)
    h = D.Host(HOST, NQN, t.secrets["host"], t.secrets["ctrl"])
    c, cntlid, _ = D.connect_admin(t.port, h)
    h.authenticate(c)
    c.enable()
    io, _ = D.connect_io(t.port, h, cntlid)
    h.authenticate(io)
    # Re-authentication on request, the queue stays usable throughout.
    h.authenticate(c)
    h.authenticate(io)
    assert _read_block(io) == 0
    # New secret: a re-authentication with the old one fails and drops the queue.
    new = D.gen_secret(2, 48)
    t.set_host_dhchap(NQN, HOST, D.write_secret_file(tmp_path / "new.key", new))
    with pytest.raises(D.AuthFailed):
        h.authenticate(io)
    assert _closed(io)
    h.secret, h.ctrl_secret = new, None
    h.authenticate(c)
    assert c.identify(1)[0] == 0
    c.close()


def test_auth_commands_checked(auth_target):
    t = auth_target
    _use(t)
    h = D.Host(HOST, NQN, t.secrets["host"])
    c, _, _ = D.connect_admin(t.port, h)
    bad = wire.sqe(0x7F, c.next_cid(), nsid=0x05, cdw10=0xEA << 24 | 1 << 16 | 1 << 8,
                   cdw11=72, sgl_len=72, sgl_type=0x01)
    assert c.cmd(bad, D.negotiate_msg(1))[0] == 0x4002  # wrong SECP
    # Receive before Negotiate: Failure1 "incorrect message", queue closed.
    st, m = D.auth_recv(c)
    assert st == 0 and (m[0], m[1], m[7]) == (0, 0xF1, D.FAIL_MESSAGE)
    assert _closed(c)


def test_secret_file_mode_refused(auth_target, tmp_path):
    t = auth_target
    f = D.write_secret_file(tmp_path / "loose.key", t.secrets["host"], mode=0o644)
    with pytest.raises(ValueError, match="mode 0644"):
        t.set_host_dhchap(NQN, HOST, f)
    with pytest.raises(SrrsError, match="key is 0 bytes") as e:
        t.set_host_dhchap(NQN, HOST, D.write_secret_file(tmp_path / "x", "DHHC-1:01:AAAAAA==:"))
    assert "AAAAAA" not in str(e.value)
    assert not t.subsystems()[0]["dhchap_hosts"]  # nothing left behind


def test_c_initiator_authenticates(auth_target, tmp_path):
    """Our initiator: uni- and bidirectional, verify I/O; a wrong secret, a
    missing one and a wrong controller secret are refused."""
    from srrs.ffi.binding import BenchOpts
    from srrs.nvmf.target import NvmfHost
    t = auth_target
    _use(t, bidir=True)
    hf, cf = t.secrets["host_file"], t.secrets["ctrl_file"]
    for ctrl in (None, cf):
        with NvmfHost("127.0.0.1", t.port, NQN, hostnqn=HOST, queues=2,
                      dhchap_secret_file=hf, dhchap_ctrl_secret_file=ctrl) as h:
            vmap = h.verify_map()
            try:
                r = h.bench(t.core, BenchOpts(rw="randrw", bs=4096, qd=8, time_s=0,
                                              max_ios=2000, seed=3), 0, vmap)
            finally:
                vmap.close()
            assert r["errors"] == 0 and r["verify_errors"] == 0 and r["ios"] == 2000
    wrong = D.write_secret_file(tmp_path / "wrong", D.gen_secret(1, 32))
    with pytest.raises(SrrsError, match="refused authentication"):
        NvmfHost("127.0.0.1", t.port, NQN, hostnqn=HOST, dhchap_secret_file=wrong)
    with pytest.raises(SrrsError, match="no secret was given"):
        NvmfHost("127.0.0.1", t.port, NQN, hostnqn=HOST)
    with pytest.raises(SrrsError, match="controller failed to authenticate"):
        NvmfHost("127.0.0.1", t.port, NQN, hostnqn=HOST, dhchap_secret_file=hf,
                 dhchap_ctrl_secret_file=wrong)
    assert wait_for(lambda: not t.list_controllers())


def test_auth_message_fuzz(auth_target):
    """Mutated Negotiate/Reply/Success2 messages and odd Receive lengths: the
    target never crashes and never lets the queue through unauthenticated."""
    import random
    t = auth_target
    _use(t, bidir=True)
    rnd = random.Random(int(os.environ.get("SRRS_FUZZ_SEED", "11")))
    n = int(os.environ.get("SRRS_AUTH_FUZZ_CASES", "150"))
    h = D.Host(HOST, NQN, t.secrets["host"], t.secrets["ctrl"])
    for _ in range(n):
        c, _, _ = D.connect_admin(t.port, h)
        try:
            for _ in range(rnd.randint(1, 4)):
                op = rnd.random()
                if op < 0.45:
                    m = bytearray(D.negotiate_msg(rnd.randrange(65536)) if rnd.random() < 0.5
                                  else os.urandom(rnd.randint(1, 600)))
                    if rnd.random() < 0.5:
                        m[:2] = bytes([1, rnd.choice([2, 4])])  # pose as Reply / Success2
                    for _ in range(rnd.randint(0, 6)):
                        m[rnd.randrange(len(m))] = rnd.randrange(256)
                    D.auth_send(c, bytes(m))
                else:
                    D.auth_recv(c, rnd.choice([1, 7, 8, 15, 16, 48, 300, 4096, 5000]))
            st = c.identify(1)[0]
            assert st == SC_AUTH_REQUIRED, hex(st)
        except (wire.Closed, OSError):
            pass  # the target closed the queue after a Failure1: fine
        finally:
            c.close()
    # Still serving: a proper host authenticates.
    c, _, _ = D.connect_admin(t.port, h)
    h.authenticate(c)
    c.enable()
    c.close()


def test_same_host_and_controller_secret_refused(auth_target):
    t = auth_target
    with pytest.raises(SrrsError, match="controller secret equals the host secret"):
        t.set_host_dhchap(NQN, HOST, t.secrets["host_file"], t.secrets["host_file"])
