"""The C vhost-user client against SRRS and against qemu-storage-daemon:
verified random I/O, the virtio-blk commands, reconnect, config sizes."""

import os

import pytest

from srrs.ffi.binding import BenchOpts, ffi, lib
from srrs.vhost import proto
from srrs.vhost.client import (
    T_DISCARD,
    T_FLUSH,
    T_WRITE_ZEROES,
    WANT_FEATURES,
    VhostClient,
)
from srrs.vhost.proto import F_EVENT_IDX, F_INDIRECT

from .conftest import wait_for

BENCH_S = float(os.environ.get("SRRS_VHOST_TEST_S", "5"))


def _verify_run(cl, bench_core, qd=64, time_s=BENCH_S, rw="randrw", bs=4096, bs_max=0,
                offset=0):
    r = cl.bench(bench_core, BenchOpts(rw=rw, bs=bs, bs_max=bs_max, qd=qd, time_s=time_s,
                                       offset=offset, span=cl.capacity - offset if offset else 0),
                 verify=True)
    assert r["errors"] == 0, r
    assert r["verify_errors"] == 0, r
    assert r["ios"] > 0
    return r


@pytest.mark.side
def test_verified_io_vs_srrs(svc, bench_core, tmp_path):
    svc.core.bdev_create_malloc("m0", 64 << 20, 4096)
    sock = str(tmp_path / "vh0.sock")
    svc.create("vh0", sock, "m0", num_queues=2, serial="SRRS-T1")
    with VhostClient(sock, num_queues=2) as cl:
        assert cl.capacity == 64 << 20 and cl.block_size == 4096 and cl.device_queues == 2
        r = _verify_run(cl, bench_core)
        assert r["verified_blocks"] > 0
        # mixed sizes up to 128 KiB
        _verify_run(cl, bench_core, qd=16, time_s=1, bs=4096, bs_max=128 << 10)
    info = svc.list()[0]
    assert info["state"] in ("listening", "connected")
    assert sum(q["requests"] for q in info["queues"]) >= r["ios"]
    assert all(q["errors"] == 0 for q in info["queues"])


@pytest.mark.parametrize("features", [
    WANT_FEATURES,
    WANT_FEATURES & ~(1 << F_INDIRECT),
    WANT_FEATURES & ~(1 << F_EVENT_IDX),
    WANT_FEATURES & ~(1 << F_INDIRECT | 1 << F_EVENT_IDX),
], ids=["indirect+eventidx", "direct", "no-eventidx", "plain"])
def test_feature_combinations(svc, bench_core, tmp_path, features):
    svc.core.bdev_create_malloc("m0", 16 << 20, 512)
    sock = str(tmp_path / "vh.sock")
    svc.create("vh", sock, "m0", num_queues=1)
    with VhostClient(sock, features=features) as cl:
        assert cl.block_size == 512
        _verify_run(cl, bench_core, qd=32, time_s=1)


