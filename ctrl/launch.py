"""Configs and processes of controllers and witnesses: what `srrs demo` and the
tests start (docs/architecture.md, Control plane).

A config is Python data, the same tables the TOML file has (`controller()`,
`bdev()`, `pool()`, `volume()`, `nvmf()`, `vhost()`, `pair()`, `metrics()`
build the usual ones; `config()` puts them together, `merge()` adds more) and
`write_config()` writes it with the toml library, so quoting and escaping are
the library's, never a template's. A `Controller` is `srrs start -c FILE` as a
managed process: its output goes to a log file next to the config, it is ready
when its RPC socket answers, `stop()` is SIGTERM then SIGKILL after a timeout,
`kill9()` a crash, `restart()` the same config again. `Witness` is
`srrs witness`, `make_keys()` the CURVE keys and mirror secret of a pair
(`srrs keygen`, in this process), `Pair` a witness and two controllers with
those keys, PAIRED. A `prefix` (e.g. `ip netns exec NS`) runs a process
somewhere else; the namespaces themselves are the caller's.

Only RPC calls (`RpcClient`) talk to a running controller here, never the
`srrs` noun commands, whose flags are the CLI's business.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Iterable, Optional, Sequence

import toml

from .rpc import RpcClient, RpcError

SRRS = [sys.executable, "-m", "srrs.ctrl.cli"]
LOOPBACK = "127.0.0.1"


# ---- ports and paths ------------------------------------------------------------------

def _below_ephemeral() -> tuple:
    """Ports the kernel never picks for an outgoing connection: below its
    ephemeral range (ip_local_port_range)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return (10000, low - 1) if low > 11000 else (low, 65535)


def free_ports(n: int, host: str = LOOPBACK) -> list:
    """n distinct TCP ports free on host right now (bound together, then released:
    the caller binds them soon after). Taken at random below the ephemeral
    range: a port the kernel handed out as ephemeral and we released could be
    taken meanwhile by any outgoing connection on the machine (an etcd client
    opening thousands, in a parallel test lane), one of ours only by another
    caller that draws the same random port."""
    lo, hi = _below_ephemeral()
    socks: list = []
    try:
        for _ in range(50 * n):
            if len(socks) == n:
                break
            s = socket.socket()
            try:
                s.bind((host, random.randint(lo, hi)))
                socks.append(s)
            except OSError:
                s.close()
        while len(socks) < n:  # a crowded range: let the kernel choose
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = LOOPBACK) -> int:
    return free_ports(1, host)[0]


def pair_ports(names: Sequence[str] = ("a", "b")) -> dict:
    """coord_<n>, mirror_<n> for each controller of a pair, and witness."""
    keys = [f"{k}_{n}" for k in ("coord", "mirror") for n in names] + ["witness"]
    return dict(zip(keys, free_ports(len(keys))))


# ---- config sections ------------------------------------------------------------------
# Each returns the table as the file has it; keyword arguments are further keys
# of that table, passed through as they are (None leaves a key out).

def _table(**kw) -> dict:
    return {k: v for k, v in kw.items() if v is not None}


def controller(name: str, rpc_socket: str, reactors: int = 1, poll_mode: str = "adaptive",
               **kw) -> dict:
    return _table(name=name, rpc_socket=str(rpc_socket), reactors=reactors,
                  poll_mode=poll_mode, **kw)


def bdev(name: str, type: str = "malloc", size="64MiB", **kw) -> dict:
    return _table(name=name, type=type, size=size, **kw)


def fragment(path=None, size=None, **kw) -> dict:
    return _table(path=None if path is None else str(path), size=size, **kw)


def pool(name: str, fragments: Iterable[dict], **kw) -> dict:
    return _table(name=name, fragments=list(fragments), **kw)


def volume(name: str, pool: str, size, **kw) -> dict:
    return _table(name=name, pool=pool, size=size, **kw)


def subsystem(nqn: str, namespaces: Iterable[str] = (), serial: Optional[str] = None,
              allow_hosts: Optional[Iterable[str]] = ("*",), **kw) -> dict:
    """allow_hosts None leaves the key out (no host allowed); no namespaces, none."""
    return _table(nqn=nqn, serial=serial, namespaces=list(namespaces) or None,
                  allow_hosts=None if allow_hosts is None else list(allow_hosts), **kw)


def nvmf(listen: Iterable[str], subsystems: Iterable[dict] = (), cntlid_min: Optional[int] = None,
         **kw) -> dict:
    """[nvmf]; cntlid_min alone gives the range [min, min + 999], a pair's
    controllers each own one (docs/architecture.md, Pair)."""
    if cntlid_min is not None:
        kw.setdefault("cntlid_max", cntlid_min + 999)
    t = _table(listen=list(listen), cntlid_min=cntlid_min, **kw)
    subs = list(subsystems)
    if subs:
        t["subsystem"] = subs
    return t


