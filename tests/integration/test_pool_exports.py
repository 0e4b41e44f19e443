"""Pool volumes through the exports, in one real controller process:
quota and pool-full reach the host as NVMe Capacity Exceeded and virtio
IOERR (other volumes unaffected, nothing already written touched), and a
real Linux guest runs fio verify on pool volumes over vhost-user and over
NVMe/TCP at once. Under CI a missing QEMU fails, never skips."""

import os
import time

import pytest

from srrs.ctrl import launch
from tests.ctrl.helpers import Controller
from tests.guest.harness import Guest, require_guest, vhost_blk_args
from tests.nvmf import wire

MiB = 1 << 20
NQN = "nqn.2026-11.io.srrs:pool"


@pytest.fixture
def ctl(tmp_path):
    sock = str(tmp_path / "c.sock")
    port = launch.free_port()
    conf = launch.write_config(tmp_path / "c.toml", launch.config(
        launch.controller("px", sock, reactors=2, poll_mode=None),
        pools=[launch.pool("p0", [launch.fragment(tmp_path / "frag0.img", "256MiB"),
                                  launch.fragment(ram="64MiB")], cluster_size="1MiB")],
        volumes=[launch.volume("vq", "p0", "64MiB", tenant="t1"),
                 launch.volume("v1", "p0", "96MiB"), launch.volume("v2", "p0", "96MiB")],
        nvmf=launch.nvmf([f"127.0.0.1:{port}"],
                         [launch.subsystem(NQN, ["vq", "v2"], serial="SRRSPOOL01")]),
        vhosts=[launch.vhost("vh-q", tmp_path / "vq.sock", "vq", num_queues=1),
                launch.vhost("vh1", tmp_path / "v1.sock", "v1", num_queues=2)],
        extra={"tenant": [{"name": "t1", "quota": "8MiB"}]}))
    c = Controller(conf, sock)
    c.port = port
    c.tmp = tmp_path
    yield c
    c.kill()


def _nvme_write(conn, nsid, lba, data):
    s = wire.sqe(0x01, conn.next_cid(), nsid=nsid, cdw10=lba & 0xFFFFFFFF, cdw11=lba >> 32,
                 cdw12=len(data) // 4096 - 1, sgl_len=len(data), sgl_type=0x01)
    return conn.cmd(s, data)[0]


def _nvme_read(conn, nsid, lba, length):
    s = wire.sqe(0x02, conn.next_cid(), nsid=nsid, cdw10=lba & 0xFFFFFFFF, cdw11=lba >> 32,
                 cdw12=length // 4096 - 1, sgl_len=length)
    st, _, _, data = conn.cmd(s, read_len=length)
    return st, data


def test_quota_reaches_nvme_host_as_capacity_exceeded(ctl):
    adm, cntlid = wire.admin_session("127.0.0.1", ctl.port, NQN)
    io = wire.io_session("127.0.0.1", ctl.port, NQN, cntlid)
    try:
        written = {}
        statuses = []
        for k in range(12):  # one 4 KiB write per 1 MiB cluster: 8 fit the 8 MiB quota
            data = os.urandom(4096)
            st = _nvme_write(io, 1, k * 256, data)
            statuses.append(st)
            if st == 0:
                written[k] = data
        assert statuses[:8] == [0] * 8, [hex(s) for s in statuses]
        for st in statuses[8:]:
            # Generic status, Capacity Exceeded (0x81), Do Not Retry
            assert st & 0xFF == 0x81 and (st >> 8) & 7 == 0 and st & 0x4000, hex(st)
        for k, data in written.items():  # nothing already written was touched
            assert _nvme_read(io, 1, k * 256, 4096) == (0, data)
        # another volume of the same pool is unaffected
        d2 = os.urandom(8192)
        assert _nvme_write(io, 2, 5000, d2) == 0
        assert _nvme_read(io, 2, 5000, 8192) == (0, d2)
        # the quota hit is an event the operator sees
        deadline = time.time() + 5
        while time.time() < deadline:
            if any(e["type"] == "quota" for e in ctl.rpc("events")):
                break
            time.sleep(0.1)
        assert any(e["type"] == "quota" and e["obj"] == "vq" for e in ctl.rpc("events"))
        # raising the quota lets the same write through
        ctl.rpc("tenant_create", {"name": "t1", "quota": "16MiB"})
        assert _nvme_write(io, 1, 10 * 256, os.urandom(4096)) == 0
    finally:
        io.close()
        adm.close()


def test_quota_reaches_vhost_front_end_as_ioerr(ctl):
    from srrs.vhost.client import T_OUT, VhostClient

    with VhostClient(str(ctl.tmp / "vq.sock")) as cl:
        sts = [cl.request(T_OUT, (k * MiB) // 512, data=os.urandom(4096))[0] for k in range(10)]
        assert sts[:8] == [0] * 8 and sts[8:] == [1, 1], sts  # VIRTIO_BLK_S_IOERR
        assert cl.read(0, 4096) != bytes(4096)
    # the device is still serving (a failed write is a status, not a broken device)
    vh = {d["name"]: d for d in ctl.rpc("vhost_list")}
    assert vh["vh-q"]["last_error"] == ""


def test_guest_fio_verify_on_pool_volumes_over_vhost_and_nvme(ctl):
    require_guest()
    args = vhost_blk_args(str(ctl.tmp / "v1.sock"), num_queues=2)
    with Guest(extra_qemu_args=args, smp=2) as g:
        g.check(f"nvme connect -t tcp -a 10.0.2.2 -s {ctl.port} -n {NQN}", timeout=60)
        dev = ""
        for _ in range(100):
            dev = g.run("ls /dev/nvme*n2 2>/dev/null | head -1")[1].strip()
            if dev:
                break
            time.sleep(0.1)
        assert dev, g.run("nvme list; dmesg | tail -20")[1]
        fio = ("fio --name={n} --filename={f} --ioengine=libaio --direct=1 --rw=randwrite "
               "--bsrange=4k-1m --size=40M --iodepth=8 --verify=crc32c --verify_fatal=1")
        nv = g.spawn(fio.format(n="nv", f=dev))
        out = g.check(fio.format(n="vh", f="/dev/vda"), timeout=900)
        assert "err= 0" in out, out
        rc, out2 = nv.wait(timeout=900)
        assert rc == 0 and "err= 0" in out2, out2
        g.run("nvme disconnect-all")
    vols = {v["name"]: v for v in ctl.rpc("volume_list")}
    # thin: only what fio wrote is allocated (40 MiB of each, rounded to clusters)
    for name in ("v1", "v2"):
        alloc = vols[name]["allocated"]
        assert 30 * MiB <= alloc <= 48 * MiB, vols[name]


