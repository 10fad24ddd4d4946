"""Convert public long-video QA benchmarks' annotation files into our QA JSONL schema.

Our schema (docs/design.md section 4), one object per question: ``qid``, ``video`` (relative to
a video root), ``question``, ``options`` (2-10 texts without "A." / "(A)" labels),
``answer`` (a letter), optional ``duration_s``, ``category``, ``split``, ``evidence``.
With every benchmark in this shape, evaluation, validation and the sampler never learn
where a question came from.

Formats (one module each; their docstrings record the per-benchmark decisions). Each reads
both distributions people have, the benchmark's own release and the dataset files
lmms-eval's task reads, and recognises which one an item comes in by its fields:

- ``videomme``: lmms-eval's flat test rows (parquet / json) or the official per-video JSON
  with a ``questions`` list; category ``"{short|medium|long}/{task}"``.
- ``mlvu``: the official dev json files (one file or the json folder; answer as option text)
  or lmms-eval's dev items (options embedded as "(A) ...", answer letter, task code).
- ``longvideobench``: the official ``lvb_val.json`` (``candidates``) or lmms-eval's parquet
  (``option0``..``option4``).
- ``lvbench``: the official ``video_info.meta.jsonl`` (one line per video with its ``qa``)
  or lmms-eval's flat rows (``video_path``, options embedded or listed).

Rules shared by all formats: a malformed item (missing field, wrong type, answer not among
the options, a duplicate qid, ...) becomes a reject with its reason; nothing is dropped
silently and ``converted + len(rejected) == total``. qids are prefixed with the format name
so benchmarks can share one table. A missing input or a top-level file of the wrong kind
(for example a JSON object where a list of items is expected) is a usage error and raises.

Field layouts were checked against the files that read and score them:
lmms-eval (``EvolvingLMMs-Lab/lmms-eval``) ``lmms_eval/tasks/videomme/utils.py`` and
``videomme.yaml``; ``lmms_eval/tasks/mlvu/utils.py`` and ``mlvu_dev.yaml``;
``lmms_eval/tasks/longvideobench/utils.py``; ``lmms_eval/tasks/lvbench/utils.py`` and
``lvbench.yaml``; the benchmarks' own repositories: ``JUNJIE99/MLVU``
``videochat2/choice_bench.py`` (answer text -> letter, task folders),
``longvideobench/LongVideoBench`` ``longvideobench/longvideobench_dataset.py``
(``candidates``, ``correct_choice``, ``video_path``), ``THUDM/LVBench``
``lvbench/metrics/compute_accuracy.py`` and ``scripts/construct_random_answers.py``
(``key``, ``qa``, ``uid``, ``answer``, ``question_type`` list); and the Video-MME dataset
card (features ``video_id`` ... ``answer``) plus published sample rows of each format.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from msjoe.adapters import longvideobench, lvbench, mlvu, videomme
from msjoe.adapters._common import Outcome, Reject, check_row

__all__ = ["FORMATS", "ConvertReport", "convert", "convert_file", "rejects_path"]

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("videomme", "mlvu", "longvideobench", "lvbench")

_READERS: dict[str, Callable[[Path], Iterator[Outcome]]] = {
    "videomme": videomme.outcomes,
    "mlvu": mlvu.outcomes,
    "longvideobench": longvideobench.outcomes,
    "lvbench": lvbench.outcomes,
}


@dataclass
class ConvertReport:
    """Counts of one conversion, kept so nothing is lost without a trace.

    ``rejected`` holds ``{"item": <source id or position>, "reason": str}`` per rejected
    item; ``warnings`` the same for rows kept despite a problem (for example LVBench
    evidence spans that could not be parsed). ``converted + len(rejected) == total``.
    """

    format: str
    total: int
    converted: int
    rejected: list[dict[str, Any]]
    warnings: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (for metrics files and logs)."""
        return asdict(self)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown benchmark format {fmt!r}; allowed: {', '.join(FORMATS)}")


def convert(fmt: str, input_path: Path) -> tuple[list[dict[str, Any]], ConvertReport]:
    """Convert one benchmark's annotations into rows of our schema (no files written).

    Every source item ends up either as a row or in ``report.rejected`` with a reason;
    rows are also passed through the schema gate, and a repeated qid is rejected so qids
    stay unique. Raises ``ValueError`` for an unknown format and ``FileNotFoundError`` for
    a missing input.
    """
    _check_format(fmt)
    input_path = Path(input_path)
    if not input_path.exists():
        raise FileNotFoundError(f"{fmt} annotations not found: {input_path}")
    rows: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    warnings: list[dict[str, Any]] = []
    first_item: dict[str, str | int] = {}
    total = 0
    for outcome in _READERS[fmt](input_path):
        total += 1
        warnings.extend({"item": outcome.item, "reason": text} for text in outcome.warnings)
        reason = outcome.reason
        if reason is None and outcome.row is not None:
            try:
                check_row(outcome.row)
            except Reject as err:
                reason = str(err)
            else:
                qid = outcome.row["qid"]
                if qid in first_item:
                    reason = f"duplicate qid {qid!r} (first used by item {first_item[qid]!r})"
                else:
                    first_item[qid] = outcome.item
                    rows.append(outcome.row)
                    continue
        rejected.append({"item": outcome.item, "reason": reason or "no row produced"})
    report = ConvertReport(
        format=fmt, total=total, converted=len(rows), rejected=rejected, warnings=warnings
    )
    logger.info(
        "%s: %d items -> %d rows, %d rejected, %d warnings (%s)",
        fmt, total, len(rows), len(rejected), len(warnings), input_path,
    )
    for entry in rejected:
        logger.debug("%s reject %r: %s", fmt, entry["item"], entry["reason"])
    return rows, report


def rejects_path(out_path: Path) -> Path:
    """Where :func:`convert_file` puts the rejects of ``out_path``: ``<stem>.rejects.jsonl``."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}.rejects.jsonl")


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Write JSON Lines atomically, so a crash never leaves a half file for DVC to cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
    )
    try:
        with handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def convert_file(fmt: str, input_path: Path, out_path: Path) -> ConvertReport:
    """Convert and write ``out_path`` (JSONL), plus ``<stem>.rejects.jsonl`` when any reject.

    A rejects file left by an earlier run is removed when this run has none, so the
    files on disk always describe the latest conversion.
    """
    rows, report = convert(fmt, input_path)
    out_path = Path(out_path)
    _write_jsonl(out_path, rows)
    rejects = rejects_path(out_path)
    if report.rejected:
        _write_jsonl(rejects, report.rejected)
    else:
        rejects.unlink(missing_ok=True)
    return report
