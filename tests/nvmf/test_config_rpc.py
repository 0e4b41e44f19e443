"""[nvmf] config parsing and the RPC method table."""

import types

import pytest

from srrs.ffi.binding import SrrsError
from srrs.nvmf import config as C
from srrs.nvmf import rpc
from srrs.nvmf.target import NvmfHost, NvmfTarget

GOOD = {
    "listen": ["127.0.0.1:0", "[::1]:4420"],
    "cntlid_min": 1,
    "cntlid_max": 32767,
    "max_io_queues": 4,
    "header_digest": False,
    "subsystem": [{
        "nqn": "nqn.2026-11.io.srrs:v0",
        "serial": "SRRS0001",
        "namespaces": ["m0", {"bdev": "m1", "nsid": 5, "uuid": "6a0e6d1c-5d27-4b8b-9f7e-3f8c1a2b3c4d",
                              "ana_group": 2}],
        "allow_hosts": ["*"],
        "ana_groups": [{"id": 2, "state": "non_optimized"}],
    }],
}


def test_parse_good():
    cfg = C.parse(GOOD)
    assert cfg.listen[0] == C.NvmfListen("127.0.0.1", 0)
    assert cfg.listen[1] == C.NvmfListen("::1", 4420) and str(cfg.listen[1]) == "[::1]:4420"
    assert cfg.max_io_queues == 4 and not cfg.header_digest and cfg.data_digest
    s = cfg.subsystems[0]
    assert s.namespaces[0] == C.NvmfNamespace("m0", 1)
    assert s.namespaces[1].nsid == 5 and s.namespaces[1].ana_group == 2
    assert s.allow_any_host and s.ana_groups == (C.NvmfAnaGroup(2, "non_optimized"),)
    assert C.parse(C.to_dict(cfg)) == cfg
    assert C.parse({}) == C.NvmfConfig()


@pytest.mark.parametrize("mutate,key", [
    (lambda d: d.update(listen=["localhost:4420"]), "nvmf.listen[0]"),
    (lambda d: d.update(listen=["1.2.3.4"]), "nvmf.listen[0]"),
    (lambda d: d.update(cntlid_min=10, cntlid_max=5), "nvmf.cntlid_max"),
    (lambda d: d.update(cntlid_max=70000), "nvmf.cntlid_max"),
    (lambda d: d.update(max_io_queues=0), "nvmf.max_io_queues"),
    (lambda d: d.update(data_digest="yes"), "nvmf.data_digest"),
    (lambda d: d.update(bogus=1), "nvmf.bogus"),
    (lambda d: d["subsystem"][0].update(nqn="v0"), "nvmf.subsystem[0].nqn"),
    (lambda d: d["subsystem"][0].update(serial="X" * 21), "nvmf.subsystem[0].serial"),
    (lambda d: d["subsystem"][0].update(namespaces=[{"nsid": 1}]),
     "nvmf.subsystem[0].namespaces[0].bdev"),
    (lambda d: d["subsystem"][0].update(namespaces=["a", {"bdev": "b", "nsid": 1}]),
     "nvmf.subsystem[0].namespaces[1].nsid"),
    (lambda d: d["subsystem"][0].update(namespaces=[{"bdev": "b", "uuid": "zz"}]),
     "nvmf.subsystem[0].namespaces[0].uuid"),
    (lambda d: d["subsystem"][0].update(allow_hosts=["not-an-nqn"]),
     "nvmf.subsystem[0].allow_hosts[0]"),
    (lambda d: d["subsystem"][0].update(ana_groups=[{"id": 1, "state": "weird"}]),
     "nvmf.subsystem[0].ana_groups[0].state"),
    (lambda d: d["subsystem"].append(dict(d["subsystem"][0])), "nvmf.subsystem[1].nqn"),
])
def test_parse_bad(mutate, key):
    import copy
    d = copy.deepcopy(GOOD)
    mutate(d)
    with pytest.raises(ValueError) as ei:
        C.parse(d)
    assert str(ei.value).startswith(key + ":"), str(ei.value)


def test_from_config_and_back(core):
    core.bdev_create_malloc("m0", 8 << 20, 4096)
    core.bdev_create_malloc("m1", 8 << 20, 4096)
    d = dict(GOOD, listen=["127.0.0.1:0"])
    t = NvmfTarget.from_config(core, C.parse(d))
    try:
        port = t.listeners()[0]["port"]
        with NvmfHost("127.0.0.1", port, "nqn.2026-11.io.srrs:v0") as h:
            assert h.info["serial"] == "SRRS0001"
        back = t.to_config()
        assert back.subsystems[0].namespaces[1].uuid == GOOD["subsystem"][0]["namespaces"][1]["uuid"]
        assert back.subsystems[0].ana_groups[-1] == C.NvmfAnaGroup(2, "non_optimized")
        assert back.listen[0].port == port
        assert C.parse(C.to_dict(back)) == back
    finally:
        t.close()


