"""Runs `srrs ARGS` as another user, in this process:

    python as_user.py USER -- PYTHON -m srrs.ctrl.cli ARGS...

(the tail is launch.SRRS + ARGS, so it serves as a launch.Proc prefix). The
imports `srrs start` needs happen first, while still root, then the process
becomes USER (groups, gid and uid: every capability is gone, CapEff 0) and
only then runs the command. Why not setpriv: the test image's Python and its
packages live under /root, which another user cannot read; everything srrs
does (files, sockets, io_uring, memory) happens after the switch.
"""

import ctypes
import encodings.idna  # noqa: F401  (getaddrinfo's host codec, imported lazily: /root is 0700)
import http.server  # noqa: F401  (what the metrics server imports when it starts)
import os
import pwd
import sys
import wsgiref.simple_server  # noqa: F401

import prometheus_client.exposition  # noqa: F401

from srrs.ctrl import cli, daemon  # noqa: F401  (the controller and every service it may start)

PR_CAPBSET_DROP = 24


def become(name: str) -> None:
    u = pwd.getpwnam(name)
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(64):  # the bounding set too: nothing to regain through exec
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    os.setgroups([])
    os.setresgid(u.pw_gid, u.pw_gid, u.pw_gid)
    os.setresuid(u.pw_uid, u.pw_uid, u.pw_uid)  # from uid 0 to another: the capabilities go


def main(argv):
    user, rest = argv[0], argv[argv.index("--") + 1:]
    args = rest[rest.index("srrs.ctrl.cli") + 1:]
    become(user)
    sys.exit(cli.main(args))


if __name__ == "__main__":
    main(sys.argv[1:])
