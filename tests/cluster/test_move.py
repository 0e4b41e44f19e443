"""Online volume moves between pairs (docs/architecture.md, Cluster, Volume moves):
three real etcd members, two pairs of real controllers (a+b, c+d), each in a
network namespace of its own on one bridge, and a Linux guest in one more
whose kernel (nvme-tcp, native multipath) runs fio with verification on the
volumes the whole time.

test_move_under_load: two volumes move from a+b to c+d while fio writes and
verifies them: zero I/O errors, data written before the move verifies after
it, the guest's paths end on c and d, no replica or subsystem is left on a
or b, and a thin volume stays thin on the destination.
test_move_kill_*: the tee (a source controller) or the target (a destination
controller) is killed with SIGKILL in the middle of a move: the move resumes
on the survivor and completes; the killed one restarts and pairs again; the
guest sees no error; the data verifies.
test_move_away_and_straight_back / test_restart_inside_the_drain_...: a move
back to a+b while a+b's old replica is still leaving never adopts the old
replica, also across a SIGKILL and restart of b in that window."""

import json
import os
import time

import pytest
import toml

from srrs.ctrl import launch
from srrs.ctrl.cluster import volume_nqn
from tests.guest.harness import fio_verify
from tests.pair.netns import in_netns

from .test_catalog_sync import _replicas, _subsystems, _wait, cli
from .world import World, netns_world

pytestmark = pytest.mark.side

MiB = 1 << 20
HOST = "nqn.2014-08.org.nvmexpress:uuid:move-host"
PREFIX = "/srrs/mv"
KEYS = ["e0", "e1", "e2", "a", "b", "c", "d", "h"]


def _node(tmp, etcd, ports, hub):
    def node(n):
        return {"bdev": [launch.bdev("v0", "file", "16MiB", path=str(tmp / f"{n}.v0"))],
                "pool": [launch.pool("p0", [launch.fragment(tmp / f"{n}.pool", "512MiB")])],
                # the four controllers may all be paths of one subsystem (during a
                # move): their controller IDs must differ, not only within a pair
                "nvmf": launch.nvmf([f"{hub.hosts[n][1]}:{ports[n]}"],
                                    cntlid_min=1 + 1000 * "abcd".index(n)),
                # b keeps a volume that left it longer than the others: a move
                # back then always comes inside b's wait (move_away_and_straight_back)
                "cluster": {"etcd": etcd.endpoints, "prefix": PREFIX, "lease_s": 5,
                            "drain_s": 6.0 if n == "b" else 2.0}}
    return node


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mv")
    # a tag of this run's own: worktrees of this repository run this module
    # at the same time, and a Hub deletes the namespaces of its tag first
    with netns_world(World, tmp, KEYS, f"srrs-mv{os.getpid() % 100000}-", "abcd", HOST) as w:
        for names in (("a", "b"), ("c", "d")):
            # four controllers, etcd and a TCG guest on two shared cores: a
            # controller's death counts after 3 s of silence, not 1
            w.start_pair(names, _node(tmp, w.etcd, w.ports, w.hub),
                         heartbeat_ms=200, miss_count=15, lease_ms=4000)
        a = w.ctl("a")
        assert cli(a, "pair-set", "a+b", "--capacity", "400MiB", "--zone", "src")[0] == 0
        assert cli(a, "pair-set", "c+d", "--capacity", "400MiB", "--zone", "dst")[0] == 0
        assert cli(a, "tenant-set", "t", "--quota", "4GiB")[0] == 0
        _wait(lambda: {x["name"] for x in cli(a, "pairs")[1] if len(x["members"]) == 2}
              == {"a+b", "c+d"}, what="both pairs registered")
        yield w


def _moves(ctl):
    return {m["uuid"]: m for m in ctl.rpc("cluster_moves", {"all": True})}


