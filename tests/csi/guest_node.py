"""The CSI node plugin in a Linux guest, reached as the kubelet reaches it
(tests/csi/test_guest_kubelet.py, ci/bench-csi).

The guest is the Python variant of the test image (ci/guest/build_pylayer.py:
this host's interpreter and our package appended to the initramfs), so the
plugin is the real `srrs csi --mode node` process against the guest's kernel
(nvme-tcp, native multipath, mkfs, mount). It serves on TCP in the guest
(GUEST_PORT); QEMU's user networking forwards the host's 127.0.0.1:port to it.

The controllers listen on this host's own address (`host_address()`), not on
loopback: the guest's connections to it leave through QEMU's NAT, so the paths
a publish context names are the addresses the guest's kernel connects to, as
given (a guest's 127.0.0.1 is its own).
"""

from __future__ import annotations

import contextlib
import shlex
import socket
import time

import grpc

from srrs.ctrl import csi_pb2 as pb
from srrs.ctrl.csi import Client
from tests.cluster.etcd import wait_until
from tests.guest import harness

GUEST_PORT = 10000
MODULES = ("nvme_tcp", "crc32c_generic", "ext4")
# The Python image is ~155 MB in a rootfs capped at half the RAM; the plugin
# and the page cache of the test's files need the rest (tests/guest/README.md).
MEM = "768M"


def host_address() -> str:
    """This host's IPv4 address on its default route ("" when there is none)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("198.51.100.1", 9))      # a route lookup: nothing is sent
        a = s.getsockname()[0]
    except OSError:
        a = ""
    finally:
        s.close()
    return "" if a.startswith("127.") else a


def require_host_address() -> str:
    """host_address(), or (pytest) a skip outside CI and a failure under CI=true."""
    a = host_address()
    if not a:
        msg = "no non-loopback IPv4 address on a default route: the guest cannot reach one"
        if harness.in_ci():
            raise harness.GuestUnavailable(msg)
        import pytest
        pytest.skip(msg)
    return a


def guest(port: int, **kw) -> harness.Guest:
    """A Python guest whose GUEST_PORT is the host's 127.0.0.1:port."""
    opts = dict(smp=1, mem=MEM, modules=MODULES, python=True, hostfwd=[(port, GUEST_PORT)])
    opts.update(kw)
    return harness.Guest(**opts)


@contextlib.contextmanager
def guest_with_plugin(make_world, port: int, node_args=(), node_timeout: float = 300.0,
                      start_early: bool = False):
    """(w, g, node) for a module of Node tests: a guest booted, the node plugin
    in it (started at once when start_early, while make_world() brings the
    pair, etcd and the controller plugin up; else by the test), and
    w = make_world(). On the way out: the plugin's figures and log, the
    guest's memory and diagnostics, and everything stopped."""
    g = guest(port)
    node = NodePlugin(g, port, args=node_args, timeout=node_timeout)
    w = None
    try:
        g.start()
        print(f"guest boot: {g.boot_seconds:.1f} s")
        if start_early:
            node.start(wait=False)
        w = make_world()
        yield w, g, node
    finally:
        if node.start_s:
            print(f"node plugin starts: {len(node.start_s)}, "
                  f"{sum(node.start_s) / len(node.start_s):.1f} s on average")
        try:
            print(f"--- node plugin log ---\n{node.log()}")
            node.kill9()
            print(g.check("free -m"))       # what the Python image leaves of mem
        except harness.GuestError:
            pass
        print(g.diagnostics())
        g.close()
        if w is not None:
            w.close()


def published(w, node_id: str, name: str, size: int, cap):
    """CreateVolume (zone z1) until ready, then ControllerPublishVolume to
    node_id, as the provisioner and the attacher do: (volume, publish
    context)."""
    v = w.call("Controller", "CreateVolume", name=name, capacity_range=pb.CapacityRange(required_bytes=size),
               volume_capabilities=[cap], parameters={"zone": "z1"}).volume
    assert wait_until(lambda: w.cat.get("volumes", v.volume_id).state == "ready", 30)
    ctx = w.call("Controller", "ControllerPublishVolume", volume_id=v.volume_id,
                 node_id=node_id, volume_capability=cap).publish_context
    return v, ctx


class NodePlugin:
    """`srrs csi --mode node` in guest g, as a background job there. Its node
    id is the guest's /etc/nvme/hostnqn (no --node-id)."""

    def __init__(self, g: harness.Guest, port: int, args=(), timeout: float = 300.0):
        self.g, self.endpoint, self.args = g, f"tcp://127.0.0.1:{port}", list(args)
        self.timeout = timeout          # of a call: a stage under TCG takes seconds
        self.job = None
        self.starts = 0
        self.start_s: list = []         # seconds from the spawn to Probe ready, per start
        self._t0 = None                 # a start not yet seen ready

    def start(self, args=None, wait: bool = True) -> "NodePlugin":
        """A new plugin process (the last one killed first); with wait, returns
        once its Probe answers ready over the forwarded port (else the next
        call() waits for that)."""
        self.kill9()
        self.starts += 1
        argv = ["srrs", "csi", "--mode", "node", "--endpoint", f"tcp://0.0.0.0:{GUEST_PORT}",
                *(self.args if args is None else args)]
        self._t0 = time.monotonic()
        self.job = self.g.spawn("exec " + shlex.join(argv), name=f"csi-node-{self.starts}")
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        if self._t0 is None:
            return
        while True:
            c = Client(self.endpoint, timeout=2)
            try:
                if c.call("Identity", "Probe").ready.value:
                    break
            except grpc.RpcError:
                pass
            finally:
                c.close()
            rc = self.job.poll()
            if rc is not None:
                raise RuntimeError(f"the node plugin exited ({rc}):\n{self.job.output()}")
            if time.monotonic() - self._t0 > timeout:
                raise TimeoutError(f"the node plugin is not ready after {timeout:.0f} s:\n"
                                   f"{self.job.output()}")
            time.sleep(0.2)
        self.start_s.append(time.monotonic() - self._t0)
        self._t0 = None

    def kill9(self):
        """SIGKILL the running plugin, as a crash; its exit status (137 when it
        was still alive), None when none runs."""
        if self.job is None:
            return None
        job, self.job, self._t0 = self.job, None, None
        job.kill("KILL")
        end = time.monotonic() + 30
        while (rc := job.poll()) is None:
            if time.monotonic() > end:
                raise TimeoutError(f"the node plugin outlived SIGKILL:\n{job.output()}")
            time.sleep(0.1)
        return rc

    def restart(self, wait: bool = True) -> "NodePlugin":
        """kill -9 the plugin (it must still be running) and start another."""
        if self.job is not None:
            self.wait_ready()
            rc = self.kill9()
            assert rc == 137, f"the node plugin had exited ({rc}) before its kill"
        return self.start(wait=wait)

    def log(self) -> str:
        return self.job.output() if self.job is not None else ""

    def call(self, method: str, quiet: bool = False, **kw):
        """One Node call, as the kubelet makes it (a refusal raises grpc.RpcError
        and, unless quiet, prints the plugin's log)."""
        self.wait_ready()
        c = Client(self.endpoint, timeout=self.timeout)
        try:
            return c.call("Node", method, **kw)
        except grpc.RpcError:
            if not quiet:
                print(f"--- node plugin ({self.starts}) log ---\n{self.log()}")
            raise
        finally:
            c.close()
