"""HTML helpers shared by the report pages (:mod:`vfl.report`, :mod:`vfl.model_reports`, :mod:`vfl.audience_report`).

Number formatting (``fmt``, ``fmt_bytes``, intervals), escaping and the ``grid`` table.
"""

from __future__ import annotations

import html
import math
from typing import Any


def fmt(value: Any, digits: int = 4) -> str:
    """Integers as integers (with thousands separators), floats with ``digits`` decimals, ``None`` as n/a."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and abs(value) < 10 ** (-digits):
            return f"{value:.2e}"
        if abs(value) >= 1000:
            return f"{value:,.1f}"
        return f"{value:.{digits}f}"
    return str(value)


def fmt_bytes(value: Any) -> str:
    return f"{int(value):,} bytes" if value is not None else "n/a"


def _interval(iv: dict[str, Any] | None, digits: int = 3, *, prefix: bool = True) -> str:
    if not iv or iv.get("low") is None or iv.get("high") is None:
        return ""
    level = iv.get("level")
    pct = f"{round(level * 100)}% interval " if prefix and isinstance(level, (int, float)) else ""
    return f"{pct}{fmt(iv['low'], digits)} to {fmt(iv['high'], digits)} ({iv.get('method', '')})"


class Num(str):
    """Preformatted text shown right-aligned like a number (e.g. ``1,234 bytes``)."""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text = cell if isinstance(cell, str) else fmt(cell)
            numeric = isinstance(cell, Num) or not isinstance(cell, str)
            cls = ' class="num"' if i >= numeric_from and numeric else ""
            cells.append(f"<td{cls}>{_esc(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
