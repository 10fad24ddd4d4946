"""DVC stage `embed`: cached CLIP features of every ingested video's candidate frames (params: embed).

Spread over processes with ``torchrun --nproc_per_node N stages/embed.py <the arguments in
dvc.yaml>`` (README "Sharded embed and evaluate"): each rank embeds its share of the videos,
rank 0 writes the index and the report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import add_params_argument, deterministic, params, setup, write_report, write_timings
import pandas as pd  # after _common, which pins numpy's kernels before numpy loads

from msjoe.clip.model import load_clip
from msjoe.embed import EmbedConfig, embed_videos
from msjoe.shards import close, init_from_env, local_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--videos", type=Path, required=True, help="ingest's videos.parquet")
    parser.add_argument("--video-root", type=Path, required=True)
    parser.add_argument("--clip", type=Path, required=True, help="directory with clip.json")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    add_params_argument(parser)
    args = parser.parse_args()
    log = setup("embed")
    p = params("embed", args.params)
    deterministic(p.pop("threads", None))
    device = p.pop("device", "cpu")
    rank, world = init_from_env(device)
    clip = load_clip(args.clip, device=local_device(device))
    report = embed_videos(pd.read_parquet(args.videos), args.video_root, clip, args.out, EmbedConfig(**p))
    close()
    if rank != 0:
        return
    write_report(args.report, report.to_dict())
    write_timings("embed", {**report.timings(), "processes": world})
    log.info("embedded %d videos (%d cached, %d failed), %.0f frames/s", report.embedded, report.cached,
             report.failed, report.frames_per_s)


if __name__ == "__main__":
    main()
