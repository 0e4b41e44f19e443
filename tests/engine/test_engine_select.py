"""Which file I/O engine a bdev gets (docs/architecture.md, File I/O engines):
auto is io_uring where the kernel allows it and the worker threads where
io_uring_setup is refused (ENOSYS, EPERM, EACCES, ENOMEM: a seccomp filter
applied by tests/engine/no_uring.py stands in for an old kernel, Docker's
profile, kernel.io_uring_disabled and a memlock limit before Linux 5.12); `engine` forces one, declared in the config."""

import errno
import os
import subprocess
import sys

import pytest

from srrs.ctrl import config as cfg
from srrs.ctrl.pool_config import FragmentConfig, parse_fragment
from srrs.ffi.binding import Core, SrrsError, check, lib

from . import no_uring

PROBE = """
import os, sys
from srrs.ffi.binding import Core, SrrsError
with Core(reactors=1) as c:
    c.bdev_create_file("f", sys.argv[1] + "/f.img", 8 << 20, 4096)
    data = os.urandom(8192)
    assert c.test_io("f", "write", 4096, 8192, data)[0] == 0
    assert c.test_io("f", "read", 4096, 8192)[1] == data
    try:
        c.bdev_create_file("g", sys.argv[1] + "/g.img", 8 << 20, 4096, engine="uring")
        forced = "created"
    except SrrsError as e:
        forced = str(e)
    print(c.bdev_info("f")["engine"])
    print(forced)
"""


@pytest.mark.parametrize("err", ["EPERM", "ENOSYS", "EACCES", "ENOMEM"])
def test_auto_takes_threads_when_io_uring_is_refused(tmp_path, err):
    r = subprocess.run(no_uring.PREFIX[:-1] + ["--errno", err, "--", sys.executable, "-c", PROBE,
                                               str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    engine, forced = r.stdout.splitlines()
    assert engine == "threads"
    # insisting on io_uring where it is refused says why and what to do
    assert f"engine uring: io_uring_setup refused: {os.strerror(getattr(errno, err))}" in forced
    assert 'use engine = "threads"' in forced
    assert not (tmp_path / "g.img").exists()


def test_auto_is_uring_where_allowed_and_threads_when_asked(tmp_path):
    with Core(reactors=1) as c:
        c.bdev_create_file("a", str(tmp_path / "a.img"), 1 << 20, 4096)
        c.bdev_create_file("t", str(tmp_path / "t.img"), 1 << 20, 4096, engine="threads")
        c.bdev_create_malloc("m", 1 << 20, 4096)
        eng = {b["name"]: b["engine"] for b in c.bdev_list()}
        assert eng == {"a": "uring", "t": "threads", "m": ""}
        # one reactor serves both engines at once
        for name in ("a", "t"):
            assert c.test_io(name, "write", 0, 4096, b"x" * 4096)[0] == 0
            assert c.test_io(name, "read", 0, 4096)[1] == b"x" * 4096
        with pytest.raises(SrrsError, match="uring or threads, not both"):
            check(lib.srrs_bdev_create_file(c.ptr, b"x", str(tmp_path / "x.img").encode(),
                                            1 << 20, 4096,
                                            lib.SRRS_FILE_URING | lib.SRRS_FILE_THREADS))


CONF = """[controller]
name = "t"

[[bdev]]
name = "b0"
type = "{type}"
size = "1MiB"
{path}engine = "{engine}"
"""


def test_engine_is_declared_and_checked():
    c = cfg.loads(CONF.format(type="file", path='path = "/tmp/x.img"\n', engine="threads"), "t.toml")
    assert c.bdevs[0].engine == "threads"
    assert cfg.bdev_to_dict(c.bdevs[0])["engine"] == "threads"      # saved as configured
    auto = cfg.loads(CONF.format(type="file", path='path = "/tmp/x.img"\n', engine="auto"))
    assert "engine" not in cfg.bdev_to_dict(auto.bdevs[0])           # the default is left out
    for conf, want in ((CONF.format(type="malloc", path="", engine="threads"),
                        "t.toml:8: bdev[0].engine: only a file bdev has an I/O engine"),
                       (CONF.format(type="file", path='path = "/tmp/x.img"\n', engine="aio"),
                        "t.toml:9: bdev[0].engine: must be one of auto, uring, threads")):
        with pytest.raises(cfg.ConfigError) as ei:
            cfg.loads(conf, "t.toml")
        assert str(ei.value).startswith(want), str(ei.value)
    assert parse_fragment({"path": "/tmp/f.img", "engine": "threads"}).engine == "threads"
    with pytest.raises(ValueError, match="RAM fragment has no I/O engine"):
        parse_fragment({"ram": "64MiB", "engine": "threads"})
    assert FragmentConfig(path="/tmp/f.img").engine == "auto"
