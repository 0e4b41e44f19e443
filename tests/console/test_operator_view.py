"""The console as an operator reads it (issue 12, item 8): rendered at 120x40
and 200x60 into a recording rich Console and read back as text.

- a real controller (pool of two fragments, three volumes of a tenant near its
  quota, an NVMe/TCP subsystem with a long NQN and a connected host, a vhost
  device), sampled by the real app;
- a pair from status results recorded from a real pair (tests/console/
  recorded_status.json: PAIRED, SOLO after kill -9 of b, FENCED without peer
  and witness; the mid-resync pair is the recorded RESYNC with the progress
  figures of a copy 42 % through, as a resync of 256 MiB on loopback is over
  before a poll can catch it).
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import time

import pytest
from rich.console import Console

from srrs.ctrl import console as con
from srrs.ctrl import console_model as model
from srrs.ctrl import console_render as render
from srrs.ffi.binding import BenchOpts, Core
from srrs.nvmf.target import NvmfHost

from .helpers import Controller, write_config

SIZES = [(120, 40), (200, 60)]
NQN = "nqn.2026-11.io.srrs:tenant-acme-database-volume-0001"
RECORDED = json.load(open(os.path.join(os.path.dirname(__file__), "recorded_status.json")))
# field names of the status results: on the operator's screen none may stand alone
LABELS = ("lease_denied", "resync_role", "split_brain", "config_mismatch", "tenant", "used",
          "ANA", "listeners", "rpc", "CPU", "RSS", "threads", "mirror", "resync", "path a",
          "path b", "since", "peer", "quota", "fragments", "guests")


def _text(view: model.ScreenView, w: int, h: int, events=()) -> str:
    c = Console(record=True, width=w, height=h, file=io.StringIO(), color_system=None)
    lines, _ = render.screen(view, w, h, render.Ui(events=list(events)), c)
    c.print(lines)
    return c.export_text()


def _readable(text: str, w: int, h: int) -> list:
    """Every line within the screen, and no empty label or field dump."""
    lines = text.rstrip("\n").split("\n")
    assert len(lines) <= h, f"{len(lines)} lines on a {h}-line screen:\n{text}"
    assert max(len(line) for line in lines) <= w
    assert "more fields" not in text, text
    labels = "|".join(re.escape(x) for x in LABELS)
    for k, line in enumerate(lines):
        inner = line.strip(" │┃╭╮╰╯┏┓┗┛")
        if k + 1 < len(lines) and lines[k + 1].strip(" │┃").startswith("─"):
            continue  # a table's column titles (the rule under them): the cells follow
        # a label that starts a field (line start or a gap) with no value after it: the
        # end of the line or the next label ("lease_denied  resync_role  split_brain")
        m = re.search(rf"(^|\s\s)({labels}):?(\s*$|\s\s+({labels})\b)", inner)
        assert not m, f"empty label {m.group(2)!r} in {line!r}"
    return lines


def _row(text: str, name: str) -> list:
    """The cells of a volume row, without its kind (a column only wide screens have)."""
    for line in text.splitlines():
        cells = line.strip(" │┃").split()
        if cells and cells[0] == name:
            return cells[:1] + cells[2:] if cells[1] in ("pool", "mirror", "malloc") else cells
    raise AssertionError(f"no row {name!r}:\n{text}")


def _alerts(text: str) -> str:
    """The alerts panel's text ('' when there is none)."""
    m = re.search(r"╭─  alerts \(\d+\).*?╰", text, re.S)
    return m.group(0) if m else ""


# ---- a real controller ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def live_view(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("opview")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf, sock = write_config(tmp, name="x", extra=f"""
[[pool]]
name = "p0"
cluster_size = "1MiB"
fragments = [ {{ path = "{tmp}/frag0.img", size = "256MiB" }}, {{ ram = "64MiB", weight = 50 }} ]

[[tenant]]
name = "acme"
quota = "70MiB"

[[volume]]
name = "db0"
pool = "p0"
size = "128MiB"
tenant = "acme"
thin = true

[[volume]]
name = "web1"
pool = "p0"
size = "64MiB"
tenant = "acme"
thin = true

[[volume]]
name = "scratch"
pool = "p0"
size = "32MiB"
thin = true

[nvmf]
listen = ["127.0.0.1:{port}"]

[[nvmf.subsystem]]
nqn = "{NQN}"
serial = "S1"
namespaces = ["db0", "web1"]
allow_hosts = ["*"]

