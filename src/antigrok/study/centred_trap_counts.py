"""Which runs have a centred trap (a Correlation Trap that is not the entries' mean), per layer,
learning rate and weight decay, from the runs' committed traps.csv (issue 33).

traps.csv's ``num_traps_centered`` counts the shuffled eigenvalues above WeightWatcher's trap
threshold once the mean is subtracted (antigrok.spectra.traps). A run counts as having one in a layer when
any checkpoint has ``num_traps_centered >= 1`` in the window: ``before_crossing`` (steps before the
collapse crossing in a collapsing run, every step in the others: what a warning could have used)
or ``whole_run`` (every step). Counts carry exact (Clopper-Pearson) 95% intervals.
"""

from __future__ import annotations

import pandas as pd

from antigrok.study.phases import edges_from_phases
from antigrok.study.warning_rules import exact_binomial_interval

WINDOWS = ("before_crossing", "whole_run")


def run_centred_traps(traps: pd.DataFrame, phases: pd.DataFrame) -> list[dict]:
    """One row per layer of one run: whether and from which step it has a centred trap, per window."""
    edges = edges_from_phases(phases)
    rows = []
    for layer, part in traps.groupby("layer", sort=True):
        trapped = part.loc[part["num_traps_centered"].fillna(0) >= 1, "step"]
        before = trapped[trapped < edges.collapse_step] if edges.collapse_step is not None else trapped
        rows.append({"layer": layer, "collapses": edges.collapse_step is not None,
                     "collapse_step": edges.collapse_step,
                     "first_centred_trap_step": int(trapped.min()) if len(trapped) else None,
                     "before_crossing": bool(len(before)), "whole_run": bool(len(trapped))})
    return rows


def centred_trap_summary(runs: pd.DataFrame, keys=("experiment", "weight_decay", "layer")) -> pd.DataFrame:
    """Per group and window: runs with a centred trap out of the group's runs, with the exact interval."""
    rows = []
    for key, group in runs.groupby(list(keys), sort=True):
        for window in WINDOWS:
            count, total = int(group[window].sum()), len(group)
            low, high = exact_binomial_interval(count, total)
            rows.append({**dict(zip(keys, key)), "window": window, "n_runs": total,
                         "n_collapsing": int(group["collapses"].sum()), "n_with_centred_trap": count,
                         "share": count / total, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)
