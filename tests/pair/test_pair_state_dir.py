"""The pair's state_dir: keyed by the pair's identity by default (two pairs on
one host whose controllers share a name do not share state), and locked by
the controller using it (a second controller given it is refused)."""

import os

import pytest

from srrs.ctrl.pair_config import parse

from .procs import Ctl, alloc_ports, pair_conf


def _conf(coord, mirror):
    return parse({"self": "a", "peer": "b", "coord_bind": f"tcp://127.0.0.1:{coord}",
                  "peer_coord": f"tcp://127.0.0.1:{coord + 1}",
                  "mirror_listen": f"127.0.0.1:{mirror}",
                  "peer_mirror": f"127.0.0.1:{mirror + 1}", "witness": "tcp://127.0.0.1:9", "insecure": True})


def test_default_state_dir_is_keyed_by_pair_identity():
    one, two = _conf(5601, 4521), _conf(5701, 4621)   # two pairs, same controller names
    assert one.state_dir != two.state_dir
    assert one.state_dir.startswith("/var/tmp/srrs-pair-a-")
    assert _conf(5601, 4521).state_dir == one.state_dir  # stable across restarts


def test_second_controller_on_the_same_state_dir_is_refused(tmp_path):
    state = tmp_path / "shared-state"
    p1, p2 = alloc_ports(), alloc_ports()
    conf1 = pair_conf("a", "b", p1, tmp_path)
    conf1["pair"]["state_dir"] = str(state)
    first = Ctl(tmp_path, "a", conf1)
    try:
        d2 = tmp_path / "other"
        d2.mkdir()
        conf2 = pair_conf("a", "b", p2, d2)
        conf2["pair"]["state_dir"] = str(state)
        with pytest.raises(RuntimeError, match=rf"state_dir {state} is in use by another "
                                               rf"controller \(pid {first.proc.pid}\)"):
            Ctl(d2, "a", conf2)
        assert first.proc.poll() is None and first.pair()["state"] in ("STARTING", "FENCED")
        assert "lock" in os.listdir(state)
    finally:
        first.kill9()
    # the lock goes with its process: the directory can be used again
    again = Ctl(d2, "a", conf2)
    again.kill9()
