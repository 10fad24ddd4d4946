"""Shared plumbing of the stage CLIs: params.yaml sections, logging, JSON reports.

Only stages read params.yaml; they pass plain values to one library call each.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml

# Stages share two cores with a decode worker or another job: busy-waiting OpenMP threads starve
# them (benchmarks/README.md). Set before any stage imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# cuBLAS's deterministic workspace mode, which deterministic() needs for the stages that run on a
# GPU (README "Reproducibility"); read when CUDA initialises, so also set before torch is imported.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def params(section: str, path: Path = Path("params.yaml")) -> dict[str, Any]:
    """One section of params.yaml (the stage declares it as its DVC params dependency)."""
    with open(path) as handle:
        data = yaml.safe_load(handle) or {}
    if section not in data:
        raise SystemExit(f"{path} has no '{section}' section")
    return data[section] or {}


def setup(name: str) -> logging.Logger:
    logging.basicConfig(level=os.environ.get("MSJOE_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s %(message)s")
    for noisy in ("great_expectations", "alembic"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    return logging.getLogger(f"stage.{name}")


def write_report(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=float) + "\n")


def set_threads(threads: int | None) -> None:
    """torch intra-op threads; small CPU models are faster with fewer threads than cores."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def deterministic(threads: int | None, seed: int = 0) -> None:
    """The one determinism setup of every torch stage, called before it builds anything.

    ``threads`` (the stage's ``threads`` param) fixes torch's intra-op team: float reductions
    are split per thread, so results are bit-exact for a given value, not across values (None
    leaves torch's default, which follows the core count and ``OMP_NUM_THREADS``). One
    inter-op thread; deterministic kernels where torch has them (``warn_only``: an op without
    one still runs, on a GPU, with a warning); python, numpy and torch global RNGs seeded with
    ``seed`` (the library seeds its own draws explicitly; this covers anything that does not).
    """
    import random

    import numpy as np
    import torch

    set_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or inter-op work has started in this process
        pass
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
