"""Our predictions joined with lmms-eval's logged samples on the benchmark's own ids."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pandas as pd
import pytest

from msjoe import lmms_eval
from msjoe.lmms_eval import compare, read_logged_samples


def _log(path: Path, samples: list[dict]) -> Path:
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    return path


def test_logged_samples_map_to_our_qids_and_compare_question_by_question(tmp_path: Path) -> None:
    assert doctest.testmod(lmms_eval).failed == 0
    log = _log(tmp_path / "lvbench_samples.jsonl", [
        {"doc_id": 0, "doc": {"uid": "55", "question": "..."}, "target": "D", "filtered_resps": ["D"]},
        {"doc_id": 1, "doc": {"uid": 56}, "target": "B", "filtered_resps": ["(A) It is hungry"]},
        {"doc_id": 2, "doc": {"uid": "99"}, "target": "C", "filtered_resps": ["I cannot tell"]},
    ])
    logged = read_logged_samples(log, "lvbench")
    assert logged.astype(object).where(logged.notna(), None).to_dict("records") == [
        {"qid": "lvbench-55", "lmms_target": "D", "lmms_prediction": "D"},
        {"qid": "lvbench-56", "lmms_target": "B", "lmms_prediction": "A"},
        {"qid": "lvbench-99", "lmms_target": "C", "lmms_prediction": None},
    ]
    ours = pd.DataFrame([
        {"qid": "lvbench-55", "sampler": "msjoe_joint", "budget": 32, "answer": "D", "prediction": "D"},
        {"qid": "lvbench-56", "sampler": "msjoe_joint", "budget": 32, "answer": "B", "prediction": "B"},
        {"qid": "lvbench-57", "sampler": "msjoe_joint", "budget": 32, "answer": "A", "prediction": "C"},
        {"qid": "lvbench-55", "sampler": "uniform", "budget": 32, "answer": "D", "prediction": "A"},
    ])
    table = compare(ours, logged, "msjoe_joint", 32).set_index("qid")
    assert table.loc["lvbench-55", "agree"] == True and table.loc["lvbench-56", "agree"] == False  # noqa: E712
    assert table.loc["lvbench-56", "same_target"] == True  # noqa: E712
    assert table.loc["lvbench-57", "in"] == "ours" and pd.isna(table.loc["lvbench-57", "agree"])
    assert table.loc["lvbench-99", "in"] == "lmms-eval"
    with pytest.raises(ValueError, match="no predictions for uniform@16"):
        compare(ours, logged, "uniform", 16)


def test_a_log_of_another_benchmark_is_named(tmp_path: Path) -> None:
    log = _log(tmp_path / "x.jsonl", [{"doc": {"question_id": "001-1"}, "target": "A", "filtered_resps": ["A"]}])
    assert read_logged_samples(log, "videomme")["qid"].tolist() == ["videomme-001-1"]
    with pytest.raises(ValueError, match="line 1: doc has no 'uid'"):
        read_logged_samples(log, "lvbench")
