"""Stage order from dvc.yaml and running one stage with real `dvc repro` on the toy repository."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml

from flows.dvc_stages import (
    DvcConfigError,
    DvcLockedError,
    DvcStageError,
    DvcTimeoutError,
    changed_stages,
    classify_error,
    dag_order,
    downstream_of,
    lock_entries,
    parse_stages,
    read_stages,
    run_repro,
    upstream_edges,
)
from tests.flows.toyrepo import attempts, make_toy_repo, set_params

ROOT = Path(__file__).resolve().parents[2]


def _spec(stages: dict) -> dict:
    return {"stages": stages}


def test_order_follows_the_dag_even_when_the_file_lists_a_consumer_first() -> None:
    spec = _spec({
        "report": {"cmd": "r", "deps": ["models/m", "data/clean/x.parquet"], "metrics": [{"reports/r.json": {"cache": False}}]},
        "clean": {"cmd": "c", "deps": ["data/raw"], "outs": ["data/clean"]},
        "fetch": {"cmd": "f", "outs": ["data/raw"]},
        "train": {"cmd": "t", "deps": ["data/clean"], "outs": [{"models/m": {"persist": True}}]},
        "lint": {"cmd": "l"},
    })
    order = [s.name for s in dag_order(parse_stages(spec))]
    assert order == ["fetch", "clean", "train", "report", "lint"]
    edges = upstream_edges(parse_stages(spec))
    assert edges["report"] == {"clean", "train"}  # a file dep inside a directory out counts
    assert downstream_of(parse_stages(spec), ["clean"]) == {"clean", "train", "report"}


def test_cycle_and_missing_file_are_reported() -> None:
    cyclic = _spec({"a": {"cmd": "a", "deps": ["y"], "outs": ["x"]}, "b": {"cmd": "b", "deps": ["x"], "outs": ["y"]}})
    with pytest.raises(ValueError, match="cycle"):
        dag_order(parse_stages(cyclic))
    with pytest.raises(ValueError, match="not found"):
        read_stages(Path("/nonexistent-msjoe-repo"))


def test_project_pipeline_order_respects_every_dependency() -> None:
    stages = read_stages(ROOT)
    names = [s.name for s in stages]
    declared = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    assert sorted(names) == sorted(declared)
    assert names[:2] == ["generate", "ingest"]
    position = {n: i for i, n in enumerate(names)}
    for name, ups in upstream_edges(stages).items():
        assert all(position[u] < position[name] for u in ups), (name, ups)
    assert "generate" in upstream_edges(stages)["ingest"]


def test_stage_status_comes_from_dvc_lock(tmp_path: Path) -> None:
    import doctest

    from flows import dvc_stages

    assert doctest.testmod(dvc_stages).failed == 0
    assert lock_entries(tmp_path) == {}  # before any stage succeeded
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "generate": {"cmd": "g", "outs": [{"path": "data", "md5": "1"}]},
        "ingest": {"cmd": "i", "outs": [{"path": "x", "md5": "2"}]}}}))
    before = lock_entries(tmp_path)
    assert list(before) == ["generate", "ingest"]
    after = {**before, "ingest": {"cmd": "i", "outs": [{"path": "x", "md5": "3"}]}, "embed": {"cmd": "e"}}
    assert changed_stages(before, after) == ["ingest", "embed"] and changed_stages(before, before) == []
    locked = ["ERROR: Unable to acquire lock. Most likely another DVC process is running or was terminated abruptly."]
    assert isinstance(classify_error("x", 255, locked), DvcLockedError)
    busy = ["ERROR: failed to reproduce 'train': '/r/reports/train.json' is busy, it is being blocked by:"]
    assert isinstance(classify_error("x", 255, busy), DvcLockedError)
    assert isinstance(classify_error("x", 255, ["ERROR: Stage 'x' not found inside 'dvc.yaml' file"]), DvcConfigError)
    failed = ["FileNotFoundError: data does not exist", "ERROR: failed to reproduce 'x': failed to run: python a.py, exited with 1"]
    assert isinstance(classify_error("x", 255, failed), DvcStageError)


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return make_toy_repo(tmp_path / "toy")


@pytest.mark.slow
def test_repro_streams_output_then_reports_up_to_date(toy: Path) -> None:
    lines: list[str] = []
    first = run_repro(toy, "evaluate", lines.append)
    assert first.status == "completed" and first.ran == ["train", "evaluate"]
    assert "training the toy model" in lines and "Running stage 'evaluate':" in lines
    assert (toy / "reports" / "evaluate.json").is_file()
    again = run_repro(toy, "evaluate")
    assert again.status == "cached" and again.ran == []
    assert any("Data and pipelines are up to date" in line for line in again.tail)


@pytest.mark.slow
def test_repro_failures_are_typed(toy: Path) -> None:
    set_params(toy, score=0.5, fail="always")
    with pytest.raises(DvcStageError) as failed:
        run_repro(toy, "train")
    assert "simulated failure" in str(failed.value) and failed.value.returncode != 0
    assert not isinstance(failed.value, (DvcConfigError, DvcLockedError))
    with pytest.raises(DvcConfigError, match="not found"):
        run_repro(toy, "no_such_stage")


@pytest.mark.slow
def test_timeout_kills_the_stage_and_a_concurrent_dvc_gets_a_lock_error(toy: Path) -> None:
    set_params(toy, score=0.5, fail="sleep", sleep_s=60)
    started = threading.Event()
    errors: list[BaseException] = []

    def slow() -> None:
        try:
            run_repro(toy, "train", lambda line: started.set() if "Running stage" in line else None, timeout_s=6)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            errors.append(err)

    thread = threading.Thread(target=slow)
    t0 = time.monotonic()
    thread.start()
    assert started.wait(30), "the slow stage never started"
    with pytest.raises(DvcLockedError, match="lock"):
        run_repro(toy, "evaluate")
    thread.join(60)
    assert len(errors) == 1 and isinstance(errors[0], DvcTimeoutError)
    assert time.monotonic() - t0 < 40  # killed at the timeout, not after the 60 s sleep
    assert attempts(toy) == 1
