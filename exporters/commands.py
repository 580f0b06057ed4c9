"""Subcommands of the exporters package: export-model, import-model, build-index, eval-offline, harvest (and
finetune, if present).

Each command prints a short human summary, or one JSON object with --json; progress goes to stderr.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from experiments.errors import InputError


def register(subparsers) -> None:
    _register_export(subparsers)
    _register_import(subparsers)
    _register_build_index(subparsers)
    _register_eval(subparsers)
    from exporters import harvest

    harvest.register(subparsers)
    try:
        finetune = importlib.import_module("exporters.finetune")
    except ModuleNotFoundError as exc:
        if exc.name != "exporters.finetune":
            raise
    except (SyntaxError, ImportError) as exc:
        # A broken fine-tuning module must not take export/index/eval down with it; say so loudly.
        print(f"abgate: warning: `abgate finetune` is unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
    else:
        finetune.register(subparsers)


def _log_to_stderr() -> None:
    """structlog prints to stdout by default, which would corrupt --json output."""
    import structlog

    if not structlog.is_configured():
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(_CurrentStderr()))


class _CurrentStderr:
    """Whatever sys.stderr is at write time (tests and callers may swap it after configuration)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _data_default() -> str:
    from exporters.corpus import default_data_dir

    return str(default_data_dir())


def _emit(args, payload: dict, lines: list[str]) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print("\n".join(lines))


# -- export-model ------------------------------------------------------------------------------------------

def _register_export(sub) -> None:
    p = sub.add_parser("export-model", help="export a sentence-transformers model to an ONNX encoder directory",
                       description="Export SRC (a sentence-transformers / Hugging Face model folder) to ONNX in "
                       "OUT, check parity against PyTorch, and write the abgate-encoder.json manifest.")
    p.add_argument("src", metavar="SRC", help="model folder (config.json, weights, tokenizer.json)")
    p.add_argument("out", metavar="OUT", help="encoder folder to write")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--quantize", choices=["int8"], help="int8 dynamic quantisation (per-channel)")
    precision.add_argument("--fp16", action="store_true", help="fp16 weights (for GPU serving)")
    p.add_argument("--no-per-channel", action="store_true", help="int8: one scale per tensor, not per channel")
    p.add_argument("--min-cosine", type=float, help="fail if any sample's cosine to PyTorch is below this "
                   "(default: fp32 0.9999, fp16 0.999, int8 0.95)")
    p.add_argument("--min-mean-cosine", type=float, help="quantised: fail below this mean cosine "
                   "(default: fp16 0.9995, int8 0.98)")
    p.add_argument("--min-overlap", type=float, help="quantised: fail below this top-10 neighbour overlap "
                   "(default: fp16 0.9, int8 0.8)")
    p.add_argument("--data", default=_data_default(), help="BEIR folder to draw sample texts from "
                   "(default: $ABGATE_DATA, $DATA or ../shared/data/scifact)")
    p.add_argument("--sample-size", type=int, default=256, help="texts in the parity sample (default 256)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for ONNX Runtime and torch")
    p.add_argument("--optimize", action="store_true", help="apply ONNX Runtime's transformer fusions "
                   "(Attention, SkipLayerNorm, BiasGelu); parity is checked the same way")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=_export_command)


def _export_command(args) -> int:
    from exporters.onnx_export import DEFAULT_THRESHOLDS, Thresholds, export_model, stderr_progress

    _log_to_stderr()
    precision = "int8" if args.quantize else "fp16" if args.fp16 else "fp32"
    base = DEFAULT_THRESHOLDS[precision]
    thresholds = Thresholds(
        min_cosine=base.min_cosine if args.min_cosine is None else args.min_cosine,
        mean_cosine=base.mean_cosine if args.min_mean_cosine is None else args.min_mean_cosine,
        overlap=base.overlap if args.min_overlap is None else args.min_overlap)
    if args.sample_size < 2:
        raise InputError("--sample-size must be at least 2.", field="sample-size")
    manifest = export_model(args.src, args.out, precision=precision, per_channel=not args.no_per_channel,
                            thresholds=thresholds, data_dir=Path(args.data), sample_size=args.sample_size,
                            threads=args.threads, overwrite=args.overwrite, optimize=args.optimize,
                            progress=stderr_progress)
    par = manifest["parity"]
    k = par["neighbour_k"]
    _emit(args, {"out": str(Path(args.out).resolve()), **manifest}, [
        f"exported {precision} encoder {manifest['checksum'][:16]} to {args.out} "
        f"(dimension {manifest['dimension']}, {manifest['pooling']} pooling, max_length {manifest['max_length']})",
        f"parity vs PyTorch on {par['texts']} texts: mean cosine {par['mean_cosine']:.6f}, "
        f"min {par['min_cosine']:.6f}, top-{k} neighbour overlap {par[f'top{k}_overlap']:.3f}"])
    return 0


