"""Every settings class built from params goes through one strict helper (msjoe.config)."""

from __future__ import annotations

import doctest

import pytest

from msjoe import config
from msjoe.mllm.pretrain import MLLMPretrainConfig
from msjoe.pipeline import PipelineConfig
from msjoe.rl.difficulty import DifficultyConfig
from msjoe.rl.train_joint import JointTrainConfig
from msjoe.rl.train_sampler import SamplerTrainConfig
from msjoe.serving.limits import ServingLimits
from msjoe.serving.release import ReleaseConfig
from msjoe.world.config import WorldConfig


def test_doctests_pass() -> None:
    assert doctest.testmod(config).failed == 0


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        (WorldConfig, "world"),
        (MLLMPretrainConfig, "mllm pre-training"),
        (PipelineConfig, "pipeline"),
        (DifficultyConfig, "difficulty"),
        (SamplerTrainConfig, "train_sampler"),
        (JointTrainConfig, "train_joint"),
        (ServingLimits, "serving limit"),
        (ReleaseConfig, "release config"),
    ],
)
def test_a_misspelt_key_is_named_not_ignored(kind: type, what: str) -> None:
    with pytest.raises(ValueError, match=rf"unknown {what} parameters: \['bacth_size'\]"):
        kind.from_mapping({"bacth_size": 8})


def test_lists_from_yaml_become_the_tuples_the_defaults_are() -> None:
    cfg = SamplerTrainConfig.from_mapping({"betas": [0.8, 0.95]})
    assert cfg.betas == (0.8, 0.95)
    assert JointTrainConfig.from_mapping({"betas": [0.8, 0.95]}).betas == (0.8, 0.95)
    pretrain = MLLMPretrainConfig.from_mapping({"sft": {"betas": [0.9, 0.9], "max_steps": 3}, "model": {"num_layers": 1}})
    assert pretrain.sft.betas == (0.9, 0.9) and pretrain.sft.max_steps == 3 and pretrain.model.num_layers == 1
    with pytest.raises(ValueError, match=r"unknown sft parameters: \['steps'\]"):
        MLLMPretrainConfig.from_mapping({"sft": {"steps": 3}})
