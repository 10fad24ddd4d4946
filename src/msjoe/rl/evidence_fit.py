"""An upper bound for stage 1: the sampler fitted straight to where the evidence is.

Stage 1 teaches the sampler from a reward (was the answer right?). Where the training questions
carry evidence annotations, the same network can instead be *told* where the evidence is, on
the same inputs stage 1 sees (the frozen MLLM's query similarities), and evaluated like any
other sampler. That sampler is a bound on what reward-driven training of the network can find
from those inputs: if it does not answer better than the untrained sampler, no stage-1 recipe
will by much, and the limit lies elsewhere (the queries, or what the MLLM makes of the frames).

The target spreads each question's probability evenly over its evidence spans, and within a
span evenly over its candidate frames, so a question about two events asks for both; the loss
is the cross-entropy between that target and the sampler's distribution. It is a diagnostic
(``tools/evidence_bound.py``), not part of the paper's recipe, and never enters the DAG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from msjoe.evaluate import evidence_groups
from msjoe.optim import adamw

if TYPE_CHECKING:
    from msjoe.sampling.unet import UNetSampler

__all__ = ["EvidenceFitConfig", "evidence_target", "fit_to_evidence"]


@dataclass(frozen=True)
class EvidenceFitConfig:
    """``steps`` AdamW steps of ``questions_per_step`` questions (seeded choice) at ``lr``, from
    a fresh ``sampler`` network (``"tiny"``, ``"default"`` or UNetConfig fields) initialised
    from ``init_seed``, the same start stage 1 has."""

    steps: int = 400
    questions_per_step: int = 16
    lr: float = 3e-3
    seed: int = 0
    sampler: Any = "tiny"
    init_seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.questions_per_step < 1 or not self.lr > 0:
            raise ValueError("steps and questions_per_step must be >= 1 and lr positive")


def evidence_target(timestamps: np.ndarray, evidence: Any) -> np.ndarray | None:
    """The target distribution over a question's candidate frames: each evidence span gets an
    equal share, spread evenly over the candidates inside it. None when no candidate lies in
    any span (nothing to fit).

    >>> evidence_target(np.arange(6) * 0.5, [[0.0, 1.0], [2.0, 2.5]]).tolist()
    [0.25, 0.25, 0.0, 0.0, 0.5, 0.0]
    >>> evidence_target(np.arange(6) * 0.5, [[9.0, 9.5]]) is None
    True
    """
    groups = evidence_groups(np.asarray(timestamps, dtype=np.float64), evidence)
    if not groups:
        return None
    target = np.zeros(len(timestamps), dtype=np.float32)
    for group in groups:
        target[group] += 1.0 / (len(group) * len(groups))
    return target


def fit_to_evidence(
    similarities: Sequence[np.ndarray], targets: Sequence[np.ndarray], cfg: EvidenceFitConfig
) -> tuple[UNetSampler, list[float]]:
    """Fit a fresh sampler network so that its distribution over each question's candidate
    frames matches ``targets`` (:func:`evidence_target`); returns it (eval mode) and the loss
    of every step. Deterministic for a given ``cfg`` on one thread.

    Args:
        similarities: one ``(n_queries, T_i)`` similarity matrix per question.
        targets: one ``(T_i,)`` distribution per question (non-negative, summing to 1).
    """
    import torch

    from msjoe.episode import sampler_log_probs
    from msjoe.sampling.unet import new_unet

    if len(similarities) != len(targets) or not similarities:
        raise ValueError(f"{len(similarities)} similarity matrices and {len(targets)} targets: need as many, >= 1")
    for i, (sim, target) in enumerate(zip(similarities, targets, strict=True)):
        if np.asarray(sim).shape[-1] != len(target) or not np.isclose(float(np.sum(target)), 1.0, atol=1e-4):
            raise ValueError(f"target {i}: must be a distribution over the {np.asarray(sim).shape[-1]} candidate frames")
    model = new_unet(cfg.sampler, cfg.init_seed)
    model.train()
    optimizer = adamw(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    k = min(cfg.questions_per_step, len(similarities))
    losses: list[float] = []
    for _ in range(cfg.steps):
        chosen = rng.choice(len(similarities), size=k, replace=False)
        logp, mask = sampler_log_probs(model, [similarities[i] for i in chosen],
                                       model.config.max_queries, model.config.levels)
        target = torch.zeros_like(logp)
        for row, i in enumerate(chosen):
            target[row, : len(targets[i])] = torch.as_tensor(targets[i], dtype=target.dtype)
        loss = -(target * logp.masked_fill(~mask, 0.0)).sum(dim=-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    return model, losses
