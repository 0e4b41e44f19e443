"""`srrs` command line.

`srrs NOUN VERB --PARAM ...` is generated from the RPC method table
(ctrl/methods.py): one command per method, one flag per declared param with
its type, help and default (`srrs volume create --name v0 --size 10GiB
--pool p0`). They are thin clients of the controller's JSON-RPC socket
(-s/--socket, default $SRRS_SOCKET or the runtime dir's srrs.sock); `--json`
prints the raw result, otherwise FORMATTERS or a plain rendering. Written by
hand: start, rpc (any method with JSON params), console, demo, bench,
ctrl/pair_cli.py's witness and keygen, and ctrl/csi_cli.py's csi.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from typing import Any, Optional

from .. import __version__
from ..rpcdef import Method, MethodTable
from ..units import parse_size
from . import config as cfg
from . import logs
from .csi_cli import add_parser as add_csi_parser
from .methods import TABLE
from .pair_cli import add_parsers as add_pair_parsers
from .pair_cli import format_pair_status
from .rpc import RpcClient, RpcError


def _default_socket() -> str:
    return os.environ.get("SRRS_SOCKET") or cfg.default_rpc_socket()


def _client(args) -> RpcClient:
    return RpcClient(args.socket)


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, sort_keys=True))
    elif obj is True or obj is None:
        pass  # done: nothing to say
    elif isinstance(obj, list):
        for item in obj:
            print(json.dumps(item, sort_keys=True))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            print(f"{k}: {json.dumps(v, sort_keys=True)}")
    else:
        print(obj)


def _call(args, method: str, params: Optional[dict] = None) -> Any:
    with _client(args) as c:
        return c.call(method, params)


# ---- subcommands -----------------------------------------------------------------

def cmd_start(args) -> int:
    from .daemon import run

    return run(args.config, args.log_level, args.log_format)


def cmd_rpc(args) -> int:
    params = None
    if args.params is not None:
        try:
            params = json.loads(args.params)
        except json.JSONDecodeError as e:
            print(f"srrs rpc: params are not JSON: {e}", file=sys.stderr)
            return 2
    with _client(args) as c:
        resp = c.call_raw(args.method, params)
    print(json.dumps(resp.get("result", resp.get("error")), indent=2, sort_keys=True))
    return 1 if "error" in resp else 0


def _fmt_bytes(n: int) -> str:
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if n >= 1 << {"TiB": 40, "GiB": 30, "MiB": 20, "KiB": 10}[unit]:
            return f"{n / (1 << {'TiB': 40, 'GiB': 30, 'MiB': 20, 'KiB': 10}[unit]):.1f} {unit}"
    return f"{n} B"


def _fmt_status(st: dict) -> None:
    print(f"controller {st['name']}  pid {st['pid']}  up {st['uptime_s']:.0f}s  "
          f"poll {st['poll_mode']}  rpc {st['rpc_socket']}")
    for r in st["reactors"]:
        print(f"  reactor {r['reactor']}: {r['state']:8} {r['poll_mode']:8} busy {r['busy_pct']:5.1f}%"
              f"  loops {r['loops']}  in-flight {r['io_outstanding']}  cpu {r['cpu']}")
    for b in st["bdevs"]:
        print(f"  bdev {b['name']:16} {_module(b):7} {_fmt_bytes(b['size']):>10}  bs {b['block_size']}"
              f"  r {b['reads']} w {b['writes']} err {b['errors']}  {b['path']}")
    if st.get("bdev_count", 0) > len(st["bdevs"]):
        print(f"  ... {st['bdev_count']} bdevs: the busiest and the exported shown "
              "(--detail or `srrs bdev list --offset N --limit M` for the rest)")
    ids = (st.get("nvmf") or {}).get("cntlids")
    if ids:
        print(f"  nvmf controller IDs {ids['min']}..{ids['max']} ({ids['from']})")
    for key in ("nvmf", "vhost"):
        if key in st:
            print(f"  {key}: {json.dumps(st[key], sort_keys=True)}")


def _module(b: dict) -> str:
    """The module, and a file bdev's I/O engine: `file/threads`."""
    return f"{b['module']}/{b['engine']}" if b.get("engine") else b["module"]


