"""Stage 2 of MSJoE training: joint RL of the MLLM (GRPO) and the sampler (REINFORCE).

Per question, G rollouts (docs/design.md): the query turn is *sampled* (temperature 1) from
the current MLLM -> parsed queries (the question is the fallback, counted) -> CLIP similarity
against the cached frame features -> a Gumbel-top-k draw of K frames from the sampler -> the
answer turn, sampled -> ``r = r_acc + r_format + r_info`` (:mod:`msjoe.rl.rewards`). Rewards are
standardised within each question's group (:func:`~msjoe.rl.advantages.group_normalised`), and
the same advantage drives

* GRPO on the MLLM over the generated tokens of **both** turns: old log-probabilities are the
  ones generation recorded, new ones come from one differentiable forward per turn
  (:meth:`~msjoe.mllm.load.MLLM.sequence_log_probs`); clipped ratio; a k3 KL penalty towards a
  frozen copy of the starting model only when ``kl_coef > 0`` (no reference model otherwise);
* REINFORCE on the sampler's draw log-probability.

The rollouts are :mod:`msjoe.episode`'s steps, batched by :mod:`msjoe.rl.rollout` and scored
by :func:`msjoe.episode.score`. Both models train through DeepSpeed engines (one per model, one
process group); the MLLM's config is the stage's choice (ZeRO-3 at paper scale), the sampler's
is small and separate.
Gradient accumulation, clipping and the learning-rate schedules are the engines'. Run, resume
and checkpoints are :class:`msjoe.rl.run.TrainingRun`'s, as in stage 1. Final outputs under
``out_dir``: ``sampler.pt`` and ``model/`` (``save_pretrained`` of model + processor) with an
``mllm.json`` manifest, loadable by :func:`msjoe.mllm.manifest.load_prepared_mllm` like the
pre-trained MLLM.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from msjoe.config import from_mapping
from msjoe.optim import adamw
from msjoe import episode
from msjoe.rl.engine import dist_info, ds_overrides
from msjoe.rl.resources import peak_rss_mb
from msjoe.rl.rollout import (
    AnswerRollout,
    FrameCache,
    QueryRollout,
    TrainItem,
    answer_rollouts,
    query_rollouts,
    step_seed,
)
from msjoe.rl.run import RunConfig, TrainingRun, file_identity, fingerprint, full_state_dict
from msjoe.rl.rewards import RewardConfig
from msjoe.rl.schedule import lr_lambda

if TYPE_CHECKING:
    import torch

    from msjoe.mllm.load import MLLM, GenerationResult
    from msjoe.pipeline import Pipeline
    from msjoe.rl.rewards import RewardBreakdown

__all__ = ["JointTrainConfig", "padded_old_log_probs", "save_mllm", "scorable_ids", "train_joint", "vision_token_ids"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JointTrainConfig(RunConfig):
    """Stage 2 settings: :class:`~msjoe.rl.run.RunConfig`'s (``lr`` & co. for the MLLM, whose
    turns are both sampled: temperature 1 is the policy's own distribution, as GRPO's ratio
    assumes), plus ``group_size`` rollouts per question; GRPO's ``clip_eps`` and ``kl_coef`` (0:
    no reference model); the sampler's ``sampler_lr``, ``sampler_init`` (stage 1's
    ``sampler.pt``; None starts fresh) and ``sampler_ds_config``; the rewards' ``tau``,
    ``transform``, ``info_weight`` and ``format_bonus``.
    """

    lr: float = 1e-4
    group_size: int = 4
    sampler_lr: float = 1e-3
    clip_eps: float = 0.2
    kl_coef: float = 0.0
    tau: float = 10.0
    transform: str = "softmax"
    info_weight: float = 0.1
    format_bonus: float = 0.1
    sampler_init: str | None = None
    sampler_ds_config: str = "infra/deepspeed/zero1.json"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2 (advantages are relative within a group)")
        if self.query_temperature <= 0 or self.answer_temperature <= 0:
            raise ValueError("RL rollouts must be sampled: temperatures must be > 0")
        if self.kl_coef < 0 or self.clip_eps < 0:
            raise ValueError("kl_coef and clip_eps must be >= 0")
        _ = self.reward  # builds (and so checks) the reward settings at load, not at the first rollout

    @property
    def reward(self) -> RewardConfig:
        """The reward's knobs (``tau``, ``transform``, ``info_weight``, ``format_bonus``)."""
        return RewardConfig(self.tau, self.transform, self.info_weight, self.format_bonus)  # type: ignore[arg-type]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> JointTrainConfig:
        """From a params section; unknown keys are an error."""
        return from_mapping(cls, values, "train_joint")


