"""The command line generated from the RPC method table (ctrl/methods.py):
--version, help listing every verb and flag, a real controller driven by
`srrs NOUN VERB --flag`, params checked from the declarations (-32602
naming the param), error kinds with their documented codes, and every
served method declared."""

import argparse
import inspect
import json
import os

import pytest

import srrs
from srrs import rpcdef
from srrs.ctrl import cli, core_rpc, methods, pair_rpc, pool_rpc
from srrs.ctrl.daemon import METHODS as SERVED
from srrs.ctrl.methods import TABLE
from srrs.ctrl.rpc import RpcClient, RpcError
from srrs.nvmf import rpc as nvmf_rpc
from srrs.vhost import rpc as vhost_rpc

from .helpers import Controller, write_config
from .helpers import srrs as run_srrs

DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "rpc.md")


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"srrs {srrs.__version__}"
    r = run_srrs("--version")  # and the installed entry point's way in
    assert r.returncode == 0 and r.stdout.strip() == f"srrs {srrs.__version__}"


def test_noun_help_lists_every_verb(capsys):
    nouns: dict = {}
    for m in TABLE:
        nouns.setdefault(m.noun, []).append(m)
    top = _help(capsys)
    for noun, ms in nouns.items():
        assert noun in top
        if ms[0].verb:
            out = _help(capsys, noun)
            for m in ms:
                assert f"    {m.verb} " in out or f"    {m.verb}\n" in out, (noun, m.verb, out)
    out = _help(capsys, "volume")
    assert all(v in out for v in ("create", "delete", "list", "resize"))


def test_verb_help_lists_every_param_with_help_and_default(capsys):
    for m in TABLE:
        out = " ".join(_help(capsys, m.noun, *([m.verb] if m.verb else [])).split())
        assert m.name in out  # (RPC name) in the description
        for p in m.params:
            assert "--" + p.name.replace("_", "-") in out, (m.name, p.name)
            if p.help:
                assert " ".join(p.help.split())[:30] in out, (m.name, p.name)
            if p.default not in (rpcdef.REQUIRED, None):
                assert f"default {json.dumps(p.default)}" in out, (m.name, p.name)
        assert "--json" in out


def test_every_served_method_is_declared_and_listed():
    # the daemon serves exactly the one table; every entry is a declaration
    assert SERVED is TABLE
    for m in TABLE:
        assert isinstance(m, rpcdef.Method) and m.help, m.name
        assert m.when in rpcdef.WHEN
        for p in m.params:
            assert isinstance(p, rpcdef.Param) and set(p.types) <= set(rpcdef.TYPES), (m.name, p)
    # every handler function of an RPC module is some declared method's handler
    handlers = {m.handler for m in TABLE}
    for mod in (core_rpc, nvmf_rpc, vhost_rpc, pool_rpc, pair_rpc):
        for name, fn in vars(mod).items():
            if inspect.isfunction(fn) and fn.__module__ == mod.__name__ and not name.startswith("_"):
                assert fn in handlers, f"{mod.__name__}.{name} is not declared in the table"
    with pytest.raises(TypeError):
        rpcdef.MethodTable().put(lambda ctx, p: None)
    names = {m.name for m in TABLE}
    assert {"bdev_create", "volume_create", "nvmf_subsystem_create", "vhost_create",
            "pair_status", "pool_create", "rpc_methods"} <= names
    ap = cli.build_parser()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    for m in TABLE:  # every method has its command
        p = sub.choices[m.noun]
        if m.verb:
            verbs = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
            assert m.verb in verbs.choices, m.name


def test_docs_rpc_md_is_current():
    with open(DOCS, encoding="utf-8") as f:
        assert f.read().strip() == methods.markdown().strip(), \
            "docs/rpc.md is stale: python -m srrs.ctrl.methods > docs/rpc.md"


def test_validation_from_declaration():
    m = TABLE["volume_create"]
    assert m.validate({"name": "v", "pool": "p", "size": "10GiB"})["size"] == 10 << 30
    for bad, word in (({"name": "v", "pool": "p"}, "'size' is required"),
                      ({"name": "v", "pool": "p", "size": "1XB"}, "'size': bad size"),
                      ({"name": 1, "pool": "p", "size": 1}, "'name' must be str"),
                      ({"name": "v", "pool": "p", "size": 1, "thin": 1}, "'thin' must be bool"),
                      ({"name": "v", "pool": "p", "size": 1, "zz": 1}, "'zz' is unknown")):
        with pytest.raises(rpcdef.InvalidParams, match=word) as e:
            m.validate(bad)
        assert e.value.code == -32602
    assert TABLE["nvmf_discover"].validate({"addr": "a"})["port"] == 4420  # default filled


