"""`models/clip/clip.json`: which CLIP the pipeline uses, written by `pretrain_clip`.

Downstream stages read the manifest, never the parameters, so the embedding cache key follows
the weights actually used (a content hash for local checkpoints, the tag for hub weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from msjoe.config import read_json, write_json
from msjoe.video import sha256_file

MANIFEST = "clip.json"


@dataclass(frozen=True)
class ClipManifest:
    """`model`: open_clip architecture name; `pretrained`: tag (e.g. `openai`), a checkpoint path
    relative to the manifest directory, or None for random weights; `config_file`: a custom
    architecture json next to the manifest (the demo's tiny model) or None for built-in names."""

    model: str
    pretrained: str | None
    config_file: str | None
    identity: str

    def checkpoint_path(self, directory: Path) -> Path | None:
        """The local checkpoint, when `pretrained` names a file next to the manifest."""
        if self.pretrained and (directory / self.pretrained).is_file():
            return directory / self.pretrained
        return None


def identity_for(model: str, pretrained: str | None, checkpoint: Path | None) -> str:
    """Stable id of the weights: feature caches are keyed by it."""
    if checkpoint is not None:
        return f"{model}@sha256:{sha256_file(checkpoint)[:16]}"
    return f"{model}@{pretrained or 'random'}"


def write_manifest(directory: Path, manifest: ClipManifest) -> Path:
    """Write ``directory/clip.json``."""
    return write_json(directory / MANIFEST, manifest)


def read_manifest(directory: Path) -> ClipManifest:
    """Read ``directory/clip.json`` (written by the ``pretrain_clip`` stage)."""
    return read_json(ClipManifest, Path(directory) / MANIFEST, "clip manifest", "run the pretrain_clip stage first")
