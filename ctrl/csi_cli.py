"""`srrs csi`'s command line (ctrl/csi.py runs it): kept apart so that every
other `srrs` command starts without loading gRPC, and `srrs csi` without
loading the rest of the command line (main(): ctrl/entry.py dispatches to it)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from . import logs


def _main(args) -> int:
    from .csi import main

    return main(args)


def add_parser(sub) -> None:
    p = sub.add_parser("csi", help="the Kubernetes CSI plugin (controller and/or node service)")
    p.add_argument("--mode", choices=("controller", "node", "all"), default="all")
    p.add_argument("--endpoint", default=os.environ.get("CSI_ENDPOINT", "unix:///csi/csi.sock"),
                   help="unix:///PATH of the plugin's socket, or tcp://HOST:PORT (no "
                        "authentication: only where nothing else reaches it, as the guest "
                        "test's VM) (default $CSI_ENDPOINT or %(default)s)")
    p.add_argument("--node-id", default=None,
                   help="node mode: this host's NQN (default: /etc/nvme/hostnqn)")
    p.add_argument("--zone", default="", help="node mode: this host's zone (its topology)")
    p.add_argument("--connect-timeout", type=float, default=None, metavar="SECONDS",
                   help="node mode: how long NodeStageVolume retries paths that refuse this "
                        "host (until the controllers have its NQN on the volume's allow-list; "
                        "default 30)")
    p.add_argument("-c", "--config", default=None,
                   help="a controller config whose [cluster] section names etcd (and its TLS)")
    p.add_argument("--etcd", action="append", default=None, metavar="URL",
                   help="an etcd client URL (repeat it; instead of --config)")
    p.add_argument("--prefix", default=None, help="the cluster's etcd prefix (default /srrs/)")
    p.add_argument("--tenant", default="default",
                   help="the tenant of volumes whose StorageClass names none")
    p.add_argument("--controller-socket", default=None,
                   help="the local storage controller's RPC socket: Probe is false while it "
                        "does not answer")
    logs.add_arguments(p)
    p.set_defaults(fn=_main)


def main(argv: Optional[list] = None) -> int:
    """`srrs csi ARGS` with this parser alone: the same arguments and plugin
    as through ctrl/cli.py, without its method table and config modules (a
    third of the plugin's start; seconds in a TCG guest)."""
    ap = argparse.ArgumentParser(prog="srrs")
    add_parser(ap.add_subparsers(dest="cmd", required=True))
    args = ap.parse_args(["csi", *(sys.argv[1:] if argv is None else argv)])
    return args.fn(args)
