"""The real initiator: the Linux kernel's nvme-tcp driver and nvme-cli in a
QEMU (TCG) guest, against the target running in this process. The guest
reaches the host's loopback at 10.0.2.2 (harness: tests/guest/harness.py).
Under CI a missing QEMU or guest image fails the run instead of skipping."""

import os
import re
import signal
import time

import pytest

from srrs.ffi.binding import Core
from srrs.nvmf.target import NvmfTarget
from tests.guest import harness as guest_harness

from .conftest import wait_for

NQN = "nqn.2026-11.io.srrs:guest0"
LOCKED = "nqn.2026-11.io.srrs:locked"
HOSTNQN = "nqn.2026-11.io.srrs:guest-host"
H = guest_harness.HOST_FROM_GUEST


@pytest.fixture(scope="module")
def env():
    guest_harness.require_guest()
    core = Core(reactors=2)
    core.bdev_create_malloc("g0", 128 << 20, 4096)
    core.bdev_create_malloc("g1", 16 << 20, 4096)
    tgt = NvmfTarget(core, cntlid_min=10, cntlid_max=99)
    port = tgt.add_listener("127.0.0.1", 0)
    tgt.add_subsystem(NQN, "SRRSGUEST", "SRRS guest test", allow_any_host=False)
    tgt.add_host(NQN, HOSTNQN)
    tgt.add_namespace(NQN, "g0", uuid="6a0e6d1c-5d27-4b8b-9f7e-3f8c1a2b3c4d")
    tgt.add_subsystem(LOCKED, allow_any_host=False)
    tgt.add_namespace(LOCKED, "g1")
    g = guest_harness.Guest(smp=2, hostnqn=HOSTNQN, modules=("nvme_tcp", "crc32c_generic"))
    try:
        g.start()
        yield core, tgt, port, g
    finally:
        print(g.diagnostics() if g else "")
        g.close()
        tgt.close()
        core.close()


def _connect(g, port, extra=""):
    g.check(f"nvme connect -t tcp -a {H} -s {port} -n {NQN} {extra}", timeout=120)
    g.check("for i in $(seq 100); do [ -b /dev/nvme0n1 ] && exit 0; sleep 0.1; done; exit 1",
            timeout=60)


def _disconnect(g, tgt):
    g.check(f"nvme disconnect -n {NQN}", timeout=60)
    assert wait_for(lambda: tgt.list_controllers() == [], 10)


def test_discover(env):
    core, tgt, port, g = env
    out = g.check(f"nvme discover -t tcp -a {H} -s {port}", timeout=60)
    assert NQN in out and f"trsvcid: {port}" in out
    assert LOCKED not in out  # this host may not use it


def test_connect_identify_io(env):
    core, tgt, port, g = env
    _connect(g, port)
    ctrls = tgt.list_controllers()
    assert len(ctrls) == 1 and ctrls[0]["hostnqn"] == HOSTNQN
    assert ctrls[0]["io_queues"] == 2  # -smp 2
    assert {q["reactor"] for q in ctrls[0]["queues"]} == {0, 1}
    out = g.check("nvme id-ctrl /dev/nvme0", timeout=60)
    assert re.search(r"sn\s*:\s*SRRSGUEST", out) and re.search(r"subnqn\s*:\s*" + NQN, out)
    assert re.search(r"cmic\s*:\s*0xb", out)
    out = g.check("nvme id-ns /dev/nvme0n1", timeout=60)
    assert re.search(r"nmic\s*:\s*0x1", out)
    out = g.check("nvme ns-descs /dev/nvme0n1", timeout=60)
    assert "6a0e6d1c5d274b8b9f7e3f8c1a2b3c4d" in out.replace("-", "")
    out = g.check("nvme ana-log /dev/nvme0", timeout=60)
    assert re.search(r"state\s*:\s*optimized", out)
    for cmd in ("smart-log", "error-log", "fw-log", "effects-log"):
        g.check(f"nvme {cmd} /dev/nvme0", timeout=60)
    assert "0x00010001" in g.check("nvme get-feature /dev/nvme0 -f 7", timeout=60)
    out = g.check("cat /sys/block/nvme0n1/size", timeout=30)
    assert int(out.split()[0]) == (128 << 20) // 512
    g.check("fio --name=v --filename=/dev/nvme0n1 --rw=randwrite --bsrange=4k-1m "
            "--size=24M --verify=crc32c --do_verify=1 --direct=1 --ioengine=libaio "
            "--iodepth=8 --numjobs=1 --verify_fatal=1", timeout=900)
    g.check("nvme flush /dev/nvme0n1 -n 1", timeout=60)
    # discard and write-zeroes read back as zeroes
    g.check("dd if=/dev/urandom of=/dev/nvme0n1 bs=1M count=2 seek=40 oflag=direct", timeout=120)
    g.check("blkdiscard -o $((40<<20)) -l $((1<<20)) /dev/nvme0n1", timeout=60)
    # write zeroes through nvme-cli (busybox blkdiscard has no -z): 256 blocks at 41 MiB
    g.check("nvme write-zeroes /dev/nvme0n1 --start-block=10496 --block-count=255",
            timeout=60)
    out = g.check("dd if=/dev/nvme0n1 bs=1M count=1 skip=41 iflag=direct 2>/dev/null "
                  "| tr -d '\\000' | wc -c", timeout=60)
    assert out.split()[-1] == "0"  # no non-zero byte
    st = core.bdev_info("g0")
    assert st["unmaps"] + st["write_zeroes"] > 0
    # data survives a disconnect and reconnect
    g.check("dd if=/dev/urandom of=/root/pat bs=4k count=64 && "
            "dd if=/root/pat of=/dev/nvme0n1 bs=4k seek=1000 oflag=direct", timeout=120)
    _disconnect(g, tgt)
    _connect(g, port)
    g.check("dd if=/dev/nvme0n1 of=/root/back bs=4k count=64 skip=1000 iflag=direct && "
            "cmp /root/pat /root/back", timeout=120)
    _disconnect(g, tgt)


