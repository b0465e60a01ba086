"""`snakemake --report` after the smoke run: every figure and table is in its category."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import snakemake

CATEGORIES = ["Training", "HTSR alpha", "Correlation Traps", "Progress measures", "Phases and tables", "Detector",
              "Mechanism"]
# antigrok.mechanism's figures exist for MNIST MLP experiments only (workflow/rules/mechanism.smk)
MECHANISM_FIGURES = ["prototypes", "largest_weight", "trap_removal", "shuffled_confusion"]
FIGURE_CATEGORY = {
    "accuracy": "Training",
    "alpha": "HTSR alpha",
    "esd": "HTSR alpha",
    "traps": "Correlation Traps",
    "progress": "Progress measures",
    "detector": "Detector",
}
TABLE_CATEGORY = {
    "phase_edges": "Phases and tables",
    "table1_alpha": "Phases and tables",
    "table2_traps": "Phases and tables",
    "table4_mp_fit": "Phases and tables",
    "detectors": "Detector",
    "detector_summary": "Detector",
    "mechanism": "Mechanism",
}


def report_categories(html: str) -> dict[str, list[str]]:
    """Category -> the file names in it, from the results index the report embeds as JSON."""
    start = html.index('"Training": {')
    # The index is one JSON object: walk back to its opening brace and parse it whole.
    opening = html.rindex("{", 0, start)
    index, _ = json.JSONDecoder().raw_decode(html[opening:])
    return {
        category: sorted(Path(path).name for paths in subcategories.values() for path in paths)
        for category, subcategories in index.items()
    }


def expected_items(workdir: Path) -> dict[str, list[str]]:
    config = yaml.safe_load((workdir / "tests" / "smoke.yaml").read_text())
    expected = {category: [] for category in CATEGORIES}
    for experiment, settings in config["experiments"].items():
        for weight_decay in settings["weight_decays"]:
            for name, category in FIGURE_CATEGORY.items():
                expected[category].append(f"{name}_{experiment}_wd{float(weight_decay)}.png")
            if settings["model"]["name"] == "mlp" and settings["dataset"]["name"] == "mnist":
                expected["Mechanism"] += [f"{name}_{experiment}_wd{float(weight_decay)}.png" for name in MECHANISM_FIGURES]
    for name, category in TABLE_CATEGORY.items():
        expected[category].append(f"{name}.html")
    return {category: sorted(names) for category, names in expected.items()}


@pytest.mark.slow
def test_report_html_and_zip_hold_every_figure_and_table_in_its_category(smoke_workdir):
    expected = expected_items(smoke_workdir)
    snakemake(smoke_workdir, "--report", "report.html")
    html = (smoke_workdir / "report.html").read_text()
    assert report_categories(html) == expected
    # One caption per item, rendered with the config values (Jinja), not left as templates.
    captions = re.findall(r'"caption": "((?:[^"\\]|\\.)*)"', html)
    assert len(captions) == sum(len(names) for names in expected.values())
    assert not [caption for caption in captions if "{{" in caption or "{%" in caption]
    assert "the critical alpha = 2.0 (htsr.alpha_critical)" in html

    snakemake(smoke_workdir, "--report", "report.zip")
    with zipfile.ZipFile(smoke_workdir / "report.zip") as archive:
        names = archive.namelist()
        assert report_categories(archive.read("report/report.html").decode()) == expected
    stored = sorted(Path(name).name for name in names if "/data/raw/" in name)
    assert stored == sorted(name for names in expected.values() for name in names)
