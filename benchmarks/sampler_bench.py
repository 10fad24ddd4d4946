"""Sampler overhead and the share of each stage in the end-to-end answer latency (prints, never asserts).

    python benchmarks/sampler_bench.py [--lengths 1000,4000,16000] [--repeats 5] [--threads 2]
        [--questions 8 --clip models/clip --mllm models/mllm --features data/features]

Part 1 times the 1-D U-Net sampler's forward pass (+ masked log-softmax and top-K) for T candidate
frames, for the demo (`tiny`) and the paper-scale (`default`, ~2M parameters) configurations, next to
the CLIP-similarity matrix product it consumes, measured in the same run. Part 2 answers a few demo
evaluation questions through `Pipeline.answer` and prints each stage's share of the total latency
(needs the outputs of `dvc repro`; skipped when they are missing).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from msjoe.sampling.draw import topk_frames
from msjoe.sampling.unet import UNetConfig, UNetSampler, prepare_inputs


def _time(fn, repeats: int) -> float:  # noqa: ANN001
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def sampler_overhead(lengths: list[int], repeats: int, dim: int = 768) -> None:
    print(f"{'config':>8} {'params':>9} {'T':>6} {'U-Net fwd+top-K ms':>19} {'similarity ms':>14} {'ratio':>6}")
    rng = np.random.default_rng(0)
    for name, cfg in (("tiny", UNetConfig.tiny()), ("default", UNetConfig())):
        model = UNetSampler(cfg).eval()
        for length in lengths:
            frames = torch.from_numpy(rng.standard_normal((length, dim)).astype(np.float32))
            queries = torch.from_numpy(rng.standard_normal((4, dim)).astype(np.float32))
            sim = queries @ frames.T
            x, mask = prepare_inputs([sim], cfg.levels)

            @torch.inference_mode()
            def run() -> None:
                logp = model.log_probs(x, mask)
                topk_frames(logp[0], 32, mask[0])

            sampler_ms = _time(run, repeats) * 1000
            similarity_ms = _time(lambda: queries @ frames.T, repeats) * 1000
            print(f"{name:>8} {model.num_parameters():>9,} {length:>6} {sampler_ms:>19.2f} {similarity_ms:>14.2f} "
                  f"{sampler_ms / max(similarity_ms, 1e-9):>6.1f}")


def stage_shares(args: argparse.Namespace) -> None:
    import pandas as pd

    from msjoe.clip.model import load_clip
    from msjoe.features import FeatureStore
    from msjoe.mllm.manifest import load_prepared_mllm
    from msjoe.pipeline import STAGES, Pipeline, PipelineConfig, load_sampler

    needed = [args.clip / "clip.json", args.mllm / "mllm.json", args.questions]
    if not all(path.exists() for path in needed):
        print(f"\nstage shares skipped: run `dvc repro` first (missing {[str(p) for p in needed if not p.exists()]})")
        return
    questions = pd.read_parquet(args.questions)
    questions = questions[questions["split"] == "eval"].head(args.questions_n)
    pipeline = Pipeline(load_clip(args.clip), load_prepared_mllm(args.mllm), load_sampler("msjoe", {"config": "tiny"}),
                        FeatureStore(args.features), PipelineConfig(fps=2.0, max_candidates=256))
    totals = {stage: 0.0 for stage in STAGES}
    for row in questions.itertuples(index=False):
        answer = pipeline.answer(args.video_root / row.video, row.question, list(row.options), args.budget)
        for stage in STAGES:
            totals[stage] += answer.timings.get(stage, 0.0)
    total = totals.pop("total")
    print(f"\nstage shares of end-to-end latency, {len(questions)} questions, K={args.budget} "
          f"(mean {1000 * total / max(len(questions), 1):.0f} ms per answer, features cached):")
    for stage, seconds in totals.items():
        print(f"  {stage:>10}: {100 * seconds / total:5.1f} %  ({1000 * seconds / max(len(questions), 1):7.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="1000,4000,16000")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--questions-n", type=int, default=8)
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--clip", type=Path, default=Path("models/clip"))
    parser.add_argument("--mllm", type=Path, default=Path("models/mllm"))
    parser.add_argument("--features", type=Path, default=Path("data/features"))
    parser.add_argument("--questions", type=Path, default=Path("data/ingest/questions.parquet"))
    parser.add_argument("--video-root", type=Path, default=Path("data/world"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sampler_overhead([int(n) for n in args.lengths.split(",")], args.repeats)
    stage_shares(args)


if __name__ == "__main__":
    main()
