"""The witness: `srrs witness --bind ADDR` (docs/architecture.md, Pair).

A tiny ZeroMQ ROUTER service on a third host that breaks ties: it grants the
solo lease of a pair to at most one controller at a time, and never before
the other's lease can have expired (by the witness's own clock, which starts
each lease later than the holder's, so the holder always gives up first).

It also remembers the data generation the last holder writes under, and
refuses a lease to a controller whose data is older ("outdated"): a
controller that missed the other's solo writes must never serve alone.

Keys: by default the witness needs CURVE keys (--secret-key, --authorized DIR
of the controllers' public keys, NAME.key for controller NAME) and refuses to
start without them unless --insecure. With keys, a request is honoured only
for the node whose key authenticated the connection, in a pair it belongs to;
so only the holder can release a lease. Refusals carry no generation, lease
time or other state (the witness's log has them).

After a restart the witness knows no leases, so it grants nothing for one
maximum lease length (a lease it granted before may still run); with
--state FILE the generations survive restarts.

Protocol (JSON, one frame; ROUTER/DEALER):
  {"op": "lease", "pair": P, "node": N, "sent_at": T, "lease_s": S,
   "data_gen": [n, node], "next_gen": [n, node]}
     -> {"op": "lease", "ok": true, "sent_at": T, "lease_s": S}
      | {"op": "lease", "ok": false, "sent_at": T, "reason": "...", "holder": H}
  {"op": "release", "pair": P, "node": N}  -> {"op": "release", "ok": true}
      | {"op": "release", "ok": false, "reason": "not authorized"}
  {"op": "unwind", "pair": P, "node": N, "granted_gen": [n, node], "data_gen": [n, node]}
     -> {"op": "unwind", "ok": true|false}   (a grant N never used, given back)
  {"op": "ping", "sent_at": T}             -> {"op": "pong", "sent_at": T}
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

from . import logs

log = logging.getLogger("srrs.witness")

MAX_LEASE_S = 10.0


@dataclass
class PairRecord:
    holder: str = ""
    expires: float = 0.0          # witness clock
    gen: Optional[list] = None    # generation the last holder writes under


@dataclass
class LeaseTable:
    """The witness's decisions, pure (tested directly and by the pair simulation)."""
    started: float
    max_lease_s: float = MAX_LEASE_S
    pairs: dict = field(default_factory=dict)

    def request(self, pair: str, node: str, lease_s: float, data_gen, next_gen,
                now: float) -> tuple:
        """(ok, reason, holder). Grants extend to now + lease_s."""
        if not 0 < lease_s <= self.max_lease_s:
            return False, f"lease_s must be in (0, {self.max_lease_s}]", ""
        rec = self.pairs.setdefault(pair, PairRecord())
        if rec.holder and rec.holder != node and now < rec.expires:
            return False, f"lease held by {rec.holder} for {rec.expires - now:.1f}s", rec.holder
        if rec.holder != node and now < self.started + self.max_lease_s:
            # A lease granted before our restart may still run.
            return False, "witness restarted: waiting out earlier leases", ""
        if rec.gen is not None and list(data_gen) != rec.gen and list(next_gen) != rec.gen:
            return False, (f"outdated: {node} has generation {data_gen}, the pair's latest is "
                           f"{rec.gen}"), rec.holder
        rec.holder = node
        rec.expires = now + lease_s
        rec.gen = list(next_gen)
        return True, "", node

    def unwind(self, pair: str, node: str, granted_gen, data_gen) -> bool:
        """Undo a grant its requester never used (the answer reached it after it
        stopped waiting): the pair's generation goes back from granted_gen to
        data_gen, and the lease, if still node's, is released. Only while the
        pair's generation is still granted_gen and no other node holds the
        lease. True when undone."""
        rec = self.pairs.get(pair)
        if rec is None or rec.gen != list(granted_gen) or rec.holder not in ("", node):
            return False
        rec.gen = list(data_gen)
        rec.holder, rec.expires = "", 0.0
        return True

    def release(self, pair: str, node: str) -> None:
        rec = self.pairs.get(pair)
        if rec and rec.holder == node:
            rec.holder = ""
            rec.expires = 0.0

    def to_json(self) -> dict:
        return {p: {"gen": r.gen} for p, r in self.pairs.items()}

    def load_json(self, d: dict) -> None:
        for p, r in d.items():
            self.pairs[p] = PairRecord(gen=r.get("gen"))


