"""Real etcd processes for the cluster tests (docs/architecture.md, Cluster).

One member (`Cluster(1)`) or a 3-member cluster (`Cluster(3)`) on loopback,
each member on its own free ports with its data directory under a temp
directory. Election timing is lowered (heartbeat 50 ms, election 500 ms) so a
lost leader is replaced in well under a second and the minimum lease TTL is
1 s. Members can be killed (kill -9), restarted, and the leader found.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

from tests.conftest import need

HEARTBEAT_MS = 50
ELECTION_MS = 500


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float = 0.5) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


class Member:
    def __init__(self, name: str, data_dir: str, host: str = "127.0.0.1"):
        self.name, self.data_dir, self.host = name, data_dir, host
        self.client_port, self.peer_port = free_port(), free_port()
        self.proc = None
        self.log = os.path.join(os.path.dirname(data_dir), f"{name}.log")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

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

    def status(self) -> dict:
        """This member's view: its id and the leader's id (raises when it does not answer)."""
        h = _post(self.url + "/v3/maintenance/status", {})
        return {"id": int(h["header"]["member_id"]), "leader": int(h.get("leader", 0))}

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=0.5) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def etcdctl(self, *args: str) -> str:
        r = subprocess.run([need("etcdctl"), "--endpoints", self.url, *args],
                           capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"})
        if r.returncode:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout


class Cluster:
    """n members on loopback, started by start() (or `with Cluster(n) as c`);
    extra: more etcd flags for every member."""

    def __init__(self, n: int = 1, extra=()):
        self.extra = tuple(extra)
        self.dir = tempfile.mkdtemp(prefix="srrs-etcd-")
        self.members = [Member(f"m{i}", os.path.join(self.dir, f"m{i}")) for i in range(n)]

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


@pytest.fixture
def etcd1():
    with Cluster(1) as c:
        yield c


@pytest.fixture
def etcd3():
    with Cluster(3) as c:
        yield c
