"""Rollout rewards: accuracy, format, information (peakedness), total; and their doctests."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

import msjoe.rl.rewards as rewards_mod
from msjoe.rl.rewards import (
    RewardBreakdown,
    RewardConfig,
    accuracy_reward,
    format_reward,
    info_reward,
    total_reward,
)


def test_doctests_of_rl_modules_pass() -> None:
    import msjoe.rl.advantages
    import msjoe.rl.checkpoint
    import msjoe.rl.engine
    import msjoe.rl.grpo

    rl = msjoe.rl
    for module in (rewards_mod, rl.advantages, rl.grpo, rl.engine, rl.checkpoint):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0, module.__name__
        assert result.failed == 0, module.__name__


def test_rl_package_import_is_light() -> None:
    import subprocess
    import sys

    code = "import sys, msjoe.rl as r; r.total_reward; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("pred", "answer", "expected"),
    [("A", "A", 1.0), ("a ", "A", 1.0), ("B", "A", 0.0), (None, "A", 0.0), ("", "A", 0.0)],
)
def test_accuracy_reward(pred: str | None, answer: str, expected: float) -> None:
    assert accuracy_reward(pred, answer) == expected


def test_accuracy_reward_needs_an_answer() -> None:
    with pytest.raises(ValueError):
        accuracy_reward("A", " ")


def test_format_reward_needs_both_turns() -> None:
    assert [format_reward(q, a) for q in (True, False) for a in (True, False)] == [0.1, 0, 0, 0]
    assert format_reward(True, True, bonus=0.25) == 0.25


def peaked_row(t: int, at: int, height: float, base: float = 0.2) -> np.ndarray:
    row = np.full(t, base)
    row[at] = base + height
    return row


def test_softmax_peakedness_threshold_is_log_tau_over_scale() -> None:
    # softmax ratio max/min = exp(scale * (max - min)): peaked iff scale * gap > ln(tau)
    scale, tau = 100.0, 10.0
    gap = math.log(tau) / scale
    just_below = peaked_row(16, 4, gap * 0.99)
    just_above = peaked_row(16, 9, gap * 1.01)
    r = info_reward(np.vstack([just_below, just_above]), logit_scale=scale, tau=tau)
    assert r.peaked == (False, True)
    assert r.fired == 0.5 and r.value == pytest.approx(0.05)
    # a larger scale sharpens the softmax: the same gap now fires
    assert info_reward(just_below[None], logit_scale=2 * scale, tau=tau).fired == 1.0
    # tau and weight are parameters
    assert info_reward(just_above[None], logit_scale=scale, tau=tau * 1.1).fired == 0.0
    assert info_reward(just_above[None], logit_scale=scale, weight=0.5).value == 0.5


def test_softmax_transform_is_shift_invariant_and_stable() -> None:
    rng = np.random.default_rng(0)
    sim = 0.2 + 0.05 * rng.standard_normal((4, 300))
    base = info_reward(sim, logit_scale=100.0)
    shifted = info_reward(sim + 0.5, logit_scale=100.0)
    assert base == shifted
    # a huge spread (softmax min underflows towards 0) is peaked, not a NaN
    extreme = np.array([[1.0, -1.0, 0.0]])
    assert info_reward(extreme, logit_scale=1000.0).fired == 1.0


def test_raw_transform_and_min_floor() -> None:
    rows = np.array(
        [
            [0.30, 0.02, 0.1],  # 15x: peaked
            [0.30, 0.05, 0.1],  # 6x: not peaked
            [0.30, -0.2, 0.1],  # min <= 0 floored to eps: peaked
            [-0.1, -0.3, -0.2],  # all non-positive: both ends floored, ratio 1
        ]
    )
    r = info_reward(rows, logit_scale=100.0, transform="raw")
    assert r.peaked == (True, False, True, False)
    assert r.fired == 0.5


def test_degenerate_inputs() -> None:
    assert info_reward(np.array([[0.3]]), logit_scale=100.0).fired == 0.0  # one frame
    assert info_reward(np.full((2, 5), 0.3), logit_scale=100.0).fired == 0.0  # flat rows
    empty = info_reward(np.zeros((0, 5)), logit_scale=100.0)
    assert (empty.value, empty.fired, empty.peaked) == (0.0, 0.0, ())
    one_d = info_reward(peaked_row(8, 2, 0.2), logit_scale=100.0)
    assert one_d.peaked == (True,)
    with pytest.raises(ValueError, match="NaN"):
        info_reward(np.array([[0.1, np.nan]]), logit_scale=100.0)
    with pytest.raises(ValueError, match="transform"):
        info_reward(np.ones((1, 3)), logit_scale=100.0, transform="log")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="logit_scale"):
        info_reward(np.ones((1, 3)), logit_scale=0.0)


def test_total_reward_adds_the_parts() -> None:
    sim = np.vstack([peaked_row(32, 3, 0.2), np.full(32, 0.2)])
    r = total_reward("C", "C", True, True, sim, logit_scale=100.0)
    assert isinstance(r, RewardBreakdown)
    assert (r.accuracy, r.format, r.info_fired) == (1.0, 0.1, 0.5)
    assert r.info == pytest.approx(0.05)
    assert r.total == pytest.approx(1.15) and float(r) == r.total

    wrong = total_reward("A", "C", True, False, sim, 100.0, RewardConfig(info_weight=0.2))
    assert (wrong.accuracy, wrong.format) == (0.0, 0.0)
    assert wrong.info == pytest.approx(0.1)  # queries were generated, so r_info still counts

    # a failed query turn: the fallback query is not the policy's work, no info reward
    fallback = total_reward("C", "C", False, True, sim, logit_scale=100.0)
    assert (fallback.format, fallback.info, fallback.info_fired) == (0.0, 0.0, 0.0)
    assert fallback.total == 1.0


def test_reward_config_rejects_bad_knobs_when_built() -> None:
    with pytest.raises(ValueError, match="transform"):
        RewardConfig(transform="log")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tau"):
        RewardConfig(tau=0.0)
    sim = np.vstack([peaked_row(32, 3, 0.2)])
    strict = total_reward("C", "C", True, True, sim, 100.0, RewardConfig(tau=1e30))
    assert strict.info_fired == 0.0  # tau reaches info_reward
