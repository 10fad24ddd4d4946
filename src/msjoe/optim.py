"""The one optimiser every trainer uses: AdamW with torch's fused kernel.

Why fused: torch's default AdamW implementations (``foreach`` and the per-tensor loop) take the
square root of the second moment with ``torch.sqrt``, which on x86 CPUs calls MKL's vector maths.
Even in MKL's vendor-neutral ``COMPATIBLE`` branch (``msjoe.cpu_kernels``) that kernel starts
from the ``rsqrtps`` approximation, whose result differs between Intel and AMD CPUs, so the same
training run drifted apart in the last bits from the first optimiser steps on. The fused kernel
computes the step with torch's own vector code (an exact ``sqrt``), which an emulated AMD EPYC
and a real Intel Xeon compute bit for bit alike (``python -m tools.kernel_fingerprint``). It is
also the fastest of the three on CPUs and GPUs alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def adamw(
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.01,
) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``params`` with the fused kernel (module docstring says why)."""
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)
