"""The retraining flow: ``dvc repro`` stage by stage, metrics to the UI and the store, gated release.

One Prefect task per DVC stage, in the DAG order of ``dvc.yaml``, each running
``dvc repro <stage>``: DVC decides what is stale (the tasks use no Prefect cache), so a laptop,
CI and a scheduled Prefect run all take the same path and a run with nothing changed costs only
DVC's status checks. Around the stages the flow

* holds the workspace lock for the whole run (two runs never share one checkout);
* retries a failing stage with exponential backoff (a DVC lock held by a stray ``dvc`` process
  or a flaky filesystem heals; a broken ``dvc.yaml`` is not retried);
* streams every output line of DVC and the stage to the run log;
* records the run, each stage (status, timings, dvc.lock hashes, metrics) and the evaluation in
  the metadata store (``MSJOE_DB_URL`` or ``msjoe.db`` in the workspace);
* publishes the metrics and the sampler x budget accuracy table as Prefect artifacts;
* runs the ``package`` stage only when the promotion gate says that what it would release (the
  best of its candidates, chosen by the stage's own rule) beats the current release by the
  margin, and records the release.

Run it locally with ``python flows/pipeline.py`` (or ``python -m flows.pipeline``) from the
repository root; ``infra/prefect/prefect.yaml`` deploys it on a schedule.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Loaded by path (``python flows/pipeline.py`` or a deployment entrypoint): make the
    # repository root importable so ``flows.*`` resolves to this package.
    _ROOT = str(Path(__file__).resolve().parents[1])
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flows.dvc_stages import (
    DvcConfigError,
    ReproOutcome,
    StageSpec,
    downstream_of,
    read_stages,
    run_repro,
)
from flows.metrics_report import grid_rows, metrics_markdown, read_json_metrics
from flows.promotion import GateConfig, GateDecision, candidate_labels, candidate_score, decide, gate_config
from flows.store_records import (
    bento_tag_from,
    close_run,
    evaluated_checkpoint,
    evaluation_dataset,
    mark_stage,
    open_run,
    read_params,
    record_promotion,
    record_report,
    release_score,
    stage_fields,
)
from flows.workspace import workspace_lock

#: Environment variable naming the workspace when the flow's ``repo`` parameter is not given.
ROOT_ENV = "MSJOE_ROOT"
#: Artifact keys (Prefect keeps a history per key, so runs can be compared in the UI).
METRICS_ARTIFACT = "msjoe-metrics"
ACCURACY_ARTIFACT = "msjoe-accuracy"
HIT_RATE_ARTIFACT = "msjoe-evidence-hit-rate"
GATE_ARTIFACT = "msjoe-promotion"


def _now() -> Any:
    from msjoe.store import utcnow

    return utcnow()


def _db(root: str | Path) -> str:
    """The workspace's store URL (``MSJOE_DB_URL`` or ``<root>/msjoe.db``).

    Tasks derive it instead of receiving it, so a database password never becomes a task
    parameter shown in the Prefect UI.
    """
    from msjoe.store import database_url

    return database_url(Path(root))


def _retry_unless_permanent(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry every stage failure except a broken pipeline definition."""
    try:
        error = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - unreadable result: retry as for any failure
        return True
    return not isinstance(error, DvcConfigError)


@task(
    name="dvc-stage",
    task_run_name="dvc repro {stage}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=_retry_unless_permanent,
)
def run_stage(
    root: str, stage: str, run_id: int, timeout_s: float | None = None
) -> dict[str, Any]:
    """``dvc repro <stage>`` with its output streamed to the log and its outcome in the store."""
    logger = get_run_logger()
    db_url = _db(root)
    mark_stage(db_url, run_id, stage, status="running", started_at=_now())
    try:
        outcome: ReproOutcome = run_repro(
            Path(root), stage, lambda line: logger.info("%s", line), timeout_s=timeout_s
        )
    except BaseException:
        mark_stage(db_url, run_id, stage, status="failed", ended_at=_now())
        raise
    spec = next((s for s in read_stages(Path(root)) if s.name == stage), StageSpec(stage, None))
    fields = stage_fields(Path(root), spec)
    mark_stage(db_url, run_id, stage, status=outcome.status, ended_at=_now(), **fields)
    verb = "ran" if outcome.status == "completed" else "was up to date"
    logger.info("stage %s %s (%.1f s)", stage, verb, outcome.seconds)
    return {
        "stage": stage,
        "status": outcome.status,
        "seconds": round(outcome.seconds, 3),
        "ran": outcome.ran,
    }


