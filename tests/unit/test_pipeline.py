"""The MSJoE pipeline end to end on a tiny generated world with random tiny CLIP and MLLM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from msjoe.clip.model import FrozenClip, load_clip
from msjoe.features import FeatureStore
from msjoe.mllm.build import TinyMLLMConfig, build_tiny_mllm
from msjoe.mllm.load import MLLM, load_mllm
from msjoe.mllm.parsing import OPTION_LETTERS
from msjoe.mllm.pretrain import build_corpus
from msjoe.mllm.manifest import MLLMManifest
from msjoe.mllm.manifest import write_manifest as write_mllm_manifest
from msjoe.pipeline import STAGES, Pipeline, PipelineConfig, ask_command, load_sampler, query_source
from msjoe.sampling import build_sampler
from msjoe.video import sha256_file
from msjoe.world import WorldConfig, generate_world
from tests.models import write_random_clip

MLLM_CFG = TinyMLLMConfig(
    vocab_size=400, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2,
    vision_hidden_size=32, vision_intermediate_size=64, vision_depth=1,
)
CFG = PipelineConfig(fps=2.0, max_candidates=32, n_queries=4, preview_size=16, answer_size=32,
                     max_new_tokens=6, query_max_new_tokens=16, batch_size=8)


pytestmark = pytest.mark.usefixtures("one_thread")  # torch on one thread (tests/conftest.py)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = WorldConfig(seed=0, videos={"eval": 2}, frames=40, fps=2.0, size=32, events_per_video=(2, 3),
                      event_frames=(2, 3), scene_frames=(8, 16))
    out = tmp_path_factory.mktemp("world")
    generate_world(cfg, out, progress=False)
    return out


@pytest.fixture(scope="module")
def questions(world: Path) -> pd.DataFrame:
    """The world's QA rows as ingest writes them (with the video content hash)."""
    rows = [json.loads(line) for line in (world / "qa.jsonl").read_text().splitlines()]
    table = pd.DataFrame(rows)
    table["sha256"] = [sha256_file(world / v) for v in table["video"]]
    return table


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def clip(clip_dir: Path) -> FrozenClip:
    return load_clip(clip_dir)


@pytest.fixture(scope="module")
def mllm_dir(tmp_path_factory: pytest.TempPathFactory, world: Path) -> Path:
    directory = tmp_path_factory.mktemp("mllm")
    build_tiny_mllm(directory / "model", build_corpus(world, "eval"), MLLM_CFG, seed=0)
    write_mllm_manifest(directory, MLLMManifest("model", "tiny@test"))
    return directory


@pytest.fixture(scope="module")
def mllm(mllm_dir: Path) -> MLLM:
    return load_mllm(str(mllm_dir / "model"))


def test_answer_is_well_formed_and_respects_the_budget(
    world: Path, questions: pd.DataFrame, clip: FrozenClip, mllm: MLLM, tmp_path: Path
) -> None:
    row = questions.iloc[0]
    pipeline = Pipeline(clip, mllm, build_sampler("bolt"), FeatureStore(tmp_path / "features"), CFG)
    answer = pipeline.answer(world / row.video, row.question, list(row.options), 6, sha256=row.sha256)

    assert answer.sampler == "bolt"
    assert answer.option in OPTION_LETTERS[: len(row.options)]
    assert answer.option_index == OPTION_LETTERS.index(answer.option)
    assert len(answer.frames) == 6
    times = [f.timestamp for f in answer.frames]
    assert times == sorted(times) and len(set(times)) == 6
    # 40 frames at 2 fps, candidates at 2 fps: frame number i is shown at i / 2 s
    assert all(f.timestamp == pytest.approx(f.index / 2.0) for f in answer.frames)
    assert all(np.isfinite(f.weight) for f in answer.frames)
    assert set(answer.timings) == set(STAGES) and answer.timings["query"] > 0 and answer.timings["answer"] > 0
    assert answer.timings["total"] >= answer.timings["answer"]
    assert 1 <= len(answer.queries) <= CFG.n_queries
    # 3 previews at <= 16x16 px (1 merged patch each) + 6 frames at 32x32 (4 tokens each)
    assert answer.visual_tokens == 3 * 1 + 6 * 4
    payload = answer.to_dict()
    assert json.loads(json.dumps(payload))["frames"][0].keys() == {"index", "timestamp", "weight"}


