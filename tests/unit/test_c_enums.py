"""The named enums of the C contract headers reach Python through cffi
(lib.SRRS_*), and every table the Python side keeps of those ints is built
from them: a value changed in a header changes it in Python too, and a
Python-side number that disagrees with the header fails here."""

import re
from pathlib import Path

from srrs.ctrl import pair, pool
from srrs.ffi import binding, lathist
from srrs.ffi.binding import ffi, lib
from srrs.nvmf import config as nvmf_config
from srrs.nvmf import target

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ["ffi/srrs.h", "ffi/lvol.h", "ffi/mirror.h", "nvmf/nvmf.h"]

WANTED = {
    "srrs_poll_mode", "srrs_poller_result", "srrs_reactor_state", "srrs_event_type",
    "srrs_io_op", "srrs_lat_class", "srrs_bench_rw", "srrs_mirror_mode", "srrs_pool_placement",
    "srrs_frag_state", "srrs_ana_state", "srrs_nvme_log_page",
}


def _header_enums() -> dict:
    """enum name -> {constant: value} as the contract headers write them."""
    out = {}
    for h in CONTRACTS:
        text = re.sub(r"/\*.*?\*/", "", (ROOT / h).read_text(), flags=re.S)
        for name, body in re.findall(r"enum (\w+) \{(.*?)\};", text, flags=re.S):
            out[name] = {k: int(v, 0) for k, v in re.findall(r"(\w+) = (\w+)", body)}
    return out


def test_contract_headers_name_the_ints_python_sees():
    enums = _header_enums()
    assert WANTED <= set(enums), f"missing: {WANTED - set(enums)}"
    for name, members in enums.items():
        assert ffi.typeof(f"enum {name}").relements == members, name
        for k, v in members.items():
            assert getattr(lib, k) == v, k


def test_no_define_left_for_a_named_value():
    for h in CONTRACTS:
        assert not re.search(r"#define SRRS_(FRAG|POLL|EV|IO|MIRROR|ANA|LOG)_", (ROOT / h).read_text())


def _match(py: dict, prefix: str, names: dict):
    """py: name -> value (Python's table); names: Python's name -> header constant suffix."""
    for k, v in py.items():
        assert v == getattr(lib, prefix + names.get(k, k.upper())), k


def test_python_tables_are_the_headers_values():
    _match(binding.POLL_MODES, "SRRS_POLL_", {})
    _match(binding.RW_MODES, "SRRS_RW_", {})
    _match(binding.IO_OPS, "SRRS_IO_", {})
    _match(pair.MIRROR_MODES, "SRRS_MIRROR_", {})
    _match(nvmf_config.ANA_STATES, "SRRS_ANA_", {})
    _match({v: k for k, v in binding.REACTOR_STATES.items()}, "SRRS_REACTOR_", {})
    _match({v: k for k, v in pool.FRAG_STATES.items()}, "SRRS_FRAG_", {})
    _match({v: k for k, v in binding.EVENT_TYPES.items()}, "SRRS_EV_",
           {"mirror_read_error": "MIRROR_READ_ERR"})
    _match({v.replace("-", "_"): k for k, v in target._ANA_NAMES.items()}, "SRRS_ANA_", {})
    assert pair.MODE_NAMES[lib.SRRS_MIRROR_PENDING] == "pending"
    assert [lathist.CLASSES.index(c) for c in ("read", "write", "other")] == [
        lib.SRRS_LAT_READ, lib.SRRS_LAT_WRITE, lib.SRRS_LAT_OTHER]
    assert binding.EVENT_TYPES[lib.SRRS_EV_MIRROR_READ_ERR] == "mirror_read_error"
    assert lib.SRRS_EV_NONE not in binding.EVENT_TYPES


def test_every_python_table_covers_its_enum():
    enums = _header_enums()
    assert set(binding.POLL_MODES.values()) == set(enums["srrs_poll_mode"].values())
    assert set(pair.MODE_NAMES) == set(enums["srrs_mirror_mode"].values())
    assert set(pool.FRAG_STATES) == set(enums["srrs_frag_state"].values())
    assert set(binding.REACTOR_STATES) == set(enums["srrs_reactor_state"].values())
    assert set(binding.EVENT_TYPES) == set(enums["srrs_event_type"].values()) - {0}
    assert set(target._ANA_NAMES) == set(enums["srrs_ana_state"].values())


def test_the_core_reports_its_named_states():
    with binding.Core(reactors=1, poll_mode="busy") as core:
        st = core.reactor_stats(0)
        assert st["poll_mode"] == "busy"
        assert st["state"] in binding.REACTOR_STATES.values()
