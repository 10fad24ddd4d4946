"""The scores each benchmark publishes, computed from per-question correctness.

Every benchmark reports plain accuracy somewhere, but each leads with its own aggregate, and a
result is only comparable with a paper's table in that form. The rows carry what the
aggregates need (:mod:`msjoe.adapters` sets ``category`` and ``duration_s``):

- ``videomme``: accuracy overall and per duration group; the group is the prefix of the
  category (``"long/Temporal Reasoning"`` -> ``long``), as lmms-eval's Video-MME task groups
  by the dataset's ``duration`` field.
- ``mlvu``: M-Avg, the mean over tasks of each task's accuracy (MLVU's headline number for
  the multiple-choice tasks; the category is the task), beside plain accuracy.
- ``longvideobench``: accuracy overall and per duration group. The groups are the benchmark's
  ``duration_group`` values 15, 60, 600 and 3600 (videos of 8-15 s, 15-60 s, 180-600 s and
  900-3600 s); the row keeps ``duration_s``, and the group is the smallest value that is at
  least that duration.
- ``lvbench``: accuracy overall and per question type; a question with several types
  (``"entity recognition,reasoning"``) counts under each, as LVBench's
  ``compute_accuracy.py`` does.
- ``None`` (the demo world, or any QA file): accuracy only.

``headline`` is the number a paper's table shows (M-Avg for MLVU, overall accuracy otherwise);
``breakdown`` holds it with every group score, keyed ``overall``, ``m_avg`` or the group name.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

__all__ = ["BENCHMARKS", "LONGVIDEOBENCH_GROUPS", "breakdown", "check_benchmark", "headline", "longvideobench_group"]

BENCHMARKS: tuple[str, ...] = ("videomme", "mlvu", "longvideobench", "lvbench")
#: LongVideoBench's ``duration_group`` values: the longest video (seconds) of each group.
LONGVIDEOBENCH_GROUPS: tuple[int, ...] = (15, 60, 600, 3600)


def check_benchmark(benchmark: str | None) -> None:
    """Raise ``ValueError`` unless ``benchmark`` is None or one of :data:`BENCHMARKS`."""
    if benchmark is not None and benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; allowed: None, {', '.join(BENCHMARKS)}")


def _mean(values: Sequence[bool]) -> float:
    return sum(bool(v) for v in values) / len(values) if values else math.nan


def _by_group(correct: Sequence[bool], groups: Sequence[Sequence[str]]) -> dict[str, float]:
    """Accuracy per group; a question in several groups counts in each."""
    per: dict[str, list[bool]] = defaultdict(list)
    for right, names in zip(correct, groups, strict=True):
        for name in names:
            per[name].append(bool(right))
    return {name: _mean(per[name]) for name in sorted(per)}


def longvideobench_group(duration_s: float | None) -> str:
    """LongVideoBench's duration group of a video, as a string (``"600"``).

    >>> [longvideobench_group(d) for d in (10.0, 59.0, 200.0, 1200.0, 5000.0)]
    ['15', '60', '600', '3600', '3600']
    """
    if duration_s is None or not math.isfinite(float(duration_s)):
        return "unknown"
    return str(next((g for g in LONGVIDEOBENCH_GROUPS if float(duration_s) <= g), LONGVIDEOBENCH_GROUPS[-1]))


def breakdown(
    benchmark: str | None,
    correct: Sequence[bool],
    categories: Sequence[str],
    durations_s: Sequence[float | None] | None = None,
) -> dict[str, float]:
    """The benchmark's published scores for one set of answers (fractions, not percent).

    >>> breakdown("videomme", [True, False, True], ["short/OCR", "long/OCR", "long/Count"])
    {'overall': 0.6666666666666666, 'long': 0.5, 'short': 1.0}
    >>> breakdown("mlvu", [True, True, True, False], ["plotQA", "plotQA", "plotQA", "count"])
    {'overall': 0.75, 'm_avg': 0.5}
    >>> breakdown("lvbench", [True, False], ["reasoning", "entity recognition,reasoning"])
    {'overall': 0.5, 'entity recognition': 0.0, 'reasoning': 0.5}
    """
    check_benchmark(benchmark)
    if len(correct) != len(categories):
        raise ValueError(f"{len(correct)} answers for {len(categories)} categories")
    out = {"overall": _mean(correct)}
    if benchmark == "videomme":
        out |= _by_group(correct, [[c.split("/", 1)[0]] for c in categories])
    elif benchmark == "mlvu":
        tasks = _by_group(correct, [[c] for c in categories])
        out["m_avg"] = sum(tasks.values()) / len(tasks) if tasks else math.nan
    elif benchmark == "longvideobench":
        if durations_s is None or len(durations_s) != len(correct):
            raise ValueError("longvideobench groups need one duration_s per answer")
        out |= _by_group(correct, [[longvideobench_group(d)] for d in durations_s])
    elif benchmark == "lvbench":
        out |= _by_group(correct, [[t.strip() for t in c.split(",") if t.strip()] for c in categories])
    return out


def headline(benchmark: str | None, scores: dict[str, float]) -> float:
    """The number a paper's table shows: M-Avg for MLVU, overall accuracy for the others."""
    check_benchmark(benchmark)
    return scores["m_avg"] if benchmark == "mlvu" else scores["overall"]
