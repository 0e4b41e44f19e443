"""mirror_allow on a real network (issue 11 item 1): controllers a and b and a
third host X in network namespaces. b accepts mirror connections from a's
address only; X (where the witness runs, so it reaches b) is refused before
any handshake, even with a well-formed HELLO, and the pair is not disturbed.

  ns srrsauthA 10.78.1.1 --- 10.78.1.2 ns srrsauthB
  ns srrsauthA 10.78.2.1 --- 10.78.2.2 ns srrsauthX (witness, stranger)
  ns srrsauthB 10.78.3.1 --- 10.78.3.2 ns srrsauthX
"""

import subprocess
import sys
import time

import pytest

from .netns import Topology
from .procs import Ctl, Witness, make_keys, pair_conf
from .test_pair_auth import hello

NS = {"A": "srrsauthA", "B": "srrsauthB", "X": "srrsauthX"}
LINKS = {
    "ab": ("A", "pab-a", "10.78.1.1", "B", "pab-b", "10.78.1.2"),
    "ax": ("A", "pax-a", "10.78.2.1", "X", "pax-x", "10.78.2.2"),
    "bx": ("B", "pbx-b", "10.78.3.1", "X", "pbx-x", "10.78.3.2"),
}
TOPO = Topology(NS, LINKS)
PORTS = {"coord_a": 5611, "coord_b": 5612, "mirror_a": 4531, "mirror_b": 4532, "witness": 5610}

STRANGER = """
import socket, sys
s = socket.create_connection(("10.78.1.2", 4532), timeout=5)
s.sendall(bytes.fromhex(sys.argv[1]))
s.settimeout(5)
got = b""
try:
    while True:
        k = s.recv(65536)
        if not k:
            break
        got += k
except (socket.timeout, ConnectionResetError):
    pass
print(len(got))
"""


@pytest.fixture
def net():
    with TOPO.up():
        TOPO.nsx("X", "ip", "route", "add", "10.78.1.0/24", "via", "10.78.3.1")
        yield


def test_mirror_allow_refuses_other_addresses(net, tmp_path):
    keys = make_keys(tmp_path)
    w = Witness(tmp_path, f"tcp://0.0.0.0:{PORTS['witness']}", max_lease=2.0, keys=keys,
                prefix=["ip", "netns", "exec", NS["X"]])
    ctls = []
    try:
        for n, o, host, peer, wit in (("a", "b", "10.78.1.1", "10.78.1.2", "10.78.2.2"),
                                      ("b", "a", "10.78.1.2", "10.78.1.1", "10.78.3.2")):
            conf = pair_conf(n, o, PORTS, tmp_path, host=host, peer_host=peer,
                             witness_host=wit, keys=keys,
                             extra={"mirror_allow": [peer]})
            ctls.append(Ctl(tmp_path, n, conf, prefix=["ip", "netns", "exec", NS[n.upper()]]))
        a, b = ctls
        a.wait_state("PAIRED", 20)
        b.wait_state("PAIRED", 20)
        for _ in range(3):
            r = subprocess.run(["ip", "netns", "exec", NS["X"], sys.executable, "-c", STRANGER,
                                hello(64).hex()], capture_output=True, text=True, timeout=30)
            assert r.returncode == 0 and r.stdout.strip() == "0", r   # nothing received
        time.sleep(0.3)
        sb = b.pair()
        assert sb["state"] == "PAIRED" and sb["link"]["up"] and sb["link"]["connects"] == 1
        assert sb["link"]["auth_failures"] >= 3
        assert "source address not allowed" in b.output()
        j = a.bench(time_s=1, qd=8)["result"]
        assert j["errors"] == 0 and j["ios"] > 0
    finally:
        for c in ctls:
            c.kill9()
        w.kill9()
