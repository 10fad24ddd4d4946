"""DVC stage `difficulty`: base-MLLM pass rate per training question with uniform frames
(params: difficulty, embed.fps/max_candidates)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from _common import deterministic, params, setup, write_report, write_timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--questions", type=Path, required=True, help="ingest's questions.parquet")
    parser.add_argument("--video-root", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True, help="the embed stage's feature cache")
    parser.add_argument("--clip", type=Path, required=True, help="directory with clip.json")
    parser.add_argument("--mllm", type=Path, required=True, help="directory with mllm.json")
    parser.add_argument("--out", type=Path, required=True, help="per-question pass rates (.parquet)")
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    log = setup("difficulty")
    p = dict(params("difficulty", args.params))
    embed = params("embed", args.params)
    deterministic(p.pop("threads", None), int(p.get("seed", 0)))
    device = p.pop("device", "cpu")
    split = p.pop("split", "train")
    max_questions = p.pop("max_questions", None)
    pipeline_params = p.pop("pipeline", {}) or {}

    from msjoe.clip.model import load_clip
    from msjoe.mllm.manifest import load_prepared_mllm
    from msjoe.pipeline import Pipeline, PipelineConfig
    from msjoe.rl.difficulty import DifficultyConfig, measure_difficulty
    from msjoe.rl.rollout import load_items
    from msjoe.sampling import build_sampler

    cfg = DifficultyConfig.from_mapping(p)
    items, counts = load_items(pd.read_parquet(args.questions), args.video_root, args.features, split, max_questions)
    pcfg = PipelineConfig.from_mapping(
        {"fps": embed["fps"], "max_candidates": embed["max_candidates"], **pipeline_params}
    )
    pipeline = Pipeline(load_clip(args.clip, device=device), load_prepared_mllm(args.mllm, device=device),
                        build_sampler("uniform"), None, pcfg)
    result = measure_difficulty(pipeline, items, cfg)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result.table.to_parquet(args.out, index=False)
    write_report(args.report, {**result.report, "questions": counts, "split": split})
    write_timings("difficulty", result.timings)
    log.info("%d questions: %d solved every time are dropped from RL, %d trainable",
             result.report["n_questions"], result.report["n_solved"], result.report["n_trainable"])


if __name__ == "__main__":
    main()
