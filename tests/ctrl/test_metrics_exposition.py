"""The Prometheus exposition of a real controller with every section (a pool
with a tenant and a volume exported over NVMe/TCP and vhost-user, a pair
whose peer is away (etcd is its witness), a finished load job, a cluster on a real
etcd with a pair and a tenant in its catalog), parsed with the client
library's parser: every family is one of ctrl/metrics.py TABLE, typed and
named by its unit, labelled only by identity, and each declared family is
there."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from srrs.ctrl import etcd, metrics
from srrs.ctrl.cluster_catalog import Catalog
from tests.cluster.etcd import Cluster

from .helpers import Controller

NQN = "nqn.2026-11.io.srrs:metrics"
IDENTITY = {"controller", "reactor", "bdev", "export", "kind", "volume", "job", "pool",
            "fragment", "tenant", "peer", "subsystem", "ana_group", "device", "member", "pair"}
SPLITS = {"op": {"read", "write", "other"}, "quantile": {"0.5", "0.99", "0.999"}}
UNIT_SUFFIXES = ("_seconds", "_bytes", "_ratio")


def _ports(n: int) -> list:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def exposition(tmp_path_factory):
    with Cluster(1) as e:
        cat = Catalog(etcd.Client(e.endpoints), "/srrs/mx")
        cat.put_pair("mx+my", nodes=("mx", "my"), capacity=1 << 30)
        cat.put_tenant("ct", quota=1 << 30)
        yield from _exposition(tmp_path_factory, e)


def _exposition(tmp_path_factory, e):
    d = tmp_path_factory.mktemp("metrics")
    nvmf, coord, peer_coord, mirror, peer_mirror = _ports(5)
    sock = f"{d}/c.sock"
    conf = d / "c.toml"
    conf.write_text(f"""
[controller]
name = "mx"
rpc_socket = "{sock}"
reactors = 2

[[bdev]]
name = "pv0"
type = "file"
path = "{d}/pv0.img"
size = "16MiB"

[[pool]]
name = "p0"
cluster_size = "1MiB"
fragments = [ {{ path = "{d}/frag0.img", size = "64MiB" }} ]

[[tenant]]
name = "t0"
quota = "32MiB"

[[volume]]
name = "v1"
pool = "p0"
size = "16MiB"
tenant = "t0"

[nvmf]
listen = ["127.0.0.1:{nvmf}"]

[[nvmf.subsystem]]
nqn = "{NQN}"
namespaces = ["v1"]
allow_hosts = ["*"]

[[vhost]]
name = "vh0"
socket = "{d}/vh0.sock"
bdev = "v1"

[pair]
self = "mx"
peer = "my"
coord_bind = "tcp://127.0.0.1:{coord}"
peer_coord = "tcp://127.0.0.1:{peer_coord}"
mirror_listen = "127.0.0.1:{mirror}"
peer_mirror = "127.0.0.1:{peer_mirror}"
volumes = ["pv0"]
state_dir = "{d}/state"
insecure = true

[metrics]
listen = "127.0.0.1:0"

