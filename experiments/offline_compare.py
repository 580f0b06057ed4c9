"""Offline vs online: each arm's offline retrieval quality beside its online lift, and where they disagree.

An arm is matched to its offline runs (`offline_eval`, written by `abgate eval-offline`) by the encoder and
index checksums it actually served (logged on every impression); when an arm has no traffic yet, by the
checksums in the manifests of its encoder and index folders. The latest run per checksum pair wins.

Disagreement: the treatment is better offline (NDCG@10 above control's) while the primary metric online is
significantly worse or flat. That is the case worth a look: the offline judgments may not reflect what users
want, or the online test may be underpowered.
"""

from __future__ import annotations

import json
from pathlib import Path

OFFLINE_METRICS = (("ndcg", 10), ("recall", 100), ("mrr", 10))
DECIDING = "ndcg@10"


def _manifest_checksum(path: str, manifest: str) -> str | None:
    try:
        return json.loads((Path(path) / manifest).read_text())["checksum"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def arm_checksums(experiment, data) -> dict[str, tuple[str | None, str | None]]:
    out = {}
    for arm in experiment.arms:
        served = data.arms.get(arm.name)
        if served and len(served.encoder_checksums) == 1 and len(served.index_checksums) == 1:
            out[arm.name] = (served.encoder_checksums[0], served.index_checksums[0])
        else:
            out[arm.name] = (_manifest_checksum(arm.encoder, "abgate-encoder.json"),
                             _manifest_checksum(arm.index, "abgate-index.json"))
    return out


def latest_offline(client, checksums: dict, database: str = "abgate") -> dict[str, dict]:
    """arm -> {"ndcg@10": value, ..., "run_id", "ts", "dataset", "split", "queries"} of its latest run."""
    encoders = sorted({e for e, _ in checksums.values() if e})
    if not encoders:
        return {}
    try:
        rows = client.query(
            f"SELECT encoder_checksum, index_checksum, run_id, max(ts) AS at, any(dataset), any(split), "
            f"any(queries), groupArray((metric, k, value)) FROM {database}.offline_eval "
            f"WHERE encoder_checksum IN {{encoders:Array(String)}} "
            f"GROUP BY encoder_checksum, index_checksum, run_id ORDER BY at",
            parameters={"encoders": encoders}).result_rows
    except Exception as exc:  # an older store without the table: the report says so instead of failing
        if "UNKNOWN_TABLE" in str(exc) or "doesn't exist" in str(exc):
            return {}
        raise
    out = {}
    for arm, (encoder, index) in checksums.items():
        runs = [r for r in rows if r[0] == encoder and (index is None or r[1] == index)]
        if not runs:
            continue
        run = runs[-1]  # rows are ordered by time: the latest run
        values = {f"{metric}@{k}": float(v) for metric, k, v in run[7]}
        out[arm] = {**{f"{n}@{k}": values.get(f"{n}@{k}") for n, k in OFFLINE_METRICS}, "run_id": run[2],
                    "ts": run[3].isoformat(), "dataset": run[4], "split": run[5], "queries": int(run[6]),
                    "encoder_checksum": encoder, "index_checksum": run[1]}
    return out


def offline_comparison(client, experiment, data, rows: list[dict], *, database: str = "abgate") -> dict:
    checksums = arm_checksums(experiment, data)
    offline = latest_offline(client, checksums, database)
    control = offline.get(experiment.control)
    online = {r["arm"]: r for r in rows if r["role"] == "primary"}
    comparisons = []
    for arm in (a.name for a in experiment.arms if a.name != experiment.control):
        entry = {"arm": arm, "offline_deltas": {}, "offline_direction": "unknown", "online_metric":
                 experiment.metrics.primary, "online_lift": None, "online_direction": "unknown",
                 "disagreement": False, "note": None}
        treated, row = offline.get(arm), online.get(arm)
        if treated and control:
            for name, k in OFFLINE_METRICS:
                key = f"{name}@{k}"
                if treated.get(key) is not None and control.get(key) is not None:
                    entry["offline_deltas"][key] = treated[key] - control[key]
            delta = entry["offline_deltas"].get(DECIDING)
            if delta is not None:
                entry["offline_direction"] = "better" if delta > 0 else ("worse" if delta < 0 else "same")
        else:
            entry["note"] = "no offline evaluation for " + (arm if control else experiment.control) + \
                            " (run abgate eval-offline on its encoder and index)"
        if row:
            lift = row["relative_sequential"] or row["relative"]
            entry["online_lift"] = lift.get("lift")
            entry["online_direction"] = row["direction"]
        entry["disagreement"] = (entry["offline_direction"] == "better"
                                 and entry["online_direction"] in ("worse", "flat"))
        if entry["disagreement"]:
            entry["note"] = (f"better offline (NDCG@10 {entry['offline_deltas'][DECIDING]:+.4f}) but "
                             f"{entry['online_direction']} online: check the offline judgments or the test's power")
        comparisons.append(entry)
    return {"available": bool(offline), "metrics": [f"{n}@{k}" for n, k in OFFLINE_METRICS],
            "arms": {arm: offline.get(arm) for arm in checksums}, "comparisons": comparisons}
