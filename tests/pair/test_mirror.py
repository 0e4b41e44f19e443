"""The C mirror driven by hand: two Cores in one process over loopback."""

import threading
import time

import pytest

from srrs.ffi.binding import BenchOpts, SrrsError, VerifyMap, check, lib

from .mirror_util import make_pair, paired, replica_diff, wait


@pytest.fixture(params=["malloc", "file"])
def pair(tmp_path, request):
    with paired(tmp_path, request.param) as ab:
        yield ab


def bench(side, **kw):
    o = dict(rw="randwrite", bs=4096, qd=32, time_s=1.0, seed=ord(side.name))
    o.update(kw)
    vmap = o.pop("vmap", None)
    return side.core.bench_bdev("v", BenchOpts(**o), vmap=vmap)


def both(fa, fb, timeout=30):
    res = {}
    ts = [threading.Thread(target=lambda: res.__setitem__("a", fa())),
          threading.Thread(target=lambda: res.__setitem__("b", fb()))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout)
        assert not t.is_alive(), "I/O hung"
    return res["a"], res["b"]


def test_verified_writes_from_both_sides(pair):
    a, b = pair
    va, vb = VerifyMap(16384, 4096), VerifyMap(16384, 4096)
    half = 32 << 20
    ra, rb = both(lambda: bench(a, rw="randrw", offset=0, span=half, vmap=va),
                  lambda: bench(b, rw="randrw", offset=half, span=half, vmap=vb))
    assert ra["errors"] == rb["errors"] == 0
    # read back through the *other* controller: every acknowledged write is there
    ca = bench(b, rw="read", bs=1 << 20, qd=4, time_s=0, max_ios=32, offset=0, span=half, vmap=va)
    cb = bench(a, rw="read", bs=1 << 20, qd=4, time_s=0, max_ios=32, offset=half, span=half,
               vmap=vb)
    assert ca["verify_errors"] == cb["verify_errors"] == 0
    assert ca["verified_blocks"] > 0 and cb["verified_blocks"] > 0
    assert a.info()["forwarded"] > 0 and b.info()["forwarded"] > 0
    assert replica_diff(a, b) == []


def test_overlapping_writes_crossing_stripes_identical(pair):
    a, b = pair
    ra, rb = both(lambda: bench(a, bs=4096, bs_max=1 << 20, time_s=1.5),
                  lambda: bench(b, bs=4096, bs_max=1 << 20, time_s=1.5))
    assert ra["errors"] == rb["errors"] == 0
    # An owner clears its bit of a forwarded write on the forwarder's ACK, which
    # may still be on the wire when the forwarder's host write has completed.
    wait(lambda: a.info()["dirty_stripes"] == 0 and b.info()["dirty_stripes"] == 0, 5,
         "every dirty bit cleared")
    assert replica_diff(a, b) == []


def test_cut_solo_resync_under_load(pair):
    """Link cut mid-load: A goes SOLO (its held writes acknowledged, marked
    dirty), B fenced; link back: resync under load from both; identical."""
    a, b = pair
    for round_ in range(3):
        stop = threading.Event()

        def load(side, stop=stop, round_=round_):
            errs, ios = 0, 0
            while not stop.is_set():
                r = bench(side, bs=4096, bs_max=65536, time_s=0.2, seed=round_ * 7 + ord(side.name))
                errs += r["errors"]
                ios += r["ios"]
            return errs, ios

        res = {}
        ts = [threading.Thread(target=lambda s=s, res=res: res.__setitem__(s.name, load(s)))
              for s in (a, b)]
        for t in ts:
            t.start()
        time.sleep(0.3)
        a.drop()
        wait(lambda: not a.up() and not b.up(), what="link down")
        a.mode("solo")
        b.mode("fenced")
        wait(lambda: a.up() and b.up(), what="link back")
        a.mode("resync_source")
        b.mode("resync_target")
        a.resync()
        b.resync()
        wait(lambda: a.info()["resync_done"] and b.info()["resync_done"], 20, "resync")
        a.mode("paired")
        b.mode("paired")
        time.sleep(0.3)
        stop.set()
        for t in ts:
            t.join(30)
            if t.is_alive():
                a.dump()
                b.dump()
            assert not t.is_alive(), "I/O hung"
        assert res["a"][0] == 0, res          # the survivor never failed a write
        assert res["a"][1] > 0 and res["b"][1] > 0
        assert replica_diff(a, b) == []
        assert a.info()["dirty_stripes"] == 0


