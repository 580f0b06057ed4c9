"""Training pairs for `abgate finetune`: (query, positive document) from BEIR qrels or from a JSONL of pairs.

Two sources, one result (`TrainingSet`):

- a BEIR folder (`corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`): one pair per judged-relevant
  (query, document) row of the split; the whole corpus is the pool hard negatives are mined from.
- a JSONL file of `{"query": ..., "positive": ...[, "negative": ...]}`: the pool is every positive and
  negative text in the file (or a BEIR `corpus.jsonl` given beside it).
- a pairs file written by `abgate harvest` (`{"query", "positive": doc id, "weight", "negatives": [doc ids],
  "provenance"}` + `<file>.meta.json`): documents are ids, so the corpus the gateway served is required, and a
  file whose documents are mostly not in it (another corpus) is refused.

Documents are "title text" joined by a space, the convention of BEIR's sentence-transformers evaluation, so
that training sees documents the way `build-index` encodes them. No torch here: this module is pure Python.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from experiments.errors import InputError


@dataclass(frozen=True)
class Pair:
    query_id: str
    query: str
    positive_id: str
    negative_id: str | None = None  # a negative given by the source (JSONL); mining adds its own
    weight: float = 1.0             # harvested pairs: clipped inverse-propensity weight of the clicks behind it


@dataclass
class TrainingSet:
    pairs: list[Pair]
    queries: dict[str, str]           # query id -> text
    documents: dict[str, str]         # doc id -> text: the positives and the mining pool
    positives: dict[str, set[str]]    # query id -> every doc id known relevant (never mined as a negative)
    checksum: str                     # sha256 of the input files, recorded with the model
    source: dict = field(default_factory=dict)

    def text(self, doc_id: str) -> str:
        return self.documents[doc_id]


def document_text(row: dict) -> str:
    """BEIR convention: title and text joined by one space (either may be missing)."""
    return " ".join(part for part in (row.get("title") or "", row.get("text") or "") if part).strip()


def _read_jsonl(path: Path, hasher) -> list[tuple[int, dict]]:
    rows = []
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise InputError("file not found; give an existing file.", file=str(path)) from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            hasher.update(raw)
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InputError(f"not valid JSON ({exc}); each line must be one JSON object.",
                                 file=str(path), line=number) from None
            if not isinstance(row, dict):
                raise InputError("each line must be a JSON object.", file=str(path), line=number)
            rows.append((number, row))
    return rows


def _id(row: dict, path: Path, number: int) -> str:
    value = row.get("_id", row.get("id"))
    if value is None or str(value) == "":
        raise InputError("missing an id; each line needs \"_id\" (BEIR) or \"id\".", file=str(path),
                         line=number, field="_id")
    return str(value)


def read_corpus(path: Path, hasher) -> dict[str, str]:
    documents = {}
    for number, row in _read_jsonl(path, hasher):
        documents[_id(row, path, number)] = document_text(row)
    if not documents:
        raise InputError("the corpus is empty; it needs at least one document.", file=str(path))
    return documents


def load_beir(folder: str | Path, split: str = "train") -> TrainingSet:
    """Pairs from `qrels/<split>.tsv` (score > 0), queries and documents from the BEIR folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("not a folder; give a BEIR folder with corpus.jsonl, queries.jsonl and qrels/.",
                         file=str(folder))
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise InputError(f"no qrels for split '{split}'; expected {qrels_path} (BEIR layout), or give --split.",
                         file=str(qrels_path))
    hasher = hashlib.sha256()
    documents = read_corpus(folder / "corpus.jsonl", hasher)
    queries = {}
    queries_path = folder / "queries.jsonl"
    for number, row in _read_jsonl(queries_path, hasher):
        queries[_id(row, queries_path, number)] = str(row.get("text") or "")
    pairs, positives = _read_qrels(qrels_path, queries, documents, hasher)
    return TrainingSet(pairs=pairs, queries=queries, documents=documents, positives=positives,
                       checksum=hasher.hexdigest(),
                       source={"kind": "beir", "path": str(folder), "split": split})


