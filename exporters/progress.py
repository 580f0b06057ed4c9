"""One progress line for every long exporter step: `abgate: encoded docs 1,024/5,183 (21/s, eta 3 min 5 s)`.

build-index, eval-offline, export-model's parity check and finetune's steps and encodes all report through
`Progress`, on stderr, so stdout stays clean for --json.
"""

from __future__ import annotations

import sys
import time


def duration(seconds: float) -> str:
    """`42 s`, `3 min 5 s`, `1 h 2 min`: an ETA is read at a glance, not parsed."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class Progress:
    """Call with (done, total[, note]) after each unit of work.

    A terminal gets one line rewritten in place at most once a second; a pipe or log file a new line at most
    every `every` seconds (10 by default; 0 prints every call, for steps that take tens of seconds each).
    The rate and ETA count from construction.
    """

    def __init__(self, label: str, stream=None, enabled: bool = True, every: float = 10.0,
                 prefix: str = "abgate", clock=time.monotonic) -> None:
        self.label, self.enabled, self.every, self.prefix, self.clock = label, enabled, every, prefix, clock
        self.stream = stream if stream is not None else sys.stderr
        self.started = self.last = clock()
        self._printed = False

    def __call__(self, done: int, total: int, note: str = "") -> None:
        if not self.enabled:
            return
        now = self.clock()
        tty = self.stream.isatty()
        interval = min(self.every, 1.0) if tty else self.every
        if self._printed and now - self.last < interval and done < total:
            return
        self.last, self._printed = now, True
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        if done >= total:
            timing = f"done in {duration(elapsed)}"
        elif done and rate > 0:
            timing = f"eta {duration((total - done) / rate)}"
        else:
            timing = "eta unknown"
        # Slow units (a training step takes tens of seconds on a CPU) read better as seconds each.
        speed = (f"{rate:,.0f}/s" if rate >= 10 else f"{rate:,.1f}/s" if rate >= 1 else
                 f"{1 / rate:,.1f} s each" if rate > 0 else "starting")
        text = f"{self.prefix}: {self.label} {done:,}/{total:,}{' ' + note if note else ''} ({speed}, {timing})"
        end = "\r" if tty and done < total else "\n"
        print(text, end=end, file=self.stream, flush=True)
