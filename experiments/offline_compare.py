"""Offline vs online: each arm's offline retrieval quality beside its online lift, and where they disagree.

An arm is matched to its offline runs (`offline_eval`, written by `abgate eval-offline`) by the encoder and
index checksums it actually served (logged on every impression); when an arm has no traffic yet, by the
checksums in the manifests of its encoder and index folders. The latest run per checksum pair wins.

The offline delta gets its own test: the two runs' per-query NDCG@10 (`offline_eval_queries`) are paired by
query and the mean difference gets a paired t interval (Student's t over queries). 300 test queries move
NDCG@10 by a few thousandths by chance alone, so an uncertain offline delta says nothing either way.

Disagreement is flagged only when the offline delta is significant and the online interval of the primary
metric (always-valid when the design is sequential) excludes that direction: offline significantly better
while online the whole interval is at or below 0, or the reverse. An online result that is merely flat is
"not confirmed yet", not a disagreement: it may be underpowered.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from scipy import stats as scipy_stats

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


def paired_delta(client, control_run: str, treated_run: str, *, metric: str = "ndcg", k: int = 10,
                 alpha: float = 0.05, database: str = "abgate") -> dict | None:
    """Mean per-query difference (treated - control) of `metric@k` over the queries both runs scored, with a
    paired t interval; None when the runs have no per-query values in common."""
    try:
        rows = client.query(
            f"SELECT query_id, anyIf(value, run_id = {{c:String}}), anyIf(value, run_id = {{t:String}}), "
            f"countIf(run_id = {{c:String}}) AS nc, countIf(run_id = {{t:String}}) AS nt "
            f"FROM {database}.offline_eval_queries WHERE run_id IN ({{c:String}}, {{t:String}}) "
            f"AND metric = {{metric:String}} AND k = {{k:UInt32}} GROUP BY query_id HAVING nc > 0 AND nt > 0",
            parameters={"c": control_run, "t": treated_run, "metric": metric, "k": k}).result_rows
    except Exception as exc:  # an older store without the table
        if "UNKNOWN_TABLE" in str(exc) or "doesn't exist" in str(exc):
            return None
        raise
    diffs = [float(t) - float(c) for _, c, t, _, _ in rows]
    n = len(diffs)
    if n < 2:
        return None
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    se = math.sqrt(var / n)
    if se == 0:
        low = high = mean
        p = 1.0 if mean == 0 else 0.0
    else:
        half = float(scipy_stats.t.ppf(1 - alpha / 2, n - 1)) * se
        low, high = mean - half, mean + half
        p = float(2 * scipy_stats.t.sf(abs(mean) / se, n - 1))
    return {"metric": f"{metric}@{k}", "delta": mean, "ci_low": low, "ci_high": high, "p_value": p,
            "queries": n, "significant": p < alpha, "method": "paired t over queries"}


def offline_comparison(client, experiment, data, rows: list[dict], *, database: str = "abgate") -> dict:
    checksums = arm_checksums(experiment, data)
    offline = latest_offline(client, checksums, database)
    control = offline.get(experiment.control)
    online = {r["arm"]: r for r in rows if r["role"] == "primary"}
    comparisons = []
    for arm in (a.name for a in experiment.arms if a.name != experiment.control):
        entry = {"arm": arm, "offline_deltas": {}, "offline_direction": "unknown", "online_metric":
                 experiment.metrics.primary, "online_lift": None, "online_interval": None, "online_direction": "unknown",
                 "disagreement": False, "note": None}
        treated, row = offline.get(arm), online.get(arm)
        entry["offline_test"] = None
        if treated and control:
            for name, k in OFFLINE_METRICS:
                key = f"{name}@{k}"
                if treated.get(key) is not None and control.get(key) is not None:
                    entry["offline_deltas"][key] = treated[key] - control[key]
            test = paired_delta(client, control["run_id"], treated["run_id"], alpha=experiment.design.alpha,
                                database=database)
            entry["offline_test"] = test
            delta = entry["offline_deltas"].get(DECIDING)
            if test is None:
                entry["note"] = "no per-query offline values to test the offline delta (re-run abgate eval-offline)"
            elif not test["significant"]:
                entry["offline_direction"] = "same"  # within the noise of the query sample
            elif delta is not None:
                entry["offline_direction"] = "better" if test["delta"] > 0 else "worse"
        else:
            entry["note"] = "no offline evaluation for " + (arm if control else experiment.control) + \
                            " (run abgate eval-offline on its encoder and index)"
        online_low = online_high = None
        if row:
            lift = (row["relative_sequential"] if experiment.design.sequential else None) or row["relative"]
            entry["online_lift"] = lift.get("lift")
            entry["online_interval"] = [lift.get("ci_low"), lift.get("ci_high")]
            online_low, online_high = lift.get("ci_low"), lift.get("ci_high")
            entry["online_direction"] = row["direction"]
        if row and not row["higher_is_better"] and online_low is not None:  # "better" online means lower here
            online_low, online_high = -online_high, -online_low
        better_offline, worse_offline = (entry["offline_direction"] == "better", entry["offline_direction"] == "worse")
        entry["disagreement"] = bool(online_low is not None and online_high is not None and (
            (better_offline and online_high <= 0) or (worse_offline and online_low >= 0)))
        test = entry["offline_test"]
        if entry["disagreement"]:
            entry["note"] = (f"{entry['offline_direction']} offline (NDCG@10 {test['delta']:+.4f} "
                             f"[{test['ci_low']:+.4f}, {test['ci_high']:+.4f}], {test['queries']} queries) but the "
                             f"online interval excludes that direction: check the offline judgments against what "
                             f"users do")
        elif test and test["significant"] and entry["online_direction"] in ("flat", "unknown"):
            entry["note"] = f"{entry['offline_direction']} offline; not confirmed online yet"
        elif test and not test["significant"] and entry.get("note") is None:
            entry["note"] = (f"offline delta within noise (NDCG@10 {test['delta']:+.4f} "
                             f"[{test['ci_low']:+.4f}, {test['ci_high']:+.4f}])")
        comparisons.append(entry)
    return {"available": bool(offline), "metrics": [f"{n}@{k}" for n, k in OFFLINE_METRICS],
            "arms": {arm: offline.get(arm) for arm in checksums}, "comparisons": comparisons}
