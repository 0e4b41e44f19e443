"""Run real `srrs start` processes for the control-plane tests (srrs.ctrl.launch)."""

from __future__ import annotations

import subprocess

from srrs.ctrl import launch
from srrs.ctrl.launch import SRRS

__all__ = ["SRRS", "Controller", "srrs", "write_config"]


def srrs(*args, check=False, timeout=60, **kw):
    return subprocess.run(SRRS + list(args), capture_output=True, text=True, timeout=timeout,
                          check=check, **kw)


class Controller(launch.Controller):
    """launch.Controller of a config file already written, its socket given."""

    def __init__(self, config_path: str, sock: str, ready_timeout: float = 60):
        super().__init__(config_path, sock=sock, ready_timeout=ready_timeout)


def write_config(path, sock, reactors=1, extra="", poll_mode="adaptive"):
    """A controller "t" at sock; extra: more sections (a dict or TOML text)."""
    conf = launch.config(launch.controller("t", sock, reactors, poll_mode), extra=extra)
    return launch.write_config(path, conf)
