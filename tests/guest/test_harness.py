"""Tests of the guest harness itself: boots one QEMU/TCG guest for the module
with a qemu-storage-daemon vhost-user-blk disk, and checks the command channel,
the block path (sysfs, fio verify, blkdiscard), networking to the host and the
NVMe/TCP tooling. A second, short-lived guest checks clean shutdown and kill."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from . import harness
from .harness import (
    Guest,
    GuestCommandError,
    GuestCommandTimeout,
    GuestDead,
    GuestUnavailable,
    require_guest,
    vhost_blk_args,
)

DISK_BYTES = 64 << 20
NUM_QUEUES = 2
HOSTNQN = "nqn.2024-01.io.srrs:test-harness-host"


@pytest.fixture(scope="module")
def artifacts():
    return require_guest()


@pytest.fixture(scope="module")
def qsd(artifacts):
    """qemu-storage-daemon serving a 64 MiB raw file as vhost-user-blk."""
    qsd_bin = shutil.which("qemu-storage-daemon")
    if qsd_bin is None:
        if harness.in_ci():
            raise GuestUnavailable("qemu-storage-daemon not found")
        pytest.skip("qemu-storage-daemon not found")
    d = Path(tempfile.mkdtemp(prefix="srrs-qsd-"))
    img, sock = d / "disk.img", d / "vblk.sock"
    with open(img, "wb") as f:
        f.truncate(DISK_BYTES)
    log = open(d / "qsd.log", "wb")
    p = subprocess.Popen(
        [qsd_bin,
         "--blockdev", f"driver=file,node-name=f0,filename={img},discard=unmap",
         "--export", f"type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,"
                     f"addr.path={sock},writable=on,num-queues={NUM_QUEUES}"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("qemu-storage-daemon did not start:\n"
                                   + (d / "qsd.log").read_text(errors="replace"))
            time.sleep(0.05)
        yield {"img": img, "sock": sock, "proc": p}
    finally:
        p.kill()
        p.wait(timeout=30)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def guest(qsd):
    g = Guest(extra_qemu_args=vhost_blk_args(qsd["sock"], num_queues=NUM_QUEUES),
              smp=2, mem="512M", hostnqn=HOSTNQN, timeout=180, name="harness-guest")
    try:
        g.start()
        yield g
    finally:
        g.close()


# ------------------------------------------------------------- channel


def test_run_basic(guest):
    assert guest.boot_seconds is not None and guest.boot_seconds > 0
    rc, out = guest.run("echo hello")
    assert (rc, out) == (0, "hello\n")
    # Output without a trailing newline is kept exact; stderr is merged.
    assert guest.run("printf abc; printf def >&2") == (0, "abcdef")
    assert guest.run("exit 7").rc == 7
    assert guest.run("false").ok is False
    # Multi-line scripts with quotes, and stdin is /dev/null.
    r = guest.run("x='a b'\nif [ \"$x\" = 'a b' ]; then echo \"yes $x\"; fi\ncat; echo rc=$?")
    assert r == (0, "yes a b\nrc=0\n")
    with pytest.raises(GuestCommandError) as ei:
        guest.check("echo boom; exit 3")
    assert ei.value.rc == 3 and "boom" in ei.value.output
    # Marker-like text in the output does not confuse the channel.
    assert guest.run("echo __SRRS_END_x_0_ok__").output == "__SRRS_END_x_0_ok__\n"
    assert guest.ping()


def test_long_output(guest):
    out = guest.check("seq 1 200000", timeout=120)
    lines = out.splitlines()
    assert len(lines) == 200000 and lines[0] == "1" and lines[-1] == "200000"
    blob = os.urandom(300_000)
    guest.write_file("/tmp/blob", blob)
    assert guest.read_file("/tmp/blob") == blob


def test_command_timeout_kills_process_group(guest):
    t0 = time.monotonic()
    with pytest.raises(GuestCommandTimeout) as ei:
        guest.run("echo started; sleep 1000 & sleep 600", timeout=2)
    assert "started" in ei.value.output
    assert time.monotonic() - t0 < 20
    # The channel is still in sync and the background job is gone too.
    assert guest.check("echo after") == "after\n"
    ps = guest.check("ps -o args")
    assert "sleep 1000" not in ps and "sleep 600" not in ps


def test_background_jobs(guest):
    job = guest.spawn("echo begin; sleep 1; echo end; exit 5", name="bg1")
    assert guest.check("echo meanwhile") == "meanwhile\n"
    rc, out = job.wait(timeout=60)
    assert (rc, out) == (5, "begin\nend\n")
    job2 = guest.spawn("sleep 1000")
    assert job2.poll() is None
    job2.kill()
    assert job2.wait(timeout=30).rc == 137
    assert "sleep 1000" not in guest.check("ps -o args")


def test_guest_identity_and_network(guest):
    assert guest.check("cat /etc/nvme/hostnqn").strip() == HOSTNQN
    assert guest.check("cat /etc/nvme/hostid").strip() == guest.hostid
    assert "10.0.2.15/24" in guest.check("ip -4 addr show eth0")
    # The guest reaches the host's loopback at 10.0.2.2.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(60)
    port = srv.getsockname()[1]
    got = {}

    def accept():
        try:
            c, _ = srv.accept()
            c.settimeout(30)
            got["data"] = c.recv(100)
            c.sendall(b"pong\n")
            c.close()
        except OSError as e:
            got["err"] = e

    t = threading.Thread(target=accept)
    t.start()
    try:
        out = guest.check(f"echo ping | nc -w 5 10.0.2.2 {port}", timeout=60)
    finally:
        t.join(timeout=60)
        srv.close()
    assert got.get("data") == b"ping\n"
    assert "pong" in out


# ------------------------------------------------------- vhost-user-blk


def test_vhost_blk_disk_visible(guest, qsd):
    sectors = int(guest.check("cat /sys/block/vda/size"))
    assert sectors * 512 == DISK_BYTES
    nq = int(guest.check("ls /sys/block/vda/mq | wc -l"))
    assert nq == NUM_QUEUES
    assert guest.check("cat /sys/block/vda/ro").strip() == "0"


def test_fio_randwrite_verify(guest):
    libs = guest.check("fio --enghelp")
    engine = "libaio" if "libaio" in libs else "psync"
    out = guest.check(
        f"fio --name=v --filename=/dev/vda --rw=randwrite --bs=4k --size=16M "
        f"--verify=crc32c --direct=1 --ioengine={engine} --iodepth=8 "
        f"--output-format=terse --terse-version=3", timeout=600)
    fields = out.strip().splitlines()[-1].split(";")
    # terse v3: field 5 is the error code; 6 read KiB, 47 write KiB (1-based).
    assert fields[4] == "0", out
    assert int(fields[47 - 1]) == 16 * 1024, out   # 16 MiB written
    assert int(fields[6 - 1]) == 16 * 1024, out    # and read back for verify


def test_blkdiscard(guest, qsd):
    img: Path = qsd["img"]
    assert int(guest.check("cat /sys/block/vda/queue/discard_max_bytes")) > 0
    guest.check("dd if=/dev/urandom of=/dev/vda bs=1M count=8 oflag=direct 2>/dev/null; sync")
    before = os.stat(img).st_blocks * 512
    assert before >= 8 << 20
    guest.check("blkdiscard /dev/vda", timeout=120)
    zeros = guest.check("dd if=/dev/vda bs=1M count=8 iflag=direct 2>/dev/null | md5sum")
    ref = guest.check("dd if=/dev/zero bs=1M count=8 2>/dev/null | md5sum")
    assert zeros.split()[0] == ref.split()[0]
    # The file back end punched holes (discard=unmap).
    assert os.stat(img).st_blocks * 512 < before


def test_mkfs_ext4_and_mount(guest):
    guest.check("mkfs.ext4 -q -F /dev/vda && mkdir -p /mnt/v && mount -t ext4 /dev/vda /mnt/v",
                timeout=120)
    try:
        guest.check("echo data > /mnt/v/f && sync && cat /mnt/v/f")
    finally:
        guest.run("umount /mnt/v", timeout=60)


# ----------------------------------------------------------------- NVMe


def test_nvme_tcp_tooling(guest):
    guest.check("modprobe nvme-tcp")
    lsmod = guest.check("lsmod")
    for m in ("nvme_tcp", "nvme_fabrics", "nvme_core", "crc32c_generic"):
        assert m in lsmod
    assert guest.check("test -c /dev/nvme-fabrics && echo yes").strip() == "yes"
    assert "nvme version" in guest.check("nvme version")
    # Nothing listens on this host port: discovery must fail cleanly and fast.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    rc, out = guest.run(f"nvme discover -t tcp -a 10.0.2.2 -s {port}", timeout=120)
    assert rc != 0, out
    assert guest.ping()
    assert "nvme_tcp" in guest.check("lsmod")


NVMET_SETUP = r"""
set -e
modprobe nvmet_tcp
truncate -s 32M /tmp/ns.img
C=/sys/kernel/config/nvmet
S=$C/subsystems/{nqn}
mkdir $S
# Only our per-boot host NQN may connect: proves /etc/nvme/hostnqn is used.
mkdir $C/hosts/{hostnqn}
echo 0 > $S/attr_allow_any_host
ln -s $C/hosts/{hostnqn} $S/allowed_hosts/
mkdir $S/namespaces/1
echo -n /tmp/ns.img > $S/namespaces/1/device_path
echo 1 > $S/namespaces/1/buffered_io   # tmpfs has no O_DIRECT
echo 1 > $S/namespaces/1/enable
mkdir $C/ports/1
echo tcp > $C/ports/1/addr_trtype
echo ipv4 > $C/ports/1/addr_adrfam
echo 127.0.0.1 > $C/ports/1/addr_traddr
echo 4420 > $C/ports/1/addr_trsvcid
ln -s $S $C/ports/1/subsystems/
"""

NVMET_TEARDOWN = r"""
C=/sys/kernel/config/nvmet
S=$C/subsystems/{nqn}
rm -f $C/ports/1/subsystems/{nqn}
rmdir $C/ports/1
echo 0 > $S/namespaces/1/enable
rmdir $S/namespaces/1
rm -f $S/allowed_hosts/{hostnqn}
rmdir $S
rmdir $C/hosts/{hostnqn}
rm -f /tmp/ns.img
"""


def test_nvme_tcp_connect_loopback_kernel_target(guest):
    """End to end through the guest's nvme-tcp initiator and nvme-cli, against
    the kernel's own nvmet-tcp target inside the same guest (127.0.0.1:4420),
    with header and data digests (crc32c)."""
    nqn = "nqn.2024-01.io.srrs:harness-loop"
    fmt = {"nqn": nqn, "hostnqn": HOSTNQN}
    guest.check(NVMET_SETUP.format(**fmt), timeout=60)
    try:
        disc = guest.check("nvme discover -t tcp -a 127.0.0.1 -s 4420", timeout=60)
        assert nqn in disc
        guest.check(f"nvme connect -t tcp -a 127.0.0.1 -s 4420 -n {nqn} "
                    f"--hdr-digest --data-digest", timeout=60)
        try:
            dev = guest.check(
                "n=0; while [ $n -lt 100 ]; do for d in /dev/nvme*n1; do "
                "[ -b $d ] && { echo $d; exit 0; }; done; sleep 0.1; n=$((n+1)); done; exit 1",
                timeout=30).strip()
            listing = guest.check("nvme list")
            assert dev in listing
            assert int(guest.check(f"cat /sys/block/{dev[5:]}/size")) * 512 == 32 << 20
            guest.check(f"fio --name=n --filename={dev} --rw=randwrite --bs=4k --size=4M "
                        f"--verify=crc32c --direct=1 --ioengine=libaio --iodepth=4", timeout=300)
        finally:
            guest.run(f"nvme disconnect -n {nqn}", timeout=60)
    finally:
        guest.run(NVMET_TEARDOWN.format(**fmt), timeout=60)
    assert "nvme" not in guest.check("ls /sys/block")


# ------------------------------------------------------ lifecycle / misc


def test_shutdown_and_kill(artifacts):
    g = Guest(smp=1, net=False, modules=(), keep_workdir=False, name="short-guest")
    with g:
        assert g.check("echo up") == "up\n"
        assert g.qmp("query-status")["status"] == "running"
        rc = g.shutdown(timeout=60)
        assert rc == 0
        assert not g.alive
        with pytest.raises(GuestDead):
            g.run("true")
    assert "srrs-init: agent on" in g.serial_log()
    assert not g.workdir.exists()

    g2 = Guest(smp=1, net=False, modules=(), name="killed-guest")
    g2.start()
    try:
        g2.kill()
        assert not g2.alive
        with pytest.raises(GuestDead):
            g2.run("true")
    finally:
        g2.close()


def test_boot_failure_reports_console(artifacts, tmp_path):
    # A vhost-user disk whose back end does not exist: QEMU must fail to start
    # and the error must say why, promptly.
    g = Guest(extra_qemu_args=vhost_blk_args(tmp_path / "nope.sock", reconnect=None),
              smp=1, net=False, timeout=60, name="bad-guest")
    with pytest.raises(harness.GuestBootError) as ei:
        g.start()
    assert "qemu" in str(ei.value).lower()
    g.close()
    assert not g.alive


def test_mem_too_small_rejected():
    with pytest.raises(ValueError):
        Guest(mem="256M")


def test_require_guest_fails_under_ci(monkeypatch):
    monkeypatch.setattr(harness, "QEMU", "qemu-system-does-not-exist")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(GuestUnavailable):
        require_guest()
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        require_guest()
