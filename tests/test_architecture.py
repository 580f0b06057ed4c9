"""The packages depend one way: exporters -> gateway -> dashboards -> experiments (docs/architecture.md).

grimp reads every import statement, including those inside functions, so a lazy import cannot hide an arrow
against the order or a cycle. The composition root, gateway/cli.py, is the one module allowed to know every
package (it assembles their commands). import-linter checks the same contract from pyproject.toml
([tool.importlinter]); this test runs it too, so `lint-imports` and `make test` agree.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parent.parent
LAYERS = ("exporters", "gateway", "dashboards", "experiments")   # top to bottom: each imports only below it
COMPOSITION_ROOT = {"gateway.cli"}
MAX_LINES = 350


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph(*LAYERS, include_external_packages=False, cache_dir=None)


def rank(module: str) -> int:
    return len(LAYERS) - LAYERS.index(module.split(".")[0])


def test_every_import_points_down_the_layers(graph):
    against = []
    for importer in sorted(graph.modules):
        if importer in COMPOSITION_ROOT:
            continue
        for imported in graph.find_modules_directly_imported_by(importer):
            if rank(imported) > rank(importer):
                details = graph.get_import_details(importer=importer, imported=imported)
                lines = ", ".join(str(d["line_number"]) for d in details)
                against.append(f"{importer} (line {lines}) imports {imported}")
    assert not against, "imports against exporters -> gateway -> dashboards -> experiments:\n" + "\n".join(against)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_import_cycles_between_modules(graph):
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    # A package's __init__ re-exporting its own modules is not a cycle of behaviour; count modules only.
    edges = {m: {i for i in imported if not m.startswith(i + ".")} for m, imported in edges.items()}
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_import_linter_contract_holds():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run([lint, "--config", str(REPO / "pyproject.toml"), "--no-cache"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_no_module_over_350_lines_without_a_reason():
    too_long = []
    for folder in (*LAYERS, "tests", "bench"):
        for path in sorted((REPO / folder).rglob("*.py")):
            lines = path.read_text().splitlines()
            head = "\n".join(lines[:30])
            if len(lines) > MAX_LINES and "Longer than 350 lines because" not in head:
                too_long.append(f"{path.relative_to(REPO)}: {len(lines)} lines")
    assert not too_long, "split these, or say at the top why not ('Longer than 350 lines because ...'):\n" + \
        "\n".join(too_long)