def _create(w, name, size=64 * MiB):
    v = w.ctl("a").rpc("cluster_volume_create", {"name": name, "size": size, "tenant": "t",
                                                 "zone": "src", "hosts": [HOST]})
    assert v["pair"] == "a+b"
    _wait(lambda: w.ctl("a").rpc("cluster_volumes", {"tenant": "t"}) and all(
        x["state"] == "ready" for x in w.ctl("a").rpc("cluster_volumes", {"tenant": "t"})
        if x["uuid"] == v["uuid"]), 60, what=f"{name} ready")
    for n in "ab":
        _wait(lambda n=n: _ana(w.ctl(n), v["uuid"]) == "optimized", 60, what=f"{name} on {n}")
    return v


def _ana(ctl, u):
    s = _subsystems(ctl).get(volume_nqn(u))
    if not s or not s["namespaces"]:
        return None
    return s["ana_groups"][0]["state"]


def _connect(w, u, nodes):
    g = w.guest()
    for n in nodes:
        g.check(f"nvme connect -t tcp -a {w.addr(n)} -s {w.ports[n]} -n {volume_nqn(u)}",
                timeout=60)


def _dev(w, u):
    """The guest's multipath block device of the namespace with uuid u."""
    g = w.guest()
    cmd = ("for d in /sys/block/nvme*n*; do n=${d##*/}; case $n in *c*) continue;; esac; "
           "echo $n $(cat $d/uuid); done")

    def find():
        for ln in g.check(cmd).splitlines():
            p = ln.split()
            if len(p) == 2 and p[1] == u:
                return "/dev/" + p[0]
        return None
    return _wait(find, 30, f"guest device of {u}")


def _paths(w, u):
    """[(address, controller state, ANA state of the path)] of the guest's paths to u."""
    g = w.guest()
    nqn = volume_nqn(u)
    cmd = ("for c in /sys/class/nvme/nvme*; do [ \"$(cat $c/subsysnqn)\" = '%s' ] || continue; "
           "a=$(cat $c/address | tr ',' ' '); s=$(cat $c/state); "
           "for p in $c/nvme*c*n*; do [ -e $p/ana_state ] && echo \"$a|$s|$(cat $p/ana_state)\"; "
           "done; done" % nqn)
    out = []
    for ln in g.check(cmd).splitlines():
        parts = ln.split("|")
        if len(parts) == 3:
            addr = next((x.split("=", 1)[1] for x in parts[0].split()
                         if x.startswith("traddr=")), "")
            out.append((addr, parts[1], parts[2]))
    return out


def _pre(dev, size, rw="write"):
    return (f"fio --name=pre --filename={dev} --ioengine=libaio --direct=1 --rw={rw} --bs=64k "
            f"--size={size} --offset=0 --iodepth=4 --verify=crc32c --verify_fatal=1 "
            f"--do_verify=0")


def _made(ctl):
    """What ctl's catalog sync recorded its replicas as made for (the pair's
    state_dir/cluster-made.json: only "gone" and "move:..." entries)."""
    conf = toml.load(ctl.config)
    sd = next(s["state_dir"] for s in conf.values() if isinstance(s, dict) and "state_dir" in s)
    try:
        with open(os.path.join(sd, "cluster-made.json")) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return {}


def _move(w, name, to="c+d"):
    rc, m, err = cli(w.ctl("a"), "volume-move", name, "--tenant", "t", "--to", to)
    assert rc == 0, err
    return m


def _wait_dest_export(w, u, nodes="cd"):
    for n in nodes:
        _wait(lambda n=n: _ana(w.ctl(n), u) is not None, 60, f"destination export on {n}")


def _dump(w, us):
    for n in "abcd":
        try:
            st = w.ctl(n).rpc("cluster_status")
            print(n, json.dumps(st.get("sync"), indent=1))
        except Exception as e:  # a killed controller
            print(n, e)
    try:
        print(json.dumps(_moves(w.ctl("c")), indent=1))
    except Exception as e:
        print(e)


