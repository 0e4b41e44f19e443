"""What a controller made its cluster replicas for survives its restart
(ctrl/cluster_sync.py Made; docs/architecture.md, Volume moves)."""

import json
import uuid as uuidlib

from srrs.ctrl.cluster_sync import Made, replica_made_for, replica_uuid


def test_gone_and_move_entries_survive_a_restart_home_ones_are_not_written(tmp_path):
    p = str(tmp_path / "made.json")
    m = Made(p)
    m["h"] = "home"
    assert not (tmp_path / "made.json").exists()     # home: nothing to remember
    m["g"] = "gone"
    m.setdefault("mv", "move:abcdef0123456789")
    assert json.loads(open(p).read()) == {"g": "gone", "mv": "move:abcdef0123456789"}
    again = Made(p)                                   # the restart
    assert again.get("g") == "gone" and again.get("mv") == "move:abcdef0123456789"
    assert "h" not in again                           # an unknown replica is a home one
    again["mv"] = "home"                              # the move completed here
    again.pop("g")                                    # the old replica deleted
    assert json.loads(open(p).read()) == {}
    assert dict(Made(p)) == {}


def test_a_bad_file_is_ignored_with_a_warning(tmp_path, caplog):
    p = tmp_path / "made.json"
    for text in ("{not json", "[1, 2]", '{"u": 3, "v": "home", "w": "gone"}'):
        p.write_text(text)
        m = Made(str(p))
        assert dict(m) == ({"w": "gone"} if text.startswith('{"u"') else {})
    assert "taken as home ones" in caplog.text


def test_a_replica_says_what_it_was_made_for():
    """A cluster replica's pool-volume uuid records its placement from its
    create on (replica_uuid); one made before that says nothing (None), so an
    upgraded controller keeps its replicas."""
    u = "7f2c9a4e-0000-4000-8000-000000000001"
    a, b = replica_uuid(u, "home"), replica_uuid(u, "home")
    assert len(a) == 16 and a != b                    # unique in the pool all the same
    as_str = lambda x: str(uuidlib.UUID(bytes=x))     # noqa: E731 (as volume_list gives it)
    assert replica_made_for(as_str(a), u, "home") is True
    assert replica_made_for(as_str(a), u, "move:0123456789abcdef") is False
    assert replica_made_for(as_str(replica_uuid(u, "move:0123456789abcdef")), u,
                            "move:0123456789abcdef") is True
    assert replica_made_for(as_str(a), "another-volume", "home") is False
    assert replica_made_for(str(uuidlib.uuid4()), u, "home") is None   # made before
    assert replica_made_for("not a uuid", u, "home") is None
