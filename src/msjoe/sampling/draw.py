"""Turning the sampler's log-probabilities into frames, and scoring draws for REINFORCE.

docs/design.md section 1, step 4: training draws K frames *without replacement* from p with the
Gumbel-top-k trick, and the policy-gradient term uses the log-probability of that draw;
inference takes the top-K of p. Two log-probabilities are offered:

* :func:`sum_log_prob`, ``sum_k log p(x_k)``: the paper's form (simple, order-free, but not the
  exact probability of a without-replacement draw);
* :func:`plackett_luce_log_prob`: the exact probability of the *ordered* draw, which is what
  Gumbel-top-k samples from (Kool et al., 2019, "Stochastic Beams and Where to Find Them").
  That is why :func:`gumbel_topk` returns frames in draw order: keep that order for the
  Plackett-Luce term and sort by time only for the MLLM.

Shapes: every function accepts one sequence ``(T,)`` or a batch ``(B, T)``. When a batch row
has fewer valid frames than ``k``, its missing picks are ``-1`` (at the end) and the
log-probability functions skip them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _prepare(logp: Tensor, frame_mask: Tensor | None) -> tuple[Tensor, Tensor, bool]:
    """Promote to 2-D and fold the frame mask into the scores as ``-inf``."""
    squeeze = logp.dim() == 1
    scores = logp.unsqueeze(0) if squeeze else logp
    if scores.dim() != 2:
        raise ValueError(f"logp must be (T,) or (B, T), got {tuple(logp.shape)}")
    if frame_mask is None:
        valid = torch.isfinite(scores)
    else:
        valid = (frame_mask.unsqueeze(0) if frame_mask.dim() == 1 else frame_mask).bool()
        if valid.shape != scores.shape:
            raise ValueError(
                f"frame_mask {tuple(frame_mask.shape)} does not match logp {tuple(logp.shape)}"
            )
        valid = valid & ~torch.isneginf(scores)
    return scores.masked_fill(~valid, -torch.inf), valid, squeeze


def _pick(keys: Tensor, valid: Tensor, k: int, squeeze: bool) -> Tensor:
    """Top-``k`` of ``keys`` per row (k capped at the valid count); -1 marks missing picks."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_valid = valid.sum(dim=-1)
    if int(n_valid.min()) < 1:
        raise ValueError("every row needs at least one valid frame")
    k_eff = min(k, int(n_valid.max()))
    idx = torch.topk(keys, k_eff, dim=-1).indices
    taken = torch.arange(k_eff, device=keys.device)[None, :] < n_valid[:, None]
    idx = torch.where(taken, idx, torch.full_like(idx, -1))
    return idx[0] if squeeze else idx


def sort_by_time(indices: Tensor) -> Tensor:
    """Sort picks by frame index, keeping any ``-1`` placeholders at the end."""
    big = torch.iinfo(indices.dtype).max
    key = torch.where(indices < 0, torch.full_like(indices, big), indices)
    out = torch.sort(key, dim=-1).values
    return torch.where(out == big, torch.full_like(out, -1), out)


def topk_frames(logp: Tensor, k: int, frame_mask: Tensor | None = None) -> Tensor:
    """Inference: the ``k`` most probable valid frames, sorted by time.

    ``k`` is capped at the number of valid frames (all of a short video are then returned).
    Without ``frame_mask``, frames with ``-inf`` log-probability count as masked.
    """
    keys, valid, squeeze = _prepare(logp, frame_mask)
    return sort_by_time(_pick(keys, valid, k, squeeze))


