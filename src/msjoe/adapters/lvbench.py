"""LVBench -> QA rows, from either distribution (recognised per line/row).

**Official** ``video_info.meta.jsonl`` (``THUDM/LVBench`` on the Hugging Face hub), one line per
video: ``key`` (YouTube id; the downloaded file is ``{key}.mp4``), ``type``
(video genre), ``video_info`` (``duration_minutes``, ``fps``, ``resolution``) and ``qa``, a
list of ``{uid, question, answer, question_type, time_reference}``. The options are
embedded in the question text, one per line: ``"What year ...?\\n(A) 1636\\n(B) 1366..."``;
``answer`` is the letter; ``question_type`` is a list of abilities (a question may test
several, and LVBench's ``compute_accuracy.py`` counts it under each);
``time_reference`` is the span holding the answer, ``"mm:ss-mm:ss"`` or ``"hh:mm:ss-..."``.

Decisions: ``category`` is the ``question_type`` list joined with ``","``
("key information retrieval" or "entity recognition,reasoning"); ``duration_s`` is
``duration_minutes * 60``; ``evidence`` is the parsed ``time_reference`` (a span that
cannot be parsed is a *warning*: the question stays, the evidence is left out);
``split`` is ``"test"``; the qid is ``"lvbench-{uid}"``. A line that is not valid JSON or
lacks ``key``/``qa`` is one reject (its questions cannot be counted individually).

**lmms-eval** (``lmms-eval/LVBench``, read by ``lmms_eval/tasks/lvbench/utils.py``): one flat row
per question, ``video_path`` (relative to the video folder), ``question`` with the options
either embedded as above or in an ``options`` list, the ``answer`` letter, and the official
per-question fields (``uid``, ``question_type``, ``time_reference``) carried along. A row
without ``qa`` is read in this form; the same decisions apply (the qid needs ``uid``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from msjoe.adapters._common import (
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

PREFIX = "lvbench"
SPLIT = "test"

_TIME = r"\d+(?::\d{1,2}){0,2}(?:\.\d+)?"
_SPAN = re.compile(rf"^\s*({_TIME})\s*[-\u2013~]\s*({_TIME})\s*$")


def outcomes(input_path: Path) -> Iterator[Outcome]:
    """Convert every question of every video line of ``video_info.meta.jsonl``, or every
    flat question row of lmms-eval's copy (JSON / JSONL / parquet)."""
    for item, record in read_records(input_path):
        if isinstance(record, dict) and "qa" not in record and "question" in record:
            name = _flat_item(item, record)
            yield guarded(name, _convert_flat, name, record)
            continue
        try:
            video, duration_s, qas = _video_fields(record)
        except Reject as err:
            yield Outcome(item=item, reason=str(err))
            continue
        for index, qa in enumerate(qas):
            uid = qa.get("uid") if isinstance(qa, dict) else None
            qa_item = str(uid) if isinstance(uid, str | int) and str(uid) else f"{item} qa[{index}]"
            yield guarded(qa_item, _convert, qa_item, qa, video, duration_s)


def _video_fields(record: Any) -> tuple[str, float | None, list[Any]]:
    record = require_mapping(record)
    video = relative_video(f"{require_str(record, 'key')}.mp4")
    info = record.get("video_info") or {}
    if not isinstance(info, dict):
        raise Reject(f"video_info must be an object, got {type(info).__name__}")
    duration_s = optional_seconds(info, "duration_minutes", scale=60.0)
    qas = record.get("qa")
    if not isinstance(qas, list):
        if qas is None:
            raise Reject("missing field 'qa' (list of questions)")
        raise Reject(f"field 'qa' must be a list, got {type(qas).__name__}")
    return video, duration_s, qas


def _seconds(stamp: str) -> float:
    total = 0.0
    for part in stamp.split(":"):
        total = total * 60 + float(part)
    return total


def parse_time_reference(value: str) -> list[list[float]]:
    """Parse ``"00:15-00:19"`` (also ``h:mm:ss``, several spans split by ``,`` / ``;``).

    Raises ``ValueError`` when any span is unreadable or ends before it starts.
    """
    spans: list[list[float]] = []
    for chunk in re.split(r"[,;]", value):
        if not chunk.strip():
            continue
        match = _SPAN.match(chunk)
        if not match:
            raise ValueError(f"unreadable span {chunk.strip()!r}")
        start, end = _seconds(match.group(1)), _seconds(match.group(2))
        if end < start:
            raise ValueError(f"span {chunk.strip()!r} ends before it starts")
        spans.append([start, end])
    return spans


def _category(qa: dict[str, Any]) -> str:
    kinds = qa.get("question_type")
    if isinstance(kinds, str):
        kinds = [kinds]
    if not isinstance(kinds, list) or not kinds:
        if kinds is None:
            raise Reject("missing field 'question_type'")
        raise Reject("question_type must be a non-empty list")
    if not all(isinstance(kind, str) and kind.strip() for kind in kinds):
        raise Reject("question_type entries must be non-empty strings")
    return ",".join(kind.strip() for kind in kinds)


def _flat_item(item: str | int, record: dict[str, Any]) -> str | int:
    uid = record.get("uid")
    return str(uid) if isinstance(uid, str | int) and str(uid) else item


def _convert_flat(item: str | int, record: dict[str, Any]) -> Outcome:
    """One lmms-eval row: the video from ``video_path`` (or ``key``), the rest as official."""
    if record.get("video_path") is not None:
        video = relative_video(require_str(record, "video_path"))
    else:
        video = relative_video(f"{require_str(record, 'key')}.mp4")
    info = record.get("video_info")
    duration_s = optional_seconds(info, "duration_minutes", scale=60.0) if isinstance(info, dict) else None
    return _convert(item, record, video, duration_s)


def _question_and_options(qa: dict[str, Any]) -> tuple[str, list[str]]:
    """Options from an ``options`` list when there is one (lmms-eval), else from the text."""
    if qa.get("options") is None:
        return split_embedded_options(require_str(qa, "question"))
    options = strip_letter_prefixes(require_str_list(qa, "options"), required=False)
    return require_str(qa, "question"), options


def _convert(item: str | int, qa: Any, video: str, duration_s: float | None) -> Outcome:
    qa = require_mapping(qa)
    uid = require_id(qa, "uid")
    question, options = _question_and_options(qa)
    warnings: list[str] = []
    evidence: list[list[float]] = []
    reference = qa.get("time_reference")
    if isinstance(reference, str) and reference.strip():
        try:
            evidence = parse_time_reference(reference)
        except ValueError as err:
            warnings.append(f"time_reference {reference!r} not used as evidence: {err}")
    elif reference not in (None, ""):
        warnings.append(f"time_reference of type {type(reference).__name__} not used as evidence")
    row = make_row(
        qid=f"{PREFIX}-{uid}",
        video=video,
        question=question,
        options=options,
        answer=answer_letter(qa.get("answer"), len(options)),
        duration_s=duration_s,
        category=_category(qa),
        split=SPLIT,
        evidence=evidence,
    )
    return Outcome(item=item, row=row, warnings=tuple(warnings))
