"""`abgate import-model MODEL.onnx --tokenizer DIR --pooling mean|cls OUT`: an ONNX file abgate did not export
(optimum-cli, a vendor, another team) -> an abgate encoder directory that `gateway.encoder.Encoder` serves.

    1. the graph is inspected: inputs `input_ids` + `attention_mask` (+ `token_type_ids`, optional), and the
       output to serve: token embeddings (rank 3: `last_hidden_state`, `token_embeddings`), pooled here in
       numpy as --pooling says, or else a sentence embedding already pooled in the graph (rank 2);
    2. the served graph keeps that one output (optimum's sentence-transformers export has both); a rank-2
       output gets a length-1 token axis, so the runtime's first-token pooling returns it unchanged;
    3. the tokenizer folder is copied, `tokenizer.json` re-saved with dynamic padding and truncation at
       max_length (the same code as export-model);
    4. with --reference (the sentence-transformers folder the ONNX file came from), parity is checked on
       SciFact texts exactly as export-model does it; without one the manifest says
       `"parity": {"status": "unverified"}`.

Written to a temporary folder beside OUT and renamed into place once complete, like export-model.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from exporters.onnx_export import (DEFAULT_THRESHOLDS, TOKENIZER_FILES, Thresholds, _pad_token, _write_tokenizer,
                                   onnx_candidate, parity, parity_failures, read_pooling, sample_texts,
                                   tool_versions, torch_reference)
from experiments.errors import InputError
from gateway.artifacts import ENCODER_MANIFEST, MODEL_FILE, TOKENIZER_FILE, encoder_checksum, file_checksum
from gateway.encoder import Encoder

POOLINGS = ("mean", "cls")
REQUIRED_INPUTS = ("input_ids", "attention_mask")
OPTIONAL_INPUTS = ("token_type_ids",)
TOKEN_OUTPUTS = ("last_hidden_state", "token_embeddings")
POOLED_OUTPUTS = ("sentence_embedding", "sentence_embeddings", "embeddings", "pooled_output")
SERVED_POOLED = "abgate_pooled_as_token"


def _load_graph(model: Path):
    """The ONNX model proto, or a one-line reason this file cannot be one."""
    import onnx
    from google.protobuf.message import DecodeError

    if not model.is_file():
        raise InputError("no such file; give the path of an .onnx model file.", file=str(model), field="MODEL")
    try:
        proto = onnx.load(str(model), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InputError(f"this file is not an ONNX model ({type(exc).__name__}); give the .onnx file that "
                         "optimum-cli or torch.onnx.export wrote.", file=str(model), field="MODEL") from None
    if not proto.graph.node or not proto.graph.input or not proto.graph.output:
        raise InputError("this file is not an ONNX model (no graph nodes, inputs or outputs); give the .onnx "
                         "file that optimum-cli or torch.onnx.export wrote.", file=str(model), field="MODEL")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise InputError("the weights are stored in external data files; save the model as one file "
                         "(onnx.save(model, path, save_as_external_data=False)) and import that.",
                         file=str(model), field="MODEL")
    return proto


def _shape(value_info) -> list:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def inspect(proto, model: Path, output: str | None = None) -> dict:
    """Inputs the runtime will feed, the output to serve, whether it is pooled, and its dimension."""
    import onnx

    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    names = [i.name for i in inputs]
    missing = [n for n in REQUIRED_INPUTS if n not in names]
    unknown = [n for n in names if n not in REQUIRED_INPUTS + OPTIONAL_INPUTS]
    if missing or unknown:
        raise InputError(f"the model's inputs are {names}; the runtime feeds input_ids, attention_mask and "
                         "optionally token_type_ids. Export the model with exactly those inputs.",
                         file=str(model), field="inputs")
    for i in inputs:
        if i.type.tensor_type.elem_type != onnx.TensorProto.INT64:
            raise InputError(f"input {i.name} is {onnx.TensorProto.DataType.Name(i.type.tensor_type.elem_type)}; "
                             "the runtime feeds int64 ids: re-export with int64 inputs.",
                             file=str(model), field="inputs")

    outputs = {o.name: _shape(o) for o in proto.graph.output}
    if output is not None:
        if output not in outputs:
            raise InputError(f"the model has no output {output!r}; its outputs are {sorted(outputs)}.",
                             file=str(model), field="--output")
        chosen = output
    else:
        # Token embeddings first: then --pooling is what decides the vector, as in an abgate export.
        tokens = [n for n in outputs if len(outputs[n]) == 3]
        pooled = [n for n in outputs if len(outputs[n]) == 2]
        ranked = ([n for n in TOKEN_OUTPUTS if n in tokens] + tokens
                  + [n for n in POOLED_OUTPUTS if n in pooled] + pooled)
        if not ranked:
            raise InputError(f"no output is token embeddings (batch, tokens, dim) or a sentence embedding "
                             f"(batch, dim): the outputs are {outputs}. Give --output NAME.",
                             file=str(model), field="outputs")
        chosen = ranked[0]
    rank = len(outputs[chosen])
    if rank not in (2, 3):
        raise InputError(f"output {chosen!r} has shape {outputs[chosen]}; serve token embeddings "
                         "(batch, tokens, dim) or a sentence embedding (batch, dim).", file=str(model),
                         field="--output")
    dimension = outputs[chosen][-1]
    return {"inputs": names, "output": chosen, "pooled_in_graph": rank == 2, "outputs": sorted(outputs),
            "dimension": dimension if isinstance(dimension, int) and dimension > 0 else None,
            "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)}


def _served_graph(proto, found: dict, model: Path, target: Path) -> None:
    """model.onnx for the runtime: the chosen output only; a pooled (batch, dim) one as (batch, 1, dim)."""
    import onnx
    from onnx import helper

    if len(proto.graph.output) == 1 and not found["pooled_in_graph"]:
        shutil.copyfile(model, target)  # served as given, byte for byte
        return
    keep = next(o for o in proto.graph.output if o.name == found["output"])
    del proto.graph.output[:]
    if found["pooled_in_graph"]:
        axes = "abgate_unsqueeze_axes"
        if found["opset"] is not None and found["opset"] >= 13:
            proto.graph.initializer.append(helper.make_tensor(axes, onnx.TensorProto.INT64, [1], [1]))
            node = helper.make_node("Unsqueeze", [keep.name, axes], [SERVED_POOLED])
        else:
            node = helper.make_node("Unsqueeze", [keep.name], [SERVED_POOLED], axes=[1])
        proto.graph.node.append(node)
        shape = _shape(keep)
        proto.graph.output.append(helper.make_tensor_value_info(
            SERVED_POOLED, keep.type.tensor_type.elem_type, [shape[0], 1, shape[1]]))
    else:
        proto.graph.output.append(keep)
    # Nodes that fed only the dropped outputs: ORT would still run them, so they go. A control-flow node's
    # subgraph reads outer names that node.input does not list; such graphs are kept whole.
    if not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for node in proto.graph.node for a in node.attribute):
        needed, nodes = {o.name for o in proto.graph.output}, []
        for node in reversed(proto.graph.node):  # nodes are stored in topological order
            if any(o in needed for o in node.output):
                nodes.append(node)
                needed.update(node.input)
        del proto.graph.node[:]
        proto.graph.node.extend(reversed(nodes))
        weights = [t for t in proto.graph.initializer if t.name in needed]
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(weights)
    onnx.save(proto, str(target))


def _precision(proto) -> str:
    import onnx

    types = {t.data_type for t in proto.graph.initializer}
    if types & {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}:
        return "int8"
    if onnx.TensorProto.FLOAT16 in types:
        return "fp16"
    return "fp32"


def _max_length(tokenizer: Path, reference: Path | None, given: int | None) -> int:
    """--max-length, else what the reference model uses, else the tokenizer's own limit (at most 512)."""
    if given is not None:
        if given < 1:
            raise InputError(f"--max-length must be at least 1, got {given}.", field="--max-length")
        return given
    if reference is not None:
        return read_pooling(reference)["max_length"]
    config = tokenizer / "tokenizer_config.json"
    limit = json.loads(config.read_text()).get("model_max_length") if config.is_file() else None
    if isinstance(limit, int) and 0 < limit:
        return min(limit, 512)
    truncation = json.loads((tokenizer / TOKENIZER_FILE).read_text()).get("truncation") or {}
    return int(truncation.get("max_length") or 512)


