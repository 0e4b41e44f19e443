"""DH-HMAC-CHAP configuration: [[nvmf.subsystem.host]] secret files (0600 only),
require_auth, the RPC methods, and a real `srrs start` controller that our
initiator (`srrs bench nvmf --dhchap-secret`) authenticates to. A secret never
appears in RPC output, status, saved config or the controller's log."""

import json
import os
import socket

import pytest

from srrs.ctrl import launch
from srrs.nvmf import config as C
from tests.ctrl.helpers import Controller, srrs, write_config

from . import dhchap_host as D

HOST = "nqn.2014-08.org.nvmexpress:uuid:5352532d-0000-4000-8000-00000000b001"
NQN = "nqn.2026-11.io.srrs:authcfg"


def _section(hf, cf=None, **host):
    h = {"nqn": HOST, "dhchap_secret_file": hf, **host}
    if cf:
        h["dhchap_ctrl_secret_file"] = cf
    return {"listen": ["127.0.0.1:0"], "subsystem": [{
        "nqn": NQN, "namespaces": ["m0"], "allow_hosts": [], "require_auth": True, "host": [h]}]}


def test_parse_host_auth(tmp_path):
    hs, cs = D.gen_secret(1, 32), D.gen_secret(3, 64)
    hf = D.write_secret_file(tmp_path / "h.key", hs)
    cf = D.write_secret_file(tmp_path / "c.key", cs)
    cfg = C.parse(_section(hf, cf, dhchap_hash="sha384", dhchap_dhgroup="ffdhe3072"))
    s = cfg.subsystems[0]
    assert s.require_auth and s.hosts == (C.NvmfHostAuth(HOST, hf, cf, "sha384", "ffdhe3072"),)
    assert C.parse(C.to_dict(cfg)) == cfg
    assert hs not in repr(C.to_dict(cfg)) and cs not in repr(cfg)
    loose = D.write_secret_file(tmp_path / "loose.key", hs, mode=0o640)
    cases = [
        (_section(loose), "nvmf.subsystem[0].host[0].dhchap_secret_file", "mode 0640"),
        (_section(hf, loose), "nvmf.subsystem[0].host[0].dhchap_ctrl_secret_file", "chmod 600"),
        (_section("rel/path"), "nvmf.subsystem[0].host[0].dhchap_secret_file", "absolute"),
        (_section(str(tmp_path / "none")), "dhchap_secret_file", "cannot open"),
        (_section(hf, dhchap_hash="md5"), "nvmf.subsystem[0].host[0].dhchap_hash", "sha256"),
        (_section(hf, dhchap_dhgroup="ffdhe1024"), "host[0].dhchap_dhgroup", "ffdhe2048"),
        (_section(hf, require_auth=False), "host[0].require_auth", "always"),
    ]
    for sec, key, msg in cases:
        with pytest.raises(ValueError) as e:
            C.parse(sec)
        assert key in str(e.value) and msg in str(e.value), str(e.value)
        assert hs not in str(e.value)
    nosec = _section(hf)
    del nosec["subsystem"][0]["host"][0]["dhchap_secret_file"]
    with pytest.raises(ValueError, match="dhchap_secret_file: required"):
        C.parse(nosec)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_controller_process_requires_auth(tmp_path):
    hs, cs = D.gen_secret(1, 32), D.gen_secret(0, 32)
    hf = D.write_secret_file(tmp_path / "h.key", hs)
    cf = D.write_secret_file(tmp_path / "c.key", cs)
    port = _free_port()
    sock = str(tmp_path / "rpc.sock")
    cfgp = write_config(tmp_path / "c.toml", sock, reactors=2, extra={
        "bdev": [launch.bdev("m0", "malloc", "16MiB")],
        "nvmf": launch.nvmf([f"127.0.0.1:{port}"], [launch.subsystem(
            NQN, ["m0"], require_auth=True,
            host=[{"nqn": HOST, "dhchap_secret_file": str(hf),
                   "dhchap_ctrl_secret_file": str(cf)}])])})
    ctl = Controller(cfgp, sock)
    try:
        base = ["bench", "nvmf", "--target", f"127.0.0.1:{port}", "--nqn", NQN, "--rw", "randrw",
                "--time", "0.5", "--qd", "4", "--verify", "--json", "--path-timeout", "0"]
        r = srrs(*base, "--hostnqn", HOST, "--dhchap-secret", hf, "--dhchap-ctrl-secret", cf)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["verified"] is True
        r = srrs(*base, "--hostnqn", HOST)  # allowed host (any host), no secret
        assert r.returncode != 0 and "no secret was given" in r.stderr
        r = srrs(*base)  # another host NQN: refused at Connect (require_auth)
        assert r.returncode != 0 and "refused" in r.stderr
        # RPC: another host with its secret; a loose file is refused by name.
        other = "nqn.2014-08.org.nvmexpress:uuid:5352532d-0000-4000-8000-00000000b002"
        loose = D.write_secret_file(tmp_path / "loose.key", hs, mode=0o644)
        with pytest.raises(Exception, match="loose.key has mode 0644"):
            ctl.rpc("nvmf_subsystem_set_host_auth", {"nqn": NQN, "host": other,
                                                     "dhchap_secret_file": loose})
        of = D.write_secret_file(tmp_path / "o.key", D.gen_secret(0, 64))
        ctl.rpc("nvmf_subsystem_add_host", {"nqn": NQN, "host": other})
        ctl.rpc("nvmf_subsystem_set_host_auth", {"nqn": NQN, "host": other,
                                                 "dhchap_secret_file": of,
                                                 "dhchap_dhgroup": "null"})
        r = srrs(*base, "--hostnqn", other, "--dhchap-secret", of)
        assert r.returncode == 0, r.stderr
        subs = ctl.rpc("nvmf_get_subsystems")
        sub = [s for s in subs if s["nqn"] == NQN][0]
        assert sub["require_auth"] is True
        assert {h["nqn"] for h in sub["dhchap_hosts"]} == {HOST, other}
        saved = tmp_path / "saved.toml"
        ctl.rpc("save_config", {"path": str(saved)})
        text = saved.read_text()
        assert "dhchap_secret_file" in text and str(hf) in text
        everything = json.dumps(subs) + text + json.dumps(ctl.rpc("nvmf_get_controllers"))
        for sec in (hs, cs, open(of).read().strip()):
            assert sec.split(":")[2][:20] not in everything
    finally:
        ctl.stop()
        out = ctl.output()
    for sec in (hs, cs):
        assert sec.split(":")[2][:20] not in out
    assert os.stat(hf).st_mode & 0o777 == 0o600


def test_auth_timeout_config(core, tmp_path):
    """[nvmf] auth_timeout_ms reaches the core: a host that never authenticates
    is dropped after it."""
    import time

    from srrs.nvmf.target import NvmfTarget

    from . import wire
    hf = D.write_secret_file(tmp_path / "h.key", D.gen_secret(0, 32))
    sec = dict(_section(hf), auth_timeout_ms=600)
    cfg = C.parse(sec)
    assert cfg.auth_timeout_ms == 600 and C.parse(C.to_dict(cfg)) == cfg
    core.bdev_create_malloc("m0", 8 << 20, 4096)
    t = NvmfTarget.from_config(core, cfg)
    try:
        port = t.listeners()[0]["port"]
        c = wire.Conn("127.0.0.1", port)
        c.icreq()
        st, dw0, _, _ = c.connect(NQN, hostnqn=HOST)
        assert st == 0 and dw0 & (1 << 17)
        t0 = time.monotonic()
        c.s.settimeout(5)
        assert c.s.recv(1) == b""
        assert time.monotonic() - t0 < 2.5
        assert t.to_config().auth_timeout_ms == 600
    finally:
        t.close()