def vhost(name: str, socket: str, bdev: str, **kw) -> dict:
    return _table(name=name, socket=str(socket), bdev=bdev, **kw)


def metrics(listen: str, **kw) -> dict:
    return _table(listen=listen, **kw)


def pair(name: str, peer: str, ports: dict, state_dir, volumes: Iterable[str] = ("v0",),
         keys: Optional[dict] = None, host: str = LOOPBACK, peer_host: str = LOOPBACK,
         witness_host: str = LOOPBACK, heartbeat_ms: int = 100, miss_count: int = 10,
         lease_ms: int = 2000, **kw) -> dict:
    """[pair] of controller `name`. ports: pair_ports(); keys: make_keys(), or
    None for `insecure = true` (unless kw brings key entries of its own)."""
    t = _table(self=name, peer=peer,
               coord_bind=f"tcp://{host}:{ports['coord_' + name]}",
               peer_coord=f"tcp://{peer_host}:{ports['coord_' + peer]}",
               mirror_listen=f"{host}:{ports['mirror_' + name]}",
               peer_mirror=f"{peer_host}:{ports['mirror_' + peer]}",
               witness=f"tcp://{witness_host}:{ports['witness']}",
               volumes=list(volumes), state_dir=str(state_dir), heartbeat_ms=heartbeat_ms,
               miss_count=miss_count, lease_ms=lease_ms)
    if keys is not None:
        t.update(pair_keys(keys, name, peer))
    elif "secret_key" not in kw:
        t["insecure"] = True
    t.update(_table(**kw))
    return t


def pair_keys(keys: dict, name: str, peer: str) -> dict:
    """The key entries of [pair] for controller `name` (keys: make_keys())."""
    return {"secret_key": f"{keys[name]}_secret", "peer_public_key": str(keys[peer]),
            "witness_public_key": str(keys["witness_public"]),
            "mirror_secret": str(keys["mirror_secret"])}


def config(ctrl: dict, bdevs: Iterable[dict] = (), pools: Iterable[dict] = (),
           volumes: Iterable[dict] = (), nvmf: Optional[dict] = None,
           vhosts: Iterable[dict] = (), pair: Optional[dict] = None,
           metrics: Optional[dict] = None, extra=None) -> dict:
    """A whole config; extra: more of it (a dict, or TOML text), merged in."""
    conf = {"controller": dict(ctrl)}
    for key, val in (("bdev", bdevs), ("pool", pools), ("volume", volumes), ("vhost", vhosts)):
        val = list(val)
        if val:
            conf[key] = val
    for key, val in (("nvmf", nvmf), ("pair", pair), ("metrics", metrics)):
        if val is not None:
            conf[key] = val
    return merge(conf, extra)


def merge(conf: dict, extra) -> dict:
    """conf with extra (a dict or TOML text) added: arrays of tables ([[bdev]])
    are appended to, tables updated key by key (recursively), any other value
    replaced."""
    if not extra:
        return conf
    if isinstance(extra, str):
        extra = toml.loads(extra)
    conf = dict(conf)  # the caller's stays as it was
    for k, v in extra.items():
        old = conf.get(k)
        if is_array_of_tables(old) and is_array_of_tables(v):
            conf[k] = old + v
        elif isinstance(old, dict) and isinstance(v, dict):
            conf[k] = merge(old, v)
        else:
            conf[k] = v
    return conf


