"""Per-bdev latency histograms: the bucket math (C and Python agree), the
percentiles of known distributions, per-reactor channels summed, and real I/O
counted once per class next to the I/O counters."""

import math
import random

import pytest

from srrs.ffi import lathist
from srrs.ffi.binding import BenchOpts, Core, SrrsError, lib


def test_bucket_layout_c_and_python_agree():
    # every bucket's bounds, one below and one above, and random values over 12 decades
    values = {0, 1, 10 ** 13, (1 << 24) * 1000}
    for i in range(lathist.NBUCKETS):
        lo = lathist.bucket_lower(i)
        values |= {lo * 1000, lo * 1000 + 999, max(0, lo * 1000 - 1)}
    rnd = random.Random(7)
    values |= {int(10 ** rnd.uniform(0, 12)) for _ in range(5000)}
    for ns in sorted(values):
        i = lathist.bucket_of(ns // 1000)
        assert lib.srrs_test_lat_bucket(ns) == i, ns
        assert lathist.bucket_lower(i) <= ns / 1000 < lathist.bucket_upper(i), ns
    # log-linear: exact below 8 us, then at most 1/8 of the lower bound wide
    assert [lathist.bucket_lower(i) for i in range(10)] == list(range(10))
    for i in range(8, lathist.NBUCKETS - 1):
        lo, hi = lathist.bucket_lower(i), lathist.bucket_upper(i)
        assert hi > lo and (hi - lo) / lo <= 1 / 8
    assert lathist.bucket_upper(lathist.NBUCKETS - 2) == 1 << 24
    assert math.isinf(lathist.bucket_upper(lathist.NBUCKETS - 1))
    # the exported Prometheus bounds are bucket boundaries
    lowers = {lathist.bucket_lower(i) for i in range(lathist.NBUCKETS)}
    assert set(lathist.PROM_BOUNDS_US) <= lowers


def test_percentiles_of_known_inputs():
    h = lathist.sparse(lathist.dense([[lathist.bucket_of(10), 900], [lathist.bucket_of(100), 90],
                                      [lathist.bucket_of(5000), 10]]))
    assert lathist.count(h) == 1000
    p50, p99, p999 = lathist.percentiles(h)
    assert p50 == 10.5                   # [10, 11)
    assert p99 == 100.0                  # [96, 104)
    assert p999 == 4864.0                # [4608, 5120)
    assert lathist.percentile(h, 0.9) == 10.5 and lathist.percentile(h, 0.9001) == 100.0
    assert lathist.percentile(h, 1.0) == 4864.0
    assert lathist.percentiles([]) == [None, None, None]
    with pytest.raises(ValueError):
        lathist.percentile(h, 0)
    # a spread of values: every percentile within half a bucket (6.25 %) of the exact one
    rnd = random.Random(3)
    samples = sorted(int(rnd.lognormvariate(4, 1.5)) for _ in range(20000))
    dense = [0] * lathist.NBUCKETS
    for us in samples:
        dense[lathist.bucket_of(us)] += 1
    for q in (0.5, 0.9, 0.99, 0.999):
        exact = samples[math.ceil(q * len(samples)) - 1]
        got = lathist.percentile(lathist.sparse(dense), q)
        assert abs(got - exact) <= max(0.5, exact / 16), (q, got, exact)
    # deltas (an interval's I/Os), merges and cumulative Prometheus buckets
    old = [[3, 5], [20, 7]]
    new = [[3, 9], [20, 7], [40, 2]]
    assert lathist.delta(new, old) == [[3, 4], [40, 2]]
    assert lathist.delta(new, None) == new
    assert lathist.delta(old, new) == old, "counters that went back: the bdev started over"
    assert lathist.merge(old, new) == [[3, 14], [20, 14], [40, 2]]
    cum = lathist.cumulative([[0, 1], [1, 2], [8, 4], [lathist.NBUCKETS - 1, 1]])
    assert cum[0] == (1, 1) and cum[1] == (2, 3) and cum[3] == (8, 3) and cum[4] == (16, 7)
    assert cum[-2] == (1 << 23, 7) and cum[-1] == (math.inf, 8)


def test_channels_summed_and_real_io_counted():
    with Core(reactors=2) as core:
        core.bdev_create_null("n0", 64 << 20)
        core.bdev_create_malloc("m0", 64 << 20)
        # the same bdev written by two reactors' channels: summed, each class apart
        core.test_lat_record("n0", "read", 10_500, 900, reactor=0)
        core.test_lat_record("n0", "read", 100_000, 90, reactor=1)
        core.test_lat_record("n0", "read", 5_000_000, 10, reactor=1)
        core.test_lat_record("n0", "other", 2_000_000_000, 3, reactor=0)
        lat = core.bdev_info("n0")["latency"]
        r = lat["read"]
        assert r["count"] == 1000 and r["sum_ns"] == 900 * 10_500 + 90 * 100_000 + 10 * 5_000_000
        assert (r["p50_us"], r["p99_us"], r["p999_us"]) == (10.5, 100.0, 4864.0)
        assert lat["write"]["count"] == 0 and lat["write"]["p50_us"] is None
        assert lat["other"]["buckets"] == [[lathist.bucket_of(2_000_000), 3]]
        with pytest.raises(SrrsError):
            core.test_lat_record("nope", "read", 1, 1)

        # real I/O: each successful one lands in its class, failures only in errors
        for op in ("write", "read", "read", "flush", "unmap", "write_zeroes"):
            st, _ = core.test_io("m0", op, 0, 4096, bytes(4096) if op == "write" else b"")
            assert st == 0, op
        assert core.test_io("m0", "read", 64 << 20, 4096)[0] == -34
        d = core.bdev_info("m0")
        lat = d["latency"]
        assert (lat["read"]["count"], lat["write"]["count"], lat["other"]["count"]) == (2, 1, 3)
        assert d["errors"] == 1 and d["reads"] == 2
        assert lat["read"]["sum_ns"] > 0 and lat["read"]["p50_us"] < 1e5

        # under load: one histogram sample per completed I/O, and the bdev's own
        # latency (submit -> completion) within the job's (which adds its own path)
        res = core.bench_bdev("m0", BenchOpts(rw="randrw", qd=8, time_s=0, max_ios=50_000),
                              reactor=1)
        d = next(b for b in core.bdev_list() if b["name"] == "m0")
        lat = d["latency"]
        assert lat["read"]["count"] == d["reads"] and lat["write"]["count"] == d["writes"]
        assert d["reads"] + d["writes"] == res["ios"] + 3
        p50 = lathist.percentile(lathist.merge(lat["read"]["buckets"], lat["write"]["buckets"]),
                                 0.5)
        assert 0 < p50 <= max(1.0, 1.1 * res["lat_us"]["p50"]), (p50, res["lat_us"])
        mean = (lat["read"]["sum_ns"] + lat["write"]["sum_ns"]) / 1e3 / (d["reads"] + d["writes"])
        assert 0 < mean <= 1.1 * res["lat_us"]["avg"] + 1, (mean, res["lat_us"])