def authorized_names(authorized_dir: str) -> dict:
    """{z85 public key: controller name} of the NAME.key files in the directory."""
    import zmq.auth

    names = {}
    for f in sorted(os.listdir(authorized_dir)):
        if f.endswith(".key"):
            pub, _ = zmq.auth.load_certificate(os.path.join(authorized_dir, f))
            names[pub.decode("ascii")] = f[:-len(".key")]
    if not names:
        raise ValueError(f"{authorized_dir}: no public key (NAME.key) of a controller")
    return names


def check_private(path: str) -> None:
    """A secret key file that others may read is refused, like an ssh key."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror}") from None
    if mode & 0o077:
        raise ValueError(f"{path}: readable by others (mode {mode & 0o777:o}); chmod 600 it")


def curve_server_setup(sock, secret_key_file: Optional[str], authorized_dir: Optional[str]):
    """CURVE server: our secret key; clients limited to the public keys in
    authorized_dir (ZAP through zmq.auth.thread). Returns the authenticator."""
    if not secret_key_file:
        return None
    import zmq.auth
    from zmq.auth.thread import ThreadAuthenticator

    if not authorized_dir:
        raise ValueError("--secret-key needs --authorized DIR (the controllers' public keys): "
                         "a witness that lets any key in authenticates nobody")
    check_private(secret_key_file)
    pub, sec = zmq.auth.load_certificate(secret_key_file)
    if sec is None:
        raise ValueError(f"{secret_key_file} holds no secret key")
    auth = ThreadAuthenticator(sock.context)
    auth.start()
    auth.configure_curve(domain="*", location=authorized_dir)
    sock.curve_secretkey = sec
    sock.curve_publickey = pub
    sock.curve_server = True
    return auth


def curve_client_setup(sock, secret_key_file: Optional[str], server_public_file: Optional[str]):
    if not secret_key_file:
        return
    import zmq.auth

    check_private(secret_key_file)
    pub, sec = zmq.auth.load_certificate(secret_key_file)
    spub, _ = zmq.auth.load_certificate(server_public_file)
    sock.curve_secretkey = sec
    sock.curve_publickey = pub
    sock.curve_serverkey = spub


def serve(bind: str, state_file: Optional[str] = None, secret_key: Optional[str] = None,
          authorized: Optional[str] = None, max_lease_s: float = MAX_LEASE_S,
          stop_fd: Optional[int] = None) -> int:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    if secret_key and not authorized:
        raise ValueError("--secret-key needs --authorized DIR (the controllers' public keys): "
                         "a witness that lets any key in authenticates nobody")
    names = authorized_names(authorized) if secret_key else None
    auth = curve_server_setup(sock, secret_key, authorized)
    sock.bind(bind)
    table = LeaseTable(started=time.monotonic(), max_lease_s=max_lease_s)
    if state_file and os.path.exists(state_file):
        with open(state_file, encoding="utf-8") as f:
            table.load_json(json.load(f))
    log.info("witness on %s%s", bind, " (CURVE)" if secret_key else "")
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    if stop_fd is not None:
        poller.register(stop_fd, zmq.POLLIN)
    try:
        while True:
            ready = dict(poller.poll())
            if stop_fd is not None and stop_fd in ready:
                return 0
            if sock not in ready:
                continue
            frames = sock.recv_multipart(copy=False)
            if len(frames) < 2:
                continue
            ident, body = frames[0].bytes, frames[-1].bytes
            # with keys: the controller whose key authenticated this connection
            who = names.get(frames[-1].get("User-Id"), "") if names is not None else None
            reply = _handle(table, body, time.monotonic(), who)
            if reply is None:
                continue
            if reply.get("op") in ("lease", "unwind") and reply.get("ok") and state_file:
                _save(state_file, table)
            sock.send_multipart([ident, json.dumps(reply).encode()])
    finally:
        if auth is not None:
            auth.stop()
        ctx.destroy(linger=0)   # every socket closed, nothing left for term() to wait on


def _save(path: str, table: LeaseTable) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(table.to_json(), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# What a refused controller is told: the kind of refusal, no generation, holder
# time or other state (a stranger on an insecure witness must learn nothing it
# could forge a request with); the witness's log has the details.
_REFUSALS = (("lease_s", "lease_s out of range"), ("held by", "lease held by the other node"),
             ("restarted", "witness restarted: waiting out earlier leases"),
             ("outdated", "outdated: the pair has newer data than this node"))


def _public_reason(reason: str) -> str:
    return next((r for k, r in _REFUSALS if k in reason), "refused")


def _handle(table: LeaseTable, body: bytes, now: float,
            who: Optional[str] = None) -> Optional[dict]:
    """who: the name the request's key authenticated (None: a witness without keys)."""
    try:
        m = json.loads(body)
        op = m["op"]
    except (ValueError, KeyError, TypeError):
        return {"op": "error", "reason": "bad request"}
    if op == "ping":
        return {"op": "pong", "sent_at": m.get("sent_at")}
    try:
        pair, node = str(m["pair"]), str(m["node"])
        if op in ("release", "lease", "unwind") and (node not in pair.split("+") or
                                           (who is not None and who != node)):
            log.warning("%s for %s in %s refused: the request came with %s's key", op, node,
                        pair, who or "no known")
            return {"op": op, "ok": False, "sent_at": m.get("sent_at"),
                    "reason": "not authorized", "holder": ""}
        if op == "release":
            table.release(pair, node)
            log.info("%s released the lease of %s", node, pair)
            return {"op": "release", "ok": True}
        if op == "unwind":
            ok = table.unwind(pair, node, list(m["granted_gen"]), list(m["data_gen"]))
            log.warning("%s gave back a grant of %s it never used: %s", node, pair,
                        "generation restored" if ok else "nothing to undo")
            return {"op": "unwind", "ok": ok}
        if op == "lease":
            lease_s = float(m["lease_s"])
            ok, reason, holder = table.request(pair, node, lease_s, list(m["data_gen"]),
                                               list(m["next_gen"]), now)
            if ok:
                log.debug("lease %s -> %s for %.1fs", pair, node, lease_s)
            else:
                log.info("lease %s refused to %s: %s", pair, node, reason)
                reason = _public_reason(reason)
            return {"op": "lease", "ok": ok, "sent_at": m.get("sent_at"), "lease_s": lease_s,
                    "reason": reason, "holder": holder}
    except (KeyError, TypeError, ValueError) as e:
        return {"op": "error", "reason": f"bad request: {e}"}
    return {"op": "error", "reason": f"unknown op {op!r}"}


