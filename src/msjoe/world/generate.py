"""Generate the demo long-video world on disk.

Layout written under ``out_dir`` (other stages depend on these names):

- ``videos/{split}/{video_id}.mp4``: H.264 (libx264, yuv420p, crf 20) at ``cfg.fps``, written
  with PyAV; decord reads back exactly ``cfg.frames`` frames.
- ``qa.jsonl``: one question per line in the project's QA schema (``qid``, ``video`` relative to
  ``out_dir``, ``question``, ``options``, ``answer``, ``duration_s``, ``category``, ``split``,
  ``evidence`` as ``[start_s, end_s]`` spans; frame i covers ``[i/fps, (i+1)/fps)``).
- ``annotations.jsonl``: per question ``qid``, ``target_captions``, ``reference_queries``,
  ``evidence_frames``.
- ``frames/{video_id}.jsonl``: per frame ``video_id``, ``split``, ``frame``, ``t``,
  ``background``, ``objects`` (list of ``{"shape", "colour"}``), ``caption``; the ground truth
  CLIP pre-training learns from. One file per video so a consumer can stream one video at a time.
- ``events.jsonl``: per video ``video_id``, ``split``, ``events`` (sorted by time, each with
  ``shape``, ``colour``, ``start_frame``, ``end_frame`` inclusive, ``start_s``, ``end_s``,
  ``caption``).
- ``summary.json``: :meth:`WorldSummary.to_dict`.

Everything is a pure function of the :class:`WorldConfig`: the same config gives byte-identical
files, whatever the process state (environment, heap layout, load, thread settings) and whichever
x86-64 CPU runs it. Pixels are rendered with bit-reproducible arithmetic (see
:mod:`msjoe.world.scene`) and the encoder is pinned to a deterministic configuration, instruction
sets included (see :func:`write_mp4`).
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from msjoe.world.config import WorldConfig
from msjoe.world.questions import Question, make_questions
from msjoe.world.scene import VideoSpec, plan_video, render_video, video_rng

logger = logging.getLogger(__name__)

CRF = 20
"""x264 constant rate factor: low enough that the saturated event colours survive."""
GOP = 30
"""Keyframe interval: keeps random access (decord seeks) cheap in long videos."""


@dataclass(frozen=True)
class WorldSummary:
    """Counts describing a generated world (written to ``summary.json``).

    ``mean_evidence_fraction`` is the mean over questions of evidence frames / video frames:
    the smaller it is, the more frame selection matters.
    """

    videos: dict[str, int]
    questions: dict[str, int]
    questions_per_family: dict[str, dict[str, int]]
    events: int
    total_frames: int
    mean_evidence_fraction: float
    evidence_fraction_per_split: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form."""
        return asdict(self)


X264_ASM = "SSE4.2" if platform.machine().lower() in ("x86_64", "amd64") else "auto"
"""The instruction sets x264 may use. Its CPU detection otherwise picks AVX2 or AVX-512 code whose
float paths (macroblock-tree propagation, for one) round differently, so the same frames gave a
different mp4 on a machine with AVX-512 (measured: another first video, and another ``data/world``
hash). SSE4.2, which every x86-64 machine we run on has, is as fast here (0.16 s a video against
0.17 s with AVX-512; plain C takes 0.5 s). Other architectures keep x264's own choice."""

X264_PARAMS = f"threads=1:lookahead-threads=1:sliced-threads=0:non-deterministic=0:asm={X264_ASM}"
"""x264 settings that make its output a function of the input frames alone. x264's bitstream
depends on its thread count (frame threads limit motion search to rows already encoded), and the
default count is derived from the CPUs the process sees, so it is pinned to one encoding and one
lookahead thread, no slice threads, and x264's non-deterministic mode stays off. Its instruction
sets are pinned by :data:`X264_ASM`. Stated to x264 itself rather than relying only on the
wrapper's ``thread_count``."""


