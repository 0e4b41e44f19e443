"""Config validation: one line naming the file, the line and the key; nothing starts."""

import os

import pytest

from srrs.ctrl import config as cfg

from .helpers import srrs

GOOD = """
[controller]
name = "a"
rpc_socket = "/tmp/x.sock"
reactors = 2

[[bdev]]
name = "m0"
type = "malloc"
size = "64MiB"
block_size = 512

[[bdev]]
name = "f0"
type = "file"
path = "/tmp/f0.img"
size = "1GiB"
"""


def test_good_config_parses_with_defaults():
    c = cfg.loads(GOOD, "good.toml")
    assert c.controller.name == "a" and c.controller.reactors == 2
    assert c.controller.poll_mode == "adaptive"
    assert c.bdevs[0].size == 64 << 20 and c.bdevs[0].block_size == 512
    assert c.bdevs[1].block_size == 4096 and c.bdevs[1].path == "/tmp/f0.img"


@pytest.mark.parametrize("size,want", [("512MiB", 512 << 20), ("4GiB", 4 << 30), (4096, 4096),
                                       ("1KiB", 1024), ("4096", 4096), ("1.5MiB", 3 << 19)])
def test_sizes(size, want):
    assert cfg.parse_size(size) == want


@pytest.mark.parametrize("size", ["12XB", "1MB", "-1", "MiB", "", "0.3KiB", True, 1.5])
def test_bad_sizes(size):
    with pytest.raises(ValueError):
        cfg.parse_size(size)


def _err(text):
    with pytest.raises(cfg.ConfigError) as ei:
        cfg.loads(text, "t.toml")
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def test_unknown_key_names_file_line_and_key():
    msg = _err(GOOD.replace('block_size = 512', 'block_size = 512\ncolour = "red"'))
    assert msg.startswith("t.toml:12: bdev[0].colour: unknown key"), msg


def test_wrong_type():
    msg = _err(GOOD.replace("reactors = 2", 'reactors = "two"'))
    assert msg.startswith("t.toml:5: controller.reactors: expected an integer"), msg


def test_bad_size_string():
    msg = _err(GOOD.replace('"1GiB"', '"12XB"'))
    assert msg.startswith("t.toml:17: bdev[1].size: bad size '12XB'"), msg


def test_unknown_section_and_syntax_error():
    assert _err("[bogus]\nx = 1\n").startswith("t.toml:1: bogus: unknown section")
    assert _err("[controller]\nname = \n").startswith("t.toml:")
    assert "TOML syntax" in _err("[controller\n")


def test_semantic_errors():
    assert "bdev[1].name: bdev 'm0' is defined twice" in _err(GOOD.replace('"f0"', '"m0"', 1))
    assert "bdev[0].path: only a file bdev has a path" in _err(
        GOOD.replace('block_size = 512', 'block_size = 512\npath = "/x"'))
    assert "bdev[1].path: is required" in _err(GOOD.replace('path = "/tmp/f0.img"\n', ""))
    assert "controller.poll_mode: must be one of" in _err(
        GOOD.replace("reactors = 2", 'reactors = 2\npoll_mode = "turbo"'))
    assert "block_size: must be one of 512, 4096" in _err(
        GOOD.replace("block_size = 512", "block_size = 1000"))
    assert "controller.cpus: CPU 4000 does not exist" in _err(GOOD.replace("reactors = 2", "cpus = [4000]"))
    assert "controller.cpus: cpus[0] must be a CPU number" in _err(
        GOOD.replace("reactors = 2", "cpus = [99999]"))


def test_start_with_bad_config_fails_before_anything_starts(tmp_path):
    sock = tmp_path / "s.sock"
    p = tmp_path / "bad.toml"
    p.write_text(f'[controller]\nrpc_socket = "{sock}"\nreactors = 0\n')
    r = srrs("start", "-c", str(p))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{p}:3: controller.reactors: must be in 1..64" in lines[0], r.stderr
    assert not os.path.exists(sock)


def test_missing_config_file(tmp_path):
    r = srrs("start", "-c", str(tmp_path / "nope.toml"))
    assert r.returncode == 2
    assert "nope.toml:0: (file): cannot read config: No such file or directory" in r.stderr


def test_missing_bdev_file_fails_clearly(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(f'[controller]\nrpc_socket = "{tmp_path}/s.sock"\n[[bdev]]\nname = "f"\n'
                 f'type = "file"\npath = "{tmp_path}/missing/f.img"\nsize = "1MiB"\n')
    r = srrs("start", "-c", str(p))
    assert r.returncode == 1
    assert "bdev f: cannot open" in r.stderr and "No such file or directory" in r.stderr
