"""A real pair (witness + controllers a and b) on the console: both panels show
the pair state; killing b turns its panel DOWN and a's title to SOLO, live, and
the metrics endpoint says the same."""

from __future__ import annotations

import json
import re
import time

from conftest import need

from srrs.ctrl import launch

from .helpers import SRRS, Controller, Tmux, sample, scrape, srrs


def _pair_config(tmp_path, me, other, ports, metrics=None, pair_extra=None):
    """(config, socket) of pair member `me` with the product's pair timings;
    ports: launch.pair_ports()."""
    sock = f"{tmp_path}/{me}.sock"
    conf = launch.config(
        launch.controller(me, sock, reactors=None, poll_mode=None),
        bdevs=[launch.bdev("v0", "file", "32MiB", path=f"{tmp_path}/{me}-v0.img")],
        pair=launch.pair(me, other, ports, f"{tmp_path}/state-{me}", heartbeat_ms=None,
                         miss_count=None, lease_ms=None, **(pair_extra or {})),
        metrics=metrics)
    return launch.write_config(tmp_path / f"{me}.toml", conf), sock


def _witness(tmp_path, ports) -> launch.Witness:
    return launch.Witness(tmp_path / "witness.log", f"tcp://127.0.0.1:{ports['witness']}",
                          max_lease=None)


def test_pair_failover_on_the_console(tmp_path):
    need("tmux")
    ports = launch.pair_ports()
    w = _witness(tmp_path, ports)
    a = b = t = None
    try:
        ca, sa = _pair_config(tmp_path, "a", "b", ports,
                              launch.metrics("127.0.0.1:0"))
        cb, sb = _pair_config(tmp_path, "b", "a", ports)
        a, b = Controller(ca, sa), Controller(cb, sb)
        t = Tmux(tmp_path, SRRS + ["console", "-s", sa, "-s", sb], width=200, height=60)
        s = t.wait_for(lambda s: len(re.findall(r"● up  pair PAIRED", s)) == 2
                       and "Paired — both replicas current" in s, timeout=30,
                       what="both panels PAIRED")
        assert "alerts" not in s, s  # a healthy pair raises none
        b.kill9()
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
        w.kill9()


def test_console_pair_config_finds_both_controllers_and_the_witness(tmp_path):
    """`srrs console --pair CONFIG --once --json`: one pair member's config
    names its own RPC socket, the peer's (peer_rpc_socket) and the witness."""
    ports = launch.pair_ports()
    w = _witness(tmp_path, ports)
    witness = w.bind
    ctls = []
    try:
        ca, sa = _pair_config(tmp_path, "a", "b", ports,
                              pair_extra={"peer_rpc_socket": f"{tmp_path}/b.sock"})
        cb, sb = _pair_config(tmp_path, "b", "a", ports)
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
        w.kill9()
        r = srrs("console", "--pair", ca, "--once", "--json", timeout=30)
        snap = json.loads(r.stdout)
        assert r.returncode == 0 and snap["witness"]["state"] == "down", r.stdout
        assert any(e["obj"] == "witness" and e["type"] == "down" for e in snap["events"])
        # b's config has no peer_rpc_socket; a plain controller config has no [pair]
        r = srrs("console", "--pair", cb, "--once", timeout=30)
        assert r.returncode == 2 and "pair.peer_rpc_socket is not set" in r.stderr, r.stderr
        plain = tmp_path / "plain.toml"
        launch.write_config(plain, launch.config(launch.controller(
            "p", tmp_path / "p.sock", reactors=None, poll_mode=None)))
        r = srrs("console", "--pair", str(plain), "--once", timeout=30)
        assert r.returncode == 2 and "no [pair] section" in r.stderr, r.stderr
    finally:
        for c in ctls:
            c.kill()
        w.kill9()
