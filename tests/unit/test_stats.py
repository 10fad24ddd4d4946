"""msjoe.stats against hand-computed values: Wilson intervals, exact McNemar, the paired
bootstrap and the Wald+2 non-inferiority test."""

from __future__ import annotations

import doctest
import math
import random

import pytest

from msjoe import stats
from msjoe.stats import (
    binomial_tail,
    holm,
    mcnemar_exact,
    noninferiority_test,
    paired_bootstrap,
    paired_counts,
    wilson_interval,
)

Z = 1.959963984540054  # Phi^-1(0.975)


def _pairs(both: int, a_only: int, b_only: int, neither: int) -> tuple[list[bool], list[bool]]:
    a = [True] * both + [True] * a_only + [False] * b_only + [False] * neither
    b = [True] * both + [False] * a_only + [True] * b_only + [False] * neither
    return a, b


def test_doctests_pass() -> None:
    result = doctest.testmod(stats)
    assert result.failed == 0 and result.attempted >= 10


def test_wilson_interval_matches_the_formula_by_hand() -> None:
    # 50/100: centre 0.5, half-width z*sqrt(0.25/100 + z^2/40000)/(1 + z^2/100) = 0.096169
    lo, hi = wilson_interval(50, 100)
    assert (lo, hi) == pytest.approx((0.403831, 0.596169), abs=1e-6)
    # 8/10 -> (0.4902, 0.9433), and 2/10 is its mirror image
    lo8, hi8 = wilson_interval(8, 10)
    assert (lo8, hi8) == pytest.approx((0.490162, 0.943318), abs=1e-6)
    assert wilson_interval(2, 10) == pytest.approx((1 - hi8, 1 - lo8))
    # 0/20: the lower bound is 0 and the upper (z^2/n) / (1 + z^2/n)
    assert wilson_interval(0, 20) == pytest.approx((0.0, (Z * Z / 20) / (1 + Z * Z / 20)))
    assert wilson_interval(20, 20)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # a wider confidence gives a wider interval; more data a narrower one
    assert wilson_interval(8, 10, 0.99)[0] < lo8
    assert wilson_interval(80, 100)[1] - wilson_interval(80, 100)[0] < hi8 - lo8
    for bad in ((3, 2), (-1, 5), (1, -1)):
        with pytest.raises(ValueError):
            wilson_interval(*bad)


def test_binomial_tail_is_exact() -> None:
    assert binomial_tail(9, 10) == 11 / 1024
    assert binomial_tail(3, 6) == 42 / 64
    assert binomial_tail(0, 7) == 1.0 and binomial_tail(8, 7) == 0.0
    for k in range(12):  # P(X >= k) + P(X <= k - 1) = 1, and X is symmetric
        assert binomial_tail(k, 11) + binomial_tail(11 - k + 1, 11) == pytest.approx(1.0)
    assert binomial_tail(600, 1000) == pytest.approx(1.364e-10, rel=1e-2)  # big n stays exact


def test_mcnemar_exact_on_hand_built_tables() -> None:
    # 9 discordant pairs for a, 1 for b: P(X >= 9 | Bin(10, 1/2)) = 11/1024
    a, b = _pairs(both=5, a_only=9, b_only=1, neither=3)
    r = mcnemar_exact(a, b)
    assert (r.counts.a_only, r.counts.b_only, r.counts.n) == (9, 1, 18)
    assert r.p_greater == 11 / 1024 and r.p_two_sided == 22 / 1024
    assert r.p_less == binomial_tail(1, 10) == 1023 / 1024
    # concordant pairs carry no information
    a2, b2 = _pairs(both=500, a_only=9, b_only=1, neither=200)
    assert mcnemar_exact(a2, b2).p_greater == r.p_greater
    # b better: 0 vs 5 -> one-sided p for a > b is 1, two-sided 2/32
    r = mcnemar_exact(*_pairs(both=1, a_only=0, b_only=5, neither=1))
    assert (r.p_greater, r.p_less, r.p_two_sided) == (1.0, 1 / 32, 1 / 16)
    # balanced: two-sided p capped at 1
    r = mcnemar_exact(*_pairs(both=0, a_only=3, b_only=3, neither=0))
    assert r.p_greater == 42 / 64 and r.p_two_sided == 1.0
    with pytest.raises(ValueError, match="length"):
        mcnemar_exact([True], [True, False])


