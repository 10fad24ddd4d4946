"""The CPU kernel pins: every stage runs numpy's and torch's AVX2 kernels and MKL's vendor-neutral branch, whatever the CPU."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from msjoe.cpu_kernels import CPU_KERNEL_PINS

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="the pins name x86 instruction sets"
)


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter whose environment has none of the pins (the test
    process has them from conftest), plus ``env``."""
    clean = {k: v for k, v in os.environ.items() if k not in CPU_KERNEL_PINS}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=120
    )


def _has_avx2() -> bool:
    from numpy._core._multiarray_umath import __cpu_features__

    return bool(__cpu_features__.get("AVX2"))


@pytest.mark.skipif(not _has_avx2(), reason="the pins ask for AVX2 kernels")
def test_a_stage_process_runs_the_avx2_kernels_of_numpy_and_torch() -> None:
    probe = _python(
        "import sys; sys.path.insert(0, 'stages'); import _common, os, numpy, torch\n"
        "from numpy._core._multiarray_umath import __cpu_features__ as f\n"
        "print(torch.backends.cpu.get_cpu_capability(), f['X86_V4'], os.environ['ONEDNN_MAX_CPU_ISA'])"
    )
    assert probe.returncode == 0, probe.stderr
    capability, numpy_avx512, onednn = probe.stdout.split()
    # numpy's AVX-512 dispatch target is switched off (False also on CPUs without it), torch's
    # kernels are the AVX2 ones even on an AVX-512 CPU
    assert (capability, numpy_avx512, onednn) == ("AVX2", "False", "AVX2")


def test_a_stage_process_runs_mkl_in_its_vendor_neutral_branch() -> None:
    # MKL's AVX2 branch exists on Intel CPUs only (elsewhere MKL silently runs AUTO), so the pin
    # must be COMPATIBLE; MKL_VERBOSE shows the branch a real torch matmul ran in
    probe = _python(
        "import sys; sys.path.insert(0, 'stages'); import _common, torch\n"
        "torch.ones(64, 64) @ torch.ones(64, 64)",
        MKL_VERBOSE="1",
    )
    assert probe.returncode == 0, probe.stderr
    calls = [line for line in probe.stdout.splitlines() if line.startswith("MKL_VERBOSE SGEMM")]
    if not calls:
        pytest.skip("this torch build does not run its matmuls through MKL")
    assert all(" CNR:COMPATIBLE " in line for line in calls), calls


def test_pins_set_too_late_are_an_error_and_an_explicit_setting_wins() -> None:
    late = _python("import numpy\nfrom msjoe.cpu_kernels import pin_cpu_kernels\npin_cpu_kernels()")
    assert late.returncode != 0 and "must run before numpy is imported" in late.stderr
    chosen = _python(
        "from msjoe.cpu_kernels import pin_cpu_kernels\nprint(pin_cpu_kernels()['ATEN_CPU_CAPABILITY'])",
        ATEN_CPU_CAPABILITY="default",
    )
    assert chosen.returncode == 0 and chosen.stdout.strip() == "default"
    again = _python(
        "from msjoe.cpu_kernels import pin_cpu_kernels\npin_cpu_kernels()\nimport numpy\n"
        "print(sorted(pin_cpu_kernels()) == sorted(__import__('msjoe.cpu_kernels').cpu_kernels.CPU_KERNEL_PINS))"
    )
    assert again.returncode == 0 and again.stdout.strip() == "True", again.stderr
