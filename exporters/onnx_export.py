"""`abgate export-model`: a sentence-transformers / Hugging Face model directory -> an abgate encoder directory.

    1. optimum exports the transformer to ONNX (opset 17) with output `last_hidden_state`;
    2. optionally the graph is quantised: int8 dynamic (per-channel by default) or fp16 (for GPUs);
    3. the tokenizer is copied with padding/truncation set to the model's max_length;
    4. parity is checked against the PyTorch model (sentence-transformers) on sample texts, and the export
       fails - leaving OUT untouched - when it does not hold.

Everything is written to a temporary folder beside OUT and renamed into place only once parity holds, so a
failed export never leaves a half-written encoder that a gateway could load.

torch, transformers and sentence-transformers are imported lazily inside functions: this module is the one
place besides fine-tuning allowed to use them (docs/architecture.md).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

from gateway.artifacts import ENCODER_MANIFEST as MANIFEST
from gateway.artifacts import MODEL_FILE, TOKENIZER_FILE, encoder_checksum, source_checksum
from exporters.progress import Progress
from gateway.encoder import Encoder
from experiments.errors import ArtifactError, InputError

OPSET = 17
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
VERSIONED = ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "sentence-transformers",
             "tokenizers")


@dataclass(frozen=True)
class Thresholds:
    """Parity a quantised export must reach against the fp32 PyTorch model, on the sample texts."""
    min_cosine: float
    mean_cosine: float
    overlap: float


DEFAULT_THRESHOLDS = {
    "fp32": Thresholds(min_cosine=0.9999, mean_cosine=0.9999, overlap=0.95),
    "fp16": Thresholds(min_cosine=0.999, mean_cosine=0.9995, overlap=0.9),
    "int8": Thresholds(min_cosine=0.95, mean_cosine=0.98, overlap=0.8),
}

FALLBACK_SAMPLE = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.", "Vitamin D deficiency raises the risk of fracture.",
    "Aspirin lowers the risk of colorectal cancer.", "Statins reduce cardiovascular events in older adults.",
]


def check_source(src: Path) -> None:
    if not src.is_dir():
        raise InputError("the model directory does not exist; give a local sentence-transformers or Hugging "
                         "Face model folder (with config.json, weights and tokenizer).", file=str(src))
    if not (src / "config.json").is_file():
        raise InputError("this folder is not a Hugging Face model: config.json is missing. Give the folder "
                         "that holds config.json, the weights and tokenizer.json.", file=str(src))
    if not any((src / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")) and \
            not any(src.glob("*.safetensors")):
        raise InputError("this folder has no model weights (model.safetensors or pytorch_model.bin).",
                         file=str(src))
    if not (src / "tokenizer.json").is_file():
        raise InputError("this folder has no tokenizer.json (a fast tokenizer is needed to serve without "
                         "transformers).", file=str(src))


def read_pooling(src: Path) -> dict:
    """Pooling, normalisation and max_length as sentence-transformers would apply them."""
    pooling, normalize, max_length = "mean", False, None
    pool_cfgs = sorted(src.glob("*_Pooling/config.json"))
    if pool_cfgs:
        cfg = json.loads(pool_cfgs[0].read_text())
        if cfg.get("pooling_mode_cls_token"):
            pooling = "cls"
        elif not cfg.get("pooling_mode_mean_tokens", True):
            raise InputError("only mean and CLS pooling are supported by the ONNX runtime.", file=str(pool_cfgs[0]))
    modules = src / "modules.json"
    if modules.is_file():
        normalize = any(m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text()))
    st_cfg = src / "sentence_bert_config.json"
    if st_cfg.is_file():
        max_length = json.loads(st_cfg.read_text()).get("max_seq_length")
    if not max_length:
        tok_cfg = src / "tokenizer_config.json"
        limit = json.loads(tok_cfg.read_text()).get("model_max_length", 512) if tok_cfg.is_file() else 512
        max_length = min(int(limit), 512)
    return {"pooling": pooling, "normalize": normalize, "max_length": int(max_length)}


def sample_texts(data_dir: Path | None, size: int) -> list[str]:
    """A deterministic sample: half queries, half documents, spread evenly over the files."""
    from exporters.corpus import read_corpus, read_queries

    if data_dir is None or not (Path(data_dir) / "corpus.jsonl").is_file():
        return FALLBACK_SAMPLE
    docs, _ = read_corpus(data_dir, skip_bad=True)
    queries = list(read_queries(data_dir).values()) if (Path(data_dir) / "queries.jsonl").is_file() else []
    half = size // 2 if queries else size
    pick = lambda items, n: [items[i] for i in np.linspace(0, len(items) - 1, min(n, len(items))).astype(int)]
    return pick(queries, size - half) + pick([d.text for d in docs], half)


def tool_versions() -> dict:
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return versions


def _export_fp32(src: Path, work: Path) -> Path:
    import torch
    from optimum.exporters.onnx import main_export

    raw = work / "optimum"
    with warnings.catch_warnings():
        # Tracing warns about constants in the attention-mask code; the parity check below is what proves
        # the graph right. (Left on, a warnings-as-errors setting would abort the trace mid-way.)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        main_export(str(src), raw, task="feature-extraction", library_name="transformers", opset=OPSET,
                    do_validation=False, local_files_only=True)
    if not (raw / MODEL_FILE).is_file():
        raise ArtifactError("optimum did not write model.onnx; see its messages above.", file=str(src))
    return raw / MODEL_FILE


def _fuse(model: Path, config: Path) -> Path:
    """ONNX Runtime's transformer fusions (Attention, SkipLayerNorm, BiasGelu): fewer, bigger kernels. The
    graph then needs onnxruntime (CPU or CUDA) to run, which is what serves it anyway."""
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = json.loads(config.read_text()).get("model_type", "bert")
    fused = optimize_model(str(model), model_type=model_type if model_type in ("bert", "roberta") else "bert",
                           num_heads=0, hidden_size=0, opt_level=1)
    out = model.with_name("model-fused.onnx")
    fused.save_model_to_file(str(out))
    return out


def _quantize(model: Path, precision: str, out: Path, per_channel: bool) -> None:
    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(model), str(out), per_channel=per_channel, weight_type=QuantType.QInt8)
    elif precision == "fp16":
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        # keep_io_types: callers still feed int64 ids and read float32 token embeddings.
        converted = convert_float_to_float16(onnx.load(str(model)), keep_io_types=True)
        onnx.save(converted, str(out))
    else:
        shutil.copyfile(model, out)


def _write_tokenizer(src: Path, out: Path, max_length: int) -> None:
    from tokenizers import Tokenizer

    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    # Some hub tokenizers ship fixed padding / a shorter truncation; store what the model really expects.
    tokenizer = Tokenizer.from_file(str(src / TOKENIZER_FILE))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.save(str(out / TOKENIZER_FILE))


def _pad_token(src: Path) -> str:
    config = src / "tokenizer_config.json"
    pad = json.loads(config.read_text()).get("pad_token") if config.is_file() else None
    return pad if isinstance(pad, str) else "[PAD]"  # some configs hold an AddedToken dict; BERT's is [PAD]


def torch_reference(src: Path, texts: list[str], threads: int, max_length: int, show_progress: bool = False
                    ) -> np.ndarray:
    """Embeddings from the PyTorch model through sentence-transformers itself: the ground truth."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(max(1, threads))
    model = SentenceTransformer(str(src), device="cpu", local_files_only=True)
    model.max_seq_length = max_length
    meter = Progress("parity: PyTorch encoded", enabled=show_progress)
    chunks, step = [], 64  # chunks only so the ETA moves; batches inside stay at 32
    for start in range(0, len(texts), step):
        chunks.append(model.encode(texts[start:start + step], batch_size=32, convert_to_numpy=True,
                                   normalize_embeddings=True, show_progress_bar=False))
        meter(min(start + step, len(texts)), len(texts))
    return np.concatenate(chunks)