def test_paired_counts_tally() -> None:
    c = paired_counts(*_pairs(both=4, a_only=3, b_only=1, neither=2))
    assert (c.n, c.discordant) == (10, 4)
    assert (c.accuracy_a, c.accuracy_b, c.difference) == pytest.approx((0.7, 0.5, 0.2))


def test_paired_bootstrap_is_deterministic_and_order_free() -> None:
    a, b = _pairs(both=250, a_only=30, b_only=20, neither=0)
    first = paired_bootstrap(a, b, resamples=2000, seed=7)
    assert paired_bootstrap(a, b, resamples=2000, seed=7) == first
    order = list(range(len(a)))
    random.Random(1).shuffle(order)
    shuffled = paired_bootstrap([a[i] for i in order], [b[i] for i in order], resamples=2000, seed=7)
    assert shuffled == first
    # the difference is 10/300; the percentile CI is close to the paired normal one,
    # d +- z * sqrt((n10 + n01)/n^2 - d^2/n) = 0.0333 +- 0.0460
    d = 10 / 300
    sd = math.sqrt(50 / 300**2 - d * d / 300)
    assert first.difference == pytest.approx(d)
    assert first.ci[0] == pytest.approx(d - Z * sd, abs=0.01) and first.ci[1] == pytest.approx(d + Z * sd, abs=0.01)
    assert first.ci[0] < 0 < first.ci[1]
    # the exact McNemar two-sided p is 0.203; the bootstrap agrees roughly
    assert 0.1 < first.p_two_sided < 0.3 and first.p_greater < first.p_two_sided
    assert (first.n, first.resamples, first.seed) == (300, 2000, 7)


def test_paired_bootstrap_degenerate_tables() -> None:
    # a always right, b always wrong: every resample has difference 1
    r = paired_bootstrap([True] * 8, [False] * 8, resamples=199)
    assert r.ci == (1.0, 1.0) and r.p_greater == 1 / 200 and r.p_two_sided == 2 / 200
    # identical answers: difference 0 with no spread, no evidence either way
    r = paired_bootstrap([True, False, True], [True, False, True], resamples=199)
    assert r.difference == 0.0 and r.ci == (0.0, 0.0) and r.p_two_sided == 1.0 and r.p_greater == 1.0
    with pytest.raises(ValueError):
        paired_bootstrap([], [], resamples=10)
    with pytest.raises(ValueError):
        paired_bootstrap([True], [False], resamples=0)


def test_noninferiority_wald_plus_two_by_hand() -> None:
    # n = 100, 10 only-a, 5 only-b, margin 0.05: n' = 102, d' = 5/102,
    # se = sqrt(16 - 25/102)/102 = 0.0389142, z = (d' + 0.05)/se = 2.544565, p = 0.0054707
    a, b = _pairs(both=80, a_only=10, b_only=5, neither=5)
    r = noninferiority_test(a, b, margin=0.05)
    assert r.difference == pytest.approx(0.05) and r.adjusted_difference == pytest.approx(5 / 102)
    assert r.se == pytest.approx(math.sqrt(16 - 25 / 102) / 102)
    assert r.z == pytest.approx(2.544565, abs=1e-6) and r.p == pytest.approx(0.0054707, abs=1e-7)
    assert r.holds and r.lower_bound > -0.05
    assert r.lower_bound == pytest.approx(5 / 102 - 1.6448536 * r.se)
    # a clearly worse (0 vs 20 discordant): z = (-20/102 + 0.05) / (sqrt(21 - 400/102)/102) = -3.6055
    worse = noninferiority_test(*_pairs(both=60, a_only=0, b_only=20, neither=20), margin=0.05)
    assert worse.z == pytest.approx(-3.6055, abs=1e-3) and worse.p > 0.99 and not worse.holds
    assert worse.lower_bound < -0.05
    # few identical answers prove little; many do: se = 1/(n+2) when nothing is discordant
    assert noninferiority_test([True] * 5, [True] * 5, 0.05).p == pytest.approx(0.3631693, abs=1e-6)
    assert not noninferiority_test([True] * 5, [True] * 5, 0.05).holds
    assert noninferiority_test([True] * 200, [True] * 200, 0.05).p < 1e-6
    # a larger margin is easier to meet
    assert noninferiority_test(a, b, 0.10).p < r.p
    with pytest.raises(ValueError, match="margin"):
        noninferiority_test(a, b, margin=-0.1)


def test_holm_adjustment() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([]) == []
    adjusted = holm([0.001, 0.2, 0.01, 0.04])
    assert adjusted == pytest.approx([0.004, 0.2, 0.03, 0.08])