def test_error_kinds_have_stable_codes():
    codes = {k.__name__: k.code for k in rpcdef.ERROR_KINDS}
    assert codes == {"InvalidParams": -32602, "NotFound": -32001, "AlreadyExists": -32002,
                     "Busy": -32003, "InvalidState": -32004, "NoSpace": -32005,
                     "Unauthorized": -32006, "IoFailed": -32007, "NotConfigured": -32008,
                     "NotAllowedNow": -32009}
    assert len(set(codes.values())) == len(codes)
    assert all(-32099 <= c <= -32000 for n, c in codes.items() if n != "InvalidParams")
    import errno

    assert rpcdef.from_exception(OSError(errno.ENOENT, "x")).code == -32001
    assert rpcdef.from_exception(OSError(errno.EBUSY, "x")).code == -32003
    assert rpcdef.from_exception(OSError(errno.ENOSPC, "x")).data == {"errno": errno.ENOSPC}
    assert rpcdef.from_exception(OSError(errno.EPIPE, "x")).code == -32000
    assert rpcdef.from_exception(ZeroDivisionError()) is None  # a bug: -32603 by the server
    e = rpcdef.error_from_json({"code": -32001, "message": "gone"})
    assert isinstance(e, rpcdef.NotFound) and str(e) == "gone"


@pytest.fixture
def ctl(tmp_path):
    sock = str(tmp_path / "c.sock")
    conf = write_config(tmp_path / "c.toml", sock, extra="""
[[pool]]
name = "p0"
cluster_size = "1MiB"
fragments = [ { ram = "64MiB" } ]
""")
    c = Controller(conf, sock)
    yield c
    c.kill()


def test_volume_through_the_generated_cli(ctl):
    s = ["-s", ctl.sock]
    r = run_srrs(*s, "volume", "create", "--name", "v0", "--size", "10GiB", "--pool", "p0", "--json")
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)
    assert v["name"] == "v0" and v["size"] == 10 << 30 and v["pool"] == "p0"
    r = run_srrs(*s, "volume", "list", "--json")
    assert r.returncode == 0 and [x["name"] for x in json.loads(r.stdout)] == ["v0"]
    r = run_srrs(*s, "volume", "list")  # people: one line per volume, no exit code trouble
    assert r.returncode == 0 and '"name": "v0"' in r.stdout
    r = run_srrs(*s, "volume", "create", "--name", "v0", "--size", "1GiB", "--pool", "p0")
    assert r.returncode == 1 and r.stderr.strip().endswith("(code -32002)"), r.stderr
    r = run_srrs(*s, "volume", "delete", "--name", "v0")
    assert r.returncode == 0 and r.stdout == "", (r.stdout, r.stderr)
    # not found: one line with its documented code
    r = run_srrs(*s, "volume", "delete", "v0")
    assert r.returncode == 1
    assert r.stderr == "srrs: volume v0 does not exist (code -32001)\n", r.stderr
    r = run_srrs(*s, "volume", "list", "--json")
    assert json.loads(r.stdout) == []
    # a flag of the wrong type is refused before anything is sent
    r = run_srrs(*s, "volume", "create", "--name", "v1", "--size", "12XB", "--pool", "p0")
    assert r.returncode == 2 and "--size" in r.stderr and "bad size" in r.stderr
    r = run_srrs(*s, "volume", "create", "--name", "v1", "--size", "1GiB")
    assert r.returncode == 2 and "--pool" in r.stderr
    # list params are JSON, bools --flag/--no-flag, sizes with units
    r = run_srrs(*s, "pool", "create", "--name", "p1", "--fragments", '[{"ram": "32MiB"}]',
                 "--cluster-size", "64KiB", "--no-sync-metadata", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["cluster_size"] == 64 << 10
    r = run_srrs(*s, "tenant", "create", "--name", "t1", "--quota", "1GiB", "--pool", "p1")
    assert r.returncode == 0 and "quota: 1073741824" in r.stdout, (r.stdout, r.stderr)
    r = run_srrs(*s, "pool", "close", "p1")
    assert r.returncode == 0, r.stderr


def test_server_refuses_undeclared_and_mistyped_params(ctl):
    with RpcClient(ctl.sock) as c:
        for params, word in (({"name": "v1", "pool": "p0", "size": "1GiB", "colour": "red"},
                              "'colour' is unknown"),
                             ({"name": "v1", "pool": "p0", "size": True}, "'size' must be size"),
                             ({"name": "v1", "size": "1GiB"}, "'pool' is required")):
            with pytest.raises(rpcdef.InvalidParams, match=word) as e:
                c.call("volume_create", params)
            assert e.value.code == -32602
        with pytest.raises(rpcdef.NotFound) as e:
            c.call("pool_fragments", {"pool": "nope"})
        assert e.value.code == -32001
        with pytest.raises(rpcdef.NotConfigured):
            c.call("pair_status")
        with pytest.raises(RpcError) as e:
            c.call("no_such_method")
        assert e.value.code == -32601
        listed = {m["name"]: m for m in c.call("rpc_methods")}
    assert set(listed) == {m.name for m in TABLE}
    size = next(p for p in listed["volume_create"]["params"] if p["name"] == "size")
    assert size == {"name": "size", "type": "size", "required": True,
                    "help": "e.g. 10GiB (a multiple of 4096)"}
    assert listed["volume_create"]["cli"] == "volume create"
    # the raw escape hatch shows the same error object
    r = run_srrs("-s", ctl.sock, "rpc", "volume_create", '{"name": "v", "pool": "p0", "size": 1, "x": 1}')
    assert r.returncode == 1 and json.loads(r.stdout)["code"] == -32602
