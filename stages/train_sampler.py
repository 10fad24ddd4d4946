"""DVC stage `train_sampler` (MSJoE stage 1): REINFORCE on the sampler with the difficulty-aware
advantage, MLLM frozen (params: train_sampler, embed.fps/max_candidates).

Runs as ``python stages/train_sampler.py ...``, ``python -m stages.train_sampler ...`` or under
``deepspeed stages/train_sampler.py ...`` (``--local_rank`` is accepted and ignored: DeepSpeed
reads the rank from the environment). Re-running resumes from ``--checkpoints``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

try:
    from _common import deterministic, params, setup, write_report, write_timings
except ImportError:  # python -m stages.train_sampler
    from stages._common import deterministic, params, setup, write_report, write_timings


def device_for_rank() -> str:
    """``cuda:<LOCAL_RANK>`` when DeepSpeed will use CUDA, else ``cpu``."""
    import os

    import torch

    if torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--questions", type=Path, required=True, help="ingest's questions.parquet")
    parser.add_argument("--video-root", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True, help="the embed stage's feature cache")
    parser.add_argument("--clip", type=Path, required=True, help="directory with clip.json")
    parser.add_argument("--mllm", type=Path, required=True, help="directory with mllm.json")
    parser.add_argument("--difficulty", type=Path, required=True, help="the difficulty stage's pass rates")
    parser.add_argument("--out", type=Path, required=True, help="directory for sampler.pt")
    parser.add_argument("--checkpoints", type=Path, required=True, help="resumable checkpoints (persisted)")
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True, help="per-step reward curve (DVC plot)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    log = setup("train_sampler")
    p = dict(params("train_sampler", args.params))
    embed = params("embed", args.params)
    deterministic(p.pop("threads", None), int(p.get("seed", 0)))
    split = p.pop("split", "train")
    max_questions = p.pop("max_questions", None)
    pipeline_params = p.pop("pipeline", {}) or {}
    p.pop("device", None)

    import pandas as pd

    from msjoe.clip.model import load_clip
    from msjoe.mllm.manifest import load_prepared_mllm
    from msjoe.pipeline import Pipeline, PipelineConfig
    from msjoe.rl.difficulty import trainable_qids
    from msjoe.rl.engine import dist_info
    from msjoe.rl.rollout import load_items
    from msjoe.rl.train_sampler import SamplerTrainConfig, train_sampler
    from msjoe.sampling import build_sampler

    cfg = SamplerTrainConfig.from_mapping(p)
    device = device_for_rank()
    items, counts = load_items(pd.read_parquet(args.questions), args.video_root, args.features, split, max_questions)
    difficulty, dropped = trainable_qids(pd.read_parquet(args.difficulty))
    pcfg = PipelineConfig.from_mapping({"fps": embed["fps"], "max_candidates": embed["max_candidates"],
                                        **pipeline_params})
    pipeline = Pipeline(load_clip(args.clip, device=device), load_prepared_mllm(args.mllm, device=device),
                        build_sampler("uniform"), None, pcfg)
    report = train_sampler(pipeline, items, difficulty, args.out, args.checkpoints, cfg)
    timings = report.pop("timings", {})
    write_timings("train_sampler", timings)
    if dist_info()[0] != 0 or not report["completed"]:
        return
    history = report.pop("history")
    args.plots.parent.mkdir(parents=True, exist_ok=True)
    keys = ("step", "accuracy", "uniform_pass_rate", "advantage", "loss", "entropy", "lr")
    args.plots.write_text(json.dumps([{k: h[k] for k in keys} for h in history], indent=1) + "\n")
    write_report(args.report, {**report, "questions": counts, "dropped_solved": dropped,
                               "params": cfg.__dict__})
    log.info("stage 1 done: %d steps, accuracy %.3f (uniform pass rate %.3f), %.0fs, peak RSS %.0f MiB",
             report["steps_done"], report["final_accuracy"], report["final_uniform_pass_rate"],
             timings["train_seconds"], timings["peak_rss_mb"])


if __name__ == "__main__":
    main()
