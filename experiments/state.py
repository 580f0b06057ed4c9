"""What the gateway last served, kept in a small JSON state file, so unsafe edits can be refused.

The file (default `.abgate/experiments-state.json`) holds, per experiment, the fingerprint of the definition
last loaded — everything that decides which arm a unit gets — and the admin stops:

    {"format": 1,
     "experiments": {"<name>": {"status": "running", "salt": ..., "unit": ..., "layer": ...,
                                "layer_buckets": [0, 10000], "control": ..., "allocation": 1.0,
                                "shares": {"<arm>": 0.5, ...}, "recorded_at": "<iso time>"}},
     "admin_stops": {"<name>": "<iso time>"}}

Rule (checked by `refusals`): if the recorded status was running and the new definition is still running, any
change to salt, unit, layer, layer_buckets, control, the set of arms or their shares of traffic (weights are
compared as shares, so 50/50 == 1/1), or a lower allocation is refused: each moves already-enrolled units
between arms or out of the experiment, which mixes exposures and breaks the analysis. Raising the allocation
is allowed (enrolled units keep their arm, see gateway/assignment.py). `--force` / `?force=true` overrides.

An admin stop holds across reloads and restarts until the YAML declares a `start` later than the stop time
(i.e. a deliberate new run); the team is expected to also set `status: stopped` in git.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from experiments.schema import Experiment
from experiments.errors import InputError

FORMAT = 1


def fingerprint(exp: Experiment) -> dict:
    total = sum(a.weight for a in exp.arms)
    return {"status": exp.status, "salt": exp.salt, "unit": exp.unit, "layer": exp.layer,
            "layer_buckets": list(exp.layer_buckets), "control": exp.control, "allocation": exp.allocation,
            "shares": {a.name: round(a.weight / total, 9) for a in exp.arms}}


@dataclass
class ExperimentState:
    path: Path | None = None
    records: dict[str, dict] = field(default_factory=dict)
    admin_stops: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None) -> "ExperimentState":
        if path is None:
            return cls()
        path = Path(path)
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            return cls(path, dict(data.get("experiments", {})), dict(data.get("admin_stops", {})))
        except (ValueError, AttributeError) as exc:
            raise InputError(f"is not an abgate experiments state file ({exc}): move it away to start afresh",
                             file=str(path)) from None

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"format": FORMAT, "experiments": self.records, "admin_stops": self.admin_stops},
                          indent=2, sort_keys=True)
        # Write then rename, so a crash never leaves half a file that would block the next start.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(body)
        os.replace(tmp, self.path)

    def refusals(self, exp: Experiment) -> list[tuple[str, str]]:
        """(field, reason) for each change the rule in the module docstring refuses."""
        old = self.records.get(exp.name)
        if not old or old.get("status") != "running" or exp.status != "running":
            return []
        new = fingerprint(exp)
        why = ("it would move already-enrolled units between arms and break the analysis; start a new "
               "experiment (new name and salt) or pass --force")
        out = []
        for key in ("salt", "unit", "layer", "control"):
            if old.get(key) != new[key]:
                out.append((key, f"of running experiment {exp.name!r} changed from {old.get(key)!r} to "
                                 f"{new[key]!r}: refused because {why}"))
        if old.get("layer_buckets") != new["layer_buckets"]:
            out.append(("layer_buckets", f"of running experiment {exp.name!r} changed from "
                                         f"{old.get('layer_buckets')} to {new['layer_buckets']}: "
                                         f"refused because {why}"))
        if old.get("shares") != new["shares"]:
            out.append(("arms", f"weights of running experiment {exp.name!r} changed from shares "
                                f"{old.get('shares')} to {new['shares']}: refused because {why}"))
        if new["allocation"] < old.get("allocation", 0):
            out.append(("allocation", f"of running experiment {exp.name!r} lowered from {old.get('allocation')} to "
                                      f"{new['allocation']}: refused because it would drop enrolled units "
                                      "mid-analysis; pass --force if that is intended"))
        return out

    def record(self, experiments: list[Experiment], now: datetime | None = None) -> None:
        now = now or datetime.now(timezone.utc)
        for exp in experiments:
            rec = fingerprint(exp)
            old = {k: v for k, v in self.records.get(exp.name, {}).items() if k != "recorded_at"}
            if old == rec:
                continue  # unchanged: keep the original recorded_at
            self.records[exp.name] = rec | {"recorded_at": now.isoformat()}
        self.save()

    def stop(self, name: str, now: datetime | None = None) -> None:
        self.admin_stops[name] = (now or datetime.now(timezone.utc)).isoformat()
        self.save()

    def admin_stopped(self, exp: Experiment) -> bool:
        stopped = self.admin_stops.get(exp.name)
        if stopped is None:
            return False
        return exp.start is None or exp.start <= datetime.fromisoformat(stopped)
