"""Stage 1 of MSJoE training: REINFORCE on the sampler with the difficulty-aware advantage.

The MLLM is frozen (docs/design.md): it writes each question's visual queries and answers
from the frames the sampler draws; only the sampler learns. Because the MLLM does not change,
each question's query turn and its similarity matrix are computed once (greedy by default) and
cached for the run; a training step only redoes the sampler's draw and the answer turn, which is
the cost and is batched.

Per step and micro-batch: ``questions_per_step`` questions (seeded choice) -> sampler
log-probabilities over their candidate frames -> a Gumbel-top-k draw of K frames -> the answer
turn (sampled at ``answer_temperature``, 1 by default, like the ``difficulty`` stage measured
``c``) -> advantage ``1/c`` if correct, ``-1/(1-c)`` if wrong (clamped) -> REINFORCE loss,
backward and step through a DeepSpeed engine (gradient accumulation, clipping and the
learning-rate schedule are the engine's). Questions with ``c = 1`` never reach this module
(:func:`msjoe.rl.difficulty.trainable_qids`).

The episode's steps are :mod:`msjoe.episode`'s, batched over questions by
:mod:`msjoe.rl.rollout`; correctness is :func:`msjoe.episode.is_correct`.

Checkpoints (:mod:`msjoe.rl.checkpoint`) every ``checkpoint_every`` steps hold the engine
(sampler, optimiser, scheduler), RNG states, the step and the metric history; re-running the
stage resumes from the newest one and finishes with the same number of steps and, because every
random choice is seeded per step (:func:`msjoe.rl.rollout.step_seed`), the same parameters as an
uninterrupted run. The final output is ``sampler.pt`` in the pipeline's checkpoint format
``{"state_dict", "config"}`` (:func:`msjoe.pipeline.load_sampler`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from msjoe.config import from_mapping
from msjoe import episode
from msjoe.rl.engine import dist_info, ds_overrides
from msjoe.rl.resources import peak_rss_mb
from msjoe.rl.rollout import FrameCache, TrainItem, answer_rollouts, query_rollouts, step_seed
from msjoe.rl.schedule import lr_lambda

if TYPE_CHECKING:
    import torch

    from msjoe.pipeline import Pipeline
    from msjoe.sampling.unet import UNetConfig, UNetSampler

__all__ = [
    "SamplerTrainConfig",
    "new_sampler",
    "save_sampler",
    "train_sampler",
    "unet_config",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplerTrainConfig:
    """Stage 1 settings (one optimiser step = ``grad_accum`` micro-batches of
    ``questions_per_step`` questions on each rank).

    ``log_prob``: ``"sum"`` (the paper's ``sum_k log p(x_k)``) or ``"plackett_luce"`` (exact
    probability of the ordered draw). ``entropy_coef``: optional entropy bonus against early
    collapse. ``sampler``: ``"tiny"``, ``"default"`` or UNetConfig fields; ``init``: optional
    sampler checkpoint to start from (else a fresh network seeded with ``init_seed``).
    ``ds_config``: DeepSpeed JSON (``infra/deepspeed/zero{1,2,3}.json``); ``zero_stage`` and
    ``ds_overrides`` adjust it. ``stop_after``: end the run after this many completed steps
    without writing final outputs (a time-boxed or pre-empted run; the next run resumes).
    """

    steps: int = 40
    questions_per_step: int = 16
    grad_accum: int = 1
    budget: int = 8
    lr: float = 3e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 2
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    clamp: float = 10.0
    log_prob: str = "sum"
    entropy_coef: float = 0.0
    answer_temperature: float = 1.0
    query_temperature: float = 0.0
    batch_size: int = 32
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    seed: int = 0
    sampler: Any = "tiny"
    init: str | None = None
    init_seed: int = 0
    ds_config: str = "infra/deepspeed/zero1.json"
    zero_stage: int | None = None
    ds_overrides: dict[str, Any] = field(default_factory=dict)
    stop_after: int | None = None

    def __post_init__(self) -> None:
        if min(self.steps, self.questions_per_step, self.grad_accum, self.budget, self.batch_size) < 1:
            raise ValueError("steps, questions_per_step, grad_accum, budget and batch_size must be >= 1")
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("checkpoint_every and keep_checkpoints must be >= 1")
        if self.log_prob not in ("sum", "plackett_luce"):
            raise ValueError(f"log_prob must be 'sum' or 'plackett_luce', got {self.log_prob!r}")
        if self.lr <= 0 or self.clamp <= 0:
            raise ValueError("lr and clamp must be positive")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SamplerTrainConfig:
        """From a params section; unknown keys are an error."""
        return from_mapping(cls, values, "train_sampler")


# --------------------------------------------------------------------------------------------
# the sampler network


def unet_config(spec: Any) -> UNetConfig:
    """``"tiny"``, ``"default"``/None or a mapping of UNetConfig fields."""
    from msjoe.sampling.unet import UNetConfig

    if spec == "tiny":
        return UNetConfig.tiny()
    if spec in (None, "default"):
        return UNetConfig()
    values = dict(spec)
    if "channel_mult" in values:
        values["channel_mult"] = tuple(values["channel_mult"])
    return UNetConfig(**values)


def new_sampler(spec: Any, init: str | Path | None = None, seed: int = 0) -> UNetSampler:
    """A fresh sampler (seeded, without touching the global RNG) or one loaded from ``init``
    (the pipeline's ``{"state_dict", "config"}`` format; its config wins over ``spec``)."""
    import torch

    from msjoe.sampling.unet import UNetSampler

    state = None
    if init is not None:
        loaded = torch.load(Path(init), map_location="cpu", weights_only=True)
        state = loaded["state_dict"]
        spec = loaded.get("config", spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNetSampler(unet_config(spec))
    if state is not None:
        model.load_state_dict(state)
    return model


def _full_state_dict(module: torch.nn.Module, zero_stage: int) -> dict[str, Any]:
    """A CPU state dict of the whole module; under ZeRO-3 the partitions are gathered first."""
    import deepspeed

    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=zero_stage == 3):
        return {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
                for k, v in module.state_dict().items()}


def save_sampler(path: Path, module: UNetSampler, state_dict: Mapping[str, Any] | None = None) -> Path:
    """Write the pipeline's sampler checkpoint ``{"state_dict", "config"}`` atomically."""
    import os

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    state = dict(state_dict) if state_dict is not None else {k: v.detach().cpu() for k, v in module.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"state_dict": state, "config": asdict(module.config)}, tmp)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------
# training