def test_solo_past_lease_fences_itself(pair):
    a, b = pair
    a.drop()
    wait(lambda: not a.up(), what="link down")
    # (solo begins only once the read lease a granted b has run out)
    wait(lambda: a.link_info()["grant_left_us"] == 0, what="b's read lease over")
    a.mode("solo", lease_s=0.3)
    r = bench(a, time_s=0.1)
    assert r["errors"] == 0 and r["ios"] > 0
    time.sleep(0.4)
    r = bench(a, time_s=0.1)
    assert r["ios"] == 0 and r["errors"] > 0     # nothing acknowledged alone past the lease
    assert a.link_info()["mode"] == 0            # the mirror fenced itself


def test_fenced_fails_held_writes(pair):
    a, b = pair
    a.drop()
    wait(lambda: not a.up(), what="link down")
    res = {}
    t = threading.Thread(target=lambda: res.setdefault("r", bench(a, time_s=0, max_ios=64)))
    t.start()
    wait(lambda: a.link_info()["held_writes"] > 0, what="held writes")
    a.mode("fenced")
    t.join(10)
    assert res["r"]["errors"] > 0 and res["r"]["ios"] == 0
    assert a.info()["dirty_stripes"] > 0         # what reached our replica will be resynced


def test_remote_reads_while_behind(pair):
    a, b = pair
    a.drop()
    wait(lambda: not a.up(), what="link down")
    a.mode("solo")
    b.mode("fenced")
    vm = VerifyMap(16384, 4096)
    r = bench(a, rw="write", bs=1 << 20, qd=4, time_s=0, max_ios=64, vmap=vm)
    assert r["errors"] == 0
    wait(lambda: a.up(), what="link back")
    a.mode("resync_source")
    b.mode("resync_target")
    b.resync(full=True)
    a.resync()
    # reads through B straight away: stripes not yet copied come from A
    r = bench(b, rw="read", bs=1 << 20, qd=4, time_s=0, max_ios=64, vmap=vm)
    assert r["verify_errors"] == 0 and r["errors"] == 0 and r["verified_blocks"] > 0
    wait(lambda: a.info()["resync_done"] and b.info()["resync_done"], 20, "resync")
    assert replica_diff(a, b) == []


@pytest.mark.parametrize("seed", [1, 2])
def test_no_acknowledged_write_lost_through_random_cuts(tmp_path, seed):
    """Random cut/solo/fence/heal events under verified load from both sides:
    every acknowledged write reads back through both controllers afterwards."""
    import random

    rnd = random.Random(seed)
    a, b = make_pair(tmp_path, "malloc")
    try:
        a.mode("paired")
        b.mode("paired")
        wait(lambda: a.up() and b.up(), what="link up")
        half = 32 << 20
        va, vb = VerifyMap(16384, 4096), VerifyMap(16384, 4096)

        def load(t):
            return both(lambda: bench(a, rw="randrw", bs=4096, bs_max=65536, time_s=t,
                                      offset=0, span=half, vmap=va, seed=rnd.randrange(1 << 30)),
                        lambda: bench(b, rw="randrw", bs=4096, bs_max=65536, time_s=t,
                                      offset=half, span=half, vmap=vb,
                                      seed=rnd.randrange(1 << 30)))

        checked = 0
        for event in range(10):
            what = rnd.choice(["a_solo", "b_solo", "both_fenced", "none"])
            res = {}
            t = threading.Thread(target=lambda res=res: res.__setitem__("r", load(0.6)))
            t.start()
            time.sleep(0.2)
            if what != "none":
                rnd.choice((a, b)).drop()
                wait(lambda: not a.up() and not b.up(), what="link down")
                a.mode("solo" if what == "a_solo" else "fenced")
                b.mode("solo" if what == "b_solo" else "fenced")
            t.join(30)
            assert not t.is_alive(), "I/O hung"
            ra, rb = res["r"]
            if what == "a_solo":
                assert ra["errors"] == 0
            if what == "b_solo":
                assert rb["errors"] == 0
            if what != "none":
                wait(lambda: a.up() and b.up(), what="link back")
                src, dst = (b, a) if what == "b_solo" else (a, b)
                src.mode("resync_source")
                dst.mode("resync_target")
                src.resync()
                dst.resync()
                wait(lambda: a.info()["resync_done"] and b.info()["resync_done"], 30, "resync")
                a.mode("paired")
                b.mode("paired")
            # every acknowledged write, through both controllers (a fenced side's
            # failed writes take their blocks out of the map: unknown content)
            checked = max(checked, va.written_blocks + vb.written_blocks)
            for side in (a, b):
                for vm, off in ((va, 0), (vb, half)):
                    r = bench(side, rw="read", bs=1 << 20, qd=4, time_s=0, max_ios=32, offset=off,
                              span=half, vmap=vm)
                    assert r["errors"] == 0 and r["verify_errors"] == 0, (event, what, side.name)
        assert checked > 4096
        assert replica_diff(a, b) == []
    finally:
        a.close()
        b.close()


