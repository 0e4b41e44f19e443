#!/usr/bin/env python3
"""Build the test guest's Python variant: the busybox initramfs plus this
host's Python interpreter, its standard library, the site-packages that
`srrs csi --mode node` loads, and the srrs package of this checkout, so the
real node plugin runs inside the guest (tests/csi/test_guest_kubelet.py).

The layer is one more newc cpio appended to the base archive (the kernel
unpacks concatenated archives in order). Every file keeps its host path, so
the interpreter finds its prefix and libraries as on the host; the package is
laid out under /opt/srrs as pyproject.toml maps it and `/usr/bin/srrs` runs
`python -m srrs.ctrl.entry` (the console script's module). Files keep their host mtimes so the stdlib's
compiled .pyc stay valid (no compiling in the guest: under TCG that would
cost more than the import); the package's modules are compiled here. What is
copied:

* the interpreter, libpython and every library `ldd` lists for it and the
  extension modules below, but those the base archive has (nvme-cli's and
  fio's), debug info stripped;
* the standard library without its tests, GUI, packaging and docs parts, and
  of its extension modules only those the trace loaded;
* from site-packages, every top-level package a traced start of the node
  plugin loads (serving a few calls): its Python files, the extension
  modules the trace loaded, and its distribution's metadata.

The output name carries a key over the inputs (the base archive, this script,
the size+mtime of every copied installed file, the content of the package's
files: a checkout that only changed mtimes keeps it), so an up-to-date archive is reused
(~54 MB on the base's ~99 MB: Python 3.11, grpcio, protobuf).

Usage: build_pylayer.py --base INITRAMFS --out-dir DIR   (prints the path)
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import marshal
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
from build_initramfs import Cpio, ldd_deps, log  # noqa: E402

STDLIB_SKIP = {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip",
               "lib2to3", "pydoc_data", "unittest", "venv", "distutils"}
PKG_MTIME = 1 << 30     # the package's files (content-keyed): one fixed mtime, their .pyc's

# The trace: `srrs csi --mode node` started as the guest starts it (the
# package from a tree laid out as /opt/srrs, site-packages on sys.path without
# running any .pth file, as in the guest where there is none), serving a few
# calls (one refused, so the error path's imports are seen too) until SIGTERM;
# then the files of every module it loaded.
TRACE = r"""
import json, os, runpy, signal, sys, tempfile, threading, time
sys.path[1:1] = json.loads(os.environ["SRRS_TRACE_PATH"])
sock = os.path.join(tempfile.mkdtemp(), "t.sock")

def poke():
    from srrs.ctrl import csi
    end = time.monotonic() + 60
    while not os.path.exists(sock) and time.monotonic() < end:
        time.sleep(0.05)
    c = csi.Client("unix://" + sock, timeout=20)
    c.call("Identity", "Probe")
    c.call("Node", "NodeGetCapabilities")
    try:
        c.call("Node", "NodeGetVolumeStats", volume_id="v", volume_path="/nonexistent/x")
    except Exception:
        pass
    c.close()
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=poke, daemon=True).start()
sys.argv = ["srrs", "csi", "--mode", "node", "--endpoint", "unix://" + sock,
            "--node-id", "nqn.2014-08.org.nvmexpress:uuid:trace"]
try:
    runpy.run_module("srrs.ctrl.entry", run_name="__main__", alter_sys=True)
except SystemExit as e:
    if e.code:
        raise