def _stacks(ctl):
    """Every thread's C stack of a controller that does not answer (gdb), or
    how it ended and its log's tail when it is gone (a crash, not a hang)."""
    import subprocess
    pid = ctl.proc.pid if ctl.proc is not None else None
    if pid and ctl.proc.poll() is None:
        r = subprocess.run(["gdb", "-batch", "-p", str(pid), "-ex", "thread apply all bt 25"],
                           capture_output=True, text=True, timeout=120)
        print(r.stdout[-60000:])
    elif pid:
        print(f"controller {ctl.name} exited {ctl.proc.returncode}:\n{ctl.tail(60)}")


def _check_end(w, vols, src="ab", dst="cd"):
    """Catalog on dst; replicas and subsystems only on dst, optimized there;
    the guest's usable paths only on dst."""
    c = w.ctl(dst[0])
    cat = {v["uuid"]: v for v in c.rpc("cluster_volumes")}
    for v in vols:
        u = v["uuid"]
        assert cat[u]["pair"] == "+".join(sorted(dst))
        for n in src:
            _wait(lambda n=n, u=u: u not in _replicas(w.ctl(n))
                  and volume_nqn(u) not in _subsystems(w.ctl(n)), 60, f"{u} gone from {n}")
        for n in dst:
            assert u in _replicas(w.ctl(n))
            _wait(lambda n=n, u=u: _ana(w.ctl(n), u) == "optimized", 30, f"optimized on {n}")
        dst_addrs = {w.addr(n) for n in dst}

        def paths_ok(u=u, dst_addrs=dst_addrs):
            ps = _paths(w, u)
            good = [p for p in ps if p[1] == "live" and p[2] == "optimized"]
            return bool(good) and all(p[0] in dst_addrs for p in good) and ps
        _wait(paths_ok, 60, f"guest paths of {u} on {dst}")


def test_move_under_load(world):
    w = world
    g = w.guest()
    v1, v2 = _create(w, "m1"), _create(w, "m2")
    for v in (v1, v2):
        _connect(w, v["uuid"], "ab")
    d1, d2 = _dev(w, v1["uuid"]), _dev(w, v2["uuid"])
    # data written before the move: 16 MiB of v1, 4 MiB of v2 (v2 stays thin)
    g.check(_pre(d1, "16M"), timeout=300)
    g.check(_pre(d2, "4M"), timeout=300)
    alloc_src = {x["name"]: x["allocated_clusters"] for x in w.ctl("a").rpc("volume_list")}
    runtime = 60
    j1 = g.spawn(fio_verify(d1, "32M", runtime, name="l1", extra="--offset=16M"), name="l1")
    j2 = g.spawn(fio_verify(d2, "4M", runtime, name="l2", extra="--offset=8M"), name="l2")
    time.sleep(5)
    t0 = time.monotonic()
    try:
        for v in (v1, v2):
            m = _move(w, v["name"])
            assert m["phase"] == "copying" and m["dst"] == "c+d"
        # the discovery log lists the destination's paths during the move
        with in_netns(w.ns_h):
            from srrs.nvmf.target import discover
            log = discover(w.addr("a"), w.ports["a"], hostnqn=HOST)
        got = {(e["traddr"]) for e in log if e["subnqn"] == volume_nqn(v1["uuid"])}
        assert {w.addr(n) for n in "cd"} <= got, log
        # the host connects the new paths (inaccessible until the cutover)
        for v in (v1, v2):
            _wait_dest_export(w, v["uuid"])
            _connect(w, v["uuid"], "cd")
        _wait(lambda: all(_moves(w.ctl("c"))[v["uuid"]]["phase"] == "done" for v in (v1, v2)),
              120, "moves done")
        took = time.monotonic() - t0
        _check_end(w, (v1, v2))
    except BaseException:
        _dump(w, (v1, v2))
        raise
    for j in (j1, j2):
        r = j.wait(timeout=runtime + 120)
        assert r.rc == 0 and "err= 0" in r.output, r.output
    # what was written before the move reads back right from the destination
    g.check(_pre(d1, "16M") + " --verify_only", timeout=300)
    g.check(_pre(d2, "4M") + " --verify_only", timeout=300)
    # thin stays thin: the destination holds what the source had allocated, not the size
    for n in "cd":
        alloc = {x["name"]: x["allocated_clusters"] for x in w.ctl(n).rpc("volume_list")}
        got = alloc["c-" + v2["uuid"]]
        assert got <= alloc_src["c-" + v2["uuid"]] + 8 + 1 and got < 64 // 2, (got, alloc_src)
    ms = _moves(w.ctl("a"))
    print(f"moves done in {took:.1f} s:", json.dumps([ms[v["uuid"]] for v in (v1, v2)]))
    for v in (v1, v2):
        g.run(f"nvme disconnect -n {volume_nqn(v['uuid'])}", timeout=60)


