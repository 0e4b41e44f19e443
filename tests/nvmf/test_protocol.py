"""Controller behaviour seen on the wire (pure-Python NVMe/TCP client)."""

import struct
import time
import uuid

import pytest

from . import wire
from .conftest import NQN, wait_for

SC_INVALID_FIELD = 0x4002
SC_INVALID_NS = 0x400B
SC_INVALID_OPCODE = 0x4001
SC_CMD_SEQ = 0x400C
SC_LBA_RANGE = 0x4080
SC_ANA_INACCESSIBLE = 0x302
SC_CONNECT_INVALID_HOST = 0x4184
SC_CONNECT_INVALID_PARAM = 0x4182


def u32(b, o):
    return struct.unpack_from("<I", b, o)[0]


def test_identify(target):
    c, cntlid = wire.admin_session("127.0.0.1", target.port, NQN)
    st, _, _, d = c.identify(1)
    assert st == 0
    assert d[4:24].decode().strip() == "SRRSTEST"
    assert d[24:64].decode().strip() == "SRRS test"
    assert d[76] == 0x0B  # CMIC: multi-port, multi-controller, ANA
    assert d[77] == 8 and struct.unpack_from("<H", d, 78)[0] == cntlid
    assert u32(d, 80) == 0x00010400
    assert d[111] == 1
    assert d[768:768 + len(NQN)].decode() == NQN
    assert u32(d, 1792) * 16 - 64 >= 8192  # IOCCSZ
    st, _, _, d = c.identify(0, nsid=1)
    assert st == 0 and struct.unpack_from("<Q", d, 0)[0] == (64 << 20) // 4096
    assert d[30] == 1  # NMIC shared
    assert d[130] == 12
    nguid = d[104:120]
    st, _, _, d = c.identify(2)
    assert st == 0 and u32(d, 0) == 1 and u32(d, 4) == 0
    st, _, _, d = c.identify(3, nsid=1)
    assert st == 0 and d[0] == 2 and d[1] == 16 and d[4:20] == nguid
    assert d[20] == 3 and d[24:40] == nguid
    assert c.identify(3, nsid=9)[0] == SC_INVALID_NS
    assert c.identify(0x42)[0] == SC_INVALID_FIELD
    assert c.identify(0x06)[0] == 0  # NVM command set controller: no extra limits
    assert c.admin(0x06, cdw10=0x06, cdw11=2 << 24, read_len=4096)[0] == SC_INVALID_FIELD
    st, _, _, d = c.identify(0, nsid=5)  # inactive: zeroes
    assert st == 0 and d == bytes(4096)
    c.close()


def test_uuid_from_config_and_stable(core, target):
    u = "12345678-1234-5678-9abc-def012345678"
    target.add_namespace(NQN, "m1", nsid=3, uuid=u)
    c, _ = wire.admin_session("127.0.0.1", target.port, NQN)
    st, _, _, d = c.identify(3, nsid=3)
    assert st == 0 and d[24:40] == uuid.UUID(u).bytes
    st, _, _, d = c.identify(3, nsid=1)
    derived = d[24:40]
    c.close()
    # derived from nqn + bdev name: the same on another target (the pair's peer)
    from srrs.nvmf.target import NvmfTarget
    t2 = NvmfTarget(core)
    try:
        p2 = t2.add_listener("127.0.0.1", 0)
        t2.add_subsystem(NQN, allow_any_host=True)
        t2.add_namespace(NQN, "m0")
        c2, _ = wire.admin_session("127.0.0.1", p2, NQN)
        assert c2.identify(3, nsid=1)[3][24:40] == derived
        c2.close()
    finally:
        t2.close()


def test_properties_and_shutdown(target):
    c = wire.Conn("127.0.0.1", target.port)
    c.icreq()
    assert c.connect(NQN)[0] == 0
    st, cap = c.prop_get(0x00, size8=True)
    assert st == 0 and (cap & 0xFFFF) == 127 and cap >> 37 & 1
    assert c.prop_get(0x08)[1] == 0x00010400
    assert c.identify(1)[0] == SC_CMD_SEQ  # not enabled yet
    c.enable()
    assert c.prop_set(0x14, 1 | 1 << 14 | 6 << 16 | 4 << 20)[0] == 0
    st, csts = c.prop_get(0x1C)
    assert (csts >> 2) & 3 == 2  # shutdown complete
    assert c.prop_get(0x99)[0] == SC_INVALID_FIELD
    c.close()


