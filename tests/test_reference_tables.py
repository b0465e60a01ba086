"""The committed CPU reference's Table 1, recomputed here from its runs' own files: the table holds
the numbers its rule says it holds (per run and phase, alpha at the last checkpoint inside the phase;
per cell, the mean and sample std over the seeds that reach the phase)."""

import numpy as np
import pandas as pd
import pytest

from conftest import REPO

REFERENCE = REPO / "docs" / "reference" / "cpu"


def alpha_at_phase_ends(run) -> dict[tuple[str, str], float]:
    phases, htsr = pd.read_csv(run / "phases.csv"), pd.read_csv(run / "htsr.csv")
    values = {}
    for phase in ("pre-grokking", "grokking", "anti-grokking"):
        steps = set(phases.loc[phases["phase"] == phase, "step"]) & set(htsr["step"])
        if steps:
            at_end = htsr[htsr["step"] == max(steps)].set_index("layer")["alpha"]
            values.update({(phase, layer): alpha for layer, alpha in at_end.items()})
            values[(phase, "average")] = at_end[["fc1", "fc2"]].mean() if at_end[["fc1", "fc2"]].notna().all() else np.nan
    return values


def test_table1_of_the_cpu_reference_equals_its_runs():
    table = pd.read_csv(REFERENCE / "tables" / "table1_alpha.csv")
    checked = 0
    for cell in table.itertuples():
        runs = sorted((REFERENCE / "runs" / cell.experiment / f"wd{cell.weight_decay}").glob("seed*"))
        values = [alpha_at_phase_ends(run).get((cell.phase, cell.layer), np.nan) for run in runs]
        values = [value for value in values if np.isfinite(value)]
        assert cell.n_seeds == len(values), cell
        if values:
            assert cell.mean == pytest.approx(np.mean(values), rel=1e-12), cell
            if len(values) > 1:
                assert cell.std == pytest.approx(np.std(values, ddof=1), rel=1e-9), cell
            checked += 1
    assert checked == 18  # 2 weight decays x 3 phases x 4 layers, less the cells no run reaches or fits
