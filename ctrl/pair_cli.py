"""CLI of the pair: `srrs witness`, `srrs keygen` (added to the parser of
ctrl/cli.py), and how `srrs pair status` (generated from the RPC table)
prints for people."""

from __future__ import annotations

from . import logs


def format_pair_status(st: dict) -> None:
    print(f"pair {st['pair']}: {st['name']} {st['state']} (epoch {st['epoch']}, {st['reason']}) "
          f"ana {st['ana']}  peer {st['peer_state'] or '?'} alive {st['peer_alive']}  "
          f"mirror {'up' if st['mirror_up'] else 'down'}  "
          f"{'etcd' if st.get('witness') == 'etcd' else 'witness'} "
          f"{'ok' if st['witness_ok'] else 'unreachable'}  lease {st['lease_left_s']}s  "
          f"gen {st['data_gen']}")
    if st["split_brain"]:
        print(f"  SPLIT BRAIN: {st['split_brain']}")
    for v in st["volumes"]:
        print(f"  {v['name']:16} {v['mode']:13} dirty {v['dirty_stripes']}/{v['stripes']}  "
              f"resync {100 * v['resync_progress']:.1f}% {v['resync_mibps']} MiB/s")
        if v.get("local_read_errors"):
            print(f"  {'':16} REPLICA READ ERRORS {v['local_read_errors']} "
                  f"(reads served by the peer): check the pool of {v['replica']}")


def add_parsers(sub) -> None:
    from . import witness

    w = sub.add_parser("witness", help="run the pair witness (lease service) in the foreground")
    w.add_argument("--bind", default=None, help="ZeroMQ endpoint, e.g. tcp://0.0.0.0:5600")
    w.add_argument("-c", "--config", default=None, help="witness TOML ([witness] table)")
    w.add_argument("--state", default=None, help="file keeping generations across restarts")
    w.add_argument("--secret-key", default=None, help="CURVE secret key file (srrs keygen)")
    w.add_argument("--authorized", default=None, help="directory of allowed public keys")
    w.add_argument("--insecure", action="store_true",
                   help="run without keys (an isolated network only): anyone can lease")
    w.add_argument("--max-lease", type=float, default=witness.MAX_LEASE_S,
                   help="longest lease granted, seconds (also the start-up quarantine)")
    logs.add_arguments(w)
    w.set_defaults(fn=witness.main)
    k = sub.add_parser("keygen", help="CURVE key pair for the pair and witness, and the "
                                      "pair's mirror link secret (DIR/mirror.secret)")
    k.add_argument("dir")
    k.add_argument("name")
    k.add_argument("--no-mirror-secret", action="store_true",
                   help="no DIR/mirror.secret (keys of a witness)")
    k.set_defaults(fn=witness.keygen)