def padded_old_log_probs(results: Sequence[GenerationResult], width: int) -> torch.Tensor:
    """Generation-time log-probabilities right-padded to ``width`` (the layout
    :meth:`~msjoe.mllm.load.MLLM.sequence_log_probs` returns for the same token ids)."""
    import torch

    out = torch.zeros(len(results), width)
    for i, r in enumerate(results):
        kept = r.log_probs[:width]  # turns cut at a generated vision token are scored shorter
        out[i, : len(kept)] = torch.tensor(kept, dtype=torch.float32)
    return out


def save_mllm(out_dir: Path, engine: Any, processor: Any) -> Path:
    """``out_dir/model`` (``save_pretrained`` of the trained weights + processor) and
    ``out_dir/mllm.json``, the manifest :func:`~msjoe.mllm.manifest.load_prepared_mllm` reads.

    Under ZeRO-3 the partitioned weights are gathered first; only rank 0 writes.
    """
    import torch

    from msjoe.mllm.load import save_processor
    from msjoe.mllm.manifest import MODEL_SUBDIR, MLLMManifest, identity_for, write_manifest

    module = engine.module
    state = full_state_dict(module, engine.zero_optimization_stage())
    rank, _ = dist_info()
    model_dir = Path(out_dir) / MODEL_SUBDIR
    if rank == 0:
        dtype = next(iter(p.dtype for p in module.parameters()))
        state = {k: v.to(dtype) if v.is_floating_point() and dtype != torch.float32 else v for k, v in state.items()}
        module.save_pretrained(model_dir, state_dict=state)
        save_processor(processor, model_dir)
        write_manifest(Path(out_dir), MLLMManifest(MODEL_SUBDIR, identity_for(MODEL_SUBDIR, model_dir)))
    return model_dir


def vision_token_ids(config: Any) -> frozenset[int]:
    """Ids of the tokens that mark images/videos in a Qwen2.5-VL prompt.

    A weak policy can *generate* them; fed back as completion tokens they would be read as
    image placeholders without pixels (the forward fails), so scoring stops before them.
    """
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    found = {getattr(config, n, None) for n in names}
    text = getattr(config, "text_config", None)
    found |= {getattr(text, n, None) for n in names} if text is not None else set()
    return frozenset(int(t) for t in found if t is not None)


def scorable_ids(token_ids: Sequence[int], forbidden: frozenset[int], fallback: int) -> tuple[list[int], int]:
    """Completion ids cut before the first ``forbidden`` token, and how many are kept.

    An empty cut is replaced by ``[fallback]`` (scored but masked out: 0 tokens kept), because
    the scorer needs at least one token per row.

    >>> scorable_ids([5, 6, 9, 7], frozenset({9}), 0)
    ([5, 6], 2)
    >>> scorable_ids([9, 7], frozenset({9}), 0)
    ([0], 0)
    """
    kept = next((i for i, t in enumerate(token_ids) if t in forbidden), len(token_ids))
    ids = [int(t) for t in token_ids[:kept]]
    return (ids, kept) if ids else ([int(fallback)], 0)


