"""Scale through the export: one controller with 10,000 thin volumes in one
pool, every one an NVMe/TCP namespace (100 subsystems x 100), starts in < 30 s
with RSS < 1 GiB and no file descriptor per volume; a real Linux guest
connects to one of those subsystems and does verified I/O on a namespace.
SRRS_SCALE_VOLUMES changes the count."""

import os
import time

import psutil

from srrs.ctrl import launch
from tests.ctrl.helpers import Controller
from tests.guest.harness import Guest, require_guest

N = int(os.environ.get("SRRS_SCALE_VOLUMES", "10000"))
PER_SUBSYS = 100   # a guest under TCG scans each of its namespaces: keep that part short


def _config(tmp_path, sock, port):
    vols = [f"vol{i:05d}" for i in range(N)]
    subs = [launch.subsystem(f"nqn.2026-11.io.srrs:scale{s:02d}",
                             vols[s * PER_SUBSYS:(s + 1) * PER_SUBSYS], serial=f"SCALE{s:04d}")
            for s in range((N + PER_SUBSYS - 1) // PER_SUBSYS)]
    return launch.write_config(tmp_path / "scale.toml", launch.config(
        launch.controller("scale-nvmf", sock, reactors=2, poll_mode=None),
        pools=[launch.pool("p0", [launch.fragment(tmp_path / "big.img", "64GiB")],
                           metadata_slots=N + 4096)],
        volumes=[launch.volume(v, "p0", "1GiB") for v in vols],
        nvmf=launch.nvmf([f"127.0.0.1:{port}"], subs)))


def test_ten_thousand_volumes_as_namespaces_and_a_guest(tmp_path):
    require_guest()
    sock = str(tmp_path / "s.sock")
    port = launch.free_port()
    cfg = _config(tmp_path, sock, port)
    t0 = time.time()
    c = Controller(cfg, sock)
    took = time.time() - t0
    try:
        proc = psutil.Process(c.proc.pid)
        rss, fds = proc.memory_info().rss, proc.num_fds()
        subs = c.rpc("nvmf_get_subsystems")
        nss = sum(len(s["namespaces"]) for s in subs if "discovery" not in s["nqn"])
        print(f"\n{N} volumes as {nss} namespaces in {len(subs)} subsystems: start {took:.1f} s, "
              f"RSS {rss >> 20} MiB, {fds} fds")
        assert nss == N
        assert took < 30, f"start took {took:.1f} s"
        assert rss < 1 << 30, f"RSS {rss >> 20} MiB"
        assert fds < 100, f"{fds} fds: one per volume?"
        nqn = "nqn.2026-11.io.srrs:scale07"
        with Guest(smp=2, timeout=300) as g:
            g.check(f"nvme connect -t tcp -a 10.0.2.2 -s {port} -n {nqn}", timeout=240)
            want = min(PER_SUBSYS, N - 7 * PER_SUBSYS)
            deadline = time.time() + 240
            n = 0
            while time.time() < deadline:
                n = int(g.run("ls /sys/block | grep -cE '^nvme[0-9]+n[0-9]+$'")[1].strip() or 0)
                if n >= want:
                    break
                time.sleep(1)
            assert n == want, f"guest sees {n} of {want} namespaces"
            # the block device of namespace 100 (names follow scan order, not nsids)
            dev = g.check("for d in $(ls /sys/block | grep -E '^nvme[0-9]+n[0-9]+$'); do "
                          "[ \"$(cat /sys/block/$d/nsid)\" = 100 ] && echo /dev/$d; done; true"
                          ).strip()
            assert dev.startswith("/dev/nvme"), dev
            out = g.check(f"fio --name=s --filename={dev} --ioengine=libaio --direct=1 "
                          "--rw=randwrite --bsrange=4k-256k --size=24M --iodepth=8 "
                          "--verify=crc32c --verify_fatal=1", timeout=600)
            assert "err= 0" in out, out
            # no `nvme disconnect-all`: tearing down 100 block devices takes a TCG
            # guest a minute; the guest's exit drops the connection instead
        # what the guest wrote landed in exactly one volume of that subsystem
        vols = [v for v in c.rpc("volume_list") if v["allocated"]]
        assert [v["name"] for v in vols] == [f"vol{7 * PER_SUBSYS + 99:05d}"], vols[:5]
        assert c.stop(timeout=60) == 0
    finally:
        c.kill()
