"""ci/bench-cluster runs on a small cluster and prints every figure
(the full-scale run is `ci/bench-cluster`, 1,000 pairs and 100,000 volumes)."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import need

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIGURES = ["create (1 client)", "create reading all (before)", "create (8 clients)",
           "delete (1 client)", "view read (all pairs + members)", "placement (pure function)",
           "fan-out to 50 watchers"]


@pytest.mark.side
def test_bench_cluster_prints_every_figure():
    need("etcd")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "ci", "bench-cluster"),
                        "--pairs", "10", "--volumes", "200"],
                       capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    for f in FIGURES:
        m = re.search(re.escape(f) + r"\s+p50\s+([\d.]+) ms\s+p99\s+([\d.]+) ms\s+n=(\d+)", out)
        assert m, f"{f!r} missing:\n{out}"
        assert int(m.group(3)) > 0, f"{f}: nothing measured\n{out}"
    assert "0 deliveries missing" in out, out
    assert re.search(r"dead controller seen\s+median [\d.]+ s from kill, [\d.]+ s from its "
                     r"last renewal \(lease 5 s; 3 kills, max [\d.]+ s, 0 never seen\)", out), out
    assert re.search(r"etcd db size\s+[\d.]+ MiB after the fill, [\d.]+ MiB after compaction",
                     out), out
    assert re.search(r"load average at start: [\d.]+ [\d.]+ [\d.]+", out), out
    assert re.search(r"load average at end: +[\d.]+ [\d.]+ [\d.]+", out), out
