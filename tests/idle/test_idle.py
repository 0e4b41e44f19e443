"""An idle controller costs nothing: 2 adaptive reactors, a pool volume
exported over NVMe/TCP and vhost-user, no I/O. Its reactors sleep in
epoll on their fds with no timeout (the NVMe/TCP listener and the pool's
fragment-health check wake on their fds, not on a timer), its RPC thread
blocks in select until a client comes, and the first I/O after the idle
spell is served (docs/architecture.md, Poll modes and adaptive sleep)."""

import json
import os
import subprocess
import time

import pytest

from srrs.ctrl import launch
from srrs.vhost.client import VhostClient
from tests.nvmf import wire

NQN = "nqn.2026-11.io.srrs:idle"
MiB = 1 << 20


@pytest.fixture
def idle(tmp_path):
    sock, port = str(tmp_path / "c.sock"), launch.free_port()
    c = launch.Controller(tmp_path / "idle.toml", launch.config(
        launch.controller("idle", sock, reactors=2, poll_mode="adaptive"),
        pools=[launch.pool("p0", [launch.fragment(tmp_path / "frag0.img", "64MiB")],
                           cluster_size="1MiB")],
        volumes=[launch.volume("v0", "p0", "32MiB")],
        nvmf=launch.nvmf([f"127.0.0.1:{port}"], [launch.subsystem(NQN, ["v0"], serial="IDLE1")]),
        vhosts=[launch.vhost("vh0", tmp_path / "vh0.sock", "v0", num_queues=1)]),
        ready_timeout=30)
    c.port, c.tmp = port, tmp_path
    time.sleep(1.0)  # start-up work done, reactors past their idle spin
    yield c
    c.kill9()


def _cpu_s(pid: int) -> float:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _wakeups(c) -> list:
    return [r["wakeups"] for r in c.rpc("reactor_stats")]


def _switches(pid: int) -> int:
    """Voluntary context switches of all the process's threads: each wake-up
    from a sleep (a timeout or an fd) counts one."""
    n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                n += int(next(x for x in f if x.startswith("voluntary_ctxt_switches")).split()[1])
        except (OSError, StopIteration):
            pass
    return n


@pytest.mark.quiet
def test_idle_controller_under_half_a_percent_of_a_core(idle):
    c0, t0 = _cpu_s(idle.pid), time.monotonic()
    time.sleep(10)
    pct = 100.0 * (_cpu_s(idle.pid) - c0) / (time.monotonic() - t0)
    assert pct < 0.5, f"idle controller used {pct:.2f} % of a core"


def test_idle_reactors_do_not_wake_and_first_io_is_served(idle):
    # A timer anywhere (1 ms listener, 100 ms health tick) shows as hundreds
    # of wake-ups here; each reactor_stats call may wake a reactor once.
    w0 = _wakeups(idle)
    time.sleep(3)
    w1 = _wakeups(idle)
    assert all(b - a <= 3 for a, b in zip(w0, w1)), (w0, w1)

    # the first I/O after the idle spell, over NVMe/TCP (the listener wakes
    # its sleeping reactor) ...
    adm, cntlid = wire.admin_session("127.0.0.1", idle.port, NQN)
    io = wire.io_session("127.0.0.1", idle.port, NQN, cntlid)
    data = os.urandom(4096)
    s = wire.sqe(0x01, io.next_cid(), nsid=1, cdw10=8, cdw12=0, sgl_len=4096, sgl_type=0x01)
    assert io.cmd(s, data)[0] == 0
    s = wire.sqe(0x02, io.next_cid(), nsid=1, cdw10=8, cdw12=0, sgl_len=4096)
    st, _, _, got = io.cmd(s, read_len=4096)
    assert (st, got) == (0, data)
    io.close()
    adm.close()
    # ... and over vhost-user, with the C client
    p = subprocess.run(launch.SRRS + ["bench", "vhost", "--socket", str(idle.tmp / "vh0.sock"),
                                      "--rw", "randrw", "--qd", "1", "--time", "0.5", "--verify",
                                      "--json"], capture_output=True, text=True, timeout=60)
    res = json.loads(p.stdout)
    assert res["iops"] > 0 and res["errors"] == 0, (p.stdout, p.stderr)


def test_fragment_deleted_while_idle_is_noticed_without_a_timer(idle):
    """The health check sleeps on inotify: an unlink wakes it at once."""
    os.unlink(idle.tmp / "frag0.img")
    deadline = time.monotonic() + 5
    while True:
        p = idle.rpc("status")["pool"]["pools"][0]
        if p["state"] == "degraded":
            break
        assert time.monotonic() < deadline, p
        time.sleep(0.1)
    assert "deleted" in p["fragments"][0]["error"]


def test_connected_idle_vhost_front_end_wakes_nothing(idle):
    """A front end connected and idle: the device's protocol thread blocks on
    its socket and event fd (it polled every 250 ms), the reactors sleep."""
    with VhostClient(str(idle.tmp / "vh0.sock")):
        time.sleep(1.0)  # the session's set-up messages done
        s0 = _switches(idle.pid)
        time.sleep(3)
        woke = _switches(idle.pid) - s0
    assert woke <= 3, f"{woke} wake-ups in 3 s of idle with a vhost-user front end connected"


def test_connected_idle_nvmf_host_wakes_nothing(idle):
    """A host connected over NVMe/TCP with no keep-alive timeout, idle: the
    poll groups' 100 ms tick watches deadlines no connection has (handshake,
    authentication, an R2T's data, keep-alive), so it bounds no sleep: the
    reactors sleep with no timeout (they woke 10 times a second per group)."""
    adm, cntlid = wire.admin_session("127.0.0.1", idle.port, NQN)
    io = wire.io_session("127.0.0.1", idle.port, NQN, cntlid)
    try:
        time.sleep(1.0)  # the handshakes' deadlines gone
        w0 = _wakeups(idle)
        time.sleep(3)
        w1 = _wakeups(idle)
        assert all(b - a <= 3 for a, b in zip(w0, w1)), (w0, w1)
        # still served at once
        s = wire.sqe(0x02, io.next_cid(), nsid=1, cdw10=0, cdw12=0, sgl_len=4096)
        assert io.cmd(s, read_len=4096)[0] == 0
    finally:
        io.close()
        adm.close()