import srrs.ctrl.cli  # noqa: E402,F401  (the rest of `srrs` in the guest too)
print(json.dumps(sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())})))
"""


class Layer(Cpio):
    def put(self, name: str, data: bytes, mode: int, mtime: int = 0) -> None:
        name = name.strip("/")
        if name in self.seen:
            return
        self._parents(name)
        self.seen.add(name)
        self._hdr(name, stat.S_IFREG | mode, len(data), mtime=mtime)
        self._data(data)


def site_dirs() -> list[str]:
    return sorted({p for p in sys.path if p.endswith(("site-packages", "dist-packages"))},
                  key=len, reverse=True)


def traced_files(pkg: dict[str, str]) -> list[str]:
    """The files of the modules `srrs csi --mode node` loads, started with -S
    (no .pth file runs) from a tree laid out as the guest's /opt/srrs."""
    with tempfile.TemporaryDirectory(prefix="srrs-pytrace-") as root:
        for g, f in pkg.items():
            dst = Path(root) / g
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(f)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env.update(PYTHONPATH=os.path.join(root, "opt", "srrs"),
                   SRRS_TRACE_PATH=json.dumps(site_dirs()))
        r = subprocess.run([sys.executable, "-S", "-c", TRACE], capture_output=True, text=True,
                           env=env, timeout=120)
    if r.returncode:
        raise SystemExit(f"build_pylayer: trace failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def site_files(traced: list[str]) -> list[str]:
    """The traced top-level packages of site-packages: their .py (and fresh
    .pyc) files, the extension modules the trace loaded, and the metadata
    (dist-info) of their distributions (some read their own version)."""
    import importlib.metadata as md

    owners = md.packages_distributions()
    sites = site_dirs()
    out: set[str] = set()
    dists: set[str] = set()
    for f in traced:
        site = next((s for s in sites if f.startswith(s + "/")), None)
        if site is None or "__editable__" in f or "_distutils_hack" in f:
            continue
        out.add(f)
        top = f[len(site) + 1:].split("/")[0]
        dists.update(owners.get(top.split(".")[0], ()))
        if os.path.isdir(os.path.join(site, top)):
            for dp, dn, fn in os.walk(os.path.join(site, top)):
                dn[:] = [d for d in dn if d not in ("tests", "test")]
                out.update(os.path.join(dp, n) for n in fn if n.endswith((".py", ".pyc")))
    for name in dists:
        info = getattr(md.distribution(name), "_path", None)
        if info is not None and os.path.isdir(info):
            out.update(os.path.join(dp, n) for dp, _, fn in os.walk(info) for n in fn)
    return sorted(out)


def stdlib_files(traced: list[str]) -> list[str]:
    """The standard library's modules (sources and their .pyc) but its
    tests, GUI and packaging parts, and of its extension modules those the
    trace loaded (the others pull in libraries such as sqlite and Kerberos)."""
    std = sysconfig.get_paths()["stdlib"]
    loaded = set(traced)
    out = []
    for dp, dn, fn in os.walk(std):
        if dp == std:
            dn[:] = [d for d in dn if d not in STDLIB_SKIP and not d.startswith("config-")]
        out += [os.path.join(dp, n) for n in fn
                if n.endswith(".py") or (n.endswith(".pyc") and ".opt-" not in n)
                or (n.endswith(".so") and os.path.join(dp, n) in loaded)]
    return sorted(out)


def archive_names(path: Path) -> set[str]:
    """The names in a newc cpio archive (its headers only)."""
    names = set()
    with open(path, "rb") as f:
        while True:
            h = f.read(110)
            if len(h) < 110 or h[:6] != b"070701":
                break
            size, nsize = int(h[54:62], 16), int(h[94:102], 16)
            name = f.read(nsize)[:-1].decode()
            if name == "TRAILER!!!":
                break
            names.add(name)
            f.seek((-(110 + nsize)) % 4 + size + (-size) % 4, os.SEEK_CUR)
    return names


def package_files() -> dict[str, str]:
    """guest path -> checkout file: srrs/... as pyproject.toml maps packages."""
    import toml

    dirs = toml.load(REPO / "pyproject.toml")["tool"]["setuptools"]["package-dir"]
    out = {}
    for pkg, d in dirs.items():
        src = REPO / d
        for f in sorted(src.iterdir()):
            if f.suffix == ".py" or (f.name.endswith(".so") and "." in pkg):
                out["opt/srrs/" + "/".join(pkg.split(".")) + "/" + f.name] = str(f)
    return out


def pyc(data: bytes, src: str, mtime: int) -> bytes:
    """A timestamp .pyc of a source of that mtime, as the importer would write it."""
    code = compile(data, src, "exec", dont_inherit=True)
    return (importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little")
            + mtime.to_bytes(4, "little") + (len(data) & 0xFFFFFFFF).to_bytes(4, "little")
            + marshal.dumps(code))


def stripped(path: str, tmp: str) -> bytes:
    out = os.path.join(tmp, "s.so")
    if shutil.which("strip") and subprocess.run(["strip", "--strip-debug", "-o", out, path],
                                                capture_output=True).returncode == 0:
        return Path(out).read_bytes()
    return Path(path).read_bytes()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, type=Path, help="the busybox initramfs")
    ap.add_argument("--out-dir", required=True, type=Path)
    args = ap.parse_args()

    exe = os.path.realpath(sys.executable)
    libpython = [d for d in ldd_deps(exe) if "libpython" in d]
    pkg = package_files()
    traced = traced_files(pkg)
    files = [exe] + stdlib_files(traced) + site_files(traced)
    sos = [exe] + libpython + [f for f in files + list(pkg.values()) if f.endswith(".so")]
    libs = sorted({d for s in sos for d in ldd_deps(s)} - set(libpython))

    # The key: installed files by size and mtime, the package by content (git
    # sets a checkout's mtimes; its C extension differs per build all the same).
    h = hashlib.sha256(Path(__file__).read_bytes())
    base_st = args.base.stat()
    h.update(f"{args.base}:{base_st.st_size}:{base_st.st_mtime_ns}".encode())
    for f in files + libpython + libs:
        st = os.stat(f)
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    for g, f in sorted(pkg.items()):
        h.update(g.encode() + b"\0" + hashlib.sha256(Path(f).read_bytes()).digest())
    out = args.out_dir / f"{args.base.stem}-py-{h.hexdigest()[:16]}.cpio"
    if out.exists():
        os.utime(out)
        print(out)
        return 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=args.out_dir)
    with os.fdopen(fd, "wb") as fh, tempfile.TemporaryDirectory() as sdir:
        with open(args.base, "rb") as b:
            shutil.copyfileobj(b, fh)
        c = Layer(fh)
        c.seen |= archive_names(args.base)      # the libraries nvme-cli and fio brought
        for f in files:
            st = os.stat(f)
            data = stripped(f, sdir) if f.endswith(".so") else Path(f).read_bytes()
            c.put(f, data, stat.S_IMODE(st.st_mode), int(st.st_mtime))
        for f in libpython + libs:
            c.put(f, stripped(os.path.realpath(f), sdir), 0o755)
        for g, f in sorted(pkg.items()):
            data = Path(f).read_bytes()
            c.put(g, data, 0o644, PKG_MTIME)
            if f.endswith(".py"):
                d, n = os.path.split(g)
                c.put(f"{d}/__pycache__/{n[:-3]}.{sys.implementation.cache_tag}.pyc",
                      pyc(data, f, PKG_MTIME), 0o644)
        c.put("usr/bin/srrs", (f"#!/bin/sh\nPYTHONPATH=/opt/srrs exec {exe} -m srrs.ctrl.entry "
                               f'"$@"\n').encode(), 0o755)
        c.trailer()
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    # Every clone builds its own (the C extension's bytes differ), at ~150 MB
    # each: beyond the newest 4, drop those unused for an hour (a use touches
    # it: here when up to date, and the harness before every boot, which
    # rebuilds one that went missing). A running guest has read its copy.
    for p in sorted(args.out_dir.glob("*-py-*.cpio"), key=lambda p: p.stat().st_mtime)[:-4]:
        try:
            if p.stat().st_mtime < time.time() - 3600:
                p.unlink()
        except OSError:
            pass
    log(f"built {out} ({out.stat().st_size / 1e6:.1f} MB, {len(files) + len(pkg)} files)")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
