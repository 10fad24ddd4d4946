"""Shared pieces of the benchmark adapters: reading records, field checks, option handling.

Every check here raises :class:`Reject` with a human-readable reason instead of letting a
``KeyError`` or ``TypeError`` escape, because one malformed annotation must become one
counted reject, never a crashed conversion of thousands of good rows.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

LETTERS = "ABCDEFGHIJ"
"""Option letters of our schema: at most 10 options."""

MIN_OPTIONS, MAX_OPTIONS = 2, 10

# "A. text", "A) text", "(A) text", "[A] text", "A: text". A bare "A text" is NOT a prefix:
# real options such as "A man opens the door" must keep their first word.
_PREFIX = re.compile(r"^\s*(?:\(([A-Ja-j])\)|\[([A-Ja-j])\]|([A-Ja-j])[.):])\s*")
# "(A) text" at a line start: options embedded in the question text (LVBench, lmms-eval MLVU).
_OPTION_MARK = re.compile(r"(?:^|\n)[ \t]*\(([A-J])\)[ \t]*")
_ANSWER = re.compile(r"^\s*[\(\[]?\s*([A-Ja-j])\s*[\)\]]?\s*[.:]?\s*$")


class Reject(Exception):
    """Raised for an annotation item that cannot become a row; the message is the reason."""


@dataclass(frozen=True)
class Outcome:
    """What one source item became: a row in our schema, or a reject reason.

    ``item`` names the source item in reports (its own id when it has one, else a
    position such as ``"1_plotQA.json#3"`` or ``"line 7"``) so a person can find it.
    ``warnings`` carry problems that did not cost the row (for example an evidence span
    that could not be parsed), so they are reported instead of silently lost.
    """

    item: str | int
    row: dict[str, Any] | None = None
    reason: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class BadRecord:
    """A record of a JSON Lines file that is not valid JSON (kept so it is counted)."""

    reason: str


def read_records(path: Path) -> list[tuple[str | int, Any]]:
    """Read a ``.json`` (a list), ``.jsonl`` or ``.parquet`` file into (item, record) pairs.

    A ``.json`` file must hold a list: anything else means the wrong file was given,
    which is a usage error (``ValueError``), not a malformed item. In JSON Lines each
    line is an item, so an unparseable line becomes a :class:`BadRecord` to reject.
    """
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # heavy import, only when a parquet file is read

        return list(enumerate(pq.read_table(path).to_pylist()))
    if suffix == ".jsonl":
        out: list[tuple[str | int, Any]] = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    out.append((f"line {number}", json.loads(line)))
                except json.JSONDecodeError as err:
                    out.append((f"line {number}", BadRecord(f"invalid JSON: {err.msg}")))
        return out
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a JSON list of items, got {type(data).__name__}")
    return list(enumerate(data))


def require_mapping(record: Any) -> dict[str, Any]:
    """Return the record if it is a JSON object, else reject it."""
    if isinstance(record, BadRecord):
        raise Reject(record.reason)
    if not isinstance(record, dict):
        raise Reject(f"item must be a JSON object, got {type(record).__name__}")
    return record


def require_str(record: dict[str, Any], key: str) -> str:
    """A required, non-empty string field (whitespace stripped)."""
    if key not in record or record[key] is None:
        raise Reject(f"missing field {key!r}")
    value = record[key]
    if not isinstance(value, str):
        raise Reject(f"field {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise Reject(f"field {key!r} is empty")
    return value.strip()


def require_id(record: dict[str, Any], key: str) -> str:
    """A required identifier: a non-empty string or an integer (some sources use ints)."""
    value = record.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return require_str(record, key)


def require_str_list(record: dict[str, Any], key: str) -> list[str]:
    """A required list of strings (each stripped; empty entries are rejected)."""
    if key not in record or record[key] is None:
        raise Reject(f"missing field {key!r}")
    value = record[key]
    if not isinstance(value, list | tuple):
        raise Reject(f"field {key!r} must be a list, got {type(value).__name__}")
    out: list[str] = []
    for index, entry in enumerate(value):
        if not isinstance(entry, str):
            raise Reject(f"{key}[{index}] must be a string, got {type(entry).__name__}")
        if not entry.strip():
            raise Reject(f"{key}[{index}] is empty")
        out.append(entry.strip())
    return out


def optional_seconds(record: dict[str, Any], key: str, scale: float = 1.0) -> float | None:
    """An optional non-negative duration, multiplied by ``scale`` (60 for minutes)."""
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Reject(f"field {key!r} must be a number, got {type(value).__name__}")
    seconds = float(value) * scale
    if not math.isfinite(seconds) or seconds < 0:
        raise Reject(f"field {key!r} must be a finite non-negative number, got {value!r}")
    return seconds


def strip_letter_prefixes(options: Sequence[str], *, required: bool) -> list[str]:
    """Remove "A." / "(A)" style prefixes when every option carries them in order.

    Prefixes are stripped only when all options are lettered A, B, C... in sequence;
    a lone match is more likely real text than a label. With ``required`` (sources that
    always letter their options, such as Video-MME) anything else is a reject, because
    a mis-lettered list means the answer letter may point at the wrong option.
    """
    matches = [_PREFIX.match(option) for option in options]
    letters = [
        (m.group(1) or m.group(2) or m.group(3)).upper() if m else None for m in matches
    ]
    if all(letters) and letters == list(LETTERS[: len(options)]):
        stripped = [
            option[m.end() :].strip() for option, m in zip(options, matches, strict=True) if m
        ]
        for index, text in enumerate(stripped):
            if not text:
                raise Reject(f"option {LETTERS[index]} is empty after its letter prefix")
        return stripped
    if required:
        raise Reject(
            "options must be lettered 'A. ...', 'B. ...' in order, got letters "
            f"{[letter or '-' for letter in letters]}"
        )
    return list(options)


def split_embedded_options(text: str) -> tuple[str, list[str]]:
    """Split ``"question\\n(A) x\\n(B) y"`` into the question and ``["x", "y"]``.

    Options must start at a line beginning and be lettered A, B, C... in order, so an
    "(A)" inside the question text itself is not mistaken for an option.
    """
    marks = list(_OPTION_MARK.finditer(text))
    if not marks:
        raise Reject("question has no embedded options ('\\n(A) ...')")
    letters = [mark.group(1) for mark in marks]
    if letters != list(LETTERS[: len(letters)]):
        raise Reject(f"embedded options must be lettered (A), (B), ... in order, got {letters}")
    question = text[: marks[0].start()].strip()
    if not question:
        raise Reject("question text before the options is empty")
    ends = [mark.start() for mark in marks[1:]] + [len(text)]
    options = [text[mark.end() : end].strip() for mark, end in zip(marks, ends, strict=True)]
    for letter, option in zip(letters, options, strict=True):
        if not option:
            raise Reject(f"option ({letter}) is empty")
    return question, options


def answer_letter(value: Any, n_options: int) -> str:
    """Normalise an answer given as a letter ("B", "b", "(B)", "B.") and range-check it."""
    if value is None:
        raise Reject("missing field 'answer'")
    if not isinstance(value, str):
        raise Reject(f"answer must be an option letter, got {type(value).__name__}")
    match = _ANSWER.match(value)
    if not match:
        raise Reject(f"answer {value!r} is not an option letter")
    letter = match.group(1).upper()
    if LETTERS.index(letter) >= n_options:
        raise Reject(f"answer {letter!r} is not among the {n_options} options")
    return letter


def relative_video(path: str) -> str:
    """Check that a video path stays inside the video root (relative, no '..')."""
    posix = PurePosixPath(path.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or not posix.parts:
        raise Reject(f"video path {path!r} must be relative to the video root")
    return posix.as_posix()


def make_row(
    *,
    qid: str,
    video: str,
    question: str,
    options: list[str],
    answer: str,
    category: str,
    split: str,
    duration_s: float | None = None,
    evidence: list[list[float]] | None = None,
) -> dict[str, Any]:
    """Build a row with the schema's key order; optional fields are omitted when unknown."""
    row: dict[str, Any] = {
        "qid": qid,
        "video": video,
        "question": question,
        "options": options,
        "answer": answer,
    }
    if duration_s is not None:
        row["duration_s"] = duration_s
    row["category"] = category
    row["split"] = split
    if evidence:
        row["evidence"] = evidence
    return row


