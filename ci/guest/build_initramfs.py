#!/usr/bin/env python3
"""Build the SRRS test-guest initramfs (busybox + nvme-cli + fio + kernel modules).

The archive is a newc cpio written directly by this script (no root, no mknod
needed), left uncompressed: under TCG the guest kernel needs ~2.5 s to gunzip it
but well under 1 s to copy it. It contains:

* /bin/busybox (busybox-static) and a symlink for each of its applets,
* host binaries (nvme, fio, mkfs.ext4, ...) with every library ``ldd`` lists and
  the dynamic loader, at the paths ``ldd`` reports,
* the kernel modules asked for and everything they depend on (hard and soft
  dependencies, as resolved by ``modprobe --show-depends`` on the extracted
  kernel tree), re-indexed with ``depmod -b`` so busybox ``modprobe`` works,
* the overlay in ci/guest/rootfs (``/init`` and ``/bin/srrs-agent``).

The output file name carries a key that hashes every input (this script, the
overlay, the kernel version, the module list and the size+mtime of every copied
host file), so an up-to-date archive is never rebuilt.

Usage: build_initramfs.py --kernel-root DIR --kver VER --out-dir DIR
Prints the path of the archive on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OVERLAY = HERE / "rootfs"

# Modules copied into the initramfs (with all their dependencies).
DEFAULT_MODULES = [
    "virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "virtio_rng",
    "virtio_scsi",
    "nvme_tcp", "nvme_fabrics", "nvme_core", "nvme",
    "crc32c_generic", "crc32c_intel", "crc64_rocksoft_generic",
    "ext4", "loop", "configfs",
    # The kernel NVMe/TCP *target*, to check the initiator side in one guest.
    "nvmet", "nvmet_tcp",
]

# Host binaries copied in, as "guest path=host path" or a name looked up on PATH
# (then placed in /usr/bin). Missing optional ones are skipped with a warning.
REQUIRED_BINARIES = ["nvme", "fio"]
OPTIONAL_BINARIES = ["mkfs.ext4", "blkdiscard", "e2fsck", "lsblk",
                     "blkid", "resize2fs"]   # the CSI node plugin (tests/csi/test_guest_kubelet.py)

BUSYBOX_CANDIDATES = ["/bin/busybox", "/usr/bin/busybox"]


def log(msg: str) -> None:
    print(f"build_initramfs: {msg}", file=sys.stderr)


def which(name: str) -> str | None:
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin"
    return shutil.which(name, path=path)


def find_busybox() -> str:
    for c in BUSYBOX_CANDIDATES:
        if os.path.exists(c):
            r = subprocess.run(["ldd", c], capture_output=True, text=True)
            if "not a dynamic executable" in r.stdout + r.stderr:
                return c
    raise SystemExit("build_initramfs: static busybox not found (apt-get install busybox-static)")


def ldd_deps(binary: str) -> list[str]:
    """Libraries (and the loader) that `ldd` lists for binary, as absolute paths."""
    r = subprocess.run(["ldd", binary], capture_output=True, text=True)
    text = r.stdout + r.stderr
    if "not a dynamic executable" in text or "statically linked" in text:
        return []
    if r.returncode != 0:
        raise SystemExit(f"build_initramfs: ldd {binary} failed: {text.strip()}")
    deps = []
    for line in r.stdout.splitlines():
        line = line.strip()
        if "not found" in line:
            raise SystemExit(f"build_initramfs: {binary}: missing library: {line}")
        m = re.match(r"^\S+\s+=>\s+(/\S+)\s+\(", line)
        if m:
            deps.append(m.group(1))
            continue
        m = re.match(r"^(/\S+)\s+\(", line)  # the dynamic loader
        if m:
            deps.append(m.group(1))
    return deps


def module_files(kernel_root: Path, kver: str, modules: list[str]) -> list[str]:
    """Paths (relative to lib/modules/KVER) of the modules and all their deps."""
    moddir = kernel_root / "lib" / "modules" / kver
    files: list[str] = []
    for m in modules:
        r = subprocess.run(
            ["modprobe", "-d", str(kernel_root), "-S", kver, "--show-depends", m],
            capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"build_initramfs: module {m}: {r.stderr.strip()}")
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "insmod":
                rel = os.path.relpath(parts[1], moddir)
                if rel not in files:
                    files.append(rel)
            elif parts[:1] == ["builtin"]:
                pass
    return files


class Cpio:
    """Minimal newc ('070701') cpio writer."""

    def __init__(self, fh):
        self.fh = fh
        self.ino = 1
        self.seen: set[str] = set()

    def _hdr(self, name: str, mode: int, size: int, nlink: int = 1,
             rdevmajor: int = 0, rdevminor: int = 0, mtime: int = 0) -> None:
        nb = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, nlink, mtime, size, 0, 0,
                  rdevmajor, rdevminor, len(nb), 0]
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields) + nb
        self.fh.write(hdr)
        self.fh.write(b"\0" * ((4 - len(hdr) % 4) % 4))

    def _data(self, data: bytes) -> None:
        self.fh.write(data)
        self.fh.write(b"\0" * ((4 - len(data) % 4) % 4))

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in self.seen:
                self.dir(d)

    def dir(self, name: str, mode: int = 0o755) -> None:
        name = name.strip("/")
        if name in self.seen:
            return
        self._parents(name)
        self.seen.add(name)
        self._hdr(name, stat.S_IFDIR | mode, 0, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        if name in self.seen:
            return
        self._parents(name)
        self.seen.add(name)
        self._hdr(name, stat.S_IFREG | mode, len(data))
        self._data(data)

    def symlink(self, name: str, target: str) -> None:
        name = name.strip("/")
        if name in self.seen:
            return
        self._parents(name)
        self.seen.add(name)
        t = target.encode()
        self._hdr(name, stat.S_IFLNK | 0o777, len(t))
        self._data(t)

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        name = name.strip("/")
        self._parents(name)
        self.seen.add(name)
        self._hdr(name, stat.S_IFCHR | mode, 0, rdevmajor=major, rdevminor=minor)

    def trailer(self) -> None:
        self._hdr("TRAILER!!!", 0, 0, nlink=1)
        # Pad the archive to a 512-byte multiple like GNU cpio does.
        pos = self.fh.tell()
        self.fh.write(b"\0" * ((512 - pos % 512) % 512))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel-root", required=True, type=Path,
                    help="dpkg -x'ed kernel package (contains lib/modules/KVER)")
    ap.add_argument("--kver", required=True)
    ap.add_argument("--out-dir", required=True, type=Path)
    ap.add_argument("--modules", default=",".join(DEFAULT_MODULES),
                    help="comma-separated module names to include (with deps)")
    ap.add_argument("--extra-binary", action="append", default=[],
                    help="extra host binary (name on PATH or absolute path) to include")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = ap.parse_args()

    kernel_root: Path = args.kernel_root.resolve()
    moddir = kernel_root / "lib" / "modules" / args.kver
    if not (moddir / "modules.dep").exists():
        raise SystemExit(f"build_initramfs: {moddir}/modules.dep missing (run depmod -b)")

    busybox = find_busybox()
    modules = [m for m in args.modules.split(",") if m]
    mod_files = module_files(kernel_root, args.kver, modules)

    binaries: dict[str, str] = {}  # guest path -> host path
    for name in REQUIRED_BINARIES + args.extra_binary:
        p = name if os.path.isabs(name) else which(name)
        if not p or not os.path.exists(p):
            raise SystemExit(f"build_initramfs: required binary {name} not found")
        binaries["usr/bin/" + os.path.basename(p)] = p
    for name in OPTIONAL_BINARIES:
        p = which(name)
        if p:
            binaries["usr/bin/" + os.path.basename(p)] = p
        else:
            log(f"optional binary {name} not found, skipped")

    libs: list[str] = []
    for host in binaries.values():
        for d in ldd_deps(host):
            if d not in libs:
                libs.append(d)

    # Cache key over every input.
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    for p in sorted(OVERLAY.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(OVERLAY)).encode())
            h.update(p.read_bytes())
    h.update(args.kver.encode())
    h.update(str(kernel_root).encode())
    h.update(",".join(mod_files).encode())
    for p in [busybox] + sorted(binaries.items()) + libs:
        if isinstance(p, tuple):
            h.update(p[0].encode())
            p = p[1]
        st = os.stat(p)
        h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    key = h.hexdigest()[:16]

    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"initramfs-{args.kver}-{key}.cpio"
    if out.exists() and not args.force:
        os.utime(out)  # mark as in use (see the pruning below)
        log(f"up to date: {out}")
        print(out)
        return 0

    log(f"building {out.name}: {len(mod_files)} modules, {len(binaries)} binaries, "
        f"{len(libs)} libraries")
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=args.out_dir)
    os.close(fd)
    try:
        with tempfile.TemporaryDirectory(prefix="srrs-initramfs-") as stage, \
                open(tmp, "wb") as fh:
            c = Cpio(fh)
            for d in ["bin", "dev", "etc", "etc/nvme", "lib", "lib64", "mnt", "proc",
                      "root", "run", "sys", "tmp", "usr/bin", "usr/lib", "var/tmp"]:
                c.dir(d)
            c.symlink("sbin", "bin")
            c.symlink("usr/sbin", "bin")
            c.chardev("dev/console", 5, 1)
            c.chardev("dev/null", 1, 3, 0o666)

            c.file("bin/busybox", Path(busybox).read_bytes(), 0o755)
            applets = subprocess.run([busybox, "--list"], capture_output=True, text=True,
                                     check=True).stdout.split()
            overlay_files = {str(p.relative_to(OVERLAY)) for p in OVERLAY.rglob("*")}
            host_names = {os.path.basename(g) for g in binaries}
            for a in applets:
                # Host binaries and overlay files win over busybox applets.
                if a == "busybox" or f"bin/{a}" in overlay_files or a in host_names:
                    continue
                c.symlink(f"bin/{a}", "busybox")

            # Overlay (init, agent). Added before host binaries: wins over them.
            for p in sorted(OVERLAY.rglob("*")):
                rel = str(p.relative_to(OVERLAY))
                if p.is_dir():
                    c.dir(rel)
                else:
                    c.file(rel, p.read_bytes(), 0o755 if os.access(p, os.X_OK) else 0o644)

            # Host binaries: in /usr/bin, symlinked from /bin (which is also /sbin).
            for gpath, host in sorted(binaries.items()):
                c.file(gpath, Path(host).read_bytes(), 0o755)
                c.symlink("bin/" + os.path.basename(gpath), "/" + gpath)
            for lib in libs:
                c.file(lib.lstrip("/"), Path(os.path.realpath(lib)).read_bytes(), 0o755)
            # Let the loader find everything without an ld.so.cache.
            libdirs = sorted({os.path.dirname(x) for x in libs})
            c.file("etc/ld.so.conf", ("\n".join(libdirs) + "\n").encode())

            # Modules: copy, re-index with depmod into the stage dir, then archive.
            sroot = Path(stage)
            smod = sroot / "lib" / "modules" / args.kver
            smod.mkdir(parents=True)
            for rel in mod_files:
                dst = smod / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(moddir / rel, dst)
            for meta in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
                if (moddir / meta).exists():
                    shutil.copyfile(moddir / meta, smod / meta)
            subprocess.run(["depmod", "-b", str(sroot), args.kver], check=True)
            for p in sorted(smod.rglob("*")):
                rel = "lib/modules/" + args.kver + "/" + str(p.relative_to(smod))
                if p.is_dir():
                    c.dir(rel)
                else:
                    c.file(rel, p.read_bytes())

            c.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
            c.file("etc/group", b"root:x:0:\n")
            c.file("etc/hosts", b"127.0.0.1 localhost\n10.0.2.2 host\n")
            c.file("etc/srrs-initramfs", f"kver={args.kver}\nkey={key}\n".encode())
            c.trailer()
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

    # Prune archives unused for a day beyond the newest few (several checkouts
    # may share the cache, each with its own archive; "up to date" touches it).
    old = sorted(args.out_dir.glob("initramfs-*.cpio*"),
                 key=lambda p: p.stat().st_mtime, reverse=True)
    for p in old[4:]:
        try:
            if p.stat().st_mtime < time.time() - 86400:
                p.unlink()
        except OSError:
            pass

    log(f"built {out} ({out.stat().st_size / 1e6:.1f} MB)")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
