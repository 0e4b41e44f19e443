"""Many thin volumes in one pass of the pool's reactor (srrs_lvol_create_many,
`volume_create names=[...]`; docs/architecture.md, Control plane at scale):
their records share the fragment flushes, and each volume counts as created
only once its record is durable. A record whose commit fails leaves nothing
(its slot back, a tombstone where it may have landed), the others are
created; names already taken or repeated are refused one by one; a batch
acknowledged before a SIGKILL of the controller is all there after the
restart."""

import random
import threading
import time

import pytest

from srrs.ctrl import launch
from srrs.ctrl.rpc import RpcError
from srrs.ffi.binding import Core, SrrsError, lib

from .util import MiB, frag_file, open_pool

CS = 1 * MiB


def _names(pool) -> list:
    return sorted(v["name"] for v in pool.volume_list())


def _slots_used(pool) -> int:
    return pool.info()["md_slots_used"]


def test_create_many_in_one_pass(tmp_path):
    """300 volumes (more than the 256 in commit at once) in one call: all
    there, in order, each with its own UUID, their records sharing flushes,
    and again after a reopen."""
    frag = frag_file(tmp_path / "f.img", 256 * MiB)
    names = [f"v{i:03d}" for i in range(300)]
    with Core(reactors=1) as core:
        pool = open_pool(core, [frag], metadata_slots=1024)
        try:
            writes, flushes = pool.info()["md_writes"], pool.info()["md_flushes"]
            infos, err = pool.volume_create_many(names, 4 * CS)
            assert err is None
            assert [i["name"] for i in infos] == names
            assert len({i["uuid"] for i in infos}) == 300
            assert all(i["size"] == 4 * CS and i["thin"] for i in infos)
            assert pool.info()["md_writes"] - writes == 300, "one commit per record"
            # group commit: a flush covers every record whose copy A was written
            # before it; 256 in commit at once leave a handful (not timed: a
            # flush per record would be 300)
            assert pool.info()["md_flushes"] - flushes < 100
            assert _slots_used(pool) == 300
            uuids = {i["name"]: i["uuid"] for i in infos}
        finally:
            pool.close()
        pool = open_pool(core, [frag])
        try:
            assert {v["name"]: v["uuid"] for v in pool.volume_list()} == uuids
        finally:
            pool.close()


def test_create_many_refuses_one_by_one(tmp_path):
    """A name taken (a volume, or any bdev), repeated in the call, or too long
    is refused alone; the others are created and the first error is reported;
    with the metadata slots exhausted midway the rest get -ENOSPC."""
    frag = frag_file(tmp_path / "f.img", 64 * MiB)
    with Core(reactors=1) as core:
        pool = open_pool(core, [frag], metadata_slots=256)
        try:
            pool.volume_create("old", CS)
            infos, err = pool.volume_create_many(["a", "old", "b", "b", "x" * 64, "c"], CS)
            assert [i and i["name"] for i in infos] == ["a", None, "b", None, None, "c"]
            assert isinstance(err, SrrsError) and "old" in str(err) and "3 of 6" in str(err)
            assert _names(pool) == ["a", "b", "c", "old"]
            assert _slots_used(pool) == 4
            free = pool.info()["md_slots"] - _slots_used(pool)
            names = [f"n{i:03d}" for i in range(free + 5)]
            infos, err = pool.volume_create_many(names, CS)
            assert err is not None and err.errno == 28  # ENOSPC
            assert sum(i is not None for i in infos) == free
            assert infos[-1] is None and infos[0]["name"] == "n000"
            assert _slots_used(pool) == pool.info()["md_slots"]
            assert len(pool.volume_list()) == 4 + free
        finally:
            pool.close()


def test_create_many_counts_the_tenant(tmp_path):
    """The volumes count against their tenant (which cannot be deleted while
    they exist); an unknown tenant refuses every volume and creates none."""
    frag = frag_file(tmp_path / "f.img", 64 * MiB)
    with Core(reactors=1) as core:
        pool = open_pool(core, [frag], metadata_slots=256)
        try:
            pool.tenant_set("t1", 0)
            infos, err = pool.volume_create_many(["a", "b"], CS, tenant="t1")
            assert err is None and [i["tenant"] for i in infos] == ["t1", "t1"]
            with pytest.raises(SrrsError, match="2 volume"):
                pool.tenant_delete("t1")
            infos, err = pool.volume_create_many(["c", "d"], CS, tenant="nope")
            assert infos == [None, None] and "tenant nope" in str(err)
            assert _names(pool) == ["a", "b"] and _slots_used(pool) == 2
        finally:
            pool.close()