def test_io_from_another_reactor(tmp_path):
    """Mirror I/O submitted on reactor 1 runs on the link's reactor 0 and completes back."""
    a, b = make_pair(tmp_path, "malloc", reactors=2)
    try:
        a.mode("paired")
        b.mode("paired")
        wait(lambda: a.up() and b.up(), what="link up")
        vm = VerifyMap(16384, 4096)
        r = a.core.bench_bdev("v", BenchOpts(rw="randrw", bs=4096, bs_max=262144, qd=32,
                                             time_s=1, seed=3), reactor=1, vmap=vm)
        assert r["errors"] == 0 and r["ios"] > 0
        r = b.core.bench_bdev("v", BenchOpts(rw="read", bs=1 << 20, qd=4, time_s=0,
                                             max_ios=64), reactor=1, vmap=vm)
        assert r["errors"] == 0 and r["verify_errors"] == 0 and r["verified_blocks"] > 0
        assert replica_diff(a, b) == []
    finally:
        a.close()
        b.close()


def test_forward_to_an_owner_gone_solo_is_a_path_error(tmp_path):
    """b still paired, a (owner of stripe 0) already SOLO with the link up (it
    took b for dead first): a applies b's forwarded write alone. b must not
    acknowledge it (not on its replica), and must answer with a path error,
    which the host retries through a, not with a media error (-EIO, an NVMe
    Write Fault that a host's multipath does not retry)."""
    import errno
    import os

    a, b = make_pair(tmp_path)
    try:
        a.mode("paired")
        b.mode("paired")
        wait(lambda: a.up() and b.up(), what="link up")
        a.mode("solo")
        # pending until the read lease a granted b has run out, then solo
        wait(lambda: a.link_info()["mode"] == 2, what="a solo")
        data = os.urandom(4096)
        st, _ = b.core.test_io("v", "write", 0, 4096, data)
        assert st == -errno.ENOTCONN, st
        assert a.core.test_io("r0", "read", 0, 4096)[1] == data     # on the owner only
        assert b.core.test_io("r0", "read", 0, 4096)[1] != data
        assert a.info()["dirty_stripes"] == 1
    finally:
        a.close()
        b.close()


def test_solo_write_stays_dirty_when_a_resync_starts_before_the_bitmaps_meet(tmp_path):
    """Seen in the 20-event test under load (an acknowledged write lost): b
    left PAIRED for less than a heartbeat (SOLO, link up) and came back as
    resync source while a was still PAIRED. A write b applied alone (W1) set
    its stripe's dirty bit; a write a forwarded to b right after b entered
    resync (W2, same stripe, applied on both) cleared it, because the stripe
    was not yet marked as needed: the bitmaps had not been exchanged. The
    resync then skipped the stripe and a never got W1."""
    import os

    a, b = make_pair(tmp_path)
    try:
        a.mode("paired")
        b.mode("paired")
        wait(lambda: a.up() and b.up(), what="link up")
        stripe1 = 1 << 20                      # stripe 1: ordered by b (node 1)
        w1, w2 = os.urandom(4096), os.urandom(4096)
        b.mode("solo")
        st, _ = b.core.test_io("v", "write", stripe1, 4096, w1)   # acknowledged by b alone
        assert st == 0 and b.info()["dirty_stripes"] == 1
        b.mode("resync_source")                # a still paired: it forwards to b
        res = {}
        t = threading.Thread(target=lambda: res.setdefault(
            "w2", a.core.test_io("v", "write", stripe1 + 4096, 4096, w2)))
        t.start()                              # b may hold W2 until the bitmaps meet
        time.sleep(0.2)
        assert b.info()["dirty_stripes"] == 1  # W1 is still only on b
        a.mode("resync_target")
        b.resync()
        a.resync()
        t.join(10)
        assert not t.is_alive() and res["w2"][0] == 0
        wait(lambda: a.info()["resync_done"] and b.info()["resync_done"], 10, "resync")
        assert a.core.test_io("r0", "read", stripe1, 4096)[1] == w1
        assert a.core.test_io("r0", "read", stripe1 + 4096, 4096)[1] == w2
        assert replica_diff(a, b) == []
    finally:
        a.close()
        b.close()


