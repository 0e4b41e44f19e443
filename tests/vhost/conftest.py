import subprocess
import time

import pytest
from conftest import need as need_tool

from srrs.ffi.binding import Core
from srrs.vhost.device import VhostService


@pytest.fixture
def core():
    c = Core(reactors=2, poll_mode="adaptive")
    yield c
    c.close()


@pytest.fixture
def svc(core):
    s = VhostService(core)
    yield s
    s.close()


@pytest.fixture
def bench_core():
    """A separate busy-polling reactor for the client (plays the VM's vCPU)."""
    c = Core(reactors=1, poll_mode="busy")
    yield c
    c.close()


def wait_for(pred, timeout=5.0, step=0.01):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


@pytest.fixture
def qsd(tmp_path):
    """qemu-storage-daemon exporting a 64 MiB file as vhost-user-blk with 2 queues."""
    exe = need_tool("qemu-storage-daemon")
    img = tmp_path / "qsd.img"
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    sock = tmp_path / "qsd.sock"
    p = subprocess.Popen([exe, "--blockdev", f"driver=file,node-name=f0,filename={img}",
                          "--export", "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,"
                          f"addr.path={sock},writable=on,num-queues=2"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if not wait_for(lambda: sock.exists() or p.poll() is not None, 10):
        p.kill()
        pytest.fail("qemu-storage-daemon did not create its socket")
    if p.poll() is not None:
        pytest.fail(f"qemu-storage-daemon exited: {p.stdout.read().decode(errors='replace')}")
    yield str(sock)
    p.terminate()
    p.wait(10)
