"""Issue 11's two attacks on a pair, scripted against real processes (witness
and controllers with keys from `srrs keygen`), and the secure defaults: a
witness or a pair without keys refuses to start unless told it is insecure."""

import json
import os
import re
import socket
import struct
import threading
import time

import pytest
import zmq

from srrs.ctrl import launch
from srrs.ctrl.pair_config import parse, read_mirror_secret
from srrs.ctrl.witness import LeaseTable, _handle, curve_client_setup
from srrs.ffi.binding import ffi, lib

from .procs import Ctl, Proc, Witness, alloc_ports, free_ports, make_keys, pair_conf


def _start(tmp_path, keys):
    p = alloc_ports()
    w = Witness(tmp_path, f"tcp://127.0.0.1:{p['witness']}", max_lease=2.0, keys=keys)
    ctls = []
    try:
        for n, o in (("a", "b"), ("b", "a")):
            ctls.append(Ctl(tmp_path, n, pair_conf(n, o, p, tmp_path, keys=keys)))
        for c in ctls:
            c.wait_state("PAIRED", 20)
    except BaseException:
        for c in ctls:
            c.kill9()
        w.kill9()
        raise
    return p, w, ctls


def _stop(w, ctls):
    for c in ctls:
        c.kill9()
    w.kill9()


class Load:
    """Host writes on controller c's mirror bdev, back to back, in 0.3 s benches."""

    def __init__(self, ctl):
        self.ctl, self.errors, self.ios, self.runs = ctl, 0, 0, 0
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop.is_set() and self.ctl.proc.poll() is None:
            j = self.ctl.bench(time_s=0.3, qd=8)["result"]
            self.errors += j["errors"]
            self.ios += j["ios"]
            self.runs += 1

    def finish(self):
        self.stop.set()
        self.t.join(30)
        assert not self.t.is_alive(), "host I/O hung"
        return self.errors, self.ios


