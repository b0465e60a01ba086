"""tests/lint_imports.py, the import lint that .ci/run runs: the project passes it, and it catches
each kind of violation when one is planted."""

from __future__ import annotations

import subprocess
import sys

import lint_imports
from conftest import REPO


def test_the_project_passes_the_import_lint():
    problems = lint_imports.lint()
    assert not problems, "\n".join(problems)


def test_the_lint_finds_an_unused_import():
    source = "import os\nimport sys\nfrom pathlib import Path, PurePath\n\nprint(sys.argv, Path)\n"
    assert lint_imports.unused_imports(source) == [(1, "os"), (3, "PurePath")]
    # names in string annotations and an __init__'s __all__ count as used
    assert lint_imports.unused_imports("from typing import Mapping\n\ndef f(x: 'Mapping'): pass\n") == []
    assert lint_imports.unused_imports("from a import b\n__all__ = ['b']\n", is_init=True) == []
    assert lint_imports.unused_imports("from a import b\n__all__ = ['b']\n") == [(1, "b")]


def test_the_lint_finds_a_private_name_of_another_module():
    assert lint_imports.private_imports("from antigrok.htsr import _hidden\n") == [
        (1, "from antigrok.htsr import _hidden")]
    assert lint_imports.private_imports("from antigrok import htsr\nhtsr._hidden()\n") == [(2, "htsr._hidden")]
    assert lint_imports.private_imports("import numpy as np\nnp._core\n") == []  # not antigrok's


def test_the_lint_finds_a_name_taken_from_a_module_that_only_imports_it(tmp_path):
    package = tmp_path / "antigrok"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def helper():\n    return 1\n")
    (package / "high.py").write_text("from antigrok.low import helper\n\nVALUE = helper()\n")
    source = "from antigrok.high import VALUE, helper\nfrom antigrok import high\nhigh.helper()\n"
    assert lint_imports.passed_on_imports(source, src=tmp_path) == [
        (1, "from antigrok.high import helper"), (3, "high.helper (imported by antigrok.high)")]
    assert lint_imports.passed_on_imports("from antigrok.low import helper\n", src=tmp_path) == []
    assert lint_imports.passed_on_imports("from antigrok.low import gone\n", src=tmp_path) == [
        (1, "from antigrok.low import gone: antigrok.low has no such name")]
    assert lint_imports.passed_on_imports("from antigrok import low\nlow.gone()\n", src=tmp_path) == [
        (2, "low.gone: antigrok.low has no such name")]


def test_the_command_line_fails_on_a_planted_violation(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("import os\nfrom antigrok.htsr import _hidden\n\nprint(_hidden)\n")
    result = subprocess.run([sys.executable, str(REPO / "tests" / "lint_imports.py"), str(planted)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "os imported but unused" in result.stdout and "private name of another module" in result.stdout