def _fmt_bdev_list(res: list) -> None:
    for b in res:
        print(f"{b['name']:16} {_module(b):7} {_fmt_bytes(b['size']):>10}  "
              f"bs {b['block_size']:5}  open {b['open_count']}  {b['path']}")


# method name -> prints its result for people (without --json); others: _print
FORMATTERS: dict = {"status": _fmt_status, "bdev_list": _fmt_bdev_list,
                    "pair_status": format_pair_status}


def pair_sources(path: str) -> tuple:
    """`--pair CONFIG`: (RPC sockets of both controllers, witness probe) from one
    controller's pair config; its [pair] peer_rpc_socket names the peer's socket."""
    from .witness import WitnessProbe

    conf = cfg.load(path)
    pair = conf.pair
    if pair is None:
        raise cfg.ConfigError(f"{path}: no [pair] section: not a pair member's config")
    if not pair.peer_rpc_socket:
        raise cfg.ConfigError(f"{path}: pair.peer_rpc_socket is not set: add the peer's RPC "
                              "socket to [pair] (or watch both with -s SOCK -s SOCK)")
    socks = [conf.controller.rpc_socket, pair.peer_rpc_socket]
    if socks[0] == socks[1]:
        raise cfg.ConfigError(f"{path}: pair.peer_rpc_socket is this controller's own "
                              "rpc_socket")
    return socks, WitnessProbe(pair.witness, secret_key=pair.secret_key,
                               server_public_key=pair.witness_public_key)


def cmd_console(args) -> int:
    from . import console

    socks = list(args.sockets or [])
    witness = None
    try:
        socks += [cfg.load(path).controller.rpc_socket for path in args.configs or []]
        if args.pair:
            more, witness = pair_sources(args.pair)
            socks += [s for s in more if s not in socks]
    except cfg.ConfigError as e:
        print(f"srrs console: config error: {e}", file=sys.stderr)
        return 2
    return console.run(socks or [args.socket], once=args.once, as_json=args.json,
                       refresh_hz=args.refresh, duration=args.duration, witness=witness)


def cmd_demo(args) -> int:
    from . import demo

    return demo.run(duration=args.duration, refresh_hz=args.refresh, console=not args.no_console,
                    chaos=args.chaos)


# ---- generated from the method table ------------------------------------------------

def _size_arg(v: str) -> int:
    try:
        return parse_size(v)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _json_arg(v: str) -> Any:
    try:
        return json.loads(v)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None


def _list_arg(v: str) -> list:
    """A JSON list, or a comma-separated list of strings."""
    if v.lstrip().startswith("["):
        return _json_arg(v)
    return [x for x in v.split(",") if x]


_ARG_TYPES = {"str": str, "int": int, "float": float, "size": _size_arg, "list": _list_arg,
              "dict": _json_arg}


def _flag_help(p) -> str:
    tail = "required" if p.required else (f"default {json.dumps(p.default)}"
                                          if p.default is not None else "optional")
    kind = "|".join(p.types)
    return f"{p.help} [{kind}; {tail}]" if p.help else f"[{kind}; {tail}]"


def _add_params(ap: argparse.ArgumentParser, m: Method) -> None:
    for p in m.params:
        flag = "--" + p.name.replace("_", "-")
        kw: dict = {"dest": f"param_{p.name}", "default": None, "help": _flag_help(p)}
        if p.types == ("bool",):
            kw["action"] = argparse.BooleanOptionalAction
        else:
            # A union with str ("0660" or 416) is sent as the string: the server accepts both.
            kw["type"] = str if "str" in p.types else _ARG_TYPES[p.types[0]]
            if p.choices is not None:
                kw["choices"] = p.choices
            else:
                kw["metavar"] = p.name.upper()
        if p.positional:
            ap.add_argument(f"pos_{p.name}", nargs="?", default=None, metavar=p.name.upper(),
                            type=kw.get("type"), help=f"same as {flag}")
        else:
            kw["required"] = p.required
        ap.add_argument(flag, **kw)
    ap.add_argument("--json", action="store_true", help="print the raw JSON result")