_BOOKKEEPING = ("checkpoint_every", "keep_checkpoints", "stop_after")


def _run_id(cfg: Any, pipeline: Pipeline, inputs: Mapping[str, Any]) -> str:
    """The run's fingerprint: trajectory-relevant settings, frozen models and data."""
    from msjoe.rl.checkpoint import run_fingerprint

    settings = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in _BOOKKEEPING}
    models = {"mllm": pipeline.mllm.identity, "clip": pipeline.clip.identity}
    return run_fingerprint(settings, {**models, **inputs})


def _file_identity(path: str | Path | None) -> str | None:
    if path is None:
        return None
    from msjoe.video import sha256_file

    return sha256_file(Path(path))


def _resume(checkpoint_dir: Path, models: Mapping[str, Any], run: str) -> tuple[int, list[dict[str, Any]]]:
    """Resume the latest checkpoint of this run (others' are discarded); ``(0, [])`` if none."""
    from msjoe.rl.checkpoint import discard_other_runs, latest_checkpoint, load_latest, read_meta

    discard_other_runs(checkpoint_dir, run)
    step = load_latest(checkpoint_dir, models)
    if step is None:
        return 0, []
    ckpt = latest_checkpoint(checkpoint_dir)
    history = list(read_meta(ckpt)["extra"].get("history", [])) if ckpt is not None else []
    return step, history[:step]


