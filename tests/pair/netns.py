"""Test hosts in network namespaces this suite creates: named namespaces joined
by veth pairs; a link is cut by setting its first end down."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess

import pytest

from tests.guest.harness import in_ci


def sh(*args):
    r = subprocess.run(list(args), capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")


def _netns_missing() -> str:
    """Why this runner cannot build network namespaces ("" if it can)."""
    if os.geteuid() != 0:
        return "not root"
    if not shutil.which("ip"):
        return "no ip(8)"
    r = subprocess.run(["ip", "netns", "add", "srrs-probe"], capture_output=True, text=True)
    if r.returncode:
        return f"ip netns add: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "srrs-probe"], capture_output=True)
    return ""


def have_netns():
    return not _netns_missing()


def require_netns() -> None:
    """For pytest: network namespaces can be built here. Outside CI their
    absence skips the test; under CI it fails the run, like a missing guest
    (harness.require_guest) or host tool (conftest.need)."""
    why = _netns_missing()
    if not why:
        return
    msg = f"needs root and ip netns ({why})"
    if in_ci():
        pytest.fail(f"{msg}: required under CI", pytrace=False)
    pytest.skip(msg)


CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET):
        e = ctypes.get_errno()
        raise OSError(e, f"setns({what}): {os.strerror(e)}")


@contextlib.contextmanager
def in_netns(ns: str):
    """Sockets this thread opens inside the block live in network namespace
    ns (setns(2) of a network namespace is per thread, and a socket keeps the
    namespace it was made in); "" is the current one. For the test process's
    own clients (etcd, discovery) of hosts that only a namespace reaches."""
    if not ns:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        there = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            _setns(there, ns)
        finally:
            os.close(there)
        try:
            yield
        finally:
            _setns(own, "back")
    finally:
        os.close(own)


class Topology:
    """ns: {key: netns name}; links: {name: (ns1, ifname1, addr1, ns2, ifname2, addr2)}
    with ns keys, addresses in /24s."""

    def __init__(self, ns: dict, links: dict):
        self.ns, self.links = ns, links

    def nsx(self, key, *args):
        sh("ip", "netns", "exec", self.ns[key], *args)

    def set_link(self, link, up):
        n1, i1, *_ = self.links[link]
        self.nsx(n1, "ip", "link", "set", i1, "up" if up else "down")

    def _delete(self):
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    @contextlib.contextmanager
    def up(self):
        """Build it (without root and `ip netns`: skip, or fail under CI), yield,
        tear it down."""
        require_netns()
        self._delete()
        try:
            for ns in self.ns.values():
                sh("ip", "netns", "add", ns)
                sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            for n1, i1, a1, n2, i2, a2 in self.links.values():
                sh("ip", "link", "add", i1, "netns", self.ns[n1], "type", "veth", "peer",
                   "name", i2, "netns", self.ns[n2])
                for n, i, a in ((n1, i1, a1), (n2, i2, a2)):
                    self.nsx(n, "ip", "addr", "add", f"{a}/24", "dev", i)
                    self.nsx(n, "ip", "link", "set", i, "up")
            yield self
        finally:
            self._delete()
