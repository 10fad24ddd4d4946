"""DVC stage `train_joint` (MSJoE stage 2): GRPO on the MLLM and REINFORCE on the sampler
(params: train_joint, embed.fps/max_candidates).

Runs as ``python stages/train_joint.py ...``, ``python -m stages.train_joint ...`` or on one or
many GPUs with ``deepspeed stages/train_joint.py ...`` (``--local_rank`` is accepted and
ignored). Re-running resumes from ``--checkpoints``. Outputs: ``--out``/sampler.pt and
``--out``/model + mllm.json (what evaluation and packaging load).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

try:
    from _common import deterministic, params, setup, write_report, write_timings
    from train_sampler import device_for_rank
except ImportError:  # python -m stages.train_joint
    from stages._common import deterministic, params, setup, write_report, write_timings
    from stages.train_sampler import device_for_rank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--questions", type=Path, required=True, help="ingest's questions.parquet")
    parser.add_argument("--video-root", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True, help="the embed stage's feature cache")
    parser.add_argument("--clip", type=Path, required=True, help="directory with clip.json")
    parser.add_argument("--mllm", type=Path, required=True, help="directory with mllm.json (the policy's start)")
    parser.add_argument("--sampler", type=Path, help="stage 1's sampler.pt (the sampler's start)")
    parser.add_argument("--out", type=Path, required=True, help="directory for sampler.pt, model/, mllm.json")
    parser.add_argument("--checkpoints", type=Path, required=True, help="resumable checkpoints (persisted)")
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True, help="per-step reward curves (DVC plot)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    log = setup("train_joint")
    p = dict(params("train_joint", args.params))
    embed = params("embed", args.params)
    deterministic(p.pop("threads", None), int(p.get("seed", 0)))
    split = p.pop("split", "train")
    max_questions = p.pop("max_questions", None)
    pipeline_params = p.pop("pipeline", {}) or {}
    dtype = p.pop("dtype", None)
    p.pop("device", None)
    if args.sampler is not None:
        p["sampler_init"] = str(args.sampler)

    import pandas as pd

    from msjoe.clip.model import load_clip
    from msjoe.mllm.manifest import load_prepared_mllm
    from msjoe.pipeline import Pipeline, PipelineConfig
    from msjoe.rl.engine import dist_info
    from msjoe.rl.rollout import load_items
    from msjoe.rl.train_joint import JointTrainConfig, train_joint
    from msjoe.sampling import build_sampler

    cfg = JointTrainConfig.from_mapping(p)
    device = device_for_rank()
    items, counts = load_items(pd.read_parquet(args.questions), args.video_root, args.features, split, max_questions)
    pcfg = PipelineConfig.from_mapping({"fps": embed["fps"], "max_candidates": embed["max_candidates"],
                                        **pipeline_params})
    pipeline = Pipeline(load_clip(args.clip, device=device),
                        load_prepared_mllm(args.mllm, device=device, dtype=dtype),
                        build_sampler("uniform"), None, pcfg)
    report = train_joint(pipeline, items, args.out, args.checkpoints, cfg)
    timings = report.pop("timings", {})
    write_timings("train_joint", timings)
    if dist_info()[0] != 0 or not report["completed"]:
        return
    history = report.pop("history")
    args.plots.parent.mkdir(parents=True, exist_ok=True)
    keys = ("step", "reward", "accuracy", "r_format", "r_info", "info_fire_rate", "query_parse_rate",
            "answer_parse_rate", "loss_mllm", "loss_sampler", "clip_fraction", "kl", "lr")
    args.plots.write_text(json.dumps([{k: h[k] for k in keys} for h in history], indent=1) + "\n")
    write_report(args.report, {**report, "questions": counts, "params": cfg.__dict__})
    log.info("stage 2 done: %d steps, reward %.3f -> %.3f, r_info fired in %.1f%% of rollouts, %.0fs, "
             "peak RSS %.0f MiB", report["steps_done"], report["first_reward"], report["final_reward"],
             100 * report["info_fire_rate"], timings["train_seconds"], timings["peak_rss_mb"])


if __name__ == "__main__":
    main()