def train_sampler(
    pipeline: Pipeline,
    items: Sequence[TrainItem],
    difficulty: Mapping[str, float],
    out_dir: Path,
    checkpoint_dir: Path,
    cfg: SamplerTrainConfig,
) -> dict[str, Any]:
    """Run (or resume) stage 1; returns the report, with the per-step ``history``.

    Args:
        pipeline: frozen CLIP + MLLM and the conversation building blocks (its sampler is
            unused: the sampler trained here is built from ``cfg``).
        items: training questions (:func:`msjoe.rl.rollout.load_items`).
        difficulty: ``qid -> c`` of the questions to train on (``c < 1``); others are ignored.
        out_dir: receives ``sampler.pt`` when the run completes.
        checkpoint_dir: resumable checkpoints (kept between runs).
        cfg: settings.
    """
    import torch

    from msjoe.rl.advantages import difficulty_advantage
    from msjoe.rl.checkpoint import save_checkpoint
    from msjoe.rl.engine import build_engine
    from msjoe.rl.grpo import reinforce_loss
    from msjoe.sampling.draw import masked_entropy

    started = time.perf_counter()
    rank, world = dist_info()
    train = [item for item in items if item.qid in difficulty]
    if not train:
        raise ValueError("no trainable questions (every question has c = 1 or no difficulty)")
    c_of = np.array([float(difficulty[item.qid]) for item in train])
    frames = FrameCache()
    tick = time.perf_counter()
    # the frozen MLLM's query turns and similarities, once for the run
    queries = query_rollouts(
        pipeline, train, cfg.budget, frames, temperature=cfg.query_temperature,
        batch_size=cfg.batch_size, seed=lambda b: step_seed(cfg.seed, -1, b),
    )
    query_seconds = time.perf_counter() - tick

    model = new_sampler(cfg.sampler, cfg.init, cfg.init_seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.warmup_steps, cfg.steps, cfg.schedule, cfg.min_lr_ratio)
    )
    overrides = ds_overrides(cfg.questions_per_step, cfg.grad_accum, cfg.grad_clip, cfg.zero_stage, cfg.ds_overrides)
    engine = build_engine(model, optimizer, cfg.ds_config, scheduler, overrides=overrides)
    run = _run_id(cfg, pipeline, {
        "questions": [(item.qid, item.video, item.answer, float(c)) for item, c in zip(train, c_of, strict=True)],
        "init": _file_identity(cfg.init),
    })
    start, history = _resume(checkpoint_dir, {"sampler": engine}, run)
    if start:
        log.info("stage 1 resumes at step %d of %d", start, cfg.steps)
    levels, max_q = model.config.levels, model.config.max_queries
    k = min(cfg.questions_per_step, len(train))
    step_seconds: list[float] = []  # this process's steps (run-dependent: not in history or checkpoints)

    step = start
    while step < cfg.steps:
        if cfg.stop_after is not None and step >= cfg.stop_after:
            log.info("stage 1 stopped after step %d (stop_after)", step)
            return {"completed": False, "steps_done": step, "history": history,
                    "timings": {"query_seconds": query_seconds, "step_seconds": step_seconds,
                                "train_seconds": time.perf_counter() - started}}
        tick = time.perf_counter()
        acc, adv_sum, loss_sum, ent_sum, mean_c = [], 0.0, 0.0, 0.0, []
        lr = float(scheduler.get_last_lr()[0])  # the rate this step uses
        for micro in range(cfg.grad_accum):
            rng = np.random.default_rng(step_seed(cfg.seed, step, micro, rank))
            chosen = rng.choice(len(train), size=k, replace=False)
            batch = [train[i] for i in chosen]
            logp, mask = episode.sampler_log_probs(engine, [queries[i].sim for i in chosen], max_q, levels)
            idx, positions = episode.draw_frames(logp, mask, cfg.budget, step_seed(cfg.seed, step, micro, rank, 1))
            answer_seed = step_seed(cfg.seed, step, micro, rank, 2)
            answers = answer_rollouts(
                pipeline, batch, positions, frames, temperature=cfg.answer_temperature,
                batch_size=cfg.batch_size, seed=lambda b: step_seed(answer_seed, b),
            )
            correct = torch.tensor([episode.is_correct(a.turn.letter, it.answer)
                                    for a, it in zip(answers, batch, strict=True)])
            c = torch.tensor(c_of[chosen], dtype=torch.float32)
            adv = difficulty_advantage(correct, c, clamp=cfg.clamp).to(logp.device)
            draw_lp = episode.draw_log_prob(logp, idx, cfg.log_prob)
            entropy = masked_entropy(logp).mean()
            loss = reinforce_loss(draw_lp, adv) - cfg.entropy_coef * entropy
            engine.backward(loss)
            engine.step()
            acc += correct.float().tolist()
            mean_c += c.tolist()
            adv_sum += float(adv.mean())
            loss_sum += float(loss.detach())
            ent_sum += float(entropy.detach())
        step += 1
        record = {
            "step": step,
            "accuracy": float(np.mean(acc)),
            "uniform_pass_rate": float(np.mean(mean_c)),
            "advantage": adv_sum / cfg.grad_accum,
            "loss": loss_sum / cfg.grad_accum,
            "entropy": ent_sum / cfg.grad_accum,
            "lr": lr,
            "prior_scale": float(model.prior_scale.detach().float().cpu().reshape(-1)[0]),
        }
        history.append(record)
        step_seconds.append(time.perf_counter() - tick)
        log.info(
            "stage 1 step %d/%d: accuracy %.3f (uniform %.3f), advantage %+.3f, loss %.4f, %.1fs",
            step, cfg.steps, record["accuracy"], record["uniform_pass_rate"], record["advantage"],
            record["loss"], step_seconds[-1],
        )
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint(checkpoint_dir, step, {"sampler": engine}, extra={"history": history, "run": run},
                            keep=cfg.keep_checkpoints)

    state = _full_state_dict(engine.module, engine.zero_optimization_stage())
    if rank == 0:
        save_sampler(Path(out_dir) / "sampler.pt", model, state)
    tail = history[-max(1, len(history) // 4):]
    return {
        "completed": True,
        "steps_done": step,
        "resumed_from": start,
        "world_size": world,
        "n_train_questions": len(train),
        "query_parse_rate": float(np.mean([q.turn.ok for q in queries])),
        "final_accuracy": float(np.mean([h["accuracy"] for h in tail])),
        "final_uniform_pass_rate": float(np.mean([h["uniform_pass_rate"] for h in tail])),
        "first_accuracy": history[0]["accuracy"] if history else None,
        "sampler_parameters": model.num_parameters(),
        "zero_stage": engine.zero_optimization_stage(),
        "history": history,
        # run-dependent measurements, which the stage writes apart from its metrics
        "timings": {"query_seconds": query_seconds, "step_seconds": step_seconds,
                    "train_seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()},
    }
