"""The promotion gate's rule and the evaluation-report helpers the flow publishes and records."""

from __future__ import annotations

import math

import pytest

from flows.metrics_report import evaluation_cells, flatten, grid_metrics, grid_rows, metrics_markdown
from flows.promotion import GateConfig, candidate_labels, candidate_score, decide, gate_config, should_promote
from msjoe.package import select_winner

REPORT = {
    "accuracy": {"uniform": {"4": 0.40, "8": 0.45}, "msjoe": {"4": 0.55, "16": 0.70, "8": 0.62}},
    "evidence_hit_rate": {"uniform": {"4": 0.3, "8": None}, "msjoe": {"4": 0.5}},
    "accuracy_per_category": {"uniform": {"4": {"count": 0.5}}},
    "questions": {"uniform": {"4": 10, "8": 10}},
    "split": "eval",
    "params": {"budgets": [4, 8, 16]},
}


def test_first_candidate_is_promoted() -> None:
    assert should_promote(0.31, None, 0.05)


@pytest.mark.parametrize(
    ("candidate", "current", "margin", "expected"),
    [
        (0.66, 0.65, 0.01, True),   # exactly the margin (0.66 - 0.65 is 0.0100000009 in floats)
        (0.659, 0.65, 0.01, False),  # below the margin
        (0.70, 0.65, 0.01, True),
        (0.65, 0.65, 0.0, False),   # equal never "beats", even with no margin
        (0.6501, 0.65, 0.0, True),
        (0.60, 0.65, 0.0, False),
    ],
)
def test_candidate_must_beat_the_release_by_the_margin(candidate: float, current: float, margin: float, expected: bool) -> None:
    assert should_promote(candidate, current, margin) is expected


def test_nan_and_bad_margins() -> None:
    assert not should_promote(math.nan, None, 0.0)
    assert not should_promote(math.nan, 0.5, 0.0)
    with pytest.raises(ValueError, match="margin"):
        should_promote(0.9, 0.5, -0.1)
    with pytest.raises(ValueError, match="NaN"):
        should_promote(0.9, math.nan, 0.0)
    with pytest.raises(ValueError, match="direction"):
        should_promote(0.9, 0.5, 0.0, direction="up")


def test_the_gate_settings_come_from_params_yaml() -> None:
    assert gate_config({}) == GateConfig()
    # metric, budget and direction are the package stage's own: the gate cannot judge another row
    assert gate_config({"package": {"metric": "evidence_hit_rate", "budget": 4, "gate": {"margin": 0.05}}}) == (
        GateConfig("evidence_hit_rate", 4, "max", 0.05)
    )
    with pytest.raises(ValueError, match=r"unknown package.gate parameters: \['sampler'\]"):
        gate_config({"package": {"gate": {"sampler": "msjoe_joint", "margin": 0.01}}})
    with pytest.raises(ValueError, match="unknown package parameters"):
        gate_config({"package": {"metrics": "accuracy"}})


def test_the_candidates_are_the_package_stages_rows() -> None:
    cmd = (
        "python stages/package.py --evaluation reports/evaluate.json\n"
        "  --candidate msjoe_joint=models/joint,models/joint/sampler.pt --candidate=aks=models/mllm\n"
        "  --candidate 'uniform=models/mllm' --bentofile bento/bentofile.yaml"
    )
    assert candidate_labels(cmd) == ["msjoe_joint", "aks", "uniform"]
    assert candidate_labels("python toy.py package") == [] == candidate_labels(None)