def test_commands_before_connect(target):
    c = wire.Conn("127.0.0.1", target.port)
    c.icreq()
    assert c.identify(1)[0] == SC_CMD_SEQ
    st, *_ = c.cmd(wire.sqe(0x02, 5, nsid=1, sgl_len=4096), read_len=4096)
    assert st == SC_CMD_SEQ
    assert c.connect(NQN)[0] == 0  # the connection is still good
    c.close()


def test_connect_errors(target):
    nqn = "nqn.2026-11.io.srrs:locked"
    target.add_subsystem(nqn)
    c = wire.Conn("127.0.0.1", target.port)
    c.icreq()
    st, dw0, _, _ = c.connect(nqn)
    assert st == SC_CONNECT_INVALID_HOST and dw0 == (1 << 16 | 512)
    st, dw0, _, _ = c.connect("nqn.2026-11.io.srrs:none")
    assert st == SC_CONNECT_INVALID_PARAM and dw0 == (1 << 16 | 256)
    st, *_ = c.connect(NQN, qid=1, cntlid=4242)  # no such controller
    assert st == SC_CONNECT_INVALID_PARAM
    st, *_ = c.connect(NQN, sqsize=5000)
    assert st == SC_CONNECT_INVALID_PARAM
    c.close()


def test_connect_empty_host_nqn(target):
    """SPDK's initiator sends an empty host NQN unless given one: a subsystem that
    allows any host accepts it (admin and I/O queue, I/O works); a named allow-list
    never matches it."""
    a = wire.Conn("127.0.0.1", target.port)
    a.icreq()
    st, dw0, _, _ = a.connect(NQN, hostnqn="")
    assert st == 0, hex(st)
    a.enable()
    io = wire.io_session("127.0.0.1", target.port, NQN, dw0 & 0xFFFF, hostnqn="")
    assert _rw(io, 0x01, 0, 1, b"\x5a" * 4096)[0] == 0
    assert _rw(io, 0x02, 0, 1)[3] == b"\x5a" * 4096
    locked = "nqn.2026-11.io.srrs:locked-empty"
    target.add_subsystem(locked)
    target.add_host(locked, wire.HOSTNQN)
    c = wire.Conn("127.0.0.1", target.port)
    c.icreq()
    st, dw0, _, _ = c.connect(locked, hostnqn="")
    assert st == SC_CONNECT_INVALID_HOST and dw0 == (1 << 16 | 512)
    for x in (a, io, c):
        x.close()


def test_io_queue_limits(target):
    a, cntlid = wire.admin_session("127.0.0.1", target.port, NQN)
    st, dw0, _, _ = a.admin(0x09, cdw10=0x07, cdw11=(100 << 16) | 100)
    assert st == 0 and (dw0 & 0xFFFF) == 7  # 8 granted, 0-based
    io = wire.io_session("127.0.0.1", target.port, NQN, cntlid, qid=1)
    dup = wire.Conn("127.0.0.1", target.port)
    dup.icreq()
    assert dup.connect(NQN, qid=1, cntlid=cntlid, sqsize=127)[0] == SC_CONNECT_INVALID_PARAM
    assert dup.connect(NQN, qid=9, cntlid=cntlid, sqsize=127)[0] == SC_CONNECT_INVALID_PARAM
    other = wire.Conn("127.0.0.1", target.port)
    other.icreq()
    st, *_ = other.connect(NQN, qid=2, cntlid=cntlid, sqsize=127,
                           hostnqn="nqn.2026-11.io.srrs:someone-else")
    assert st == SC_CONNECT_INVALID_PARAM
    for x in (a, io, dup, other):
        x.close()


def _rw(c, opc, slba, nlb, data=b"", nsid=1, cid=None):
    cid = c.next_cid() if cid is None else cid
    s = wire.sqe(opc, cid, nsid=nsid, cdw10=slba & 0xFFFFFFFF, cdw11=slba >> 32,
                 cdw12=nlb - 1, sgl_len=len(data) if data else (nlb * 4096 if opc == 2 else 0),
                 sgl_type=0x01 if data else 0x5A)
    return c.cmd(s, data, read_len=nlb * 4096 if opc == 2 else 0)