def test_move_cancel(world):
    """A move cancelled while it waits for the guest's destination paths: the
    volume stays on a+b (both serve it again), c and d delete their replicas
    and subsystems, the destination's reservation is freed, fio saw no error."""
    w = world
    g = w.guest()
    v = _create(w, "x1")
    u = v["uuid"]
    _connect(w, u, "ab")
    dev = _dev(w, u)
    job = g.spawn(fio_verify(dev, "16M", 30, name="x1"), name="x1")
    time.sleep(2)
    a = w.ctl("a")
    cd_before = next(p for p in a.rpc("cluster_pairs") if p["name"] == "c+d")["allocated"]
    try:
        _move(w, "x1")
        _wait(lambda: _moves(a)[u]["waiting"], 60, "copied, waiting for hosts")
        rc, _, err = cli(a, "move-cancel", "x1", "--tenant", "t")
        assert rc == 0, err
        _wait(lambda: _moves(a)[u]["phase"] == "cancelled", 60, "cancelled")
        for n in "cd":
            _wait(lambda n=n: u not in _replicas(w.ctl(n))
                  and volume_nqn(u) not in _subsystems(w.ctl(n)), 60, f"gone from {n}")
        for n in "ab":
            _wait(lambda n=n: _ana(w.ctl(n), u) == "optimized", 30, f"optimized on {n}")
        cd = next(p for p in a.rpc("cluster_pairs") if p["name"] == "c+d")["allocated"]
        assert cd == cd_before
        assert {x["uuid"]: x for x in a.rpc("cluster_volumes")}[u]["pair"] == "a+b"
    except BaseException:
        _dump(w, (v,))
        raise
    r = job.wait(timeout=150)
    assert r.rc == 0 and "err= 0" in r.output, r.output
    g.run(f"nvme disconnect -n {volume_nqn(u)}", timeout=60)


def _kill_mid_move(w, name, victim, connect_before, connect_mid, connect_end, runtime=45):
    """A volume on a+b under fio verify; its move to c+d started; `victim` is
    killed (SIGKILL) while the move waits for the guest's destination paths
    (the guest has connected `connect_before` of c, d); once a survivor took
    the victim's part, `connect_mid`; the move completes on the survivors, the
    victim restarts, converges and pairs again (then `connect_end`), the
    guest saw no error, the data written before verifies. All of it takes
    ~15 s of fio's `runtime` here (printed), up to ~30 s under load."""
    g = w.guest()
    v = _create(w, name)
    u = v["uuid"]
    _connect(w, u, "ab")
    dev = _dev(w, u)
    g.check(_pre(dev, "16M"), timeout=300)
    job = g.spawn(fio_verify(dev, "32M", runtime, name=name, extra="--offset=16M"), name=name)
    t0 = time.monotonic()
    time.sleep(3)
    ctl_victim = w.ctl(victim)

    def at(what):
        print(f"{name}: {what} at {time.monotonic() - t0:.1f} s of fio's {runtime}")
    try:
        m = _move(w, name)
        _wait_dest_export(w, u)
        _connect(w, u, connect_before)
        first = m
        # the copy is under way or done, the cutover not (a destination host path missing)
        _wait(lambda: _moves(w.ctl("a" if victim != "a" else "b"))[u]["copied"] > 0, 60,
              "copying")
        assert _moves(w.ctl("c" if victim != "c" else "d"))[u]["phase"] == "copying"
        ctl_victim.kill9()
        at("killed")
        survivor = {"a": "b", "b": "a", "c": "d", "d": "c"}[victim]
        role = "tee" if victim in "ab" else "target"
        _wait(lambda: _moves(w.ctl(survivor))[u][role] == survivor, 60, f"{survivor} took over")
        assert _moves(w.ctl(survivor))[u]["epoch"] > first["epoch"]
        _connect(w, u, connect_mid)
        _wait(lambda: _moves(w.ctl(survivor))[u]["phase"] == "done", 120, "move done")
        ctl_victim.restart()
        at("restarted")
        try:
            w.pair(victim).wait_state("PAIRED", 120)
        except RuntimeError:
            _stacks(ctl_victim)
            raise
        at("paired again")
        if connect_end:
            _wait_dest_export(w, u, connect_end)
            _connect(w, u, connect_end)
        _check_end(w, (v,))
        at("checked")
    except BaseException:
        _dump(w, (v,))
        raise
    r = job.wait(timeout=runtime + 120)
    assert r.rc == 0 and "err= 0" in r.output, r.output
    g.check(_pre(dev, "16M") + " --verify_only", timeout=300)
    g.run(f"nvme disconnect -n {volume_nqn(u)}", timeout=60)


