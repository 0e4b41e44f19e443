"""One confined controller, checked end to end (tests/engine/test_confined.py):
a pool of two file fragments, volume v0 over NVMe/TCP and v1 over
vhost-user, started with a command prefix (a seccomp filter, another user).
Verified I/O through both exports (`srrs bench nvmf --verify` and the C
initiators with verify maps kept in this process), SIGKILL, restart, and
every acknowledged block read back."""

from __future__ import annotations

import json
import subprocess
import urllib.request

from srrs.ctrl import launch
from srrs.ffi.binding import BenchOpts, Core, VerifyMap
from srrs.nvmf.target import NvmfHost
from srrs.vhost.client import VhostClient

MiB = 1 << 20
VOL = 64 * MiB
NQN = "nqn.2026-12.io.srrs:confined"


def start(d, prefix, engine=None) -> launch.Controller:
    """The controller of directory d (config, socket, fragments, log all in d)."""
    port, mport = launch.free_ports(2)
    frags = [launch.fragment(f"{d}/frag{i}.img", "128MiB", engine=engine) for i in range(2)]
    conf = launch.config(
        launch.controller("conf", f"{d}/c.sock", reactors=1, poll_mode=None),
        pools=[launch.pool("p0", frags, cluster_size="1MiB")],
        volumes=[launch.volume("v0", "p0", VOL), launch.volume("v1", "p0", VOL)],
        nvmf=launch.nvmf([f"127.0.0.1:{port}"], [launch.subsystem(NQN, ["v0"], serial="CONF1")]),
        vhosts=[launch.vhost("vh1", f"{d}/v1.sock", "v1", num_queues=1)],
        metrics=launch.metrics(f"127.0.0.1:{mport}"))
    c = launch.Controller(f"{d}/c.toml", conf, prefix=prefix, ready_timeout=30)
    c.port, c.mport, c.dir = port, mport, d
    return c


def engines(c) -> dict:
    """What pool_list, bdev_list, the metrics and the console say the fragments' engine is."""
    pool = c.rpc("pool_list")[0]
    frag_bdevs = {f["bdev"]: f["engine"] for f in pool["fragments"]}
    listed = {b["name"]: b["engine"] for b in c.rpc("bdev_list") if b["name"] in frag_bdevs}
    with urllib.request.urlopen(f"http://127.0.0.1:{c.mport}/metrics", timeout=10) as r:
        text = r.read().decode()
    metric = {ln.split('bdev="')[1].split('"')[0]: ln.split('engine="')[1].split('"')[0]
              for ln in text.splitlines() if ln.startswith("srrs_bdev_engine_info{")}
    con = subprocess.run(launch.SRRS + ["console", "-s", c.sock, "--once"], capture_output=True,
                         text=True, timeout=60).stdout
    shown = {e for ln in con.splitlines() if "frag" in ln for e in ("uring", "aio", "threads")
             if f" {e} " in f" {ln} "}
    return {"pool_list": set(frag_bdevs.values()), "bdev_list": set(listed.values()),
            "metrics": {metric.get(b) for b in frag_bdevs}, "console": shown}


def bench_cli(c) -> dict:
    """`srrs bench nvmf --verify` against the controller: its JSON report."""
    r = subprocess.run(launch.SRRS + ["bench", "nvmf", "--target", f"127.0.0.1:{c.port}", "--nqn",
                                      NQN, "--verify", "--rw", "randrw", "--qd", "8", "--time", "1",
                                      "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def write_kill_restart_verify(c) -> None:
    """Writes through both exports recorded in verify maps, SIGKILL, restart,
    then every block read back against the maps: nothing acknowledged lost."""
    maps = {"nvmf": VerifyMap(VOL // 4096, 4096), "vhost": VerifyMap(VOL // 4096, 4096)}
    write = BenchOpts(rw="randwrite", bs=4096, bs_max=64 << 10, qd=16, time_s=0, max_ios=1500,
                      seed=3)
    readall = BenchOpts(rw="read", bs=MiB, qd=4, time_s=0, max_ios=VOL // MiB)
    with Core(reactors=1, poll_mode="busy") as core:
        for opts in (write, readall):
            with NvmfHost("127.0.0.1", c.port, NQN, qsize=32) as h:
                rn = h.bench(core, opts, vmap=maps["nvmf"])
            with VhostClient(f"{c.dir}/v1.sock") as v:
                rv = v.bench(core, opts, vmap=maps["vhost"])
            for r in (rn, rv):
                assert r["errors"] == 0 and r["verify_errors"] == 0, r
            if opts is write:
                assert c.kill9() == -9
                c.restart()
        assert rn["verified_blocks"] == maps["nvmf"].written_blocks > 0
        assert rv["verified_blocks"] == maps["vhost"].written_blocks > 0
    for m in maps.values():
        m.close()


def guest_disks(c) -> None:
    """A Linux guest (tests/guest/harness.py) whose VM disk is v1 over
    vhost-user and whose kernel initiator reaches v0 over NVMe/TCP: fio writes
    both and verifies as it goes."""
    from tests.guest.harness import (
        HOST_FROM_GUEST,
        Guest,
        fio_verify,
        require_guest,
        vhost_blk_args,
    )

    require_guest()
    with Guest(extra_qemu_args=vhost_blk_args(f"{c.dir}/v1.sock", num_queues=1), smp=1) as g:
        out = g.check(fio_verify("/dev/vda", "32M", 3, name="vm"), timeout=300)
        assert "err= 0" in out, out
        dev = g.connect_paths(NQN, [(HOST_FROM_GUEST, c.port)])
        out = g.check(fio_verify(dev, "32M", 3, name="nvme"), timeout=300)
        assert "err= 0" in out, out
        g.run("nvme disconnect-all", timeout=60)
