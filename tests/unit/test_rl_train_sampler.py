"""Stage 1 (sampler REINFORCE with the difficulty-aware advantage) on a tiny generated world with
random tiny CLIP and MLLM, through a single-process CPU DeepSpeed engine.

The module-level builders are shared with the difficulty and stage-2 tests.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from msjoe.clip.manifest import ClipManifest, identity_for, write_manifest
from msjoe.clip.model import FrozenClip, create_clip, load_clip
from msjoe.episode import uniform_positions
from msjoe.features import FeatureStore
from msjoe.mllm.build import TinyMLLMConfig, build_tiny_mllm
from msjoe.mllm.load import MLLM, load_mllm
from msjoe.mllm.pretrain import build_corpus
from msjoe.mllm.manifest import MLLMManifest, load_prepared_mllm
from msjoe.mllm.manifest import write_manifest as write_mllm_manifest
from msjoe.pipeline import Pipeline, PipelineConfig, load_sampler
from msjoe.rl.checkpoint import latest_checkpoint, read_meta
from msjoe.mllm.sft import SFTConfig, SFTExample, supervised_finetune
from msjoe.rl.rollout import FrameCache, TrainItem, load_items
from msjoe.rl.train_sampler import SamplerTrainConfig, train_sampler
from msjoe.sampling import build_sampler
from msjoe.video import sha256_file
from msjoe.world import WorldConfig, generate_world
from tests.launcher import clear_launcher_env

REPO = Path(__file__).resolve().parents[2]
ZERO1 = str(REPO / "infra" / "deepspeed" / "zero1.json")
MLLM_CFG = TinyMLLMConfig(
    vocab_size=400, hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1,
    vision_hidden_size=32, vision_intermediate_size=64, vision_depth=1,
)
PIPE_CFG = PipelineConfig(fps=2.0, max_candidates=32, n_queries=4, preview_size=16, answer_size=16,
                          max_new_tokens=4, query_max_new_tokens=8, batch_size=16)


# ----------------------------------------------------------------------------- shared builders


def make_world(root: Path) -> Path:
    cfg = WorldConfig(seed=0, videos={"train": 2}, frames=40, fps=2.0, size=32, events_per_video=(2, 3),
                      event_frames=(2, 3), scene_frames=(8, 16))
    generate_world(cfg, root, progress=False)
    return root


def make_clip_dir(directory: Path) -> Path:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _, _ = create_clip("msjoe-tiny-clip")
    torch.save(model.state_dict(), directory / "clip.pt")
    shutil.copyfile(REPO / "src/msjoe/clip/configs/msjoe-tiny-clip.json", directory / "msjoe-tiny-clip.json")
    write_manifest(
        directory,
        ClipManifest("msjoe-tiny-clip", "clip.pt", "msjoe-tiny-clip.json",
                     identity_for("msjoe-tiny-clip", "clip.pt", directory / "clip.pt")),
    )
    return directory


def make_mllm_dir(directory: Path, world: Path, items: list[TrainItem] | None = None) -> Path:
    """A tiny random Qwen2.5-VL; with ``items``, nudged by a few SFT steps to write parseable
    turns (random answer letters, one option as the query), so that rollouts of one
    question differ in reward, as RL needs."""
    build_tiny_mllm(directory / "model", build_corpus(world, "train"), MLLM_CFG, seed=0)
    if items:
        mllm = load_mllm(str(directory / "model"))
        pipeline = Pipeline(None, mllm, build_sampler("uniform"), None, PIPE_CFG)  # type: ignore[arg-type]
        frames = FrameCache()
        rng = np.random.default_rng(0)
        examples = []
        for i, item in enumerate(items):
            shown = frames.frames(item, uniform_positions(item.n_candidates, 4))
            for _ in range(2):
                letter = "ABCD"[int(rng.integers(0, len(item.options)))]
                conv = pipeline.answer_conversation(item.question, item.options, shown)
                examples.append(SFTExample(conv, f"<answer>{letter}</answer>"))
            conv = pipeline.query_conversation(item.question, item.options, shown[:2])
            examples += [SFTExample(conv, f"<query>{item.options[i % 2]}</query>")] * 2
        supervised_finetune(mllm, examples, SFTConfig(learning_rate=1e-2, batch_size=8, max_steps=50,
                                                      warmup_ratio=0.0, log_every=1000))
        mllm.save_pretrained(directory / "model")
    write_mllm_manifest(directory, MLLMManifest("model", "tiny@test"))
    return directory


def make_features(world: Path, clip: FrozenClip, directory: Path) -> pd.DataFrame:
    """The embed stage's outputs for the world (feature files + index.parquet) and ingest's
    question table."""
    rows = [json.loads(line) for line in (world / "qa.jsonl").read_text().splitlines()]
    questions = pd.DataFrame(rows)
    questions["sha256"] = [sha256_file(world / v) for v in questions["video"]]
    store = FeatureStore(directory)
    pipeline = Pipeline(clip, None, build_sampler("uniform"), store, PIPE_CFG)  # type: ignore[arg-type]
    index = []
    for video, sha in questions[["video", "sha256"]].drop_duplicates().itertuples(index=False):
        pipeline.video_features(world / video, sha)
        index.append({"video": video, "sha256": sha, "key": pipeline.feature_key(sha)})
    pd.DataFrame(index).to_parquet(directory / "index.parquet", index=False)
    return questions


def ds_env(mp: pytest.MonkeyPatch) -> None:
    """A plain single process: build_engine fills the launcher variables itself (CPU, gloo)."""
    clear_launcher_env(mp)
    if torch.cuda.is_available():
        mp.setenv("DS_ACCELERATOR", "cpu")


def params_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_ds_env(one_thread: None) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        ds_env(mp)
        yield


@pytest.fixture(scope="module")
def rl_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_world(tmp_path_factory.mktemp("rl_world"))


@pytest.fixture(scope="module")
def rl_clip(tmp_path_factory: pytest.TempPathFactory) -> FrozenClip:
    return load_clip(make_clip_dir(tmp_path_factory.mktemp("rl_clip")))


@pytest.fixture(scope="module")
def rl_mllm_dir(tmp_path_factory: pytest.TempPathFactory, rl_world: Path, rl_items: list[TrainItem]) -> Path:
    return make_mllm_dir(tmp_path_factory.mktemp("rl_mllm"), rl_world, rl_items)


@pytest.fixture(scope="module")
def rl_items(tmp_path_factory: pytest.TempPathFactory, rl_world: Path, rl_clip: FrozenClip) -> list[TrainItem]:
    features = tmp_path_factory.mktemp("rl_features")
    questions = make_features(rl_world, rl_clip, features)
    items, counts = load_items(questions, rl_world, features, split="train")
    assert counts["kept"] == counts["total"] == len(items) >= 4
    return items


def stage1_cfg(**overrides: object) -> SamplerTrainConfig:
    base: dict[str, object] = dict(steps=3, questions_per_step=4, budget=4, lr=0.05, warmup_steps=0,
                                   checkpoint_every=1, keep_checkpoints=2, seed=3, ds_config=ZERO1,
                                   query_temperature=1.0)
    base.update(overrides)
    return SamplerTrainConfig(**base)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- tests


def test_one_stage1_step_changes_only_the_sampler(
    rl_items: list[TrainItem], rl_clip: FrozenClip, rl_mllm_dir: Path, tmp_path: Path
) -> None:
    mllm: MLLM = load_prepared_mllm(rl_mllm_dir)
    pipeline = Pipeline(rl_clip, mllm, build_sampler("uniform"), None, PIPE_CFG)
    before_mllm = params_of(mllm.model)
    # c in (0, 1) for every question: each rollout gets a non-zero advantage of either sign
    difficulty = {item.qid: 0.25 + 0.5 * (i % 2) for i, item in enumerate(rl_items)}
    report = train_sampler(pipeline, rl_items, difficulty, tmp_path / "out", tmp_path / "ckpt",
                           stage1_cfg(steps=1))

    assert report["completed"] and report["steps_done"] == 1 and len(report["history"]) == 1
    record = report["history"][0]
    assert 0.0 <= record["accuracy"] <= 1.0 and record["advantage"] != 0.0
    assert record["uniform_pass_rate"] == pytest.approx(0.5, abs=0.25)
    after_mllm = params_of(mllm.model)
    assert all(torch.equal(before_mllm[k], after_mllm[k]) for k in before_mllm), "the MLLM must stay frozen"

    trained = load_sampler("msjoe", {"checkpoint": str(tmp_path / "out" / "sampler.pt")})
    fresh = load_sampler("msjoe", {"seed": 0})
    changed = [k for k, v in trained.model.state_dict().items() if not torch.equal(v, fresh.model.state_dict()[k])]
    assert changed, "one step must move the sampler"
    meta = read_meta(latest_checkpoint(tmp_path / "ckpt"))
    assert meta["step"] == 1
    # no wall clock in the report, the history or the checkpoint (a hashed DVC output): under "timings"
    assert "saved_at" not in meta and meta["extra"]["history"] == report["history"]
    assert not {"seconds", "query_seconds", "peak_rss_mb"} & (set(report) | set(record))
    assert len(report["timings"]["step_seconds"]) == 1 and report["timings"]["peak_rss_mb"] > 0


def test_questions_without_difficulty_are_not_trained(
    rl_items: list[TrainItem], rl_clip: FrozenClip, rl_mllm_dir: Path, tmp_path: Path
) -> None:
    pipeline = Pipeline(rl_clip, load_prepared_mllm(rl_mllm_dir), build_sampler("uniform"), None, PIPE_CFG)
    with pytest.raises(ValueError, match="no trainable questions"):
        train_sampler(pipeline, rl_items, {}, tmp_path / "out", tmp_path / "ckpt", stage1_cfg(steps=1))


def test_killed_run_resumes_to_the_same_sampler_as_a_straight_run(
    rl_items: list[TrainItem], rl_clip: FrozenClip, rl_mllm_dir: Path, tmp_path: Path
) -> None:
    pipeline = Pipeline(rl_clip, load_prepared_mllm(rl_mllm_dir), build_sampler("uniform"), None, PIPE_CFG)
    difficulty = {item.qid: 0.3 for item in rl_items}
    straight = train_sampler(pipeline, rl_items, difficulty, tmp_path / "a", tmp_path / "a_ckpt", stage1_cfg())

    killed = train_sampler(pipeline, rl_items, difficulty, tmp_path / "b", tmp_path / "b_ckpt",
                           stage1_cfg(stop_after=1))
    assert not killed["completed"] and killed["steps_done"] == 1
    assert not (tmp_path / "b" / "sampler.pt").exists()
    resumed = train_sampler(pipeline, rl_items, difficulty, tmp_path / "b", tmp_path / "b_ckpt", stage1_cfg())

    assert resumed["resumed_from"] == 1 and resumed["steps_done"] == straight["steps_done"] == 3
    assert [h["step"] for h in resumed["history"]] == [1, 2, 3]
    assert [h["accuracy"] for h in resumed["history"]] == [h["accuracy"] for h in straight["history"]]
    a = torch.load(tmp_path / "a" / "sampler.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "sampler.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    fresh = load_sampler("msjoe", {"seed": 0}).model.state_dict()
    assert any(not torch.equal(a[k], fresh[k]) for k in a)
    assert np.isfinite([h["loss"] for h in straight["history"]]).all()


def test_checkpoints_of_another_run_are_discarded_not_resumed(
    rl_items: list[TrainItem], rl_clip: FrozenClip, rl_mllm_dir: Path, tmp_path: Path
) -> None:
    pipeline = Pipeline(rl_clip, load_prepared_mllm(rl_mllm_dir), build_sampler("uniform"), None, PIPE_CFG)
    difficulty = {item.qid: 0.3 for item in rl_items}
    ckpt = tmp_path / "ckpt"
    train_sampler(pipeline, rl_items, difficulty, tmp_path / "a", ckpt, stage1_cfg(steps=2, stop_after=1))
    # Only bookkeeping changed (checkpoint cadence, no stop): the same run, resumed.
    same = train_sampler(pipeline, rl_items, difficulty, tmp_path / "a", ckpt, stage1_cfg(steps=2, checkpoint_every=2))
    assert same["resumed_from"] == 1
    # A trajectory setting changed: the old run's checkpoints are removed and training starts at 0.
    other = train_sampler(pipeline, rl_items, difficulty, tmp_path / "b", ckpt, stage1_cfg(steps=2, lr=0.01))
    assert other["resumed_from"] == 0 and other["steps_done"] == 2
    assert {read_meta(p)["extra"]["run"] for p in ckpt.glob("step_*")} == {
        read_meta(latest_checkpoint(ckpt))["extra"]["run"]
    }
    # So did the frozen inputs (different difficulty = different data): afresh again.
    harder = {qid: 0.6 for qid in difficulty}
    again = train_sampler(pipeline, rl_items, harder, tmp_path / "c", ckpt, stage1_cfg(steps=2, lr=0.01))
    assert again["resumed_from"] == 0
    # And so did how the MLLM is asked (the shared inference settings): afresh again.
    asked = Pipeline(rl_clip, pipeline.mllm, build_sampler("uniform"), None,
                     replace(PIPE_CFG, max_new_tokens=PIPE_CFG.max_new_tokens + 1))
    moved = train_sampler(asked, rl_items, harder, tmp_path / "d", ckpt, stage1_cfg(steps=2, lr=0.01))
    assert moved["resumed_from"] == 0