@task(name="publish-metrics", cache_policy=NO_CACHE, persist_result=False)
def publish_metrics(root: str, stages: list[StageSpec], evaluation_report: str) -> dict[str, Any]:
    """Metrics of every stage as a markdown artifact; the accuracy grid as a table artifact."""
    files = [m for s in stages for m in s.metrics]
    metrics = read_json_metrics(Path(root), files)
    create_markdown_artifact(
        markdown=metrics_markdown(metrics),
        key=METRICS_ARTIFACT,
        description="Scalar metrics of every stage's JSON metrics file (dvc.yaml `metrics`).",
    )
    published = [METRICS_ARTIFACT]
    report = read_json_metrics(Path(root), [evaluation_report]).get(evaluation_report)
    if isinstance(report, dict):
        for metric, key in (("accuracy", ACCURACY_ARTIFACT), ("evidence_hit_rate", HIT_RATE_ARTIFACT)):
            rows = grid_rows(report, metric)
            if rows:
                create_table_artifact(
                    table=rows,
                    key=key,
                    description=f"{metric} per sampler (rows) and frame budget (columns), {evaluation_report}",
                )
                published.append(key)
    return {"artifacts": published, "files": sorted(metrics)}


@task(name="record-evaluation", cache_policy=NO_CACHE, persist_result=False)
def record_evaluation_task(
    root: str, run_id: int, checkpoint: str, evaluation_report: str
) -> dict[str, Any]:
    """Index the evaluated checkpoint and its sampler x budget scores in the store."""
    report = read_json_metrics(Path(root), [evaluation_report])[evaluation_report]
    checkpoint_id, digest, rows = record_report(_db(root), run_id, Path(root), checkpoint, report)
    get_run_logger().info("recorded %d evaluation values of %s (%s)", rows, checkpoint, digest[:12])
    return {"checkpoint_id": checkpoint_id, "sha256": digest, "rows": rows,
            "dataset": evaluation_dataset(report)}


@task(name="promotion-gate", cache_policy=NO_CACHE, persist_result=False)
def promotion_gate(
    root: str,
    cfg: GateConfig,
    evaluation_report: str,
    candidates: list[str],
    candidate_sha256: str,
    force: bool = False,
) -> GateDecision:
    """Compare what the package stage would release with the current release; publish the verdict."""
    report = read_json_metrics(Path(root), [evaluation_report]).get(evaluation_report) or {}
    candidate, sampler, problem = candidate_score(report, cfg, candidates)
    release, current, released_sampler = release_score(_db(root), cfg, evaluation_dataset(report))
    decision = decide(
        cfg, candidate, current, sampler=sampler, has_release=release is not None,
        candidate_sha256=candidate_sha256,
        released_sha256=release["checkpoint_sha256"] if release else None,
        released_sampler=released_sampler, problem=problem, force=force,
    )
    create_markdown_artifact(markdown=decision.markdown(), key=GATE_ARTIFACT,
                             description="Promotion gate verdict of this run.")
    get_run_logger().info("promotion gate: %s (%s)", "promote" if decision.promote else "keep", decision.reason)
    return decision


@task(name="record-release", cache_policy=NO_CACHE, persist_result=False)
def record_release_task(
    root: str, package_stage: str, checkpoint_id: int, checkpoint_sha256: str,
    decision: GateDecision, dataset: str,
) -> str:
    """Record the packaged checkpoint as the current release (tag from the package metrics)."""
    package = next(s for s in read_stages(Path(root)) if s.name == package_stage)
    tag, found = bento_tag_from(read_json_metrics(Path(root), list(package.metrics)), checkpoint_sha256)
    if not found:
        get_run_logger().warning(
            "package stage metrics carry no 'bento_tag'; recording the release as %s", tag
        )
    record_promotion(_db(root), Path(root), checkpoint_id=checkpoint_id, bento_tag=tag,
                     decision=decision, dataset=dataset)
    return tag


def _trigger(explicit: str | None) -> str:
    """How this run started: the caller's word, else schedule / deployment / manual."""
    if explicit:
        return explicit
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx else None
    if run is not None and getattr(run, "auto_scheduled", False):
        return "schedule"
    if run is not None and run.deployment_id is not None:
        return "deployment"
    return "manual"


def _run_key() -> str:
    from prefect.runtime import flow_run

    return f"prefect:{flow_run.id}"