def test_digests(env):
    core, tgt, port, g = env
    _connect(g, port, "-g -G")
    qps = [q for c in tgt.list_controllers() for q in c["queues"]]
    assert qps and all(q["hdgst"] and q["ddgst"] for q in qps)
    g.check("fio --name=d --filename=/dev/nvme0n1 --rw=randwrite --bsrange=4k-256k "
            "--size=8M --verify=crc32c --do_verify=1 --direct=1 --ioengine=libaio "
            "--iodepth=4 --verify_fatal=1", timeout=600)
    _disconnect(g, tgt)


def test_host_not_allowed(env):
    core, tgt, port, g = env
    rc, out = g.run(f"nvme connect -t tcp -a {H} -s {port} -n {LOCKED}", timeout=60)
    assert rc != 0
    assert tgt.list_controllers() == []


def test_sqflow_disabled_and_mkfs(env):
    """With SQ flow control disabled (what `connect-all` does when the
    discovery log's TREQ allows it) reads complete with C2HData SUCCESS and no
    response capsule; a file system on top just works. (connect-all itself
    would dial the listener's 127.0.0.1, the guest's own loopback.)"""
    core, tgt, port, g = env
    _connect(g, port, "--disable-sqflow")
    g.check("for i in $(seq 100); do [ -b /dev/nvme0n1 ] && exit 0; sleep 0.1; done; exit 1",
            timeout=60)
    g.check("mkfs.ext4 -q -F /dev/nvme0n1 && mkdir -p /mnt/x && mount -t ext4 /dev/nvme0n1 /mnt/x && "
            "dd if=/dev/urandom of=/mnt/x/f bs=1M count=8 2>/dev/null && sync && "
            "md5sum /mnt/x/f > /root/f.md5 && umount /mnt/x && "
            "echo 3 > /proc/sys/vm/drop_caches && mount -t ext4 /dev/nvme0n1 /mnt/x && "
            "cd /mnt/x && md5sum -c /root/f.md5 && cd / && umount /mnt/x", timeout=600)
    g.check("fio --name=r --filename=/dev/nvme0n1 --rw=randread --bs=4k --size=8M "
            "--direct=1 --ioengine=libaio --iodepth=8 --runtime=3 --time_based", timeout=120)
    _disconnect(g, tgt)


def test_reset_and_namespace_hot_add(env):
    """Controller reset (the host reconnects, new cntlid) and a namespace added
    and removed at run time (namespace-attribute AEN → rescan)."""
    core, tgt, port, g = env
    _connect(g, port)
    old = tgt.list_controllers()[0]["cntlid"]
    g.check("nvme reset /dev/nvme0", timeout=120)
    assert wait_for(lambda: [c["cntlid"] for c in tgt.list_controllers()] not in ([], [old]), 30)
    g.check("dd if=/dev/nvme0n1 of=/dev/null bs=4k count=16 iflag=direct", timeout=60)
    core.bdev_create_malloc("g2", 8 << 20, 4096)
    nsid = tgt.add_namespace(NQN, "g2")
    g.check(f"for i in $(seq 200); do [ -b /dev/nvme0n{nsid} ] && exit 0; sleep 0.1; done; exit 1",
            timeout=60)
    out = g.check(f"cat /sys/block/nvme0n{nsid}/size", timeout=30)
    assert int(out.split()[0]) == (8 << 20) // 512
    tgt.remove_namespace(NQN, nsid)
    g.check(f"for i in $(seq 200); do [ -b /dev/nvme0n{nsid} ] || exit 0; sleep 0.1; done; exit 1",
            timeout=60)
    core.bdev_delete("g2")
    _disconnect(g, tgt)