def test_forward_reaching_a_resync_target_that_no_longer_orders_it_is_sent_again(tmp_path):
    """Seen in the 20-event test under load: b left PAIRED for a moment and
    came back as an in-sync resync target while a was still PAIRED. a
    forwarded a host write for stripe 1 (b's by parity) and b held it until
    the bitmaps met; the stripe was dirty, so the source (a) orders it now,
    and b dropped the link ("forward for a stripe we do not order"): both
    fenced, held I/O, a new resync -- a flap caused by nothing but the order in
    which the two sides changed modes. The owner now sends such a forward back
    (M_REORDER) and the forwarder sends it again once the modes agree: the
    write succeeds, on both replicas, and the link stays up."""
    import os

    a, b = make_pair(tmp_path)
    try:
        a.mode("paired")
        b.mode("paired")
        wait(lambda: a.up() and b.up(), what="link up")
        stripe1 = 1 << 20                      # stripe 1: ordered by b (node 1) when paired
        assert a.core.test_io("v", "write", stripe1, 4096, os.urandom(4096))[0] == 0
        w = os.urandom(4096)
        b.mode("solo")                         # b alone for a moment: stripe 1 dirty on b
        wait(lambda: b.link_info()["mode"] == 2, what="b solo")
        assert b.core.test_io("v", "write", stripe1 + 8192, 4096, os.urandom(4096))[0] == 0
        assert b.info()["dirty_stripes"] >= 1
        b.mode("resync_target")                # b back, in sync, the higher name: target
        connects = (a.link_info()["connects"], b.link_info()["connects"])
        res = {}
        t = threading.Thread(target=lambda: res.setdefault(
            "w", a.core.test_io("v", "write", stripe1 + 4096, 4096, w)))
        t.start()                              # a, still PAIRED, forwards it to b: held
        time.sleep(0.3)
        assert t.is_alive()
        a.mode("resync_source")
        a.resync()
        b.resync()
        t.join(10)
        assert not t.is_alive() and res["w"][0] == 0, res
        wait(lambda: a.info()["resync_done"] and b.info()["resync_done"], 10, "resync")
        la, lb = a.link_info(), b.link_info()
        assert lb["fwd_bounced"] >= 1
        assert la["proto_errors"] == lb["proto_errors"] == 0
        assert (la["connects"], lb["connects"]) == connects and la["up"] and lb["up"]
        for side in (a, b):
            assert side.core.test_io("r0", "read", stripe1 + 4096, 4096)[1] == w
        assert replica_diff(a, b) == []
    finally:
        a.close()
        b.close()


def test_a_link_carries_volume_ids_up_to_1023(tmp_path):
    """A pair's cluster volumes take mirror ids 1023 - slot (ctrl/cluster_sync.py):
    a mirror on the highest id replicates like id 0, and 1024 is refused with
    the range in the message."""
    import os

    with paired(tmp_path) as (a, b):
        for s in (a, b):
            s.core.bdev_create_malloc("r1", 8 << 20)
            check(lib.srrs_mirror_create(s.link, b"w", b"r1", 1023, 1 << 20,
                                         str(tmp_path / f"{s.name}.w.bitmap").encode()), "w")
        try:
            data = os.urandom(8192)
            assert a.core.test_io("w", "write", 4096, 8192, data)[0] == 0
            assert b.core.test_io("r1", "read", 4096, 8192)[1] == data    # on the peer's replica
            assert b.core.test_io("w", "read", 4096, 8192) == (0, data)
            with pytest.raises(SrrsError, match=r"volume id 1024 out of range 0\.\.1023"):
                check(lib.srrs_mirror_create(a.link, b"x", b"r1", 1024, 1 << 20,
                                             str(tmp_path / "x.bitmap").encode()), "x")
        finally:
            for s in (a, b):
                s.core.bdev_delete("w")


