"""`srrs demo`: SRRS on one machine with no setup (DESIGN §6).

Today: one controller in a temporary directory, one file-backed bdev per
load path, and the load through every export of this build — `srrs bench
nvmf` over NVMe/TCP on loopback, `srrs bench vhost` over vhost-user — each a
separate process like a real host; with neither export built, the
controller's own C load jobs (`bench_bdev_start`). The live console watches
it; after `--duration` (or `q`, Ctrl-C, SIGTERM, SIGHUP) everything is
stopped and deleted, then a summary per path (IOPS, MiB/s, latency
percentiles, errors). Exit 0 when every path moved I/O without an error;
nothing is left behind on any way out: the load processes and the controller
are stopped, the directory removed.

The steps are functions over one `Demo` state, so the full demo of the issue
slots in as its modules land. TODO:
  * pair + witness: start `srrs witness` and controllers a and b from pair
    configs (file-backed pools in the temp dir), create a paired volume; the
    console watches both sockets; NVMe/TCP load on both controllers' listeners
    (both paths), vhost-user on each controller's socket.
  * `--chaos`: kill and restart one controller mid-run; the summary reports the
    failover (from the pair events) and zero I/O errors.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
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
SRRS = [sys.executable, "-m", "srrs.ctrl.cli"]


@dataclass
class Path:
    """One way the load reaches a bdev: "nvmf", "vhost" or "local" (in-controller jobs)."""
    kind: str
    bdev: str
    where: str = ""                  # what the summary calls it
    bench: list = field(default_factory=list)  # `srrs bench` arguments of this path
    proc: Optional[subprocess.Popen] = None
    out: str = ""                    # the bench's --json output file
    result: Optional[dict] = None


@dataclass
class Demo:
    duration: float
    refresh_hz: float = 4.0
    console: bool = True
    tmp: str = ""
    procs: list = field(default_factory=list)   # controllers: (name, Popen, log path)
    sockets: list = field(default_factory=list)
    paths: list = field(default_factory=list)
    t0: float = 0.0
    t1: float = 0.0
    before: dict = field(default_factory=dict)  # socket -> {bdev: counters}
    after: dict = field(default_factory=dict)
    jobs: dict = field(default_factory=dict)    # socket -> bench_bdev_results


def _rpc(sock: str, method: str, params: Optional[dict] = None):
    with RpcClient(sock, timeout=10) as c:
        return c.call(method, params)


def _rpc_runtime(sock: str, method: str, params: dict, wait_s: float = 5.0):
    """A run-time-only method, retried while the controller is still starting."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return _rpc(sock, method, params)
        except RpcError as e:
            if "only at runtime" not in e.message or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _image(path: str) -> None:
    # written in full up front: random 4 KiB writes into a sparse (or fallocated,
    # unwritten) file split it into tens of thousands of extents, and deleting
    # that takes many seconds; overwriting written blocks changes no extent
    chunk = bytes(1 << 20)
    with open(path, "wb") as f:
        for _ in range(IMG_SIZE // len(chunk)):
            f.write(chunk)


def plan_paths(d: Demo) -> None:
    if _have("srrs.nvmf.service"):
        d.paths.append(Path("nvmf", "f0"))
    if _have("srrs.vhost.service"):
        d.paths.append(Path("vhost", "f1"))
    if not d.paths:
        d.paths.append(Path("local", "f0"))


def start_controller(d: Demo, name: str) -> str:
    sock = os.path.join(d.tmp, f"{name}.sock")
    conf = os.path.join(d.tmp, f"{name}.toml")
    text = f"""[controller]
name = "{name}"
rpc_socket = "{sock}"
reactors = {2 if (os.cpu_count() or 1) >= 4 else 1}
poll_mode = "adaptive"
"""
    for p in d.paths:
        img = os.path.join(d.tmp, f"{name}-{p.bdev}.img")
        _image(img)
        text += f'\n[[bdev]]\nname = "{p.bdev}"\ntype = "file"\npath = "{img}"\n'
    for p in d.paths:
        if p.kind == "nvmf":
            port = _free_port()
            nqn = f"nqn.2026-11.io.srrs:{os.path.basename(d.tmp)}"
            p.where = f"127.0.0.1:{port}"
            p.bench = ["nvmf", "--target", p.where, "--nqn", nqn]
            text += (f'\n[nvmf]\nlisten = ["{p.where}"]\n\n[[nvmf.subsystem]]\nnqn = "{nqn}"\n'
                     f'serial = "SRRSDEMO"\nnamespaces = ["{p.bdev}"]\nallow_hosts = ["*"]\n')
        elif p.kind == "vhost":
            p.where = os.path.join(d.tmp, "vh0.sock")
            p.bench = ["vhost", "--socket", p.where]
            text += (f'\n[[vhost]]\nname = "vh0"\nsocket = "{p.where}"\nbdev = "{p.bdev}"\n'
                     f'num_queues = 1\n')
    with open(conf, "w", encoding="utf-8") as f:
        f.write(text)
    log = os.path.join(d.tmp, f"{name}.log")
    with open(log, "w") as lf:
        # own session: a Ctrl-C in the terminal reaches the demo, which stops the
        # controller itself (SIGTERM) after reading its figures
        p = subprocess.Popen(SRRS + ["start", "-c", conf], stdin=subprocess.DEVNULL, stdout=lf,
                             stderr=subprocess.STDOUT, start_new_session=True)
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
    sock = d.sockets[0]
    d.before[sock] = {b["name"]: b for b in _rpc(sock, "bdev_list")}
    for p in d.paths:
        if p.kind == "local":
            for r in range(len(_rpc(sock, "reactor_stats"))):
                _rpc_runtime(sock, "bench_bdev_start", {
                    "bdev": p.bdev, "reactor": r, "rw": "randrw", "bs": BS, "qd": QD,
                    "time_s": d.duration, "seed": r + 1})
            p.where = "in-controller load jobs"
            continue
        p.out = os.path.join(d.tmp, f"bench-{p.kind}.json")
        with open(p.out, "w") as out:
            p.proc = subprocess.Popen(
                SRRS + ["bench"] + p.bench + ["--rw", "randrw", "--bs", str(BS), "--qd", str(QD),
                                              "--time", str(d.duration), "--json"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
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
    """Figures from the controller now, then the load's own reports: a bench that
    runs to its end reports latency percentiles; one cut short (q) does not."""
    d.t1 = time.monotonic()
    sock = d.sockets[0]
    d.after[sock] = {b["name"]: b for b in _rpc(sock, "bdev_list")}
    early = d.t1 - d.t0 < d.duration - 1.0
    for p in d.paths:
        if p.proc is None:
            continue
        if early:
            _stop_proc(p.proc, signal.SIGKILL, 0)  # a load client: nothing to lose
            continue
        try:
            p.proc.wait(15)
        except subprocess.TimeoutExpired:
            _stop_proc(p.proc, signal.SIGKILL, 0)
            continue
        try:
            with open(p.out) as f:
                p.result = json.loads(f.read().strip().splitlines()[-1])
        except (OSError, ValueError, IndexError):
            p.result = None
    deadline = time.monotonic() + 3
    while any(p.kind == "local" for p in d.paths):
        jobs = _rpc(sock, "bench_bdev_results")
        d.jobs[sock] = jobs
        if early or all(j["state"] != "running" for j in jobs) or time.monotonic() > deadline:
            break
        time.sleep(0.1)


def summary(d: Demo) -> tuple:
    """(lines, ok): one line per path, from the load's report when it ran to its
    end, else from the controller's bdev counters (latency by Little's law)."""
    lines = []
    ok = True
    elapsed = max(1e-9, d.t1 - d.t0)
    sock = d.sockets[0]
    for p in d.paths:
        b = d.after.get(sock, {}).get(p.bdev, {})
        o = d.before.get(sock, {}).get(p.bdev, {})
        ios = sum(b.get(k, 0) - o.get(k, 0) for k in ("reads", "writes"))
        nbytes = sum(b.get(k, 0) - o.get(k, 0) for k in ("bytes_read", "bytes_written"))
        errors = b.get("errors", 0) - o.get("errors", 0)
        iops, mibps = ios / elapsed, nbytes / elapsed / (1 << 20)
        res = p.result
        if p.kind == "local":
            done = [j["result"] for j in d.jobs.get(sock, []) if j.get("result")]
            if done and len(done) == len(d.jobs.get(sock, [])):
                res = {"lat_us": {k: max(r["lat_us"][k] for r in done)
                                  for k in ("p50", "p99", "p999")},
                       "errors": sum(r["errors"] for r in done)}
        if res is not None:
            lat = res["lat_us"]
            lat_s = (f"lat p50 {lat['p50']:.0f} us  p99 {lat['p99']:.0f} us  "
                     f"p99.9 {lat['p999']:.0f} us")
            errors = max(errors, res.get("errors", 0))
            if p.kind != "local":
                iops, mibps = res["iops"], res["mibps"]
        else:
            nq = max(1, len(d.jobs.get(sock, []))) if p.kind == "local" else 1
            lat_s = (f"lat mean ~{nq * QD / iops * 1e6:.0f} us (stopped early)" if iops
                     else "lat n/a")
        label = {"nvmf": "NVMe/TCP", "vhost": "vhost-user", "local": "local"}[p.kind]
        lines.append(f"srrs demo: {p.kind:5} {label} {p.where} -> {p.bdev} (randrw {BS} B "
                     f"qd {QD}): {iops:,.0f} IOPS  {mibps:,.1f} MiB/s  {lat_s}  "
                     f"errors {errors}")
        ok = ok and errors == 0 and ios > 0
    lines.append(f"srrs demo: {elapsed:.1f} s, 1 controller, "
                 f"{'no I/O errors' if ok else 'FAILED: a path had errors or no I/O'}; "
                 f"everything stopped and deleted")
    return lines, ok


def _stop_proc(p: subprocess.Popen, sig: int, timeout: float) -> None:
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout or None)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def stop_all(d: Demo) -> None:
    for p in d.paths:  # load first: the controller then stops with nothing connected
        if p.proc is not None:
            _stop_proc(p.proc, signal.SIGKILL, 0)
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
        plan_paths(d)
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
