"""Real processes for the pair tests: witness and controllers on loopback (or in
network namespaces), with free ports so parallel test runs do not collide."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from srrs.ctrl.rpc import RpcClient

SRRS = [sys.executable, "-m", "srrs.ctrl.cli"]


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class Proc:
    def __init__(self, args, log_path, prefix=()):
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.args = list(prefix) + SRRS + list(args)
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)

    def kill9(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
                raise
        return self.proc.returncode

    def output(self):
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


def make_keys(tmp, names=("a", "b")):
    """`srrs keygen` (the real code, in this process) for a pair and its
    witness under tmp/keys: the controllers' CURVE keys and their shared
    mirror.secret in keys/pair, the witness's in keys/witness, and the
    witness's allow-list (the controllers' public keys only) in keys/allowed."""
    import argparse
    import contextlib
    import io
    import shutil

    from srrs.ctrl.witness import keygen

    root = tmp / "keys"
    with contextlib.redirect_stdout(io.StringIO()):
        for n in names:
            keygen(argparse.Namespace(dir=str(root / "pair"), name=n, no_mirror_secret=False))
        keygen(argparse.Namespace(dir=str(root / "witness"), name="witness",
                                  no_mirror_secret=True))
    (root / "allowed").mkdir()
    for n in names:
        shutil.copy(root / "pair" / f"{n}.key", root / "allowed" / f"{n}.key")
    return {"dir": root, "mirror_secret": root / "pair" / "mirror.secret",
            "witness_secret": root / "witness" / "witness.key_secret",
            "witness_public": root / "witness" / "witness.key", "allowed": root / "allowed",
            **{n: root / "pair" / f"{n}.key" for n in names}}


def key_lines(keys, name, peer):
    """The [pair] key lines of controller `name` (keys from make_keys; None:
    `insecure = true`, for the tests about something else)."""
    if keys is None:
        return "insecure = true\n"
    return (f'secret_key = "{keys[name]}_secret"\n'
            f'peer_public_key = "{keys[peer]}"\n'
            f'witness_public_key = "{keys["witness_public"]}"\n'
            f'mirror_secret = "{keys["mirror_secret"]}"\n')


class Witness(Proc):
    def __init__(self, tmp, bind, max_lease=3.0, extra=(), prefix=(), keys=None):
        """keys: from make_keys; None runs it --insecure (unless extra gives keys)."""
        if keys is not None:
            extra = ["--secret-key", str(keys["witness_secret"]), "--authorized",
                     str(keys["allowed"])] + list(extra)
        elif "--secret-key" not in extra:
            extra = ["--insecure"] + list(extra)
        super().__init__(["witness", "--bind", bind, "--max-lease", str(max_lease)] + list(extra),
                         str(tmp / f"witness-{time.monotonic_ns()}.log"), prefix)


class Ctl(Proc):
    def __init__(self, tmp, name, conf_text, prefix=()):
        self.name = name
        self.conf = tmp / f"{name}.toml"
        self.conf.write_text(conf_text)
        self.sock = str(tmp / f"{name}.sock")
        self.tmp = tmp
        self.prefix = prefix
        self._start()

    def _start(self):
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        super().__init__(["start", "-c", str(self.conf)], str(self.tmp / f"{self.name}.log"),
                         self.prefix)
        deadline = time.time() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.output()}")
            if os.path.exists(self.sock):
                try:
                    RpcClient(self.sock).close()
                    return
                except ConnectionError:
                    pass
            if time.time() > deadline:
                self.kill9()
                raise RuntimeError(f"{self.name} did not start: {self.output()}")
            time.sleep(0.05)

    def restart(self):
        self._start()

    def rpc(self, method, params=None, timeout=30.0):
        with RpcClient(self.sock, timeout=timeout) as c:
            return c.call(method, params)

    def pair(self):
        return self.rpc("pair_status")

    def wait_state(self, want, timeout=15.0):
        deadline = time.time() + timeout
        st = None
        while time.time() < deadline:
            try:
                st = self.pair()
            except (ConnectionError, OSError):
                st = None
            if st and st["state"] == want:
                return st
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: not {want} within {timeout}s: "
                             f"{json.dumps(st, indent=1) if st else None}\n{self.output()[-3000:]}")

    def bench(self, **kw):
        p = {"bdev": "v0", "rw": "randwrite", "qd": 32, "time_s": 2}
        p.update(kw)
        jid = self.rpc("bench_bdev_start", p)
        while True:
            jobs = self.rpc("bench_bdev_results")
            j = jobs[jid]
            if j["state"] != "running":
                return j
            time.sleep(0.1)


def replica_conf(name, tmp, size, replica="file"):
    """The local replica "v0": a file bdev, or a volume of a pool with one file
    fragment ({tmp}/{name}-pool.img, sized for the volume and the metadata)."""
    if replica == "file":
        return f"""
