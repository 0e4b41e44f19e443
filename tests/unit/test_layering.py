"""The reactor layer knows nothing of the layers above it (docs/architecture.md,
Threads): ffi/reactor.c compiled alone calls no function of ffi/bdev.c (or of
any bdev module); the bdev layer hooks in through the core's generic slot and
I/O-completion hook instead."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _symbols(src: Path, tmp: Path, *flags: str) -> set:
    """The global symbols nm lists for src compiled alone (-u: those it calls)."""
    obj = tmp / (src.stem + ".o")
    subprocess.run(["gcc", "-std=gnu11", "-O2", "-c", "-I", str(ROOT), str(src), "-o", str(obj)],
                   check=True)
    out = subprocess.run(["nm", *flags, str(obj)], check=True, capture_output=True, text=True)
    return {line.split()[-1] for line in out.stdout.splitlines() if line.strip()}


@pytest.mark.skipif(not shutil.which("gcc") or not shutil.which("nm"), reason="needs gcc and nm")
def test_reactor_calls_nothing_of_the_bdev_layer(tmp_path):
    calls = _symbols(ROOT / "ffi/reactor.c", tmp_path, "-u")
    bdev = set()
    for f in ("bdev.c", "bdev_file.c", "lvol.c", "lvol_pool.c", "mirror.c", "mirror_state.c"):
        bdev |= _symbols(ROOT / "ffi" / f, tmp_path, "--defined-only", "-g")
    assert not calls & bdev, f"reactor.c calls into the bdev layer: {sorted(calls & bdev)}"
    assert not [c for c in calls if "bdev" in c]


def test_reactor_source_names_no_bdev():
    text = (ROOT / "ffi/reactor.c").read_text()
    code = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    assert "bdev" not in code
