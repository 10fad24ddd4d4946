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

Run, resume and checkpoints are :class:`msjoe.rl.run.TrainingRun`'s: every ``checkpoint_every``
steps the engine (sampler, optimiser, scheduler), RNG states, the step and the metric history
are saved, and re-running the stage resumes to the same parameters as an uninterrupted run. The
final output is ``sampler.pt`` (:func:`msjoe.sampling.unet.save_unet`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from msjoe.config import from_mapping
from msjoe.optim import adamw
from msjoe import episode
from msjoe.rl.engine import dist_info, ds_overrides
from msjoe.rl.resources import peak_rss_mb
from msjoe.rl.rollout import FrameCache, TrainItem, answer_rollouts, query_rollouts, step_seed
from msjoe.rl.run import RunConfig, TrainingRun, file_identity, fingerprint, full_state_dict
from msjoe.rl.schedule import lr_lambda

if TYPE_CHECKING:
    from msjoe.pipeline import Pipeline

__all__ = ["SamplerTrainConfig", "train_sampler"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplerTrainConfig(RunConfig):
    """Stage 1 settings: :class:`~msjoe.rl.run.RunConfig`'s, plus ``clamp`` (the difficulty
    advantage's bound), ``entropy_coef`` (optional entropy bonus against early collapse),
    ``batch_size`` (MLLM turns per batch) and ``init`` (an optional sampler checkpoint to start
    from, else a fresh network). The query turn is greedy by default: the frozen MLLM writes
    each question's queries once for the run.
    """

    steps: int = 40
    questions_per_step: int = 16
    lr: float = 3e-3
    query_temperature: float = 0.0
    clamp: float = 10.0
    entropy_coef: float = 0.0
    batch_size: int = 32
    init: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1 or self.clamp <= 0:
            raise ValueError("batch_size must be >= 1 and clamp positive")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SamplerTrainConfig:
        """From a params section; unknown keys are an error."""
        return from_mapping(cls, values, "train_sampler")


# --------------------------------------------------------------------------------------------
# training


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
    from msjoe.rl.engine import build_engine
    from msjoe.rl.grpo import reinforce_loss
    from msjoe.sampling.draw import masked_entropy
    from msjoe.sampling.unet import new_unet, save_unet

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

    model = new_unet(cfg.sampler, cfg.init_seed, cfg.init)
    model.train()
    optimizer = adamw(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.warmup_steps, cfg.steps, cfg.schedule, cfg.min_lr_ratio)
    )
    overrides = ds_overrides(cfg.questions_per_step, cfg.grad_accum, cfg.grad_clip, cfg.zero_stage, cfg.ds_overrides)
    engine = build_engine(model, optimizer, cfg.ds_config, scheduler, overrides=overrides)
    run = TrainingRun("stage 1", cfg, {"sampler": engine}, checkpoint_dir, fingerprint(cfg, pipeline, {
        "questions": [(item.qid, item.video, item.answer, float(c)) for item, c in zip(train, c_of, strict=True)],
        "init": file_identity(cfg.init),
    }, __name__))
    levels, max_q = model.config.levels, model.config.max_queries
    k = min(cfg.questions_per_step, len(train))
    step_seconds: list[float] = []  # this process's steps (run-dependent: not in history or checkpoints)

    for step in run.steps():
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
        record = {
            "accuracy": float(np.mean(acc)),
            "uniform_pass_rate": float(np.mean(mean_c)),
            "advantage": adv_sum / cfg.grad_accum,
            "loss": loss_sum / cfg.grad_accum,
            "entropy": ent_sum / cfg.grad_accum,
            "lr": lr,
            "prior_scale": float(model.prior_scale.detach().float().cpu().reshape(-1)[0]),
        }
        run.finish_step(record)
        step_seconds.append(time.perf_counter() - tick)
        log.info(
            "stage 1 step %d/%d: accuracy %.3f (uniform %.3f), advantage %+.3f, loss %.4f, %.1fs",
            run.step, cfg.steps, record["accuracy"], record["uniform_pass_rate"], record["advantage"],
            record["loss"], step_seconds[-1],
        )
    history = run.history
    if run.stopped:
        return run.report(timings={"query_seconds": query_seconds, "step_seconds": step_seconds,
                                   "train_seconds": time.perf_counter() - started})

    state = full_state_dict(engine.module, engine.zero_optimization_stage())
    if rank == 0:
        save_unet(Path(out_dir) / "sampler.pt", model, state)
    tail = history[-max(1, len(history) // 4):]
    return run.report(**{
        "world_size": world,
        "n_train_questions": len(train),
        "query_parse_rate": float(np.mean([q.turn.ok for q in queries])),
        "final_accuracy": float(np.mean([h["accuracy"] for h in tail])),
        "final_uniform_pass_rate": float(np.mean([h["uniform_pass_rate"] for h in tail])),
        "first_accuracy": history[0]["accuracy"] if history else None,
        "sampler_parameters": model.num_parameters(),
        "zero_stage": engine.zero_optimization_stage(),
        # run-dependent measurements, which the stage writes apart from its metrics
        "timings": {"query_seconds": query_seconds, "step_seconds": step_seconds,
                    "train_seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()},
    })
