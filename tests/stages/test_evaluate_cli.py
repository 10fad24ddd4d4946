"""The evaluate stage's command line: a wrong ``--checkpoint`` is named before any model loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    pd.DataFrame({"qid": ["q1"], "video": ["v.mp4"], "split": ["eval"]}).to_parquet(tmp_path / "q.parquet", index=False)
    params = {
        "embed": {"fps": 2.0, "max_candidates": 32},
        "inference": {"n_queries": 4},
        "evaluate": {"samplers": {"uniform": {"name": "uniform"}, "msjoe_stage1": {"name": "msjoe"}}, "claims": []},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path


def _run(work: Path, *checkpoints: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(ROOT / "stages" / "evaluate.py"), "--questions", "q.parquet", "--video-root", ".",
               "--features", "f", "--clip", "clip", "--mllm", "base=mllm", "--out", "o.json",
               "--predictions", "p.parquet", "--plots", "plot.json", "--figures", "fig", "--params", "params.yaml"]
    for spec in checkpoints:
        command += ["--checkpoint", spec]
    return subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("specs", "says"),
    [
        (["msjoe_stage2=m/s.pt"], "no sampler 'msjoe_stage2' in evaluate.samplers (uniform, msjoe_stage1)"),
        (["msjoe_stage1"], "'msjoe_stage1': expected LABEL=PATH"),
        (["msjoe_stage1=a.pt", "msjoe_stage1=b.pt"], "'msjoe_stage1=b.pt': expected LABEL=PATH, each LABEL once"),
    ],
)
def test_a_wrong_checkpoint_spec_is_named(work: Path, specs: list[str], says: str) -> None:
    done = _run(work, *specs)
    assert done.returncode != 0
    assert says in done.stderr, done.stderr[-2000:]
    assert not (work / "o.json").exists()
