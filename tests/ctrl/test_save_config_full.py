"""save_config onto a full filesystem (a small tmpfs, real controller): a clear
error, the previous file untouched and no `.tmp.PID` left behind; once space
is back, it writes."""

import os
import subprocess

import pytest

from srrs.ctrl import launch
from srrs.ctrl.rpc import RpcError

from .helpers import Controller, write_config


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096) > 0:
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def test_save_config_on_full_disk(tmp_path, small_fs):
    sock = str(tmp_path / "c.sock")
    c = Controller(write_config(tmp_path / "c.toml", sock, extra={"bdev": [launch.bdev("m0", "malloc", "16MiB")]}), sock)
    try:
        target = small_fs / "running.toml"
        target.write_text("# the previous save\n")
        _fill(small_fs / "filler")
        with pytest.raises(RpcError) as e:
            c.rpc("save_config", {"path": str(target)})
        msg = e.value.message
        assert str(target) in msg and "No space left" in msg and "Errno" not in msg, msg
        assert sorted(os.listdir(small_fs)) == ["filler", "running.toml"]
        assert target.read_text() == "# the previous save\n"
        os.unlink(small_fs / "filler")
        assert c.rpc("save_config", {"path": str(target)}) == {"path": str(target)}
        assert "m0" in target.read_text()
        assert sorted(os.listdir(small_fs)) == ["running.toml"]
    finally:
        c.kill()