def _check_tokenizer(tokenizer: Path) -> None:
    if not tokenizer.is_dir():
        raise InputError("no such folder; give the folder that holds the model's tokenizer.json.",
                         file=str(tokenizer), field="--tokenizer")
    if not (tokenizer / TOKENIZER_FILE).is_file():
        raise InputError("this folder has no tokenizer.json; the runtime needs a fast tokenizer: save one with "
                         "AutoTokenizer.from_pretrained(...).save_pretrained(DIR), or give the folder optimum-cli "
                         "wrote.", file=str(tokenizer / TOKENIZER_FILE), field="--tokenizer")


def _check_reference(reference: Path, pooling: str, normalize: bool) -> dict:
    if not (reference / "modules.json").is_file() or not (reference / "config.json").is_file():
        raise InputError("this is not a sentence-transformers model folder (modules.json and config.json); give "
                         "the folder the ONNX file was exported from, or leave --reference out.",
                         file=str(reference), field="--reference")
    expected = read_pooling(reference)
    if expected["pooling"] != pooling:
        raise InputError(f"the reference model pools with {expected['pooling']} (its *_Pooling/config.json), not "
                         f"{pooling}; pass --pooling {expected['pooling']}.", file=str(reference),
                         field="--pooling")
    # Cosine parity cannot see a missing normalisation (it normalises both sides), so compare the settings too.
    if expected["normalize"] != normalize:
        flag = "pass --normalize" if expected["normalize"] else "leave --normalize out"
        raise InputError(f"the reference model {'normalises' if expected['normalize'] else 'does not normalise'} "
                         f"its embeddings; {flag}.", file=str(reference / "modules.json"), field="--normalize")
    return expected


