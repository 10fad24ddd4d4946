"""Evaluation: the report over samplers x budgets, the oracle, evidence hits, MLVU scoring,
query-source overrides, intervals and the paired claims."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from msjoe import official
from msjoe.clip.model import FrozenClip
from msjoe.episode import is_correct
from msjoe.evaluate import (
    ORACLE,
    QUERY_MODES,
    accuracy_plot_rows,
    claims_report,
    evaluate,
    evidence_complete,
    evidence_hit,
    oracle_selection,
    parse_claims,
    query_modes,
    resolve_budget,
    summarise,
)
from msjoe.features import FeatureStore
from msjoe.mllm.load import MLLM
from msjoe.pipeline import Pipeline
from msjoe.sampling import build_sampler
from msjoe.stats import holm, wilson_interval
from tests.unit.test_pipeline import (  # noqa: F401 (shared module fixtures)
    CFG,
    clip,
    clip_dir,
    mllm,
    mllm_dir,
    questions,
    world,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # torch on one thread (tests/conftest.py)


def test_evaluate_report_for_two_samplers_and_two_budgets(
    world: Path, questions: pd.DataFrame, clip: FrozenClip, mllm: MLLM, tmp_path: Path  # noqa: F811
) -> None:
    samplers = {"uniform": build_sampler("uniform"), "bolt": build_sampler("bolt"), "bolt_q": build_sampler("bolt")}
    queries = {"bolt_q": "question"}  # bolt as published; "bolt" keeps the generated queries
    pipeline = Pipeline(clip, mllm, samplers["uniform"], FeatureStore(tmp_path / "f"), CFG)
    result = evaluate(questions, world, pipeline, samplers, [4, 2], n_examples=2, queries=queries, progress=False)
    report, preds = result.report, result.predictions

    n = len(questions)
    labels = {"uniform", "bolt", "bolt_q", ORACLE}
    assert report["budgets"] == [2, 4] and report["n_questions"] == n and report["oracle"]
    for key in ("accuracy", "accuracy_ci", "official", "evidence_hit_rate", "evidence_hit_rate_ci", "evidence_hit_n",
                "visual_tokens", "accuracy_per_category", "accuracy_per_category_ci", "questions_per_category",
                "answer_parse_rate", "answer_parse_rate_ci", "query_parse_rate", "query_parse_rate_ci",
                "query_parse_n", "questions", "evidence_complete_rate", "evidence_complete_rate_ci",
                "answer_format_rate", "answer_format_rate_ci"):
        assert set(report[key]) == labels, key
        assert all(set(per) == {"2", "4"} for per in report[key].values()), key
    assert len(preds) == n * 4 * 2
    # the one correctness decision of the project
    assert preds["correct"].tolist() == [is_correct(p, a) for p, a in zip(preds["prediction"], preds["answer"])]
    # report numbers are the predictions' aggregates, each with n and a Wilson interval
    for (label, budget), group in preds.groupby(["sampler", "budget"]):
        b = str(budget)
        assert report["accuracy"][label][b] == pytest.approx(group["correct"].mean())
        assert report["questions"][label][b] == n
        assert report["accuracy_ci"][label][b] == pytest.approx(list(wilson_interval(int(group["correct"].sum()), n)))
        lo, hi = report["accuracy_ci"][label][b]
        assert lo <= report["accuracy"][label][b] <= hi
        # every question gets an option; the parse rate counts the replies that named one themselves
        assert group["prediction"].notna().all()
        named = int((~group["option_scored"]).sum())
        assert report["answer_parse_rate"][label][b] == pytest.approx(named / n)
        assert report["answer_parse_rate_ci"][label][b] == pytest.approx(list(wilson_interval(named, n)))
        assert all(len(f) == budget for f in group["frames"])
        assert all(t == sorted(t) for t in group["timestamps"])
    # where the similarity rows came from: the override, else the pipeline's default
    assert preds.groupby("sampler")["query_source"].unique().map(list).to_dict() == {
        "uniform": ["none"], "bolt": ["generated"], "bolt_q": ["question"], ORACLE: ["oracle"]}
    assert report["query_parse_n"]["bolt"] == {"2": n, "4": n} and report["query_parse_n"]["bolt_q"] == {"2": 0, "4": 0}
    assert report["query_parse_rate"]["bolt"] == {"2": 0.0, "4": 0.0}  # random MLLM: never parses
    assert report["query_parse_rate"]["bolt_q"] == {"2": None, "4": None}
    assert report["query_parse_rate_ci"]["bolt"]["4"] == pytest.approx(list(wilson_interval(0, n)))
    assert report["query_parse_rate_ci"]["bolt_q"]["4"] is None
    # the oracle sees evidence in every question (candidates cover every frame here)
    assert report["evidence_hit_rate"][ORACLE] == {"2": 1.0, "4": 1.0}
    assert report["evidence_hit_n"][ORACLE] == {"2": n, "4": n}
    assert report["evidence_hit_rate_ci"][ORACLE]["4"] == pytest.approx(list(wilson_interval(n, n)))
    # all evidence implies some evidence
    both = preds.dropna(subset=["evidence_hit"])
    assert not (both["evidence_complete"].astype(bool) & ~both["evidence_hit"].astype(bool)).any()
    assert set(report["accuracy_per_category"]["bolt"]["4"]) == set(questions["category"])
    assert sum(report["questions_per_category"]["bolt"]["4"].values()) == n
    # uniform and bolt-with-the-question run no query turn; bolt pays for 1 or 2 previews of 1 token each
    assert report["visual_tokens"]["uniform"] == {"2": 8.0, "4": 16.0}
    assert report["visual_tokens"]["bolt_q"] == {"2": 8.0, "4": 16.0}
    assert report["visual_tokens"]["bolt"] == {"2": 9.0, "4": 18.0}
    assert report["query_turns"] == n * 2 and report["query_fallbacks"] == n * 2  # random MLLM: never parses
    # one answer turn per distinct (question, frame set): shared frame sets get the same answer
    assert report["answer_turns"] == preds.assign(f=preds["frames"].map(tuple))[["qid", "f"]].drop_duplicates().shape[0]
    same = preds.assign(f=preds["frames"].map(tuple)).groupby(["qid", "f"])["prediction"].nunique(dropna=False)
    assert (same == 1).all()
    # wall-clock measurements only under "timings", which the stage writes apart from its metrics
    timings = report["timings"]
    assert set(timings["latency_s"]) == {"features", "query", "similarity", "sampler", "decode", "answer"}
    assert timings["latency_s"]["answer"] > 0 and timings["seconds"] > 0
    assert not {"latency_s", "stage_seconds", "seconds"} & set(report)
    # traces for figures, at the largest budget, and the DVC plot rows with interval columns
    assert [t.budget for t in result.examples] == [4, 4]
    assert set(result.examples[0].selections) == labels
    assert result.examples[0].similarity.shape == (1, 32)  # the fallback query (the question)
    rows = accuracy_plot_rows(report)
    assert [r["budget"] for r in rows] == [2, 4] and rows[1]["bolt"] == report["accuracy"]["bolt"]["4"]
    assert [rows[1]["bolt_lo"], rows[1]["bolt_hi"]] == report["accuracy_ci"]["bolt"]["4"]

    from msjoe.plots import write_example_figures

    paths = write_example_figures(result.examples, tmp_path / "figures")
    assert len(paths) == 2 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)

    # the same run again gives the same predictions (seeded, greedy)
    again = evaluate(questions, world, pipeline, samplers, [2, 4], oracle=False, queries=queries, progress=False)
    assert ORACLE not in again.report["accuracy"]
    cols = ["qid", "sampler", "budget", "prediction"]
    merged = again.predictions[cols].merge(preds[cols], on=["qid", "sampler", "budget"])
    assert len(merged) == n * 6 and (merged["prediction_x"].fillna("-") == merged["prediction_y"].fillna("-")).all()


def test_query_overrides_are_checked() -> None:
    samplers = {"uniform": build_sampler("uniform"), "clip_topk": build_sampler("clip_topk"),
                "bolt": build_sampler("bolt")}
    assert query_modes(samplers) == {"uniform": "none", "clip_topk": "question", "bolt": "generated"}
    assert query_modes(samplers, {"clip_topk": "generated", "bolt": "question", "uniform": None}) == {
        "uniform": "none", "clip_topk": "generated", "bolt": "question"}
    with pytest.raises(ValueError, match="uniform.*ignores similarity"):
        query_modes(samplers, {"uniform": "question"})
    with pytest.raises(ValueError, match="bolt.*needs similarity"):
        query_modes(samplers, {"bolt": "none"})
    with pytest.raises(ValueError, match="queries must be one of"):
        query_modes(samplers, {"bolt": "captions"})
    with pytest.raises(ValueError, match="not evaluated: aks"):
        query_modes(samplers, {"aks": "question"})


def test_evidence_hit_on_hand_made_spans() -> None:
    spans = [[10.0, 11.0], [20.0, 22.0]]
    assert evidence_hit([10.0], spans) is True
    assert evidence_hit([10.5, 30.0], spans) is True
    assert evidence_hit([11.0, 19.5, 22.0], spans) is False  # spans are half-open [start, end)
    assert evidence_hit([9.8], spans) is False
    assert evidence_hit([9.8], spans, tolerance_s=0.25) is True
    assert evidence_hit([5.0], [[5.0, 5.0]]) is True  # a point annotation
    assert evidence_hit([1.0], None) is None and evidence_hit([1.0], []) is None


def test_evidence_complete_needs_a_frame_in_every_span() -> None:
    spans = [[10.0, 11.0], [20.0, 22.0]]
    assert evidence_complete([10.0, 21.5], spans) is True
    assert evidence_complete([10.0, 10.5, 30.0], spans) is False  # only the first span
    assert evidence_complete([9.8, 19.9], spans, tolerance_s=0.25) is True
    assert evidence_complete([5.0], [[5.0, 5.0]]) is True  # a point annotation
    assert evidence_complete([1.0], None) is None and evidence_complete([1.0], []) is None


def _preds(rows: list[tuple[str, str, bool, bool | None]]) -> pd.DataFrame:
    return pd.DataFrame([
        {"qid": q, "category": c, "sampler": "s", "budget": 4, "correct": ok, "prediction": "A",
         "answer_text": "<answer>A</answer>", "evidence_hit": hit, "evidence_complete": hit, "visual_tokens": 10, "visual_tokens_answer": 8, "query_source": "generated",
         "query_parse_ok": True, "option_scored": False}
        for q, c, ok, hit in rows
    ])


def test_evidence_hit_rate_counts_only_questions_with_evidence() -> None:
    preds = _preds([("a", "x", True, True), ("b", "x", False, False), ("c", "x", False, None),
                    ("d", "x", True, True)])
    report = summarise(preds)
    assert report["evidence_hit_rate"]["s"]["4"] == pytest.approx(2 / 3)
    assert report["accuracy"]["s"]["4"] == pytest.approx(0.5)


def test_mlvu_official_score_is_the_mean_of_per_task_accuracies() -> None:
    # task x: 3/4 right, task y: 0/1 right -> mean of tasks 0.375, plain accuracy 0.6
    rows = [("a", "x", True, None), ("b", "x", True, None), ("c", "x", True, None), ("d", "x", False, None),
            ("e", "y", False, None)]
    mlvu = summarise(_preds(rows), "mlvu")
    assert mlvu["official"]["s"]["4"] == pytest.approx(0.375) and mlvu["accuracy"]["s"]["4"] == pytest.approx(0.6)
    assert mlvu["official_breakdown"]["s"]["4"] == pytest.approx({"overall": 0.6, "m_avg": 0.375})
    assert mlvu["accuracy_per_category"]["s"]["4"] == {"x": 0.75, "y": 0.0}
    assert mlvu["evidence_hit_rate"]["s"]["4"] is None and mlvu["benchmark"] == "mlvu"
    plain = summarise(_preds(rows))
    assert plain["official"]["s"]["4"] == pytest.approx(0.6) and plain["benchmark"] is None
    with pytest.raises(ValueError, match="egoschema"):
        summarise(_preds(rows), "egoschema")


def test_official_breakdowns_match_hand_counts() -> None:
    """Each benchmark's published grouping, on answers counted by hand."""
    import doctest

    assert doctest.testmod(official).failed == 0
    # Video-MME: short 2/2, medium 0/1, long 1/3 -> overall 3/6
    cats = ["short/OCR", "short/Counting", "medium/OCR", "long/OCR", "long/Temporal", "long/Temporal"]
    right = [True, True, False, True, False, False]
    assert official.breakdown("videomme", right, cats) == pytest.approx(
        {"overall": 0.5, "short": 1.0, "medium": 0.0, "long": 1 / 3})
    # LongVideoBench: groups by video length, 15 / 60 / 600 / 3600 s
    durations = [10.0, 14.0, 45.0, 300.0, 1200.0, 3500.0]
    assert official.breakdown("longvideobench", right, ["TOS"] * 6, durations) == pytest.approx(
        {"overall": 0.5, "15": 1.0, "60": 0.0, "600": 1.0, "3600": 0.0})
    with pytest.raises(ValueError, match="duration_s"):
        official.breakdown("longvideobench", right, ["TOS"] * 6)
    # LVBench: a question with two types counts under both; overall counts it once
    types = ["key information retrieval", "entity recognition,reasoning", "reasoning", "reasoning"]
    assert official.breakdown("lvbench", [True, True, False, True], types) == pytest.approx(
        {"overall": 0.75, "key information retrieval": 1.0, "entity recognition": 1.0, "reasoning": 2 / 3})
    assert official.headline("lvbench", {"overall": 0.75}) == 0.75
    # the report carries them per sampler and budget, LongVideoBench from the duration column
    preds = _preds([(f"q{i}", "TOS", ok, None) for i, ok in enumerate(right)]).assign(duration_s=durations)
    report = summarise(preds, "longvideobench")
    assert report["official_breakdown"]["s"]["4"]["3600"] == 0.0 and report["official"]["s"]["4"] == 0.5


