"""Load a folder of experiment YAML files, with every error located by file, line and field.

PyYAML's composer keeps the position of every node, so the loader parses each file once into nodes, records
the line of every field (by its path of keys and list indexes), then builds the plain data from the same nodes
and hands it to `experiments.schema.parse_experiment`. A problem on a missing field points at the line of the
mapping that should hold it.

No input ends in a traceback: serve, /v1/admin/reload and report read files through here too. Bytes that are
not UTF-8, control characters, syntax errors, a second document, values PyYAML's constructors cannot build
(an impossible date such as 2026-02-30, `!!float ""`, a 5,000-digit integer), unknown tags, alias bombs,
deep nesting and files over MAX_BYTES each become one located problem (exit 2 on the command line).

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


# Bounds on what one experiment file may be: a real one is a few KB, a hundred fields and six levels deep.
# They turn an alias bomb (a few lines that expand to billions of values), a megabyte of nesting or a
# 100,000-digit number into a located problem instead of minutes of CPU or a RecursionError.
MAX_BYTES = 1 << 20
MAX_VALUES = 20_000
MAX_DEPTH = 64


class _Refused(Exception):
    """A YAML problem found while reading one file: where and what to do, before it becomes an InputError."""

    def __init__(self, message: str, line: int | None = None, path: tuple = ("yaml",)) -> None:
        super().__init__(message)
        self.message, self.line, self.path = message, line, path


class _BadValue(Exception):
    def __init__(self, node: yaml.Node, cause: Exception) -> None:
        super().__init__(str(cause))
        self.node, self.cause = node, cause


class _Loader(yaml.SafeLoader):
    """SafeLoader whose scalar constructors fail as located problems. PyYAML's own raise bare ValueError,
    AttributeError or IndexError on an impossible date (2026-02-30), `!!timestamp foo`, `!!float ""` or an
    integer beyond Python's 4,300-digit limit, which would end `abgate experiments validate` in a traceback."""

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as exc:
            if isinstance(exc, yaml.YAMLError):
                raise
            raise _BadValue(node, exc) from None


_TAG_ADVICE = {
    "timestamp": "is not a real date and time ({cause}): write it as 2026-11-01T00:00:00Z",
    "int": "cannot be read as a whole number ({cause}): write a plain integer such as 10000",
    "float": "cannot be read as a number ({cause}): write a plain number such as 0.05",
    "bool": "is not true or false: write true or false",
}


def _bad_value_message(node: yaml.Node, cause: Exception) -> str:
    kind = node.tag.rsplit(":", 1)[-1]
    value = node.value if isinstance(node.value, str) else ""
    advice = _TAG_ADVICE.get(kind, f"cannot be read as !!{kind} ({{cause}}): fix the value, or quote it to make "
                                   "it text")
    # Only a ValueError's text speaks of the value (a month out of range); the others speak of PyYAML's insides.
    if "Exceeds the limit" in str(cause):
        reason = "more than 4,300 digits"
    elif isinstance(cause, (ValueError, OverflowError)) and str(cause):
        reason = _one_line(str(cause))[:100]
    else:
        reason = "not in a form YAML reads as one"
    return f"{_show(value)} " + advice.format(cause=reason)


def _show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 5] + "...'"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _line_map(node: yaml.Node, path: tuple, lines: dict, errors: list[tuple[tuple, int, str]],
              paths: dict | None = None, budget: list | None = None) -> None:
    """Record the line of every field by path (and, in `paths`, the first path of the node at each offset).

    `budget` ([values left]) counts values as the document expands them: aliases are walked again each time
    they are used, which is what makes a YAML bomb expensive, so its cost is counted and bounded here,
    before the constructor (or PyYAML's merge of `<<:` keys) does the same expansion."""
    if budget is not None:
        budget[0] -= 1
        if budget[0] < 0:
            raise _Refused(f"expands to more than {MAX_VALUES:,} values (through anchors and aliases): write the "
                           "fields out, an experiment needs a few hundred at most", node.start_mark.line + 1)
        if len(path) > MAX_DEPTH:
            raise _Refused(f"nests deeper than {MAX_DEPTH} levels: an experiment needs about six",
                           node.start_mark.line + 1)
    lines.setdefault(path, node.start_mark.line + 1)
    if paths is not None:
        paths.setdefault(node.start_mark.index, path)
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for key_node, value_node in node.value:
            # A key that is itself a list or mapping has no name to point at; the constructor refuses it.
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else f"<{key_node.id}>"
            if key in seen:
                errors.append((path + (key,), key_node.start_mark.line + 1,
                               "is given twice in the same mapping: keep one"))
            seen.add(key)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _line_map(value_node, path + (key,), lines, errors, paths, budget)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _line_map(item, path + (i,), lines, errors, paths, budget)