def check_row(row: dict[str, Any]) -> None:
    """Final schema gate applied to every adapter's output (docs/design.md section 4)."""
    for key in ("qid", "video", "question", "answer", "category", "split"):
        if not isinstance(row.get(key), str) or not row[key]:
            raise Reject(f"row field {key!r} must be a non-empty string")
    options = row.get("options")
    if not isinstance(options, list) or not MIN_OPTIONS <= len(options) <= MAX_OPTIONS:
        count = len(options) if isinstance(options, list) else "no"
        raise Reject(f"needs {MIN_OPTIONS}-{MAX_OPTIONS} options, got {count}")
    if any(not isinstance(option, str) or not option for option in options):
        raise Reject("every option must be a non-empty string")
    if row["answer"] not in LETTERS[: len(options)]:
        raise Reject(f"answer {row['answer']!r} is not among the {len(options)} options")
    relative_video(row["video"])
    duration = row.get("duration_s")
    if duration is not None and (not isinstance(duration, float) or duration < 0):
        raise Reject("duration_s must be a non-negative float")
    for span in row.get("evidence", []):
        if len(span) != 2 or not 0 <= span[0] <= span[1]:
            raise Reject(f"evidence span {span!r} must be [start_s, end_s] with start <= end")


def guarded(item: str | int, build: Callable[..., Outcome], *args: Any) -> Outcome:
    """Call ``build(*args)``, turning a :class:`Reject` or a stray type error into a reject.

    The adapters check fields explicitly; this net only keeps the promise that a strange
    record (a shape nobody anticipated) is rejected with a reason instead of a crash.
    """
    try:
        return build(*args)
    except Reject as err:
        return Outcome(item=item, reason=str(err))
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as err:
        return Outcome(item=item, reason=f"malformed item ({type(err).__name__}: {err})")
