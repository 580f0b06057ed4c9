"""Gateway settings: one frozen dataclass, filled from ABGATE_* environment variables, then CLI flags.

Validated when built (`Settings.validated()`), with sentences that say what to do, so a bad setting stops
`abgate serve` before it loads any model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from experiments.errors import InputError
from gateway.impression_ids import parse_keys

# Request limits (documented in docs/gateway.md). The query and k limits are in the request schema
# (gateway/routes/schemas.py) so that they show in the OpenAPI document; the body limit is a setting.
DEFAULT_MAX_BODY_BYTES = 64 * 1024


# The settings `abgate serve` also takes as flags (gateway/commands/serve.py defines them; tests/test_settings.py
# checks that the two agree); the others are environment-only.
SERVE_FLAGS = {
    "experiments_dir": "--experiments", "layer": "--layer", "artifacts_dir": "--artifacts-dir",
    "state_file": "--state-file", "default_encoder": "--default-encoder", "default_index": "--default-index",
    "force": "--force", "host": "--host", "port": "--port", "device": "--device", "encoder_threads": "--encoder-threads",
    "batch_workers": "--batch-workers", "max_batch": "--max-batch", "max_wait_ms": "--max-wait-ms",
    "query_cache": "--query-cache", "dsn": "--dsn", "log_events": "--no-events", "spool_dir": "--spool-dir",
    "events_flush_s": "--events-flush-s", "max_body_bytes": "--max-body-bytes", "access_log": "--no-access-log",
    "log_level": "--log-level",
}


@dataclass(frozen=True)
class Settings:
    experiments_dir: str = "experiments/examples"
    layer: str = "retrieval"              # the layer this gateway serves (see gateway/assignment.py)
    artifacts_dir: str = "."              # relative encoder/index paths in the YAML are resolved against it
    state_file: str | None = ".abgate/experiments-state.json"
    default_encoder: str | None = None    # the arm for units with no running experiment; see assignment.py
    default_index: str | None = None
    force: bool = False                   # accept unsafe changes to running experiments at start/reload
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"                  # auto | cpu | cuda
    # CPU serving: parallel single-threaded batches, not one multi-threaded one. ONNX Runtime's intra-op pool
    # spins and collapses when anything else wants the cores (HTTP, the event writer, a neighbour): measured on
    # 2 cores under load, 2 threads x 1 batch cost 18-34 ms of CPU per request, 1 thread x 2 batches 10-12 ms.
    encoder_threads: int = 1              # ONNX Runtime intra-op threads per batch
    batch_workers: int = 2                # batches of one encoder running at once (about one per core)
    max_batch: int = 32
    # 0 = greedy: a batch is whatever queued while the workers were busy, so a lone request never waits; a few
    # ms can pay on a GPU, where one bigger batch costs about what a small one does.
    max_wait_ms: float = 0.0
    log_events: bool = True
    dsn: str | None = None                # None: gateway.eventlog.store.default_dsn()
    spool_dir: str = ".abgate/spool"
    events_flush_s: float = 1.0           # longest an event waits before an insert: fewer, larger ClickHouse parts
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    impression_ttl_s: float = 3600.0      # feedback is accepted this long after its search
    # ID:SECRET[,ID:SECRET]: the keys that sign impression ids (the first signs, all verify); None: a random key
    # per process, so feedback verifies only on the process that served it (gateway/impression_ids.py)
    impression_keys: str | None = None
    query_cache: int = 0                  # query embeddings kept (LRU, gateway/query_cache.py); 0 = off
    admin_api_key: str | None = None
    # Dashboards, report.json and experiment details need this key (or the admin key) in X-API-Key; with no key
    # set they are open only on a loopback host (gateway/routes/access.py)
    viewer_api_key: str | None = None
    report_ttl_s: float = 60.0            # rebuilt at most this often (0: every GET); concurrent GETs share one build
    aggregates_refresh_s: float = 30.0    # keep the reports' per-unit aggregates current this often; 0 = off
    # Connection limits (gateway/server.py): slow or oversized requests are cut off before they hold a worker
    max_connections: int = 1024           # connections and tasks at once; beyond: 503
    header_timeout_s: float = 10.0        # request line + headers must arrive within this
    body_timeout_s: float = 30.0          # the body within this after the headers
    max_header_bytes: int = 16 * 1024     # beyond: 431
    keep_alive_s: float = 5.0             # idle keep-alive connections are closed after this
    drain_s: float = 2.0                  # SIGTERM: readyz 503 and keep serving this long, then stop
    access_log: bool = True
    log_level: str = "info"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> "Settings":
        """ABGATE_<FIELD> (upper case) for every field; keyword overrides (CLI flags) win when not None."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(f"ABGATE_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _convert(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values).validated()

    def validated(self) -> "Settings":
        def bad(name: str, what: str) -> InputError:
            # Name a flag only where `abgate serve` has one: a flag that does not exist sends the reader looking.
            flag = f" or {SERVE_FLAGS[name]}" if name in SERVE_FLAGS else ""
            return InputError(f"{what} (env ABGATE_{name.upper()}{flag})", field=name)

        if self.max_batch < 1 or self.max_batch > 1024:
            raise bad("max_batch", "must be between 1 and 1024")
        if not 0 <= self.max_wait_ms <= 1000:
            raise bad("max_wait_ms", "must be between 0 and 1000 milliseconds")
        if self.encoder_threads < 0 or self.batch_workers < 1:
            raise bad("encoder_threads", "encoder_threads must be >= 0 and batch_workers >= 1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise bad("device", f"is {self.device!r}; use auto, cpu or cuda")
        if not 1024 <= self.max_body_bytes <= 16 * 1024 * 1024:
            raise bad("max_body_bytes", "must be between 1 KiB and 16 MiB")
        if not 0.05 <= self.events_flush_s <= 60:
            raise bad("events_flush_s", "must be between 0.05 and 60 seconds")
        if self.impression_ttl_s <= 0:
            raise bad("impression_ttl_s", "impression_ttl_s must be a positive number of seconds")
        parse_keys(self.impression_keys)  # InputError naming impression_keys
        if self.query_cache < 0:
            raise bad("query_cache", "must be >= 0 (query embeddings to keep; 0 turns the cache off)")
        if (self.default_encoder is None) != (self.default_index is None):
            raise bad("default_encoder", "default_encoder and default_index go together: set both or neither")
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s"):
            if not 0 < getattr(self, name) <= 3600:
                raise bad(name, "must be between 0 and 3600 seconds")
        if not 0 <= self.report_ttl_s <= 3600:
            raise bad("report_ttl_s", "must be between 0 (rebuild at every request) and 3600 seconds")
        if not 0 <= self.aggregates_refresh_s <= 86400:
            raise bad("aggregates_refresh_s", "must be between 0 (off) and 86400 seconds")
        if not 0 <= self.drain_s <= 300:
            raise bad("drain_s", "must be between 0 and 300 seconds")
        if not 1 <= self.max_connections <= 1_000_000:
            raise bad("max_connections", "must be between 1 and 1,000,000")
        if not 1024 <= self.max_header_bytes <= 1024 * 1024:
            raise bad("max_header_bytes", "must be between 1 KiB and 1 MiB")
        if not 0 < self.port < 65536:
            raise bad("port", f"is {self.port}; use a TCP port between 1 and 65535")
        return self

    def resolve(self, path: str) -> Path:
        """An artifact path from the YAML: absolute as is, relative against artifacts_dir."""
        p = Path(path)
        return (p if p.is_absolute() else Path(self.artifacts_dir) / p).resolve()

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes).validated()


def _convert(name: str, kind, raw: str):
    kind = str(kind)
    try:
        if kind.startswith("bool"):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError:
        raise InputError(f"ABGATE_{name.upper()}={raw!r} is not a valid {kind.split()[0]}", field=name) from None
    return raw or None
