"""The pair with real processes over loopback: witness + controllers a and b,
file-backed replicas, load through the mirror bdev (bench_bdev in the
controller: C, no Python per I/O), kill -9, restart, resync, byte-identical
replicas."""

import time

import pytest

from tests.engine import no_uring

from .procs import Ctl, Witness, alloc_ports, pair_conf, same_files


@pytest.fixture
def pair(tmp_path, request):
    """param "no-uring": b runs under a seccomp filter refusing io_uring, so its
    replica file takes native AIO (the worker threads where the file refuses
    O_DIRECT); a keeps io_uring."""
    ports = alloc_ports()
    w = Witness(tmp_path, f"tcp://127.0.0.1:{ports['witness']}", max_lease=2.0)
    ctls = {}
    b_prefix = no_uring.PREFIX if getattr(request, "param", "") == "no-uring" else ()
    try:
        for n, p in (("a", "b"), ("b", "a")):
            ctls[n] = Ctl(tmp_path, n, pair_conf(n, p, ports, tmp_path),
                          prefix=b_prefix if n == "b" else ())
        yield w, ctls["a"], ctls["b"], tmp_path
    finally:
        for c in ctls.values():
            c.kill9()
        w.kill9()


def quiesce_and_compare(a, b, tmp):
    a.wait_state("PAIRED")
    b.wait_state("PAIRED")
    assert a.stop() == 0 and b.stop() == 0
    return same_files(tmp / "a-v0.img", tmp / "b-v0.img")


