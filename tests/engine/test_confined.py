"""Runs confined (docs/architecture.md, File I/O engines; README, Supported
kernels, CPUs and engines): a controller whose io_uring is refused by a
seccomp filter (as in Docker's default profile) falls back to the worker
threads on its own; one run as an unprivileged user (no capability, no
hugepages, no /dev access) with file fragments it owns. Both serve verified
I/O over NVMe/TCP and vhost-user and lose nothing to SIGKILL + restart. The
crash loop and the pair with an io_uring controller under the same filter:
tests/pool/test_crash.py and tests/pair/test_pair_proc.py (their
"no-uring" cases)."""

import os
import pwd
import shutil
import tempfile

import pytest

from . import confined, no_uring


def test_no_uring_controller_serves_and_survives_kill9(tmp_path):
    c = confined.start(tmp_path, no_uring.PREFIX)
    try:
        # chosen automatically, and shown where an operator looks
        assert confined.engines(c) == {k: {"threads"} for k in ("pool_list", "bdev_list",
                                                                "metrics")}
        r = confined.bench_cli(c)
        assert r["verified"] and r["verify_errors"] == 0 and r["errors"] == 0, r
        confined.write_kill_restart_verify(c)
        assert confined.engines(c)["pool_list"] == {"threads"}
    finally:
        c.kill9()


@pytest.mark.side
def test_unprivileged_controller_with_its_own_fragments():
    """`setpriv` to nobody: no capability left (CapEff 0), the fragments
    created by and owned by that user, NVMe/TCP and vhost-user served."""
    nobody = pwd.getpwnam("nobody")
    d = tempfile.mkdtemp(prefix="srrs-nobody-")
    os.chown(d, nobody.pw_uid, nobody.pw_gid)
    prefix = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
              "--inh-caps=-all", "--"]
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
    finally:
        if c is not None:
            c.kill9()
        shutil.rmtree(d, ignore_errors=True)
