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
Gradient accumulation, clipping and the learning-rate schedules are the engines'. Checkpoints,
resume and seeding work as in stage 1 (:mod:`msjoe.rl.train_sampler`). Final outputs under
``out_dir``: ``sampler.pt`` and ``model/`` (``save_pretrained`` of model + processor) with an
``mllm.json`` manifest, loadable by :func:`msjoe.mllm.manifest.load_prepared_mllm` like the
pre-trained MLLM.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from msjoe.config import from_mapping
from msjoe import episode
from msjoe.rl.engine import dist_info, ds_overrides
from msjoe.rl.resources import peak_rss_mb
from msjoe.rl.rollout import FrameCache, TrainItem, answer_rollouts, query_rollouts, step_seed
from msjoe.rl.schedule import lr_lambda
from msjoe.rl.train_sampler import (
    _file_identity,
    _full_state_dict,
    _resume,
    _run_id,
    new_sampler,
    save_sampler,
)

if TYPE_CHECKING:
    import torch

    from msjoe.mllm.load import MLLM, GenerationResult
    from msjoe.pipeline import Pipeline

__all__ = ["JointTrainConfig", "padded_old_log_probs", "save_mllm", "scorable_ids", "train_joint", "vision_token_ids"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JointTrainConfig:
    """Stage 2 settings. One optimiser step = ``grad_accum`` micro-batches of
    ``questions_per_step`` questions x ``group_size`` rollouts on each rank.

    MLLM: ``lr``, ``weight_decay``, ``clip_eps`` (GRPO ratio clip), ``kl_coef`` (0: no
    reference model), ``query_temperature`` / ``answer_temperature`` (1: the policy's own
    distribution, as GRPO's ratio assumes), ``ds_config`` / ``zero_stage`` / ``ds_overrides``.
    Sampler: ``sampler_lr``, ``sampler_init`` (stage 1's ``sampler.pt``; None starts fresh from
    ``sampler`` / ``init_seed``), ``sampler_ds_config``. Rewards: ``tau``, ``transform``,
    ``info_weight``, ``format_bonus``. ``stop_after`` as in stage 1.
    """

    steps: int = 30
    questions_per_step: int = 4
    group_size: int = 4
    grad_accum: int = 1
    budget: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    sampler_lr: float = 1e-3
    warmup_steps: int = 2
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    clip_eps: float = 0.2
    kl_coef: float = 0.0
    query_temperature: float = 1.0
    answer_temperature: float = 1.0
    log_prob: str = "sum"
    tau: float = 10.0
    transform: str = "softmax"
    info_weight: float = 0.1
    format_bonus: float = 0.1
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    seed: int = 0
    sampler: Any = "tiny"
    sampler_init: str | None = None
    init_seed: int = 0
    ds_config: str = "infra/deepspeed/zero1.json"
    zero_stage: int | None = None
    ds_overrides: dict[str, Any] = field(default_factory=dict)
    sampler_ds_config: str = "infra/deepspeed/zero1.json"
    stop_after: int | None = None

    def __post_init__(self) -> None:
        if min(self.steps, self.questions_per_step, self.grad_accum, self.budget) < 1:
            raise ValueError("steps, questions_per_step, grad_accum and budget must be >= 1")
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2 (advantages are relative within a group)")
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("checkpoint_every and keep_checkpoints must be >= 1")
        if self.query_temperature <= 0 or self.answer_temperature <= 0:
            raise ValueError("RL rollouts must be sampled: temperatures must be > 0")
        if self.log_prob not in ("sum", "plackett_luce"):
            raise ValueError(f"log_prob must be 'sum' or 'plackett_luce', got {self.log_prob!r}")
        if self.kl_coef < 0 or self.clip_eps < 0:
            raise ValueError("kl_coef and clip_eps must be >= 0")

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

    from msjoe.mllm.manifest import MODEL_SUBDIR, MLLMManifest, identity_for, write_manifest

    module = engine.module
    state = _full_state_dict(module, engine.zero_optimization_stage())
    rank, _ = dist_info()
    model_dir = Path(out_dir) / MODEL_SUBDIR
    if rank == 0:
        dtype = next(iter(p.dtype for p in module.parameters()))
        state = {k: v.to(dtype) if v.is_floating_point() and dtype != torch.float32 else v for k, v in state.items()}
        module.save_pretrained(model_dir, state_dict=state)
        processor.save_pretrained(model_dir)
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
    advantage needs no difficulty).
    """
    import torch

    from msjoe.mllm.load import MLLM
    from msjoe.rl.advantages import group_normalised
    from msjoe.rl.checkpoint import save_checkpoint
    from msjoe.rl.engine import build_engine
    from msjoe.rl.grpo import grpo_loss, reinforce_loss

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
    m_opt = torch.optim.AdamW(mllm.model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    m_sched = torch.optim.lr_scheduler.LambdaLR(m_opt, lr_lambda(cfg.warmup_steps, total, cfg.schedule, cfg.min_lr_ratio))
    micro = cfg.questions_per_step * cfg.group_size
    m_engine = build_engine(
        mllm.model, m_opt, cfg.ds_config, m_sched,
        overrides=ds_overrides(micro, cfg.grad_accum, cfg.grad_clip, cfg.zero_stage, cfg.ds_overrides),
    )
    m_engine.eval()  # no dropout: the ratio compares the same function before and after a step
    policy = MLLM(m_engine, mllm.processor, mllm.device)

    sampler = new_sampler(cfg.sampler, cfg.sampler_init, cfg.init_seed)
    sampler.train()
    s_opt = torch.optim.AdamW(sampler.parameters(), lr=cfg.sampler_lr, betas=cfg.betas)
    s_sched = torch.optim.lr_scheduler.LambdaLR(s_opt, lr_lambda(cfg.warmup_steps, total, cfg.schedule, cfg.min_lr_ratio))
    s_engine = build_engine(
        sampler, s_opt, cfg.sampler_ds_config, s_sched,
        overrides=ds_overrides(micro, cfg.grad_accum, cfg.grad_clip, None, None),
    )
    run = _run_id(cfg, pipeline, {
        "questions": [(item.qid, item.video, item.answer) for item in items],
        "sampler_init": _file_identity(cfg.sampler_init),
    })
    start, history = _resume(checkpoint_dir, {"mllm": m_engine, "sampler": s_engine}, run)
    if start:
        log.info("stage 2 resumes at step %d of %d", start, cfg.steps)
    levels, max_q = sampler.config.levels, sampler.config.max_queries
    n_q = min(cfg.questions_per_step, len(items))
    G = cfg.group_size
    logit_scale = pipeline.clip.logit_scale
    forbidden = vision_token_ids(mllm.model.config)
    step_timings: list[dict[str, float]] = []  # this process's steps (run-dependent: not in history or checkpoints)

    step = start
    while step < cfg.steps:
        if cfg.stop_after is not None and step >= cfg.stop_after:
            log.info("stage 2 stopped after step %d (stop_after)", step)
            return {"completed": False, "steps_done": step, "history": history,
                    "timings": {"steps": step_timings, "train_seconds": time.perf_counter() - started}}
        tick = time.perf_counter()
        agg: dict[str, list[float]] = {k: [] for k in ("reward", "accuracy", "format", "info", "info_fired",
                                                         "fires", "query_ok", "answer_ok")}
        stats_sum = {"loss_mllm": 0.0, "loss_sampler": 0.0, "clip_fraction": 0.0, "kl": 0.0, "ratio_mean": 0.0}
        gen_s = train_s = 0.0
        cut_turns = 0
        lrs = (float(m_sched.get_last_lr()[0]), float(s_sched.get_last_lr()[0]))  # this step's rates
        for mb in range(cfg.grad_accum):
            t0 = time.perf_counter()
            rng = np.random.default_rng(step_seed(cfg.seed, step, mb, rank))
            chosen = rng.choice(len(items), size=n_q, replace=False)
            batch = [items[i] for i in chosen for _ in range(G)]
            queries = query_rollouts(
                pipeline, [items[i] for i in chosen], cfg.budget, frames, temperature=cfg.query_temperature,
                seed=step_seed(cfg.seed, step, mb, rank, 1), repeat=G, with_log_probs=True,
            )
            logp, mask = episode.sampler_log_probs(s_engine, [q.sim for q in queries], max_q, levels)
            idx, positions = episode.draw_frames(logp, mask, cfg.budget, step_seed(cfg.seed, step, mb, rank, 2))
            answers = answer_rollouts(
                pipeline, batch, positions, frames, temperature=cfg.answer_temperature,
                seed=step_seed(cfg.seed, step, mb, rank, 3), with_log_probs=True,
            )
            rewards = []
            for item, q, a in zip(batch, queries, answers, strict=True):
                r = episode.score(
                    q.turn, q.sim, a.turn, item.answer, logit_scale,
                    tau=cfg.tau, transform=cfg.transform,  # type: ignore[arg-type]
                    info_weight=cfg.info_weight, format_bonus=cfg.format_bonus,
                )
                rewards.append(r.total)
                agg["accuracy"].append(r.accuracy)
                agg["format"].append(r.format)
                agg["info"].append(r.info)
                agg["info_fired"].append(r.info_fired)
                agg["fires"].append(float(r.info > 0))
                agg["query_ok"].append(float(q.turn.ok))
                agg["answer_ok"].append(float(a.turn.ok))
            agg["reward"] += rewards
            adv = group_normalised(torch.tensor(rewards, dtype=torch.float32).view(n_q, G)).flatten()
            gen_s += time.perf_counter() - t0

            t0 = time.perf_counter()
            q_convs, q_results = [q.conversation for q in queries], [q.turn.result for q in queries]
            a_convs, a_results = [a.conversation for a in answers], [a.turn.result for a in answers]
            new_q, old_q, mask_q, cut_q = _turn_log_probs(policy, q_convs, q_results, cfg.query_temperature, forbidden)
            new_a, old_a, mask_a, cut_a = _turn_log_probs(policy, a_convs, a_results, cfg.answer_temperature,
                                                          forbidden)
            cut_turns += cut_q + cut_a
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
            adv_m = adv.to(new.device)
            m_loss, stats = grpo_loss(new, old, adv_m, tok_mask, clip_eps=cfg.clip_eps, kl_coef=cfg.kl_coef,
                                      logp_ref=ref)
            m_engine.backward(m_loss)
            m_engine.step()
            draw_lp = episode.draw_log_prob(logp, idx, cfg.log_prob)
            s_loss = reinforce_loss(draw_lp, adv.to(draw_lp.device))
            s_engine.backward(s_loss)
            s_engine.step()
            train_s += time.perf_counter() - t0
            stats_sum["loss_mllm"] += float(m_loss.detach())
            stats_sum["loss_sampler"] += float(s_loss.detach())
            for key in ("clip_fraction", "kl", "ratio_mean"):
                stats_sum[key] += float(stats[key])
        step += 1
        record = {
            "step": step,
            "reward": float(np.mean(agg["reward"])),
            "accuracy": float(np.mean(agg["accuracy"])),
            "r_format": float(np.mean(agg["format"])),
            "r_info": float(np.mean(agg["info"])),
            "info_fire_rate": float(np.mean(agg["fires"])),
            "info_fired_fraction": float(np.mean(agg["info_fired"])),
            "query_parse_rate": float(np.mean(agg["query_ok"])),
            "answer_parse_rate": float(np.mean(agg["answer_ok"])),
            **{k: v / cfg.grad_accum for k, v in stats_sum.items()},
            "cut_turns": cut_turns,
            "lr": lrs[0],
            "sampler_lr": lrs[1],
        }
        history.append(record)
        step_timings.append({"step": step, "rollout_seconds": gen_s, "update_seconds": train_s,
                             "seconds": time.perf_counter() - tick})
        log.info(
            "stage 2 step %d/%d: reward %.3f, accuracy %.3f, r_info fired %.2f, parse q %.2f a %.2f, "
            "clip %.3f, %.1fs (rollouts %.1fs)",
            step, cfg.steps, record["reward"], record["accuracy"], record["info_fire_rate"],
            record["query_parse_rate"], record["answer_parse_rate"], record["clip_fraction"],
            step_timings[-1]["seconds"], gen_s,
        )
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint(checkpoint_dir, step, {"mllm": m_engine, "sampler": s_engine},
                            extra={"history": history, "run": run}, keep=cfg.keep_checkpoints)

    s_state = _full_state_dict(s_engine.module, s_engine.zero_optimization_stage())
    if rank == 0:
        save_sampler(Path(out_dir) / "sampler.pt", sampler, s_state)
    save_mllm(Path(out_dir), m_engine, mllm.processor)
    tail = history[-max(1, len(history) // 4):]
    head = history[: max(1, len(history) // 4)]

    def mean(rows: list[dict[str, Any]], key: str) -> float:
        return float(np.mean([h[key] for h in rows])) if rows else 0.0

    return {
        "completed": True,
        "steps_done": step,
        "resumed_from": start,
        "world_size": world,
        "n_train_questions": len(items),
        "rollouts_per_step": n_q * G * cfg.grad_accum * world,
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
        "history": history,
        # run-dependent measurements, which the stage writes apart from its metrics
        "timings": {"steps": step_timings, "train_seconds": time.perf_counter() - started,
                    "peak_rss_mb": peak_rss_mb()},
    }
