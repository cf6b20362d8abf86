"""Errors that point at the diagram text: file:line:col, the line, a caret, and the reason."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A region of source text; lines and columns count from 1."""

    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None

    def advanced(self, text: str, offset: int) -> Span:
        """Where `text`, starting at this span, has its character number `offset` (newlines counted)."""
        before = text[:offset]
        newlines = before.count("\n")
        if not newlines:
            return Span(self.line, self.column + offset)
        return Span(self.line + newlines, offset - before.rfind("\n"))


class FusionError(Exception):
    """A syntax or type error in a `.fus` source, rendered like a compiler diagnostic."""

    def __init__(self, message: str, span: Span | None = None, *, source: str | None = None,
                 filename: str = "<string>") -> None:
        super().__init__(message)
        self.message = message
        self.span = span
        self.source = source
        self.filename = filename

    def located(self, source: str, filename: str) -> FusionError:
        """The same error, attached to the text it refers to."""
        return FusionError(self.message, self.span, source=source, filename=filename)

    def __str__(self) -> str:
        if self.span is None:
            return f"{self.filename}: error: {self.message}"
        head = f"{self.filename}:{self.span.line}:{self.span.column}: error: {self.message}"
        if self.source is None:
            return head
        # lines end at "\n" only, as lark counts them: str.splitlines would also break at a form
        # feed, a vertical tab or U+2028, and show the wrong line
        lines = self.source.split("\n")
        if not 1 <= self.span.line <= len(lines):
            return head
        # one column per character, as spans count them: a tab, a form feed or a line separator
        # shows as a space, not as a jump of the terminal's cursor
        text = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in lines[self.span.line - 1])
        width = 1
        if self.span.end_line == self.span.line and self.span.end_column:
            width = max(1, self.span.end_column - self.span.column)
        caret = " " * (self.span.column - 1) + "^" * width
        return f"{head}\n    {text}\n    {caret}"
