"""Compare our per-question predictions with lmms-eval's logged samples, row by row.

``lmms_eval --log_samples`` writes one JSON object per question: ``doc`` (the dataset row the
task read), ``target`` (the answer letter) and ``filtered_resps`` (the model's reply after the
task's filters). Our predictions are keyed by ``qid`` = ``<format>-<the benchmark's own id>``
(:mod:`msjoe.adapters`), so a logged sample maps to a qid through the id field of its ``doc``.
The comparison shows, per question, both answers and whether they agree: the way to tell a
difference in the method from a difference in prompting or answer extraction.

The letter in an lmms-eval reply is read the way its multiple-choice tasks read it: the first
option letter A-F standing alone (``"B"``, ``"(B)"``, ``"B. text"``, ``"The answer is B"``); like
theirs, it takes the article in "A man ..." for option A.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from msjoe.adapters import FORMATS

__all__ = ["DOC_ID_FIELDS", "compare", "logged_letter", "read_logged_samples"]

#: The field of lmms-eval's ``doc`` that holds the benchmark's own question id, per format.
DOC_ID_FIELDS = {"videomme": "question_id", "mlvu": "question_id", "longvideobench": "id", "lvbench": "uid"}

#: A-F: no benchmark here has more than 6 options, and "I" (the pronoun) must not read as option I.
_LETTER = re.compile(r"(?<![A-Za-z])([A-F])(?![A-Za-z])")


def logged_letter(reply: Any) -> str | None:
    """The option letter of a logged reply, None when it names none.

    >>> [logged_letter(r) for r in ["B", "(C) a cat", "The answer is D.", "I cannot tell", ["A"]]]
    ['B', 'C', 'D', None, 'A']
    """
    if isinstance(reply, list):
        reply = reply[0] if reply else ""
    match = _LETTER.search(str(reply))
    return match.group(1) if match else None


def read_logged_samples(path: Path, fmt: str) -> pd.DataFrame:
    """lmms-eval's ``*_samples_*.jsonl`` as a table: ``qid``, ``lmms_target``, ``lmms_prediction``.

    A line without the format's id field in its ``doc`` raises ``ValueError`` naming the line.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown benchmark format {fmt!r}; allowed: {', '.join(FORMATS)}")
    field = DOC_ID_FIELDS[fmt]
    rows = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            sample = json.loads(line)
            doc = sample.get("doc") or {}
            if doc.get(field) in (None, ""):
                raise ValueError(f"{path} line {number}: doc has no {field!r} (is this a {fmt} log?)")
            rows.append({
                "qid": f"{fmt}-{doc[field]}",
                "lmms_target": logged_letter(sample.get("target")),
                "lmms_prediction": logged_letter(sample.get("filtered_resps")),
            })
    return pd.DataFrame(rows, columns=["qid", "lmms_target", "lmms_prediction"])


def compare(predictions: pd.DataFrame, logged: pd.DataFrame, sampler: str, budget: int) -> pd.DataFrame:
    """One row per question in either table: our answer key and prediction for ``sampler`` @
    ``budget``, lmms-eval's, and ``agree`` (same letter; NA where a side lacks the question).

    A question whose answer keys differ is a conversion problem, not a model difference: the
    ``same_target`` column shows it.
    """
    ours = predictions[(predictions["sampler"] == sampler) & (predictions["budget"].astype(int) == int(budget))]
    if ours.empty:
        raise ValueError(f"no predictions for {sampler}@{budget}")
    ours = ours[["qid", "answer", "prediction"]].rename(columns={"answer": "target"})
    table = ours.merge(logged, on="qid", how="outer", indicator=True)
    both = table["_merge"] == "both"
    table["same_target"] = (table["target"] == table["lmms_target"]).where(both)
    table["agree"] = (table["prediction"] == table["lmms_prediction"]).where(both)
    table["in"] = table["_merge"].map({"both": "both", "left_only": "ours", "right_only": "lmms-eval"})
    return table.drop(columns="_merge").sort_values("qid").reset_index(drop=True)
