"""Readers for retrieval data: corpora (BEIR folder, JSONL, Parquet), queries and qrels.

Corpus formats, each row an id, a text and optional metadata:
- a BEIR folder: `corpus.jsonl` with `{"_id", "title", "text", "metadata"}` (title and text are joined with a
  space, as BEIR and MTEB do, so scores stay comparable with published ones);
- a `.jsonl` file with `{"id" (or "_id"), "text", "title"?, "metadata"?}`;
- a `.parquet` file with columns `id`, `text` and optionally `title` and `metadata` (a struct or JSON string).

A malformed row is never dropped silently: by default the first one fails the read (file, line, field), and
with `skip_bad=True` each one is reported on stderr with its line number and then skipped.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from experiments.errors import InputError

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_data_dir() -> Path:
    """The SciFact folder: $ABGATE_DATA, else $DATA (the Makefile's), else ../shared/data/scifact."""
    value = os.environ.get("ABGATE_DATA") or os.environ.get("DATA")
    if value:
        path = Path(value)
        return path if path.is_absolute() else (REPO_ROOT / path).resolve()
    return (REPO_ROOT.parent / "shared" / "data" / "scifact").resolve()


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    metadata: dict = field(default_factory=dict)


@dataclass
class BadRows:
    """Collects malformed rows: raises on the first one unless told to skip, and then reports them all."""
    file: str
    skip: bool
    rows: list[tuple[int, str]] = field(default_factory=list)

    def add(self, line: int, message: str, field_name: str | None = None) -> None:
        if not self.skip:
            raise InputError(message + " Fix the row, or pass --skip-bad to skip malformed rows (each is "
                             "reported).", file=self.file, line=line, field=field_name)
        self.rows.append((line, message))
        print(f"abgate: warning: {self.file}:{line}: skipped: {message}", file=sys.stderr)

    def summary(self) -> dict:
        return {"skipped": len(self.rows), "lines": [line for line, _ in self.rows]}


def corpus_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        candidate = path / "corpus.jsonl"
        if not candidate.is_file():
            raise InputError("this folder has no corpus.jsonl; give a BEIR folder, a .jsonl or a .parquet file.",
                             file=str(path))
        return candidate
    if not path.is_file():
        raise InputError("the corpus does not exist.", file=str(path))
    return path


def _row_to_document(row: dict, bad: BadRows, line: int) -> Document | None:
    doc_id = row.get("id", row.get("_id"))
    if doc_id is None or (isinstance(doc_id, str) and not doc_id.strip()):
        bad.add(line, "the row has no document id (expected an 'id' or '_id' field).", "id")
        return None
    if not isinstance(doc_id, (str, int)):
        bad.add(line, f"the document id must be a string or an integer, not {type(doc_id).__name__}.", "id")
        return None
    text, title = row.get("text"), row.get("title") or ""
    if not isinstance(text, str) or not isinstance(title, str):
        bad.add(line, "the row's 'text' (and 'title', if any) must be strings.", "text")
        return None
    joined = f"{title} {text}".strip() if title else text.strip()
    if not joined:
        bad.add(line, "the document has no text.", "text")
        return None
    metadata = row.get("metadata") or {}
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError:
            bad.add(line, "'metadata' is a string that is not JSON.", "metadata")
            return None
    if not isinstance(metadata, dict):
        bad.add(line, "'metadata' must be an object.", "metadata")
        return None
    if title:
        metadata = {"title": title, **metadata}
    return Document(str(doc_id), joined, metadata)


def _iter_jsonl(path: Path, bad: BadRows) -> Iterator[tuple[int, dict]]:
    # Bytes, decoded line by line: a text-mode readline() that hits bad UTF-8 raises on every later call too.
    with open(path, "rb") as fh:
        for line_no, data in enumerate(fh, start=1):
            try:
                raw = data.decode("utf-8")
            except UnicodeDecodeError:
                bad.add(line_no, "the line is not valid UTF-8.")
                continue
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                bad.add(line_no, f"the line is not valid JSON ({exc.msg} at column {exc.colno}).")
                continue
            except ValueError as exc:  # e.g. an integer of more than 4,300 digits
                bad.add(line_no, f"the line is not usable JSON ({exc}).")
                continue
            except RecursionError:
                bad.add(line_no, "the line nests JSON too deeply.")
                continue
            if not isinstance(row, dict):
                bad.add(line_no, "the line must hold a JSON object.")
                continue
            yield line_no, row


def read_corpus(path: str | Path, *, skip_bad: bool = False) -> tuple[list[Document], dict]:
    """Documents in file order, plus a summary ({"path", "format", "count", "skipped", "lines"})."""
    source = corpus_file(path)
    bad = BadRows(str(source), skip_bad)
    docs: list[Document] = []
    seen: dict[str, int] = {}
    if source.suffix == ".parquet":
        fmt, rows = "parquet", _iter_parquet(source)
    else:
        fmt, rows = ("beir" if Path(path).is_dir() else "jsonl"), _iter_jsonl(source, bad)
    for line, row in rows:
        doc = _row_to_document(row, bad, line)
        if doc is None:
            continue
        if doc.id in seen:
            bad.add(line, f"document id {doc.id!r} already appeared on line {seen[doc.id]}.", "id")
            continue
        seen[doc.id] = line
        docs.append(doc)
    if not docs:
        raise InputError("the corpus holds no usable documents" +
                         (f" ({len(bad.rows)} malformed row(s) skipped)." if bad.rows else "; it is empty."),
                         file=str(source))
    return docs, {"path": str(source), "format": fmt, "count": len(docs), **bad.summary()}


def _iter_parquet(path: Path) -> Iterator[tuple[int, dict]]:
    """Rows numbered from 1, as a line number would be, so errors point somewhere findable."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise InputError(f"cannot read this Parquet file: {exc}", file=str(path)) from None
    missing = {"text"} - set(table.column_names)
    if missing or not ({"id", "_id"} & set(table.column_names)):
        raise InputError(f"a Parquet corpus needs columns 'id' and 'text'; it has {table.column_names}.",
                         file=str(path))
    for number, row in enumerate(table.to_pylist(), start=1):
        yield number, row


# -- queries and qrels ---------------------------------------------------------------------------------------

def read_queries(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if path.is_dir():
        path = path / "queries.jsonl"
    if not path.is_file():
        raise InputError("the queries file does not exist.", file=str(path))
    bad = BadRows(str(path), skip=False)
    queries: dict[str, str] = {}
    for line, row in _iter_jsonl(path, bad):
        qid, text = row.get("_id", row.get("id")), row.get("text")
        if qid is None or not isinstance(text, str) or not text.strip():
            bad.add(line, "a query needs an '_id' and a non-empty 'text'.", "text" if qid is not None else "_id")
        queries[str(qid)] = text
    return queries


@dataclass(frozen=True)
class Qrels:
    """Relevance judgments: query id -> {document id: grade}; `lines` remembers where each pair came from."""
    path: str
    judgments: dict[str, dict[str, int]]
    lines: dict[tuple[str, str], int]


def qrels_file(data: str | Path, split: str) -> Path:
    data = Path(data)
    path = data / "qrels" / f"{split}.tsv" if data.is_dir() else data
    if not path.is_file():
        raise InputError(f"the qrels file for split {split!r} does not exist.", file=str(path))
    return path


def read_qrels(path: str | Path) -> Qrels:
    """BEIR qrels TSV with a header `query-id corpus-id score`. Grades <= 0 are kept but count as not relevant."""
    path = Path(path)
    judgments: dict[str, dict[str, int]] = {}
    lines: dict[tuple[str, str], int] = {}
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise InputError("the file is not valid UTF-8: save it as UTF-8 text.", file=str(path), line=line) from None
    for line_no, row in enumerate(csv.reader(text.splitlines(), delimiter="\t"), start=1):
        if not row or not "".join(row).strip():
            continue
        if line_no == 1 and row[0].strip().lower() in ("query-id", "query_id", "qid"):
            continue
        if len(row) != 3:
            raise InputError(f"expected 3 tab-separated columns (query-id, corpus-id, score), found {len(row)}.",
                             file=str(path), line=line_no)
        qid, did, score = (c.strip() for c in row)
        try:
            grade = int(float(score))
        except ValueError:
            raise InputError(f"the score {score!r} is not a number.", file=str(path), line=line_no,
                             field="score") from None
        judgments.setdefault(qid, {})[did] = grade
        lines[(qid, did)] = line_no
    if not judgments:
        raise InputError("the qrels file holds no judgments.", file=str(path))
    return Qrels(str(path), judgments, lines)
