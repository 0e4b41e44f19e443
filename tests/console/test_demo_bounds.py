"""`srrs demo`'s summary says what bounds its figures: the machine's CPUs and
load, shared by the controllers, the witness, the load generators and the
console, whose own share of a core is measured over the load."""

from __future__ import annotations

import os
import re

from srrs.ctrl import demo


def _demo(cpu_s: float, elapsed: float) -> demo.Demo:
    d = demo.Demo(duration=elapsed)
    d.loads = [demo.Load("nvmf", "v0"), demo.Load("vhost", "v1")]
    d.t0, d.t1 = 100.0, 100.0 + elapsed
    d.cpu0, d.cpu1 = 5.0, 5.0 + cpu_s
    d.loadavg = 1.25
    d.reactors = 1
    return d


def test_summary_states_the_bounds_and_the_console_share():
    d = _demo(cpu_s=0.6, elapsed=20.0)
    lines, _ = demo.summary(d, early=False)
    b = [x for x in lines if x.startswith("srrs demo: bounds:")]
    assert len(b) == 1, lines
    n = os.cpu_count() or 1
    assert re.search(rf"\b{n} CPUs? \(load average 1\.2\) shared by 2 controllers "
                     r"\(1 adaptive reactor each", b[0]), b[0]
    assert "a witness, 2 load generators (a busy-polling C reactor each)" in b[0]
    assert "the console (3.0 % of a core)" in b[0], b[0]
    assert "ci/bench-pair" in b[0]
    # the bounds come before the verdict line, which stays last
    assert lines[-1].startswith("srrs demo: 20.0 s, pair a+b with witness")
