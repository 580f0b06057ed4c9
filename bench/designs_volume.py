"""Users each design needs, from one run, under the simulator's click model on SciFact test (docs/interleaving.md).

Inputs: the demo's offline evaluations (`abgate eval-offline --output`, with each query's top 10) of the baseline
and the fine-tune, and the baseline encoder and index (for a clearly worse candidate: the baseline's vectors cut
to their first 32 dimensions — all-MiniLM-L6-v2 is not Matryoshka-trained, so that ranks far worse).

Measured, with the same click model, population and seeds for both designs, and the interleaving preference
scored by experiments/interleaving.py's own functions (clicks in the arms' common prefix ignored):
- fine-tune vs baseline: sequential power by users, A/B on MRR and interleaving (unit preference), the users each
  needs for 80% and 90% power and their ratio; twice: with the sequential test's default tuning (5,000 units)
  for both designs, and with each design's test tuned at the volume studied (as `design.sample_size` tunes the
  report's test when a team plans that volume);
- A/A interleaving, `--aa-reps` experiments with 14 daily looks: with both arms the baseline's rankings (every
  click lies in the common prefix, so nothing is credited), and the null that exercises the test: the baseline
  and the fine-tune's rankings with the arms' roles swapped by a coin per search (no arm better, clicks below
  the prefix credited);
- the worse candidate vs baseline: both designs must find it worse, and the users each needs.

    python bench/designs_volume.py --offline-dir artifacts/demo --encoder artifacts/encoders/baseline \\
        --index artifacts/indexes/baseline [--data DIR] [--reps 400] [--aa-reps 1000]   (prints JSON)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

from gateway.encoder import Encoder  # noqa: E402
from gateway.search import VectorIndex  # noqa: E402
from gateway.simulation.users import ClickModel, Population, load_judgments  # noqa: E402
from gateway.simulation.volume import (click_matrix, interleaved_queries, mirrored, study,  # noqa: E402
                                       study_interleaving, volume_needed)

AB_VOLUMES = (50, 100, 200, 300, 500, 1000, 2000, 4000, 6000, 8000, 10000, 12000, 14000, 16000, 18000, 20000, 24000, 32000, 48000)
INTER_VOLUMES = (50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1100, 1200, 1400, 1600, 2000, 2400, 3200)
DEFAULT_TUNING = 5_000


def rankings(path: Path) -> dict[str, list[str]]:
    body = json.loads(path.read_text())
    return {q: list(v["top"]) for q, v in body["per_query"].items()}


def truncated_rankings(encoder_dir: Path, index_dir: Path, queries: dict[str, str], dims: int) -> dict:
    """The baseline's own vectors cut to `dims` dimensions (renormalised): a real, clearly worse encoder."""
    index = VectorIndex.load(index_dir, gpu=False)
    vectors = index.vectors()[:, :dims]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    small = VectorIndex.build(vectors.astype(np.float32), index.doc_ids, [{} for _ in index.doc_ids],
                              encoder_checksum="truncated")
    encoder = Encoder.load(encoder_dir, threads=0, device="cpu", dimensions=dims)
    ids = list(queries)
    hits = small.search(encoder.encode([queries[q] for q in ids]), 10)
    return {q: [h.doc_id for h in row] for q, row in zip(ids, hits)}


def points(ps) -> list[dict]:
    return [p.as_dict() for p in ps]


def compare(control: dict, treatment: dict, judgments, model, population, reps: int, seed: int,
            self_tuned: bool = False) -> dict:
    """Both designs on the same arms. `self_tuned`: each volume's sequential test tuned at that volume (total
    units of the A/B test; users of the interleaving experiment) instead of the default 5,000 units."""
    probs = click_matrix(control, judgments, model), click_matrix(treatment, judgments, model)
    merged = interleaved_queries(control, treatment, judgments, model, seed=seed)
    ab, inter = [], []
    for users in AB_VOLUMES:
        ab += study(*probs, [users], reps=reps, population=population, model=model, seed=seed, metric="mrr",
                    tuning=users if self_tuned else DEFAULT_TUNING)
    for users in INTER_VOLUMES:
        inter += study_interleaving(merged, [users], reps=reps, population=population, model=model, seed=seed,
                                    tuning=users if self_tuned else DEFAULT_TUNING)
    need = {design: {str(t): volume_needed(ps, t) for t in (0.8, 0.9)} for design, ps in (("ab", ab), ("interleaving", inter))}
    ratio = {t: round(need["ab"][t] / need["interleaving"][t], 1) if need["ab"][t] and need["interleaving"][t]
             else None for t in ("0.8", "0.9")}
    return {"tuning": "the volume studied" if self_tuned else DEFAULT_TUNING,
            "ab": points(ab), "interleaving": points(inter), "users_for_power": need, "ratio": ratio,
            "interleaving_clicks_in_common_prefix": round(merged.ignored_click_share(), 4)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--offline-dir", required=True, type=Path)
    p.add_argument("--encoder", required=True, type=Path)
    p.add_argument("--index", required=True, type=Path)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared/data/scifact"))
    p.add_argument("--reps", type=int, default=400)
    p.add_argument("--aa-reps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    started = time.perf_counter()
    judgments = load_judgments(args.data, "test")
    model, population = ClickModel(), Population()
    base = rankings(args.offline_dir / "offline-baseline.json")
    tuned = rankings(args.offline_dir / "offline-finetuned.json")
    worse = truncated_rankings(args.encoder, args.index, judgments.queries, 32)
    out = {"click_model": model.__dict__, "reps": args.reps}
    for key, self_tuned in (("finetuned_vs_baseline", False), ("finetuned_vs_baseline_self_tuned", True)):
        out[key] = compare(base, tuned, judgments, model, population, args.reps, args.seed, self_tuned)
        print(f"designs_volume: {key}: users for power {out[key]['users_for_power']}, A/B / interleaving "
              f"{out[key]['ratio']}", file=sys.stderr)
    out["worse_vs_baseline"] = compare(base, worse, judgments, model, population, args.reps, args.seed + 1)
    print(f"designs_volume: worse vs baseline: {out['worse_vs_baseline']['users_for_power']}", file=sys.stderr)
    nulls = {"identical_arms": interleaved_queries(base, base, judgments, model, seed=args.seed + 2),
             "swapped_roles": mirrored(interleaved_queries(base, tuned, judgments, model, seed=args.seed + 2))}
    out["aa_interleaving"] = {}
    for name, queries in nulls.items():
        for users in (1000, 3000):
            aa = study_interleaving(queries, [users], reps=args.aa_reps, population=population, model=model,
                                    seed=args.seed + 2, expected=0, looks=14)[0]
            out["aa_interleaving"][f"{name}_{users}"] = {
                "users": users, "reps": args.aa_reps, "looks": 14, "false_positive_rate": aa.wrong_sequential,
                "mean_preference": round(aa.mean_lift, 4),
                "clicks_in_common_prefix": round(queries.ignored_click_share(), 4)}
            print(f"designs_volume: A/A ({name}, {users} users, 14 looks): false positives "
                  f"{aa.wrong_sequential:.3f}", file=sys.stderr)
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
