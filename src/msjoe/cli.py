"""The `msjoe` command: ad-hoc use of the library (ingest a file, convert a benchmark, the DB).

Each command imports what it needs when it runs, so `msjoe --help` stays fast.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="msjoe: efficient long-video question answering pipeline.", no_args_is_help=True)
db_app = typer.Typer(help="The metadata store (SQLite by default, MSJOE_DB_URL for any SQLAlchemy URL).",
                     no_args_is_help=True)
app.add_typer(db_app, name="db")


def _print_json(payload: object) -> None:
    typer.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s %(message)s")
    for noisy in ("great_expectations", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def ingest(
    qa_jsonl: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="QA file in the msjoe schema.")],
    video_root: Annotated[Path, typer.Option(exists=True, file_okay=False, help="Root the `video` paths are relative to.")],
    out: Annotated[Path, typer.Option(help="Output directory (questions/videos parquet, rejects.jsonl).")],
    max_reject_fraction: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.05,
    report: Annotated[Optional[Path], typer.Option(help="Where to write the counts (default OUT/report.json).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Probe processes.")] = 2,
) -> None:
    """Validate a QA file and probe its videos; rejected lines go to rejects.jsonl with reasons."""
    from msjoe.ingest import TooManyRejects
    from msjoe.ingest import ingest as run_ingest

    report_path = report or out / "report.json"
    try:
        result = run_ingest(qa_jsonl, video_root, out, max_reject_fraction=max_reject_fraction, workers=workers)
    except TooManyRejects as exc:
        report_path.write_text(json.dumps(exc.report.to_dict(), indent=2) + "\n")
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    report_path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    _print_json(result.to_dict())


@app.command()
def convert(
    input_path: Annotated[Path, typer.Argument(exists=True, help="The benchmark's annotation file (or folder for MLVU).")],
    fmt: Annotated[str, typer.Option("--format", help="videomme, mlvu, longvideobench or lvbench.")],
    out: Annotated[Path, typer.Option(help="Output JSONL in the msjoe schema.")],
) -> None:
    """Convert a public benchmark's annotations into the msjoe QA schema."""
    from msjoe.adapters import FORMATS, convert_file

    if fmt not in FORMATS:
        raise typer.BadParameter(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", param_hint="--format")
    result = convert_file(fmt, input_path, out)
    _print_json(result.as_dict())


@app.command("compare-lmms-eval")
def compare_lmms_eval(
    predictions: Annotated[Path, typer.Option(exists=True, help="evaluate's predictions.parquet.")],
    samples: Annotated[Path, typer.Option(exists=True, help="lmms-eval's --log_samples JSONL of the same benchmark.")],
    fmt: Annotated[str, typer.Option("--format", help="videomme, mlvu, longvideobench or lvbench.")],
    sampler: Annotated[str, typer.Option(help="Which of our configurations to compare.")] = "msjoe_joint",
    budget: Annotated[int, typer.Option(help="Its frame budget.")] = 32,
    out: Annotated[Optional[Path], typer.Option(help="Write the per-question table here (.csv).")] = None,
) -> None:
    """Our answers next to lmms-eval's, question by question (joined on the benchmark's ids)."""
    import pandas as pd

    from msjoe.lmms_eval import compare, read_logged_samples

    table = compare(pd.read_parquet(predictions), read_logged_samples(samples, fmt), sampler, budget)
    if out is not None:
        table.to_csv(out, index=False)
    both = table[table["in"] == "both"]
    _print_json({
        "questions": {"both": len(both), "ours_only": int((table["in"] == "ours").sum()),
                      "lmms_eval_only": int((table["in"] == "lmms-eval").sum())},
        "same_answer_key": float(both["same_target"].mean()) if len(both) else None,
        "same_prediction": float(both["agree"].mean()) if len(both) else None,
    })


@app.command("pretrain-demo-base")
def pretrain_demo_base(
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write (the repository ships weights/demo-mllm).")] = Path(
        "weights/demo-mllm"
    ),
    work_dir: Annotated[Path, typer.Option(help="Where the pre-training world is generated (reused by a rerun).")] = Path(
        ".cache/demo-base"
    ),
) -> None:
    """Make the demo's base MLLM (the stand-in for downloading Qwen2.5-VL): a tiny Qwen2.5-VL
    taught to see and to talk on a pre-training world of its own; deterministic on the CPU."""
    from msjoe.cpu_kernels import pin_cpu_kernels

    pin_cpu_kernels()  # before torch loads: the same weights on any x86-64 CPU
    from msjoe.mllm.demo_base import DemoBaseConfig
    from msjoe.mllm.demo_base import pretrain_demo_base as run

    report = run(out, DemoBaseConfig(), work_dir)
    _print_json({"out": str(out), "vision": report["vision"], "eval": report.get("eval"), "timings": report["timings"]})


@db_app.command("init")
def db_init(url: Annotated[Optional[str], typer.Option(help="Database URL (default: MSJOE_DB_URL or ./msjoe.db).")] = None) -> None:
    """Create or migrate the schema to the newest revision."""
    from msjoe.store import database_url, init_db

    target = url or database_url()
    typer.echo(f"{target}: schema at revision {init_db(target)}")


