"""`srrs bench bdev`: the C load loop on its own reactor, text and --json output."""

import json

from .helpers import srrs


def _conf(tmp_path):
    p = tmp_path / "b.toml"
    p.write_text(f"""
[[bdev]]
name = "m0"
type = "malloc"
size = "64MiB"
block_size = 512

[[bdev]]
name = "f0"
type = "file"
path = "{tmp_path}/f0.img"
size = "64MiB"
""")
    return str(p)


def test_bench_json_fields(tmp_path):
    r = srrs("bench", "bdev", "-c", _conf(tmp_path), "--bdev", "m0", "--rw", "randrw",
             "--bs", "4096", "--qd", "8", "--time", "0.5", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for k in ("iops", "mibps", "errors", "verified"):
        assert k in out
    for k in ("p50", "p99", "p999"):
        assert out["lat_us"][k] > 0
    assert out["iops"] > 10_000 and out["errors"] == 0
    assert out["reads"] > 0 and out["writes"] > 0
    assert out["verified"] is False


def test_bench_verify_on_file_two_queues(tmp_path):
    r = srrs("bench", "bdev", "-c", _conf(tmp_path), "--bdev", "f0", "--rw", "randwrite",
             "--bs", "128KiB", "--qd", "4", "--time", "0.5", "--queues", "2", "--verify", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["verified"] is True and out["verify_errors"] == 0 and out["verified_blocks"] > 0


def test_bench_text_and_errors(tmp_path):
    conf = _conf(tmp_path)
    r = srrs("bench", "bdev", "-c", conf, "--bdev", "m0", "--rw", "read", "--bs", "4096",
             "--qd", "1", "--time", "0.3")
    assert r.returncode == 0 and "IOPS" in r.stdout and "p99" in r.stdout
    r = srrs("bench", "bdev", "-c", conf, "--bdev", "nope", "--time", "0.1")
    assert r.returncode == 2 and "no bdev 'nope'" in r.stderr
    r = srrs("bench", "bdev", "-c", conf, "--bdev", "m0", "--bs", "1000", "--time", "0.1")
    assert r.returncode == 1 and "not a multiple of the block size" in r.stderr