def test_io_commands(target):
    a, cntlid = wire.admin_session("127.0.0.1", target.port, NQN)
    io = wire.io_session("127.0.0.1", target.port, NQN, cntlid)
    pat = bytes(range(256)) * 32  # 8 KiB, in-capsule
    assert _rw(io, 0x01, 10, 2, pat)[0] == 0
    st, _, _, d = _rw(io, 0x02, 10, 2)
    assert st == 0 and d == pat
    # R2T path
    big = bytes([7]) * (64 * 1024)
    s = wire.sqe(0x01, io.next_cid(), nsid=1, cdw10=100, cdw12=15, sgl_len=len(big))
    assert io.write_r2t(s, big)[0] == 0
    assert _rw(io, 0x02, 100, 16)[3] == big
    # write zeroes
    assert io.cmd(wire.sqe(0x08, io.next_cid(), nsid=1, cdw10=100, cdw12=3, sgl_len=0))[0] == 0
    assert _rw(io, 0x02, 100, 4)[3] == bytes(4 * 4096)
    assert _rw(io, 0x02, 104, 1)[3] == bytes([7]) * 4096
    # DSM deallocate
    rng = struct.pack("<IIQ", 0, 2, 10) + struct.pack("<IIQ", 0, 1, 200)
    s = wire.sqe(0x09, io.next_cid(), nsid=1, cdw10=1, cdw11=4, sgl_len=len(rng), sgl_type=0x01)
    assert io.cmd(s, rng)[0] == 0
    # flush
    assert io.cmd(wire.sqe(0x00, io.next_cid(), nsid=1))[0] == 0
    # errors
    nblocks = (64 << 20) // 4096
    assert _rw(io, 0x02, nblocks - 1, 2)[0] == SC_LBA_RANGE
    assert _rw(io, 0x02, 0, 1, nsid=7)[0] == SC_INVALID_NS
    assert io.cmd(wire.sqe(0x55, io.next_cid(), nsid=1))[0] == SC_INVALID_OPCODE
    s = wire.sqe(0x02, io.next_cid(), nsid=1, cdw12=0, sgl_len=8192)  # length != NLB
    assert io.cmd(s, read_len=8192)[0] & 0xFF == 0x0F
    rng = struct.pack("<IIQ", 0, 2, nblocks)
    s = wire.sqe(0x09, io.next_cid(), nsid=1, cdw10=0, cdw11=4, sgl_len=len(rng), sgl_type=0x01)
    assert io.cmd(s, rng)[0] == SC_LBA_RANGE
    for x in (a, io):
        x.close()


def test_success_flag_when_sq_flow_control_disabled(target):
    a, cntlid = wire.admin_session("127.0.0.1", target.port, NQN)
    io = wire.Conn("127.0.0.1", target.port)
    io.icreq()
    assert io.connect(NQN, qid=1, cntlid=cntlid, sqsize=127, cattr=0x04)[0] == 0
    assert _rw(io, 0x01, 0, 1, b"\x01" * 4096)[0] == 0
    io.send(io.pdu(wire.CMD, wire.sqe(0x02, 77, nsid=1, cdw12=0, sgl_len=4096)))
    t, f, hdr, data = io.recv_pdu()
    assert t == wire.C2H_DATA and f & wire.F_SUCCESS and f & wire.F_LAST
    assert data == b"\x01" * 4096
    a.close()
    io.close()


