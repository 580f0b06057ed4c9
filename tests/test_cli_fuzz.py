"""CLI input fuzz: generated experiment YAML, sums JSON and BEIR files through `gateway.cli.main` in-process.

Every input is a mutation of a valid one (keys deleted, values swapped for other types, random scalars, dates
and unicode, random bytes spliced in). Whatever it is, the command exits 0 or 2 (1 where a failure is
documented), never raises, and each error is one line `abgate: error: ...` on stderr.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import string
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cli import main

REPO = Path(__file__).resolve().parents[1]
GOOD_YAML = (REPO / "experiments" / "examples" / "finetune-vs-baseline.yaml").read_text()
GOOD_SUMS = (REPO / "docs" / "examples" / "sums.json").read_text()
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")
FUZZ = settings(max_examples=70, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**30, max_value=10**60),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["2026-13-45", "2026-02-30T00:00:00Z", "0000-01-01", "9999-12-31T23:59:59Z", "1e6", "-0",
                     ".nan", "~", "yes", "ctr", "nonexistent", "latency_p95", "block", "warn", "sum", "=",
                     "\u202e\u0000", "🙂"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, prefix + (i,))


@st.composite
def mutated_document(draw, base):
    """The base data with a few keys deleted or values replaced (of any type)."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        if draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(values)
    return doc


@st.composite
def spliced_text(draw, text: str):
    """Text-level damage the data mutations cannot make: raw bytes, unquoted odd scalars, cut lines."""
    raw = text.encode()
    at = draw(st.integers(0, len(raw)))
    kind = draw(st.sampled_from(["bytes", "line", "truncate", "scalar"]))
    if kind == "bytes":
        return raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at:]
    if kind == "truncate":
        return raw[:at]
    lines = text.splitlines()
    i = draw(st.integers(0, len(lines) - 1))
    if kind == "line":
        lines[i] = draw(st.text(alphabet=string.printable + "\t\u00e9\u2028-:[]{}&*!|>%@`'\"#", max_size=40))
    else:
        key = lines[i].split(":")[0] if ":" in lines[i] else "start"
        lines[i] = f"{key}: " + draw(st.sampled_from([
            "2026-13-45", "2026-02-30T00:00:00Z", "2026-11-01 25:00:00", "!!binary aGk=", "!!timestamp x",
            "!!float ''", "!!int 0x", "&a [*a]", "*undefined", "!!python/object:os.system x", "{? [a]: b}",
            "9" * 5000, ".inf", "!!set {a}", "<<: *x", "|\n  text", "--- \n...",
        ]))
    return "\n".join(lines).encode()


def run_cli(capsys, argv: list[str], allowed=(0, 2)) -> int:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code in allowed, (argv, code, err)
    for line in err.splitlines():
        if LOG_LINE.match(line):  # the exporters' structlog progress lines on stderr
            continue
        # errors, and the corpus reader's warnings and progress, are one `abgate: ...` line each: a traceback or
        # a message that spills onto a second line fails here
        assert line.startswith("abgate: "), (argv, err)
    if code:
        assert err.count("abgate: error: ") >= 1, (argv, err)
    return code


def _write(folder: Path, name: str, content) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    return path


yaml_inputs = st.one_of(
    mutated_document(yaml.safe_load(GOOD_YAML)).map(
        lambda d: yaml.safe_dump(d, allow_unicode=True, sort_keys=False)),
    spliced_text(GOOD_YAML),
)


@FUZZ
@given(content=yaml_inputs)
def test_experiment_yaml_fuzz(capsys, content):
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / "exps", "exp.yaml", content)
        run_cli(capsys, ["experiments", "validate", str(path.parent)])
        run_cli(capsys, ["experiments", "validate", str(path.parent), "--json"])
        run_cli(capsys, ["experiments", "plan", str(path), "--baseline-rate", "0.1"])


sums_inputs = st.one_of(
    mutated_document(json.loads(GOOD_SUMS)).map(lambda d: json.dumps(d, default=str)),
    spliced_text(GOOD_SUMS),
    st.sampled_from(["[" * 100_000, "1" * 5000, "NaN", "{}", "\ufeff{}", '{"control": "a", "metrics": []}']),
)


@settings(FUZZ, max_examples=60)
@given(content=sums_inputs)
def test_sums_json_fuzz(capsys, content):
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), "sums.json", content)
        run_cli(capsys, ["stats", "--input", str(path)])
        run_cli(capsys, ["stats", "--input", str(path), "--json"])


CORPUS = "\n".join(json.dumps(r) for r in [
    {"_id": "d1", "title": "A", "text": "aspirin lowers fever", "metadata": {}},
    {"_id": "d2", "title": "", "text": "vitamin c and colds"},
    {"_id": "d3", "text": "statins reduce cholesterol", "metadata": "{\"year\": 2001}"}]) + "\n"
