"""Load a folder of experiment YAML files, with every error located by file, line and field.

PyYAML's composer keeps the position of every node, so the loader parses each file once into nodes, records
the line of every field (by its path of keys and list indexes), then builds the plain data from the same nodes
and hands it to `experiments.schema.parse_experiment`. A problem on a missing field points at the line of the
mapping that should hold it.

Checks across files (done here because they need the whole folder):
- names are unique;
- running experiments of the same layer use disjoint `layer_buckets` (a unit is in at most one per layer);
- optionally, against the recorded state of running experiments (experiments/state.py): changing the salt,
  the unit, the arms or their weights, the control, the layer slice, or lowering the allocation of a running
  experiment is refused unless forced, because it moves enrolled units between arms mid-analysis.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from experiments.problems import Problem, format_path
from experiments.schema import Experiment, parse_experiment
from experiments.errors import InputError

SUFFIXES = (".yaml", ".yml")


class ExperimentsInvalid(InputError):
    """Every problem found in a folder; the message is the first one, `errors` holds them all."""

    def __init__(self, errors: list[InputError]) -> None:
        self.errors = errors
        first = errors[0]
        extra = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(first.message + extra, file=first.file, line=first.line, field=first.field)


@dataclass(frozen=True)
class ExperimentSet:
    """The experiments of one folder, by name, as validated together."""

    folder: str
    experiments: dict[str, Experiment]

    def in_layer(self, layer: str) -> list[Experiment]:
        return sorted((e for e in self.experiments.values() if e.layer == layer), key=lambda e: e.name)


def _line_map(node: yaml.Node, path: tuple, lines: dict, errors: list[tuple[tuple, int, str]]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                errors.append((path + (key,), key_node.start_mark.line + 1,
                               "is given twice in the same mapping: keep one"))
            seen.add(key)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _line_map(value_node, path + (key,), lines, errors)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _line_map(item, path + (i,), lines, errors)


def line_of(lines: dict, path: tuple) -> int | None:
    """The line of a field, or of the closest enclosing field that exists in the file."""
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())


def load_file(path: str | Path) -> tuple[Experiment | None, list[InputError]]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [InputError(f"cannot be read ({exc})", file=str(path))]
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, [InputError("is empty: write one experiment as a YAML mapping", file=str(path), line=1)]
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        what = " ".join(s for s in (exc.context, exc.problem) if s)
        return None, [InputError(f"is not valid YAML ({what}): fix the syntax", file=str(path), line=line,
                                 field="yaml")]
    except yaml.YAMLError as exc:
        return None, [InputError(f"is not valid YAML ({exc}): fix the syntax", file=str(path), field="yaml")]
    finally:
        loader.dispose()
    lines: dict = {}
    duplicates: list = []
    _line_map(node, (), lines, duplicates)
    errors = [InputError(msg, file=str(path), line=line, field=format_path(p)) for p, line, msg in duplicates]
    experiment, problems = parse_experiment(data, source=str(path))
    errors += [_locate(p, path, lines) for p in problems]
    return (experiment if not errors else None), errors


def _locate(problem: Problem, path: Path, lines: dict) -> InputError:
    return InputError(problem.message, file=str(path), line=line_of(lines, problem.path), field=problem.field or None)


def _field_line(experiment: Experiment, field: str) -> int | None:
    """Re-read the line of a top-level field for cross-file messages (files are small)."""
    try:
        node = yaml.compose(Path(experiment.source).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    lines: dict = {}
    _line_map(node, (), lines, [])
    return line_of(lines, (field,))


def cross_check(experiments: list[Experiment]) -> list[InputError]:
    errors: list[InputError] = []
    by_name: dict[str, Experiment] = {}
    for exp in experiments:
        if exp.name in by_name:
            errors.append(InputError(f"experiment {exp.name!r} is also defined in {by_name[exp.name].source}: "
                                     "names must be unique", file=exp.source, line=_field_line(exp, "name"),
                                     field="name"))
        by_name.setdefault(exp.name, exp)
    running = [e for e in experiments if e.status == "running"]
    for i, a in enumerate(running):
        for b in running[i + 1:]:
            (a0, a1), (b0, b1) = a.layer_buckets, b.layer_buckets
            if a.layer == b.layer and a0 < b1 and b0 < a1:
                errors.append(InputError(
                    f"overlaps running experiment {a.name!r} ({a.source}) in layer {a.layer!r}: give each running "
                    "experiment of a layer a disjoint slice with layer_buckets: [start, end]",
                    file=b.source, line=_field_line(b, "layer_buckets") or _field_line(b, "layer"),
                    field="layer_buckets"))
    return errors


def load_folder(folder: str | Path, *, state=None, force: bool = False) -> ExperimentSet:
    """Load and validate every *.yaml/*.yml file in a folder; raise ExperimentsInvalid listing all problems.

    `state` (an experiments.state.ExperimentState) adds the guard on running experiments; `force` lifts it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("is not a folder of experiment YAML files: pass the folder that holds them",
                         file=str(folder))
    experiments: list[Experiment] = []
    errors: list[InputError] = []
    for path in sorted(p for p in folder.iterdir() if p.suffix in SUFFIXES and p.is_file()):
        experiment, file_errors = load_file(path)
        errors += file_errors
        if experiment is not None:
            experiments.append(experiment)
    errors += cross_check(experiments)
    if state is not None and not force:
        for exp in experiments:
            for field, reason in state.refusals(exp):
                errors.append(InputError(reason, file=exp.source, line=_field_line(exp, field.split(".")[0]),
                                         field=field))
    if errors:
        raise ExperimentsInvalid(errors)
    return ExperimentSet(str(folder), {e.name: e for e in experiments})
