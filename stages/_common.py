"""Shared plumbing of the stage CLIs: params.yaml sections, logging, JSON reports.

Only stages read params.yaml; they pass plain values to one library call each.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from msjoe.cpu_kernels import pin_cpu_kernels

# The same numbers on any x86-64 CPU: numpy and torch run their AVX2 kernels even where AVX-512
# exists (README "Reproducibility"). Before any stage imports numpy or torch.
pin_cpu_kernels()
# Stages share two cores with a decode worker or another job: busy-waiting OpenMP threads starve
# them (benchmarks/README.md). Set before any stage imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# cuBLAS's deterministic workspace mode, which deterministic() needs for the stages that run on a
# GPU (README "Reproducibility"); read when CUDA initialises, so also set before torch is imported.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def add_params_argument(parser: argparse.ArgumentParser) -> None:
    """``--params``: the params file a stage reads its sections from (benchmark_eval/ has its own)."""
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (benchmark_eval/ has its own)")


def params(section: str, path: Path = Path("params.yaml")) -> dict[str, Any]:
    """One section of params.yaml (the stage declares it as its DVC params dependency)."""
    with open(path) as handle:
        data = yaml.safe_load(handle) or {}
    if section not in data:
        raise SystemExit(f"{path} has no '{section}' section")
    return data[section] or {}


def pipeline_settings(path: Path = Path("params.yaml"), **extra: Any) -> dict[str, Any]:
    """:class:`msjoe.pipeline.PipelineConfig` fields of every stage that asks the MLLM: the
    candidate frames of ``embed`` (fps and cap, which key the feature cache) and the shared
    ``inference`` section, plus the stage's own ``extra`` (batch size, seed)."""
    embed = params("embed", path)
    return {"fps": embed["fps"], "max_candidates": embed["max_candidates"], **params("inference", path), **extra}


#: Where stages put run-dependent measurements (README "Reproducibility"): relative to the
#: working directory the stages run in (the repository root); not a DVC output, gitignored.
TIMINGS_DIR = Path("reports/timings")
_run: dict[str, Any] = {}


def setup(name: str) -> logging.Logger:
    logging.basicConfig(level=os.environ.get("MSJOE_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s %(message)s")
    for noisy in ("great_expectations", "alembic"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if not _run:  # every stage: total wall time, CPU time and peak RSS into TIMINGS_DIR at exit
        age = _process_age()  # the interpreter start and imports before setup(); a bogus value
        age = age if age is not None and 0.0 <= age < 3600.0 else 0.0  # (a faked uptime) is ignored
        _run.update(stage=name, wall=time.perf_counter() - age, extra={})
        atexit.register(_write_run_timings)
    return logging.getLogger(f"stage.{name}")


def write_report(path: Path, payload: dict[str, Any]) -> None:
    """A stage's DVC metrics or plot JSON: deterministic values only; times, memory and run state
    go to :func:`write_timings` (``tests/report_lint.py`` checks the reports for such keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=float) + "\n")


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MiB: ``VmHWM`` (per address space, so not the
    high-water mark of the process that started this one, which ``ru_maxrss`` inherits across
    vfork+exec), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
    except (ImportError, OSError):
        return None


def _process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``), so a stage's wall time includes
    the interpreter start and its imports; None elsewhere (then timed from :func:`setup`)."""
    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
        return max(float(Path("/proc/uptime").read_text().split()[0]) - started, 0.0)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _cpu_seconds() -> dict[str, float]:
    """CPU seconds of this process (all threads) and of its reaped children (decode workers)."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = {"cpu_seconds": round(time.process_time(), 3)}
    if children.ru_utime + children.ru_stime > 0:
        out["children_cpu_seconds"] = round(children.ru_utime + children.ru_stime, 3)
    return out


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def timings_path(stage: str) -> Path:
    rank = _rank()
    return TIMINGS_DIR / (f"{stage}.json" if rank == 0 else f"{stage}.rank{rank}.json")


def write_timings(stage: str, mapping: Mapping[str, Any]) -> Path:
    """Record run-dependent measurements of ``stage`` in ``reports/timings/<stage>.json``.

    Wall and CPU time, throughput, peak memory, per-stage latencies: they differ between any two
    runs, so they stay out of the DVC metrics (whose hashes ``dvc.lock`` records) and go here,
    a file DVC does not track. Merged with the stage's earlier calls; the stage's totals so far
    (``wall_seconds`` since the process started, ``cpu_seconds`` of the process and
    ``children_cpu_seconds`` of its workers, ``peak_rss_mb``) are added, and refreshed at exit.
    Rank > 0 of a distributed run writes ``<stage>.rank<N>.json``.
    """
    if _run.get("stage") == stage:
        _run["extra"].update(mapping)
        extra = _run["extra"]
    else:
        extra = dict(mapping)
    payload: dict[str, Any] = {"stage": stage, **extra}
    if _run.get("stage") == stage:
        payload["wall_seconds"] = round(time.perf_counter() - _run["wall"], 3)
    payload.update(_cpu_seconds(), peak_rss_mb=peak_rss_mb())
    path = timings_path(stage)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=float) + "\n")
    except OSError as err:  # a measurement must never fail the stage
        logging.getLogger(f"stage.{stage}").warning("timings not written to %s: %s", path, err)
    return path


def _write_run_timings() -> None:
    write_timings(_run["stage"], {})


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
