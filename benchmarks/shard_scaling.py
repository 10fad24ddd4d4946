"""Embed throughput with 1 process and with N torchrun ranks, measured in one run.

Runs the embed stage script itself (``stages/embed.py``) on the pipeline's ingested videos into
fresh temporary caches, once as one process with ``--threads`` torch threads and once under
``torchrun --nproc_per_node N`` with ``threads // N`` threads per rank (the same cores in
total), and prints frames/s of each with their ratio. Needs the demo DAG's outputs
(``make demo``): ``data/ingest/videos.parquet``, ``data/world``, ``models/clip``.

    .venv/bin/python benchmarks/shard_scaling.py [--processes 2] [--threads 2] [--videos 40]

Expected scaling on a GPU node (arithmetic, not a measurement here): each rank embeds about
1/N of the videos and needs no communication until the final index, so frames/s grows as
N x (one rank's rate) while every GPU has its own decoding cores (``decode_workers`` per rank)
and the shares are even (the largest share holds at most one video more than the smallest).
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
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
    else:
        command = [sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MSJOE_LOG_LEVEL": "WARNING"}
    subprocess.run(command, cwd=work, env=env, check=True)
    return json.loads((work / "reports" / "timings" / "embed.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in total (split over the ranks)")
    parser.add_argument("--videos", type=int, default=40, help="first N ingested videos")
    args = parser.parse_args()
    table = pd.read_parquet(ROOT / "data" / "ingest" / "videos.parquet").head(args.videos)
    with tempfile.TemporaryDirectory() as tmp:
        videos = Path(tmp) / "videos.parquet"
        table.to_parquet(videos, index=False)
        one = run_embed(Path(tmp) / "one", 1, args.threads, videos)
        many = run_embed(Path(tmp) / "many", args.processes, max(1, args.threads // args.processes), videos)
    print(f"videos: {len(table)}, cores used: {args.threads}")
    print(f"1 process x {args.threads} threads: {one['frames_per_s']:8.1f} frames/s ({one['seconds']:.1f} s)")
    print(f"{args.processes} ranks x {max(1, args.threads // args.processes)} threads: "
          f"{many['frames_per_s']:8.1f} frames/s ({many['seconds']:.1f} s)")
    print(f"ratio ({args.processes} ranks / 1 process): {many['frames_per_s'] / one['frames_per_s']:.2f}")


if __name__ == "__main__":
    main()
