"""What a controller made its cluster replicas for survives its restart
(ctrl/cluster_sync.py Made; docs/architecture.md, Volume moves)."""

import json

from srrs.ctrl.cluster_sync import Made


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
