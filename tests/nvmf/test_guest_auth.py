"""DH-HMAC-CHAP with the real Linux host: the kernel's nvme-tcp + nvme-auth
(the <codename>-backports kernel: Debian 12's own lacks CONFIG_NVME_AUTH) and
nvme-cli in a QEMU guest, against the target in this process. The secrets
are made by `nvme gen-dhchap-key` in the guest (from /dev/urandom: the early
boot guest has no entropy for its default random source)."""

import re

import pytest

from srrs.ffi.binding import Core
from srrs.nvmf.target import NvmfTarget
from tests.guest import harness as guest_harness

from . import dhchap_host as D
from .conftest import wait_for

NQN = "nqn.2026-11.io.srrs:authguest"
HOSTNQN = "nqn.2026-11.io.srrs:auth-guest-host"
OTHER = "nqn.2026-11.io.srrs:auth-guest-other"
H = guest_harness.HOST_FROM_GUEST
MODULES = ("nvme_tcp", "nvme_auth", "dh_generic", "hmac", "sha256_generic", "sha512_generic",
           "crc32c_generic")


def _gen_key(g, hmac: int, length: int) -> str:
    out = g.check(f"nvme gen-dhchap-key --secret=$(head -c {length} /dev/urandom | od -An -tx1 "
                  f"| tr -d ' \\n') --key-length={length} --hmac={hmac} --nqn={HOSTNQN}",
                  timeout=60)
    m = re.search(r"DHHC-1:\S+:", out)
    assert m, out
    return m.group(0)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    guest_harness.require_guest(backports=True)
    d = tmp_path_factory.mktemp("keys")
    core = Core(reactors=2)
    core.bdev_create_malloc("a0", 64 << 20, 4096)
    tgt = NvmfTarget(core, cntlid_min=10, cntlid_max=99)
    port = tgt.add_listener("127.0.0.1", 0)
    tgt.add_subsystem(NQN, "SRRSAUTH", "SRRS auth guest", allow_any_host=False)
    tgt.add_host(NQN, HOSTNQN)
    tgt.add_host(NQN, OTHER)
    tgt.add_namespace(NQN, "a0")
    tgt.set_require_auth(NQN, True)
    g = guest_harness.Guest(smp=2, hostnqn=HOSTNQN, modules=MODULES, backports=True)
    try:
        g.start()
        keys = {"host": _gen_key(g, 1, 32), "ctrl": _gen_key(g, 0, 48)}
        keys["host_file"] = D.write_secret_file(d / "host.key", keys["host"])
        keys["ctrl_file"] = D.write_secret_file(d / "ctrl.key", keys["ctrl"])
        keys["dir"] = d
        yield core, tgt, port, g, keys
    finally:
        print(g.diagnostics() if g else "")
        g.close()
        tgt.close()
        core.close()


def _connect(g, port, extra, ok=True):
    r = g.run(f"nvme connect -t tcp -a {H} -s {port} -n {NQN} {extra}", timeout=180)
    if not ok:
        return r
    assert r.ok, r.output
    g.check("for i in $(seq 200); do [ -b /dev/nvme0n1 ] && exit 0; sleep 0.1; done; exit 1",
            timeout=60)
    return r


def _disconnect(g, tgt):
    g.check(f"nvme disconnect -n {NQN}", timeout=60)
    assert wait_for(lambda: tgt.list_controllers() == [], 10)


