"""The package's import structure: every module imports on its own, and no two import each other."""

from __future__ import annotations

import importlib.util
import json
import os
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


# Each module is imported in a process of its own, forked from one that has imported only the heavy
# third-party packages: a fresh interpreter per module paid their import (4-5 s of CPU) 66
# times. The antigrok side of each child is as fresh as a new interpreter's, which is what the test is
# about (a module that imports only after another antigrok module has been imported, an import cycle);
# test_an_entry_point_imports_in_a_fresh_interpreter keeps one truly fresh import.
IMPORT_EACH_ALONE = """
import json, os, sys, traceback
import numpy, pandas, scipy.linalg, scipy.stats, torch  # noqa: F401  imported once, before the forks

failures = {}
for module in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            __import__("antigrok." + module)
            message = ""
        except BaseException:
            message = traceback.format_exc()
        with os.fdopen(write, "w") as pipe:
            pipe.write(message)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        message = pipe.read()
    status = os.waitpid(pid, 0)[1]
    failures[module] = message or ("" if status == 0 else f"the child exited with status {status}")
print(json.dumps(failures))
"""


def import_each_alone(modules: list[str]) -> dict[str, str]:
    """{module: "" if ``import antigrok.<module>`` succeeded in its own process, else the traceback}."""
    result = subprocess.run([sys.executable, "-c", IMPORT_EACH_ALONE, *modules], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def import_failures() -> dict[str, str]:
    return import_each_alone([module for module in MODULES
                              if OPTIONAL.get(module) is None or importlib.util.find_spec(OPTIONAL[module])])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the per-module imports fork one process per module")
@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone(module, import_failures):
    extra = OPTIONAL.get(module)
    if extra:
        pytest.importorskip(extra)
    assert import_failures[module] == "", import_failures[module][-3000:]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the per-module imports fork one process per module")
def test_a_module_that_fails_to_import_is_reported_with_its_traceback():
    failures = import_each_alone(["htsr", "no_such_module"])
    assert failures["htsr"] == ""
    assert "ModuleNotFoundError: No module named 'antigrok.no_such_module'" in failures["no_such_module"]


def test_an_entry_point_imports_in_a_fresh_interpreter():
    result = subprocess.run([sys.executable, "-c", "import antigrok.cli"], capture_output=True, text=True,
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
