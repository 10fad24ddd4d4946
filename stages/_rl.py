"""What the stages around RL (``difficulty``, ``train_sampler``, ``train_joint``) share: the
command line, the run-level keys of their params section, and the frozen-CLIP pipeline they
run in (asked as params.yaml's ``inference`` section says, like every other stage).

Both run as ``python stages/<stage>.py``, ``python -m stages.<stage>`` or under the DeepSpeed
launcher (``--local_rank`` is accepted and ignored: DeepSpeed passes the rank in the
environment too).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from _common import add_params_argument, deterministic, params, pipeline_settings, setup
except ImportError:  # python -m stages.<stage>
    from stages._common import add_params_argument, deterministic, params, pipeline_settings, setup

#: Keys of an RL params section that say where and on what the stage runs, not how it trains.
RUN_KEYS = ("threads", "split", "max_questions", "device", "dtype")


def add_inputs(parser: argparse.ArgumentParser) -> None:
    """The training questions, their videos and features, the two models and the params file."""
    parser.add_argument("--questions", type=Path, required=True, help="ingest's questions.parquet")
    parser.add_argument("--video-root", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True, help="the embed stage's feature cache")
    parser.add_argument("--clip", type=Path, required=True, help="directory with clip.json")
    parser.add_argument("--mllm", type=Path, required=True, help="directory with mllm.json (the MLLM to start from)")
    add_params_argument(parser)


def arguments(description: str, out_help: str) -> argparse.ArgumentParser:
    """The inputs and outputs both training stages take; a stage adds its own before parsing."""
    parser = argparse.ArgumentParser(description=description)
    add_inputs(parser)
    parser.add_argument("--out", type=Path, required=True, help=out_help)
    parser.add_argument("--checkpoints", type=Path, required=True, help="resumable checkpoints (persisted)")
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True, help="per-step training curves (DVC plot)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


@dataclass(frozen=True)
class RunSettings:
    """A params section split into the trainer's settings and where it runs."""

    train: dict[str, Any]
    threads: int | None
    split: str
    max_questions: int | None
    dtype: str | None


def split_section(section: Mapping[str, Any]) -> RunSettings:
    """The trainer's keys apart from :data:`RUN_KEYS` (``device`` is chosen per rank)."""
    train = {k: v for k, v in section.items() if k not in RUN_KEYS}
    return RunSettings(train, section.get("threads"), section.get("split", "train"), section.get("max_questions"),
                       section.get("dtype"))


def start(stage: str, args: argparse.Namespace) -> tuple[logging.Logger, RunSettings]:
    """Logging, ``stage``'s params section split (:func:`split_section`), and seeds and thread
    counts fixed before any model is built: the first lines of every RL stage."""
    log = setup(stage)
    run = split_section(params(stage, args.params))
    deterministic(run.threads, int(run.train.get("seed", 0)))
    return log, run


def device_for_rank() -> str:
    """``cuda:<LOCAL_RANK>`` when DeepSpeed will use CUDA, else ``cpu``."""
    import os

    import torch

    if torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu"


def load_inputs(args: argparse.Namespace, run: RunSettings) -> tuple[Any, list, dict]:
    """The pipeline (frozen CLIP, the MLLM to start from, no feature store: items carry their
    features; asked as the params file's ``inference`` section says) on this rank's device, the
    training items and their counts."""
    import pandas as pd

    from msjoe.clip.model import load_clip
    from msjoe.mllm.manifest import load_prepared_mllm
    from msjoe.pipeline import Pipeline, PipelineConfig
    from msjoe.rl.rollout import load_items
    from msjoe.sampling import build_sampler

    device = device_for_rank()
    items, counts = load_items(pd.read_parquet(args.questions), args.video_root, args.features, run.split,
                               run.max_questions)
    pcfg = PipelineConfig.from_mapping(pipeline_settings(args.params))
    pipeline = Pipeline(load_clip(args.clip, device=device),
                        load_prepared_mllm(args.mllm, device=device, dtype=run.dtype),
                        build_sampler("uniform"), None, pcfg)
    return pipeline, items, counts


def write_curves(path: Path, history: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> None:
    """The per-step ``keys`` of ``history`` as a DVC plot."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{k: h[k] for k in keys} for h in history], indent=1) + "\n")
