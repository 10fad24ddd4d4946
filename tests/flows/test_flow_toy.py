"""The retraining flow under Prefect's test harness on the toy DVC repository (real `dvc repro`).

Covers the promotion gate end to end (first release, a gain below the margin, a real gain),
the store records, the artifacts, retries of a failing stage, a transient failure that heals,
a missing package stage, and a second run refused while the workspace is in use.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.workspace import WorkspaceBusyError, workspace_lock
from msjoe.store import latest_release, list_evaluations, list_pipeline_runs, list_stage_runs
from tests.flows.prefect_reads import artifacts_of, flow_run_id, logs_containing, task_runs_of
from tests.flows.toyrepo import attempts, make_toy_repo, set_params

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def _statuses(url: str, run_key: str) -> dict[str, str]:
    return {row["stage"]: row["status"] for row in list_stage_runs(url, run_key)}


def test_gate_packages_only_real_improvements(tmp_path: Path, store_url: str) -> None:
    from flows.pipeline import retrain

    repo = make_toy_repo(tmp_path / "toy", score=0.60)

    first = retrain(repo=str(repo), retries=0)
    assert [s["stage"] for s in first["stages"]] == ["train", "evaluate"]
    assert first["gate"]["promote"] and first["gate"]["reason"] == "nothing released yet"
    tag = json.loads((repo / "reports" / "package.json").read_text())["bento_tag"]
    assert first["release"] == tag
    assert _statuses(store_url, first["run_key"]) == {"train": "completed", "evaluate": "completed", "package": "completed"}
    run = next(r for r in list_pipeline_runs(store_url) if r["run_key"] == first["run_key"])
    assert run["status"] == "completed" and run["trigger"] == "manual" and run["ended_at"]
    train_row = next(r for r in list_stage_runs(store_url, first["run_key"]) if r["stage"] == "train")
    assert train_row["metrics"] == {"reports/train.json": {"loss": 0.4, "steps": 3}}
    assert train_row["lock_hash"] and train_row["n_outs"] == 2
    release = latest_release(store_url)
    assert release is not None and release["bento_tag"] == tag
    assert release["metrics"]["gate"]["candidate"] == pytest.approx(0.60)
    assert release["metrics"]["gate"]["sampler"] == "msjoe"  # the better of the package stage's two rows
    accuracy = {(r["sampler"], r["budget"]): r["value"] for r in list_evaluations(store_url, metric="accuracy")}
    assert accuracy[("msjoe", 8)] == pytest.approx(0.60) and accuracy[("uniform", 4)] == pytest.approx(0.40)

    artifacts = artifacts_of(flow_run_id(first))
    assert {"msjoe-metrics", "msjoe-accuracy", "msjoe-evidence-hit-rate", "msjoe-promotion"} <= set(artifacts)
    table = artifacts["msjoe-accuracy"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert {"sampler": "msjoe", "budget 4": pytest.approx(0.55), "budget 8": pytest.approx(0.60)} in rows
    assert "reports/train.json" in artifacts["msjoe-metrics"].data
    assert "PROMOTE" in artifacts["msjoe-promotion"].data
    # the stage command's own output was streamed into the run's log
    assert logs_containing(flow_run_id(first), "training the toy model")

    set_params(repo, score=0.62)  # +0.02 < margin 0.05 (params.yaml package.gate)
    second = retrain(repo=str(repo), retries=0)
    assert [s["status"] for s in second["stages"]] == ["completed", "completed"]
    assert not second["gate"]["promote"] and "below the margin" in second["gate"]["reason"]
    assert second["gate"]["current"] == pytest.approx(0.60) and second["release"] is None
    assert "package" not in _statuses(store_url, second["run_key"])
    assert json.loads((repo / "reports" / "package.json").read_text())["bento_tag"] == tag
    assert latest_release(store_url)["bento_tag"] == tag

    set_params(repo, score=0.70)
    third = retrain(repo=str(repo), retries=0)
    assert third["gate"]["promote"] and third["release"] != tag
    assert latest_release(store_url)["bento_tag"] == third["release"]
    assert _statuses(store_url, third["run_key"])["package"] == "completed"

    # the model gets worse than the uniform row: the package stage would now release `uniform`
    # (0.45), which the gate compares with the released `msjoe` row (0.70), so nothing changes
    set_params(repo, score=0.30)
    fourth = retrain(repo=str(repo), retries=0)
    assert not fourth["gate"]["promote"] and "-0.2500 is below the margin" in fourth["gate"]["reason"]
    assert fourth["gate"]["sampler"] == "uniform" and fourth["gate"]["candidate"] == pytest.approx(0.45)
    assert fourth["gate"]["released_sampler"] == "msjoe" and fourth["gate"]["current"] == pytest.approx(0.70)
    assert latest_release(store_url)["bento_tag"] == third["release"]
    assert len(list_pipeline_runs(store_url)) == 4


def test_failing_stage_is_retried_then_fails_the_run(tmp_path: Path, store_url: str) -> None:
    from flows.pipeline import retrain

    repo = make_toy_repo(tmp_path / "toy", with_package=False)
    set_params(repo, score=0.5, fail="always")
    state = retrain(repo=str(repo), retries=2, retry_delay_s=0, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="simulated failure"):
        state.result()
    assert attempts(repo) == 3  # first try + 2 retries
    run = list_pipeline_runs(store_url)[0]
    assert run["status"] == "failed" and run["ended_at"]
    assert _statuses(store_url, run["run_key"]) == {"train": "failed"}  # evaluate never started
    task = task_runs_of(flow_run_id(run))["dvc repro train"]
    assert task.run_count == 3 and task.state.is_failed()


def test_transient_failure_heals_on_retry_and_missing_package_stage_skips_the_gate(
    tmp_path: Path, store_url: str
) -> None:
    from flows.pipeline import retrain

    repo = make_toy_repo(tmp_path / "toy", with_package=False)
    set_params(repo, score=0.5, fail="once")
    summary = retrain(repo=str(repo), retries=1, retry_delay_s=0)
    assert attempts(repo) == 2
    assert [s["status"] for s in summary["stages"]] == ["completed", "completed"]
    assert summary["gate"] is None and summary["release"] is None
    assert summary["evaluation"]["rows"] > 0  # evaluated and recorded, just not gated
    assert _statuses(store_url, summary["run_key"]) == {"train": "completed", "evaluate": "completed"}
    assert latest_release(store_url) is None


def test_a_second_run_on_a_busy_workspace_fails_clearly(tmp_path: Path, store_url: str) -> None:
    from flows.pipeline import retrain

    repo = make_toy_repo(tmp_path / "toy", with_package=False)
    with workspace_lock(repo, owner="prefect:the-first-run"):
        with pytest.raises(WorkspaceBusyError, match="the-first-run"):
            retrain(repo=str(repo), lock_timeout_s=0)
    assert attempts(repo) == 0 and not (repo / "dvc.lock").exists()
    assert not Path(store_url.removeprefix("sqlite:///")).exists()  # refused before any record
