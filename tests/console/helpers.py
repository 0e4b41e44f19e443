"""Controllers, tmux panes and Prometheus scrapes for the console tests."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request

import psutil
from prometheus_client.parser import text_string_to_metric_families

from srrs.ctrl import launch
from srrs.ctrl.launch import SRRS
from srrs.ctrl.rpc import RpcError

__all__ = ["SRRS", "Controller", "Tmux", "bdev_row", "sample", "scrape", "srrs", "write_config"]


def srrs(*args, timeout=60, **kw):
    return subprocess.run(SRRS + list(args), capture_output=True, text=True, timeout=timeout, **kw)


def write_config(tmp_path, name="t", reactors=1, poll_mode="adaptive", extra="") -> tuple:
    """(config path, socket path) of a controller with a 64 MiB malloc bdev m0;
    extra: more sections (a dict or TOML text)."""
    sock = str(tmp_path / f"{name}.sock")
    conf = launch.config(launch.controller(name, sock, reactors, poll_mode),
                         bdevs=[launch.bdev("m0", "malloc", "64MiB")], extra=extra)
    return launch.write_config(tmp_path / f"{name}.toml", conf), sock


class Controller(launch.Controller):
    """`srrs start -c CONFIG` in the background, ready when its RPC socket answers."""

    def __init__(self, config: str, sock: str):
        super().__init__(config, sock=sock, ready_timeout=20)

    def load(self, bdev="m0", reactor=0, time_s=60, qd=8, rw="randrw"):
        # the socket answers a moment before the controller is at run time
        deadline = time.time() + 5
        while True:
            try:
                return self.rpc("bench_bdev_start", {"bdev": bdev, "reactor": reactor,
                                                     "time_s": time_s, "qd": qd, "rw": rw,
                                                     "bs": 4096})
            except RpcError as e:
                if "only at runtime" not in e.message or time.time() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, timeout=10) -> int:
        return super().stop(timeout)


class Tmux:
    """A tmux server of our own (-L) running one command in a fixed-size window."""

    def __init__(self, tmp_path, cmd: list, width=160, height=48):
        self.sock = f"srrs-test-{os.getpid()}-{time.monotonic_ns()}"
        self.rc_file = str(tmp_path / "console.rc")
        inner = " ".join(_q(c) for c in cmd)
        # the exit code survives the pane (the session ends with the command)
        shell = f"{inner}; echo $? > {_q(self.rc_file)}"
        self._tmux("new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height),
                   "sh", "-c", shell)

    def _tmux(self, *args, check=True) -> str:
        return subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, text=True,
                              check=check, timeout=10).stdout

    def alive(self) -> bool:
        return subprocess.run(["tmux", "-L", self.sock, "has-session", "-t", "t"],
                              capture_output=True).returncode == 0

    def capture(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "t")

    def send(self, *keys) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def console_process(self) -> psutil.Process:
        """The python process of the console (a child of the pane's shell)."""
        pid = int(self._tmux("display", "-p", "-t", "t", "#{pane_pid}").strip())
        sh = psutil.Process(pid)
        for p in [sh] + sh.children(recursive=True):
            if "console" in " ".join(p.cmdline()) and "python" in os.path.basename(p.exe()):
                return p
        raise RuntimeError("console process not found")

    def wait_for(self, pred, timeout=15.0, what="screen") -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"console exited while waiting for {what}:\n{screen}")
            screen = self.capture()
            if pred(screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; screen:\n{screen}")

    def rc(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive() and os.path.exists(self.rc_file):
                with open(self.rc_file) as f:
                    return int(f.read().strip() or -1)
            time.sleep(0.1)
        return None

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True)
        # the server leaves its socket file behind
        tmpdir = os.environ.get("TMUX_TMPDIR") or "/tmp"
        try:
            os.unlink(os.path.join(tmpdir, f"tmux-{os.getuid()}", self.sock))
        except OSError:
            pass


def _q(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def bdev_row(screen: str, name: str):
    """(r IOPS, w IOPS, MiB/s, p50 us, p99 us) of volume `name` in the console's
    volume table, read under the column titles (the figures are right-aligned to
    them); a column left out at this width, or '-', reads 0."""
    lines = screen.splitlines()
    head = next((line for line in lines if "r IOPS" in line and "volume" in line), None)
    if head is None:
        return None
    for line in lines:
        cells = line.strip(" │┃").split()
        if not cells or cells[0] != name:
            continue
        out = []
        for title in ("r IOPS", "w IOPS", "MiB/s", "p50 us", "p99 us"):
            at = head.find(title)
            tok = line[:at + len(title)].split() if at >= 0 else []
            try:
                out.append(_num(tok[-1]) if tok else 0.0)
            except ValueError:
                return None
        return tuple(out)
    return None


def _num(s: str) -> float:
    mult = {"k": 1e3, "M": 1e6, "G": 1e9}
    if s and s[-1] in mult:
        return float(s[:-1]) * mult[s[-1]]
    return float(s) if s not in ("-", "") else 0.0


def scrape(listen: str) -> dict:
    """{(name, frozenset(labels.items())): value} of every sample at /metrics."""
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(m: dict, name: str, **labels) -> float:
    return m[(name, frozenset(labels.items()))]