def test_bidirectional_fio_verify_and_reauth(env):
    core, tgt, port, g, k = env
    tgt.set_host_dhchap(NQN, HOSTNQN, k["host_file"], k["ctrl_file"], "sha256", "ffdhe2048")
    ok0 = tgt.auth_stats()["auth_ok"]
    _connect(g, port, f"--dhchap-secret={k['host']} --dhchap-ctrl-secret={k['ctrl']}")
    ctrls = tgt.list_controllers()
    assert len(ctrls) == 1 and ctrls[0]["io_queues"] == 2
    assert tgt.auth_stats()["auth_ok"] - ok0 == 3  # admin + each I/O queue
    assert re.search(r"qid 0: controller authenticated", g.dmesg())
    g.check("fio --name=v --filename=/dev/nvme0n1 --rw=randwrite --bsrange=4k-256k "
            "--size=16M --verify=crc32c --do_verify=1 --direct=1 --ioengine=libaio "
            "--iodepth=8 --verify_fatal=1", timeout=900)
    g.check("dd if=/dev/urandom of=/root/pat bs=4k count=64 && "
            "dd if=/root/pat of=/dev/nvme0n1 bs=4k seek=9000 oflag=direct", timeout=120)
    # Re-authentication on request (a new host secret written to sysfs): every
    # queue authenticates again and I/O goes on.
    new = _gen_key(g, 2, 48)
    tgt.set_host_dhchap(NQN, HOSTNQN, D.write_secret_file(k["dir"] / "new.key", new),
                        k["ctrl_file"], "sha256", "ffdhe2048")
    ok1 = tgt.auth_stats()["auth_ok"]
    g.check(f"echo '{new}' > /sys/class/nvme/nvme0/dhchap_secret", timeout=60)
    assert wait_for(lambda: tgt.auth_stats()["auth_ok"] - ok1 >= 3, 60)
    assert tgt.auth_stats()["auth_failed"] == 0
    g.check("dd if=/dev/nvme0n1 of=/root/back bs=4k count=64 skip=9000 iflag=direct && "
            "cmp /root/pat /root/back", timeout=120)
    g.check("fio --name=v2 --filename=/dev/nvme0n1 --rw=randwrite --bs=4k --size=4M "
            "--offset=40M --verify=crc32c --do_verify=1 --direct=1 --ioengine=libaio "
            "--iodepth=8 --verify_fatal=1", timeout=900)
    _disconnect(g, tgt)
    tgt.set_host_dhchap(NQN, HOSTNQN, k["host_file"], k["ctrl_file"], "sha256", "ffdhe2048")


def test_unidirectional_sha512_null_group(env):
    core, tgt, port, g, k = env
    tgt.set_host_dhchap(NQN, HOSTNQN, k["host_file"], None, "sha512", "null")
    _connect(g, port, f"--dhchap-secret={k['host']}")
    g.check("dd if=/dev/urandom of=/root/p bs=4k count=16 && dd if=/root/p of=/dev/nvme0n1 "
            "bs=4k seek=100 oflag=direct && dd if=/dev/nvme0n1 of=/root/b bs=4k count=16 "
            "skip=100 iflag=direct && cmp /root/p /root/b", timeout=120)
    _disconnect(g, tgt)


def test_refusals(env):
    core, tgt, port, g, k = env
    tgt.set_host_dhchap(NQN, HOSTNQN, k["host_file"], k["ctrl_file"], "sha256", "ffdhe2048")
    wrong = _gen_key(g, 1, 32)
    failed0 = tgt.auth_stats()["auth_failed"]
    r = _connect(g, port, f"--dhchap-secret={wrong}", ok=False)
    assert not r.ok, "a wrong secret was accepted"
    assert tgt.auth_stats()["auth_failed"] > failed0
    r = _connect(g, port, "", ok=False)
    assert not r.ok, "a host without a secret was accepted"
    r = _connect(g, port, f"--dhchap-secret={k['host']} --dhchap-ctrl-secret={wrong}", ok=False)
    assert not r.ok, "the host accepted a controller with the wrong secret"
    # Allowed NQN, no secret configured for it, subsystem requires auth.
    r = _connect(g, port, f"--hostnqn={OTHER}", ok=False)
    assert not r.ok, "an allowed but unauthenticated host was accepted"
    assert wait_for(lambda: tgt.list_controllers() == [], 10)
    assert g.run("[ -b /dev/nvme0n1 ]").rc != 0