def test_rpc_methods(core, target):
    ctl = types.SimpleNamespace(core=core, nvmf=target)
    nqn = "nqn.2026-11.io.srrs:rpc"
    assert rpc.METHODS["nvmf_subsystem_create"](ctl, {"nqn": nqn, "serial": "RPC1"}) == {"nqn": nqn}
    assert rpc.METHODS["nvmf_subsystem_add_ns"](ctl, {"nqn": nqn, "bdev": "m1"}) == {"nsid": 1}
    rpc.METHODS["nvmf_subsystem_add_host"](ctl, {"nqn": nqn, "host": "nqn.2026-11.io.srrs:h1"})
    rpc.METHODS["nvmf_set_ana_state"](ctl, {"nqn": nqn, "ana_group": 1, "state": "non_optimized"})
    subs = {s["nqn"]: s for s in rpc.METHODS["nvmf_get_subsystems"](ctl, {})}
    assert subs[nqn]["hosts"] == ["nqn.2026-11.io.srrs:h1"]
    assert subs[nqn]["ana_groups"] == [{"id": 1, "state": "non_optimized"}]
    r = rpc.METHODS["nvmf_listener_add"](ctl, {"address": "127.0.0.1:0"})
    assert r["port"] > 0
    assert any(x["port"] == r["port"] for x in rpc.METHODS["nvmf_get_listeners"](ctl, {}))
    log = rpc.METHODS["nvmf_discover"](ctl, {"addr": "127.0.0.1", "port": r["port"],
                                              "hostnqn": "nqn.2026-11.io.srrs:h1"})
    assert nqn in [e["subnqn"] for e in log]
    with NvmfHost("127.0.0.1", r["port"], nqn, hostnqn="nqn.2026-11.io.srrs:h1", queues=2):
        ctrls = rpc.METHODS["nvmf_get_controllers"](ctl, {"nqn": nqn})
        assert len(ctrls) == 1 and ctrls[0]["io_queues"] == 2
        assert len(rpc.METHODS["nvmf_get_qpairs"](ctl, {})) == 3
    assert rpc.METHODS["nvmf_get_stats"](ctl, {})["accepted"] >= 4
    rpc.METHODS["nvmf_listener_remove"](ctl, {"address": f"127.0.0.1:{r['port']}"})
    rpc.METHODS["nvmf_subsystem_remove_ns"](ctl, {"nqn": nqn, "nsid": 1})
    rpc.METHODS["nvmf_subsystem_delete"](ctl, {"nqn": nqn})
    with pytest.raises(ValueError):
        rpc.METHODS["nvmf_subsystem_create"](ctl, {})
    with pytest.raises(SrrsError):
        rpc.METHODS["nvmf_subsystem_delete"](ctl, {"nqn": nqn})
    assert {m.name for m in rpc.METHODS if m.when == "runtime"} == {
        "nvmf_get_controllers", "nvmf_get_qpairs", "nvmf_get_stats", "nvmf_discover"}


def test_service_and_bench_cli(core, capsys):
    import json

    from srrs.nvmf import bench, service

    core.bdev_create_malloc("m0", 8 << 20, 4096)
    core.bdev_create_malloc("m1", 8 << 20, 4096)
    ctl = types.SimpleNamespace(core=core)
    svc = service.start(ctl, C.parse(dict(GOOD, listen=["127.0.0.1:0"])))
    try:
        st = svc.status()
        port = st["listeners"][0]["port"]
        assert st["subsystems"][0]["nqn"] == "nqn.2026-11.io.srrs:v0"
        assert C.parse(svc.to_toml_dict()).subsystems == svc.to_config().subsystems

        def aggregate(results):
            return dict(results[0])

        args = types.SimpleNamespace(target=f"127.0.0.1:{port}", nqn="nqn.2026-11.io.srrs:v0",
                                     rw="randrw", bs=4096, qd=16, time=0.3, queues=2,
                                     verify=True, cpu=None, rwmix_read=50, json=True)
        rc = bench.run(args, lambda out, as_json: print(json.dumps(out)), aggregate)
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert rc == 0 and out["verified"] and out["errors"] == 0 and out["iops"] > 0
    finally:
        svc.close()
    empty = service.start(ctl, None)
    assert empty.to_toml_dict() == {}
    empty.close()