class WitnessProbe:
    """The console's view of a witness: `ping` over a DEALER socket (CURVE with
    a controller's keys when given). poll() returns console events when the
    witness goes down or comes back; a silent witness's socket is replaced so
    that no stale request waits in it."""

    def __init__(self, endpoint: str, timeout: float = 1.0, secret_key: str = "",
                 server_public_key: str = ""):
        self.endpoint = endpoint
        self.timeout = timeout
        self.keys = (secret_key, server_public_key)
        self.state = "connecting"         # "up" | "down" | "connecting"
        self.error = ""
        self.rtt_ms: Optional[float] = None
        self.since: Optional[float] = None  # wall time of the last state change
        self._ctx = None
        self._sock = None

    def _socket(self):
        import zmq

        if self._ctx is None:
            self._ctx = zmq.Context()
        if self._sock is None:
            s = self._ctx.socket(zmq.DEALER)
            s.linger = 0
            if self.keys[0]:
                curve_client_setup(s, self.keys[0], self.keys[1])
            s.connect(self.endpoint)
            self._sock = s
        return self._sock

    def ping(self) -> float:
        """Round trip in ms; raises TimeoutError when no pong comes in time."""
        import zmq

        s = self._socket()
        t0 = time.monotonic()
        s.send(json.dumps({"op": "ping", "sent_at": t0}).encode())
        deadline = t0 + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not s.poll(int(left * 1000) + 1, zmq.POLLIN):
                if time.monotonic() >= deadline:
                    self._sock.close(0)
                    self._sock = None
                    raise TimeoutError(f"no answer within {self.timeout:g} s")
                continue
            m = json.loads(s.recv())
            if m.get("op") == "pong" and m.get("sent_at") == t0:
                return (time.monotonic() - t0) * 1000

    def poll(self, now: float) -> list:
        try:
            self.rtt_ms = self.ping()
            ok, err = True, ""
        except Exception as e:  # TimeoutError, zmq.ZMQError, bad JSON
            self.rtt_ms, ok, err = None, False, str(e) or type(e).__name__
        state = "up" if ok else "down"
        out = []
        if state != self.state and (self.state != "connecting" or state == "down"):
            out.append({"time": now, "controller": "witness", "type": state, "obj": "witness",
                        "msg": f"{self.endpoint} {'answers' if ok else err}",
                        "source": "console"})
        if state != self.state:
            self.since = now
        self.state, self.error = state, err
        return out

    def snapshot(self) -> dict:
        return {"endpoint": self.endpoint, "state": self.state, "error": self.error or None,
                "rtt_ms": self.rtt_ms}

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None