def test_features_are_computed_once_then_reused(
    world: Path, questions: pd.DataFrame, clip: FrozenClip, mllm: MLLM, tmp_path: Path
) -> None:
    store = FeatureStore(tmp_path / "features")
    pipeline = Pipeline(clip, mllm, build_sampler("uniform"), store, CFG)
    row = questions.iloc[0]
    path = world / row.video
    first = pipeline.answer(path, row.question, list(row.options), 4)
    key = pipeline.feature_key(sha256_file(path))
    assert not first.features_cached and store.has(key)
    second = pipeline.answer(path, row.question, list(row.options), 4)
    assert second.features_cached
    assert [f.index for f in first.frames] == [f.index for f in second.frames]
    stored = store.load(key)
    assert stored.features.shape == (32, 64)  # 40 candidates at 2 fps, capped at 32
    np.testing.assert_allclose(np.linalg.norm(stored.features, axis=1), 1.0, atol=1e-5)
    # cached features equal what a fresh computation gives
    fresh, cached = Pipeline(clip, mllm, build_sampler("uniform"), None, CFG).video_features(path)
    assert not cached
    np.testing.assert_allclose(fresh.features, stored.features, atol=1e-5)


def test_malformed_query_turn_falls_back_to_the_question_and_is_counted(
    world: Path, questions: pd.DataFrame, clip: FrozenClip, mllm: MLLM
) -> None:
    # A random-weight MLLM writes no <query>...</query> pair: the fallback path is real.
    pipeline = Pipeline(clip, mllm, build_sampler("aks"), None, CFG)
    row = questions.iloc[1]
    answer = pipeline.answer(world / row.video, row.question, list(row.options), 4)
    assert not answer.query_parse_ok and "<query>" not in answer.query_text
    assert answer.queries == [row.question.strip()]
    assert pipeline.query_failures == 1
    assert len(answer.frames) == 4


def test_query_source_per_sampler_and_budget_larger_than_video(
    world: Path, questions: pd.DataFrame, clip: FrozenClip, mllm: MLLM
) -> None:
    assert [query_source(build_sampler(n)) for n in ("uniform", "clip_topk", "bolt")] == [
        "none", "question", "generated"]
    assert query_source(build_sampler("bolt"), "question") == "question"
    with pytest.raises(ValueError, match="uniform ignores similarity"):
        query_source(build_sampler("uniform"), "generated")
    with pytest.raises(ValueError, match="bolt needs similarity"):
        Pipeline(clip, mllm, build_sampler("bolt"), None, CFG, queries="none")
    row = questions.iloc[2]
    path = world / row.video
    uniform = Pipeline(clip, mllm, build_sampler("uniform"), None, CFG).answer(path, row.question, list(row.options), 99)
    assert uniform.queries == [] and uniform.timings["query"] == 0.0
    assert len(uniform.frames) == 32  # every candidate
    pipeline = Pipeline(clip, mllm, build_sampler("clip_topk"), None, CFG)
    topk = pipeline.answer(path, row.question, list(row.options), 5)
    assert topk.queries == [row.question] and topk.timings["query"] == 0.0
    # clip_topk's weights are the question-frame cosines of the 5 most similar candidates
    features, _ = pipeline.video_features(path)
    profile = pipeline.similarity([row.question], features.features)[0]
    np.testing.assert_allclose(sorted(f.weight for f in topk.frames), np.sort(profile)[-5:], atol=1e-5)
    # told so, a sampler that defaults to generated queries takes the question as its only query
    bolt = Pipeline(clip, mllm, build_sampler("bolt"), None, CFG, queries="question")
    asked = bolt.answer(path, row.question, list(row.options), 5)
    assert asked.queries == [row.question] and asked.timings["query"] == 0.0 and asked.query_text == ""
    with pytest.raises(ValueError, match="budget"):
        Pipeline(clip, mllm, build_sampler("uniform"), None, CFG).answer(path, row.question, list(row.options), 0)


def test_msjoe_sampler_loads_from_a_checkpoint_and_ask_command_answers(
    world: Path, questions: pd.DataFrame, clip_dir: Path, mllm_dir: Path, tmp_path: Path
) -> None:
    from msjoe.sampling.unet import UNetConfig, UNetSampler

    torch.manual_seed(3)
    net = UNetSampler(UNetConfig.tiny())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    checkpoint = tmp_path / "sampler.pt"
    torch.save({"state_dict": net.state_dict(), "config": {"levels": 3, "base_channels": 16,
                                                           "channel_mult": [1, 2, 2]}}, checkpoint)
    loaded = load_sampler("msjoe", {"checkpoint": str(checkpoint)})
    sim = np.random.default_rng(0).normal(size=(2, 32))
    np.testing.assert_allclose(loaded.log_probs(sim), load_sampler("msjoe", {"checkpoint": checkpoint}).log_probs(sim))
    assert not np.allclose(loaded.log_probs(sim), load_sampler("msjoe", {"seed": 0}).log_probs(sim))

    row = questions.iloc[3]
    reply = ask_command(world / row.video, row.question, list(row.options), clip_dir=clip_dir, mllm_dir=mllm_dir,
                        features_dir=tmp_path / "f", sampler="msjoe", sampler_params={"checkpoint": checkpoint},
                        budget=4, cfg=CFG)
    assert reply["sampler"] == "msjoe" and len(reply["frames"]) == 4
    assert [f["timestamp"] for f in reply["frames"]] == sorted(f["timestamp"] for f in reply["frames"])
