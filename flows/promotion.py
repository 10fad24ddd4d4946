"""The promotion gate: package a new checkpoint only when it beats the current release.

Retraining on a schedule produces a new candidate every time, but serving should change only
for a real improvement: a candidate is promoted when its score on the gate metric is strictly
higher than the released checkpoint's and by at least ``margin``. The decision is a pure
function of numbers so it can be read, tested and audited apart from Prefect and the store.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

#: Float tolerance so that 0.66 - 0.65 counts as a 0.01 improvement.
_EPS = 1e-9


def should_promote(candidate: float, current: float | None, margin: float) -> bool:
    """True when ``candidate`` strictly beats ``current`` by at least ``margin``.

    With nothing released yet (``current`` None) any real score is promoted. A NaN candidate
    (a broken evaluation) is never promoted.

    >>> should_promote(0.62, None, 0.01)
    True
    >>> should_promote(0.66, 0.65, 0.01)
    True
    >>> should_promote(0.655, 0.65, 0.01)
    False
    >>> should_promote(0.65, 0.65, 0.0)
    False
    """
    if math.isnan(margin) or margin < 0:
        raise ValueError(f"margin must be a non-negative number, got {margin!r}")
    if math.isnan(candidate):
        return False
    if current is None:
        return True
    if math.isnan(current):
        raise ValueError("the current release's score is NaN: fix the stored evaluation first")
    gain = candidate - current
    return gain > _EPS and gain >= margin - _EPS


@dataclass(frozen=True)
class GateConfig:
    """Which score the gate compares: ``report[metric][sampler][budget]`` of the evaluation.

    ``budget`` None means the largest budget the report has.
    """

    metric: str = "accuracy"
    sampler: str = "msjoe"
    budget: int | None = None
    margin: float = 0.01

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for artifacts and store rows."""
        return asdict(self)


def gate_config(params: Mapping[str, Any] | None) -> GateConfig:
    """The gate settings: params.yaml's ``package.gate`` (metric, sampler, budget, margin), with
    :class:`GateConfig`'s defaults for what it leaves out.

    Hyperparameters live in params.yaml, not in the flow's parameters, so a run's gate is
    versioned with the commit; a misspelt key is an error, not a silent default.
    """
    from msjoe.config import from_mapping

    gate = ((params or {}).get("package") or {}).get("gate") or {}
    return from_mapping(GateConfig, gate, "package.gate")


def candidate_score(report: Mapping[str, Any], cfg: GateConfig) -> tuple[float | None, int | None, str]:
    """``(score, budget, problem)`` of the gate's cell in an evaluation report.

    ``problem`` is empty when a score was found, else says what is missing (so the gate can
    explain why it did not promote).
    """
    table = report.get(cfg.metric)
    if not isinstance(table, Mapping):
        return None, cfg.budget, f"evaluation report has no {cfg.metric!r} table"
    per_budget = table.get(cfg.sampler)
    if not isinstance(per_budget, Mapping) or not per_budget:
        return None, cfg.budget, (
            f"evaluation report has no sampler {cfg.sampler!r} under {cfg.metric!r} "
            f"(samplers: {sorted(map(str, table))})"
        )
    budgets = sorted(int(b) for b in per_budget)
    budget = cfg.budget if cfg.budget is not None else budgets[-1]
    value = per_budget.get(str(budget), per_budget.get(budget))  # type: ignore[call-overload]
    if value is None:
        return None, budget, f"no {cfg.metric} for {cfg.sampler!r} at budget {budget} (budgets: {budgets})"
    return float(value), budget, ""


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict with everything needed to explain it in the UI and the store."""

    promote: bool
    reason: str
    metric: str
    sampler: str
    budget: int | None
    margin: float
    candidate: float | None
    current: float | None
    candidate_sha256: str | None = None
    released_sha256: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for artifacts, logs and the flow's return value."""
        return asdict(self)

    def markdown(self) -> str:
        """A short markdown report for the Prefect promotion artifact."""

        def fmt(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.4f}"

        verdict = "PROMOTE" if self.promote else "keep current release"
        budget = "largest" if self.budget is None else str(self.budget)
        return "\n".join(
            [
                f"## Promotion gate: {verdict}",
                "",
                f"{self.reason}",
                "",
                "| | value |",
                "|---|---|",
                f"| metric | {self.metric} @ {self.sampler}, budget {budget} |",
                f"| candidate | {fmt(self.candidate)} |",
                f"| current release | {fmt(self.current)} |",
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
    budget: int | None,
    has_release: bool,
    candidate_sha256: str | None = None,
    released_sha256: str | None = None,
    problem: str = "",
    force: bool = False,
) -> GateDecision:
    """Apply the gate: explain the verdict whichever way it goes.

    Not promoted: no candidate score, the candidate *is* the released checkpoint, a release
    exists but has no comparable score (unless ``force``), or the gain is below the margin.
    """

    def verdict(promote: bool, reason: str) -> GateDecision:
        return GateDecision(
            promote, reason, cfg.metric, cfg.sampler, budget, cfg.margin, candidate, current,
            candidate_sha256, released_sha256,
        )

    if candidate is None:
        return verdict(False, f"no candidate score: {problem or 'evaluation missing'}")
    if candidate_sha256 and released_sha256 and candidate_sha256 == released_sha256:
        return verdict(False, "the candidate checkpoint is the one already released")
    if force:
        return verdict(True, "promotion forced by the flow parameter force_promote")
    if not has_release:
        promote = should_promote(candidate, None, cfg.margin)
        return verdict(promote, "nothing released yet" if promote else "candidate score is NaN")
    if current is None:
        return verdict(
            False,
            "the current release has no comparable score (same metric, sampler, budget); "
            "re-run with force_promote=true to replace it",
        )
    if should_promote(candidate, current, cfg.margin):
        return verdict(True, f"candidate beats the release by {candidate - current:+.4f} (>= {cfg.margin:g})")
    return verdict(False, f"gain {candidate - current:+.4f} is below the margin {cfg.margin:g}")
