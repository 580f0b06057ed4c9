#!/usr/bin/env bash
# GPU host run, one script, under 10 minutes on one H100:
#   1. swap onnxruntime -> onnxruntime-gpu and faiss-cpu -> faiss-gpu from wheels placed beforehand in .whl/
#      (no network: fill it elsewhere with `pip download onnxruntime-gpu faiss-gpu-cu12 -d .whl`, which also
#      fetches their nvidia-* CUDA runtime wheels);
#   2. run the GPU tests (pytest -m gpu; on a CPU-only host they skip with a reason);
#   3. run the gateway benchmark on GPU and on CPU in the same run, and print both.
# Usage: bench/gpu.sh [WHEEL_DIR]     (env: PY=python of the venv, default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS="${1:-.whl}"
PY="${PY:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
say() { echo "gpu.sh: $*" >&2; }
start=$(date +%s)

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 \
  || say "nvidia-smi not found: is this a GPU host?"
if ! ls "$WHEELS"/onnxruntime_gpu-*.whl >/dev/null 2>&1 || ! ls "$WHEELS"/faiss_gpu*.whl >/dev/null 2>&1; then
  say "put the onnxruntime-gpu and faiss-gpu wheels (and their nvidia-* dependencies) in $WHEELS/ first"
  exit 2
fi

# onnxruntime and onnxruntime-gpu install the same module: never keep both.
say "installing GPU wheels from $WHEELS"
"$PY" -m pip uninstall -q -y onnxruntime faiss-cpu || true
"$PY" -m pip install -q --no-index --find-links "$WHEELS" "$WHEELS"/onnxruntime_gpu-*.whl "$WHEELS"/faiss_gpu*.whl
"$PY" - <<'PY'
import onnxruntime, faiss
providers = onnxruntime.get_available_providers()
print("gpu.sh: onnxruntime", onnxruntime.__version__, providers, "faiss GPUs:", faiss.get_num_gpus(), flush=True)
assert "CUDAExecutionProvider" in providers, "onnxruntime-gpu has no CUDA provider: check the CUDA/cuDNN wheels"
PY

say "GPU tests"
OMP_NUM_THREADS=4 timeout 300 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/ || { say "GPU tests failed"; exit 1; }

mkdir -p bench/results
say "gateway bench on GPU"
timeout 150 "$PY" bench/bench_gateway.py --device cuda --label gpu --force --requests 3200 | tail -1 > bench/results/gateway-gpu.line
say "gateway bench on CPU (same machine, same run)"
timeout 150 "$PY" bench/bench_gateway.py --device cpu --label cpu --threads 4 --force --requests 3200 | tail -1 > bench/results/gateway-cpu.line
"$PY" - <<'PY'
import json
gpu = json.loads(open("bench/results/gateway-gpu.line").read())
cpu = json.loads(open("bench/results/gateway-cpu.line").read())
for run in (gpu, cpu):
    for f in run["figures"]:
        print(f"{f['name']:55s} {f['value']:>10} {f['unit']}" + (f"   ratio {f['ratio']}" if f["ratio"] else ""))
g = next(f["value"] for f in gpu["figures"] if f["name"].startswith("gateway requests/s, events on"))
c = next(f["value"] for f in cpu["figures"] if f["name"].startswith("gateway requests/s, events on"))
print(f"gateway GPU / CPU requests/s (events on): {g / c:.2f}x")
PY
say "done in $(( $(date +%s) - start )) s"
