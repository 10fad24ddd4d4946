"""The embed and evaluate stages under `torchrun` with 2 gloo processes give the single-process
outputs bit for bit, and a sharded embed rerun after a partial run embeds only what is missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from msjoe.video import probe_video, sha256_file
from tests.media import write_video
from tests.models import write_random_clip
from tests.launcher import without_launcher_env
from tests.unit.test_pipeline import clip_dir, mllm_dir, questions, world  # noqa: F401 (shared module fixtures)

ROOT = Path(__file__).resolve().parents[2]
EMBED = {"fps": 2.0, "max_candidates": 10, "batch_size": 4, "chunk_frames": 4, "decode_workers": 0,
         "threads": 1, "device": "cpu"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("sharded")
    rows = []
    for i in range(5):
        name = f"v{i}.mp4"
        write_video(work / "videos" / name, n_frames=20 + 4 * i, fps=4, seed=i)
        rows.append({"video": name, "sha256": sha256_file(work / "videos" / name),
                     **probe_video(work / "videos" / name).to_dict()})
    shutil.copyfile(work / "videos" / "v0.mp4", work / "videos" / "copy.mp4")  # same content, other name
    rows.append({**rows[0], "video": "copy.mp4"})
    pd.DataFrame(rows).to_parquet(work / "videos.parquet", index=False)
    write_random_clip(work / "clip")
    (work / "params.yaml").write_text(yaml.safe_dump({"embed": EMBED}))
    return work


def _torchrun(processes: int) -> list[str]:
    """The launcher as dvc.yaml's evaluate stage runs it (no log directory left in the temp dir)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--log-dir", os.devnull,
            f"--nproc_per_node={processes}"]


def _embed(work: Path, out: str, processes: int) -> dict:
    args = [str(ROOT / "stages" / "embed.py"), "--videos", "videos.parquet", "--video-root", "videos",
            "--clip", "clip", "--out", out, "--report", f"{out}.json", "--params", "params.yaml"]
    command = (_torchrun(processes) if processes > 1 else [sys.executable]) + args
    env = {**without_launcher_env(), "MSJOE_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    # the metrics, and what the run embedded or found cached (run state: in the stage's timings)
    timings = json.loads((work / "reports" / "timings" / "embed.json").read_text())
    return {**json.loads((work / f"{out}.json").read_text()),
            **{key: timings[key] for key in ("embedded", "cached", "frames_embedded")}}


@pytest.fixture(scope="module")
def single(setup: Path) -> dict:
    """The single-process run every sharded run is compared with."""
    return _embed(setup, "single", 1)


def _feature_bytes(cache: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(cache.rglob("*.npz"))}


@pytest.mark.slow
def test_two_gloo_ranks_give_the_single_process_features_bit_for_bit(setup: Path, single: dict) -> None:
    sharded = _embed(setup, "sharded", 2)
    assert single == sharded  # the rank-0 report counts every rank's work
    assert sharded["embedded"] == 5 and sharded["cached"] == 1 and sharded["failed"] == 0
    assert _feature_bytes(setup / "sharded") == _feature_bytes(setup / "single") != {}
    assert pd.read_parquet(setup / "sharded" / "index.parquet").equals(pd.read_parquet(setup / "single" / "index.parquet"))


@pytest.mark.slow
def test_a_sharded_rerun_embeds_only_what_a_dead_run_left_undone(setup: Path, single: dict) -> None:
    """What a killed launch leaves: the videos its ranks finished (saved atomically, one file
    each). Here two of the five are already there; the rerun embeds the other three only."""
    partial = setup / "partial"
    for path in sorted((setup / "single").rglob("*.npz"))[:2]:
        target = partial / path.relative_to(setup / "single")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    rerun = _embed(setup, "partial", 2)
    assert rerun["cached"] == 1 + 2 and rerun["embedded"] == 3 and rerun["failed"] == 0
    assert _feature_bytes(partial) == _feature_bytes(setup / "single")


# ----------------------------------------------------------------------------- sharded evaluate

EVALUATE = {
    "split": "eval", "budgets": [2, 4], "oracle": True, "n_example_figures": 1, "threads": 1, "seed": 0,
    "device": "cpu", "claims": [], "bootstrap_resamples": 100,
    "samplers": {"uniform": {"name": "uniform"}, "clip_topk_gen": {"name": "clip_topk", "queries": "generated"},
                 "aks": {"name": "aks", "params": {"max_depth": 3}, "queries": "question"},
                 "msjoe_untrained": {"name": "msjoe", "params": {"seed": 0, "config": "tiny"}}},
    "batch_size": 3,  # batches of 3 turns: each rank gets several, of unequal sizes
}
INFERENCE = {"n_queries": 4, "preview_size": 16, "answer_size": 32, "max_new_tokens": 6, "query_max_new_tokens": 16}


@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory: pytest.TempPathFactory, world: Path, questions: pd.DataFrame,  # noqa: F811
               clip_dir: Path, mllm_dir: Path) -> Path:  # noqa: F811
    """A demo world's eval questions with their features cached (as embed leaves them)."""
    from msjoe.clip.model import load_clip
    from msjoe.features import FeatureStore
    from msjoe.pipeline import Pipeline, PipelineConfig
    from msjoe.sampling import build_sampler

    work = tmp_path_factory.mktemp("sharded_eval")
    questions.assign(split="eval").to_parquet(work / "questions.parquet", index=False)
    embed = {"fps": 2.0, "max_candidates": 32}
    (work / "params.yaml").write_text(yaml.safe_dump({"embed": embed, "evaluate": EVALUATE, "inference": INFERENCE}))
    pipeline = Pipeline(load_clip(clip_dir), None, build_sampler("uniform"), FeatureStore(work / "features"),  # type: ignore[arg-type]
                        PipelineConfig(**embed))
    for video, sha in questions[["video", "sha256"]].drop_duplicates().itertuples(index=False):
        pipeline.video_features(world / video, sha)
    return work


