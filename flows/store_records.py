"""What a flow run writes to the metadata store, and what the gate reads back from it.

The store is an index keyed by content hashes; the flow adds the *history* that ``dvc.lock``
alone cannot give: which run ran which stage when, with what result, which checkpoint was
evaluated to which scores, and which one was released. Every write is an idempotent upsert of
``msjoe.store``, so a retried task or a re-run flow never duplicates rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from flows.dvc_stages import StageSpec
from flows.metrics_report import evaluation_cells, grid_metrics, read_json_metrics
from flows.promotion import GateConfig, GateDecision

#: Checkpoint kinds are short names in the store (``checkpoints.kind`` is 32 characters).
_KIND_LEN = 32


def _load_yaml(path: Path) -> Any:
    import yaml

    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return None


def read_params(root: Path) -> dict[str, Any]:
    """``root/params.yaml`` as a dict (empty when absent)."""
    data = _load_yaml(Path(root) / "params.yaml")
    return data if isinstance(data, dict) else {}


def lock_entry(root: Path, stage: str) -> Mapping[str, Any] | None:
    """The ``dvc.lock`` entry of ``stage`` (None before the stage first succeeded)."""
    from msjoe.store.dvc_lock import lock_entries

    entry = lock_entries(root).get(stage)
    return entry if isinstance(entry, Mapping) else None


def stage_fields(root: Path, spec: StageSpec) -> dict[str, Any]:
    """``record_stage`` keyword arguments describing a finished stage from dvc.lock + metrics.

    Metrics are stored per file (``{"reports/x.json": {...}}``), as ``msjoe db rebuild`` does,
    so rows written by a flow and by a rebuild look the same; the stage's timings
    (``reports/timings/<stage>.json``, not a DVC metric) are indexed the same way when present.
    """
    from msjoe.store.dvc_lock import stage_fields as lock_fields
    from msjoe.store.rebuild import timings_file

    fields: dict[str, Any] = {"cmd": spec.cmd}
    entry = lock_entry(root, spec.name)
    if entry is not None:
        fields.update(lock_fields(entry))
        fields["cmd"] = fields["cmd"] or spec.cmd
    metrics = read_json_metrics(root, [*spec.metrics, timings_file(spec.name)])
    if metrics:
        fields["metrics"] = metrics
    return fields


def open_run(url: str, run_key: str, *, trigger: str, git_rev: str | None, started_at: datetime) -> int:
    """Migrate the store if needed and record the pipeline run as ``running``; return its id."""
    from msjoe.store import init_db, record_pipeline_run, session_scope

    init_db(url)
    with session_scope(url) as session:
        return record_pipeline_run(
            session, run_key, status="running", trigger=trigger, git_rev=git_rev, started_at=started_at
        )


def close_run(url: str, run_key: str, *, status: str, trigger: str, ended_at: datetime) -> None:
    """Mark the pipeline run finished with ``status`` (``completed`` or ``failed``)."""
    from msjoe.store import record_pipeline_run, session_scope

    with session_scope(url) as session:
        record_pipeline_run(session, run_key, status=status, trigger=trigger, ended_at=ended_at)


def mark_stage(url: str, run_id: int, stage: str, *, status: str, **fields: Any) -> int:
    """Upsert one stage row of run ``run_id`` (fields left out keep their stored values)."""
    from msjoe.store import record_stage, session_scope

    with session_scope(url) as session:
        return record_stage(session, run_id, stage, status=status, **fields)


def evaluated_checkpoint(stages: Sequence[StageSpec], evaluate_stage: str) -> str | None:
    """The checkpoint path the evaluation scores (what the gate would release): the evaluation
    stage's last dependency under ``models/`` that another stage produces (the most trained
    model it reads, since dvc.yaml lists stages in pipeline order). Paths live in dvc.yaml only.
    """
    by_name = {s.name: s for s in stages}
    spec = by_name.get(evaluate_stage)
    if spec is None:
        return None
    produced = [o for s in stages if s.name != evaluate_stage for o in s.outs]
    candidates = [
        d for d in spec.deps
        if d.startswith("models/") and any(d == o or d.startswith(o + "/") for o in produced)
    ]
    return candidates[-1] if candidates else None


def evaluation_dataset(report: Mapping[str, Any]) -> str:
    """Dataset label of an evaluation report's rows: ``report['dataset']`` or ``ingest:<split>``."""
    if report.get("dataset"):
        return str(report["dataset"])
    return f"ingest:{report.get('split') or 'all'}"


