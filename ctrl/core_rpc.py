"""RPC methods of the core: bdevs, reactors, status, events, save_config and
the in-controller load jobs; declared in `METHODS` (srrs.rpcdef). `ctl` is
the running ctrl/daemon.py Controller."""

from __future__ import annotations

import os
import threading

from ..rpcdef import InvalidParams, MethodTable
from ..rpcdef import P as _P
from ..schema import FILE_ENGINES
from . import config as cfg

METHODS = MethodTable()


def _bdev_fail(keypath, msg):
    key = ".".join(str(p) for p in keypath)
    return InvalidParams(f"{key}: {msg}" if key else msg)


# Optional params without a default here are defaulted by config.parse_bdev,
# which parses them exactly like a [[bdev]] table.
@METHODS.method("bdev_create", _P("name", help="bdev name"),
                _P("type", choices=cfg.BDEV_TYPES, help="malloc (RAM), null (no data) or file"),
                _P("size", "size", None, "e.g. 256MiB (a file bdev: default the file's size)"),
                _P("block_size", "int", None, "512 or 4096 (default 4096)", choices=(512, 4096)),
                _P("path", default=None, help="file bdev: the file or block device"),
                _P("grow", "bool", None, "file: grow an existing smaller file to size"),
                _P("engine", default=None, choices=FILE_ENGINES,
                   help="file: auto (io_uring, else aio, else threads), uring, aio or threads"))
def bdev_create(ctl, p: dict):
    """Create a bdev; returns its info."""
    b = cfg.parse_bdev(p, _bdev_fail)
    ctl.bdev_create(b)
    return ctl.core.bdev_info(b.name)


@METHODS.method("bdev_delete", _P("name", help="bdev name", positional=True))
def bdev_delete(ctl, p: dict):
    """Delete a bdev that no export uses."""
    ctl.bdev_delete(p["name"])
    return True


_PAGE = (_P("offset", "int", 0, "skip this many (in name order)"),
         _P("limit", "int", 0, "at most this many (0: all)"))


def _page(items: list, p: dict) -> list:
    """items[offset:offset+limit] of a list in name order (limit 0: to the end)."""
    off, lim = p["offset"], p["limit"]
    if off < 0 or lim < 0:
        raise InvalidParams("offset and limit must be >= 0")
    return items[off:off + lim] if lim else items[off:]


@METHODS.method("bdev_list", _P("name", default=None, help="only this bdev", positional=True),
                *_PAGE)
def bdev_list(ctl, p: dict):
    """List bdevs with their I/O counters and latency histograms, in name order."""
    if p.get("name") is not None:
        return [ctl.core.bdev_info(p["name"])]
    if p["offset"] or p["limit"]:
        names = _page(ctl.core.bdev_names(), p)
        return [ctl.core.bdev_info(n) for n in names]
    return ctl.core.bdev_list()


@METHODS.method("reactor_stats")
def reactor_stats(ctl, p: dict):
    """Per-reactor loop counters, busy/idle/sleep time and poll mode."""
    return ctl.core.all_reactor_stats()


@METHODS.method("reactor_set_poll_mode", _P("poll_mode", choices=("adaptive", "busy"),
                                            help="busy: spin always; adaptive: sleep when idle"),
                _P("idle_spin_us", "int", 200, "adaptive: spin this long before sleeping"),
                when="runtime")
def reactor_set_poll_mode(ctl, p: dict):
    """Switch the poll mode of every reactor."""
    ctl.core.set_poll_mode(p["poll_mode"], p["idle_spin_us"])
    return True


@METHODS.method("status", _P("detail", "bool", False, "every bdev (megabytes at 10,000 volumes)"),
                _P("top", "int", 32, "without detail: how many of the busiest bdevs to list"),
                noun="status")
def status(ctl, p: dict):
    """Controller name, pid, uptime, reactors, bdevs and exports. The bdevs are
    summarised (bdev_count, bdev_totals) with the `top` busiest listed; every
    one with `detail` (or page through bdev_list)."""
    if p["top"] < 0:
        raise InvalidParams("top must be >= 0")
    return ctl.status(detail=p["detail"], top=p["top"])


@METHODS.method("events", _P("since", "float", 0, "only events after this unix time"),
                noun="events")
def events(ctl, p: dict):
    """Recent data-plane events."""
    return [e for e in ctl.events if e["time"] > p["since"]]


@METHODS.method("save_config", _P("path", help="absolute path of the TOML file to write"),
                noun="config", verb="save")
def save_config(ctl, p: dict):
    """Write the running state to a TOML file that `srrs start` accepts."""
    if not os.path.isabs(p["path"]):
        raise InvalidParams("path must be absolute (the controller's cwd is not yours)")
    return {"path": ctl.save_config(p["path"])}


@METHODS.method("bench_bdev_start", _P("bdev", help="the bdev to load"),
                _P("reactor", "int", 0, "the reactor that runs the job"),
                _P("rw", default="randrw", help="randread, randwrite, randrw, read or write"),
                _P("bs", "size", 4096, "I/O size"),
                _P("bs_max", "size", 0, "if set: I/O sizes random in bs..bs_max"),
                _P("qd", "int", 32, "queue depth"), _P("time_s", "float", 10, "seconds"),
                _P("max_ios", "int", 0, "stop after this many I/Os (0: no limit)"),
                _P("seed", "int", 0, "random seed"),
                _P("offset", "size", 0, "start of the span"),
                _P("span", "size", 0, "bytes covered (0: to the end)"),
                _P("verify", "bool", False, "check every read against what was written"),
                _P("also", default="", help="a second bdev every write also goes to, the I/O "
                                            "completing once both have (reads: bdev only)"),
                when="runtime", noun="job", verb="start")
def bench_bdev_start(ctl, p: dict):
    """Start a C load job on a reactor in the background (like bdevperf inside
    the controller); returns its id."""
    from ..ffi.binding import BenchOpts, VerifyMap

    name, reactor = p["bdev"], p["reactor"]
    if not 0 <= reactor < ctl.core.num_reactors:
        raise InvalidParams(f"reactor must be 0..{ctl.core.num_reactors - 1}")
    info = ctl.core.bdev_info(name)
    if p["also"]:
        ctl.core.bdev_info(p["also"])     # a clear error when it does not exist
    opts = BenchOpts(rw=p["rw"], bs=p["bs"], bs_max=p["bs_max"], qd=p["qd"],
                     time_s=float(p["time_s"]), max_ios=p["max_ios"], seed=p["seed"],
                     offset=p["offset"], span=p["span"])
    vmap = VerifyMap(info["num_blocks"], info["block_size"]) if p["verify"] else None
    jid = len(ctl.jobs)
    job = {"id": jid, "bdev": name, "reactor": reactor, "state": "running", "result": None}
    ctl.jobs.append(job)

    def run():
        try:
            job["result"] = ctl.core.bench_bdev(name, opts, reactor=reactor, vmap=vmap,
                                                also=p["also"])
            job["state"] = "done"
        except OSError as e:
            job["state"] = f"failed: {e}"
        finally:
            if vmap is not None:
                vmap.close()

    t = threading.Thread(target=run, name=f"srrs-bench-{jid}", daemon=True)
    job["_thread"] = t
    t.start()
    return jid


@METHODS.method("bench_bdev_results", noun="job", verb="results")
def bench_bdev_results(ctl, p: dict):
    """State and results of the load jobs started with bench_bdev_start."""
    return [{k: v for k, v in j.items() if not k.startswith("_")} for j in ctl.jobs]