def test_mirror_create_on_a_volume_id_in_use(tmp_path):
    """A second mirror on a volume id the link already carries is refused; the
    first goes on, and the refused one's replica keeps its name."""
    with paired(tmp_path) as (a, b):
        a.core.bdev_create_malloc("q", 8 << 20)
        with pytest.raises(SrrsError, match="volume id 0 already used"):
            check(lib.srrs_mirror_create(a.link, b"q", b"q", 0, 1 << 20,
                                         str(tmp_path / "q.bitmap").encode()), "q")
        names = {x["name"] for x in a.core.bdev_list()}
        assert "q" in names and "q.replica" not in names
        assert a.info()["dirty_stripes"] == 0
        data = b"\x5a" * 4096
        assert a.core.test_io("v", "write", 0, 4096, data)[0] == 0
        assert b.core.test_io("r0", "read", 0, 4096)[1] == data


def test_a_resync_side_starting_over_on_a_live_link_makes_its_peer_start_over(tmp_path):
    """CI, test_random_events seed 82763241: b, the source of a running
    resync, fenced for 50 ms ("peer does not hear us") and came back as the
    source of a new resync on a link that had stayed up. a, the target, kept
    its half of the old resync -- which stripes the source still orders --
    while b computed new ones, and b's copy of a stripe overwrote a write that
    a had ordered and acknowledged (lost on both replicas). A side whose
    resync is running and whose peer starts one over (its bitmap asked for
    again on the same connection) now drops the link: what the two sides
    disagree on is settled by both control planes entering their modes anew.
    A bitmap goes out once per resync and connection, so nothing else asks
    for one again."""
    import os

    a, b = make_pair(tmp_path)
    try:
        a.mode("paired")
        b.mode("paired")
        wait(lambda: a.up() and b.up(), what="link up")
        for src, tgt in ((b, a), (a, b)):
            # a resync that runs for a while: everything, at 4 MiB/s
            check(lib.srrs_mirror_set_copy_limit(src.link, 1, 4 << 20))

            def enter(tgt=tgt, src=src):
                # the target first: its full bitmap is what the source gets
                tgt.mode("resync_target")
                tgt.resync(full=True)
                src.mode("resync_source")
                src.resync(full=True)
                src.resync()          # asked twice: no second bitmap goes out
                tgt.resync()

            enter()
            wait(lambda src=src: src.info()["resync_active"], what="copy running")
            time.sleep(0.2)
            c0 = (a.link_info()["connects"], b.link_info()["connects"])
            assert a.up() and b.up() and src.info()["resync_active"]
            for side in (src, tgt):     # either side may be the one starting over
                side.mode("fenced")
                side.mode("resync_source" if side is src else "resync_target")
                side.resync(full=True)
                peer = tgt if side is src else src
                wait(lambda peer=peer, c0=c0: not peer.up()
                     or (a.link_info()["connects"], b.link_info()["connects"]) != c0, 10,
                     "the peer drops the link")
                # both control planes decide again (the link stays down until they do)
                for s in (a, b):
                    s.mode("fenced")
                enter()
                wait(lambda: a.up() and b.up(), what="link up again")
                wait(lambda src=src: src.info()["resync_active"], what="copy running again")
                c0 = (a.link_info()["connects"], b.link_info()["connects"])
            check(lib.srrs_mirror_set_copy_limit(src.link, 0, 0))
            w = os.urandom(4096)
            assert tgt.core.test_io("v", "write", 5 << 20, 4096, w)[0] == 0
            wait(lambda: a.info()["resync_done"] and b.info()["resync_done"], 30, "resync")
            for side in (a, b):
                assert side.core.test_io("r0", "read", 5 << 20, 4096)[1] == w
            assert replica_diff(a, b) == []
            a.mode("paired")
            b.mode("paired")
    finally:
        a.close()
        b.close()


