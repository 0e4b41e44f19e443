"""Real etcd processes for the cluster tests (docs/architecture.md, Cluster).

One member (`Cluster(1)`) or a 3-member cluster (`Cluster(3)`) on loopback,
each member on its own free ports with its data directory under a temp
directory; or members in network namespaces on one bridge (`Hub`), for
partitions; optionally TLS with client certificates, or extra etcd flags. Election timing is lowered (heartbeat 50 ms, election 500 ms) so a
lost leader is replaced in well under a second and the minimum lease TTL is
1 s. Members can be killed (kill -9), restarted, and the leader found.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request

import pytest

from srrs.ctrl import launch
from tests.conftest import need
from tests.pair.netns import require_netns, sh

HEARTBEAT_MS = 50
ELECTION_MS = 500


def wait_until(fn, timeout=10.0):
    """fn()'s first truthy value within timeout, else its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = fn()
        if v:
            return v
        time.sleep(0.1)
    return fn()


def free_port() -> int:
    return launch.free_port()   # below the ephemeral range (see there)


def _post(url: str, body: dict, timeout: float = 0.5, context=None) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
        return json.loads(r.read())


def make_tls(d: str) -> dict:
    """A CA, a server certificate for 127.0.0.1 and a client certificate
    (openssl): {"ca", "server_cert", "server_key", "client_cert", "client_key"} paths."""
    def ossl(*a):
        subprocess.run([need("openssl"), *a], check=True, capture_output=True, cwd=d)
    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=srrs-test-ca")
    # etcd's JSON gateway dials etcd's own gRPC port with the server
    # certificate: with --client-cert-auth it must be good for clients too
    for who, ext in (("server", "subjectAltName=IP:127.0.0.1\n"
                                "extendedKeyUsage=serverAuth,clientAuth\n"),
                     ("client", "extendedKeyUsage=clientAuth\n")):
        with open(os.path.join(d, f"{who}.ext"), "w") as f:
            f.write(ext)
        ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN=srrs-{who}")
        ossl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{who}.crt", "-days", "2", "-extfile", f"{who}.ext")
    j = lambda f: os.path.join(d, f)   # noqa: E731
    return {"ca": j("ca.crt"), "server_cert": j("server.crt"), "server_key": j("server.key"),
            "client_cert": j("client.crt"), "client_key": j("client.key")}


