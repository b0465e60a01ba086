"""Tables as text: numbers to three significant digits, a frame as a Markdown table or as a
standalone HTML page (the report shows HTML inline)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def format_number(value, digits: int = 3) -> str:
    """``digits`` significant digits; scientific notation only where needed (p-values); "—" for
    what is missing (None, NaN, pd.NA, infinite)."""
    if value is None or pd.isna(value) or not np.isfinite(float(value)):
        return "—"
    return f"{float(value):.{digits}g}"


def markdown_table(headers, rows) -> list[str]:
    """The lines of a Markdown table: the header, its rule, one line per row of cell strings."""
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + [
        "| " + " | ".join(cells) + " |" for cells in rows]


def format_cell(mean, std, n_seeds) -> str:
    """ "mean ± std (n)"; "—" for what is missing."""
    if n_seeds == 0:
        return "— (0)"
    return f"{format_number(mean)} ± {format_number(std)} ({int(n_seeds)})"


def frame_to_markdown(frame: pd.DataFrame, title: str, caption: str) -> str:
    """A plain Markdown table of ``frame`` (floats to three significant digits)."""
    rows = ([format_number(v) if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False))
    return "\n".join([f"# {title}", "", caption, "", *markdown_table(list(frame.columns), rows)]) + "\n"


TABLE_STYLE = """<style>
body { font-family: sans-serif; font-size: 13px; margin: 1em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; }
tr:nth-child(even) td { background: #fafafa; }
</style>"""


def frame_to_html(frame: pd.DataFrame, title: str, note: str = "") -> str:
    """A standalone HTML page holding ``frame`` as a table (NaN shown as an empty cell)."""
    table = frame.to_html(index=False, na_rep="", float_format=lambda value: f"{value:.4g}", border=0)
    paragraph = f"<p>{note}</p>" if note else ""
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>{TABLE_STYLE}</head>" f"<body><h3>{title}</h3>{paragraph}{table}</body></html>\n"
