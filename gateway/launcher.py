"""`abgate serve` as a child process: started, waited for until /readyz answers 200, and stopped gracefully.

The one launcher the demo, the tests and the benchmarks share. The child runs in a process group of its own,
so a terminal's Ctrl-C reaches only the parent, which then decides how the gateway stops: SIGINT first (uvicorn
drains and the event writer flushes), then SIGTERM, then SIGKILL, each after a grace period.

    with GatewayProcess(["--experiments", "exp/"], env={...}, log_path=Path("gw.log")) as gw:
        httpx.post(gw.url + "/v1/search", json=...)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Sequence

from experiments.errors import AbgateError

REPO = Path(__file__).resolve().parent.parent


class GatewayStartError(AbgateError):
    """The gateway exited while starting, or was not ready in time; the message ends with its log's tail."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def stop_group(process: subprocess.Popen, grace_s: float) -> int:
    """SIGINT, then SIGTERM, then SIGKILL to the process group of `process` (started with
    start_new_session=True), each after `grace_s` seconds; its exit code."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue
    return process.wait()


class GatewayProcess:
    def __init__(self, args: Sequence[str] = (), *, env: dict | None = None, port: int | None = None,
                 host: str = "127.0.0.1", log_path: Path | None = None, cwd: Path | None = None,
                 ready_timeout_s: float = 120.0) -> None:
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.args = ["serve", "--host", host, "--port", str(self.port), *args]
        self.env = {**os.environ, **(env or {})}
        self.log_path = Path(log_path) if log_path is not None else None
        self.cwd = Path(cwd) if cwd is not None else REPO
        self.ready_timeout_s = ready_timeout_s
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self) -> "GatewayProcess":
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_path, "a")
        else:
            out = subprocess.DEVNULL
        try:
            self.process = subprocess.Popen([sys.executable, "-m", "gateway.cli", *self.args], cwd=self.cwd,
                                            env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # the child holds its own descriptor
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise GatewayStartError(f"the gateway exited with code {self.process.returncode} while starting; "
                                        f"the end of its log:\n{self.read_log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise GatewayStartError(f"the gateway was not ready after {self.ready_timeout_s:.0f} s; the end of its "
                                f"log:\n{self.read_log()[-3000:]}")

    def read_log(self) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return "(no log: pass log_path to keep one)"
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self, grace_s: float = 30.0) -> int | None:
        """SIGINT, then SIGTERM, then SIGKILL to the child's group, each after `grace_s`; its exit code."""
        if self.process is None:
            return None
        return stop_group(self.process, grace_s)

    def __enter__(self) -> "GatewayProcess":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
