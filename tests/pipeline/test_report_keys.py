"""The rule behind a reproducible dvc.lock: run-dependent measurements (wall and CPU time,
throughput, peak RSS, latencies) go to ``reports/timings/<stage>.json``, never into a stage's DVC
metrics, plots or outputs (README "Reproducibility").

The reports the stages write are linted with :func:`run_dependent_keys` where they are made:
tests/stages/test_reproducible.py (every metrics and plots file dvc.yaml declares for
pretrain_clip, embed and train_sampler) and the unit tests of the library reports. Here: the lint
itself and the wiring that keeps timings out of DVC's view.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from stages._common import TIMINGS_DIR
from tests.report_lint import run_dependent_keys

ROOT = Path(__file__).resolve().parents[2]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("report", [
    {"seconds": 1.0},
    {"train_seconds": 1.0},
    {"frames_per_s": 120.0},
    {"peak_rss_mb": 1350.6},
    {"latency_s": {"answer": 0.1}},
    {"stage_seconds": {"answer": 36.5}},
    {"timings": {"total_s": 2.0}},
    {"training": {"steps": 3, "train_seconds": 68.8}},  # nested
    [{"step": 1, "seconds": 0.5}],  # a plot's rows
    {"saved_at": 1.7e9},
    {"resumed_from": 12},  # run state: a rerun resumes where the last one stopped
    {"reused": {"model": True}},
    {"cached": 120, "embedded": 0},  # run state: what an earlier run left in the feature cache
])
def test_lint_flags_run_dependent_keys(report: object) -> None:
    assert run_dependent_keys(report)


def test_lint_passes_deterministic_reports() -> None:
    report = {
        "accuracy": {"uniform": {"8": 0.5}}, "questions_per_step": 4, "rollouts_per_step": 16,
        "evidence_fraction_per_split": {"eval": 0.02}, "steps_done": 2, "final_loss": 0.3,
        "params": {"evidence_tolerance_s": 0.0}, "config": {"probe_timeout_s": 300},  # echoed inputs
        "history": [{"step": 1, "accuracy": 0.5, "lr": 0.05}],
    }
    assert run_dependent_keys(report) == []


@pytest.mark.parametrize("kind", ["metrics", "plots"])
def test_the_committed_metrics_and_plots_hold_no_run_dependent_values(kind: str) -> None:
    """A timing, or a run-state marker such as ``resumed_from``, in a metric or a curve would
    change dvc.lock between two runs of the same commit (or a fresh clone and this one)."""
    for stage in DVC.values():
        for entry in stage.get(kind, []):
            path = ROOT / (next(iter(entry)) if isinstance(entry, dict) else entry)
            if path.is_file():
                assert run_dependent_keys(json.loads(path.read_text())) == [], path


def test_timings_are_neither_dvc_outputs_nor_in_git() -> None:
    declared = [next(iter(e)) if isinstance(e, dict) else e
                for stage in DVC.values() for kind in ("outs", "metrics", "plots") for e in stage.get(kind, [])]
    timings = TIMINGS_DIR.as_posix()
    assert not [p for p in declared if p == timings or p.startswith(f"{timings}/") or timings.startswith(f"{p}/")]
    assert f"/{timings}/" in (ROOT / ".gitignore").read_text().splitlines()


def test_every_stage_records_its_wall_time_and_peak_rss() -> None:
    """``setup(name)`` registers the exit hook that writes reports/timings/<name>.json (the RL
    stages call it through ``_rl.start(name, ...)``)."""
    assert re.search(r"\n    log = setup\(stage\)\n", (ROOT / "stages" / "_rl.py").read_text())
    for name, stage in DVC.items():
        script = re.match(r"python (?:-m torch\.distributed\.run .*? )?(stages/\w+\.py)", stage["cmd"]).group(1)  # type: ignore[union-attr]
        source = (ROOT / script).read_text()
        assert re.search(rf'\b(setup|_rl\.start)\("{name}"', source), f"{script} never calls setup({name!r})"


def test_write_timings_writes_a_stage_file_under_reports_timings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stages._common import write_timings

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RANK", raising=False)
    path = write_timings("embed", {"frames_per_s": 100.0})
    assert path == TIMINGS_DIR / "embed.json"
    written = json.loads(path.read_text())
    assert written["stage"] == "embed" and written["frames_per_s"] == 100.0 and written["peak_rss_mb"] > 0
    monkeypatch.setenv("RANK", "1")
    assert write_timings("embed", {}) == TIMINGS_DIR / "embed.rank1.json"
