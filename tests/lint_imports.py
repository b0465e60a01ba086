"""The project's import lint: every imported name is used where it is imported, and no module takes
a private name (``_x``) of another antigrok module. A name is imported from the module that defines
it: a module that imports a name only to pass it on (a re-export) fails the first check.

    python tests/lint_imports.py            # one line per finding; exit 1 if there is any
    python tests/lint_imports.py PATH...    # only these files or folders

It reads the Python files of src/, workflow/scripts/, scripts/, benchmarks/ and tests/. An
``__init__.py`` may list the names it offers its users in ``__all__`` (the documented public place,
e.g. ``antigrok.monitor``); those count as used. Nothing else is exempt.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("src", "workflow/scripts", "scripts", "benchmarks", "tests")
PACKAGE = "antigrok"


def python_files(paths=None) -> list[Path]:
    roots = [Path(path) for path in paths] if paths else [REPO / folder for folder in FOLDERS]
    files = []
    for root in roots:
        files += [root] if root.is_file() else sorted(root.rglob("*.py"))
    return [path for path in files if ".venv" not in path.parts and ".snakemake" not in path.parts]


def _bound_names(node: ast.Import | ast.ImportFrom) -> list[tuple[str, str]]:
    """(name bound in the module, what it is) of one import statement."""
    bound = []
    for alias in node.names:
        if alias.name == "*":
            continue
        if isinstance(node, ast.Import):
            bound.append((alias.asname or alias.name.split(".")[0], alias.name))
        else:
            bound.append((alias.asname or alias.name, f"{node.module}.{alias.name}"))
    return bound


def _names_in_strings(tree: ast.AST) -> set[str]:
    """Identifiers inside string annotations (``-> "RunSpec"``) and other string-typed hints."""
    found = set()
    for node in ast.walk(tree):
        annotations = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            annotations = [node.returns] + [arg.annotation for arg in
                                            node.args.args + node.args.kwonlyargs + node.args.posonlyargs]
        elif isinstance(node, ast.AnnAssign):
            annotations = [node.annotation]
        for annotation in annotations:
            for part in ast.walk(annotation) if annotation is not None else []:
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    try:
                        found |= {name.id for name in ast.walk(ast.parse(part.value, mode="eval"))
                                  if isinstance(name, ast.Name)}
                    except SyntaxError:
                        pass
    return found


def _dunder_all(tree: ast.Module) -> set[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return {element.value for element in ast.walk(node.value) if isinstance(element, ast.Constant)}
    return set()


def unused_imports(source: str, is_init: bool = False) -> list[tuple[int, str]]:
    """(line, name) of each imported name the module never uses (``__all__`` counts for an __init__)."""
    tree = ast.parse(source)
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)} | _names_in_strings(tree)
    if is_init:
        used |= _dunder_all(tree)
    findings = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and getattr(node, "module", None) != "__future__":
            for name, _ in _bound_names(node):
                if name not in used:
                    findings.append((node.lineno, name))
    return findings


def private_imports(source: str) -> list[tuple[int, str]]:
    """(line, what) of each private name taken from another antigrok module: ``from antigrok.x import
    _y`` or ``x._y`` where x is an imported antigrok module."""
    tree = ast.parse(source)
    modules = set()
    findings = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and \
                (node.module == PACKAGE or node.module.startswith(PACKAGE + ".")):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    findings.append((node.lineno, f"from {node.module} import {alias.name}"))
                else:
                    modules.add(alias.asname or alias.name)  # a submodule, or a name (checked below)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE):
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in modules and root.id[0].islower():
                findings.append((node.lineno, f"{ast.unparse(node)}"))
    return findings


def module_file(module: str, src: Path = REPO / "src") -> Path | None:
    """The file of an antigrok module (``antigrok.x.y``), or None."""
    base = src.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _top_level(statements) -> tuple[set[str], set[str]]:
    """(names a module defines, names it only imports) at its top level (inside if/try/with too)."""
    defined, imported = set(), set()
    for node in statements:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined |= {name.id for target in targets for name in ast.walk(target) if isinstance(name, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            imported |= {name for name, _ in _bound_names(node)}
        for body in ("body", "orelse", "finalbody", "handlers"):
            if isinstance(node, (ast.If, ast.Try, ast.With)) or body == "handlers" and isinstance(node, ast.Try):
                inner_defined, inner_imported = _top_level(getattr(node, body, []) or [])
                defined |= inner_defined
                imported |= inner_imported
        if isinstance(node, ast.ExceptHandler):
            inner_defined, inner_imported = _top_level(node.body)
            defined |= inner_defined
            imported |= inner_imported
    return defined, imported - defined


_MODULES: dict[Path, tuple[set[str], set[str], set[str]]] = {}


def _module_names(path: Path) -> tuple[set[str], set[str], set[str]]:
    """(defined, only imported, __all__) of a module file, cached."""
    if path not in _MODULES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined, imported = _top_level(tree.body)
        if path.name == "__init__.py":  # a package's submodules are its names too
            defined |= {child.stem if child.suffix == ".py" else child.name for child in path.parent.iterdir()
                        if child.suffix == ".py" or (child / "__init__.py").is_file()}
        _MODULES[path] = (defined, imported, _dunder_all(tree))
    return _MODULES[path]


def passed_on_imports(source: str, src: Path = REPO / "src") -> list[tuple[int, str]]:
    """(line, what) of each name taken from an antigrok module that does not define it but imports
    it from elsewhere (a re-export); a package's ``__all__`` (its documented public place) excepted."""
    tree = ast.parse(source)
    findings = []
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and \
                (node.module == PACKAGE or node.module.startswith(PACKAGE + ".")):
            path = module_file(node.module, src)
            if path is None:
                continue
            defined, imported, public = _module_names(path)
            for alias in node.names:
                if module_file(f"{node.module}.{alias.name}", src):
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                elif alias.name in imported and alias.name not in public:
                    findings.append((node.lineno, f"from {node.module} import {alias.name}"))
                elif alias.name not in defined | imported and alias.name != "*":
                    findings.append((node.lineno, f"from {node.module} import {alias.name}: {node.module} has no such name"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + ".") and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            module = aliases[node.value.id]
            path = module_file(module, src)
            if path is None or module_file(f"{module}.{node.attr}", src):
                continue
            defined, imported, public = _module_names(path)
            if node.attr in imported and node.attr not in public:
                findings.append((node.lineno, f"{node.value.id}.{node.attr} (imported by {module})"))
            elif node.attr not in defined | imported and not node.attr.startswith("__"):
                findings.append((node.lineno, f"{node.value.id}.{node.attr}: {module} has no such name"))
    return findings


def lint(paths=None) -> list[str]:
    problems = []
    for path in python_files(paths):
        source = path.read_text(encoding="utf-8")
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        for line, what in passed_on_imports(source):
            if what.endswith("has no such name"):
                problems.append(f"{shown}:{line}: {what}")
            else:
                problems.append(f"{shown}:{line}: not imported from the module that defines it: {what}")
        for line, name in unused_imports(source, is_init=path.name == "__init__.py"):
            problems.append(f"{shown}:{line}: {name} imported but unused (import it where it is used)")
        for line, what in private_imports(source):
            problems.append(f"{shown}:{line}: private name of another module: {what}")
    return problems


if __name__ == "__main__":
    found = lint(sys.argv[1:])
    print("\n".join(found) if found else "import lint: clean")
    sys.exit(1 if found else 0)
