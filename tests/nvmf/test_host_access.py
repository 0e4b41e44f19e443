"""Host access of config subsystems (real controller + `srrs bench nvmf`):
a subsystem without allow_hosts admits no host (the same default as
nvmf_subsystem_create) and the controller warns about it at start; a refused
connect is a one-line error with a non-zero exit, never a traceback; ["*"]
admits any host."""

import json

import pytest

from srrs.ctrl import launch
from srrs.ctrl.launch import free_ports
from tests.ctrl.helpers import Controller, srrs, write_config

NQN = "nqn.2026-11.io.srrs:acc-"


@pytest.fixture
def ctl(tmp_path):
    (port,) = free_ports(1)
    hosts = {"open": ["*"], "default": None, "other": ["nqn.2026-11.io.srrs:someone-else"]}
    extra = {"bdev": [launch.bdev(f"m{i}", "malloc", "16MiB") for i in range(len(hosts))],
             "nvmf": launch.nvmf([f"127.0.0.1:{port}"], [
                 launch.subsystem(f"{NQN}{name}", [f"m{i}"], allow_hosts=h)
                 for i, (name, h) in enumerate(hosts.items())])}
    sock = str(tmp_path / "c.sock")
    c = Controller(write_config(tmp_path / "c.toml", sock, extra=extra), sock)
    c.port = port
    yield c
    c.kill()


def _bench(ctl, name):
    return srrs("bench", "nvmf", "--target", f"127.0.0.1:{ctl.port}", "--nqn", NQN + name,
                "--rw", "randwrite", "--bs", "4096", "--qd", "4", "--time", "1", "--verify",
                "--json", timeout=60)


@pytest.mark.parametrize("name", ["default", "other"])
def test_refused_subsystem_is_a_one_line_error(ctl, name):
    r = _bench(ctl, name)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "TypeError" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("srrs bench nvmf: "), r.stderr


def test_default_denies_and_star_admits(ctl):
    subs = {s["nqn"]: s for s in ctl.rpc("nvmf_get_subsystems")}
    assert not subs[NQN + "default"]["allow_any_host"] and subs[NQN + "open"]["allow_any_host"]
    r = _bench(ctl, "open")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["verified"]
    assert ctl.stop() == 0
    out = ctl.output()
    assert f"nvmf subsystem {NQN}default allows no host" in out, out
    assert f"{NQN}open allows no host" not in out and f"{NQN}other allows no host" not in out