def test_paired_writes_from_both_sides_identical(pair):
    w, a, b, tmp = pair
    a.wait_state("PAIRED")
    b.wait_state("PAIRED")
    import threading
    res = {}
    ts = [threading.Thread(target=lambda c=c: res.__setitem__(c.name, c.bench(
        rw="randwrite", bs=4096, bs_max=262144, time_s=3, seed=ord(c.name))))
        for c in (a, b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for n, j in res.items():
        assert j["state"] == "done" and j["result"]["errors"] == 0, (n, j["result"])
        assert j["result"]["ios"] > 200
    st = a.pair()
    assert st["volumes"][0]["forwarded"] > 0 and st["link"]["crc_errors"] == 0
    assert quiesce_and_compare(a, b, tmp) == []


@pytest.mark.parametrize("pair", ["uring", pytest.param("no-uring", marks=pytest.mark.side)],
                         indirect=True)
def test_kill9_solo_restart_resync_identical(pair, request):
    w, a, b, tmp = pair
    a.wait_state("PAIRED")
    b.wait_state("PAIRED")
    want = {"a": "uring", "b": no_uring.fallback_engine(tmp)
            if request.node.callspec.params["pair"] == "no-uring" else "uring"}
    for c in (a, b):
        assert [x["engine"] for x in c.rpc("bdev_list") if x["module"] == "file"] == [want[c.name]]
    j = a.bench(rw="randrw", time_s=1, verify=True)
    assert j["result"]["errors"] == 0 and j["result"]["verify_errors"] == 0
    t0 = time.time()
    b.kill9()
    st = a.wait_state("SOLO", timeout=5)
    pause = time.time() - t0
    assert pause < 5.0 and st["lease_left_s"] > 0
    # the survivor serves alone, recording dirty stripes
    j = a.bench(rw="randwrite", time_s=1)
    assert j["result"]["errors"] == 0 and j["result"]["ios"] > 100
    assert a.pair()["volumes"][0]["dirty_stripes"] > 0
    b.restart()
    a.wait_state("PAIRED", timeout=20)
    st = b.wait_state("PAIRED", timeout=20)
    assert st["data_gen"] == a.pair()["data_gen"]
    vol = a.pair()["volumes"][0]
    assert vol["dirty_stripes"] == 0 and vol["resync_progress"] == 1.0
    assert vol["resync_mibps"] > 0 and vol["resync_eta_s"] is None   # done: no ETA
    assert quiesce_and_compare(a, b, tmp) == []


def test_io_through_both_during_resync(pair):
    w, a, b, tmp = pair
    a.wait_state("PAIRED")
    b.kill9()
    a.wait_state("SOLO", timeout=5)
    j = a.bench(rw="randwrite", bs=65536, time_s=1)
    assert j["result"]["errors"] == 0
    b.restart()
    # load on both as soon as b is up; resync runs under it
    import threading
    res = {}
    b.wait_state("RESYNC", timeout=10) if b.pair()["state"] != "PAIRED" else None
    ts = [threading.Thread(target=lambda c=c: res.__setitem__(c.name, c.bench(
        rw="randrw", time_s=2, seed=ord(c.name)))) for c in (a, b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for n, j in res.items():
        assert j["result"]["errors"] == 0, (n, j)
    assert quiesce_and_compare(a, b, tmp) == []


def test_witness_down_paired_unchanged_then_death_fences(pair):
    w, a, b, tmp = pair
    a.wait_state("PAIRED")
    b.wait_state("PAIRED")
    w.kill9()
    time.sleep(2)
    assert a.pair()["state"] == "PAIRED" and b.pair()["state"] == "PAIRED"
    j = a.bench(rw="randwrite", time_s=1)
    assert j["result"]["errors"] == 0
    b.kill9()
    st = a.wait_state("FENCED", timeout=5)
    time.sleep(2)
    st = a.pair()
    assert st["state"] == "FENCED" and not st["witness_ok"]
    j = a.bench(rw="randwrite", time_s=0.5)
    assert j["result"]["ios"] == 0 and j["result"]["errors"] > 0   # nothing acknowledged alone


def test_pair_status_cli_and_rpc_errors(pair):
    w, a, b, tmp = pair
    a.wait_state("PAIRED")
    from .procs import Proc
    p = Proc(["-s", a.sock, "pair", "status"], str(tmp / "cli.log"))
    assert p.proc.wait(20) == 0
    assert "PAIRED" in p.output()
    from srrs.ctrl.rpc import RpcError
    with pytest.raises(RpcError):
        a.rpc("pair_resync", {"source": "nobody"})
    # the running state writes back a [pair] that `srrs start` accepts
    out = a.rpc("save_config", {"path": str(tmp / "saved.toml")})["path"]
    from srrs.ctrl import config
    saved = config.load(out).sections["pair"]
    assert saved == config.load(str(a.conf)).sections["pair"]


def test_volume_mismatch_never_pairs(tmp_path):
    ports = alloc_ports()
    w = Witness(tmp_path, f"tcp://127.0.0.1:{ports['witness']}", max_lease=2.0)
    ctls = []
    try:
        ctls.append(Ctl(tmp_path, "a", pair_conf("a", "b", ports, tmp_path, size="64MiB")))
        ctls.append(Ctl(tmp_path, "b", pair_conf("b", "a", ports, tmp_path, size="32MiB")))
        time.sleep(4)
        sa, sb = ctls[0].pair(), ctls[1].pair()
        assert "PAIRED" not in (sa["state"], sb["state"])
        assert sorted((sa["state"], sb["state"])) == ["FENCED", "SOLO"]
        assert "not pairing" in sa["config_mismatch"]
    finally:
        for c in ctls:
            c.kill9()
        w.kill9()


def test_survivor_load_has_no_errors_through_kill9(pair):
    """kill -9 of the peer under load: the survivor's writes wait (mirror pending,
    ANA change) for the lease and complete; none fails."""
    import threading

    w, a, b, tmp = pair
    a.wait_state("PAIRED")
    b.wait_state("PAIRED")
    time.sleep(2.5)   # past the witness's start-up quarantine (it refuses leases then)
    res = {}
    t = threading.Thread(target=lambda: res.setdefault("j", a.bench(rw="randwrite", time_s=4)))
    t.start()
    time.sleep(1)
    b.kill9()
    t.join(30)
    r = res["j"]["result"]
    assert r["errors"] == 0 and r["ios"] > 0, r
    assert a.pair()["state"] == "SOLO"
    assert r["lat_us"]["max"] < 5e6          # the longest pause a write saw, < 5 s


@pytest.mark.parametrize("replica", ["file", "pool"])
def test_replaced_replica_gets_a_full_resync(tmp_path, replica):
    """b's replica comes back empty (its disk replaced: the image file or the
    pool's fragment is gone, so the file or the volume is created anew) while
    its state file still names the pair's generation: b must take a full copy
    from a, not pair as in sync with zeroes where a has data."""
    import os

    from .procs import replica_chunks

    ports = alloc_ports()
    w = Witness(tmp_path, f"tcp://127.0.0.1:{ports['witness']}", max_lease=2.0)
    size = 32 << 20
    ctls = {}
    try:
        for n, p in (("a", "b"), ("b", "a")):
            ctls[n] = Ctl(tmp_path, n, pair_conf(n, p, ports, tmp_path, size=size,
                                                 replica=replica))
        a, b = ctls["a"], ctls["b"]
        a.wait_state("PAIRED")
        b.wait_state("PAIRED")
        j = a.bench(rw="write", bs=1 << 20, qd=4, time_s=0, max_ios=32, verify=True)  # all
        assert j["result"]["errors"] == 0 and j["result"]["ios"] == 32
        assert b.stop() == 0
        os.unlink(tmp_path / (f"b-{replica}.img" if replica == "pool" else "b-v0.img"))
        b.restart()
        st = b.wait_state("PAIRED")
        a.wait_state("PAIRED")
        assert "new replica (v0:" in b.output()
        assert st["volumes"][0]["resync_bytes"] == size
        assert a.stop() == 0 and b.stop() == 0
    finally:
        for c in ctls.values():
            c.kill9()
        w.kill9()
    ra, rb = (list(replica_chunks(tmp_path, n, size, replica)) for n in "ab")
    assert ra == rb and ra[0][1] != bytes(1 << 20)
