"""Configuration of the demo world generator, validated up front.

Validation lives here (not in the generator) so a bad ``params.yaml`` section fails before any
file is written, with a message naming the offending field.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from msjoe.config import from_mapping
from msjoe.world.vocab import SHAPES

FAMILIES: tuple[str, ...] = ("attribute", "order", "count", "first_last")
"""Question families the generator knows how to pose."""

MIN_GAP_FRAMES = 3
"""Minimum number of background-only frames between two events, so events never touch and a
sampler has to find each one separately."""


def _default_videos() -> dict[str, int]:
    return {"train": 40, "eval": 20}


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines a generated world; same config -> byte-identical world.

    ``videos`` maps split name to number of videos. Each video is seeded from
    ``(seed, split, index)`` only, so changing the size of one split never changes the videos
    of another, and growing a split only appends videos.
    """

    seed: int = 0
    videos: dict[str, int] = field(default_factory=_default_videos)
    frames: int = 240
    fps: float = 2.0
    size: int = 64
    events_per_video: tuple[int, int] = (4, 6)
    event_frames: tuple[int, int] = (2, 4)
    scene_frames: tuple[int, int] = (20, 60)
    families: tuple[str, ...] = FAMILIES

    def __post_init__(self) -> None:
        # Accept lists (YAML) for the tuple fields while keeping the dataclass frozen.
        for name in ("events_per_video", "event_frames", "scene_frames", "families"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "videos", {str(k): int(v) for k, v in dict(self.videos).items()})
        self._validate()

    def _validate(self) -> None:
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        if not self.videos:
            raise ValueError("videos must name at least one split")
        for split, count in self.videos.items():
            if not split or not split.replace("_", "").isalnum():
                raise ValueError(f"split name {split!r} must be alphanumeric (it becomes a path)")
            if count < 0:
                raise ValueError(f"videos[{split!r}] must be >= 0")
        if self.fps <= 0:
            raise ValueError("fps must be > 0")
        if self.size < 16 or self.size % 2:
            raise ValueError("size must be an even number >= 16 (yuv420p needs even sides)")
        for name in ("events_per_video", "event_frames", "scene_frames"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 1 <= lo_hi[0] <= lo_hi[1]:
                raise ValueError(f"{name} must be an inclusive range (lo, hi) with 1 <= lo <= hi")
        if self.events_per_video[1] > 2 * len(SHAPES):
            raise ValueError(f"events_per_video allows at most {2 * len(SHAPES)} events")
        most = self.events_per_video[1]
        needed = most * self.event_frames[1] + (most - 1) * MIN_GAP_FRAMES
        if needed > self.frames:
            raise ValueError(
                f"frames={self.frames} cannot hold {most} events of up to "
                f"{self.event_frames[1]} frames with gaps of {MIN_GAP_FRAMES} (needs {needed})"
            )
        unknown = set(self.families) - set(FAMILIES)
        if unknown or len(set(self.families)) != len(self.families):
            raise ValueError(f"families must be distinct names from {FAMILIES}, got {self.families}")

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any]) -> WorldConfig:
        """Build a config from a plain mapping (a params.yaml section); unknown keys are an
        error so a typo does not silently fall back to a default."""
        return from_mapping(cls, params, "world")

    @property
    def duration_s(self) -> float:
        """Length of every video in seconds."""
        return self.frames / self.fps


def split_key(split: str) -> int:
    """Stable integer for a split name (Python's ``hash`` is salted per process)."""
    return zlib.crc32(split.encode("utf-8"))


def video_id(split: str, index: int) -> str:
    """Canonical video id, e.g. ``train_0007``."""
    return f"{split}_{index:04d}"
