"""The mirror is split by responsibility (ffi/README.md): link, pieces and
state, resync, bdev + control, sharing the private mirror_int.h; no function
of them is over 80 lines, and rx_frame is a dispatch over one handler per
frame type, each handler in the file of its responsibility."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILES = ["ffi/mirror.c", "ffi/mirror_link.c", "ffi/mirror_state.c", "ffi/mirror_resync.c"]


def _functions(path: Path) -> dict:
    """name -> (first line, lines) of every top-level function definition."""
    out, start, name, body = {}, None, None, False
    for i, line in enumerate(path.read_text().splitlines(), 1):
        m = re.match(r"^(?:static )?(?:inline )?[a-z][\w ]*?\**\b(\w+)\(", line)
        if start is None:
            if m and not line.rstrip().endswith(";"):
                start, name, body = i, m.group(1), False
        elif not body and line.rstrip().endswith(";"):
            start = None  # a prototype over several lines
        elif line == "{":
            body = True
        elif line == "}":
            out[name] = (start, i - start + 1)
            start = None
    return out


def test_no_mirror_function_over_80_lines():
    long = []
    for f in FILES:
        for name, (line, n) in _functions(ROOT / f).items():
            if n > 80:
                long.append(f"{f}:{line} {name} ({n} lines)")
    assert not long, long


def test_rx_frame_dispatches_to_handlers():
    funcs = _functions(ROOT / "ffi/mirror_link.c")
    assert funcs["rx_frame"][1] <= 50
    where = {f: set(_functions(ROOT / f)) for f in FILES}
    assert {"rx_hello", "rx_frame", "rx_poll", "frame_send", "link_drop"} <= where["ffi/mirror_link.c"]
    assert {"rx_data", "rx_ack", "rx_fwd_done", "rx_write_ref", "rx_read", "rx_read_data",
            "rx_ping", "piece_step", "stripe_lock", "host_start"} <= where["ffi/mirror_state.c"]
    assert {"rx_bitmap", "rx_resync_done", "copy_next", "resync_maybe_start"} <= where[
        "ffi/mirror_resync.c"]
    assert {"srrs_mirror_create", "srrs_mirror_link_create", "mirror_submit"} <= where["ffi/mirror.c"]


def test_mirror_files_share_only_the_private_header():
    for f in FILES:
        text = (ROOT / f).read_text()
        assert '#include "mirror_int.h"' in text
        assert not re.search(r"^struct (mlink|piece|mirror|frame) \{", text, flags=re.M), f