@pytest.mark.parametrize("step,reached", [(0, False), (1, False), (2, True)],
                         ids=["A-refused", "flush", "B-landed"])
def test_failed_records_leave_nothing(tmp_path, step, reached):
    """The first three records' commits fail (copy A refused, the flush, or
    copy B written but reported failed): those three volumes are not created
    (a tombstone covers a record that may have landed), their slots go back,
    the other 97 are created; a reopen finds exactly those 97."""
    frag = frag_file(tmp_path / "f.img", 256 * MiB)
    names = [f"v{i:03d}" for i in range(100)]
    with Core(reactors=1) as core:
        pool = open_pool(core, [frag], metadata_slots=512)
        try:
            assert lib.srrs_test_pool_md_fail(pool.ptr, 3, step, int(reached)) == 0
            infos, err = pool.volume_create_many(names, 2 * CS)
            assert err is not None and "97 of 100" in str(err)
            got = [i["name"] for i in infos if i is not None]
            assert got == names[3:]
            assert _names(pool) == names[3:]
            assert _slots_used(pool) == 97
            assert pool.info()["md_unsure_pages"] == 0
            pool.volume_create("v000", CS)  # the name is free again
            pool.volume_delete("v000")
        finally:
            pool.close()
        pool = open_pool(core, [frag])
        try:
            assert _names(pool) == names[3:]
            assert _slots_used(pool) == 97
        finally:
            pool.close()


def _creator(ctl, prefix: str, sent: list, acked: list, stop: threading.Event) -> None:
    """Volumes 200 a call until stopped or the controller is gone: each call's
    names into `sent` before it, into `acked` once it answered."""
    n = 0
    while not stop.is_set():
        batch = [f"{prefix}{n + i:05d}" for i in range(200)]
        sent.append(batch)
        try:
            ctl.rpc("volume_create", {"names": batch, "pool": "p", "size": "1GiB"}, timeout=30)
        except (OSError, RpcError):
            return
        acked.extend(batch)
        n += 200


def test_acked_batches_survive_sigkill(tmp_path):
    """A client creates volumes 200 a call while the controller is killed
    (SIGKILL) at a random moment, five times: after each restart every volume
    of every acknowledged call is there, nothing else but the volumes of the
    call in flight (all, some or none of them), and creating goes on."""
    sock = str(tmp_path / "c.sock")
    conf = launch.config(launch.controller("ck", sock, reactors=1),
                         pools=[launch.pool("p", [launch.fragment(tmp_path / "f.img", "8GiB")],
                                            metadata_slots=40000)])
    ctl = launch.Controller(tmp_path / "c.toml", conf)
    rng = random.Random(17)
    acked: list = []
    try:
        for rnd in range(5):
            sent: list = []
            stop = threading.Event()
            t = threading.Thread(target=_creator, args=(ctl, f"r{rnd}v", sent, acked, stop))
            t.start()
            time.sleep(rng.uniform(0.3, 1.2))
            ctl.kill9()
            stop.set()
            t.join(30)
            assert not t.is_alive()
            ctl.restart()
            have = {v["name"] for v in ctl.rpc("volume_list", timeout=60)}
            missing = set(acked) - have
            assert not missing, f"round {rnd}: {len(missing)} acknowledged volumes lost"
            in_flight = set(sent[-1]) if sent else set()
            extra = have - set(acked) - in_flight
            assert not extra, f"round {rnd}: volumes nobody created: {sorted(extra)[:5]}"
            print(f"round {rnd}: {len(acked)} acked, {len(have & in_flight)} of the call in flight")
            acked.extend(sorted(have & in_flight))  # created after all: they stay
            assert ctl.rpc("status")["pool"]["pools"][0]["volumes"] == len(have)
        assert len(acked) >= 5 * 200, "the rounds created too little to tell"
    finally:
        ctl.kill9()
