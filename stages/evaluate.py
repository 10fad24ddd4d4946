"""DVC stage `evaluate`: every sampler x budget on the evaluation split (params: evaluate, inference, embed.fps/max_candidates).

A sampler entry may set ``queries: question|generated|none`` (default: the pipeline's choice for
that sampler), so a baseline can be evaluated as published and with generated queries. The
claims declared under ``evaluate.claims`` are checked against the samplers and budgets before
anything runs and tested on the per-question predictions at the end (report key ``claims``).

Under ``torchrun`` (``--nproc_per_node N``, or several nodes) each rank runs its share of the
query and answer batches (:func:`msjoe.evaluate.evaluate`) and rank 0 writes the outputs, which
equal a single process's for the same ``threads``. With ``--turn-cache`` every finished batch
of turns is kept, so a killed run (or a dead rank) resumes from what was done.

Also runs on any benchmark converted to our schema and ingested (``--questions``); with
``benchmark: videomme|mlvu|longvideobench|lvbench`` the report adds that benchmark's published
scores (``official``, ``official_breakdown``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import add_params_argument, deterministic, params, pipeline_settings, setup, write_report, write_timings
import pandas as pd  # after _common, which pins numpy's kernels before numpy loads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--questions", type=Path, required=True, help="ingest's questions.parquet")
    parser.add_argument("--video-root", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True, help="the embed stage's feature cache")
    parser.add_argument("--clip", type=Path, required=True, help="directory with clip.json")
    parser.add_argument("--mllm", action="append", required=True,
                        help="NAME=DIR of an MLLM (directory with mllm.json); repeat; the first is the default "
                             "and samplers pick another with `mllm: NAME`")
    parser.add_argument("--checkpoint", action="append", default=[],
                        help="LABEL=PATH: the trained weights of the `msjoe` sampler LABEL (repeat)")
    parser.add_argument("--out", type=Path, required=True, help="report JSON (DVC metrics)")
    parser.add_argument("--predictions", type=Path, required=True, help="per-question predictions (.parquet or .csv)")
    parser.add_argument("--plots", type=Path, required=True, help="accuracy vs budget rows (DVC plot)")
    parser.add_argument("--figures", type=Path, required=True, help="directory of per-example figures")
    add_params_argument(parser)
    parser.add_argument("--turn-cache", type=Path, help="finished batches of turns (kept between runs: a killed run resumes)")
    args = parser.parse_args()
    log = setup("evaluate")
    p = params("evaluate", args.params)
    from msjoe.evaluate import EvaluateConfig

    try:
        cfg = EvaluateConfig.from_mapping(p)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"{args.params}: {err}") from None
    deterministic(cfg.threads, cfg.seed)
    from msjoe.shards import close, init_from_env, local_device

    rank, world = init_from_env(cfg.device)  # under torchrun: each rank answers its share of the turns
    device = local_device(cfg.device)

    from msjoe.clip.model import load_clip
    from msjoe.evaluate import accuracy_plot_rows, claims_report, evaluate, merge_results, parse_claims
    from msjoe.features import FeatureStore
    from msjoe.mllm.manifest import load_prepared_mllm
    from msjoe.pipeline import Pipeline, PipelineConfig, load_sampler
    from msjoe.plots import write_example_figures

    questions = pd.read_parquet(args.questions)
    if cfg.split not in (None, "all"):
        questions = questions[questions["split"] == cfg.split]
    if cfg.max_questions:
        questions = questions.iloc[: cfg.max_questions]
    if questions.empty:
        raise SystemExit(f"{args.questions} has no questions in split {cfg.split!r}")

    budgets = list(cfg.budgets)
    try:  # a claim about something not evaluated fails now, not after the whole grid
        claims = parse_claims(cfg.claims, budgets, cfg.labels)
    except ValueError as err:
        raise SystemExit(f"evaluate.claims: {err}") from None

    pipeline_cfg = PipelineConfig.from_mapping(pipeline_settings(args.params, seed=cfg.seed, batch_size=cfg.batch_size))
    mllms = dict(spec.split("=", 1) if "=" in spec else ("base", spec) for spec in args.mllm)
    default = next(iter(mllms))
    groups: dict[str, dict] = {name: {} for name in mllms}
    checkpoints: dict[str, str] = {}
    for spec in args.checkpoint:
        label, sep, path = spec.partition("=")
        if not sep or not path or label in checkpoints:
            raise SystemExit(f"--checkpoint {spec!r}: expected LABEL=PATH, each LABEL once")
        if label not in cfg.samplers:
            raise SystemExit(f"--checkpoint {spec!r}: no sampler {label!r} in evaluate.samplers ({', '.join(cfg.samplers)})")
        checkpoints[label] = path
    for label, spec in cfg.samplers.items():
        name = spec.mllm or default
        if name not in mllms:
            raise SystemExit(f"sampler {label}: unknown mllm {name!r}; given: {', '.join(mllms)}")
        weights = {"checkpoint": checkpoints[label]} if label in checkpoints else {}
        groups[name][label] = load_sampler(spec.name, {**(spec.params or {}), **weights})
    clip = load_clip(args.clip, device=device)
    results = []
    for name, samplers in groups.items():
        if not samplers:
            continue
        pipeline = Pipeline(clip, load_prepared_mllm(Path(mllms[name]), device=device),
                            next(iter(samplers.values())), FeatureStore(args.features), pipeline_cfg)
        results.append(evaluate(
            questions, args.video_root, pipeline, samplers, budgets,
            oracle=cfg.oracle and name == default, benchmark=cfg.benchmark,
            n_examples=cfg.n_example_figures if name == default else 0,
            evidence_tolerance_s=cfg.evidence_tolerance_s,
            queries={label: cfg.samplers[label].queries for label in samplers},
            turn_cache=args.turn_cache / name if args.turn_cache is not None else None,
        ))
    result = merge_results(results, cfg.benchmark)
    timings = result.report.pop("timings", {})
    if rank != 0:  # every rank holds the whole result; rank 0 writes it
        close()
        return
    write_timings("evaluate", {**timings, "processes": world})
    report = {**result.report, "split": cfg.split, "questions_file": str(args.questions), "params": {**p, "inference": params("inference", args.params)}}
    report["claims"] = claims_report(result.predictions, claims, resamples=cfg.bootstrap_resamples, seed=cfg.seed)
    write_report(args.out, report)

    args.predictions.parent.mkdir(parents=True, exist_ok=True)
    if args.predictions.suffix == ".csv":
        table = result.predictions.copy()
        for column in ("queries", "frames", "timestamps", "weights"):
            table[column] = table[column].map(json.dumps)
        table.to_csv(args.predictions, index=False)
    else:
        result.predictions.to_parquet(args.predictions, index=False)
    args.plots.parent.mkdir(parents=True, exist_ok=True)
    args.plots.write_text(json.dumps(accuracy_plot_rows(result.report), indent=1) + "\n")
    if args.figures.exists():
        for old in args.figures.glob("*.png"):
            old.unlink()
    args.figures.mkdir(parents=True, exist_ok=True)
    write_example_figures(result.examples, args.figures)
    log.info(
        "evaluated %d questions x %d configurations in %.0fs: %s",
        report["n_questions"], len(report["samplers"]) * len(report["budgets"]), timings.get("seconds", 0.0),
        {label: per for label, per in report["accuracy"].items()},
    )
    for name, claim in report["claims"].items():
        log.info("claim %s: %s (p=%s)", name, "holds" if claim["holds"] else "does not hold",
                 claim.get("p", {k: c["p"] for k, c in claim.get("comparisons", {}).items()}))
    close()


if __name__ == "__main__":
    main()