def test_candidate_score_is_the_row_the_package_stage_would_release() -> None:
    assert candidate_score(REPORT, GateConfig(budget=8), ["uniform", "msjoe"]) == (0.62, "msjoe", "")
    assert candidate_score(REPORT, GateConfig(budget=8), ["uniform"]) == (0.45, "uniform", "")
    # the same winner the package stage picks, with the same rule (also for "lower is better")
    assert select_winner(REPORT, ["uniform", "msjoe"], "accuracy", 4, "min") == ("uniform", 0.40)
    assert candidate_score(REPORT, GateConfig(budget=4, direction="min"), ["uniform", "msjoe"]) == (0.40, "uniform", "")
    score, sampler, problem = candidate_score(REPORT, GateConfig(budget=16), ["uniform"])
    assert score is None and sampler is None and "budget 16" in problem
    score, _, problem = candidate_score(REPORT, GateConfig(metric="f1"), ["msjoe"])
    assert score is None and "f1" in problem
    score, _, problem = candidate_score(REPORT, GateConfig(), [])
    assert score is None and "--candidate" in problem


def test_decision_explains_every_outcome() -> None:
    cfg = GateConfig(margin=0.05)
    kw = {"sampler": "aks", "candidate_sha256": "a" * 64}
    first = decide(cfg, 0.6, None, has_release=False, **kw)
    assert first.promote and first.sampler == "aks" and first.budget == 8
    same = decide(cfg, 0.9, 0.5, has_release=True, released_sha256="a" * 64, **kw)
    assert not same.promote and "already released" in same.reason
    incomparable = decide(cfg, 0.9, None, has_release=True, released_sha256="b" * 64, **kw)
    assert not incomparable.promote and "force_promote" in incomparable.reason
    assert decide(cfg, 0.9, None, has_release=True, released_sha256="b" * 64, force=True, **kw).promote
    small = decide(cfg, 0.62, 0.6, has_release=True, released_sha256="b" * 64, released_sampler="msjoe_joint", **kw)
    assert not small.promote and "below the margin" in small.reason
    text = small.markdown()
    assert "keep current release" in text and "0.6200 (aks)" in text and "0.6000 (msjoe_joint)" in text
    missing = decide(cfg, None, 0.6, has_release=True, problem="no sampler 'x'", **{**kw, "sampler": None})
    assert not missing.promote and "no sampler 'x'" in missing.reason
    lower = decide(GateConfig(direction="min", margin=0.05), 0.30, 0.40, has_release=True, released_sha256="b" * 64, **kw)
    assert lower.promote and "+0.1000" in lower.reason


def test_report_tables_for_artifacts_and_the_store() -> None:
    rows = grid_rows(REPORT)
    assert rows[0] == {"sampler": "uniform", "budget 4": 0.40, "budget 8": 0.45, "budget 16": None}
    assert rows[1]["budget 16"] == 0.70
    assert grid_metrics(REPORT) == ("accuracy", "evidence_hit_rate", "questions")
    cells = {(s, b): v for s, b, v in evaluation_cells(REPORT, ("accuracy", "evidence_hit_rate"))}
    assert cells[("uniform", 8)] == {"accuracy": 0.45}  # None is not a value
    assert cells[("msjoe", 4)] == {"accuracy": 0.55, "evidence_hit_rate": 0.5}
    flat = flatten(REPORT)
    assert flat["accuracy.msjoe.16"] == 0.70 and "params.budgets" not in flat and flat["split"] == "eval"
    text = metrics_markdown({"reports/evaluate.json": REPORT, "reports/world.json": {"videos": 5}})
    assert "## `reports/world.json`" in text and "| videos | 5 |" in text
    assert "| accuracy.uniform.4 | 0.4 |" in text


def test_docstring_examples_hold() -> None:
    import doctest

    import flows.metrics_report
    import flows.promotion

    for module in (flows.promotion, flows.metrics_report):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_the_projects_gate_judges_every_row_the_package_stage_may_release() -> None:
    """The real dvc.yaml and params.yaml: the gate's candidates are the package stage's rows
    (every evaluated sampler; the oracle is a separate row that needs the answer's evidence)."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    params = yaml.safe_load((root / "params.yaml").read_text())
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    labels = candidate_labels(stages["package"]["cmd"])
    assert sorted(labels) == sorted(params["evaluate"]["samplers"]) and len(set(labels)) == len(labels)
    cfg = gate_config(params)
    assert (cfg.metric, cfg.budget, cfg.direction) == (
        params["package"]["metric"], params["package"]["budget"], params["package"]["direction"])
