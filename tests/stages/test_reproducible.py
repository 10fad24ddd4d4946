"""Byte-for-byte reproducibility of the stages after `generate`: a chain pretrain_clip -> embed ->
train_sampler (2 steps) runs twice at the same time, in fresh interpreters, from two checkouts at
different absolute paths and under different environments (hash seed, OMP_NUM_THREADS, malloc arenas and
perturbation, time zone, environment size, a random DeepSpeed port), on one tiny world.

Every file DVC hashes as an output of those stages (checkpoints with their meta.json included)
and every metrics and plots file must come out identical, so ``dvc.lock`` does too (README
"Reproducibility"); run-dependent measurements go to ``reports/timings/`` only. The inputs the
chain starts from (world, ingest tables, a random tiny MLLM, a difficulty table) are built once,
in this process, and copied into both checkouts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.report_lint import run_dependent_keys
from tests.launcher import without_launcher_env

ROOT = Path(__file__).resolve().parents[2]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = {
    "inference": {"n_queries": 4, "preview_size": 16, "answer_size": 16, "max_new_tokens": 4,
                  "query_max_new_tokens": 8},
    "clip": {"model": "msjoe-tiny-clip", "pretrained": None, "threads": 2, "recall_k": 4,
             "train": {"steps": 3, "batch_size": 16, "warmup_steps": 1, "seed": 0}},
    "embed": {"fps": 2.0, "max_candidates": 16, "batch_size": 8, "chunk_frames": 8, "decode_workers": 0,
              "threads": 2, "device": "cpu"},
    "train_sampler": {"steps": 2, "questions_per_step": 2, "budget": 4, "lr": 0.05, "warmup_steps": 0,
                      "checkpoint_every": 1, "keep_checkpoints": 2, "seed": 0, "sampler": "tiny", "init_seed": 0,
                      "query_temperature": 1.0, "threads": 2, "ds_config": "infra/deepspeed/zero1.json"},
}
# the dvc.yaml commands of the chain (relative paths, run from the checkout's root)
CHAIN = {
    "pretrain_clip": "pretrain_clip.py --world data/world --out models/clip --report reports/pretrain_clip.json"
                     " --loss-plot reports/plots/clip_loss.json",
    "embed": "embed.py --videos data/ingest/videos.parquet --video-root data/world --clip models/clip"
             " --out data/features --report reports/embed.json",
    "train_sampler": "train_sampler.py --questions data/ingest/questions.parquet --video-root data/world"
                     " --features data/features --clip models/clip --mllm models/mllm"
                     " --difficulty data/difficulty/difficulty.parquet --out models/sampler_stage1"
                     " --checkpoints checkpoints/train_sampler --report reports/train_sampler.json"
                     " --plots reports/plots/train_sampler.json",
}
# hashed outputs (dvc.yaml outs) of the chain, and its metrics and plots (dvc.lock hashes those too)
OUTS = ["models/clip", "data/features", "models/sampler_stage1", "checkpoints/train_sampler"]
REPORTS = [next(iter(entry)) if isinstance(entry, dict) else entry
           for stage in CHAIN for kind in ("metrics", "plots") for entry in DVC[stage].get(kind, [])]


def _digests(path: Path) -> dict[str, str]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(f.relative_to(path)) if f != path else f.name: hashlib.sha256(f.read_bytes()).hexdigest()
            for f in files}


def _inputs(root: Path) -> Path:
    """The world and what ingest, pretrain_mllm and difficulty would hand to the chain."""
    from msjoe.mllm.build import build_tiny_mllm
    from msjoe.mllm.pretrain import build_corpus
    from msjoe.mllm.manifest import MLLMManifest
    from msjoe.mllm.manifest import write_manifest as write_mllm_manifest
    from msjoe.probe import probe_and_hash
    from tests.unit.test_rl_train_sampler import MLLM_CFG, make_world

    world = make_world(root / "data" / "world")
    questions = pd.DataFrame([json.loads(line) for line in (world / "qa.jsonl").read_text().splitlines()])
    videos = []
    for video in sorted(set(questions["video"])):
        info, sha = probe_and_hash(world / video)
        videos.append({"video": video, "sha256": sha, **info.to_dict()})
    videos_frame = pd.DataFrame(videos)
    questions["sha256"] = questions["video"].map(dict(zip(videos_frame["video"], videos_frame["sha256"])))
    (root / "data" / "ingest").mkdir(parents=True)
    questions.to_parquet(root / "data" / "ingest" / "questions.parquet", index=False)
    videos_frame.to_parquet(root / "data" / "ingest" / "videos.parquet", index=False)
    train = questions[questions["split"] == "train"]
    (root / "data" / "difficulty").mkdir(parents=True)
    pd.DataFrame({"qid": train["qid"], "c": 0.5}).to_parquet(root / "data" / "difficulty" / "difficulty.parquet",
                                                            index=False)
    mllm = root / "models" / "mllm"
    build_tiny_mllm(mllm / "model", build_corpus(world, "train"), MLLM_CFG, seed=0)
    write_mllm_manifest(mllm, MLLMManifest("model", "tiny@test"))
    shutil.copytree(ROOT / "infra" / "deepspeed", root / "infra" / "deepspeed")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    return root


def _env(extra_env: dict[str, str]) -> dict[str, str]:
    env = without_launcher_env()
    env.update({"MSJOE_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)})
    if _has_cuda():
        env["DS_ACCELERATOR"] = "cpu"
    env.update(extra_env)
    return env


def _run_chain(checkout: Path, extra_env: dict[str, str]) -> None:
    env = _env(extra_env)
    for stage, command in CHAIN.items():
        args = [sys.executable, str(ROOT / "stages" / command.split()[0]), *command.split()[1:]]
        done = subprocess.run(args, cwd=checkout, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{stage} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, source: Path) -> tuple[Path, Path]:
    a = tmp_path_factory.mktemp("a") / "repo"
    b = tmp_path_factory.mktemp("b_checked_out_somewhere_else") / "nested" / "repo"
    for checkout in (a, b):
        shutil.copytree(source, checkout)
    envs = {a: {"OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "TZ": "UTC"},
            b: {"OMP_NUM_THREADS": "2", "PYTHONHASHSEED": "12345", "TZ": "Asia/Kolkata", "MALLOC_ARENA_MAX": "1",
                "MALLOC_PERTURB_": "204", "MALLOC_TOP_PAD_": "1048576", "MSJOE_REPRO_PADDING": "x" * 5000}}
    # side by side: each run is the other's load (and the test takes half the time)
    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(_run_chain, checkout, env) for checkout, env in envs.items()]:
            future.result()
    return a, b


@pytest.mark.parametrize("out", OUTS)
def test_hashed_outputs_are_byte_identical(runs: tuple[Path, Path], out: str) -> None:
    a, b = runs
    first, second = _digests(a / out), _digests(b / out)
    assert first, f"{out} is empty"
    assert first == second, f"{out} differs between the two runs: " + ", ".join(
        sorted(name for name in first.keys() | second.keys() if first.get(name) != second.get(name))
    )


def test_checkpoints_hold_weights_optimiser_states_and_a_meta_json_each(runs: tuple[Path, Path]) -> None:
    """What the byte-identity above covers for checkpoints/train_sampler: .pt files and meta.json."""
    a, _ = runs
    names = _digests(a / "checkpoints" / "train_sampler")
    assert any(name.endswith(".pt") for name in names)
    assert {"step_000001/meta.json", "step_000002/meta.json"} <= names.keys()


@pytest.mark.parametrize("report", REPORTS)
def test_metrics_and_plots_are_identical_and_hold_no_run_dependent_values(
    runs: tuple[Path, Path], report: str
) -> None:
    """dvc.yaml's metrics and plots of the chain: same bytes in both runs, and no key named like
    a time, a throughput, a memory peak or a latency (those go to reports/timings/)."""
    a, b = runs
    assert (a / report).read_bytes() == (b / report).read_bytes(), f"{report} differs between the two runs"
    assert run_dependent_keys(json.loads((a / report).read_text())) == []


def test_every_stage_records_its_wall_time_and_peak_rss_apart(runs: tuple[Path, Path]) -> None:
    for checkout in runs:
        for stage in CHAIN:
            timings = json.loads((checkout / "reports" / "timings" / f"{stage}.json").read_text())
            assert timings["stage"] == stage and timings["wall_seconds"] > 0 and timings["peak_rss_mb"] > 0
    embed = json.loads((runs[0] / "reports" / "timings" / "embed.json").read_text())
    assert embed["frames_per_s"] > 0  # what the stage moved out of its metrics
    sampler = json.loads((runs[0] / "reports" / "timings" / "train_sampler.json").read_text())
    assert len(sampler["step_seconds"]) == 2


def test_another_thread_count_stays_within_the_documented_tolerance(source: Path) -> None:
    """Not bit-exact across `threads` values (README "Reproducibility"): CLIP training under 1 and 2
    threads, same seed, drifts by float rounding only."""
    import numpy as np
    import torch

    from msjoe.clip.model import FrozenClip, create_clip
    from msjoe.clip.pretrain import ClipTrainConfig, _decode_split, train_clip

    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            clip = FrozenClip(*create_clip("msjoe-tiny-clip", None), identity="training")
            out = train_clip(clip, source / "data" / "world", ClipTrainConfig(steps=5, batch_size=16, warmup_steps=1),
                             progress=False)
            pixels, _ = _decode_split(clip, source / "data" / "world", "train")
            results.append((np.array(out["losses"]), clip.encode_pixels(pixels[:32])))
    finally:
        torch.set_num_threads(previous)
    (loss1, feat1), (loss2, feat2) = results
    np.testing.assert_allclose(loss1, loss2, rtol=0, atol=1e-5)
    np.testing.assert_allclose(feat1, feat2, rtol=0, atol=1e-5)


def test_the_evidence_bound_tool_fits_a_sampler_from_the_stages_outputs(runs: tuple[Path, Path]) -> None:
    """``tools/evidence_bound.py`` (README "Experiments") runs on what the chain left behind and
    writes a sampler the evaluation can load."""
    from msjoe.pipeline import load_sampler

    a, _ = runs
    args = [sys.executable, "-m", "tools.evidence_bound", "--questions", "data/ingest/questions.parquet",
            "--video-root", "data/world", "--features", "data/features", "--clip", "models/clip",
            "--mllm", "models/mllm", "--out", "evidence-fit", "--steps", "3", "--questions-per-step", "2"]
    done = subprocess.run(args, cwd=a, env=_env({}), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    report = json.loads((a / "evidence-fit" / "report.json").read_text())
    assert report["fitted_questions"] >= 2
    assert report["fitted_questions"] + report["no_evidence"] == report["questions"]["kept"]
    assert report["config"]["steps"] == 3 and report["final_loss"] > 0
    sampler = load_sampler("msjoe", {"checkpoint": a / "evidence-fit" / "sampler.pt"})
    assert sampler.name == "msjoe"