def record_report(
    url: str, run_id: int, root: Path, checkpoint: str, report: Mapping[str, Any]
) -> tuple[int, str, int]:
    """Index the evaluated checkpoint and every sampler x budget cell of the report.

    Returns ``(checkpoint id, checkpoint sha256, evaluation rows written)``. The checkpoint is
    keyed by the hash of its files, so evaluating the same weights again updates the same rows.
    """
    from msjoe.store import git_rev, record_checkpoint, record_evaluation, session_scope, sha256_path

    path = Path(root) / checkpoint
    digest = sha256_path(path)
    dataset = evaluation_dataset(report)
    rows = 0
    with session_scope(url) as session:
        checkpoint_id = record_checkpoint(
            session,
            kind=Path(checkpoint).name[:_KIND_LEN] or "model",
            path=checkpoint,
            sha256=digest,
            git_rev=git_rev(Path(root)),
            run_id=run_id,
        )
        questions = report.get("questions") if isinstance(report.get("questions"), Mapping) else {}
        for sampler, budget, values in evaluation_cells(report, grid_metrics(report)):
            n = (questions.get(sampler) or {}).get(str(budget)) if isinstance(questions, Mapping) else None
            record_evaluation(
                session,
                checkpoint_id=checkpoint_id,
                dataset=dataset,
                sampler=sampler,
                budget=budget,
                metrics=values,
                n_questions=int(n) if isinstance(n, (int, float)) else None,
                run_id=run_id,
            )
            rows += len(values)
    return checkpoint_id, digest, rows


def release_score(
    url: str, cfg: GateConfig, dataset: str
) -> tuple[dict[str, Any] | None, float | None, str | None]:
    """``(latest release or None, its score comparable with the candidate or None, its sampler)``.

    Comparable means the same metric, budget and evaluation data as the gate's. The release's
    gate record (written by this flow) says which row it serves; its score comes from the
    evaluations stored for the released checkpoint, else from the score recorded at release
    when those rows are gone. A release the flow did not record (the package stage run by hand)
    has no comparable score.
    """
    from msjoe.store import latest_release, list_evaluations

    release = latest_release(url)
    if release is None:
        return None, None, None
    gate = (release.get("metrics") or {}).get("gate") or {}
    sampler = gate.get("sampler")
    if not sampler or (gate.get("metric"), gate.get("budget"), gate.get("dataset")) != (cfg.metric, cfg.budget, dataset):
        return release, None, sampler
    for row in list_evaluations(url, dataset=dataset, metric=cfg.metric):
        if (
            row["checkpoint_sha256"] == release["checkpoint_sha256"]
            and row["sampler"] == sampler
            and row["budget"] == cfg.budget
        ):
            return release, float(row["value"]), sampler
    if isinstance(gate.get("candidate"), (int, float)):
        return release, float(gate["candidate"]), sampler
    return release, None, sampler


def bento_tag_from(metrics: Mapping[str, Any], checkpoint_sha256: str) -> tuple[str, bool]:
    """``(tag, found)``: the Bento tag the package stage reported, else one derived from the hash.

    The package stage is expected to write ``bento_tag`` into its metrics JSON; without it the
    release is still recorded (the gate needs it) under ``msjoe:<sha256[:12]>``.
    """
    for content in metrics.values():
        if isinstance(content, Mapping):
            for key in ("bento_tag", "tag", "bento"):
                if isinstance(content.get(key), str) and content[key]:
                    return str(content[key]), True
    return f"msjoe:{checkpoint_sha256[:12]}", False


def record_promotion(
    url: str,
    root: Path,
    *,
    checkpoint_id: int,
    bento_tag: str,
    decision: GateDecision,
    dataset: str,
) -> int:
    """Record the release of ``checkpoint_id`` as ``bento_tag`` with the gate's numbers."""
    from msjoe.store import git_rev, record_release, session_scope

    gate = {**decision.as_dict(), "dataset": dataset}
    with session_scope(url) as session:
        return record_release(
            session,
            checkpoint_id=checkpoint_id,
            bento_tag=bento_tag,
            git_rev=git_rev(Path(root)),
            metrics={"gate": gate},
        )
