"""`srrs console`: the live status console of one or more controllers (docs/architecture.md, Console).

Everything shown comes from each controller's `status`, `events` and
`bench_bdev_results` RPCs, so the console knows no module's internals: the
core's reactors and bdevs are drawn as tables, and any other section of the
status result (nvmf, vhost, pool, pair, metrics, … as those modules land) is
drawn generically — a table per list of records (nested lists as their own
tables, byte units and usage bars where the keys say so), `key value` lines
otherwise — and simply left out when absent.

Rates (IOPS, MiB/s, loops/s, busy % now, process CPU %) are counter deltas
over the last second of samples, and latency percentiles (p50/p99 per bdev)
are those of the bdev's latency histogram's delta over the same window (the
I/Os that completed in it, not all time); sparklines keep one point per
second for the last minute. Exports (NVMe/TCP namespaces, vhost devices)
show the figures of the bdev they serve. Each controller is sampled by its own thread at the refresh
rate, so one that hangs delays only its own panel; one that stops answering
is shown DOWN (its last known layout dimmed, no rates) and is reconnected by
itself, a restarted one (new pid) starts its rates and history over. With
`--pair CONFIG` (ctrl/cli.py) both controllers of a pair are watched and the
pair's witness is pinged once a second (header, event log, `witness` in JSON).

Modes: full screen (rich Live, screen=True, redrawn on our own timer — no
auto-refresh thread, no flicker; keys q quit, p pause, tab next panel,
arrows/PgUp/PgDn/Home/End scroll the event log); `--once` one plain-text
snapshot; `--once --json` the same snapshot as JSON, whose reactor and bdev
records carry the RPC's own field names plus the computed `read_iops`,
`write_iops`, `iops`, `read_mibps`, `write_mibps`, `mibps`, `p50_us`,
`p99_us`, `p999_us`, `lat_ios` (I/Os the percentiles are of; the
percentiles are null when none completed), `loops_per_s`, `busy_pct_now`;
`exports` lists each export with its bdev (`volume`) and the same figures. When stdout is not a terminal, one summary line per
controller is printed every few seconds instead of the full screen.
"""

from __future__ import annotations

import io
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
from rich import box
from rich.console import Console, Group
from rich.layout import Layout
from rich.live import Live
from rich.panel import Panel
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from .iostats import exports_of, interval_latency
from .rpc import RpcClient, RpcError

SPARK = "▁▂▃▄▅▆▇█"
HISTORY_S = 60
RATE_WINDOW_S = 1.0
SLOW_POLL_S = 0.5
WITNESS_POLL_S = 1.0
CORE_KEYS = ("name", "pid", "uptime_s", "rpc_socket", "poll_mode", "reactors", "bdevs")
_BDEV_RATES = (("read_iops", "reads", 1), ("write_iops", "writes", 1),
               ("read_mibps", "bytes_read", 1 / (1 << 20)),
               ("write_mibps", "bytes_written", 1 / (1 << 20)))


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
        self.section_cache: Optional[tuple] = None  # (monotonic, key, framed lines)
        self.plain_cache: Optional[tuple] = None    # (monotonic, width, lines)

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
        self.rates = self._rates()
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

    def _rates(self) -> dict:
        t1, new = self.samples[-1]
        t0, old = self.samples[0]
        dt = t1 - t0
        out: dict = {"window_s": dt, "bdevs": {}, "reactors": {}}
        oldb = {b["name"]: b for b in old.get("bdevs", [])}
        for b in new.get("bdevs", []):
            o = oldb.get(b["name"])
            r = {}
            for key, field, scale in _BDEV_RATES:
                d = (b[field] - o[field]) if o is not None and dt > 0 else 0
                r[key] = max(0.0, d * scale / dt) if dt > 0 else 0.0
            r["iops"] = r["read_iops"] + r["write_iops"]
            r["mibps"] = r["read_mibps"] + r["write_mibps"]
            if dt > 0 and o is not None:
                r.update(interval_latency(b, o))
            else:
                r.update(p50_us=None, p99_us=None, p999_us=None, lat_ios=0)
            out["bdevs"][b["name"]] = r
        oldr = {x["reactor"]: x for x in old.get("reactors", [])}
        for x in new.get("reactors", []):
            o = oldr.get(x["reactor"])
            if o is None or dt <= 0:
                out["reactors"][x["reactor"]] = {"busy_pct_now": x["busy_pct"], "loops_per_s": 0.0}
                continue
            busy = x["busy_ns"] - o["busy_ns"]
            total = busy + (x["idle_ns"] - o["idle_ns"]) + (x["sleep_ns"] - o["sleep_ns"])
            out["reactors"][x["reactor"]] = {
                "busy_pct_now": 100.0 * busy / total if total > 0 else 0.0,
                "loops_per_s": max(0.0, (x["loops"] - o["loops"]) / dt),
            }
        return out

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