def onnx_candidate(encoder: Encoder, texts: list[str], show_progress: bool = False) -> np.ndarray:
    return encoder.encode(texts, progress=Progress("parity: ONNX encoded", enabled=show_progress))


def parity(reference: np.ndarray, candidate: np.ndarray, k: int = 10) -> dict:
    """Cosine per text, and how many of each text's top-k neighbours within the sample survive."""
    ref = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    cand = candidate / np.linalg.norm(candidate, axis=1, keepdims=True)
    cosines = (ref * cand).sum(axis=1)
    k = min(k, len(ref) - 1)
    overlap = 1.0
    if k >= 1:
        def neighbours(x):
            sims = x @ x.T
            np.fill_diagonal(sims, -np.inf)
            return np.argsort(-sims, axis=1)[:, :k]
        a, b = neighbours(ref), neighbours(cand)
        overlap = float(np.mean([len(set(r) & set(c)) / k for r, c in zip(a, b)]))
    return {"texts": int(len(ref)), "mean_cosine": float(cosines.mean()), "min_cosine": float(cosines.min()),
            f"top{k}_overlap": overlap, "neighbour_k": k}


def export_model(src: str | Path, out: str | Path, *, precision: str = "fp32", per_channel: bool = True,
                 thresholds: Thresholds | None = None, data_dir: Path | None = None, sample_size: int = 256,
                 threads: int = 1, overwrite: bool = False, optimize: bool = False, progress=print) -> dict:
    """Exports, checks parity, and returns the manifest. Raises InputError / ArtifactError with the reason."""
    src, out = Path(src).resolve(), Path(out).resolve()
    if precision not in DEFAULT_THRESHOLDS:
        raise InputError(f"unknown precision {precision!r}; use fp32, int8 or fp16.", field="precision")
    check_source(src)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError("the output folder exists and is not empty; pass --overwrite or choose another.",
                         file=str(out))
    thresholds = thresholds or DEFAULT_THRESHOLDS[precision]
    settings = read_pooling(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as tmp:
        work = Path(tmp)
        stage = work / "encoder"
        stage.mkdir()
        progress(f"exporting {src.name} to ONNX (opset {OPSET}) ...")
        fp32 = _export_fp32(src, work)
        if optimize:
            progress("fusing transformer operators (onnxruntime.transformers) ...")
            fp32 = _fuse(fp32, src / "config.json")
        if precision != "fp32":
            progress(f"quantising to {precision}" + (" (per-channel)" if precision == "int8" and per_channel else ""))
        _quantize(fp32, precision, stage / MODEL_FILE, per_channel)
        _write_tokenizer(src, stage, settings["max_length"])
        manifest = {
            "format": 1, "checksum": encoder_checksum(stage), "dimension": None, **settings,
            "precision": precision, "opset": OPSET, "pad_token": _pad_token(src), "fused": optimize,
            "quantization": ({"method": "dynamic", "weight_type": "int8", "per_channel": per_channel}
                             if precision == "int8" else None),
            "source": {"path": str(src), "checksum": source_checksum(src)},
            "parity": None, "versions": tool_versions(),
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2))
        encoder = _load_for_parity(stage, manifest, threads)

        texts = sample_texts(data_dir, sample_size)
        progress(f"checking parity against PyTorch on {len(texts)} sample texts ...")
        loud = progress is stderr_progress  # callers that silence the messages get no progress lines either
        candidate = onnx_candidate(encoder, texts, loud)
        reference = torch_reference(src, texts, threads, settings["max_length"], loud)
        report = parity(reference, candidate)
        report["thresholds"] = {"min_cosine": thresholds.min_cosine, "mean_cosine": thresholds.mean_cosine,
                                "overlap": thresholds.overlap}
        manifest["parity"] = report
        _enforce(report, thresholds, precision)

        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    return manifest


