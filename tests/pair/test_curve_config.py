"""CURVE between the controllers and with the witness; [pair] config errors."""

import pytest

from srrs.ctrl import config
from srrs.ctrl.pair_config import parse

from .procs import Ctl, Witness, alloc_ports, make_keys, pair_conf


def test_pair_with_curve_keys(tmp_path):
    keys = make_keys(tmp_path)
    p = alloc_ports()
    w = Witness(tmp_path, f"tcp://127.0.0.1:{p['witness']}", max_lease=2.0, keys=keys)
    ctls = []
    try:
        for n, o in (("a", "b"), ("b", "a")):
            ctls.append(Ctl(tmp_path, n, pair_conf(n, o, p, tmp_path, keys=keys)))
        a, b = ctls
        a.wait_state("PAIRED", 20)
        b.wait_state("PAIRED", 20)
        b.kill9()
        a.wait_state("SOLO", 10)          # the lease came through CURVE
    finally:
        for c in ctls:
            c.kill9()
        w.kill9()


BASE = {"self": "a", "coord_bind": "tcp://127.0.0.1:1", "peer_coord": "tcp://127.0.0.1:2",
        "mirror_listen": "127.0.0.1:3", "peer_mirror": "127.0.0.1:4",
        "witness": "tcp://127.0.0.1:5", "insecure": True}


def test_defaults():
    c = parse(dict(BASE, volumes=["v0", {"replica": "v1", "name": "pv1"}]))
    assert c.heartbeat_ms == 200 and c.miss_count == 5 and c.lease_ms == 3000
    assert c.stripe_size == 1 << 20
    assert [(v.replica, v.name) for v in c.volumes] == [("v0", "v0"), ("v1", "pv1")]
    assert c.me_id == "tcp://127.0.0.1:1" and c.pair_id == "tcp://127.0.0.1:1+tcp://127.0.0.1:2"


@pytest.mark.parametrize("change,msg", [
    ({"bogus": 1}, "bogus: unknown key"),
    ({"self": None}, "self: is required"),
    ({"coord_bind": "127.0.0.1:1"}, "coord_bind:"),
    ({"peer_mirror": "127.0.0.1:3"}, "peer_mirror: must differ"),
    ({"stripe_size": "3MiB"}, "stripe_size: must be a power of two"),
    ({"lease_ms": 100}, "lease_ms:"),
    ({"heartbeat_ms": 0}, "heartbeat_ms: must be in"),
    ({"volumes": ["v0", "v0"]}, "listed twice"),
    ({"secret_key": "/nonexistent", "insecure": None}, "the keys go together"),
    ({"peer": "a"}, "peer: must differ"),
    ({"peer_rpc_socket": ""}, "peer_rpc_socket: expected a non-empty string"),
    ({"peer_rpc_socket": 7}, "peer_rpc_socket: expected a non-empty string"),
    ({"peer_rpc_socket": "/tmp/" + "s" * 120}, "peer_rpc_socket: .* not a Unix socket path"),
])
def test_errors(change, msg):
    d = dict(BASE)
    for k, v in change.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    with pytest.raises(ValueError, match=msg):
        parse(d)


def test_error_names_file_line_key(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[pair]\nself = "a"\ncoord_bind = "tcp://127.0.0.1:1"\nheartbeat_ms = -5\n')
    with pytest.raises(config.ConfigError, match=r"c.toml:\d+: pair"):
        config.load(str(f))


def test_shipped_configs_parse(tmp_path):
    # the shipped configs name keys under /var/tmp/srrs-keys (make_keys's layout)
    keys = make_keys(tmp_path)
    for n in ("a", "b"):
        f = tmp_path / f"pair-{n}.toml"
        f.write_text(open(f"configs/pair-{n}.toml").read().replace("/var/tmp/srrs-keys",
                                                                    str(keys["dir"])))
        c = config.load(str(f)).sections["pair"]
        assert c.mirror_secret and c.secret_key and not c.insecure
        assert c.self_name == n and c.volumes
        other = "b" if n == "a" else "a"
        assert c.peer_rpc_socket == f"/tmp/srrs-pair-{other}.sock"
        assert f'rpc_socket = "{c.peer_rpc_socket}"' in open(f"configs/pair-{other}.toml").read()


def test_secret_key_readable_by_others_is_refused(tmp_path):
    """A CURVE secret key file others may read is refused by the pair config
    and by the witness, as the mirror secret is."""
    import os

    from srrs.ctrl.witness import check_private

    keys = make_keys(tmp_path)
    sec = f"{keys['a']}_secret"
    d = dict(BASE, peer="b", secret_key=sec, peer_public_key=str(keys["b"]),
             witness_public_key=str(keys["witness_public"]),
             mirror_secret=str(keys["mirror_secret"]))
    del d["insecure"]
    parse(d)                                  # 0600 as keygen wrote it: fine
    os.chmod(sec, 0o644)
    with pytest.raises(ValueError, match="secret_key: .*readable by others"):
        parse(d)
    os.chmod(keys["witness_secret"], 0o640)
    with pytest.raises(ValueError, match="readable by others"):
        check_private(str(keys["witness_secret"]))
