"""Helpers for the pool tests: open pools through the service's Pool class."""

from __future__ import annotations

import threading

from srrs.ctrl.pool import Pool
from srrs.ctrl.pool_config import FragmentConfig, PoolConfig
from srrs.ffi.binding import BenchOpts, VerifyMap

MiB = 1 << 20


def frag_file(path, size=0, weight=100) -> FragmentConfig:
    return FragmentConfig(path=str(path), size=size, weight=weight)


def frag_ram(size, weight=100) -> FragmentConfig:
    return FragmentConfig(size=size, ram=True, weight=weight)


def open_pool(core, frags, name="p0", **kw) -> Pool:
    return Pool(core, PoolConfig(name=name, fragments=tuple(frags), **kw))


def block(seq: int, blk: int) -> bytes:
    """4 KiB that name the write (seq) and the volume block (blk) they belong to."""
    return (f"{seq:016x}{blk:016x}" * 128).encode()


def run_parallel(fns):
    """Run callables on threads (cffi drops the GIL in C); re-raise the first error."""
    errs, out = [], [None] * len(fns)

    def wrap(i, fn):
        try:
            out[i] = fn()
        except BaseException as e:  # noqa: B902 - re-raised below
            errs.append(e)

    ts = [threading.Thread(target=wrap, args=(i, f)) for i, f in enumerate(fns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errs:
        raise errs[0]
    return out


def verified_write_read(core, vol, size, vmap: VerifyMap, reactor=0, ios=3000, seed=1, span=0,
                        bs=4096, bs_max=128 << 10):
    w = core.bench_bdev(vol, BenchOpts(rw="randwrite", bs=bs, bs_max=bs_max, qd=32, time_s=0,
                                       max_ios=ios, seed=seed, span=span), reactor=reactor,
                        vmap=vmap)
    r = core.bench_bdev(vol, BenchOpts(rw="randrw", bs=bs, bs_max=bs_max, qd=32, time_s=0,
                                       max_ios=ios, seed=seed + 1, span=span), reactor=reactor,
                        vmap=vmap)
    return w, r
