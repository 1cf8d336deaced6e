"""Aligned plain-text columns, for the reports of ``explain`` and ``replay``.

The dry-run commands print to a terminal: each table is rows of cells,
padded so that columns line up, counts aligned on the right. Recorded
traffic is untrusted text, so every cell goes through :func:`printable`
first: a control character in a recorded value is shown escaped, never
sent to the terminal.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Final

# Longer values are cut in text output (JSON output always has them whole).
MAX_CELL: Final = 72


def printable(text: str) -> str:
    """``text`` with each control character written as an escape (``\\x1b``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shorten(text: str, limit: int = MAX_CELL) -> str:
    """``text``, made printable and cut to ``limit`` characters with ``...``."""
    text = printable(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def show(value: str | None) -> str:
    """A value for a table: ``-`` when absent, else shortened."""
    return "-" if value is None else shorten(value)


def align_columns(
    rows: Sequence[Sequence[str]],
    *,
    right: Collection[int] = (),
    indent: str = "",
) -> list[str]:
    """The rows as lines, each column padded to its widest cell.

    Columns whose index is in ``right`` are aligned on the right (counts);
    the others on the left. Cells are separated by two spaces, and trailing
    spaces are removed.
    """
    if not rows:
        return []
    columns = max(len(row) for row in rows)
    widths = [0] * columns
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))

    lines = []
    for row in rows:
        cells = []
        for index, cell in enumerate(row):
            if index in right:
                cells.append(cell.rjust(widths[index]))
            else:
                cells.append(cell.ljust(widths[index]))
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines
