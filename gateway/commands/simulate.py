"""`abgate simulate` (simulated users against a running gateway) and `abgate demo` (the whole loop)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

DEFAULT_DATA = "../shared/data/scifact"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="replay simulated users (searches and clicks) against a gateway",
                       description="Simulated users send judged test queries to a running gateway over HTTP "
                                   "and click according to the qrels-driven click model of docs/simulator.md.")
    p.add_argument("--url", required=True, help="the gateway, on this machine: http://127.0.0.1:PORT")
    p.add_argument("--data", default=DEFAULT_DATA, help="BEIR folder (queries.jsonl, qrels/)")
    p.add_argument("--split", default="test", help="qrels split whose queries are sent (default: test)")
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefix", default="sim", help="unit ids are PREFIX-SEED-INDEX")
    p.add_argument("--mean-visits", type=float, default=3.0)
    p.add_argument("--mean-searches", type=float, default=2.0, help="searches per visit")
    p.add_argument("--k", type=int, default=10, help="results asked per search")
    p.add_argument("--concurrency", type=int, default=8, help="users in flight at once")
    p.add_argument("--max-seconds", type=float, default=600.0, help="stop after this long, whatever is left")
    p.add_argument("--eta", type=float, default=1.0, help="examination decay 1/position**eta")
    p.add_argument("--p-relevant", type=float, default=0.6, help="P(click | examined, relevant)")
    p.add_argument("--noise", type=float, default=0.03, help="P(click | examined, irrelevant)")
    p.add_argument("--p-conversion", type=float, default=0.1, help="P(conversion | relevant click)")
    p.add_argument("--no-dwell", action="store_true", help="send clicks without dwell events")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.set_defaults(func=simulate)

    v = sub.add_parser("simulate-volume",
                       help="power of an online test (CTR, click share, MRR) vs traffic, by simulation",
                       description="Replays the click model many times over two arms' offline rankings "
                                   "(`abgate eval-offline --output` files) and reports, per volume, how often "
                                   "the sequential test names the arm with more expected clicks (power) or, "
                                   "for two identical arms, any arm (false positives). See docs/simulator.md.")
    v.add_argument("control", metavar="CONTROL_JSON", help="eval-offline --output file of the control arm")
    v.add_argument("treatment", metavar="TREATMENT_JSON", help="eval-offline --output file of the other arm")
    v.add_argument("--data", default=DEFAULT_DATA, help="BEIR folder (queries.jsonl, qrels/)")
    v.add_argument("--split", default="test")
    v.add_argument("--users", type=int, nargs="+", default=[250, 500, 1000, 2000, 4000, 8000],
                   help="volumes to study: users in the experiment (both arms)")
    v.add_argument("--reps", type=int, default=200, help="replications per volume")
    v.add_argument("--metric", default="ctr", choices=("ctr", "click_share", "mrr"),
                   help="the online metric tested (default ctr); compare them to pick a sensitive primary")
    v.add_argument("--target", type=float, default=0.8, help="power that counts as enough")
    v.add_argument("--design", default="ab", choices=("ab", "interleaving"),
                   help="ab: each user sees one arm, tested on --metric; interleaving: each user sees a team-draft "
                        "merge of both, tested on the unit preference (docs/interleaving.md)")
    v.add_argument("--tuning", type=float, default=5_000, help="the sequential test's tuning (total units)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--mean-visits", type=float, default=3.0)
    v.add_argument("--mean-searches", type=float, default=2.0)
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=simulate_volume)

    d = sub.add_parser("demo", help="the whole loop on SciFact: export, fine-tune, index, serve, simulate, report",
                       description="Same as `make demo`; see docs/demo.md. Finished steps are skipped.")
    from gateway.simulation.demo import add_arguments
    add_arguments(d)
    d.set_defaults(func=demo)

    lp = sub.add_parser("loop", help="clicks -> harvest -> finetune --pairs -> offline NDCG on SciFact (make loop)",
                        description="Same as `make loop`; see docs/loop.md. Finished steps are skipped.")
    from gateway.simulation.loop import add_arguments as loop_arguments
    loop_arguments(lp)
    lp.set_defaults(func=loop)


def simulate(args: argparse.Namespace) -> int:
    from gateway.simulation.replay import check_loopback, replay, run
    from gateway.simulation.users import ClickModel, Population, load_judgments, make_users

    url = check_loopback(args.url)
    model = ClickModel(eta=args.eta, p_relevant=args.p_relevant, noise=args.noise,
                       p_conversion=args.p_conversion, dwell=not args.no_dwell)
    population = Population(users=args.users, mean_visits=args.mean_visits, mean_searches=args.mean_searches)
    judgments = load_judgments(args.data, args.split)
    users = make_users(population, judgments.query_ids, seed=args.seed, model=model, prefix=args.prefix)
    planned = sum(u.searches for u in users)
    print(f"simulate: {len(users)} users, {planned} searches over {len(judgments.queries)} judged queries "
          f"-> {url}", file=sys.stderr)

    def progress(r) -> None:
        rate = r.searches / r.seconds if r.seconds else 0.0
        print(f"simulate: {r.users_done}/{r.users} users, {r.searches}/{planned} searches, {r.clicks} clicks, "
              f"{r.failed_searches + r.failed_feedback} errors, {rate:.0f} searches/s", file=sys.stderr)

    result = run(replay(url, judgments, users, model=model, seed=args.seed, k=args.k,
                        concurrency=args.concurrency, max_seconds=args.max_seconds, progress=progress))
    summary = result.as_dict() | {"planned_searches": planned, "url": url, "seed": args.seed,
                                  "click_model": asdict(model), "population": asdict(population)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{result.users_done}/{result.users} users finished, {result.searches} searches, "
              f"{result.clicks} clicks, {result.dwells} dwells, {result.conversions} conversions in "
              f"{result.seconds:.1f} s ({summary['searches_per_s']} searches/s)")
        if result.stopped:
            print(f"stopped early: {result.stopped}")
    if result.failed_searches or result.failed_feedback:
        print(f"simulate: {result.failed_searches} searches and {result.failed_feedback} feedback events failed; "
              f"first: {result.errors[0] if result.errors else '?'}", file=sys.stderr)
        return 1
    return 0


def _rankings(path: str) -> dict[str, list[str]]:
    from experiments.errors import InputError

    try:
        body = json.loads(Path(path).read_text())
        return {q: list(v["top"]) for q, v in body["per_query"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"is not an `abgate eval-offline --output` file with per-query rankings ({exc}).",
                         file=path, field="per_query") from None


def simulate_volume(args: argparse.Namespace) -> int:
    from gateway.simulation.users import ClickModel, Population, load_judgments
    from gateway.simulation.volume import (click_matrix, interleaved_queries, study, study_interleaving,
                                           volume_needed)

    judgments = load_judgments(args.data, args.split)
    model = ClickModel()
    rankings = [_rankings(p) for p in (args.control, args.treatment)]
    probs = [click_matrix(r, judgments, model) for r in rankings]
    population = Population(mean_visits=args.mean_visits, mean_searches=args.mean_searches)
    merged = interleaved_queries(*rankings, judgments, model, seed=args.seed) if args.design == "interleaving" \
        else None
    what = "unit preference" if merged is not None else args.metric
    points = []
    started = time.perf_counter()
    for i, users in enumerate(args.users, 1):
        if merged is not None:
            points += study_interleaving(merged, [users], reps=args.reps, population=population, model=model,
                                         tuning=args.tuning, seed=args.seed)
        else:
            points += study(*probs, [users], reps=args.reps, population=population, model=model,
                            tuning=args.tuning, seed=args.seed, metric=args.metric)
        p = points[-1]
        elapsed = time.perf_counter() - started
        eta = elapsed / sum(args.users[:i]) * sum(args.users[i:])
        print(f"simulate-volume: {args.design}, {what}, {users} users: power {p.power_sequential:.2f} "
              f"(sequential), {p.power_fixed:.2f} (fixed horizon), wrong-way {p.wrong_sequential:.3f}; "
              f"{i}/{len(args.users)} volumes, ETA {eta:.0f} s", file=sys.stderr)
    needed = volume_needed(points, args.target)
    result = {"design": args.design, "metric": what, "tuning": args.tuning,
              "points": [p.as_dict() for p in points], "target_power": args.target, "users_needed": needed,
              "users_for_power": {"0.8": volume_needed(points, 0.8), "0.9": volume_needed(points, 0.9)},
              "expected_ctr": {"control": round(float(probs[0].sum(1).mean()), 4),
                               "treatment": round(float(probs[1].sum(1).mean()), 4)}}
    if args.json:
        print(json.dumps(result))
    else:
        print("users  power(seq)  power(fixed)  wrong-way  mean lift")
        for p in points:
            print(f"{p.users:>5}  {p.power_sequential:>10.2f}  {p.power_fixed:>12.2f}  {p.wrong_sequential:>9.3f}"
                  f"  {p.mean_lift:+.3%}")
        print(f"volume for power {args.target}: {needed or 'beyond the volumes studied'}")
    return 0


def demo(args: argparse.Namespace) -> int:
    from gateway.simulation.demo import run

    return run(args)


def loop(args: argparse.Namespace) -> int:
    from gateway.simulation.loop import run

    return run(args)
