"""A controller with one pool exported over NVMe/TCP, and raw NVMe reads and
writes (tests/nvmf/wire) that give the exact status of each command: the
fragment-health and RAM-fragment tests use them."""

from __future__ import annotations

import json
import os
import time

from srrs.ctrl import launch
from tests.ctrl.helpers import Controller, srrs
from tests.nvmf import wire

MiB = 1 << 20
NQN = "nqn.2026-12.io.srrs:frag"
SC_OK = 0
SC_READ_ERROR = 0x281   # media error: Unrecovered Read Error
SC_WRITE_FAULT = 0x280  # media error: Write Fault
free_port = launch.free_port


def write_conf(tmp_path, port: int, fragments: list, vol_size: str, metrics_port: int = 0) -> str:
    """c.toml: controller "fh" (c.sock), pool p0 of fragments (launch.fragment()
    tables), volume v0 exported as NQN on 127.0.0.1:port, [metrics] if metrics_port."""
    conf = launch.config(
        launch.controller("fh", tmp_path / "c.sock", reactors=2, poll_mode=None),
        pools=[launch.pool("p0", fragments, cluster_size="1MiB")],
        volumes=[launch.volume("v0", "p0", vol_size)],
        nvmf=launch.nvmf([f"127.0.0.1:{port}"],
                         [launch.subsystem(NQN, ["v0"], serial="SRRSFRAG01")]),
        metrics=launch.metrics(f"127.0.0.1:{metrics_port}") if metrics_port else None)
    return launch.write_config(tmp_path / "c.toml", conf)


def start(conf: str) -> Controller:
    return Controller(conf, conf.replace("c.toml", "c.sock"))


class Host:
    """One NVMe/TCP I/O queue to namespace 1 of NQN."""

    def __init__(self, port: int):
        deadline = time.time() + 10
        while True:
            try:
                self.adm, cntlid = wire.admin_session("127.0.0.1", port, NQN)
                break
            except (OSError, AssertionError, wire.Closed):
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        self.io = wire.io_session("127.0.0.1", port, NQN, cntlid)

    def close(self):
        self.io.close()
        self.adm.close()

    def write(self, off: int, data: bytes) -> int:
        lba = off // 4096
        s = wire.sqe(0x01, self.io.next_cid(), nsid=1, cdw10=lba & 0xFFFFFFFF, cdw11=lba >> 32,
                     cdw12=len(data) // 4096 - 1, sgl_len=len(data))
        return self.io.write_r2t(s, data)[0]

    def read(self, off: int, length: int):
        lba = off // 4096
        s = wire.sqe(0x02, self.io.next_cid(), nsid=1, cdw10=lba & 0xFFFFFFFF, cdw11=lba >> 32,
                     cdw12=length // 4096 - 1, sgl_len=length)
        st, _, _, data = self.io.cmd(s, read_len=length)
        return st & 0x7FF, data  # status without DNR/More


def pattern(seq: int, cluster: int) -> bytes:
    return (f"{seq:08x}:{cluster:08x}:".encode() * (MiB // 18 + 1))[:MiB]


def pool(c: Controller) -> dict:
    return c.rpc("pool_list")[0]


def console_pool(sock: str) -> dict:
    out = srrs("console", "-s", sock, "--once", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_for(fn, what: str, timeout: float = 10.0):
    deadline = time.time() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def shm_files(pool_uuid: str) -> list:
    d = os.environ["SRRS_SHM_DIR"]
    u = pool_uuid.replace("-", "")
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.startswith(f"srrs-{u}-"))
