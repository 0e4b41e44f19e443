"""`srrs start --log-level/--log-format` and the systemd units in deploy/."""

import configparser
import json
import os
import subprocess

from srrs.ctrl import launch
from tests.ctrl.helpers import SRRS, write_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_json_log_lines(tmp_path):
    sock = str(tmp_path / "c.sock")
    conf = write_config(tmp_path / "c.toml", sock)
    c = launch.Controller(conf, sock=sock, ready_timeout=30,
                          args=["--log-format", "json", "--log-level", "debug"])
    try:
        rc = c.stop(30)
    finally:
        c.kill9()
    out = c.output()                  # stdout and stderr: every line must be a log record
    assert rc == 0, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines, "no log lines"
    for ln in lines:
        rec = json.loads(ln)          # every line is one JSON object
        assert {"ts", "level", "logger", "pid", "msg"} <= set(rec), rec
        assert rec["level"] in ("debug", "info", "warning", "error", "critical")
    assert any(r["level"] == "info" for r in map(json.loads, lines))


def test_bad_log_level_is_refused(tmp_path):
    r = subprocess.run(SRRS + ["start", "-c", "x.toml", "--log-level", "loud"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--log-level" in r.stderr


def test_systemd_units_run_srrs():
    for unit, want in (("srrs@.service", "srrs start -c /etc/srrs/%i.toml"),
                       ("srrs-witness.service", "srrs witness -c /etc/srrs/witness.toml")):
        cp = configparser.ConfigParser(strict=False, interpolation=None)
        cp.optionxform = str
        cp.read(os.path.join(ROOT, "deploy", "systemd", unit))
        assert set(cp.sections()) >= {"Unit", "Service", "Install"}, unit
        assert want in cp["Service"]["ExecStart"], unit
        assert cp["Service"]["KillSignal"] == "SIGTERM"
