"""Process logging for `srrs start` and `srrs witness`.

`--log-level` (or SRRS_LOG) picks the level; `--log-format json` writes one
JSON object per line (ts, level, logger, pid, msg, and exc when there is a
traceback) for a log shipper, `text` (the default) one readable line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Optional

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out = {"ts": f"{ts}.{int(record.msecs):03d}Z", "level": record.levelname.lower(),
               "logger": record.name, "pid": record.process, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup(level: Optional[str] = None, fmt: str = "text", tag: str = "srrs") -> None:
    """Replaces the root logger's handlers with one on stderr."""
    name = (level or os.environ.get("SRRS_LOG") or "info").upper()
    if name.lower() not in LEVELS:
        raise ValueError(f"log level {name!r}: expected one of {', '.join(LEVELS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        f"%(asctime)s {tag}[%(process)d] %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(name)


def add_arguments(p) -> None:
    p.add_argument("--log-level", choices=LEVELS, default=None,
                   help="default: $SRRS_LOG or info")
    p.add_argument("--log-format", choices=FORMATS, default="text",
                   help="json: one object per line (ts, level, logger, pid, msg)")
