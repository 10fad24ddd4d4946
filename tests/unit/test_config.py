"""Every settings class built from params goes through one strict helper (msjoe.config)."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

import yaml

from msjoe import config
from msjoe.clip.prepare import ClipSettings
from msjoe.evaluate import EvaluateConfig
from msjoe.ingest import IngestConfig
from msjoe.package import PackageConfig
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
        (EvaluateConfig, "evaluate"),
        (PackageConfig, "package"),
        (IngestConfig, "ingest"),
        (ClipSettings, "clip"),
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


@pytest.mark.parametrize("params_file", ["params.yaml", "benchmark_eval/params.yaml"])
def test_the_shipped_evaluate_sections_are_valid(params_file: str) -> None:
    section = yaml.safe_load(open(params_file))["evaluate"]
    cfg = EvaluateConfig.from_mapping(section)
    assert list(cfg.samplers) == list(section["samplers"])
    assert cfg.budgets == tuple(section["budgets"]) and cfg.labels[-1] == "oracle"


@pytest.mark.parametrize("params_file", ["params.yaml", "benchmark_eval/params.yaml"])
def test_the_shared_inference_section_is_what_every_consuming_stage_reads(params_file: str) -> None:
    """One home for how the MLLM is asked: the section builds a strict PipelineConfig, and each
    stage that asks the MLLM declares it as a DVC param (so changing it re-runs them all)."""
    from stages._common import pipeline_settings

    cfg = PipelineConfig.from_mapping(pipeline_settings(Path(params_file)))
    assert cfg.n_queries == yaml.safe_load(open(params_file))["inference"]["n_queries"]
    dvc = yaml.safe_load(open(Path(params_file).parent / "dvc.yaml"))["stages"]
    for name, stage in dvc.items():
        declared = [p for entry in stage.get("params", [])
                    for p in ([entry] if isinstance(entry, str) else [x for v in entry.values() for x in v])]
        asks = name in ("difficulty", "train_sampler", "train_joint", "evaluate", "package")
        assert ("inference" in declared) == asks, name


@pytest.mark.parametrize("params_file", ["params.yaml", "benchmark_eval/params.yaml"])
def test_the_shipped_ingest_and_clip_sections_are_valid(params_file: str) -> None:
    params = yaml.safe_load(open(params_file))
    assert IngestConfig.from_mapping(params["ingest"]).max_reject_fraction == params["ingest"]["max_reject_fraction"]
    if "clip" in params:
        clip = ClipSettings.from_mapping(params["clip"])
        assert clip.model == params["clip"]["model"] and clip.train.steps == params["clip"]["train"]["steps"]
    with pytest.raises(ValueError, match=r"unknown clip.train parameters: \['stpes'\]"):
        ClipSettings.from_mapping({"model": "m", "train": {"stpes": 1}})


def test_the_shipped_package_section_is_valid() -> None:
    section = yaml.safe_load(open("params.yaml"))["package"]
    cfg = PackageConfig.from_mapping(section)
    assert (cfg.metric, cfg.budget, cfg.release, cfg.gate) == (
        section["metric"], section["budget"], section["release"], section["gate"])
    with pytest.raises(ValueError, match="direction"):
        PackageConfig.from_mapping({"direction": "up"})


def test_a_checkpoint_path_is_not_a_sampler_parameter() -> None:
    """Weights are a stage input: their path is given on the stage's command in dvc.yaml, where
    DVC tracks it, never in params.yaml (where a second copy could disagree with the deps)."""
    with pytest.raises(ValueError, match="dvc.yaml"):
        EvaluateConfig.from_mapping({"samplers": {"s1": {"name": "msjoe", "params": {"checkpoint": "m/s.pt"}}}})


def test_evaluate_checks_every_sampler_entry_as_strictly() -> None:
    cfg = EvaluateConfig.from_mapping({"samplers": {"aks_gen": {"name": "aks", "params": {"max_depth": 5},
                                                                "queries": "generated"}}, "oracle": False})
    assert cfg.samplers["aks_gen"].queries == "generated" and cfg.labels == ["aks_gen"]
    with pytest.raises(ValueError, match=r"unknown evaluate.samplers.aks parameters: \['query'\]"):
        EvaluateConfig.from_mapping({"samplers": {"aks": {"name": "aks", "query": "generated"}}})
    with pytest.raises(ValueError, match="queries must be one of"):
        EvaluateConfig.from_mapping({"samplers": {"aks": {"name": "aks", "queries": "generatd"}}})
    with pytest.raises(ValueError, match="unknown benchmark 'videome'"):
        EvaluateConfig.from_mapping({"benchmark": "videome"})


def test_a_typo_is_named_at_its_own_level_before_nested_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown release config parameters: \['limts'\]"):
        ReleaseConfig.from_mapping({"limts": {}, "pipeline": {"n_querys": 2}})
    with pytest.raises(ValueError, match=r"unknown pipeline parameters: \['n_querys'\]"):
        ReleaseConfig.from_mapping({"pipeline": {"n_querys": 2}})
    with pytest.raises(ValueError, match=r"unknown evaluate parameters: \['budget'\]"):
        EvaluateConfig.from_mapping({"budget": 8, "samplers": {"u": {"nam": "uniform"}}})
