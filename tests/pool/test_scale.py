"""Scale: one controller with 10,000 thin volumes in one pool starts in < 30 s
with RSS < 1 GiB and no file descriptor per volume (first start creates the
volumes, the second opens them). SRRS_SCALE_VOLUMES changes the count."""

import os
import time

import psutil
from ctrl.helpers import Controller

from srrs.ctrl import launch

N = int(os.environ.get("SRRS_SCALE_VOLUMES", "10000"))


def _config(tmp_path, sock):
    return launch.write_config(tmp_path / "scale.toml", launch.config(
        launch.controller("scale", sock, reactors=2, poll_mode=None),
        pools=[launch.pool("p0", [launch.fragment(tmp_path / "big.img", "64GiB")],
                           metadata_slots=N + 4096)],
        volumes=[launch.volume(f"vol{i:05d}", "p0", "1GiB") for i in range(N)]))


def _measure(cfg, sock):
    t = time.time()
    c = Controller(cfg, sock)
    took = time.time() - t
    try:
        proc = psutil.Process(c.proc.pid)
        rss = proc.memory_info().rss
        fds = proc.num_fds()
        pools = c.rpc("pool_list")
        assert pools[0]["volumes"] == N
        # I/O on a few of them, spread over the range.
        for name in (f"vol{0:05d}", f"vol{N // 2:05d}", f"vol{N - 1:05d}"):
            c.rpc("bench_bdev_start", {"bdev": name, "rw": "randrw", "time_s": 0.3,
                                       "verify": True})
        for _ in range(100):
            jobs = c.rpc("bench_bdev_results")
            if all(j["state"] != "running" for j in jobs):
                break
            time.sleep(0.05)
        for j in jobs:
            r = j["result"]
            assert r and r["errors"] == 0 and r["verify_errors"] == 0, j
        assert c.stop(timeout=60) == 0
    finally:
        c.kill()
    return took, rss, fds


def test_ten_thousand_thin_volumes(tmp_path):
    sock = str(tmp_path / "s.sock")
    cfg = _config(tmp_path, sock)
    first, rss1, fds1 = _measure(cfg, sock)
    second, rss2, fds2 = _measure(cfg, sock)
    print(f"\n{N} volumes: first start (creates) {first:.1f} s, RSS {rss1 >> 20} MiB, {fds1} fds; "
          f"restart {second:.1f} s, RSS {rss2 >> 20} MiB, {fds2} fds")
    assert second < 30, f"restart with {N} volumes took {second:.1f} s"
    assert first < 60, f"first start with {N} volumes took {first:.1f} s"
    assert max(rss1, rss2) < 1 << 30
    assert max(fds1, fds2) < 100, "a file descriptor per volume?"
