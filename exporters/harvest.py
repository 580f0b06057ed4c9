"""`abgate harvest`: training pairs from the event log, with position bias removed (docs/finetuning.md).

Rules (the reasons are in docs/finetuning.md, "From logged clicks"):
- A **satisfied click** is a click on (impression, doc) followed by a dwell of at least --dwell-threshold
  seconds, or by no dwell event at all (the dwell is unknown: the click counts). A click whose only dwell events
  are shorter than the threshold is a quick return (a bounce) and is not a positive.
- **Positives** are aggregated per (query text, doc): each unit counts at most --per-unit-cap satisfied clicks
  per (unit, query, doc) (its earliest), so one user cannot dominate a pair.
- **Hard negatives** of a pair: results shown above a satisfied click in the same impression and not clicked
  there, minus any document that is itself a positive of that query; listed most often skipped first.
- **Weights**: the sum over counted clicks of min(1 / propensity(position), --clip), the propensities estimated
  from the log by exporters/propensity.py; --no-ipw gives every click weight 1.
- Evaluation queries are dropped before anything else (--exclude-queries or --exclude-qrels); harvest opens a
  qrels file only when --exclude-qrels names it.

Output: JSONL rows {"query", "positive" (a doc id), "weight", "negatives" (doc ids), "provenance"} and
`<out>.meta.json` (window, rules, counts, propensity curve, corpus fingerprint).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

from exporters import propensity
from exporters.pairs import META_SUFFIX, fingerprint
from experiments.errors import InputError


def normalize(query: str) -> str:
    return " ".join(query.split())


def _moment(text: str | None, flag: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{text!r} is not an ISO time; write e.g. 2026-11-01 or 2026-11-01T12:00:00Z.",
                         field=flag) from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def excluded_queries(args) -> tuple[set[str], dict]:
    """The evaluation query texts to keep out (normalized, case-folded), and how they were found."""
    if args.exclude_queries:
        path = Path(args.exclude_queries)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read the excluded queries ({exc}); give a UTF-8 file, one query per line.",
                             file=str(path), field="--exclude-queries") from None
        texts = {normalize(t).casefold() for t in lines if t.strip()}
        return texts, {"kind": "queries-file", "path": str(path), "queries": len(texts)}
    if args.exclude_qrels:
        folder = Path(args.exclude_qrels)
        queries_path, qrels_path = folder / "queries.jsonl", folder / "qrels" / f"{args.exclude_split}.tsv"
        for path in (queries_path, qrels_path):
            if not path.is_file():
                raise InputError(f"not found: --exclude-qrels needs a BEIR folder with queries.jsonl and "
                                 f"qrels/{args.exclude_split}.tsv.", file=str(path), field="--exclude-qrels")
        judged = {line.split("\t")[0] for line in qrels_path.read_text(encoding="utf-8").splitlines()
                  if line.strip() and not line.startswith("query-id")}
        texts = set()
        with queries_path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    raise InputError("not valid JSON; each line must be a BEIR query object.",
                                     file=str(queries_path), line=number) from None
                if str(row.get("_id")) in judged:
                    texts.add(normalize(str(row.get("text") or "")).casefold())
        return texts, {"kind": "qrels", "path": str(folder), "split": args.exclude_split, "queries": len(texts)}
    if args.no_exclude:
        return set(), {"kind": "none (--no-exclude)"}
    raise InputError("evaluation queries must be kept out of training pairs: pass --exclude-queries FILE (one "
                     "query per line) or --exclude-qrels BEIR_DIR --exclude-split test, or --no-exclude to "
                     "harvest every query.", field="--exclude-queries")


def read_log(client, since, until, experiments, arms) -> tuple[list[tuple], dict[str, list[tuple]]]:
    """Impressions in the window (with FINAL) and the click/dwell feedback answering them."""
    where, params = [], {}
    if since is not None:
        where.append("ts >= parseDateTime64BestEffort({since:String}, 3, 'UTC')")
        params["since"] = since.isoformat()
    if until is not None:
        where.append("ts < parseDateTime64BestEffort({until:String}, 3, 'UTC')")
        params["until"] = until.isoformat()
    if experiments:
        where.append("experiment IN {experiments:Array(String)}")
        params["experiments"] = list(experiments)
    if arms:
        where.append("arm IN {arms:Array(String)}")
        params["arms"] = list(arms)
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    impressions = client.query(
        "SELECT impression_id, ts, experiment, arm, unit_id, enrolled, query, doc_ids, index_checksum "
        f"FROM impressions_unique{clause} ORDER BY ts, impression_id", parameters=params).result_rows
    feedback: dict[str, list[tuple]] = defaultdict(list)
    # Feedback may arrive after --until; it belongs to the impression it answers, so it is joined by id.
    for row in client.query(
            "SELECT impression_id, type, doc_id, position, value, ts FROM feedback_unique "
            "WHERE type IN ('click', 'dwell') AND impression_id IN "
            f"(SELECT impression_id FROM impressions_unique{clause}) ORDER BY ts, event_id",
            parameters=params).result_rows:
        feedback[row[0]].append(row[1:])
    return impressions, feedback


def satisfied_positions(events: list[tuple], threshold: float) -> tuple[set[int], set[int]]:
    """(every clicked position, satisfied clicked positions) of one impression's feedback."""
    clicked: dict[int, str] = {}
    dwells: dict[str, list[float]] = defaultdict(list)
    for kind, doc_id, position, value, _ in events:
        if kind == "click":
            clicked.setdefault(int(position), doc_id)
        elif kind == "dwell":
            dwells[doc_id].append(float(value))
    satisfied = {p for p, d in clicked.items() if not dwells[d] or max(dwells[d]) >= threshold}
    return set(clicked), satisfied


