"""A Linux host (kernel nvme-tcp in a QEMU guest) takes one subsystem's paths
through four cluster members at once, as during a volume move (two pairs'
controllers), when the members' controller-ID ranges are the ones they claimed
in etcd (ctrl/cluster_cntlid.py; docs/architecture.md, Cluster, Controller-ID
ranges). A fifth controller set by hand to the first one's range is refused by
the host ("Duplicate cntlid"): what the default ranges did between pairs."""

import pytest

from srrs.ctrl import launch
from tests.guest.harness import HOST_FROM_GUEST, Guest, require_guest

pytestmark = pytest.mark.side

NQN = "nqn.2026-11.io.srrs:vol:cntlid-guest"


def _conf(tmp_path, etcd_endpoints, name: str, **nvmf_kw):
    conf = launch.config(launch.controller(name, tmp_path / f"{name}.sock"),
                         bdevs=[launch.bdev("v0", "malloc", size="16MiB")])
    # one namespace identity on every controller (derived from the NQN and the
    # bdev name): the host joins the paths into one multipath device
    conf["nvmf"] = launch.nvmf(["127.0.0.1:0"], [launch.subsystem(NQN, ["v0"])], **nvmf_kw)
    conf["cluster"] = {"etcd": etcd_endpoints, "name": name, "prefix": "/srrs/cg/",
                       "lease_s": 3}
    return conf


def _port(ctl) -> int:
    return ctl.rpc("status")["nvmf"]["listeners"][0]["port"]


def test_host_takes_four_members_paths_of_one_subsystem(tmp_path, etcd1):
    require_guest()
    ctls = []
    try:
        for n in ("a", "b", "c", "d"):
            ctls.append(launch.Controller(tmp_path / f"{n}.toml",
                                          conf=_conf(tmp_path, etcd1.endpoints, n)))
        ids = [c.rpc("status")["nvmf"]["cntlids"] for c in ctls]
        assert len({i["min"] for i in ids}) == 4 and all(
            i["from"].startswith("cluster range") for i in ids), ids
        with Guest(smp=1, kernel_args=("nvme_core.multipath=Y",)) as g:
            dev = g.connect_paths(NQN, [(HOST_FROM_GUEST, _port(c)) for c in ctls])
            got = sorted(int(x) for x in g.check(
                "cat /sys/class/nvme-subsystem/nvme-subsys*/nvme*/cntlid").split())
            assert len(got) == 4 and all(any(i["min"] <= x <= i["max"] for i in ids)
                                         for x in got), (got, ids)
            assert g.check(f"blockdev --getsize64 {dev}").strip() == str(16 << 20)
            # the negative: a controller set by hand to a's range hands out an
            # ID the host has for this subsystem, and the host refuses the path
            x = launch.Controller(tmp_path / "x.toml", conf=_conf(
                tmp_path, etcd1.endpoints, "x", cntlid_min=ids[0]["min"],
                cntlid_max=ids[0]["max"]))
            ctls.append(x)
            rc, out = g.run(f"nvme connect -t tcp -a {HOST_FROM_GUEST} -s {_port(x)} -n {NQN}",
                            timeout=60)
            assert rc != 0, out
            assert "Duplicate cntlid" in g.dmesg(), g.dmesg()[-2000:]
            assert len(g.check("cat /sys/class/nvme-subsystem/nvme-subsys*/nvme*/cntlid")
                       .split()) == 4
    finally:
        for c in ctls:
            c.stop()
