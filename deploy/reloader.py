#!/usr/bin/env python3
"""abgate-reloader: a sidecar that watches the mounted experiments folder and asks the gateway to reload it.

Kubernetes updates a ConfigMap volume by swapping a symlink (`..data`) once the kubelet syncs (up to about a
minute plus its cache TTL), so a change is a new fingerprint of the folder's files. On a change this sends
`POST /v1/admin/reload` with the admin key (header X-API-Key), the same as SIGHUP or an operator's call:
the gateway validates the new YAML and loads new artifacts while the old ones keep serving; a refused
reload (invalid YAML, an unsafe change to a running experiment) leaves the previous experiments serving and is
logged here with the gateway's reasons; it is not retried until the folder changes again. An unreachable
gateway or a 5xx is retried with backoff.

Standard library only, so it runs from the gateway image (`abgate-reloader`) on a read-only root file system.

Environment (flags override): ABGATE_ADMIN_API_KEY (required), ABGATE_RELOADER_WATCH (default
/etc/abgate/experiments), ABGATE_RELOADER_URL (default http://127.0.0.1:8000/v1/admin/reload),
ABGATE_RELOADER_INTERVAL_S (default 5).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

STOP = threading.Event()


def log(level: str, event: str, **fields) -> None:
    line = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "level": level,
            "logger": "abgate.reloader", "event": event, **fields}
    print(json.dumps(line, default=str), file=sys.stderr, flush=True)


def fingerprint(folder: Path) -> str:
    """sha256 over the folder's files (names and bytes), following symlinks, skipping dot entries (a ConfigMap
    volume's `..data` and `..<timestamp>` internals are reached through the visible symlinks)."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            path = Path(root) / name
            try:
                data = path.read_bytes()
            except OSError:  # swapped away between listing and reading: the next poll sees the new state
                continue
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + data + b"\0")
    return digest.hexdigest()


def reload(url: str, key: str, timeout: float) -> tuple[int, str]:
    request = urllib.request.Request(url, data=b"", method="POST", headers={"X-API-Key": key})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(4096).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(4096).decode(errors="replace")


def run(folder: Path, url: str, key: str, interval: float, timeout: float) -> int:
    seen = fingerprint(folder)
    log("info", "watching", folder=str(folder), url=url, interval_s=interval, fingerprint=seen[:12])
    pending: str | None = None
    backoff, wait = 1.0, interval
    while not STOP.wait(wait):
        current = fingerprint(folder)
        if current != seen:
            seen, pending, backoff = current, current, 1.0
            log("info", "experiments changed", fingerprint=current[:12])
        wait = interval
        if pending is None:
            continue
        try:
            status, body = reload(url, key, timeout)
        except (OSError, urllib.error.URLError) as exc:  # gateway not up (yet), restarting, ...
            wait, backoff = backoff, min(backoff * 2, 30.0)
            log("warning", "reload failed; retrying", error=str(exc), retry_in_s=wait)
            continue
        if status < 300:
            log("info", "reloaded", status=status, fingerprint=pending[:12])
            pending = None
        elif status >= 500:
            wait, backoff = backoff, min(backoff * 2, 30.0)
            log("warning", "reload failed; retrying", status=status, body=body, retry_in_s=wait)
        else:  # 4xx: refused (invalid or unsafe change) or a wrong key: retrying the same folder cannot help
            log("error", "reload refused; the gateway keeps serving the previous experiments",
                status=status, body=body, fingerprint=pending[:12])
            pending = None
    log("info", "stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    p = argparse.ArgumentParser(prog="abgate-reloader", description=__doc__.split("\n\n")[0])
    p.add_argument("--watch", default=env.get("ABGATE_RELOADER_WATCH", "/etc/abgate/experiments"))
    p.add_argument("--url", default=env.get("ABGATE_RELOADER_URL", "http://127.0.0.1:8000/v1/admin/reload"))
    p.add_argument("--interval", type=float, default=float(env.get("ABGATE_RELOADER_INTERVAL_S", "5")))
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for one reload answer (loading new artifacts can take a while)")
    args = p.parse_args(argv)
    key = env.get("ABGATE_ADMIN_API_KEY", "")
    if not key:
        log("error", "ABGATE_ADMIN_API_KEY is not set: the reload endpoint needs it")
        return 2
    if not Path(args.watch).is_dir():
        log("error", "not a folder", folder=args.watch)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: STOP.set())
    return run(Path(args.watch), args.url, key, args.interval, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