def _evaluate(work: Path, world: Path, clip_dir: Path, mllm_dir: Path, out: str, processes: int,
              turn_cache: str | None = None) -> tuple[dict, pd.DataFrame]:
    args = [str(ROOT / "stages" / "evaluate.py"), "--questions", "questions.parquet", "--video-root", str(world),
            "--features", "features", "--clip", str(clip_dir), "--mllm", f"base={mllm_dir}",
            "--out", f"{out}/evaluate.json", "--predictions", f"{out}/predictions.parquet",
            "--plots", f"{out}/plot.json", "--figures", f"{out}/figures", "--params", "params.yaml"]
    args += ["--turn-cache", turn_cache] if turn_cache else []
    command = (_torchrun(processes) if processes > 1 else [sys.executable]) + args
    env = {**without_launcher_env(), "MSJOE_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return json.loads((work / out / "evaluate.json").read_text()), pd.read_parquet(work / out / "predictions.parquet")


@pytest.fixture(scope="module")
def eval_single(eval_setup: Path, world: Path, clip_dir: Path, mllm_dir: Path) -> tuple[dict, pd.DataFrame]:  # noqa: F811
    """The single-process evaluation every sharded one is compared with."""
    return _evaluate(eval_setup, world, clip_dir, mllm_dir, "single", 1)


@pytest.fixture(scope="module")
def eval_sharded(eval_setup: Path, world: Path, clip_dir: Path, mllm_dir: Path) -> tuple[dict, pd.DataFrame]:  # noqa: F811
    """The same evaluation by 2 gloo ranks, keeping its finished batches of turns in ``turns/``."""
    return _evaluate(eval_setup, world, clip_dir, mllm_dir, "sharded", 2, turn_cache="turns")


@pytest.mark.slow
def test_two_gloo_ranks_evaluate_like_one_process(eval_setup: Path, eval_single: tuple[dict, pd.DataFrame],
                                                  eval_sharded: tuple[dict, pd.DataFrame]) -> None:
    (report, predictions), (sharded_report, sharded) = eval_single, eval_sharded
    assert len(predictions) == len(pd.read_parquet(eval_setup / "questions.parquet")) * 5 * 2  # 4 samplers + oracle, 2 budgets
    assert report["answer_turns"] > 2 * EVALUATE["batch_size"]  # both ranks had batches to answer
    pd.testing.assert_frame_equal(sharded, predictions)  # every reply, frame and weight, bit for bit
    assert sharded_report == report
    assert (eval_setup / "sharded" / "plot.json").read_bytes() == (eval_setup / "single" / "plot.json").read_bytes()


@pytest.mark.slow
def test_a_killed_sharded_evaluate_redoes_only_the_batches_it_had_not_finished(
    eval_setup: Path, world: Path, clip_dir: Path, mllm_dir: Path,  # noqa: F811
    eval_single: tuple[dict, pd.DataFrame], eval_sharded: tuple[dict, pd.DataFrame],
) -> None:
    """What a launch killed part-way leaves: some finished batches of turns. Here every other
    batch file of the sharded run is deleted; the rerun loads the rest and gives the same result."""
    batches = sorted((eval_setup / "turns" / "base").glob("*.json"))
    assert {p.name.split("-")[0] for p in batches} == {"query", "answer"}
    for path in batches[::2]:
        path.unlink()
    (eval_setup / "turns" / "base" / "answer-from-another-run.json").write_text("[]")
    report, predictions = _evaluate(eval_setup, world, clip_dir, mllm_dir, "resumed", 2, turn_cache="turns")
    resumed = json.loads((eval_setup / "reports" / "timings" / "evaluate.json").read_text())["resumed_turns"]
    total = report["query_turns"] + report["answer_turns"]
    assert 0 < resumed["query"] + resumed["answer"] < total
    pd.testing.assert_frame_equal(predictions, eval_single[1])
    assert report == eval_single[0]
    assert sorted((eval_setup / "turns" / "base").glob("*.json")) == batches  # redone, the stranger pruned