def hello(header=64):
    """The issue's attacker's frame: HELLO as node 0, seq 0, valid CRC32C (the
    old 48-byte header, or today's 64-byte one)."""
    h = bytearray(struct.pack("<IBBHIIQQiIQ", 0x524D5253, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    h += bytes(header - len(h))
    struct.pack_into("<I", h, 44, lib.srrs_crc32c(0, ffi.from_buffer(h), len(h)))
    return bytes(h)


def test_stranger_hello_to_the_mirror_port(tmp_path):
    """Attack 1: TCP connections to b's mirror_listen sending HELLOs take no
    slot, receive nothing (no bitmap, no HELLO, not even a nonce), fence
    nobody; they are counted; the pair stays PAIRED and host I/O on both goes on."""
    keys = make_keys(tmp_path)
    p, w, (a, b) = _start(tmp_path, keys)
    try:
        loads = [Load(a), Load(b)]
        time.sleep(0.3)
        got = []
        for frame in (hello(48), hello(64), hello(64) * 4):
            s = socket.create_connection(("127.0.0.1", p["mirror_b"]), timeout=5)
            s.sendall(frame)
            s.settimeout(4)
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except (socket.timeout, ConnectionResetError):
                pass
            got.append(data)
            s.close()
        # an idle stranger next to the link, held open past its deadline
        idle = socket.create_connection(("127.0.0.1", p["mirror_b"]), timeout=5)
        time.sleep(2.5)
        for c in (a, b):
            st = c.pair()
            assert st["state"] == "PAIRED" and st["link"]["up"], st
        errs = [ld.finish() for ld in loads]
        idle.settimeout(1)
        assert idle.recv(100) == b""                        # closed at the deadline
        idle.close()
        assert got == [b"", b"", b""]                        # nothing of b's state
        sb = b.pair()
        assert sb["link"]["auth_failures"] >= 4, sb["link"]
        assert sb["link"]["connects"] == 1 and a.pair()["link"]["connects"] == 1
        for e, n in errs:
            assert e == 0 and n > 0, errs
        assert "refused" in b.output() or sb["link"]["auth_failures"]
    finally:
        _stop(w, (a, b))


def _client(addr, secret=None, server_pub=None):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.linger = 0
    s.sndtimeo = 500      # a refused handshake leaves no pipe: send would wait forever
    if secret:
        curve_client_setup(s, str(secret), str(server_pub))
    s.connect(addr)
    return s


def _ask(s, msg, timeout=1000):
    try:
        s.send(json.dumps(msg).encode())
    except zmq.Again:
        return None
    if not s.poll(timeout):
        return None
    return json.loads(s.recv())


def test_release_attack_on_the_witness(tmp_path):
    """Attack 2: with b SOLO under the witness's lease, `release` as b and
    `lease` as a from a client without keys, with a key the witness does not
    know, and even with a's own key (not b's): none is honoured, no answer
    names a generation, and b stays SOLO with its host I/O going on."""
    keys = make_keys(tmp_path, names=("a", "b", "mallory"))
    os.unlink(keys["allowed"] / "mallory.key")               # not a pair member
    p, w, (a, b) = _start(tmp_path, keys)
    addr = f"tcp://127.0.0.1:{p['witness']}"
    try:
        a.kill9()
        b.wait_state("SOLO", 10)
        load = Load(b)
        gen = b.pair()["data_gen"]
        release = {"op": "release", "pair": "a+b", "node": "b"}
        lease = {"op": "lease", "pair": "a+b", "node": "a", "sent_at": 1.0, "lease_s": 2.0,
                 "data_gen": gen, "next_gen": gen}
        plain = _client(addr)
        mallory = _client(addr, f"{keys['mallory']}_secret", keys["witness_public"])
        assert _ask(plain, release) is None and _ask(plain, lease) is None
        assert _ask(mallory, release) is None and _ask(mallory, lease) is None
        as_a = _client(addr, f"{keys['a']}_secret", keys["witness_public"])
        r = _ask(as_a, release, 3000)
        assert r == {"op": "release", "ok": False, "sent_at": None, "reason": "not authorized",
                     "holder": ""}
        for _ in range(3):                                   # a's key, lease held by b
            r = _ask(as_a, dict(lease, sent_at=time.monotonic()), 3000)
            assert r and not r["ok"], r
            assert not re.search(r"\d", r["reason"]), r      # no generation, no time
        time.sleep(2.5)                                      # past a lease length
        st = b.pair()
        assert st["state"] == "SOLO", st
        errors, ios = load.finish()
        assert errors == 0 and ios > 0
    finally:
        _stop(w, (a, b))


def test_refusals_name_no_generation():
    t = LeaseTable(started=-100.0, max_lease_s=3.0)
    assert t.request("a+b", "a", 2.0, [1, "a"], [2, "a"], 0.0)[0]
    for req in ({"node": "b", "data_gen": [1, "a"], "next_gen": [3, "b"]},     # held by a
                {"node": "b", "data_gen": [0, "b"], "next_gen": [7, "b"]}):    # outdated
        body = json.dumps(dict(req, op="lease", pair="a+b", sent_at=1.0, lease_s=2.0))
        r = _handle(t, body.encode(), 0.5)
        assert not r["ok"] and not re.search(r"\d", r["reason"]), r
    r = _handle(t, b'{"op": "release", "pair": "a+b", "node": "a"}', 0.5, who="b")
    assert r["ok"] is False and t.pairs["a+b"].holder == "a"
    r = _handle(t, b'{"op": "release", "pair": "a+b", "node": "c"}', 0.5)
    assert r["ok"] is False                                  # not a member of that pair
    assert _handle(t, b'{"op": "release", "pair": "a+b", "node": "a"}', 0.6, who="a")["ok"]
    assert t.pairs["a+b"].holder == ""


def test_witness_without_keys_refuses_to_start(tmp_path):
    port, = free_ports(1)
    addr = f"tcp://127.0.0.1:{port}"
    w = Proc(["witness", "--bind", addr], str(tmp_path / "w.log"))
    assert w.proc.wait(20) == 2 and "--insecure" in w.output()
    conf = tmp_path / "w.toml"
    conf.write_text(f'[witness]\nbind = "{addr}"\n')
    w = Proc(["witness", "-c", str(conf)], str(tmp_path / "w2.log"))
    assert w.proc.wait(20) == 2 and "--insecure" in w.output()
    keys = make_keys(tmp_path)
    w = Proc(["witness", "--bind", addr, "--secret-key", str(keys["witness_secret"])],
             str(tmp_path / "w3.log"))                       # a key but no allow-list
    assert w.proc.wait(20) == 1 and "--authorized" in w.output()
    w = Witness(tmp_path, addr, max_lease=1.0)               # --insecure: runs
    try:
        assert _ask(_client(addr), {"op": "ping", "sent_at": 1}, 5000)["op"] == "pong"
    finally:
        assert w.stop() == 0


BASE = {"self": "a", "peer": "b", "coord_bind": "tcp://127.0.0.1:1",
        "peer_coord": "tcp://127.0.0.1:2", "mirror_listen": "127.0.0.1:3",
        "peer_mirror": "127.0.0.1:4", "witness": "tcp://127.0.0.1:5"}


def test_pair_config_needs_keys_or_insecure(tmp_path):
    with pytest.raises(ValueError, match="a pair needs keys.*insecure = true"):
        parse(dict(BASE))
    assert parse(dict(BASE, insecure=True)).insecure
    keys = make_keys(tmp_path)
    full = {"secret_key": str(keys["a"]) + "_secret", "peer_public_key": str(keys["b"]),
            "witness_public_key": str(keys["witness_public"]),
            "mirror_secret": str(keys["mirror_secret"])}
    c = parse(dict(BASE, **full, mirror_allow=["127.0.0.1"]))
    assert c.mirror_allow == ("127.0.0.1",) and len(read_mirror_secret(c.mirror_secret)) == 32
    assert os.stat(keys["mirror_secret"]).st_mode & 0o777 == 0o600
    with pytest.raises(ValueError, match="mirror_secret: the keys go together"):
        parse(dict(BASE, **{k: v for k, v in full.items() if k != "mirror_secret"}))
    with pytest.raises(ValueError, match="insecure: true, but keys"):
        parse(dict(BASE, **full, insecure=True))
    with pytest.raises(ValueError, match="mirror_allow: 'peer-host' is not a numeric"):
        parse(dict(BASE, **full, mirror_allow=["peer-host"]))
    os.chmod(keys["mirror_secret"], 0o644)
    with pytest.raises(ValueError, match="mirror_secret: .*readable by others"):
        parse(dict(BASE, **full))
    # `srrs start` says so before anything starts
    p = alloc_ports()
    conf = pair_conf("a", "b", p, tmp_path)
    del conf["pair"]["insecure"]
    launch.write_config(tmp_path / "a.toml", conf)
    r = Proc(["start", "-c", str(tmp_path / "a.toml")], str(tmp_path / "start.log"))
    assert r.proc.wait(30) != 0 and "a pair needs keys" in r.output()


def test_keygen_writes_a_mirror_secret_once(tmp_path):
    d = tmp_path / "k"
    for n in ("a", "b"):
        r = Proc(["keygen", str(d), n], str(tmp_path / f"{n}.log"))
        assert r.proc.wait(20) == 0
    out = [json.loads(line) for line in
           (tmp_path / "a.log").read_text().splitlines() + (tmp_path / "b.log").read_text()
           .splitlines() if line.startswith("{")]
    assert out[0]["mirror_secret"] == out[1]["mirror_secret"] == str(d / "mirror.secret")
    assert os.stat(d / "mirror.secret").st_mode & 0o777 == 0o600
    assert len(read_mirror_secret(str(d / "mirror.secret"))) == 32
    assert os.stat(d / "a.key_secret").st_mode & 0o777 == 0o600
