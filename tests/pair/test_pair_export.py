"""A paired volume is exported under its own name: with `[pair] volumes = ["v0"]`
and `namespaces = ["v0"]` (the shape of the documented example) the export
serves the mirror, so writes through either controller land on both replicas;
the raw replica becomes internal ("v0.replica") and exporting it, or any bdev
that is a pair replica, is refused (config and RPC)."""

import os

import pytest

from srrs.ctrl.rpc import RpcError
from tests.nvmf import wire

from .procs import Ctl, Witness, free_ports, nvmf_conf, pair_conf, replica_chunks

NQN = "nqn.2026-11.io.srrs:export"


def _nvmf(port, lo, ns=("v0",)):
    return nvmf_conf(port, lo, NQN, "SRRSEXPORT01", ns)


@pytest.fixture(params=["file", "pool"])
def pair(tmp_path, request):
    p = free_ports(7)
    ports = {"coord_a": p[0], "coord_b": p[1], "mirror_a": p[2], "mirror_b": p[3],
             "witness": p[4], "nvmf_a": p[5], "nvmf_b": p[6]}
    w = Witness(tmp_path, f"tcp://127.0.0.1:{ports['witness']}", max_lease=2.0)
    ctls = {}
    try:
        for n, peer, lo in (("a", "b", 1), ("b", "a", 1001)):
            ctls[n] = Ctl(tmp_path, n, pair_conf(n, peer, ports, tmp_path, size="32MiB",
                                                 extra=_nvmf(ports["nvmf_" + n], lo),
                                                 replica=request.param))
        ctls["a"].wait_state("PAIRED", 20)
        ctls["b"].wait_state("PAIRED", 20)
        yield ctls["a"], ctls["b"], ports, tmp_path, request.param
    finally:
        for c in ctls.values():
            c.kill9()
        w.kill9()


def _io(port):
    adm, cntlid = wire.admin_session("127.0.0.1", port, NQN)
    return adm, wire.io_session("127.0.0.1", port, NQN, cntlid)


def _write(io, lba, data):
    s = wire.sqe(0x01, io.next_cid(), nsid=1, cdw10=lba, cdw12=len(data) // 4096 - 1,
                 sgl_len=len(data), sgl_type=0x01)
    return io.cmd(s, data)[0]


def _read(io, lba, n):
    s = wire.sqe(0x02, io.next_cid(), nsid=1, cdw10=lba, cdw12=n // 4096 - 1, sgl_len=n)
    st, _, _, d = io.cmd(s, read_len=n)
    return st, d


def test_export_by_volume_name_writes_both_replicas(pair):
    a, b, ports, tmp, kind = pair
    adm_a, io_a = _io(ports["nvmf_a"])
    adm_b, io_b = _io(ports["nvmf_b"])
    try:
        written = {}
        for i, lba in enumerate(range(0, 8192, 97)):    # both stripe owners, 32 MiB span
            d = os.urandom(4096)
            assert _write(io_a if i % 2 else io_b, lba, d) == 0
            written[lba] = d
        for lba, d in written.items():                 # read back through the other side
            assert _read(io_b, lba, 4096) == (0, d)
            assert _read(io_a, lba, 4096) == (0, d)
    finally:
        for c in (io_a, adm_a, io_b, adm_b):
            c.close()
    names = {x["name"]: x["module"] for x in a.rpc("bdev_list")}
    assert names.get("v0") == "mirror" and "v0.replica" in names
    st = a.pair()
    assert st["state"] == "PAIRED" and all(v["dirty_stripes"] == 0 for v in st["volumes"])
    assert a.stop() == 0 and b.stop() == 0
    # what is on the disks: the replicas are identical
    ra, rb = (replica_chunks(tmp, n, 32 << 20, kind) for n in "ab")
    assert [off for (off, x), (_, y) in zip(ra, rb) if x != y] == []


def test_raw_replica_cannot_be_exported(pair):
    a, b, ports, tmp, kind = pair
    with pytest.raises(RpcError, match="internal to v0"):
        a.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "bdev": "v0.replica"})
    with pytest.raises(RpcError, match="internal to v0"):
        a.rpc("vhost_create", {"name": "vh-raw", "socket": str(tmp / "vh-raw.sock"),
                               "bdev": "v0.replica"})
    assert not os.path.exists(tmp / "vh-raw.sock")
    with pytest.raises(RpcError, match="paired volume"):
        a.rpc("bdev_delete", {"name": "v0"})
    if kind == "pool":   # the volume is in use by the pair, its mirror untouched
        with pytest.raises(RpcError, match="v0.replica is in use"):
            a.rpc("volume_delete", {"name": "v0"})
        assert {x["name"] for x in a.rpc("bdev_list")} >= {"v0", "v0.replica"}
    assert [n["nsid"] for s in a.rpc("nvmf_get_subsystems") if s["nqn"] == NQN
            for n in s["namespaces"]] == [1]


def test_table_form_and_refused_replica_in_config(tmp_path):
    ports = dict(zip(("coord_a", "coord_b", "mirror_a", "mirror_b", "witness", "nvmf"),
                     free_ports(6)))
    conf = pair_conf("a", "b", ports, tmp_path, size="16MiB",
                     extra=_nvmf(ports["nvmf"], 1))
    conf["pair"]["volumes"] = [{"replica": "v0", "name": "pv0"}]
    with pytest.raises(RuntimeError, match="bdev v0 is internal to pv0"):
        Ctl(tmp_path, "a", conf)                        # namespaces = ["v0"]: the replica
    conf["nvmf"]["subsystem"][0]["namespaces"] = ["pv0"]
    c = Ctl(tmp_path, "a", conf)
    try:
        names = {x["name"]: x["module"] for x in c.rpc("bdev_list")}
        assert names == {"pv0": "mirror", "v0": "file"}
        with pytest.raises(RpcError, match="internal to pv0"):
            c.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "bdev": "v0"})
    finally:
        c.kill9()


def test_reads_ride_through_a_silent_peer(pair):
    """b stops dead with its sockets open (SIGSTOP: as a kill -9'd controller
    whose threads still finish a disk wait): a's reads wait for a's mode
    instead of failing after one read lease, so a single-path host sees no
    error; a goes SOLO and serves them (docs/architecture.md, Witness and
    leases). Before: a read failed with a path error after L (500 ms)."""
    import signal
    import time

    a, b, ports, tmp, kind = pair
    if kind != "file":
        pytest.skip("one replica kind is enough")
    adm, io = _io(ports["nvmf_a"])
    try:
        data = {lba: os.urandom(4096) for lba in (0, 256, 300, 1000)}   # both owners
        for lba, d in data.items():
            assert _write(io, lba, d) == 0
        os.kill(b.pid, signal.SIGSTOP)
        try:
            results = []
            t0 = time.monotonic()
            while time.monotonic() - t0 < 4.0:
                for lba, d in data.items():
                    st, got = _read(io, lba, 4096)
                    results.append((round(time.monotonic() - t0, 2), lba, st, got == d))
            bad = [r for r in results if r[2] != 0 or not r[3]]
            assert not bad, bad[:10]
            assert a.pair()["state"] == "SOLO"
            assert a.pair()["link"]["lease_reads_failed"] == 0
            assert max(r[0] for r in results) > 1.5     # reads ran through the failover
        finally:
            os.kill(b.pid, signal.SIGCONT)
        b.wait_state("PAIRED", 30)
    finally:
        for c in (io, adm):
            c.close()
