"""The three snippets of docs/monitor.md run as they are (plain PyTorch, Lightning, Hugging Face)."""

import re
import warnings

import pandas as pd
import pytest

from conftest import REPO

DOC = REPO / "docs" / "monitor.md"
SNIPPET = re.compile(r"<!-- test: (?P<name>[\w-]+) -->\n```python\n(?P<code>.*?)\n```", re.S)


def snippets() -> dict[str, str]:
    return {match["name"]: match["code"] for match in SNIPPET.finditer(DOC.read_text())}


def test_the_doc_has_the_three_snippets():
    assert list(snippets()) == ["plain", "lightning", "transformers"]


@pytest.mark.parametrize("name", ["plain", "lightning", "transformers"])
def test_snippet_runs(name, tmp_path, monkeypatch):
    if name != "plain":
        pytest.importorskip({"lightning": "lightning.pytorch", "transformers": "transformers"}[name])
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(snippets()[name], f"docs/monitor.md:{name}", "exec"), {"__name__": "__main__"})
    rows = pd.read_csv(tmp_path / "spectra.csv")
    assert sorted(rows.step.unique()) == [100, 200, 300]
    assert set(rows.layer) == {"fc1", "fc2", "fc3"} and rows.loc[rows.layer != "fc3", "alpha"].notna().all()
