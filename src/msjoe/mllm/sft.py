"""Supervised fine-tuning of the MLLM on (conversation, target reply) pairs.

The demo's ``pretrain`` stage uses it to give the tiny Qwen2.5-VL its "pre-training" on the
generated world (write queries, answer from frames); it is generic: the examples come from the
caller. The loss is the mean negative log-likelihood of the target tokens plus the end-of-turn
token, computed by :meth:`msjoe.mllm.load.MLLM.sequence_log_probs`, the same scoring GRPO uses,
so the prompt layout seen in training is exactly the one seen at generation.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from msjoe.mllm.load import MLLM
from msjoe.mllm.prompts import Conversation
from msjoe.optim import adamw

__all__ = ["SFTConfig", "SFTExample", "SFTReport", "lr_at_step", "supervised_finetune"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTExample:
    """A prompt conversation (with its images) and the reply the model should write.

    ``prefix``: the start of the reply, given rather than learned: it is in the model's
    context but its tokens are not scored (to teach what follows a given text, e.g. the
    answer after a given ``Seen:`` list). The reply is ``prefix + target``.
    """

    messages: Conversation
    target: str
    prefix: str = ""


@dataclass(frozen=True)
class SFTConfig:
    """Optimisation settings. ``max_steps`` (when set) overrides ``epochs``."""

    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 8
    epochs: int = 1
    max_steps: int | None = None
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    betas: tuple[float, float] = (0.9, 0.95)
    freeze_vision: bool = False
    seed: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("batch_size and epochs must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1 when set")
        if not 0.0 <= self.warmup_ratio < 1.0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("warmup_ratio must be in [0, 1) and min_lr_ratio in [0, 1]")


@dataclass
class SFTReport:
    """What happened: per-step loss, learning rate and gradient norm, and totals."""

    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    steps: int = 0
    examples_seen: int = 0
    tokens_seen: int = 0
    seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        """Mean loss over the last tenth of the steps (less noisy than the last step)."""
        if not self.losses:
            return math.nan
        tail = self.losses[-max(1, len(self.losses) // 10) :]
        return sum(tail) / len(tail)


def lr_at_step(step: int, total_steps: int, cfg: SFTConfig) -> float:
    """Learning rate at 0-based ``step``: linear warmup, then cosine decay to ``min_lr_ratio``.

    >>> cfg = SFTConfig(learning_rate=1.0, warmup_ratio=0.2, min_lr_ratio=0.0)
    >>> [round(lr_at_step(s, 10, cfg), 3) for s in (0, 1, 2, 6, 9)]
    [0.5, 1.0, 1.0, 0.5, 0.038]
    """
    warmup = int(cfg.warmup_ratio * total_steps)
    if step < warmup:
        return cfg.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.learning_rate * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


def _batches(n: int, cfg: SFTConfig, total_steps: int) -> Iterator[list[int]]:
    """Example indices per step: a fresh seeded permutation each epoch, last batch may be short."""
    import numpy as np

    rng = np.random.default_rng(cfg.seed)
    produced = 0
    while produced < total_steps:
        order = rng.permutation(n).tolist()
        for start in range(0, n, cfg.batch_size):
            yield order[start : start + cfg.batch_size]
            produced += 1
            if produced == total_steps:
                return


def _prefix_tokens(mllm: MLLM, example: SFTExample) -> int:
    """Tokens of ``example.prefix`` at the start of its reply; raises if the tokenizer merges
    the prefix's last token with the target's first (the boundary would then be ambiguous)."""
    if not example.prefix:
        return 0
    given = mllm.encode_completion(example.prefix, append_eos=False)
    whole = mllm.encode_completion(example.prefix + example.target, append_eos=False)
    if whole[: len(given)] != given or len(whole) == len(given):
        raise ValueError(f"SFT example: the prefix {example.prefix!r} does not end on a token boundary before "
                         f"the target {example.target!r}")
    return len(given)


def supervised_finetune(
    mllm: MLLM,
    examples: Sequence[SFTExample],
    cfg: SFTConfig,
    progress: bool = True,
) -> SFTReport:
    """Fine-tune ``mllm.model`` in place with AdamW on the target tokens; return the curve.

    The model is left in eval mode. Shuffling is seeded by ``cfg.seed``; the model has no
    dropout, so a run is reproducible on a given machine.
    """
    import torch
    from tqdm.auto import tqdm

    if not examples:
        raise ValueError("no SFT examples")
    model = mllm.model
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    vision = getattr(getattr(model, "model", None), "visual", None)
    frozen = {id(p) for p in vision.parameters()} if (cfg.freeze_vision and vision is not None) else set()
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in frozen]
    optimizer = adamw(params, lr=cfg.learning_rate, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at_step(step, total_steps, cfg) / cfg.learning_rate
    )
    report = SFTReport()
    started = time.perf_counter()
    model.train()
    bar = tqdm(total=total_steps, desc="sft", disable=not progress, leave=False)
    try:
        for step, indices in enumerate(_batches(len(examples), cfg, total_steps)):
            batch = [examples[i] for i in indices]
            scored = mllm.sequence_log_probs([e.messages for e in batch], [e.prefix + e.target for e in batch])
            mask = scored.mask
            if any(e.prefix for e in batch):
                given = torch.tensor([_prefix_tokens(mllm, e) for e in batch], device=mask.device)
                mask = mask & (torch.arange(mask.shape[1], device=mask.device)[None, :] >= given[:, None])
            n_tokens = mask.sum()
            loss = -(scored.log_probs * mask).sum() / n_tokens
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            report.learning_rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
            report.losses.append(float(loss.detach()))
            report.grad_norms.append(float(grad_norm))
            report.steps += 1
            report.examples_seen += len(batch)
            report.tokens_seen += int(n_tokens)
            bar.update(1)
            bar.set_postfix(loss=f"{report.losses[-1]:.3f}")
            if cfg.log_every and (step + 1) % cfg.log_every == 0:
                logger.info(
                    "sft step %d/%d loss %.4f lr %.2e",
                    step + 1,
                    total_steps,
                    report.losses[-1],
                    report.learning_rates[-1],
                )
    finally:
        bar.close()
        model.eval()
        optimizer.zero_grad(set_to_none=True)
    report.seconds = time.perf_counter() - started
    logger.info(
        "sft done: %d steps, loss %.4f -> %.4f in %.1fs",
        report.steps,
        report.losses[0],
        report.final_loss,
        report.seconds,
    )
    return report
