"""The embed stage: candidate frames of every ingested video through the frozen CLIP, cached.

Decoding runs in a DataLoader worker process while the main process encodes, so the stage is
bounded by the slower of the two rather than their sum. Features stream to the cache one video
at a time (memory stays flat as the number of videos grows), videos already in the cache are
skipped (a killed run resumes), and a video that fails to decode is recorded and skipped.

Under ``torchrun`` (:mod:`msjoe.shards`) each rank embeds its share of the distinct videos
(dealt round-robin by content key) into the same cache; rank 0 then writes the index and holds
the complete report. Features do not depend on which rank made them (bit for bit at the same
``threads``), and a rank that dies loses only the videos it had not finished.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from msjoe.clip.model import FrozenClip
from msjoe.features import FeatureStore, VideoFeatures, feature_key
from msjoe.shards import all_gather, barrier, owned, rank_and_world
from msjoe.validation import feature_summary, validate_features
from msjoe.video import VideoError, candidate_indices, decode_frames, open_reader, resolve_video

log = logging.getLogger(__name__)

INDEX = "index.parquet"


@dataclass(frozen=True)
class EmbedConfig:
    fps: float = 2.0
    max_candidates: int = 256
    batch_size: int = 64
    chunk_frames: int = 128  # frames decoded per work item; bounds the decoder's memory
    decode_workers: int = 1  # 0 decodes in the main process (no overlap)


@dataclass
class EmbedReport:
    videos: int = 0
    embedded: int = 0
    cached: int = 0
    failed: int = 0
    frames_embedded: int = 0
    pruned: int = 0
    seconds: float = 0.0
    frames_per_s: float = 0.0
    decode_seconds: float = 0.0
    encode_seconds: float = 0.0
    clip_identity: str = ""
    failures: list[dict[str, str]] = field(default_factory=list)

    #: run-dependent values: in :meth:`timings`, not in :meth:`to_dict` (the stage's metrics).
    #: What this run embedded and what it found in the cache depend on what earlier runs left
    #: there, not on the inputs: a rerun after a fresh clone and one on a warm cache must
    #: write the same metrics.
    TIMINGS = ("embedded", "cached", "frames_embedded", "pruned", "seconds", "frames_per_s", "decode_seconds", "encode_seconds")

    def to_dict(self) -> dict[str, Any]:
        """The deterministic counts (DVC metrics of the stage): videos, failures, CLIP identity."""
        return {k: v for k, v in asdict(self).items() if k not in self.TIMINGS}

    def timings(self) -> dict[str, float]:
        """What this run embedded or found cached, wall time of the decode+encode loop, its
        throughput and the decode / encode shares."""
        return {k: getattr(self, k) for k in self.TIMINGS}


@dataclass(frozen=True)
class _Chunk:
    video: str
    path: Path
    indices: np.ndarray
    video_fps: float
    last: bool


class _DecodeDataset(Dataset):
    """Work items are chunks of one video's candidate frames; a worker decodes and preprocesses them."""

    def __init__(self, chunks: list[_Chunk], preprocess: Any) -> None:
        self.chunks = chunks
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, item: int) -> dict[str, Any]:
        from PIL import Image

        chunk = self.chunks[item]
        started = time.perf_counter()
        try:
            frames = decode_frames(open_reader(chunk.path), chunk.indices)
            pixels = torch.stack([self.preprocess(Image.fromarray(f)) for f in frames])
            error = None
        except (VideoError, RuntimeError, OSError) as exc:  # decord raises RuntimeError subclasses
            pixels, error = torch.zeros(0), f"{type(exc).__name__}: {exc}"
        return {"item": item, "pixels": pixels, "error": error, "seconds": time.perf_counter() - started}


def plan_chunks(videos: pd.DataFrame, video_root: Path, cfg: EmbedConfig) -> list[_Chunk]:
    chunks = []
    for row in videos.itertuples(index=False):
        indices = candidate_indices(int(row.n_frames), float(row.fps), cfg.fps, cfg.max_candidates)
        path = resolve_video(video_root, row.video)
        pieces = max(1, int(np.ceil(len(indices) / cfg.chunk_frames)))
        for n, part in enumerate(np.array_split(indices, pieces)):
            chunks.append(_Chunk(row.video, path, part, float(row.fps), n == pieces - 1))
    return chunks


