"""The promotion gate: package a new release only when it beats the current one.

Retraining on a schedule produces a new candidate every time, but serving should change only
for a real improvement: a candidate is promoted when its score on the gate metric beats the
current release's by at least ``margin``. The candidate is what the package stage would release
(the best of its ``--candidate`` rows by ``package.metric`` at ``package.budget``, chosen by the
stage's own rule), so the gate never judges one row while the service runs another. The
decision is a pure function of numbers so it can be read, tested and audited apart from Prefect
and the store.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: Float tolerance so that 0.66 - 0.65 counts as a 0.01 improvement.
_EPS = 1e-9


def should_promote(candidate: float, current: float | None, margin: float, direction: str = "max") -> bool:
    """True when ``candidate`` strictly beats ``current`` by at least ``margin``.

    ``direction`` says which way is better (``max``: higher, ``min``: lower). With nothing
    released yet (``current`` None) any real score is promoted. A NaN candidate (a broken
    evaluation) is never promoted.

    >>> should_promote(0.62, None, 0.01)
    True
    >>> should_promote(0.66, 0.65, 0.01)
    True
    >>> should_promote(0.655, 0.65, 0.01)
    False
    >>> should_promote(0.65, 0.65, 0.0)
    False
    >>> should_promote(0.30, 0.35, 0.01, direction="min")
    True
    """
    if math.isnan(margin) or margin < 0:
        raise ValueError(f"margin must be a non-negative number, got {margin!r}")
    if direction not in ("max", "min"):
        raise ValueError(f"direction must be 'max' or 'min', got {direction!r}")
    if math.isnan(candidate):
        return False
    if current is None:
        return True
    if math.isnan(current):
        raise ValueError("the current release's score is NaN: fix the stored evaluation first")
    gain = (candidate - current) if direction == "max" else (current - candidate)
    return gain > _EPS and gain >= margin - _EPS


@dataclass(frozen=True)
class GateConfig:
    """What the gate compares: ``metric`` at ``budget`` of the row the package stage would release
    (its best candidate by ``direction``), which must beat the current release by ``margin``.

    ``metric``, ``budget`` and ``direction`` are the package stage's own (params.yaml
    ``package``), so the gate can never judge one row while the stage serves another.
    """

    metric: str = "accuracy"
    budget: int = 8
    direction: str = "max"
    margin: float = 0.01


def gate_config(params: Mapping[str, Any] | None) -> GateConfig:
    """The gate settings: params.yaml's ``package`` metric, budget and direction (how the stage
    picks its winner) and ``package.gate.margin``.

    Hyperparameters live in params.yaml, not in the flow's parameters, so a run's gate is
    versioned with the commit; a misspelt key is an error, not a silent default.
    """
    from msjoe.package import PackageConfig

    package = PackageConfig.from_mapping(((params or {}).get("package")) or {})
    unknown = sorted(set(package.gate) - {"margin"})
    if unknown:
        raise ValueError(
            f"unknown package.gate parameters: {unknown} (the gate scores what the package stage "
            "releases, by package.metric at package.budget; it takes only a margin)"
        )
    return GateConfig(package.metric, package.budget, package.direction, float(package.gate.get("margin", 0.01)))


def candidate_labels(cmd: str | None) -> list[str]:
    """The labels of the package stage's ``--candidate LABEL=...`` options: the rows it may release.

    >>> candidate_labels("python stages/package.py --candidate aks=models/mllm --candidate=joint=models/j,s.pt")
    ['aks', 'joint']
    """
    words = shlex.split(cmd or "")
    values = []
    for i, word in enumerate(words):
        if word == "--candidate" and i + 1 < len(words):
            values.append(words[i + 1])
        elif word.startswith("--candidate="):
            values.append(word.removeprefix("--candidate="))
    return [value.partition("=")[0] for value in values]


def candidate_score(
    report: Mapping[str, Any], cfg: GateConfig, labels: Sequence[str]
) -> tuple[float | None, str | None, str]:
    """``(score, sampler, problem)``: the row among ``labels`` the package stage would release.

    The winner is chosen exactly as the stage chooses it (:func:`msjoe.package.select_winner`).
    ``problem`` is empty when a score was found, else says what is missing (so the gate can
    explain why it did not promote).
    """
    from msjoe.package import select_winner

    if not labels:
        return None, None, "the package stage names no --candidate, so there is nothing to release"
    try:
        sampler, score = select_winner(report, list(labels), cfg.metric, cfg.budget, cfg.direction)
    except (KeyError, ValueError) as err:
        return None, None, str(err.args[0])
    return score, sampler, ""


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict with everything needed to explain it in the UI and the store.

    ``sampler``: the row the package stage would release (None when no candidate has a score).
    """

    promote: bool
    reason: str
    metric: str
    sampler: str | None
    budget: int
    margin: float
    candidate: float | None
    current: float | None
    candidate_sha256: str | None = None
    released_sha256: str | None = None
    released_sampler: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for artifacts, logs and the flow's return value."""
        return asdict(self)

    def markdown(self) -> str:
        """A short markdown report for the Prefect promotion artifact."""

        def fmt(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.4f}"

        verdict = "PROMOTE" if self.promote else "keep current release"
        return "\n".join(
            [
                f"## Promotion gate: {verdict}",
                "",
                f"{self.reason}",
                "",
                "| | value |",
                "|---|---|",
                f"| metric | {self.metric} at budget {self.budget} |",
                f"| candidate (what the package stage would release) | {fmt(self.candidate)} ({self.sampler or 'n/a'}) |",
                f"| current release | {fmt(self.current)} ({self.released_sampler or 'n/a'}) |",
                f"| required margin | {self.margin:g} |",
                f"| candidate checkpoint | {(self.candidate_sha256 or 'n/a')[:16]} |",
                f"| released checkpoint | {(self.released_sha256 or 'n/a')[:16]} |",
            ]
        )


