"""No import cycle between the package's modules: every `import` counts, at the top, inside a function or under
TYPE_CHECKING, so that each module can be read (and loaded) after the ones it uses."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import adaptive_sampler

ROOT = Path(adaptive_sampler.__file__).parent


def module_files() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package by its __init__.py)."""
    files = {}
    for file in ROOT.rglob("*.py"):
        parts = file.relative_to(ROOT.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return files


def imported_modules(name: str, file: Path, modules: set[str]) -> set[str]:
    """The package's modules that `file` (module `name`) imports: `from a.b import c` is a.b.c if that is a module,
    else a.b."""
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def test_the_package_has_no_import_cycle():
    files = module_files()
    assert "adaptive_sampler.models" in files and "adaptive_sampler.monitors.distances" in files
    graph = {name: imported_modules(name, file, set(files)) for name, file in files.items()}
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None
