"""Great Expectations suites for every table that enters the pipeline, built in code.

GX does the checking; this module only prepares scalar columns it can check (lengths, counts,
flags derived from nested fields) and turns failed expectations back into per-row reasons, so
ingest can reject exactly the offending rows and say why.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

MAX_QID_LEN = 200
MAX_QUESTION_LEN = 4000
MAX_OPTION_LEN = 1000
MAX_PATH_LEN = 1024
MAX_LABEL_LEN = 200
OPTION_LETTERS = "ABCDEFGHIJ"
#: Evidence may end up to one frame interval after the last frame's timestamp.
EVIDENCE_TOLERANCE_S = 1.0


@dataclass(frozen=True)
class Check:
    """One expectation plus the reason a user reads when a row fails it."""

    expectation: Any
    reason: str


class ValidationError(RuntimeError):
    """A suite could not be evaluated (a bug in our preparation, never bad data)."""


def _gx():  # noqa: ANN202
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx


@lru_cache(maxsize=1)
def _context():  # noqa: ANN202
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.data_sources.add_pandas("msjoe")
    return context


def question_checks() -> list[Check]:
    """Row-level contract of a QA row (docs/design.md section 4), before its video is probed."""
    e = _gx().expectations
    checks = [
        Check(e.ExpectColumnValuesToNotBeNull(column=c), f"missing required field '{c}'")
        for c in ("qid", "video", "question", "options", "answer")
    ]
    checks += [
        Check(e.ExpectColumnValuesToBeInTypeList(column=c, type_list=["str"]), f"field '{c}' must be a string")
        for c in ("qid", "video", "question", "answer", "category", "split")
    ]
    checks.append(Check(e.ExpectColumnValuesToBeUnique(column="qid"), "duplicate qid (every row with this qid is rejected)"))
    lengths = (  # column, shortest, longest, what a reject says
        ("qid_len", 1, MAX_QID_LEN, f"qid must be 1-{MAX_QID_LEN} characters"),
        ("question_len", 1, MAX_QUESTION_LEN, f"question must be 1-{MAX_QUESTION_LEN} characters"),
        ("video_len", 1, MAX_PATH_LEN, f"video path must be 1-{MAX_PATH_LEN} characters"),
        ("label_len", 0, MAX_LABEL_LEN, f"category and split must be at most {MAX_LABEL_LEN} characters"),
    )
    checks += [
        Check(e.ExpectColumnValuesToBeBetween(column=column, min_value=lo, max_value=hi), reason)
        for column, lo, hi, reason in lengths
    ]
    checks += [
        Check(
            e.ExpectColumnValuesToBeInSet(column="options_ok", value_set=[True]),
            f"options must be a list of non-empty strings of at most {MAX_OPTION_LEN} characters",
        ),
        Check(
            e.ExpectColumnValuesToBeBetween(column="n_options", min_value=2, max_value=10),
            "options must have 2-10 entries",
        ),
        Check(
            e.ExpectColumnValuesToMatchRegex(column="answer", regex=r"^[A-J]$"),
            "answer must be a single option letter A-J",
        ),
        Check(
            e.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="n_options", column_B="answer_index", ignore_row_if="either_value_is_missing"
            ),
            "answer letter does not name one of the options",
        ),
        Check(
            e.ExpectColumnValuesToBeInSet(column="duration_ok", value_set=[True]),
            "duration_s must be a number > 0 when given",
        ),
        Check(
            e.ExpectColumnValuesToBeInSet(column="evidence_ok", value_set=[True]),
            "evidence must be a list of [start_s, end_s] numbers with 0 <= start <= end",
        ),
    ]
    return checks


def evidence_checks() -> list[Check]:
    """Checks that need the probed video: evidence spans must lie inside it."""
    e = _gx().expectations
    return [
        Check(
            e.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="video_end_s",
                column_B="evidence_end_s",
                or_equal=True,
                ignore_row_if="either_value_is_missing",
            ),
            "evidence span ends after the end of the video",
        )
    ]


def video_checks() -> list[Check]:
    """The probed video table: hashes, frame counts, rates and sizes must be sane."""
    e = _gx().expectations
    return [
        Check(e.ExpectColumnValuesToMatchRegex(column="sha256", regex=r"^[0-9a-f]{64}$"), "bad content hash"),
        Check(e.ExpectColumnValuesToBeBetween(column="n_frames", min_value=1), "video has no frames"),
        Check(
            e.ExpectColumnValuesToBeBetween(column="fps", min_value=0, max_value=1000, strict_min=True),
            "frame rate must be in (0, 1000]",
        ),
        Check(
            e.ExpectColumnValuesToBeBetween(column="duration_s", min_value=0, strict_min=True),
            "duration must be > 0",
        ),
        Check(e.ExpectColumnValuesToBeBetween(column="width", min_value=1, max_value=16384), "bad width"),
        Check(e.ExpectColumnValuesToBeBetween(column="height", min_value=1, max_value=16384), "bad height"),
    ]


def feature_checks(dim: int) -> list[Check]:
    """Cached CLIP features, one summary row per video: right width, finite, unit norm, ordered time.

    The cosine similarity of the method relies on unit norm; the sampler relies on time order.
    """
    e = _gx().expectations
    return [
        Check(e.ExpectColumnValuesToBeBetween(column="dim", min_value=dim, max_value=dim), f"feature width != {dim}"),
        Check(e.ExpectColumnValuesToBeBetween(column="n", min_value=1), "no frames embedded"),
        Check(e.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]), "non-finite feature values"),
        Check(e.ExpectColumnValuesToBeBetween(column="norm_min", min_value=0.999), "features are not L2-normalised"),
        Check(e.ExpectColumnValuesToBeBetween(column="norm_max", max_value=1.001), "features are not L2-normalised"),
        Check(e.ExpectColumnValuesToBeBetween(column="t_min", min_value=0), "negative timestamp"),
        Check(
            e.ExpectColumnValuesToBeInSet(column="t_increasing", value_set=[True]),
            "timestamps are not strictly increasing",
        ),
    ]


def feature_summary(key: str, features: np.ndarray, timestamps: np.ndarray) -> dict[str, Any]:
    """The per-video row `feature_checks` validates (cheap to compute while streaming)."""
    ok_shape = features.ndim == 2 and len(features) > 0
    norms = np.linalg.norm(features, axis=1) if ok_shape else np.array([np.nan])
    return {
        "row": key,
        "dim": int(features.shape[1]) if features.ndim == 2 else -1,
        "n": int(len(features)),
        "finite": bool(np.isfinite(features).all()),
        "norm_min": float(norms.min()),
        "norm_max": float(norms.max()),
        "t_min": float(timestamps.min()) if len(timestamps) else 0.0,
        "t_increasing": bool(len(timestamps) == len(features) and np.all(np.diff(timestamps) > 0)),
    }


def failing_rows(name: str, frame: pd.DataFrame, checks: list[Check], key: str = "row") -> dict[Any, list[str]]:
    """Run `checks` as a GX suite on `frame`; map each failing `key` value to its reasons.

    `frame` must hold the `key` column with unique values; GX reports unexpected rows by it.
    """
    if frame.empty:
        return {}
    gx = _gx()
    context = _context()
    source = context.data_sources.get("msjoe")
    suite_name = f"{name}-{len(context.suites.all())}"
    asset = source.add_dataframe_asset(name=suite_name)
    batch = asset.add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name))
    reasons_by_id: dict[str, str] = {}
    for check in checks:
        expectation = suite.add_expectation(check.expectation)
        reasons_by_id[str(expectation.id)] = check.reason
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=suite_name, data=batch, suite=suite)
    )
    result = definition.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [key]},
    )
    failures: dict[Any, list[str]] = {}
    for item in result.results:
        if item.success:
            continue
        info = item.exception_info or {}
        raised = info.get("raised_exception") if isinstance(info, dict) else False
        if raised:
            raise ValidationError(f"{name}: expectation {item.expectation_config.type} errored: {info}")
        reason = reasons_by_id.get(str(item.expectation_config.id), item.expectation_config.type)
        for entry in item.result.get("unexpected_index_list") or []:
            row = entry[key] if isinstance(entry, dict) else entry
            failures.setdefault(_plain(row), []).append(reason)
    return failures


def validate_features(summaries: list[dict[str, Any]], dim: int) -> dict[Any, list[str]]:
    """Failing videos (by the summary's `row` key) of an embedded feature set, with reasons."""
    return failing_rows("features", pd.DataFrame(summaries), feature_checks(dim))


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
