"""Real processes for the pair tests: witness and controllers on loopback (or in
network namespaces, through a command prefix), with free ports so parallel test
runs do not collide. Thin wrappers over srrs.ctrl.launch with the signatures
these tests call."""

from __future__ import annotations

import json
import time
from pathlib import Path

import toml

from srrs.ctrl import launch
from srrs.ctrl.launch import SRRS, Proc, free_ports

__all__ = ["SRRS", "Proc", "free_ports", "alloc_ports", "make_keys", "Witness", "Ctl",
           "pair_conf", "replica_conf", "nvmf_conf", "same_files", "replica_chunks"]

alloc_ports = launch.pair_ports


def make_keys(tmp, names=("a", "b")):
    """launch.make_keys under tmp/keys, the paths as Paths."""
    return {k: Path(v) for k, v in launch.make_keys(tmp / "keys", names).items()}


class Witness(launch.Witness):
    def __init__(self, tmp, bind, max_lease=3.0, extra=(), prefix=(), keys=None):
        """keys: from make_keys; None runs it --insecure (unless extra gives keys)."""
        super().__init__(tmp / f"witness-{time.monotonic_ns()}.log", bind, max_lease, keys=keys,
                         extra=extra, prefix=prefix)


class Ctl(launch.Controller):
    """Controller `name` of tmp (NAME.toml, NAME.sock, NAME.log); conf: a config
    dict (pair_conf) or TOML text."""

    def __init__(self, tmp, name, conf, prefix=()):
        path = tmp / f"{name}.toml"
        if isinstance(conf, str):
            path.write_text(conf)
            conf = None
        super().__init__(path, conf, sock=str(tmp / f"{name}.sock"), log=tmp / f"{name}.log",
                         prefix=prefix, ready_timeout=20, name=name)
        self.conf, self.tmp = path, tmp

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


def replica_conf(name, tmp, size, replica="file") -> dict:
    """The local replica "v0": a file bdev, or a volume of a pool with one file
    fragment ({tmp}/{name}-pool.img, sized for the volume and the metadata)."""
    if replica == "file":
        return {"bdev": [launch.bdev("v0", "file", size, path=f"{tmp}/{name}-v0.img")]}
    if replica != "pool":
        raise ValueError(f"replica must be 'file' or 'pool', not {replica!r}")
    from srrs.ctrl.config import parse_size

    frag = parse_size(size) + max(parse_size(size) // 8, 16 << 20)
    return {"pool": [launch.pool("p0", [launch.fragment(f"{tmp}/{name}-pool.img", frag)])],
            "volume": [launch.volume("v0", "p0", size)]}


def pair_conf(name, peer, ports, tmp, size="64MiB", hb=100, miss=10, lease=2000, host="127.0.0.1",
              peer_host="127.0.0.1", witness_host="127.0.0.1", extra="", replica="file",
              keys=None) -> dict:
    """ports: dict with coord_<n>, mirror_<n>, witness. replica: "file" | "pool".
    keys: from make_keys; None: `insecure = true` (unless extra has keys).
    extra: a dict or TOML text; its top-level keys (before any table) are more
    [pair] keys, its tables more sections."""
    extra = toml.loads(extra) if isinstance(extra, str) else dict(extra or {})
    more = {k: extra.pop(k) for k in list(extra)
            if not (isinstance(extra[k], dict) or launch.is_array_of_tables(extra[k]))}
    conf = launch.config(launch.controller(name, f"{tmp}/{name}.sock", reactors=None,
                                           poll_mode=None),
                         extra=replica_conf(name, tmp, size, replica))
    conf["pair"] = launch.pair(name, peer, ports, f"{tmp}/state-{name}", ("v0",), keys,
                               host=host, peer_host=peer_host, witness_host=witness_host,
                               heartbeat_ms=hb, miss_count=miss, lease_ms=lease, **more)
    return launch.merge(conf, extra)


def nvmf_conf(port, cntlid_lo, nqn, serial, namespaces=("v0",), host="127.0.0.1") -> dict:
    """The [nvmf] section of one controller of a pair: its listener, a cntlid
    range of its own (1000 wide), and one open subsystem."""
    sub = launch.subsystem(nqn, namespaces, serial=serial)
    return {"nvmf": launch.nvmf([f"{host}:{port}"], [sub], cntlid_min=cntlid_lo)}


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


