import os
import shutil
import subprocess
import tempfile

import pytest

IN_CI = os.environ.get("CI") == "true"


@pytest.fixture(scope="session", autouse=True)
def shm_dir():
    """RAM fragments live in shared memory that outlives the controller; the
    tests' pools keep theirs in one tmpfs directory, removed at the end."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    d = tempfile.mkdtemp(prefix="srrs-test-", dir=base)
    old = os.environ.get("SRRS_SHM_DIR")
    os.environ["SRRS_SHM_DIR"] = d
    yield d
    if old is None:
        os.environ.pop("SRRS_SHM_DIR", None)
    else:
        os.environ["SRRS_SHM_DIR"] = old
    shutil.rmtree(d, ignore_errors=True)


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