def test_keep_alive_teardown_when_guest_dies(env):
    core, tgt, port, g = env
    _connect(g, port, "--keep-alive-tmo=5")
    g.spawn("fio --name=k --filename=/dev/nvme0n1 --rw=randrw --bs=4k --size=64M "
            "--direct=1 --ioengine=libaio --iodepth=16 --time_based --runtime=600")
    assert wait_for(lambda: sum(q["cmds"] for c in tgt.list_controllers()
                                for q in c["queues"]) > 100, 60)
    # A frozen guest keeps its TCP connections open but sends nothing: only
    # keep-alive enforcement can end the controller.
    os.kill(g.proc.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        assert wait_for(lambda: tgt.list_controllers() == [], 5 + 2 + 2)
        took = time.monotonic() - t0
        assert took <= 5 + 2, took
        assert tgt.stats()["kato_expired"] >= 1
    finally:
        os.kill(g.proc.pid, signal.SIGCONT)
        g.kill()


def test_target_serves_after_guest_death(env):
    core, tgt, port, g = env
    from srrs.ffi.binding import BenchOpts
    from srrs.nvmf.target import NvmfHost

    tgt.add_host(NQN, "nqn.2026-11.io.srrs:after")
    with NvmfHost("127.0.0.1", port, NQN, hostnqn="nqn.2026-11.io.srrs:after", queues=2) as h:
        r = h.bench(core, BenchOpts(rw="randread", qd=8, time_s=0.3), reactor=0)
        assert r["errors"] == 0 and r["ios"] > 0


def test_native_multipath_and_ana(env):
    """Two targets (the two controllers of a pair) export the same bdev under
    one NQN with disjoint cntlid ranges: the kernel joins the paths into one
    device and follows ANA state changes (AEN + ANA log) to the other path."""
    core, tgt_a, port_a, g0 = env
    nqn = "nqn.2026-11.io.srrs:mpath"
    targets = []
    g = None
    try:
        for lo, hi in ((1000, 1999), (2000, 2999)):
            t = NvmfTarget(core, cntlid_min=lo, cntlid_max=hi)
            p = t.add_listener("127.0.0.1", 0)
            t.add_subsystem(nqn, "SRRSPAIR", "SRRS pair", allow_any_host=True)
            t.add_namespace(nqn, "g1")  # same NQN + bdev name: same NGUID/UUID on both
            targets.append((t, p))
        g = guest_harness.Guest(smp=2, hostnqn=HOSTNQN, modules=("nvme_tcp",))
        g.start()
        for _t, p in targets:
            g.check(f"nvme connect -t tcp -a {H} -s {p} -n {nqn}", timeout=120)
        g.check("for i in $(seq 100); do [ -b /dev/nvme0n1 ] && exit 0; sleep 0.1; done; exit 1",
                timeout=60)
        out = g.check("ls /sys/block; ls /sys/class/nvme-subsystem/nvme-subsys0/", timeout=30)
        assert "nvme1n1" not in out, out  # one multipath device, not two
        paths = g.check("ls -d /sys/block/nvme0c*n1", timeout=30).split()
        assert len(paths) == 2, paths
        states = g.check("cat /sys/block/nvme0c*n1/ana_state", timeout=30).split()
        assert states == ["optimized", "optimized"]
        # path A becomes inaccessible: the host learns it through the AEN
        targets[0][0].set_ana_state(nqn, 1, "inaccessible")
        g.check("for i in $(seq 100); do grep -q inaccessible /sys/block/nvme0c*n1/ana_state "
                "&& exit 0; sleep 0.1; done; exit 1", timeout=60)
        before = [sum(q["writes"] for c in t.list_controllers() for q in c["queues"])
                  for t, _ in targets]
        g.check("fio --name=m --filename=/dev/nvme0n1 --rw=randwrite --bs=4k --size=4M "
                "--verify=crc32c --do_verify=1 --direct=1 --ioengine=libaio --iodepth=4 "
                "--verify_fatal=1", timeout=600)
        after = [sum(q["writes"] for c in t.list_controllers() for q in c["queues"])
                 for t, _ in targets]
        assert after[0] == before[0], "I/O went to the inaccessible path"
        assert after[1] > before[1]
        targets[0][0].set_ana_state(nqn, 1, "optimized")
        g.check("for i in $(seq 100); do [ \"$(grep -c '^optimized' /sys/block/nvme0c*n1/ana_state"
                " | tail -1)\" ] && ! grep -q inaccessible /sys/block/nvme0c*n1/ana_state "
                "&& exit 0; sleep 0.1; done; exit 1", timeout=60)
    finally:
        if g is not None:
            g.close()
        for t, _ in targets:
            t.close()
