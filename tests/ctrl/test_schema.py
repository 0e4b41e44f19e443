"""The declared config schema (srrs.schema): unknown keys, types, defaults from the
declaration only, the one address parser, file:line:key errors for a nested key
of every section, the shipped configs, and docs/config.md generated from it."""

import dataclasses
import glob
import os
import subprocess
import sys
from typing import Optional, Tuple

import pytest

from srrs import schema
from srrs.ctrl import config as cfg
from srrs.ctrl.pair_config import parse_witness_file
from srrs.schema import SchemaError, Size, setting
from srrs.units import format_address, parse_address

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class Inner:
    port: int = setting(80, range=(1, 65535))


@dataclasses.dataclass(frozen=True)
class Toy:
    name: str = setting(check=schema.check_name)
    size: Size = setting(4096)
    mode: str = setting("a", choices=("a", "b"))
    tags: Tuple[str, ...] = setting(())
    inner: Tuple[Inner, ...] = setting(())
    note: Optional[str] = setting(None, key="comment")


def _schema_err(raw, where=("toy",)):
    with pytest.raises(SchemaError) as ei:
        schema.parse(Toy, raw, where)
    return ei.value


def test_parse_types_defaults_and_errors():
    t = schema.parse(Toy, {"name": "x", "size": "1MiB", "inner": [{}], "comment": "c"})
    assert t == Toy("x", 1 << 20, "a", (), (Inner(80),), "c")
    e = _schema_err({"name": "x", "colour": 1})
    assert (e.path, str(e)) == (("toy", "colour"),
                                "toy.colour: unknown key (allowed: comment, inner, mode, name, "
                                "size, tags)")
    assert str(_schema_err({})) == "toy.name: is required"
    assert str(_schema_err({"name": 7})).startswith("toy.name: expected a string, got int 7")
    assert str(_schema_err({"name": "x", "tags": ["a", 2]})).startswith("toy.tags[1]: expected a")
    assert str(_schema_err({"name": "x", "inner": [{}, {"port": 0}]})) == \
        "toy.inner[1].port: must be in 1..65535, got 0"
    assert str(_schema_err({"name": "x", "inner": [{"port": True}]})).startswith(
        "toy.inner[0].port: expected an integer, got bool")
    assert "toy.size: bad size '1XB'" in str(_schema_err({"name": "x", "size": "1XB"}))
    assert str(_schema_err({"name": "x", "mode": "c"})) == "toy.mode: must be one of a, b, got 'c'"
    assert str(_schema_err({"name": "a/b"})).startswith("toy.name: bad name")
    assert str(_schema_err("nope")).startswith("toy: expected a table")


def _minimal():
    """The smallest valid table of every section: what the defaults fill."""
    return {"controller": {}, "bdev": {"name": "m", "type": "malloc", "size": 4096},
            "nvmf": {}, "vhost": {"name": "v", "socket": "/s", "bdev": "m"},
            "pool": {"name": "p", "fragments": [{"ram": "4MiB"}]},
            "tenant": {"name": "t"}, "volume": {"name": "v", "pool": "p", "size": 4096},
            "pair": {"self": "a", "coord_bind": "tcp://h:1", "peer_coord": "tcp://h:2",
                     "mirror_listen": "h:3", "peer_mirror": "h:4", "witness": "tcp://h:5",
                     "insecure": True},
            "metrics": {}, "cluster": {"etcd": ["http://127.0.0.1:2379"], "name": "a"}}


def test_every_section_is_registered_and_takes_its_defaults_from_the_declaration():
    typed = {f.name for f in dataclasses.fields(cfg.Config)} - {"source", "cntlid_set"}
    assert {s.attr for s in cfg.SECTIONS.values()} == typed
    for name, sec in cfg.SECTIONS.items():
        obj = sec.parse(_minimal()[name], (name,))
        for key, f, _ in schema.fields(type(obj)):
            if key in _minimal()[name] or f.metadata.get("doc_default"):
                continue  # given, or a derived default (documented as such)
            want = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert getattr(obj, f.name) == want, (name, key)


def test_config_has_typed_sections_and_sections_view():
    c = cfg.loads('[metrics]\n[[tenant]]\nname = "t"\n', "t.toml")
    assert c.metrics.listen == "127.0.0.1:9464" and c.tenant[0].name == "t"
    assert c.pair is None and c.nvmf is None and c.vhost == ()
    assert c.sections == {"metrics": c.metrics, "tenant": c.tenant}


@pytest.mark.parametrize("text,want", [
    ("127.0.0.1:4420", ("127.0.0.1", 4420)),
    ("[::1]:4420", ("::1", 4420)),
    ("[fe80::1]:0", ("fe80::1", 0)),
    ("storage-1.example:9464", ("storage-1.example", 9464)),
    ("*:5600", ("*", 5600)),
])
def test_address_parser_accepts(text, want):
    assert parse_address(text) == want
    assert format_address(*want) == text


