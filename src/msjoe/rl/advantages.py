"""Advantages for the two training stages (docs/design.md section 2).

* :func:`difficulty_advantage` (stage 1, sampler pre-training). A question's difficulty ``c``
  is the base MLLM's pass rate with uniform frames. Rewarding ``1/c`` when correct and
  ``-1/(1-c)`` when wrong has expectation ``c/c - (1-c)/(1-c) = 0`` when the sampler's frames
  help exactly as much as uniform ones, so the sampler is rewarded only for *beating* the
  base model, and hard questions (small ``c``) pay more for a success. The clamp bounds the
  variance; it breaks the zero-mean property only for ``c < 1/clamp`` or ``c > 1 - 1/clamp``.
* :func:`group_normalised` (stage 2, GRPO). Each question's G rollouts are compared with one
  another: ``(r - mean) / (std + eps)`` within the group, so only relative quality matters and
  a group where every rollout scored the same carries no signal (advantage exactly 0).
"""

from __future__ import annotations

from typing import overload

import torch
from torch import Tensor

__all__ = ["difficulty_advantage", "group_normalised"]


@overload
def difficulty_advantage(correct: bool, c: float, clamp: float = 10.0) -> float: ...
@overload
def difficulty_advantage(correct: Tensor, c: float | Tensor, clamp: float = 10.0) -> Tensor: ...
@overload
def difficulty_advantage(correct: bool, c: Tensor, clamp: float = 10.0) -> Tensor: ...


def difficulty_advantage(
    correct: bool | Tensor, c: float | Tensor, clamp: float = 10.0
) -> float | Tensor:
    """Difficulty-aware advantage: ``1/c`` if correct, ``-1/(1-c)`` if wrong, clamped.

    Args:
        correct: whether the answer was right; a bool or a bool/0-1 tensor.
        c: the question's base pass rate in ``[0, 1]``; a float or a tensor broadcastable
            with ``correct``.
        clamp: the result lies in ``[-clamp, clamp]``. ``c = 0`` and correct gives ``+clamp``
            (a success the base model never had); ``c = 1`` and wrong gives ``-clamp``.

    Returns:
        A float for scalar inputs, a float tensor (``c``'s float dtype, else float32)
        otherwise.

    >>> difficulty_advantage(True, 0.25)
    4.0
    >>> difficulty_advantage(False, 0.75)
    -4.0
    >>> difficulty_advantage(True, 0.0)
    10.0
    >>> difficulty_advantage(False, 1.0, clamp=5.0)
    -5.0
    """
    if not clamp > 0:
        raise ValueError(f"clamp must be positive, got {clamp}")
    if not isinstance(correct, Tensor) and not isinstance(c, Tensor):
        c = float(c)
        if not 0.0 <= c <= 1.0:
            raise ValueError(f"difficulty c must be in [0, 1], got {c}")
        if correct:
            value = clamp if c == 0.0 else 1.0 / c
        else:
            value = -clamp if c == 1.0 else -1.0 / (1.0 - c)
        return float(min(max(value, -clamp), clamp))
    c_t = torch.as_tensor(c)
    if not c_t.is_floating_point():
        c_t = c_t.to(torch.float32)
    if c_t.numel() and (bool((c_t < 0).any()) or bool((c_t > 1).any()) or bool(c_t.isnan().any())):
        raise ValueError("difficulty c must be in [0, 1]")
    ok = torch.as_tensor(correct, device=c_t.device).bool()
    # Division by zero gives +-inf in floating point; the clamp maps it to +-clamp.
    value = torch.where(ok, 1.0 / c_t, -1.0 / (1.0 - c_t))
    return value.clamp(-clamp, clamp)


def group_normalised(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """GRPO advantage: standardise rewards within each group of rollouts.

    Args:
        rewards: ``(B, G)``, one row per question, one column per rollout.
        eps: added to the standard deviation so near-constant groups do not explode.

    Returns:
        ``(B, G)`` advantages, ``(r - mean) / (std + eps)`` per row, in ``rewards``' float
        dtype. ``std`` is the *population* standard deviation (``unbiased=False``), so a
        non-constant group's advantages have unit variance; trl uses the sample one, which
        only rescales by ``sqrt((G-1)/G)``. A constant row gives exactly 0 (not a rounding
        residue divided by ``eps``).

    >>> group_normalised(torch.tensor([[1.0, 0.0], [0.3, 0.3]]))
    tensor([[ 1.0000, -1.0000],
            [ 0.0000,  0.0000]])
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (B, G), got shape {tuple(rewards.shape)}")
    if eps < 0:
        raise ValueError(f"eps must be non-negative, got {eps}")
    r = rewards if rewards.is_floating_point() else rewards.to(torch.float32)
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True, unbiased=False)
    constant = r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)
    adv = (r - mean) / (std + eps)
    return torch.where(constant, torch.zeros_like(adv), adv)
