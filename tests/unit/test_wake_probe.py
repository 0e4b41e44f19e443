"""The wake-up floor probe of ci/bench-idle: a thread asleep in epoll_wait
on an eventfd or a TCP socket, woken from a reactor; its first answer and
its busy ones are timed."""

import os
import time

import pytest

from srrs.ffi.binding import Core, WakeProbe


@pytest.mark.parametrize("mode", ["eventfd", "tcp"])
def test_wake_probe_times_a_sleeping_thread(mode):
    ncpu = os.cpu_count() or 1
    with pytest.raises(ValueError):
        WakeProbe(0, mode="pipe")
    with Core(reactors=1, poll_mode="busy", cpus=[ncpu - 1]) as core:
        p = WakeProbe(0, mode=mode)
        try:
            time.sleep(0.05)  # asleep in epoll_wait by now
            r = core.wake_probe(p, busy_n=50)
            assert 0 < r["first_ns"] < 1_000_000_000
            assert 0 < r["busy_ns"] < r["first_ns"] or r["busy_ns"] < 50_000, r
            r2 = core.wake_probe(p, busy_n=0)
            assert r2["first_ns"] > 0 and r2["busy_ns"] == 0
        finally:
            p.close()
        p.close()  # twice is fine