@db_app.command("rebuild")
def db_rebuild(
    root: Annotated[Path, typer.Option(exists=True, file_okay=False, help="Repository root (dvc.lock + outputs).")] = Path("."),
    url: Annotated[Optional[str], typer.Option(help="Database URL (default: MSJOE_DB_URL or ROOT/msjoe.db).")] = None,
    dataset: Annotated[str, typer.Option(help="Dataset name the ingested questions are filed under.")] = "ingest",
) -> None:
    """Regenerate the store from dvc.lock and the pipeline outputs (idempotent)."""
    from msjoe.store import database_url, init_db, rebuild

    target = url or database_url(root)
    init_db(target)
    _print_json(rebuild(target, root, dataset=dataset).as_dict())


@db_app.command("summary")
def db_summary(url: Annotated[Optional[str], typer.Option(help="Database URL.")] = None) -> None:
    """Row counts per table."""
    from msjoe.store import database_url, summary

    _print_json(summary(url or database_url()))


@app.command("diagnose-world")
def diagnose_world(
    predictions: Annotated[Path, typer.Option(exists=True, help="evaluate's per-question predictions.")] = Path(
        "reports/predictions.parquet"
    ),
    questions: Annotated[Path, typer.Option(exists=True, help="ingest's questions table.")] = Path(
        "data/ingest/questions.parquet"
    ),
    world: Annotated[Path, typer.Option(exists=True, file_okay=False, help="The demo world (events.jsonl).")] = Path(
        "data/world"
    ),
    budget: Annotated[int, typer.Option(min=1, help="Frame budget K to diagnose.")] = 8,
) -> None:
    """Split each demo-world answer into frames, perception and reasoning: which step fails."""
    import pandas as pd

    from msjoe.world.diagnose import diagnose
    from msjoe.world.events import load_events

    _print_json(diagnose(pd.read_parquet(predictions), pd.read_parquet(questions), load_events(world), budget))


@app.command()
def ask(
    video: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A video file decord can read.")],
    question: Annotated[str, typer.Argument(help="The question about the video.")],
    option: Annotated[list[str], typer.Option("-o", "--option", help="An answer option (repeat, 2-10 times).")],
    budget: Annotated[int, typer.Option(min=1, help="Frames the MLLM answers from (K).")] = 8,
    sampler: Annotated[str, typer.Option(help="Frame sampler: msjoe, uniform, clip_topk, bolt, aks, qframe.")] = "msjoe",
    checkpoint: Annotated[Optional[Path], typer.Option(help="Trained MSJoE sampler checkpoint.")] = None,
    clip: Annotated[Path, typer.Option(help="Directory with clip.json.")] = Path("models/clip"),
    mllm: Annotated[Path, typer.Option(help="Directory with mllm.json.")] = Path("models/mllm"),
    features: Annotated[Path, typer.Option(help="Frame-feature cache (reused by content hash).")] = Path("data/features"),
) -> None:
    """Answer a multiple-choice question about a video file, the MSJoE way."""
    from msjoe.pipeline import ask_command

    if not 2 <= len(option) <= 10:
        raise typer.BadParameter("give 2-10 options with -o", param_hint="-o")
    _print_json(
        ask_command(video, question, option, clip_dir=clip, mllm_dir=mllm, features_dir=features, sampler=sampler,
                    sampler_params={"checkpoint": str(checkpoint)} if checkpoint else None, budget=budget)
    )


@db_app.command("evaluations")
def db_evaluations(
    metric: Annotated[str, typer.Option(help="Metric to compare (accuracy, evidence_hit_rate, ...).")] = "accuracy",
    dataset: Annotated[Optional[str], typer.Option(help="Only this dataset.")] = None,
    url: Annotated[Optional[str], typer.Option(help="Database URL.")] = None,
) -> None:
    """Compare recorded evaluations: one row per checkpoint x sampler, one column per budget."""
    from rich.console import Console
    from rich.table import Table

    from msjoe.store import database_url, list_evaluations

    rows = list_evaluations(url or database_url(), dataset=dataset, metric=metric)
    if not rows:
        typer.echo(f"no '{metric}' evaluations recorded (the Prefect flow records them after `evaluate`)")
        raise typer.Exit(0)
    budgets = sorted({r["budget"] for r in rows})
    cells: dict[tuple[str, str, str], dict[int, float]] = {}
    for r in rows:
        cells.setdefault((r["dataset"], r["checkpoint_sha256"][:12], r["sampler"]), {})[r["budget"]] = r["value"]
    table = Table(title=f"{metric} by sampler and frame budget")
    for column in ("dataset", "checkpoint", "sampler", *[f"K={b}" for b in budgets]):
        table.add_column(column)
    for (data, checkpoint, sampler), values in sorted(cells.items()):
        table.add_row(data, checkpoint, sampler, *[f"{values[b]:.3f}" if b in values else "-" for b in budgets])
    Console().print(table)
