"""The RL rollouts: their questions and frames, their seeding, and their batched episodes.

The ``difficulty`` stage, stage 1 (sampler REINFORCE) and stage 2 (joint GRPO) roll out the
episode of :mod:`msjoe.episode` on training questions; this module gives them

* the inputs, built the way evaluation builds them: :class:`TrainItem` (a question joined with
  its video's candidate features from the embed stage's cache, :func:`load_items`) and
  :class:`FrameCache` (each frame decoded once per run);
* the turns, batched over many questions and rollouts: :func:`query_rollouts` (query turn +
  CLIP similarity) and :func:`answer_rollouts` (answer turn on chosen frames), with a
  :class:`~msjoe.pipeline.Pipeline`'s models and turn settings. The sampler's draw between
  them and the scoring after them are :mod:`msjoe.episode`'s, called by the trainers.

**Randomness.** Every random choice of a training step (which questions, the Gumbel noise, the
MLLM's sampled tokens) is seeded from ``(seed, step, micro-batch, rank)`` through
:func:`step_seed`, not drawn from a global stream. A run resumed from a checkpoint therefore
makes exactly the choices an uninterrupted run makes, whatever happened before the kill.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from msjoe import episode
from msjoe.features import FeatureStore, VideoFeatures
from msjoe.pipeline import FrameSource

if TYPE_CHECKING:
    import pandas as pd

    from msjoe.episode import AnswerTurn, QueryTurn, Seed
    from msjoe.mllm.prompts import Conversation
    from msjoe.pipeline import Pipeline

__all__ = [
    "AnswerRollout",
    "FrameCache",
    "QueryRollout",
    "TrainItem",
    "answer_rollouts",
    "load_items",
    "query_rollouts",
    "step_seed",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainItem:
    """One training question joined with its video's cached candidate features."""

    qid: str
    question: str
    options: tuple[str, ...]
    answer: str
    video: str
    path: Path
    features: VideoFeatures

    @property
    def n_candidates(self) -> int:
        return len(self.features.indices)


def load_items(
    questions: pd.DataFrame,
    video_root: Path,
    features_dir: Path,
    split: str | None = "train",
    max_questions: int | None = None,
) -> tuple[list[TrainItem], dict[str, int]]:
    """Training questions whose video has validated features in the embed cache.

    Args:
        questions: ingest's ``questions.parquet`` (``qid, video, question, options, answer,
            split, sha256``...).
        video_root: directory the ``video`` column is relative to (frames are decoded from it).
        features_dir: the embed stage's cache (its ``index.parquet`` names each video's key).
        split: keep this split only (None or ``"all"``: every row).
        max_questions: keep the first N (file order) after filtering.

    Returns:
        ``(items, counts)``; ``counts`` has ``total`` (rows of the split), ``kept`` and
        ``no_features`` (rows whose video has no usable features: skipped, never silently).
    """
    from msjoe.embed import load_index

    table = questions
    if split not in (None, "all"):
        table = table[table["split"] == split]
    if max_questions:
        table = table.iloc[: int(max_questions)]
    index = load_index(features_dir)
    keys = dict(zip(index["video"], index["key"], strict=True))
    store = FeatureStore(features_dir)
    cache: dict[str, VideoFeatures] = {}
    items: list[TrainItem] = []
    missing = 0
    for row in table.itertuples(index=False):
        key = keys.get(row.video)
        if key is None or not store.has(key):
            missing += 1
            continue
        if row.video not in cache:
            cache[row.video] = store.load(key)
        items.append(
            TrainItem(
                qid=str(row.qid),
                question=str(row.question),
                options=tuple(str(o) for o in row.options),
                answer=str(row.answer),
                video=str(row.video),
                path=Path(video_root) / str(row.video),
                features=cache[row.video],
            )
        )
    if missing:
        log.warning("%d of %d questions have no cached features and are skipped", missing, len(table))
    return items, {"total": len(table), "kept": len(items), "no_features": missing}


