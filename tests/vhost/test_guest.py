"""A real Linux guest (QEMU TCG, -smp 2, memfd RAM) on an SRRS
vhost-user-blk disk: fio verify over both queues, discard, write zeroes,
flush, serial. Under CI a missing QEMU or guest image fails, never skips."""

import pytest

from srrs.ctrl import launch
from tests.guest.harness import Guest, require_guest, vhost_blk_args

from .conftest import wait_for

FIO = ("fio --name=v --filename=/dev/vda --ioengine=libaio --direct=1 --rw=randwrite "
       "--bsrange=4k-1m --size=48M --iodepth=16 --numjobs=2 --offset_increment=64M "
       "--verify=crc32c --verify_fatal=1 --group_reporting --cpus_allowed_policy=split "
       "--cpus_allowed=0-1")


@pytest.fixture
def guest_core():
    require_guest()
    from srrs.ffi.binding import Core
    c = Core(reactors=2, poll_mode="adaptive")
    yield c
    c.close()


def test_guest_fio_verify_discard_zeroes_flush_serial(guest_core, tmp_path):
    from srrs.vhost.device import VhostService

    svc = VhostService(guest_core)
    try:
        guest_core.bdev_create_malloc("g0", 256 << 20, 4096)
        sock = str(tmp_path / "g.sock")
        dev = svc.create("g", sock, "g0", num_queues=2, serial="SRRS-GUEST-0001")
        guest_core.bdev_create_malloc("g1", 64 << 20, 512)
        sock2 = str(tmp_path / "g2.sock")
        dev2 = svc.create("g2", sock2, "g1", num_queues=1, serial="SRRS-GUEST-0002")
        with Guest(extra_qemu_args=vhost_blk_args(sock, num_queues=2)
                   + vhost_blk_args(sock2, num_queues=1, id="vblk1"), smp=2, net=False,
                   modules=()) as g:
            # the second disk: 512-byte blocks, one queue, its own serial, verified I/O
            assert g.check("cat /sys/block/vdb/serial").strip() == "SRRS-GUEST-0002"
            assert g.check("cat /sys/block/vdb/queue/logical_block_size").strip() == "512"
            second = g.spawn("fio --name=w --filename=/dev/vdb --ioengine=libaio --direct=1 "
                             "--rw=randwrite --bsrange=512-64k --size=16M --iodepth=8 "
                             "--verify=crc32c --verify_fatal=1")
            assert g.check("cat /sys/block/vda/serial").strip() == "SRRS-GUEST-0001"
            assert g.check("cat /sys/block/vda/size").strip() == str((256 << 20) // 512)
            assert g.check("ls /sys/block/vda/mq | wc -l").strip() == "2"
            assert g.check("cat /sys/block/vda/queue/logical_block_size").strip() == "4096"
            out = g.check(FIO, timeout=900)
            assert "err= 0" in out, out
            # discard, write zeroes (blkdiscard -z), flush (a write-back cache flush)
            g.check("blkdiscard -o 0 -l 1048576 /dev/vda")
            g.check("dd if=/dev/urandom of=/dev/vda bs=4096 count=16 seek=512 oflag=direct")
            # util-linux blkdiscard (busybox's has no -z): BLKZEROOUT -> WRITE_ZEROES
            bd = g.check("ls /usr/bin/blkdiscard /usr/sbin/blkdiscard 2>/dev/null | head -1").strip()
            assert bd, "util-linux blkdiscard missing from the guest image"
            g.check(f"{bd} -z -o 2097152 -l 65536 /dev/vda")
            z = g.check("dd if=/dev/vda bs=4096 count=16 skip=512 iflag=direct 2>/dev/null"
                        " | od -An -v -tx1 | tr -s ' ' '\\n' | sort -u | tr -d '\\n'")
            assert z == "00", z
            g.check("dd if=/dev/urandom of=/dev/vda bs=4096 count=4 seek=1024 conv=fsync")
            rc, out2 = second.wait(timeout=600)
            assert rc == 0 and "err= 0" in out2, out2
        info = dev.info()
        qs = info["queues"]
        assert all(q["requests"] > 0 for q in qs), qs        # both queues carried I/O
        assert sum(q["discards"] for q in qs) > 0, qs
        assert sum(q["write_zeroes"] for q in qs) > 0, qs
        assert sum(q["flushes"] for q in qs) > 0, qs
        assert sum(q["errors"] for q in qs) == 0, qs
        assert wait_for(lambda: dev.info()["state"] == "listening", 10)
        assert dev.info()["last_error"] == ""
        assert dev2.info()["queues"][0]["writes"] > 0 and dev2.info()["last_error"] == ""
    finally:
        svc.close()


def _config(d) -> dict:
    return launch.config(
        launch.controller("rc", d / "rpc.sock", reactors=2, poll_mode=None),
        bdevs=[launch.bdev("f0", "file", "256MiB", path=str(d / "f0.img"))],
        vhosts=[launch.vhost("vh0", d / "vh0.sock", "f0", num_queues=2,
                             serial="SRRS-RECONNECT")])


def test_guest_survives_kill9_of_the_back_end(tmp_path):
    """kill -9 SRRS while fio verify runs in the guest, start it again with the
    same config: QEMU reconnects, in-flight requests resume from the inflight
    region, fio finishes with zero errors and the data verifies."""
    import time

    require_guest()
    sock = tmp_path / "vh0.sock"
    p = launch.Controller(tmp_path / "rc.toml", _config(tmp_path), log=tmp_path / "srrs.log",
                          ready_timeout=20)
    try:
        with Guest(extra_qemu_args=vhost_blk_args(sock, num_queues=2, reconnect=1), smp=2,
                   net=False, modules=()) as g:
            job = g.spawn(FIO.replace("--size=48M", "--size=120M")
                          .replace("--offset_increment=64M", "--offset_increment=128M"))
            time.sleep(2.5)
            assert job.poll() is None, job.output()
            p.kill9()
            time.sleep(1.5)          # the guest's requests stall meanwhile
            p.restart()
            rc, out = job.wait(timeout=900)
            assert rc == 0 and "err= 0" in out, out
            assert "verify" not in out.lower() or "bad" not in out.lower(), out
            g.check("dd if=/dev/vda of=/dev/null bs=1M count=8 iflag=direct")
            from srrs.ctrl.rpc import RpcClient
            with RpcClient(str(tmp_path / "rpc.sock")) as rpc:
                qs = rpc.call("vhost_list", {})[0]["queues"]
            print("after restart: resubmitted", [q["resubmitted"] for q in qs],
                  "requests", [q["requests"] for q in qs])
            assert all(q["errors"] == 0 for q in qs), qs
    finally:
        assert p.stop(20) == 0