def _turn_log_probs(
    policy: MLLM, convs: Sequence[Any], results: Sequence[GenerationResult], temperature: float,
    forbidden: frozenset[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(new log-probs with grad, old log-probs, mask, number of cut turns) of one turn's
    generated tokens; tokens from a generated vision marker on are left out of the loss."""
    cut = [scorable_ids(r.token_ids, forbidden, policy.eos_token_id) for r in results]
    scored = policy.sequence_log_probs(convs, [ids for ids, _ in cut], temperature=temperature)
    old = padded_old_log_probs(results, scored.log_probs.shape[1]).to(scored.log_probs.device)
    mask = scored.mask.clone()
    for row, (_, kept) in enumerate(cut):
        mask[row, kept:] = False
    n_cut = sum(kept < len(r.token_ids) for (_, kept), r in zip(cut, results, strict=True))
    return scored.log_probs, old, mask, n_cut


@dataclass(frozen=True)
class _Rollouts:
    """One micro-batch: ``group_size`` rollouts of each chosen question, question-major."""

    items: list[TrainItem]
    queries: list[QueryRollout]
    answers: list[AnswerRollout]
    sampler_log_probs: torch.Tensor  # (rows, T_pad), with grad
    drawn: torch.Tensor  # the drawn frame indices (rows, K)


def _rollout(
    pipeline: Pipeline, sampler: Any, questions: Sequence[TrainItem], frames: FrameCache, cfg: JointTrainConfig,
    seed_of: Callable[[int], int],
) -> _Rollouts:
    """Query turns (sampled from the policy) -> CLIP similarities -> the sampler's draw ->
    answer turns (sampled), ``cfg.group_size`` times per question."""
    net = sampler.module.config
    queries = query_rollouts(
        pipeline, questions, cfg.budget, frames, temperature=cfg.query_temperature,
        seed=seed_of(1), repeat=cfg.group_size, with_log_probs=True,
    )
    logp, mask = episode.sampler_log_probs(sampler, [q.sim for q in queries], net.max_queries, net.levels)
    idx, positions = episode.draw_frames(logp, mask, cfg.budget, seed_of(2))
    items = [item for item in questions for _ in range(cfg.group_size)]
    answers = answer_rollouts(
        pipeline, items, positions, frames, temperature=cfg.answer_temperature,
        seed=seed_of(3), with_log_probs=True,
    )
    return _Rollouts(items, queries, answers, logp, idx)


def _rewards(rollouts: _Rollouts, logit_scale: float, cfg: JointTrainConfig) -> list[RewardBreakdown]:
    """``r_acc + r_format + r_info`` of every rollout (:func:`msjoe.episode.score`)."""
    reward = cfg.reward
    return [
        episode.score(q.turn, q.sim, a.turn, item.answer, logit_scale, reward)
        for item, q, a in zip(rollouts.items, rollouts.queries, rollouts.answers, strict=True)
    ]


def _update(
    policy: MLLM, mllm_engine: Any, sampler_engine: Any, rollouts: _Rollouts, adv: torch.Tensor,
    cfg: JointTrainConfig, forbidden: frozenset[int], reference: MLLM | None,
) -> dict[str, float]:
    """One GRPO step of the MLLM over both turns' generated tokens, then one REINFORCE step of
    the sampler on its draw, both driven by the same group-normalised advantages ``adv``."""
    import torch

    from msjoe.rl.grpo import grpo_loss, reinforce_loss

    q_convs, q_results = [q.conversation for q in rollouts.queries], [q.turn.result for q in rollouts.queries]
    a_convs, a_results = [a.conversation for a in rollouts.answers], [a.turn.result for a in rollouts.answers]
    new_q, old_q, mask_q, cut_q = _turn_log_probs(policy, q_convs, q_results, cfg.query_temperature, forbidden)
    new_a, old_a, mask_a, cut_a = _turn_log_probs(policy, a_convs, a_results, cfg.answer_temperature, forbidden)
    new = torch.cat([new_q, new_a], dim=1)
    old = torch.cat([old_q, old_a], dim=1)
    tok_mask = torch.cat([mask_q, mask_a], dim=1)
    ref = None
    if reference is not None:
        with torch.no_grad():
            ref_q = reference.sequence_log_probs(
                q_convs, [scorable_ids(r.token_ids, forbidden, policy.eos_token_id)[0] for r in q_results],
                temperature=cfg.query_temperature).log_probs
            ref_a = reference.sequence_log_probs(
                a_convs, [scorable_ids(r.token_ids, forbidden, policy.eos_token_id)[0] for r in a_results],
                temperature=cfg.answer_temperature).log_probs
        ref = torch.cat([ref_q, ref_a], dim=1)
    m_loss, stats = grpo_loss(new, old, adv.to(new.device), tok_mask, clip_eps=cfg.clip_eps, kl_coef=cfg.kl_coef,
                              logp_ref=ref)
    mllm_engine.backward(m_loss)
    mllm_engine.step()
    draw_lp = episode.draw_log_prob(rollouts.sampler_log_probs, rollouts.drawn, cfg.log_prob)
    s_loss = reinforce_loss(draw_lp, adv.to(draw_lp.device))
    sampler_engine.backward(s_loss)
    sampler_engine.step()
    return {"loss_mllm": float(m_loss.detach()), "loss_sampler": float(s_loss.detach()),
            **{key: float(stats[key]) for key in ("clip_fraction", "kl", "ratio_mean")},
            "cut_turns": cut_q + cut_a}


def _step_record(
    rollouts: Sequence[_Rollouts], rewards: Sequence[RewardBreakdown], updates: Sequence[Mapping[str, float]],
    lrs: tuple[float, float],
) -> dict[str, Any]:
    """A step's metrics over its micro-batches: rewards and parse rates per rollout, losses and
    ratio statistics per micro-batch."""
    queries = [q for r in rollouts for q in r.queries]
    answers = [a for r in rollouts for a in r.answers]
    losses = ("loss_mllm", "loss_sampler", "clip_fraction", "kl", "ratio_mean")
    return {
        "reward": float(np.mean([r.total for r in rewards])),
        "accuracy": float(np.mean([r.accuracy for r in rewards])),
        "r_format": float(np.mean([r.format for r in rewards])),
        "r_info": float(np.mean([r.info for r in rewards])),
        "info_fire_rate": float(np.mean([float(r.info > 0) for r in rewards])),
        "info_fired_fraction": float(np.mean([r.info_fired for r in rewards])),
        "query_parse_rate": float(np.mean([float(q.turn.ok) for q in queries])),
        "answer_parse_rate": float(np.mean([float(a.turn.ok) for a in answers])),
        **{key: sum(u[key] for u in updates) / len(updates) for key in losses},
        "cut_turns": int(sum(u["cut_turns"] for u in updates)),
        "lr": lrs[0],
        "sampler_lr": lrs[1],
    }


def train_joint(
    pipeline: Pipeline,
    items: Sequence[TrainItem],
    out_dir: Path,
    checkpoint_dir: Path,
    cfg: JointTrainConfig,
) -> dict[str, Any]:
    """Run (or resume) stage 2; returns the report with the per-step ``history``.

    ``pipeline.mllm`` is the policy (trained in place); ``pipeline.clip`` gives query
    similarities; ``items`` are the training questions (all of them: GRPO's group-relative
    advantage needs no difficulty). Each step, per micro-batch: rollout -> reward -> advantage
    -> update; then the step's record is logged and checkpointed.
    """
    import torch

    from msjoe.mllm.load import MLLM
    from msjoe.rl.advantages import group_normalised
    from msjoe.rl.engine import build_engine
    from msjoe.sampling.unet import new_unet, save_unet

    started = time.perf_counter()
    rank, world = dist_info()
    if not items:
        raise ValueError("no training questions")
    frames = FrameCache()
    mllm = pipeline.mllm
    reference = None
    if cfg.kl_coef > 0:
        ref_model = copy.deepcopy(mllm.model).eval()
        for p in ref_model.parameters():
            p.requires_grad_(False)
        reference = MLLM(ref_model, mllm.processor, mllm.device)

    total = cfg.steps
    m_opt = adamw(mllm.model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    m_sched = torch.optim.lr_scheduler.LambdaLR(m_opt, lr_lambda(cfg.warmup_steps, total, cfg.schedule, cfg.min_lr_ratio))
    micro = cfg.questions_per_step * cfg.group_size
    m_engine = build_engine(
        mllm.model, m_opt, cfg.ds_config, m_sched,
        overrides=ds_overrides(micro, cfg.grad_accum, cfg.grad_clip, cfg.zero_stage, cfg.ds_overrides),
    )
    m_engine.eval()  # no dropout: the ratio compares the same function before and after a step
    policy = MLLM(m_engine, mllm.processor, mllm.device)

    sampler = new_unet(cfg.sampler, cfg.init_seed, cfg.sampler_init)
    sampler.train()
    s_opt = adamw(sampler.parameters(), lr=cfg.sampler_lr, betas=cfg.betas)
    s_sched = torch.optim.lr_scheduler.LambdaLR(s_opt, lr_lambda(cfg.warmup_steps, total, cfg.schedule, cfg.min_lr_ratio))
    s_engine = build_engine(
        sampler, s_opt, cfg.sampler_ds_config, s_sched,
        overrides=ds_overrides(micro, cfg.grad_accum, cfg.grad_clip, None, None),
    )
    run = TrainingRun("stage 2", cfg, {"mllm": m_engine, "sampler": s_engine}, checkpoint_dir, fingerprint(cfg, pipeline, {
        "questions": [(item.qid, item.video, item.answer) for item in items],
        "sampler_init": file_identity(cfg.sampler_init),
    }, __name__))
    n_q = min(cfg.questions_per_step, len(items))
    logit_scale = pipeline.clip.logit_scale
    forbidden = vision_token_ids(mllm.model.config)
    step_timings: list[dict[str, float]] = []  # this process's steps (run-dependent: not in history or checkpoints)

    for step in run.steps():
        tick = time.perf_counter()
        lrs = (float(m_sched.get_last_lr()[0]), float(s_sched.get_last_lr()[0]))  # this step's rates
        done: list[_Rollouts] = []
        rewards: list[RewardBreakdown] = []
        updates: list[dict[str, float]] = []
        gen_s = train_s = 0.0
        for mb in range(cfg.grad_accum):
            t0 = time.perf_counter()
            chosen = np.random.default_rng(step_seed(cfg.seed, step, mb, rank)).choice(len(items), size=n_q, replace=False)
            rollouts = _rollout(pipeline, s_engine, [items[i] for i in chosen], frames, cfg,
                                lambda part: step_seed(cfg.seed, step, mb, rank, part))  # noqa: B023 (called at once)
            reward = _rewards(rollouts, logit_scale, cfg)
            adv = group_normalised(torch.tensor([r.total for r in reward], dtype=torch.float32).view(n_q, -1)).flatten()
            gen_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            updates.append(_update(policy, m_engine, s_engine, rollouts, adv, cfg, forbidden, reference))
            train_s += time.perf_counter() - t0
            done.append(rollouts)
            rewards += reward
        record = _step_record(done, rewards, updates, lrs)
        run.finish_step(record)
        step_timings.append({"step": run.step, "rollout_seconds": gen_s, "update_seconds": train_s,
                             "seconds": time.perf_counter() - tick})
        log.info(
            "stage 2 step %d/%d: reward %.3f, accuracy %.3f, r_info fired %.2f, parse q %.2f a %.2f, "
            "clip %.3f, %.1fs (rollouts %.1fs)",
            run.step, cfg.steps, record["reward"], record["accuracy"], record["info_fire_rate"],
            record["query_parse_rate"], record["answer_parse_rate"], record["clip_fraction"],
            step_timings[-1]["seconds"], gen_s,
        )
    history = run.history
    if run.stopped:
        return run.report(timings={"steps": step_timings, "train_seconds": time.perf_counter() - started})

    s_state = full_state_dict(s_engine.module, s_engine.zero_optimization_stage())
    if rank == 0:
        save_unet(Path(out_dir) / "sampler.pt", sampler, s_state)
    save_mllm(Path(out_dir), m_engine, mllm.processor)
    tail = history[-max(1, len(history) // 4):]
    head = history[: max(1, len(history) // 4)]

    def mean(rows: list[dict[str, Any]], key: str) -> float:
        return float(np.mean([h[key] for h in rows])) if rows else 0.0

    return run.report(**{
        "world_size": world,
        "n_train_questions": len(items),
        "rollouts_per_step": n_q * cfg.group_size * cfg.grad_accum * world,
        "first_reward": mean(head, "reward"),
        "final_reward": mean(tail, "reward"),
        "first_accuracy": mean(head, "accuracy"),
        "final_accuracy": mean(tail, "accuracy"),
        "info_fire_rate": mean(history, "info_fire_rate"),
        # the base policy's firing rate (first steps): a calibrated r_info fires on some
        # rollouts only, else it cannot tell informative queries from the rest
        "first_info_fire_rate": mean(head, "info_fire_rate"),
        "final_info_fire_rate": mean(tail, "info_fire_rate"),
        "query_parse_rate": mean(history, "query_parse_rate"),
        "answer_parse_rate": mean(history, "answer_parse_rate"),
        "zero_stage": m_engine.zero_optimization_stage(),
        "kl_reference": reference is not None,
        # run-dependent measurements, which the stage writes apart from its metrics
        "timings": {"steps": step_timings, "train_seconds": time.perf_counter() - started,
                    "peak_rss_mb": peak_rss_mb()},
    })
