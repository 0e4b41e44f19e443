"""`srrs demo`: the whole system on one machine with no setup (docs/architecture.md, Demo).

In a temporary directory: `srrs witness` and the controllers a and b of an
active/active pair on loopback (free ports), each with a pool on a sparse file
fragment and two thin volumes v0 and v1, paired (the mirror bdevs take the
volumes' names; the raw replicas become internal). Once both are PAIRED, the load runs in separate processes like
real hosts: `srrs bench nvmf` with multipath over both controllers' NVMe/TCP
listeners (one subsystem on v0 through a and b, round-robin, verified
writes), and `srrs bench vhost` on a's vhost-user socket (v1). The
live console watches both controllers and pings the witness. After
`--duration` (or q, Ctrl-C, SIGTERM, SIGHUP) everything is stopped and
deleted, then a summary: per load and per path IOPS, MiB/s, latency
percentiles and errors, and each failover the pair went through.

`--chaos`: controller b is killed (SIGKILL) during the run, restarted a few
seconds later and resyncs back to PAIRED, twice in a run of 50 s or more
(always b: the vhost-user client has no second path). The multipath load rides
through on a. A watcher samples both controllers' pair state ten times a
second, so the summary reports every failover it saw, asked for or not.

Exit 0 only with zero I/O errors, I/O on every load and every path, and every
killed controller back to PAIRED; nothing is left behind on any way out.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from . import launch
from .rpc import RpcClient, RpcError

QD = 32
BS = 4096
VOL_SIZE = "64MiB"
FRAG_SIZE = 192 << 20
PATH_TIMEOUT_S = 15
SRRS = launch.SRRS
VICTIM, SURVIVOR = "b", "a"
SOLO_S = 3.0            # chaos: how long the survivor serves alone before the restart
WATCH_S = 0.1           # pair state sampling period


@dataclass
class Node:
    """A controller of the pair."""
    name: str
    nvmf: str = ""                   # its NVMe/TCP listener, host:port
    ctl: Optional[launch.Controller] = None

    @property
    def sock(self) -> str:
        return self.ctl.sock


@dataclass
class Load:
    """One way the load reaches a volume: "nvmf" (multipath over both
    controllers) or "vhost"."""
    kind: str
    bdev: str
    where: str = ""                  # what the summary calls it
    bench: list = field(default_factory=list)  # `srrs bench` arguments
    proc: Optional[subprocess.Popen] = None
    out: str = ""                    # the bench's --json output file
    result: Optional[dict] = None
    early: dict = field(default_factory=dict)  # figures when it was cut short


@dataclass
class Failover:
    victim: str
    survivor: str
    killed: float                    # seconds since the load started
    solo: Optional[float] = None     # the survivor serves alone (witness lease)
    restarted: Optional[float] = None
    resync: Optional[float] = None   # the pair seen resyncing
    paired: Optional[float] = None   # both PAIRED again
    planned: bool = True


@dataclass
class Demo:
    duration: float
    chaos: bool = False
    refresh_hz: float = 2.0
    console: bool = True
    tmp: str = ""
    nqn: str = ""
    pair: Optional[launch.Pair] = None
    nodes: dict = field(default_factory=dict)
    loads: list = field(default_factory=list)
    t0: float = 0.0
    t1: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    states: dict = field(default_factory=dict)       # name -> pair state ("DOWN")
    transitions: list = field(default_factory=list)  # (t, name, old, new)
    failovers: list = field(default_factory=list)
    note: str = ""                                   # chaos step, for the console footer
    before: dict = field(default_factory=dict)       # bdev counters at load start
    cpu0: float = 0.0                                # this process's CPU time at t0, t1
    cpu1: float = 0.0
    loadavg: float = 0.0                             # the 1-min load average at t1
    reactors: int = 1                                # per controller

    def now(self) -> float:
        return time.monotonic() - self.t0


def _rpc(sock: str, method: str, params: Optional[dict] = None, timeout: float = 10):
    with RpcClient(sock, timeout=timeout) as c:
        return c.call(method, params)




# ---- set-up ---------------------------------------------------------------------------

def plan(d: Demo) -> None:
    d.nqn = f"nqn.2026-11.io.srrs:{os.path.basename(d.tmp)}"
    for n in ("a", "b"):
        d.nodes[n] = Node(n)
    for n, port in zip(("a", "b"), launch.free_ports(2)):
        d.nodes[n].nvmf = f"127.0.0.1:{port}"
    d.loads += [Load("nvmf", "v0"), Load("vhost", "v1")]


def node_config(d: Demo, n: str) -> dict:
    """Controller n's sections besides [controller] and [pair] (launch.Pair
    adds those): a pool on one fragment, v0 and v1, and its exports."""
    conf = {"pool": [launch.pool("p0", [launch.fragment(f"{d.tmp}/{n}-frag0.img", FRAG_SIZE)],
                                 cluster_size="1MiB")],
            "volume": [launch.volume(v, "p0", VOL_SIZE) for v in ("v0", "v1")]}
    node = d.nodes[n]
    if node.nvmf:
        sub = launch.subsystem(d.nqn, ["v0"], serial="SRRSDEMO")
        conf["nvmf"] = launch.nvmf([node.nvmf], [sub], cntlid_min=1 if n == "a" else 1001)
    if n == "a" and any(x.kind == "vhost" for x in d.loads):
        conf["vhost"] = [launch.vhost("vh-a", f"{d.tmp}/vh-a.sock", "v1", num_queues=1)]
    return conf


def _fragment(path: str) -> None:
    # Allocated up front, physically contiguous (the pool formats an all-zero
    # file like a new one), and written over in full before it is deleted
    # (_wipe_fragments): a cluster's zeroing and then random 4 KiB writes cut a
    # file into an extent per block, and on a filesystem mounted with online
    # discard deleting that takes tens of seconds. Written over, the extents
    # merge back and the file goes at once.
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, FRAG_SIZE)
        except OSError:  # no fallocate here: a sparse file, as the pool makes it
            os.ftruncate(fd, FRAG_SIZE)
    finally:
        os.close(fd)


def _wipe_fragments(d: Demo) -> None:
    chunk = bytes(1 << 20)
    for n in d.nodes:
        path = f"{d.tmp}/{n}-frag0.img"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            for off in range(0, FRAG_SIZE, len(chunk)):
                os.pwrite(fd, chunk, off)
            os.fdatasync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def start_pair(d: Demo) -> None:
    """As a real pair is set up: `srrs keygen` for the controllers (CURVE keys,
    their shared mirror secret) and the witness (its allow-list: the two
    controllers' public keys), the witness, then both controllers, PAIRED.
    Each in its own session: a Ctrl-C in the terminal reaches the demo, which
    stops them itself (SIGTERM) after reading their figures."""
    d.reactors = 2 if (os.cpu_count() or 1) >= 4 else 1
    d.pair = launch.Pair(
        d.tmp, lambda n: node_config(d, n), volumes=("v0", "v1"), max_lease=2,
        witness_args=["--state", os.path.join(d.tmp, "witness.json")],
        reactors=d.reactors, session=True, ready_timeout=20,
        peer_rpc_socket=True, heartbeat_ms=100, miss_count=_miss_count(), lease_ms=2000)
    for n, node in d.nodes.items():
        node.ctl = d.pair.nodes[n]
        _fragment(f"{d.tmp}/{n}-frag0.img")
    d.pair.start(paired_timeout=30)


def _miss_count() -> int:
    """Heartbeats (100 ms) missed before a controller takes its peer for lost:
    1 s where the machine has CPU to spare; on one already overloaded when the
    demo starts (a load average above its CPUs, as in a CI run beside other
    tests), up to 3 s: a controller starved for a second there fenced a live
    pair (a false failover; I/O errors on the single-path vhost-user load)."""
    per_cpu = os.getloadavg()[0] / (os.cpu_count() or 1)
    return 10 if per_cpu <= 1 else min(30, int(10 * per_cpu))


# ---- load -----------------------------------------------------------------------------

def start_load(d: Demo) -> None:
    a = d.nodes["a"]
    d.before = {b["name"]: b for b in _rpc(a.sock, "bdev_list")}
    common = ["--rw", "randrw", "--bs", str(BS), "--qd", str(QD), "--time", str(d.duration),
              "--json"]
    for ld in d.loads:
        if ld.kind == "nvmf":
            ld.where = " + ".join(f"{n.name} {n.nvmf}" for n in d.nodes.values())
            ld.bench = ["nvmf", "--nqn", d.nqn, "--verify", "--path-timeout",
                        str(PATH_TIMEOUT_S)]
            for n in d.nodes.values():
                ld.bench += ["--target", n.nvmf]
        else:
            ld.where = f"a {d.tmp}/vh-a.sock"
            ld.bench = ["vhost", "--socket", f"{d.tmp}/vh-a.sock"]
        ld.out = os.path.join(d.tmp, f"bench-{ld.kind}.json")
        with open(ld.out, "w") as out:
            ld.proc = subprocess.Popen(SRRS + ["bench"] + ld.bench + common,
                                       stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       preexec_fn=_nice)
    d.t0 = time.monotonic()
    d.cpu0 = time.process_time()


def _nice() -> None:
    # the load's busy-polling reactors yield to the controllers on a small
    # machine: a starved controller would miss heartbeats (a false failover)
    os.nice(5)


# ---- the pair: state watcher and chaos --------------------------------------------------

class _StateProbe:
    """A controller's pair state over one kept RPC connection: ten samples a
    second as fresh connections were 20 accepts a second in the controllers'
    RPC threads, beside the load being measured. A broken connection (the
    controller killed or restarted) is retried once at once on a new one."""

    def __init__(self, sock: str):
        self.sock = sock
        self.c: Optional[RpcClient] = None

    def state(self) -> str:
        for _ in range(2):
            try:
                if self.c is None:
                    self.c = RpcClient(self.sock, timeout=1.0)
                return self.c.call("pair_status")["state"]
            except (OSError, RpcError, ValueError, KeyError, TypeError):
                self.close()
        return "DOWN"

    def close(self) -> None:
        if self.c is not None:
            self.c.close()
            self.c = None


def watch(d: Demo) -> None:
    """Samples both controllers' pair state; every change is a transition, every
    entry into SOLO a failover (the chaos thread fills in its planned ones)."""
    probes = {n: _StateProbe(node.sock) for n, node in d.nodes.items()}
    try:
        _watch(d, probes)
    finally:
        for p in probes.values():
            p.close()


def _watch(d: Demo, probes: dict) -> None:
    while not d.stop.wait(WATCH_S):
        for node in d.nodes.values():
            st = probes[node.name].state()
            with d.lock:
                old = d.states.get(node.name)
                if old == st:
                    continue
                t = d.now()
                d.states[node.name] = st
                d.transitions.append((t, node.name, old, st))
                if st == "SOLO":
                    other = "b" if node.name == "a" else "a"
                    f = next((f for f in d.failovers if f.survivor == node.name
                              and f.solo is None), None)
                    if f is None:
                        f = Failover(victim=other, survivor=node.name, killed=t, planned=False)
                        d.failovers.append(f)
                    f.solo = t
                elif st == "RESYNC":
                    for f in d.failovers:
                        if f.paired is None and f.resync is None:
                            f.resync = t
                if all(d.states.get(n) == "PAIRED" for n in d.nodes):
                    for f in d.failovers:
                        if f.paired is None and f.solo is not None:
                            f.paired = t


def _wait(d: Demo, pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not d.stop.is_set():
        with d.lock:
            if pred():
                return True
        if time.monotonic() > deadline:
            return False
        d.stop.wait(0.05)
    return False


def chaos(d: Demo) -> None:
    """Kill -9 the victim, let the survivor serve alone, restart the victim and
    wait for the pair to resync back to PAIRED; twice in a long run."""
    times = [max(4.0, 0.25 * d.duration)]
    if d.duration >= 50:
        times.append(0.6 * d.duration)
    victim = d.nodes[VICTIM]
    for k, at in enumerate(times, 1):
        if d.stop.wait(max(0.0, at - d.now())):
            return
        if not _wait(d, lambda: all(d.states.get(n) == "PAIRED" for n in d.nodes), 10):
            d.note = "chaos: the pair is not PAIRED, no kill"
            return
        with d.lock:
            f = Failover(VICTIM, SURVIVOR, killed=d.now())
            d.failovers.append(f)
        d.note = f"chaos {k}: kill -9 {VICTIM}"
        victim.ctl.kill9()
        if not _wait(d, lambda f=f: f.solo is not None, 10):
            d.note = f"chaos {k}: {SURVIVOR} did not go SOLO"
            return
        d.note = f"chaos {k}: {SURVIVOR} SOLO, {VICTIM} down"
        if d.stop.wait(max(0.0, f.solo + SOLO_S - d.now())):
            return
        d.note = f"chaos {k}: restarting {VICTIM}"
        try:
            victim.ctl.restart()
        except RuntimeError as e:
            d.note = f"chaos {k}: {e}".splitlines()[0]
            return
        f.restarted = d.now()
        d.note = f"chaos {k}: {VICTIM} back, resyncing"
        if not _wait(d, lambda f=f: f.paired is not None, 30):
            return
        d.note = f"chaos {k}: PAIRED again"


def start_threads(d: Demo) -> None:
    d.states = {n: "PAIRED" for n in d.nodes}
    fns = [watch] + ([chaos] if d.chaos else [])
    for fn in fns:
        t = threading.Thread(target=fn, args=(d,), daemon=True, name=f"demo-{fn.__name__}")
        t.start()
        d.threads.append(t)


def stop_threads(d: Demo) -> None:
    d.stop.set()
    for t in d.threads:
        t.join(30)
    d.threads.clear()


# ---- console, results -----------------------------------------------------------------

def console_app(d: Demo):
    """The console, made (rich imported, sources connected) before the load
    starts: its start-up is no part of the load's figures or its share."""
    from .console import ConsoleApp
    from .witness import WitnessProbe

    def footer() -> str:
        s = f"demo: {max(0, d.t0 + d.duration - time.monotonic()):.0f} s left"
        return f"{s} · {d.note}" if d.note else s

    return ConsoleApp([n.sock for n in d.nodes.values()], refresh_hz=d.refresh_hz,
                      footer=footer,
                      witness=WitnessProbe(d.pair.witness_addr,
                                           secret_key=f"{d.pair.keys['a']}_secret",
                                           server_public_key=d.pair.keys["witness_public"]))


def show(d: Demo, app) -> None:
    end = d.t0 + d.duration
    try:
        if d.console and sys.stdout.isatty():
            app.run_live(max(0.0, end - time.monotonic()))
        else:
            app.run_lines(max(0.0, end - time.monotonic()))
    finally:
        app.close()


def collect(d: Demo) -> bool:
    """The load's own reports (a bench that runs to its end reports latency
    percentiles and per-path figures); cut short (q), the controllers' counters.
    Returns True when the run was cut short."""
    d.t1 = time.monotonic()
    d.cpu1 = time.process_time()
    d.loadavg = os.getloadavg()[0]
    early = d.t1 - d.t0 < d.duration - 1.0
    if early:
        _early_figures(d)
    for ld in d.loads:
        if ld.proc is None:
            continue
        if early:
            _stop_proc(ld.proc, signal.SIGKILL, 0)  # a load client: nothing to lose
            continue
        try:
            ld.proc.wait(60)  # the verified load reads everything back at its end
        except subprocess.TimeoutExpired:
            _stop_proc(ld.proc, signal.SIGKILL, 0)
            continue
        try:
            with open(ld.out) as f:
                ld.result = json.loads(f.read().strip().splitlines()[-1])
        except (OSError, ValueError, IndexError):
            ld.result = None
    return early


def _early_figures(d: Demo) -> None:
    """Per path I/O from the targets' queue counters, per volume from a's bdev."""
    for ld in d.loads:
        if ld.kind == "nvmf":
            for n in d.nodes.values():
                try:
                    qs = [q for q in _rpc(n.sock, "nvmf_get_qpairs", timeout=2) if q["qid"]]
                except (OSError, RpcError):
                    qs = []
                ld.early[n.name] = {k: sum(q[k] for q in qs) for k in
                                    ("reads", "writes", "bytes_read", "bytes_written")}
        else:
            try:
                b = {x["name"]: x for x in _rpc(d.nodes["a"].sock, "bdev_list", timeout=2)}
            except (OSError, RpcError):
                b = {}
            o = d.before.get(ld.bdev, {})
            ld.early["a"] = {k: b.get(ld.bdev, {}).get(k, 0) - o.get(k, 0) for k in
                             ("reads", "writes", "bytes_read", "bytes_written", "errors")}


def _lat(res: dict) -> str:
    lat = res["lat_us"]
    return (f"lat p50 {lat['p50']:.0f} us  p99 {lat['p99']:.0f} us  "
            f"p99.9 {lat['p999']:.0f} us")


def summary(d: Demo, early: bool) -> tuple:
    """(lines, ok)."""
    lines = []
    ok = True
    elapsed = max(1e-9, d.t1 - d.t0)
    for ld in d.loads:
        label = {"nvmf": "NVMe/TCP multipath", "vhost": "vhost-user"}[ld.kind]
        head = f"srrs demo: {ld.kind:5} {label} {ld.where} -> {ld.bdev} (randrw {BS} B qd {QD}"
        head += ", verified)" if ld.kind == "nvmf" else ")"
        res = ld.result
        if res is not None:
            errors = res.get("errors", 0) + res.get("verify_errors", 0)
            lines.append(f"{head}: {res['iops']:,.0f} IOPS  {res['mibps']:,.1f} MiB/s  "
                         f"{_lat(res)}  errors {errors}")
            ok = ok and errors == 0 and res.get("ios", 1) > 0
            for p in res.get("paths", []):
                name = next((n.name for n in d.nodes.values() if n.nvmf == p["target"]), "?")
                lines.append(f"srrs demo:   path {name} {p['target']} cntlid {p['cntlid']}: "
                             f"{p['iops']:,.0f} IOPS  {p['mibps']:,.1f} MiB/s  connection drops "
                             f"{p['drops']}  reconnects {p['reconnects']}  path errors "
                             f"{p['path_errors']}  I/Os moved to the other path "
                             f"{p['resubmitted']}  errors {p['errors']}")
                ok = ok and p["ios"] > 0
            if "failovers" in res:
                lines.append(f"srrs demo:   multipath: {res['failovers']} I/Os waited for a "
                             f"usable path and were resubmitted, longest wait "
                             f"{res['max_wait_us'] / 1000:,.0f} ms, {res['path_timeouts']} "
                             f"timed out; verified {res.get('verified')}")
            continue
        # cut short: the controllers' counters, latency by Little's law
        tot = {k: sum(e.get(k, 0) for e in ld.early.values()) for k in
               ("reads", "writes", "bytes_read", "bytes_written", "errors")}
        ios = tot["reads"] + tot["writes"]
        iops, mibps = ios / elapsed, (tot["bytes_read"] + tot["bytes_written"]) / elapsed / 2**20
        lat_s = f"lat mean ~{QD / iops * 1e6:.0f} us (stopped early)" if iops else "lat n/a"
        lines.append(f"{head}: {iops:,.0f} IOPS  {mibps:,.1f} MiB/s  {lat_s}  "
                     f"errors {tot['errors']}")
        ok = ok and ios > 0 and tot["errors"] == 0
        if ld.kind == "nvmf":
            for name, e in ld.early.items():
                lines.append(f"srrs demo:   path {name} {d.nodes[name].nvmf}: "
                             f"{(e['reads'] + e['writes']) / elapsed:,.0f} IOPS (stopped early)")
    planned = [f for f in d.failovers if f.planned]
    for i, f in enumerate(d.failovers, 1):
        def at(t):
            return "-" if t is None else f"+{t:.1f} s"
        how = (f"{f.victim} killed (kill -9) at {at(f.killed)}" if f.planned
               else f"{f.victim} lost (not by the demo) at {at(f.killed)}")
        solo = (f"{f.survivor} SOLO (witness lease) after {f.solo - f.killed:.1f} s"
                if f.solo is not None else f"{f.survivor} never went SOLO")
        back = (f"{f.victim} restarted at {at(f.restarted)}, " if f.restarted is not None else "")
        if f.paired is not None:
            back += (f"resync, PAIRED again at {at(f.paired)}"
                     + (f" ({f.paired - f.resync:.1f} s after resync began)"
                        if f.resync is not None else ""))
        else:
            back += "not PAIRED again by the end"
        lines.append(f"srrs demo: failover {i}: {how}; {solo}; {back}")
        if not early:
            ok = ok and f.solo is not None and f.paired is not None
    if d.chaos and not planned and not early:
        lines.append("srrs demo: chaos: no controller was killed (run too short?)")
        ok = False
    lines.append(bounds(d, elapsed))
    survived = sum(1 for f in d.failovers if f.paired is not None)
    lines.append(f"srrs demo: {elapsed:.1f} s, pair a+b with witness, "
                 f"{survived} failover{'s' if survived != 1 else ''} survived, "
                 f"{'no I/O errors' if ok else 'FAILED: I/O errors, a path without I/O, or the pair not back'}"
                 f"; everything stopped and deleted")
    return lines, ok


def bounds(d: Demo, elapsed: float) -> str:
    """What bounds the figures above: everything shares this machine's CPUs.
    The console's share is this process's CPU time over the load (the
    console, the state watcher and the chaos thread)."""
    ncpu = os.cpu_count() or 1
    reactors = d.reactors
    console = 100.0 * max(0.0, d.cpu1 - d.cpu0) / elapsed
    return (f"srrs demo: bounds: {ncpu} CPU{'s' if ncpu != 1 else ''} (load average "
            f"{d.loadavg:.1f}) shared by 2 controllers ({reactors} adaptive reactor"
            f"{'s' if reactors != 1 else ''} each, mirroring every write), a witness, "
            f"{len(d.loads)} load generators (a busy-polling C reactor each) and the console "
            f"({console:.1f} % of a core); `ci/bench-pair` measures the pair alone")


# ---- stop -----------------------------------------------------------------------------

def _stop_proc(p: subprocess.Popen, sig: int, timeout: float) -> None:
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout or None)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def stop_all(d: Demo) -> None:
    stop_threads(d)
    for ld in d.loads:  # load first: the controllers then stop with nothing connected
        if ld.proc is not None:
            _stop_proc(ld.proc, signal.SIGKILL, 0)
    for node in reversed(list(d.nodes.values())):
        c = node.ctl
        if c is None or c.proc is None:
            continue
        if c.alive():
            try:
                c.stop(10)
            except subprocess.TimeoutExpired:
                print(f"srrs demo: controller {node.name} did not stop in 10 s, killed it",
                      file=sys.stderr)
        elif c.proc.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL):
            print(f"srrs demo: controller {node.name} exited {c.proc.returncode}:\n"
                  f"{c.tail()}", file=sys.stderr)
    if d.pair is not None and d.pair.witness is not None:
        try:
            d.pair.witness.stop(5)
        except subprocess.TimeoutExpired:
            pass  # killed