def test_oracle_selection_takes_evidence_then_pads_uniformly() -> None:
    times = np.arange(40) / 2.0  # 40 candidates, 2 per second
    sel = oracle_selection(times, [[3.0, 4.0], [10.0, 11.5]], 6)
    picked = set(sel.indices.tolist())
    assert {6, 7, 20, 21, 22} <= picked and len(sel) == 6  # all 5 evidence frames + 1 padding
    assert list(sel.indices) == sorted(picked)
    assert sel.weights.sum() == 5.0
    # more evidence frames than K: every span still gets a frame
    two = oracle_selection(times, [[0.0, 5.0], [15.0, 19.5]], 2)
    assert [t < 5 for t in times[two.indices]] == [True, False]
    # no evidence: the uniform sampler's frames
    assert oracle_selection(times, None, 4).indices.tolist() == [5, 15, 25, 35]


def test_summarise_gives_every_proportion_its_n_and_interval() -> None:
    preds = _preds([("a", "x", True, True), ("b", "x", False, False), ("c", "y", False, None),
                    ("d", "x", True, True)])
    preds.loc[1, "prediction"] = "C"  # well formed, but names no option: C is the option scored highest
    preds.loc[1, "option_scored"] = True
    preds.loc[1, "answer_text"] = "Seen: a red star. <answer>a green star</answer>"
    preds.loc[0, "evidence_complete"] = False  # a frame of one target event only
    report = summarise(preds)
    assert report["questions"]["s"]["4"] == 4 and report["confidence"] == 0.95
    assert report["accuracy_ci"]["s"]["4"] == pytest.approx(list(wilson_interval(2, 4)))
    assert report["evidence_hit_n"]["s"]["4"] == 3
    assert report["evidence_hit_rate_ci"]["s"]["4"] == pytest.approx(list(wilson_interval(2, 3)))
    assert report["answer_parse_rate"]["s"]["4"] == 0.75
    assert report["answer_parse_rate_ci"]["s"]["4"] == pytest.approx(list(wilson_interval(3, 4)))
    assert report["answer_format_rate"]["s"]["4"] == 1.0
    assert report["answer_format_rate_ci"]["s"]["4"] == pytest.approx(list(wilson_interval(4, 4)))
    assert report["evidence_complete_rate"]["s"]["4"] == pytest.approx(1 / 3)
    assert report["evidence_complete_rate_ci"]["s"]["4"] == pytest.approx(list(wilson_interval(1, 3)))
    assert report["query_parse_n"]["s"]["4"] == 4 and report["query_parse_rate"]["s"]["4"] == 1.0
    assert report["accuracy_per_category"]["s"]["4"] == {"x": pytest.approx(2 / 3), "y": 0.0}
    assert report["questions_per_category"]["s"]["4"] == {"x": 3, "y": 1}
    assert report["accuracy_per_category_ci"]["s"]["4"]["y"] == pytest.approx(list(wilson_interval(0, 1)))
    # no question with evidence: no rate, no interval
    none = summarise(_preds([("a", "x", True, None)]))
    assert none["evidence_hit_rate"]["s"]["4"] is None and none["evidence_hit_rate_ci"]["s"]["4"] is None
    assert none["evidence_hit_n"]["s"]["4"] == 0