def _load_for_parity(stage: Path, manifest: dict, threads: int) -> Encoder:
    """The dimension is read off the model itself, by encoding one text."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(stage / MODEL_FILE), providers=["CPUExecutionProvider"])
    dimension = session.get_outputs()[0].shape[-1]
    if not isinstance(dimension, int):
        raise ArtifactError("the exported model's output has no fixed hidden size.", file=str(stage / MODEL_FILE))
    manifest["dimension"] = dimension
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return Encoder.load(stage, threads=threads, device="cpu")


def _enforce(report: dict, thresholds: Thresholds, precision: str) -> None:
    failures = parity_failures(report, thresholds, precision)
    if failures:
        hint = ("the exported graph does not reproduce the PyTorch model: check the pooling settings and that "
                "the folder is a sentence-transformers model." if precision == "fp32" else
                "lower the thresholds (--min-cosine, --min-mean-cosine, --min-overlap) if this loss is "
                "acceptable, or try --no-per-channel / another precision.")
        raise ArtifactError(f"{precision} export failed parity against PyTorch on {report['texts']} texts: "
                            + "; ".join(failures) + f". Nothing was written. {hint}", field="parity")


def parity_failures(report: dict, thresholds: Thresholds, precision: str) -> list[str]:
    """Each threshold the parity report misses, as `min cosine 0.981234 < 0.9999`."""
    overlap_key = f"top{report['neighbour_k']}_overlap"
    failures = []
    if report["min_cosine"] < thresholds.min_cosine:
        failures.append(f"min cosine {report['min_cosine']:.6f} < {thresholds.min_cosine}")
    if precision != "fp32":  # fp32 must match outright; quantised exports are judged on all three figures
        if report["mean_cosine"] < thresholds.mean_cosine:
            failures.append(f"mean cosine {report['mean_cosine']:.6f} < {thresholds.mean_cosine}")
        if report[overlap_key] < thresholds.overlap:
            failures.append(f"{overlap_key} {report[overlap_key]:.3f} < {thresholds.overlap}")
    return failures


def stderr_progress(message: str) -> None:
    print(f"abgate: {message}", file=sys.stderr, flush=True)
