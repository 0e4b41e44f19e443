"""Every command gets exactly one completion, whatever its fields and whatever
came before it: the command-sequence fuzzer (tests/nvmf/cmdfuzz.py) on an
admin and an I/O queue with namespace and ANA changes in between, and the
sequences it found replayed deterministically."""

import os
import random
import struct
import threading
import time

import pytest

from . import cmdfuzz, wire
from .conftest import NQN

SEQS = int(os.environ.get("SRRS_NVMF_CMD_FUZZ_SEQS", "400"))
SC_INVALID_FIELD = 0x4002
SC_INVALID_OPCODE = 0x4001
SC_SQ_DELETED = 0x0008
CC_EN = cmdfuzz.CC_EN


def _no_slot_held(target):
    """After everything completed, the target holds no request of our queues."""
    def check(r):
        cntlid = r.q["admin"].c.cntlid
        end = time.monotonic() + 2
        while True:
            qs = [q for q in target.list_qpairs() if q["cntlid"] == cntlid]
            if all(q["outstanding"] == 0 for q in qs) or time.monotonic() > end:
                break
            time.sleep(0.01)
        assert all(q["outstanding"] == 0 for q in qs), \
            f"requests held after every command completed: {qs}\nsequence: {r.log!r}"
    return check


@pytest.mark.side
def test_command_sequences_fuzz(core, target):
    """Two hosts at once, each a run of random sequences (SRRS_NVMF_CMD_FUZZ_SEQS
    in all); between batches the namespace set and the ANA state change, so
    parked AERs complete too."""
    lock = threading.Lock()
    ev = random.Random(7)
    ns2 = [False]

    def between(i):
        with lock:
            k = ev.random()
            if k < 0.04:
                target.set_ana_state(NQN, 1, ev.choice(["non_optimized", "inaccessible",
                                                        "optimized", "optimized"]))
            elif k < 0.08:
                if ns2[0]:
                    target.remove_namespace(NQN, 2)
                else:
                    target.add_namespace(NQN, "m1", nsid=2)
                ns2[0] = not ns2[0]

    errors, done = [], [0]

    def worker(first):
        for seed in range(first, first + SEQS // 2):
            rng = random.Random(seed)
            try:
                cmdfuzz.run(target.port, NQN, cmdfuzz.gen_sequence(rng, 20), 5.0, rng,
                            _no_slot_held(target), between)
            except AssertionError as e:
                errors.append(f"seed {seed}: {e}")
                return
            done[0] += 1

    t0 = time.monotonic()
    ts = [threading.Thread(target=worker, args=(s,)) for s in (0, 100000)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print(f"{done[0]} sequences in {time.monotonic() - t0:.1f} s")
    assert not errors, errors[0][:20000]
    assert target.stats()["proto_errors"] == 0


# ---- regressions: sequences the fuzzer found ------------------------------------

def test_prp_and_reserved_psdt_fail_at_once(target):
    """An AER with PSDT 00b (PRP) or 11b (reserved) was parked instead of
    failing (fuzzer seed 155: the AER never completed); a vendor admin opcode
    with PSDT 10b and an unknown I/O opcode with PSDT 11b (the nvme_fuzz pair)
    fail at once too."""
    seq = {"opts": {}, "batches": [
        [dict(q="admin", opc=0x0C, flags=0x04, nsid=1, cdw10=139, sgl_type=0x5B, sgl_len=0)],
        [dict(q="admin", opc=0x0C, flags=0xC0, sgl_type=0x5A),
         dict(q="admin", opc=0x0C, flags=0x00, sgl_type=0x5A),
         dict(q="admin", opc=0xDC, flags=0x80, sgl_type=0x5A),
         dict(q="io", opc=0x30, flags=0xC0, nsid=1, sgl_type=0x5A)]]}
    cmdfuzz.run(target.port, NQN, seq, 3.0)
    a, cntlid = wire.admin_session("127.0.0.1", target.port, NQN)
    a.s.settimeout(3)
    for flags in (0x00, 0x04, 0xC0, 0x41, 0x42, 0x43):
        st, *_ = a.cmd(wire.sqe(0x0C, a.next_cid(), flags=flags))
        assert st == SC_INVALID_FIELD, (hex(flags), hex(st))
    assert a.cmd(wire.sqe(0xDC, a.next_cid(), flags=0x80))[0] == SC_INVALID_OPCODE
    io = wire.io_session("127.0.0.1", target.port, NQN, cntlid)
    io.s.settimeout(3)
    assert io.cmd(wire.sqe(0x30, 1, 1, flags=0xC0))[0] == SC_INVALID_FIELD
    assert io.cmd(wire.sqe(0x02, 2, 1, flags=0x00, sgl_len=4096))[0] == SC_INVALID_FIELD
    a.close()
    io.close()


def _rsp(c):
    t, _, hdr, _ = c.recv_pdu()
    assert t == wire.RSP, t
    _, _, _, _, cid, status = struct.unpack_from("<IIHHHH", hdr)
    return cid, status >> 1


@pytest.mark.parametrize("cc", [0, CC_EN | 1 << 14], ids=["reset", "shutdown"])
def test_reset_or_shutdown_completes_parked_aers(target, cc):
    """Parked AERs used to stay parked across CC.EN 1 -> 0 or a shutdown (the
    fuzzer's reset sequences): never completed, holding the AER limit, and
    answering a later event under a command ID the host had reused."""
    a, _ = wire.admin_session("127.0.0.1", target.port, NQN)
    a.s.settimeout(3)
    assert a.admin(0x09, cdw10=0x0B, cdw11=1 << 11)[0] == 0  # ANA change notices
    for cid in (501, 502):
        a.send(a.pdu(wire.CMD, wire.sqe(0x0C, cid)))
    time.sleep(0.1)
    a.send(a.pdu(wire.CMD, wire.sqe(0x7F, 503, nsid=0x00, cdw11=0x14, cdw12=cc)))
    got = dict(_rsp(a) for _ in range(3))
    assert got == {503: 0, 501: SC_SQ_DELETED, 502: SC_SQ_DELETED}, got
    # enabled again: a full set of AERs parks (none left over holds the limit) ...
    assert a.prop_set(0x14, 0)[0] == 0
    a.enable()
    for cid in range(600, 604):
        a.send(a.pdu(wire.CMD, wire.sqe(0x0C, cid)))
    assert a.admin(0x18)[0] == 0
    # ... and an event completes one of the new ones, not an old command ID
    target.set_ana_state(NQN, 1, "non_optimized")
    cid, st = _rsp(a)
    assert st == 0 and 600 <= cid < 604
    a.close()
