"""No wrong data with a success status, whatever happens under the pool (issue 10).

One real controller serves a thin pool volume over NVMe/TCP to a host that
keeps a model of what every block may hold (tests/nvmf/wire.py, queue depth 1):
after an acknowledged write only the new content; after a failed one the old
or the new. Every read that succeeds must return a content the model allows;
a read that fails with an error status is allowed. Between checks, in sequence:

  * the fragment's filesystem (a loop-mounted ext4) fills up, then is freed:
    writes fail while it is full and work again once it is not;
  * the fragment file is truncated under the running controller;
  * a second controller tries to open the same fragment (and the running one
    is asked to open it again as another pool): both are refused;
  * the RPC socket is flooded with garbage: the server keeps answering.

The same with a RAM fragment in the pool and kill -9 of the controller: after
the restart, every block acknowledged before the kill reads back as written
or fails with an error status; reads of RAM clusters truly gone (their shared
memory removed, as by a host reboot) fail, never return zeroes.
"""

from __future__ import annotations

import glob
import json
import os
import random
import socket
import struct
import subprocess
import threading
import time

import pytest

from srrs.ctrl import launch
from srrs.ctrl.rpc import RpcError
from tests.ctrl.helpers import SRRS, Controller
from tests.nvmf import wire
from tests.pool.fragwire import NQN, free_port, write_conf

KiB, MiB = 1 << 10, 1 << 20
BS = 4096
CLUSTER = MiB
BLOCKS_PER_CLUSTER = CLUSTER // BS


