"""`srrs cluster status` answers while the catalog sync's lock is held (a
converge or a move step across slow etcd calls held it for seconds, and the
status call with it): ctrl/cluster_sync.py CatalogSync.status."""

import threading
import time
from types import SimpleNamespace

from srrs.ctrl.cluster_sync import STATUS_WAIT_S, CatalogSync


def _sync():
    s = object.__new__(CatalogSync)     # only what status() reads
    s.lock = threading.RLock()
    s.snap, s.pair_name, s.pool = None, "a+b", SimpleNamespace(name="p0")
    s.have, s.converged, s.errors = {"u1": None}, True, {"u2": "no space"}
    s.mover = SimpleNamespace(status=lambda: {"moves": {}, "errors": {}, "cutovers": 0})
    s.balancer = SimpleNamespace(status=lambda: {"driver": None})
    s.replacer = SimpleNamespace(status=lambda: {"retargets": 0, "waiting": []})
    return s


def test_status_answers_while_a_step_holds_the_lock():
    s = _sync()
    assert s.status()["moves"] == {"moves": {}, "errors": {}, "cutovers": 0}   # free: whole
    held, release = threading.Event(), threading.Event()

    def step():
        with s.lock:
            held.set()
            release.wait(10)

    t = threading.Thread(target=step)
    t.start()
    try:
        held.wait(5)
        t0 = time.monotonic()
        st = s.status()
        took = time.monotonic() - t0
    finally:
        release.set()
        t.join()
    assert took < STATUS_WAIT_S + 1.0
    assert st["moves"] == {"busy": True}          # live link figures only under the lock
    assert (st["volumes"], st["converged"], st["errors"]) == (1, True, {"u2": "no space"})