# ---- formatting -----------------------------------------------------------------------

def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n:.0f} B"


def fmt_num(x: Optional[float]) -> str:
    if x is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}" if abs(x) >= 10 or x == 0 else f"{x:.1f}"


def fmt_duration(s: float) -> str:
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def sparkline(values, width: int) -> str:
    """The last `width` values as block characters, scaled to their own maximum."""
    vals = list(values)[-width:] if width > 0 else []
    if not vals:
        return ""
    top = max(vals)
    if top <= 0:
        return (SPARK[0] * len(vals)).rjust(width)
    return "".join(SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1) + 0.5))]
                   for v in vals).rjust(width)


def bar(pct: float, width: int = 10) -> Text:
    pct = max(0.0, min(100.0, pct))
    n = int(round(pct / 100 * width))
    style = "red" if pct >= 90 else "yellow" if pct >= 60 else "green"
    return Text("█" * n, style=style) + Text("·" * (width - n), style="dim")


_BYTE_KEYS = ("size", "capacity", "allocated", "used", "free", "ram", "quota", "dirty_bytes")
_USED_KEYS = ("allocated", "used")
_TOTAL_KEYS = ("capacity", "size", "quota")


def _is_bytes_key(k: Any) -> bool:
    k = str(k)
    return k in _BYTE_KEYS or k.endswith("_bytes") or k.endswith("_size")


def _scalar(v: Any, key: Any = "") -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else ("yes" if v else "no")
    if isinstance(v, (int, float)) and v > 1e9 and (key in ("time", "ts", "since")
                                                      or str(key).endswith(("_time", "_at"))):
        return time.strftime("%H:%M:%S", time.localtime(v))  # a unix time
    if isinstance(v, (int, float)) and _is_bytes_key(key):
        return fmt_bytes(v)
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e3 else fmt_num(v)
    if isinstance(v, (list, tuple)):
        return ", ".join(_scalar(x) for x in v) if v else "-"
    if isinstance(v, dict):
        return " ".join(f"{k}={_scalar(x, k)}" for k, x in v.items())
    return str(v)


def _usage(r: dict) -> Optional[float]:
    """Percent used of a record with allocated/used and capacity/size (pools, fragments)."""
    used = next((r[k] for k in _USED_KEYS if isinstance(r.get(k), (int, float))), None)
    total = next((r[k] for k in _TOTAL_KEYS if isinstance(r.get(k), (int, float))), None)
    if used is None or not total:
        return None
    return 100.0 * used / total


def _state_style(v: str) -> str:
    v = v.lower()
    if v in ("up", "running", "paired", "optimized", "connected", "live", "ok", "synced", "done"):
        return "green"
    if v in ("down", "fenced", "inaccessible", "failed", "broken", "error", "stopped", "missing"):
        return "bold red"
    if v in ("solo", "resync", "degraded", "non-optimized", "connecting", "stopping"):
        return "yellow"
    return ""


def render_section(key: str, val: Any, width: int) -> list:
    """A status section the console has no specific view of (nvmf, vhost, pool,
    pair, …): tables for lists of records (nested lists of records as their own
    tables, a usage bar where a record has used/allocated and size/capacity),
    key/value lines for the rest."""
    title = Text(key, style="bold cyan")
    if isinstance(val, list) and not val:
        return [Text.assemble(title, ("  none", "dim"))]
    if isinstance(val, list):
        return _records(title, key, val, width=width)
    if not isinstance(val, dict):
        return [Text.assemble(title, "  ", _scalar(val, key))]
    out: list = []
    line = Text.assemble(title, " ")
    _kv(line, {k: v for k, v in val.items() if not _is_records(v) and not isinstance(v, dict)})
    u = _usage(val)
    if u is not None:
        line.append("  ")
        line.append_text(bar(u))
        line.append(f" {u:.0f}%")
    out.append(line)
    for k, v in val.items():
        if _is_records(v):
            out.extend(_records(Text(f"{key}.{k}", style="cyan"), f"{key}.{k}", v, width=width))
        elif isinstance(v, dict):
            sub = Text(f"  {k}:", style="cyan")
            _kv(sub, v)
            out.append(sub)
    return out


