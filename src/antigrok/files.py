"""Results files are written atomically: to a temporary name beside the file, then renamed into
place, so a killed job never leaves a file that looks complete but is not (snakemake would take a
half-written CSV of a job that died after writing it for a finished one).

Every writer of a results file, checkpoint, resume state or dataset goes through
``write_atomically``. The temporary name ends in ``.partial`` so no glob of finished files
(``step*.pt``, ``*.csv``) ever matches it; a write that raises removes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

PARTIAL_SUFFIX = ".partial"


def partial_path(path: str | Path) -> Path:
    """Where ``path`` is written before the rename: ``.name.partial`` in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call ``write(temporary_path)``, then rename the temporary file to ``path``; makes the folder.

    ``write`` must not infer a format from the temporary name's suffix (pass it explicitly, as
    ``savefig(..., format=...)``). If ``write`` raises, the temporary file is removed and ``path``
    is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        write(partial)
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_atomically(path, lambda partial: partial.write_text(text, encoding="utf-8"))


def write_csv_atomically(table: pd.DataFrame, path: str | Path) -> None:
    """``table.to_csv(path, index=False)``, atomically."""
    write_atomically(path, lambda partial: table.to_csv(partial, index=False))


def write_safetensors(state_dict, path: str | Path) -> None:
    """A state_dict's tensors as safetensors (read back without unpickling anything), atomically."""
    import numpy as np
    from safetensors.numpy import save_file

    arrays = {name: np.ascontiguousarray(tensor.detach().cpu().numpy()) for name, tensor in state_dict.items()}
    write_atomically(path, lambda partial: save_file(arrays, str(partial)))
