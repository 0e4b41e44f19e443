"""The console's model and views on made-up status results: rates from counter
deltas, a restarted controller, and sections of a shape the console does not
know (SECTIONS) drawn without failing. The operator's view of real sections:
tests/console/test_operator_view.py."""

from __future__ import annotations

import io
import re
import time

import pytest
from rich.console import Console

from srrs.ctrl import console as con
from srrs.ctrl import console_render as render
from srrs.ctrl import metrics_config


def _status(t: float, pid: int = 100, ios: int = 0, extra: dict = None) -> dict:
    st = {
        "name": "a", "pid": pid, "uptime_s": t, "rpc_socket": "/x.sock", "poll_mode": "adaptive",
        "reactors": [{"reactor": i, "state": "running", "poll_mode": "adaptive", "tid": 1,
                      "cpu": -1, "loops": int(1000 * t), "busy_ns": int(0.25e9 * t),
                      "idle_ns": int(0.25e9 * t), "sleep_ns": int(0.5e9 * t), "busy_pct": 25.0,
                      "msgs": 0, "wakeups": 0, "io_outstanding": 4, "pollers": 1}
                     for i in range(2)],
        "bdevs": [{"name": "m0", "module": "malloc", "path": "", "num_blocks": 16384,
                   "block_size": 4096, "size": 64 << 20, "open_count": 1, "reads": ios,
                   "writes": ios // 2, "bytes_read": ios * 4096, "bytes_written": ios * 2048,
                   "flushes": 0, "unmaps": 0, "write_zeroes": 0, "errors": 0, "direct_ios": 0,
                   "buffered_ios": 0}],
    }
    st.update(extra or {})
    return st


SECTIONS = {
    "nvmf": {"listen": ["127.0.0.1:4420"], "subsystems": [
        {"nqn": "nqn.2026-11.io.srrs:v0", "namespaces": ["v0"], "hosts": 2, "queues": 8,
         "ana_state": "optimized", "iops": 1234.5}], "connections": []},
    "vhost": [{"name": "vh0", "socket": "/tmp/vh0.sock", "bdev": "v0", "state": "connected",
               "num_queues": 2}],
    "pool": [{"name": "p0", "capacity": 2 << 30, "allocated": 1 << 30, "fragments": [
        {"path": "/var/tmp/f.img", "size": 1 << 30, "used": 1 << 29}, {"ram": 512 << 20}]}],
    "pair": {"state": "PAIRED", "self": "a", "peer": "b", "lease_holder": "a",
             "volumes": [{"name": "v0", "mirror_state": "synced", "dirty": 0,
                          "resync_pct": 100.0}], "healthy": True, "note": None},
    "odd": 42,
}


class FakeSource(con.Source):
    def __init__(self, script):
        super().__init__("/nowhere/a.sock")
        self.script = script   # list of status dicts or exceptions, consumed per poll

    def _call(self, method, params=None):
        if method == "status":
            item = self.script[0]
            if isinstance(item, Exception):
                raise item
            return item
        if method == "events":
            return [{"time": 5.0, "type": "conn_up", "obj": "h1", "msg": "host connected",
                     "reactor": 0, "a": 0, "b": 0}]
        return []

    def step(self, now):
        out = self.poll(now)
        self.script.pop(0)
        return out


def test_rates_from_counter_deltas():
    s = FakeSource([_status(10.0, ios=0), _status(11.0, ios=1000)])
    s.step(100.0)
    s.step(101.0)
    b = s.rates["bdevs"]["m0"]
    assert b["read_iops"] == pytest.approx(1000) and b["write_iops"] == pytest.approx(500)
    assert b["iops"] == pytest.approx(1500)
    assert b["mibps"] == pytest.approx((1000 * 4096 + 1000 * 2048) / (1 << 20))
    r = s.rates["reactors"][0]
    assert r["busy_pct_now"] == pytest.approx(25.0, abs=0.01)
    assert r["loops_per_s"] == pytest.approx(1000)
    snap = s.snapshot()
    assert snap["bdevs"][0]["reads"] == 1000 and snap["bdevs"][0]["iops"] == pytest.approx(1500)
    assert snap["reactors"][1]["loops"] == 11000


def test_down_then_restarted_controller():
    s = FakeSource([_status(10.0, ios=0), ConnectionError("gone"), _status(1.0, pid=200)])
    s.step(100.0)
    assert s.history
    evs = s.step(101.0)
    assert s.state == "down" and s.error == "gone" and s.rates == {}
    assert [e["type"] for e in evs] == ["down"]
    evs = s.step(102.0)
    assert s.state == "up" and s.status["pid"] == 200
    assert "reconnected" in evs[0]["msg"]
    # counters started over: no negative rates, history restarted
    assert all(v is None or v >= 0 for r in s.rates["bdevs"].values() for v in r.values())
    assert all(len(h) == 1 for h in s.history.values())


def _app(sources):
    app = con.ConsoleApp([])
    app.sources = sources
    app.events.append({"time": time.time(), "controller": "a", "type": "conn_up",
                       "obj": "h1", "msg": "host connected"})
    return app