def _is_records(v: Any) -> bool:
    return isinstance(v, list) and any(isinstance(x, dict) for x in v)


def _kv(line: Text, d: dict) -> None:
    for k, v in d.items():
        s = _scalar(v, k)
        line.append(f" {k} ", style="dim")
        line.append(s, style=_state_style(s) if isinstance(v, str) else "")


def _records(title: Text, path: str, rows: list, depth: int = 0, width: int = 200) -> list:
    cols: list = []
    nested: list = []
    for r in rows:
        if isinstance(r, dict):
            for k, v in r.items():
                if _is_records(v):
                    if k not in nested:
                        nested.append(k)
                elif k not in cols:
                    cols.append(k)
    # the title on its own line: a table title wraps at the table's (narrow) width
    title.no_wrap, title.overflow = True, "ellipsis"
    t = Table(box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False, expand=False)
    if not cols and not nested:
        t.add_column("value")
        for r in rows:
            t.add_row(_scalar(r))
        return [title, t]
    usage = any(isinstance(r, dict) and _usage(r) is not None for r in rows)
    # whole columns while they fit, the rest left out (and counted in the title):
    # squeezing every column into ellipses would make each one unreadable
    room = width - (17 if usage else 0)
    fit: list = []
    for c in cols:
        w = min(28, max([len(str(c))] + [len(_scalar(r.get(c, ""), c)) for r in rows[:50]
                                         if isinstance(r, dict)]))
        if room < w + 3:
            break
        room -= w + 3
        fit.append(c)
    if len(fit) < len(cols):
        title.append(f"  (+{len(cols) - len(fit)} more fields)", style="dim")
    cols = fit
    for c in cols:
        t.add_column(c, overflow="ellipsis", no_wrap=True, max_width=28)
    if usage:
        t.add_column("usage", no_wrap=True)
    for r in rows[:50]:
        r = r if isinstance(r, dict) else {"value": r}
        cells: list = []
        for c in cols:
            v = r.get(c, "")
            s = _scalar(v, c)
            cells.append(Text(s, style=_state_style(s)) if isinstance(v, str) else s)
        if usage:
            u = _usage(r)
            cells.append(bar(u) + Text(f" {u:.0f}%") if u is not None else "")
        t.add_row(*cells)
    out: list = [title, t]
    if depth < 2:
        for i, r in enumerate(rows[:50]):
            if not isinstance(r, dict):
                continue
            ident = next((f"{k} {r[k]}" if k in ("cntlid", "id") else str(r[k])
                          for k in ("name", "nqn", "cntlid", "id", "path") if k in r), str(i))
            for k in nested:
                if _is_records(r.get(k)):
                    sub = f"{path}[{ident}].{k}"
                    out.extend(_records(Text(f"{'  ' * (depth + 1)}{ident} · {k}", style="cyan"),
                                        sub, r[k], depth + 1, width))
    return out


EVENTS_MIN_H = 6
_MEASURE = Console(file=io.StringIO(), force_terminal=True, color_system="truecolor",
                   _environ={})


class _Lines:
    """A panel already rendered to lines: laid out again at no cost. When its
    region is shorter, the borders stay and the inside scrolls by `offset`
    (`max_offset` tells the keys how far it can go)."""

    def __init__(self, lines: list, offset: int = 0):
        self.lines = lines
        self.offset = offset
        self.max_offset = 0

    def __rich_console__(self, console, options):
        lines = self.lines
        h = options.height
        if h is not None and 2 < h < len(lines):
            inner = lines[1:-1]
            self.max_offset = len(inner) - (h - 2)
            off = max(0, min(self.offset, self.max_offset))
            lines = [lines[0]] + inner[off:off + h - 2] + [lines[-1]]
        elif h is not None and h < len(lines):
            lines = lines[:h]
        for line in lines:
            yield from line
            yield Segment.line()


SECTIONS_EVERY_S = 1.0


