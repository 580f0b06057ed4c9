"""A problem found while validating an experiment file: the field it is about and what to do.

Kept apart from the YAML types (experiments/schema.py) so that every validator (schema, custom metrics) can
report problems without importing the types it validates. The loader turns paths into file:line.
"""

from __future__ import annotations

from dataclasses import dataclass

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str

    @property
    def field(self) -> str:
        return format_path(self.path)


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