@flow(name="msjoe-retrain", persist_result=False)
def retrain(
    repo: str | None = None,
    retries: int = 2,
    retry_delay_s: float = 30.0,
    stage_timeout_s: float | None = None,
    lock_timeout_s: float = 900.0,
    evaluate_stage: str = "evaluate",
    evaluation_report: str = "reports/evaluate.json",
    package_stage: str = "package",
    force_promote: bool = False,
    trigger: str | None = None,
) -> dict[str, Any]:
    """Reproduce the DVC pipeline of ``repo`` and release the result if it is better.

    ``repo`` defaults to ``$MSJOE_ROOT`` or the working directory. Stages run in ``dvc.yaml``'s
    DAG order; ``package_stage`` and everything downstream of it run only when the gate
    promotes: when the row the package stage would release (its best ``--candidate`` by
    params.yaml's ``package.metric`` at ``package.budget``) beats the current release by
    ``package.gate.margin``. The flow takes operational parameters only. ``retries`` /
    ``retry_delay_s`` set the stage retries (delay doubles each attempt); ``lock_timeout_s`` how long to wait for another run on
    the same workspace. Returns a summary (stages, gate verdict, release tag).
    """
    logger = get_run_logger()
    root = Path(repo or os.environ.get(ROOT_ENV) or Path.cwd()).resolve()
    run_key = _run_key()
    how = _trigger(trigger)
    with workspace_lock(root, owner=run_key, timeout_s=lock_timeout_s):
        from msjoe.store import git_rev

        db_url = _db(root)
        stages = read_stages(root)
        gated = downstream_of(stages, [package_stage])
        logger.info("workspace %s: stages %s (gated: %s)", root, [s.name for s in stages], sorted(gated))
        run_id = open_run(db_url, run_key, trigger=how, git_rev=git_rev(root), started_at=_now())
        staged = run_stage.with_options(
            retries=retries, retry_delay_seconds=exponential_backoff(retry_delay_s) if retries else 0
        )
        summary: dict[str, Any] = {"run_key": run_key, "root": str(root), "stages": [],
                                   "gate": None, "release": None}
        try:
            for spec in stages:
                if spec.name not in gated:
                    summary["stages"].append(staged(str(root), spec.name, run_id, stage_timeout_s))
            summary["artifacts"] = publish_metrics(str(root), stages, evaluation_report)["artifacts"]
            summary.update(
                _evaluate_and_gate(
                    root, stages, gated, run_id, staged, stage_timeout_s,
                    evaluate_stage, evaluation_report, package_stage, force_promote,
                    gate_config(read_params(root)),
                )
            )
        except BaseException:
            try:
                close_run(db_url, run_key, status="failed", trigger=how, ended_at=_now())
            except Exception:  # noqa: BLE001 - keep the stage's error, not the store's
                logger.exception("could not mark run %s failed in the metadata store", run_key)
            raise
        close_run(db_url, run_key, status="completed", trigger=how, ended_at=_now())
    return summary


def _evaluate_and_gate(
    root: Path,
    stages: list[StageSpec],
    gated: set[str],
    run_id: int,
    staged: Any,
    stage_timeout_s: float | None,
    evaluate_stage: str,
    evaluation_report: str,
    package_stage: str,
    force_promote: bool,
    cfg: GateConfig,
) -> dict[str, Any]:
    """Record the evaluation, apply the gate and package when it promotes (flow helper)."""
    logger = get_run_logger()
    names = {s.name for s in stages}
    out: dict[str, Any] = {"gate": None, "release": None, "evaluation": None}
    if evaluate_stage not in names or not (root / evaluation_report).is_file():
        logger.info("no %s stage / %s yet: nothing to evaluate or promote", evaluate_stage, evaluation_report)
        return out
    checkpoint = evaluated_checkpoint(stages, evaluate_stage)
    if checkpoint is None or not (root / checkpoint).exists():
        logger.warning("cannot tell which checkpoint %s evaluates (no dependency under models/ that a stage "
                       "produces)", evaluate_stage)
        return out
    evaluation = record_evaluation_task(str(root), run_id, checkpoint, evaluation_report)
    out["evaluation"] = evaluation
    if package_stage not in names:
        logger.info("no %s stage in dvc.yaml yet: promotion gate skipped", package_stage)
        return out
    package = next(s for s in stages if s.name == package_stage)
    decision = promotion_gate(str(root), cfg, evaluation_report, candidate_labels(package.cmd),
                              evaluation["sha256"], force_promote)
    out["gate"] = decision.as_dict()
    if not decision.promote:
        return out
    for spec in stages:
        if spec.name in gated:
            out.setdefault("promoted_stages", []).append(
                staged(str(root), spec.name, run_id, stage_timeout_s)
            )
    out["release"] = record_release_task(
        str(root), package_stage, evaluation["checkpoint_id"], evaluation["sha256"],
        decision, evaluation["dataset"],
    )
    return out


if __name__ == "__main__":
    retrain()
