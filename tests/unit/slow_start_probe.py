"""A probe whose module takes ``SLOW_START_S`` seconds (an environment variable, 0 if unset) to
import: set it before :func:`msjoe.probe.probe_many` spawns its workers, and each worker starts
as slowly as a cold start of FFmpeg's libraries and their Python imports can."""

from __future__ import annotations

import os
import time
from pathlib import Path

from msjoe.video import VideoInfo

time.sleep(float(os.environ.get("SLOW_START_S", "0")))


def instant_probe(path: Path) -> tuple[VideoInfo, str]:
    """Return at once: the only slow part of this worker is its start."""
    return VideoInfo(1, 1.0, 1.0, 1, 1), "0" * 64