def _section_lines(src: Source, sections: list, width: int) -> _Lines:
    """The export/pool/pair sections, rendered to lines at most once a second:
    they are most of a big panel's drawing cost and none of its fast figures
    (those are the reactor and bdev rates above them, redrawn every frame)."""
    now = time.monotonic()
    cached = src.plain_cache
    if cached is not None and cached[1] == width and now - cached[0] < SECTIONS_EVERY_S:
        return _Lines(cached[2])
    items: list = []
    for k, v in sections:
        items.extend(render_section(k, v, width))
    lines = _MEASURE.render_lines(Group(*items), _MEASURE.options.update(width=width, height=None),
                                  pad=False)
    src.plain_cache = (now, width, lines)
    return _Lines(lines)


def controller_view(src: Source, width: int, focused: bool, compact: bool,
                    sections: bool = True) -> Panel:
    st = src.status
    up = src.state == "up"
    if up:
        title = Text.assemble((f" {src.name} ", "bold"), ("● up ", "green"))
        for k, v in (st or {}).items():  # a section's own state (pair: PAIRED, SOLO, …)
            if k not in CORE_KEYS and isinstance(v, dict) and isinstance(v.get("state"), str):
                title.append(f" {k} ", style="dim")
                title.append(f"{v['state']} ", style=_state_style(v["state"]) or "bold")
    else:
        title = Text.assemble((f" {src.name} ", "bold"), ("✖ DOWN " if src.state == "down"
                                                          else "○ connecting ", "bold red"))
    items: list = []
    if not up:
        since = f" for {fmt_duration(time.time() - src.down_since)}" if src.down_since else ""
        items.append(Text(f"down{since}: {src.error} — reconnecting at {src.sock}",
                          style="bold red"))
    if st is not None:
        items.extend(_controller_body(src, width, compact, sections))
    return Panel(Group(*items), title=title, title_align="left", border_style=_border(src, focused),
                 box=box.HEAVY if focused else box.ROUNDED, padding=(0, 1),
                 style="" if up else "dim")


def _border(src: Source, focused: bool) -> str:
    return "bright_white" if focused else ("blue" if src.state == "up" else "red")


def controller_lines(src: Source, width: int, focused: bool, compact: bool,
                     con: Console) -> list:
    """The panel as rendered lines. Its fast part (figures that move every frame)
    is drawn each time; the export/pool/pair sections come framed from a cache
    refreshed once a second and are spliced in above the bottom border — drawing
    them is most of a big panel's cost and none of its fast figures."""
    lines = con.render_lines(controller_view(src, width, focused, compact, sections=False),
                             con.options.update(width=width, height=None), pad=False)
    st = src.status
    secs = [(k, v) for k, v in st.items() if k not in CORE_KEYS] if st else []
    if not secs or len(lines) < 2:
        return lines
    bx = box.HEAVY if focused else box.ROUNDED
    key = (width, bx is box.HEAVY, src.state == "up")
    now = time.monotonic()
    c = src.section_cache
    if c is None or c[1] != key or now - c[0] >= SECTIONS_EVERY_S:
        inner = width - 4
        body = con.render_lines(Group(*[x for k, v in secs for x in render_section(k, v, inner)]),
                                con.options.update(width=inner, height=None), pad=True)
        border = con.get_style(_border(src, focused))
        base = con.get_style("" if src.state == "up" else "dim")
        left = [Segment(bx.mid_left, border), Segment(" ", base)]
        right = [Segment(" ", base), Segment(bx.mid_right, border)]
        framed = [left + list(Segment.apply_style(line, base)) + right for line in body]
        c = src.section_cache = (now, key, framed)
    return lines[:-1] + c[2] + lines[-1:]


