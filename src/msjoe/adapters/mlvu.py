"""MLVU dev multiple-choice questions -> our QA rows, from either distribution (recognised
per item).

**Official** json files (``MLVU/json/<n>_<task>.json``): each file is a list of ``{video, duration, question, candidates, answer, question_type}``
where ``answer`` is the *text* of the right candidate and the video lives in the folder
named like the file: ``MLVU/video/1_plotQA/movie101_66.mp4`` -> ``"1_plotQA/movie101_66.mp4"``
relative to ``MLVU/video``. The answer letter is the position of the candidate equal to
the answer text, as MLVU's own ``choice_bench.py`` computes it (``c == answer``).

``input_path`` is one json file or the json folder (every ``*.json``, in name order). The
open-ended tasks (``8_sub_scene``, ``9_summary``) have no candidates: their items are
rejected with that reason rather than skipped, so the counts stay honest.
Decisions: ``category`` is ``question_type`` ("plotQA", "findNeedle", ...), ``duration_s``
is ``duration`` (seconds), ``split`` is ``"dev"``, and the qid is
``"mlvu-{file stem}-{index in file}"`` because MLVU items carry no id of their own.

**lmms-eval** (``sy1998/MLVU_dev``, read by ``lmms_eval/tasks/mlvu/utils.py``): items with
``video_name`` (relative to the video folder), ``question`` with the options embedded as
``"(A) ..."`` lines, ``answer`` as the letter, ``task_type`` as a short code and
``question_id``. The code becomes the official ``question_type`` name
(:data:`LMMS_EVAL_TASKS`, so both forms give the same categories and the same m-avg groups;
an unknown code is kept as is), ``duration_s`` is ``duration`` when present, and the qid is
``"mlvu-{question_id}"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from msjoe.adapters._common import (
    LETTERS,
    Outcome,
    Reject,
    answer_letter,
    guarded,
    make_row,
    optional_seconds,
    read_records,
    relative_video,
    require_id,
    require_mapping,
    require_str,
    require_str_list,
    split_embedded_options,
    strip_letter_prefixes,
)

PREFIX = "mlvu"
SPLIT = "dev"
#: lmms-eval's MLVU task codes -> the official ``question_type`` names.
LMMS_EVAL_TASKS = {
    "PQA": "plotQA",
    "NQA": "findNeedle",
    "ER": "ego",
    "AC": "count",
    "AO": "order",
    "AR": "anomaly_reco",
    "TR": "topic_reasoning",
    "SSC": "subPlot",
    "VS": "summary",
}


def outcomes(input_path: Path) -> Iterator[Outcome]:
    """Convert one MLVU file (json, or lmms-eval's JSONL / parquet), or every ``*.json`` file of
    a folder."""
    if input_path.is_dir():
        files = sorted(path for path in input_path.glob("*.json") if path.is_file())
        if not files:
            raise FileNotFoundError(f"no MLVU *.json files in {input_path}")
    else:
        files = [input_path]
    for path in files:
        for index, record in read_records(path):
            name = record.get("question_id") if isinstance(record, dict) else None
            item = str(name) if isinstance(name, str | int) and str(name) else f"{path.name}#{index}"
            yield guarded(item, _convert, item, path.stem, index, record)


def _convert(item: str, task_folder: str, index: int | str, record: Any) -> Outcome:
    record = require_mapping(record)
    if "candidates" not in record and "video_name" in record:
        return _convert_lmms_eval(item, record)
    if "candidates" not in record:
        raise Reject("missing field 'candidates' (open-ended task, not multiple choice)")
    candidates = require_str_list(record, "candidates")
    answer_text = require_str(record, "answer")
    options = strip_letter_prefixes(candidates, required=False)
    position = _answer_position(answer_text, candidates, options)
    video = require_str(record, "video")
    if not video.startswith(f"{task_folder}/"):
        video = f"{task_folder}/{video}"
    row = make_row(
        qid=f"{PREFIX}-{task_folder}-{index}",
        video=relative_video(video),
        question=require_str(record, "question"),
        options=options,
        answer=LETTERS[position] if position < len(LETTERS) else "?",
        duration_s=optional_seconds(record, "duration"),
        category=require_str(record, "question_type"),
        split=SPLIT,
    )
    return Outcome(item=item, row=row)


def _answer_position(answer: str, candidates: list[str], options: list[str]) -> int:
    """Index of the one candidate equal to the answer text (raw, else prefix-stripped)."""
    for texts in (candidates, options):
        hits = [index for index, text in enumerate(texts) if text == answer]
        if len(hits) > 1:
            raise Reject(f"answer {answer!r} matches {len(hits)} candidates (ambiguous)")
        if hits:
            return hits[0]
    raise Reject(f"answer {answer!r} is not among the candidates")


def _convert_lmms_eval(item: str, record: dict[str, Any]) -> Outcome:
    question, options = split_embedded_options(require_str(record, "question"))
    task = require_str(record, "task_type")
    row = make_row(
        qid=f"{PREFIX}-{require_id(record, 'question_id')}",
        video=relative_video(require_str(record, "video_name")),
        question=question,
        options=options,
        answer=answer_letter(record.get("answer"), len(options)),
        duration_s=optional_seconds(record, "duration"),
        category=LMMS_EVAL_TASKS.get(task, task),
        split=SPLIT,
    )
    return Outcome(item=item, row=row)
