"""Run real `srrs start` processes for the control-plane tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from srrs.ctrl.rpc import RpcClient

SRRS = [sys.executable, "-m", "srrs.ctrl.cli"]


def srrs(*args, check=False, timeout=60, **kw):
    return subprocess.run(SRRS + list(args), capture_output=True, text=True, timeout=timeout,
                          check=check, **kw)


class Controller:
    def __init__(self, config_path: str, sock: str):
        self.config = config_path
        self.sock = sock
        self.proc = subprocess.Popen(SRRS + ["start", "-c", config_path],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited {self.proc.returncode}: {self.proc.stdout.read()}")
            if os.path.exists(sock):
                try:
                    RpcClient(sock).close()
                    break
                except ConnectionError:
                    pass
            if time.time() > deadline:
                self.kill()
                raise RuntimeError("controller did not open its RPC socket within 60 s")
            time.sleep(0.05)

    def rpc(self, method, params=None):
        with RpcClient(self.sock) as c:
            return c.call(method, params)

    def stop(self, timeout=10) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.proc.stdout.read() if self.proc.stdout else ""


def write_config(path, sock, reactors=1, extra="", poll_mode="adaptive"):
    path.write_text(f"""
[controller]
name = "t"
rpc_socket = "{sock}"
reactors = {reactors}
poll_mode = "{poll_mode}"
{extra}
""")
    return str(path)