def harvest(client, args) -> tuple[list[dict], dict, propensity.Curve | None]:
    since, until = _moment(args.since, "--since"), _moment(args.until, "--until")
    if since and until and until <= since:
        raise InputError("--until must be after --since.", field="--until")
    excluded, exclusion = excluded_queries(args)
    impressions, feedback = read_log(client, since, until, args.experiment, args.arm)
    window = {"since": since.isoformat() if since else None, "until": until.isoformat() if until else None,
              "experiments": args.experiment or [], "arms": args.arm or []}
    if not impressions:
        raise InputError(f"no impressions in the window ({_describe(window)}): widen --since/--until, check "
                         "--experiment/--arm, or point --dsn at the store the gateway wrote.", field="--since")
    kept, dropped, seen_docs, index_checksums = [], 0, set(), set()
    for row in impressions:
        if normalize(row[6]).casefold() in excluded:
            dropped += 1
            continue
        clicked, satisfied = satisfied_positions(feedback.get(row[0], []), args.dwell_threshold)
        kept.append((*row, clicked, satisfied))
        seen_docs.update(row[7])
        index_checksums.add(row[8])
    clicks = sum(len(r[-2]) for r in kept)
    if not clicks:
        what = "every impression is of an evaluation query" if not kept else f"{len(kept)} impressions, no click"
        raise InputError(f"nothing to harvest in the window ({_describe(window)}): {what}; widen --since/--until "
                         "or --experiment/--arm.", field="--since")
    curve = _curve(kept, args, clicks)

    # per (unit, query, doc): the earliest --per-unit-cap satisfied clicks
    per_unit: dict[tuple, list[tuple[int, list[str]]]] = defaultdict(list)
    shown: Counter = Counter()
    for (_, _, _, _, unit, _, query, doc_ids, _, clicked, satisfied) in kept:
        query = normalize(query)
        for doc in doc_ids:
            shown[(query, doc)] += 1
        for position in sorted(p for p in satisfied if p <= len(doc_ids)):
            skipped = [doc_ids[above - 1] for above in range(1, position) if above not in clicked]
            per_unit[(unit, query, doc_ids[position - 1])].append((position, skipped))
    pairs: dict[tuple[str, str], dict] = {}
    negatives: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for (unit, query, doc), events in per_unit.items():
        pair = pairs.setdefault((query, doc), {"clicks": 0, "units": set(), "positions": Counter(), "weight": 0.0})
        # the cap applies to negatives too: a unit's repeated searches add one vote, not one per search
        for position, skipped in events[:args.per_unit_cap]:
            negatives[(query, doc)].update(skipped)
            pair["clicks"] += 1
            pair["units"].add(unit)
            pair["positions"][position] += 1
            pair["weight"] += 1.0 if curve is None or args.no_ipw else min(1.0 / curve.value(position), args.clip)
    if not pairs:
        raise InputError(f"{len(kept)} impressions and {clicks} clicks in the window but no satisfied click "
                         f"(dwell >= {args.dwell_threshold:g} s, or no dwell event): nothing to harvest; "
                         "widen the window or lower --dwell-threshold.", field="--dwell-threshold")
    positives_of = defaultdict(set)
    for query, doc in pairs:
        positives_of[query].add(doc)
    rows = []
    for (query, doc), pair in sorted(pairs.items()):
        skipped = [(d, n) for d, n in negatives[(query, doc)].items() if d not in positives_of[query]]
        skipped.sort(key=lambda item: (-item[1], item[0]))
        rows.append({"query": query, "positive": doc, "weight": round(pair["weight"], 6),
                     "negatives": [d for d, _ in skipped],
                     "provenance": {"clicks": pair["clicks"], "units": len(pair["units"]),
                                    "positions": {str(k): v for k, v in sorted(pair["positions"].items())},
                                    "impressions": shown[(query, doc)]}})
    referenced = {r["positive"] for r in rows} | {d for r in rows for d in r["negatives"]}
    meta = {
        "format": 1, "tool": "abgate harvest", "created": datetime.now(timezone.utc).isoformat(),
        "window": {**window, "first_ts": _iso(impressions[0][1]), "last_ts": _iso(impressions[-1][1])},
        "rules": {"dwell_threshold_s": args.dwell_threshold, "per_unit_cap": args.per_unit_cap,
                  "satisfied": "a click with a dwell >= the threshold, or with no dwell event (unknown: counted); "
                               "a click whose dwells are all shorter is a quick return, not a positive",
                  "negatives": "shown above a satisfied click in the same impression, not clicked there, "
                               "not a positive of the query"},
        "weights": {"kind": "naive" if args.no_ipw else "ipw", "clip": None if args.no_ipw else args.clip,
                    "propensities": None if curve is None else curve.method},
        "propensities": None if curve is None else curve.to_json(),
        "exclusion": {**exclusion, "impressions_dropped": dropped},
        "counts": {"impressions": len(kept), "clicks": clicks,
                   "satisfied_clicks": sum(len(r[-1]) for r in kept),
                   "counted_clicks": sum(p["clicks"] for p in pairs.values()), "pairs": len(rows),
                   "queries": len(positives_of), "units": len({u for u, _, _ in per_unit}),
                   "negatives": sum(len(r["negatives"]) for r in rows)},
        "corpus": {"fingerprint": fingerprint(referenced), "documents": len(referenced),
                   "seen_fingerprint": fingerprint(seen_docs), "seen_documents": len(seen_docs),
                   "index_checksums": sorted(c for c in index_checksums if c)},
    }
    return rows, meta, curve


