"""Plain-text summary tables for the end of long commands."""
from __future__ import annotations

import click


def format_table(headers, rows, title: str | None = None) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    out = [title] if title else []
    out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells[0], widths))))
    out.append(line)
    for r in cells[1:]:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def _fmt(c) -> str:
    if isinstance(c, float):
        return f"{c:.3f}" if abs(c) < 1000 else f"{c:.1f}"
    return str(c)


def print_table(headers, rows, title: str | None = None) -> None:
    click.echo(format_table(headers, rows, title))
