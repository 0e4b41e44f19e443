"""A real pair (witness + controllers a and b) on the console: both panels show
the pair state; killing b turns its panel DOWN and a's title to SOLO, live, and
the metrics endpoint says the same."""

from __future__ import annotations

import re
import signal
import socket
import subprocess

import pytest
from conftest import need

from .helpers import SRRS, Controller, Tmux, sample, scrape

pytest.importorskip("srrs.ctrl.pair", reason="the pair is not in this build")


def _ports(n: int) -> list:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pair_config(tmp_path, me, other, ports, witness, metrics=""):
    coord = {"a": ports[0], "b": ports[1]}
    mirror = {"a": ports[2], "b": ports[3]}
    path = tmp_path / f"{me}.toml"
    path.write_text(f"""
[controller]
name = "{me}"
rpc_socket = "{tmp_path}/{me}.sock"

[[bdev]]
name = "v0"
type = "file"
path = "{tmp_path}/{me}-v0.img"
size = "32MiB"

[pair]
self = "{me}"
peer = "{other}"
coord_bind = "tcp://127.0.0.1:{coord[me]}"
peer_coord = "tcp://127.0.0.1:{coord[other]}"
mirror_listen = "127.0.0.1:{mirror[me]}"
peer_mirror = "127.0.0.1:{mirror[other]}"
witness = "{witness}"
volumes = ["v0"]
state_dir = "{tmp_path}/state-{me}"
{metrics}
""")
    return str(path), f"{tmp_path}/{me}.sock"


def test_pair_failover_on_the_console(tmp_path):
    need("tmux")
    ports = _ports(5)
    witness = f"tcp://127.0.0.1:{ports[4]}"
    w = subprocess.Popen(SRRS + ["witness", "--bind", witness], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    a = b = t = None
    try:
        ca, sa = _pair_config(tmp_path, "a", "b", ports, witness,
                              '[metrics]\nlisten = "127.0.0.1:0"\n')
        cb, sb = _pair_config(tmp_path, "b", "a", ports, witness)
        a, b = Controller(ca, sa), Controller(cb, sb)
        t = Tmux(tmp_path, SRRS + ["console", "-s", sa, "-s", sb], width=200, height=60)
        t.wait_for(lambda s: len(re.findall(r"pair PAIRED", s)) == 2, timeout=30,
                   what="both panels PAIRED")
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait()
        s = t.wait_for(lambda s: "b ✖ DOWN" in s and "a ● up  pair SOLO" in s, timeout=20,
                       what="b DOWN, a SOLO")
        assert re.search(r"b\s+down", s) and "mirror_down" in s, s
        assert t.alive()
        m = scrape(a.rpc("status")["metrics"]["listen"])
        assert sample(m, "srrs_pair_state", controller="a", state="SOLO") == 1
        t.send("q")
        assert t.rc() == 0
    finally:
        if t is not None:
            t.close()
        for c in (a, b):
            if c is not None:
                c.kill()
        w.kill()
        w.wait()