[cluster]
etcd = {json.dumps(e.endpoints)}
name = "mx"
prefix = "/srrs/mx"
""")
    c = Controller(str(conf), sock)
    try:
        deadline = time.monotonic() + 20
        while not c.rpc("status")["cluster"]["catalog"].get("pairs"):
            assert time.monotonic() < deadline, "the cluster catalog was not read"
            time.sleep(0.05)
        jid = c.rpc("bench_bdev_start", {"bdev": "v1", "time_s": 0.3, "qd": 4, "bs": 4096,
                                         "rw": "randrw"})
        deadline = time.monotonic() + 20
        while c.rpc("bench_bdev_results")[jid]["state"] == "running":
            assert time.monotonic() < deadline, "the load job did not finish"
            time.sleep(0.05)
        listen = c.rpc("status")["metrics"]["listen"]
        with urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as r:
            text = r.read().decode()
        yield text, {f.name: f for f in text_string_to_metric_families(text)}
    finally:
        c.kill()


def _declared(f: metrics.Family) -> str:
    """The parser's family name: a counter's without _total."""
    return f.name[:-len("_total")] if f.type == metrics.COUNTER else f.name


def test_every_declared_family_is_exposed_and_nothing_else(exposition):
    _, fams = exposition
    ours = {n for n in fams if n.startswith("srrs_")}
    assert ours == {_declared(f) for f in metrics.TABLE}
    assert all(fams[n].samples for n in ours), [n for n in ours if not fams[n].samples]


def test_families_have_help_type_and_unit(exposition):
    _, fams = exposition
    for f in metrics.TABLE:
        fam = fams[_declared(f)]
        assert fam.type == f.type and fam.documentation == f.help, f.name
        assert fam.documentation and "generic" not in fam.documentation, f.name
        if fam.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in fam.samples), f.name
        for suffix in UNIT_SUFFIXES:   # the unit is in the name, or there is none
            assert fam.name.endswith(suffix) == (f.unit == suffix[1:]), f.name
        # no address as a figure, no unit but the base one
        assert not set(fam.name.split("_")) & {"port", "listen", "addr", "us", "ms", "mib",
                                                 "mibps", "pct", "percent", "iops"}, f.name


def test_labels_are_identity(exposition):
    _, fams = exposition
    for name, fam in fams.items():
        if not name.startswith("srrs_"):
            continue
        states = set()
        for s in fam.samples:
            keys = set(s.labels) - {"le"} if fam.type == "histogram" else set(s.labels)
            extra = keys - IDENTITY
            if name.endswith("_info"):
                continue                       # an info family's labels are its properties
            if fam.samples and extra & {"state", "mode"}:
                (key,) = extra
                states.add(s.labels[key])
                assert s.value in (0, 1), (name, s)
                continue
            for k in extra:
                assert k in SPLITS and s.labels[k] in SPLITS[k], (name, s.labels)
            assert not any(":" in v and k != "export" and k != "subsystem"
                           for k, v in s.labels.items()), (name, s.labels)  # no address
        if states:  # a state set: every state, one of them current
            assert sum(s.value for s in fam.samples) == len(fam.samples) / len(states), name


def test_the_standard_process_collector(exposition):
    text, fams = exposition
    for name in ("process_cpu_seconds", "process_resident_memory_bytes",
                 "process_start_time_seconds", "process_open_fds"):
        assert name in fams and fams[name].samples[0].value > 0, name
    assert "python_info" in fams
    assert "srrs_process" not in text


def test_operator_figures(exposition):
    """What an operator watches, with the values this set-up must have."""
    _, fams = exposition

    def value(name, **labels):
        for s in (s for f in fams.values() for s in f.samples if s.name == name):
            if all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
        raise KeyError((name, labels))

    c = {"controller": "mx"}
    assert value("srrs_pool_capacity_bytes", pool="p0", **c) >= 32 << 20
    assert value("srrs_pool_used_bytes", pool="p0", **c) > 0        # the load job wrote
    assert value("srrs_volume_size_bytes", pool="p0", volume="v1", **c) == 16 << 20
    assert value("srrs_tenant_quota_bytes", tenant="t0", **c) == 32 << 20
    assert value("srrs_pair_state", peer="my", state="STARTING", **c) == 1
    assert value("srrs_pair_peer_alive", peer="my", **c) == 0
    assert value("srrs_mirror_mode", volume="pv0", mode="fenced", **c) == 1
    assert value("srrs_nvmf_subsystem_namespaces", subsystem=NQN, **c) == 1
    assert value("srrs_vhost_connected", device="vh0", **c) == 0
    n = value("srrs_bdev_read_ops_total", bdev="v1", **c)
    assert n > 0 and value("srrs_export_ops_total", kind="nvmf", volume="v1", op="read", **c) == n
    assert value("srrs_load_job_latency_seconds_count", bdev="v1", **c) > 0
    assert 0 < value("srrs_load_job_latency_seconds", bdev="v1", quantile="0.5", **c) < 1
    assert value("srrs_reactor_poll_mode", reactor="0", mode="adaptive", **c) == 1
