"""docs/monitor.md: its three snippets run as they are (plain PyTorch, Lightning, Hugging Face) and
none stops a run on an alarm; its table of what the alarms are worth is what the committed study
tables say (antigrok.study.rule_worth reads them)."""

import re
import warnings

import pandas as pd
import pytest

from antigrok.study import rule_worth
from conftest import REPO

DOC = REPO / "docs" / "monitor.md"
SNIPPET = re.compile(r"<!-- test: (?P<name>[\w-]+) -->\n```python\n(?P<code>.*?)\n```", re.S)
WORTH_ROW = re.compile(r"^\| `(?P<rule>[^`]+)` \| \[(?P<study>[^\]]+)\]\([^)]*\) \| (?P<in_time>[^|]+?) \| "
                       r"(?P<early>\d+) \| (?P<false_alarms>[^|]+?) \|$", re.M)


def snippets() -> dict[str, str]:
    return {match["name"]: match["code"] for match in SNIPPET.finditer(DOC.read_text())}


def test_the_doc_has_the_three_snippets():
    assert list(snippets()) == ["plain", "lightning", "transformers"]


@pytest.mark.parametrize("name", ["plain", "lightning", "transformers"])
def test_snippet_runs(name, tmp_path, monkeypatch, one_torch_thread):
    # One torch thread: the small MLP's 300 steps took 2x the CPU in two threads beside the other worker.
    if name != "plain":
        pytest.importorskip({"lightning": "lightning.pytorch", "transformers": "transformers"}[name])
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(snippets()[name], f"docs/monitor.md:{name}", "exec"), {"__name__": "__main__"})
    rows = pd.read_csv(tmp_path / "spectra.csv")
    assert sorted(rows.step.unique()) == [100, 200, 300]
    assert set(rows.layer) == {"fc1", "fc2", "fc3"} and rows.loc[rows.layer != "fc3", "alpha"].notna().all()


def test_no_snippet_stops_a_run_on_an_alarm():
    assert not [name for name, code in snippets().items() if "stop_on" in code or "should_stop" in code]


def test_the_worth_table_is_the_committed_studies():
    """Every row of "What the alarms are worth" is what antigrok.study.rule_worth reads from the study's
    committed tables, and each of the paper's rules is there for every study."""
    text = DOC.read_text()
    section = text[text.index("## What the alarms are worth"):text.index("## How it works")]
    rows = [match.groupdict() for match in WORTH_ROW.finditer(section)]
    for row in rows:
        (worth,) = [entry for entry in rule_worth.worth_in_studies(row["rule"]) if entry.study == row["study"]]
        assert (row["in_time"], int(row["early"]), row["false_alarms"]) == (worth.in_time, worth.n_early,
                                                                            worth.false_alarms), row
    studies = rule_worth.study_names()
    assert studies
    for rule in ("paper_average_alpha_below_2", "paper_any_trap", "paper_alpha_and_trap"):
        assert sorted(row["study"] for row in rows if row["rule"] == rule) == studies