[[vhost]]
name = "vh0"
socket = "{tmp}/vh0.sock"
bdev = "scratch"
num_queues = 2
""")
    c = Controller(conf, sock)
    core = Core(reactors=1, poll_mode="adaptive")
    app = con.ConsoleApp([sock], refresh_hz=4)
    try:
        with NvmfHost("127.0.0.1", port, NQN, queues=2, qsize=32) as h:
            # 64 MiB of the tenant's 70 written into db0: its quota is 91 % used
            h.bench(core, BenchOpts(rw="write", bs=1 << 20, qd=4, time_s=0, max_ios=64), 0)
            app.poll()
            h.bench(core, BenchOpts(rw="randread", bs=4096, qd=8, time_s=0.6), 0)
            app.poll()
            yield app.view(), port, json.loads(json.dumps(app.snapshot()))
    finally:
        app.close()
        core.close()
        c.kill()


@pytest.mark.parametrize("w,h", SIZES)
def test_real_controller_volumes_exports_pools(live_view, w, h):
    view, port, _ = live_view
    text = _text(view, w, h)
    _readable(text, w, h)
    db0 = _row(text, "db0")
    assert db0[1:3] == ["128.0", "MiB"] and db0[3:5] == ["64.0", "MiB"], db0  # size, used
    assert db0[5] == "acme" and db0[6] == "optimized", db0                    # tenant, ANA
    assert _row(text, "web1")[1:6] == ["64.0", "MiB", "0", "B", "acme"]
    scratch = _row(text, "scratch")
    assert scratch[1:3] == ["32.0", "MiB"] and "vhost" in scratch, scratch
    assert float(db0[db0.index("optimized") + 1].rstrip("k")) > 0, "read IOPS of the last poll"
    # parts of volumes are not volumes: no fragment bdev in the table
    assert "p0.f0" not in text and "volumes (4)" in text
    if w >= 200:
        assert re.search(r"db0\s+pool\s+128\.0 MiB", text) and re.search(r"m0\s+malloc", text)
    # exports: the whole NQN at both sizes, its listener, the connected host
    assert NQN in text and f"listeners 127.0.0.1:{port}" in text
    assert re.search(r"cntlid \d+ .*2 I/O queues", text), text
    assert re.search(r"vhost vh0 .*vh0\.sock\s+listening", text), text
    assert re.search(r"→ 1:db0 2:web1\s", text) and re.search(r"→ scratch\s", text), text
    # the pool: capacity, use, fragments; the tenant near its quota is an alert with a time
    assert re.search(r"p0 ok\s+64\.0 MiB of [\d.]+ MiB", text), text
    assert "2 fragments (1 RAM)" in text
    alerts = _alerts(text)
    assert re.search(r"\d\d:\d\d:\d\d warning\s+tenant acme: quota 91 % used", alerts), text
    assert "pair" not in text  # no pair configured: no pair panel, no empty pair label


def test_real_controller_view_and_json(live_view):
    view, _, snap = live_view
    vols = {v.name: v for v in view.volumes}
    js = {v["name"]: v for v in snap["volumes"]}
    assert js["db0"]["used"] == 64 << 20 and js["db0"]["ana"] == [["x", "optimized"]]
    assert snap["pair"] is None and [a["obj"] for a in snap["alerts"]] == ["tenant acme"]
    assert set(vols) == {"db0", "web1", "scratch", "m0"}  # m0: a plain malloc bdev
    assert vols["db0"].used == 64 << 20 and vols["db0"].tenant == "acme"
    assert dict(vols["db0"].ana) == {"x": "optimized"} and vols["db0"].read_iops > 0


# ---- the pair, from recorded status results -------------------------------------------------

def _pair(a: str, b: str, witness: str = "up") -> model.ScreenView:
    now = RECORDED[a]["pair"].get("in_state_s", 0) + 1796297100.0
    # volume_list of the pool under the mirror: the replica is the pool volume "v0"
    vols = [{"name": "v0", "tenant": "acme", "allocated": 200 << 20, "lost_clusters": 0}]
    ins = [model.Input(sock="/run/a.sock", name="a", state="up", status=RECORDED[a],
                       rates=model.rates(0, RECORDED[a], 1, RECORDED[a]), volumes=vols)]
    if b == "down":
        ins.append(model.Input(sock="/run/b.sock", name="b", state="down",
                               error="connection refused", down_since=now - 5,
                               status=RECORDED["paired_b"]))
    else:
        ins.append(model.Input(sock="/run/b.sock", name="b", state="up", status=RECORDED[b],
                               rates=model.rates(0, RECORDED[b], 1, RECORDED[b])))
    w = {"endpoint": "tcp://127.0.0.1:5555", "state": witness, "error": None, "rtt_ms": 0.3}
    return model.build(ins, now, w, {})


EVENTS = [{"time": 1796297111.6, "controller": "a", "type": "pair", "obj": "pair",
           "msg": "peer b alive (STARTING, epoch 0)"}]


@pytest.mark.parametrize("w,h", SIZES)
def test_paired_is_healthy_and_not_an_alert(w, h):
    text = _text(_pair("paired_a", "paired_b"), w, h, EVENTS)
    _readable(text, w, h)
    assert "Paired — both replicas current" in text
    assert _alerts(text) == "", "a healthy pair raises no alert"
    # the recorded pair alert log says "peer b alive" at level warning: an event, not an alert
    assert "warning" not in text
    v0 = _row(text, "v0")
    assert v0[1:6] == ["256.0", "MiB", "200.0", "MiB", "acme"], v0  # size, used, tenant
    assert v0[6:9] == ["optimized", "optimized", "in"], v0            # ANA a, b; in sync
    assert re.search(r"path a\s+path b\s+mirror", text)
    assert "vol_id" not in text


@pytest.mark.parametrize("w,h", SIZES)
def test_solo_says_who_since_when_and_why(w, h):
    v = _pair("solo_a", "down")
    text = _text(v, w, h)
    _readable(text, w, h)
    since = time.strftime("%H:%M:%S", time.localtime(v.time - RECORDED["solo_a"]["pair"]
                                                     ["in_state_s"]))
    assert f"Solo on a — b unreachable since {since}, witness granted lease" in text
    alerts = _alerts(text)
    assert re.search(r"error\s+controller b: not answering since \d\d:\d\d:\d\d: connection "
                     r"refused", alerts), alerts
    assert "b ✖ DOWN" in text
    v0 = _row(text, "v0")
    assert "solo" in v0 and "256.0 MiB to copy" in " ".join(v0), v0
    assert v0[v0.index("solo") - 2:v0.index("solo")] == ["optimized", "unreachable"], v0


@pytest.mark.parametrize("w,h", SIZES)
def test_resync_progress_and_eta(w, h):
    text = _text(_pair("resync_mid_a", "resync_mid_b"), w, h)
    _readable(text, w, h)
    assert "Resyncing b: 42 % (148.0 MiB left, ETA 11s)" in text
    v0 = " ".join(_row(text, "v0"))
    assert "resync 42 % 148.0 MiB left 11s" in v0, v0
    assert _alerts(text) == "", "a resync is recovery, not an alert"


@pytest.mark.parametrize("w,h", SIZES)
def test_fenced_without_peer_or_witness(w, h):
    text = _text(_pair("fenced_a", "down", witness="down"), w, h)
    _readable(text, w, h)
    assert "Fenced on a — cannot reach peer or witness" in text
    alerts = _alerts(text)
    assert "pair a+b: Fenced" in alerts and "witness: not answering" in alerts
    assert "inaccess" in _row(text, "v0")


# ---- many volumes, long names ---------------------------------------------------------------

def _many(n: int, nqn: str) -> model.ScreenView:
    st = json.loads(json.dumps(RECORDED["single"]))
    base = next(b for b in st["bdevs"] if b["name"] == "db0")
    st["bdevs"] = [dict(base, name=f"vol{i:03d}") for i in range(n)] + \
        [b for b in st["bdevs"] if b["name"].startswith("p0.")]
    sub = st["nvmf"]["subsystems"][0]
    sub["nqn"] = nqn
    sub["namespaces"] = [{"nsid": i + 1, "bdev": f"vol{i:03d}", "ana_group": 1} for i in range(3)]
    st["nvmf"]["controllers"] = []
    ins = [model.Input(sock="/run/x.sock", name="x", state="up", status=st,
                       rates=model.rates(0, st, 1, st))]
    return model.build(ins, 1796297100.0, None, {})


@pytest.mark.parametrize("w,h", SIZES)
def test_more_volumes_than_rows(w, h):
    text = _text(_many(200, NQN), w, h)
    lines = _readable(text, w, h)
    m = re.search(r"\+(\d+) more volumes", text)
    assert m, text
    shown = sum(1 for line in lines if re.match(r"^[│┃]\s+vol\d{3}\s", line))
    assert shown >= 3 and shown + int(m.group(1)) == 200, (shown, m.group(1))
    assert "volumes (200)" in text


def test_long_nqn_is_elided_in_the_middle_keeping_its_tail():
    nqn = "nqn.2026-11.io.srrs:" + "x" * 150 + ":volume-group-0042"
    for w, h in SIZES:
        text = _text(_many(3, nqn), w, h)
        _readable(text, w, h)
        line = next(line for line in text.splitlines() if "nqn.2026-11" in line)
        assert "…" in line and "volume-group-0042" in line and "listeners 127.0.0.1:" in line


def test_elide():
    assert render.elide("abc", 5) == "abc"
    s = render.elide("nqn.2026-11.io.srrs:tenant-a:vol-0001", 20)
    assert len(s) == 20 and s.endswith("vol-0001") and s.startswith("nqn.") and "…" in s


def test_empty_sections_are_left_out():
    """A controller with nothing but a bdev: no pair, alerts, exports or pools
    panels at all (not their titles with nothing under them)."""
    st = {k: RECORDED["single"][k] for k in ("name", "pid", "uptime_s", "rpc_socket",
                                             "poll_mode", "reactors")}
    st["bdevs"] = [b for b in RECORDED["single"]["bdevs"] if b["name"] == "m0"]
    v = model.build([model.Input(sock="/s", name="x", state="up", status=st)], 1.0e9, None, {})
    for w, h in SIZES:
        text = _text(v, w, h)
        _readable(text, w, h)
        for title in ("pair", "alerts", "exports", "pools", "mirror", "tenant", "used",
                      "path x"):
            assert title not in text, title
        assert _row(text, "m0")[1:3] == ["64.0", "MiB"]
