"""Small-sample statistics for the evaluation report: intervals and paired tests.

Every comparison in this project is *paired*: two configurations answer the same questions, so
the tests below work on per-question booleans ``a[i]``, ``b[i]`` (correct or not) and use the
pairing instead of treating the two accuracies as independent samples.

* :func:`wilson_interval` -- the Wilson score interval of one proportion (good coverage for
  small n and for proportions near 0 or 1, where the Wald interval fails).
* :func:`mcnemar_exact` -- the exact McNemar test: under H0 (both configurations equally
  accurate) each discordant pair is equally likely to favour either side, so the number of
  pairs only ``a`` gets right is Binomial(discordant, 1/2). Tails are summed exactly with
  :func:`math.comb`.
* :func:`paired_bootstrap` -- a seeded, deterministic percentile bootstrap of the accuracy
  difference ``mean(a) - mean(b)`` resampling *questions* (pairs), with p-values from the
  same resamples.
* :func:`noninferiority_test` -- one-sided test of H0: ``acc(a) - acc(b) <= -margin``
  against H1: ``acc(a) - acc(b) > -margin``, by the Wald statistic on paired differences with
  the Agresti--Min adjustment (add 1/2 to each cell of the paired 2x2 table, "Wald+2";
  Agresti & Min 2005, Statistics in Medicine 24:729-740).

  Why Wald+2 and not the bootstrap: with few discordant pairs -- common on a small evaluation
  split -- both the bootstrap distribution and the plain Wald standard error collapse to 0, and
  either would declare non-inferiority for any positive margin from, say, 5 identical answers.
  The +1/2 cells keep the standard error away from 0 in exactly that case (5 concordant pairs
  give p = 0.36 at margin 0.05, 200 give p < 1e-20), the statistic is closed form (no
  resampling noise at the decision boundary), and Wald+2 has close to nominal coverage for
  matched proportions in Agresti & Min's study.

Only the standard library is used (``math``, ``random``, ``statistics.NormalDist``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

__all__ = [
    "BootstrapResult",
    "McNemarResult",
    "NonInferiorityResult",
    "PairedCounts",
    "binomial_tail",
    "holm",
    "mcnemar_exact",
    "noninferiority_test",
    "paired_bootstrap",
    "paired_counts",
    "wilson_interval",
]

_NORMAL = NormalDist()


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return _NORMAL.inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``.

    With no observations there is no information: the interval is the whole ``[0, 1]``.

    >>> lo, hi = wilson_interval(8, 10)
    >>> round(lo, 4), round(hi, 4)
    (0.4902, 0.9433)
    >>> wilson_interval(0, 0)
    (0.0, 1.0)
    >>> round(wilson_interval(0, 20)[1], 4)
    0.1611
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    z = _z(confidence)
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    # exact bounds at the edges (the formula gives them up to rounding)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def binomial_tail(k: int, n: int) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, 1/2)``, summed exactly.

    >>> binomial_tail(9, 10)  # (C(10,9) + C(10,10)) / 2**10 = 11 / 1024
    0.0107421875
    >>> binomial_tail(0, 0)
    1.0
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return sum(math.comb(n, i) for i in range(k, n + 1)) / (1 << n)


@dataclass(frozen=True)
class PairedCounts:
    """The paired 2x2 table: ``both`` right, ``a_only`` right, ``b_only`` right, ``neither``."""

    both: int
    a_only: int
    b_only: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.a_only + self.b_only + self.neither

    @property
    def discordant(self) -> int:
        return self.a_only + self.b_only

    @property
    def accuracy_a(self) -> float:
        return (self.both + self.a_only) / self.n if self.n else math.nan

    @property
    def accuracy_b(self) -> float:
        return (self.both + self.b_only) / self.n if self.n else math.nan

    @property
    def difference(self) -> float:
        """``accuracy_a - accuracy_b`` (only the discordant pairs matter)."""
        return (self.a_only - self.b_only) / self.n if self.n else math.nan


def paired_counts(a: Sequence[bool], b: Sequence[bool]) -> PairedCounts:
    """Tally paired outcomes; ``a[i]`` and ``b[i]`` are the same question.

    >>> paired_counts([True, True, False, False], [True, False, True, False])
    PairedCounts(both=1, a_only=1, b_only=1, neither=1)
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    both = a_only = b_only = 0
    for x, y in zip(a, b, strict=True):
        x, y = bool(x), bool(y)
        both += x and y
        a_only += x and not y
        b_only += y and not x
    return PairedCounts(both, a_only, b_only, len(a) - both - a_only - b_only)


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test. ``p_greater``: one-sided, H1 ``acc(a) > acc(b)``; ``p_less``: the
    other side; ``p_two_sided``: twice the smaller tail, capped at 1."""

    counts: PairedCounts
    p_two_sided: float
    p_greater: float
    p_less: float


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> McNemarResult:
    """Exact (binomial) McNemar test on paired booleans.

    9 questions only ``a`` gets right, 1 only ``b``: ``P(X >= 9 | X ~ Bin(10, 1/2)) = 11/1024``.

    >>> r = mcnemar_exact([True] * 9 + [False] + [True] * 5, [False] * 9 + [True] + [True] * 5)
    >>> r.p_greater, r.p_two_sided, round(r.p_less, 6)
    (0.0107421875, 0.021484375, 0.999023)
    >>> mcnemar_exact([True, False], [True, False]).p_two_sided  # no discordant pair
    1.0
    """
    counts = paired_counts(a, b)
    d = counts.discordant
    p_greater = binomial_tail(counts.a_only, d)
    p_less = binomial_tail(counts.b_only, d)
    return McNemarResult(counts, min(1.0, 2.0 * min(p_greater, p_less)), p_greater, p_less)


@dataclass(frozen=True)
class BootstrapResult:
    """Paired percentile bootstrap of ``acc(a) - acc(b)``.

    ``ci`` is the percentile interval at ``confidence``; ``p_greater`` estimates the one-sided
    p-value of H0 ``difference <= 0`` as ``(1 + #{d* <= 0}) / (B + 1)`` and ``p_two_sided`` is
    ``(1 + min(#{d* <= 0}, #{d* >= 0})) * 2 / (B + 1)`` capped at 1 (inverting the percentile
    interval; the +1 keeps a p-value from being 0 with finitely many resamples).
    """

    difference: float
    ci: tuple[float, float]
    p_two_sided: float
    p_greater: float
    n: int
    resamples: int
    seed: int


def paired_bootstrap(
    a: Sequence[bool],
    b: Sequence[bool],
    *,
    resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Resample questions with replacement and recompute the paired accuracy difference.

    Deterministic: a :class:`random.Random` seeded with ``seed`` draws the resamples, and the
    draws are made over the paired 2x2 table (not over the question order), so the result
    depends only on the table, the seed and the number of resamples -- reordering the
    questions gives the same interval.

    >>> r = paired_bootstrap([True] * 6, [False] * 6, resamples=99)
    >>> r.difference, r.ci, r.p_greater
    (1.0, (1.0, 1.0), 0.01)
    >>> paired_bootstrap([True, False], [True, False], resamples=99).p_two_sided
    1.0
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    _z(confidence)
    counts = paired_counts(a, b)
    n = counts.n
    if n == 0:
        raise ValueError("no paired observations to bootstrap")
    rng = random.Random(seed)
    hi_a, hi_b = counts.a_only, counts.a_only + counts.b_only
    diffs: list[float] = []
    for _ in range(resamples):
        s = 0
        for _ in range(n):
            k = int(rng.random() * n)
            if k < hi_a:
                s += 1
            elif k < hi_b:
                s -= 1
        diffs.append(s / n)
    diffs.sort()
    tail = (1.0 - confidence) / 2.0
    lo = diffs[max(0, math.ceil(resamples * tail) - 1)]
    hi = diffs[min(resamples - 1, math.ceil(resamples * (1.0 - tail)) - 1)]
    at_most_zero = sum(1 for d in diffs if d <= 0.0)
    at_least_zero = sum(1 for d in diffs if d >= 0.0)
    p_greater = (1 + at_most_zero) / (resamples + 1)
    p_two = min(1.0, 2.0 * (1 + min(at_most_zero, at_least_zero)) / (resamples + 1))
    return BootstrapResult(counts.difference, (lo, hi), p_two, p_greater, n, resamples, seed)


@dataclass(frozen=True)
class NonInferiorityResult:
    """Wald+2 test of H0 ``acc(a) - acc(b) <= -margin``.

    ``difference`` is the raw paired difference; ``adjusted_difference`` and ``se`` are those of
    the table with 1/2 added to each cell; ``lower_bound`` is the one-sided ``1 - alpha`` lower
    confidence bound of the difference; non-inferiority is shown when ``p <= alpha``
    (equivalently ``lower_bound > -margin``).
    """

    difference: float
    adjusted_difference: float
    se: float
    z: float
    p: float
    margin: float
    lower_bound: float
    alpha: float

    @property
    def holds(self) -> bool:
        return self.p <= self.alpha


def noninferiority_test(
    a: Sequence[bool], b: Sequence[bool], margin: float, alpha: float = 0.05
) -> NonInferiorityResult:
    """One-sided paired non-inferiority test of ``a`` against ``b`` with ``margin`` (Wald+2).

    With ``n10`` (only ``a`` right) and ``n01`` (only ``b`` right) among ``n`` pairs, and
    ``n' = n + 2``: ``d = (n10 - n01) / n'``, ``se = sqrt(n10 + n01 + 1 - (n10 - n01)^2 / n') / n'``,
    ``z = (d + margin) / se``, ``p = 1 - Phi(z)``.

    100 questions, 10 only ``a`` right, 5 only ``b``: ``d = 5/102``,
    ``se = sqrt(16 - 25/102) / 102``, ``z = 2.5446``:

    >>> r = noninferiority_test([True] * 10 + [False] * 5 + [True] * 85,
    ...                         [False] * 10 + [True] * 5 + [True] * 85, margin=0.05)
    >>> round(r.z, 4), round(r.p, 5), r.holds
    (2.5446, 0.00547, True)
    >>> round(noninferiority_test([True] * 5, [True] * 5, margin=0.05).p, 2)  # 5 ties prove little
    0.36
    """
    if not margin >= 0.0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    counts = paired_counts(a, b)
    if counts.n == 0:
        raise ValueError("no paired observations to test")
    n_adj = counts.n + 2
    delta = counts.a_only - counts.b_only
    d_adj = delta / n_adj
    se = math.sqrt(counts.discordant + 1 - delta * delta / n_adj) / n_adj
    z = (d_adj + margin) / se
    p = _NORMAL.cdf(-z)
    lower = d_adj - _NORMAL.inv_cdf(1.0 - alpha) * se
    return NonInferiorityResult(counts.difference, d_adj, se, z, p, margin, lower, alpha)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm--Bonferroni adjusted p-values (same order as given), for reading many tests at once.

    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