# -- import-model ------------------------------------------------------------------------------------------

def _register_import(sub) -> None:
    p = sub.add_parser("import-model", help="turn an ONNX file abgate did not export into an encoder directory",
                       description="Wrap MODEL (an .onnx file: token embeddings or a pooled sentence embedding) "
                       "and its tokenizer into the encoder folder OUT that `abgate serve` loads. With --reference, "
                       "check parity against the sentence-transformers model it came from.")
    p.add_argument("model", metavar="MODEL", help="the .onnx file (inputs input_ids, attention_mask[, "
                   "token_type_ids])")
    p.add_argument("out", metavar="OUT", help="encoder folder to write")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="folder with the model's tokenizer.json "
                   "(and tokenizer_config.json, special_tokens_map.json, vocab.txt if present)")
    p.add_argument("--pooling", required=True, metavar="mean|cls",
                   help="how token embeddings become one vector (ignored for an output pooled in the graph)")
    p.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings (as a sentence-"
                   "transformers Normalize module does)")
    p.add_argument("--max-length", type=int, help="tokens per text (default: the reference's max_seq_length, "
                   "else tokenizer_config.json's model_max_length, at most 512)")
    p.add_argument("--output", help="the graph output to serve (default: detected)")
    p.add_argument("--reference", metavar="ST_FOLDER", help="sentence-transformers folder to check parity "
                   "against (cosine on sample texts, as export-model); without it the parity is 'unverified'")
    p.add_argument("--data", default=_data_default(), help="BEIR folder to draw parity texts from "
                   "(default: $ABGATE_DATA, $DATA or ../shared/data/scifact)")
    p.add_argument("--sample-size", type=int, default=256, help="texts in the parity sample (default 256)")
    p.add_argument("--min-cosine", type=float, help="fail if any sample's cosine to the reference is below "
                   "this (default: fp32 0.9999, fp16 0.999, int8 0.95)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for ONNX Runtime and torch")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=_import_command)


def _import_command(args) -> int:
    from exporters.import_model import import_model, stderr_progress

    _log_to_stderr()
    if args.sample_size < 2:
        raise InputError("--sample-size must be at least 2.", field="sample-size")
    manifest = import_model(args.model, args.tokenizer, args.out, pooling=args.pooling, normalize=args.normalize,
                            max_length=args.max_length, reference=args.reference, output=args.output,
                            data_dir=Path(args.data), sample_size=args.sample_size, min_cosine=args.min_cosine,
                            threads=args.threads, overwrite=args.overwrite, progress=stderr_progress)
    par, imported = manifest["parity"], manifest["import"]
    check = ("parity unverified (no --reference)" if par["status"] == "unverified" else
             f"parity vs {Path(par['reference']['path']).name} on {par['texts']} texts: mean cosine "
             f"{par['mean_cosine']:.6f}, min {par['min_cosine']:.6f}")
    _emit(args, {"out": str(Path(args.out).resolve()), **manifest}, [
        f"imported {manifest['precision']} encoder {manifest['checksum'][:16]} to {args.out} (output "
        f"{imported['output']!r}, dimension {manifest['dimension']}, "
        + ("pooled in the graph" if imported["pooled_in_graph"] else f"{manifest['pooling']} pooling")
        + f", max_length {manifest['max_length']})", check])
    return 0


# -- build-index -------------------------------------------------------------------------------------------

def _parse_params(items: list[str]) -> dict:
    params = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--param takes KEY=VALUE, got {item!r}.", field="param")
        try:
            params[key] = int(value)
        except ValueError:
            raise InputError(f"--param {key} must be an integer, got {value!r}.", field="param") from None
    return params


