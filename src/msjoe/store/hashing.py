"""Content hashes that key the store's rows.

Rows are keyed by what they contain, not by when they were written, so the same pipeline output
always maps to the same row. Hashes are SHA-256 of a canonical JSON text (sorted keys, no
whitespace, UTF-8), which is stable across Python versions, databases and machines.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from msjoe.video import sha256_file

__all__ = ["canonical_json", "plain", "sha256_file", "sha256_json", "sha256_path"]


def plain(value: Any) -> Any:
    """Convert numpy/pandas values (scalars, arrays, NaN) to plain JSON-able Python values.

    Parquet readers hand back ``numpy.int64``, arrays for list columns and NaN for missing
    values; database drivers and ``json`` need ints, lists and None.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return plain(tolist())
    item = getattr(value, "item", None)
    if callable(item):
        return plain(item())
    if str(value) in ("NaT", "<NA>"):  # pandas missing markers
        return None
    return value


def canonical_json(value: Any) -> str:
    """Serialise ``value`` deterministically (sorted keys, compact separators)."""
    return json.dumps(plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_json(value: Any) -> str:
    """SHA-256 hex digest of :func:`canonical_json` of ``value``."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def sha256_path(path: Path) -> str:
    """SHA-256 of a file, or of a directory's files (relative paths and contents, sorted).

    Checkpoints are often directories (``save_pretrained``); hashing names and bytes means the
    same weights saved anywhere get the same key, and any changed file changes it.
    """
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise FileNotFoundError(path)
    listing = sorted(
        [p.relative_to(path).as_posix(), sha256_file(p)] for p in path.rglob("*") if p.is_file()
    )
    return sha256_json(listing)
