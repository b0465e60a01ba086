"""Compare two results folders: every CSV (and the train checkpoints' tensors) must be identical.

    python scripts/compare_results.py OLD_RESULTS NEW_RESULTS

Prints one line per file that differs (or exists on one side only) and a summary; exit 1 if any.
CSV columns that time the work (``analysis_seconds`` of htsr.csv) are left out; checkpoint files
(*.pt) are compared by their tensors and metadata, not their bytes; spectra.npz by its arrays.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import torch

TIMING_COLUMNS = {"analysis_seconds"}


def files(root: Path, pattern: str) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob(pattern) if ".snakemake" not in p.parts}


def same_csv(a: Path, b: Path) -> bool:
    """Equal text in every column but the timing ones."""
    one, two = list(csv.reader(a.open())), list(csv.reader(b.open()))
    if not one or not two or one[0] != two[0]:
        return one == two
    keep = [i for i, name in enumerate(one[0]) if name not in TIMING_COLUMNS]
    return [[row[i] for i in keep] for row in one] == [[row[i] for i in keep] for row in two]


def same_arrays(a: Path, b: Path) -> bool:
    with np.load(a) as one, np.load(b) as two:
        return sorted(one.files) == sorted(two.files) and all(np.array_equal(one[k], two[k]) for k in one.files)


def same_value(one, two) -> bool:
    """Equal, recursively: tensors by torch.equal (dtype and shape too), containers item by item."""
    if isinstance(one, torch.Tensor) or isinstance(two, torch.Tensor):
        return (isinstance(one, torch.Tensor) and isinstance(two, torch.Tensor) and one.dtype == two.dtype
                and one.shape == two.shape and torch.equal(one, two))
    if isinstance(one, dict) and isinstance(two, dict):
        return list(one) == list(two) and all(same_value(one[k], two[k]) for k in one)
    if isinstance(one, (list, tuple)) and isinstance(two, (list, tuple)):
        return type(one) is type(two) and len(one) == len(two) and all(map(same_value, one, two))
    return type(one) is type(two) and one == two


def same_checkpoint(a: Path, b: Path) -> bool:
    """Checkpoints and prepared datasets: the same tensors and metadata (not the same bytes)."""
    return same_value(torch.load(a, weights_only=True), torch.load(b, weights_only=True))


def main(old: Path, new: Path) -> int:
    problems, compared = [], 0
    for pattern, same in (("*.csv", same_csv), ("*.npz", same_arrays), ("*.pt", same_checkpoint)):
        left, right = files(old, pattern), files(new, pattern)
        for name in sorted(left ^ right):
            problems.append(f"only in {'old' if name in left else 'new'}: {name}")
        for name in sorted(left & right):
            compared += 1
            if not same(old / name, new / name):
                problems.append(f"differs: {name}")
    for line in problems:
        print(line)
    print(f"{compared} files compared, {len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
