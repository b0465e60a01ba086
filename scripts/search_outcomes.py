"""The outcome of every run of the transformer search by its pre-registered definitions (issue 36).

    python scripts/search_outcomes.py results            # a workflow's results/
    python scripts/search_outcomes.py docs/reference/modadd_search --out docs/reference/modadd_search/outcomes.csv

The folder holds ``runs/{experiment}/wd{weight_decay}/seed{seed}/train_log.csv``. Each run is read by
``antigrok.study.search_outcome.classify`` (the definitions: its module docstring and
docs/reference/modadd_search/README.md); the table is printed as Markdown and, with ``--out``,
written as CSV. A run whose train job stopped on a non-finite loss has no train_log.csv and is not
listed: it is a breakdown by its job's log.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from antigrok.study.search_outcome import outcome_table
from antigrok.table_format import frame_to_markdown
from compare_runs import run_dirs  # scripts/ is on the path when a script of it runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder with runs/{experiment}/wd*/seed*/train_log.csv")
    parser.add_argument("--out", type=Path, help="write the table here as CSV")
    args = parser.parse_args(argv)
    runs = run_dirs(args.root)
    if not runs:
        raise SystemExit(f"no runs/*/wd*/seed*/train_log.csv under {args.root}; give a results folder")
    table = outcome_table({name: path / "train_log.csv" for name, path in runs.items()})
    if args.out:
        table.to_csv(args.out, index=False)
    print(frame_to_markdown(table, "Outcomes of the search's runs",
                            "By the definitions of antigrok.study.search_outcome (committed before the first run)."))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
