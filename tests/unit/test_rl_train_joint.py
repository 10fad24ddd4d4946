"""Stage 2 (GRPO on the MLLM + REINFORCE on the sampler) through CPU DeepSpeed engines on a tiny
world: one step moves both models, outputs load through the evaluation's loaders, the ZeRO-3 and
KL-reference code paths run, and a killed run resumes to the same result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from msjoe.clip.model import FrozenClip
from msjoe.mllm.manifest import load_prepared_mllm, read_manifest
from msjoe.pipeline import Pipeline, load_sampler
from msjoe.rl.rollout import TrainItem
from msjoe.rl.train_joint import JointTrainConfig, train_joint
from msjoe.sampling import build_sampler
from tests.unit.test_rl_train_sampler import (  # noqa: F401 (shared module fixtures)
    PIPE_CFG,
    REPO,
    ZERO1,
    _one_thread_and_ds_env,
    params_of,
    rl_clip,
    rl_items,
    rl_mllm_dir,
    rl_world,
)


def joint_cfg(**overrides: object) -> JointTrainConfig:
    base: dict[str, object] = dict(steps=1, questions_per_step=3, group_size=4, budget=4, lr=1e-2,
                                   sampler_lr=0.05, warmup_steps=0, checkpoint_every=1, seed=1,
                                   ds_config=ZERO1, sampler_ds_config=ZERO1, grad_clip=0.0)
    base.update(overrides)
    return JointTrainConfig(**base)  # type: ignore[arg-type]


def pipeline_for(clip: FrozenClip, mllm_dir: Path) -> Pipeline:
    return Pipeline(clip, load_prepared_mllm(mllm_dir), build_sampler("uniform"), None, PIPE_CFG)


@pytest.mark.parametrize("zero_stage,kl_coef", [(1, 0.0), (3, 0.1)])
def test_one_stage2_step_changes_mllm_and_sampler(
    rl_items: list[TrainItem], rl_clip: FrozenClip, rl_mllm_dir: Path, tmp_path: Path,
    zero_stage: int, kl_coef: float,
) -> None:
    pipeline = pipeline_for(rl_clip, rl_mllm_dir)
    before = params_of(pipeline.mllm.model)
    out = tmp_path / "joint"
    report = train_joint(pipeline, rl_items, out, tmp_path / "ckpt",
                         joint_cfg(zero_stage=zero_stage, kl_coef=kl_coef))

    assert report["completed"] and report["steps_done"] == 1 and report["zero_stage"] == zero_stage
    assert report["kl_reference"] is (kl_coef > 0)
    rec = report["history"][0]
    for key in ("reward", "accuracy", "r_format", "r_info", "info_fire_rate", "clip_fraction"):
        assert key in rec and rec[key] == rec[key]  # present and not NaN
    assert 0.0 <= rec["info_fire_rate"] <= 1.0
    # the bonuses need parsed turns: format needs both, information the query turn
    assert rec["r_format"] <= 0.1 * min(rec["query_parse_rate"], rec["answer_parse_rate"]) + 1e-9
    assert rec["r_info"] <= 0.1 * rec["query_parse_rate"] + 1e-9
    assert rec["answer_parse_rate"] > 0.0  # the nudged model writes <answer> tags
    assert rec["ratio_mean"] == pytest.approx(1.0, abs=1e-3)  # generation and scoring agree
    # wall clock and memory only under "timings" (not in the history the checkpoints keep)
    assert not {"seconds", "rollout_seconds", "update_seconds"} & set(rec)
    assert not {"seconds", "peak_rss_mb"} & set(report)
    assert [t["step"] for t in report["timings"]["steps"]] == [1] and report["timings"]["peak_rss_mb"] > 0

    # the evaluation's loaders read the outputs
    assert read_manifest(out).name_or_path == "model"
    # the checkpoint's bytes do not record how its base was loaded (HF_HUB_OFFLINE)
    assert "local_files_only" not in json.loads((out / "model" / "tokenizer_config.json").read_text())
    trained = load_prepared_mllm(out)
    after = params_of(trained.model)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before), "GRPO must move the MLLM"
    sampler = load_sampler("msjoe", {"checkpoint": str(out / "sampler.pt")}).model.state_dict()
    fresh = load_sampler("msjoe", {"seed": 0}).model.state_dict()
    assert any(not torch.equal(sampler[k], fresh[k]) for k in sampler), "REINFORCE must move the sampler"


def test_killed_joint_run_resumes_like_a_straight_run(
    rl_items: list[TrainItem], rl_clip: FrozenClip, rl_mllm_dir: Path, tmp_path: Path
) -> None:
    cfg = joint_cfg(steps=2)
    straight = train_joint(pipeline_for(rl_clip, rl_mllm_dir), rl_items, tmp_path / "a", tmp_path / "a_ckpt", cfg)
    killed = train_joint(pipeline_for(rl_clip, rl_mllm_dir), rl_items, tmp_path / "b", tmp_path / "b_ckpt",
                         joint_cfg(steps=2, stop_after=1))
    assert not killed["completed"] and not (tmp_path / "b" / "mllm.json").exists()
    resumed = train_joint(pipeline_for(rl_clip, rl_mllm_dir), rl_items, tmp_path / "b", tmp_path / "b_ckpt", cfg)

    assert resumed["resumed_from"] == 1 and resumed["steps_done"] == straight["steps_done"] == 2
    assert [h["reward"] for h in resumed["history"]] == [h["reward"] for h in straight["history"]]
    a = torch.load(tmp_path / "a" / "sampler.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "sampler.pt", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    ma = params_of(load_prepared_mllm(tmp_path / "a").model)
    mb = params_of(load_prepared_mllm(tmp_path / "b").model)
    for key in ma:
        torch.testing.assert_close(ma[key], mb[key], atol=1e-6, rtol=0)


def test_group_size_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="group_size"):
        JointTrainConfig(group_size=1)
    with pytest.raises(ValueError, match="unknown train_joint parameters"):
        JointTrainConfig.from_mapping({"step": 3})
    with pytest.raises(ValueError, match="transform"):
        JointTrainConfig.from_mapping({"transform": "softmx"})  # a typo fails at load
    assert JointTrainConfig(tau=5.0, info_weight=0.3).reward.tau == 5.0
    assert (REPO / "infra" / "deepspeed" / "zero3.json").is_file()
