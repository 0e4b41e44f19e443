#!/usr/bin/env python3
"""Extract the uncompressed vmlinux ELF from an x86 bzImage (like the kernel's
scripts/extract-vmlinux) and check that it has a PVH entry point (Xen ELF note
type 18, XEN_ELFNOTE_PHYS32_ENTRY), so QEMU can boot it directly with -kernel.

Usage: extract_vmlinux.py BZIMAGE OUT
"""

from __future__ import annotations

import gzip
import lzma
import struct
import sys
import zlib

XEN_ELFNOTE_PHYS32_ENTRY = 18


def decompress(data: bytes) -> bytes | None:
    for magic, fn in (
        (b"\xfd7zXZ\x00", lambda b: lzma.LZMADecompressor().decompress(b)),
        (b"\x1f\x8b\x08", lambda b: zlib.decompressobj(31).decompress(b)),
    ):
        off = data.find(magic)
        while off >= 0:
            try:
                out = fn(data[off:])
                if out[:4] == b"\x7fELF":
                    return out
            except (lzma.LZMAError, zlib.error, EOFError, gzip.BadGzipFile):
                pass
            off = data.find(magic, off + 1)
    return None


def has_pvh_note(elf: bytes) -> bool:
    if elf[4] != 2 or elf[5] != 1:  # ELFCLASS64, little endian
        return False
    e_phoff, = struct.unpack_from("<Q", elf, 0x20)
    e_phentsize, e_phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(e_phnum):
        p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, e_phoff + i * e_phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def main() -> int:
    src, dst = sys.argv[1:3]
    elf = decompress(open(src, "rb").read())
    if elf is None:
        print(f"extract_vmlinux: no xz/gzip ELF payload in {src}", file=sys.stderr)
        return 1
    if not has_pvh_note(elf):
        print(f"extract_vmlinux: {src}: vmlinux has no PVH entry note", file=sys.stderr)
        return 1
    with open(dst, "wb") as f:
        f.write(elf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
