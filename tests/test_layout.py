"""The package's shape (issue 15): small modules, layers that only import downwards, package ``__init__`` files
that only re-export. Read from the source with ``ast``; nothing is imported or run."""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "slimgraph"
MAX_LINES = 600
# prune and quant sit below the entry points: they must not import them (the entry points import them)
LOWER_PACKAGES = ("prune", "quant")
HIGHER_MODULES = ("slimgraph.api", "slimgraph.compress", "slimgraph.backend", "slimgraph.cli")


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved), at any depth in the file:
    ``from ..api import optimize`` inside a function counts like a top-level ``import slimgraph.api``."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from .. import api`
    return names


def test_no_source_file_over_the_line_limit():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in _sources()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these modules (limit {MAX_LINES} lines): {long}"


@pytest.mark.parametrize("package", LOWER_PACKAGES)
def test_lower_layers_never_import_the_entry_points(package):
    offenders = {}
    for path in sorted((PACKAGE / package).rglob("*.py")):
        upward = {m for m in imported_modules(path) for higher in HIGHER_MODULES
                  if m == higher or m.startswith(higher + ".")}
        if upward:
            offenders[str(path.relative_to(PACKAGE.parent))] = sorted(upward)
    assert not offenders, offenders


def test_import_reader_resolves_relative_and_nested_imports(tmp_path, monkeypatch):
    # the check above is only as good as this reader: a relative import inside a function must be seen
    fake = tmp_path / "slimgraph" / "prune"
    fake.mkdir(parents=True)
    source = fake / "x.py"
    source.write_text("from . import report\n\ndef f():\n    from ..api import optimize\n    import slimgraph.cli\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "slimgraph")
    assert {"slimgraph.api", "slimgraph.api.optimize", "slimgraph.cli", "slimgraph.prune.report"} <= \
        imported_modules(source)


def test_prune_package_init_only_re_exports():
    tree = ast.parse((PACKAGE / "prune" / "__init__.py").read_text(encoding="utf-8"))
    allowed = (ast.Import, ast.ImportFrom, ast.Assign, ast.Expr)  # imports, __all__, the docstring
    extra = [type(node).__name__ + f" at line {node.lineno}" for node in tree.body if not isinstance(node, allowed)]
    assert not extra, f"prune/__init__.py should only re-export; move these into a module: {extra}"
    assigned = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                if isinstance(t, ast.Name)}
    assert assigned <= {"__all__"}, assigned
