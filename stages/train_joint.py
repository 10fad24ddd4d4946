"""DVC stage `train_joint` (MSJoE stage 2): GRPO on the MLLM and REINFORCE on the sampler
(params: train_joint, inference, embed.fps/max_candidates).

Runs as ``python stages/train_joint.py ...``, ``python -m stages.train_joint ...`` or on one or
many GPUs with ``deepspeed stages/train_joint.py ...``. Re-running resumes from
``--checkpoints``. Outputs: ``--out``/sampler.pt and ``--out``/model + mllm.json (what
evaluation and packaging load).
"""

from __future__ import annotations

from pathlib import Path

try:
    import _rl
    from _common import write_report, write_timings
except ImportError:  # python -m stages.train_joint
    from stages import _rl
    from stages._common import write_report, write_timings


def main() -> None:
    parser = _rl.arguments(__doc__, out_help="directory for sampler.pt, model/, mllm.json")
    parser.add_argument("--sampler", type=Path, help="stage 1's sampler.pt (the sampler's start)")
    args = parser.parse_args()
    log, run = _rl.start("train_joint", args)
    train = {**run.train, **({"sampler_init": str(args.sampler)} if args.sampler is not None else {})}

    from msjoe.rl.engine import dist_info
    from msjoe.rl.train_joint import JointTrainConfig, train_joint

    cfg = JointTrainConfig.from_mapping(train)
    pipeline, items, counts = _rl.load_inputs(args, run)
    report = train_joint(pipeline, items, args.out, args.checkpoints, cfg)
    # the step a run resumed from depends on what an earlier run left behind: run state
    timings = {**report.pop("timings", {}), "resumed_from": report.pop("resumed_from")}
    write_timings("train_joint", timings)
    if dist_info()[0] != 0 or not report["completed"]:
        return
    _rl.write_curves(args.plots, report.pop("history"),
                     ("step", "reward", "accuracy", "r_format", "r_info", "info_fire_rate", "query_parse_rate",
                      "answer_parse_rate", "loss_mllm", "loss_sampler", "clip_fraction", "kl", "lr"))
    write_report(args.report, {**report, "questions": counts, "params": cfg.__dict__})
    log.info("stage 2 done: %d steps, reward %.3f -> %.3f, r_info fired in %.1f%% of rollouts, %.0fs, "
             "peak RSS %.0f MiB", report["steps_done"], report["first_reward"], report["final_reward"],
             100 * report["info_fire_rate"], timings["train_seconds"], timings["peak_rss_mb"])


if __name__ == "__main__":
    main()
