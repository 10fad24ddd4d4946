"""The embed stage under `torchrun` with 2 gloo processes gives the single-process features bit
for bit, and a sharded rerun after a partial run embeds only what is missing."""

from __future__ import annotations

import json
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


def _embed(work: Path, out: str, processes: int) -> dict:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    args = [str(ROOT / "stages" / "embed.py"), "--videos", "videos.parquet", "--video-root", "videos",
            "--clip", "clip", "--out", out, "--report", f"{out}.json", "--params", "params.yaml"]
    command = (launcher if processes > 1 else [sys.executable]) + args
    env = {**without_launcher_env(), "MSJOE_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return json.loads((work / f"{out}.json").read_text())


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