def test_plot_rows_carry_interval_columns() -> None:
    report = {"accuracy": {"u": {"4": 0.5, "8": 0.75}, "m": {"8": 1.0}},
              "accuracy_ci": {"u": {"4": [0.2, 0.8], "8": [0.4, 0.9]}, "m": {"8": [0.6, 1.0]}}}
    assert accuracy_plot_rows(report) == [
        {"budget": 4, "u": 0.5, "u_lo": 0.2, "u_hi": 0.8, "m": None, "m_lo": None, "m_hi": None},
        {"budget": 8, "u": 0.75, "u_lo": 0.4, "u_hi": 0.9, "m": 1.0, "m_lo": 0.6, "m_hi": 1.0},
    ]
    # a report from before the intervals still plots
    assert accuracy_plot_rows({"accuracy": {"u": {"4": 0.5}}}) == [{"budget": 4, "u": 0.5, "u_lo": None, "u_hi": None}]


def test_budgets_relative_to_the_middle_one() -> None:
    assert [resolve_budget(s, [16, 4, 8]) for s in ("K", "2K", "K/2", 8, "16")] == [8, 16, 4, 8, 16]
    assert resolve_budget("2K", [2, 4]) == 4  # an even number of budgets: K is the lower middle
    with pytest.raises(ValueError, match="'4K' resolves to 32, which is not evaluated"):
        resolve_budget("4K", [4, 8, 16])
    with pytest.raises(ValueError, match="expected an integer or a multiple of K"):
        resolve_budget("K+1", [4, 8, 16])
    with pytest.raises(ValueError, match="not an integer"):
        resolve_budget("K/3", [4, 8, 16])


