"""One strict way to build a settings dataclass from a plain mapping (a params.yaml section,
a release's JSON, a saved report), and to keep one as a JSON file (a model's manifest).

Why strict: a misspelt key that silently kept its default would run a different experiment
than the one written down, so every unknown key is an error that names it. YAML and JSON have
no tuples, so a list given for a field whose default is a tuple becomes a tuple (``betas``),
keeping the config hashable and its ``asdict`` stable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["from_mapping", "read_json", "write_json"]

T = TypeVar("T")


def from_mapping(
    kind: type[T], values: Mapping[str, Any], what: str, nested: Mapping[str, Callable[[Any], Any]] | None = None
) -> T:
    """``kind(**values)``, or a ValueError naming the keys ``kind`` does not have.

    ``what`` names the settings in the message (``"train_joint"`` gives "unknown train_joint
    parameters: [...]"). ``nested`` maps a field to the function that builds its value (a
    nested settings class's ``from_mapping``); it runs only after this level's keys passed, so
    a typo is reported at the level where it is.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Opt:
    ...     lr: float = 1e-3
    ...     betas: tuple = (0.9, 0.999)
    >>> from_mapping(Opt, {"betas": [0.8, 0.9]}, "optimiser")
    Opt(lr=0.001, betas=(0.8, 0.9))
    >>> from_mapping(Opt, {"learning_rate": 1.0}, "optimiser")
    Traceback (most recent call last):
    ...
    ValueError: unknown optimiser parameters: ['learning_rate']
    """
    declared = {f.name: f for f in fields(kind)}  # type: ignore[arg-type]
    if extra := set(values) - set(declared):
        raise ValueError(f"unknown {what} parameters: {sorted(extra)}")
    data = dict(values)
    for name, value in data.items():
        default = declared[name].default
        if name in (nested or {}):
            data[name] = nested[name](value)  # type: ignore[index]
        elif isinstance(value, list) and default is not MISSING and isinstance(default, tuple):
            data[name] = tuple(value)
    return kind(**data)


def write_json(path: Path, settings: Any) -> Path:
    """The dataclass ``settings`` as indented JSON at ``path`` (its folder is made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(settings), indent=2) + "\n")
    return path


def read_json(kind: type[T], path: Path, what: str, missing: str) -> T:
    """A ``kind`` from the JSON file :func:`write_json` wrote, as strictly as :func:`from_mapping`;
    a missing file is a FileNotFoundError that says ``missing`` (what makes the file)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {missing}")
    return from_mapping(kind, json.loads(path.read_text()), what)
