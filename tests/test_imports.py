"""The package's import structure: every module imports on its own, and no two import each other."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

import import_graph

MODULES = sorted(import_graph.modules())
OPTIONAL = {"monitor.lightning": "lightning", "monitor.transformers": "transformers"}  # extras


def test_the_import_graph_has_no_cycle():
    graph = import_graph.import_graph()
    assert set(graph) >= {"train", "batched", "resume", "htsr", "fastspectra", "spectral", "traps", "figures"}
    assert import_graph.find_cycle(graph) is None, f"import cycle: {' -> '.join(import_graph.find_cycle(graph))}"


def test_the_spectral_primitives_depend_on_no_engine():
    graph = import_graph.import_graph()
    assert graph["spectral"] <= {"files"} and graph["files"] == set()  # files: atomic writes, a leaf
    assert "htsr" not in graph["fastspectra"] | graph["traps"]
    assert "train" not in graph["htsr"]


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
    # progress imported train.load_checkpoint (pulling in the training loop) and analyze called
    # htsr._unanalyzable: each has a public home now (loading.read_checkpoint, htsr.unanalyzable_reason).
    import ast

    graph = import_graph.import_graph()
    assert "train" not in graph["progress"]
    private = []
    for path in sorted((REPO / "src" / "antigrok").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in set(graph)):
                private.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert not private, private
