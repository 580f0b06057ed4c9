"""The demo's steps: each a subprocess of the `abgate` CLI, skipped when its output is already there.

A step is done when its output is complete (the manifest each command writes last) and consistent with its
input (an encoder exported from these very model files, an index built by this very encoder). A child runs in
its own process group, so Ctrl-C reaches the demo only, which then stops the child cleanly.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from experiments.errors import AbgateError
from gateway.launcher import stop_group


@dataclass
class Context:
    work: Path
    data: Path
    env: dict
    timings: dict = field(default_factory=dict)

    def path(self, *parts: str) -> Path:
        return self.work.joinpath(*parts)


def log(message: str) -> None:
    print(f"demo: {message}", file=sys.stderr, flush=True)


def abgate(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", *args]


class Child:
    """A subprocess that Ctrl-C stops cleanly: SIGINT first (the CLI exits 130), then SIGTERM, then SIGKILL."""

    def __init__(self, command: list[str], ctx: Context, **kwargs) -> None:
        # Own process group: the terminal's Ctrl-C reaches us only, and we decide how the child stops.
        env = kwargs.pop("env", ctx.env)
        self.proc = subprocess.Popen(command, cwd=ctx.work, env=env, start_new_session=True, **kwargs)

    def stop(self, grace_s: float = 10.0) -> None:
        stop_group(self.proc, grace_s)

    def communicate(self) -> str | None:
        try:
            return self.proc.communicate()[0]
        except BaseException:  # Ctrl-C while waiting: stop the child before going on
            self.stop()
            raise


def run_step(ctx: Context, name: str, out: Path, command: list[str], done: Callable[[], bool]) -> None:
    """Run `command` unless `done()` says its output is already there and consistent with its inputs."""
    if done():
        log(f"{name}: done already ({out.relative_to(ctx.work)})")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    log(f"{name}: {' '.join(['abgate', *command[3:]])}")
    started = time.perf_counter()
    child = Child(command, ctx, stdout=sys.stderr)  # stdout stays for the demo's own result (--json)
    child.communicate()
    code = child.proc.returncode
    if code == 130:
        raise KeyboardInterrupt
    if code != 0:
        raise AbgateError(f"step {name!r} failed (exit code {code}); its messages are above. Fix the cause and "
                          "rerun `make demo`: finished steps are kept.")
    ctx.timings[name] = round(time.perf_counter() - started, 1)
    log(f"{name}: finished in {ctx.timings[name]} s")


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