def decide(
    cfg: GateConfig,
    candidate: float | None,
    current: float | None,
    *,
    sampler: str | None,
    has_release: bool,
    candidate_sha256: str | None = None,
    released_sha256: str | None = None,
    released_sampler: str | None = None,
    problem: str = "",
    force: bool = False,
) -> GateDecision:
    """Apply the gate: explain the verdict whichever way it goes.

    ``sampler`` is the row the package stage would release (``candidate`` its score);
    ``released_sampler`` the row the current release serves (``current`` its score). Not
    promoted: no candidate score, the evaluated checkpoint *is* the released one, a release
    exists but has no comparable score (unless ``force``), or the gain is below the margin.
    """

    def verdict(promote: bool, reason: str) -> GateDecision:
        return GateDecision(
            promote, reason, cfg.metric, sampler, cfg.budget, cfg.margin, candidate, current,
            candidate_sha256, released_sha256, released_sampler,
        )

    if candidate is None:
        return verdict(False, f"no candidate score: {problem or 'evaluation missing'}")
    if candidate_sha256 and released_sha256 and candidate_sha256 == released_sha256:
        return verdict(False, "the candidate checkpoint is the one already released")
    if force:
        return verdict(True, "promotion forced by the flow parameter force_promote")
    if not has_release:
        promote = should_promote(candidate, None, cfg.margin, cfg.direction)
        return verdict(promote, "nothing released yet" if promote else "candidate score is NaN")
    if current is None:
        return verdict(
            False,
            "the current release has no comparable score (same metric, budget and evaluation data); "
            "re-run with force_promote=true to replace it",
        )
    gain = (candidate - current) if cfg.direction == "max" else (current - candidate)
    if should_promote(candidate, current, cfg.margin, cfg.direction):
        return verdict(True, f"candidate beats the release by {gain:+.4f} (>= {cfg.margin:g})")
    return verdict(False, f"gain {gain:+.4f} is below the margin {cfg.margin:g}")
