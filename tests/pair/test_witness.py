"""The witness as a real process (ZeroMQ), and its lease table directly."""

import json
import time

import pytest
import zmq

from srrs.ctrl.witness import LeaseTable, curve_client_setup

from .procs import Proc, Witness, free_ports

G0, GA, GB = [0, ""], [1, "a"], [1, "b"]


def test_table_one_holder_and_expiry():
    t = LeaseTable(started=-100)
    assert t.request("p", "a", 3, G0, GA, 0.0)[0]
    ok, reason, holder = t.request("p", "b", 3, GA, [2, "b"], 1.0)
    assert not ok and holder == "a" and "held by a" in reason
    assert t.request("p", "a", 3, GA, GA, 2.0)[0]          # renewal
    assert not t.request("p", "b", 3, GA, [2, "b"], 4.9)[0]
    assert t.request("p", "b", 3, GA, [2, "b"], 5.01)[0]    # a's lease ran out


def test_table_outdated_and_release():
    t = LeaseTable(started=-100)
    assert t.request("p", "a", 3, G0, GA, 0.0)[0]
    t.release("p", "a")
    ok, reason, _ = t.request("p", "b", 3, G0, GB, 0.1)
    assert not ok and "outdated" in reason                  # b missed a's solo writes
    assert t.request("p", "b", 3, GA, [2, "b"], 0.2)[0]     # after a resync it may


def test_table_restart_quarantine():
    t = LeaseTable(started=100.0, max_lease_s=3)
    assert not t.request("p", "a", 3, G0, GA, 101.0)[0]
    assert t.request("p", "a", 3, G0, GA, 103.5)[0]
    assert not t.request("p", "a", 30, G0, GA, 103.5)[0]    # longer than the maximum


def _client(addr, keys=None, server_pub=None):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    if keys:
        curve_client_setup(s, keys, server_pub)
    s.connect(addr)
    return s


def _ask(s, msg, timeout=2000):
    s.send(json.dumps(msg).encode())
    if not s.poll(timeout):
        return None
    return json.loads(s.recv())


def _until_ok(s, make, timeout=5.0):
    """The witness waits out its start-up quarantine: ask until granted."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = _ask(s, make())
        if r and r["ok"]:
            return r
        time.sleep(0.1)
    raise AssertionError(f"not granted: {r}")


def _lease(node, data, nxt, lease_s=1.0):
    return {"op": "lease", "pair": "a+b", "node": node, "sent_at": time.monotonic(),
            "lease_s": lease_s, "data_gen": data, "next_gen": nxt}


def test_witness_process_grants_at_most_one(tmp_path):
    port, = free_ports(1)
    addr = f"tcp://127.0.0.1:{port}"
    w = Witness(tmp_path, addr, max_lease=1.0)
    try:
        a, b = _client(addr), _client(addr)
        assert _ask(a, {"op": "ping", "sent_at": 1})["op"] == "pong"
        r = _ask(a, _lease("a", G0, GA))
        assert not r["ok"] and "restarted" in r["reason"]    # quarantine after start
        time.sleep(1.05)
        assert _ask(a, _lease("a", G0, GA))["ok"]
        r = _ask(b, _lease("b", GA, GB))
        assert not r["ok"] and r["holder"] == "a"
        time.sleep(1.05)
        assert _ask(b, _lease("b", GA, GB))["ok"]
        assert _ask(a, {"op": "nonsense"})["op"] == "error"
        a.send(b"not json")
        assert a.poll(2000)
        assert json.loads(a.recv())["op"] == "error"
    finally:
        assert w.stop() == 0


def test_witness_state_survives_restart(tmp_path):
    port, = free_ports(1)
    addr = f"tcp://127.0.0.1:{port}"
    state = tmp_path / "w.json"
    w = Witness(tmp_path, addr, max_lease=0.5, extra=["--state", str(state)])
    try:
        c = _client(addr)
        _until_ok(c, lambda: _lease("a", G0, GA, 0.5))
    finally:
        w.stop()
    w = Witness(tmp_path, addr, max_lease=0.5, extra=["--state", str(state)])
    try:
        c = _client(addr)
        assert _ask(c, {"op": "ping", "sent_at": 1}, timeout=10000)
        time.sleep(0.6)
        r = _ask(c, _lease("b", G0, GB, 0.5))
        assert not r["ok"] and "outdated" in r["reason"]
    finally:
        w.stop()


def test_witness_curve(tmp_path):
    keys = tmp_path / "keys"
    for n in ("witness", "a", "intruder"):
        p = Proc(["keygen", str(keys), n], str(tmp_path / "keygen.log"))
        assert p.proc.wait(20) == 0
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "a.key").write_text((keys / "a.key").read_text())
    port, = free_ports(1)
    addr = f"tcp://127.0.0.1:{port}"
    w = Witness(tmp_path, addr, max_lease=1.0, extra=[
        "--secret-key", str(keys / "witness.key_secret"), "--authorized", str(allowed)])
    try:
        time.sleep(0.5)
        good = _client(addr, str(keys / "a.key_secret"), str(keys / "witness.key"))
        assert _ask(good, {"op": "ping", "sent_at": 1})["op"] == "pong"
        plain = _client(addr)
        assert _ask(plain, {"op": "ping", "sent_at": 1}, timeout=700) is None
        bad = _client(addr, str(keys / "intruder.key_secret"), str(keys / "witness.key"))
        assert _ask(bad, {"op": "ping", "sent_at": 1}, timeout=700) is None
    finally:
        w.stop()


@pytest.mark.parametrize("args", [[], ["--bind", "nonsense"]])
def test_witness_bad_args(tmp_path, args):
    p = Proc(["witness"] + args, str(tmp_path / "w.log"))
    assert p.proc.wait(20) in (1, 2)


def test_table_a_late_grant_given_back_does_not_outdate_the_peer():
    """A grant whose answer reached a after it stopped waiting (ha ignores it):
    the table recorded a's next generation, which no replica ever has. Without
    the unwind, b (as current as a) is refused as outdated for ever once a dies."""
    t = LeaseTable(started=-100)
    assert t.request("p", "a", 3, G0, GA, 0.0)[0]             # answered too late for a
    assert not t.request("p", "b", 3, G0, GB, 5.0)[0]          # the trap: b "outdated"
    assert not t.unwind("p", "b", GA, G0)                     # only the grantee gives it back
    assert not t.unwind("p", "a", [9, "a"], G0)               # and only that grant
    assert t.unwind("p", "a", GA, G0)
    assert t.request("p", "b", 3, G0, GB, 5.1)[0]
    assert not t.unwind("p", "a", GB, G0)                     # b's lease is not a's to undo


def test_witness_process_unwind_is_authorized_and_persisted(tmp_path):
    port, = free_ports(1)
    addr = f"tcp://127.0.0.1:{port}"
    state = tmp_path / "w.state"
    w = Witness(tmp_path, addr, max_lease=1.0, extra=["--state", str(state)])
    try:
        a, b = _client(addr), _client(addr)
        _until_ok(a, lambda: _lease("a", G0, GA))
        unwind = {"op": "unwind", "pair": "a+b", "granted_gen": GA, "data_gen": G0}
        assert _ask(b, dict(unwind, node="c"))["ok"] is False   # not in the pair
        assert _ask(a, dict(unwind, node="a"))["ok"] is True
        assert json.loads(state.read_text())["a+b"]["gen"] == G0
        assert _ask(b, _lease("b", G0, GB))["ok"]               # not outdated, not held
    finally:
        assert w.stop() == 0
