"""The demo world's event annotations (``events.jsonl``): which frames show which event.

One home for reading them and for the question "which events do these frames show", asked by
the demo base model's pre-training (its ``Seen:`` lists) and by the diagnosis of evaluated
answers (:mod:`msjoe.world.diagnose`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EVENTS_FILE", "VideoEvent", "load_events", "shown_events"]

EVENTS_FILE = "events.jsonl"


@dataclass(frozen=True)
class VideoEvent:
    """One annotated event: frames ``start..end`` (inclusive) show ``caption``."""

    start: int
    end: int
    caption: str


def load_events(world_dir: Path) -> dict[str, list[VideoEvent]]:
    """``video id -> events`` in time order; empty when the world has no ``events.jsonl``."""
    path = Path(world_dir) / EVENTS_FILE
    if not path.is_file():
        return {}
    out: dict[str, list[VideoEvent]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            events = [VideoEvent(int(e["start_frame"]), int(e["end_frame"]), str(e["caption"])) for e in row["events"]]
            out[row["video_id"]] = sorted(events, key=lambda e: (e.start, e.end))
    return out


def shown_events(events: Sequence[VideoEvent], frames: Iterable[int]) -> list[str]:
    """Captions of the events some frame in ``frames`` shows, each event once, in time order.

    >>> shown_events([VideoEvent(0, 2, "a red star"), VideoEvent(5, 6, "a blue circle")], [1, 2, 9])
    ['a red star']
    """
    chosen = {int(f) for f in frames}
    return [e.caption for e in events if any(e.start <= f <= e.end for f in chosen)]
