"""Which file I/O engine a bdev gets (docs/architecture.md, File I/O engines):
auto is io_uring where the kernel allows it; where io_uring_setup is refused
(ENOSYS, EPERM, EACCES, ENOMEM: a seccomp filter applied by
tests/engine/no_uring.py stands in for an old kernel, Docker's profile,
kernel.io_uring_disabled and a memlock limit before Linux 5.12) native AIO
if io_setup is allowed and the file takes O_DIRECT (a ramfs mount does not),
else the worker threads; `engine` forces one, declared in the config."""

import contextlib
import errno
import os
import subprocess
import sys
import tempfile

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
    assert c.test_io("f", "flush", 0, 0)[0] == 0
    forced = []
    for engine in ("uring", "aio"):
        try:
            c.bdev_create_file("g", sys.argv[1] + "/g.img", 8 << 20, 4096, engine=engine)
            forced.append("created")
            c.bdev_delete("g")
            os.unlink(sys.argv[1] + "/g.img")
        except SrrsError as e:
            forced.append(str(e))
    print(c.bdev_info("f")["engine"])
    for f in forced:
        print(f)
"""


def _probe(d, err, *flags):
    r = subprocess.run(no_uring.PREFIX[:-1] + ["--errno", err, *flags, "--", sys.executable, "-c",
                                               PROBE, str(d)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


@pytest.mark.parametrize("err", ["EPERM", "ENOSYS", "EACCES", "ENOMEM"])
def test_auto_falls_back_when_io_uring_is_refused(tmp_path, err):
    why = os.strerror(getattr(errno, err))
    engine, forced_uring, forced_aio = _probe(tmp_path, err)
    assert engine == no_uring.fallback_engine(tmp_path)   # aio where the file takes O_DIRECT
    # insisting on io_uring where it is refused says why and what to do
    assert f"engine uring: io_uring_setup refused: {why}" in forced_uring
    assert 'use engine = "aio", "threads" or "auto"' in forced_uring
    assert forced_aio == "created" if engine == "aio" else "refuses O_DIRECT" in forced_aio
    # native AIO refused as well: the worker threads, and insisting on it says why
    engine, _, forced_aio = _probe(tmp_path, err, "--no-aio")
    assert engine == "threads"
    assert f"engine aio: io_setup refused: {why}" in forced_aio
    assert 'use engine = "threads" or "auto"' in forced_aio
    assert not (tmp_path / "g.img").exists()


@contextlib.contextmanager
def _ramfs():
    """A ramfs mount (root only): a filesystem that refuses O_DIRECT, as tmpfs
    did before Linux 6.6 (since, it takes the flag and copies in the call)."""
    d = tempfile.mkdtemp(prefix="srrs-ramfs-")
    r = subprocess.run(["mount", "-t", "ramfs", "ramfs", d], capture_output=True, text=True)
    if r.returncode:
        os.rmdir(d)
        pytest.skip(f"cannot mount ramfs: {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", d], check=True)
        os.rmdir(d)


def test_aio_needs_o_direct():
    with _ramfs() as d:
        assert no_uring.fallback_engine(d) == "threads"
        engine, _, forced_aio = _probe(d, "EPERM")
        assert engine == "threads"
        assert f"engine aio: {d}/g.img refuses O_DIRECT (Invalid argument" in forced_aio
        assert "native AIO without it blocks in io_submit" in forced_aio
        assert not os.path.exists(f"{d}/g.img")


def test_auto_is_uring_where_allowed_and_threads_when_asked(tmp_path):
    with Core(reactors=1) as c:
        c.bdev_create_file("a", str(tmp_path / "a.img"), 1 << 20, 4096)
        c.bdev_create_file("x", str(tmp_path / "x.img"), 1 << 20, 4096, engine="aio")
        c.bdev_create_file("t", str(tmp_path / "t.img"), 1 << 20, 4096, engine="threads")
        c.bdev_create_malloc("m", 1 << 20, 4096)
        eng = {b["name"]: b["engine"] for b in c.bdev_list()}
        assert eng == {"a": "uring", "x": "aio", "t": "threads", "m": ""}
        # one reactor serves the three engines at once
        for name in ("a", "x", "t"):
            assert c.test_io(name, "write", 0, 4096, b"x" * 4096)[0] == 0
            assert c.test_io(name, "read", 0, 4096)[1] == b"x" * 4096
        for both in (lib.SRRS_FILE_URING | lib.SRRS_FILE_THREADS,
                     lib.SRRS_FILE_AIO | lib.SRRS_FILE_THREADS):
            with pytest.raises(SrrsError, match="one of uring, aio or threads, not more"):
                check(lib.srrs_bdev_create_file(c.ptr, b"y", str(tmp_path / "y.img").encode(),
                                                1 << 20, 4096, both))


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
                       (CONF.format(type="file", path='path = "/tmp/x.img"\n', engine="posix"),
                        "t.toml:9: bdev[0].engine: must be one of auto, uring, aio, threads")):
        with pytest.raises(cfg.ConfigError) as ei:
            cfg.loads(conf, "t.toml")
        assert str(ei.value).startswith(want), str(ei.value)
    assert parse_fragment({"path": "/tmp/f.img", "engine": "threads"}).engine == "threads"
    assert parse_fragment({"path": "/tmp/f.img", "engine": "aio"}).engine == "aio"
    with pytest.raises(ValueError, match="RAM fragment has no I/O engine"):
        parse_fragment({"ram": "64MiB", "engine": "threads"})
    assert FragmentConfig(path="/tmp/f.img").engine == "auto"
