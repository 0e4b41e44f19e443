"""SIGTERM stops a controller at once even when the kernel hands it to a
thread other than the main one (a reactor, the RPC server): the main loop must
not sleep on until something else wakes it. The signal is sent with tgkill to
one non-main thread, as the kernel may do with a process-directed signal.
And a witness stops promptly on SIGTERM."""

import ctypes
import os
import signal
import subprocess
import time

from srrs.ctrl import launch
from srrs.ctrl.launch import free_ports
from tests.ctrl.helpers import write_config

SYS_tgkill = 234 if os.uname().machine == "x86_64" else 131   # aarch64: 131
_libc = ctypes.CDLL(None, use_errno=True)


def _tgkill_other_threads(pid: int, signo: int) -> int:
    """The signal to the first thread that is not the main one; returns its tid."""
    tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    assert tids, "the process has no other thread"
    assert _libc.syscall(SYS_tgkill, pid, tids[0], signo) == 0, ctypes.get_errno()
    return tids[0]


def _wait_exit(p, what: str, timeout: float = 10.0) -> int:
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise AssertionError(f"{what} did not stop within {timeout} s of SIGTERM on a "
                             "non-main thread") from None


def test_controller_stops_on_sigterm_to_another_thread(tmp_path):
    sock = str(tmp_path / "c.sock")
    conf = write_config(tmp_path / "c.toml", sock, reactors=2)
    p = launch.Controller(conf, sock=sock)
    time.sleep(0.5)                        # reactors idle: asleep in epoll
    _tgkill_other_threads(p.pid, signal.SIGTERM)
    assert _wait_exit(p, "the controller") == 0


def test_witness_stops_promptly_on_sigterm(tmp_path):
    """Five starts, a ping, SIGTERM: each witness is gone within 10 s, exit 0
    (libzmq's threads block signals, so the main thread takes it)."""
    from tests.pair.test_witness import _ask, _client

    for i in range(5):
        port, = free_ports(1)
        addr = f"tcp://127.0.0.1:{port}"
        p = launch.Witness(tmp_path / f"w{i}.log", addr, max_lease=None)
        assert _ask(_client(addr), {"op": "ping", "sent_at": 1}, 10000)["op"] == "pong"
        p.proc.send_signal(signal.SIGTERM)
        assert _wait_exit(p, "the witness") == 0, (tmp_path / f"w{i}.log").read_text()
