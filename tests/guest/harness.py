"""Boot a real Linux guest under QEMU (TCG) and run shell commands in it.

The guest is the Debian kernel plus a busybox initramfs that carries nvme-cli,
fio, mkfs.ext4, util-linux's blkdiscard and the virtio / nvme-tcp / crc32c
modules (built by ci/guest/setup.sh, cached under $SRRS_GUEST_CACHE or
~/.cache/srrs-guest). Commands go over a virtio-serial port to an agent loop in
the guest's init (ci/guest/rootfs/bin/srrs-agent); the serial console (kernel log)
goes to a file, readable with ``Guest.serial_log()``.

    from tests.guest.harness import Guest, vhost_blk_args

    with Guest(extra_qemu_args=vhost_blk_args("/tmp/vb.sock", num_queues=2)) as g:
        rc, out = g.run("cat /sys/block/vda/size")
        g.check("fio --name=x --filename=/dev/vda --rw=randwrite --size=16M", timeout=600)

The guest reaches the host's 127.0.0.1 at 10.0.2.2 (QEMU user networking), so an
NVMe/TCP target listening on the host at 127.0.0.1:4420 is
``nvme connect -t tcp -a 10.0.2.2 -s 4420 -n NQN`` from the guest.

Under CI (CI=true) a missing QEMU or guest image raises ``GuestUnavailable``;
``require_guest()`` turns that into a pytest skip only outside CI.
"""

from __future__ import annotations

import atexit
import base64
import json
import math
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

