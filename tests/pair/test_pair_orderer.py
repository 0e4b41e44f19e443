"""[pair] orderer: one controller orders every write (docs/architecture.md,
Writes in a pair); checked when the config is read, the same node index on
both controllers."""

import pytest

from srrs.ctrl.config import SchemaError
from srrs.ctrl.pair_config import parse


def _conf(me, peer, **kw):
    ports = {"a": (5601, 4521), "b": (5602, 4522)}
    return parse({"self": me, "peer": peer, "coord_bind": f"tcp://127.0.0.1:{ports[me][0]}",
                  "peer_coord": f"tcp://127.0.0.1:{ports[peer][0]}",
                  "mirror_listen": f"127.0.0.1:{ports[me][1]}",
                  "peer_mirror": f"127.0.0.1:{ports[peer][1]}", "witness": "tcp://127.0.0.1:9",
                  "insecure": True, **kw})


def test_both_controllers_name_the_same_node():
    assert _conf("a", "b").sole_orderer == _conf("b", "a").sole_orderer == 0
    for who, node in (("a", 0), ("b", 1)):    # node 0: the smaller name
        assert _conf("a", "b", orderer=who).sole_orderer == 1 + node
        assert _conf("b", "a", orderer=who).sole_orderer == 1 + node


def test_an_orderer_that_is_neither_controller_is_refused():
    with pytest.raises(SchemaError, match=r"orderer: must be 'a' \(self\) or the peer "
                                          r"\('b'\), got 'c'"):
        _conf("a", "b", orderer="c")