def test_move_kill_tee(world):
    # a is the tee (the first registered source controller); the guest connects
    # the destination's paths only after b took the tee over
    _kill_mid_move(world, "k1", "a", connect_before="", connect_mid="cd", connect_end="")


def test_move_kill_target(world):
    # c is the target; the guest has d's path only, so the cutover waits for it
    # (hosts must be connected to the target); c dies, d becomes the target
    _kill_mid_move(world, "k2", "c", connect_before="d", connect_mid="", connect_end="c")


def test_move_away_and_straight_back(world):
    """A volume moved a+b -> c+d and at once back, before a+b's grace for its
    old replica ran out: a+b makes fresh replicas for the move back, never
    the old ones (stale where the tee's clusters are unallocated, and on the
    old mirror slot, which the catalog may have given to another volume:
    a drain after a rebalance once stalled on "volume id 1023 already used").
    The move back completes and a+b's mirror of it sits on its catalog slot.
    b keeps what left it 6 s (drain_s), longer than the move back takes: b's
    old mirror, still there, must not count as b's half of the new one (it
    did: the move back completed at once and b adopted its old replica)."""
    w = world
    a = w.ctl("a")
    v = _create(w, "bk", size=16 * MiB)
    u = v["uuid"]
    _move(w, "bk")
    _wait(lambda: _moves(a).get(u, {}).get("phase") == "done", 90, "moved to c+d")
    t_back = time.time()
    _move(w, "bk", to="a+b")
    try:
        _wait(lambda: (lambda m: m.get("phase") == "done" and m.get("dst") == "a+b")(
            _moves(a).get(u, {})), 120, "moved back to a+b")
        for n in "ab":
            _wait(lambda n=n: _ana(w.ctl(n), u) == "optimized", 60, f"optimized on {n}")
            # the old replica went before the new one came
            log = w.ctl(n).output()
            created = [i for i, ln in enumerate(log.splitlines())
                       if f"({u}): replica created" in ln]
            deleted = [i for i, ln in enumerate(log.splitlines())
                       if f"cluster volume {u}: replica deleted" in ln]
            assert len(created) == 2 and deleted and created[0] < deleted[0] < created[1], \
                (n, created, deleted)
            slot = {x["uuid"]: x for x in a.rpc("cluster_volumes")}[u]["slot"]
            vols = {x["name"]: x for x in w.ctl(n).rpc("pair_status")["volumes"]}
            assert vols[f"c-{u}"]["vol_id"] == 1023 - slot, (n, slot, vols[f"c-{u}"])
        assert time.time() - t_back < 120
    except BaseException:
        _dump(w, (v,))
        raise


def _wait_moved_back(a, u, what):
    _wait(lambda: (lambda m: m.get("phase") == "done" and m.get("dst") == "a+b")(
        _moves(a).get(u, {})), 150, what)


