"""Runs a command under a seccomp filter that refuses io_uring, as Docker's
and Kubernetes' RuntimeDefault profiles do: io_uring_setup, io_uring_enter
and io_uring_register fail with an errno (EPERM unless --errno says). With
--no-aio, Linux native AIO too (io_setup, io_destroy, io_submit, io_cancel,
io_getevents), as a stricter profile, a kernel without CONFIG_AIO or
qemu-user do: what is left is the worker threads.

    python no_uring.py [--errno EPERM|ENOSYS|EACCES] [--no-aio] -- CMD [ARG...]

A classic-BPF filter of a few instructions installed with prctl through ctypes:
libseccomp's Python binding is a Debian package (python3-seccomp) that this
image does not carry and pip cannot install, and the filter needs nothing
but the standard library. It is inherited across exec (no_new_privs is set
first, as an unprivileged filter requires). install() applies it to the
calling thread only: call it before any thread starts.
"""

import ctypes
import errno
import os
import platform
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
# io_uring_setup, _enter, _register: 425..427 on every architecture (the
# unified syscall table of Linux 5.1+)
NR_FIRST, NR_LAST = 425, 427
# io_setup .. io_getevents: five numbers in a row, where each ABI put them
NR_AIO = {"x86_64": (206, 210), "aarch64": (0, 4)}
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

LD_W_ABS, JEQ_K, JGE_K, JGT_K, RET_K = 0x20, 0x15, 0x35, 0x25, 0x06


def _insn(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)


def install(err: int = errno.EPERM, aio: bool = True) -> None:
    """aio=False: native AIO is refused too."""
    ranges = [(NR_FIRST, NR_LAST)] + ([] if aio else [NR_AIO[platform.machine()]])
    k = len(ranges)
    allow, refuse = 3 + 2 * k, 4 + 2 * k   # instruction indices of the two returns
    insns = [_insn(LD_W_ABS, 0, 0, 4),                                     # seccomp_data.arch
             _insn(JEQ_K, 0, allow - 2, AUDIT_ARCH[platform.machine()]),   # another ABI: allow
             _insn(LD_W_ABS, 0, 0, 0)]                                     # seccomp_data.nr
    for i, (lo, hi) in enumerate(ranges):   # below lo: the next range; above hi: likewise
        insns += [_insn(JGE_K, 0, 1, lo), _insn(JGT_K, 0, refuse - (3 + 2 * i + 2), hi)]
    insns += [_insn(RET_K, 0, 0, SECCOMP_RET_ALLOW), _insn(RET_K, 0, 0, SECCOMP_RET_ERRNO | err)]
    prog = b"".join(insns)
    buf = ctypes.create_string_buffer(prog, len(prog))

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fp = Fprog(len(prog) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong,
                           ctypes.c_ulong]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) or \
            libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fp), 0, 0):
        e = ctypes.get_errno()
        raise OSError(e, f"seccomp filter: {os.strerror(e)}")


#: Command prefix for launch.Proc / launch.Controller: the command runs under the filter.
PREFIX = [sys.executable, os.path.abspath(__file__), "--"]
#: The same, with native AIO refused too.
PREFIX_NO_AIO = PREFIX[:-1] + ["--no-aio", "--"]


def fallback_engine(directory) -> str:
    """The engine auto picks for a file in directory where io_uring is
    refused and native AIO is not: aio if the filesystem takes O_DIRECT."""
    path = os.path.join(str(directory), ".odirect-probe")
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600))
        return "aio"
    except OSError:
        return "threads"
    finally:
        if os.path.exists(path):
            os.unlink(path)


def main(argv):
    err, aio = errno.EPERM, True
    while argv[:1] in (["--errno"], ["--no-aio"]):
        if argv[0] == "--no-aio":
            aio, argv = False, argv[1:]
        else:
            err, argv = getattr(errno, argv[1]), argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    install(err, aio)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