def main(args) -> int:
    """`srrs witness --bind ADDR [--state FILE] [--secret-key F --authorized DIR]`."""
    logs.setup(getattr(args, "log_level", None), getattr(args, "log_format", "text"),
               "srrs-witness")
    bind, state, sec, authd = args.bind, args.state, args.secret_key, args.authorized
    insecure = getattr(args, "insecure", False)
    if args.config:
        from .pair_config import parse_witness_file
        try:
            w = parse_witness_file(args.config)
        except ValueError as e:
            print(f"srrs witness: config error: {e}", file=sys.stderr)
            return 2
        bind = bind or w.bind
        state = state or w.state
        sec = sec or w.secret_key
        authd = authd or w.authorized_keys
        insecure = insecure or w.insecure
        if w.max_lease_ms and args.max_lease == MAX_LEASE_S:
            args.max_lease = w.max_lease_ms / 1000
    if not bind:
        print("srrs witness: --bind or a config with [witness] bind is required", file=sys.stderr)
        return 2
    from .pair_config import check_zmq
    try:
        check_zmq(bind)
    except ValueError as e:
        print(f"srrs witness: --bind: {e}", file=sys.stderr)
        return 2
    if not sec and not insecure:
        print("srrs witness: no keys: give --secret-key and --authorized DIR (make keys with "
              "`srrs keygen`), or --insecure on an isolated network", file=sys.stderr)
        return 2
    if sec and insecure:
        print("srrs witness: --insecure with keys: drop one or the other", file=sys.stderr)
        return 2
    if insecure:
        log.warning("witness runs insecure: anyone who reaches %s can lease and release", bind)
    r, w_ = os.pipe()
    os.set_blocking(w_, False)

    def on_signal(signo, frame):
        # Stop within 10 s or leave every thread's stack in the log and exit:
        # a witness that hangs on SIGTERM would hold its port and its lease table.
        faulthandler.dump_traceback_later(10, exit=True)
        try:
            os.write(w_, b"x")
        except OSError:
            pass

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, on_signal)
    # The wakeup fd is written by the C-level handler, so zmq_poll wakes up even
    # where the Python handler would run late (libzmq's own threads block signals).
    signal.set_wakeup_fd(w_)
    try:
        return serve(bind, state, sec, authd, max_lease_s=args.max_lease, stop_fd=r)
    except Exception as e:  # zmq.ZMQError, OSError, ValueError: one line, not a traceback
        print(f"srrs witness: {e}", file=sys.stderr)
        return 1


def write_mirror_secret(path: str) -> bool:
    """32 random bytes (hex) in a new file of mode 0600; False when it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(os.urandom(32).hex() + "\n")
    return True


def keygen(args) -> int:
    """`srrs keygen DIR NAME`: NAME.key (public) and NAME.key_secret (secret,
    0600); and DIR/mirror.secret, the mirror link's secret that both
    controllers of a pair share (0600), unless it exists or --no-mirror-secret."""
    import zmq.auth

    os.makedirs(args.dir, mode=0o700, exist_ok=True)
    pub, sec = zmq.auth.create_certificates(args.dir, args.name)
    os.chmod(sec, 0o600)
    out = {"public": pub, "secret": sec}
    if not getattr(args, "no_mirror_secret", False):
        out["mirror_secret"] = os.path.join(args.dir, "mirror.secret")
        write_mirror_secret(out["mirror_secret"])
    print(json.dumps(out))
    return 0
