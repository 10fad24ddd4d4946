"""DVC stage `difficulty`: base-MLLM pass rate per training question with uniform frames
(params: difficulty, inference, embed.fps/max_candidates)."""

from __future__ import annotations

import argparse
from pathlib import Path

import _rl
from _common import write_report, write_timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    _rl.add_inputs(parser)
    parser.add_argument("--out", type=Path, required=True, help="per-question pass rates (.parquet)")
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args()
    log, run = _rl.start("difficulty", args)

    from msjoe.rl.difficulty import DifficultyConfig, measure_difficulty

    cfg = DifficultyConfig.from_mapping(run.train)
    pipeline, items, counts = _rl.load_inputs(args, run)
    result = measure_difficulty(pipeline, items, cfg)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result.table.to_parquet(args.out, index=False)
    write_report(args.report, {**result.report, "questions": counts, "split": run.split})
    write_timings("difficulty", result.timings)
    log.info("%d questions: %d solved every time are dropped from RL, %d trainable",
             result.report["n_questions"], result.report["n_solved"], result.report["n_trainable"])


if __name__ == "__main__":
    main()
