"""The CLI's promise for bad input, checked the same way everywhere: exit 2, one line, no traceback."""

from __future__ import annotations


def one_line_error(code: int, err: str, *fragments: str, prog: str = "abgate") -> None:
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], err
