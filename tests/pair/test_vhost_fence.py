"""A VM's disk through a fenced controller (docs/architecture.md, Pair: a
single-path host while its controller cannot serve). A Linux guest (QEMU
TCG) has the paired volume as a vhost-user-blk disk of controller a; a real
network cut (`ip netns`, a's links to b and to the witness down) fences a
while b serves alone. A VM has no other path, so a holds its I/O instead of
failing it, and starts it again once it is back in the pair: fio verify in
the guest ends with no error, and the replicas are identical. With a short
`vhost_hold_ms` the held I/O fails when it runs out, with an event, and the
disk works again after the heal. A fenced controller stopped (SIGTERM) while
it holds a VM's I/O leaves it in the vhost-user inflight region: restarted,
it resubmits it once it serves, and the guest sees no error.

Namespaces of their own (srrsV*), so the partition tests may run beside."""

import json
import re
import time

import pytest

from srrs.ctrl import launch
from tests.guest.harness import Guest, require_guest, vhost_blk_args

from .netns import Topology, require_netns
from .procs import Ctl, Witness, pair_conf, same_files

pytestmark = pytest.mark.side

NS = {"A": "srrsVA", "B": "srrsVB", "W": "srrsVW"}
LINKS = {
    "ab": ("A", "vab-a", "10.78.1.1", "B", "vab-b", "10.78.1.2"),
    "aw": ("A", "vaw-a", "10.78.2.1", "W", "vaw-w", "10.78.2.2"),
    "bw": ("B", "vbw-b", "10.78.3.1", "W", "vbw-w", "10.78.3.2"),
}
TOPO = Topology(NS, LINKS)
PORTS = {"coord_a": 5601, "coord_b": 5602, "mirror_a": 4521, "mirror_b": 4522, "witness": 5600}

FIO = ("fio --name=v --filename=/dev/vda --ioengine=libaio --direct=1 --rw=randwrite "
       "--bsrange=4k-256k --size=24M --iodepth=8 --numjobs=2 --offset_increment=32M "
       "--verify=crc32c --verify_fatal=1 --group_reporting")


def _pair(tmp, hold_ms=None):
    """a (with the VM's disk) and b in their namespaces, the witness in its own."""
    w = Witness(tmp, "tcp://0.0.0.0:5600", max_lease=2.0,
                prefix=["ip", "netns", "exec", NS["W"]])
    ctls = {}
    more = {} if hold_ms is None else {"vhost_hold_ms": hold_ms}
    try:
        sock = str(tmp / "vh-a.sock")
        ctls["a"] = Ctl(tmp, "a", pair_conf(
            "a", "b", PORTS, tmp, size="128MiB", host="10.78.1.1", peer_host="10.78.1.2",
            witness_host="10.78.2.2",
            extra=dict(more, vhost=[launch.vhost("vh0", sock, "v0", num_queues=2)])),
            prefix=["ip", "netns", "exec", NS["A"]])
        ctls["b"] = Ctl(tmp, "b", pair_conf(
            "b", "a", PORTS, tmp, size="128MiB", host="10.78.1.2", peer_host="10.78.1.1",
            witness_host="10.78.3.2", extra=more), prefix=["ip", "netns", "exec", NS["B"]])
        ctls["a"].wait_state("PAIRED", 30)
        ctls["b"].wait_state("PAIRED", 30)
    except BaseException:
        for c in ctls.values():
            c.kill9()
        w.kill9()
        raise
    return w, ctls["a"], ctls["b"], sock


@pytest.fixture
def net():
    require_guest()
    require_netns()
    with TOPO.up():
        yield


def _isolate_a(down=True):
    TOPO.set_link("ab", not down)
    TOPO.set_link("aw", not down)


def _vhost_errors(c):
    return sum(q["errors"] for d in c.rpc("vhost_list", {}) for q in d["queues"])


def _wait(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"not {what} within {timeout} s")