def _curve(kept: list[tuple], args, clicks: int) -> propensity.Curve | None:
    if args.no_ipw and not args.propensities:
        return None
    depth = max((len(r[7]) for r in kept), default=10) or 10
    # Only enrolled units of an experiment were assigned an arm by a hash: their positions are interventions.
    # An arm is named with its experiment (two experiments may both have a "baseline"); the unit goes along so
    # that the bootstrap resamples users, whose clicks are correlated, rather than single impressions.
    randomized = [(f"{r[2]}/{r[3]}", normalize(r[6]), r[7], r[9], r[4]) for r in kept if r[2] and r[5]]
    try:
        return propensity.estimate(randomized, bootstrap=args.bootstrap, seed=args.seed)
    except propensity.NoInterventions as exc:
        if args.no_ipw:
            print(f"abgate harvest: note: propensities cannot be estimated: {exc}", file=sys.stderr)
            return None
        if args.assume_eta is not None:
            print(f"abgate harvest: propensities cannot be estimated ({exc}); assuming 1/position^"
                  f"{args.assume_eta:g} as --assume-eta asks", file=sys.stderr)
            return propensity.assumed(args.assume_eta, depth)
        raise InputError(f"propensities cannot be estimated: {exc} ({clicks} clicks in the window). Run an A/B "
                         "experiment whose arms rank differently, or pass --no-ipw (weights of 1) or "
                         "--assume-eta ETA (propensity 1/position^ETA).", field="--propensities") from None