QUERIES = "\n".join(json.dumps(r) for r in [{"_id": "q1", "text": "fever"}, {"_id": "q2", "text": "colds"}]) + "\n"
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n"


def _rows(text):
    return [json.loads(line) for line in text.splitlines()]


def _jsonl(doc: dict) -> str:
    rows = doc.get("rows", [])
    return "\n".join(json.dumps(r, default=str) for r in rows) if isinstance(rows, list) else json.dumps(rows)


beir_inputs = st.tuples(
    st.sampled_from(["corpus", "queries", "qrels"]),
    st.one_of(
        mutated_document({"rows": _rows(CORPUS)}).map(_jsonl),
        spliced_text(CORPUS), spliced_text(QUERIES), spliced_text(QRELS),
        st.text(max_size=60), st.binary(max_size=60),
    ),
)


def _utf8(content) -> bool:
    try:
        (content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass")).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("which, content", [
    ("qrels", b"query-id\tcorpus-id\tscore\nq1\td1\t\x80\n"),
    ("queries", '{"_id": "q1", "text": "fever", "n": ' + "9" * 5000 + "}\n"),
    ("corpus", '{"_id": "d1", "text": "x", "n": ' + "9" * 5000 + "}\n"),
], ids=["qrels-not-utf8", "queries-huge-integer", "corpus-huge-integer"])
def test_inputs_the_fuzz_once_broke_are_one_line_errors(capsys, cached_models, tmp_path, which, content):
    encoder, index = cached_models
    files = {"corpus": ("corpus.jsonl", CORPUS), "queries": ("queries.jsonl", QUERIES),
             "qrels": ("qrels/test.tsv", QRELS)}
    for key, (name, good) in files.items():
        _write(tmp_path / "beir", name, content if key == which else good)
    if which == "corpus":
        code = run_cli(capsys, ["build-index", str(encoder), str(tmp_path / "beir"), str(tmp_path / "out"),
                                "--limit", "3"])
    else:
        code = run_cli(capsys, ["eval-offline", str(encoder), str(index), "--data", str(tmp_path / "beir"),
                                "--no-store"])
    assert code == 2


def test_skip_bad_on_a_corpus_cut_mid_character_skips_only_that_line(tmp_path, baseline_encoder_dir):
    _write(tmp_path, "corpus.jsonl", CORPUS.encode() + b"\xc3")  # a UTF-8 sequence cut at the end of the file
    done = subprocess.run([sys.executable, "-c", "import sys; from gateway.cli import main; sys.exit(main(sys.argv[1:]))",
                           "build-index", str(baseline_encoder_dir), str(tmp_path / "corpus.jsonl"),
                           str(tmp_path / "out"), "--skip-bad"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("not valid UTF-8") == 1  # the last line only; the rows before it are indexed


@pytest.fixture
def cached_models(monkeypatch, baseline_encoder_dir, small_index_dir):
    """Load the real encoder and index once: the readers, not model loading, are under test."""
    from gateway.encoder import Encoder
    from gateway.search import VectorIndex

    encoder_load, index_load = Encoder.load.__func__, VectorIndex.load.__func__
    enc = functools.lru_cache(None)(lambda path, **kw: encoder_load(Encoder, path, **kw))
    idx = functools.lru_cache(None)(lambda path, **kw: index_load(VectorIndex, path, **kw))
    monkeypatch.setattr(Encoder, "load", classmethod(lambda cls, path, **kw: enc(str(path), **kw)))
    monkeypatch.setattr(VectorIndex, "load", classmethod(lambda cls, path, **kw: idx(str(path), **kw)))
    return baseline_encoder_dir, small_index_dir


@settings(FUZZ, max_examples=60)
@given(case=beir_inputs)
def test_beir_files_fuzz(capsys, cached_models, case):
    encoder, index = cached_models
    which, content = case
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "beir"
        files = {"corpus": ("corpus.jsonl", CORPUS), "queries": ("queries.jsonl", QUERIES),
                 "qrels": ("qrels/test.tsv", QRELS)}
        for key, (name, good) in files.items():
            _write(data, name, content if key == which else good)
        out = Path(tmp) / "index"
        if which == "corpus":
            for extra in ([], ["--skip-bad"]):
                run_cli(capsys, ["build-index", str(encoder), str(data), str(out), "--limit", "3", "--overwrite",
                                 *extra])
        else:
            # exit 1 is documented for an artifact problem; with this encoder and index it should not happen
            run_cli(capsys, ["eval-offline", str(encoder), str(index), "--data", str(data), "--no-store",
                             "--ignore-unknown-docs"])