def _register_build_index(sub) -> None:
    p = sub.add_parser("build-index", help="encode a corpus and build a FAISS index",
                       description="Encode CORPUS with the ONNX encoder ENCODER and write a FAISS index to OUT.")
    p.add_argument("encoder", metavar="ENCODER", help="encoder folder written by export-model")
    p.add_argument("corpus", metavar="CORPUS", help="BEIR folder (corpus.jsonl), .jsonl or .parquet file")
    p.add_argument("out", metavar="OUT", help="index folder to write")
    p.add_argument("--kind", choices=["flat-ip", "hnsw", "ivfpq"], default="flat-ip",
                   help="flat-ip: exact (default); hnsw: graph; ivfpq: compressed")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="index parameter: hnsw M, ef_construction, ef_search; ivfpq nlist, m, nbits, nprobe")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed corpus rows (each is reported)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (0: all cores)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--dimensions", type=int, help="Matryoshka: keep the first D dimensions (renormalised)")
    p.add_argument("--limit", type=int, help="index only the first N documents")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    p.add_argument("--json", action="store_true", help="print the index manifest as JSON")
    p.set_defaults(func=_build_index_command)


def _build_index_command(args) -> int:
    from exporters.build_index import build_index

    _log_to_stderr()
    index = build_index(args.encoder, args.corpus, args.out, kind=args.kind, params=_parse_params(args.param),
                        skip_bad=args.skip_bad, batch_size=args.batch_size, threads=args.threads,
                        device=args.device, dimensions=args.dimensions, limit=args.limit, overwrite=args.overwrite)
    m = index.manifest
    skipped = m["corpus"].get("skipped", 0)
    _emit(args, {"out": str(index.path), **m}, [
        f"built {m['kind']} index {m['checksum'][:16]} of {m['count']:,} documents in {args.out} "
        f"(encoder {m['encoder_checksum'][:16]}, {m['corpus']['encode_seconds']} s to encode"
        + (f", {skipped} malformed row(s) skipped)" if skipped else ")")])
    return 0


# -- eval-offline ------------------------------------------------------------------------------------------

def _register_eval(sub) -> None:
    p = sub.add_parser("eval-offline", help="NDCG/Recall/MRR of an encoder + index on held-out qrels",
                       description="Evaluate ENCODER + INDEX on a BEIR split; store the run in ClickHouse.")
    p.add_argument("encoder", metavar="ENCODER", help="encoder folder")
    p.add_argument("index", metavar="INDEX", help="index folder built with that encoder")
    p.add_argument("--data", default=_data_default(), help="BEIR folder with queries.jsonl and qrels/ "
                   "(default: $ABGATE_DATA, $DATA or ../shared/data/scifact)")
    p.add_argument("--split", default="test", help="qrels split (default: test)")
    p.add_argument("--k", type=int, nargs="+", help="extra cutoffs: every metric at each K "
                   "(always reported: NDCG@10, Recall@100, MRR@10)")
    p.add_argument("--label", default="", help="a name for this run (e.g. the arm)")
    p.add_argument("--ignore-unknown-docs", action="store_true",
                   help="drop judgments naming documents the index lacks, instead of failing")
    p.add_argument("--dsn", help="event store to record the run in (default: $ABGATE_DSN or .abgate/store)")
    p.add_argument("--no-store", action="store_true", help="do not write to the event store")
    p.add_argument("--output", help="also write the full result (with per-query values) to this JSON file")
    p.add_argument("--per-query", action="store_true", help="with --json: include per-query values")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_eval_command)


def _eval_command(args) -> int:
    from exporters.evaluate import evaluate, store_result
    from gateway.encoder import Encoder
    from gateway.search import VectorIndex

    _log_to_stderr()
    encoder = Encoder.load(args.encoder, threads=args.threads, device=args.device)
    index = VectorIndex.load(args.index, encoder_checksum=encoder.checksum, threads=max(args.threads, 1))
    result = evaluate(encoder, index, args.data, split=args.split, ks=args.k, label=args.label,
                      batch_size=args.batch_size, ignore_unknown_docs=args.ignore_unknown_docs)
    payload = result.to_json(per_query=args.per_query)
    if args.output:
        Path(args.output).write_text(json.dumps(result.to_json(per_query=True), indent=2) + "\n")
    if not args.no_store:
        from gateway.eventlog.store import connect

        with connect(args.dsn) as client:
            payload["stored"] = {"dsn": client.dsn, **store_result(client, result)}
    lines = [f"{result.dataset} {result.split}: {result.queries} queries, encoder {result.encoder_checksum[:16]}, "
             f"index {result.index_checksum[:16]} ({result.seconds:.1f} s)"]
    lines += [f"  {name:<12} {value:.4f}" for name, value in result.metrics.items()]
    if "stored" in payload:
        lines.append(f"stored as run {result.run_id} in {payload['stored']['dsn']}")
    _emit(args, payload, lines)
    return 0
