"""Users each design needs, from one run, under the simulator's click model on SciFact test (docs/interleaving.md).

Inputs: the demo's offline evaluations (`abgate eval-offline --output`, with each query's top 10) of the baseline
and the fine-tune, and the baseline encoder and index (for a clearly worse candidate: the baseline's vectors cut
to their first 32 dimensions — all-MiniLM-L6-v2 is not Matryoshka-trained, so that ranks far worse).

Measured, with the same click model, population and seeds for both designs:
- fine-tune vs baseline: sequential power by users, A/B on MRR and interleaving (unit preference), and the
  users each needs for 80% and 90% power;
- A/A interleaving (both arms the baseline's rankings): false-positive rate over `--aa-reps` experiments with
  14 daily looks;
- the worse candidate vs baseline: both designs must find it worse, and the users each needs.

    python bench/designs_volume.py --offline-dir artifacts/demo --encoder artifacts/encoders/baseline \\
        --index artifacts/indexes/baseline [--data DIR] [--reps 200] [--aa-reps 1000] [--json]
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
from gateway.simulation.volume import (click_matrix, interleaved_queries, study, study_interleaving,  # noqa: E402
                                       volume_needed)

AB_VOLUMES = (1000, 2000, 4000, 8000, 12000, 16000, 24000, 32000, 48000)
INTER_VOLUMES = (50, 100, 200, 300, 400, 600, 800, 1200, 1600, 2400, 3200)


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


def compare(control: dict, treatment: dict, judgments, model, population, reps: int, seed: int) -> dict:
    ab = study(click_matrix(control, judgments, model), click_matrix(treatment, judgments, model), AB_VOLUMES,
               reps=reps, population=population, model=model, seed=seed, metric="mrr")
    merged = interleaved_queries(control, treatment, judgments, model, seed=seed)
    inter = study_interleaving(merged, INTER_VOLUMES, reps=reps, population=population, model=model, seed=seed)
    need = {design: {str(t): volume_needed(ps, t) for t in (0.8, 0.9)} for design, ps in (("ab", ab), ("interleaving", inter))}
    return {"ab": points(ab), "interleaving": points(inter), "users_for_power": need,
            "ratio_80": (need["ab"]["0.8"] / need["interleaving"]["0.8"])
            if need["ab"]["0.8"] and need["interleaving"]["0.8"] else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--offline-dir", required=True, type=Path)
    p.add_argument("--encoder", required=True, type=Path)
    p.add_argument("--index", required=True, type=Path)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared/data/scifact"))
    p.add_argument("--reps", type=int, default=200)
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
    out["finetuned_vs_baseline"] = compare(base, tuned, judgments, model, population, args.reps, args.seed)
    print(f"designs_volume: fine-tune vs baseline: {out['finetuned_vs_baseline']['users_for_power']}",
          file=sys.stderr)
    out["worse_vs_baseline"] = compare(base, worse, judgments, model, population, args.reps, args.seed + 1)
    print(f"designs_volume: worse vs baseline: {out['worse_vs_baseline']['users_for_power']}", file=sys.stderr)
    aa = study_interleaving(interleaved_queries(base, base, judgments, model, seed=args.seed + 2), [1000],
                            reps=args.aa_reps, population=population, model=model, seed=args.seed + 2,
                            expected=0, looks=14)[0]
    out["aa_interleaving"] = {"users": 1000, "reps": args.aa_reps, "looks": 14,
                              "false_positive_rate": aa.wrong_sequential}
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