# Hand-built paired outcomes on 20 questions (True = correct). Against `new`:
#   old:  6 both, 9 only new, 1 only old, 4 neither -> McNemar P(X >= 9 | Bin(10, 1/2)) = 11/1024
#   base: 12 both, 3 only new, 3 only base, 2 neither -> P(X >= 3 | Bin(6, 1/2)) = 42/64
#   unif (at 2K): 13 both, 2 only new, 0 only unif, 5 neither
NEW = [True] * 15 + [False] * 5
OLD = [True] * 6 + [False] * 9 + [True] + [False] * 4
BASE = [True] * 12 + [False] * 3 + [True] * 3 + [False] * 2
UNIF = [True] * 13 + [False] * 7
CLAIMS = [
    {"name": "new_beats_old", "kind": "superior", "a": ["new", "K"], "b": ["old", "K"]},
    {"name": "new_beats_all", "kind": "superior", "a": ["new", "K"], "b": [["old", "base"], "K"]},
    {"name": "new_at_K_as_good_as_unif_at_2K", "kind": "noninferior", "margin": 0.05, "alpha": 0.05,
     "a": ["new", "K"], "b": ["unif", "2K"]},
]


def _claim_predictions() -> pd.DataFrame:
    rows = [{"qid": f"q{i:02d}", "sampler": label, "budget": budget, "correct": outcome}
            for label, budget, outcomes in (("new", 8, NEW), ("old", 8, OLD), ("base", 8, BASE),
                                            ("unif", 16, UNIF), ("new", 4, [False] * 20))
            for i, outcome in enumerate(outcomes)]
    # shuffled: pairing is by question id, not by row order
    return pd.DataFrame(rows).sample(frac=1.0, random_state=3).reset_index(drop=True)


