"""The C initiator against the C target: verified I/O over several queues."""

import os

import pytest

from srrs.ffi.binding import BenchOpts, SrrsError
from srrs.nvmf.target import NvmfHost, bench_nvmf, discover

from .conftest import NQN, wait_for

TIME = float(os.environ.get("SRRS_NVMF_VERIFY_TIME", "5"))


@pytest.mark.side
def test_verify_qd128_4_queues(core, target):
    with NvmfHost("127.0.0.1", target.port, NQN, queues=4, qsize=128) as h:
        assert h.info["queues"] == 4
        assert h.info["serial"] == "SRRSTEST"
        vmap = h.verify_map()
        # Fill every block once (sequential, large writes through R2T), then mixed.
        fill = BenchOpts(rw="write", bs=128 * 1024, qd=16, time_s=0,
                         max_ios=h.size // (128 * 1024))
        r = h.bench(core, fill, reactor=1, vmap=vmap)
        assert r["errors"] == 0 and r["ios"] == fill.max_ios
        opts = BenchOpts(rw="randrw", bs=4096, bs_max=64 * 1024, qd=128, time_s=TIME,
                         rwmix_read=50, seed=7)
        r = h.bench(core, opts, reactor=1, vmap=vmap)
        assert r["errors"] == 0, r
        assert r["verify_errors"] == 0, r
        assert r["verified_blocks"] > 1000
        assert r["ios"] > 1000
        vmap.close()
    assert wait_for(lambda: target.list_qpairs() == [])  # the host disconnected


def test_queues_spread_over_reactors(core, target):
    with NvmfHost("127.0.0.1", target.port, NQN, queues=4) as h:
        ctrls = target.list_controllers()
        assert len(ctrls) == 1
        c = ctrls[0]
        assert c["cntlid"] == h.info["cntlid"] and 100 <= c["cntlid"] <= 199
        assert c["io_queues"] == 4
        assert {q["reactor"] for q in c["queues"]} == {0, 1}
        h.bench(core, BenchOpts(rw="randwrite", qd=8, time_s=0.2), reactor=0)
        c = target.list_controllers()[0]
        assert sum(q["writes"] for q in c["queues"]) > 0


@pytest.mark.parametrize("hd,dd", [(True, False), (False, True), (True, True)])
def test_digests(core, target, hd, dd):
    with NvmfHost("127.0.0.1", target.port, NQN, queues=2, header_digest=hd,
                  data_digest=dd) as h:
        qp = [q for q in target.list_qpairs() if q["qid"]]
        assert all(q["hdgst"] == hd and q["ddgst"] == dd for q in qp)
        vmap = h.verify_map()
        for rw in ("randwrite", "randread"):
            r = h.bench(core, BenchOpts(rw=rw, bs=4096, bs_max=64 * 1024, qd=32, time_s=0.5,
                                        span=8 << 20), reactor=1, vmap=vmap)
            assert r["errors"] == 0 and r["verify_errors"] == 0
        vmap.close()


def test_large_io_mdts(core, target):
    with NvmfHost("127.0.0.1", target.port, NQN, queues=1) as h:
        assert h.info["mdts_bytes"] == 1 << 20
        vmap = h.verify_map()
        for rw in ("write", "read"):
            r = h.bench(core, BenchOpts(rw=rw, bs=1 << 20, qd=4, time_s=0, max_ios=64),
                        reactor=1, vmap=vmap)
            assert r["errors"] == 0 and r["verify_errors"] == 0 and r["ios"] == 64
        vmap.close()


def test_512b_namespace(core, target):
    nqn = "nqn.2026-11.io.srrs:small"
    target.add_subsystem(nqn, allow_any_host=True)
    target.add_namespace(nqn, "m1")
    r = bench_nvmf(core, "127.0.0.1", target.port, nqn,
                   BenchOpts(rw="randread", bs=512, bs_max=8192, qd=16, time_s=0.3),
                   queues=2, verify=True)
    assert r["errors"] == 0 and r["verified"]


def test_discovery(target):
    log = discover("127.0.0.1", target.port)
    assert [e["subnqn"] for e in log] == [NQN]
    e = log[0]
    assert e["trtype"] == "tcp" and e["adrfam"] == "ipv4" and e["subtype"] == "nvme"
    assert e["traddr"] == "127.0.0.1" and e["trsvcid"] == str(target.port)


def test_host_allow_list(core, target):
    nqn = "nqn.2026-11.io.srrs:private"
    good = "nqn.2026-11.io.srrs:host-good"
    target.add_subsystem(nqn)
    target.add_namespace(nqn, "m1")
    target.add_host(nqn, good)
    with pytest.raises(SrrsError) as ei:
        NvmfHost("127.0.0.1", target.port, nqn, hostnqn="nqn.2026-11.io.srrs:host-bad")
    assert "refused" in str(ei.value)
    with NvmfHost("127.0.0.1", target.port, nqn, hostnqn=good) as h:
        assert h.size == 16 << 20
    # discovery shows only what the host may use
    assert nqn not in [e["subnqn"] for e in discover("127.0.0.1", target.port)]
    assert nqn in [e["subnqn"] for e in discover("127.0.0.1", target.port, hostnqn=good)]
    target.remove_host(nqn, good)
    with pytest.raises(SrrsError):
        NvmfHost("127.0.0.1", target.port, nqn, hostnqn=good)


def test_unknown_subsystem_refused(target):
    with pytest.raises(SrrsError):
        NvmfHost("127.0.0.1", target.port, "nqn.2026-11.io.srrs:nope")


def test_remove_subsystem_with_live_host(core, target):
    h = NvmfHost("127.0.0.1", target.port, NQN, queues=2)
    try:
        target.remove_subsystem(NQN)
        assert wait_for(lambda: target.list_controllers() == [])
        r = h.bench(core, BenchOpts(rw="randread", qd=4, time_s=0.2), reactor=0)
        assert r["errors"] > 0 or r["ios"] == 0
    except SrrsError:
        pass
    finally:
        h.close()
    core.bdev_delete("m0")  # the namespace let go of its bdev


def test_ipv6_listener(core, target):
    try:
        port = target.add_listener("::1", 0)
    except SrrsError:
        pytest.skip("no IPv6 loopback")
    with NvmfHost("::1", port, NQN) as h:
        assert h.size == 64 << 20
    target.remove_listener("::1", port)


def test_discovery_wildcard_listener(target):
    port = target.add_listener("0.0.0.0", 0)
    log = discover("127.0.0.1", port)
    assert {e["traddr"] for e in log} == {"127.0.0.1"}  # never "0.0.0.0"
    assert str(port) in {e["trsvcid"] for e in log}
    target.remove_listener("0.0.0.0", port)


def test_core_stop_with_live_host():
    """Stopping the reactors closes the target's connections (stop hooks), in-flight
    I/O drains, and the target can still be closed afterwards."""
    import threading

    from srrs.ffi.binding import Core
    from srrs.nvmf.target import NvmfTarget

    core = Core(reactors=2)
    load = Core(reactors=1)
    try:
        core.bdev_create_malloc("s0", 16 << 20, 4096)
        t = NvmfTarget(core)
        port = t.add_listener("127.0.0.1", 0)
        t.add_subsystem(NQN, allow_any_host=True)
        t.add_namespace(NQN, "s0")
        h = NvmfHost("127.0.0.1", port, NQN, queues=2)
        res = {}
        th = threading.Thread(target=lambda: res.update(
            h.bench(load, BenchOpts(rw="randrw", qd=32, time_s=3), reactor=0)))
        th.start()
        assert wait_for(lambda: sum(q["cmds"] for q in t.list_qpairs()) > 1000, 5)
        core.stop()
        st = t.stats()
        assert st["conns"] == 0 and st["ctrlrs"] == 0
        th.join(10)
        assert res["ios"] > 0 and res["errors"] > 0  # the host saw its queues go away
        t.close()
        h.close()
    finally:
        core.close()
        load.close()


def test_namespace_identity_unique(target):
    with pytest.raises(SrrsError):
        target.add_namespace(NQN, "m0")  # the same bdev twice: one identity
    nsid = target.add_namespace(NQN, "m1", uuid="11111111-2222-4333-8444-555555555555")
    with pytest.raises(SrrsError):
        target.add_namespace(NQN, "m1", nsid=9)
    target.remove_namespace(NQN, nsid)


def test_counted_job_ends_when_the_target_goes_away(core, target):
    h = NvmfHost("127.0.0.1", target.port, NQN, queues=2)
    try:
        target.remove_subsystem(NQN)
        r = h.bench(core, BenchOpts(rw="randwrite", qd=8, time_s=0, max_ios=500), reactor=0)
        assert r["errors"] > 0 and r["ios"] + r["errors"] >= 500
    finally:
        h.close()
