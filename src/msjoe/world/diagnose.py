"""Why answers on the demo world are wrong: what the frames showed, what the model said it
saw, and what its own list implies.

The demo MLLM's reply lists the events it sees (``Seen: a red star, a blue circle.``) before its
answer, and the world knows which event every frame shows, so each evaluated answer can be
split into the three steps that must all go right:

1. **Frames**: do the selected frames show every event the question is about
   (``complete``)? How many distinct events do they show (``events_shown``)?
2. **Perception**: is the reply's list, read as distinct events in order, exactly the events
   shown (``list_exact``)?
3. **Reasoning**: is the chosen option the one the model's own list implies
   (``follows_list``, :func:`msjoe.world.reasoning.implied_option`; counted where the list
   implies an option)?

Run it on an evaluation's predictions (``msjoe diagnose-world``) to see which step limits a
sampler: a sampler can only help through step 1, and steps 2-3 cap what it can gain.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msjoe.mllm.parsing import option_letter
from msjoe.world.events import VideoEvent, shown_events
from msjoe.world.reasoning import implied_option

__all__ = ["diagnose", "seen_list"]

_SEEN = re.compile(r"Seen:\s*(.*?)\.\s*<answer>", re.DOTALL)
_NOTHING = "nothing"


def seen_list(reply: str) -> list[str] | None:
    """The reply's ``Seen:`` list as distinct entries in order; None when the reply has none.

    The model names an event once per frame that shows it, so repeats are merged.

    >>> seen_list("Seen: a red star, a red star, a blue circle. <answer>blue</answer>")
    ['a red star', 'a blue circle']
    >>> seen_list("Seen: nothing. <answer>3</answer>")
    []
    >>> seen_list("<answer>B</answer>") is None
    True
    """
    match = _SEEN.search(reply or "")
    if match is None:
        return None
    items = [s.strip() for s in match.group(1).split(",") if s.strip()]
    return [] if items == [_NOTHING] else list(dict.fromkeys(items))


def _rate(values: pd.Series) -> float | None:
    values = values.dropna()
    return round(float(values.astype(bool).mean()), 4) if len(values) else None


def _category(value: Any) -> str:
    """A question family as text; "" when absent (None, NaN or empty)."""
    return value if isinstance(value, str) else ""


def diagnose(
    predictions: pd.DataFrame, questions: pd.DataFrame, events: Mapping[str, Sequence[VideoEvent]], budget: int
) -> dict[str, Any]:
    """Per sampler at ``budget`` (and per number of events shown, and per sampler and question
    family): accuracy, evidence hits and completeness, events shown, list exactness and how
    often the answer follows the list.

    ``by_category`` separates the families, whose evidence differs in kind: a family whose
    questions need two events (an anchor and the event after it) can show a high
    ``evidence_hit`` and a low ``evidence_complete`` for every query-driven sampler, when the
    queries only ever describe one of the two.

    ``accuracy_when_complete`` is the accuracy over the ``complete_n`` questions whose frames
    show every target event, and ``oracle_accuracy_when_complete`` the ``oracle`` row's on the
    same questions (None without an oracle row). With the evidence in hand, what separates the
    two is what the MLLM makes of it among the other frames the sampler chose (the oracle pads
    the same evidence with uniform, mostly empty frames). Where the gap is large, a sampler
    that finds more evidence gains little.

    ``predictions``: evaluate's per-question table (qid, video, sampler, budget, frames,
    answer_text, correct, prediction, evidence_complete; evidence_hit when present);
    ``questions``: ingest's table (qid, question, options; category, the family, when present).
    """
    rows = predictions[predictions["budget"].astype(int) == int(budget)]
    if rows.empty:
        raise ValueError(f"no predictions at budget {budget}")
    by_qid = questions.set_index("qid")
    oracle = rows[rows["sampler"] == "oracle"]
    oracle_correct = dict(zip(oracle["qid"], oracle["correct"].astype(bool), strict=True))
    records = []
    for row in rows.itertuples(index=False):
        shown = shown_events(events.get(Path(row.video).stem, []), row.frames)
        listed = seen_list(row.answer_text)
        q = by_qid.loc[row.qid]
        implied = implied_option(q["question"], list(q["options"]), listed) if listed is not None else None
        records.append({
            "sampler": row.sampler,
            "correct": bool(row.correct),
            "category": _category(q.get("category")),
            "hit": getattr(row, "evidence_hit", None),
            "complete": getattr(row, "evidence_complete", None),
            "oracle_correct": oracle_correct.get(row.qid),
            "events_shown": len(shown),
            "list_exact": None if listed is None else listed == shown,
            "follows_list": None if implied is None else row.prediction == option_letter(implied),
        })
    table = pd.DataFrame.from_records(records)

    def summary(group: pd.DataFrame) -> dict[str, Any]:
        complete = group["complete"].fillna(False).astype(bool)
        return {
            "n": int(len(group)),
            "accuracy": _rate(group["correct"]),
            "evidence_hit": _rate(group["hit"]),
            "evidence_complete": _rate(group["complete"]),
            "accuracy_when_complete": _rate(group.loc[complete, "correct"]),
            "oracle_accuracy_when_complete": _rate(group.loc[complete, "oracle_correct"]),
            "complete_n": int(complete.sum()),
            "events_shown": round(float(np.mean(group["events_shown"])), 3),
            "list_exact": _rate(group["list_exact"]),
            "follows_list": _rate(group["follows_list"]),
            "follows_list_n": int(group["follows_list"].notna().sum()),
        }

    return {
        "budget": int(budget),
        "samplers": {str(s): summary(g) for s, g in table.groupby("sampler", sort=True)},
        "by_events_shown": {str(int(k)): summary(g) for k, g in table.groupby("events_shown", sort=True)},
        "by_category": {
            str(s): {str(c): summary(gc) for c, gc in g.groupby("category", sort=True) if c}
            for s, g in table.groupby("sampler", sort=True)
        },
    }