def test_a_vm_rides_through_its_controller_fenced(net, tmp_path):
    w, a, b, sock = _pair(tmp_path)
    try:
        with Guest(extra_qemu_args=vhost_blk_args(sock, num_queues=2), smp=2, net=False,
                   modules=()) as g:
            job = g.spawn(FIO)
            _wait(lambda: a.pair()["volumes"][0]["writes"] > 50, 60, "writing")
            _isolate_a()
            t_cut = time.monotonic()
            b.wait_state("SOLO", 15)
            a.wait_state("FENCED", 15)
            time.sleep(max(0.0, 4.0 - (time.monotonic() - t_cut)))
            # none of the guest's I/O failed: it waits in a
            assert _vhost_errors(a) == 0
            assert job.poll() is None, job.output()
            held = a.pair()["link"]["held_ios"]
            assert held > 0
            _isolate_a(down=False)
            a.wait_state("PAIRED", 60)
            rc, out = job.wait(timeout=900)
            assert rc == 0 and "err= 0" in out, out
            g.check("dd if=/dev/vda of=/dev/null bs=1M count=8 iflag=direct")
        link = a.pair()["link"]
        print("held at most", held, "link", json.dumps(link))
        assert link["hold_retries"] > 0 and link["hold_expired"] == 0, link
        assert link["held_ios"] == 0, link
        assert _vhost_errors(a) == 0
        b.wait_state("PAIRED", 30)
        assert _wait(lambda: not a.pair()["volumes"][0]["dirty_stripes"]
                     and not b.pair()["volumes"][0]["dirty_stripes"], 30, "clean")
        assert same_files(tmp_path / "a-v0.img", tmp_path / "b-v0.img") == []
    finally:
        for c in (a, b):
            c.kill9()
        w.kill9()


def test_held_io_fails_when_the_hold_runs_out(net, tmp_path):
    w, a, b, sock = _pair(tmp_path, hold_ms=1500)
    try:
        with Guest(extra_qemu_args=vhost_blk_args(sock, num_queues=1), smp=1, net=False,
                   modules=()) as g:
            g.check("dd if=/dev/urandom of=/dev/vda bs=64k count=16 oflag=direct")
            _isolate_a()
            a.wait_state("FENCED", 15)
            t0 = time.monotonic()
            r = g.run("dd if=/dev/urandom of=/dev/vda bs=64k count=16 oflag=direct 2>&1",
                      timeout=60)
            took = time.monotonic() - t0
            assert r.rc != 0, r.output        # an I/O error, once the hold ran out
            assert took >= 1.4, took
            assert a.pair()["link"]["hold_expired"] > 0
            assert _vhost_errors(a) > 0
            assert re.search(r"held I/O\(s\) of single-path hosts failed", a.output()), \
                a.output()[-3000:]
            _isolate_a(down=False)
            a.wait_state("PAIRED", 60)
            g.check("dd if=/dev/urandom of=/dev/vda bs=64k count=16 oflag=direct")
    finally:
        for c in (a, b):
            c.kill9()
        w.kill9()



def test_a_fenced_controller_stopped_and_restarted_under_a_vm(net, tmp_path):
    w, a, b, sock = _pair(tmp_path)
    try:
        with Guest(extra_qemu_args=vhost_blk_args(sock, num_queues=2, reconnect=1), smp=2,
                   net=False, modules=()) as g:
            job = g.spawn(FIO)
            _wait(lambda: a.pair()["volumes"][0]["writes"] > 50, 60, "writing")
            _isolate_a()
            a.wait_state("FENCED", 15)
            _wait(lambda: a.pair()["link"]["held_ios"], 15, "holding the VM's I/O")
            t0 = time.monotonic()
            assert a.stop(30) == 0
            took = time.monotonic() - t0
            assert took < 10, took          # the queues drained: nothing waits for the hold
            _isolate_a(down=False)
            a.restart()
            a.wait_state("PAIRED", 60)
            rc, out = job.wait(timeout=900)
            assert rc == 0 and "err= 0" in out, out
            qs = [q for d in a.rpc("vhost_list", {}) for q in d["queues"]]
            assert sum(q["errors"] for q in qs) == 0, qs
            assert sum(q["resubmitted"] for q in qs) > 0, qs
    finally:
        for c in (a, b):
            c.kill9()
        w.kill9()
