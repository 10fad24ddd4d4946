"""Ingest a QA JSONL file and the videos it references into validated tables.

Every non-blank input line ends up either in `questions.parquet` or in `rejects.jsonl` with a
reason (accepted + rejected = lines); every referenced video is probed with decord in worker
processes (a decoder crash rejects that video, not the run) and either lands in
`videos.parquet` or is rejected together with the questions that need it.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from msjoe.config import from_mapping
from msjoe.probe import probe_many
from msjoe.validation import (
    EVIDENCE_TOLERANCE_S,
    MAX_OPTION_LEN,
    OPTION_LETTERS,
    evidence_checks,
    failing_rows,
    question_checks,
    video_checks,
)
from msjoe.video import VideoError, resolve_video

log = logging.getLogger(__name__)

QUESTION_COLUMNS = ["qid", "video", "question", "options", "answer", "duration_s", "category", "split", "evidence"]
_RAW_LIMIT = 10_000


@dataclass(frozen=True)
class IngestConfig:
    """The ``ingest`` params section: the share of QA lines that may be rejected before the
    stage fails, the video-probing worker processes, and how long one probe may take."""

    max_reject_fraction: float = 1.0
    workers: int = 2
    probe_timeout_s: float = 300.0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> IngestConfig:
        """From a params section; unknown keys are an error."""
        return from_mapping(cls, values, "ingest")


@dataclass
class IngestReport:
    """Counts written to `reports/ingest.json` (a DVC metric)."""

    lines: int = 0
    accepted: int = 0
    rejected: int = 0
    reject_fraction: float = 0.0
    videos_referenced: int = 0
    videos_accepted: int = 0
    videos_rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TooManyRejects(RuntimeError):
    """The reject fraction exceeded the threshold; outputs were still written for inspection."""

    def __init__(self, report: IngestReport, threshold: float) -> None:
        super().__init__(
            f"{report.rejected} of {report.lines} QA lines rejected ({report.reject_fraction:.1%}), "
            f"more than the allowed {threshold:.1%}; see rejects.jsonl for the reasons"
        )
        self.report = report


def ingest(
    qa_path: Path,
    video_root: Path,
    out_dir: Path,
    max_reject_fraction: float = 1.0,
    workers: int = 2,
    probe_timeout_s: float = 300.0,
    progress: bool = True,
) -> IngestReport:
    """Validate `qa_path` and its videos under `video_root`; write tables and rejects to `out_dir`.

    Raises `TooManyRejects` (after writing everything) when rejects exceed `max_reject_fraction`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    records, rejects = read_qa_lines(qa_path)
    n_lines = len(records) + len(rejects)

    questions = _question_frame(records)
    failures = failing_rows("questions", questions, question_checks(), key="line")
    for line, reasons in failures.items():
        rejects.append(_question_reject(records[line], "; ".join(dict.fromkeys(reasons))))
    questions = questions[~questions["line"].isin(failures.keys())]

    videos, video_rejects = _probe_videos(sorted(set(questions["video"])), video_root, workers, probe_timeout_s, progress)
    video_failures = failing_rows("videos", videos, video_checks(), key="video") if not videos.empty else {}
    for name, reasons in video_failures.items():
        video_rejects[name] = "; ".join(dict.fromkeys(reasons))
    videos = videos[~videos["video"].isin(video_rejects.keys())] if not videos.empty else videos

    bad_video = questions["video"].isin(video_rejects.keys())
    for line, name in zip(questions.loc[bad_video, "line"], questions.loc[bad_video, "video"], strict=True):
        rejects.append(_question_reject(records[line], f"video rejected: {video_rejects[name]}"))
    questions = questions[~bad_video]

    questions = questions.merge(videos[["video", "sha256", "duration_s"]], on="video", suffixes=("", "_video"))
    questions["video_end_s"] = questions["duration_s_video"] + EVIDENCE_TOLERANCE_S
    late = failing_rows("evidence", questions, evidence_checks(), key="line")
    for line, reasons in late.items():
        rejects.append(_question_reject(records[line], "; ".join(reasons)))
    questions = questions[~questions["line"].isin(late.keys())].copy()
    questions["duration_s"] = questions["duration_s"].where(questions["duration_s"].notna(), questions["duration_s_video"])

    accepted = questions.sort_values("line")[["line", *QUESTION_COLUMNS, "sha256"]].reset_index(drop=True)
    accepted["duration_s"] = accepted["duration_s"].astype(float)
    used = set(accepted["video"])
    videos = videos[videos["video"].isin(used)].sort_values("video").reset_index(drop=True)
    _write_outputs(out_dir, accepted, videos, rejects, video_rejects)

    reasons = Counter(_reason_kind(r["reason"]) for r in rejects)
    report = IngestReport(
        lines=n_lines,
        accepted=len(accepted),
        rejected=len(rejects),
        reject_fraction=(len(rejects) / n_lines) if n_lines else 0.0,
        videos_referenced=len(videos) + len(video_rejects),
        videos_accepted=len(videos),
        videos_rejected=len(video_rejects),
        reasons=dict(sorted(reasons.items())),
        splits={str(k): int(v) for k, v in accepted["split"].fillna("none").value_counts().sort_index().items()},
    )
    assert report.accepted + report.rejected == report.lines, "ingest lost or duplicated a line"
    log.info("ingest: %d accepted, %d rejected of %d lines", report.accepted, report.rejected, report.lines)
    if report.reject_fraction > max_reject_fraction:
        raise TooManyRejects(report, max_reject_fraction)
    return report