def test_features_and_logs(target):
    a, _ = wire.admin_session("127.0.0.1", target.port, NQN)
    assert a.admin(0x09, cdw10=0x0F, cdw11=15000)[0] == 0
    assert a.admin(0x0A, cdw10=0x0F)[1] == 15000
    assert a.admin(0x09, cdw10=0x06, cdw11=0)[0] == 0
    assert a.admin(0x0A, cdw10=0x06)[1] == 0
    assert a.admin(0x09, cdw10=0x0B, cdw11=0x900)[0] == 0
    assert a.admin(0x0A, cdw10=0x0B)[1] == 0x900
    assert a.admin(0x09, cdw10=0x0F | 1 << 31, cdw11=1)[0] & 0xFF == 0x0D  # not saveable
    assert a.admin(0x0A, cdw10=0x77)[0] == SC_INVALID_FIELD
    st, _, _, d = a.get_log(0x02, 512)
    assert st == 0 and d[3] == 100
    st, _, _, d = a.get_log(0x05, 4096)
    assert st == 0 and u32(d, 0x06 * 4) == 1 and u32(d, 1024 + 0x01 * 4) == 3
    st, _, _, d = a.get_log(0x01, 64)
    assert st == 0
    st, _, _, d = a.get_log(0x0C, 4096)
    assert st == 0 and struct.unpack_from("<H", d, 8)[0] == 1
    assert u32(d, 16) == 1 and u32(d, 20) == 1 and d[32] == 1 and u32(d, 48) == 1
    st, _, _, d = a.get_log(0x0C, 4096, lsp=1)  # RGO: no nsid lists
    assert st == 0 and u32(d, 20) == 0
    st, _, _, d = a.get_log(0x0C, 16, offset=8)  # offset into the log
    assert st == 0 and struct.unpack_from("<H", d, 0)[0] == 1
    st, _, _, d = a.get_log(0x0C, 4096, offset=4096)  # chunked reads past the end: zeroes
    assert st == 0 and d == bytes(4096)
    assert a.get_log(0x33, 512)[0] & 0xFF == 0x09
    assert a.admin(0x18)[0] == 0  # keep alive
    assert a.admin(0x08, cdw10=1 | 5 << 16)[1] & 1 == 1  # abort: best effort, not aborted
    # a parked AER can be aborted
    a.send(a.pdu(wire.CMD, wire.sqe(0x0C, 4242)))
    a.send(a.pdu(wire.CMD, wire.sqe(0x08, 4243, cdw10=0 | 4242 << 16)))
    got = {}
    for _ in range(2):
        t, f, hdr, _ = a.recv_pdu()
        dw0, _, _, _, cid, status = struct.unpack("<IIHHHH", hdr[:16])
        got[cid] = (status >> 1, dw0)
    assert got[4242][0] == 0x07 and got[4243] == (0, 0)
    a.close()


def _aer(a):
    cid = a.next_cid()
    a.send(a.pdu(wire.CMD, wire.sqe(0x0C, cid)))
    return cid


def _wait_aer(a):
    a.s.settimeout(3)
    t, f, hdr, data = a.recv_pdu()
    assert t == wire.RSP
    dw0, _, _, _, cid, status = struct.unpack("<IIHHHH", hdr[:16])
    return status >> 1, dw0


def test_aen_ana_change_and_io_status(core, target):
    a, cntlid = wire.admin_session("127.0.0.1", target.port, NQN)
    io = wire.io_session("127.0.0.1", target.port, NQN, cntlid)
    assert a.admin(0x09, cdw10=0x0B, cdw11=1 << 8 | 1 << 11)[0] == 0
    _aer(a)
    target.set_ana_state(NQN, 1, "inaccessible")
    st, dw0 = _wait_aer(a)
    assert st == 0 and dw0 & 7 == 2 and (dw0 >> 8) & 0xFF == 3 and (dw0 >> 16) & 0xFF == 0x0C
    st, _, _, d = a.get_log(0x0C, 4096)
    assert d[32] == 3
    assert _rw(io, 0x02, 0, 1)[0] == SC_ANA_INACCESSIBLE
    target.set_ana_state(NQN, 1, "optimized")
    _aer(a)
    st, dw0 = _wait_aer(a)
    assert (dw0 >> 16) & 0xFF == 0x0C
    assert a.get_log(0x0C, 4096)[3][32] == 1
    assert _rw(io, 0x02, 0, 1)[0] == 0
    a.close()
    io.close()


def test_aen_namespace_change(core, target):
    a, _ = wire.admin_session("127.0.0.1", target.port, NQN)
    assert a.admin(0x09, cdw10=0x0B, cdw11=1 << 8)[0] == 0
    _aer(a)
    nsid = target.add_namespace(NQN, "m1")
    st, dw0 = _wait_aer(a)
    assert st == 0 and (dw0 >> 16) & 0xFF == 0x04
    st, _, _, d = a.get_log(0x04, 4096)
    assert u32(d, 0) == nsid and u32(d, 4) == 0
    assert u32(a.identify(2)[3], 4) == nsid
    _aer(a)
    target.remove_namespace(NQN, nsid)
    st, dw0 = _wait_aer(a)
    assert (dw0 >> 16) & 0xFF == 0x04
    assert u32(a.get_log(0x04, 4096)[3], 0) == nsid
    assert u32(a.identify(2)[3], 4) == 0
    a.close()
    core.bdev_delete("m1")  # closed by the namespace removal


