import os
import shutil
import subprocess

import pytest

IN_CI = os.environ.get("CI") == "true"


def need(tool: str) -> str:
    """A host tool a test needs: under CI its absence fails the run, else skips."""
    path = shutil.which(tool)
    if not path:
        if IN_CI:
            pytest.fail(f"{tool} is required under CI but is not installed")
        pytest.skip(f"{tool} not installed")
    return path


@pytest.fixture
def loopdev(tmp_path):
    """A loop block device over a sparse 256 MiB file (skip if none can be made)."""
    img = tmp_path / "loop.img"
    with open(img, "wb") as f:
        f.truncate(256 << 20)
    try:
        dev = subprocess.run(["losetup", "-f", "--show", str(img)], check=True,
                             capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot create a loop device here: {e}")
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