def _grid(cols: list, rows: list) -> Text:
    """A table of the figures redrawn every frame, as one Text: rich's Table
    measures every cell in several passes, which is most of a frame's CPU.
    Columns are as wide as their widest cell; one space of padding each side
    and a space between, like Table with box.SIMPLE_HEAD."""
    widths = [max([len(name)] + [len(str(r[i])) for r in rows]) for i, (name, _) in
              enumerate(cols)]
    t = Text(no_wrap=True, overflow="crop")
    plain: list = []  # unstyled text not yet appended: one append per run, not per cell

    def cell(v, w: int, justify: str, style: str = "") -> None:
        if isinstance(v, Text) or style:
            c = v if isinstance(v, Text) else Text(str(v), style=style)
            pad = " " * (w - c.cell_len)
            plain.append(" " + pad if justify == "right" else " ")
            t.append("".join(plain))
            plain.clear()
            t.append_text(c)
            plain.append("  " if justify == "right" else pad + "  ")
        else:
            v = str(v)
            pad = " " * (w - len(v))
            plain.append(f" {pad}{v}  " if justify == "right" else f" {v}{pad}  ")

    for i, (name, j) in enumerate(cols):
        cell(name, widths[i], j, "bold")
    t.append("".join(plain))
    plain.clear()
    t.append("\n" + "─" * (sum(w + 3 for w in widths) - 1), style="dim")
    for r in rows:
        plain.append("\n")
        for i, (_, j) in enumerate(cols):
            cell(r[i], widths[i], j)
    t.append("".join(plain))
    return t


