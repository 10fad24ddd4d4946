"""Regenerate the metadata store from what the pipeline left on disk.

The store is only an index: ``dvc.lock`` says which stage produced which outputs (by md5), and
the ingest stage's parquet files list the videos and questions. ``rebuild`` reads them and
upserts, so it can run on an empty database (disaster recovery, a fresh PostgreSQL server) or
on a populated one (repair) and always ends with the same rows. Anything it cannot read is
skipped with a note in the report, never silently.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from msjoe.store.db import init_db, session_scope
from msjoe.store.dvc_lock import LockFileError, read_lock, stage_fields
from msjoe.store.hashing import plain, sha256_json
from msjoe.store.models import Video
from msjoe.store.writes import (
    VIDEO_COLUMNS,
    UpsertResult,
    prune_questions,
    record_pipeline_run,
    record_stage,
    upsert_questions,
    upsert_videos,
)

log = logging.getLogger(__name__)

#: Where the ingest stage writes its tables, relative to the repository root.
VIDEOS_PARQUET = Path("data/ingest/videos.parquet")
QUESTIONS_PARQUET = Path("data/ingest/questions.parquet")
#: Trigger recorded on the pipeline run that a rebuild creates.
REBUILD_TRIGGER = "rebuild"

_VIDEO_PARQUET_COLUMNS = ("video", "sha256", "n_frames", "fps", "duration_s", "width", "height")
_QUESTION_PARQUET_COLUMNS = ("qid", "video", "question", "options", "answer")


@dataclass
class RebuildReport:
    """What a rebuild read and wrote; ``notes`` lists everything skipped and why."""

    url: str
    root: str
    run_key: str | None = None
    stages: int = 0
    videos: UpsertResult = field(default_factory=UpsertResult)
    questions: UpsertResult = field(default_factory=UpsertResult)
    questions_removed: int = 0
    videos_skipped: int = 0
    questions_skipped: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output and CLI tables."""
        return {
            "url": self.url,
            "root": self.root,
            "run_key": self.run_key,
            "stages": self.stages,
            "videos": self.videos.as_dict(),
            "questions": self.questions.as_dict(),
            "questions_removed": self.questions_removed,
            "videos_skipped": self.videos_skipped,
            "questions_skipped": self.questions_skipped,
            "notes": list(self.notes),
        }


def git_rev(root: Path) -> str | None:
    """The commit checked out at ``root``, or None outside a git repository or without git."""
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--verify", "-q", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    rev = done.stdout.strip()
    return rev if done.returncode == 0 and rev else None


def _declared_metrics(root: Path) -> dict[str, list[str]]:
    """Metrics files per stage as declared in ``dvc.yaml`` (plain stages only)."""
    import yaml

    path = root / "dvc.yaml"
    if not path.is_file():
        return {}
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return {}
    found: dict[str, list[str]] = {}
    for name, stage in (spec.get("stages") or {}).items():
        if not isinstance(stage, Mapping):
            continue
        files: list[str] = []
        for item in stage.get("metrics") or []:
            if isinstance(item, str):
                files.append(item)
            elif isinstance(item, Mapping):
                files.extend(str(k) for k in item)
        if files:
            found[str(name)] = files
    return found


#: Run-dependent measurements of each stage (wall and CPU time, peak RSS, throughput), written by
#: the stages next to, not into, their DVC metrics (``stages/_common.py``: ``write_timings``).
TIMINGS_DIR = "reports/timings"


def timings_file(stage: str) -> str:
    """``reports/timings/<stage>.json``: indexed with the stage's metrics when it exists."""
    return f"{TIMINGS_DIR}/{stage}.json"


def _read_metrics(root: Path, files: list[str], notes: list[str]) -> dict[str, Any] | None:
    values: dict[str, Any] = {}
    for rel in files:
        path = root / rel
        if not path.is_file() or path.suffix.lower() != ".json":
            continue
        try:
            values[rel] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            notes.append(f"metrics file {rel} unreadable: {err}")
    return values or None


def _rebuild_stages(session: Session, root: Path, report: RebuildReport) -> None:
    """One pipeline run keyed by the lock file's hash, one stage row per locked stage."""
    try:
        lock = read_lock(root)
    except LockFileError as err:
        report.notes.append(f"{err}: no stage rows recorded")
        return
    if lock is None:
        report.notes.append("dvc.lock not found: no stage rows recorded")
        return

    report.run_key = f"{REBUILD_TRIGGER}:{sha256_json(lock)[:32]}"
    run_id = record_pipeline_run(
        session, report.run_key, status="completed", trigger=REBUILD_TRIGGER, git_rev=git_rev(root)
    )
    metrics_files = _declared_metrics(root)
    for name, entry in lock["stages"].items():
        if not isinstance(entry, Mapping):
            report.notes.append(f"dvc.lock stage {name!r} is not a mapping, skipped")
            continue
        record_stage(
            session,
            run_id,
            str(name),
            status="completed",
            **stage_fields(entry),
            metrics=_read_metrics(
                root, [*metrics_files.get(str(name), []), timings_file(str(name))], report.notes
            ),
        )
        report.stages += 1