def read_qa_lines(path: Path) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]:
    """Parse JSONL line by line; blank lines are skipped, every other line is a record or a reject.

    Returns `{line_number: {"line", "raw", "record"}}` and the rejects of lines that are not JSON objects.
    """
    records: dict[int, dict[str, Any]] = {}
    rejects: list[dict[str, Any]] = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            entry = {"line": number, "raw": text[:_RAW_LIMIT]}
            try:
                decoded = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                rejects.append({**entry, "kind": "question", "reason": f"invalid UTF-8 at byte {exc.start}"})
                continue
            try:
                record = json.loads(decoded.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                rejects.append({**entry, "kind": "question", "reason": f"malformed JSON: {exc.msg} (column {exc.colno})"})
                continue
            if not isinstance(record, dict):
                rejects.append(
                    {**entry, "kind": "question", "reason": f"not a JSON object (got {type(record).__name__})"}
                )
                continue
            records[number] = {**entry, "record": record}
    return records, rejects


def _question_frame(records: dict[int, dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for line, entry in records.items():
        record = entry["record"]
        options = record.get("options")
        answer = record.get("answer")
        options_ok = isinstance(options, list) and all(
            isinstance(o, str) and 0 < len(o.strip()) and len(o) <= MAX_OPTION_LEN for o in options
        )
        rows.append(
            {
                "line": line,
                **{c: record.get(c) for c in QUESTION_COLUMNS},
                "qid_len": _length(record.get("qid")),
                "question_len": _length(record.get("question")),
                "video_len": _length(record.get("video")),
                "label_len": max(_length(record.get("category")) or 0, _length(record.get("split")) or 0),
                "options_ok": options_ok,
                "n_options": len(options) if isinstance(options, list) else None,
                "answer_index": OPTION_LETTERS.index(answer)
                if isinstance(answer, str) and len(answer) == 1 and answer in OPTION_LETTERS
                else None,
                "duration_ok": _duration_ok(record.get("duration_s")),
                "evidence_ok": _evidence_ok(record.get("evidence")),
                "evidence_end_s": _evidence_end(record.get("evidence")),
            }
        )
    frame = pd.DataFrame(rows, columns=["line", *QUESTION_COLUMNS, "qid_len", "question_len", "video_len",
                                        "label_len", "options_ok", "n_options", "answer_index", "duration_ok",
                                        "evidence_ok", "evidence_end_s"])
    for column in ("qid_len", "question_len", "video_len", "n_options", "answer_index"):
        frame[column] = pd.array(frame[column], dtype="Int64")
    for column in ("qid", "video", "question", "answer", "category", "split", "options", "evidence", "duration_s"):
        frame[column] = frame[column].astype(object)
    frame["evidence_end_s"] = frame["evidence_end_s"].astype(float)
    return frame


def _probe_videos(
    names: list[str], root: Path, workers: int, timeout_s: float, progress: bool
) -> tuple[pd.DataFrame, dict[str, str]]:
    from tqdm import tqdm

    rejects: dict[str, str] = {}
    jobs = []
    for name in names:
        try:
            jobs.append((name, resolve_video(root, name)))
        except VideoError as exc:
            rejects[name] = str(exc)
    rows = []
    results = probe_many(jobs, workers=workers, timeout_s=timeout_s)
    for result in tqdm(results, total=len(jobs), desc="probe videos", unit="video", disable=not progress):
        if result.error is not None:
            rejects[result.key] = _relative_reason(result.error, root)
            continue
        assert result.info is not None
        rows.append({"video": result.key, "sha256": result.sha256, **result.info.to_dict()})
    frame = pd.DataFrame(rows, columns=["video", "sha256", "n_frames", "fps", "duration_s", "width", "height"])
    return frame, rejects


def _write_outputs(
    out_dir: Path,
    questions: pd.DataFrame,
    videos: pd.DataFrame,
    rejects: list[dict[str, Any]],
    video_rejects: dict[str, str],
) -> None:
    questions.to_parquet(out_dir / "questions.parquet", index=False)
    videos.to_parquet(out_dir / "videos.parquet", index=False)
    rows = [{"kind": "video", "video": name, "reason": reason} for name, reason in sorted(video_rejects.items())]
    rows += sorted(rejects, key=lambda r: r["line"])
    with open(out_dir / "rejects.jsonl", "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def _question_reject(entry: dict[str, Any], reason: str) -> dict[str, Any]:
    record = entry["record"]
    qid = record.get("qid")
    return {
        "line": entry["line"],
        "kind": "question",
        "qid": qid if isinstance(qid, str) else None,
        "reason": reason,
        "raw": entry["raw"],
    }


def _reason_kind(reason: str) -> str:
    """Aggregate key for the metrics: the reason without item-specific details."""
    head = reason.split(":", 1)[0] if reason.startswith(("malformed JSON", "invalid UTF-8", "video rejected")) else reason
    return head.split(" (")[0][:80]


def _relative_reason(reason: str, root: Path) -> str:
    return reason.replace(str(root.resolve()) + "/", "")


def _length(value: Any) -> int | None:
    return len(value) if isinstance(value, str) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _duration_ok(value: Any) -> bool:
    return value is None or (_is_number(value) and value > 0)


def _evidence_ok(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, list):
        return False
    return all(
        isinstance(span, list) and len(span) == 2 and all(map(_is_number, span)) and 0 <= span[0] <= span[1]
        for span in value
    )


def _evidence_end(value: Any) -> float | None:
    if not _evidence_ok(value) or not value:
        return None
    return float(max(span[1] for span in value))