class FrameCache:
    """One :class:`~msjoe.pipeline.FrameSource` per video, so each frame is decoded once per run.

    Training revisits the same questions every few steps; decoding is far cheaper to do once
    than the MLLM's answer turn is to batch around.
    """

    def __init__(self) -> None:
        self._sources: dict[Path, FrameSource] = {}

    def frames(self, item: TrainItem, positions: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """Decoded frames at candidate ``positions`` (not frame numbers) of ``item``'s video."""
        source = self._sources.get(item.path)
        if source is None:
            source = self._sources[item.path] = FrameSource(item.path)
        return source.get(item.features.indices[np.asarray(positions, dtype=np.int64)])


def step_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed derived from ``seed`` and the step coordinates (stable across runs).

    >>> step_seed(0, 3, 1) == step_seed(0, 3, 1) != step_seed(0, 3, 2)
    True
    """
    digest = hashlib.sha256(repr((int(seed), *(int(p) for p in parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------------------------
# batched episode turns


@dataclass(frozen=True)
class QueryRollout:
    """One rollout's query turn: its ``conversation``, the ``turn`` (parsed queries, or the
    question as the fallback) and the similarity ``sim`` ``(n_queries, T)`` of the queries used."""

    conversation: Conversation
    turn: QueryTurn
    sim: np.ndarray


@dataclass(frozen=True)
class AnswerRollout:
    """One rollout's answer turn: its ``conversation`` and the ``turn`` (parsed letter)."""

    conversation: Conversation
    turn: AnswerTurn


def query_rollouts(
    pipeline: Pipeline,
    items: Sequence[TrainItem],
    budget: int,
    frames: FrameCache,
    *,
    temperature: float,
    seed: Seed,
    batch_size: int | None = None,
    repeat: int = 1,
    with_log_probs: bool = False,
) -> list[QueryRollout]:
    """Query turns (``budget // 2`` previews) and their similarity matrices.

    Each item's conversation is built once and rolled out ``repeat`` times in a row (a GRPO
    group); the result has ``len(items) * repeat`` entries. The MLLM is ``pipeline.mllm``; turn
    length and query count are ``pipeline.cfg``'s.
    """
    cfg = pipeline.cfg
    convs: list[Conversation] = []
    questions: list[str] = []
    owners: list[TrainItem] = []
    for item in items:
        previews = frames.frames(item, episode.preview_positions(item.n_candidates, budget))
        conv = episode.query_conversation(
            item.question, item.options, previews, n_queries=cfg.n_queries, preview_size=cfg.preview_size
        )
        convs += [conv] * repeat
        questions += [item.question] * repeat
        owners += [item] * repeat
    turns = episode.query_turns(
        pipeline.mllm, convs, questions, n_queries=cfg.n_queries, max_new_tokens=cfg.query_max_new_tokens,
        temperature=temperature, batch_size=batch_size, seed=seed, with_log_probs=with_log_probs,
    )
    return [
        QueryRollout(conv, turn, episode.similarity(pipeline.clip, turn.queries, item.features.features))
        for conv, turn, item in zip(convs, turns, owners, strict=True)
    ]


def answer_rollouts(
    pipeline: Pipeline,
    items: Sequence[TrainItem],
    positions: Sequence[np.ndarray],
    frames: FrameCache,
    *,
    temperature: float,
    seed: Seed,
    batch_size: int | None = None,
    repeat: int = 1,
    with_log_probs: bool = False,
) -> list[AnswerRollout]:
    """Answer turns on the frames at candidate ``positions`` (one array per item).

    Each item's conversation is built once and rolled out ``repeat`` times in a row; the result
    has ``len(items) * repeat`` entries. The MLLM is ``pipeline.mllm``; frame size and reply
    length are ``pipeline.cfg``'s.
    """
    cfg = pipeline.cfg
    convs: list[Conversation] = []
    options: list[tuple[str, ...]] = []
    for item, pos in zip(items, positions, strict=True):
        conv = episode.answer_conversation(
            item.question, item.options, frames.frames(item, pos), answer_size=cfg.answer_size
        )
        convs += [conv] * repeat
        options += [item.options] * repeat
    turns = episode.answer_turns(
        pipeline.mllm, convs, options,
        max_new_tokens=cfg.max_new_tokens,
        temperature=temperature, batch_size=batch_size, seed=seed, with_log_probs=with_log_probs,
    )
    return [AnswerRollout(conv, turn) for conv, turn in zip(convs, turns, strict=True)]
