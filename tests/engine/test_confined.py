"""Runs confined (docs/architecture.md, File I/O engines; README, Supported
kernels, CPUs and engines): a controller whose io_uring is refused by a
seccomp filter (as in Docker's default profile) falls back on its own to
native AIO (or the worker threads, where the files refuse O_DIRECT); one run as an unprivileged user (no capability, no
hugepages, no /dev access) with file fragments it owns. Both serve verified
I/O over NVMe/TCP and vhost-user and lose nothing to SIGKILL + restart. The
crash loop and the pair with an io_uring controller under the same filter:
tests/pool/test_crash.py and tests/pair/test_pair_proc.py (their
"no-uring" cases)."""

import os
import pwd
import shutil
import sys
import tempfile

import pytest

from srrs.ctrl import launch

from . import as_user, confined, no_uring


def test_no_uring_controller_serves_and_survives_kill9(tmp_path):
    c = confined.start(tmp_path, no_uring.PREFIX)
    want = no_uring.fallback_engine(tmp_path)
    try:
        # chosen automatically, and shown where an operator looks
        assert confined.engines(c) == {k: {want} for k in ("pool_list", "bdev_list",
                                                           "metrics", "console")}
        r = confined.bench_cli(c)
        assert r["verified"] and r["verify_errors"] == 0 and r["errors"] == 0, r
        confined.write_kill_restart_verify(c)
        assert confined.engines(c)["pool_list"] == {want}
    finally:
        c.kill9()


@pytest.mark.side
def test_unprivileged_controller_with_its_own_fragments():
    """As nobody (tests/engine/as_user.py): no capability left (CapEff 0),
    the fragments created by and owned by that user, NVMe/TCP and vhost-user
    served, to our initiators and to a Linux guest (its VM disk on vhost-user,
    a namespace through its kernel's nvme-tcp); what would need privilege fails saying which and why."""
    nobody = pwd.getpwnam("nobody")
    d = tempfile.mkdtemp(prefix="srrs-nobody-")
    os.chown(d, nobody.pw_uid, nobody.pw_gid)
    prefix = [sys.executable, as_user.__file__, "nobody", "--"]
    c = None
    try:
        c = confined.start(d, prefix)
        with open(f"/proc/{c.pid}/status") as f:
            st = dict(ln.split(":", 1) for ln in f.read().splitlines())
        assert st["Uid"].split()[0] == str(nobody.pw_uid) and int(st["CapEff"], 16) == 0
        for name in ("frag0.img", "frag1.img", "v1.sock", "c.sock"):
            assert os.stat(f"{d}/{name}").st_uid == nobody.pw_uid, name
        r = confined.bench_cli(c)
        assert r["verified"] and r["verify_errors"] == 0 and r["errors"] == 0, r
        confined.write_kill_restart_verify(c)
        confined.guest_disks(c)      # a VM's disk and a Linux host's namespace
        c.kill9()
        # what needs privilege says which, and why
        root_only = f"{d}/root-only.img"
        with open(root_only, "wb") as f:
            f.truncate(1 << 20)
        os.chmod(root_only, 0o600)
        for extra, want in (
                ({"bdev": [launch.bdev("b0", "file", None, path=root_only)]},
                 f"cannot open {root_only}: Permission denied (the controller's user needs "
                 "read-write access to the file"),
                ({"nvmf": launch.nvmf(["127.0.0.1:999"])},
                 "nvmf listener 127.0.0.1:999: Permission denied (a port below "
                 "net.ipv4.ip_unprivileged_port_start, 1024 by default, needs root or "
                 "CAP_NET_BIND_SERVICE)")):
            bad = launch.Controller(f"{d}/bad.toml", launch.config(
                launch.controller("bad", f"{d}/bad.sock"), extra=extra), prefix=prefix,
                start=False)
            bad.start(wait=False)
            assert bad.wait(30) != 0
            assert want in bad.output(), bad.tail()
    finally:
        if c is not None:
            c.kill9()
        shutil.rmtree(d, ignore_errors=True)
