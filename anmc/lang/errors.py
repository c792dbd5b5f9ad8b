"""Diagnostics: `file:line:col: message`, the source line, and a caret under the fault.

One `AnmError` carries every error found in a file (the checker does not stop at the first), so a
user fixes them all in one pass. Warnings travel separately (`Diagnostic.severity == "warning"`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from anmc.errors import UserError
from anmc.lang.ast import Span, source_lines


@dataclass(frozen=True)
class Diagnostic:
    message: str
    filename: str
    line: int
    column: int
    source_line: str = ""
    width: int = 1
    severity: str = "error"  # "error" | "warning"

    def format(self) -> str:
        """`file:line:col: error: message`, then the line and a caret (or a run of carets) under it.

        A diagnostic about the whole file (line 0) is just `file: error: message`."""
        if self.line <= 0:  # about the file as a whole (a missing block, an unreadable file): no position
            return f"{self.filename}: {self.severity}: {self.message}"
        head = f"{self.filename}:{self.line}:{self.column}: {self.severity}: {self.message}"
        if not self.source_line:
            return head
        text = self.source_line.rstrip("\n").expandtabs(1)
        width = max(1, min(self.width, len(text) - self.column + 1))
        caret = " " * (self.column - 1) + "^" + "~" * (width - 1)
        return f"{head}\n    {text}\n    {caret}"

    def __str__(self) -> str:
        return self.format()


def diagnostic_at(
    message: str, span: Span | None, source: str, filename: str, severity: str = "error"
) -> Diagnostic:
    """A diagnostic pointing at `span` of `source` (a span of None points at the file as a whole)."""
    if span is None or span.line <= 0:
        return Diagnostic(message, filename, 0, 0, "", 1, severity)
    lines = source_lines(source)
    line_text = lines[span.line - 1] if span.line - 1 < len(lines) else ""
    width = span.end_column - span.column if span.end_line == span.line else len(line_text) - span.column + 1
    return Diagnostic(message, filename, span.line, span.column, line_text, max(1, width), severity)


class AnmError(UserError):
    """One or more errors in `.anm` text. `str(err)` is the full report, one block per error."""

    def __init__(self, diagnostics: list[Diagnostic] | Diagnostic):
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics = list(diagnostics)
        super().__init__(self.report())

    def report(self) -> str:
        n = len(self.diagnostics)
        body = "\n".join(d.format() for d in self.diagnostics)
        return body if n == 1 else f"{body}\n{n} errors"

    @property
    def first(self) -> Diagnostic:
        return self.diagnostics[0]


def did_you_mean(name: str, candidates) -> str:
    """`"; did you mean 'theta'?"` when a close candidate exists, else ``""``."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