def embed_videos(
    videos: pd.DataFrame,
    video_root: Path,
    clip: FrozenClip,
    cache_dir: Path,
    cfg: EmbedConfig,
    progress: bool = True,
) -> EmbedReport:
    """Embed the candidate frames of `videos` (ingest's table) into `cache_dir`; write its index.

    In a ``torchrun`` launch every rank calls this with the same arguments (see the module
    docstring); the returned report is complete on rank 0.
    """
    from tqdm import tqdm

    rank, world = rank_and_world()
    store = FeatureStore(cache_dir)
    removed = store.clean_partial() if rank == 0 else 0
    if removed:
        log.info("removed %d partial feature files from an interrupted run", removed)
    barrier()  # no rank writes before the leftovers are gone
    report = EmbedReport(videos=len(videos), clip_identity=clip.identity)
    keys = {
        row.video: feature_key(row.sha256, clip.identity, cfg.fps, cfg.max_candidates)
        for row in videos.itertuples(index=False)
    }
    # one decode per distinct content: copies of a video under other names share the key
    distinct = videos[~videos["video"].map(keys).duplicated()]
    todo = distinct[[not store.has(keys[v]) for v in distinct["video"]]]
    report.cached = len(videos) - len(todo)
    if world > 1:
        share = dict(zip(distinct["video"], owned([keys[v] for v in distinct["video"]], rank, world), strict=True))
        todo = todo[todo["video"].map(share).astype(bool)]
    barrier()  # every rank has seen the cache as it was at the start (the counts do not race)
    chunks = plan_chunks(todo, video_root, cfg)
    started = time.perf_counter()
    loader = DataLoader(
        _DecodeDataset(chunks, clip.preprocess),
        batch_size=None,
        num_workers=cfg.decode_workers,
        prefetch_factor=4 if cfg.decode_workers else None,
        persistent_workers=False,
        # a fresh interpreter: a forked worker inherits the host process (atexit hooks, threads,
        # loggers of a Prefect worker or a test session) and can die on exit
        multiprocessing_context="spawn" if cfg.decode_workers else None,
    )
    buffers: list[np.ndarray] = []
    failed_video: str | None = None
    bar = tqdm(total=sum(len(c.indices) for c in chunks), desc=f"embed frames (rank {rank}/{world})" if world > 1
               else "embed frames", unit="frame", disable=not progress)
    for item in loader:
        chunk = chunks[item["item"]]
        report.decode_seconds += item["seconds"]
        if item["error"] is not None and failed_video != chunk.video:
            failed_video = chunk.video
            report.failures.append({"video": chunk.video, "reason": f"decoding failed: {item['error']}"})
        if failed_video != chunk.video:
            t0 = time.perf_counter()
            for start in range(0, len(item["pixels"]), cfg.batch_size):
                buffers.append(clip.encode_pixels(item["pixels"][start : start + cfg.batch_size]))
            report.encode_seconds += time.perf_counter() - t0
        bar.update(len(chunk.indices))
        if chunk.last:
            if failed_video != chunk.video:
                indices = np.concatenate([c.indices for c in chunks if c.video == chunk.video])
                value = VideoFeatures(np.concatenate(buffers), indices / chunk.video_fps, indices)
                store.save(keys[chunk.video], value)
                report.embedded += 1
                report.frames_embedded += len(indices)
            buffers, failed_video = [], None
    bar.close()
    report.seconds = time.perf_counter() - started
    if world > 1:
        _merge_ranks(report, list(videos["video"]))
    report.frames_per_s = report.frames_embedded / report.seconds if report.seconds > 0 else 0.0
    if rank == 0:
        _write_index(videos, keys, store, cache_dir, report)
        # only this input set's entries: the directory's hash must not depend on earlier runs
        report.pruned = store.prune(set(keys.values()))
        if report.pruned:
            log.info("removed %d feature files of other inputs (another CLIP, fps or cap)", report.pruned)
    barrier()  # no rank returns before the index exists
    report.failed = len(report.failures)
    return report


def _merge_ranks(report: EmbedReport, order: list[str]) -> None:
    """Sum every rank's counts into ``report`` (failures in video-table order, as one process
    would list them; wall time is the slowest rank's, so throughput is the launch's)."""
    parts = all_gather({k: getattr(report, k) for k in
                        ("embedded", "frames_embedded", "decode_seconds", "encode_seconds", "seconds", "failures")})
    for key in ("embedded", "frames_embedded", "decode_seconds", "encode_seconds"):
        setattr(report, key, sum(part[key] for part in parts))
    report.seconds = max(part["seconds"] for part in parts)
    position = {video: i for i, video in enumerate(order)}
    report.failures = sorted((f for part in parts for f in part["failures"]), key=lambda f: position[f["video"]])


def _write_index(
    videos: pd.DataFrame, keys: dict[str, str], store: FeatureStore, cache_dir: Path, report: EmbedReport
) -> None:
    """Index of the usable features of the current video table, checked with GX."""
    failed = {f["video"] for f in report.failures}
    rows = []
    for row in videos.itertuples(index=False):
        if row.video in failed:
            continue
        value = store.load(keys[row.video])
        rows.append(
            {
                "video": row.video,
                "sha256": row.sha256,
                "key": keys[row.video],
                "file": str(store.path(keys[row.video]).relative_to(cache_dir)),
                **feature_summary(row.video, value.features, value.timestamps),
            }
        )
    dims = {r["dim"] for r in rows}
    problems = validate_features(rows, dim=max(dims) if dims else 0) if rows else {}
    for video, reasons in problems.items():
        report.failures.append({"video": video, "reason": "features failed validation: " + "; ".join(reasons)})
        store.remove(keys[video])
    index = pd.DataFrame([r for r in rows if r["video"] not in problems])
    index.to_parquet(cache_dir / INDEX, index=False)


def load_index(cache_dir: Path) -> pd.DataFrame:
    """The embed stage's index: video, sha256, key, file, and the validated summary columns."""
    return pd.read_parquet(cache_dir / INDEX)