def test_claims_are_paired_tests_with_known_p_values() -> None:
    claims = parse_claims(CLAIMS, [4, 8, 16], ["new", "old", "base", "unif"])
    assert [(c.a, c.b) for c in claims] == [(("new", 8), (("old", 8),)), (("new", 8), (("old", 8), ("base", 8))),
                                           (("new", 8), (("unif", 16),))]
    report = claims_report(_claim_predictions(), claims, resamples=999, seed=0)

    one = report["new_beats_old"]
    assert one["n"] == 20 and (one["a_only"], one["b_only"]) == (9, 1)
    assert one["a"] == {"sampler": "new", "budget": 8, "accuracy": 0.75, "ci": pytest.approx(list(wilson_interval(15, 20)))}
    assert one["b"]["accuracy"] == 0.35 and one["b"]["ci"] == pytest.approx(list(wilson_interval(7, 20)))
    assert one["difference"] == pytest.approx(0.4)
    assert one["p_mcnemar"] == 11 / 1024 and one["p_mcnemar_two_sided"] == 22 / 1024
    assert one["p"] == one["p_mcnemar"] and one["holds"] is True
    assert 0.0 < one["difference_ci"][0] < 0.4 < one["difference_ci"][1] <= 0.75
    assert one["p_bootstrap"] < 0.05

    family = report["new_beats_all"]
    assert set(family["comparisons"]) == {"old@8", "base@8"} and family["n"] == 20
    assert family["comparisons"]["old@8"]["holds"] is True
    assert family["comparisons"]["base@8"]["p_mcnemar"] == 42 / 64
    assert family["comparisons"]["base@8"]["holds"] is False
    assert family["holds"] is False  # a must beat every b

    ni = report["new_at_K_as_good_as_unif_at_2K"]
    # Wald+2: n' = 22, d' = 2/22, se = sqrt(3 - 4/22)/22, z = (d' + 0.05)/se = 1.8466, p = 0.0324
    assert ni["b"]["budget"] == 16 and ni["difference"] == pytest.approx(0.1)
    assert ni["p_noninferior"] == pytest.approx(0.03240, abs=1e-4)
    assert ni["p"] == ni["p_noninferior"] and ni["holds"] is True and ni["noninferior_lower_bound"] > -0.05
    # Holm over every comparison: 4 x 11/1024 = 0.043 still holds; the non-inferiority (2 x 0.0324) does not
    leaves = [one, family["comparisons"]["old@8"], family["comparisons"]["base@8"], ni]
    assert [leaf["p_holm"] for leaf in leaves] == pytest.approx(holm([leaf["p"] for leaf in leaves]))
    assert one["p_holm"] == pytest.approx(4 * 11 / 1024) and one["holds_holm"] is True
    assert ni["p_holm"] == pytest.approx(2 * ni["p"]) and ni["holds_holm"] is False
    # deterministic
    assert claims_report(_claim_predictions(), claims, resamples=999, seed=0) == report


