"""`srrs bench nvmf --target HOST:PORT --nqn NQN …`: the C initiator on its own
busy-polling reactor (like spdk_nvme_perf), request slot i on I/O queue
i % queues. With --verify, reads check what this run wrote (read-only runs
first fill the namespace), and write runs read everything back at the end."""

from __future__ import annotations

import sys

from ..ffi.binding import BenchOpts, Core, SrrsError
from .config import parse_listen
from .target import NvmfHost


def run(args, report, aggregate) -> int:
    # ctrl/cli.py: the bench sub-command and `--target` may share args.target
    # (then it holds HOST:PORT); a separate dest is preferred when present.
    target = getattr(args, "nvmf_target", None) or args.target
    try:
        lst = parse_listen(target, "--target")
    except ValueError as e:
        print(f"srrs bench nvmf: {e}", file=sys.stderr)
        return 2
    queues = max(1, args.queues)
    qsize = min(1024, -(-args.qd // queues) + 1)
    core = Core(reactors=1, poll_mode="busy",
                cpus=[args.cpu] if getattr(args, "cpu", None) is not None else None)
    try:
        with NvmfHost(lst.addr, lst.port, args.nqn, queues=queues, qsize=qsize) as h:
            vmap = h.verify_map() if args.verify else None
            try:
                if vmap is not None and args.rw in ("randread", "read"):
                    fill = min(1 << 20, h.size)
                    h.bench(core, BenchOpts(rw="write", bs=fill, qd=8, time_s=0,
                                            max_ios=max(1, h.size // fill)), 0, vmap)
                res = h.bench(core, BenchOpts(rw=args.rw, bs=args.bs, qd=args.qd,
                                              time_s=args.time, rwmix_read=args.rwmix_read,
                                              seed=1), 0, vmap)
                if vmap is not None and vmap.written_blocks and args.rw not in ("randread",
                                                                                 "read"):
                    bs = min(1 << 20, h.size)
                    chk = h.bench(core, BenchOpts(rw="read", bs=bs, qd=8, time_s=0,
                                                  max_ios=max(1, h.size // bs)), 0, vmap)
                    for k in ("verify_errors", "verified_blocks", "errors"):
                        res[k] += chk[k]
            finally:
                if vmap is not None:
                    vmap.close()
    except SrrsError as e:
        print(f"srrs bench nvmf: {e}", file=sys.stderr)
        return 1
    finally:
        core.close()
    out = aggregate([res])
    out["verified"] = bool(args.verify and out["verify_errors"] == 0 and out["errors"] == 0
                           and out["verified_blocks"] > 0)
    out.update({"target": f"nvmf:{lst}/{args.nqn}", "rw": args.rw, "bs": args.bs,
                "qd": args.qd, "queues": queues, "verify": args.verify})
    report(out, args.json)
    return 0 if out["errors"] == 0 and out["verify_errors"] == 0 else 1
