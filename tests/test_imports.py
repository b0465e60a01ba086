"""The package's import structure: every module imports on its own, and no two import each other."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

import import_graph

MODULES = sorted(import_graph.modules())
OPTIONAL = {"monitor.lightning": "lightning", "monitor.transformers": "transformers"}  # extras


# The package's layers, lowest first (src/antigrok/__init__.py): a module imports from its own
# layer and the layers before it only. A top-level module that is no layer of its own is a foundation.
LAYERS = ["foundations", "formats", "spectra", "htsr", "training", "study", "report", "mechanism", "users", "cli",
          "monitor"]


def layer_of(module: str) -> str:
    top = module.split(".")[0]
    return top if top in LAYERS else "foundations"


def test_the_import_graph_has_no_cycle():
    graph = import_graph.import_graph()
    assert set(graph) >= {"training.train", "training.batched", "training.resume", "htsr", "spectra.fast_engine",
                          "spectra.primitives", "spectra.traps", "report.figures"}
    assert import_graph.find_cycle(graph) is None, f"import cycle: {' -> '.join(import_graph.find_cycle(graph))}"


def test_every_import_goes_down_the_layers():
    graph = import_graph.import_graph()
    upward = [f"{module} ({layer_of(module)}) -> {target} ({layer_of(target)})"
              for module, targets in sorted(graph.items()) for target in sorted(targets)
              if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(module))]
    assert not upward, upward
    top_level = {path.stem for path in (REPO / "src" / "antigrok").glob("*.py")} - {"__init__"}
    assert top_level == {"files", "schema", "runs", "runlog", "table_format", "workflow_config", "htsr",
                         "cli"}, (
        "a new top-level module: put it in the subpackage of its layer")


def test_the_spectral_primitives_depend_on_no_engine():
    graph = import_graph.import_graph()
    assert graph["spectra.primitives"] <= {"files"} and graph["files"] == set()  # files: atomic writes, a leaf
    assert "htsr" not in graph["spectra.fast_engine"] | graph["spectra.traps"]
    assert not any(target.startswith("training") for target in graph["htsr"])


def test_the_cycle_finder_finds_a_hidden_cycle():
    source = {"a": "import antigrok.b\n", "b": "def f():\n    from antigrok import a\n"}
    graph = {name: import_graph.imported_modules(text, set(source)) for name, text in source.items()}
    assert import_graph.find_cycle(graph) == ["a", "b", "a"]


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone_in_a_fresh_interpreter(module):
    extra = OPTIONAL.get(module)
    if extra:
        pytest.importorskip(extra)
    result = subprocess.run([sys.executable, "-c", f"import antigrok.{module}"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_modules_use_each_others_public_names_only():
    # The progress measures read checkpoints through formats.loading, not through the training loop;
    # no module reaches for another's private name (tests/lint_imports.py checks every file).
    import ast

    graph = import_graph.import_graph()
    assert "training.train" not in graph["study.progress"]
    private = []
    for path in sorted((REPO / "src" / "antigrok").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in set(graph)):
                private.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert not private, private
