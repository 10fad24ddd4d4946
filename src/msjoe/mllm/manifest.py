"""Which MLLM weights a directory stands for: the ``mllm.json`` manifest, and loading through it.

The inference half of the MLLM record, next to :mod:`msjoe.clip.manifest`: a manifest names
a hub id (paper scale: ``Qwen/Qwen2.5-VL-7B-Instruct``) or a local checkpoint directory, with
a content identity for cache keys and lineage. The ``pretrain_mllm`` stage writes one
(:func:`msjoe.mllm.pretrain.prepare_mllm`), as do ``train_joint`` and a release; evaluation,
the RL stages and the service load through :func:`load_prepared_mllm`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msjoe.config import read_json, write_json

if TYPE_CHECKING:
    from msjoe.mllm.load import MLLM

__all__ = ["MANIFEST", "MODEL_SUBDIR", "MLLMManifest", "identity_for", "load_prepared_mllm", "read_manifest",
           "write_manifest"]

MANIFEST = "mllm.json"
MODEL_SUBDIR = "model"
_FULL_HASH_LIMIT = 256 << 20
_EDGE_BYTES = 1 << 20


@dataclass(frozen=True)
class MLLMManifest:
    """``name_or_path``: a hub id, an absolute local directory, or a directory relative to the
    manifest (the demo's ``model``); ``identity``: a stable id of the weights, for cache keys and
    lineage."""

    name_or_path: str
    identity: str

    def resolve(self, directory: Path) -> str:
        """What :func:`load_mllm` should be given: a local path when one exists, else the id."""
        local = Path(directory) / self.name_or_path
        if not Path(self.name_or_path).is_absolute() and local.is_dir():
            return str(local)
        return self.name_or_path


def identity_for(name_or_path: str, directory: Path | None = None) -> str:
    """Stable id of the weights without loading them.

    A hub id is its own identity (no network call: the stage must work offline). A local
    directory is hashed over its file names and contents; files above 256 MiB (the shards of a
    7B checkpoint, 16 GB in all) contribute their size and first/last MiB only, so recording a
    real checkpoint takes seconds, not minutes.
    """
    local = Path(directory) if directory is not None else Path(name_or_path).expanduser()
    if not local.is_dir():
        return name_or_path
    digest = hashlib.sha256()
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        rel = path.relative_to(local).as_posix()
        size = path.stat().st_size
        digest.update(f"{rel}\0{size}\0".encode())
        with open(path, "rb") as handle:
            if size <= _FULL_HASH_LIMIT:
                while chunk := handle.read(_EDGE_BYTES):
                    digest.update(chunk)
            else:
                digest.update(handle.read(_EDGE_BYTES))
                handle.seek(size - _EDGE_BYTES)
                digest.update(handle.read(_EDGE_BYTES))
    return f"{local.name}@sha256:{digest.hexdigest()[:16]}"


def write_manifest(directory: Path, manifest: MLLMManifest) -> Path:
    """Write ``directory/mllm.json``."""
    return write_json(directory / MANIFEST, manifest)


def read_manifest(directory: Path) -> MLLMManifest:
    """Read ``directory/mllm.json`` (written by the ``pretrain_mllm`` stage)."""
    return read_json(MLLMManifest, Path(directory) / MANIFEST, "mllm manifest", "run the pretrain_mllm stage first")


def load_prepared_mllm(directory: Path, **load_kwargs: Any) -> MLLM:
    """Load the MLLM a manifest points to, through :func:`msjoe.mllm.load.load_mllm`."""
    from msjoe.mllm.load import load_mllm

    manifest = read_manifest(directory)
    mllm = load_mllm(manifest.resolve(Path(directory)), **load_kwargs)
    mllm.identity = manifest.identity
    return mllm
