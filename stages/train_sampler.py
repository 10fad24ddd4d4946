"""DVC stage `train_sampler` (MSJoE stage 1): REINFORCE on the sampler with the difficulty-aware
advantage, MLLM frozen (params: train_sampler, inference, embed.fps/max_candidates).

Runs as ``python stages/train_sampler.py ...``, ``python -m stages.train_sampler ...`` or under
``deepspeed stages/train_sampler.py ...``. Re-running resumes from ``--checkpoints``.
"""

from __future__ import annotations

from pathlib import Path

try:
    import _rl
    from _common import write_report, write_timings
except ImportError:  # python -m stages.train_sampler
    from stages import _rl
    from stages._common import write_report, write_timings


def main() -> None:
    parser = _rl.arguments(__doc__, out_help="directory for sampler.pt")
    parser.add_argument("--difficulty", type=Path, required=True, help="the difficulty stage's pass rates")
    args = parser.parse_args()
    log, run = _rl.start("train_sampler", args)

    import pandas as pd

    from msjoe.rl.difficulty import trainable_qids
    from msjoe.rl.engine import dist_info
    from msjoe.rl.train_sampler import SamplerTrainConfig, train_sampler

    cfg = SamplerTrainConfig.from_mapping(run.train)
    pipeline, items, counts = _rl.load_inputs(args, run)
    difficulty, dropped = trainable_qids(pd.read_parquet(args.difficulty))
    report = train_sampler(pipeline, items, difficulty, args.out, args.checkpoints, cfg)
    # the step a run resumed from depends on what an earlier run left behind: run state
    timings = {**report.pop("timings", {}), "resumed_from": report.pop("resumed_from")}
    write_timings("train_sampler", timings)
    if dist_info()[0] != 0 or not report["completed"]:
        return
    _rl.write_curves(args.plots, report.pop("history"),
                     ("step", "accuracy", "uniform_pass_rate", "advantage", "loss", "entropy", "lr"))
    write_report(args.report, {**report, "questions": counts, "dropped_solved": dropped, "params": cfg.__dict__})
    log.info("stage 1 done: %d steps, accuracy %.3f (uniform pass rate %.3f), %.0fs, peak RSS %.0f MiB",
             report["steps_done"], report["final_accuracy"], report["final_uniform_pass_rate"],
             timings["train_seconds"], timings["peak_rss_mb"])


if __name__ == "__main__":
    main()