def _iso(ts) -> str:
    return (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).isoformat()


def _describe(window: dict) -> str:
    parts = [f"since {window['since'] or 'the first event'}", f"until {window['until'] or 'now'}"]
    if window["experiments"]:
        parts.append("experiments " + ", ".join(window["experiments"]))
    if window["arms"]:
        parts.append("arms " + ", ".join(window["arms"]))
    return "; ".join(parts)


def command(args: argparse.Namespace) -> int:
    from gateway.eventlog import tables
    from gateway.eventlog.store import connect

    for name, low in (("per_unit_cap", 1), ("bootstrap", 10)):
        if getattr(args, name) < low:
            raise InputError(f"must be at least {low}.", field="--" + name.replace("_", "-"))
    if args.clip < 1:
        raise InputError("must be >= 1 (a weight below 1 would down-weight clicks deep in the list).", field="--clip")
    if args.assume_eta is not None and args.assume_eta < 0:
        raise InputError("must be >= 0.", field="--assume-eta")
    out = Path(args.out)
    with connect(args.dsn) as client:
        tables.migrate(client)  # a fresh store has no tables yet: it then says "no impressions", not a SQL error
        rows, meta, curve = harvest(client, args)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    out.write_text(text, encoding="utf-8")
    meta["output"] = {"path": str(out.resolve()), "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    Path(str(out) + META_SUFFIX).write_text(json.dumps(meta, indent=2) + "\n")
    if args.json:
        print(json.dumps(meta))
        return 0
    c = meta["counts"]
    print(f"harvested {c['pairs']} pairs ({c['queries']} queries, {c['counted_clicks']} counted of "
          f"{c['satisfied_clicks']} satisfied / {c['clicks']} clicks, {c['units']} units, {c['negatives']} hard "
          f"negatives) from {c['impressions']} impressions -> {out} (+{META_SUFFIX}); weights: "
          + ("1 per click (--no-ipw)" if args.no_ipw else f"inverse propensity clipped at {args.clip:g}"))
    if meta["exclusion"].get("impressions_dropped"):
        print(f"  {meta['exclusion']['impressions_dropped']} impressions of evaluation queries left out")
    if curve is not None:
        print("\n".join(propensity.render(curve)))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("harvest", help="training pairs from logged clicks (satisfied clicks, hard "
                              "negatives, inverse-propensity weights)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsn", help="event store (default: $ABGATE_DSN or .abgate/store)")
    p.add_argument("--out", required=True, help="JSONL of pairs to write (the manifest goes to OUT.meta.json)")
    p.add_argument("--since", help="first impression time, ISO (default: the first logged)")
    p.add_argument("--until", help="end of the window, ISO, exclusive (default: now)")
    p.add_argument("--experiment", action="append", help="only this experiment's impressions (repeatable)")
    p.add_argument("--arm", action="append", help="only this arm's impressions (repeatable)")
    p.add_argument("--dwell-threshold", type=float, default=30.0, metavar="S",
                   help="seconds of dwell that make a click satisfied (default 30)")
    p.add_argument("--per-unit-cap", type=int, default=1, metavar="N",
                   help="satisfied clicks one unit may add to one (query, doc) (default 1)")
    p.add_argument("--propensities", action="store_true",
                   help="estimate and print the position curve even with --no-ipw")
    p.add_argument("--no-ipw", action="store_true", help="naive weights: 1 per counted click")
    p.add_argument("--clip", type=float, default=10.0, help="largest inverse-propensity weight of a click "
                   "(default 10)")
    p.add_argument("--assume-eta", type=float, metavar="ETA", help="when the log has no interventions: use "
                   "propensity 1/position^ETA instead of failing")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap draws for the curve's intervals")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    keep_out = p.add_mutually_exclusive_group()
    keep_out.add_argument("--exclude-queries", metavar="FILE", help="evaluation queries to leave out, one per line")
    keep_out.add_argument("--exclude-qrels", metavar="BEIR_DIR", help="leave out the queries judged in "
                          "BEIR_DIR/qrels/<--exclude-split>.tsv")
    keep_out.add_argument("--no-exclude", action="store_true", help="keep every query (no evaluation split to "
                          "protect)")
    p.add_argument("--exclude-split", default="test", help="with --exclude-qrels (default: test)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=command)