def cmd_method(args) -> int:
    """One generated command: the flags given become the params of its method."""
    m: Method = args.method
    params = {}
    for p in m.params:
        v = getattr(args, f"param_{p.name}")
        if p.positional and getattr(args, f"pos_{p.name}") is not None:
            if v is not None:
                args.parser.error(f"{p.name} given twice (positional and --{p.name})")
            v = getattr(args, f"pos_{p.name}")
        if v is not None:
            params[p.name] = v
        elif p.required:
            args.parser.error(f"the following arguments are required: --{p.name.replace('_', '-')}")
    res = _call(args, m.name, params)
    if args.json or m.name not in FORMATTERS:
        _print(res, args.json)
    else:
        FORMATTERS[m.name](res)
    return 0


def _summary(text: str) -> str:
    return text.split("\n\n")[0].split(". ")[0].strip().rstrip(".")


NOUNS = {"bdev": "block devices", "config": "the running config", "job": "load jobs in the "
         "controller", "nvmf": "NVMe-oF/TCP target", "pair": "active/active pair",
         "pool": "storage pools", "reactor": "reactors", "tenant": "tenants and quotas",
         "vhost": "vhost-user-blk devices", "volume": "volumes of a pool"}


def add_generated(sub, table: MethodTable) -> None:
    """`srrs NOUN VERB` for every method of the table (`srrs NOUN` when it has no verb)."""
    nouns: dict = {}
    for m in table:
        nouns.setdefault(m.noun, []).append(m)
    for noun, ms in sorted(nouns.items()):
        if len(ms) == 1 and not ms[0].verb:
            m = ms[0]
            p = sub.add_parser(noun, help=_summary(m.help), description=f"{m.help}\n(RPC {m.name})")
            _add_params(p, m)
            p.set_defaults(fn=cmd_method, method=m, parser=p)
            continue
        verbs = ", ".join(m.verb for m in ms)
        what = f"{NOUNS[noun]}: " if noun in NOUNS else ""
        p = sub.add_parser(noun, help=f"{what}{verbs}", description=f"{what}srrs {noun} VERB")
        vs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
        for m in ms:
            v = vs.add_parser(m.verb, help=_summary(m.help), description=f"{m.help}\n(RPC {m.name})",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
            _add_params(v, m)
            v.set_defaults(fn=cmd_method, method=m, parser=v)


# ---- bench ------------------------------------------------------------------------

def _bench_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rw", default="randread",
                   choices=["randread", "randwrite", "randrw", "read", "write"])
    p.add_argument("--bs", type=lambda s: cfg.parse_size(s), default=4096, help="bytes, e.g. 4096 or 128KiB")
    p.add_argument("--qd", type=int, default=32)
    p.add_argument("--time", type=float, default=10.0, help="seconds")
    p.add_argument("--queues", type=int, default=1)
    p.add_argument("--verify", action="store_true")
    p.add_argument("--cpu", type=int, default=None, help="pin the load reactor to this CPU")
    p.add_argument("--rwmix-read", type=int, default=50)
    p.add_argument("--json", action="store_true")


def aggregate(results: list) -> dict:
    """One report from per-queue job results (latency: worst queue's percentiles)."""
    out = {k: sum(r[k] for r in results) for k in
           ("ios", "reads", "writes", "bytes", "errors", "verify_errors", "verified_blocks",
            "iops", "mibps")}
    out["elapsed_s"] = max(r["elapsed_s"] for r in results)
    out["lat_us"] = {k: max(r["lat_us"][k] for r in results) for k in
                     ("p50", "p99", "p999", "max", "avg")}
    out["busy_pct"] = [r["busy_pct"] for r in results]
    return out


