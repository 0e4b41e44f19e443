"""The console's renderer (docs/architecture.md, Console): a `ScreenView`
(ctrl/console_model.py) and a terminal size in, rich renderables out. Pure:
no RPC, no clock, no terminal — the app (ctrl/console.py) passes the view,
the size and its UI state (focus, scroll, pause, fps), and the tests render
it into a recording Console and read the text.

Nothing is cut off: a long NQN or path is elided in the middle (its
distinguishing tail stays), a table drops whole low-priority columns rather
than squeezing cells into ellipses, and a volume table taller than its room
ends with "+N more volumes". Sections with no data are left out, not shown
as an empty label.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.segment import Segment
from rich.text import Text

from .console_model import (
    ClusterPanel,
    ControllerView,
    PairView,
    ScreenView,
    VolumeRow,
    fmt_bytes,
    fmt_duration,
)

SPARK = "▁▂▃▄▅▆▇█"
EVENTS_MIN_H = 4
ALERTS_MAX = 6
_MEASURE = Console(file=io.StringIO(), force_terminal=True, color_system="truecolor",
                   _environ={})


@dataclass
class Ui:
    """What the app's keys and clock decide: the renderer only reads it."""
    focus: int = 0                 # index into controllers; len(controllers) = the event log
    scroll: dict = field(default_factory=dict)
    ev_back: int = 0
    paused: bool = False
    fps: float = 0.0
    footer: str = ""
    events: list = field(default_factory=list)
    history: dict = field(default_factory=dict)   # (controller, kind, bdev) -> values


# ---- formatting -----------------------------------------------------------------------

def fmt_num(x: Optional[float]) -> str:
    if x is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}" if abs(x) >= 10 or x == 0 else f"{x:.1f}"


def fmt_lat(us: Optional[float]) -> str:
    """A latency in microseconds: '-' when no I/O completed."""
    if us is None:
        return "-"
    return f"{us:.1f}" if us < 100 else fmt_num(us)


def elide(s: str, width: int) -> str:
    """s in at most `width` cells, the middle replaced by '…': an NQN or a path
    differs at its end (volume, device), so the tail is kept longer."""
    if len(s) <= width:
        return s
    if width <= 1:
        return "…"[:width]
    tail = (width - 1) * 2 // 3
    return s[:width - 1 - tail] + "…" + s[len(s) - tail:]


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


def state_style(v: str) -> str:
    v = v.lower()
    if v in ("up", "running", "paired", "optimized", "connected", "ok", "in sync", "active",
             "listening", "done"):
        return "green"
    if v in ("down", "unreachable", "fenced", "inaccessible", "failed", "error", "missing", "degraded",
             "stopped"):
        return "bold red"
    if v in ("solo", "resync", "non-optimized", "connecting", "warning", "change", "starting"):
        return "yellow"
    return ""


_ANA_SHORT = {"optimized": "optimized", "non-optimized": "non-opt", "inaccessible": "inaccess",
              "change": "change", "vhost": "vhost"}


# ---- a grid of cells as one Text --------------------------------------------------------

def grid(cols: list, rows: list) -> Text:
    """A table as one Text: rich's Table measures every cell in several
    passes, which would be most of a frame's CPU. cols: [(title, "left"|"right")];
    a cell is a str or a Text. One space of padding each side, like box.SIMPLE_HEAD."""
    widths = [max([len(name)] + [_len(r[i]) for r in rows]) for i, (name, _) in enumerate(cols)]
    t = Text(no_wrap=True, overflow="crop")
    plain: list = []

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
    t.append("".join(plain).rstrip())
    plain.clear()
    t.append("\n" + "─" * (sum(w + 3 for w in widths) - 1), style="dim")
    for r in rows:
        plain.append("\n")
        for i, (_, j) in enumerate(cols):
            cell(r[i], widths[i], j)
        plain[-1] = plain[-1].rstrip() if isinstance(plain[-1], str) else plain[-1]
    t.append("".join(plain))
    return t