def is_array_of_tables(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def dumps(conf: dict) -> str:
    # one section at a time, in the order given: [controller] first, as people write it
    return "\n".join(toml.dumps({k: v}) for k, v in conf.items())


def write_config(path, conf: dict) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(dumps(conf))
    return str(path)


# ---- processes ------------------------------------------------------------------------

class Proc:
    """`srrs ARGS` (after prefix) with stdout and stderr appended to log;
    preexec runs in the child before the exec (limits, nice)."""

    def __init__(self, args: Sequence[str], log, prefix: Sequence[str] = (),
                 session: bool = False, start: bool = True,
                 preexec: Optional[Callable[[], None]] = None):
        self.args = list(prefix) + SRRS + list(args)
        self.log_path = str(log)
        self.session = session  # own session: a terminal's Ctrl-C reaches only the caller
        self.preexec = preexec
        self.proc: Optional[subprocess.Popen] = None
        if start:
            self.start()

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT,
                                         start_new_session=self.session,
                                         preexec_fn=self.preexec)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: Optional[float] = None) -> int:
        return self.proc.wait(timeout)

    def kill9(self) -> Optional[int]:
        """SIGKILL, as a crash; the exit status (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(10)

    kill = kill9

    def stop(self, timeout: float = 15) -> Optional[int]:
        """SIGTERM and wait; past timeout SIGKILL, and TimeoutExpired is raised:
        a process that does not stop on SIGTERM is a bug to see, not to hide."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
                raise
        return self.proc.returncode

    def output(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def tail(self, n: int = 15) -> str:
        return "".join(self.output().splitlines(keepends=True)[-n:])


class Controller(Proc):
    """`srrs start -c CONFIG [ARGS]`. conf: a dict (written to config, which must be
    given then) or None for a config file already there; args: more `srrs start`
    options (--log-level ...). The RPC socket is
    the config's [controller] rpc_socket unless sock says otherwise; the log
    is CONFIG with .log for .toml unless log says otherwise."""

    def __init__(self, config, conf: Optional[dict] = None, sock: Optional[str] = None,
                 log=None, prefix: Sequence[str] = (), session: bool = False,
                 ready_timeout: float = 60, start: bool = True, name: Optional[str] = None,
                 preexec: Optional[Callable[[], None]] = None, args: Sequence[str] = ()):
        self.config = str(config)
        if conf is not None:
            write_config(self.config, conf)
        if sock is None:
            with open(self.config, encoding="utf-8") as f:
                sock = toml.load(f)["controller"]["rpc_socket"]
        self.sock = str(sock)
        self.name = name or os.path.basename(self.config).rsplit(".", 1)[0]
        self.ready_timeout = ready_timeout
        if log is None:
            base = self.config[:-5] if self.config.endswith(".toml") else self.config
            log = base + ".log"
        super().__init__(["start", "-c", self.config, *args], log, prefix, session, start=False,
                         preexec=preexec)
        if start:
            self.start()

    def start(self, wait: bool = True) -> None:
        super().start()
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: Optional[float] = None) -> None:
        """Until the RPC socket answers; RuntimeError (with the log's tail) if
        the controller exits first or the time runs out (then it is killed)."""
        timeout = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller {self.name} exited {self.proc.returncode}:\n"
                                   f"{self.tail()}")
            if os.path.exists(self.sock):
                try:
                    RpcClient(self.sock).close()
                    return
                except ConnectionError:
                    pass
            if time.monotonic() > deadline:
                self.kill9()
                raise RuntimeError(f"controller {self.name} did not open {self.sock} within "
                                   f"{timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.05)

    def restart(self, wait: bool = True) -> None:
        """The same config again, once this one is gone (killed or stopped)."""
        if self.alive():
            raise RuntimeError(f"controller {self.name} is still running")
        if os.path.exists(self.sock):
            os.unlink(self.sock)  # the dead controller's: not an answer
        self.start(wait)

    def rpc(self, method: str, params=None, timeout: float = 30.0):
        with RpcClient(self.sock, timeout=timeout) as c:
            return c.call(method, params)

    def pair_state(self, timeout: float = 1.0) -> str:
        """The pair state, or "DOWN" when the controller does not answer."""
        try:
            return self.rpc("pair_status", timeout=timeout)["state"]
        except (OSError, RpcError, ValueError, KeyError, TypeError):
            return "DOWN"


def make_keys(root, names: Sequence[str] = ("a", "b")) -> dict:
    """`srrs keygen` (the real code, in this process) for a pair and its
    witness under root: the controllers' CURVE keys and their shared
    mirror.secret in root/pair, the witness's in root/witness, and the
    witness's allow-list (the controllers' public keys only) in root/allowed.
    The paths: dir, mirror_secret, witness_secret, witness_public, allowed,
    and each name (its public key; the secret is that path + "_secret")."""
    from .witness import keygen

    root = os.fspath(root)
    pdir, wdir, adir = (os.path.join(root, x) for x in ("pair", "witness", "allowed"))
    with contextlib.redirect_stdout(io.StringIO()):
        for n in names:
            keygen(argparse.Namespace(dir=pdir, name=n, no_mirror_secret=False))
        keygen(argparse.Namespace(dir=wdir, name="witness", no_mirror_secret=True))
    os.makedirs(adir, mode=0o700)
    for n in names:
        shutil.copy(os.path.join(pdir, f"{n}.key"), os.path.join(adir, f"{n}.key"))
    return {"dir": root, "mirror_secret": os.path.join(pdir, "mirror.secret"),
            "witness_secret": os.path.join(wdir, "witness.key_secret"),
            "witness_public": os.path.join(wdir, "witness.key"), "allowed": adir,
            **{n: os.path.join(pdir, f"{n}.key") for n in names}}


class Witness(Proc):
    """`srrs witness --bind BIND`; keys (make_keys()) give it its secret key and
    allow-list, None runs it --insecure (unless extra brings keys)."""

    def __init__(self, log, bind: str, max_lease: Optional[float] = 3.0,
                 keys: Optional[dict] = None,
                 state: Optional[str] = None, extra: Sequence[str] = (),
                 prefix: Sequence[str] = (), session: bool = False):
        args = ["witness", "--bind", bind]
        if max_lease is not None:  # None: the witness's default
            args += ["--max-lease", f"{max_lease:g}"]
        if state is not None:
            args += ["--state", str(state)]
        if keys is not None:
            args += ["--secret-key", str(keys["witness_secret"]),
                     "--authorized", str(keys["allowed"])]
        elif "--secret-key" not in extra:
            args.append("--insecure")
        self.bind = bind
        super().__init__(args + list(extra), log, prefix, session)


class Pair:
    """A witness and two controllers with CURVE keys and a mirror secret, in
    run_dir: NAME.toml, NAME.sock, NAME.log, state-NAME, keys/, witness.log.

    node(name) gives the rest of a controller's config (the sections other than
    [controller] and [pair]); pair_opts are more [pair] keys for both
    (heartbeat_ms, peer_rpc_socket=True for each other's socket, ...). prefix:
    {name or "witness": command prefix}. hosts: {name or "witness": address}
    each listens on (default loopback). Nothing starts before start()."""

    def __init__(self, run_dir, node: Callable[[str], dict] = lambda n: {},
                 names: Sequence[str] = ("a", "b"), volumes: Sequence[str] = ("v0",),
                 secure: bool = True, max_lease: float = 2.0, witness_args: Sequence[str] = (),
                 prefix: Optional[dict] = None, hosts: Optional[dict] = None,
                 reactors: int = 1, poll_mode: str = "adaptive", session: bool = False,
                 ready_timeout: float = 60, **pair_opts):
        self.dir = os.fspath(run_dir)
        self.names = tuple(names)
        self.ports = pair_ports(self.names)
        prefix, hosts = prefix or {}, hosts or {}
        self.keys = make_keys(os.path.join(self.dir, "keys"), self.names) if secure else None
        whost = hosts.get("witness", LOOPBACK)
        self.witness_addr = f"tcp://{whost}:{self.ports['witness']}"
        self._witness = dict(log=os.path.join(self.dir, "witness.log"), max_lease=max_lease,
                             keys=self.keys, bind=self.witness_addr,
                             extra=list(witness_args), prefix=prefix.get("witness", ()),
                             session=session)
        self.witness: Optional[Witness] = None
        self.nodes: dict = {}
        peer_rpc = pair_opts.pop("peer_rpc_socket", False)
        for i, n in enumerate(self.names):
            peer = self.names[1 - i]
            sock = os.path.join(self.dir, f"{n}.sock")
            pt = pair(n, peer, self.ports, os.path.join(self.dir, f"state-{n}"), volumes,
                      self.keys, host=hosts.get(n, LOOPBACK), peer_host=hosts.get(peer, LOOPBACK),
                      witness_host=whost, **pair_opts)
            if peer_rpc:
                pt["peer_rpc_socket"] = os.path.join(self.dir, f"{peer}.sock")
            conf = merge({"controller": controller(n, sock, reactors, poll_mode)}, node(n))
            if "cluster" in conf:  # etcd is the pair's witness: no srrs witness
                pt.pop("witness", None)
                pt.pop("witness_public_key", None)
                self._witness = None
            conf["pair"] = pt
            self.nodes[n] = Controller(os.path.join(self.dir, f"{n}.toml"), conf, sock=sock,
                                       prefix=prefix.get(n, ()), session=session,
                                       ready_timeout=ready_timeout, start=False, name=n)

    def start(self, paired_timeout: Optional[float] = 30) -> "Pair":
        """The witness, then both controllers; waits for their sockets, then (unless
        paired_timeout is None) for both PAIRED."""
        self.witness = Witness(**self._witness) if self._witness else None
        for c in self.nodes.values():
            c.start(wait=False)
        for c in self.nodes.values():
            c.wait_ready()
        if paired_timeout is not None:
            self.wait_state("PAIRED", paired_timeout)
        return self

    def states(self) -> dict:
        return {n: c.pair_state() for n, c in self.nodes.items()}

    def wait_state(self, want: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            st = self.states()
            if all(s == want for s in st.values()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the pair is not {want} within {timeout:.0f} s: {st}")
            time.sleep(0.1)

    def stop(self, timeout: float = 15) -> None:
        """Controllers (in reverse order), then the witness; every one is tried."""
        errs = []
        for p in [*reversed(list(self.nodes.values())), self.witness]:
            try:
                if p is not None:
                    p.stop(timeout)
            except subprocess.TimeoutExpired as e:
                errs.append(e)
        if errs:
            raise errs[0]

    def __enter__(self) -> "Pair":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
