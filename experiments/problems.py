"""A problem found while validating an experiment file: the field it is about and what to do.

Kept apart from the YAML types (experiments/schema.py) so that every validator (schema, custom metrics) can
report problems without importing the types it validates. The loader turns paths into file:line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str

    @property
    def field(self) -> str:
        return format_path(self.path)


_PLAIN = re.compile(r"^[A-Za-z0-9_<>-]{1,64}$")


def format_path(path: Path) -> str:
    """`arms[1].weight`; a key that is not a plain name (a space, a dot, a line break, 500 characters) is
    quoted and cut short, so the `file:line: field: message` line stays one line a person can read."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = str(part)
        if not _PLAIN.match(text):
            quoted = repr(text)
            out += f"[{quoted if len(quoted) <= 40 else quoted[:35] + '...' + quoted[0]}]"
        else:
            out += f".{text}" if out else text
    return out