def gumbel_topk(
    logp: Tensor, k: int, frame_mask: Tensor | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """Training: draw ``k`` distinct frames from ``softmax(logp)`` without replacement.

    Gumbel-top-k: perturb every log-probability with i.i.d. Gumbel(0, 1) noise and keep the
    ``k`` largest. The result is distributed exactly like sequential sampling without
    replacement, and is returned **in draw order** (largest perturbed key first) so that
    :func:`plackett_luce_log_prob` can score it; call :func:`sort_by_time` before showing the
    frames. Masked frames (and ``-inf`` log-probabilities) are never drawn; ``k`` is capped at
    the number of valid frames. The noise comes from ``generator`` (any device), so a seeded
    generator reproduces the draw.
    """
    keys, valid, squeeze = _prepare(logp, frame_mask)
    noise_device = generator.device if generator is not None else keys.device
    expo = torch.empty(keys.shape, dtype=torch.float64, device=noise_device)
    expo.exponential_(generator=generator)
    gumbel = -torch.log(expo.clamp_min(1e-300)).to(device=keys.device, dtype=keys.dtype)
    return _pick(keys.detach() + gumbel, valid, k, squeeze)


def _gather(logp: Tensor, indices: Tensor) -> tuple[Tensor, Tensor, Tensor, bool]:
    squeeze = logp.dim() == 1
    lp = logp.unsqueeze(0) if squeeze else logp
    idx = indices.unsqueeze(0) if indices.dim() == 1 else indices
    if lp.dim() != 2 or idx.dim() != 2 or idx.shape[0] != lp.shape[0]:
        raise ValueError(f"logp {tuple(logp.shape)} and indices {tuple(indices.shape)} do not match")
    present = idx >= 0
    if bool((idx >= lp.shape[-1]).any()):
        raise ValueError("index out of range")
    safe = idx.clamp_min(0).long()
    return lp, safe, present, squeeze


def sum_log_prob(logp: Tensor, indices: Tensor) -> Tensor:
    """The paper's draw log-probability ``sum_k log p(x_k)`` (order does not matter).

    Differentiable w.r.t. ``logp``; ``-1`` picks are skipped. Returns a scalar for 1-D input,
    ``(B,)`` for a batch.
    """
    lp, safe, present, squeeze = _gather(logp, indices)
    picked = torch.gather(lp, -1, safe)
    total = torch.where(present, picked, torch.zeros_like(picked)).sum(dim=-1)
    return total[0] if squeeze else total


def plackett_luce_log_prob(logp: Tensor, indices_in_draw_order: Tensor) -> Tensor:
    """Exact log-probability of an ordered draw without replacement (Plackett-Luce).

    ``log P = sum_k [ log p(x_k) - log(1 - sum_{j<k} p(x_j)) ]``, computed stably as
    ``logp(x_k) - logsumexp(logp over frames not yet drawn)``; since the denominator is
    renormalised at every step, unnormalised logits give the same result. Masked frames
    (``-inf``) never contribute. Differentiable w.r.t. ``logp``; ``-1`` picks are skipped.
    Returns a scalar for 1-D input, ``(B,)`` for a batch.

    Raises:
        ValueError: if a row repeats a frame (not a draw without replacement).
    """
    lp, safe, present, squeeze = _gather(logp, indices_in_draw_order)
    b, t = lp.shape
    k = safe.shape[-1]
    # skipped picks get distinct negative stand-ins so only real repeats are caught
    stand_in = -1 - torch.arange(k, device=safe.device)
    sorted_idx = torch.sort(torch.where(present, safe, stand_in), dim=-1).values
    if bool((sorted_idx[:, 1:] == sorted_idx[:, :-1]).any()):
        raise ValueError("indices repeat a frame: not a draw without replacement")
    onehot = torch.zeros(b, k, t, dtype=torch.bool, device=lp.device)
    onehot.scatter_(-1, safe[:, :, None], present[:, :, None])
    drawn_before = (torch.cumsum(onehot.to(torch.int32), dim=1) - onehot.to(torch.int32)) > 0
    # A skipped (-1) step keeps the full row so its (unused) denominator stays finite and
    # cannot put NaN into the backward pass.
    drawn_before = drawn_before & present[:, :, None]
    remaining = lp[:, None, :].masked_fill(drawn_before, -torch.inf)
    denom = torch.logsumexp(remaining, dim=-1)
    picked = torch.gather(lp, -1, safe)
    terms = torch.where(present, picked - denom, torch.zeros_like(picked))
    total = terms.sum(dim=-1)
    return total[0] if squeeze else total


def masked_entropy(logp: Tensor) -> Tensor:
    """Entropy of the distribution given by normalised ``logp`` (``-inf`` entries contribute 0).

    A plain ``-(p * logp).sum()`` is NaN with masked frames (``0 * -inf``); an entropy bonus
    is the usual guard against the sampler collapsing early in REINFORCE.
    """
    finite = torch.isfinite(logp)
    safe = torch.where(finite, logp, torch.zeros_like(logp))
    return -(torch.exp(safe) * safe * finite).sum(dim=-1)
