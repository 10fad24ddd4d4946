"""The demo world's reading rule: what the events seen imply for each question family."""

from __future__ import annotations

import doctest

from msjoe.world import reasoning
from msjoe.world.config import WorldConfig
from msjoe.world.questions import make_questions
from msjoe.world.reasoning import implied_answer, implied_option
from msjoe.world.scene import plan_video, video_rng


def test_doctests_pass() -> None:
    result = doctest.testmod(reasoning)
    assert result.attempted >= 8 and result.failed == 0


def test_seeing_every_event_or_only_the_targets_implies_the_ground_truth() -> None:
    """The rule agrees with the generator's answers on every question of a world, both when all
    of the video's events are seen and when only the question's target events are."""
    cfg = WorldConfig(seed=11, videos={"train": 40})
    checked = 0
    for index in range(40):
        spec = plan_video(cfg, "train", index)
        everything = [e.caption for e in spec.events]
        for q in make_questions(spec, cfg.families, video_rng(cfg, "train", index, 1)):
            targets = [e.caption for e in q.targets]
            truth = q.options["ABCDEFGHIJ".index(q.answer)]
            assert implied_answer(q.question, everything) == truth, (q.question, everything)
            assert implied_answer(q.question, targets) == truth, (q.question, targets)
            assert implied_option(q.question, q.options, targets) == "ABCDEFGHIJ".index(q.answer)
            checked += 1
    assert checked >= 150


def test_missing_evidence_implies_what_was_seen() -> None:
    assert implied_answer("How many circles appeared?", ["a red circle"]) == "1"
    assert implied_answer("How many circles appeared?", []) == "0"
    # the anchor seen last: the event after it is not among the frames
    assert implied_answer("What appeared right after the red circle?", ["a blue star", "a red circle"]) is None
    assert implied_answer("What colour was the cross?", ["a red circle"]) is None
    assert implied_answer("Which shape is red?", ["a red circle"]) is None  # not a world question
    assert implied_answer("What was the first shape to appear?", ["a blue spiral", "a red circle"]) == "a red circle"
