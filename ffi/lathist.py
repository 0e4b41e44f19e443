"""The latency histogram of the bdev layer (ffi/srrs_int.h `srrs_lat_bucket`),
in plain Python: no import of the compiled core, so the console can use it.

Buckets are whole microseconds, log-linear like HdrHistogram: buckets 0..7
hold 0..7 us exactly, then every power of two 2^m us (m = 3..23) is cut into
8 buckets of width 2^(m-3); the last bucket holds everything from 2^24 us
(16.8 s) up. A bucket is at most 1/8 of its lower bound wide, so a percentile
reported as its bucket's midpoint is within 6.25 % (or 0.5 us) of the truth.

A histogram travels as a sparse list of ``[bucket, count]`` pairs in bucket
order (JSON-friendly, and an idle bdev costs nothing); `dense()` expands it.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

SUB_BITS = 3
SUB = 1 << SUB_BITS
MAX_MSB = 23
NBUCKETS = (MAX_MSB - SUB_BITS + 2) * SUB + 1  # 177, the C side's SRRS_LAT_BUCKETS
CLASSES = ("read", "write", "other")  # other: flush, unmap, write-zeroes

#: Bucket upper bounds (us) the Prometheus histogram exports: powers of two
#: from 1 us to 2^23 us (8.4 s). Each is a bucket boundary of the fine layout.
PROM_BOUNDS_US = tuple(1 << k for k in range(MAX_MSB + 1))


def bucket_of(us: int) -> int:
    """The bucket of a latency of `us` whole microseconds (as the C side)."""
    if us < SUB:
        return max(0, int(us))
    msb = int(us).bit_length() - 1
    if msb > MAX_MSB:
        return NBUCKETS - 1
    return (msb - SUB_BITS + 1) * SUB + ((int(us) >> (msb - SUB_BITS)) & (SUB - 1))


def bucket_lower(i: int) -> int:
    """The smallest latency (us) in bucket i."""
    if not 0 <= i < NBUCKETS:
        raise ValueError(f"latency bucket {i} out of 0..{NBUCKETS - 1}")
    if i < SUB:
        return i
    if i == NBUCKETS - 1:
        return 1 << (MAX_MSB + 1)
    msb = i // SUB + SUB_BITS - 1
    return (SUB + i % SUB) << (msb - SUB_BITS)


def bucket_upper(i: int) -> float:
    """The bound (us) bucket i ends before; inf for the last bucket."""
    return math.inf if i == NBUCKETS - 1 else float(bucket_lower(i + 1))


def bucket_value(i: int) -> float:
    """The figure reported for a sample in bucket i: its midpoint (the last,
    open-ended bucket reports its lower bound)."""
    if i == NBUCKETS - 1:
        return float(bucket_lower(i))
    return (bucket_lower(i) + bucket_upper(i)) / 2


def sparse(counts: Sequence[int]) -> list:
    """[[bucket, count], ...] of the non-zero buckets of a dense histogram."""
    return [[i, int(n)] for i, n in enumerate(counts) if n]


def dense(pairs: Iterable) -> list:
    out = [0] * NBUCKETS
    for i, n in pairs:
        out[int(i)] += int(n)
    return out


def merge(*hists: Iterable) -> list:
    """The sum of sparse histograms, sparse."""
    acc: dict = {}
    for h in hists:
        for i, n in h:
            acc[i] = acc.get(i, 0) + n
    return [[i, acc[i]] for i in sorted(acc) if acc[i]]


def delta(new: Iterable, old: Optional[Iterable]) -> list:
    """new - old per bucket, sparse: the I/Os that completed between two
    samples. A bucket that went down (the counters started over: the bdev was
    re-created) makes the whole delta `new`."""
    if not old:
        return [list(p) for p in new]
    prev = {i: n for i, n in old}
    out = []
    for i, n in new:
        d = n - prev.get(i, 0)
        if d < 0:
            return [list(p) for p in new]
        if d:
            out.append([i, d])
    return out


def count(pairs: Iterable) -> int:
    return sum(n for _, n in pairs)


def percentile(pairs: Iterable, q: float) -> Optional[float]:
    """The q-quantile (0 < q <= 1) of a sparse histogram in microseconds (the
    midpoint of the bucket holding the ceil(q * total)-th sample), None when empty."""
    if not 0 < q <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {q}")
    pairs = sorted((int(i), int(n)) for i, n in pairs if n)
    total = sum(n for _, n in pairs)
    if not total:
        return None
    rank = max(1, math.ceil(q * total - 1e-9))
    seen = 0
    for i, n in pairs:
        seen += n
        if seen >= rank:
            return bucket_value(i)
    return bucket_value(pairs[-1][0])


def percentiles(pairs: Iterable, qs: Sequence[float] = (0.5, 0.99, 0.999)) -> list:
    return percentiles_dense(dense(pairs), qs)


def percentiles_dense(counts: Sequence[int], qs: Sequence[float] = (0.5, 0.99, 0.999)) -> list:
    """percentile() of each q, in one pass over a dense histogram (qs ascending)."""
    total = sum(counts)
    if not total:
        return [None] * len(qs)
    ranks = [max(1, math.ceil(q * total - 1e-9)) for q in qs]
    out: list = []
    seen = 0
    for i, n in enumerate(counts):
        if not n:
            continue
        seen += n
        while len(out) < len(ranks) and seen >= ranks[len(out)]:
            out.append(bucket_value(i))
        if len(out) == len(ranks):
            break
    return out


def cumulative(pairs: Iterable, bounds_us: Sequence[int] = PROM_BOUNDS_US) -> list:
    """[(upper bound us, samples below it), ...] for each bound, then (inf, total):
    a Prometheus histogram's buckets. Each bound must be a bucket boundary."""
    pairs = sorted((int(i), int(n)) for i, n in pairs)
    out = []
    acc = 0
    k = 0
    for b in bounds_us:
        while k < len(pairs) and bucket_upper(pairs[k][0]) <= b:
            acc += pairs[k][1]
            k += 1
        out.append((b, acc))
    out.append((math.inf, acc + sum(n for _, n in pairs[k:])))
    return out