def test_evidence_hit_claims_pair_the_questions_with_evidence() -> None:
    # 12 questions, the last 2 without evidence annotations (evidence_hit None for every sampler)
    gen = [True] * 8 + [False] * 2 + [None] * 2
    question = [True] * 3 + [False] * 7 + [None] * 2
    rows = [{"qid": f"q{i:02d}", "sampler": label, "budget": 8, "correct": False, "evidence_hit": hit}
            for label, hits in (("gen", gen), ("question", question)) for i, hit in enumerate(hits)]
    spec = [{"name": "g", "kind": "superior", "metric": "evidence_hit", "a": ["gen", 8], "b": ["question", 8]}]
    result = claims_report(pd.DataFrame(rows), parse_claims(spec, [8], ["gen", "question"]), resamples=99)["g"]
    assert result["metric"] == "evidence_hit" and result["n"] == 10
    assert (result["a_only"], result["b_only"]) == (5, 0) and result["p_mcnemar"] == 1 / 32
    assert result["a"]["evidence_hit_rate"] == 0.8 and result["b"]["evidence_hit_rate"] == 0.3
    assert result["holds"] is True
    with pytest.raises(ValueError, match="metric must be one of"):
        parse_claims([{**spec[0], "metric": "latency"}], [8], ["gen", "question"])