def write_mp4(path: Path, frames: np.ndarray, fps: float, crf: int = CRF) -> None:
    """Encode ``uint8`` RGB frames ``(T, H, W, 3)`` as an H.264 mp4 that decord can read.

    The bytes depend only on ``frames``, ``fps`` and ``crf`` (for a given PyAV/FFmpeg/x264
    build): x264 is pinned by :data:`X264_PARAMS`, keyframes come at least every :data:`GOP`
    frames (scene cuts in between depend on the content only), pts are set explicitly, the
    rgb24 -> yuv420p conversion runs in one thread, and the muxer runs bit-exact (no library
    version string in the container).
    """
    import av  # heavy-ish (bundled FFmpeg); only needed when writing videos

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got {frames.dtype} {frames.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width = int(frames.shape[2])
        stream.height = int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        stream.options = {
            "crf": str(crf),
            "preset": "medium",
            "g": str(GOP),
            "threads": "1",
            "x264-params": X264_PARAMS,
        }
        stream.codec_context.thread_count = 1  # also the swscale thread count PyAV uses for rgb24 -> yuv420p
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = index  # explicit, not the encoder's frame counter
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def video_relpath(spec: VideoSpec) -> str:
    """Path of a video's mp4 relative to the world root (the ``video`` field of qa.jsonl)."""
    return f"videos/{spec.split}/{spec.video_id}.mp4"


def iter_specs(cfg: WorldConfig) -> Iterator[VideoSpec]:
    """Plans of every video in the world, split by split, in index order."""
    for split, count in cfg.videos.items():
        for index in range(count):
            yield plan_video(cfg, split, index)


def questions_for(cfg: WorldConfig, spec: VideoSpec) -> list[Question]:
    """The questions of one planned video (seeded independently of its pixels)."""
    return make_questions(spec, cfg.families, video_rng(cfg, spec.split, spec.index, 1))


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def _track(items: list[VideoSpec], enabled: bool) -> Iterable[VideoSpec]:
    if not enabled:
        return items
    from rich.progress import track

    return track(items, description="rendering videos", total=len(items))


def generate_world(cfg: WorldConfig, out_dir: Path, progress: bool = True) -> WorldSummary:
    """Plan, render and write the whole world under ``out_dir``; returns its summary.

    ``videos/`` and ``frames/`` under ``out_dir`` are replaced, so no stale video from an
    earlier, larger world is left behind.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for owned in ("videos", "frames"):
        if (out_dir / owned).exists():
            shutil.rmtree(out_dir / owned)
    (out_dir / "frames").mkdir()
    for split in cfg.videos:
        (out_dir / "videos" / split).mkdir(parents=True, exist_ok=True)

    specs = list(iter_specs(cfg))
    qa_rows: list[dict[str, Any]] = []
    annotation_rows: list[dict[str, Any]] = []
    event_rows: list[dict[str, Any]] = []
    per_family = {split: {family: 0 for family in cfg.families} for split in cfg.videos}
    fractions: dict[str, list[float]] = {split: [] for split in cfg.videos}

    for spec in _track(specs, progress):
        relpath = video_relpath(spec)
        write_mp4(out_dir / relpath, render_video(spec), cfg.fps)
        _write_jsonl(out_dir / "frames" / f"{spec.video_id}.jsonl", spec.frame_records())
        event_rows.append(spec.events_record())
        for question in questions_for(cfg, spec):
            qa_rows.append(question.qa_record(spec, relpath))
            annotation_rows.append(question.annotation_record())
            per_family[spec.split][question.family] += 1
            fractions[spec.split].append(len(question.evidence_frames()) / spec.frames)

    _write_jsonl(out_dir / "qa.jsonl", qa_rows)
    _write_jsonl(out_dir / "annotations.jsonl", annotation_rows)
    _write_jsonl(out_dir / "events.jsonl", event_rows)

    all_fractions = [f for values in fractions.values() for f in values]
    summary = WorldSummary(
        videos=dict(cfg.videos),
        questions={split: len(values) for split, values in fractions.items()},
        questions_per_family=per_family,
        events=sum(len(row["events"]) for row in event_rows),
        total_frames=len(specs) * cfg.frames,
        mean_evidence_fraction=round(float(np.mean(all_fractions)), 6) if all_fractions else 0.0,
        evidence_fraction_per_split={
            split: round(float(np.mean(values)), 6) if values else 0.0 for split, values in fractions.items()
        },
    )
    (out_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n", encoding="utf-8")
    logger.info(
        "world: %d videos, %d questions, mean evidence fraction %.3f -> %s",
        len(specs),
        len(qa_rows),
        summary.mean_evidence_fraction,
        out_dir,
    )
    return summary
