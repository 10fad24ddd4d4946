"""Question difficulty for stage 1: the base MLLM's pass rate with uniform frames.

Stage 1's advantage (``1/c`` if correct, ``-1/(1-c)`` if wrong) has zero mean exactly when the
sampler's frames help as much as uniform ones, so ``c`` must be measured the way the base model
would answer without a learned sampler: the training budget's K uniformly spaced frames, the
answer turn sampled at temperature 1 (the same distribution stage 1's answers come from), ``n``
attempts per question. A question the base model always gets right (``c = 1``) can only be
penalised, so it is dropped from RL training; the count is reported, never dropped silently.

The answer turn and the correctness decision are the episode's (:mod:`msjoe.episode`, batched
by :func:`msjoe.rl.rollout.answer_rollouts`), the same the trainers and evaluation use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from msjoe.config import from_mapping
from msjoe.episode import is_correct, uniform_positions
from msjoe.rl.rollout import FrameCache, TrainItem, answer_rollouts, step_seed

if TYPE_CHECKING:
    import pandas as pd

    from msjoe.pipeline import Pipeline

__all__ = ["DifficultyConfig", "DifficultyResult", "measure_difficulty", "trainable_qids"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DifficultyConfig:
    """``n_attempts`` answers per question with ``budget`` uniform frames at ``temperature``;
    ``batch_size`` conversations per MLLM call (the reply length is the pipeline's, as in every
    other stage)."""

    n_attempts: int = 8
    budget: int = 8
    temperature: float = 1.0
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_attempts < 1 or self.budget < 1 or self.batch_size < 1:
            raise ValueError("n_attempts, budget and batch_size must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> DifficultyConfig:
        """From a params section; unknown keys are an error (a typo must not be ignored)."""
        return from_mapping(cls, values, "difficulty")


@dataclass
class DifficultyResult:
    """``table``: one row per question (``qid, c, correct, attempts, parse_failures``);
    ``report``: counts (``n_questions``, ``n_solved`` = c = 1, dropped from RL; ``n_trainable``),
    the mean pass rate and its histogram (deterministic: the stage's metrics); ``timings``: wall
    time, run-dependent, kept apart."""

    table: pd.DataFrame
    report: dict[str, Any]
    timings: dict[str, Any] = field(default_factory=dict)


def measure_difficulty(
    pipeline: Pipeline, items: Sequence[TrainItem], cfg: DifficultyConfig, frames: FrameCache | None = None
) -> DifficultyResult:
    """Pass rate ``c`` of ``pipeline.mllm`` per question with uniform frames (module docstring).

    Deterministic for a given seed: attempts are batched in a fixed order and each batch's
    sampling is seeded from ``(seed, batch index)``.
    """
    import pandas as pd

    started = time.perf_counter()
    frames = frames or FrameCache()
    answers = answer_rollouts(
        pipeline, items, [uniform_positions(item.n_candidates, cfg.budget) for item in items], frames,
        temperature=cfg.temperature, seed=lambda b: step_seed(cfg.seed, b), batch_size=cfg.batch_size,
        repeat=cfg.n_attempts,
    )
    correct = np.zeros(len(items), dtype=np.int64)
    failures = np.zeros(len(items), dtype=np.int64)
    for n, answer in enumerate(answers):
        owner = n // cfg.n_attempts
        failures[owner] += not answer.turn.ok
        correct[owner] += is_correct(answer.turn.letter, items[owner].answer)
    c = correct / cfg.n_attempts
    table = pd.DataFrame(
        {
            "qid": [item.qid for item in items],
            "c": c,
            "correct": correct,
            "attempts": cfg.n_attempts,
            "parse_failures": failures,
        }
    )
    solved = int((c == 1.0).sum())
    hist, edges = np.histogram(c, bins=np.linspace(0.0, 1.0, 6)) if len(c) else (np.zeros(5), np.linspace(0, 1, 6))
    report = {
        "n_questions": len(items),
        "n_solved": solved,
        "n_trainable": len(items) - solved,
        "n_never_solved": int((c == 0.0).sum()),
        "mean_pass_rate": float(c.mean()) if len(c) else 0.0,
        "parse_failure_rate": float(failures.sum() / max(len(answers), 1)),
        "pass_rate_histogram": {f"{lo:.1f}-{hi:.1f}": int(n) for lo, hi, n in zip(edges[:-1], edges[1:], hist)},
        "config": asdict(cfg),
    }
    log.info(
        "difficulty of %d questions: mean pass rate %.3f, %d solved every time (dropped from RL)",
        len(items), report["mean_pass_rate"], solved,
    )
    return DifficultyResult(table=table, report=report, timings={"seconds": time.perf_counter() - started})


def trainable_qids(table: pd.DataFrame) -> tuple[dict[str, float], int]:
    """``qid -> c`` for the questions RL trains on (``c < 1``), and how many were dropped."""
    keep = table[table["c"] < 1.0]
    return dict(zip(keep["qid"].astype(str), keep["c"].astype(float), strict=True)), int(len(table) - len(keep))
