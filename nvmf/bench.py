"""`srrs bench nvmf --target HOST:PORT [--target HOST:PORT …] --nqn NQN …`: the C
initiator on its own busy-polling reactor (like spdk_nvme_perf), request slot
i on I/O queue i % queues. With --verify, reads check what this run wrote
(read-only runs first fill the namespace), and write runs read everything back
at the end.

Several targets (repeated --target, or a comma list) are paths to the same
subsystem on different controllers (an active/active pair): the initiator
connects every queue to each, sends each I/O to the next ANA-optimized live
path (round-robin), resubmits an I/O whose path failed on another one, and
reconnects a lost path in the background; an I/O fails only when no path
comes back within --path-timeout. The JSON result then has a `paths` list
(per path: I/Os, IOPS, path errors, connection drops, reconnects, I/Os moved
off it, errors) and `failovers`, `path_timeouts`, `max_wait_us`."""

from __future__ import annotations

import errno
import sys

from ..ffi.binding import BenchOpts, Core, SrrsError
from .config import parse_listen
from .target import NvmfHost

MAX_PATHS = 8


def targets(raw) -> list:
    """--target values (a string or the list of repeated options), each maybe a
    comma list, as NvmfListen records in order, without repeats."""
    out = []
    for item in ([raw] if isinstance(raw, str) else list(raw or [])):
        for part in item.split(","):
            part = part.strip()
            if part:
                lst = parse_listen(part, "--target")
                if lst not in out:
                    out.append(lst)
    if not out:
        raise ValueError("--target: give at least one HOST:PORT")
    if len(out) > MAX_PATHS:
        raise ValueError(f"--target: at most {MAX_PATHS} paths, got {len(out)}")
    return out


def connect(tlist: list, nqn: str, queues: int, qsize: int, path_timeout_ms: int, **auth):
    """The host over every target: the first that answers is the primary (it
    defines the namespace), the others are added as paths (down ones are kept
    and reconnected while the job runs). Returns (host, warnings)."""
    errors, err = [], 0
    for i, lst in enumerate(tlist):
        try:
            h = NvmfHost(lst.addr, lst.port, nqn, queues=queues, qsize=qsize,
                         path_timeout_ms=path_timeout_ms, **auth)
        except SrrsError as e:
            errors.append(str(e))
            err = e.errno or err
            continue
        warn = list(errors)
        try:
            for other in tlist[:i] + tlist[i + 1:]:
                if not h.add_path(other.addr, other.port):
                    warn.append(f"path {other} is down at start: reconnecting in the background")
        except SrrsError:
            h.close()
            raise
        return h, warn
    raise SrrsError(err or errno.EIO, errors[-1] if len(errors) == 1 else "; ".join(errors))


def _path_report(before: list, after: list, elapsed: float) -> list:
    out = []
    for b, a in zip(before, after):
        d = {"target": f"{a['addr']}:{a['port']}" if ":" not in a["addr"]
             else f"[{a['addr']}]:{a['port']}", "cntlid": a["cntlid"], "live": a["live"],
             "ana": a["ana"]}
        for k in ("ios", "bytes", "path_errors", "drops", "reconnects", "resubmitted", "errors"):
            d[k] = a[k] - b[k]
        d["iops"] = d["ios"] / elapsed if elapsed > 0 else 0.0
        d["mibps"] = d["bytes"] / (1 << 20) / elapsed if elapsed > 0 else 0.0
        out.append(d)
    return out


