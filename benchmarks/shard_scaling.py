"""Embed and evaluate throughput with 1 process and with N torchrun ranks, measured in one run.

Runs the stage scripts themselves, once as one process with ``--threads`` torch threads and once
under ``torchrun --nproc_per_node N`` with ``threads // N`` threads per rank (the same cores in
total), and prints the rate of each with their ratio:

* ``stages/embed.py`` on the first ``--videos`` ingested videos into fresh temporary caches
  (frames/s);
* ``stages/evaluate.py`` on the first ``--questions`` eval questions with four samplers at
  K = 8 (questions/s; each question is answered by every sampler).

Needs the demo DAG's outputs (``make demo``): ``data/ingest``, ``data/world``, ``data/features``,
``models/clip``, ``models/mllm``, ``models/sampler_stage1``.

    .venv/bin/python benchmarks/shard_scaling.py [--processes 2] [--threads 2] [--videos 40] [--questions 64]

Expected scaling on a GPU node (arithmetic, not a measurement here): each rank embeds about
1/N of the videos and needs no communication until the final index, so frames/s grows as
N x (one rank's rate) while every GPU has its own decoding cores (``decode_workers`` per rank)
and the shares are even (the largest share holds at most one video more than the smallest).
Evaluate: each rank generates 1/N of the query-turn batches and 1/N of the answer-turn batches,
and the ranks exchange only the replies (a few KB) twice; feature loading, CLIP text encoding
and the samplers' choices are repeated on every rank. At paper scale a 7B model's generation
is nearly all of the time, so questions/s grows close to N x; on this 2-core machine the two
ranks share the same cores, so the ratio mostly shows the cost of the repeated parts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]


def run_embed(work: Path, processes: int, threads: int, videos: Path) -> dict:
    """One cold embed run in ``work``; returns the stage's timings (frames/s, seconds)."""
    embed = dict(yaml.safe_load((ROOT / "params.yaml").read_text())["embed"])
    embed.update(threads=threads, device="cpu")
    work.mkdir(parents=True)
    (work / "params.yaml").write_text(yaml.safe_dump({"embed": embed}))
    args = [str(ROOT / "stages" / "embed.py"), "--videos", str(videos), "--video-root", str(ROOT / "data" / "world"),
            "--clip", str(ROOT / "models" / "clip"), "--out", "features", "--report", "embed.json",
            "--params", "params.yaml"]
    _run(args, work, processes, threads)
    return json.loads((work / "reports" / "timings" / "embed.json").read_text())


def run_evaluate(work: Path, processes: int, threads: int, questions: int) -> dict:
    """One evaluate run in ``work`` on the first ``questions`` eval questions; returns its
    timings with ``questions_per_s`` added."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    evaluate = dict(params["evaluate"])
    samplers = {k: evaluate["samplers"][k] for k in ("uniform", "clip_topk_gen", "aks_gen")}
    samplers["msjoe_stage1"] = {"name": "msjoe"}
    evaluate.update(samplers=samplers, budgets=[8], claims=[], oracle=False, n_example_figures=0,
                    max_questions=questions, threads=threads, device="cpu")
    work.mkdir(parents=True)
    (work / "params.yaml").write_text(yaml.safe_dump({"embed": params["embed"], "evaluate": evaluate,
                                                      "inference": params["inference"]}))
    # the prepared MLLM names its weights relative to the repository: point at them absolutely
    from dataclasses import replace

    from msjoe.mllm.manifest import read_manifest, write_manifest

    manifest = read_manifest(ROOT / "models" / "mllm")
    path = ROOT / manifest.name_or_path
    write_manifest(work / "mllm", replace(manifest, name_or_path=str(path)) if path.is_dir() else manifest)
    args = [str(ROOT / "stages" / "evaluate.py"), "--questions", str(ROOT / "data" / "ingest" / "questions.parquet"),
            "--video-root", str(ROOT / "data" / "world"), "--features", str(ROOT / "data" / "features"),
            "--clip", str(ROOT / "models" / "clip"), "--mllm", f"base={work / 'mllm'}",
            "--checkpoint", f"msjoe_stage1={ROOT / 'models' / 'sampler_stage1' / 'sampler.pt'}",
            "--out", "evaluate.json", "--predictions", "predictions.parquet", "--plots", "plot.json",
            "--figures", "figures", "--params", "params.yaml"]
    _run(args, work, processes, threads)
    timings = json.loads((work / "reports" / "timings" / "evaluate.json").read_text())
    n = json.loads((work / "evaluate.json").read_text())["n_questions"]
    return {**timings, "questions": n, "questions_per_s": n / timings["seconds"]}


def _run(args: list[str], work: Path, processes: int, threads: int) -> None:
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
    else:
        command = [sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MSJOE_LOG_LEVEL": "WARNING"}
    subprocess.run(command, cwd=work, env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in total (split over the ranks)")
    parser.add_argument("--videos", type=int, default=40, help="first N ingested videos")
    parser.add_argument("--questions", type=int, default=64, help="first N eval questions")
    args = parser.parse_args()
    per_rank = max(1, args.threads // args.processes)
    table = pd.read_parquet(ROOT / "data" / "ingest" / "videos.parquet").head(args.videos)
    with tempfile.TemporaryDirectory() as tmp:
        videos = Path(tmp) / "videos.parquet"
        table.to_parquet(videos, index=False)
        one = run_embed(Path(tmp) / "one", 1, args.threads, videos)
        many = run_embed(Path(tmp) / "many", args.processes, per_rank, videos)
        eval_one = run_evaluate(Path(tmp) / "eval_one", 1, args.threads, args.questions)
        eval_many = run_evaluate(Path(tmp) / "eval_many", args.processes, per_rank, args.questions)
    print(f"embed: {len(table)} videos, cores used: {args.threads}")
    print(f"  1 process x {args.threads} threads: {one['frames_per_s']:8.1f} frames/s ({one['seconds']:.1f} s)")
    print(f"  {args.processes} ranks x {per_rank} threads: {many['frames_per_s']:8.1f} frames/s ({many['seconds']:.1f} s)")
    print(f"  ratio ({args.processes} ranks / 1 process): {many['frames_per_s'] / one['frames_per_s']:.2f}")
    print(f"evaluate: {eval_one['questions']} questions x 4 samplers at K = 8")
    print(f"  1 process x {args.threads} threads: {eval_one['questions_per_s']:8.2f} questions/s "
          f"({eval_one['seconds']:.1f} s)")
    print(f"  {args.processes} ranks x {per_rank} threads: {eval_many['questions_per_s']:8.2f} questions/s "
          f"({eval_many['seconds']:.1f} s)")
    print(f"  ratio ({args.processes} ranks / 1 process): {eval_many['questions_per_s'] / eval_one['questions_per_s']:.2f}")


if __name__ == "__main__":
    main()