def _read_qrels(path: Path, queries: dict, documents: dict, hasher) -> tuple[list[Pair], dict[str, set[str]]]:
    pairs: list[Pair] = []
    positives: dict[str, set[str]] = {}
    raw = path.read_bytes()
    hasher.update(raw)
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        cells = line.rstrip("\r").split("\t")
        if not line.strip() or (number == 1 and cells[0] == "query-id"):
            continue
        if len(cells) < 3:
            raise InputError("expected 3 tab-separated columns: query-id, corpus-id, score.",
                             file=str(path), line=number)
        query_id, doc_id, score = cells[0], cells[1], cells[2]
        try:
            relevant = float(score) > 0
        except ValueError:
            raise InputError(f"score '{score}' is not a number.", file=str(path), line=number,
                             field="score") from None
        if query_id not in queries:
            raise InputError(f"query '{query_id}' is not in queries.jsonl.", file=str(path), line=number,
                             field="query-id")
        if doc_id not in documents:
            raise InputError(f"document '{doc_id}' is not in corpus.jsonl.", file=str(path), line=number,
                             field="corpus-id")
        if relevant and doc_id not in positives.setdefault(query_id, set()):
            positives[query_id].add(doc_id)
            pairs.append(Pair(query_id, queries[query_id], doc_id))
    if not pairs:
        raise InputError("no relevant (score > 0) rows; nothing to train on.", file=str(path))
    return pairs, positives


def _text_id(prefix: str, text: str) -> str:
    # Texts in a pairs file have no ids: the same text is the same query or document.
    return prefix + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def load_pairs_jsonl(path: str | Path, corpus: str | Path | None = None) -> TrainingSet:
    """Pairs from lines of {"query", "positive"[, "negative"]}; `corpus` widens the mining pool."""
    path = Path(path)
    hasher = hashlib.sha256()
    documents = read_corpus(Path(corpus), hasher) if corpus else {}
    by_text = {text: doc_id for doc_id, text in documents.items()}
    queries: dict[str, str] = {}
    positives: dict[str, set[str]] = {}
    pairs: list[Pair] = []

    def document(text: str) -> str:
        if text not in by_text:
            by_text[text] = _text_id("d", text)
            documents[by_text[text]] = text
        return by_text[text]

    for number, row in _read_jsonl(path, hasher):
        for name in ("query", "positive"):
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise InputError(f"needs a non-empty string \"{name}\".", file=str(path), line=number,
                                 field=name)
        negative = row.get("negative")
        if negative is not None and (not isinstance(negative, str) or not negative.strip()):
            raise InputError("\"negative\", when given, must be a non-empty string.", file=str(path),
                             line=number, field="negative")
        query_id = _text_id("q", row["query"])
        queries[query_id] = row["query"]
        positive_id = document(row["positive"])
        positives.setdefault(query_id, set()).add(positive_id)
        pairs.append(Pair(query_id, row["query"], positive_id, document(negative) if negative else None))
    if not pairs:
        raise InputError("the pairs file is empty; it needs lines of {\"query\": ..., \"positive\": ...}.",
                         file=str(path))
    return TrainingSet(pairs=pairs, queries=queries, documents=documents, positives=positives,
                       checksum=hasher.hexdigest(),
                       source={"kind": "jsonl", "path": str(path), "corpus": str(corpus) if corpus else None})