def _len(v) -> int:
    return v.cell_len if isinstance(v, Text) else len(str(v))


def fit_columns(cols: list, width: int) -> list:
    """cols: [(prio, title, justify, cells)], prio 1 = always. Drops the
    highest prio numbers first until the table fits `width`; returns the kept
    columns in their order."""
    keep = list(cols)

    def need(cs) -> int:
        return sum(max([len(c[1])] + [_len(x) for x in c[3]]) + 3 for c in cs)
    while need(keep) > width:
        worst = max((c[0] for c in keep), default=1)
        if worst <= 1:
            break
        i = max(i for i, c in enumerate(keep) if c[0] == worst)
        del keep[i]
    return keep


# ---- sections ---------------------------------------------------------------------------

def header(v: ScreenView, ui: Ui, width: int) -> Text:
    t = Text.assemble((" SRRS console ", "bold reverse"), " ")
    for c in v.controllers:
        t.append(f" {c.name} ", style="bold")
        t.append("●" if c.state == "up" else "○", style="green" if c.state == "up" else "bold red")
    w = v.witness
    if w is not None:
        t.append(" witness ", style="bold")
        t.append("●" if w.get("state") == "up" else "○",
                 style="green" if w.get("state") == "up" else "bold red")
        if w.get("rtt_ms") is not None:
            t.append(f" {w['rtt_ms']:.1f} ms", style="dim")
    t.append(f"   {ui.fps:.1f} fps", style="dim")
    if ui.paused:
        t.append("   PAUSED", style="bold yellow reverse")
    if ui.footer:
        t.append(f"   {ui.footer}", style="yellow")
    right = f"q quit · p pause · tab panel · ↑↓ scroll   {time.strftime('%H:%M:%S', time.localtime(v.time))} "
    pad = width - t.cell_len - len(right)
    if pad > 0:
        t.append(" " * pad)
        t.append(right, style="dim")
    t.no_wrap, t.overflow = True, "crop"
    return t


_LEVEL_STYLE = {"ok": "green", "warning": "yellow", "error": "bold red"}


def pair_panel(p: PairView, width: int) -> Panel:
    body = Text(p.sentence, style=_LEVEL_STYLE.get(p.level, ""))
    if p.detail:
        body.append("\n")
        body.append(p.detail, style="dim")
    return Panel(body, title=Text.assemble((f" pair {p.name} ", "bold"),
                                           (f"{p.state} ", state_style(p.state))),
                 title_align="left", box=box.ROUNDED, padding=(0, 1),
                 border_style=_LEVEL_STYLE.get(p.level, "blue"))


def alerts_panel(alerts, width: int, limit: int = ALERTS_MAX) -> Optional[Panel]:
    if not alerts:
        return None
    t = Text(no_wrap=True, overflow="ellipsis")
    inner = width - 4
    shown = alerts[:limit] if len(alerts) > limit else alerts
    if len(alerts) > limit:
        shown = alerts[:limit - 1]
    for i, a in enumerate(shown):
        if i:
            t.append("\n")
        when = time.strftime("%H:%M:%S", time.localtime(a.time)) if a.time else "--:--:--"
        t.append(f"{when} ", style="dim")
        t.append(f"{a.level:<7} ", style=_LEVEL_STYLE.get(a.level, ""))
        obj = elide(a.obj, 28)
        t.append(f"{obj}: ", style="bold")
        t.append(elide(a.msg, max(8, inner - 19 - len(obj))))
    if len(shown) < len(alerts):
        t.append(f"\n+{len(alerts) - len(shown)} more alerts", style="dim")
    return Panel(t, title=f" alerts ({len(alerts)}) ", title_align="left", box=box.ROUNDED,
                 padding=(0, 1), border_style="red")


def _mirror_cell(r: VolumeRow) -> Text:
    return Text(r.mirror, style=state_style(r.mirror)) if r.mirror else Text("")


