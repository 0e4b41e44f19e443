"""[[pool]], [[tenant]], [[volume]]: typed, defaults, file:line:key errors, round trip."""

import pytest

from srrs.ctrl.config import ConfigError, loads
from srrs.ctrl.pool_config import pool_to_dict, tenant_to_dict, volume_to_dict

GOOD = """
[[pool]]
name = "p0"
cluster_size = "4MiB"
placement = "fill-first"
fragments = [ { path = "/var/tmp/frag0.img", size = "2GiB" }, { path = "/dev/loop3" },
              { ram = "512MiB", weight = 300 } ]

[[pool]]
name = "p1"
[[pool.fragment]]
path = "/var/tmp/frag1.img"
size = "1GiB"

[[tenant]]
name = "t1"
quota = "8GiB"

[[volume]]
name = "v0"
pool = "p0"
size = "10GiB"
tenant = "t1"

[[volume]]
name = "v1"
pool = "p1"
size = "1GiB"
thin = false
"""


def test_good_config_and_round_trip():
    c = loads(GOOD, "g.toml")
    p0, p1 = c.sections["pool"]
    assert p0.cluster_size == 4 << 20 and p0.placement == "fill-first"
    assert [f.ram for f in p0.fragments] == [False, False, True]
    assert p0.fragments[2].size == 512 << 20 and p0.fragments[2].weight == 300
    assert p1.fragments[0].path == "/var/tmp/frag1.img" and p1.cluster_size == 1 << 20
    assert c.sections["tenant"][0].quota == 8 << 30
    v0, v1 = c.sections["volume"]
    assert v0.thin and v0.tenant == "t1" and not v1.thin
    import toml
    doc = {"pool": [pool_to_dict(p) for p in c.sections["pool"]],
           "tenant": [tenant_to_dict(t) for t in c.sections["tenant"]],
           "volume": [volume_to_dict(v) for v in c.sections["volume"]]}
    again = loads(toml.dumps(doc), "again.toml")
    assert again.sections == c.sections


@pytest.mark.parametrize("text,where", [
    ('[[pool]]\nname = "p"\nfragments = []\n', r"x.toml:3: pool\[0\].fragments: a pool needs"),
    ('[[pool]]\nname = "p"\ncluster_size = "3MiB"\nfragments = [{ram = "64MiB"}]\n',
     r"x.toml:3: pool\[0\].cluster_size: must be a power of two"),
    ('[[pool]]\nname = "p"\nfragments = [{path = "rel.img"}]\n', r"pool\[0\].fragments\[0\].path: must be absolute"),
    ('[[pool]]\nname = "p"\nfragments = [{ram = "64MiB", path = "/x"}]\n', r"fragments\[0\].ram: a fragment is either"),
    ('[[pool]]\nname = "p"\nplacement = "random"\nfragments = [{ram = "64MiB"}]\n',
     r"x.toml:3: pool\[0\].placement: must be one of spread, fill-first"),
    ('[[pool]]\nname = "p"\nbogus = 1\nfragments = [{ram = "64MiB"}]\n', r"x.toml:3: pool\[0\].bogus: unknown key"),
    ('[[volume]]\nname = "v"\npool = "p"\nsize = "12XB"\n', r"x.toml:4: volume\[0\].size: bad size"),
    ('[[volume]]\nname = "v"\nsize = "1GiB"\n', r"volume\[0\].pool: is required"),
    ('[[tenant]]\nname = "t"\n[[tenant]]\nname = "t"\n', r"tenant\[1\].name: tenant 't' is defined twice"),
])
def test_errors_name_file_line_key(text, where):
    with pytest.raises(ConfigError, match=where):
        loads(text, "x.toml")