def run(args, report, aggregate) -> int:
    # ctrl/cli.py stores the option under nvmf_target (a list: --target repeats);
    # older callers may pass args.target as one HOST:PORT string.
    raw = getattr(args, "nvmf_target", None) or args.target
    try:
        tlist = targets(raw)
    except ValueError as e:
        print(f"srrs bench nvmf: {e}", file=sys.stderr)
        return 2
    path_timeout = getattr(args, "path_timeout", 10.0)
    if path_timeout is None or path_timeout < 0 or path_timeout > 3600:
        print("srrs bench nvmf: --path-timeout must be 0..3600 seconds", file=sys.stderr)
        return 2
    if len(tlist) > 1 and path_timeout == 0:
        print("srrs bench nvmf: several targets need a --path-timeout above 0", file=sys.stderr)
        return 2
    queues = max(1, args.queues)
    qsize = min(1024, -(-args.qd // queues) + 1)
    core = Core(reactors=1, poll_mode="busy",
                cpus=[args.cpu] if getattr(args, "cpu", None) is not None else None)
    try:
        auth = {"hostnqn": getattr(args, "hostnqn", None),
                "dhchap_secret_file": getattr(args, "dhchap_secret", None),
                "dhchap_ctrl_secret_file": getattr(args, "dhchap_ctrl_secret", None)}
        h, warnings = connect(tlist, args.nqn, queues, qsize, int(path_timeout * 1000), **auth)
        for w in warnings:
            print(f"srrs bench nvmf: {w}", file=sys.stderr)
        with h:
            vmap = h.verify_map() if args.verify else None
            try:
                if vmap is not None and args.rw in ("randread", "read"):
                    fill = min(1 << 20, h.size)
                    h.bench(core, BenchOpts(rw="write", bs=fill, qd=8, time_s=0,
                                            max_ios=max(1, h.size // fill)), 0, vmap)
                p0, m0 = h.paths(), h.multipath_stats()
                res = h.bench(core, BenchOpts(rw=args.rw, bs=args.bs, qd=args.qd,
                                              time_s=args.time, rwmix_read=args.rwmix_read,
                                              seed=1), 0, vmap)
                p1, m1 = h.paths(), h.multipath_stats()
                if vmap is not None and vmap.written_blocks and args.rw not in ("randread",
                                                                                 "read"):
                    bs = min(1 << 20, h.size)
                    chk = h.bench(core, BenchOpts(rw="read", bs=bs, qd=8, time_s=0,
                                                  max_ios=max(1, h.size // bs)), 0, vmap)
                    for k in ("verify_errors", "verified_blocks", "errors"):
                        res[k] += chk[k]
                m2 = h.multipath_stats()
            finally:
                if vmap is not None:
                    vmap.close()
    except (OSError, ValueError) as e:  # SrrsError, a socket or secret-file error: one line
        print(f"srrs bench nvmf: {e}", file=sys.stderr)
        return 1
    finally:
        core.close()
    out = aggregate([res])
    out["verified"] = bool(args.verify and out["verify_errors"] == 0 and out["errors"] == 0
                           and out["verified_blocks"] > 0)
    out.update({"target": "nvmf:" + ",".join(str(t) for t in tlist) + f"/{args.nqn}",
                "rw": args.rw, "bs": args.bs, "qd": args.qd, "queues": queues,
                "verify": args.verify, "path_timeout_s": path_timeout,
                "paths": _path_report(p0, p1, res["elapsed_s"]),
                "failovers": m1["failovers"] - m0["failovers"],
                "path_timeouts": m2["path_timeouts"] - m0["path_timeouts"],
                "max_wait_us": m1["max_wait_us"]})
    report(out, args.json)
    if not args.json and len(tlist) > 1:
        for p in out["paths"]:
            print(f"  path {p['target']} cntlid {p['cntlid']} {'live' if p['live'] else 'down'} "
                  f"{p['ana']}: {p['iops']:,.0f} IOPS  path errors {p['path_errors']}  "
                  f"drops {p['drops']}  reconnects {p['reconnects']}  "
                  f"moved off {p['resubmitted']}  errors {p['errors']}")
        print(f"  failovers {out['failovers']}  longest wait for a path "
              f"{out['max_wait_us'] / 1000:,.0f} ms  timed out {out['path_timeouts']}")
    return 0 if out["errors"] == 0 and out["verify_errors"] == 0 else 1
