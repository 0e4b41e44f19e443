"""The console's cluster panel (docs/architecture.md, Console), rendered at
120x40 and 200x60: members with health, capacity and allocation, pairs with
free space, tenants with quota use and the volume count, from the `cluster`
part of a controller's status (the cached catalog's summary, built here by
ctrl/cluster_view.summarize from a catalog snapshot)."""

from __future__ import annotations

import json
import re

import pytest

from srrs.ctrl import console_model as model
from srrs.ctrl.cluster_catalog import Member, Pair, Snapshot, Tenant, Volume
from srrs.ctrl.cluster_view import summarize

from .test_operator_view import RECORDED, SIZES, _alerts, _readable, _text

GiB = 1 << 30


def _snapshot(n_pairs: int = 2) -> Snapshot:
    members, pairs, vols = {}, {}, {}
    for k in range(n_pairs):
        a, b = f"node{2 * k:02d}", f"node{2 * k + 1:02d}"
        name = f"{a}+{b}"
        pairs[name] = Pair(name, (a, b), capacity=(10 + k) * GiB, allocated=k * GiB)
        for n in (a, b):
            if n != "node01":       # node01 died: its lease ran out
                members[n] = Member(n, name, {"nvmf": ["10.0.0.1:4420"]}, capacity=(10 + k) * GiB,
                                    allocated=k * GiB, health="ok")
        for j in range(k):
            u = f"{k:04d}{j:04d}-0000-4000-8000-000000000000"
            vols[u] = Volume(u, f"v{k}-{j}", GiB, "acme", name, "ready")
    tenants = {"acme": Tenant("acme", quota=20 * GiB, used=19 * GiB, volumes=len(vols)),
               "beta": Tenant("beta", quota=5 * GiB, used=0)}
    return Snapshot(57, members, pairs, tenants, vols)


def _view(snap: Snapshot, error: str = "") -> model.ScreenView:
    st = json.loads(json.dumps(RECORDED["single"]))
    st["cluster"] = {"name": "node00", "prefix": "/srrs/", "registered": not error,
                     "error": error, "catalog": dict(summarize(snap), synced=not error,
                                                     error=error)}
    ins = [model.Input(sock="/run/x.sock", name="x", state="up", status=st,
                       rates=model.rates(0, st, 1, st))]
    return model.build(ins, 1796297100.0, None, {})


@pytest.mark.parametrize("w,h", SIZES)
def test_cluster_panel(w, h):
    text = _text(_view(_snapshot()), w, h)
    _readable(text, w, h)
    assert re.search(r"cluster /srrs/", text)
    assert "4 members, 3 up · 2 pairs · 2 tenants · 1 volume " in text
    assert "etcd ok" in text
    # pairs: free space, controllers up, volume count
    row = next(line for line in text.splitlines() if re.match(r"│\s+node02\+node03\s", line))
    assert re.search(r"node02\+node03\s+node02 up ok, node03 up ok\s+10\.0 GiB\s+1\.0 GiB\s+"
                     r"11\.0 GiB\s.*\s1\s*│$", row), row
    assert re.search(r"node00\+node01\s+node00 up ok, node01 down\s+10\.0 GiB", text)
    if h >= 50:     # room for every member row
        down = next(line for line in text.splitlines() if re.search(r"node01\s+down", line))
        assert "node00+node01" in down
        ok = next(line for line in text.splitlines() if re.search(r"node02\s+up ok", line))
        assert re.search(r"1\.0 GiB\s+11\.0 GiB", ok), ok
    # tenants: used of quota; acme past 90 % is an alert, and so is the dead member
    if h >= 50:
        acme = next(line for line in text.splitlines() if re.search(r"│\s+acme\s", line))
        assert re.search(r"acme\s+19\.0 GiB\s+20\.0 GiB", acme), acme
    else:           # a small screen: one line, fullest first
        assert "tenants acme 19.0 GiB of 20.0 GiB (95 %) · beta 0 B of 5.0 GiB (0 %)" in text
    alerts = _alerts(text)
    assert "warning cluster tenant acme: quota 95 % used (19.0 GiB of 20.0 GiB)" in alerts, alerts
    assert "warning cluster member node01: not registered (pair node00+node01)" in alerts, alerts


@pytest.mark.parametrize("w,h", SIZES)
def test_many_pairs_are_capped_with_a_count(w, h):
    text = _text(_view(_snapshot(40)), w, h)
    lines = _readable(text, w, h)
    m = re.search(r"\+(\d+) more pairs", text)
    assert m, text
    shown = sum(1 for line in lines if re.search(r"│\s+node\d\d\+node\d\d\s", line))
    assert "x ● up" in text     # the controller's own panel keeps its place
    assert shown + int(m.group(1)) == 40, (shown, m.group(1))


@pytest.mark.parametrize("w,h", SIZES)
def test_etcd_unreachable_is_a_warning_not_a_failure(w, h):
    text = _text(_view(_snapshot(), error="etcd /kv/range: connection refused"), w, h)
    _readable(text, w, h)
    assert "etcd unreachable: etcd /kv/range: connection refused" in text
    assert re.search(r"warning\s+cluster: etcd unreachable", _alerts(text)), _alerts(text)


def test_no_cluster_no_panel():
    st = json.loads(json.dumps(RECORDED["single"]))
    v = model.build([model.Input(sock="/s", name="x", state="up", status=st)], 1.0, None, {})
    assert v.cluster is None and "cluster" not in _text(v, 120, 40)
