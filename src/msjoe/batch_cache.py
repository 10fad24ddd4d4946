"""Finished batches of a long batch job, one file each, so a killed run resumes where it was.

The evaluation's turns take hours at paper scale. Each finished batch is saved under a name that
is the digest of everything its result depends on (the job's context: model identity, settings,
thread count; and the batch's own inputs), written atomically. A rerun, by any number of ranks,
loads the batches it finds and computes the rest; because a digest names its inputs, a file
from a run with other inputs is never used, only pruned.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["BatchCache"]


class BatchCache:
    """Batches of JSON-able results under ``directory``, named by ``kind`` and digest."""

    def __init__(self, directory: Path, context: Any) -> None:
        self.directory = Path(directory)
        self._context = json.dumps(context, sort_keys=True, default=str)

    def digest(self, kind: str, inputs: Any) -> str:
        """The name of a batch of ``kind`` with these ``inputs`` in this job's context."""
        payload = json.dumps([self._context, kind, inputs], sort_keys=True, default=str)
        return f"{kind}-{hashlib.sha256(payload.encode()).hexdigest()[:24]}"

    def _path(self, digest: str) -> Path:
        return self.directory / f"{digest}.json"

    def load(self, digest: str) -> list[Any] | None:
        """The saved results of a batch, or None when it has not been finished."""
        path = self._path(digest)
        if not path.is_file():
            return None
        return json.loads(path.read_text())

    def save(self, digest: str, results: list[Any]) -> None:
        """Save a finished batch (atomically: a killed writer leaves no torn file)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{digest}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(results))
        os.replace(tmp, self._path(digest))

    def prune(self, keep: Iterable[str]) -> int:
        """Delete the batches not in ``keep`` (another run's); returns how many."""
        wanted = {f"{d}.json" for d in keep}
        stale = [p for p in self.directory.glob("*.json") if p.name not in wanted] if self.directory.is_dir() else []
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)
