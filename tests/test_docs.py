"""The documentation stays true to the code: config keys, links, and the columns of every CSV.

- docs/configuration.md lists exactly the keys of workflow/schemas/config.schema.yaml, each with the
  schema's default, and names in its "read by" column every rule that reads the key.
- Every dotted name of the package (`antigrok.study.detector.evaluate_run_alarms`) in README.md and
  docs/*.md names a module or an attribute that exists, so that a moved function leaves no stale name.
  The folders under docs/reference/ are left out: they name the code of the commit that made them.
- Every relative link in README.md and docs/ resolves, anchors included. External links (with a
  scheme such as https:) are not fetched: the build machines are offline. Links inside HTML comments
  are not links; the only ones allowed are README.md's headline figures, and once those files exist
  the block must be uncommented.
- Every column the code writes to the per-run CSVs and the tables is documented in docs/results.md,
  and every column documented there is written.
"""

from __future__ import annotations

import importlib
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO

DOCS = REPO / "docs"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
CONFIGURATION = DOCS / "configuration.md"
RESULTS = DOCS / "results.md"
README = REPO / "README.md"
HEADLINE_COMMENT = "headline figures:"


# ----------------------------------------------------------------------------- markdown helpers

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
COMMENT = re.compile(r"<!--(.*?)-->", re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.MULTILINE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def without_fences(text: str) -> str:
    """The text with fenced code blocks blanked (their lines kept, so line numbers stay)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def links_in(text: str) -> list[str]:
    """Targets of the inline links and images of markdown text (code spans are not links)."""
    return LINK.findall(CODE_SPAN.sub("code", text))


def body_links(text: str) -> list[str]:
    """Links of a page outside code blocks and HTML comments."""
    return links_in(COMMENT.sub("", without_fences(text)))


def comment_links(text: str) -> list[tuple[str, list[str]]]:
    """(comment text, its link targets) of every HTML comment outside code blocks that holds links."""
    found = []
    for match in COMMENT.finditer(without_fences(text)):
        targets = links_in(match.group(1))
        if targets:
            found.append((match.group(1), targets))
    return found


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lowercased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for _, heading in HEADING.findall(without_fences(path.read_text())):
        anchor = github_anchor(heading)
        count = seen.get(anchor, 0)
        anchors.add(anchor if count == 0 else f"{anchor}-{count}")
        seen[anchor] = count + 1
    return anchors


def broken_link(page: Path, target: str) -> str | None:
    """Why a relative link of ``page`` does not resolve, or None when it does."""
    path_part, _, anchor = target.partition("#")
    destination = (page.parent / path_part).resolve() if path_part else page
    if not destination.is_relative_to(REPO):
        return f"{target}: leaves the repository ({destination})"
    if not destination.exists():
        return f"{target}: {destination.relative_to(REPO)} does not exist"
    if anchor and destination.suffix == ".md" and anchor not in anchors_of(destination):
        return f"{target}: no heading with anchor #{anchor} in {destination.relative_to(REPO)}"
    return None


def table_rows(text: str) -> list[list[str]]:
    """The cells of every markdown table row of ``text``, header and separator rows left out."""
    rows = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if not line.startswith("|"):
            continue
        if re.fullmatch(r"\|[\s|:-]+\|?", line):
            continue
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if re.fullmatch(r"\|[\s|:-]+\|?", following):
            continue  # a header row
        cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
        rows.append([cell.strip() for cell in cells])
    return rows


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# ----------------------------------------------------------------------------- configuration

def schema_leaves(node: dict, prefix: str = "") -> dict[str, dict]:
    """{dotted key: its schema} of every key that holds a value; `<name>` for user-named entries."""
    leaves = {}
    for key, child in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        named_entries = child.get("additionalProperties")
        if "properties" in child:
            leaves.update(schema_leaves(child, f"{path}."))
        elif isinstance(named_entries, dict) and "properties" in named_entries:
            leaves.update(schema_leaves(named_entries, f"{path}.<name>."))
        else:
            leaves[path] = child
    return leaves


def documented_keys() -> dict[str, list[str]]:
    """{key: its row's cells} of the key tables of docs/configuration.md (first cell `key.path`)."""
    keys = {}
    for cells in table_rows(CONFIGURATION.read_text()):
        names = backticked(cells[0])
        if len(names) == 1 and "." in names[0] and cells[0] == f"`{names[0]}`" and len(cells) == 4:
            assert names[0] not in keys, f"{names[0]} is documented twice in docs/configuration.md"
            keys[names[0]] = cells
    return keys


@pytest.fixture(scope="module")
def schema_keys() -> dict[str, dict]:
    return schema_leaves(yaml.safe_load(SCHEMA.read_text()))


def test_every_schema_key_is_documented_and_every_documented_key_exists(schema_keys):
    documented = set(documented_keys())
    assert len(schema_keys) > 50, "the schema walk found too few keys"
    undocumented = sorted(set(schema_keys) - documented)
    unknown = sorted(documented - set(schema_keys))
    assert not undocumented, f"keys of config.schema.yaml missing from docs/configuration.md: {undocumented}"
    assert not unknown, f"keys in docs/configuration.md that config.schema.yaml does not have: {unknown}"


def same_value(documented, default) -> bool:
    if isinstance(default, bool) or isinstance(documented, bool):
        return documented is default
    if isinstance(default, (int, float)) and isinstance(documented, (int, float)):
        return math.isclose(documented, default, rel_tol=1e-12)
    if isinstance(default, list) and isinstance(documented, list):
        return len(default) == len(documented) and all(map(same_value, documented, default))
    if isinstance(default, dict) and isinstance(documented, dict):
        return default.keys() == documented.keys() and all(same_value(documented[k], default[k]) for k in default)
    return documented == default


def test_documented_defaults_are_the_schemas(schema_keys):
    wrong = []
    for key, cells in documented_keys().items():
        schema = schema_keys.get(key, {})
        default_cell = cells[1]
        if "default" not in schema:
            if not default_cell.startswith("none"):
                wrong.append(f"{key}: the schema has no default; the cell should start with 'none', not {default_cell!r}")
            continue
        values = backticked(default_cell)
        if not values or not default_cell.startswith("`"):
            wrong.append(f"{key}: default cell {default_cell!r} should start with the schema's default in backticks")
            continue
        documented = yaml.safe_load(values[0])
        if not same_value(documented, schema["default"]):
            wrong.append(f"{key}: documented default {values[0]!r}, schema default {schema['default']!r}")
    assert not wrong, "\n".join(wrong)


RULE_START = re.compile(r"^(\s*)rule(?:\s+(\w+))?\s*:\s*$")
CONFIG_PATH = re.compile(r"config((?:\[\s*\"[A-Za-z0-9_]+\"\s*\])+)")
SCRIPT = re.compile(r"script:\s*\n\s*\"([^\"]+)\"")


def rule_blocks(text: str) -> list[tuple[str, str]]:
    """(rule name, the rule's body) of every rule of a .smk file; a rule named by ``name: f"x_{y}"``
    is called ``x_<experiment>``."""
    lines = text.splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        match = RULE_START.match(lines[index])
        if not match:
            index += 1
            continue
        indent, name = len(match.group(1)), match.group(2)
        end = index + 1
        while end < len(lines):
            line = lines[end]
            if line.strip() and not line.lstrip().startswith("#") and len(line) - len(line.lstrip()) <= indent:
                break
            end += 1
        body = "\n".join(lines[index + 1:end])
        if name is None:
            named = re.search(r"name:\s*\n\s*f?\"([^\"]+)\"", body)
            assert named, f"an anonymous rule without name: in\n{body[:500]}"
            name = re.sub(r"\{\w+\}", "<experiment>", named.group(1))
        blocks.append((name, body))
        index = end
    return blocks


def keys_read_by_rules(schema_keys) -> dict[str, set[str]]:
    """{config key: rules whose params/threads/resources or script read it}, from the rule files.

    `experiments` is left out: its entries reach the rules through functions (experiment_json,
    dataset_identity), which a text scan cannot follow; configuration.md states those by hand.
    """
    readers: dict[str, set[str]] = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for rule, body in rule_blocks(smk.read_text()):
            texts = [body]
            script = SCRIPT.search(body)
            if script:
                script_text = (smk.parent / script.group(1)).resolve().read_text()
                texts.append(script_text.replace("snakemake.config", "config"))
            for text in texts:
                for subscript in CONFIG_PATH.findall(text):
                    path = ".".join(re.findall(r"\"([A-Za-z0-9_]+)\"", subscript))
                    if path.split(".")[0] == "experiments":
                        continue
                    matched = [key for key in schema_keys if key == path or key.startswith(f"{path}.")]
                    assert matched, f"rule {rule} reads config {path}, which is not in the schema"
                    for key in matched:
                        readers.setdefault(key, set()).add(rule)
    return readers


def test_read_by_names_every_rule_that_reads_the_key(schema_keys):
    readers = keys_read_by_rules(schema_keys)
    assert {"traps", "largest_weight"} <= readers["traps.tracy_widom_scale"], "the rule scan lost track of the rules"
    documented = documented_keys()
    missing = [
        f"{key}: read by {sorted(rules - set(backticked(documented[key][2])))} but not named in its read-by cell"
        for key, rules in sorted(readers.items())
        if key in documented and rules - set(backticked(documented[key][2]))
    ]
    assert not missing, "\n".join(missing)


# ----------------------------------------------------------------------------- links

def test_every_page_of_docs_is_listed_in_the_index():
    listed = {target.partition("#")[0] for target in body_links((DOCS / "index.md").read_text())}
    pages = {path.name for path in DOCS.glob("*.md")} - {"index.md"}
    assert not pages - listed, f"docs/index.md does not list {sorted(pages - listed)}"


def test_every_relative_link_resolves():
    broken = []
    checked = 0
    for page in markdown_files():
        for target in body_links(page.read_text()):
            if SCHEME.match(target):
                continue  # external: not fetched, the build machines are offline
            checked += 1
            reason = broken_link(page, target)
            if reason:
                broken.append(f"{page.relative_to(REPO)}: {reason}")
    assert checked > 50, f"only {checked} relative links found: the link parser is broken"
    assert not broken, "\n".join(broken)


# "antigrok.checkpoint/1" is a format tag, not a name: a name is not followed by "/"
PACKAGE_NAME = re.compile(r"\bantigrok(?:\.[A-Za-z_][A-Za-z_0-9]*)+(?![A-Za-z_0-9/])")


def resolves(dotted: str) -> bool:
    """The longest importable module prefix of DOTTED, then the rest as attributes of it."""
    parts = dotted.split(".")
    for length in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:length]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[length:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def test_every_package_name_in_the_docs_exists():
    pages = [README, *sorted(DOCS.glob("*.md"))]
    names = {(page.relative_to(REPO), name) for page in pages for name in PACKAGE_NAME.findall(page.read_text())}
    assert len(names) > 30, f"only {len(names)} package names found: the pattern is broken"
    stale = sorted(f"{page}: {name}" for page, name in names if not resolves(name))
    assert not stale, "names of nothing in the package (moved or renamed?):\n" + "\n".join(stale)


def test_the_name_checker_tells_a_moved_name():
    assert resolves("antigrok.spectra.primitives.mp_cdf") and resolves("antigrok.study.detector")
    assert not resolves("antigrok.htsr.mp_cdf") and not resolves("antigrok.no_such_module.thing")
    assert PACKAGE_NAME.findall("`antigrok.checkpoint/1` and antigrok.htsr.analyze_layer.") == ["antigrok.htsr.analyze_layer"]


def test_the_link_checker_finds_a_broken_link_and_anchor(tmp_path):
    page = DOCS / "index.md"
    assert broken_link(page, "configuration.md") is None
    assert broken_link(page, "configuration.md#keys") is None
    assert "does not exist" in broken_link(page, "no-such-page.md")
    assert "no heading" in broken_link(page, "configuration.md#no-such-heading")
    assert "leaves the repository" in broken_link(page, "../../outside.md")
    assert github_anchor("Checkpoints, log and training (`checkpoints:`, `log:`, `train:`)") == (
        "checkpoints-log-and-training-checkpoints-log-train"
    )
    assert links_in("see [a](b.md) and `[c](d.md)` and ![e](f.png \"title\")") == ["b.md", "f.png"]


def test_links_inside_html_comments_are_only_the_readme_headline_figures():
    hidden = []
    for page in markdown_files():
        for comment, targets in comment_links(page.read_text()):
            if page == README and comment.strip().startswith(HEADLINE_COMMENT):
                continue
            hidden.append(f"{page.relative_to(REPO)}: links in an HTML comment are never checked: {targets}")
    assert not hidden, "\n".join(hidden)


def test_headline_figures_are_shown_once_they_exist():
    headline = [targets for comment, targets in comment_links(README.read_text())
                if comment.strip().startswith(HEADLINE_COMMENT)]
    if not headline:
        return  # uncommented: its links are checked by test_every_relative_link_resolves
    targets = headline[0]
    assert any(target.endswith(".png") for target in targets), targets
    existing = [target for target in targets if (REPO / target).exists()]
    assert len(existing) < len(targets), (
        f"{', '.join(existing)} exist: uncomment the headline figure block at the top of README.md"
    )


# ----------------------------------------------------------------------------- results columns

def documented_columns() -> dict[str, list[str]]:
    """{CSV file name: the column names (or `<...>` patterns) its section of docs/results.md lists}."""
    text = without_fences(RESULTS.read_text())
    headings = list(HEADING.finditer(text))
    columns: dict[str, list[str]] = {}
    for number, heading in enumerate(headings):
        files = [name for name in backticked(heading.group(2)) if name.endswith(".csv")]
        if not files:
            continue
        end = headings[number + 1].start() if number + 1 < len(headings) else len(text)
        names = [name for cells in table_rows(text[heading.end():end]) for name in backticked(cells[0])]
        for file in files:
            columns[file] = names
    return columns


def pattern(name: str) -> re.Pattern:
    parts = re.split(r"<[^>]+>", name)
    return re.compile("[a-z0-9_]+".join(re.escape(part) for part in parts))


def undocumented(written: list[str], documented: list[str]) -> list[str]:
    return [column for column in written if not any(pattern(name).fullmatch(column) for name in documented)]


def assert_documented_exactly(file: str, written: list[str]):
    documented = documented_columns().get(file)
    assert documented, f"docs/results.md has no section headed `{file}` with a column table"
    missing = undocumented(written, documented)
    assert not missing, f"{file} columns not documented in docs/results.md: {missing}"
    never_written = [name for name in documented if not any(pattern(name).fullmatch(c) for c in written)]
    assert not never_written, f"docs/results.md documents {file} columns the code does not write: {never_written}"


def test_train_log_columns():
    from antigrok.training.train import TRAIN_LOG_COLUMNS

    assert_documented_exactly("train_log.csv", TRAIN_LOG_COLUMNS)


def test_htsr_columns():
    from antigrok.htsr import HTSR_COLUMNS

    assert_documented_exactly("htsr.csv", HTSR_COLUMNS)


def test_traps_columns():
    from antigrok.spectra.traps import TRAPS_COLUMNS

    assert_documented_exactly("traps.csv", TRAPS_COLUMNS)


def synthetic_train_log() -> pd.DataFrame:
    """A run that fits, groks and collapses, log-spaced like a real train_log.csv."""
    steps = [0, 1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000]
    train_acc = [0.1, 0.3, 0.8, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    test_acc = [0.1, 0.2, 0.4, 0.4, 0.4, 0.6, 0.9, 0.9, 0.8, 0.5, 0.4, 0.4]
    return pd.DataFrame({"step": steps, "train_loss": 0.0, "train_acc": train_acc,
                         "test_loss": 0.0, "test_acc": test_acc})


def test_phases_columns(tmp_path):
    from antigrok.study.phases import PHASES_COLUMNS, PhaseThresholds, segment_phases

    phases = segment_phases(synthetic_train_log(), PhaseThresholds(smoothing_window=1))
    assert phases["collapses"].all(), "the synthetic run should collapse, so every edge is filled"
    assert list(phases.columns) == PHASES_COLUMNS
    assert_documented_exactly("phases.csv", PHASES_COLUMNS)


def write_checkpoints(folder: Path, experiment_cfg: dict) -> list[Path]:
    from antigrok.training.models import build_model
    from antigrok.runs import checkpoint_path
    from antigrok.training.train import RunSpec, save_checkpoint

    folder.mkdir()
    spec = RunSpec("docs_check", experiment_cfg, weight_decay=0.0, seed=0)
    model = build_model(experiment_cfg["model"], "float64", seed=0)
    path = checkpoint_path(folder, 0)
    save_checkpoint(path, model, spec, 0)
    return [path]


def test_progress_columns_of_both_models(tmp_path):
    from antigrok.study.progress import progress_for_checkpoints

    mlp = {"model": {"name": "mlp", "widths": [784, 200, 200, 10], "init_scale": 8.0}}
    transformer = {"model": {"name": "transformer", "d_vocab": 24, "n_ctx": 3, "d_model": 32,
                             "num_heads": 4, "d_head": 8, "d_mlp": 128, "num_layers": 1}}
    generator = torch.Generator().manual_seed(0)
    inputs = {"mlp": torch.rand(32, 784, generator=generator, dtype=torch.float64),
              "transformer": torch.randint(0, 23, (32, 3), generator=generator)}
    written = []
    for name, cfg in (("mlp", mlp), ("transformer", transformer)):
        paths = write_checkpoints(tmp_path / name, cfg)
        table = progress_for_checkpoints(paths, {"x_train": inputs[name]}, progress=False)
        written += [column for column in table.columns if column not in written]
    assert "activation_sparsity_blocks_0_mlp_act" in written and "abs_weight_entropy_fc1" in written
    assert_documented_exactly("progress.csv", written)


def test_table_columns():
    from antigrok.study.detector import DETECTOR_COLUMNS, DETECTOR_SUMMARY_COLUMNS
    from antigrok.study.tables import TIDY_COLUMNS

    for table in ("table1_alpha.csv", "table2_traps.csv", "table4_mp_fit.csv"):
        assert_documented_exactly(table, TIDY_COLUMNS)
    assert_documented_exactly("detectors.csv", DETECTOR_COLUMNS)
    assert_documented_exactly("detector_summary.csv", DETECTOR_SUMMARY_COLUMNS)


def test_phase_edges_columns(tmp_path):
    from antigrok.study.tables import phase_edges
    from antigrok.study.phases import PhaseThresholds, segment_phases

    path = tmp_path / "docs_check" / "wd0.0" / "seed0" / "phases.csv"
    path.parent.mkdir(parents=True)
    segment_phases(synthetic_train_log(), PhaseThresholds(smoothing_window=1)).to_csv(path, index=False)
    assert_documented_exactly("phase_edges.csv", list(phase_edges([path]).columns))


def test_comparison_table_columns():
    timescale = pytest.importorskip("antigrok.study.timescale", reason="the time-scale study is not in this tree")
    paper = pytest.importorskip("antigrok.study.paper", reason="the paper comparison is not in this tree")

    assert_documented_exactly("timescale.csv", timescale.TIMESCALE_COLUMNS)
    assert_documented_exactly("timescale_slope.csv", timescale.SLOPE_COLUMNS)
    assert_documented_exactly("paper_comparison.csv", paper.COMPARISON_COLUMNS)


@pytest.mark.slow
def test_the_smoke_runs_csv_headers_are_documented(smoke_workdir):
    results = smoke_workdir / "results"
    files = sorted(results.glob("runs/*/*/*/*.csv")) + sorted(results.glob("tables/*.csv"))
    documented = documented_columns()
    assert {path.name for path in files} >= {"train_log.csv", "htsr.csv", "traps.csv", "progress.csv",
                                              "phases.csv", "detectors.csv", "phase_edges.csv"}
    problems = []
    for path in files:
        header = list(pd.read_csv(path, nrows=0).columns)
        if path.name not in documented:
            problems.append(f"{path.relative_to(smoke_workdir)}: no section in docs/results.md")
        elif undocumented(header, documented[path.name]):
            problems.append(f"{path.relative_to(smoke_workdir)}: undocumented {undocumented(header, documented[path.name])}")
    assert not problems, "\n".join(problems)
