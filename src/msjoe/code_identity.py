"""The identity of the code a module runs: the ``msjoe`` modules its imports reach.

Resumable training must not resume a checkpoint that other code made. A stage's DVC deps list
every module its script imports, directly or through other modules, lazy (function-level)
imports included (``tests/pipeline/test_dvc_contract.py`` walks the imports the same way), so an
edit to any of them reruns the stage; the run's fingerprint then has to change too, or the rerun
would resume the finished run of the old code and record its weights under the new lock entry.
The walk is static (the source's import statements), so the identity does not depend on what a
process happened to import before, and a fresh clone of the same commit computes the same one.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

__all__ = ["code_identity", "imported_names", "module_closure", "module_file"]

#: The directory holding the ``msjoe`` package.
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def module_file(module: str, root: Path = SOURCE_ROOT) -> Path | None:
    """The source file of ``module`` under ``root`` (a package's ``__init__.py``), or None."""
    path = root.joinpath(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def imported_names(path: Path, root: Path = SOURCE_ROOT) -> set[str]:
    """Every module name ``path`` imports, at the top or inside functions (lazy imports run
    too), relative imports resolved, ``from m import x`` also as ``m.x`` (x may be a module)."""
    package = list(path.relative_to(root).parent.parts) if root in path.parents else []
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def module_closure(module: str, root: Path = SOURCE_ROOT) -> list[Path]:
    """Sorted source files of ``module`` and every ``msjoe`` module its imports reach (each
    package's ``__init__`` included)."""
    start = module_file(module, root)
    if start is None:
        raise ValueError(f"no source file for module {module!r} under {root}")
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_names(path, root):
            parts = name.split(".")
            if parts[0] == "msjoe":
                todo += [f for i in range(1, len(parts) + 1) if (f := module_file(".".join(parts[:i]), root))]
    return sorted(seen)


def code_identity(module: str, root: Path = SOURCE_ROOT) -> str:
    """A short sha256 of the sources of :func:`module_closure` (paths relative to ``root``)."""
    digest = hashlib.sha256()
    for path in module_closure(module, root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
