"""Our etcd v3 client (docs/architecture.md, Cluster): the only module that
knows the library, so the rest of the code sees keys, values, revisions,
transactions, leases and watches, never etcd3gw or the wire format.

The transport is etcd's v3 JSON gateway (`/v3/...`, present from etcd 3.4 on:
Debian's etcd-server) through etcd3gw's client (HTTP session, TLS files,
API path discovery, HTTP errors mapped to exceptions). Requests are the
gateway's own JSON (keys and values base64, int64 as strings); etcd3gw's
watcher is not used (it runs callbacks on a pool thread and drops stream
ends, compactions and revisions), our Watch reads the stream itself.

Several endpoints: a request that finds a member down, unreachable or
without a leader goes to the next one until the call's deadline, then
raises Unavailable. A request that timed out may still be applied later;
callers that write make their writes conditional (txn) and re-read.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

log = logging.getLogger("srrs.etcd")


class EtcdError(Exception):
    """etcd refused the request (a bad request, an unknown lease, ...)."""


class Unavailable(EtcdError):
    """No endpoint answered in time: members down, unreachable, or no quorum."""


class Compacted(EtcdError):
    """A watch asked for revisions etcd has compacted away: re-read a snapshot."""

    def __init__(self, revision: int):
        super().__init__(f"revision compacted (oldest kept {revision})")
        self.revision = revision


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0

    def json(self):
        return json.loads(self.value)


@dataclass(frozen=True)
class Event:
    type: str                   # "put" | "delete"
    kv: KV                      # a delete's kv has the key and the delete's revision only


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int               # the store's revision after the txn
    responses: tuple            # per op: a tuple of KV for a get, None otherwise
    counts: tuple = ()          # per op: a get's count of keys in its range (before
                                # min_mod_revision drops some), None otherwise


# ---- wire helpers ------------------------------------------------------------------

def _b64(s) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else bytes(s)).decode("ascii")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s) if s else b""


def prefix_end(prefix: str) -> bytes:
    """The range end that covers every key starting with prefix."""
    b = bytearray(prefix.encode())
    while b and b[-1] == 0xFF:
        b.pop()
    if not b:
        return b"\0"
    b[-1] += 1
    return bytes(b)


def _kv(d: dict) -> KV:
    return KV(_unb64(d.get("key", "")).decode(), _unb64(d.get("value", "")),
              int(d.get("create_revision", 0)), int(d.get("mod_revision", 0)),
              int(d.get("version", 0)), int(d.get("lease", 0)))


def _value(v) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode()
    return json.dumps(v, sort_keys=True, separators=(",", ":")).encode()


def _range(key: str, prefix: bool) -> dict:
    d = {"key": _b64(key)}
    if prefix:
        d["range_end"] = _b64(prefix_end(key))
    return d


# ---- transaction parts ---------------------------------------------------------------
# A compare is a dict in the gateway's form; an op too. Built only here.

def version_is(key: str, version: int) -> dict:
    """version 0: the key does not exist."""
    return {"key": _b64(key), "target": "VERSION", "result": "EQUAL", "version": str(version)}


def absent(key: str) -> dict:
    return version_is(key, 0)


def mod_is(key: str, revision: int) -> dict:
    """The key was last written at revision (0: it does not exist)."""
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def value_is(key: str, value) -> dict:
    return {"key": _b64(key), "target": "VALUE", "result": "EQUAL", "value": _b64(_value(value))}


def put(key: str, value, lease: int = 0) -> dict:
    """value: bytes, str, or anything JSON (stored compact with sorted keys)."""
    d = {"key": _b64(key), "value": _b64(_value(value))}
    if lease:
        d["lease"] = str(lease)
    return {"request_put": d}


def delete(key: str, prefix: bool = False) -> dict:
    return {"request_delete_range": _range(key, prefix)}


def get(key: str, prefix: bool = False, min_mod_revision: int = 0) -> dict:
    """min_mod_revision: only the keys written at or after it are returned;
    the result's count still counts every key in the range (so a reader that
    holds the range as of min_mod_revision - 1 sees what changed, and by the
    count whether any key went)."""
    d = _range(key, prefix)
    if min_mod_revision:
        d["min_mod_revision"] = str(min_mod_revision)
    return {"request_range": d}


# ---- the client ------------------------------------------------------------------------

class _Lib:
    """etcd3gw and requests, imported by the first Client: every `srrs` command
    imports this module (the method table), few talk to etcd, and the two
    cost most of the command line's start (~1 s on a small host; the CSI node
    plugin never uses them)."""

    def __init__(self):
        import etcd3gw
        import requests
        from etcd3gw import exceptions as gwx

        self.etcd3gw, self.gwx, self.requests = etcd3gw, gwx, requests
        self.down = (gwx.ConnectionFailedError, gwx.ConnectionTimeoutError,
                     gwx.InternalServerError, requests.RequestException)


_lib: Optional[_Lib] = None


def _gwlib() -> _Lib:
    global _lib
    if _lib is None:
        _lib = _Lib()
    return _lib


class Client:
    """endpoints: ["http://host:port", ...]; timeout: one request to one member;
    deadline: a whole call, across members."""

    def __init__(self, endpoints: Sequence[str], timeout: float = 1.0,
                 deadline: Optional[float] = None, ca_cert: Optional[str] = None,
                 cert: Optional[str] = None, key: Optional[str] = None,
                 user: Optional[str] = None, password: Optional[str] = None):
        if not endpoints:
            raise ValueError("no etcd endpoint")
        self.timeout = timeout
        self.deadline = deadline if deadline is not None else 3 * timeout
        self._tls = (ca_cert, cert, key)
        self._user = (user, password or "") if user else None
        self._gws = [self._gw(e) for e in endpoints]
        self._cur = 0
        self._lock = threading.Lock()
        self.errors = 0     # failed requests to a member (metrics: srrs_cluster_etcd_errors_total)

    def _gw(self, endpoint: str):
        u = urlsplit(endpoint)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"bad etcd endpoint {endpoint!r} (use http://HOST:PORT)")
        ca, cert, key = self._tls
        # API path fixed: every etcd from 3.4 on serves /v3/ (no discovery round trip)
        gw = _gwlib().etcd3gw.Etcd3Client(host=u.hostname, port=u.port or 2379, protocol=u.scheme,
                                 ca_cert=ca, cert_cert=cert, cert_key=key,
                                 timeout=self.timeout, api_path="/v3/")
        # No proxy or CA bundle from the environment: requests would let
        # REQUESTS_CA_BUNDLE override our ca_cert, and etcd is never proxied.
        gw.session.trust_env = False
        return gw

    def _authenticate(self, gw) -> None:
        """A token for this member's session (etcd's simple tokens expire
        when unused for --auth-token-ttl: call() fetches a new one then)."""
        name, pw = self._user
        r = gw.post(gw.get_url("/auth/authenticate"), json={"name": name, "password": pw})
        gw.session.headers["Authorization"] = r["token"]

    @property
    def endpoints(self) -> List[str]:
        return [g.base_url for g in self._gws]

    def call(self, path: str, body: dict, deadline: Optional[float] = None) -> dict:
        """One gateway request, moved to the next member while one is down."""
        end = time.monotonic() + (self.deadline if deadline is None else deadline)
        err, lib = None, _gwlib()
        while True:
            with self._lock:
                i = self._cur
            gw = self._gws[i]
            try:
                if self._user and "Authorization" not in gw.session.headers:
                    self._authenticate(gw)
                return gw.post(gw.get_url(path), json=body)
            except lib.down as e:
                err = e
                self.errors += 1
            except lib.gwx.Etcd3Exception as e:
                self.errors += 1
                why = _reason(e)
                if not (self._user and "invalid auth token" in why
                        and gw.session.headers.pop("Authorization", None)):
                    raise EtcdError(f"{path}: {why}") from None
                err = e                 # the token expired: the next try fetches a new one
            with self._lock:
                if self._cur == i:
                    self._cur = (i + 1) % len(self._gws)
            if time.monotonic() >= end:
                raise Unavailable(f"etcd {path}: {_reason(err)}") from None
            if (i + 1) % len(self._gws) == 0:
                time.sleep(min(0.05, max(0.0, end - time.monotonic())))

    # -- keys --
    def get(self, key: str, prefix: bool = False, revision: int = 0) -> Tuple[List[KV], int]:
        """(kvs sorted by key, the store's revision the read saw)."""
        body = _range(key, prefix)
        body.update(sort_order="ASCEND", sort_target="KEY")
        if revision:
            body["revision"] = str(revision)
        r = self.call("/kv/range", body)
        return [_kv(d) for d in r.get("kvs", ())], int(r["header"]["revision"])

    def get1(self, key: str) -> Optional[KV]:
        kvs, _ = self.get(key)
        return kvs[0] if kvs else None

    def put(self, key: str, value, lease: int = 0) -> int:
        """The revision of the write."""
        return int(self.call("/kv/put", put(key, value, lease)["request_put"])
                   ["header"]["revision"])

    def delete(self, key: str, prefix: bool = False) -> int:
        """How many keys went."""
        return int(self.call("/kv/deleterange", _range(key, prefix)).get("deleted", 0))

    def txn(self, compare: Iterable[dict], success: Iterable[dict] = (),
            failure: Iterable[dict] = (), deadline: Optional[float] = None) -> TxnResult:
        """All compares hold -> success ops, else failure ops; atomically."""
        r = self.call("/kv/txn", {"compare": list(compare), "success": list(success),
                                  "failure": list(failure)}, deadline)
        resps, counts = [], []
        for x in r.get("responses", ()):
            rr = x.get("response_range")
            resps.append(tuple(_kv(d) for d in rr.get("kvs", ())) if rr is not None else None)
            counts.append(int(rr.get("count", 0)) if rr is not None else None)
        return TxnResult(bool(r.get("succeeded", False)), int(r["header"]["revision"]),
                         tuple(resps), tuple(counts))

    # -- leases --
    def grant(self, ttl: int, deadline: Optional[float] = None) -> Tuple[int, int]:
        """A new lease: (id, ttl etcd gave: at least its minimum)."""
        r = self.call("/lease/grant", {"TTL": str(int(ttl)), "ID": "0"}, deadline)
        if r.get("error"):
            raise EtcdError(f"lease grant: {r['error']}")
        return int(r["ID"]), int(r["TTL"])

    def keepalive(self, lease: int, deadline: Optional[float] = None) -> int:
        """Renew: the TTL from now, 0 when the lease is gone (expired or revoked)."""
        r = self.call("/lease/keepalive", {"ID": str(lease)}, deadline)
        return max(0, int(r.get("result", {}).get("TTL", 0)))

    def revoke(self, lease: int) -> None:
        """Ends the lease and deletes its keys; an unknown lease is not an error."""
        try:
            self.call("/kv/lease/revoke", {"ID": str(lease)})
        except EtcdError as e:
            if "not found" not in str(e):
                raise

    def ttl(self, lease: int) -> int:
        """Seconds left, -1 when the lease is gone."""
        r = self.call("/kv/lease/timetolive", {"ID": str(lease)})
        return int(r.get("TTL", -1))

    # -- maintenance --
    def status(self) -> dict:
        r = self.call("/maintenance/status", {})
        return {"version": r.get("version", ""), "db_size": int(r.get("dbSize", 0)),
                "leader": int(r.get("leader", 0)), "revision": int(r["header"]["revision"])}

    def compact(self, revision: int) -> None:
        self.call("/kv/compaction", {"revision": str(revision), "physical": True})

    def watch(self, key: str, prefix: bool = False, start_revision: int = 0) -> "Watch":
        return Watch(self, key, prefix, start_revision)

    def close(self) -> None:
        for g in self._gws:
            g.session.close()


def _reason(e) -> str:
    if e is None:
        return "no answer"
    s = getattr(e, "detail_text", None) or str(e)
    try:
        m = json.loads(s)
        return m.get("error") or m.get("message") or s
    except (ValueError, AttributeError):
        return s[:200]


# ---- watch -----------------------------------------------------------------------------

class Watch:
    """Changes of a key or prefix from start_revision (0: from now), in order,
    one batch (list of Event, all of one revision or more) per get(). A reader
    thread holds the stream; when it breaks (a member dies) it reopens it on
    the next member from the revision after the last one delivered, so no
    change is lost or repeated. If etcd compacted that revision, get() raises
    Compacted: the caller re-reads a snapshot and watches again."""

    def __init__(self, client: Client, key: str, prefix: bool = False, start_revision: int = 0):
        self.client = client
        self._req = _range(key, prefix)
        self._req["progress_notify"] = True
        if not start_revision:
            # "from now" pinned to a revision, so a reopened stream misses nothing
            start_revision = client.get(key)[1] + 1
        self.revision = start_revision - 1      # every change up to it is delivered
        self._q: "queue.Queue" = queue.Queue()
        self._stop = threading.Event()
        self._resp = None
        self._t = threading.Thread(target=self._run, name="etcd-watch", daemon=True)
        self._t.start()

    def get(self, timeout: Optional[float] = None) -> Optional[List[Event]]:
        """The next batch, or None when nothing came within timeout (or closed)."""
        try:
            x = self._q.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(x, Exception):
            raise x
        return x

    def __iter__(self):
        while not self._stop.is_set():
            b = self.get(0.2)
            if b:
                yield b

    def close(self) -> None:
        self._stop.set()
        self._abort()
        self._t.join(2)

    def _abort(self) -> None:
        r = self._resp
        if r is not None:
            try:   # unblocks the reader thread at once
                r.raw.connection.sock.shutdown(2)
            except (AttributeError, OSError):
                pass
            r.close()

    def _run(self) -> None:
        c, lib = self.client, _gwlib()
        i = c._cur
        while not self._stop.is_set():
            gw = c._gws[i % len(c._gws)]
            req = dict(self._req, start_revision=str(self.revision + 1))
            try:
                if c._user and "Authorization" not in gw.session.headers:
                    c._authenticate(gw)
                self._resp = gw.session.post(gw.get_url("/watch"), json={"create_request": req},
                                             stream=True, timeout=(c.timeout, None))
                if self._resp.status_code != 200:
                    gw.session.headers.pop("Authorization", None)   # maybe expired
                    raise OSError(f"watch: HTTP {self._resp.status_code}")
                if self._read(self._resp.iter_lines()):
                    return
            except Compacted as e:
                self._q.put(e)
                return
            except (OSError, ValueError, lib.requests.RequestException,
                    lib.gwx.Etcd3Exception) as e:
                if self._stop.is_set():
                    return
                log.debug("watch on %s broke: %s", gw.base_url, e)
            finally:
                r, self._resp = self._resp, None
                if r is not None:
                    r.close()
            i += 1
            self._stop.wait(0.1)

    def _read(self, lines) -> bool:
        """Deliver a stream's events; True when the watch was closed."""
        for line in lines:
            if self._stop.is_set():
                return True
            if not line.strip():
                continue
            m = json.loads(line)
            r = m.get("result")
            if r is None:
                raise OSError(f"watch: {m.get('error', m)}")
            if int(r.get("compact_revision", 0)):
                raise Compacted(int(r["compact_revision"]))
            if r.get("canceled"):
                raise OSError(f"watch canceled: {r.get('cancel_reason', '')}")
            evs = [Event("delete" if e.get("type") == "DELETE" else "put", _kv(e["kv"]))
                   for e in r.get("events", ())]
            if evs:
                self.revision = max(e.kv.mod_revision for e in evs)
                self._q.put(evs)
            elif not r.get("created") and "header" in r:
                # a progress notice: nothing of ours up to here (so a long quiet
                # watch reopens past later compactions)
                self.revision = max(self.revision, int(r["header"].get("revision", 0)))
        return self._stop.is_set()


# ---- lease keeper ----------------------------------------------------------------------

class KeepAlive:
    """Keeps a lease alive from a thread (every ttl/3); on_lost(reason) is called
    once when the lease is gone (expired: etcd was out of reach longer than the
    TTL) or when renewals keep failing past its end."""

    def __init__(self, client: Client, lease: int, ttl: int,
                 on_lost: Optional[Callable[[str], None]] = None):
        self.client, self.lease, self.ttl = client, lease, ttl
        self.on_lost = on_lost
        self.lost = ""
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="etcd-keepalive", daemon=True)
        self._t.start()

    def _run(self) -> None:
        until = time.monotonic() + self.ttl
        while not self._stop.wait(self.ttl / 3):
            sent = time.monotonic()   # etcd counts the TTL from later: we end first
            try:
                left = self.client.keepalive(self.lease, deadline=self.ttl / 3)
            except EtcdError as e:
                if time.monotonic() < until:
                    continue
                left, why = 0, f"no renewal within the TTL: {e}"
            else:
                why = "lease expired"
            if left <= 0:
                self.lost = why
                if self.on_lost:
                    self.on_lost(why)
                return
            until = sent + left

    def stop(self, revoke: bool = True) -> None:
        self._stop.set()
        self._t.join(2)
        if revoke:
            try:
                self.client.revoke(self.lease)
            except EtcdError:
                pass   # it ends on its own at its TTL