def import_model(model: str | Path, tokenizer: str | Path, out: str | Path, *, pooling: str,
                 normalize: bool = False, max_length: int | None = None, reference: str | Path | None = None,
                 output: str | None = None, data_dir: Path | None = None, sample_size: int = 256,
                 min_cosine: float | None = None, threads: int = 1, overwrite: bool = False,
                 progress=None) -> dict:
    """Writes the encoder folder and returns its manifest. Raises InputError (exit 2) with the reason."""
    say = progress or (lambda message: None)
    model, tokenizer, out = Path(model).resolve(), Path(tokenizer).resolve(), Path(out).resolve()
    reference = Path(reference).resolve() if reference else None
    if pooling not in POOLINGS:
        raise InputError(f"pooling {pooling!r} is not supported; give --pooling mean or --pooling cls (what the "
                         "model was trained with: sentence-transformers' 1_Pooling/config.json says).",
                         file=str(model), field="--pooling")
    proto = _load_graph(model)
    _check_tokenizer(tokenizer)
    if reference is not None:
        _check_reference(reference, pooling, normalize)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError("the output folder exists and is not empty; pass --overwrite or choose another.",
                         file=str(out), field="OUT")
    found = inspect(proto, model, output)
    length = _max_length(tokenizer, reference, max_length)
    precision = _precision(proto)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".import-", dir=out.parent) as tmp:
        stage = Path(tmp) / "encoder"
        stage.mkdir()
        say(f"importing {model.name}: output {found['output']!r}"
            + (" (pooled in the graph)" if found["pooled_in_graph"] else f" ({pooling} pooling here)"))
        _served_graph(proto, found, model, stage / MODEL_FILE)
        _write_tokenizer(tokenizer, stage, length)
        manifest = {
            "format": 1, "checksum": encoder_checksum(stage), "dimension": found["dimension"],
            # A pooled output is served as one "token": first-token pooling hands it over unchanged.
            "pooling": "cls" if found["pooled_in_graph"] else pooling, "normalize": normalize,
            "max_length": length, "precision": precision, "opset": found["opset"],
            "pad_token": _pad_token(tokenizer), "fused": False, "quantization": None,
            "source": {"path": str(model), "checksum": file_checksum(model), "tokenizer": str(tokenizer),
                       "tokenizer_files": [n for n in TOKENIZER_FILES if (tokenizer / n).is_file()]},
            "import": {"output": found["output"], "outputs": found["outputs"], "inputs": found["inputs"],
                       "pooled_in_graph": found["pooled_in_graph"], "declared_pooling": pooling},
            "parity": {"status": "unverified"}, "versions": tool_versions(),
        }
        encoder = _load(stage, manifest, model, threads)
        if reference is not None:
            manifest["parity"] = _check_parity(encoder, reference, manifest, data_dir, sample_size, min_cosine,
                                               threads, progress is not None, model, say)
        (stage / ENCODER_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    return manifest


def _load(stage: Path, manifest: dict, model: Path, threads: int) -> Encoder:
    """Loads the staged encoder; a symbolic output width is read off the model by encoding one text."""
    from onnxruntime.capi.onnxruntime_pybind11_state import (Fail, InvalidArgument, InvalidGraph, NotImplemented,
                                                             RuntimeException)

    if manifest["dimension"] is None:
        manifest["dimension"] = 1  # placeholder so the manifest loads; replaced by the measured width below
    (stage / ENCODER_MANIFEST).write_text(json.dumps(manifest, indent=2))
    try:
        encoder = Encoder.load(stage, threads=threads, device="cpu")
        width = encoder.infer(encoder.tokenize(["dimension probe"])).shape[-1]
    except (Fail, InvalidArgument, InvalidGraph, NotImplemented, RuntimeException) as exc:
        raise InputError(f"ONNX Runtime cannot run this model ({str(exc).splitlines()[0][:200]}); check that it "
                         "takes token ids from this tokenizer.", file=str(model), field="MODEL") from None
    if width != manifest["dimension"]:
        manifest["dimension"] = int(width)
        (stage / ENCODER_MANIFEST).write_text(json.dumps(manifest, indent=2))
        encoder = Encoder.load(stage, threads=threads, device="cpu")
    return encoder


def _check_parity(encoder: Encoder, reference: Path, manifest: dict, data_dir, sample_size: int,
                  min_cosine: float | None, threads: int, loud: bool, model: Path, say) -> dict:
    """export-model's parity check, against the given sentence-transformers folder."""
    base = DEFAULT_THRESHOLDS[manifest["precision"]]
    thresholds = Thresholds(min_cosine=base.min_cosine if min_cosine is None else min_cosine,
                            mean_cosine=base.mean_cosine, overlap=base.overlap)
    texts = sample_texts(data_dir, sample_size)
    say(f"checking parity against {reference.name} (sentence-transformers) on {len(texts)} sample texts ...")
    report = parity(torch_reference(reference, texts, threads, manifest["max_length"], loud),
                    onnx_candidate(encoder, texts, loud))
    report.update(status="verified", reference={"path": str(reference)},
                  thresholds={"min_cosine": thresholds.min_cosine, "mean_cosine": thresholds.mean_cosine,
                              "overlap": thresholds.overlap})
    failures = parity_failures(report, thresholds, manifest["precision"])
    if failures:
        # The graph is given as-is: what can be wrong is what the command was told about it.
        raise InputError(f"the imported encoder does not reproduce {reference} on {report['texts']} texts ("
                         + "; ".join(failures) + "). Nothing was written. Check --pooling (mean or cls, as its "
                         "1_Pooling/config.json says), --max-length and that --tokenizer is the model's own.",
                         file=str(model), field="--pooling")
    return report


def stderr_progress(message: str) -> None:
    print(f"abgate: {message}", file=sys.stderr, flush=True)
