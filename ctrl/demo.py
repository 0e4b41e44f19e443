"""`srrs demo`: SRRS on one machine with no setup (DESIGN §6).

Today: one controller in a temporary directory with a file-backed bdev, load
from the controller's own C load jobs (`bench_bdev_start`, one per reactor),
the live console, and after `--duration` (or `q`) everything stopped and
deleted, then a summary (IOPS, MiB/s, latency percentiles, errors). Exit 0
when the load ran without an I/O error; nothing is left behind (the
controller is stopped, the directory removed, on every path out, SIGTERM and
Ctrl-C included).

The steps are a list of functions over one `Demo` state so the full demo of
the issue slots in as its modules land. TODO:
  * pair + witness: start `srrs witness` and controllers a and b from pair
    configs (file-backed pools in the temp dir), create a paired volume;
    the console watches both sockets.
  * NVMe/TCP: `srrs bench nvmf` against both controllers' listeners (both
    paths) instead of in-controller load jobs; summary per path.
  * vhost-user: `srrs bench vhost` on each controller's vhost socket when present.
  * `--chaos`: kill and restart one controller mid-run; the summary reports the
    failover (from the pair events) and zero I/O errors.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional

from .rpc import RpcClient, RpcError

QD = 32
BS = 4096
IMG_SIZE = 128 << 20


@dataclass
class Demo:
    duration: float
    refresh_hz: float = 4.0
    console: bool = True
    tmp: str = ""
    procs: list = field(default_factory=list)   # (name, Popen, log path)
    sockets: list = field(default_factory=list)
    jobs: list = field(default_factory=list)    # (socket, job id)
    t0: float = 0.0
    t1: float = 0.0
    before: dict = field(default_factory=dict)  # socket -> bdev_list
    after: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)  # socket -> bench_bdev_results


def _rpc(sock: str, method: str, params: Optional[dict] = None):
    with RpcClient(sock, timeout=10) as c:
        return c.call(method, params)


def _rpc_runtime(sock: str, method: str, params: dict, wait_s: float = 5.0):
    """A run-time-only method: the controller's socket answers a moment before
    the controller switches from start-up to run time, so retry that refusal."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return _rpc(sock, method, params)
        except RpcError as e:
            if "only at runtime" not in e.message or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _reactors() -> int:
    return 2 if (os.cpu_count() or 1) >= 4 else 1


def start_controller(d: Demo, name: str) -> str:
    sock = os.path.join(d.tmp, f"{name}.sock")
    conf = os.path.join(d.tmp, f"{name}.toml")
    # written in full up front: random 4 KiB writes into a sparse (or fallocated,
    # unwritten) file split it into tens of thousands of extents, and deleting
    # that takes many seconds; overwriting written blocks changes no extent
    img = os.path.join(d.tmp, f"{name}-f0.img")
    chunk = bytes(1 << 20)
    with open(img, "wb") as f:
        for _ in range(IMG_SIZE // len(chunk)):
            f.write(chunk)
    with open(conf, "w", encoding="utf-8") as f:
        f.write(f"""[controller]
name = "{name}"
rpc_socket = "{sock}"
reactors = {_reactors()}
poll_mode = "adaptive"

[[bdev]]
name = "f0"
type = "file"
path = "{img}"
size = {IMG_SIZE}
""")
    log = os.path.join(d.tmp, f"{name}.log")
    with open(log, "w") as lf:
        # own session: a Ctrl-C in the terminal reaches the demo, which stops the
        # controller itself (SIGTERM) after reading its results
        p = subprocess.Popen([sys.executable, "-m", "srrs.ctrl.cli", "start", "-c", conf],
                             stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
                             start_new_session=True)
    d.procs.append((name, p, log))
    deadline = time.monotonic() + 20
    while True:
        if p.poll() is not None:
            raise RuntimeError(f"controller {name} exited {p.returncode}:\n{_tail(log)}")
        if os.path.exists(sock):
            try:
                RpcClient(sock).close()
                break
            except ConnectionError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"controller {name} did not open {sock} within 20 s")
        time.sleep(0.05)
    d.sockets.append(sock)
    return sock


def start_load(d: Demo) -> None:
    for sock in d.sockets:
        d.before[sock] = _rpc(sock, "bdev_list")
        n = len(_rpc(sock, "reactor_stats"))
        for r in range(n):
            jid = _rpc_runtime(sock, "bench_bdev_start", {
                "bdev": "f0", "reactor": r, "rw": "randrw", "bs": BS, "qd": QD,
                "time_s": d.duration, "seed": r + 1})
            d.jobs.append((sock, jid))
    d.t0 = time.monotonic()