def _raise_interrupt(signo, frame):
    raise KeyboardInterrupt


def why(d: Demo, per_log: int = 12) -> list:
    """A failed run's evidence, read before its directory goes: the warnings
    and errors the controllers and the witness logged (the last per_log of each)."""
    out = []
    for name in ("a", "b", "witness"):
        path = os.path.join(d.tmp, f"{name}.log")
        try:
            with open(path, errors="replace") as f:
                hits = [ln.rstrip() for ln in f
                        if any(f" {lv} " in ln for lv in ("WARNING", "ERROR", "CRITICAL"))
                        or "read(s) failed" in ln]
        except OSError:
            continue
        for ln in hits[-per_log:]:
            out.append(f"srrs demo: {name} log: {ln}")
    # where a mirror failed host I/O itself: fenced (no lease), or a read that
    # waited a whole read lease with the link up
    for name, node in (d.pair.nodes.items() if d.pair is not None else ()):
        try:
            st = _rpc(node.sock, "pair_status", timeout=3)
        except (RpcError, OSError, ValueError) as e:
            out.append(f"srrs demo: {name}: pair_status: {e}")
            continue
        link = st.get("link") or {}
        vols = ", ".join(f"{v['name']} fenced {v.get('fenced_ios', 0)} read errors "
                         f"{v.get('local_read_errors', 0)}" for v in st.get("volumes") or [])
        out.append(f"srrs demo: {name} mirror: mode {link.get('mode')}, lease reads failed "
                   f"{link.get('lease_reads_failed', 0)}, held writes {link.get('held_writes', 0)};"
                   f" {vols}")
    return out


def run(duration: float = 60.0, refresh_hz: float = 2.0, console: bool = True,
        chaos: bool = False) -> int:
    d = Demo(duration=max(1.0, duration), chaos=chaos, refresh_hz=refresh_hz, console=console)
    # SIGTERM and SIGHUP (terminal closed) stop the run like Ctrl-C: through the
    # clean-up below, never around it
    old = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    d.tmp = tempfile.mkdtemp(prefix="srrs-demo-")
    lines: list = []
    ok = False
    app = None
    try:
        plan(d)
        start_pair(d)
        app = console_app(d)
        start_load(d)
        start_threads(d)
        show(d, app)
        d.stop.set()  # no new kill; a restart under way finishes
        early = collect(d)
        stop_threads(d)
        lines, ok = summary(d, early)
        if not ok:
            lines += why(d)
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
            if app is not None:
                app.close()  # closing twice is harmless; the load may never have started
            stop_all(d)
        finally:
            _wipe_fragments(d)
            shutil.rmtree(d.tmp, ignore_errors=True)
            for sig, h in old.items():
                signal.signal(sig, h)
    for line in lines:
        print(line, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1