def content(block: int, seq: int) -> bytes:
    head = struct.pack("<8sQQ", b"E2EDATA1", block, seq)
    return (head * (BS // len(head) + 1))[:BS]


class Host:
    """A host with one admin and one I/O queue and a model of every block it wrote."""

    def __init__(self, port: int):
        self.port = port
        self.allowed: dict[int, set] = {}
        self.seq = 0
        self.adm = self.io = None
        self.wrong: list = []

    def open(self, deadline: float = 30.0) -> None:
        end = time.time() + deadline
        while True:
            try:
                self.adm, cntlid = wire.admin_session("127.0.0.1", self.port, NQN)
                self.io = wire.io_session("127.0.0.1", self.port, NQN, cntlid, sqsize=31)
                return
            except (OSError, AssertionError, wire.Closed):
                self.close()
                if time.time() > end:
                    raise
                time.sleep(0.2)

    def close(self) -> None:
        for c in (self.io, self.adm):
            if c is not None:
                c.close()
        self.adm = self.io = None

    def write(self, block: int) -> int:
        self.seq += 1
        data = content(block, self.seq)
        s = wire.sqe(0x01, self.io.next_cid(), nsid=1, cdw10=block, sgl_len=BS, sgl_type=0x01)
        st = self.io.cmd(s, data)[0]
        prev = self.allowed.get(block, {bytes(BS)})
        self.allowed[block] = {data} if st == 0 else prev | {data}
        return st

    def write_cluster(self, c: int) -> int:
        """One write of a whole cluster (R2T): the way a host rewrites lost data."""
        self.seq += 1
        b0 = c * BLOCKS_PER_CLUSTER
        blocks = [content(b0 + k, self.seq) for k in range(BLOCKS_PER_CLUSTER)]
        s = wire.sqe(0x01, self.io.next_cid(), nsid=1, cdw10=b0, cdw12=BLOCKS_PER_CLUSTER - 1,
                     sgl_len=CLUSTER)
        st = self.io.write_r2t(s, b"".join(blocks))[0]
        for k, data in enumerate(blocks):
            prev = self.allowed.get(b0 + k, {bytes(BS)})
            self.allowed[b0 + k] = {data} if st == 0 else prev | {data}
        return st

    def read(self, block: int):
        s = wire.sqe(0x02, self.io.next_cid(), nsid=1, cdw10=block, sgl_len=BS)
        return self.io.cmd(s, read_len=BS)[0::3]

    def check(self, what: str) -> tuple:
        """Reads every block written so far: (good reads, failed reads); wrong data fails."""
        good = failed = 0
        for block, ok in sorted(self.allowed.items()):
            st, data = self.read(block)
            if st:
                failed += 1
            elif data in ok:
                good += 1
            else:
                got = "zeroes" if data == bytes(BS) else repr(data[:24])
                self.wrong.append(f"{what}: block {block} read {got} with success")
        assert not self.wrong, "\n".join(self.wrong[:20])
        return good, failed

    def write_spread(self, clusters, per_cluster: int = 2) -> tuple:
        """Writes a few blocks in each of the given clusters: (acknowledged, failed)."""
        ok = bad = 0
        for c in clusters:
            for k in range(per_cluster):
                st = self.write(c * BLOCKS_PER_CLUSTER + k * 37 % BLOCKS_PER_CLUSTER)
                ok, bad = (ok + 1, bad) if st == 0 else (ok, bad + 1)
        return ok, bad


@pytest.fixture
def ext4(tmp_path):
    """A 96 MiB ext4 filesystem loop-mounted at tmp_path/mnt (we are root in CI)."""
    img, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(96 * MiB)
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(img)], check=True,
                       capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot loop-mount ext4 under CI: {e}")
        pytest.skip(f"cannot loop-mount ext4 here: {e}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def _fill(mnt) -> str:
    """Fills the filesystem to the last block with one file; returns its path."""
    path = os.path.join(mnt, "filler")
    with open(path, "wb") as f:
        chunk = b"\xa5" * MiB
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
        try:
            while True:
                f.write(b"\xa5" * 4096)
                f.flush()
        except OSError:
            pass
    return path


def _flood_rpc(sock: str) -> None:
    """Garbage on the RPC socket from several clients at once."""
    payloads = [
        b"[" * 10_000 + b"]" * 10_000 + b"\n",
        b'{"jsonrpc":"2.0","id":1,"method":"status","params":{"x":' + b"9" * 5000 + b"}}\n",
        b'{"jsonrpc":"2.0","id":2,"method":"sta',                      # then EOF
        bytes(random.Random(7).randrange(256) for _ in range(4096)),
        b"\x00" * 65536,
    ]

    def one(p: bytes) -> None:
        for _ in range(20):
            try:
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(2)
                s.connect(sock)
                s.sendall(p)
                s.shutdown(socket.SHUT_WR)
                try:
                    s.recv(65536)
                except OSError:
                    pass
                s.close()
                return
            except (BlockingIOError, ConnectionRefusedError):
                time.sleep(0.01)
            except OSError:
                return

    threads = [threading.Thread(target=one, args=(payloads[i % len(payloads)],))
               for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)


def _second_controller(tmp_path, frag_path: str) -> subprocess.CompletedProcess:
    sock2 = str(tmp_path / "c2.sock")
    conf2 = launch.write_config(tmp_path / "c2.toml", launch.config(
        launch.controller("intruder", sock2, reactors=None, poll_mode=None),
        pools=[launch.pool("p0", [launch.fragment(frag_path)], cluster_size="1MiB")]))
    return subprocess.run(SRRS + ["start", "-c", str(conf2)], capture_output=True, text=True,
                          timeout=60)


def test_file_fragment_events_never_wrong_data(tmp_path, ext4):
    sock, port = str(tmp_path / "c.sock"), free_port()
    frag = os.path.join(ext4, "frag0.img")
    conf = write_conf(tmp_path, port, [launch.fragment(frag, "80MiB")], "64MiB")
    ctl = Controller(conf, sock)
    host = Host(port)
    try:
        host.open()
        # Baseline: some data in the first clusters, all acknowledged.
        ok, bad = host.write_spread(range(0, 8))
        assert bad == 0 and ok == 16
        assert host.check("baseline") == (16, 0)

        # 1. Filesystem full: writes to new clusters may fail, never wrong data.
        filler = _fill(ext4)
        _ok, bad_full = host.write_spread(range(8, 60), per_cluster=4)
        host.check("filesystem full")
        assert bad_full > 0, "every write succeeded on a full filesystem: the test filled nothing"
        os.unlink(filler)
        os.sync()
        # ... freed: everything works again, nothing leaked.
        ok, bad = host.write_spread(range(8, 60), per_cluster=4)
        assert bad == 0, f"{bad} writes failed after the filesystem was freed"
        good, failed = host.check("filesystem freed")
        assert failed == 0
        st = ctl.rpc("status")
        assert st is not None

        # 2. The fragment truncated under the running controller.
        os.truncate(frag, 16 * MiB)
        time.sleep(0.5)
        host.write_spread(range(0, 64, 3))
        good, failed = host.check("fragment truncated")
        assert failed > 0, "reads past the truncated fragment's end all succeeded"

        # 3. A second owner of the same fragment: another process, then another pool.
        r = _second_controller(tmp_path, frag)
        assert r.returncode != 0, f"a second controller opened the fragment:\n{r.stdout}{r.stderr}"
        with pytest.raises(RpcError) as e:
            ctl.rpc("pool_create", {"name": "px", "fragments": [{"path": frag}]})
        assert "p0" in str(e.value), f"the refusal does not name the owner: {e.value}"
        host.check("second owner refused")

        # 4. Garbage on the RPC socket: the server keeps answering, the data is intact.
        _flood_rpc(sock)
        t0 = time.time()
        assert ctl.rpc("status") is not None
        assert time.time() - t0 < 5
        host.check("after the RPC flood")
        assert ctl.proc.poll() is None, "the controller died"
    finally:
        host.close()
        ctl.kill()


def _shm_files(since: float) -> list:
    """The shared memory behind RAM fragments (tests/conftest.py sets SRRS_SHM_DIR)."""
    d = os.environ.get("SRRS_SHM_DIR", "/dev/shm")
    return [p for p in glob.glob(os.path.join(d, "*")) if "srrs" in os.path.basename(p).lower()
            and os.stat(p).st_mtime >= since - 1]


def test_ram_fragment_kill9_never_wrong_data(tmp_path):
    sock, port = str(tmp_path / "c.sock"), free_port()
    frag = tmp_path / "frag0.img"
    t_start = time.time()
    conf = write_conf(tmp_path, port,
                      [launch.fragment(frag, "32MiB"), launch.fragment(ram="96MiB")], "96MiB")
    ctl = Controller(conf, sock)
    host = Host(port)
    try:
        host.open()
        ok, bad = host.write_spread(range(0, 90))
        assert bad == 0
        host.check("before kill -9")
        shm = _shm_files(t_start)
        host.close()
        ctl.kill()                                     # SIGKILL

        # Restart: what lived in RAM is still there (shared memory outlives the process).
        ctl = Controller(conf, sock)
        host.open()
        good, failed = host.check("after kill -9 and restart")
        assert failed == 0, f"{failed} acknowledged blocks unreadable after a process crash"

        # A host reboot loses the RAM: reads of those clusters fail until rewritten.
        host.close()
        ctl.stop()
        assert shm, "no shared-memory backing for the RAM fragment in /dev/shm"
        for p in shm:
            os.unlink(p)
        ctl = Controller(conf, sock)
        host.open()
        good, failed = host.check("RAM lost")
        assert failed > 0, "no read failed although the RAM fragment's contents are gone"
        alerts = json.dumps(ctl.rpc("status"))
        assert "lost" in alerts.lower()
        # Rewriting a lost cluster whole makes it readable again.
        lost = sorted({b // BLOCKS_PER_CLUSTER for b in host.allowed if host.read(b)[0]})
        for c in lost[:4]:
            assert host.write_cluster(c) == 0
        host.check("rewritten")
        for c in lost[:4]:
            assert all(host.read(c * BLOCKS_PER_CLUSTER + k)[0] == 0 for k in (0, 37, 255))
    finally:
        host.close()
        ctl.kill()
