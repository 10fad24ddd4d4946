"""Per-rollout rewards of MSJoE: ``r = r_acc + r_format + r_info`` (docs/design.md).

Pure functions of already-parsed rollout outcomes (numpy only, no torch), so the training loop,
the evaluation and the tests score a rollout the same way:

* :func:`accuracy_reward` - 1 for the right option letter, else 0. This is the signal the task
  is about; everything else is a small shaping bonus.
* :func:`format_reward` - a bonus (0.1) only when *both* turns parse, because a rollout whose
  query turn fails falls back to the question as the only query and is then not the policy's
  own work.
* :func:`info_reward` - rewards *informative* queries: a query whose similarity profile over
  time is flat cannot tell the sampler where to look, while a peaked one can. A row is
  "peaked" when ``max / min`` of the transformed row exceeds ``tau``; the reward is
  ``weight x`` the fraction of peaked rows. How often it fires is returned too, because a
  bonus that always (or never) fires teaches nothing and should be noticed in the logs.
* :func:`total_reward` - the sum, with its parts kept for logging; its knobs are one
  :class:`RewardConfig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from msjoe.episode import is_correct

__all__ = [
    "InfoReward",
    "RewardBreakdown",
    "RewardConfig",
    "Transform",
    "accuracy_reward",
    "format_reward",
    "info_reward",
    "total_reward",
]

#: How a similarity row is turned into positive weights before the ``max / min`` test.
Transform = Literal["softmax", "raw"]

#: Denominator floor of the ``max / min`` ratio (see :func:`info_reward`).
_EPS = 1e-12


def accuracy_reward(pred_letter: str | None, answer: str) -> float:
    """1.0 when the predicted option letter is the correct one, else 0.0.

    The decision is :func:`msjoe.episode.is_correct` (the one every consumer uses): letters
    compare case-insensitively and ignoring surrounding whitespace; a failed answer parse
    (``None`` or an empty string) is simply wrong: it earns nothing, it is not an error.

    >>> accuracy_reward("B", "B")
    1.0
    >>> accuracy_reward(" b", "B")
    1.0
    >>> accuracy_reward("C", "B")
    0.0
    >>> accuracy_reward(None, "B")
    0.0
    """
    return 1.0 if is_correct(pred_letter, answer) else 0.0


def format_reward(query_ok: bool, answer_ok: bool, bonus: float = 0.1) -> float:
    """``bonus`` when both turns parsed (queries and answer), else 0.0.

    All-or-nothing on purpose: half credit for one parsable turn would let the policy collect
    reward while the other turn stays broken.

    >>> format_reward(True, True)
    0.1
    >>> format_reward(True, False)
    0.0
    >>> format_reward(False, True, bonus=0.5)
    0.0
    """
    return float(bonus) if (query_ok and answer_ok) else 0.0


@dataclass(frozen=True)
class InfoReward:
    """Outcome of :func:`info_reward`.

    Attributes:
        value: the reward, ``weight * fired``.
        fired: fraction of query rows that are peaked, in ``[0, 1]`` (0 when there are no rows).
        peaked: per-row verdicts, in row order.
    """

    value: float
    fired: float
    peaked: tuple[bool, ...] = ()


def _transform_rows(sim: np.ndarray, logit_scale: float, transform: Transform) -> np.ndarray:
    """Rows mapped to the quantity whose ``max / min`` is tested (float64)."""
    if transform == "softmax":
        z = logit_scale * sim
        z = z - z.max(axis=1, keepdims=True)  # stable; the ratio does not depend on the shift
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
    if transform == "raw":
        return sim
    raise ValueError(f"transform must be 'softmax' or 'raw', got {transform!r}")


def info_reward(
    sim: np.ndarray,
    logit_scale: float,
    tau: float = 10.0,
    transform: Transform = "softmax",
    weight: float = 0.1,
) -> InfoReward:
    """Reward queries whose similarity over time is peaked, i.e. that point somewhere.

    Args:
        sim: ``(n_queries, T)`` cosine similarities of each query to each candidate frame
            (a 1-D ``(T,)`` array is one query).
        logit_scale: CLIP's multiplier on cosines (the *exponentiated* learned scale, about
            100 for OpenAI CLIP). Used by the ``"softmax"`` transform only.
        tau: a row is peaked when ``max / min`` of its transformed values exceeds ``tau``.
        transform: ``"softmax"`` (default) - softmax over frames of ``logit_scale * sim``,
            so the test reads "the best frame is ``tau`` times likelier than the worst", i.e.
            ``logit_scale * (max - min) > ln(tau)``; ``"raw"`` - the cosines themselves.
        weight: reward for all rows peaked (docs/design.md: 0.1).

    Edge cases:
        * ``min <= 0`` (possible with ``"raw"`` cosines, or a softmax that underflows): the
          denominator is floored at ``1e-12``, so a row with a positive maximum and a
          non-positive minimum counts as peaked, and an all-non-positive row does not
          (both ends are floored to the same value, ratio 1).
        * ``T == 1`` or a constant row: ratio 1, never peaked (one frame tells nothing).
        * No rows (``n_queries == 0``): ``value = fired = 0``.
        * NaN or infinite similarities raise ``ValueError`` (a bug upstream, not a reward).

    >>> flat = np.full((1, 8), 0.2)
    >>> peak = flat.copy(); peak[0, 3] = 0.3
    >>> info_reward(flat, logit_scale=100.0).fired
    0.0
    >>> r = info_reward(np.vstack([flat, peak]), logit_scale=100.0)
    >>> (r.fired, round(r.value, 3), r.peaked)
    (0.5, 0.05, (False, True))
    >>> info_reward(np.array([[0.5, -0.1]]), logit_scale=1.0, transform="raw").fired
    1.0
    """
    arr = np.asarray(sim, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"sim must be (n_queries, T), got shape {arr.shape}")
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    if transform == "softmax" and not logit_scale > 0:
        raise ValueError(f"logit_scale must be positive, got {logit_scale}")
    if arr.shape[0] == 0:
        return InfoReward(value=0.0, fired=0.0, peaked=())
    if arr.shape[1] == 0:
        raise ValueError("sim has no frames")
    if not np.isfinite(arr).all():
        raise ValueError("sim contains NaN or infinite values")
    rows = _transform_rows(arr, float(logit_scale), transform)
    hi = np.maximum(rows.max(axis=1), _EPS)
    lo = np.maximum(rows.min(axis=1), _EPS)
    peaked = tuple(bool(p) for p in (hi / lo) > tau)
    fired = sum(peaked) / len(peaked)
    return InfoReward(value=float(weight) * fired, fired=fired, peaked=peaked)


@dataclass(frozen=True)
class RewardBreakdown:
    """The three parts of a rollout's reward; ``float(breakdown)`` is the total.

    Attributes:
        accuracy: ``r_acc`` (0 or 1).
        format: ``r_format`` (0 or the bonus).
        info: ``r_info`` (``weight x info_fired``).
        info_fired: fraction of query rows that were peaked (0 when the query turn failed).
    """

    accuracy: float
    format: float
    info: float
    info_fired: float

    @property
    def total(self) -> float:
        """``r_acc + r_format + r_info``."""
        return self.accuracy + self.format + self.info

    def __float__(self) -> float:
        return self.total


@dataclass(frozen=True)
class RewardConfig:
    """The knobs of :func:`total_reward`, in one place for the trainer, evaluation and tests.

    ``tau``, ``transform`` and ``info_weight`` are :func:`info_reward`'s (the ``max / min``
    threshold of a peaked row, how a row becomes positive weights, the bonus for all rows
    peaked); ``format_bonus`` is :func:`format_reward`'s bonus when both turns parse. The
    defaults are the paper's shaping weights; the demo's ``tau`` is calibrated in params.yaml.
    """

    tau: float = 10.0
    transform: Transform = "softmax"
    info_weight: float = 0.1
    format_bonus: float = 0.1

    def __post_init__(self) -> None:
        if self.transform not in ("softmax", "raw"):
            raise ValueError(f"transform must be 'softmax' or 'raw', got {self.transform!r}")
        if not self.tau > 0:
            raise ValueError(f"tau must be positive, got {self.tau}")


def total_reward(
    pred_letter: str | None,
    answer: str,
    query_ok: bool,
    answer_ok: bool,
    sim: np.ndarray | None,
    logit_scale: float,
    config: RewardConfig = RewardConfig(),
) -> RewardBreakdown:
    """Score one rollout: ``accuracy + format + info`` (docs/design.md section 2).

    ``sim`` is the similarity matrix of the *generated* queries. When the query turn did not
    parse (``query_ok`` False) the pipeline falls back to the question as the only query; that
    query is not the policy's work, so it earns no information reward (``sim`` is ignored and
    may be ``None``).

    >>> peak = np.full((2, 8), 0.2); peak[:, 5] = 0.4
    >>> r = total_reward("A", "A", True, True, peak, logit_scale=100.0)
    >>> (r.accuracy, r.format, round(r.info, 3), round(r.total, 3))
    (1.0, 0.1, 0.1, 1.2)
    >>> round(float(total_reward("B", "A", False, True, None, 100.0)), 3)
    0.0
    """
    acc = accuracy_reward(pred_letter, answer)
    fmt = format_reward(query_ok, answer_ok, bonus=config.format_bonus)
    if query_ok and sim is not None:
        info = info_reward(sim, logit_scale, tau=config.tau, transform=config.transform, weight=config.info_weight)
        r_info, fired = info.value, info.fired
    else:
        r_info, fired = 0.0, 0.0
    if not math.isfinite(acc + fmt + r_info):  # guards against non-finite weights/bonuses
        raise ValueError("reward is not finite; check format_bonus and info_weight")
    return RewardBreakdown(accuracy=acc, format=fmt, info=r_info, info_fired=fired)