[[bdev]]
name = "v0"
type = "file"
path = "{tmp}/{name}-v0.img"
size = "{size}"
"""
    if replica != "pool":
        raise ValueError(f"replica must be 'file' or 'pool', not {replica!r}")
    from srrs.ctrl.config import parse_size

    frag = parse_size(size) + max(parse_size(size) // 8, 16 << 20)
    return f"""
[[pool]]
name = "p0"
fragments = [ {{ path = "{tmp}/{name}-pool.img", size = {frag} }} ]

[[volume]]
name = "v0"
pool = "p0"
size = "{size}"
"""


def pair_conf(name, peer, ports, tmp, size="64MiB", hb=100, miss=10, lease=2000, host="127.0.0.1",
              peer_host="127.0.0.1", witness_host="127.0.0.1", extra="", replica="file",
              keys=None):
    """ports: dict with coord_<n>, mirror_<n>, witness. replica: "file" | "pool".
    keys: from make_keys; None: `insecure = true` (unless extra has keys)."""
    if keys is not None or "secret_key" not in extra:
        extra = key_lines(keys, name, peer) + extra
    return f"""
[controller]
name = "{name}"
rpc_socket = "{tmp}/{name}.sock"
{replica_conf(name, tmp, size, replica)}
[pair]
self = "{name}"
peer = "{peer}"
coord_bind = "tcp://{host}:{ports['coord_' + name]}"
peer_coord = "tcp://{peer_host}:{ports['coord_' + peer]}"
mirror_listen = "{host}:{ports['mirror_' + name]}"
peer_mirror = "{peer_host}:{ports['mirror_' + peer]}"
witness = "tcp://{witness_host}:{ports['witness']}"
volumes = ["v0"]
state_dir = "{tmp}/state-{name}"
heartbeat_ms = {hb}
miss_count = {miss}
lease_ms = {lease}
{extra}
"""


def alloc_ports():
    p = free_ports(5)
    return {"coord_a": p[0], "coord_b": p[1], "mirror_a": p[2], "mirror_b": p[3], "witness": p[4]}


def same_files(a, b, chunk=1 << 20):
    diff = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        off = 0
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if x != y:
                diff.append(off)
            if not x and not y:
                break
            off += chunk
    return diff


def replica_chunks(tmp, name, size, replica="file", chunk=1 << 20):
    """(offset, bytes) of controller `name`'s replica "v0", read while the
    controller is stopped: the file itself, or the volume of its pool opened
    offline in this process. What is on the disk, not what a path says."""
    if replica == "file":
        with open(tmp / f"{name}-v0.img", "rb") as f:
            for off in range(0, size, chunk):
                yield off, f.read(chunk).ljust(min(chunk, size - off), b"\0")
        return
    from srrs.ctrl.pool import Pool
    from srrs.ctrl.pool_config import FragmentConfig, PoolConfig
    from srrs.ffi.binding import Core

    frag = FragmentConfig(path=str(tmp / f"{name}-pool.img"))
    with Core(reactors=1) as core:
        pool = Pool(core, PoolConfig(name="p0", fragments=(frag,)))
        try:
            for off in range(0, size, chunk):
                st, d = core.test_io("v0", "read", off, min(chunk, size - off))
                assert st == 0, f"{name}: read of its replica at {off}: {st}"
                yield off, d
        finally:
            pool.close()


def nvmf_conf(port, cntlid_lo, nqn, serial, namespaces='"v0"'):
    """The [nvmf] section of one controller of a pair: its listener, a cntlid
    range of its own (1000 wide), and one open subsystem."""
    return f"""
[nvmf]
listen = ["127.0.0.1:{port}"]
cntlid_min = {cntlid_lo}
cntlid_max = {cntlid_lo + 999}

[[nvmf.subsystem]]
nqn = "{nqn}"
serial = "{serial}"
namespaces = [{namespaces}]
allow_hosts = ["*"]
"""
