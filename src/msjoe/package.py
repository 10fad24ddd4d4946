"""The package stage's one call: pick the winning checkpoint, store it, build the bento, record it.

The winner is chosen by an evaluation metric at one budget among the candidates that can be
served. Packaging is idempotent and its tags are reproducible: a release is fingerprinted by
what it contains (CLIP, MLLM and sampler weights, and the serving configuration) and the model
is stored as ``msjoe:<fingerprint prefix>``; the bento's version hashes that fingerprint with
every file the bentofile packs. The same inputs give the same tags on any machine, so the
stage's report is the same everywhere, and a model or bento already in the store is reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FINGERPRINT_LABEL = "release_fingerprint"
#: Hex digits of a fingerprint used as a BentoML version (versions are at most 63 characters).
VERSION_LENGTH = 32


@dataclass(frozen=True)
class PackageConfig:
    """The package stage's settings (params.yaml ``package``); unknown keys are an error.

    ``metric`` at ``budget`` picks the winner (``direction``: ``max`` or ``min``); ``build_bento``:
    also build the bento (else only import the model); ``release``: the served configuration
    (:class:`~msjoe.serving.release.ReleaseConfig` fields but ``pipeline``, which the stage fills
    from the shared ``inference`` section and ``embed``'s fps and cap); ``gate``: the retraining
    flow's promotion ``margin``, read by the flow (``flows/promotion.py``), not by this stage;
    the flow's gate scores the winner this stage would pick, by the same metric and budget.
    """

    metric: str = "accuracy"
    budget: int = 8
    direction: str = "max"
    build_bento: bool = True
    release: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.direction not in ("max", "min"):
            raise ValueError(f"direction must be 'max' or 'min', got {self.direction!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> PackageConfig:
        from msjoe.config import from_mapping

        def plain(value: Any) -> dict[str, Any]:
            return dict(value or {})

        return from_mapping(cls, values, "package", nested={"release": plain, "gate": plain})


@dataclass(frozen=True)
class Candidate:
    """An evaluated configuration the service can run: a sampler (+ checkpoint), where its
    queries come from (evaluate's per-sampler ``queries``; None: the sampler's default) and an
    MLLM."""

    label: str
    sampler: str
    mllm_dir: Path
    sampler_ckpt: Path | None = None
    sampler_params: dict[str, Any] = field(default_factory=dict)
    queries: str | None = None


def select_winner(
    report: Mapping[str, Any], labels: list[str], metric: str, budget: int, direction: str = "max"
) -> tuple[str, float]:
    """The candidate label with the best `report[metric][label][budget]`; ties go to the earlier label."""
    if direction not in ("max", "min"):
        raise ValueError("direction must be 'max' or 'min'")
    table = report.get(metric)
    if not isinstance(table, Mapping):
        raise KeyError(f"evaluation report has no metric {metric!r}")
    scored = []
    for label in labels:
        value = (table.get(label) or {}).get(str(budget), (table.get(label) or {}).get(budget))
        if value is None or (isinstance(value, float) and math.isnan(value)):
            log.warning("candidate %s has no %s at budget %s; skipped", label, metric, budget)
            continue
        scored.append((label, float(value)))
    if not scored:
        raise ValueError(f"no candidate among {labels} has {metric} at budget {budget}")
    sign = 1.0 if direction == "max" else -1.0
    best = max(scored, key=lambda item: sign * item[1])
    return best


def release_fingerprint(candidate: Candidate, clip_dir: Path, release_cfg: Mapping[str, Any]) -> str:
    """Content hash of everything a release serves (weights and configuration, not paths)."""
    from msjoe.store import sha256_path

    digest = hashlib.sha256()
    for part in (clip_dir, candidate.mllm_dir, candidate.sampler_ckpt):
        digest.update((sha256_path(Path(part)) if part is not None else "none").encode())
    digest.update(json.dumps({"sampler": candidate.sampler, "params": candidate.sampler_params,
                              "release": release_cfg}, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def bento_tag_for(bentofile: Path, build_ctx: Path, release: str) -> str:
    """``<name>:<version>`` of the bento ``bentofile`` builds around the release ``release`` (its
    fingerprint). The version hashes the release, the bentofile and every file it includes (or
    names as requirements), so the same inputs give the same tag on any machine."""
    import fnmatch

    import yaml

    spec = yaml.safe_load(bentofile.read_text()) or {}
    excluded = list(spec.get("exclude") or [])
    files = {bentofile.resolve()}
    for pattern in spec.get("include") or []:
        files.update(path.resolve() for path in build_ctx.glob(pattern) if path.is_file())
    requirements = (spec.get("python") or {}).get("requirements_txt")
    if requirements:
        files.add((build_ctx / requirements).resolve())
    digest = hashlib.sha256(release.encode())
    root = build_ctx.resolve()
    for path in sorted(files):
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        if any(fnmatch.fnmatch(rel, pattern) for pattern in excluded):
            continue
        digest.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return f"{spec.get('name', 'msjoe')}:{digest.hexdigest()[:VERSION_LENGTH]}"


def _in_store(get: Callable[[str], object], tag: str) -> bool:
    """Whether ``get`` (``bentoml.models.get`` or ``bentoml.get``) finds ``tag`` in the local store."""
    from bentoml.exceptions import NotFound

    try:
        get(tag)
    except NotFound:
        return False
    return True


def package_release(
    report: Mapping[str, Any],
    candidates: list[Candidate],
    clip_dir: Path,
    *,
    metric: str,
    budget: int,
    direction: str,
    release_cfg: Mapping[str, Any],
    bentofile: Path | None,
    build_ctx: Path,
    labels: Mapping[str, str],
    db_url: str | None,
) -> dict[str, Any]:
    """Import the winner into the BentoML model store, build the bento, record the release."""
    import bentoml

    from msjoe.serving.release import MODEL_NAME, import_release

    by_label = {c.label: c for c in candidates}
    winner_label, score = select_winner(report, list(by_label), metric, budget, direction)
    winner = by_label[winner_label]
    cfg = {**dict(release_cfg), "sampler": winner.sampler, "sampler_params": winner.sampler_params,
           "queries": winner.queries}
    fingerprint = release_fingerprint(winner, clip_dir, cfg)
    metrics = {f"{metric}@{budget}": score, "candidates": {
        c: (report[metric].get(c) or {}).get(str(budget)) for c in by_label}}
    model_tag = f"{MODEL_NAME}:{fingerprint[:VERSION_LENGTH]}"
    reused = {"model": _in_store(bentoml.models.get, model_tag)}
    if not reused["model"]:
        import_release(
            clip_dir, winner.mllm_dir, winner.sampler_ckpt, cfg,
            labels={**labels, FINGERPRINT_LABEL: fingerprint, "winner": winner_label},
            metadata={"metric": metric, "budget": budget, "score": score, "evaluation": metrics},
            tag=model_tag,
        )
    bento_tag = None
    if bentofile is not None:
        bento_tag = bento_tag_for(bentofile, build_ctx, fingerprint)
        reused["bento"] = _in_store(bentoml.get, bento_tag)
        if not reused["bento"]:
            _build_bento(bentofile, build_ctx, model_tag, bentoml.Tag.from_taglike(bento_tag).version,
                         {**labels, FINGERPRINT_LABEL: fingerprint})
    result = {
        "winner": winner_label,
        "metric": metric,
        "budget": budget,
        "score": score,
        "model_tag": model_tag,
        "bento_tag": bento_tag,
        "fingerprint": fingerprint,
        "reused": reused,
        "candidates": metrics["candidates"],
    }
    if db_url:
        _record(db_url, winner, fingerprint, model_tag, bento_tag, labels.get("git_rev"), result)
    log.info("release %s (winner %s, %s@%s = %.4f)", bento_tag or model_tag, winner_label, metric, budget, score)
    return result


def _build_bento(bentofile: Path, build_ctx: Path, model_tag: str, version: str, labels: Mapping[str, str]) -> str:
    """`bentoml build` of the service as ``<name>:<version>``, packing exactly `model_tag` (the
    service reads MSJOE_MODEL_TAG)."""
    import bentoml

    previous = os.environ.get("MSJOE_MODEL_TAG")
    os.environ["MSJOE_MODEL_TAG"] = model_tag
    try:
        bento = bentoml.bentos.build_bentofile(
            str(bentofile), build_ctx=str(build_ctx), version=version,
            labels={str(k): str(v) for k, v in labels.items()},
        )
    finally:
        if previous is None:
            os.environ.pop("MSJOE_MODEL_TAG", None)
        else:
            os.environ["MSJOE_MODEL_TAG"] = previous
    return str(bento.tag)


def _record(db_url: str, winner: Candidate, fingerprint: str, model_tag: str, bento_tag: str | None,
            git_rev: str | None, result: Mapping[str, Any]) -> None:
    from msjoe.store import init_db, record_checkpoint, record_release, session_scope

    init_db(db_url)
    with session_scope(db_url) as session:
        checkpoint_id = record_checkpoint(
            session, kind="release", path=str(winner.sampler_ckpt or winner.mllm_dir), sha256=fingerprint,
            metrics={result["metric"]: result["score"], "budget": result["budget"]}, git_rev=git_rev,
        )
        record_release(session, checkpoint_id=checkpoint_id, bento_tag=bento_tag or model_tag, git_rev=git_rev,
                       metrics=dict(result))