__all__ = [
    "Guest", "GuestJob", "CommandResult", "GuestArtifacts",
    "GuestError", "GuestUnavailable", "GuestBootError", "GuestDead",
    "GuestCommandError", "GuestCommandTimeout",
    "find_artifacts", "require_guest", "in_ci", "memfd_args", "vhost_blk_args",
    "REPO_ROOT", "SETUP_SCRIPT",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = REPO_ROOT / "ci" / "guest" / "setup.sh"
QEMU = "qemu-system-x86_64"

AGENT_PORT_NAME = "srrs.agent"
# Host address as seen from the guest with -netdev user.
HOST_FROM_GUEST = "10.0.2.2"
GUEST_IP = "10.0.2.15"


# ----------------------------------------------------------------- errors


class GuestError(Exception):
    """Base class of every error raised by this module."""


class GuestUnavailable(GuestError):
    """QEMU, the guest kernel or the initramfs is missing / cannot be prepared."""


class GuestBootError(GuestError):
    """QEMU did not start, or the guest agent did not come up in time."""


class GuestDead(GuestError):
    """QEMU exited, or the guest agent stopped answering; the guest is unusable."""


class GuestCommandError(GuestError):
    """A command run with check=True exited non-zero."""

    def __init__(self, cmd: str, rc: int, output: str):
        self.cmd, self.rc, self.output = cmd, rc, output
        super().__init__(f"guest command failed (rc={rc}): {cmd!r}\n"
                         f"--- output (tail) ---\n{_tail(output, 60)}")


class GuestCommandTimeout(GuestError, TimeoutError):
    """A command outlived its timeout; the guest killed its process group.

    The guest stays usable. ``output`` holds what it printed until then."""

    def __init__(self, cmd: str, timeout: float, output: str):
        self.cmd, self.timeout, self.output = cmd, timeout, output
        super().__init__(f"guest command timed out after {timeout:g}s: {cmd!r}\n"
                         f"--- output (tail) ---\n{_tail(output, 60)}")


class CommandResult(NamedTuple):
    """Result of ``Guest.run``; unpacks as ``rc, output = g.run(...)``."""
    rc: int
    output: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


def _tail(text: str, lines: int) -> str:
    parts = text.splitlines()
    if len(parts) <= lines:
        return text.rstrip("\n")
    return "[...]\n" + "\n".join(parts[-lines:])


# ------------------------------------------------------------- artifacts


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def cache_dir() -> Path:
    env = os.environ.get("SRRS_GUEST_CACHE")
    if env:
        return Path(env)
    return Path(os.path.expanduser("~")) / ".cache" / "srrs-guest"


class GuestArtifacts(NamedTuple):
    kernel: Path
    initramfs: Path
    kver: str


_artifacts_lock = threading.Lock()
_artifacts: dict[bool, GuestArtifacts] = {}


def find_artifacts(setup: bool | None = None, backports: bool = False) -> GuestArtifacts:
    """Locate (and by default prepare) the guest kernel and initramfs.

    Order: $SRRS_GUEST_KERNEL + $SRRS_GUEST_INITRAMFS if both are set; else run
    ci/guest/setup.sh once per process (idempotent: ~1 s when everything is
    cached; installs packages and downloads the kernel when not) and use the
    paths it prints. ``setup=False`` (or SRRS_GUEST_NO_SETUP=1) reads the last
    manifest setup.sh wrote ($CACHE/guest.json) instead. Raises GuestUnavailable.

    backports=True: the kernel of <codename>-backports instead (setup.sh
    --backports, manifest $CACHE/guest-backports.json): Debian 12's own kernel
    lacks CONFIG_NVME_AUTH (DH-HMAC-CHAP), the backports one has it.
    """
    with _artifacts_lock:
        if backports in _artifacts:
            return _artifacts[backports]
        k, i = os.environ.get("SRRS_GUEST_KERNEL"), os.environ.get("SRRS_GUEST_INITRAMFS")
        if k and i and not backports:
            for p in (k, i):
                if not os.path.isfile(p):
                    raise GuestUnavailable(f"{p} (from SRRS_GUEST_KERNEL/INITRAMFS) does not exist")
            _artifacts[backports] = GuestArtifacts(Path(k), Path(i), "unknown")
            return _artifacts[backports]
        if setup is None:
            setup = os.environ.get("SRRS_GUEST_NO_SETUP", "") not in ("1", "true", "yes")
        if setup:
            # Use what setup.sh printed, not the shared manifest: other checkouts
            # sharing the cache may have rewritten that with their own initramfs.
            info = _run_setup(["--backports"] if backports else [])
            if not {"KERNEL", "INITRAMFS"} <= info.keys():
                raise GuestUnavailable(f"{SETUP_SCRIPT} printed no KERNEL/INITRAMFS")
            art = GuestArtifacts(Path(info["KERNEL"]), Path(info["INITRAMFS"]),
                                 info.get("KVER", "?"))
            where = str(SETUP_SCRIPT)
        else:
            manifest = cache_dir() / ("guest-backports.json" if backports else "guest.json")
            try:
                m = json.loads(manifest.read_text())
            except (OSError, ValueError) as e:
                raise GuestUnavailable(f"guest image manifest {manifest} unreadable ({e}); "
                                       f"run {SETUP_SCRIPT}") from None
            art = GuestArtifacts(Path(m["kernel"]), Path(m["initramfs"]), m.get("kver", "?"))
            where = str(manifest)
        for p in (art.kernel, art.initramfs):
            if not p.is_file():
                raise GuestUnavailable(f"{p} (from {where}) is missing; run {SETUP_SCRIPT}")
        _artifacts[backports] = art
        return art


_pylayers: dict[Path, Path] = {}


def python_initramfs(base: Path) -> Path:
    """The base initramfs with the Python layer appended (ci/guest/build_pylayer.py;
    cached next to it, rebuilt when an input changed: a few seconds). Touched
    on every use: the builder prunes those unused for an hour."""
    with _artifacts_lock:
        p = _pylayers.get(base)
        if p is not None:
            try:
                os.utime(p)
                return p
            except OSError:         # pruned meanwhile: build it again
                pass
        script = REPO_ROOT / "ci" / "guest" / "build_pylayer.py"
        r = subprocess.run([sys.executable, str(script), "--base", str(base), "--out-dir",
                            str(base.parent)], capture_output=True, text=True, timeout=600)
        if r.returncode:
            raise GuestUnavailable(f"{script} failed:\n{_tail(r.stderr + r.stdout, 30)}")
        _pylayers[base] = Path(r.stdout.strip().splitlines()[-1])
        return _pylayers[base]


def _run_setup(args: Sequence[str] = ()) -> dict[str, str]:
    if not SETUP_SCRIPT.exists():
        raise GuestUnavailable(f"{SETUP_SCRIPT} not found")
    if shutil.which("bash") is None:
        raise GuestUnavailable("bash not found")
    try:
        r = subprocess.run(["bash", str(SETUP_SCRIPT), *args], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        raise GuestUnavailable(f"{SETUP_SCRIPT} timed out after 1800 s") from None
    if r.returncode != 0:
        raise GuestUnavailable(f"{SETUP_SCRIPT} failed (rc={r.returncode}):\n"
                               f"{_tail(r.stderr + r.stdout, 30)}")
    info = {}
    for line in r.stdout.splitlines():
        k, sep, v = line.partition("=")
        if sep and k.isupper():
            info[k] = v
    return info


def _check_qemu() -> str:
    q = shutil.which(QEMU)
    if q is None:
        raise GuestUnavailable(f"{QEMU} not found (apt-get install qemu-system-x86, "
                               f"or run {SETUP_SCRIPT})")
    return q


def require_guest(backports: bool = False) -> GuestArtifacts:
    """For pytest: make sure a guest can be booted.

    Outside CI a missing QEMU / guest image skips the calling test (or module,
    if called at import/fixture time); under CI (CI=true) it raises
    GuestUnavailable so the run fails instead of silently skipping."""
    try:
        _check_qemu()
        return find_artifacts(backports=backports)
    except GuestUnavailable as e:
        if in_ci():
            raise
        import pytest
        pytest.skip(f"guest unavailable: {e}")
        raise  # not reached


# ------------------------------------------------------- qemu arg helpers


def memfd_args(mem: str = "512M", id: str = "mem") -> list[str]:
    """RAM as a shared memfd (required by every vhost-user device)."""
    return ["-m", mem,
            "-object", f"memory-backend-memfd,id={id},size={mem},share=on",
            "-numa", f"node,memdev={id}"]


def vhost_blk_args(sock: str | os.PathLike, num_queues: int | None = None,
                   id: str = "vblk0", reconnect: int | None = 1,
                   extra: str = "") -> list[str]:
    """QEMU args for a vhost-user-blk-pci disk whose back end listens on ``sock``.

    QEMU connects as the client, so the back end must listen before the guest
    starts. ``num_queues`` None lets QEMU pick (one per vCPU). ``reconnect``
    (seconds) makes QEMU reconnect after the back end restarts. ``extra`` is
    appended to the -device options (e.g. "bootindex=1")."""
    chr_opts = f"socket,id={id}-chr,path={os.fspath(sock)}"
    if reconnect:
        chr_opts += f",reconnect={int(reconnect)}"
    dev = f"vhost-user-blk-pci,chardev={id}-chr,id={id}"
    if num_queues is not None:
        dev += f",num-queues={int(num_queues)}"
    if extra:
        dev += "," + extra
    return ["-chardev", chr_opts, "-device", dev]


# ------------------------------------------------------------------ Guest

_live_guests: "weakref.WeakSet[Guest]" = weakref.WeakSet()


def fio_verify(dev: str, size: str, runtime: float, bsrange: str = "4k-128k", iodepth: int = 8,
               backlog: int = 128, name: str = "f", extra: str = "") -> str:
    """A time-based fio random-write run on dev whose --verify_backlog reads
    back and checks what it wrote as it goes (a failover in the middle included):
    any error fails the command; its output says "err= 0" when there was none."""
    return (f"fio --name={name} --filename={dev} --ioengine=libaio --direct=1 --rw=randwrite "
            f"--bsrange={bsrange} --size={size} --iodepth={iodepth} --time_based "
            f"--runtime={runtime:g} --verify=crc32c --verify_fatal=1 --verify_backlog={backlog} "
            f"{extra}").rstrip()


@atexit.register
def _kill_leftovers() -> None:
    for g in list(_live_guests):
        try:
            g.close()
        except Exception:
            pass


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


MIN_MEM_MIB = 384
PY_MIN_MEM_MIB = 512


def _mem_mib(mem: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)[bB]?\s*", mem)
    if not m:
        raise ValueError(f"bad mem size {mem!r} (e.g. 512M, 1G)")
    n, unit = float(m.group(1)), (m.group(2) or "M").upper()
    return n * {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1 << 20}[unit]


_NQN_RE = re.compile(r"^[\x21-\x7e]{1,223}$")


class Guest:
    """One QEMU/TCG guest with a command channel. See the module docstring.

    Parameters:
      extra_qemu_args  appended to the QEMU command line (e.g. vhost_blk_args(...))
      smp, mem         vCPUs and RAM; RAM is always a shared memfd (vhost-user)
      hostnqn, hostid  written to /etc/nvme/hostnqn and /etc/nvme/hostid; default:
                       a fresh uuid and nqn.2014-08.org.nvmexpress:uuid:<uuid>
      timeout          seconds to wait for the guest to boot (TCG: ~4-8 s)
      modules          modules to modprobe at boot besides the virtio set
      backports        boot the <codename>-backports kernel (has nvme-auth, DH-HMAC-CHAP)
      kernel_args      extra kernel command line words
      net              add virtio-net on QEMU user networking (guest 10.0.2.15)
      workdir          where sockets and logs go (default: a fresh temp dir,
                       removed by close() unless keep_workdir or SRRS_GUEST_KEEP=1)
      command_grace    extra seconds the host waits past a command's timeout for
                       the guest to report that it killed the command
      verbose_console  also log the early boot messages on the serial console
                       (default "quiet" until init; env SRRS_GUEST_VERBOSE=1)
      python           boot the Python variant of the image (ci/guest/build_pylayer.py:
                       this host's interpreter, the site-packages `srrs csi --mode node`
                       needs and this checkout's `srrs` in the guest, as `srrs`);
                       needs mem >= PY_MIN_MEM_MIB
      hostfwd          (host port, guest port) pairs: QEMU user networking forwards
                       the host's 127.0.0.1:host port to the guest's port (TCP)
      prefix           runs QEMU under this command, e.g. ("ip", "netns", "exec", NS):
                       the guest's user networking then leaves from that namespace,
                       so the guest reaches the addresses NS reaches (10.0.2.2 is
                       NS's loopback); the agent and QMP sockets are files, as ever
    """

    def __init__(self, extra_qemu_args: Sequence[str] = (), smp: int = 2, mem: str = "512M",
                 hostnqn: str | None = None, hostid: str | None = None,
                 timeout: float = 180.0, modules: Iterable[str] = ("nvme_tcp",),
                 kernel_args: Sequence[str] = (), net: bool = True,
                 machine: str = "pc", workdir: str | os.PathLike | None = None,
                 keep_workdir: bool | None = None, command_grace: float = 30.0,
                 verbose_console: bool | None = None, name: str = "guest",
                 backports: bool = False, prefix: Sequence[str] = (),
                 python: bool = False, hostfwd: Iterable[tuple] = ()):
        self.python = python
        self.hostfwd = [(int(h), int(g)) for h, g in hostfwd]
        self.prefix = [str(a) for a in prefix]
        self.extra_qemu_args = [str(a) for a in extra_qemu_args]
        self.smp = int(smp)
        self.mem = str(mem)
        if _mem_mib(self.mem) < MIN_MEM_MIB:
            raise ValueError(f"mem={mem}: the guest needs at least {MIN_MEM_MIB}M (its ~100 MB "
                             f"initramfs must fit in a rootfs capped at half the RAM)")
        if python and _mem_mib(self.mem) < PY_MIN_MEM_MIB:
            raise ValueError(f"mem={mem}: the Python guest needs at least {PY_MIN_MEM_MIB}M "
                             f"(its initramfs is ~155 MB, in a rootfs capped at half the RAM)")
        self.hostid = hostid or str(uuid.uuid4())
        self.hostnqn = hostnqn or f"nqn.2014-08.org.nvmexpress:uuid:{self.hostid}"
        for what, v in (("hostnqn", self.hostnqn), ("hostid", self.hostid)):
            if not _NQN_RE.match(v):
                raise ValueError(f"invalid {what} {v!r} (printable, no spaces, <= 223 chars)")
        self.boot_timeout = float(timeout)
        self.modules = [m for m in modules]
        for m in self.modules:
            if not re.match(r"^[A-Za-z0-9_-]+$", m):
                raise ValueError(f"invalid module name {m!r}")
        self.kernel_args = list(kernel_args)
        self.backports = backports
        self.net = net
        self.machine = machine
        self.command_grace = float(command_grace)
        self.name = name
        if keep_workdir is None:
            keep_workdir = os.environ.get("SRRS_GUEST_KEEP", "") in ("1", "true", "yes")
        self.keep_workdir = keep_workdir
        if verbose_console is None:
            verbose_console = os.environ.get("SRRS_GUEST_VERBOSE", "") in ("1", "true", "yes")
        self.verbose_console = verbose_console
        self._own_workdir = workdir is None
        self._workdir_arg = workdir
        self.workdir: Path | None = None
        self.boot_id = secrets.token_hex(6)
        self.boot_seconds: float | None = None

        self.proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._cond = threading.Condition()
        self._buf = bytearray()
        self._eof = False
        self._eof_reason = "agent channel closed"
        self._run_lock = threading.Lock()
        self._broken: str | None = None
        self._closed = False
        self._transcript = None
        self._final_serial: str | None = None
        self._final_qemu: str | None = None
        self._final_agent: str | None = None

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> "Guest":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not isinstance(exc, GuestError):
            # Harness errors already carry the console tail; others get it here.
            sys.stderr.write(f"--- {self.name}: serial console (tail) ---\n"
                             f"{_tail(self.serial_log(), 40)}\n")
        self.close()

    def qemu_command(self) -> list[str]:
        """The QEMU command line start() uses (needs the artifacts)."""
        art = find_artifacts(backports=self.backports)
        assert self.workdir is not None
        w = self.workdir
        # Printing the early boot log over the emulated 8250 costs ~1 s under
        # TCG: "quiet" drops it (warnings, oopses and panics still show, the rest
        # is in g.dmesg()); init then sets the console log level back to 7, so
        # every later kernel message (nvme connects, I/O errors) is on the
        # console. verbose_console=True or SRRS_GUEST_VERBOSE=1 keeps everything.
        quiet = [] if self.verbose_console else ["quiet"]
        append = ["console=ttyS0,115200", *quiet, "panic=-1", "mitigations=off",
                  f"srrs.bootid={self.boot_id}", f"srrs.hostnqn={self.hostnqn}",
                  f"srrs.hostid={self.hostid}", f"srrs.agent={AGENT_PORT_NAME}"]
        if not self.net:
            append.append("srrs.net=0")
        if self.modules:
            append.append("srrs.modules=" + ",".join(self.modules))
        append += self.kernel_args
        cmd = [QEMU, "-accel", "tcg", "-machine", self.machine, "-cpu", "max",
               "-smp", str(self.smp), *memfd_args(self.mem),
               "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
               "-kernel", str(art.kernel),
               "-initrd", str(python_initramfs(art.initramfs) if self.python else art.initramfs),
               "-append", " ".join(append),
               "-chardev", f"file,id=ser0,path={w / 'console.log'}", "-serial", "chardev:ser0",
               "-device", "virtio-serial-pci,id=vser0",
               "-chardev", f"socket,id=agent0,path={w / 'agent.sock'}",
               "-device", f"virtserialport,bus=vser0.0,chardev=agent0,name={AGENT_PORT_NAME}",
               "-device", "virtio-rng-pci",
               "-qmp", f"unix:{w / 'qmp.sock'},server=on,wait=off"]
        if self.net:
            fwd = "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in self.hostfwd)
            cmd += ["-netdev", "user,id=n0" + fwd, "-device", "virtio-net-pci,netdev=n0"]
        return cmd + self.extra_qemu_args

    def start(self) -> "Guest":
        """Boot the guest and wait until its agent answers. Raises GuestBootError."""
        if self.proc is not None:
            raise GuestError("guest already started")
        _check_qemu()
        find_artifacts(backports=self.backports)
        if self._own_workdir:
            self.workdir = Path(tempfile.mkdtemp(prefix="srrs-guest-",
                                                 dir=os.environ.get("SRRS_GUEST_TMPDIR")))
        else:
            self.workdir = Path(self._workdir_arg)
            self.workdir.mkdir(parents=True, exist_ok=True)
        w = self.workdir
        if len(str(w / "agent.sock")) > 100:
            raise GuestError(f"workdir path too long for unix sockets: {w}")
        _live_guests.add(self)
        t0 = time.monotonic()

        # The host listens and QEMU connects: no connect-retry race.
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lsock.bind(str(w / "agent.sock"))
            lsock.listen(1)
            self._transcript = open(w / "agent.log", "wb", buffering=0)
            qemu_log = open(w / "qemu.log", "wb")
            cmd = self.prefix + self.qemu_command()
            (w / "qemu.cmdline").write_text(shlex.join(cmd) + "\n")
            preexec = _set_pdeathsig if threading.current_thread() is threading.main_thread() else None
            try:
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=qemu_log,
                                             stderr=subprocess.STDOUT, preexec_fn=preexec,
                                             close_fds=True)
            except OSError as e:
                raise GuestBootError(f"cannot start {QEMU}: {e}") from None
            finally:
                qemu_log.close()
            lsock.settimeout(0.2)
            deadline = t0 + min(self.boot_timeout, 60.0)
            while True:
                try:
                    self._sock, _ = lsock.accept()
                    break
                except socket.timeout:
                    if self.proc.poll() is not None:
                        raise self._boot_error(f"QEMU exited with rc={self.proc.returncode} "
                                               f"before connecting the agent port") from None
                    if time.monotonic() > deadline:
                        raise self._boot_error("QEMU did not connect the agent socket") from None
        except BaseException:
            lsock.close()
            self.kill()
            raise
        lsock.close()
        self._sock.setblocking(True)
        self._reader = threading.Thread(target=self._read_loop, name=f"{self.name}-agent-reader",
                                        daemon=True)
        self._reader.start()

        marker = f"__SRRS_READY__ {self.boot_id}\n".encode()
        try:
            end = self._wait(lambda buf: self._find_end(buf, marker), t0 + self.boot_timeout,
                             what="boot")
        except GuestDead as e:
            self.kill()
            raise GuestBootError(str(e)) from None
        except GuestBootError:
            self.kill()
            raise
        with self._cond:
            del self._buf[:end]
        self.boot_seconds = time.monotonic() - t0
        return self

    @staticmethod
    def _find_end(buf: bytearray, marker: bytes) -> int | None:
        i = buf.find(marker)
        return None if i < 0 else i + len(marker)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL QEMU (if running) and wait for it. Logs stay readable."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self._close_channel()

    def shutdown(self, timeout: float = 30.0) -> int | None:
        """Clean poweroff (sync + poweroff -f in the guest); SIGKILL after timeout.

        Returns QEMU's exit status (None if it had never started)."""
        if self.proc is None:
            return None
        if self.alive and self._sock is not None and self._broken is None:
            try:
                with self._run_lock:
                    self._send(f"RUN {secrets.token_hex(6)} 60 "
                               f"{base64.b64encode(b'sync; poweroff -f').decode()}\n")
            except (GuestError, OSError):
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        return self.proc.returncode

    def close(self) -> None:
        """Kill QEMU (if still running) and remove the work dir (unless kept)."""
        if self._closed:
            return
        self.kill()
        self._closed = True
        _live_guests.discard(self)
        w = self.workdir
        if w is not None:
            # Keep the logs in memory so serial_log() etc. work after close().
            self._final_serial = self._read_text(w / "console.log")
            self._final_qemu = self._read_text(w / "qemu.log")
            self._final_agent = self._read_text(w / "agent.log")
            if self._own_workdir and not self.keep_workdir:
                shutil.rmtree(w, ignore_errors=True)
            elif self.keep_workdir:
                sys.stderr.write(f"{self.name}: work dir kept: {w}\n")

    def __del__(self):
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
        except Exception:
            pass

    # ------------------------------------------------------------- logs

    @staticmethod
    def _read_text(p: Path) -> str:
        try:
            return p.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""

    def serial_log(self) -> str:
        """The whole serial console (kernel log + init messages) so far."""
        if self._final_serial is not None:
            return self._final_serial
        return self._read_text(self.workdir / "console.log") if self.workdir else ""

    def qemu_log(self) -> str:
        """QEMU's own stdout/stderr."""
        if self._final_qemu is not None:
            return self._final_qemu
        return self._read_text(self.workdir / "qemu.log") if self.workdir else ""

    def agent_log(self) -> str:
        """Everything the guest agent sent (all command outputs with markers)."""
        if self._final_agent is not None:
            return self._final_agent
        return self._read_text(self.workdir / "agent.log") if self.workdir else ""

    def dmesg(self, timeout: float = 30.0) -> str:
        """The guest kernel log (needs a live agent; see serial_log() otherwise)."""
        return self.check("dmesg", timeout=timeout)

    def diagnostics(self, lines: int = 40) -> str:
        parts = [f"--- {self.name}: serial console (last {lines} lines) ---",
                 _tail(self.serial_log(), lines) or "(empty)"]
        q = self.qemu_log().strip()
        if q:
            parts += ["--- qemu output ---", _tail(q, 20)]
        if self.proc is not None and self.proc.poll() is not None:
            parts.append(f"--- qemu exit status: {self.proc.returncode} ---")
        if self.workdir is not None and (self.keep_workdir or not self._closed):
            parts.append(f"--- work dir: {self.workdir} ---")
        return "\n".join(parts)

    def _boot_error(self, msg: str) -> GuestBootError:
        return GuestBootError(f"{self.name}: {msg}\n{self.diagnostics()}")

    # ---------------------------------------------------------- channel

    def _read_loop(self) -> None:
        sock = self._sock
        while True:
            try:
                data = sock.recv(1 << 16)
            except OSError as e:
                data = b""
                self._eof_reason = f"agent channel recv failed: {e}"
            if self._transcript is not None and data:
                try:
                    self._transcript.write(data)
                except (OSError, ValueError):
                    pass
            with self._cond:
                if not data:
                    self._eof = True
                    self._cond.notify_all()
                    return
                self._buf += data
                self._cond.notify_all()

    def _close_channel(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        self._sock = None
        if self._transcript is not None:
            self._transcript.close()
            self._transcript = None
        if self._broken is None:
            self._broken = "guest was stopped"

    def _send(self, line: str, timeout: float = 60.0) -> None:
        # The reader thread blocks in recv() on the same socket, so its mode must
        # stay blocking (settimeout() here would make that recv() fail with
        # EAGAIN): wait for writability with poll and send with MSG_DONTWAIT.
        sock = self._sock
        if sock is None:
            raise GuestDead(f"{self.name}: not running")
        data = memoryview(line.encode())
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLOUT)
        try:
            while data:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("guest is not reading its command channel")
                if not poller.poll(min(left, 1.0) * 1000):
                    continue
                try:
                    n = sock.send(data, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    continue
                data = data[n:]
        except OSError as e:
            self._broken = f"agent socket send failed: {e}"
            raise GuestDead(f"{self.name}: {self._broken}\n{self.diagnostics()}") from None

    def _wait(self, finder, deadline: float, what: str):
        """Wait until finder(buf) returns non-None; returns it. Checks QEMU health."""
        with self._cond:
            while True:
                r = finder(self._buf)
                if r is not None:
                    return r
                if self.proc is not None and self.proc.poll() is not None:
                    self._broken = f"QEMU exited (rc={self.proc.returncode})"
                    raise GuestDead(f"{self.name}: {self._broken} during {what}\n"
                                    f"{self.diagnostics()}")
                if self._eof:
                    self._broken = self._eof_reason
                    raise GuestDead(f"{self.name}: {self._broken} during {what}\n"
                                    f"{self.diagnostics()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    if what == "boot":
                        raise GuestBootError(f"{self.name}: guest not ready after "
                                             f"{self.boot_timeout:g}s\n{self.diagnostics()}")
                    return None
                self._cond.wait(min(left, 0.5))

    def run(self, cmd: str, timeout: float | None = 60.0, check: bool = False) -> CommandResult:
        """Run ``cmd`` with /bin/sh in the guest; returns (rc, output).

        stdout and stderr are merged; stdin is /dev/null; cwd is /root. ``cmd``
        may be any multi-line script. After ``timeout`` seconds (None: 24 h) the
        guest SIGKILLs the command's process group and GuestCommandTimeout is
        raised (the guest stays usable). If the guest does not even report that,
        or QEMU dies, GuestDead is raised and the guest is unusable. With
        check=True a non-zero rc raises GuestCommandError."""
        if timeout is None:
            timeout = 86400.0
        gt = max(1, math.ceil(timeout))
        with self._run_lock:
            if self._broken is not None:
                raise GuestDead(f"{self.name}: unusable: {self._broken}")
            cid = secrets.token_hex(6)
            begin = f"__SRRS_BEGIN_{cid}__\n".encode()
            end_re = re.compile(rb"\n__SRRS_END_" + cid.encode() + rb"_(\d+)_(ok|timeout)__\n")
            self._send(f"RUN {cid} {gt} {base64.b64encode(cmd.encode()).decode()}\n")
            deadline = time.monotonic() + gt + self.command_grace
            state = {"scan": 0}

            def finder(buf: bytearray):
                b = buf.find(begin)
                if b < 0:
                    return None
                start = b + len(begin)
                m = end_re.search(buf, max(start - 1, state["scan"]))
                if m is None:
                    state["scan"] = max(start - 1, len(buf) - 64)
                    return None
                return start, m

            r = self._wait(finder, deadline, what=f"command {cmd!r}")
            if r is None:
                with self._cond:
                    b = self._buf.find(begin)
                    partial = self._buf[b + len(begin):] if b >= 0 else b""
                self._broken = f"agent did not answer within {gt + self.command_grace:g}s"
                raise GuestDead(f"{self.name}: {self._broken} for {cmd!r}\n"
                                f"--- partial output ---\n"
                                f"{_tail(partial.decode('utf-8', 'replace'), 20)}\n"
                                f"{self.diagnostics()}")
            start, m = r
            with self._cond:
                out = self._buf[start:m.start()].decode("utf-8", "replace")
                rc, status = int(m.group(1)), m.group(2).decode()
                del self._buf[:m.end()]
        if status == "timeout":
            raise GuestCommandTimeout(cmd, timeout, out)
        if check and rc != 0:
            raise GuestCommandError(cmd, rc, out)
        return CommandResult(rc, out)

    def check(self, cmd: str, timeout: float | None = 60.0) -> str:
        """run(cmd, check=True) and return its output."""
        return self.run(cmd, timeout=timeout, check=True).output

    def ping(self, timeout: float = 10.0) -> bool:
        """True if the agent answers within timeout (and is not busy)."""
        with self._run_lock:
            if self._broken is not None:
                return False
            pid = secrets.token_hex(6)
            marker = f"__SRRS_PONG_{pid}__\n".encode()
            self._send(f"PING {pid}\n")
            try:
                r = self._wait(lambda buf: self._find_end(buf, marker),
                               time.monotonic() + timeout, what="ping")
            except GuestDead:
                return False
            if r is None:
                return False
            with self._cond:
                del self._buf[:r]
            return True

    # ----------------------------------------------------- background jobs

    def spawn(self, cmd: str, name: str | None = None) -> "GuestJob":
        """Start ``cmd`` in the background in the guest and return at once.

        Its output goes to a guest file (``job.output()``), its exit code is
        kept (``job.wait()``), and it has its own process group (``job.kill()``).
        Use it for I/O that must keep running while the test does something else
        (e.g. fio during a failover)."""
        name = name or f"job-{secrets.token_hex(4)}"
        if not re.match(r"^[A-Za-z0-9_.-]+$", name):
            raise ValueError(f"invalid job name {name!r}")
        d = f"/tmp/.srrs-jobs/{name}"
        script = (
            f"set -e; rm -rf {d}; mkdir -p {d}\n"
            f"base64 -d > {d}/cmd <<'__SRRS_EOF__'\n"
            f"{base64.encodebytes(cmd.encode()).decode()}__SRRS_EOF__\n"
            # The wrapper records the exit code; the command itself runs in its
            # own session (busybox setsid does not fork for a non-group-leader,
            # so its pid is its process group id, which job.kill() signals).
            f"sh -c 'setsid sh {d}/cmd > {d}/out 2>&1 </dev/null & echo $! > {d}/pid.tmp; "
            f"mv {d}/pid.tmp {d}/pid; wait $!; echo $? > {d}/rc.tmp; mv {d}/rc.tmp {d}/rc' "
            f"</dev/null >/dev/null 2>&1 &\n"
            f"n=0; while [ ! -e {d}/pid ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n+1)); done\n"
            f"cat {d}/pid\n")
        pid = int(self.check(script, timeout=30).strip())
        return GuestJob(self, name, d, pid)

    # ------------------------------------------------------- NVMe multipath

    def connect_paths(self, nqn: str, paths: Iterable[tuple], opts: str = "",
                      timeout: float = 30.0) -> str:
        """`nvme connect` to nqn at every (address, port) of paths, then wait
        until the kernel's native multipath shows them all under the first
        subsystem's namespace 1; returns its block device (/dev/nvme0n1)."""
        paths = list(paths)
        for addr, port in paths:
            self.check(f"nvme connect -t tcp -a {addr} -s {port} -n {nqn} {opts}".rstrip(),
                       timeout=60)
        want, n = str(len(paths)), ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = self.run("ls /sys/block | grep -cE '^nvme0c[0-9]+n1$'")[1].strip()
            if n == want:
                return "/dev/nvme0n1"
            time.sleep(0.2)
        raise GuestError(f"{n or 0} of {want} paths after {timeout} s:\n"
                         + self.run("nvme list-subsys; ls /sys/block")[1])


    # -------------------------------------------------------- file helpers

    def write_file(self, path: str, data: bytes | str, mode: int | None = None,
                   timeout: float = 60.0) -> None:
        """Create/overwrite a file in the guest."""
        if isinstance(data, str):
            data = data.encode()
        b64 = base64.encodebytes(data).decode()
        script = f"base64 -d > {shlex.quote(path)} <<'__SRRS_EOF__'\n{b64}__SRRS_EOF__\n"
        if mode is not None:
            script += f"chmod {mode:o} {shlex.quote(path)}\n"
        self.run(script, timeout=timeout, check=True)

    def read_file(self, path: str, timeout: float = 60.0) -> bytes:
        """Return the contents of a guest file."""
        out = self.run(f"base64 {shlex.quote(path)}", timeout=timeout, check=True).output
        return base64.b64decode(out)

    # ---------------------------------------------------------------- QMP

    def qmp(self, execute: str, timeout: float = 30.0, **arguments) -> object:
        """Run one QMP command on the guest's QEMU; returns its "return" value.

        E.g. g.qmp("device_del", id="vblk0"). Raises GuestError on a QMP error."""
        if not self.alive:
            raise GuestDead(f"{self.name}: not running")
        deadline = time.monotonic() + timeout
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(self.workdir / "qmp.sock"))
            f = s.makefile("rwb")

            def reply() -> dict:
                while True:
                    if time.monotonic() > deadline:
                        raise GuestError(f"QMP {execute}: timeout")
                    line = f.readline()
                    if not line:
                        raise GuestError(f"QMP {execute}: connection closed")
                    msg = json.loads(line)
                    if "return" in msg or "error" in msg:
                        return msg

            greeting = json.loads(f.readline() or b"{}")
            if "QMP" not in greeting:
                raise GuestError(f"QMP: unexpected greeting {greeting!r}")
            f.write(b'{"execute": "qmp_capabilities"}\n')
            f.flush()
            reply()
            req = {"execute": execute}
            if arguments:
                req["arguments"] = arguments
            f.write(json.dumps(req).encode() + b"\n")
            f.flush()
            r = reply()
            if "error" in r:
                raise GuestError(f"QMP {execute} {arguments}: {r['error']}")
            return r["return"]
        except (OSError, ValueError) as e:
            raise GuestError(f"QMP {execute}: {e}") from None
        finally:
            s.close()

    def __repr__(self) -> str:
        state = "running" if self.alive else ("closed" if self._closed else "stopped")
        return f"<Guest {self.name} {state} workdir={self.workdir}>"


class GuestJob:
    """A background command started with ``Guest.spawn``."""

    def __init__(self, guest: Guest, name: str, dir: str, pid: int):
        self.guest, self.name, self.dir, self.pid = guest, name, dir, pid

    def poll(self) -> int | None:
        """Exit code if the job has finished, else None."""
        out = self.guest.check(f"cat {self.dir}/rc 2>/dev/null || true", timeout=30).strip()
        return int(out) if out else None

    def output(self) -> str:
        """Everything the job has printed so far."""
        return self.guest.check(f"cat {self.dir}/out", timeout=60)

    def wait(self, timeout: float = 600.0, interval: float = 0.5) -> CommandResult:
        """Wait for the job to finish; returns (rc, output). Raises
        GuestCommandTimeout (the job keeps running) if it does not in time."""
        deadline = time.monotonic() + timeout
        while True:
            rc = self.poll()
            if rc is not None:
                return CommandResult(rc, self.output())
            if time.monotonic() > deadline:
                raise GuestCommandTimeout(f"[job {self.name}]", timeout, self.output())
            time.sleep(interval)

    def kill(self, sig: str = "KILL") -> None:
        """Signal the job's whole process group."""
        self.guest.run(f"kill -{sig} -{self.pid} 2>/dev/null || kill -{sig} {self.pid}",
                       timeout=30)

    def __repr__(self) -> str:
        return f"<GuestJob {self.name} pid={self.pid}>"