def _read_parquet(path: Path, required: tuple[str, ...], report: RebuildReport) -> Any:
    """Read a parquet table or explain in the report why it was skipped (returns None)."""
    rel = path.as_posix()
    if not path.is_file():
        report.notes.append(f"{rel} not found: skipped")
        return None
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported, not raised
        report.notes.append(f"{rel} unreadable, skipped: {err}")
        return None
    absent = [c for c in required if c not in frame.columns]
    if absent:
        report.notes.append(f"{rel} lacks columns {absent}: skipped")
        return None
    return frame


def _rebuild_videos(session: Session, root: Path, report: RebuildReport) -> dict[str, str]:
    """Upsert the ingest videos; return ``{video path: sha256}`` for linking questions."""
    frame = _read_parquet(root / VIDEOS_PARQUET, _VIDEO_PARQUET_COLUMNS, report)
    if frame is None:
        return {}
    rows: list[dict[str, Any]] = []
    for raw in frame.to_dict(orient="records"):
        row = {c: plain(raw[c]) for c in _VIDEO_PARQUET_COLUMNS}
        if any(row[c] is None for c in _VIDEO_PARQUET_COLUMNS):
            report.videos_skipped += 1
            continue
        rows.append({**{c: row[c] for c in VIDEO_COLUMNS if c != "path"}, "path": row["video"]})
    if report.videos_skipped:
        report.notes.append(f"{report.videos_skipped} video rows with missing values skipped")
    report.videos = upsert_videos(session, rows)
    return {str(r["path"]): str(r["sha256"]) for r in rows}


def _rebuild_questions(
    session: Session, root: Path, dataset: str, by_path: dict[str, str], report: RebuildReport
) -> None:
    frame = _read_parquet(root / QUESTIONS_PARQUET, _QUESTION_PARQUET_COLUMNS, report)
    if frame is None:
        return
    # Videos indexed earlier (another ingest, a previous rebuild) can be linked by path too.
    known = {path: sha for sha, path in session.execute(select(Video.sha256, Video.path))}
    known.update(by_path)
    rows: list[dict[str, Any]] = []
    unlinked = 0
    for raw in frame.to_dict(orient="records"):
        sha = known.get(str(raw["video"]))
        if sha is None:
            unlinked += 1
            continue
        rows.append({**raw, "video_sha256": sha, "dataset": plain(raw.get("dataset")) or dataset})
    if unlinked:
        report.questions_skipped += unlinked
        report.notes.append(f"{unlinked} questions refer to videos not in the index: skipped")
    report.questions = upsert_questions(session, rows, dataset=dataset)
    for ds in sorted({r["dataset"] for r in rows} | {dataset}):
        keep = [str(r["qid"]) for r in rows if r["dataset"] == ds]
        report.questions_removed += prune_questions(session, ds, keep)


def rebuild(url: str | Engine, root: Path, *, dataset: str = "ingest") -> RebuildReport:
    """Regenerate the store's index of ``root``'s pipeline outputs; safe to run any number of times.

    Migrates the database to head, then in one transaction records a ``rebuild`` pipeline run
    keyed by the hash of ``dvc.lock`` with one stage row per locked stage (metrics from the
    JSON metrics files ``dvc.yaml`` declares), upserts ``data/ingest/videos.parquet`` and
    ``data/ingest/questions.parquet``, and removes questions of ``dataset`` that the current
    ingest output no longer contains. Questions without a ``dataset`` column are filed under
    ``dataset``.
    """
    root = Path(root).resolve()
    target = url if isinstance(url, Engine) else make_url(url)
    shown = target.url if isinstance(target, Engine) else target
    report = RebuildReport(url=shown.render_as_string(hide_password=True), root=str(root))
    init_db(url)
    with session_scope(url) as session:
        _rebuild_stages(session, root, report)
        by_path = _rebuild_videos(session, root, report)
        _rebuild_questions(session, root, dataset, by_path, report)
    for note in report.notes:
        log.info("rebuild: %s", note)
    return report
