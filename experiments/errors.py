"""Errors that reach a user.

    AbgateError                 a message for a person; the CLI prints it and exits non-zero
    ├── InputError              bad input (a file, a flag, a request): exit code 2, HTTP 4xx
    └── ArtifactError           a model or index that cannot be used as asked: exit code 1

Messages are full sentences that say where (file, line, field) and how to fix the call.
Exceptions are for programmer errors everywhere else.
"""

from __future__ import annotations


class AbgateError(Exception):
    exit_code = 1

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        super().__init__(self.located())

    def located(self) -> str:
        where = []
        if self.file:
            where.append(str(self.file) + (f":{self.line}" if self.line is not None else ""))
        if self.field:
            where.append(self.field)
        return ": ".join(where + [self.message])


class InputError(AbgateError):
    exit_code = 2


class ArtifactError(AbgateError):
    exit_code = 1
