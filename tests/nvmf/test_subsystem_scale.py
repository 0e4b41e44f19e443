"""A controller holds one subsystem per cluster volume of its pair
(docs/architecture.md, Cluster): 1,023 subsystems fit, the next is refused
with the limit in the message, and the discovery log lists every one at
every listener, past the 1,024 entries a fixed log buffer used to hold."""

import pytest

from srrs.ffi.binding import SrrsError
from srrs.nvmf.target import NvmfTarget, discover

HOST = "nqn.2014-08.org.nvmexpress:uuid:subsystem-scale"


def test_1023_subsystems_and_a_2046_entry_discovery_log(core):
    t = NvmfTarget(core)
    try:
        ports = [t.add_listener("127.0.0.1", 0), t.add_listener("127.0.0.2", 0)]
        names = [f"nqn.2026-11.io.srrs:vol:{i:04d}" for i in range(1023)]
        for n in names:
            t.add_subsystem(n, allow_any_host=True, persist=False)
        with pytest.raises(SrrsError, match="at most 1023 subsystems"):
            t.add_subsystem("nqn.2026-11.io.srrs:vol:one-too-many", allow_any_host=True)
        log = discover("127.0.0.1", ports[0], hostnqn=HOST, max_entries=4096)
        got = [(e["subnqn"], e["trsvcid"]) for e in log if e["subtype"] == "nvme"]
        assert len(got) == 2 * 1023
        assert set(got) == {(n, str(p)) for n in names for p in ports}
    finally:
        t.close()
