"""Discovery across a pair without a cluster (docs/architecture.md, Exports:
Discovery): each controller's discovery log lists its own NVMe/TCP ports and
its peer's (told in the heartbeats), filtered per host, and follows the
peer's subsystems as they come and go at run time. The first test reads the
log with our initiator; the second with the Linux kernel's `nvme discover`
in a QEMU guest (side lane)."""

import time

import pytest

from srrs.ctrl.pair_discovery import check_ports, ports
from srrs.nvmf.target import discover
from tests.guest import harness as guest_harness

from .procs import Ctl, Witness, free_ports, nvmf_conf, pair_conf

NQN = "nqn.2026-11.io.srrs:pairdisc"
H1 = "nqn.2014-08.org.nvmexpress:uuid:11111111-1111-4111-8111-111111111111"
H2 = "nqn.2014-08.org.nvmexpress:uuid:22222222-2222-4222-8222-222222222222"


@pytest.fixture
def pair(tmp_path):
    p = free_ports(7)
    pt = {"coord_a": p[0], "coord_b": p[1], "mirror_a": p[2], "mirror_b": p[3],
          "witness": p[4], "nvmf_a": p[5], "nvmf_b": p[6]}
    w = Witness(tmp_path, f"tcp://127.0.0.1:{pt['witness']}", max_lease=2.0)
    ctls = {}
    try:
        for n, peer, lo in (("a", "b", 1), ("b", "a", 1001)):
            ctls[n] = Ctl(tmp_path, n, pair_conf(
                n, peer, pt, tmp_path, size="32MiB",
                extra=nvmf_conf(pt["nvmf_" + n], lo, NQN, "SRRSPDISC001")))
        ctls["a"].wait_state("PAIRED", 20)
        ctls["b"].wait_state("PAIRED", 20)
        yield ctls["a"], ctls["b"], pt
    finally:
        for c in ctls.values():
            c.kill9()
        w.kill9()


def _log(port, host, addr="127.0.0.1"):
    return {(e["subnqn"], e["traddr"], e["trsvcid"])
            for e in discover(addr, port, hostnqn=host) if e["subtype"] != "discovery"}


def _until(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > end:
            return v
        time.sleep(0.1)


def test_each_controller_lists_both_and_follows_the_peer(pair):
    a, b, pt = pair
    both = {(NQN, "127.0.0.1", str(pt["nvmf_a"])), (NQN, "127.0.0.1", str(pt["nvmf_b"]))}
    for port in (pt["nvmf_a"], pt["nvmf_b"]):
        assert _until(lambda p=port: both <= _log(p, H1)), _log(port, H1)
    # a subsystem made on b at run time for H1 only: a lists it at b's port to
    # H1, not to H2; deleted, it leaves a's log
    only = "nqn.2026-11.io.srrs:pairdisc-h1"
    b.rpc("nvmf_subsystem_create", {"nqn": only})
    b.rpc("nvmf_subsystem_add_host", {"nqn": only, "host": H1})
    at_b = (only, "127.0.0.1", str(pt["nvmf_b"]))
    assert _until(lambda: at_b in _log(pt["nvmf_a"], H1)), _log(pt["nvmf_a"], H1)
    assert at_b not in _log(pt["nvmf_a"], H2)
    assert (only, "127.0.0.1", str(pt["nvmf_a"])) not in _log(pt["nvmf_a"], H1)
    b.rpc("nvmf_subsystem_delete", {"nqn": only})
    assert _until(lambda: at_b not in _log(pt["nvmf_a"], H1)), _log(pt["nvmf_a"], H1)
    # b gone: a keeps listing b's last ports (the host's connect to them fails
    # and its kernel keeps retrying: the path is back when b is)
    b.kill9()
    time.sleep(1.0)
    assert both <= _log(pt["nvmf_a"], H1)


def test_ports_and_the_peers_list_are_checked():
    subs = [{"nqn": "nqn.x:1", "allow_any_host": True, "hosts": []},
            {"nqn": "nqn.x:2", "allow_any_host": False, "hosts": ["h2", "h1"]},
            {"nqn": "nqn.x:3", "allow_any_host": False, "hosts": []}]     # admits nobody
    ls = [{"addr": "0.0.0.0", "port": 4420}, {"addr": "10.0.0.1", "port": 4421}]
    mine = ports(ls, subs, wildcard=True)
    assert [(e["subnqn"], e["traddr"], e["hosts"]) for e in mine] == [
        ("nqn.x:1", "0.0.0.0", ["*"]), ("nqn.x:1", "10.0.0.1", ["*"]),
        ("nqn.x:2", "0.0.0.0", ["h1", "h2"]), ("nqn.x:2", "10.0.0.1", ["h1", "h2"])]
    out = ports(ls, subs, wildcard=False)
    assert {e["traddr"] for e in out} == {"10.0.0.1"}
    assert check_ports(out) == out
    good = {"subnqn": "nqn.x:1", "traddr": "10.0.0.1", "trsvcid": "4420", "hosts": ["*"]}
    for bad in ({**good, "traddr": "0.0.0.0"}, {**good, "hosts": []},
                {**good, "hosts": ["a\nb"]}, {**good, "subnqn": "x" * 300},
                {**good, "trsvcid": 4420}, "no", [good]):
        with pytest.raises(ValueError):
            check_ports([bad])
    with pytest.raises(ValueError):
        check_ports({"not": "a list"})


@pytest.mark.side
def test_the_linux_initiator_discovers_both_controllers(pair):
    """`nvme discover` in a guest against a (the host's loopback at 10.0.2.2)
    lists the subsystem at a's port and at b's."""
    a, b, pt = pair
    guest_harness.require_guest()
    H = guest_harness.HOST_FROM_GUEST
    with guest_harness.Guest(smp=1, hostnqn=H1, modules=("nvme_tcp", "crc32c_generic")) as g:
        out = g.check(f"nvme discover -t tcp -a {H} -s {pt['nvmf_a']}", timeout=60)
        entries = [e for e in out.split("=====Discovery Log Entry") if NQN in e]
        where = {(line.split(":", 1)[1].strip()) for e in entries for line in e.splitlines()
                 if line.strip().startswith("trsvcid:")}
        assert {str(pt["nvmf_a"]), str(pt["nvmf_b"])} <= where, out