def _resync_cell(r: VolumeRow) -> str:
    if r.resync_pct is not None:
        left = f" {fmt_bytes(r.resync_left)} left" if r.resync_left else ""
        return f"{r.resync_pct:.0f} %{left}"
    if r.mirror == "solo" and r.resync_left:
        return f"{fmt_bytes(r.resync_left)} to copy"
    return ""


def volume_table(v: ScreenView, width: int, max_rows: Optional[int] = None,
                 history: Optional[dict] = None) -> Optional[Text]:
    """The volume table: columns with no data anywhere are left out, the rest
    give way by priority as the width shrinks. max_rows: the rows that fit
    (the last line then says how many more there are)."""
    rows = v.volumes
    if not rows:
        return None
    more = 0
    if max_rows is not None and len(rows) > max_rows:
        shown = rows[:max(1, max_rows - 1)]
        more = len(rows) - len(shown)
    else:
        shown = rows
    paths = []
    for c in v.controllers:
        if any(dict(r.ana).get(c.name) for r in rows):
            paths.append(c.name)
    cols = [(1, "volume", "left", [elide(r.name, 28) for r in shown]),
            (6, "kind", "left", [r.kind for r in shown]),
            (1, "size", "right", [fmt_bytes(r.size) for r in shown])]
    if any(r.used is not None for r in rows):
        cols.append((2, "used", "right", [fmt_bytes(r.used) if r.used is not None else "-"
                                          for r in shown]))
    if any(r.tenant for r in rows):
        cols.append((4, "tenant", "left", [elide(r.tenant, 16) or "-" for r in shown]))
    for p in paths:
        cells = []
        for r in shown:
            s = dict(r.ana).get(p)
            cells.append(Text(_ANA_SHORT.get(s, s), style=state_style(s)) if s else "-")
        cols.append((2, f"path {p}", "left", cells))
    if any(r.mirror for r in rows):
        cols.append((2, "mirror", "left", [_mirror_cell(r) for r in shown]))
    if any(_resync_cell(r) for r in rows):
        cols.append((2, "resync", "right", [_resync_cell(r) or "-" for r in shown]))
    if any(r.resync_eta_s for r in rows):
        cols.append((2, "ETA", "right", [fmt_duration(r.resync_eta_s) if r.resync_eta_s else "-"
                                         for r in shown]))
    cols += [(2, "r IOPS", "right", [fmt_num(r.read_iops) for r in shown]),
             (3, "w IOPS", "right", [fmt_num(r.write_iops) for r in shown]),
             (2, "MiB/s", "right", [f"{r.mibps:.1f}" for r in shown]),
             (5, "p50 us", "right", [fmt_lat(r.p50_us) for r in shown]),
             (3, "p99 us", "right", [fmt_lat(r.p99_us) for r in shown]),
             (4, "errors", "right", [Text(str(r.errors), style="bold red" if r.errors else "")
                                     for r in shown])]
    kept = fit_columns(cols, width)
    used = sum(max([len(c[1])] + [_len(x) for x in c[3]]) + 3 for c in kept)
    spark_w = min(60, width - used - 3)
    series = [_sum_series([history.get((c, "iops", b), ()) for c, b in r.bdevs])
              for r in shown] if history and spark_w >= 12 else []
    if any(series):
        kept.append((9, "IOPS, 1 min", "left", [Text(sparkline(x, spark_w), style="cyan")
                                                 for x in series]))
    t = grid([(c[1], c[2]) for c in kept], [list(x) for x in zip(*[c[3] for c in kept])])
    if more:
        t.append(f"\n +{more} more volumes", style="dim")
    return t


def _sum_series(series: list) -> list:
    series = [list(s) for s in series if s]
    if len(series) <= 1:
        return series[0] if series else []
    n = max(len(s) for s in series)
    return [sum(s[i - n + len(s)] for s in series if i - n + len(s) >= 0) for i in range(n)]


