"""The thin Python layer over the compiled core: the only importer of
`srrs.ffi._srrs`. It owns C handles, turns -errno into `SrrsError` with the
C side's message, and runs each reactor on its own thread (cffi releases the
GIL for the call, so that thread is pure C until the reactor stops).
"""

from __future__ import annotations

import enum
import errno as _errno
import os
import threading
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from . import lathist


def _load_extension():
    """The compiled core; SRRS_EXT_PATH selects another build of it (the CI's
    AddressSanitizer build) without touching the installed one."""
    path = os.environ.get("SRRS_EXT_PATH")
    if not path:
        from . import _srrs as mod

        return mod
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"{__package__}._srrs", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


_srrs = _load_extension()
ffi = _srrs.ffi
lib = _srrs.lib

#: Must equal SRRS_ABI_VERSION in ffi/srrs_int.h; bumped with any change to ffi/srrs.h.
ABI_VERSION = 7


# The named ints of the contract headers (their enums, which cffi exposes as
# lib.SRRS_*): Python never writes one of these numbers itself.
class PollMode(enum.IntEnum):
    ADAPTIVE = lib.SRRS_POLL_ADAPTIVE
    BUSY = lib.SRRS_POLL_BUSY


class ReactorState(enum.IntEnum):
    CREATED = lib.SRRS_REACTOR_CREATED
    RUNNING = lib.SRRS_REACTOR_RUNNING
    STOPPING = lib.SRRS_REACTOR_STOPPING
    STOPPED = lib.SRRS_REACTOR_STOPPED


class EventType(enum.IntEnum):
    LOG = lib.SRRS_EV_LOG
    BDEV_ERROR = lib.SRRS_EV_BDEV_ERROR
    CONN_UP = lib.SRRS_EV_CONN_UP
    CONN_DOWN = lib.SRRS_EV_CONN_DOWN
    KATO_EXPIRED = lib.SRRS_EV_KATO_EXPIRED
    PROTO_ERROR = lib.SRRS_EV_PROTO_ERROR
    VHOST_STOPPED = lib.SRRS_EV_VHOST_STOPPED
    VHOST_BROKEN = lib.SRRS_EV_VHOST_BROKEN
    QUOTA = lib.SRRS_EV_QUOTA
    POOL_FULL = lib.SRRS_EV_POOL_FULL
    FRAG_FAILED = lib.SRRS_EV_FRAG_FAILED
    RAM_LOST = lib.SRRS_EV_RAM_LOST
    MIRROR_DOWN = lib.SRRS_EV_MIRROR_DOWN
    MIRROR_UP = lib.SRRS_EV_MIRROR_UP
    MIRROR_READ_ERROR = lib.SRRS_EV_MIRROR_READ_ERR


class IoOp(enum.IntEnum):
    READ = lib.SRRS_IO_READ
    WRITE = lib.SRRS_IO_WRITE
    FLUSH = lib.SRRS_IO_FLUSH
    WRITE_ZEROES = lib.SRRS_IO_WRITE_ZEROES
    UNMAP = lib.SRRS_IO_UNMAP


class LatClass(enum.IntEnum):
    READ = lib.SRRS_LAT_READ
    WRITE = lib.SRRS_LAT_WRITE
    OTHER = lib.SRRS_LAT_OTHER


class BenchRw(enum.IntEnum):
    RANDREAD = lib.SRRS_RW_RANDREAD
    RANDWRITE = lib.SRRS_RW_RANDWRITE
    RANDRW = lib.SRRS_RW_RANDRW
    READ = lib.SRRS_RW_READ
    WRITE = lib.SRRS_RW_WRITE


class MirrorMode(enum.IntEnum):
    FENCED = lib.SRRS_MIRROR_FENCED
    PAIRED = lib.SRRS_MIRROR_PAIRED
    SOLO = lib.SRRS_MIRROR_SOLO
    RESYNC_SOURCE = lib.SRRS_MIRROR_RESYNC_SOURCE
    RESYNC_TARGET = lib.SRRS_MIRROR_RESYNC_TARGET
    PENDING = lib.SRRS_MIRROR_PENDING


class PoolPlacement(enum.IntEnum):
    SPREAD = lib.SRRS_PLACEMENT_SPREAD
    FILL_FIRST = lib.SRRS_PLACEMENT_FILL_FIRST


