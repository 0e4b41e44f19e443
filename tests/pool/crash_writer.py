"""Crash-test writer (run as a subprocess, killed with SIGKILL at a random moment).

Opens the pool with the binding, makes sure volume `cv` exists, prints
"ready ENGINE" (its fragments' file I/O engine), then T threads write forever, each in its own region of the volume
and one write at a time, logging to log-T.txt: "S seq off nblk" before the
write is submitted and "A seq" once it is acknowledged (O_APPEND writes, in
the kernel before the next I/O starts, so they survive SIGKILL).

With CRASH_DRAIN=1 the main thread meanwhile drains one fragment after the
other, removes it once empty and adds the same file back (fresh), so the kill
also lands in drains, removals and additions.

usage: crash_writer.py LOGDIR ROUND FRAG [FRAG...]
"""

import os
import random
import sys
import threading

from srrs.ffi.binding import Core

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.pool.util import MiB, block, frag_file, open_pool  # noqa: E402

VOL_SIZE = 256 * MiB
THREADS = 4
CS = 64 << 10


def main():
    logdir, rnd, frags = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    drain = os.environ.get("CRASH_DRAIN") == "1"
    core = Core(reactors=2)
    size = 384 * MiB if drain else 256 * MiB
    pool = open_pool(core, [frag_file(f, size) for f in frags], cluster_size=CS)
    if pool.volume_info("cv") is None:
        pool.volume_create("cv", VOL_SIZE)
    print("ready", pool.fragments()[0]["engine"], flush=True)
    region = VOL_SIZE // 4096 // THREADS

    def writer(t):
        rng = random.Random(rnd * 1000 + t)
        fd = os.open(os.path.join(logdir, f"log-{t}.txt"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        i = 0
        while True:
            seq = rnd * 10_000_000 + t * 1_000_000 + i
            i += 1
            nblk = rng.choice((1, 1, 2, 4, 16, 33))
            blk = t * region + rng.randrange(region - nblk)
            data = b"".join(block(seq, blk + k) for k in range(nblk))
            os.write(fd, f"S {seq} {blk} {nblk}\n".encode())
            st, _ = core.test_io("cv", "write", blk * 4096, nblk * 4096, data, reactor=t % 2)
            os.write(fd, (f"A {seq}\n" if st == 0 else f"F {seq} {st}\n").encode())

    for t in range(THREADS):
        threading.Thread(target=writer, args=(t,), daemon=True).start()
    if drain:
        drain_forever(pool, rnd, size)
    threading.Event().wait()


def drain_forever(pool, rnd, size):
    """Drain, remove and re-add fragments in turn until killed."""
    import time

    turn = rnd
    while True:
        frags = [f for f in pool.fragments() if f["state"] in ("active", "draining")]
        # a drain the last kill interrupted is resumed first: the pool refuses
        # to drain its only active fragment
        draining = [f for f in frags if f["state"] == "draining"]
        f = draining[0] if draining else frags[turn % len(frags)]
        turn += 1
        pool.frag_drain(f["index"], 32)
        while True:
            try:
                pool.frag_remove(f["index"])
                break
            except OSError:
                time.sleep(0.005)
        pool.frag_add(frag_file(f["path"], size))


if __name__ == "__main__":
    main()