def line_of(lines: dict, path: tuple) -> int | None:
    """The line of a field, or of the closest enclosing field that exists in the file."""
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())


def _syntax(exc: yaml.YAMLError, text: str) -> _Refused:
    if isinstance(exc, yaml.reader.ReaderError):  # a control character such as NUL: no mark, only an offset
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        return _Refused(f"holds the character #x{exc.character if isinstance(exc.character, int) else 0:04x}, "
                        "which YAML does not allow: remove it (is this a text file?)", line)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark else None
    problem = _one_line(getattr(exc, "problem", None) or "")
    if "another document" in problem:
        return _Refused("holds more than one YAML document (a second `---`): keep one experiment per file", line)
    if "tag:yaml.org,2002:value" in problem:  # YAML 1.1 reserves a bare `=`
        return _Refused("is a bare `=`, which YAML reserves: quote it, as in op: \"=\"", line)
    if problem.startswith("could not determine a constructor"):
        tag = problem.rsplit(" ", 1)[-1]
        return _Refused(f"uses the tag {tag}, which an experiment file cannot hold: remove it and write a plain "
                        "value", line)
    what = _one_line(" ".join(s for s in (getattr(exc, "context", None), problem) if s)) or _one_line(str(exc))
    return _Refused(f"is not valid YAML ({what}): fix the syntax", line)


def read_yaml(text: str) -> tuple[object, dict, list[tuple[tuple, int, str]]]:
    """The plain data of one YAML document, the line of every field, and the duplicate keys.

    Raises _Refused for anything that is not one small, well-formed YAML document of plain values."""
    loader = None
    try:
        try:
            loader = _Loader(text)  # checks for unprintable characters at once
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise _syntax(exc, text) from None
        except RecursionError:
            raise _Refused(f"nests deeper than {MAX_DEPTH} levels: an experiment needs about six") from None
        if node is None:
            raise _Refused("is empty: write one experiment as a YAML mapping", 1, ())
        lines: dict = {}
        duplicates: list = []
        paths: dict = {}
        _line_map(node, (), lines, duplicates, paths, [MAX_VALUES])
        try:
            data = loader.construct_document(node)
        except _BadValue as exc:
            path = paths.get(exc.node.start_mark.index)
            raise _Refused(_bad_value_message(exc.node, exc.cause), exc.node.start_mark.line + 1,
                           path if path else ("yaml",)) from None
        except yaml.YAMLError as exc:
            refused = _syntax(exc, text)
            mark = getattr(exc, "problem_mark", None)
            refused.path = paths.get(mark.index, ("yaml",)) if mark else ("yaml",)
            raise refused from None
        except RecursionError:
            raise _Refused(f"nests deeper than {MAX_DEPTH} levels: an experiment needs about six") from None
        return data, lines, duplicates
    finally:
        if loader is not None:
            loader.dispose()


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise _Refused(f"cannot be read ({exc.strerror or exc}): check the path and its permissions", None,
                       ()) from None
    if len(raw) > MAX_BYTES:
        raise _Refused(f"is larger than {MAX_BYTES // 1024} KiB: an experiment file is a few KB, is this the "
                       "right file?", None, ())
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise _Refused(f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}): save the file "
                       "as UTF-8", line, ()) from None


def load_file(path: str | Path) -> tuple[Experiment | None, list[InputError]]:
    """One experiment file: the Experiment, or None and every problem found, each with file, line and field."""
    path = Path(path)
    try:
        data, lines, duplicates = read_yaml(_read_text(path))
    except _Refused as exc:
        return None, [InputError(exc.message, file=str(path), line=exc.line, field=format_path(exc.path) or None)]
    errors = [InputError(msg, file=str(path), line=line, field=format_path(p)) for p, line, msg in duplicates]
    experiment, problems = parse_experiment(data, source=str(path))
    errors += [_locate(p, path, lines) for p in problems]
    return (experiment if not errors else None), errors


def _locate(problem: Problem, path: Path, lines: dict) -> InputError:
    return InputError(problem.message, file=str(path), line=line_of(lines, problem.path), field=problem.field or None)


def _field_line(experiment: Experiment, field: str) -> int | None:
    """Re-read the line of a top-level field for cross-file messages (files are small)."""
    try:
        _, lines, _ = read_yaml(_read_text(Path(experiment.source)))
    except _Refused:  # the file changed since it was validated: the message still names file and field
        return None
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
