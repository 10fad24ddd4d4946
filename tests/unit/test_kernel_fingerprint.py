"""tools.kernel_fingerprint: the same machine always prints the same fingerprints, and a changed
kernel pin changes the operation it governs."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from msjoe.cpu_kernels import CPU_KERNEL_PINS

ROOT = Path(__file__).resolve().parents[2]


def _fingerprint(**env: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in CPU_KERNEL_PINS}
    run = subprocess.run(
        [sys.executable, "-m", "tools.kernel_fingerprint", "--json"],
        cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.fixture(scope="module")
def pinned() -> dict[str, str]:
    """One run under the stage pins, shared by the tests below (each run takes ~10 s)."""
    return _fingerprint()


def test_fingerprints_are_stable_across_processes_and_name_each_operation(pinned: dict[str, str]) -> None:
    # another process with another hash seed, thread setting and allocator behaviour
    second = _fingerprint(PYTHONHASHSEED="123", OMP_NUM_THREADS="1", MALLOC_PERTURB_="165")
    assert pinned == second
    assert {"linear", "attention", "exp", "sqrt", "conv2d", "adamw", "engine_step", "all"} <= set(pinned)
    assert all(len(v) == 16 for v in pinned.values())


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the pins name x86 instruction sets")
def test_mkl_s_pin_shows_in_the_operations_mkl_runs_and_nowhere_else(pinned: dict[str, str]) -> None:
    auto = _fingerprint(MKL_CBWR="AUTO")  # MKL's own CPU dispatch instead of the pinned branch
    changed = {k for k in pinned if pinned[k] != auto[k]}
    # MKL computes the matrix products (and so attention and the optimiser's inputs)...
    assert {"linear", "attention", "all"} <= changed
    # ...but not torch's own kernels, oneDNN's convolutions, nor the trainers' optimiser (fused:
    # its sqrt is torch's own, not MKL's, whose kernel starts from the vendor-specific rsqrtps)
    assert not changed & {"softmax", "gelu", "rsqrt", "layer_norm", "conv2d", "conv1d", "sin_cos", "adamw"}
