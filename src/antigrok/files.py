"""Results files are written atomically: to a temporary name beside the file, then renamed into
place, so a killed job never leaves a file that looks complete but is not (snakemake would take a
half-written CSV of a job that died after writing it for a finished one)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def _partial(path: Path) -> Path:
    return path.with_name(f".partial.{path.name}")


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` via a temporary file and a rename; makes the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial(path)
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def write_csv_atomically(table: pd.DataFrame, path: str | Path) -> None:
    """``table.to_csv(path, index=False)``, atomically (see ``write_text_atomically``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial(path)
    table.to_csv(partial, index=False)
    partial.replace(path)
