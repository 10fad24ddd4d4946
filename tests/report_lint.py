"""The rule behind a reproducible dvc.lock, as a lint: a stage's DVC metrics and plots hold no
run-dependent value (time, throughput, memory, latency, resume/reuse state); those go to
``reports/timings/<stage>.json`` (``stages/_common.py:write_timings``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: Key names of run-dependent values (wall/CPU time, throughput, memory, latency, and run state:
#: what a resumed, reused or cache-hitting run found left behind), which belong in TIMINGS_DIR and never in a
#: stage's DVC metrics or plots. ``questions_per_step`` does not match.
RUN_DEPENDENT_KEY = re.compile(
    r"(seconds|(^|_)secs?$|_s$|per_s(ec)?$|rss|latency|timings?$|elapsed|wall|cpu_time|_at$|^resumed|^reused$|^(cached|embedded|frames_embedded)$)",
    re.IGNORECASE,
)
#: Sub-trees of a report that echo inputs (params.yaml values such as ``evidence_tolerance_s``;
#: ``base_model``: the shipped demo weights' own report, a fixed file measured once when they were made).
ECHOED_INPUTS = frozenset({"params", "config", "base_model"})


def run_dependent_keys(payload: Any, path: str = "") -> list[str]:
    """Paths (``a/b``) of the keys of ``payload`` named like run-dependent values, outside the
    sub-trees that echo inputs; what a stage's ``write_report`` payloads must not contain."""
    found: list[str] = []
    if isinstance(payload, Mapping):
        for key, value in payload.items():
            here = f"{path}/{key}"
            if str(key) in ECHOED_INPUTS:
                continue
            if RUN_DEPENDENT_KEY.search(str(key)):
                found.append(here)
            found += run_dependent_keys(value, here)
    elif isinstance(payload, list):
        for i, value in enumerate(payload):
            found += run_dependent_keys(value, f"{path}[{i}]")
    return found
