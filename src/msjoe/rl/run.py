"""The resumable run both RL stages share: fingerprint, resume, the step loop, checkpoints.

A stage builds its engines, then hands them to a :class:`TrainingRun` with the run's
fingerprint (:func:`fingerprint`: the trajectory-relevant settings, the frozen models and the
data). The run discards checkpoints of any other run in ``checkpoint_dir``, resumes the newest
of its own (engines, optimiser and RNG states, the step, the metric history) and then yields the
steps still to do; the stage reports each finished step with :meth:`TrainingRun.finish_step`,
which appends its record to the history and writes a checkpoint every ``checkpoint_every``
steps and at the last one. ``stop_after`` ends the loop early without final outputs (a
time-boxed or pre-empted run); the next run resumes where it stopped.

Because every random choice inside a step is seeded from (seed, step, ...)
(:func:`msjoe.rl.rollout.step_seed`), a resumed run ends with the same parameters as an
uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from msjoe.pipeline import Pipeline

__all__ = ["RunConfig", "TrainingRun", "file_identity", "fingerprint", "full_state_dict"]

log = logging.getLogger(__name__)

#: Settings that change how a run is kept, not what it computes: left out of its fingerprint,
#: so changing them resumes the run instead of restarting it.
BOOKKEEPING = ("checkpoint_every", "keep_checkpoints", "stop_after")


@dataclass(frozen=True)
class RunConfig:
    """The settings both RL stages share; each stage's config adds its own.

    One optimiser step = ``grad_accum`` micro-batches of ``questions_per_step`` questions on
    each rank, ``budget`` frames drawn per rollout. Optimiser: AdamW (``lr``, ``weight_decay``,
    ``betas``) with ``warmup_steps`` of linear warmup then a ``schedule`` down to
    ``min_lr_ratio`` (:func:`msjoe.rl.schedule.lr_lambda`), gradients clipped at
    ``grad_clip``. ``log_prob``: ``"sum"`` (the paper's ``sum_k log p(x_k)``) or
    ``"plackett_luce"`` (exact probability of the ordered draw). ``query_temperature`` /
    ``answer_temperature``: sampling temperatures of the two MLLM turns (0: greedy).
    ``sampler``: ``"tiny"``, ``"default"`` or UNetConfig fields of a fresh sampler seeded with
    ``init_seed``. ``ds_config``: DeepSpeed JSON (``infra/deepspeed/zero{1,2,3}.json``);
    ``zero_stage`` and ``ds_overrides`` adjust it. ``checkpoint_every`` / ``keep_checkpoints``:
    :class:`TrainingRun`'s checkpoints; ``stop_after``: end the run after this many completed
    steps without writing final outputs (a time-boxed or pre-empted run; the next run resumes).
    """

    steps: int = 30
    questions_per_step: int = 4
    grad_accum: int = 1
    budget: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 2
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    log_prob: str = "sum"
    query_temperature: float = 1.0
    answer_temperature: float = 1.0
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    seed: int = 0
    sampler: Any = "tiny"
    init_seed: int = 0
    ds_config: str = "infra/deepspeed/zero1.json"
    zero_stage: int | None = None
    ds_overrides: dict[str, Any] = field(default_factory=dict)
    stop_after: int | None = None

    def __post_init__(self) -> None:
        if min(self.steps, self.questions_per_step, self.grad_accum, self.budget) < 1:
            raise ValueError("steps, questions_per_step, grad_accum and budget must be >= 1")
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("checkpoint_every and keep_checkpoints must be >= 1")
        if self.log_prob not in ("sum", "plackett_luce"):
            raise ValueError(f"log_prob must be 'sum' or 'plackett_luce', got {self.log_prob!r}")
        if self.lr <= 0:
            raise ValueError("lr must be positive")


def fingerprint(cfg: RunConfig, pipeline: Pipeline, inputs: Mapping[str, Any], trainer: str) -> str:
    """The run's identity: ``cfg``'s fields (bookkeeping apart), how the MLLM is asked
    (``pipeline.cfg``: a checkpoint trained with other frame sizes or reply lengths must not be
    resumed), the frozen CLIP and the MLLM the run starts from, ``inputs`` (training
    questions, initial weights) and the code: the ``trainer`` module and every ``msjoe`` module
    it imports (:func:`msjoe.code_identity.code_identity`), so a checkpoint of other training
    code is never resumed."""
    from msjoe.code_identity import code_identity
    from msjoe.rl.checkpoint import run_fingerprint

    settings = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in BOOKKEEPING}
    models = {"mllm": pipeline.mllm.identity, "clip": pipeline.clip.identity}
    return run_fingerprint({**settings, "pipeline": asdict(pipeline.cfg)},
                           {**models, **inputs, "code": code_identity(trainer)})


def file_identity(path: str | Path | None) -> str | None:
    """The sha256 of a file a run starts from (None: none)."""
    if path is None:
        return None
    from msjoe.video import sha256_file

    return sha256_file(Path(path))


def full_state_dict(module: torch.nn.Module, zero_stage: int) -> dict[str, Any]:
    """A CPU float32 state dict of the whole module; under ZeRO-3 the partitions are gathered first."""
    import deepspeed

    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=zero_stage == 3):
        return {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
                for k, v in module.state_dict().items()}


class TrainingRun:
    """One stage's run of ``cfg.steps`` steps over ``engines`` (name -> DeepSpeed engine).

    After the loop, :attr:`stopped` tells a run ended by ``stop_after`` from a completed one.
    """

    def __init__(self, name: str, cfg: RunConfig, engines: Mapping[str, Any], checkpoint_dir: Path, run: str) -> None:
        from msjoe.rl.checkpoint import discard_other_runs, latest_checkpoint, load_latest, read_meta

        self.name, self.cfg, self.engines = name, cfg, dict(engines)
        self.checkpoint_dir, self.run = Path(checkpoint_dir), run
        discard_other_runs(self.checkpoint_dir, run)
        step = load_latest(self.checkpoint_dir, self.engines)
        history: list[dict[str, Any]] = []
        if step is not None:
            ckpt = latest_checkpoint(self.checkpoint_dir)
            history = list(read_meta(ckpt)["extra"].get("history", [])) if ckpt is not None else []
            log.info("%s resumes at step %d of %d", name, step, cfg.steps)
        self.start = step or 0
        self.step = self.start
        self.history = history[: self.start]
        self.stopped = False

    def steps(self) -> Iterator[int]:
        """The 0-based indices of the steps still to do; each must end in :meth:`finish_step`."""
        while self.step < self.cfg.steps:
            if self.cfg.stop_after is not None and self.step >= self.cfg.stop_after:
                log.info("%s stopped after step %d (stop_after)", self.name, self.step)
                self.stopped = True
                return
            yield self.step

    def report(self, **fields: Any) -> dict[str, Any]:
        """The trainer's result: ``completed`` (False after ``stop_after``: no final outputs were
        written), ``steps_done``, ``resumed_from`` (run state: the stage writes it with its
        timings), ``history`` (one record per step) and the trainer's own ``fields``."""
        return {"completed": not self.stopped, "steps_done": self.step, "resumed_from": self.start,
                "history": self.history, **fields}

    def finish_step(self, record: Mapping[str, Any]) -> None:
        """Record the step just done (its ``record`` gets the 1-based ``step``) and checkpoint
        when due."""
        self.step += 1
        self.history.append({"step": self.step, **record})
        if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps:
            from msjoe.rl.checkpoint import save_checkpoint

            save_checkpoint(self.checkpoint_dir, self.step, self.engines,
                            extra={"history": self.history, "run": self.run}, keep=self.cfg.keep_checkpoints)
