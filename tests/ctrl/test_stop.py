"""Clean stop: SIGTERM during a 4-reactor I/O load exits 0 within 2 s; no fd leaks."""

import subprocess
import sys
import textwrap
import time

from srrs.ctrl import launch

from .helpers import Controller, write_config


def _load_config(tmp_path, sock):
    return write_config(tmp_path / "c.toml", sock, reactors=4, extra={"bdev": [
        launch.bdev("m0", "malloc", "64MiB"),
        launch.bdev("f0", "file", "256MiB", path=f"{tmp_path}/f0.img")]})


def test_sigterm_under_load_exits_0_within_2s(tmp_path):
    sock = str(tmp_path / "c.sock")
    c = Controller(_load_config(tmp_path, sock), sock)
    try:
        for r in range(4):
            c.rpc("bench_bdev_start", {"bdev": "f0" if r % 2 else "m0", "reactor": r, "qd": 64,
                                       "rw": "randrw", "bs": 4096, "bs_max": 131072, "time_s": 60})
        deadline = time.monotonic() + 15
        while True:  # wait until the load is really running (slow on a busy machine)
            st = c.rpc("status")
            done = sum(b["reads"] + b["writes"] for b in st["bdevs"])
            if done > 1000 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert done > 1000, st["bdevs"]
        assert sum(r["io_outstanding"] for r in st["reactors"]) > 0, "no I/O in flight"
        t0 = time.monotonic()
        rc = c.stop(timeout=10)
        took = time.monotonic() - t0
        out = c.output()
        assert rc == 0, out
        assert took < 2.0, f"stop took {took:.2f}s"
        assert "stopped" in out
    finally:
        c.kill()


def test_no_fd_leak_after_stop(tmp_path):
    """In a fresh process: fds before the controller, and after it stopped under load."""
    sock = str(tmp_path / "c.sock")
    conf = _load_config(tmp_path, sock)
    script = textwrap.dedent(f"""
        import os, signal, threading, time
        from srrs.ctrl import daemon
        from srrs.ctrl.rpc import RpcClient
        import srrs.ffi.binding  # load the extension before counting
        def fds():
            return sorted(os.listdir('/proc/self/fd'))
        before = fds()
        def driver():
            while not os.path.exists({sock!r}):
                time.sleep(0.02)
            time.sleep(0.2)
            with RpcClient({sock!r}) as c:
                for r in range(4):
                    c.call('bench_bdev_start', {{'bdev': 'f0' if r % 2 else 'm0', 'reactor': r,
                                                'qd': 32, 'time_s': 30}})
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGTERM)
        threading.Thread(target=driver, daemon=True).start()
        rc = daemon.run({conf!r})
        time.sleep(0.1)
        after = fds()
        print('RC', rc)
        print('BEFORE', len(before), before)
        print('AFTER', len(after), after)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.split()}
    assert lines.get("RC") == "RC 0", r.stdout + r.stderr
    nb = int(lines["BEFORE"].split()[1])
    na = int(lines["AFTER"].split()[1])
    assert na == nb, f"fds leaked:\n{lines['BEFORE']}\n{lines['AFTER']}"
