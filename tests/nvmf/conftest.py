import os

import pytest

from srrs.ffi.binding import Core
from srrs.nvmf.target import NvmfTarget

NQN = "nqn.2026-11.io.srrs:test0"


@pytest.fixture
def core():
    c = Core(reactors=2, poll_mode=os.environ.get("SRRS_TEST_POLL_MODE", "adaptive"))
    yield c
    c.close()


@pytest.fixture
def target(core):
    core.bdev_create_malloc("m0", 64 << 20, 4096)
    core.bdev_create_malloc("m1", 16 << 20, 512)
    t = NvmfTarget(core, cntlid_min=100, cntlid_max=199, max_io_queues=8)
    t.port = t.add_listener("127.0.0.1", 0)
    t.add_subsystem(NQN, "SRRSTEST", "SRRS test", allow_any_host=True)
    t.add_namespace(NQN, "m0")
    yield t
    t.close()


def wait_for(pred, timeout=5.0, step=0.01):
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()
