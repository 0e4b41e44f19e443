"""`srrs console` in tmux against live controllers: figures, keys, down/reconnect, CPU."""

from __future__ import annotations

import re
import time

import pytest
from conftest import need

from srrs.ctrl import launch

from .helpers import SRRS, Controller, Tmux, bdev_row, write_config


@pytest.fixture
def tmux_ok():
    need("tmux")


@pytest.fixture
def loaded(tmp_path):
    conf, sock = write_config(tmp_path, name="live")
    c = Controller(conf, sock)
    try:
        c.load(time_s=120)
        yield c
    finally:
        c.kill()


def _console(tmp_path, *socks, refresh=4, width=160, height=48):
    args = SRRS + ["console", "--refresh", str(refresh)]
    for s in socks:
        args += ["-s", s]
    return Tmux(tmp_path, args, width=width, height=height)


def _live_iops(screen):
    row = bdev_row(screen, "m0")
    return row is not None and row[0] > 0 and row[1] > 0 and row[2] > 0


def test_screen_shows_live_figures_keys_and_down(tmp_path, tmux_ok, loaded):
    t = _console(tmp_path, loaded.sock)
    try:
        s1 = t.wait_for(_live_iops, what="non-zero IOPS for m0")
        assert "live" in s1 and "● up" in s1
        # latency of the last second, and the last minute's sparklines beside it
        _, _, _, p50, p99 = bdev_row(s1, "m0")
        assert 0 < p50 <= p99 < 1e5, bdev_row(s1, "m0")
        assert re.search(r"p50 us\s+p99 us\s+errors\s+IOPS, 1 min", s1), s1
        assert re.search(r"running\s+adaptive", s1), s1
        # figures move: the IOPS cell or the clock changes between two screens
        time.sleep(1.2)
        s2 = t.wait_for(_live_iops, what="non-zero IOPS again")
        assert bdev_row(s1, "m0") != bdev_row(s2, "m0") or s1 != s2
        fps = float(re.search(r"([\d.]+) fps", s2).group(1))
        assert fps >= 3.5, f"only {fps} redraws/s"

        # keys: tab moves the focus (heavy border) to the event log, p pauses
        t.send("Tab")
        t.wait_for(lambda s: "┏━  events" in s, timeout=5, what="focus on the event log")
        t.send("p")
        frozen = t.wait_for(lambda s: "PAUSED" in s, timeout=5, what="PAUSED")
        t.send("p")
        t.wait_for(lambda s: "PAUSED" not in s, timeout=5, what="un-paused")
        assert "PAUSED" in frozen

        # the controller dies: its panel turns DOWN, the console lives on
        loaded.kill()
        down = t.wait_for(lambda s: "DOWN" in s, timeout=10, what="DOWN")
        assert "live" in down and re.search(r"live\s+down", down), down
        time.sleep(1.0)
        assert t.alive()
        # it comes back: reconnected by itself
        loaded.start()
        back = t.wait_for(lambda s: "● up" in s and "reconnected" in s, timeout=10,
                          what="reconnected")
        assert "DOWN" not in back.split("\n", 3)[1]
        t.send("q")
        assert t.rc() == 0
    finally:
        t.close()


def test_two_controllers_one_down_from_start(tmp_path, tmux_ok, loaded):
    """A socket with no controller behind it is shown down next to a live one."""
    t = _console(tmp_path, loaded.sock, str(tmp_path / "nobody.sock"))
    try:
        s = t.wait_for(lambda s: _live_iops(s) and "DOWN" in s, what="one up, one down")
        assert "nobody.sock" in s
        t.send("q")
        assert t.rc() == 0
    finally:
        t.close()


def test_small_terminal_and_resize(tmp_path, tmux_ok, loaded):
    """80x24 still shows the controller and its bdev (compact layout), and the
    layout follows the terminal when it is resized."""
    t = _console(tmp_path, loaded.sock, width=80, height=24)
    try:
        s = t.wait_for(lambda s: "live" in s and _live_iops(s), what="compact screen")
        assert all(len(line) <= 80 for line in s.splitlines())
        t._tmux("resize-window", "-t", "t", "-x", "150", "-y", "45")
        # a frame drawn between tmux's width and height changes may be wide
        # and short: the next one (a quarter second on) has the whole size
        s = t.wait_for(lambda s: "q quit · p pause · tab panel" in s and "IOPS, 1 min" in s
                       and len(s.rstrip("\n").splitlines()) >= 40,
                       timeout=5, what="wide, tall layout after resize")
        assert max(len(line) for line in s.splitlines()) > 100
        t.send("q")
        assert t.rc() == 0
    finally:
        t.close()


def _export_config(tmp_path) -> dict:
    """[nvmf] and [[vhost]]: the console's biggest panel today."""
    return {"nvmf": launch.nvmf([f"127.0.0.1:{launch.free_port()}"], [
                launch.subsystem("nqn.2026-11.io.srrs:cpu", ["m0"], serial="S1")]),
            "vhost": [launch.vhost("vh0", f"{tmp_path}/vh0.sock", "m0", num_queues=2)]}


@pytest.mark.quiet
def test_console_cpu_under_5pct_at_4hz(tmp_path, tmux_ok):
    conf, sock = write_config(tmp_path, name="cpu", extra=_export_config(tmp_path))
    c = Controller(conf, sock)
    t = None
    try:
        c.load(time_s=60)
        t = _console(tmp_path, sock, refresh=4)
        t.wait_for(_live_iops, what="live screen")
        p = t.console_process()
        c0 = p.cpu_times()
        w0 = time.monotonic()
        time.sleep(10)
        c1 = p.cpu_times()
        pct = 100.0 * ((c1.user + c1.system) - (c0.user + c0.system)) / (time.monotonic() - w0)
        screen = t.capture()
        fps = float(re.search(r"([\d.]+) fps", screen).group(1))
        assert fps >= 3.5, f"only {fps} redraws/s"
        assert pct < 5.0, f"console used {pct:.1f} % of a core at 4 Hz"
        t.send("q")
        assert t.rc() == 0
    finally:
        if t is not None:
            t.close()
        c.kill()


def test_hung_controller_does_not_stall_the_screen(tmp_path, tmux_ok, loaded):
    """SIGSTOP: the RPC stops answering; the panel turns DOWN after the RPC timeout
    while the screen keeps redrawing at full rate; SIGCONT brings it back."""
    import signal

    other_conf, other_sock = write_config(tmp_path, name="other")
    other = Controller(other_conf, other_sock)
    t = _console(tmp_path, loaded.sock, other_sock)
    try:
        t.wait_for(_live_iops, what="live screen")
        loaded.proc.send_signal(signal.SIGSTOP)
        try:
            s = t.wait_for(lambda s: "no answer within" in s, timeout=10, what="no answer")
            time.sleep(2.5)
            s = t.capture()
            fps = float(re.search(r"([\d.]+) fps", s).group(1))
            assert fps >= 3.5, f"redraws fell to {fps}/s while a controller hangs"
            assert "other ● up" in s
        finally:
            loaded.proc.send_signal(signal.SIGCONT)
        t.wait_for(lambda s: "DOWN" not in s and _live_iops(s), timeout=10, what="back up")
        t.send("q")
        assert t.rc() == 0
    finally:
        t.close()
        other.kill()
