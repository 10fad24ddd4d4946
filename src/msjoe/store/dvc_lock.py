"""``dvc.lock``, read once for everyone: the store's rebuild and the flows' stage records.

``dvc.lock`` is what DVC knows about the last successful run of every stage: its command, the
content hash of each dependency and output, and the parameters it ran with. The store indexes
exactly that (a stage row per entry), and the flows tell a stage that ran from one that was up
to date by comparing entries before and after ``dvc repro``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from msjoe.store.hashing import plain, sha256_json

__all__ = ["LOCK_FILE", "LockFileError", "hash_map", "lock_entries", "read_lock", "stage_fields"]

LOCK_FILE = "dvc.lock"


class LockFileError(ValueError):
    """``dvc.lock`` exists but is not a lock file (not YAML, or no ``stages`` mapping)."""


def read_lock(root: Path) -> dict[str, Any] | None:
    """The whole parsed ``root/dvc.lock``; None before any stage succeeded (no file)."""
    import yaml

    path = Path(root) / LOCK_FILE
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise LockFileError(f"{LOCK_FILE} is not valid YAML: {err}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("stages"), Mapping):
        raise LockFileError(f"{LOCK_FILE} has no 'stages' mapping")
    return dict(data)


def lock_entries(root: Path) -> dict[str, Any]:
    """Every stage's entry (``{}`` before any stage succeeded)."""
    lock = read_lock(root)
    return dict(lock["stages"]) if lock is not None else {}


def hash_map(entries: Any) -> dict[str, str | None]:
    """``{path: content hash}`` of a deps/outs list (md5 in DVC 3; etag/checksum for remote files).

    >>> hash_map([{"path": "data/world", "md5": "ab.dir"}, {"path": "s3://b/x", "etag": "e1"}])
    {'data/world': 'ab.dir', 's3://b/x': 'e1'}
    """
    found: dict[str, str | None] = {}
    for entry in entries or []:
        if isinstance(entry, Mapping) and "path" in entry:
            found[str(entry["path"])] = next((str(entry[k]) for k in ("md5", "etag", "checksum") if entry.get(k)), None)
    return found


def stage_fields(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A stage row's fields from its lock entry: command (a multi-command stage joined with
    ``&&``), dependency and output hashes, parameters and the entry's own hash."""
    cmd = entry.get("cmd")
    if isinstance(cmd, list):
        cmd = " && ".join(map(str, cmd))
    return {
        "cmd": str(cmd) if cmd else None,
        "deps": hash_map(entry.get("deps")),
        "outs": hash_map(entry.get("outs")),
        "params": plain(entry.get("params") or {}),
        "lock_hash": sha256_json(entry),
    }