class FragState(enum.IntEnum):
    EMPTY = lib.SRRS_FRAG_EMPTY
    ACTIVE = lib.SRRS_FRAG_ACTIVE
    DRAINING = lib.SRRS_FRAG_DRAINING
    REMOVED = lib.SRRS_FRAG_REMOVED
    MISSING = lib.SRRS_FRAG_MISSING


def _by_name(e: type[enum.IntEnum]) -> dict:
    """name (lower case, as configs and RPC results spell it) -> member."""
    return {m.name.lower(): m for m in e}


def _names(e: type[enum.IntEnum]) -> dict:
    """value -> name (lower case)."""
    return {m.value: m.name.lower() for m in e}


POLL_MODES = _by_name(PollMode)
RW_MODES = _by_name(BenchRw)
IO_OPS = _by_name(IoOp)
REACTOR_STATES = _names(ReactorState)
EVENT_TYPES = _names(EventType)
MIRROR_MODES = _by_name(MirrorMode)
MIRROR_MODE_NAMES = _names(MirrorMode)
FRAG_STATES = _names(FragState)


class SrrsError(OSError):
    """A failed call into the core: errno plus the core's own explanation."""

    def __init__(self, err: int, message: str):
        super().__init__(err, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _verify_abi() -> None:
    have = lib.srrs_abi_version()
    if have != ABI_VERSION:
        raise ImportError(
            f"srrs: compiled core has ABI {have}, the Python code expects {ABI_VERSION}; "
            "rebuild with `pip install -e .`"
        )


_verify_abi()


def last_error() -> str:
    return ffi.string(lib.srrs_last_error()).decode(errors="replace")


def check(rc: int, what: str = "") -> int:
    """Raise SrrsError for a negative return code, else return it."""
    if rc < 0:
        msg = last_error() or os.strerror(-rc)
        raise SrrsError(-rc, f"{what}: {msg}" if what and what not in msg else msg)
    return rc


def file_engine_flags(engine: str) -> int:
    """The SRRS_FILE_* engine flag of an engine name (auto, uring, aio, threads)."""
    return {"auto": 0, "uring": lib.SRRS_FILE_URING, "aio": lib.SRRS_FILE_AIO,
            "threads": lib.SRRS_FILE_THREADS}[engine]


def crc32c(data: bytes, crc: int = 0) -> int:
    return lib.srrs_crc32c(crc, data, len(data))


def crc32c_sw(data: bytes, crc: int = 0) -> int:
    return lib.srrs_crc32c_sw(crc, data, len(data))


def _s(cdata) -> str:
    return ffi.string(cdata).decode(errors="replace")


def _struct_to_dict(obj, fields: Sequence[str]) -> dict:
    return {f: getattr(obj, f) for f in fields}


_BDEV_FIELDS = ("num_blocks", "block_size", "open_count", "reads", "writes", "bytes_read",
                "bytes_written", "flushes", "unmaps", "write_zeroes", "errors", "direct_ios",
                "buffered_ios")
_BENCH_FIELDS = ("ios", "reads", "writes", "bytes", "errors", "verify_errors", "verified_blocks",
                 "elapsed_s", "iops", "mibps", "busy_pct", "first_error")


def bdev_info_dict(info) -> dict:
    d = {"name": _s(info.name), "module": _s(info.module), "path": _s(info.path),
         "engine": _s(info.engine)}
    d.update(_struct_to_dict(info, _BDEV_FIELDS))
    d["size"] = d["num_blocks"] * d["block_size"]
    return d


def _completed(d: dict) -> int:
    return d["reads"] + d["writes"] + d["flushes"] + d["unmaps"] + d["write_zeroes"]


def latency_dict(lat=None) -> dict:
    """{read|write|other: {count, sum_ns, p50_us, p99_us, p999_us, buckets}} of a
    `struct srrs_bdev_latency` (None: a bdev without completed I/O). buckets is
    sparse ([[bucket, count], ...], layout in ffi/lathist.py); the percentiles
    are over the bdev's whole life (None without samples)."""
    out = {}
    for k, cls in enumerate(lathist.CLASSES):
        pairs = lathist.sparse(ffi.unpack(lat.buckets[k], lathist.NBUCKETS)) if lat else []
        p50, p99, p999 = lathist.percentiles(pairs)
        out[cls] = {"count": lathist.count(pairs), "sum_ns": lat.sum_ns[k] if lat else 0,
                    "p50_us": p50, "p99_us": p99, "p999_us": p999, "buckets": pairs}
    return out


def bench_result_dict(res) -> dict:
    d = _struct_to_dict(res, _BENCH_FIELDS)
    d["lat_us"] = {
        "avg": res.lat_avg_us, "min": res.lat_min_us, "max": res.lat_max_us,
        "p50": res.lat_p50_us, "p99": res.lat_p99_us, "p999": res.lat_p999_us,
    }
    return d


class VerifyMap:
    """Per-block CRC32C of what a verifying load job wrote (lives across jobs)."""

    def __init__(self, num_blocks: int, block_size: int):
        p = ffi.new("struct srrs_verify_map **")
        check(lib.srrs_verify_map_create(num_blocks, block_size, p), "verify map")
        self._p = p
        self.ptr = p[0]

    @property
    def written_blocks(self) -> int:
        return lib.srrs_verify_map_written(self.ptr)

    def close(self) -> None:
        if self.ptr != ffi.NULL:
            lib.srrs_verify_map_destroy(self._p)
            self.ptr = ffi.NULL

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


@dataclass(frozen=True)
class BenchOpts:
    rw: str = "randread"
    bs: int = 4096
    bs_max: int = 0
    qd: int = 1
    time_s: float = 1.0
    max_ios: int = 0
    rwmix_read: int = 50
    seed: int = 0
    offset: int = 0
    span: int = 0
    misalign: bool = False

    def to_c(self, vmap: Optional[VerifyMap] = None):
        if self.rw not in RW_MODES:
            raise ValueError(f"rw must be one of {', '.join(RW_MODES)}, got {self.rw!r}")
        o = ffi.new("struct srrs_bench_opts *")
        o.rw = RW_MODES[self.rw]
        o.rwmix_read = self.rwmix_read
        o.bs = self.bs
        o.bs_max = self.bs_max
        o.qd = self.qd
        o.time_s = self.time_s
        o.max_ios = self.max_ios
        o.seed = self.seed
        o.offset = self.offset
        o.span = self.span
        o.misalign = int(self.misalign)
        o.vmap = vmap.ptr if vmap is not None else ffi.NULL
        return o


class WakeProbe:
    """The platform's wake-up floor (ci/bench-idle): a thread pinned to `cpu`
    sleeping in epoll_wait as a sleeping reactor does, and nothing else, on an
    eventfd (mode "eventfd": a vhost-user kick's path) or on a TCP loopback
    socket it answers with a byte (mode "tcp": an NVMe/TCP command's);
    Core.wake_probe() times waking it."""

    MODES = {"eventfd": 0, "tcp": 1}

    def __init__(self, cpu: int, spin_us: int = 200, mode: str = "eventfd"):
        if mode not in self.MODES:
            raise ValueError(f"wake probe mode {mode!r}: one of {sorted(self.MODES)}")
        p = ffi.new("struct srrs_wake_probe **")
        check(lib.srrs_wake_probe_create(cpu, spin_us, self.MODES[mode], p), "wake probe")
        self.ptr = p[0]

    def close(self) -> None:
        if self.ptr is not None:
            p = ffi.new("struct srrs_wake_probe **", self.ptr)
            lib.srrs_wake_probe_destroy(p)
            self.ptr = None


class TestPoller:
    """A test poller on a reactor (Core.test_poller): fire() writes its eventfd,
    runs counts its runs; delete it before its core."""

    __test__ = False  # not a pytest class

    def __init__(self, ptr):
        self.ptr = ptr

    def fire(self) -> None:
        os.write(lib.srrs_test_poller_fd(self.ptr), (1).to_bytes(8, "little"))

    @property
    def runs(self) -> int:
        return lib.srrs_test_poller_runs(self.ptr)

    @property
    def seq(self) -> int:
        """Its last run's number among every test poller's runs (0: never)."""
        return lib.srrs_test_poller_seq(self.ptr)

    def delete(self) -> None:
        if self.ptr is not None:
            p = ffi.new("struct srrs_test_poller **", self.ptr)
            lib.srrs_test_poller_del(p)
            self.ptr = None


class Core:
    """The data plane of one controller: N reactor threads and the bdev registry.

    Owns the C core; `close()` (or leaving a `with` block) stops the reactors
    (draining in-flight I/O), destroys every bdev and frees the core.
    """

    def __init__(self, reactors: int = 1, poll_mode: str = "adaptive", idle_spin_us: int = 200,
                 cpus: Optional[Sequence[int]] = None):
        if poll_mode not in POLL_MODES:
            raise ValueError(f"poll_mode must be 'adaptive' or 'busy', got {poll_mode!r}")
        opts = ffi.new("struct srrs_core_opts *")
        opts.nreactors = reactors
        opts.poll_mode = POLL_MODES[poll_mode]
        opts.idle_spin_us = idle_spin_us
        cpus = list(cpus or [])
        if len(cpus) > 64:
            raise ValueError("at most 64 cpus")
        opts.ncpus = len(cpus)
        for i, c in enumerate(cpus):
            opts.cpus[i] = c
        pp = ffi.new("struct srrs_core **")
        check(lib.srrs_core_create(opts, pp), "core")
        self._pp = pp
        self.ptr = pp[0]
        self.num_reactors = reactors
        self.poll_mode = poll_mode
        self._threads: list[threading.Thread] = []
        self._rcs: list[int] = [0] * reactors
        self._stopped = False
        for i in range(reactors):
            t = threading.Thread(target=self._run, args=(i,), name=f"srrs-reactor-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        for i in range(reactors):
            check(lib.srrs_reactor_wait_running(self.ptr, i, 5000), f"reactor {i}")

    def _run(self, idx: int) -> None:
        self._rcs[idx] = lib.srrs_reactor_run(self.ptr, idx)

    # -- lifecycle -------------------------------------------------------
    def stop(self, drain_ms: int = 2000, join_timeout: float = 10.0) -> None:
        """Ask every reactor to drain in-flight I/O (at most drain_ms) and return."""
        if self._stopped:
            return
        lib.srrs_core_stop(self.ptr, drain_ms)
        for t in self._threads:
            t.join(join_timeout)
            if t.is_alive():
                raise SrrsError(_errno.ETIMEDOUT, f"{t.name} did not stop within {join_timeout}s")
        self._stopped = True

    def close(self) -> None:
        if self.ptr == ffi.NULL:
            return
        self.stop()
        lib.srrs_core_destroy(self._pp)
        self.ptr = ffi.NULL

    def __enter__(self) -> "Core":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self.ptr != ffi.NULL and not self._stopped

    # -- reactors ----------------------------------------------------------
    def set_poll_mode(self, poll_mode: str, idle_spin_us: int = 200) -> None:
        if poll_mode not in POLL_MODES:
            raise ValueError(f"poll_mode must be 'adaptive' or 'busy', got {poll_mode!r}")
        check(lib.srrs_core_set_poll_mode(self.ptr, POLL_MODES[poll_mode], idle_spin_us))
        self.poll_mode = poll_mode

    def reactor_stats(self, idx: int) -> dict:
        st = ffi.new("struct srrs_reactor_stats *")
        check(lib.srrs_reactor_get_stats(self.ptr, idx, st), "reactor stats")
        total = st.busy_ns + st.idle_ns + st.sleep_ns
        return {
            "reactor": idx,
            "state": REACTOR_STATES.get(st.state, str(st.state)),
            "poll_mode": "busy" if st.poll_mode == PollMode.BUSY else "adaptive",
            "tid": st.tid,
            "cpu": st.cpu,
            "loops": st.loops,
            "busy_ns": st.busy_ns,
            "idle_ns": st.idle_ns,
            "sleep_ns": st.sleep_ns,
            "busy_pct": (100.0 * st.busy_ns / total) if total else 0.0,
            "msgs": st.msgs,
            "wakeups": st.wakeups,
            "yields": st.yields,
            "io_outstanding": st.io_outstanding,
            "pollers": st.pollers,
        }

    def all_reactor_stats(self) -> list:
        return [self.reactor_stats(i) for i in range(self.num_reactors)]

    # -- events ---------------------------------------------------------------
    @property
    def event_fd(self) -> int:
        return lib.srrs_core_event_fd(self.ptr)

    def events(self) -> Iterator[dict]:
        ev = ffi.new("struct srrs_event *")
        while lib.srrs_core_event_poll(self.ptr, ev) == 1:
            yield {
                "type": EVENT_TYPES.get(ev.type, str(ev.type)),
                "reactor": ev.reactor, "a": ev.a, "b": ev.b,
                "obj": _s(ev.obj), "msg": _s(ev.msg),
            }

    # -- bdevs ----------------------------------------------------------------
    def bdev_create_malloc(self, name: str, size: int, block_size: int = 4096) -> None:
        check(lib.srrs_bdev_create_malloc(self.ptr, name.encode(), size, block_size),
              f"bdev {name}")

    def bdev_create_null(self, name: str, size: int, block_size: int = 4096) -> None:
        check(lib.srrs_bdev_create_null(self.ptr, name.encode(), size, block_size),
              f"bdev {name}")

    def bdev_create_file(self, name: str, path: str, size: int = 0, block_size: int = 4096,
                         grow: bool = False, engine: str = "auto") -> None:
        """engine: auto, uring, aio or threads (docs/architecture.md, File I/O engines)."""
        flags = (lib.SRRS_FILE_GROW if grow else 0) | file_engine_flags(engine)
        check(lib.srrs_bdev_create_file(self.ptr, name.encode(), os.fsencode(path), size,
                                        block_size, flags), f"bdev {name}")

    def bdev_delete(self, name: str) -> None:
        check(lib.srrs_bdev_delete(self.ptr, name.encode()), f"bdev {name}")

    def bdev_list(self) -> list:
        n = 64
        while True:
            arr = ffi.new("struct srrs_bdev_info[]", n)
            total = check(lib.srrs_bdev_list(self.ptr, arr, n))
            if total <= n:
                break
            n = total + 16
        out = sorted((bdev_info_dict(arr[i]) for i in range(total)), key=lambda d: d["name"])
        lat = ffi.new("struct srrs_bdev_latency *")
        idle = None
        for d in out:
            # one call per bdev that has done I/O; idle ones (most of 10,000
            # volumes) share one empty record (read-only, like the whole list)
            if _completed(d) and lib.srrs_bdev_get_latency(self.ptr, d["name"].encode(), lat) == 0:
                d["latency"] = latency_dict(lat)
            else:
                d["latency"] = idle = idle or latency_dict()
        return out

    def bdev_names(self) -> list:
        """Every bdev's name, sorted (what paging bdev_list needs: no counters)."""
        n = 1024
        while True:
            arr = ffi.new("struct srrs_bdev_info[]", n)
            total = check(lib.srrs_bdev_list(self.ptr, arr, n))
            if total <= n:
                return sorted(ffi.string(arr[i].name).decode(errors="replace")
                              for i in range(total))
            n = total + 64

    def bdev_top(self, limit: int) -> tuple:
        """(number of bdevs, their counters summed, the `limit` busiest by
        completed I/Os with latency as bdev_list, sorted by name): one C pass,
        whatever the count (docs/architecture.md, Control plane at scale)."""
        arr = ffi.new("struct srrs_bdev_info[]", max(limit, 1))
        tot = ffi.new("struct srrs_bdev_info *")
        n = check(lib.srrs_bdev_top(self.ptr, arr, limit, tot))
        top = [bdev_info_dict(arr[i]) for i in range(min(n, limit))]
        lat = ffi.new("struct srrs_bdev_latency *")
        idle = None
        for d in top:
            if _completed(d) and lib.srrs_bdev_get_latency(self.ptr, d["name"].encode(), lat) == 0:
                d["latency"] = latency_dict(lat)
            else:
                d["latency"] = idle = idle or latency_dict()
        totals = _struct_to_dict(tot, _BDEV_FIELDS)
        del totals["block_size"]
        return n, totals, sorted(top, key=lambda d: d["name"])

    def bdev_info(self, name: str) -> dict:
        info = ffi.new("struct srrs_bdev_info *")
        check(lib.srrs_bdev_get_info(self.ptr, name.encode(), info), f"bdev {name}")
        d = bdev_info_dict(info)
        d["latency"] = self.bdev_latency(name)
        return d

    def bdev_latency(self, name: str) -> dict:
        """The bdev's latency histograms (see latency_dict), summed over reactors."""
        lat = ffi.new("struct srrs_bdev_latency *")
        check(lib.srrs_bdev_get_latency(self.ptr, name.encode(), lat), f"bdev {name}")
        return latency_dict(lat)

    # -- load --------------------------------------------------------------------
    def bench_bdev(self, bdev: str, opts: BenchOpts, reactor: int = 0,
                   vmap: Optional[VerifyMap] = None, also: str = "") -> dict:
        """also: a second bdev every write goes to as well, completing once both
        have (srrs_bench_bdev2: a mirror's two writes without its link)."""
        res = ffi.new("struct srrs_bench_result *")
        if also:
            check(lib.srrs_bench_bdev2(self.ptr, reactor, bdev.encode(), also.encode(),
                                       opts.to_c(vmap), res), f"bench {bdev} + {also}")
        else:
            check(lib.srrs_bench_bdev(self.ptr, reactor, bdev.encode(), opts.to_c(vmap), res),
                  f"bench {bdev}")
        return bench_result_dict(res)

    def lock_code(self) -> dict:
        """Lock the I/O path's code in memory (srrs_lock_code): {locked,
        wanted} bytes, and error (a message) when some could not be locked."""
        locked, wanted = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        rc = lib.srrs_lock_code(locked, wanted)
        out = {"locked": locked[0], "wanted": wanted[0]}
        if rc:
            out["error"] = last_error() or os.strerror(-rc)
        return out

    def wake_probe(self, probe: "WakeProbe", reactor: int = 0, busy_n: int = 100) -> dict:
        """One ping of a WakeProbe from reactor `reactor` (see WakeProbe): the
        first wakes the sleeper, busy_n more find it spinning; ns."""
        first, busy = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        check(lib.srrs_wake_probe_ping(self.ptr, reactor, probe.ptr, busy_n, first, busy),
              "wake probe")
        return {"first_ns": first[0], "busy_ns": busy[0]}

    # -- test hooks ----------------------------------------------------------------
    def test_io_hold(self, reactor: int, hold: bool) -> None:
        check(lib.srrs_test_io_hold(self.ptr, reactor, int(hold)), "test io hold")

    def test_msg_send(self, reactor: int, sender: int, seq: int) -> None:
        check(lib.srrs_test_msg_send(self.ptr, reactor, sender, seq))

    def test_msg_check(self, reactor: int, sender: int) -> tuple:
        c = ffi.new("uint64_t *")
        e = ffi.new("uint64_t *")
        check(lib.srrs_test_msg_check(self.ptr, reactor, sender, c, e))
        return c[0], e[0]

    def test_wake_latency_ns(self, reactor: int) -> int:
        return check(lib.srrs_test_wake_latency_ns(self.ptr, reactor))

    def test_poller(self, reactor: int, period_us: int, fd_kind: str) -> "TestPoller":
        """A timed poller counting its runs, with an eventfd to fire it; fd_kind:
        'none' (the fd is only in the reactor's set), 'wakes'
        (srrs_poller_set_fd_wakes), 'only' (srrs_poller_set_fd_only) or 'lazy'
        (srrs_poller_set_lazy: its period does not bound a sleep)."""
        kind = {"none": 0, "wakes": 1, "only": 2, "lazy": 3}[fd_kind]
        out = ffi.new("struct srrs_test_poller **")
        check(lib.srrs_test_poller_add(self.ptr, reactor, period_us, kind, out))
        return TestPoller(out[0])

    def test_io(self, bdev: str, op: str, offset: int, length: int, data: bytes = b"",
                reactor: int = 0, one_path: bool = False) -> tuple:
        """One synchronous I/O: returns (status, bytes read). one_path: a
        single-path host's, as vhost-user's (ffi/mirror.h hold_ms)."""
        buf = ffi.new("uint8_t[]", max(length, 1))
        if op == "write":
            if len(data) != length:
                raise ValueError("data length must equal length")
            ffi.memmove(buf, data, length)
        st = lib.srrs_test_bdev_io(self.ptr, reactor, bdev.encode(),
                                   IO_OPS[op] | (0x100 if one_path else 0), offset, length, buf)
        return st, bytes(ffi.buffer(buf, length)) if op == "read" else b""

    def test_release_held(self, bdev: str) -> None:
        """What bdev holds for single-path hosts is let go, as when a
        vhost-user queue stops (a mirror's hold_ms)."""
        check(lib.srrs_test_bdev_release_held(self.ptr, bdev.encode()), f"bdev {bdev}")

    def test_lat_record(self, bdev: str, cls: str, ns: int, count: int = 1,
                        reactor: int = 0) -> None:
        """Record `count` completions of class cls (read, write, other) that took
        ns nanoseconds in bdev's latency histogram, as reactor `reactor` would."""
        check(lib.srrs_test_lat_record(self.ptr, reactor, bdev.encode(),
                                       lathist.CLASSES.index(cls), ns, count), f"bdev {bdev}")


def _verify_latency_layout() -> None:
    n = len(ffi.new("struct srrs_bdev_latency *").buckets[0])
    if n != lathist.NBUCKETS:
        raise ImportError(f"srrs: the core has {n} latency buckets, ffi/lathist.py {lathist.NBUCKETS}")


_verify_latency_layout()