def test_a_full_copy_target_starting_after_the_sources_bitmap_came_is_behind_everywhere(tmp_path):
    """A full copy's target marks its whole bitmap when its resync starts.
    The source's bitmap may come first -- between the target's control plane
    setting the mode and starting the resync -- and the target used to start
    on it at once, its own bitmap still unmarked: it took itself to be
    current on stripes never copied, and served their reads from its empty
    replica (zeros for data the source has). A side's bitmap is now sent and
    used only once its resync was started."""
    import os

    a, b = make_pair(tmp_path)
    try:
        a.mode("paired")
        b.mode("paired")
        wait(lambda: a.up() and b.up(), what="link up")
        w = os.urandom(4096)
        assert a.core.test_io("v", "write", 40 << 20, 4096, w)[0] == 0
        # b's replica lost its data (a new, empty replica): a full copy to it
        assert b.core.test_io("r0", "write", 40 << 20, 4096, bytes(4096))[0] == 0
        check(lib.srrs_mirror_set_copy_limit(a.link, 1, 1 << 20))   # the copy lasts
        b.mode("resync_target")
        a.mode("resync_source")
        a.resync(full=True)           # a's bitmap reaches b before b's resync starts
        time.sleep(0.3)
        b.resync(full=True)
        wait(lambda: a.info()["resync_active"], what="copy running")
        assert b.info()["resync_left"] >= 60       # every stripe not yet copied
        assert b.core.test_io("v", "read", 40 << 20, 4096)[1] == w   # from a
        check(lib.srrs_mirror_set_copy_limit(a.link, 0, 0))
        wait(lambda: a.info()["resync_done"] and b.info()["resync_done"], 30, "resync")
        assert b.core.test_io("r0", "read", 40 << 20, 4096)[1] == w
        assert replica_diff(a, b) == []
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("orderer", [1, 2])
def test_one_controller_orders_every_stripe(tmp_path, orderer):
    """[pair] orderer: one side orders every stripe (for hosts that write
    through it: none of its writes is forwarded, both legs start at once),
    the other forwards all of its writes; writes from both sides at once
    land identical on both replicas."""
    a, b = make_pair(tmp_path, sole_orderer=(orderer, orderer))
    try:
        a.mode("paired")
        b.mode("paired")
        wait(lambda: a.up() and b.up(), what="link up")
        owner, other = (a, b) if orderer == 1 else (b, a)
        r = bench(owner, bs=4096, bs_max=256 << 10, time_s=0.5)
        assert r["errors"] == 0 and r["ios"] > 0
        assert owner.info()["forwarded"] == 0
        before = other.info()["forwarded"]
        r = bench(other, bs=4096, time_s=0, max_ios=500, qd=8)
        assert r["errors"] == 0 and other.info()["forwarded"] - before == 500
        ra, rb = both(lambda: bench(a, bs=4096, bs_max=1 << 20, time_s=1.0),
                      lambda: bench(b, bs=4096, bs_max=1 << 20, time_s=1.0))
        assert ra["errors"] == rb["errors"] == 0
        assert owner.info()["forwarded"] == 0
        wait(lambda: a.info()["dirty_stripes"] == 0 and b.info()["dirty_stripes"] == 0, 5,
             "every dirty bit cleared")
        assert replica_diff(a, b) == []
    finally:
        a.close()
        b.close()


def test_a_peer_that_orders_otherwise_is_refused(tmp_path):
    """Both sides must agree on who orders (HELLO carries it): one side set to
    order everything and the other to split would both order the odd stripes.
    The link never comes up, and the side that read the other's HELLO first
    says why in an event (the other sees the connection close)."""
    a, b = make_pair(tmp_path, sole_orderer=(1, 0))
    try:
        a.mode("paired")
        b.mode("paired")
        wait(lambda: a.link_info()["proto_errors"] + b.link_info()["proto_errors"] > 0,
             what="a side refuses the other's HELLO")
        time.sleep(0.3)
        texts = [e["msg"] for side in (a, b) for e in side.core.events()]
        assert not any("mirror link up" in t for t in texts), texts
        assert any("the peer orders writes by stripe (split), we all on node 0" in t or
                   "the peer orders writes all on node 0, we by stripe (split)" in t
                   for t in texts), texts
        assert not a.info()["replicated"] and not b.info()["replicated"]
    finally:
        a.close()
        b.close()


