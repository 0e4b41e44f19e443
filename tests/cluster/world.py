"""The cluster tests' world (tests/cluster/test_catalog_sync.py, test_move.py,
test_elastic.py, test_replace.py): three real etcd members and controllers,
each in a network namespace of its own on one bridge (tests/cluster/etcd.py
Hub), pairs of them started with launch.Pair, and a Linux guest whose QEMU
runs in the hosts' namespace "h", booted on first use and kept for the
module. A module subclasses World for what is its own."""

from __future__ import annotations

import contextlib

from srrs.ctrl import launch
from tests.guest import harness as guest_harness

from .etcd import Cluster, Hub


def netns_guest(ns: str, hostnqn: str):
    """A Linux guest with the NVMe/TCP initiator whose QEMU runs in network
    namespace ns (the cluster tests' host), started."""
    guest_harness.require_guest()
    return guest_harness.Guest(smp=1, hostnqn=hostnqn, modules=("nvme_tcp", "crc32c_generic"),
                               prefix=("ip", "netns", "exec", ns)).start()


class World:
    """tmp: the module's directory; ports: controller name -> NVMe/TCP port;
    hostnqn: the guest's host NQN."""

    def __init__(self, tmp, etcd, hub, ports, hostnqn):
        self.tmp, self.etcd, self.hub, self.ports, self.hostnqn = tmp, etcd, hub, ports, hostnqn
        self.pairs = []
        self.ns_h = hub.hosts["h"][0]
        self._guest = None

    def addr(self, n):
        return self.hub.hosts[n][1]

    def netns(self, n):
        """The command prefix that runs in n's namespace."""
        return ("ip", "netns", "exec", self.hub.hosts[n][0])

    def ctl(self, n):
        return next(p.nodes[n] for p in self.pairs if n in p.nodes)

    def pair(self, n):
        """The running pair controller n is in."""
        return next(p for p in self.pairs if n in p.nodes)

    def start_pair(self, names, node, secure=False, **kw):
        """A launch.Pair of the controllers names (v0 a configured volume),
        each in its namespace, node(n) giving n's sections; started."""
        d = self.tmp / "".join(names)
        d.mkdir()
        p = launch.Pair(d, node=node, names=names, volumes=("v0",), secure=secure,
                        hosts={n: self.addr(n) for n in names},
                        prefix={n: self.netns(n) for n in names}, **kw)
        self.pairs.append(p)        # stopped by close() even if its start fails
        return p.start()

    def guest(self):
        if self._guest is None:
            self._guest = netns_guest(self.ns_h, self.hostnqn)
        return self._guest

    def close(self):
        """Subclasses stop what else they started, then call this."""
        if self._guest is not None:
            print(self._guest.diagnostics())
            self._guest.close()
        for p in self.pairs:
            p.stop()
        self.etcd.stop()


@contextlib.contextmanager
def netns_world(cls, tmp, keys, tag, nodes, hostnqn, **kw):
    """cls(tmp, etcd, hub, ports, hostnqn, **kw) with etcd started on the
    namespaces keys[:3]; closed on the way out. tag: the namespaces' prefix,
    unique to the module (a Hub deletes its tag's namespaces first)."""
    ports = dict(zip(nodes, launch.free_ports(len(nodes))))
    with Hub(keys, tag=tag) as hub:
        etcd = Cluster(hosts=[hub.hosts[k] for k in keys[:3]])
        w = cls(tmp, etcd, hub, ports, hostnqn, **kw)
        try:
            etcd.start()
            yield w
        finally:
            w.close()
