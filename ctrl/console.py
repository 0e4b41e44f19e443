"""`srrs console`: the app (docs/architecture.md, Console) — polling, the
refresh loop, keys, `--once` and `--json`. What is shown is built by
ctrl/console_model.py (status results -> typed views, rates from counter
deltas) and drawn by ctrl/console_render.py (views + size -> rich, pure).

Each controller is sampled by its own thread at the refresh rate (`status`
once per period, never more; `events`, `bench_bdev_results` and
`volume_list` — the volumes' used bytes and tenants — at ~2 Hz and every
few seconds): one that hangs delays only its own panel; one that stops
answering is shown DOWN, its alert says since when, and it is reconnected
by itself; a restarted one (new pid) starts its rates and history over.
With `--pair CONFIG` (ctrl/cli.py) both controllers of a pair are watched and
the pair's witness is pinged once a second.

Modes: full screen (rich Live, screen=True, redrawn on our own timer; keys q
quit, p pause, tab next panel, arrows/PgUp/PgDn/Home/End scroll the focused
controller panel or the event log); `--once` one plain-text snapshot;
`--once --json` the same as JSON: per controller the RPC's own reactor and
bdev records plus the computed `read_iops`, `write_iops`, `iops`,
`read_mibps`, `write_mibps`, `mibps`, `p50_us`, `p99_us`, `p999_us`,
`lat_ios` (I/Os the percentiles are of; null when none completed),
`loops_per_s`, `busy_pct_now`, `exports` with the figures of the bdev each
serves, and the other status sections as they are; at the top `volumes`,
`pair` and `alerts` as the screen shows them. When stdout is not a terminal,
one summary line per controller is printed every few seconds instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import socket
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, Optional

import psutil
from rich.console import Console
from rich.live import Live

from . import console_model as model
from . import console_render as render
from .console_render import fmt_lat, fmt_num, sparkline  # noqa: F401 - the console's API
from .iostats import exports_of
from .rpc import RpcClient, RpcError

HISTORY_S = 60
RATE_WINDOW_S = 1.0
SLOW_POLL_S = 0.5
VOLUMES_POLL_S = 5.0     # used bytes and tenants change slowly; one RPC for the listed volumes
WITNESS_POLL_S = 1.0
CORE_KEYS = ("name", "pid", "uptime_s", "rpc_socket", "poll_mode", "reactors", "bdevs")


# ---- one controller -------------------------------------------------------------------

class Source:
    """One controller's RPC socket: samples, rates, history and its event cursor."""

    def __init__(self, sock: str, timeout: float = 1.0):
        self.sock = sock
        self.timeout = timeout
        self.client: Optional[RpcClient] = None
        self.state = "connecting"       # "up" | "down" | "connecting"
        self.error = ""
        self.status: Optional[dict] = None
        self.jobs: list = []
        self.samples: deque = deque()   # (t, status) over the last RATE_WINDOW_S+
        self.rates: dict = {}           # computed figures, see _rates()
        self.history: dict = {}         # (kind, name) -> deque of per-second values
        self._last_hist_t = 0.0
        self._events_since = 0.0
        self._proc: Optional[psutil.Process] = None
        self._proc_sample: Optional[tuple] = None  # (t, cpu seconds)
        self.process: dict = {}
        self.down_since: Optional[float] = None
        self._slow_t = 0.0
        self.lock = threading.Lock()  # the poller thread's updates vs. the redraw
        self.volumes: list = []       # volume_list records (used bytes, tenant)
        self._vol_t = -VOLUMES_POLL_S
        self._vol_rpc = True          # False: the controller has no pools (no such method)
        self.version = 0              # bumped by every applied sample: the view is rebuilt

    @property
    def name(self) -> str:
        return self.status["name"] if self.status else os.path.basename(self.sock)

    def _call(self, method: str, params: Optional[dict] = None) -> Any:
        if self.client is None:
            self.client = RpcClient(self.sock, timeout=self.timeout)
        return self.client.call(method, params)

    def poll(self, now: float, want_events: bool = True) -> list:
        """Sample the controller; returns new event records for the log. The RPCs
        run outside self.lock, so a hung controller never blocks a redraw."""
        try:
            st, jobs, evs, restarted = self._fetch(now, want_events)
        except (OSError, RpcError, ValueError) as e:  # ConnectionError, timeout, bad JSON
            self._drop()
            with self.lock:
                return self._went_down(now, e)
        with self.lock:
            return self._apply(now, st, jobs, evs, restarted)

    def _fetch(self, now: float, want_events: bool) -> tuple:
        st = self._call("status")
        self._fetch_volumes(now, st)
        restarted = self.status is not None and self.status.get("pid") != st.get("pid")
        # the event log and the load jobs change slowly: ask for them at ~2 Hz
        slow = restarted or self.state != "up" or now - self._slow_t >= SLOW_POLL_S
        jobs = self._call("bench_bdev_results") if slow else None
        evs: list = []
        if want_events and slow:
            evs = self._call("events", {"since": 0.0 if restarted else self._events_since})
        if slow:
            self._slow_t = now
        return st, jobs, evs, restarted

    def _fetch_volumes(self, now: float, st: dict) -> None:
        """volume_list of the volumes status lists, every VOLUMES_POLL_S (one RPC,
        never one per volume), only from a controller with pools."""
        if not self._vol_rpc or "pool" not in st or now - self._vol_t < VOLUMES_POLL_S:
            return
        self._vol_t = now
        try:
            # only the volumes that status lists (the busiest and the exported):
            # bounded at any volume count (docs/architecture.md, Control plane at scale)
            bdevs = [b for b in st.get("bdevs", []) if isinstance(b, dict)]
            names = [b.get("name") for b in bdevs] + [b.get("path") for b in bdevs
                                                       if b.get("module") == "mirror"]
            vols = self._call("volume_list", {"names": names})
        except RpcError:
            self._vol_rpc = False
            return
        if isinstance(vols, list):
            self.volumes = [v for v in vols if isinstance(v, dict)]

    def _went_down(self, now: float, e: Exception) -> list:
        out: list = []
        err = getattr(e, "message", None) or str(e) or type(e).__name__
        if isinstance(e, socket.timeout):
            err = f"no answer within {self.timeout:g} s"
        if self.state != "down":
            out.append(_console_event(now, self.name, "down", err))
            self.down_since = now
        self.state, self.error = "down", err
        self.rates, self.process = {}, {}  # no live figures from a controller that is gone
        self.samples.clear()
        self.version += 1
        return out

    def _apply(self, now: float, st: dict, jobs: Optional[list], evs: list,
               restarted: bool) -> list:
        out: list = []
        if self.state == "down":
            out.append(_console_event(now, st["name"], "up", f"reconnected (pid {st['pid']})"))
        if restarted:  # counters start over
            self.samples.clear()
            self.history.clear()
            self._proc = None
            self._events_since = 0.0
        self.state, self.error, self.down_since = "up", "", None
        self.status = st
        if jobs is not None:
            self.jobs = [j for j in jobs if isinstance(j, dict)]
        for ev in evs:
            self._events_since = max(self._events_since, ev.get("time", 0))
            out.append({"time": ev.get("time", now), "controller": st["name"], **ev})
        self.samples.append((now, st))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW_S:
            self.samples.popleft()
        self._sample_process(now, st.get("pid"))
        (t0, old), (t1, new) = self.samples[0], self.samples[-1]
        self.rates = model.rates(t0, old, t1, new)
        self.version += 1
        if now - self._last_hist_t >= 1.0 or not self._last_hist_t:
            self._last_hist_t = now
            for name, r in self.rates.get("bdevs", {}).items():
                for kind in ("iops", "mibps", "p50_us", "p99_us"):
                    # a second without I/O has no percentile: drawn at the floor
                    self.history.setdefault((kind, name), deque(maxlen=HISTORY_S)).append(
                        r[kind] or 0.0)
            for idx, r in self.rates.get("reactors", {}).items():
                self.history.setdefault(("busy", idx), deque(maxlen=HISTORY_S)).append(
                    r["busy_pct_now"])
        return out

    def _drop(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except OSError:
                pass
            self.client = None

    def close(self) -> None:
        self._drop()

    def _sample_process(self, now: float, pid: Optional[int]) -> None:
        if pid is None:
            return
        try:
            if self._proc is None or self._proc.pid != pid:
                self._proc = psutil.Process(pid)
                self._proc_sample = None
            with self._proc.oneshot():
                t = self._proc.cpu_times()
                cpu_s = t.user + t.system
                rss = self._proc.memory_info().rss
                nthreads = self._proc.num_threads()
        except psutil.Error:  # another host's or another pid namespace's controller
            self.process = {}
            return
        cpu_pct = None
        if self._proc_sample is not None and now > self._proc_sample[0]:
            cpu_pct = 100.0 * (cpu_s - self._proc_sample[1]) / (now - self._proc_sample[0])
        elif self.process.get("cpu_pct") is not None:
            cpu_pct = self.process["cpu_pct"]
        if self._proc_sample is None or now - self._proc_sample[0] >= RATE_WINDOW_S:
            self._proc_sample = (now, cpu_s)
        self.process = {"cpu_pct": cpu_pct, "cpu_seconds": cpu_s, "rss_bytes": rss,
                        "threads": nthreads}

    def model_input(self) -> model.Input:
        return model.Input(sock=self.sock, name=self.name, state=self.state, error=self.error,
                           down_since=self.down_since, status=self.status, rates=self.rates,
                           process=self.process, volumes=self.volumes, jobs=self.jobs)

    def snapshot(self) -> dict:
        """This controller as one JSON-able record (the --json format)."""
        d: dict = {"socket": self.sock, "state": self.state, "error": self.error or None}
        st = self.status
        if st is None:
            d["name"] = self.name
            return d
        d.update({k: st[k] for k in ("name", "pid", "uptime_s", "rpc_socket", "poll_mode")
                  if k in st})
        d["process"] = dict(self.process)
        rr = self.rates.get("reactors", {})
        d["reactors"] = [{**x, **rr.get(x["reactor"], {})} for x in st.get("reactors", [])]
        br = self.rates.get("bdevs", {})
        d["bdevs"] = [{**b, **br.get(b["name"], {})} for b in st.get("bdevs", [])]
        d["exports"] = [{**e, **br.get(e["volume"], {})} for e in exports_of(st)]
        for k, v in st.items():
            if k not in CORE_KEYS:
                d[k] = v
        d["jobs"] = self.jobs
        return d


def _console_event(t: float, obj: str, typ: str, msg: str) -> dict:
    return {"time": t, "controller": obj, "type": typ, "obj": obj, "msg": msg, "source": "console"}


def _console_event(t: float, obj: str, typ: str, msg: str) -> dict:
    return {"time": t, "controller": obj, "type": typ, "obj": obj, "msg": msg, "source": "console"}



# ---- the console ------------------------------------------------------------------------

class ConsoleApp:
    def __init__(self, sockets: list, refresh_hz: float = 4.0, timeout: float = 1.0,
                 footer: Optional[Callable[[], str]] = None, witness: Any = None):
        self.sources = [Source(s, timeout=timeout) for s in sockets]
        self.witness = witness  # a witness.WitnessProbe (the pair's witness), or None
        self.refresh_hz = max(0.2, min(30.0, refresh_hz))
        self.events: deque = deque(maxlen=500)
        self.paused = False
        self.focus = 0                # index into sources, len(sources) = the event log
        self.footer = footer
        self.frames = 0
        self._drawn: deque = deque(maxlen=64)  # monotonic times of the last redraws
        self.lock = threading.Lock()           # the event log
        self._stop = threading.Event()
        self._pollers: list = []
        self.ev_back = 0        # event log scrolled up by this many events (0: follow)
        self.scroll: dict = {}  # controller panel index -> first line shown
        self._max_scroll: dict = {}  # the last frame's panels: how far each can scroll
        self._ev_seen = 0
        self._view: Optional[model.ScreenView] = None
        self._view_key: Any = None
        self._alert_seen: dict = {}  # alert key -> when first seen

    @property
    def fps(self) -> float:
        """Measured redraws per second over the last ~2 s."""
        ts = [t for t in self._drawn if t >= self._drawn[-1] - 2.0] if self._drawn else []
        return (len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else 0.0

    def poll(self) -> None:
        """Sample every controller once, in this thread."""
        now = time.time()
        for s in self.sources:
            evs = s.poll(now)
            with self.lock:
                self.events.extend(evs)
        if self.witness is not None:
            evs = self.witness.poll(now)
            with self.lock:
                self.events.extend(evs)
        self.frames += 1

    def start_pollers(self) -> None:
        """One sampling thread per controller at the refresh rate: a controller
        that hangs (SIGSTOP, a wedged RPC server) delays only its own panel."""
        for s in self.sources:
            t = threading.Thread(target=self._poll_loop, args=(s,), daemon=True,
                                 name=f"console-poll-{os.path.basename(s.sock)}")
            t.start()
            self._pollers.append(t)
        if self.witness is not None:
            t = threading.Thread(target=self._poll_witness, daemon=True, name="console-witness")
            t.start()
            self._pollers.append(t)

    def _poll_witness(self) -> None:
        while not self._stop.wait(WITNESS_POLL_S):
            if not self.paused:
                evs = self.witness.poll(time.time())
                if evs:
                    with self.lock:
                        self.events.extend(evs)

    def _poll_loop(self, src: Source) -> None:
        period = 1.0 / self.refresh_hz
        nxt = time.monotonic()
        while not self._stop.is_set():
            if not self.paused:
                evs = src.poll(time.time())
                if evs:
                    with self.lock:
                        self.events.extend(evs)
            nxt += period
            now = time.monotonic()
            if nxt < now:
                nxt = now + period
            self._stop.wait(nxt - now)

    def snapshot(self) -> dict:
        with self.lock:
            events = list(self.events)[-100:]
        ctrls = []
        for s in self.sources:
            with s.lock:
                ctrls.append(s.snapshot())
        snap = {"time": time.time(), "controllers": ctrls, "events": events}
        v = self.view()
        snap["volumes"] = [dataclasses.asdict(r) for r in v.volumes]
        snap["pair"] = dataclasses.asdict(v.pair) if v.pair is not None else None
        snap["alerts"] = [dataclasses.asdict(a) for a in v.alerts]
        if self.witness is not None:
            snap["witness"] = self.witness.snapshot()
        return snap

    def close(self) -> None:
        self._stop.set()
        for t in self._pollers:
            t.join(max(2.0, 2 * max(s.timeout for s in self.sources)))
        for s in self.sources:
            s.close()
        if self.witness is not None:
            self.witness.close()

    # -- drawing --------------------------------------------------------------------
    def view(self) -> model.ScreenView:
        """The screen's content, rebuilt only when a controller brought a new
        sample (or went down) or the witness changed: between samples a frame
        redraws the same view."""
        w = self.witness.snapshot() if self.witness is not None else None
        key = (tuple(s.version for s in self.sources), json.dumps(w, sort_keys=True))
        if self._view is not None and self._view_key == key:
            return self._view
        inputs = []
        for s in self.sources:
            with s.lock:
                inputs.append(s.model_input())
        self._view = model.build(inputs, time.time(), w, self._alert_seen)
        self._view_key = key
        return self._view

    def ui(self) -> render.Ui:
        hist = {}
        for s in self.sources:
            with s.lock:
                for (kind, name), vals in s.history.items():
                    if kind == "iops":
                        hist[(s.name, kind, name)] = tuple(vals)
        with self.lock:
            # a scrolled log stays on the same events while new ones arrive
            if self.ev_back and len(self.events) != self._ev_seen:
                self.ev_back += len(self.events) - self._ev_seen
            self._ev_seen = len(self.events)
            events = list(self.events)
        return render.Ui(focus=self.focus, scroll=self.scroll, ev_back=self.ev_back,
                         paused=self.paused, fps=self.fps,
                         footer=self.footer() if self.footer else "", events=events,
                         history=hist)

    def render(self, width: int, height: int, console: Optional[Console] = None):
        """The whole screen as exactly `height` lines or fewer (render.screen)."""
        v = self.view()
        lines, self._max_scroll = render.screen(dataclasses.replace(v, time=time.time()),
                                                width, height, self.ui(), console)
        return lines

    def render_plain(self, width: int = 120) -> str:
        return render.plain(self.view(), width, self.ui())

    # -- keys -----------------------------------------------------------------------
    KEYS = {"\x1b[A": "up", "\x1b[B": "down", "\x1b[5~": "pgup", "\x1b[6~": "pgdn",
            "\x1b[F": "end", "\x1b[4~": "end", "\x1bOF": "end", "\x1b[H": "home",
            "\x1bOA": "up", "\x1bOB": "down"}

    def keys(self, data: str) -> bool:
        """Handle what one read of stdin returned (escape sequences whole); False to quit."""
        i = 0
        while i < len(data):
            for seq, name in self.KEYS.items():
                if data.startswith(seq, i):
                    i += len(seq)
                    self.key(name)
                    break
            else:
                if not self.key(data[i]):
                    return False
                i += 1
        return True

    def key(self, k: str) -> bool:
        """Handle one key; False to quit. Arrows, PgUp/PgDn, Home/End (and k/j, G)
        scroll the focused panel: a controller's lines, or the event log."""
        if k in ("q", "Q", "\x03"):
            return False
        if k in ("p", "P", " "):
            self.paused = not self.paused
        elif k == "\t":
            self.focus = (self.focus + 1) % (len(self.sources) + 1)
        else:
            step = {"up": 1, "k": 1, "down": -1, "j": -1, "pgup": 10, "pgdn": -10,
                    "home": 10 ** 6, "end": -10 ** 6, "G": -10 ** 6}.get(k)
            if step is None:
                return True
            if self.focus == len(self.sources):  # the event log: back in time
                with self.lock:
                    n = len(self.events)
                self.ev_back = max(0, min(n - 1, self.ev_back + step)) if n else 0
            else:  # a controller panel taller than its region: its lines
                top = self._max_scroll.get(self.focus, 0)
                self.scroll[self.focus] = max(0, min(top, self.scroll.get(self.focus, 0) - step))
        return True

    # -- loops ----------------------------------------------------------------------
    def run_live(self, duration: Optional[float] = None) -> int:
        period = 1.0 / self.refresh_hz
        # COLUMNS/LINES in the environment would pin rich to one size: follow the tty
        con = Console(_environ={k: v for k, v in os.environ.items()
                                if k not in ("COLUMNS", "LINES")})
        stdin_fd = None
        old_attr = None
        if sys.stdin.isatty():
            import termios
            import tty

            stdin_fd = sys.stdin.fileno()
            old_attr = termios.tcgetattr(stdin_fd)
            tty.setcbreak(stdin_fd)
        end = time.monotonic() + duration if duration else None
        try:
            with Live(console=con, screen=True, auto_refresh=False, transient=True,
                      redirect_stdout=False, redirect_stderr=False) as live:
                self.poll()  # the first frame has figures
                self.start_pollers()
                nxt = time.monotonic()
                while True:
                    w, h = con.size
                    live.update(self.render(w, h, con), refresh=True)
                    self._drawn.append(time.monotonic())
                    nxt += period
                    now = time.monotonic()
                    if nxt < now - period:  # far behind (stopped, slow terminal): no burst
                        nxt = now
                    # a frame a little late (a busy host) keeps the schedule: the next
                    # comes sooner, so the rate holds on average
                    if end is not None and now >= end:
                        return 0
                    if not self._wait_keys(stdin_fd, nxt - now):
                        return 0
        except KeyboardInterrupt:
            return 0
        finally:
            if old_attr is not None:
                import termios

                termios.tcsetattr(stdin_fd, termios.TCSADRAIN, old_attr)

    def _wait_keys(self, fd: Optional[int], timeout: float) -> bool:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            if fd is None:
                time.sleep(left)
                return True
            r, _, _ = select.select([fd], [], [], left)
            if r:
                data = os.read(fd, 64).decode(errors="replace")
                if not data:  # stdin closed: keep running without keys
                    fd = None
                    continue
                if not self.keys(data):
                    return False
                return True  # redraw at once after a key

    def run_lines(self, duration: Optional[float] = None, every: float = 5.0) -> int:
        """Not a terminal: one summary line per controller every few seconds."""
        period = 1.0 / self.refresh_hz
        end = time.monotonic() + duration if duration else None
        last = time.monotonic()  # first line once there is a rate to show
        try:
            while end is None or time.monotonic() < end:
                self.poll()
                if time.monotonic() - last >= every:
                    last = time.monotonic()
                    for line in self.summary_lines():
                        print(line, flush=True)
                time.sleep(period)
        except KeyboardInterrupt:
            pass
        return 0

    def _witness_line(self) -> str:
        w = self.witness
        rtt = f" rtt {w.rtt_ms:.1f} ms" if w.rtt_ms is not None else ""
        return f"witness {w.endpoint}: {w.state}{rtt}" + (f" ({w.error})" if w.error else "")

    def summary_lines(self) -> list:
        out = []
        if self.witness is not None:
            out.append(f"{time.strftime('%H:%M:%S')} {self._witness_line()}")
        for s in self.sources:
            if s.state != "up":
                out.append(f"{time.strftime('%H:%M:%S')} {s.name}: {s.state} ({s.error})")
                continue
            br = s.rates.get("bdevs", {})
            iops = sum(r["iops"] for r in br.values())
            mibps = sum(r["mibps"] for r in br.values())
            busy = ", ".join(f"{r['busy_pct_now']:.0f}%" for r in s.rates.get("reactors", {})
                             .values())
            cpu = s.process.get("cpu_pct")
            out.append(f"{time.strftime('%H:%M:%S')} {s.name}: {iops:,.0f} IOPS {mibps:,.1f} MiB/s"
                       f"  reactors busy {busy}  cpu "
                       f"{'-' if cpu is None else f'{cpu:.0f}%'}")
        return out


def run(sockets: list, once: bool = False, as_json: bool = False, refresh_hz: float = 4.0,
        interval: float = 0.5, duration: Optional[float] = None, witness: Any = None) -> int:
    """`srrs console`; returns the exit code (1 when --once finds a controller down).
    witness: a WitnessProbe of the pair's witness (--pair), shown in the header."""
    app = ConsoleApp(sockets, refresh_hz=refresh_hz, witness=witness)
    try:
        if once:
            app.poll()
            if interval > 0 and any(s.state == "up" for s in app.sources):
                time.sleep(interval)
                app.poll()
            if as_json:
                print(json.dumps(app.snapshot(), indent=2, sort_keys=True))
            else:
                width = max(100, min(200, _term_width()))
                sys.stdout.write(app.render_plain(width))
            return 0 if all(s.state == "up" for s in app.sources) else 1
        if sys.stdout.isatty():
            return app.run_live(duration)
        return app.run_lines(duration)
    finally:
        app.close()


def _term_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 120
