"""The demo-world diagnosis splits each answer into frames, perception and reasoning."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pandas as pd

from msjoe.world import diagnose as diagnose_module
from msjoe.world import events as events_module
from msjoe.world.diagnose import diagnose
from msjoe.world.events import VideoEvent, load_events

EVENTS = {"v": [VideoEvent(10, 12, "a red star"), VideoEvent(30, 31, "a blue circle"), VideoEvent(50, 52, "a red square")]}
QUESTIONS = pd.DataFrame([
    {"qid": "q1", "question": "What appeared right after the red star?",
     "options": ["a red square", "a blue circle", "a blue star", "a red circle"], "category": "order"},
    {"qid": "q2", "question": "How many stars appeared?", "options": ["0", "1", "2", "3"], "category": "count"},
])


def _row(qid: str, sampler: str, frames: list[int], reply: str, prediction: str | None, correct: bool) -> dict:
    return {"qid": qid, "video": "videos/eval/v.mp4", "sampler": sampler, "budget": 4, "frames": frames,
            "answer_text": reply, "prediction": prediction, "correct": correct, "evidence_complete": None}


def test_doctests_pass() -> None:
    assert doctest.testmod(diagnose_module).failed == 0
    assert doctest.testmod(events_module).failed == 0


def test_each_step_is_told_apart() -> None:
    predictions = pd.DataFrame([
        # frames show the star and the circle; the list is right, the answer follows it
        _row("q1", "good", [11, 11, 30, 70], "Seen: a red star, a red star, a blue circle. <answer>a blue circle</answer>",
             "B", True),
        # same frames, list right, but the answer does not follow it (a reasoning failure)
        _row("q1", "bad", [11, 30, 70, 71], "Seen: a red star, a blue circle. <answer>a red square</answer>", "A", False),
        # frames show only the star: the list is right and implies no option after the star
        _row("q2", "good", [11, 70, 71, 72], "Seen: a red star. <answer>1</answer>", "B", True),
        # frames show the star and the square, the list misses the square (a perception failure)
        _row("q2", "bad", [11, 51, 70, 71], "Seen: a red star. <answer>1</answer>", "B", True),
        _row("q2", "bad", [11, 51, 70, 71], "no list here", None, False),
    ])
    predictions.loc[0, "evidence_complete"] = True
    predictions.loc[1, "evidence_complete"] = True
    report = diagnose(predictions, QUESTIONS, EVENTS, budget=4)
    good, bad = report["samplers"]["good"], report["samplers"]["bad"]
    assert good == {"n": 2, "accuracy": 1.0, "evidence_hit": None, "evidence_complete": 1.0, "accuracy_when_complete": 1.0,
                    "oracle_accuracy_when_complete": None, "complete_n": 1, "events_shown": 1.5,
                    "list_exact": 1.0, "follows_list": 1.0, "follows_list_n": 2}
    assert bad["n"] == 3 and bad["events_shown"] == 2.0
    # complete evidence in one of the three rows, and that answer is wrong
    assert bad["accuracy_when_complete"] == 0.0 and bad["complete_n"] == 1 and bad["accuracy"] == round(1 / 3, 4)
    assert bad["list_exact"] == 0.5  # one right list, one that missed the square, one reply without a list
    assert bad["follows_list"] == 0.5 and bad["follows_list_n"] == 2
    assert report["by_events_shown"]["1"]["n"] == 1 and report["by_events_shown"]["2"]["n"] == 4
    # per family (ingest's category column)
    assert set(report["by_category"]["bad"]) == {"order", "count"}
    assert report["by_category"]["bad"]["order"]["n"] == 1 and report["by_category"]["bad"]["count"]["n"] == 2
    assert report["by_category"]["bad"]["order"]["accuracy_when_complete"] == 0.0
    assert report["by_category"]["good"]["count"]["list_exact"] == 1.0

    # evaluate's evidence_hit column: the anchor found, the next event not
    hits = predictions.assign(evidence_hit=[True, True, True, False, None])
    hits.loc[1, "evidence_complete"] = False
    by_family = diagnose(hits, QUESTIONS, EVENTS, budget=4)["by_category"]["bad"]
    assert by_family["order"]["evidence_hit"] == 1.0 and by_family["order"]["evidence_complete"] == 0.0
    assert by_family["count"]["evidence_hit"] == 0.0  # one False, one unknown

    # with an oracle row, each sampler's complete questions are scored for the oracle too
    oracle = pd.DataFrame([_row("q1", "oracle", [11, 30, 60, 80], "Seen: a red star, a blue circle. "
                                "<answer>a blue circle</answer>", "B", True),
                           _row("q2", "oracle", [11, 51, 60, 80], "Seen: a red star. <answer>1</answer>", "B", False)])
    report = diagnose(pd.concat([predictions, oracle]), QUESTIONS, EVENTS, budget=4)
    assert report["samplers"]["bad"]["oracle_accuracy_when_complete"] == 1.0  # q1: the oracle is right
    assert report["samplers"]["good"]["oracle_accuracy_when_complete"] == 1.0
    assert report["samplers"]["oracle"]["complete_n"] == 0  # its evidence_complete is None here


def test_events_are_read_from_the_world(tmp_path: Path) -> None:
    rows = [{"video_id": "v", "events": [{"start_frame": 30, "end_frame": 31, "caption": "a blue circle"},
                                         {"start_frame": 10, "end_frame": 12, "caption": "a red star"}]}]
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert load_events(tmp_path) == {"v": [VideoEvent(10, 12, "a red star"), VideoEvent(30, 31, "a blue circle")]}
    assert load_events(tmp_path / "no-world") == {}
