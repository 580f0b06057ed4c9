"""The demo's second half: offline evaluation, the gateway, simulated traffic watched as it comes, and the verdicts.

One gateway serves the whole run. Simulated users come in chunks (`--look-every` layer users, or the
cumulative volumes of `--stages`); after each chunk the demo reads the three reports from the running gateway
(GET /dashboard/NAME/report.json, built from the store as it is then: the sequential tests' always-valid
intervals make every such look legitimate) and stops the traffic at the first look where the A/B test and the
interleaving experiment have both named a winner, as a team watching its dashboard would. The A/A experiment
must name none at any look. At the end the gateway is stopped (its event writer flushes) and `abgate report`
reads the final reports from the store.

What was replayed is recorded in artifacts/demo/traffic.json with the checksums of the arms; a second run
skips finished looks, and changed arms start the store afresh.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from gateway.launcher import GatewayProcess
from gateway.simulation.steps import Child, Context, _json, abgate, log, run_step
from experiments.errors import AbgateError

AB, AA, INTER = "finetune-vs-baseline", "aa-baseline", "finetune-vs-baseline-interleaved"
ARMS = ("baseline", "finetuned")
# The A/B test's primary metric and its share of the demo layer (experiments/demo/*.yaml; the volume study
# must test what the report tests). MRR of the first click was chosen by sensitivity: docs/demo.md.
PRIMARY = "mrr"
# Interleaving gets 15%: enough for it to decide before the A/B test, which is the point it makes (it needs
# about a thirteenth of the users: docs/interleaving.md), while the A/B test keeps most of the traffic.
AB_SHARE = 0.8              # finetune-vs-baseline holds layer buckets [0, 8000); aa-baseline [8000, 8500)
INTER_SHARE = 0.15          # finetune-vs-baseline-interleaved [8500, 10000)
INTER_VOLUMES = (100, 200, 400, 800, 1000, 1200, 1400, 1600, 2400, 3200)
TARGET_POWER = 0.9
QUERY_CACHE = 10_000        # the gateway's query-embedding cache (SciFact test has 300 distinct queries)


def demo_dir(ctx: Context) -> Path:
    return ctx.path("artifacts", "demo")


def arm_checksums(ctx: Context) -> dict:
    out = {}
    for arm in ARMS:
        enc = _json(ctx.path("artifacts", "encoders", arm, "abgate-encoder.json")) or {}
        idx = _json(ctx.path("artifacts", "indexes", arm, "abgate-index.json")) or {}
        out[arm] = {"encoder": enc.get("checksum"), "index": idx.get("checksum")}
    return out


def experiments_checksum(ctx: Context) -> str:
    """Of the demo's experiment files: new buckets or metrics make earlier traffic another experiment's."""
    digest = hashlib.sha256()
    for path in sorted(ctx.path("experiments", "demo").glob("*.yaml")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def reset_store_if_stale(ctx: Context, fresh: bool) -> dict:
    """The traffic record; the store is wiped when asked or when the arms or experiments changed since."""
    folder = demo_dir(ctx)
    record = _json(folder / "traffic.json") or {}
    current = arm_checksums(ctx) | {"experiments": experiments_checksum(ctx)}
    # A stage cut short (Ctrl-C) left some of its users in the store: replaying it would count them twice.
    why = ("asked" if fresh else "the arms or the experiments changed" if record and record.get("arms") != current else
           "the last run stopped in the middle of a stage" if record.get("running") else None)
    if why:
        log(f"starting the store afresh ({why})")
        shutil.rmtree(folder, ignore_errors=True)
        record = {}
    folder.mkdir(parents=True, exist_ok=True)
    return record or {"arms": current, "stages": []}


def evaluate_offline(ctx: Context) -> dict:
    folder = demo_dir(ctx)
    results = {}
    for arm in ARMS:
        out = folder / f"offline-{arm}.json"
        enc, idx = ctx.path("artifacts", "encoders", arm), ctx.path("artifacts", "indexes", arm)

        def done(out=out, arm=arm) -> bool:
            result = _json(out)
            return bool(result) and {"encoder": result.get("encoder_checksum"),
                                     "index": result.get("index_checksum")} == arm_checksums(ctx)[arm]

        run_step(ctx, f"eval-offline {arm}", out,
                 abgate("eval-offline", str(enc), str(idx), "--data", str(ctx.data), "--split", "test",
                        "--label", arm, "--output", str(out), "--ignore-unknown-docs"), done)
        results[arm] = _json(out)["metrics"]
        log(f"offline {arm}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(results[arm].items())))
    return results


VOLUMES = (1000, 2000, 4000, 8000, 10000, 12000, 14000, 16000, 24000, 32000)  # users in one experiment


def plan_volume(ctx: Context, reps: int = 100) -> dict:
    """`abgate simulate-volume` on the offline rankings, testing the demo's primary metric: the A/B power and
    the A/A false-positive rate per volume, and the same for interleaving: what each design needs, printed
    beside what the live test took. Cached in artifacts/demo/volume.json (keyed by the rankings and the
    plan's settings)."""
    folder = demo_dir(ctx)
    files = {arm: folder / f"offline-{arm}.json" for arm in ARMS}
    key = {arm: (_json(f) or {}).get("run_id") for arm, f in files.items()} | {
        "metric": PRIMARY, "share": AB_SHARE, "target": TARGET_POWER, "volumes": list(VOLUMES), "reps": reps,
        "interleaving": list(INTER_VOLUMES)}
    cached = _json(folder / "volume.json")
    if cached and cached.get("key") == key:
        log(f"volume study: done already (A/B needs {cached['ab']['users_needed']} users for "
            f"{TARGET_POWER:.0%} power on {PRIMARY})")
        return cached
    log(f"volume study: abgate simulate-volume on {PRIMARY} ({reps} replications per volume)")
    common = ["--data", str(ctx.data), "--reps", str(reps), "--users", *map(str, VOLUMES), "--metric", PRIMARY,
              "--target", str(TARGET_POWER)]
    ab = run_cli_json(ctx, "simulate-volume", str(files["baseline"]), str(files["finetuned"]), *common)
    aa = run_cli_json(ctx, "simulate-volume", str(files["baseline"]), str(files["baseline"]), *common)
    inter = run_cli_json(ctx, "simulate-volume", str(files["baseline"]), str(files["finetuned"]), "--data",
                         str(ctx.data), "--reps", str(reps), "--users", *map(str, INTER_VOLUMES), "--design",
                         "interleaving", "--target", str(TARGET_POWER))
    plan = {"key": key, "ab": ab, "aa": aa, "interleaving": inter, "ab_share": AB_SHARE, "target_power": TARGET_POWER}
    (folder / "volume.json").write_text(json.dumps(plan, indent=2))
    log(f"volume study: A/B needs {ab['users_needed']} users for {TARGET_POWER:.0%} power on {PRIMARY}; A/A "
        f"false positives {max(p['wrong_sequential'] for p in aa['points']):.1%} at most")
    return plan


def demo_gateway(ctx: Context, port: int) -> GatewayProcess:
    """`abgate serve` on the demo experiments, logging to artifacts/demo/gateway.log (not started yet).
    Reports are built fresh at every look (no report cache, aggregates refreshed by the build itself rather
    than by a background thread that would take CPU from the traffic between looks)."""
    folder = demo_dir(ctx)
    env = dict(ctx.env, ABGATE_EXPERIMENTS_DIR=str(ctx.path("experiments", "demo")), ABGATE_LAYER="demo",
               ABGATE_ARTIFACTS_DIR=str(ctx.work), ABGATE_SPOOL_DIR=str(folder / "spool"),
               ABGATE_STATE_FILE=str(folder / "state.json"), ABGATE_ACCESS_LOG="false", ABGATE_LOG_LEVEL="warning",
               ABGATE_ENCODER_THREADS="1", ABGATE_QUERY_CACHE=str(QUERY_CACHE), ABGATE_REPORT_TTL_S="0",
               ABGATE_AGGREGATES_REFRESH_S="0")
    return GatewayProcess(env=env, port=port, log_path=folder / "gateway.log", cwd=ctx.work, ready_timeout_s=300)


def run_cli_json(ctx: Context, *args: str, env: dict | None = None) -> dict:
    child = Child(abgate(*args, "--json"), ctx, env=env or ctx.env, stdout=subprocess.PIPE, text=True)
    out = child.communicate() or ""
    if child.proc.returncode == 130:
        raise KeyboardInterrupt
    body = {}
    for text in (out.strip(), (out.strip().splitlines() or [""])[-1]):  # whole output, else its last line
        try:
            body = json.loads(text)
            break
        except ValueError:
            continue
    if child.proc.returncode != 0:
        raise AbgateError(f"`abgate {' '.join(args)}` failed (exit code {child.proc.returncode}): "
                          f"{body.get('error') or 'see the messages above'}")
    return body


def verdict(report: dict) -> dict:
    """The part of `abgate report --json` the demo prints (docs/reports.md): status, winner, headline, lift."""
    v = report.get("verdict") or {}
    primary = next((c for c in report.get("comparisons", []) if c.get("role") == "primary"), {})
    lift = primary.get("relative_sequential") or primary.get("relative") or {}
    return {"status": v.get("status"), "winner": v.get("winner"), "headline": v.get("headline"),
            "reasons": v.get("reasons", []), "primary_metric": primary.get("metric"),
            "srm": (report.get("srm") or {}).get("status"),
            "units": (report.get("traffic") or {}).get("units"),
            "impressions": (report.get("traffic") or {}).get("impressions"),
            "primary_lift": {k: lift.get(k) for k in ("lift", "ci_low", "ci_high", "p_value")}}


def read_reports(ctx: Context) -> dict:
    """The final reports, from the store with the gateway stopped (every event flushed), as JSON; each also
    written as a static dashboard page, artifacts/demo/NAME.html."""
    return {name: run_cli_json(ctx, "report", name, "--experiments", str(ctx.path("experiments", "demo")),
                               "--html", str(demo_dir(ctx) / f"{name}.html"))
            for name in (AB, AA, INTER)}


def look(url: str, settle_s: float = 60.0) -> dict:
    """The reports as the running gateway builds them now (GET /dashboard/NAME/report.json): what a team
    watching the dashboard sees. First waits (up to `settle_s`) until the gateway has stored every event it
    accepted (`abgate_event_backlog_bytes` 0 in /metrics), so a look counts all the traffic sent before it."""
    with httpx.Client(base_url=url, timeout=600, trust_env=False) as client:
        deadline = time.monotonic() + settle_s
        while backlog_bytes(client) > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        reports = {}
        for name in (AB, AA, INTER):
            response = client.get(f"/dashboard/{name}/report.json")
            if response.status_code != 200:
                raise AbgateError(f"the gateway answered HTTP {response.status_code} to GET /dashboard/{name}/"
                                  f"report.json: {response.text[:300]}")
            reports[name] = response.json()
        return reports


def backlog_bytes(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("abgate_event_backlog_bytes "):
            return float(line.split()[1])
    raise AbgateError("the gateway's /metrics has no abgate_event_backlog_bytes: is it an older abgate?")


def _save(folder: Path, record: dict) -> None:
    (folder / "traffic.json").write_text(json.dumps(record, indent=2))


def both_decided(stage: dict) -> bool:
    """The demo's stopping rule: the A/B test and the interleaving experiment have both named a winner (each
    test's always-valid guarantee holds at any stopping time, this one included)."""
    return bool(stage["verdicts"][AB]["winner"]) and bool(stage["verdicts"].get(INTER, {}).get("winner"))


def serve_and_simulate(ctx: Context, args, offline: dict, record: dict) -> dict:
    """`record`: from reset_store_if_stale, called before the offline evaluation (whose rows share the store).
    `args.stages`: the cumulative layer users after which the demo looks at the reports."""
    folder = demo_dir(ctx)
    gateway = demo_gateway(ctx, args.port)
    previous = record["stages"][-1]["users"] if record["stages"] else 0
    decided = bool(record["stages"]) and both_decided(record["stages"][-1]) and not args.all_stages
    todo = [] if decided else [users for users in args.stages if users > previous]
    try:
        if todo:
            log(f"starting the gateway on {gateway.url} (log: {gateway.log_path.relative_to(ctx.work)})")
            gateway.start()
        for users in todo:
            number = len(record["stages"]) + 1  # numbers the chunk's seed and unit ids: never reused in a store
            record["running"] = number
            _save(folder, record)
            log(f"look {number}: {users - previous} more simulated users (cumulative {users})")
            started = time.perf_counter()
            sim = run_cli_json(ctx, "simulate", "--url", gateway.url, "--data", str(ctx.data),
                               "--users", str(users - previous), "--seed", str(args.seed + number),
                               "--prefix", f"demo-s{number}", "--concurrency", str(args.concurrency),
                               "--max-seconds", "3600")
            simulated = time.perf_counter() - started
            reports = look(gateway.url)
            stage = {"users": users, "searches": sim.get("searches"), "clicks": sim.get("clicks"),
                     "failed": (sim.get("failed_searches") or 0) + (sim.get("failed_feedback") or 0),
                     "searches_per_s": sim.get("searches_per_s"), "seconds": round(simulated, 1),
                     "look_seconds": round(time.perf_counter() - started - simulated, 1),
                     "verdicts": {name: verdict(r) for name, r in reports.items()}}
            record["stages"].append(stage)
            record.pop("running", None)
            _save(folder, record)
            ab = stage["verdicts"][AB]
            lift = ab["primary_lift"]
            interval = (f" {lift['lift']:+.2%} [{lift['ci_low']:+.2%}, {lift['ci_high']:+.2%}]"
                        if lift.get("lift") is not None and lift.get("ci_low") is not None else "")
            log(f"look {number}: {ab['units']} A/B users, {ab['primary_metric']}{interval}: A/B winner "
                f"{ab['winner'] or 'none yet'}, interleaving winner {stage['verdicts'][INTER]['winner'] or 'none yet'}"
                f", A/A winner {stage['verdicts'][AA]['winner'] or 'none'} ({stage['searches_per_s']} searches/s, "
                f"look {stage['look_seconds']} s)")
            previous = users
            if both_decided(stage) and not args.all_stages:
                break
        gateway.stop()
        reports = read_reports(ctx)
        if args.keep_serving:
            gateway.start()
            log(f"dashboard: {gateway.url}/dashboard/{AB} (A/A: {gateway.url}/dashboard/{AA}); Ctrl-C to stop")
            while True:
                time.sleep(3600)
    finally:
        gateway.stop()
    return outcome(offline, record, reports, gateway.url)


def outcome(offline: dict, record: dict, reports: dict, url: str) -> dict:
    ndcg = {arm: offline[arm].get("ndcg@10") for arm in ARMS}
    offline_winner = max(ndcg, key=lambda arm: ndcg[arm])
    ab, aa, inter = verdict(reports[AB]), verdict(reports[AA]), verdict(reports[INTER])
    pref = next(iter(reports[INTER].get("preferences") or []), {})
    inter["preference"] = {k: pref.get(k) for k in ("mean", "ci_low", "ci_high", "units", "wins", "losses", "ties")}
    first = next((s["users"] for s in record["stages"] if s["verdicts"][AB]["winner"] == offline_winner), None)
    first_inter = next((s["users"] for s in record["stages"]
                        if s["verdicts"].get(INTER, {}).get("winner") == offline_winner), None)
    lift = ab["primary_lift"].get("lift")
    offline_sign = 1 if offline_winner == "finetuned" else -1
    return {
        # ok: the A/A test names no winner and the A/B test does not name the arm offline evaluation ranks lower.
        "ok": not aa["winner"] and ab["winner"] in (None, offline_winner),
        "offline": offline, "offline_winner": offline_winner, "ab": ab, "aa": aa, "interleaving": inter,
        "agrees_with_offline": ab["winner"] == offline_winner,
        "same_direction": lift is not None and (lift > 0) == (offline_sign > 0),
        "aa_declared_winner": bool(aa["winner"]), "users_needed": first,
        "interleaving_users_needed": first_inter, "stages": record["stages"],
        "dashboard": {"ab": f"{url}/dashboard/{AB}", "aa": f"{url}/dashboard/{AA}",
                      "interleaving": f"{url}/dashboard/{INTER}"},
        "static_dashboard": {"ab": str(Path("artifacts", "demo", f"{AB}.html")),
                             "aa": str(Path("artifacts", "demo", f"{AA}.html"))}}
