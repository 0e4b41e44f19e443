"""A real pair (witness + controllers a and b) on the console: both panels show
the pair state; killing b turns its panel DOWN and a's title to SOLO, live, and
the metrics endpoint says the same."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time

from conftest import need

from .helpers import SRRS, Controller, Tmux, sample, scrape, srrs


def _ports(n: int) -> list:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pair_config(tmp_path, me, other, ports, witness, metrics="", pair_extra=""):
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
insecure = true
{pair_extra}
{metrics}
""")
    return str(path), f"{tmp_path}/{me}.sock"


def test_pair_failover_on_the_console(tmp_path):
    need("tmux")
    ports = _ports(5)
    witness = f"tcp://127.0.0.1:{ports[4]}"
    w = subprocess.Popen(SRRS + ["witness", "--bind", witness, "--insecure"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    a = b = t = None
    try:
        ca, sa = _pair_config(tmp_path, "a", "b", ports, witness,
                              '[metrics]\nlisten = "127.0.0.1:0"\n')
        cb, sb = _pair_config(tmp_path, "b", "a", ports, witness)
        a, b = Controller(ca, sa), Controller(cb, sb)
        t = Tmux(tmp_path, SRRS + ["console", "-s", sa, "-s", sb], width=200, height=60)
        s = t.wait_for(lambda s: len(re.findall(r"● up  pair PAIRED", s)) == 2
                       and "Paired — both replicas current" in s, timeout=30,
                       what="both panels PAIRED")
        assert "alerts" not in s, s  # a healthy pair raises none
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait()
        s = t.wait_for(lambda s: "b ✖ DOWN" in s and "a ● up  pair SOLO" in s, timeout=20,
                       what="b DOWN, a SOLO")
        assert re.search(r"b\s+down", s) and "mirror_down" in s, s
        # the pair panel says what happened in words, the alerts say b is down and since when
        assert re.search(r"Solo on a — b unreachable since \d\d:\d\d:\d\d, witness granted "
                         r"lease", s), s
        assert re.search(r"error\s+controller b: not answering since", s), s
        assert t.alive()
        m = scrape(a.rpc("status")["metrics"]["listen"])
        assert sample(m, "srrs_pair_state", controller="a", peer="b", state="SOLO") == 1
        assert sample(m, "srrs_pair_state", controller="a", peer="b", state="PAIRED") == 0
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


def test_console_pair_config_finds_both_controllers_and_the_witness(tmp_path):
    """`srrs console --pair CONFIG --once --json`: one pair member's config
    names its own RPC socket, the peer's (peer_rpc_socket) and the witness."""
    ports = _ports(5)
    witness = f"tcp://127.0.0.1:{ports[4]}"
    w = subprocess.Popen(SRRS + ["witness", "--bind", witness, "--insecure"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    ctls = []
    try:
        ca, sa = _pair_config(tmp_path, "a", "b", ports, witness,
                              pair_extra=f'peer_rpc_socket = "{tmp_path}/b.sock"')
        cb, sb = _pair_config(tmp_path, "b", "a", ports, witness)
        ctls = [Controller(ca, sa), Controller(cb, sb)]
        deadline = time.monotonic() + 20
        while any(c.rpc("pair_status")["state"] != "PAIRED" for c in ctls):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        r = srrs("console", "--pair", ca, "--once", "--json", timeout=30)
        assert r.returncode == 0, r.stderr
        snap = json.loads(r.stdout)
        got = {c["name"]: c for c in snap["controllers"]}
        assert set(got) == {"a", "b"} and [c["socket"] for c in snap["controllers"]] == [sa, sb]
        for n, c in got.items():
            assert c["state"] == "up" and c["pair"]["state"] == "PAIRED", c
            assert c["pair"] == {**c["pair"], "name": n, "witness_ok": True}
        assert snap["witness"]["endpoint"] == witness and snap["witness"]["state"] == "up"
        assert 0 < snap["witness"]["rtt_ms"] < 1000
        r = srrs("console", "--pair", ca, "--once", timeout=30)  # plain text names the witness
        assert r.returncode == 0 and f"witness {witness}: up" in r.stdout, r.stdout
        # the witness goes away: shown down (and logged), the controllers are still up
        w.kill()
        w.wait()
        r = srrs("console", "--pair", ca, "--once", "--json", timeout=30)
        snap = json.loads(r.stdout)
        assert r.returncode == 0 and snap["witness"]["state"] == "down", r.stdout
        assert any(e["obj"] == "witness" and e["type"] == "down" for e in snap["events"])
        # b's config has no peer_rpc_socket; a plain controller config has no [pair]
        r = srrs("console", "--pair", cb, "--once", timeout=30)
        assert r.returncode == 2 and "pair.peer_rpc_socket is not set" in r.stderr, r.stderr
        plain = tmp_path / "plain.toml"
        plain.write_text(f'[controller]\nname = "p"\nrpc_socket = "{tmp_path}/p.sock"\n')
        r = srrs("console", "--pair", str(plain), "--once", timeout=30)
        assert r.returncode == 2 and "no [pair] section" in r.stderr, r.stderr
    finally:
        for c in ctls:
            c.kill()
        if w.poll() is None:
            w.kill()
            w.wait()
