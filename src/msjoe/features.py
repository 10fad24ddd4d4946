"""The CLIP frame-feature cache: one file per (video content, CLIP weights, fps, cap).

Frame features do not depend on the question, so they are computed once per video and reused
by evaluation, training and the service. The key is derived from the content hash, never the
path, so a renamed or re-uploaded video hits the cache and a changed CLIP misses it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def feature_key(sha256: str, clip_identity: str, fps: float, max_candidates: int) -> str:
    """Cache key of one video's candidate-frame features."""
    payload = json.dumps(
        {"video": sha256, "clip": clip_identity, "fps": float(fps), "max_candidates": int(max_candidates)},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class VideoFeatures:
    """L2-normalised features of the candidate frames, with their frame indices and times."""

    features: np.ndarray  # (T, D) float32
    timestamps: np.ndarray  # (T,) float64 seconds
    indices: np.ndarray  # (T,) int64 frame numbers in the video


class FeatureStore:
    """Files under `root/<key[:2]>/<key>.npz`, written atomically so a killed run leaves no torn file."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def save(self, key: str, value: VideoFeatures) -> Path:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(
            tmp,
            features=value.features.astype(np.float32),
            timestamps=value.timestamps.astype(np.float64),
            indices=value.indices.astype(np.int64),
        )
        os.replace(tmp, path)
        return path

    def load(self, key: str) -> VideoFeatures:
        with np.load(self.path(key)) as data:
            return VideoFeatures(data["features"], data["timestamps"], data["indices"])

    def remove(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def keys(self) -> list[str]:
        """The keys of every stored entry (sorted)."""
        return sorted(path.stem for path in self.root.glob("*/*.npz") if not path.name.startswith("."))

    def prune(self, keep: set[str]) -> int:
        """Delete every entry whose key is not in ``keep``; returns how many.

        The embed stage's feature directory is a DVC output: entries left by another CLIP, fps or
        frame cap would make its hash, and so ``dvc.lock``, depend on what ran there before rather
        than on the inputs. DVC's own cache keeps the earlier outputs (``dvc checkout``).
        """
        stale = [key for key in self.keys() if key not in keep]
        for key in stale:
            self.remove(key)
        return len(stale)

    def clean_partial(self) -> int:
        """Delete temporary files a killed run left behind; returns how many."""
        stale = list(self.root.glob("*/.*.tmp.npz"))
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)