def _spare_width(cols: list, rows: list, inner: int, n: int) -> int:
    """Width left for each of n sparkline columns after the other columns' natural
    widths (a cell of padding each side, a divider between), at most one point a second."""
    used = 1
    for i, (name, _) in enumerate(cols):
        used += max([len(name)] + [len(str(r[i])) for r in rows]) + 3
    return max(0, min(HISTORY_S, (inner - used) // n - 3))


# (history kind, column title, style), in the order they give way as the panel narrows
_SPARKS = (("iops", "IOPS, 1 min", "cyan"), ("p99_us", "p99, 1 min", "yellow"),
           ("mibps", "MiB/s, 1 min", "green"), ("p50_us", "p50, 1 min", "magenta"))


def _add_sparks(src: Source, cols: list, rows: list, names: list, inner: int) -> None:
    """As many last-minute sparklines (IOPS, p99, MiB/s, p50 of the bdev in
    `names[i]` for row i) as fit at 12+ points each (one at 8+)."""
    n = 0
    for k in range(len(_SPARKS), 0, -1):
        if _spare_width(cols, rows, inner, k) >= (12 if k > 1 else 8):
            n = k
            break
    if not n:
        return
    w = _spare_width(cols, rows, inner, n)
    for kind, title, style in _SPARKS[:n]:
        cols.append((title, "left"))
        for name, row in zip(names, rows):
            row.append(Text(sparkline(src.history.get((kind, name), ()), w), style=style))


def fmt_lat(us: Optional[float]) -> str:
    """A latency in microseconds: '-' when no I/O completed."""
    if us is None:
        return "-"
    return f"{us:.1f}" if us < 100 else fmt_num(us)


def _short_export(name: str, width: int = 32) -> str:
    """A long NQN keeps its distinctive end: '…io.srrs:v0/ns1'."""
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _controller_body(src: Source, width: int, compact: bool, sections: bool = True) -> list:
    """Columns drop out as the panel narrows (sparklines, then secondary figures),
    so that what remains is never truncated into ellipses."""
    st = src.status
    p = src.process
    cpu = p.get("cpu_pct")
    wide = width >= 110
    head = Text.assemble(
        ("pid ", "dim"), str(st.get("pid", "?")), ("  up ", "dim"),
        fmt_duration(st.get("uptime_s", 0)), ("  poll ", "dim"), str(st.get("poll_mode", "?")),
        ("  CPU ", "dim"), f"{cpu:.1f}%" if cpu is not None else "-",
        ("  RSS ", "dim"), fmt_bytes(p.get("rss_bytes")))
    if wide:
        head.append_text(Text.assemble(("  threads ", "dim"), str(p.get("threads", "-")),
                                       ("  rpc ", "dim"), str(st.get("rpc_socket", src.sock))))
    items: list = [head]
    sparks = not compact and width >= 70
    inner = width - 4  # panel border and padding

    rr = src.rates.get("reactors", {})
    cols = [("reactor", "right")] + ([("state", "left")] if wide else []) + [("mode", "left")]
    cols += ([("busy", "left")] if wide else []) + [("busy %", "right"), ("loops/s", "right"),
                                                    ("in-flight", "right")]
    cols += [("cpu", "right")] if wide else []
    rows = []
    for x in st.get("reactors", []):
        r = rr.get(x["reactor"], {})
        busy = r.get("busy_pct_now", x["busy_pct"])
        row = [str(x["reactor"])]
        if wide:
            row.append(Text(x["state"], style=_state_style(x["state"])))
        row.append(x["poll_mode"])
        if wide:
            row.append(bar(busy))
        row += [f"{busy:5.1f}", fmt_num(r.get("loops_per_s")), str(x["io_outstanding"])]
        if wide:
            row.append("-" if x["cpu"] < 0 else str(x["cpu"]))
        rows.append(row)
    spark_w = _spare_width(cols, rows, inner, 1) if sparks else 0
    if spark_w >= 8:
        cols.append(("busy, last minute", "left"))
        for x, row in zip(st.get("reactors", []), rows):
            row.append(Text(sparkline(src.history.get(("busy", x["reactor"]), ()), spark_w),
                            style="magenta"))
    items.append(_grid(cols, rows))

    br = src.rates.get("bdevs", {})
    cols = [("bdev", "left")] + ([("module", "left"), ("size", "right")] if wide else [])
    cols += [("r IOPS", "right"), ("w IOPS", "right"), ("MiB/s", "right"), ("p50 us", "right"),
             ("p99 us", "right"), ("errors", "right")]
    rows = []
    names = []
    for b in st.get("bdevs", []):
        r = br.get(b["name"], {})
        row = [b["name"]] + ([b["module"], fmt_bytes(b["size"])] if wide else [])
        row += [fmt_num(r.get("read_iops")), fmt_num(r.get("write_iops")),
                f"{r.get('mibps', 0):.1f}", fmt_lat(r.get("p50_us")), fmt_lat(r.get("p99_us")),
                Text(str(b["errors"]), style="bold red" if b["errors"] else "")]
        rows.append(row)
        names.append(b["name"])
    if st.get("bdevs"):
        _add_sparks(src, cols, rows, names, inner if sparks else 0)
        items.append(_grid(cols, rows))
    else:
        items.append(Text("no bdevs", style="dim"))

    exports = exports_of(st)
    if exports:
        cols = [("export", "left"), ("kind", "left"), ("volume", "left"), ("IOPS", "right"),
                ("MiB/s", "right"), ("p50 us", "right"), ("p99 us", "right")]
        rows = []
        for e in exports:
            r = br.get(e["volume"], {})
            rows.append([_short_export(e["export"]), e["kind"], e["volume"], fmt_num(r.get("iops")),
                         f"{r.get('mibps', 0):.1f}", fmt_lat(r.get("p50_us")),
                         fmt_lat(r.get("p99_us"))])
        if not compact:
            _add_sparks(src, cols, rows, [e["volume"] for e in exports], inner if sparks else 0)
        items.append(_grid(cols, rows))

    secs = [(k, v) for k, v in st.items() if k not in CORE_KEYS] if sections else []
    if secs:
        items.append(_section_lines(src, secs, width - 4))

    jobs = src.jobs[-4:]
    if jobs and not compact:
        names = ["job", "bdev", "reactor", "state", "IOPS", "MiB/s", "p50 us", "p99 us", "errors"]
        keep = names if width >= 100 else ["job", "bdev", "state", "IOPS", "p99 us"]
        rows = []
        for j in jobs:
            res = j.get("result") or {}
            lat = res.get("lat_us", {})
            cells = dict(zip(names, [
                str(j.get("id")), str(j.get("bdev")), str(j.get("reactor")),
                Text(str(j.get("state")), style=_state_style(str(j.get("state")))),
                fmt_num(res.get("iops")), f"{res['mibps']:.1f}" if res else "-",
                f"{lat['p50']:.1f}" if lat else "-", f"{lat['p99']:.1f}" if lat else "-",
                str(res.get("errors", "-"))]))
            rows.append([cells[c] for c in keep])
        items.append(Text("load jobs", style="bold cyan"))
        items.append(_grid([(c, "left" if c in ("bdev", "state") else "right") for c in keep],
                           rows))
    return items


def events_view(events: deque, height: int, focused: bool, back: int = 0) -> Panel:
    """The last events that fit, or `back` events further up when scrolled."""
    rows = max(1, height - 2)
    t = Text(no_wrap=True, overflow="ellipsis")
    evs = list(events)
    end = max(0, len(evs) - back)
    shown = evs[max(0, end - rows):end]
    for i, ev in enumerate(shown):
        ts = time.strftime("%H:%M:%S", time.localtime(ev.get("time", 0)))
        typ = str(ev.get("type", "?"))
        t.append(f"{ts} ", style="dim")
        t.append(f"{ev.get('controller', '?'):>8} ", style="bold")
        t.append(f"{typ:<12} ", style=_state_style(typ) or "cyan")
        t.append(f"{ev.get('obj', '')}: {ev.get('msg', '')}")
        if i < len(shown) - 1:
            t.append("\n")
    if not shown:
        t.append("no events yet", style="dim")
    title = f" events (↑{back}, End to follow) " if back else " events "
    return Panel(t, title=title, title_align="left",
                 border_style="bright_white" if focused else "blue",
                 box=box.HEAVY if focused else box.ROUNDED)


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
        self._views: list = []  # the last frame's panels (how far each can scroll)
        self._ev_seen = 0

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
    def header(self, width: int) -> Text:
        t = Text.assemble((" SRRS console ", "bold reverse"), " ")
        for s in self.sources:
            t.append(f" {s.name} ", style="bold")
            t.append("●" if s.state == "up" else "○",
                     style="green" if s.state == "up" else "bold red")
        w = self.witness
        if w is not None:
            t.append(" witness ", style="bold")
            t.append("●" if w.state == "up" else "○",
                     style="green" if w.state == "up" else "bold red")
            if w.rtt_ms is not None:
                t.append(f" {w.rtt_ms:.1f} ms", style="dim")
        t.append(f"   {self.fps:.1f} fps", style="dim")
        if self.paused:
            t.append("   PAUSED", style="bold yellow reverse")
        extra = self.footer() if self.footer else ""
        if extra:
            t.append(f"   {extra}", style="yellow")
        right = f"q quit · p pause · tab panel · ↑↓ scroll   {time.strftime('%H:%M:%S')} "
        pad = width - t.cell_len - len(right)
        if pad > 0:
            t.append(" " * pad)
            t.append(right, style="dim")
        return t

    def render(self, width: int, height: int, console: Optional[Console] = None) -> Layout:
        """The whole screen. Each controller panel is rendered once to lines here,
        so its real height is known: panels take what they need and the event
        log gets the rest (at least EVENTS_MIN_H rows)."""
        con = console or _MEASURE
        root = Layout()
        n = len(self.sources)
        compact = height < 30 or (n > 1 and width < 160 and height < 50)
        side = n > 1 and width >= 160
        pw = width // n if side else width
        body_max = max(0, height - 1 - EVENTS_MIN_H)
        views = []
        for i, s in enumerate(self.sources):
            with s.lock:
                lines = controller_lines(s, pw, self.focus == i, compact and self.focus != i, con)
            views.append(_Lines(lines, self.scroll.get(i, 0)))
        self._views = views
        heights = [len(v.lines) for v in views]
        if side:
            body_h = min(body_max, max(heights, default=0))
        else:
            body_h = min(body_max, sum(heights))
        panels = []
        for i, v in enumerate(views):
            lay = Layout(v, name=f"c{i}")
            if not side:
                if sum(heights) <= body_max:
                    lay.size = heights[i]
                else:  # not enough room: share it, the focused panel first
                    lay.ratio = 3 if self.focus == i else 2
            panels.append(lay)
        ev_h = height - 1 - body_h
        root.split_column(Layout(self.header(width), name="header", size=1),
                          Layout(name="body", size=body_h), Layout(name="events", size=ev_h))
        if side:
            root["body"].split_row(*panels)
        elif panels:
            root["body"].split_column(*panels)
        with self.lock:
            # a scrolled log stays on the same events while new ones arrive
            if self.ev_back and len(self.events) != self._ev_seen:
                self.ev_back += len(self.events) - self._ev_seen
            self._ev_seen = len(self.events)
            root["events"].update(events_view(self.events, ev_h, self.focus == n, self.ev_back))
        return root

    def render_plain(self, width: int = 120) -> str:
        con = Console(width=width, no_color=True, force_terminal=False, highlight=False,
                      color_system=None, legacy_windows=False)
        with con.capture() as cap:
            if self.witness is not None:
                con.print(self._witness_line())
            for s in self.sources:
                with s.lock:
                    view = controller_view(s, width, False, False)
                con.print(view)
            with self.lock:
                con.print(events_view(self.events, 12, False))
        return cap.get()

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
                views = self._views
                top = views[self.focus].max_offset if self.focus < len(views) else 0
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