@pytest.mark.parametrize("w,h", [(20, 5), (40, 12), (80, 24), (120, 40), (200, 60)])
def test_every_size_renders_within_the_screen(w, h):
    up = FakeSource([_status(10.0, ios=0, extra=SECTIONS), _status(11.0, ios=500,
                                                                  extra=SECTIONS)])
    up.step(100.0)
    up.step(101.0)
    down = FakeSource([ConnectionError("cannot connect")])
    down.step(101.0)
    for sources in ([up], [up, down]):
        app = _app(sources)
        for focus in range(len(sources) + 1):
            app.focus = focus
            c = Console(file=io.StringIO(), width=w, height=h, force_terminal=True,
                        color_system=None)
            c.print(app.render(w, h))
            lines = c.file.getvalue().splitlines()
            assert len(lines) <= h
            assert all(c.measure(line).maximum <= w for line in lines[:3])


def test_plain_text_of_unknown_shapes_keeps_the_core():
    """Sections of a shape the console does not know are left out, the rest stays."""
    s = FakeSource([_status(10.0, extra=SECTIONS), _status(11.0, ios=10, extra=SECTIONS)])
    s.step(100.0)
    s.step(101.0)
    text = _app([s]).render_plain(200)
    for word in ("volumes (1)", "m0", "64.0 MiB", "vh0", "pair", "PAIRED", "reactor",
                 "host connected"):
        assert word in text, word


def test_keys():
    app = _app([FakeSource([]), FakeSource([])])
    assert app.key("p") and app.paused
    assert app.key("p") and not app.paused
    focus = []
    for _ in range(3):
        assert app.key("\t")
        focus.append(app.focus)
    assert focus == [1, 2, 0]  # two controllers, then the event log, then around
    assert app.key("q") is False


def test_sparkline():
    assert con.sparkline([], 5) == ""
    assert con.sparkline([0, 0], 4) == "  ▁▁"
    assert con.sparkline([1, 2, 4, 8], 4)[-1] == "█"
    assert len(con.sparkline(range(100), 60)) == 60


def test_render_cost_is_small():
    """The redraw must fit well inside 5 % of a core at 4 Hz (12.5 ms per frame)."""
    st = _status(10.0, extra=SECTIONS)
    st["reactors"] = st["reactors"] * 4
    st["bdevs"] = [dict(st["bdevs"][0], name=f"b{i}") for i in range(8)]
    s = FakeSource([st, dict(st, uptime_s=11.0)])
    s.step(100.0)
    s.step(101.0)
    app = _app([s])
    c = Console(file=io.StringIO(), width=160, height=48, force_terminal=True)
    t0 = time.process_time()
    for _ in range(20):
        c.print(app.render(160, 48))
    per_frame = (time.process_time() - t0) / 20
    assert per_frame < 0.030, f"{per_frame * 1000:.1f} ms per frame"


@pytest.mark.parametrize("listen, ok", [("127.0.0.1:9464", True), ("[::1]:0", True),
                                        ("localhost:80", True), ("::1:80", False),
                                        ("127.0.0.1", False), ("h:x", False)])
def test_metrics_config(listen, ok):
    if ok:
        assert metrics_config.parse({"listen": listen}).listen == listen
    else:
        with pytest.raises(ValueError, match="^listen: "):
            metrics_config.parse({"listen": listen})
    assert metrics_config.parse({}).listen == "127.0.0.1:9464"
    with pytest.raises(ValueError, match="^port: unknown key"):
        metrics_config.parse({"port": 1})


def test_event_log_scrolls():
    app = _app([FakeSource([])])
    app.focus = 1  # the event log
    for i in range(30):
        app.events.append({"time": time.time(), "controller": "a", "type": "log", "obj": "o",
                           "msg": f"event-{i:02d}"})
    assert app.keys("\x1b[A\x1b[Ak") and app.ev_back == 3
    c = Console(file=io.StringIO(), width=80, height=20, force_terminal=True, color_system=None)
    c.print(render.events_panel(list(app.events), 6, False, app.ev_back))
    out = c.file.getvalue()
    assert "event-26" in out and "event-23" in out and "event-27" not in out and "↑3" in out
    assert app.keys("\x1b[5~") and app.ev_back == 13
    assert app.keys("\x1b[H") and app.ev_back == 30  # capped at the oldest
    assert app.keys("\x1b[F") and app.ev_back == 0
    assert app.keys("j") and app.ev_back == 0
    assert app.keys("xq") is False


def test_tall_panel_scrolls_inside_its_borders():
    st = _status(10.0)
    st["reactors"] = [dict(st["reactors"][0], reactor=i) for i in range(40)]
    s = FakeSource([st, dict(st, uptime_s=11.0)])
    s.step(100.0)
    s.step(101.0)
    app = _app([s])

    def screen():
        c = Console(file=io.StringIO(), width=120, height=30, force_terminal=True,
                    color_system=None)
        c.print(app.render(120, 30, c))
        return c.file.getvalue().splitlines()

    def rows(lines):
        return {int(m.group(1)) for line in lines
                if (m := re.match(r"^┃\s+(\d+)\s+running", line))}

    top = screen()
    assert len(top) <= 30 and 0 in rows(top) and 39 not in rows(top)
    assert any(line.startswith("┏") for line in top) and any(line.startswith("┗") for line in top)
    app.keys("\x1b[6~\x1b[6~\x1b[6~\x1b[6~")  # PgDn x4 on the focused controller panel
    down = screen()
    assert 0 not in rows(down) and 39 in rows(down)
    assert any(line.startswith("┏") for line in down) and any(line.startswith("┗") for line in down)
    app.keys("\x1b[F")  # End: as far as it goes, and no further
    screen()
    far = app.scroll[0]
    app.keys("\x1b[B")
    screen()
    screen()
    assert app.scroll[0] == far
    app.keys("\x1b[H")
    assert 0 in rows(screen())
