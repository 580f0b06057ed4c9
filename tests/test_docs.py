"""The docs name only things that exist: files and links, `abgate` subcommands, `make` targets, `ABGATE_*`
variables. A renamed flag or a removed setting then fails here instead of misleading a reader."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE_DIRS = ("gateway", "experiments", "exporters", "dashboards", "deploy", "bench", "tests")
# Paths a build or a run creates (ignored by git), which the docs rightly name.
GENERATED = ("artifacts/", "bench/results", "deploy/.env", "deploy/.venv-lint", "tests/artifacts/", ".abgate/")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_point_to_files(doc):
    missing = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", _text(doc)):
        if "://" in target or target.startswith("mailto:"):
            continue
        if not (doc.parent / target).exists():
            missing.append(target)
    assert not missing, f"{doc.name} links to files that do not exist: {missing}"


def test_files_the_docs_and_pyproject_name_exist():
    pattern = re.compile(r"(?<![\w./-])((?:docs|gateway|experiments|exporters|dashboards|deploy|bench|tests)"
                         r"/[\w./-]*\w)")
    missing = set()
    for path in [*DOCS, ROOT / "pyproject.toml"]:
        for name in pattern.findall(_text(path)):
            if ("*" in name or name.endswith("_") or re.search(r"[A-Z]{3,}", name)  # a pattern: bench/bench_NAME.py
                    or any(name.startswith(g) or g in name for g in GENERATED)):
                continue
            candidate = ROOT / name
            # `gateway/simulation/demo.py` or a module path written `gateway/app.py create_app`; a folder too
            if not candidate.exists() and not candidate.with_suffix(".py").exists():
                missing.add(f"{path.name}: {name}")
    assert not missing, sorted(missing)


def _subcommands() -> set[str]:
    from gateway.cli import build_parser

    parser = build_parser()
    names = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            names |= set(action.choices)
    return names


def test_every_abgate_subcommand_the_docs_use_exists():
    known = _subcommands()
    used = set()
    for doc in DOCS:
        used |= {m for m in re.findall(r"`abgate ([a-z][a-z-]+)", _text(doc))}
        for block in re.findall(r"```.*?```", _text(doc), re.S):  # command lines in code blocks, not prose
            used |= set(re.findall(r"^\s*(?:\.venv/bin/)?abgate ([a-z][a-z-]+)", block, re.M))
    assert used and not used - known, f"docs use subcommands the CLI does not have: {sorted(used - known)}"


def test_every_make_target_the_docs_use_exists():
    targets = set(re.findall(r"^([a-z][\w-]*):", _text(ROOT / "Makefile"), re.M))
    used = set()
    for doc in DOCS:
        used |= set(re.findall(r"`make ([a-z][\w-]*)", _text(doc)))
    assert used and not used - targets, f"docs use make targets that do not exist: {sorted(used - targets)}"


def test_every_abgate_variable_the_docs_name_is_read_somewhere():
    """A documented ABGATE_* variable must appear in the code or deployment files (the Settings fields are read
    as ABGATE_<FIELD>), so a removed setting cannot stay documented."""
    from dataclasses import fields

    from gateway.settings import Settings

    known = {f"ABGATE_{f.name.upper()}" for f in fields(Settings)}
    for folder in CODE_DIRS:
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".yaml", ".yml", ".cfg", ".sh", ".example", "") \
                    and "artifacts" not in path.parts:
                known |= set(re.findall(r"ABGATE_[A-Z0-9_]*[A-Z0-9]", path.read_text(errors="ignore")))
    known |= set(re.findall(r"ABGATE_[A-Z0-9_]*[A-Z0-9]", _text(ROOT / "Makefile")))
    documented = set()
    for doc in DOCS:
        documented |= {v for v in re.findall(r"ABGATE_[A-Z0-9_]*[A-Z0-9]", _text(doc)) if not v.endswith("_")}
    assert not documented - known, f"documented but read nowhere: {sorted(documented - known)}"