def export_lines(exports: tuple, width: int) -> list:
    """Per export: its name (NQN or device), ANA and listeners or socket and
    state; then the volumes it serves and each connected host or guest."""
    out = []
    multi = len({e.controller for e in exports}) > 1
    for e in exports:
        t = Text(no_wrap=True, overflow="ellipsis")
        on = f"{e.controller} " if multi else ""
        t.append(f"{on}{e.kind:<5} ", style="bold cyan")
        where = " ".join(e.where)
        if e.kind == "nvmf":
            tail = [("  ANA ", "dim"), (e.ana, state_style(e.ana))] if e.ana else []
            tail += [("  listeners ", "dim"), (where, "")] if where else []
        else:
            tail = [("  ", ""), (elide(where, max(12, width // 3)), "dim"),
                    ("  ", ""), (e.state, state_style(e.state))]
        tail_len = sum(len(x) for x, _ in tail)
        t.append(elide(e.name, max(12, width - t.cell_len - tail_len)), style="bold")
        for x, style in tail:
            t.append(x, style=style)
        out.append(t)
        out.append(_served(e.volumes, width, len(on) + 6))
        for c in e.clients:
            s = Text(" " * (len(on) + 6), no_wrap=True, overflow="ellipsis")
            if isinstance(c, tuple) and len(c) == 3:
                s.append(f"{c[0]}  ", style="dim")
                s.append(elide(c[1], max(12, width - s.cell_len - len(c[2]) - 2)))
                s.append(f"  {c[2]}", style="dim")
            else:
                s.append(str(c))
            out.append(s)
    return out


def _served(vols: tuple, width: int, indent: int) -> Text:
    """'→ 1:db0 2:web1', as many as fit and '+N more' for the rest."""
    t = Text(" " * indent + "→ ", style="dim", no_wrap=True, overflow="ellipsis")
    for k, v in enumerate(vols):
        more = f" +{len(vols) - k} more"
        if t.cell_len + len(v) + 1 + (len(more) if k < len(vols) - 1 else 0) > width:
            t.append(more, style="dim")
            break
        t.append(("" if k == 0 else " ") + v)
    return t


def pool_lines(pools: tuple, width: int) -> list:
    out = []
    multi = len({p.controller for p in pools}) > 1
    for p in pools:
        pct = 100.0 * p.used / p.capacity if p.capacity else 0.0
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f"{p.controller} " if multi else "", style="bold cyan")
        t.append(f"{p.name} ", style="bold")
        t.append(p.health, style=state_style(p.health))
        t.append(f"  {fmt_bytes(p.used)} of {fmt_bytes(p.capacity)} ")
        t.append_text(bar(pct))
        t.append(f" {pct:.0f} %  ")
        ram = sum(1 for f in p.fragments if f[0] == "ram")
        n = len(p.fragments)
        t.append(f"{n} fragment{'s' if n != 1 else ''}" + (f" ({ram} RAM)" if ram else ""),
                 style="dim")
        out.append(t)
        room = width - 6
        for label, used, cap, state, engine in p.fragments:
            s = Text("   ", no_wrap=True, overflow="ellipsis")
            tail = f"  {fmt_bytes(used)} of {fmt_bytes(cap)}  " + (f"{engine}  " if engine else "")
            s.append(elide(label, max(10, room - len(tail) - len(state))))
            s.append(tail, style="dim")
            s.append(state, style=state_style(state))
            out.append(s)
        for name, used, quota in p.tenants:
            s = Text("   tenant ", style="dim", no_wrap=True, overflow="ellipsis")
            s.append(elide(name, 24), style="bold")
            s.append(f"  {fmt_bytes(used)} of {fmt_bytes(quota)} quota")
            out.append(s)
    return out


def _capped(rows: list, cap: Optional[int]) -> tuple:
    """(rows shown, how many more) for a grid of at most cap lines."""
    if cap is None or len(rows) <= cap:
        return rows, 0
    return rows[:max(1, cap - 1)], len(rows) - max(1, cap - 1)


def _pct(used: int, total: int) -> float:
    return 100.0 * used / total if total else 0.0


def _n(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _member_style(up: bool, health: str) -> str:
    return "green" if up and health == "ok" else "yellow" if up else "bold red"


def cluster_lines(c: ClusterPanel, width: int, cap: Optional[int] = None) -> list:
    """The cluster panel's body: a summary line, then members, pairs and
    tenants as grids of at most cap rows each ("+N more …" on the last)."""
    head = Text(no_wrap=True, overflow="ellipsis")
    head.append(f"{_n(c.members_total, 'member')}, {c.members_up} up · "
                f"{_n(c.pairs_total, 'pair')} · {_n(c.tenants_total, 'tenant')} · "
                f"{_n(c.volumes, 'volume')}")
    head.append("  etcd ", style="dim")
    head.append(c.etcd, style="green" if c.etcd == "ok" else "bold yellow")
    head.append(f"  revision {c.revision}  as {c.controller} sees it", style="dim")
    out = [head]

    def table(cols: list, rows: list, total: int, what: str) -> None:
        shown, more = _capped(rows, cap)
        more += max(0, total - len(rows))          # the status itself lists at most so many
        if not shown:
            return
        kept = fit_columns([(p, t, j, [r[k] for r in shown]) for k, (p, t, j) in enumerate(cols)],
                           width)
        t = grid([(c[1], c[2]) for c in kept], [list(x) for x in zip(*[c[3] for c in kept])])
        if more:
            t.append(f"\n +{more} more {what}", style="dim")
        out.append(t)

    compact = cap is not None and cap <= 2
    state = {n: ("up " + h if up else "down") for n, up, _, h, _, _ in c.members}
    if not compact:
        table([(1, "member", "left"), (1, "state", "left"), (2, "pair", "left"),
               (1, "allocated", "right"), (1, "capacity", "right"), (3, "use", "left")],
              [[elide(n, 24), Text(state[n], style=_member_style(up, h)), elide(p, 24) or "-",
                fmt_bytes(a), fmt_bytes(cp), bar(_pct(a, cp))]
               for n, up, p, h, a, cp in c.members], c.members_total, "members")
    table([(1, "pair", "left"), (2 if compact else 5, "controllers", "left"),
           (1, "free", "right"), (2, "allocated", "right"), (1, "capacity", "right"),
           (4, "use", "left"), (1, "volumes", "right")],
          [[elide(n, 28), Text(", ".join(f"{x} {state.get(x, 'down')}" for x in nodes),
                               style="" if up == len(nodes) else "yellow"),
            fmt_bytes(cp - a), fmt_bytes(a), fmt_bytes(cp), bar(_pct(a, cp)), str(nv)]
           for n, nodes, up, a, cp, nv in c.pairs], c.pairs_total, "pairs")
    if compact:     # a small screen: the tenants on one line, fullest first
        t = Text("tenants ", style="dim", no_wrap=True, overflow="ellipsis")
        for k, (n, u, q, _) in enumerate(sorted(c.tenants, key=lambda x: -_pct(x[1], x[2]))):
            t.append(("" if k == 0 else " · ") + f"{elide(n, 24)} {fmt_bytes(u)} of "
                     f"{fmt_bytes(q)} ({_pct(u, q):.0f} %)")
        if c.tenants:
            out.append(t)
        return out
    table([(1, "tenant", "left"), (1, "used", "right"), (1, "quota", "right"),
           (3, "quota use", "left"), (2, "volumes", "right")],
          [[elide(n, 24), fmt_bytes(u), fmt_bytes(q), bar(_pct(u, q)), str(nv)]
           for n, u, q, nv in c.tenants], c.tenants_total, "tenants")
    return out


def controller_panel(c: ControllerView, width: int, focused: bool, compact: bool,
                     history: Optional[dict] = None) -> Panel:
    up = c.state == "up"
    if up:
        title = Text.assemble((f" {c.name} ", "bold"), ("● up ", "green"))
        if c.pair_state:
            title.append(" pair ", style="dim")
            title.append(f"{c.pair_state} ", style=state_style(c.pair_state) or "bold")
    else:
        title = Text.assemble((f" {c.name} ", "bold"), ("✖ DOWN " if c.state == "down"
                                                        else "○ connecting ", "bold red"))
    items: list = []
    inner = width - 4
    if not up:
        since = f" since {time.strftime('%H:%M:%S', time.localtime(c.down_since))}" \
            if c.down_since else ""
        msg = f"down{since}: {c.error} — reconnecting at "
        items.append(Text(msg + elide(c.sock, max(12, inner - len(msg))), style="bold red"))
    if c.pid is not None:
        head = Text(no_wrap=True, overflow="ellipsis")
        head.append_text(Text.assemble(
            ("pid ", "dim"), str(c.pid), ("  up ", "dim"), fmt_duration(c.uptime_s),
            ("  poll ", "dim"), c.poll_mode))
        if c.cpu_pct is not None:
            head.append_text(Text.assemble(("  CPU ", "dim"), f"{c.cpu_pct:.1f}%"))
        if c.rss_bytes is not None:
            head.append_text(Text.assemble(("  RSS ", "dim"), fmt_bytes(c.rss_bytes)))
        if c.threads is not None and inner >= 70:
            head.append_text(Text.assemble(("  threads ", "dim"), str(c.threads)))
        if c.metrics and inner - head.cell_len >= 30:
            head.append("  metrics ", style="dim")
            head.append(c.metrics)
        rpc = c.rpc_socket or c.sock
        if inner - head.cell_len >= 18:
            head.append("  rpc ", style="dim")
            head.append(elide(rpc, inner - head.cell_len - 1))
        items.append(head)
        if c.reactors:
            wide = inner >= 60
            cols = [("reactor", "right"), ("state", "left"), ("mode", "left")]
            cols += ([("busy", "left")] if wide else []) + [("busy %", "right"),
                                                            ("loops/s", "right"),
                                                            ("in-flight", "right")]
            cols += [("cpu", "right")] if wide else []
            rows = []
            for x in c.reactors:
                row = [str(x.reactor), Text(x.state, style=state_style(x.state)), x.poll_mode]
                if wide:
                    row.append(bar(x.busy_pct))
                row += [f"{x.busy_pct:5.1f}", fmt_num(x.loops_per_s), str(x.in_flight)]
                if wide:
                    row.append("-" if x.cpu < 0 else str(x.cpu))
                rows.append(row)
            items.append(grid(cols, rows))
        if c.jobs and not compact:
            items.append(Text("load jobs", style="bold cyan"))
            items.append(_jobs(c.jobs, inner))
    return Panel(Group(*items), title=title, title_align="left",
                 border_style="bright_white" if focused else ("blue" if up else "red"),
                 box=box.HEAVY if focused else box.ROUNDED, padding=(0, 1),
                 style="" if up else "dim")


def _jobs(jobs: tuple, width: int) -> Text:
    names = ["job", "bdev", "reactor", "state", "IOPS", "MiB/s", "p50 us", "p99 us", "errors"]
    keep = names if width >= 96 else ["job", "bdev", "state", "IOPS", "p99 us"]
    rows = []
    for j in jobs:
        res = j.get("result") or {}
        lat = res.get("lat_us", {})
        cells = dict(zip(names, [
            str(j.get("id")), str(j.get("bdev")), str(j.get("reactor")),
            Text(str(j.get("state")), style=state_style(str(j.get("state")))),
            fmt_num(res.get("iops")), f"{res['mibps']:.1f}" if res else "-",
            f"{lat['p50']:.1f}" if lat else "-", f"{lat['p99']:.1f}" if lat else "-",
            str(res.get("errors", "-"))]))
        rows.append([cells[c] for c in keep])
    return grid([(c, "left" if c in ("bdev", "state") else "right") for c in keep], rows)


def events_panel(events: list, height: Optional[int], focused: bool, back: int = 0,
                 width: Optional[int] = None) -> Panel:
    """The last events that fit, or `back` events further up when scrolled."""
    rows = max(1, height - 2) if height is not None else 12
    t = Text(no_wrap=True, overflow="ellipsis")
    end = max(0, len(events) - back)
    shown = events[max(0, end - rows):end]
    for i, ev in enumerate(shown):
        ts = time.strftime("%H:%M:%S", time.localtime(ev.get("time", 0)))
        typ = str(ev.get("type", "?"))
        t.append(f"{ts} ", style="dim")
        t.append(f"{ev.get('controller', '?'):>8} ", style="bold")
        t.append(f"{typ:<12} ", style=state_style(typ) or "cyan")
        room = (width or 200) - 4 - 31  # the time, controller and type columns
        t.append(elide(f"{ev.get('obj', '')}: {ev.get('msg', '')}", max(20, room)))
        if i < len(shown) - 1:
            t.append("\n")
    if not shown:
        t.append("no events yet", style="dim")
    title = f" events (↑{back}, End to follow) " if back else " events "
    return Panel(t, title=title, title_align="left",
                 border_style="bright_white" if focused else "blue",
                 box=box.HEAVY if focused else box.ROUNDED)


# ---- the screen -------------------------------------------------------------------------

class Lines:
    """Rendered lines, laid out again at no cost. A region shorter than them
    keeps the borders and scrolls the inside by `offset`."""

    def __init__(self, lines: list, offset: int = 0):
        self.lines = lines
        self.offset = offset

    def max_offset(self, h: int) -> int:
        return max(0, len(self.lines) - h) if h > 2 else 0

    def window(self, h: int) -> list:
        lines = self.lines
        if 2 < h < len(lines):
            inner = lines[1:-1]
            off = max(0, min(self.offset, len(inner) - (h - 2)))
            return [lines[0]] + inner[off:off + h - 2] + [lines[-1]]
        return lines[:h]

    def __rich_console__(self, console, options):
        for line in self.lines:
            yield from line
            yield Segment.line()


def _lines(con: Console, r, width: int) -> list:
    return con.render_lines(r, con.options.update(width=width, height=None), pad=True)


@lru_cache(maxsize=32)
def _cached_lines(fn, value, width: int, *args) -> list:
    """A panel that changes rarely (the pair, the alerts), drawn once per change."""
    return _lines(_MEASURE, fn(value, width, *args), width)


@lru_cache(maxsize=32)
def _slow_lines(exports: tuple, pools: tuple, width: int, cluster: Optional[ClusterPanel] = None,
                cap: Optional[int] = None) -> tuple:
    """Exports, pools and the cluster rendered to lines, reused while they are
    unchanged: they move slowly and are a big part of a frame's drawing cost."""
    items = []
    if cluster is not None:
        items.append(Panel(Group(*cluster_lines(cluster, width - 4, cap)),
                           title=f" cluster {cluster.prefix} ", title_align="left",
                           box=box.ROUNDED, padding=(0, 1), border_style="blue"))
    if exports:
        items.append(Panel(Group(*export_lines(exports, width - 4)), title=" exports ",
                           title_align="left", box=box.ROUNDED, padding=(0, 1),
                           border_style="blue"))
    if pools:
        items.append(Panel(Group(*pool_lines(pools, width - 4)), title=" pools ",
                           title_align="left", box=box.ROUNDED, padding=(0, 1),
                           border_style="blue"))
    return tuple(_lines(_MEASURE, x, width) for x in items)


def screen(v: ScreenView, width: int, height: Optional[int], ui: Ui,
           con: Optional[Console] = None) -> tuple:
    """(Lines of the whole screen, {panel: max scroll offset}). height None:
    everything, no limits (the --once text)."""
    con = con or _MEASURE
    top: list = []
    if height is not None:
        top.append(_lines(con, header(v, ui, width), width)[:1])
    if v.pair is not None:
        top.append(_cached_lines(pair_panel, v.pair, width))
    if v.alerts:
        top.append(_cached_lines(alerts_panel, tuple(v.alerts), width,
                                 ALERTS_MAX if height is not None else 10 ** 6))
    slow = list(_slow_lines(tuple(v.exports), tuple(v.pools), width, v.cluster,
                            None if height is None else cluster_rows(height)))
    n = len(v.controllers)
    side = n > 1 and width >= 160
    compact = height is not None and height < 30
    pw = width // n if side else width
    panels = [_lines(con, controller_panel(c, pw, ui.focus == i, compact, ui.history), pw)
              for i, c in enumerate(v.controllers)]
    if side and panels:
        ph = max(len(p) for p in panels)
        blank = [Segment(" " * pw)]
        panels = [[sum((p[k] if k < len(p) else blank for p in panels), [])
                   for k in range(ph)]]
    fixed = sum(len(x) for x in top) + sum(len(x) for x in slow)
    if height is None:
        vt = volume_table(v, width - 4, None, ui.history)
        vol = [_lines(con, _vol_panel(vt, len(v.volumes)), width)] if vt is not None else []
        body = sum(top + vol + slow + panels, [])
        ev = _lines(con, events_panel(ui.events, None, False, 0, width), width)
        return Lines(body + ev), {}
    room = height - fixed - sum(len(p) for p in panels) - EVENTS_MIN_H
    vol: list = []
    if v.volumes:
        rows = max(2, room - 4)  # borders and the header row + rule
        vt = volume_table(v, width - 4, rows, ui.history)
        vol = [_lines(con, _vol_panel(vt, len(v.volumes)), width)]
    used = fixed + sum(len(x) for x in vol)
    left = height - used - EVENTS_MIN_H
    offsets: dict = {}
    if sum(len(p) for p in panels) > left:  # not enough room: panels scroll inside
        share = max(3, left // max(1, len(panels)))
        cut = []
        for i, p in enumerate(panels):
            ln = Lines(p, ui.scroll.get(i, 0))
            offsets[i] = ln.max_offset(share)
            cut.append(ln.window(share))
        panels = cut
    body = sum(top + vol + slow + panels, [])
    ev_h = height - len(body)
    if ev_h < 3:  # never more than the screen: the events give way first, then the body
        body = body[:height - 3]
        ev_h = 3
    ev = con.render_lines(events_panel(ui.events, ev_h, ui.focus == n, ui.ev_back, width),
                          con.options.update(width=width, height=ev_h), pad=True)[:ev_h]
    return Lines(body + ev), offsets


def cluster_rows(height: int) -> int:
    """Rows per cluster grid on a screen this high: the volumes and the
    controllers keep most of a small screen."""
    return 2 if height < 50 else 4 if height < 80 else 12


def _vol_panel(t: Text, n: int) -> Panel:
    return Panel(t, title=f" volumes ({n}) ", title_align="left", box=box.ROUNDED,
                 padding=(0, 1), border_style="blue")


def plain(v: ScreenView, width: int, ui: Ui) -> str:
    """The whole view as plain text (no colour, no height limit): --once."""
    con = Console(width=width, no_color=True, force_terminal=False, highlight=False,
                  color_system=None, legacy_windows=False, file=io.StringIO())
    lines, _ = screen(v, width, None, ui, con)
    out = []
    if v.witness is not None:
        w = v.witness
        rtt = f" rtt {w['rtt_ms']:.1f} ms" if w.get("rtt_ms") is not None else ""
        out.append(f"witness {w['endpoint']}: {w['state']}{rtt}"
                   + (f" ({w['error']})" if w.get("error") else ""))
    for line in lines.lines:
        out.append("".join(s.text for s in line).rstrip())
    return "\n".join(out) + "\n"