def show(d: Demo) -> None:
    from .console import ConsoleApp

    end = d.t0 + d.duration

    def footer() -> str:
        return f"demo: {max(0, end - time.monotonic()):.0f} s left"

    app = ConsoleApp(d.sockets, refresh_hz=d.refresh_hz, footer=footer)
    try:
        if d.console and sys.stdout.isatty():
            app.run_live(max(0.0, end - time.monotonic()))
        else:
            app.run_lines(max(0.0, end - time.monotonic()))
    finally:
        app.close()


def collect(d: Demo) -> None:
    d.t1 = time.monotonic()
    for sock in d.sockets:
        d.after[sock] = _rpc(sock, "bdev_list")
        # jobs end with the duration; give them a moment to post results
        deadline = time.monotonic() + 3
        while True:
            res = _rpc(sock, "bench_bdev_results")
            if all(j["state"] != "running" for j in res) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        d.results[sock] = res


def summary(d: Demo) -> tuple:
    """(lines, ok)"""
    lines = []
    ok = True
    elapsed = max(1e-9, d.t1 - d.t0)
    for sock in d.sockets:
        before = {b["name"]: b for b in d.before.get(sock, [])}
        ios = nbytes = errors = 0
        for b in d.after.get(sock, []):
            o = before.get(b["name"], {})
            ios += b["reads"] + b["writes"] - o.get("reads", 0) - o.get("writes", 0)
            nbytes += (b["bytes_read"] + b["bytes_written"] - o.get("bytes_read", 0)
                       - o.get("bytes_written", 0))
            errors += b["errors"] - o.get("errors", 0)
        iops = ios / elapsed
        done = [j["result"] for j in d.results.get(sock, []) if j.get("result")]
        if done and len(done) == len(d.results.get(sock, [])):
            lat = {k: max(r["lat_us"][k] for r in done) for k in ("p50", "p99", "p999", "avg")}
            lat_s = (f"lat p50 {lat['p50']:.0f} us  p99 {lat['p99']:.0f} us  "
                     f"p99.9 {lat['p999']:.0f} us")
            errors = max(errors, sum(r["errors"] for r in done))
        else:  # stopped early: Little's law from the queue depth
            nq = len(d.results.get(sock, [])) or 1
            lat_s = (f"lat mean ~{nq * QD / iops * 1e6:.0f} us (stopped early)" if iops
                     else "lat n/a")
        name = os.path.basename(sock).rsplit(".", 1)[0]
        lines.append(f"srrs demo: {name} (file bdev, in-controller load, randrw {BS} B qd {QD}"
                     f" x{len(d.results.get(sock, []))}): {iops:,.0f} IOPS  "
                     f"{nbytes / elapsed / (1 << 20):,.1f} MiB/s  {lat_s}  errors {errors}  "
                     f"over {elapsed:.1f} s")
        ok = ok and errors == 0 and ios > 0
    return lines, ok


def stop_all(d: Demo) -> None:
    for name, p, log in reversed(d.procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                print(f"srrs demo: controller {name} did not stop in 10 s, killing it",
                      file=sys.stderr)
                p.kill()
                p.wait()
        elif p.returncode not in (0, -signal.SIGTERM):
            print(f"srrs demo: controller {name} exited {p.returncode}:\n{_tail(log)}",
                  file=sys.stderr)
    d.procs.clear()


def _tail(path: str, n: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def _raise_interrupt(signo, frame):
    raise KeyboardInterrupt


def run(duration: float = 60.0, refresh_hz: float = 4.0, console: bool = True) -> int:
    d = Demo(duration=max(1.0, duration), refresh_hz=refresh_hz, console=console)
    # SIGTERM and SIGHUP (terminal closed) stop the run like Ctrl-C: through the
    # clean-up below, never around it
    old = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    d.tmp = tempfile.mkdtemp(prefix="srrs-demo-")
    lines: list = []
    ok = False
    try:
        start_controller(d, "demo")
        start_load(d)
        show(d)
        collect(d)
        lines, ok = summary(d)
    except KeyboardInterrupt:
        lines = ["srrs demo: interrupted"]
    except (RuntimeError, OSError) as e:
        lines = [f"srrs demo: {e}"]
    except RpcError as e:
        lines = [f"srrs demo: {e.message}"]
    finally:
        # a second signal must not cut the clean-up short
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            old.setdefault(sig, signal.getsignal(sig))
            signal.signal(sig, signal.SIG_IGN)
        try:
            stop_all(d)
        finally:
            shutil.rmtree(d.tmp, ignore_errors=True)
            for sig, h in old.items():
                signal.signal(sig, h)
    for line in lines:
        print(line, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1
