"""The difficulty stage's pass rate with a real (tiny, nudged) MLLM: deterministic with a seed,
bounded, and questions solved every time dropped from RL and counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from msjoe.clip.model import FrozenClip
from msjoe.mllm.manifest import load_prepared_mllm
from msjoe.pipeline import Pipeline
from msjoe.rl.difficulty import DifficultyConfig, measure_difficulty, trainable_qids
from msjoe.rl.rollout import TrainItem
from msjoe.sampling import build_sampler
from tests.unit.test_rl_train_sampler import (  # noqa: F401 (shared module fixtures)
    PIPE_CFG,
    _one_thread_and_ds_env,
    rl_clip,
    rl_items,
    rl_mllm_dir,
    rl_world,
)


def test_pass_rates_are_deterministic_and_solved_questions_are_dropped(
    rl_items: list[TrainItem], rl_clip: FrozenClip, rl_mllm_dir: Path
) -> None:
    pipeline = Pipeline(rl_clip, load_prepared_mllm(rl_mllm_dir), build_sampler("uniform"), None, PIPE_CFG)
    cfg = DifficultyConfig(n_attempts=4, budget=4, batch_size=8, seed=0)
    first = measure_difficulty(pipeline, rl_items, cfg)
    again = measure_difficulty(pipeline, rl_items, cfg)
    other = measure_difficulty(pipeline, rl_items, DifficultyConfig(**{**cfg.__dict__, "seed": 1}))

    table = first.table
    assert list(table["qid"]) == [item.qid for item in rl_items]
    pd.testing.assert_frame_equal(table, again.table)  # same seed, same pass rates
    assert not table["correct"].equals(other.table["correct"]) or not table["parse_failures"].equals(
        other.table["parse_failures"]
    ), "temperature-1 attempts must depend on the seed"
    # c is a pass rate over n attempts
    np.testing.assert_allclose(table["c"] * 4, table["correct"])
    assert ((table["c"] >= 0) & (table["c"] <= 1)).all()
    assert 0.0 < first.report["mean_pass_rate"] < 1.0
    assert first.report["n_questions"] == len(rl_items)
    assert first.report["n_solved"] == int((table["c"] == 1.0).sum())
    assert first.report["n_trainable"] == len(rl_items) - first.report["n_solved"]
    assert sum(first.report["pass_rate_histogram"].values()) == len(rl_items)
    assert "seconds" not in first.report and first.timings["seconds"] > 0  # wall time kept apart

    kept, dropped = trainable_qids(table)
    assert dropped == first.report["n_solved"]
    assert set(kept) == set(table.loc[table["c"] < 1.0, "qid"])
    assert all(c < 1.0 for c in kept.values())


def test_trainable_qids_drops_and_counts_c_equal_one() -> None:
    table = pd.DataFrame({"qid": ["a", "b", "c", "d"], "c": [1.0, 0.0, 0.5, 1.0]})
    kept, dropped = trainable_qids(table)
    assert kept == {"b": 0.0, "c": 0.5} and dropped == 2


def test_config_rejects_unknown_and_bad_values() -> None:
    with pytest.raises(ValueError, match="unknown difficulty parameters"):
        DifficultyConfig.from_mapping({"attempts": 3})
    with pytest.raises(ValueError):
        DifficultyConfig(n_attempts=0)
