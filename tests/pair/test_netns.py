"""The netns tests' precondition: missing root or `ip netns` skips them only
outside CI; under CI=true it fails the run (as a missing guest does)."""

import pytest

from tests.cluster.etcd import Hub
from tests.pair import netns


@pytest.mark.parametrize("why", ["not root", "no ip"])
def test_no_netns_fails_under_ci_skips_outside(monkeypatch, why):
    if why == "not root":
        monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    else:
        monkeypatch.setattr(netns.shutil, "which", lambda tool: None)
    topo = netns.Topology({"a": "srrs-never-made"}, {})
    for ci, outcome in (("true", pytest.fail.Exception), ("", pytest.skip.Exception)):
        monkeypatch.setenv("CI", ci)
        with pytest.raises(outcome, match="needs root and ip netns"):
            with topo.up():
                pass
        with pytest.raises(outcome, match="needs root and ip netns"):
            with Hub(["a"], tag="srrsnever"):
                pass
