"""The experiments package's subcommands of `abgate`:

    abgate experiments validate DIR [--state FILE] [--json]   every problem with file, line and field
    abgate experiments plan FILE_OR_NAME [--experiments DIR] (--baseline-rate P | --sd S --mean M) [--json]
                                                               units the design's alpha, power and mde need
    abgate experiments propose --champion ARM_OR_ENCODER --candidate ENCODER_DIR --candidate-index INDEX_DIR
                               --from EXPERIMENT_YAML --out NEW.yaml   the next experiment, as a validated draft
    abgate stats --input sums.json [--json]                    the statistics engine on per-arm sums

Longer than 350 lines because it holds every `abgate experiments` action's parser, run and rendering in one
place; each action is short (propose, the newest, could move to its own module).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from experiments.errors import InputError
from experiments.loader import SUFFIXES, ExperimentsInvalid, load_file, load_folder
from experiments.state import ExperimentState


def register(subparsers: argparse._SubParsersAction) -> None:
    register_validate(subparsers)
    register_stats(subparsers)


def register_validate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("experiments", help="experiment definitions (YAML)")
    sub = parser.add_subparsers(dest="experiments_command", metavar="ACTION", required=True)
    validate = sub.add_parser("validate", help="check a folder of experiment YAML files")
    validate.add_argument("folder", help="folder of *.yaml experiment files")
    validate.add_argument("--state", default=None,
                          help="gateway state file (e.g. .abgate/experiments-state.json): also refuse unsafe "
                               "changes to running experiments")
    validate.add_argument("--force", action="store_true", help="allow unsafe changes to running experiments")
    validate.add_argument("--json", action="store_true", help="print the result as JSON")
    validate.set_defaults(func=run_validate)
    register_plan(sub)
    register_propose(sub)


def register_propose(sub) -> None:
    p = sub.add_parser("propose", help="write the next experiment: a candidate encoder against the champion",
                       description="Write NEW.yaml (status draft, a fresh salt) pitting CANDIDATE + its index "
                       "against the champion, with the layer, unit, allocation, metrics and design of --from; "
                       "then validate it. Only writes YAML: nothing is served until you set it running.")
    p.add_argument("--champion", required=True, help="an arm of --from, or an encoder folder (then also "
                   "--champion-index)")
    p.add_argument("--champion-index", metavar="INDEX_DIR", help="the champion's index, when --champion is a folder")
    p.add_argument("--candidate", required=True, metavar="ENCODER_DIR", help="the candidate's encoder folder")
    p.add_argument("--candidate-index", required=True, metavar="INDEX_DIR", help="its index (abgate build-index)")
    p.add_argument("--from", dest="source", required=True, metavar="EXPERIMENT_YAML", help="the last experiment")
    p.add_argument("--out", required=True, metavar="NEW_YAML", help="the file to write (must not exist)")
    p.add_argument("--name", help="the new experiment's name (default: CANDIDATE-vs-CHAMPION)")
    p.add_argument("--json", action="store_true", help="print the proposal as JSON")
    p.set_defaults(func=run_propose)


def _manifest(folder: str, name: str, flag: str) -> dict:
    try:
        return json.loads((Path(folder) / name).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"has no readable {name} ({exc}); give a folder written by abgate", file=folder,
                         field=flag) from None


def run_propose(args: argparse.Namespace) -> int:
    import re
    import secrets

    import yaml

    last = find_experiment(args.source, None)
    raw = yaml.safe_load(Path(args.source).read_text(encoding="utf-8"))
    if Path(args.out).exists():
        raise InputError("exists already; choose a new file for the proposal", file=args.out, field="--out")
    arms = {a.name: a for a in last.arms}
    if args.champion in arms:
        champ = arms[args.champion]
        control = {"name": champ.name, "encoder": champ.encoder, "index": champ.index}
        extra = {k: getattr(champ, k) for k in ("dimensions", "score_threshold") if getattr(champ, k) is not None}
        top_k = champ.top_k
    elif args.champion_index:
        control, extra, top_k = {"name": "champion", "encoder": args.champion, "index": args.champion_index}, {}, \
            last.control_arm.top_k
    else:
        raise InputError(f"is neither an arm of {last.name} ({', '.join(arms)}) nor given with --champion-index",
                         field="--champion")
    encoder = _manifest(args.candidate, "abgate-encoder.json", "--candidate")
    index = _manifest(args.candidate_index, "abgate-index.json", "--candidate-index")
    if index.get("encoder_checksum") != encoder.get("checksum"):
        raise InputError(f"was built with encoder {str(index.get('encoder_checksum'))[:16]}, not the candidate "
                         f"{str(encoder.get('checksum'))[:16]}: build it with abgate build-index CANDIDATE",
                         file=args.candidate_index, field="--candidate-index")
    candidate = "candidate" if control["name"] != "candidate" else "challenger"
    name = args.name or re.sub(r"[^a-z0-9_.-]+", "-", f"{Path(args.candidate).name}-vs-{control['name']}".lower())
    proposal = {"name": name[:63].strip("-.") or "proposal",
                "description": f"Does {Path(args.candidate).name} beat {control['name']} for users? (proposed "
                               f"from {last.name})",
                "owner": last.owner, "layer": last.layer, "unit": last.unit,
                "salt": f"{name[:40]}-{secrets.token_hex(4)}",  # fresh: units are reshuffled, no carry-over
                "status": "draft", "start": None, "end": None, "allocation": last.allocation,
                "layer_buckets": list(last.layer_buckets), "control": control["name"],
                "arms": [{**control, "weight": 50, "top_k": top_k, **extra},
                         {"name": candidate, "weight": 50, "encoder": args.candidate, "index": args.candidate_index,
                          "top_k": top_k}],
                **{k: raw[k] for k in ("metrics", "design", "custom_metrics", "shadow") if k in raw}}
    Path(args.out).write_text(yaml.safe_dump(proposal, sort_keys=False, allow_unicode=True))
    _, errors = load_file(args.out)
    if errors:
        for e in errors:
            print(f"abgate: error: {e.located()}", file=sys.stderr)
        return 2
    print(json.dumps({"out": args.out, **proposal}) if args.json else
          f"wrote {args.out}: {proposal['name']} ({control['name']} vs {candidate}, salt {proposal['salt']}, "
          "status draft); set status: running and a start time to serve it")
    return 0


def run_validate(args: argparse.Namespace) -> int:
    state = ExperimentState.load(args.state) if args.state else None
    try:
        loaded = load_folder(args.folder, state=state, force=args.force)
    except ExperimentsInvalid as exc:
        if args.json:
            print(json.dumps({"valid": False, "errors": [
                {"file": e.file, "line": e.line, "field": e.field, "error": e.message} for e in exc.errors]},
                indent=2))
        for e in exc.errors:
            print(f"abgate: error: {e.located()}", file=sys.stderr)
        return 2
    names = sorted(loaded.experiments)
    if args.json:
        print(json.dumps({"valid": True, "experiments": [
            {"name": n, "file": loaded.experiments[n].source, "layer": loaded.experiments[n].layer,
             "status": loaded.experiments[n].status, "arms": [a.name for a in loaded.experiments[n].arms]}
            for n in names]}, indent=2))
    else:
        print(f"{len(names)} experiment(s) valid: {', '.join(names) or '(none)'}")
    return 0


def register_plan(sub) -> None:
    plan = sub.add_parser(
        "plan", help="units needed for an experiment's alpha, power and mde (fixed horizon and sequential)",
        description="Units per arm and in total that the design's alpha, power and relative mde need on the "
                    "primary metric: for one look at the end (fixed horizon) and for the always-valid sequential "
                    "test (docs/statistics.md, Planning). Give the primary metric's control baseline: "
                    "--baseline-rate for a share of units (0/1 per unit), or --sd and --mean of the per-unit "
                    "value (for a ratio metric such as ctr, of its per-unit linearisation).")
    plan.add_argument("experiment", metavar="EXPERIMENT_FILE_OR_NAME",
                      help="an experiment YAML file, or the name of one in --experiments")
    plan.add_argument("--experiments", default=None, metavar="DIR",
                      help="folder to find the experiment by name (default: $ABGATE_EXPERIMENTS_DIR or "
                           "experiments/examples)")
    plan.add_argument("--baseline-rate", type=float, default=None, metavar="P",
                      help="the primary metric's rate in control, strictly between 0 and 1")
    plan.add_argument("--sd", type=float, default=None, metavar="S", help="per-unit SD of the primary metric")
    plan.add_argument("--mean", type=float, default=None, metavar="M", help="its mean in control (non-zero)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(func=run_plan)


def find_experiment(target: str, folder: str | None):
    """The experiment in file `target`, or named `target` in the folder (other files there may be broken)."""
    path = Path(target)
    if path.suffix in SUFFIXES and path.is_file():
        experiment, errors = load_file(path)
        if errors:
            raise ExperimentsInvalid(errors)
        return experiment
    folder = folder or os.environ.get("ABGATE_EXPERIMENTS_DIR") or "experiments/examples"
    if not Path(folder).is_dir():
        raise InputError("is neither an experiment file nor the name of one in a folder: pass a .yaml file, or "
                         "the folder with --experiments DIR", file=folder, field="--experiments")
    names, broken = [], []
    for file in sorted(p for p in Path(folder).iterdir() if p.suffix in SUFFIXES and p.is_file()):
        experiment, errors = load_file(file)
        if experiment is not None and experiment.name == target:
            return experiment
        if experiment is not None:
            names.append(experiment.name)
        elif file.stem == target:
            raise ExperimentsInvalid(errors)
        else:
            broken.append(file.name)
    hint = f"; {len(broken)} file(s) did not validate (abgate experiments validate {folder})" if broken else ""
    raise InputError(f"no experiment named {target!r} here (known: {', '.join(names) or 'none'}){hint}",
                     file=folder, field="experiment")


def _baseline(args: argparse.Namespace) -> tuple[float, float | None]:
    def finite(flag: str, value: float) -> float:
        if not math.isfinite(value):
            raise InputError(f"is {value}: give a finite number", field=flag)
        return value

    if args.baseline_rate is not None:
        if args.sd is not None or args.mean is not None:
            raise InputError("give either --baseline-rate (a rate) or --sd with --mean (a mean), not both",
                             field="--baseline-rate")
        rate = finite("--baseline-rate", args.baseline_rate)
        if not 0 < rate < 1:
            raise InputError(f"is {rate:g}: a rate is strictly between 0 and 1 (0.12 for 12 %)",
                             field="--baseline-rate")
        return rate, None
    if args.sd is None or args.mean is None:
        raise InputError("needs the primary metric's baseline: pass --baseline-rate P (a rate, e.g. 0.12) or "
                         "--sd S --mean M (a per-unit mean, e.g. from last month's report)",
                         field="--baseline-rate" if args.sd is None and args.mean is None else
                         ("--mean" if args.mean is None else "--sd"))
    sd, mean = finite("--sd", args.sd), finite("--mean", args.mean)
    if sd <= 0:
        raise InputError(f"is {sd:g}: the per-unit SD must be positive", field="--sd")
    if mean == 0:
        raise InputError("is 0: the mde is relative to the mean, so it must be non-zero", field="--mean")
    return mean, sd


def run_plan(args: argparse.Namespace) -> int:
    from experiments.metrics import BUILTIN_METRICS  # plan and metrics import scipy: paid by this command only
    from experiments.plan import plan

    experiment = find_experiment(args.experiment, args.experiments)
    primary = experiment.metrics.primary
    metric = BUILTIN_METRICS.get(primary)
    if metric is not None and metric.kind == "quantile":
        raise InputError(f"{primary} is a per-arm quantile without a per-unit variance: plan on a rate or mean",
                         file=experiment.source, field="metrics.primary")
    mean, sd = _baseline(args)
    try:
        result = plan(experiment.design, mean, sd, [a.weight for a in _control_first(experiment)])
    except ValueError as exc:
        raise InputError(f"{exc}", file=experiment.source, field="design") from None
    result = {"experiment": experiment.name, "primary_metric": primary,
              "arms_order": [a.name for a in _control_first(experiment)],
              "design_sequential": experiment.design.sequential, **result}
    print(json.dumps(result, indent=2) if args.json else render_plan(result))
    return 0


def _control_first(experiment) -> list:
    return [experiment.control_arm] + [a for a in experiment.arms if a.name != experiment.control]


def render_plan(p: dict) -> str:
    base = p["baseline"]
    what = (f"rate {base['mean']:g}" if base["scale"] == "rate" else f"mean {base['mean']:g} (SD {base['sd']:g})")
    lines = [f"{p['experiment']}: primary metric {p['primary_metric']}, baseline {what}, alpha {p['alpha']:g}, "
             f"power {p['power']:g}"]
    if "detectable_mde" in p:
        d = p["detectable_mde"]
        seq = "not reachable" if d["sequential"] is None else f"{d['sequential']:+.2%}"
        lines.append(f"design.sample_size {p['sample_size_per_arm']:,} per arm (no mde): detectable relative "
                     f"change {d['fixed_horizon']:+.2%} fixed horizon, {seq} sequential")
        return "\n".join(lines)
    lines.append(f"MDE: {p['mde']['relative']:+.2%} relative on {p['primary_metric']} "
                 f"({p['mde']['absolute']:+.4g} absolute)")
    arms = " / ".join(p["arms_order"])
    used = "sequential" if p["design_sequential"] else "fixed_horizon"
    rows = [("test", f"units per arm ({arms})", "total"), ("", "", "")]
    labels = {"fixed_horizon": "fixed horizon (one look at the end)",
              "sequential": f"sequential (tuning {p['sequential_tuning']:,.0f} total)",
              "sequential_self_tuned": f"sequential, with design.sample_size: {p['sequential_self_tuned']['per_arm'][0]}"}
    rows = rows[:1]
    for key, label in labels.items():
        mark = "  <- this design" if key == used else ""
        rows.append((label, " / ".join(f"{n:,}" for n in p[key]["per_arm"]), f"{p[key]['total']:,}{mark}"))
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines += [f"{r[0].ljust(widths[0])}  {r[1].rjust(widths[1]) if i else r[1].ljust(widths[1])}  {r[2]}"
              for i, r in enumerate(rows)]
    lines.append(f"The sequential test needs {p['sequential']['vs_fixed']:.2f}x the fixed-horizon units; counts are "
                 "enrolled units (divide by allocation for traffic).")
    return "\n".join(lines)


def register_stats(subparsers) -> None:
    parser = subparsers.add_parser(
        "stats", help="analyse a JSON of per-arm sufficient statistics (format: docs/statistics.md)",
        description="Run the statistics engine (tests, sequential intervals, SRM, CUPED, corrections) on a JSON "
                    "file of per-arm sums. Use '-' to read standard input.")
    parser.add_argument("--input", required=True, metavar="SUMS_JSON", help="the sums file, or - for stdin")
    parser.add_argument("--json", action="store_true", help="print the full analysis as JSON")
    parser.set_defaults(func=run_stats)


def load_sums(path: str):
    # Imported here so `abgate --help` does not pay for scipy.
    from experiments.stats.sums_file import SumsFormatError, parse_sums

    name = "<stdin>" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except OSError as exc:
        raise InputError(f"cannot read the sums file ({exc.strerror}); pass an existing JSON file.", file=name) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"is not UTF-8 text (byte offset {exc.start}); save the sums as UTF-8 JSON.",
                         file=name) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc.msg} (column {exc.colno}).", file=name, line=exc.lineno) from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise InputError(f"not usable JSON: {' '.join(str(exc).split()[:8])}...; write plain numbers.",
                         file=name) from None
    except RecursionError:
        raise InputError("nests too deep to be a sums file; see docs/statistics.md for the format.",
                         file=name) from None
    try:
        return parse_sums(document)
    except SumsFormatError as exc:
        raise InputError(exc.message + " See docs/statistics.md for the format.", file=name, field=exc.path) from None


def run_stats(args: argparse.Namespace) -> int:
    from experiments.stats.analysis import analyze

    doc = load_sums(args.input)
    analysis = analyze(doc.control, doc.metrics, doc.specs, units=doc.units, weights=doc.weights,
                       settings=doc.settings)
    if args.json:
        print(json.dumps(analysis.to_dict(), indent=2))
    else:
        print(render_table(analysis))
    return 0


def _fmt(value: float | None, relative: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value * 100:+.2f}%" if relative else f"{value:+.4g}"


def render_table(analysis) -> str:
    """A terminal table: one row per metric x arm; errors show their reason instead of numbers."""
    lines = []
    srm = analysis.srm
    if srm is None:
        lines.append("SRM: not checked (the input has no units/weights)")
    elif not srm.ok:
        lines.append(f"SRM: not computed: {srm.reason}")
    else:
        split = ", ".join(f"{arm}={n}" for arm, n in srm.observed.items())
        state = "ALERT: sample ratio mismatch, verdict withheld" if srm.alert else "ok"
        lines.append(f"SRM: p={srm.p_value:.4g} ({split}) {state}")
    s = analysis.settings
    level = f"{(1 - s.alpha) * 100:g}%"
    lines.append(f"alpha={s.alpha:g}  sequential={'yes' if s.sequential else 'no'}  correction={s.correction}")
    header = ("metric", "arm", "control", "treatment", "lift", f"{level} interval", "p", "adj. p", "P(beat)", "")
    rows = [header]
    for c in analysis.comparisons:
        r = c.decision
        if not r.ok:
            rows.append((c.metric, c.arm, "-", "-", "-", "-", "-", "-", "-", f"{r.error}: {r.reason}"))
            continue
        prob = c.bayesian.probability_to_beat_control if c.bayesian and c.bayesian.ok else None
        mark = {True: "significant", False: "", None: ""}[c.significant]
        rows.append((c.metric, c.arm, f"{r.control_value:.4g}", f"{r.treatment_value:.4g}",
                     _fmt(r.lift, r.relative), f"[{_fmt(r.ci_low, r.relative)}, {_fmt(r.ci_high, r.relative)}]",
                     f"{r.p_value:.4g}", f"{c.adjusted_p_value:.4g}", "-" if prob is None else f"{prob:.3f}",
                     mark + (f" ({r.method})" if mark else "")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return "\n".join(lines)