def test_claims_about_what_was_not_evaluated_fail_loudly() -> None:
    samplers = ["new", "old", "base", "unif"]
    with pytest.raises(ValueError, match="claim x: sampler 'bolt_gen' is not evaluated"):
        parse_claims([{"name": "x", "a": ["new", "K"], "b": [["old", "bolt_gen"], "K"]}], [4, 8, 16], samplers)
    with pytest.raises(ValueError, match="claim y: budget '2K' resolves to 16, which is not evaluated"):
        parse_claims([{"name": "y", "a": ["new", "K"], "b": ["old", "2K"]}], [4, 8, 12], samplers)
    with pytest.raises(ValueError, match="kind must be one of"):
        parse_claims([{"name": "z", "kind": "better", "a": ["new", 8], "b": ["old", 8]}], [8], samplers)
    with pytest.raises(ValueError, match="unknown keys"):
        parse_claims([{"name": "z", "a": ["new", 8], "b": ["old", 8], "margn": 0.1}], [8], samplers)
    with pytest.raises(ValueError, match="declared twice"):
        parse_claims([CLAIMS[0], CLAIMS[0]], [4, 8, 16], samplers)
    with pytest.raises(ValueError, match="with itself"):
        parse_claims([{"name": "z", "a": ["new", 8], "b": ["new", 8]}], [8], samplers)
    # declared, but the predictions lack it (e.g. no oracle row without evidence) or are unpaired
    claims = parse_claims([{"name": "w", "a": ["new", 8], "b": ["oracle", 8]}], [8], samplers + [ORACLE])
    with pytest.raises(ValueError, match="no predictions for sampler 'oracle' at budget 8"):
        claims_report(_claim_predictions(), claims, resamples=9)
    preds = _claim_predictions()
    preds = preds[~((preds["sampler"] == "old") & (preds["qid"] == "q03"))]
    with pytest.raises(ValueError, match="answered different questions"):
        claims_report(preds, parse_claims(CLAIMS[:1], [4, 8, 16], samplers), resamples=9)


def test_params_claims_name_evaluated_samplers_and_budgets() -> None:
    section = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())["evaluate"]
    samplers = section["samplers"]
    claims = parse_claims(section["claims"], section["budgets"], list(samplers) + [ORACLE])
    k = sorted(section["budgets"])[(len(section["budgets"]) - 1) // 2]
    assert 2 * k in section["budgets"]
    by_name = {c.name: c for c in claims}
    # every query-driven baseline runs as published (the question) and with generated queries
    for base in ("clip_topk", "bolt", "aks", "qframe"):
        assert samplers[base]["queries"] == "question" and samplers[f"{base}_gen"]["queries"] == "generated"
        assert {key: v for key, v in samplers[base].items() if key != "queries"} == {
            key: v for key, v in samplers[f"{base}_gen"].items() if key != "queries"}
        assert any(c.a == (f"{base}_gen", k) and c.b == ((base, k),) for c in claims)
    assert all(spec.get("queries", "generated") in QUERY_MODES for spec in samplers.values())
    training_free = {label for label, spec in samplers.items() if spec["name"] != "msjoe"}
    assert {b for b, _ in by_name["joint_beats_training_free"].b} == training_free
    ni = by_name["joint_at_K_noninferior_to_uniform_at_2K"]
    assert ni.kind == "noninferior" and ni.margin == 0.05 and ni.b == (("uniform", 2 * k),)


def test_a_saved_batch_of_turns_is_named_by_device_type_and_dtype_not_device_index() -> None:
    """The turn cache must not hand a CPU run's replies to a CUDA or bf16 run, and every rank
    of a sharded GPU run (cuda:0, cuda:1, ...) must name the same batch alike."""
    import types

    import torch

    from msjoe.evaluate import _turn_context
    from msjoe.pipeline import PipelineConfig

    def context(device: str, dtype: torch.dtype) -> dict:
        mllm = types.SimpleNamespace(identity="m@1", device=torch.device(device),
                                     model=types.SimpleNamespace(dtype=dtype))
        return _turn_context(types.SimpleNamespace(mllm=mllm, cfg=PipelineConfig()))  # type: ignore[arg-type]

    assert context("cuda:0", torch.bfloat16) == context("cuda:1", torch.bfloat16)
    assert context("cuda:0", torch.bfloat16) != context("cuda:0", torch.float32) != context("cpu", torch.float32)