@pytest.mark.parametrize("text,kw,err", [
    ("127.0.0.1", {}, "expected HOST:PORT, got '127.0.0.1'"),
    ("127.0.0.1:65536", {}, "bad port '65536' in '127.0.0.1:65536' (0..65535)"),
    ("127.0.0.1:0", {"min_port": 1}, "bad port '0'"),
    ("127.0.0.1:-1", {}, "bad port '-1'"),
    ("h:x", {}, "bad port 'x'"),
    ("::1:80", {}, "an IPv6 address goes in brackets: [::1]:80"),
    ("[nothex]:80", {}, "'nothex' in '[nothex]:80' is not an IPv6 address"),
    ("[::1]80", {}, "expected [IPv6]:PORT"),
    (":80", {}, "expected HOST:PORT"),
    ("bad host:80", {}, "expected HOST:PORT"),
    ("localhost:4420", {"numeric": True}, "'localhost' is not an IPv4/IPv6 address"),
    (4420, {}, "expected a string HOST:PORT, got int 4420"),
])
def test_address_parser_refuses(text, kw, err):
    with pytest.raises(ValueError) as ei:
        parse_address(text, **kw)
    assert err in str(ei.value), str(ei.value)


def test_address_default_port():
    assert parse_address("10.0.0.1", 4420) == ("10.0.0.1", 4420)
    assert parse_address("[::1]", 4420) == ("::1", 4420)
    assert parse_address("10.0.0.1:4421", 4420) == ("10.0.0.1", 4421)


NESTED = [  # (text, the line, the key path): a nested key of every kind of section
    ('[controller]\nname = "a"\nidle_spin_us = -1\n', 3, "controller.idle_spin_us"),
    ('[[bdev]]\nname = "a"\ntype = "null"\nsize = "1MiB"\n[[bdev]]\nname = "b"\n'
     'type = "null"\nsize = "1MiB"\nblock_size = 7\n', 9, "bdev[1].block_size"),
    ('[nvmf]\nlisten = ["127.0.0.1:1"]\n[[nvmf.subsystem]]\nnqn = "nqn.2026-11.io.srrs:a"\n'
     '[[nvmf.subsystem]]\nnqn = "nqn.2026-11.io.srrs:b"\n'
     'ana_groups = [{ id = 1, state = "odd" }]\n', 7, "nvmf.subsystem[1].ana_groups[0].state"),
    ('[nvmf]\nlisten = ["127.0.0.1:1",\n  "localhost:2"]\n', 2, "nvmf.listen[1]"),
    ('[[vhost]]\nname = "a"\nsocket = "/a"\nbdev = "m"\n[[vhost]]\nname = "b"\nsocket = "/b"\n'
     'bdev = "m"\nnum_queues = 99\n', 9, "vhost[1].num_queues"),
    ('[[pool]]\nname = "p"\nfragments = [{ ram = "64MiB" }, { ram = "64MiB", weight = 0 }]\n',
     3, "pool[0].fragments[1].weight"),
    ('[[tenant]]\nname = "t"\n\nquota = "1XB"\n', 4, "tenant[0].quota"),
    ('[[volume]]\nname = "v"\npool = "p"\nsize = 4096\n[[volume]]\nname = "w"\npool = "p"\n'
     'size = 100\n', 8, "volume[1].size"),
    ('[pair]\nself = "a"\ncoord_bind = "tcp://h:1"\npeer_coord = "tcp://h:2"\n'
     'mirror_listen = "h:3"\npeer_mirror = "h:4"\nwitness = "tcp://h:5"\ninsecure = true\n'
     'volumes = [{ replica = "v0" }, { replica = "v 1" }]\n', 9, "pair.volumes[1].replica"),
    ('[pair]\nself = "a"\ncoord_bind = "tcp://h:1"\npeer_coord = "tcp://h:2"\n'
     'mirror_listen = "h:0"\n', 5, "pair.mirror_listen"),
    ('# metrics\n\n[metrics]\nlisten = "[::1]"\n', 4, "metrics.listen"),
]


@pytest.mark.parametrize("text,line,key", NESTED)
def test_errors_name_file_line_and_nested_key(text, line, key):
    with pytest.raises(cfg.ConfigError) as ei:
        cfg.loads(text, "n.toml")
    assert str(ei.value).startswith(f"n.toml:{line}: {key}: "), str(ei.value)


def test_cross_entry_rules_are_named_in_the_registry():
    two = '[[vhost]]\nname = "a"\nsocket = "/a"\nbdev = "m"\n'
    with pytest.raises(cfg.ConfigError, match=r"^v.toml:6: vhost\[1\].name: vhost 'a' is "
                                              r"defined twice"):
        cfg.loads(two + two, "v.toml")


