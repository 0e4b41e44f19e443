"""The control plane at scale (issue 17, item 2): `status` summarises the bdevs
(count, totals, the `top` busiest, exported ones) instead of listing every one
unless asked (`detail`); `volume_list` and `bdev_list` page with
offset/limit in name order; `volume_create` takes `names` (one call, commits
grouped). Functional only: the timings are ci/bench-scale's."""

import time

import pytest
from ctrl.helpers import Controller

from srrs.ctrl import launch
from srrs.ctrl.rpc import RpcError

N = 80  # > the default top (32) and > the group-commit threshold (64)


@pytest.fixture(scope="module")
def ctl(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paging")
    sock = str(tmp / "s.sock")
    cfg = launch.write_config(tmp / "c.toml", launch.config(
        launch.controller("pg", sock, reactors=1),
        pools=[launch.pool("p0", [launch.fragment(tmp / "f.img", "4GiB")])],
        metrics=launch.metrics(f"127.0.0.1:{launch.free_port()}")))
    c = Controller(cfg, sock)
    try:
        names = [f"v{i:03d}" for i in range(N)]
        infos = c.rpc("volume_create", {"names": names, "pool": "p0", "size": "16MiB"})
        assert [i["name"] for i in infos] == names
        c.rpc("bench_bdev_start", {"bdev": "v041", "rw": "randwrite", "time_s": 0,
                                   "max_ios": 200})
        c.rpc("bench_bdev_start", {"bdev": "v007", "rw": "randwrite", "time_s": 0,
                                   "max_ios": 100})
        for _ in range(400):
            if all(j["state"] == "done" for j in c.rpc("bench_bdev_results")):
                break
            time.sleep(0.025)
        yield c
    finally:
        c.stop()


def test_status_summarises_bdevs(ctl):
    st = ctl.rpc("status")
    full = ctl.rpc("status", {"detail": True})
    vols = [b["name"] for b in full["bdevs"] if b["module"] == "lvol"]
    assert vols == [f"v{i:03d}" for i in range(N)]
    assert st["bdev_count"] == len(full["bdevs"]) == N + 1  # and the fragment's file bdev
    for k in ("reads", "writes", "bytes_written", "errors"):
        assert st["bdev_totals"][k] == sum(b[k] for b in full["bdevs"]), k
    names = [b["name"] for b in st["bdevs"]]
    assert len(names) == 32 and names == sorted(names)
    assert {"v007", "v041"} <= set(names), "the busiest are listed"
    assert st["pool"]["pools"][0]["volumes"] == N
    top = ctl.rpc("status", {"top": 3})["bdevs"]
    assert [b["name"] for b in top if b["module"] == "lvol"] == ["v007", "v041"]
    assert next(b for b in top if b["name"] == "v041")["latency"]["write"]["count"] == 200
    with pytest.raises(RpcError):
        ctl.rpc("status", {"top": -1})


def test_volume_list_pages(ctl):
    every = ctl.rpc("volume_list")
    assert [v["name"] for v in every] == [f"v{i:03d}" for i in range(N)]
    page = ctl.rpc("volume_list", {"offset": 10, "limit": 5})
    assert page == every[10:15]
    assert ctl.rpc("volume_list", {"offset": N - 2, "limit": 10}) == every[-2:]
    assert ctl.rpc("volume_list", {"offset": N + 5, "limit": 10}) == []
    assert ctl.rpc("volume_list", {"pool": "p0", "offset": 78}) == every[78:]
    with pytest.raises(RpcError):
        ctl.rpc("volume_list", {"limit": -1})


def test_bdev_list_pages(ctl):
    every = [b["name"] for b in ctl.rpc("bdev_list")]
    page = ctl.rpc("bdev_list", {"offset": 41, "limit": 3})
    assert [b["name"] for b in page] == every[41:44] == ["v040", "v041", "v042"]
    assert page[1]["writes"] == 200


def test_volume_create_names_checks_first(ctl):
    with pytest.raises(RpcError, match="already exists"):
        ctl.rpc("volume_create", {"names": ["new1", "v003"], "pool": "p0", "size": "16MiB"})
    with pytest.raises(RpcError, match="already exists"):
        ctl.rpc("volume_create", {"names": ["dup", "dup"], "pool": "p0", "size": "16MiB"})
    with pytest.raises(RpcError, match="bad name"):
        ctl.rpc("volume_create", {"names": ["new1", "a/b"], "pool": "p0", "size": "16MiB"})
    with pytest.raises(RpcError, match="name or names"):
        ctl.rpc("volume_create", {"name": "x", "names": ["y"], "pool": "p0", "size": "16MiB"})
    assert ctl.rpc("volume_list", {"offset": 0, "limit": 1000}) == ctl.rpc("volume_list")
    assert len(ctl.rpc("volume_list")) == N, "nothing was created by a refused call"
    ctl.rpc("volume_create", {"names": ["new1", "new2"], "pool": "p0", "size": "16MiB"})
    first = ctl.rpc("volume_list", {"offset": 0, "limit": 3})
    assert [v["name"] for v in first] == ["new1", "new2", "v000"], "the page order follows"
    ctl.rpc("volume_delete", {"name": "new1"})
    ctl.rpc("volume_delete", {"name": "new2"})
    assert ctl.rpc("status")["bdev_count"] == N + 1


def test_pages_follow_creates_and_deletes(ctl):
    """The sorted names pages read are kept across a single create, a batch
    and deletes: every page equals the same slice of the whole list."""
    ctl.rpc("volume_list", {"offset": 0, "limit": 1})  # the list is built
    ctl.rpc("volume_create", {"name": "v0405", "pool": "p0", "size": "16MiB"})
    ctl.rpc("volume_create", {"names": ["a9", "v0500", "zz"], "pool": "p0", "size": "16MiB"})
    ctl.rpc("volume_delete", {"name": "v010"})
    every = ctl.rpc("volume_list")
    assert [v["name"] for v in every] == sorted(v["name"] for v in every)
    for off in range(0, len(every), 7):
        assert ctl.rpc("volume_list", {"offset": off, "limit": 7}) == every[off:off + 7]
    for n in ("v0405", "a9", "v0500", "zz"):
        ctl.rpc("volume_delete", {"name": n})
    ctl.rpc("volume_create", {"name": "v010", "pool": "p0", "size": "16MiB"})
    assert [v["name"] for v in ctl.rpc("volume_list", {"offset": 0, "limit": N})] == \
        [f"v{i:03d}" for i in range(N)]


def test_volume_list_names(ctl):
    got = ctl.rpc("volume_list", {"names": ["v050", "nope", "v002"]})
    assert [v["name"] for v in got] == ["v002", "v050"]
    assert got[1] == ctl.rpc("volume_list", {"name": "v050"})[0]


def test_scrape_lists_the_busiest_and_counts_all(ctl):
    import urllib.request

    url = f"http://{ctl.rpc('status')['metrics']['listen']}/metrics"
    with urllib.request.urlopen(url, timeout=30) as r:
        text = r.read().decode()
    assert f'srrs_bdevs{{controller="pg"}} {float(N + 1)}' in text
    # below SCRAPE_TOP_BDEVS (100) every volume has its series, as before
    assert text.count("srrs_volume_size_bytes{") == N