def test_commands(svc, tmp_path):
    svc.core.bdev_create_malloc("m0", 16 << 20, 4096)
    sock = str(tmp_path / "vh.sock")
    svc.create("vh", sock, "m0", num_queues=1, serial="SERIAL-0123456789ABC")
    with VhostClient(sock) as cl:
        assert cl.get_id() == b"SERIAL-0123456789ABC"
        cl.write(8192, b"\xab" * 8192)
        assert cl.read(8192, 8192) == b"\xab" * 8192
        assert cl.request(T_FLUSH)[0] == 0
        assert cl.discard_like(T_WRITE_ZEROES, 8192, 4096) == 0
        assert cl.read(8192, 8192) == bytes(4096) + b"\xab" * 4096
        assert cl.discard_like(T_DISCARD, 12288, 4096) == 0
        # unaligned to the 4 KiB block: an I/O error, not a broken device
        assert cl.discard_like(T_DISCARD, 512, 512) == 1
        assert cl.discard_like(T_DISCARD, 4096, 4096, flags=1) == 2  # UNMAP flag: unsupported
        assert cl.request(99)[0] == 2                                 # unknown type: UNSUPP
        # past the end: I/O error
        assert cl.request(0, (16 << 20) // 512, length=4096)[0] == 1
    assert svc.list()[0]["last_error"] == ""


def test_read_only(svc, tmp_path):
    svc.core.bdev_create_malloc("m0", 16 << 20, 4096)
    sock = str(tmp_path / "vh.sock")
    svc.create("vh", sock, "m0", read_only=True)
    with VhostClient(sock) as cl:
        assert cl.request(1, 0, data=bytes(4096))[0] == 1
        assert cl.discard_like(T_WRITE_ZEROES, 0, 4096) == 1
        assert cl.read(0, 4096) == bytes(4096)


def test_reconnect_keeps_data(svc, bench_core, tmp_path):
    svc.core.bdev_create_malloc("m0", 16 << 20, 4096)
    sock = str(tmp_path / "vh.sock")
    dev = svc.create("vh", sock, "m0", num_queues=2)
    for i in range(3):
        with VhostClient(sock, num_queues=2) as cl:
            if i:
                assert cl.read(0, 4096) == bytes([i]) * 4096
            cl.write(0, bytes([i + 1]) * 4096)
            _verify_run(cl, bench_core, qd=8, time_s=0.3, offset=1 << 20)
        assert wait_for(lambda: dev.info()["state"] == "listening")
    # An abrupt close (no GET_VRING_BASE), as when QEMU dies.
    cl = VhostClient(sock)
    cl.connect()
    cl.sock.close()
    cl.connected = False
    cl.close()
    assert wait_for(lambda: dev.info()["state"] == "listening")
    with VhostClient(sock) as cl:
        assert cl.read(0, 4096) == bytes([3]) * 4096
    assert dev.connections == 5


def test_get_config_any_size(svc, tmp_path):
    svc.core.bdev_create_malloc("m0", 16 << 20, 4096)
    sock = str(tmp_path / "vh.sock")
    svc.create("vh", sock, "m0", num_queues=3)
    cl = VhostClient(sock)
    cl.sock.connect(sock)
    try:
        for size in (60, 256, 8, 0):
            r = cl.call(proto.Req.GET_CONFIG, proto.CONFIG_HDR.pack(0, size, 0) + bytes(size),
                        reply=True)
            off, rsize, _ = proto.CONFIG_HDR.unpack_from(r)
            body = r[proto.CONFIG_HDR.size:]
            assert rsize == size and len(body) == size
            if size >= 36:
                assert int.from_bytes(body[0:8], "little") == (16 << 20) // 512
                assert int.from_bytes(body[20:24], "little") == 4096
                assert int.from_bytes(body[34:36], "little") == 3
            if size == 256:
                assert body[60:] == bytes(196)
    finally:
        cl.close()


def test_inflight_fd_negotiated(svc, bench_core, tmp_path):
    svc.core.bdev_create_malloc("m0", 16 << 20, 4096)
    sock = str(tmp_path / "vh.sock")
    svc.create("vh", sock, "m0", num_queues=2)
    with VhostClient(sock, num_queues=2, inflight=True) as cl:
        assert cl.inflight_fd is not None and cl.inflight_size > 0
        _verify_run(cl, bench_core, qd=32, time_s=1)


@pytest.mark.side
def test_verified_io_vs_qemu_storage_daemon(qsd, bench_core):
    with VhostClient(qsd, num_queues=2) as cl:
        assert cl.capacity == 64 << 20
        cl.write(4096, b"q" * 4096)
        assert cl.read(4096, 4096) == b"q" * 4096
        assert cl.get_id().startswith(b"vhost")
        _verify_run(cl, bench_core, qd=64)


def test_qemu_storage_daemon_direct_descriptors(qsd, bench_core):
    with VhostClient(qsd, num_queues=1,
                     features=WANT_FEATURES & ~(1 << F_INDIRECT)) as cl:
        _verify_run(cl, bench_core, qd=32, time_s=1)


@pytest.mark.parametrize("mem_slots", [False, True], ids=["set_mem_table", "add_mem_reg"])
def test_several_memory_regions(svc, bench_core, tmp_path, mem_slots):
    """Guest memory in 3 regions with boundaries inside data buffers: descriptors
    spanning two regions are split into iovecs; ADD_MEM_REG / REM_MEM_REG."""
    svc.core.bdev_create_malloc("m0", 16 << 20, 4096)
    sock = str(tmp_path / "vh.sock")
    dev = svc.create("vh", sock, "m0", num_queues=1)
    with VhostClient(sock, regions=3, mem_slots=mem_slots, max_inflight=32,
                     max_io=128 << 10) as cl:
        _verify_run(cl, bench_core, qd=16, time_s=1, bs=4096, bs_max=128 << 10)
        if mem_slots:
            # the rings live in region 0: removing it is refused; the last one is not in use
            with pytest.raises(proto.ProtocolError):
                cl.remove_region(0)
    assert wait_for(lambda: dev.info()["state"] == "listening")
    if mem_slots:
        with VhostClient(sock, regions=3, mem_slots=True, max_inflight=4, max_io=4096) as cl:
            cl.remove_region(2)
            cl.write(0, b"r" * 4096)
            assert cl.read(0, 4096) == b"r" * 4096


def test_second_front_end_is_refused(svc, tmp_path):
    svc.core.bdev_create_malloc("m0", 16 << 20, 4096)
    sock = str(tmp_path / "vh.sock")
    dev = svc.create("vh", sock, "m0")
    with VhostClient(sock) as a:
        b = VhostClient(sock, timeout=5)
        with pytest.raises((EOFError, OSError, proto.ProtocolError)):
            b.connect()
        b.close()
        a.write(0, b"1" * 4096)
        assert a.read(0, 4096) == b"1" * 4096
        assert dev.info()["refused"] == 1
    assert wait_for(lambda: dev.info()["state"] == "listening")
    with VhostClient(sock) as c:
        assert c.read(0, 4096) == b"1" * 4096


def test_ring_disable_enable_and_stop_start_cycle(svc, bench_core, tmp_path):
    """SET_VRING_ENABLE 0/1 and GET_VRING_BASE + re-setup (QEMU's vhost_dev_stop /
    start on a VM stop/cont): the device resumes at the right avail index."""
    svc.core.bdev_create_malloc("m0", 16 << 20, 4096)
    sock = str(tmp_path / "vh.sock")
    dev = svc.create("vh", sock, "m0", num_queues=1)
    with VhostClient(sock, queue_size=64, max_inflight=16, max_io=4096) as cl:
        _verify_run(cl, bench_core, qd=16, time_s=0.3, offset=1 << 20)
        cl.call(proto.Req.SET_VRING_ENABLE, proto.VRING_STATE.pack(0, 0), ack=True)
        assert wait_for(lambda: dev.info()["queues"][0]["state"] == "stopped")
        cl.call(proto.Req.SET_VRING_ENABLE, proto.VRING_STATE.pack(0, 1), ack=True)
        cl.write(0, b"e" * 4096)
        assert cl.read(0, 4096) == b"e" * 4096
        # stop: GET_VRING_BASE answers the next avail index = what we published
        base = cl.get_vring_base(0)
        ring = ffi.new("struct srrs_vhost_client_ring *")
        lib.srrs_vhost_client_ring(cl.ptr, 0, ring)
        assert base == cl.used_idx(0)
        assert dev.info()["queues"][0]["state"] == "stopped"
        # start again, as QEMU does
        cl.call(proto.Req.SET_VRING_NUM, proto.VRING_STATE.pack(0, ring.num), ack=True)
        cl.call(proto.Req.SET_VRING_BASE, proto.VRING_STATE.pack(0, base), ack=True)
        cl.call(proto.Req.SET_VRING_ADDR, proto.VRING_ADDR.pack(0, 0, ring.desc, ring.used,
                                                                ring.avail, 0), ack=True)
        cl.call(proto.Req.SET_VRING_KICK, proto.U64.pack(0), fds=[ring.kickfd], ack=True)
        cl.call(proto.Req.SET_VRING_CALL, proto.U64.pack(0), fds=[ring.callfd], ack=True)
        cl.call(proto.Req.SET_VRING_ENABLE, proto.VRING_STATE.pack(0, 1), ack=True)
        assert cl.read(0, 4096) == b"e" * 4096
        _verify_run(cl, bench_core, qd=16, time_s=0.3, offset=1 << 20)
    assert dev.info()["last_error"] == ""