def _in_thread(fn):
    """fn() in a thread: (thread, results list it appends its value to)."""
    import threading

    out = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    return t, out


def test_a_single_path_io_is_held_while_fenced_and_served_when_paired(tmp_path):
    """hold_ms (docs/architecture.md, Pair: a single-path host): fenced, a
    VM's I/O (vhost-user: one path) waits instead of failing, and is started
    again, whole, once the mirror serves; a multipath host's (NVMe/TCP) fails
    at once as before, a path error its host retries on the peer."""
    import errno
    import os
    import time

    a, b = make_pair(tmp_path, hold_ms=(5000, 0))
    try:
        a.mode("paired")
        b.mode("paired")
        wait(lambda: a.up() and b.up(), what="link up")
        a.mode("fenced")
        data = os.urandom(8192)
        assert a.core.test_io("v", "write", 0, 8192, data)[0] == -errno.ENOTCONN
        # across the stripe boundary: two pieces, started again as one I/O
        off = (1 << 20) - 4096
        t, out = _in_thread(lambda: a.core.test_io("v", "write", off, 8192, data,
                                                   one_path=True))
        wait(lambda: a.link_info()["held_ios"] == 1, what="held")
        time.sleep(0.5)
        assert t.is_alive() and not out
        t2, out2 = _in_thread(lambda: a.core.test_io("v", "read", off, 8192, one_path=True))
        wait(lambda: a.link_info()["held_ios"] == 2, what="the read held too")
        a.mode("paired")
        t.join(10)
        t2.join(10)
        assert out == [(0, b"")], out
        assert out2 and out2[0][0] == 0, out2
        li = a.link_info()
        assert li["held_ios"] == 0 and li["hold_retries"] >= 2 and li["hold_expired"] == 0, li
        # on both replicas: the write went through the pair
        for s in (a, b):
            assert s.core.test_io("r0", "read", off, 8192)[1] == data
    finally:
        a.close()
        b.close()


def test_a_held_io_fails_when_the_hold_runs_out_or_its_host_stops_the_queue(tmp_path):
    """Held no longer than hold_ms; and let go at once when its host stops the
    queue (vhost-user GET_VRING_BASE, a disconnect: the queue must drain), while
    I/O submitted after that is held again."""
    import errno
    import time

    a, b = make_pair(tmp_path, hold_ms=(400, 0))
    try:
        a.mode("fenced")
        t0 = time.monotonic()
        st, _ = a.core.test_io("v", "read", 0, 4096, one_path=True)
        took = time.monotonic() - t0
        assert st == -errno.ENOTCONN and 0.39 <= took < 5, (st, took)
        assert a.link_info()["hold_expired"] == 1
        a.core.test_release_held("v")       # holds nothing: no effect
    finally:
        a.close()
        b.close()
    a, b = make_pair(tmp_path, hold_ms=(10000, 0))
    try:
        a.mode("fenced")
        t, out = _in_thread(lambda: a.core.test_io("v", "write", 0, 4096, b"x" * 4096,
                                                   one_path=True))
        wait(lambda: a.link_info()["held_ios"] == 1, what="held")
        t0 = time.monotonic()
        a.core.test_release_held("v")
        t.join(10)
        assert out == [(-errno.ENOTCONN, b"")] and time.monotonic() - t0 < 1, out
        assert a.link_info()["held_ios"] == 0
        t, out = _in_thread(lambda: a.core.test_io("v", "write", 0, 4096, b"y" * 4096,
                                                   one_path=True))
        wait(lambda: a.link_info()["held_ios"] == 1, what="held again")
        wait(lambda: a.up() and b.up(), what="link up")
        b.mode("paired")
        a.mode("paired")
        t.join(10)
        assert out == [(0, b"")], out
        wait(lambda: b.core.test_io("r0", "read", 0, 4096)[1] == b"y" * 4096, what="on b")
    finally:
        a.close()
        b.close()