def cmd_bench_bdev(args) -> int:
    from ..ffi.binding import BenchOpts, Core, SrrsError, VerifyMap

    try:
        conf = cfg.load(args.config)
    except cfg.ConfigError as e:
        print(f"srrs bench: config error: {e}", file=sys.stderr)
        return 2
    b = next((x for x in conf.bdevs if x.name == args.bdev), None)
    if b is None:
        print(f"srrs bench: no bdev {args.bdev!r} in {args.config}", file=sys.stderr)
        return 2
    cpus = [args.cpu + i for i in range(args.queues)] if args.cpu is not None else None
    core = Core(reactors=args.queues, poll_mode="busy", cpus=cpus)
    try:
        if b.type == "malloc":
            core.bdev_create_malloc(b.name, b.size, b.block_size)
        elif b.type == "null":
            core.bdev_create_null(b.name, b.size, b.block_size)
        else:
            core.bdev_create_file(b.name, b.path, b.size, b.block_size, grow=b.grow,
                                  engine=b.engine)
        size = core.bdev_info(b.name)["size"]
        span = size // args.queues
        span -= span % (1 << 20) if span >= (1 << 21) else span % b.block_size
        vmaps = [VerifyMap(size // b.block_size, b.block_size) if args.verify else None
                 for _ in range(args.queues)]
        results: list = [None] * args.queues
        errors: list = []

        def job(i):
            try:
                opts = BenchOpts(rw=args.rw, bs=args.bs, qd=args.qd, time_s=args.time,
                                 rwmix_read=args.rwmix_read, seed=i + 1,
                                 offset=i * span if args.queues > 1 else 0,
                                 span=span if args.queues > 1 else 0)
                results[i] = core.bench_bdev(b.name, opts, reactor=i, vmap=vmaps[i])
                if vmaps[i] is not None and vmaps[i].written_blocks:
                    # read back everything the job wrote
                    chk = core.bench_bdev(b.name, BenchOpts(
                        rw="read", bs=min(1 << 20, span), qd=8, time_s=0,
                        max_ios=max(1, span // min(1 << 20, span)), offset=opts.offset,
                        span=opts.span), reactor=i, vmap=vmaps[i])
                    results[i]["verify_errors"] += chk["verify_errors"]
                    results[i]["verified_blocks"] += chk["verified_blocks"]
                    results[i]["errors"] += chk["errors"]
            except SrrsError as e:
                errors.append(str(e))

        threads = [threading.Thread(target=job, args=(i,)) for i in range(args.queues)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            print(f"srrs bench: {errors[0]}", file=sys.stderr)
            return 1
    finally:
        core.close()
    out = aggregate(results)
    out["verified"] = bool(args.verify and out["verify_errors"] == 0 and out["errors"] == 0
                           and out["verified_blocks"] > 0)
    out.update({"target": f"bdev:{b.name}", "rw": args.rw, "bs": args.bs, "qd": args.qd,
                "queues": args.queues, "verify": args.verify})
    _report(out, args.json)
    return 0 if out["errors"] == 0 and out["verify_errors"] == 0 else 1


def _report(out: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(out, sort_keys=True))
        return
    lat = out["lat_us"]
    busy = out.get("busy_pct")
    busy_s = ", ".join(f"{b:.0f}%" for b in busy) if isinstance(busy, list) else ""
    print(f"{out['target']}  {out['rw']} bs={out['bs']} qd={out['qd']} queues={out['queues']}: "
          f"{out['iops']:,.0f} IOPS  {out['mibps']:,.1f} MiB/s  "
          f"lat p50 {lat['p50']:.2f} p99 {lat['p99']:.2f} p99.9 {lat['p999']:.2f} us  "
          f"errors {out['errors']}" + (f"  verified {out['verified']}" if out.get('verify') else "")
          + (f"  reactor busy {busy_s}" if busy_s else ""))


def cmd_bench_nvmf(args) -> int:
    from ..nvmf import bench  # loads the C core: only when a bench runs

    return bench.run(args, _report, aggregate)


def cmd_bench_vhost(args) -> int:
    from ..vhost import bench

    return bench.run(args, _report, aggregate)


# ---- parser ------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="srrs", description="SRRS block storage controller")
    ap.add_argument("--version", action="version", version=f"srrs {__version__}")
    ap.add_argument("-s", "--socket", default=_default_socket(),
                    help="controller RPC socket (default: $SRRS_SOCKET or %(default)s)")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("start", help="run one controller in the foreground")
    p.add_argument("-c", "--config", required=True)
    logs.add_arguments(p)
    p.set_defaults(fn=cmd_start)

    p = sub.add_parser("rpc", help="call one JSON-RPC method")
    p.add_argument("method")
    p.add_argument("params", nargs="?", help="JSON object")
    p.set_defaults(fn=cmd_rpc)

    add_generated(sub, TABLE)

    p = sub.add_parser("console", help="live status console of one or more controllers")
    p.add_argument("-s", "--socket", dest="sockets", action="extend", nargs="+", metavar="SOCK",
                   help="controller RPC socket(s) (default: the global -s)")
    p.add_argument("-c", "--config", dest="configs", action="append", metavar="FILE",
                   help="a controller config: watch its rpc_socket")
    p.add_argument("--pair", metavar="CONFIG", default=None,
                   help="a pair member's config: watch both controllers (rpc_socket and "
                        "[pair] peer_rpc_socket) and ping the pair's witness")
    p.add_argument("--once", action="store_true",
                   help="print one snapshot (two samples 0.5 s apart, for the rates) and exit")
    p.add_argument("--json", action="store_true", help="with --once: the snapshot as JSON")
    p.add_argument("--refresh", type=float, default=4.0, metavar="HZ", help="redraws per second")
    p.add_argument("--duration", type=float, default=None, help="exit after SECONDS")
    p.set_defaults(fn=cmd_console)

    p = sub.add_parser("demo", help="a pair + witness under multipath load in a temp dir, with "
                                    "the console")
    p.add_argument("--duration", type=float, default=60.0, help="seconds (default %(default)s)")
    p.add_argument("--chaos", action="store_true",
                   help="kill -9 and restart controller b during the run (twice from 50 s)")
    # 2 Hz: at 4 Hz the console of two controllers takes 6-7 % of a core from
    # the load it shows on a 2-CPU machine (the summary says its share)
    p.add_argument("--refresh", type=float, default=2.0, metavar="HZ",
                   help="console redraws per second (default %(default)s)")
    p.add_argument("--no-console", action="store_true", help="progress lines instead")
    p.set_defaults(fn=cmd_demo)

    add_pair_parsers(sub)  # witness, keygen
    add_csi_parser(sub)    # the Kubernetes CSI plugin

    p = sub.add_parser("bench", help="C load generator")
    bsub = p.add_subparsers(dest="bench_target", required=True)
    b = bsub.add_parser("bdev", help="a bdev from a config, on its own reactor (like bdevperf)")
    b.add_argument("-c", "--config", required=True)
    b.add_argument("--bdev", required=True)
    _bench_common(b)
    b.set_defaults(fn=cmd_bench_bdev)
    n = bsub.add_parser("nvmf", help="NVMe/TCP initiator")
    n.add_argument("--target", dest="nvmf_target", action="append", required=True,
                   metavar="HOST:PORT[,HOST:PORT]",
                   help="a controller of the subsystem; repeat it (or a comma list) for "
                        "multipath: every path of an active/active pair")
    n.add_argument("--nqn", required=True)
    n.add_argument("--path-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="an I/O that lost its path waits this long for one to come back "
                        "before it fails (0: fail at once, no retry; default %(default)s)")
    n.add_argument("--hostnqn", default=None, help="host NQN (default: a fixed test NQN)")
    n.add_argument("--dhchap-secret", metavar="FILE", default=None,
                   help="DH-HMAC-CHAP secret (DHHC-1 format, file mode 0600): authenticate "
                        "when the target requires it")
    n.add_argument("--dhchap-ctrl-secret", metavar="FILE", default=None,
                   help="controller secret: the controller must authenticate too")
    _bench_common(n)
    n.set_defaults(fn=cmd_bench_nvmf, target=None)
    v = bsub.add_parser("vhost", help="vhost-user-blk client")
    v.add_argument("--socket", dest="vhost_socket", required=True)
    _bench_common(v)
    v.set_defaults(fn=cmd_bench_vhost)
    return ap


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConnectionError as e:
        print(f"srrs: {e}", file=sys.stderr)
        return 3
    except TimeoutError:
        print(f"srrs: the controller at {getattr(args, 'socket', '?')} did not answer in time",
              file=sys.stderr)
        return 3
    except RpcError as e:
        print(f"srrs: {e.message} (code {e.code})", file=sys.stderr)
        return 1
    except json.JSONDecodeError as e:
        print(f"srrs: params are not JSON: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