def read_judgments(path: str | Path, data: TrainingSet) -> dict[str, dict[str, float]]:
    """Held-out qrels (query id -> doc id -> grade > 0) for the optional evaluation after each pass."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no qrels file for --eval-split; expected it in the BEIR folder's qrels/.", file=str(path))
    _, positives = _read_qrels(path, data.queries, data.documents, hashlib.sha256())
    return {q: {d: 1.0 for d in docs} for q, docs in positives.items()}


META_SUFFIX = ".meta.json"


def fingerprint(doc_ids) -> str:
    """sha256 of the sorted distinct doc ids, one per line: the same documents give the same value."""
    return hashlib.sha256("\n".join(sorted(set(doc_ids))).encode("utf-8")).hexdigest()


def is_harvested(path: str | Path) -> bool:
    """A harvest file has a manifest beside it, or rows that name documents by id with weights."""
    path = Path(path)
    if Path(str(path) + META_SUFFIX).is_file():
        return True
    try:
        with path.open("rb") as handle:
            first = next((line for line in handle if line.strip()), b"")
        row = json.loads(first) if first else {}
    except (OSError, ValueError):
        return False  # the plain reader reports the problem with its line
    return isinstance(row, dict) and ("negatives" in row or "provenance" in row)


def load_harvested(path: str | Path, corpus: str | Path) -> TrainingSet:
    """Pairs from `abgate harvest`: doc ids resolved in `corpus` (a corpus.jsonl), weights kept per pair."""
    path, corpus = Path(path), Path(corpus)
    hasher = hashlib.sha256()
    documents = read_corpus(corpus, hasher)
    raw = path.read_bytes() if path.is_file() else b""
    rows = _read_jsonl(path, hasher)
    meta_path = Path(str(path) + META_SUFFIX)
    meta = None
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"the harvest manifest is not valid JSON ({exc}); harvest again.",
                             file=str(meta_path)) from None
    checked = []
    for number, row in rows:
        for name in ("query", "positive"):
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise InputError(f"needs a non-empty string \"{name}\".", file=str(path), line=number, field=name)
        weight = row.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < float("inf"):
            raise InputError("\"weight\" must be a positive number.", file=str(path), line=number, field="weight")
        negatives = row.get("negatives", [])
        if not isinstance(negatives, list) or not all(isinstance(d, str) for d in negatives):
            raise InputError("\"negatives\" must be a list of doc ids.", file=str(path), line=number,
                             field="negatives")
        checked.append((row["query"], row["positive"], float(weight), negatives))
    if not checked:
        raise InputError("the pairs file is empty; harvest a window with satisfied clicks.", file=str(path))
    referenced = {p for _, p, _, _ in checked} | {d for *_, negs in checked for d in negs}
    recorded = ((meta or {}).get("corpus") or {}).get("fingerprint")
    if recorded and recorded != fingerprint(referenced):
        raise InputError("the manifest beside this pairs file describes other documents (corpus fingerprint "
                         "differs): the file was edited or the manifest belongs to another harvest; harvest again.",
                         file=str(meta_path), field="corpus.fingerprint")
    unknown = referenced - set(documents)
    if len(unknown) * 2 > len(referenced):
        raise InputError(f"{len(unknown)} of the {len(referenced)} documents it names are not in {corpus} (e.g. "
                         f"{sorted(unknown)[0]!r}): it was harvested from another corpus; give the corpus the "
                         "gateway served with --corpus or --data.", file=str(path), field="positive")
    queries: dict[str, str] = {}
    positives: dict[str, set[str]] = {}
    for query, positive, _, _ in checked:
        if positive in documents:
            query_id = _text_id("q", query)
            queries[query_id] = query
            positives.setdefault(query_id, set()).add(positive)
    pairs = []
    for query, positive, weight, negatives in checked:
        if positive not in documents:
            continue
        query_id = _text_id("q", query)
        # the most often skipped result that is a known document and not a positive of this query
        negative = next((d for d in negatives if d in documents and d not in positives[query_id]), None)
        pairs.append(Pair(query_id, query, positive, negative, weight))
    source = {"kind": "harvest", "path": str(path), "corpus": str(corpus),
              "pairs_sha256": hashlib.sha256(raw).hexdigest(), "unknown_documents": len(unknown),
              "dropped_pairs": len(checked) - len(pairs), "with_negative": sum(p.negative_id is not None for p in pairs),
              "harvest": {k: (meta or {}).get(k) for k in ("created", "window", "rules", "weights", "counts", "corpus",
                                                             "propensities", "exclusion")} if meta else None}
    return TrainingSet(pairs=pairs, queries=queries, documents=documents, positives=positives,
                       checksum=hasher.hexdigest(), source=source)


def no_duplicate_batches(items: list[tuple[str, str, str | None]], batch_size: int,
                         positives: dict[str, set[str]], rng) -> list[list[tuple[str, str, str | None]]]:
    """Shuffle (query id, positive id, negative id) items into batches free of in-batch false negatives.

    With in-batch negatives every other row's documents are negatives for a query, so a batch must not hold
    the same query twice, the same document twice, or a document relevant to another query in the batch
    (SciFact train has queries with several positives). Items that clash wait for a later batch.
    """
    pending = list(items)
    rng.shuffle(pending)
    batches = []
    while pending:
        batch, queries, docs, relevant, deferred = [], set(), set(), set(), []
        for item in pending:
            query, *item_docs = item
            item_docs = {d for d in item_docs if d is not None}
            own = positives.get(query, set())
            if (len(batch) >= batch_size or query in queries or item_docs & docs or item_docs & relevant
                    or own & docs):
                deferred.append(item)
                continue
            batch.append(item)
            queries.add(query)
            docs |= item_docs
            relevant |= own
        batches.append(batch)
        pending = deferred
    # a one-row batch has no in-batch negative: it would only add a zero-information step
    return [b for b in batches if len(b) > 1]