def test_shipped_configs_load(tmp_path):
    from tests.pair.procs import make_keys

    keys = make_keys(tmp_path)
    files = sorted(glob.glob(os.path.join(ROOT, "configs", "*.toml")))
    assert len(files) >= 4
    for path in files:
        text = open(path).read().replace("/var/tmp/srrs-keys/pair", str(keys["dir"] / "pair"))
        f = tmp_path / os.path.basename(path)
        f.write_text(text.replace("/var/tmp/srrs-keys", str(keys["dir"])))
        if "[witness]" in text:
            assert parse_witness_file(str(f)).bind.startswith("tcp://")
        else:
            assert cfg.load(str(f)).controller.name


def test_nvmf_vhost_and_schema_never_import_ctrl():
    code = ("import sys, srrs.schema, srrs.nvmf.config, srrs.vhost.config; "
            "print(sorted(m for m in sys.modules if m.startswith('srrs.ctrl')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_reference_is_up_to_date():
    with open(os.path.join(ROOT, "docs", "config.md")) as f:
        assert f.read() == cfg.reference(), \
            "docs/config.md is stale: python3 -m srrs.ctrl.config > docs/config.md"
    assert "| `listen` | address | `127.0.0.1:9464` |" in cfg.reference()


def test_witness_bind_goes_through_the_endpoint_check():
    from .helpers import srrs

    r = srrs("witness", "--bind", "tcp://[::1:5600", "--insecure", timeout=20)
    assert r.returncode == 2 and "--bind: 'tcp://[::1:5600' is not a ZeroMQ endpoint" in r.stderr


def test_to_table_round_trips_every_section_and_leaves_defaults_out():
    import toml

    from srrs.ctrl import cluster_config, metrics_config, pair_config, pool_config
    from srrs.nvmf import config as nvmf_config
    from srrs.vhost import config as vhost_config

    writers = {"controller": cfg.controller_to_dict, "bdev": cfg.bdev_to_dict,
               "nvmf": nvmf_config.to_dict, "vhost": vhost_config.to_dict,
               "pool": pool_config.pool_to_dict, "tenant": pool_config.tenant_to_dict,
               "volume": pool_config.volume_to_dict, "pair": pair_config.to_toml_dict,
               "metrics": metrics_config.to_toml_dict, "cluster": cluster_config.to_toml_dict}
    full = _minimal()
    full["nvmf"] = {"listen": "[::1]:4420", "subsystem": [{"nqn": "nqn.2026-11.io.srrs:a",
                                                           "namespaces": ["m", {"bdev": "n"}]}]}
    full["vhost"] = dict(full["vhost"], mode="0640", num_queues=2)
    full["pool"]["fragments"] += [{"path": "/f", "size": "1GiB", "weight": 7}]
    full["pair"]["volumes"] = ["v0", {"replica": "v1", "name": "pv1"}]
    for name, sec in cfg.SECTIONS.items():
        obj = sec.parse(full[name], (name,))
        table = writers[name](obj)
        # through TOML text: arrays stay homogeneous (a pair's volumes are all tables)
        again = toml.loads(toml.dumps({"t": table}))["t"]
        assert sec.parse(again, (name,)) == obj, name
    assert vhost_config.to_dict(vhost_config.parse(full["vhost"])) == {
        "name": "v", "socket": "/s", "bdev": "m", "num_queues": 2, "mode": "0640"}
    frags = pool_config.pool_to_dict(pool_config.parse_pool(full["pool"]))["fragments"]
    assert frags == [{"ram": "4MiB", "weight": 100}, {"path": "/f", "weight": 7, "size": "1GiB"}]
    assert "force_create" not in pool_config.pool_to_dict(
        pool_config.parse_pool(dict(full["pool"], force_create=True)))


def test_a_pair_splits_the_cntlid_range_unless_nvmf_sets_it(tmp_path):
    """Both controllers of a pair export the same subsystems: a host refuses a
    path whose cntlid another path of the subsystem has."""
    from srrs.ctrl import config as cfg

    def conf(me, peer, extra=""):
        return cfg.loads(f"""
[nvmf]
listen = ["127.0.0.1:4420"]
{extra}
[pair]
self = "{me}"
peer = "{peer}"
coord_bind = "tcp://127.0.0.1:7001"
peer_coord = "tcp://127.0.0.1:7002"
mirror_listen = "127.0.0.1:7003"
peer_mirror = "127.0.0.1:7004"
witness = "tcp://127.0.0.1:7005"
state_dir = "{tmp_path}/s-{me}"
insecure = true
""")
    a, b = conf("a", "b").nvmf, conf("b", "a").nvmf
    assert (a.cntlid_min, a.cntlid_max, b.cntlid_min, b.cntlid_max) == (1, 16384, 16385, 32767)
    c = conf("b", "a", "cntlid_min = 1001\ncntlid_max = 2000").nvmf
    assert (c.cntlid_min, c.cntlid_max) == (1001, 2000)
    assert cfg.loads('[nvmf]\nlisten = ["127.0.0.1:4420"]').nvmf.cntlid_min == 1
