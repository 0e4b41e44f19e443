"""`srrs bench vhost --socket PATH …`: the C vhost-user client on its own
reactor (busy polling, pinned with --cpu) against any vhost-user-blk back end.
One connection with --queues rings; one load job spreads its QD over them."""

from __future__ import annotations

import sys

from srrs.ffi.binding import BenchOpts, Core, SrrsError

from .client import VhostClient
from .proto import ProtocolError


def bench(socket_path: str, rw: str = "randread", bs: int = 4096, qd: int = 32,
          time_s: float = 10.0, queues: int = 1, verify: bool = False, cpu=None,
          rwmix_read: int = 50, core=None, reactor: int = 0) -> dict:
    """One run; returns the load generator's result plus the run's parameters."""
    own = core is None
    if own:
        core = Core(reactors=1, poll_mode="busy", cpus=[cpu] if cpu is not None else None)
    try:
        qs = 256 if qd <= 256 else 1024
        with VhostClient(socket_path, num_queues=queues, queue_size=qs,
                         max_inflight=max(qd, 1), max_io=max(bs, 4096)) as cl:
            r = cl.bench(core, BenchOpts(rw=rw, bs=bs, qd=qd, time_s=time_s,
                                         rwmix_read=rwmix_read), reactor=reactor, verify=verify)
    finally:
        if own:
            core.close()
    r.update({"target": f"vhost:{socket_path}", "rw": rw, "bs": bs, "qd": qd, "queues": queues})
    return r


def run(args, report, aggregate) -> int:
    try:
        r = bench(args.vhost_socket, args.rw, args.bs, args.qd, args.time, args.queues,
                  args.verify, args.cpu, args.rwmix_read)
    except (OSError, SrrsError, ProtocolError, EOFError) as e:
        print(f"srrs bench vhost: {e}", file=sys.stderr)
        return 1
    out = aggregate([r])
    out.update({k: r[k] for k in ("target", "rw", "bs", "qd", "queues")})
    out["first_error"] = r["first_error"]
    if args.verify:
        out["verify"] = True
        out["verified"] = bool(r["verified"] and out["verified_blocks"] > 0)
    report(out, args.json)
    return 0 if not out["errors"] and not out["verify_errors"] else 1
