"""Policy-gradient losses: GRPO for the MLLM's tokens, REINFORCE for the sampler's draws.

:func:`grpo_loss` is the PPO-style clipped surrogate of GRPO (Shao et al., 2024) applied per
token: with ``ratio = exp(logp_new - logp_old)`` and advantage ``A`` (one per sequence, shared
by its tokens), each valid token contributes
``-min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) + kl_coef * k3``.
Clipping removes the incentive to move a token's probability further than ``1 +- eps`` from
the policy that generated it, so several optimiser steps can reuse one batch of rollouts.

**Normalisation (our choice).** Token losses are averaged over the valid tokens of each
sequence, then over sequences (the original GRPO formulation; trl's ``loss_type="grpo"``).
Every rollout therefore weighs the same whatever its length: a rollout's tokens share one
advantage, and MSJoE's turns are short (a few queries, one answer letter), so we do not want a
long query turn to drown the answer turn of another rollout. trl's later defaults divide by
the number of valid tokens in the whole batch (``"bnpo"``/``"dapo"``: every *token* weighs the
same) or by a constant (``"dr_grpo"``), which removes the length bias of per-sequence means at
the price of letting long rollouts dominate. Sequences without any valid token are ignored.

**KL.** With ``kl_coef > 0`` a penalty towards a frozen reference policy is added per token,
using the non-negative, unbiased "k3" estimator ``exp(ref - new) - (ref - new) - 1`` (Schulman,
"Approximating KL divergence"), as in GRPO. Our default is ``kl_coef = 0`` (no
reference model needed).

:func:`reinforce_loss` is the score-function estimator for the sampler: ``-(A * log p).mean()``
where ``log p`` is the log-probability of the frames it drew.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["grpo_loss", "kl_k3", "reinforce_loss"]


def kl_k3(logp_new: Tensor, logp_ref: Tensor) -> Tensor:
    """Per-token k3 estimate of ``KL(new || ref)``: ``exp(d) - d - 1`` with ``d = ref - new``.

    Zero exactly where the two log-probabilities agree, positive elsewhere.

    >>> kl_k3(torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -1.0]))
    tensor([0.0000, 0.7183])
    """
    d = logp_ref - logp_new
    return torch.exp(d) - d - 1.0


def _check_shapes(
    logp_new: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, logp_ref: Tensor | None
) -> None:
    if logp_new.dim() != 2:
        raise ValueError(f"logp_new must be (N, L), got shape {tuple(logp_new.shape)}")
    shape = logp_new.shape
    for name, t in (("logp_old", logp_old), ("mask", mask), ("logp_ref", logp_ref)):
        if t is not None and t.shape != shape:
            raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if advantages.shape != (shape[0],):
        raise ValueError(f"advantages must be ({shape[0]},), got {tuple(advantages.shape)}")


def grpo_loss(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    kl_coef: float = 0.0,
    logp_ref: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Token-level clipped GRPO loss (to minimise) and diagnostics.

    Args:
        logp_new: ``(N, L)`` log-probabilities of the sampled tokens under the current policy
            (carries the gradient).
        logp_old: ``(N, L)`` the same under the policy that generated the rollouts (treated
            as a constant). Equal to ``logp_new.detach()`` on the first step over a batch.
        advantages: ``(N,)`` one advantage per sequence (constant).
        mask: ``(N, L)`` bool or 0/1, True for the tokens the policy generated (both turns);
            prompt and padding positions are False. Values there are ignored entirely, even
            NaN or ``-inf``.
        clip_eps: the ratio is clipped to ``[1 - clip_eps, 1 + clip_eps]``.
        kl_coef: weight of the k3 KL penalty; ``> 0`` requires ``logp_ref``.
        logp_ref: ``(N, L)`` log-probabilities under the frozen reference policy.

    Returns:
        ``(loss, stats)``: a scalar tensor, and floats ``clip_fraction`` (share of valid tokens
        whose clipped term is the active one, so they get no gradient), ``ratio_mean`` (mean
        ratio over valid tokens), ``kl`` (mean k3 over valid tokens; computed whenever
        ``logp_ref`` is given, 0.0 otherwise) and ``tokens`` (number of valid tokens).

    >>> new = torch.zeros(1, 2, requires_grad=True)
    >>> loss, stats = grpo_loss(new, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2))
    >>> loss.item(), stats["ratio_mean"], stats["clip_fraction"]
    (-1.0, 1.0, 0.0)
    """
    _check_shapes(logp_new, logp_old, advantages, mask, logp_ref)
    if clip_eps < 0:
        raise ValueError(f"clip_eps must be non-negative, got {clip_eps}")
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be non-negative, got {kl_coef}")
    if kl_coef > 0 and logp_ref is None:
        raise ValueError("kl_coef > 0 needs logp_ref (the reference policy's log-probabilities)")

    valid = mask.bool()
    weights = valid.to(logp_new.dtype)
    zero = torch.zeros((), dtype=logp_new.dtype, device=logp_new.device)
    # torch.where (not multiplication by the mask) so NaN/-inf at padded positions cannot leak
    # into the loss or its gradient.
    new = torch.where(valid, logp_new, zero)
    old = torch.where(valid, logp_old.detach(), zero)
    adv = advantages.detach().to(logp_new.dtype)[:, None]

    ratio = torch.exp(new - old)
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_token = -torch.minimum(ratio * adv, clipped * adv)

    kl_tok = None
    if logp_ref is not None:
        ref = torch.where(valid, logp_ref.detach(), zero)
        kl_tok = kl_k3(new, ref)
        if kl_coef > 0:
            per_token = per_token + kl_coef * kl_tok

    per_token = torch.where(valid, per_token, zero)
    n_tok = weights.sum(dim=1)
    has_tokens = n_tok > 0
    seq_loss = per_token.sum(dim=1) / n_tok.clamp(min=1.0)
    n_seq = int(has_tokens.sum())
    if n_seq == 0:
        loss = new.sum() * 0.0  # zero, but keeps the graph (a batch with nothing generated)
    else:
        loss = seq_loss[has_tokens].mean()

    with torch.no_grad():
        total = float(weights.sum())
        denom = max(total, 1.0)
        ratio_d = ratio.detach()
        low = (ratio_d < 1.0 - clip_eps) & (adv < 0)
        high = (ratio_d > 1.0 + clip_eps) & (adv > 0)
        stats = {
            "clip_fraction": float(((low | high) & valid).sum()) / denom,
            "ratio_mean": float((ratio_d * weights).sum()) / denom if total else 1.0,
            "kl": float((kl_tok.detach() * weights).sum()) / denom if kl_tok is not None else 0.0,
            "tokens": total,
        }
    return loss, stats


def reinforce_loss(logp_sampler: Tensor, advantages: Tensor) -> Tensor:
    """REINFORCE loss for the sampler: ``-(A * log p).mean()`` over ``N`` draws.

    ``logp_sampler`` is the log-probability of each draw's K frames (``sum_log_prob`` or
    ``plackett_luce_log_prob`` from :mod:`msjoe.sampling.draw`); the advantage is a constant
    (detached). Minimising it raises the probability of draws with positive advantage.

    >>> lp = torch.tensor([-1.0, -2.0], requires_grad=True)
    >>> reinforce_loss(lp, torch.tensor([1.0, -1.0]))
    tensor(-0.5000, grad_fn=<NegBackward0>)
    """
    if logp_sampler.dim() != 1 or advantages.shape != logp_sampler.shape:
        raise ValueError(
            "logp_sampler and advantages must both be (N,), got "
            f"{tuple(logp_sampler.shape)} and {tuple(advantages.shape)}"
        )
    if logp_sampler.numel() == 0:
        raise ValueError("reinforce_loss needs at least one draw")
    return -(advantages.detach().to(logp_sampler.dtype) * logp_sampler).mean()