def test_keep_alive_timeout(core, target):
    a, cntlid = wire.admin_session("127.0.0.1", target.port, NQN, kato=1000)
    io = wire.io_session("127.0.0.1", target.port, NQN, cntlid)
    survivor, _ = wire.admin_session("127.0.0.1", target.port, NQN, kato=1000)
    t0 = time.monotonic()
    # the survivor keeps its controller alive; the other stays silent
    while time.monotonic() - t0 < 3.5:
        assert survivor.admin(0x18)[0] == 0
        time.sleep(0.3)
    assert wait_for(lambda: cntlid not in [c["cntlid"] for c in target.list_controllers()], 1)
    assert target.stats()["kato_expired"] >= 1
    with pytest.raises((wire.Closed, OSError)):
        a.s.settimeout(1)
        a.identify(1)
    with pytest.raises((wire.Closed, OSError)):
        io.s.settimeout(1)
        _rw(io, 0x02, 0, 1)
    assert len(target.list_controllers()) == 1
    events = [e["type"] for e in core.events()]
    assert "kato_expired" in events
    for x in (a, io, survivor):
        x.close()


def test_discovery_controller(target):
    a, _ = wire.admin_session("127.0.0.1", target.port, "nqn.2014-08.org.nvmexpress.discovery")
    st, _, _, d = a.identify(1)
    assert st == 0 and d[111] == 2
    st, _, _, d = a.get_log(0x70, 4096)
    assert st == 0 and struct.unpack_from("<Q", d, 8)[0] == 1
    assert d[1024 + 256:1024 + 256 + len(NQN)].decode() == NQN
    assert a.identify(0, nsid=1)[0] == SC_INVALID_FIELD
    a.close()


def test_hpda_alignment(target):
    c = wire.Conn("127.0.0.1", target.port)
    c.icreq(hpda=3)  # data at multiples of 16
    st, _, _, _ = c.connect(NQN)
    assert st == 0
    c.enable()
    c.send(c.pdu(wire.CMD, wire.sqe(0x06, 9, cdw10=1, sgl_len=4096)))
    ch = c.recv_exact(8)
    t, f, hlen, pdo, plen = struct.unpack("<BBBBI", ch)
    assert t == wire.C2H_DATA and pdo == 32 and plen == 32 + 4096
    c.close()


def test_io_on_a_controller_being_torn_down_is_a_path_error(target):
    """A subsystem removed (a volume moved away: ctrl/cluster_sync.py) tears
    its controllers down, and a host may have commands on the way. Those are
    answered with a path error without DNR (ANA Inaccessible), which a
    multipath host retries on another path; never with DNR (Command Sequence
    Error before), which Linux returns to the application as EIO (seen in
    tests/cluster/test_elastic.py: fio read EIO at a move's cutover)."""
    import threading

    seen = {}
    for _ in range(12):    # the window is short: a dozen teardowns
        if NQN not in [x["nqn"] for x in target.subsystems()]:
            target.add_subsystem(NQN, "SRRSTEST", "SRRS test", allow_any_host=True)
            target.add_namespace(NQN, "m0")
        a, cntlid = wire.admin_session("127.0.0.1", target.port, NQN)
        io = wire.io_session("127.0.0.1", target.port, NQN, cntlid)
        gone = threading.Timer(0.2, target.remove_subsystem, (NQN,))
        gone.start()
        try:
            while True:
                # 128 KiB reads keep the reactor on this queue long enough to
                # meet the teardown in the middle of a batch
                batch = b"".join(io.pdu(wire.CMD, wire.sqe(0x02, io.next_cid(), nsid=1,
                                                           cdw10=32 * i, cdw12=31,
                                                           sgl_len=128 << 10, sgl_type=0x5A))
                                 for i in range(32))
                io.send(batch)
                for _ in range(32):
                    st = io.wait(128 << 10)[0]
                    seen[st] = seen.get(st, 0) + 1
        except (wire.Closed, OSError):
            pass
        finally:
            gone.join()
            a.close()
            io.close()
    assert seen.get(0), seen
    bad = {hex(st): n for st, n in seen.items() if st and (st & 0x4000 or st >> 8 & 7 != 3)}
    assert not bad, f"statuses a host fails the I/O on: {bad} (all: {seen})"