class Member:
    """netns: run in that network namespace (reached only from namespaces on
    the same network: status and health go through etcdctl run there)."""

    def __init__(self, name: str, data_dir: str, host: str = "127.0.0.1", tls=None,
                 netns: str = ""):
        self.name, self.data_dir, self.host = name, data_dir, host
        self.tls, self.netns = tls, netns
        self.client_port, self.peer_port = free_port(), free_port()
        self.proc = None
        self.log = os.path.join(os.path.dirname(data_dir), f"{name}.log")

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    def start(self, initial_cluster: str, state: str = "new", extra=()) -> None:
        argv = [need("etcd"), "--name", self.name, "--data-dir", self.data_dir,
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", self.peer_url,
                "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", initial_cluster, "--initial-cluster-state", state,
                "--initial-cluster-token", "srrs-test",
                "--heartbeat-interval", str(HEARTBEAT_MS),
                "--election-timeout", str(ELECTION_MS),
                "--logger", "zap", "--log-level", "error", *extra]
        if self.tls:   # clients must show a certificate of our CA
            argv += ["--cert-file", self.tls["server_cert"], "--key-file", self.tls["server_key"],
                     "--trusted-ca-file", self.tls["ca"], "--client-cert-auth"]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]   # execs etcd: same pid
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: no goodbye to the other members."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def _ssl(self):
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.tls["ca"])
        ctx.load_cert_chain(self.tls["client_cert"], self.tls["client_key"])
        return ctx

    def status(self) -> dict:
        """This member's view: its id and the leader's id (raises when it does not answer)."""
        if self.netns:
            st = json.loads(self.etcdctl("endpoint", "status", "-w", "json"))[0]["Status"]
            return {"id": int(st["header"]["member_id"]), "leader": int(st.get("leader", 0))}
        h = _post(self.url + "/v3/maintenance/status", {}, context=self._ssl())
        return {"id": int(h["header"]["member_id"]), "leader": int(h.get("leader", 0))}

    def healthy(self) -> bool:
        if self.netns:
            try:
                self.etcdctl("endpoint", "health")
                return True
            except RuntimeError:
                return False
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=0.5,
                                        context=self._ssl()) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def etcdctl(self, *args: str, netns: str = "") -> str:
        """etcdctl against this member, run in its namespace (or in netns)."""
        ns = netns or self.netns
        pre = ["ip", "netns", "exec", ns] if ns else []
        r = subprocess.run([*pre, need("etcdctl"), "--endpoints", self.url,
                            "--command-timeout=1s", *args],
                           capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"})
        if r.returncode:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout


class Cluster:
    """n members on loopback, started by start() (or `with Cluster(n) as c`);
    extra: more etcd flags for every member; tls: clients over https with a
    client certificate (self.tls: the files); hosts: [(netns, address)] of
    each member instead (see Hub)."""

    def __init__(self, n: int = 1, extra=(), tls: bool = False, hosts=()):
        self.extra = tuple(extra)
        self.dir = tempfile.mkdtemp(prefix="srrs-etcd-")
        self.tls = make_tls(self.dir) if tls else None
        hosts = list(hosts) or [("", "127.0.0.1")] * n
        self.members = [Member(f"m{i}", os.path.join(self.dir, f"m{i}"), host, self.tls, ns)
                        for i, (ns, host) in enumerate(hosts)]

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> list:
        return [m.url for m in self.members]

    def start(self, timeout: float = 15.0) -> "Cluster":
        for m in self.members:
            m.start(self.initial_cluster, extra=self.extra)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 15.0) -> None:
        """Every running member answers and sees a leader."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            up = [m for m in self.members if m.alive()]
            if up and all(m.healthy() for m in up):
                return
            for m in self.members:
                if m.proc is not None and not m.alive() and m.proc.returncode not in (-9,):
                    raise RuntimeError(f"etcd {m.name} exited {m.proc.returncode}: "
                                       f"{open(m.log).read()[-2000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"etcd not healthy within {timeout} s")

    def leader(self, timeout: float = 10.0) -> Member:
        """The member that leads now (waits for an election to settle)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.members:
                if not m.alive():
                    continue
                try:
                    st = m.status()
                except (OSError, ValueError, KeyError):
                    continue
                if st["leader"] and st["leader"] == st["id"]:
                    return m
            time.sleep(0.05)
        raise TimeoutError("no etcd leader")

    def kill_leader(self) -> Member:
        m = self.leader()
        m.kill()
        return m

    def restart(self, m: Member) -> None:
        m.start(self.initial_cluster, state="existing", extra=self.extra)

    def stop(self) -> None:
        for m in self.members:
            m.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Hub:
    """Network namespaces on one bridge (in a namespace of its own, so the
    host's network is never touched): hosts[key] = (netns, address) on
    10.79.0.0/24. cut(key) sets the host's port on the bridge down (both
    directions), heal(key) brings it back."""

    def __init__(self, keys, tag: str = "srrs-ce"):
        self.tag = tag
        self.hub = f"{tag}hub"
        self.hosts = {k: (f"{tag}{i}", f"10.79.0.{i + 1}") for i, k in enumerate(keys)}

    def _ns(self, ns, *a):
        r = subprocess.run(["ip", "netns", "exec", ns, *a], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"{ns}: {' '.join(a)}: {r.stderr.strip()}")

    def _port(self, key) -> str:
        return f"p{list(self.hosts).index(key)}"

    def cut(self, key) -> None:
        self._ns(self.hub, "ip", "link", "set", self._port(key), "down")

    def heal(self, key) -> None:
        self._ns(self.hub, "ip", "link", "set", self._port(key), "up")

    def delete(self) -> None:
        for ns in [self.hub] + [ns for ns, _ in self.hosts.values()]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def __enter__(self) -> "Hub":
        require_netns()
        self.delete()
        try:
            sh("ip", "netns", "add", self.hub)
            self._ns(self.hub, "ip", "link", "add", "br0", "type", "bridge")
            self._ns(self.hub, "ip", "link", "set", "br0", "up")
            for k, (ns, addr) in self.hosts.items():
                port = self._port(k)
                sh("ip", "netns", "add", ns)
                self._ns(ns, "ip", "link", "set", "lo", "up")
                sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name",
                   port, "netns", self.hub)
                self._ns(self.hub, "ip", "link", "set", port, "master", "br0")
                self._ns(self.hub, "ip", "link", "set", port, "up")
                self._ns(ns, "ip", "addr", "add", f"{addr}/24", "dev", "eth0")
                self._ns(ns, "ip", "link", "set", "eth0", "up")
        except Exception:
            self.delete()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.delete()


@pytest.fixture
def etcd1():
    with Cluster(1) as c:
        yield c


@pytest.fixture
def etcd3():
    with Cluster(3) as c:
        yield c