def _deleted_then_created(ctl, u, mark):
    """ctl's log lines after line `mark`, which must delete its replica of u
    before they create one (a fresh replica, never the old one adopted)."""
    after = ctl.output().splitlines()[mark:]
    created = [i for i, ln in enumerate(after) if f"({u}): replica created" in ln]
    deleted = [i for i, ln in enumerate(after) if f"cluster volume {u}: replica deleted" in ln]
    assert deleted and created and deleted[0] < created[0], (created, deleted)
    return after


def test_restart_inside_the_drain_of_a_volume_moved_away_and_back(world):
    """b is killed (SIGKILL) while its old replica of a volume that moved to
    c+d is still leaving (b's drain_s, 6 s), the move back to a+b is put in
    the catalog while b is down, and b restarts: what b made that replica for
    ("gone") is in its state_dir (cluster-made.json), so it deletes the old
    replica and makes a fresh one for the move back; it must never adopt the
    old one as its home replica (stale where the tee's clusters are
    unallocated). Without the file b adopted it (docs/architecture.md,
    Volume moves)."""
    w = world
    a, b = w.ctl("a"), w.ctl("b")
    v = _create(w, "rs", size=16 * MiB)
    u = v["uuid"]
    _move(w, "rs")
    _wait(lambda: _moves(a).get(u, {}).get("phase") == "done", 90, "moved to c+d")
    # b has seen the move end and recorded its replica as leaving (CI, loaded:
    # killed before its catalog sync got there, b had nothing to remember)
    _wait(lambda: _made(b).get(u) == "gone", 30, "b's old replica on its way out")
    mark = len(b.output().splitlines())
    b.kill9()
    try:
        left = [ln for ln in b.output().splitlines()[:mark]
                if f"cluster volume {u}: replica deleted" in ln]
        assert not left, "b deleted its old replica before the kill: drain_s too short here"
        _move(w, "rs", to="a+b")
        b.restart()
        _wait_moved_back(a, u, "moved back to a+b")
        for n in "ab":
            _wait(lambda n=n: _ana(w.ctl(n), u) == "optimized", 60, f"optimized on {n}")
        _deleted_then_created(b, u, mark)
        w.pair("b").wait_state("PAIRED", 120)
    except BaseException:
        _dump(w, (v,))
        raise


def test_a_controller_down_while_its_volume_moved_away_and_back_makes_a_fresh_replica(world):
    """b is killed (SIGKILL) before its volume moves anywhere, so b never
    records its replica as leaving; the volume moves to c+d and back to a+b
    while b is down; b restarts and finds its replica of before with no note.
    The replica says what it was made for (its pool-volume uuid: the volume's
    creation on a+b), the catalog says the volume is on a+b by the move back:
    b deletes it and makes a fresh one, which the pair's resync fills. It
    adopted the old one before (stale wherever the moves' copies did not
    write): docs/architecture.md, Volume moves."""
    w = world
    a, b = w.ctl("a"), w.ctl("b")
    v = _create(w, "dn", size=16 * MiB)
    u = v["uuid"]
    before = {x["name"]: x["uuid"] for x in b.rpc("volume_list")}[f"c-{u}"]
    mark = len(b.output().splitlines())
    b.kill9()
    try:
        _move(w, "dn")
        _wait(lambda: _moves(a).get(u, {}).get("phase") == "done", 120, "moved to c+d")
        _move(w, "dn", to="a+b")
        _wait_moved_back(a, u, "moved back to a+b (b down)")
        assert {x["uuid"]: x for x in a.rpc("cluster_volumes")}[u]["placed"].startswith("move:")
        b.restart()
        w.pair("b").wait_state("PAIRED", 120)
        for n in "ab":
            _wait(lambda n=n: _ana(w.ctl(n), u) == "optimized", 60, f"optimized on {n}")
        after = _deleted_then_created(b, u, mark)
        assert any("made before the volume left this pair" in ln for ln in after)
        now = {x["name"]: x["uuid"] for x in b.rpc("volume_list")}[f"c-{u}"]
        assert now != before
    except BaseException:
        _dump(w, (v,))
        raise
