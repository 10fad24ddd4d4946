"""Optimiser steps whose last bits do not depend on the CPU vendor.

Two places in a training step take a square root, and on x86 CPUs ``torch.sqrt`` (and
``Tensor.pow(0.5)``, which torch dispatches to the same kernel) runs MKL's vector maths. Even in
MKL's vendor-neutral ``COMPATIBLE`` branch (``msjoe.cpu_kernels``) that kernel starts from the
``rsqrtps`` approximation, whose result differs between Intel and AMD CPUs: about 16 % of its
results are not correctly rounded, and which ones depends on the CPU. So the same training run
drifted apart in the last bits between an Intel Xeon and an AMD EPYC.

* **AdamW's second moment.** torch's default AdamW implementations (``foreach`` and the
  per-tensor loop) take ``exp_avg_sq.sqrt()``. :func:`adamw` builds torch's fused AdamW, whose
  kernel uses torch's own vector code (an exact ``sqrt``). It is also the fastest of the three.
* **DeepSpeed's gradient clipping.** The engine's optimiser takes the global gradient norm as
  ``total_norm.pow(1 / 2)``. :class:`ExactSqrt` is a torch function mode under which square
  roots of CPU tensors are computed with numpy's ``sqrt`` (the IEEE instruction: correctly
  rounded on every CPU); ``msjoe.rl.engine.build_engine`` runs every ``engine.step()`` under it.

``python -m tools.kernel_fingerprint`` hashes both (its ``adamw`` and ``engine_step`` lines).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

__all__ = ["ExactSqrt", "adamw", "exact_sqrt"]


def adamw(
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.01,
) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``params`` with the fused kernel (module docstring says why)."""
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)


def exact_sqrt(tensor: torch.Tensor) -> torch.Tensor:
    """Correctly rounded element-wise square root of a CPU float32/float64 tensor (no autograd).

    numpy's ``sqrt`` is the IEEE ``sqrtps``/``sqrtpd`` instruction, exact on every x86 CPU,
    where ``torch.sqrt`` is MKL's approximation-based kernel (module docstring).
    """
    flat = tensor.detach().contiguous().reshape(-1).numpy()  # 1-d: numpy keeps 0-d results as arrays
    return torch.from_numpy(np.sqrt(flat)).reshape(tensor.shape)


_SQRT_OUT: frozenset[Callable[..., Any]] = frozenset({torch.sqrt, torch.Tensor.sqrt})
_SQRT_INPLACE: frozenset[Callable[..., Any]] = frozenset({torch.Tensor.sqrt_, torch.sqrt_})
_POW_OUT: frozenset[Callable[..., Any]] = frozenset({torch.pow, torch.Tensor.pow, torch.Tensor.__pow__})
_POW_INPLACE: frozenset[Callable[..., Any]] = frozenset({torch.Tensor.pow_, torch.Tensor.__ipow__})


def _routable(tensor: Any) -> bool:
    """A tensor :func:`exact_sqrt` can take without changing what the caller gets."""
    return (
        isinstance(tensor, torch.Tensor)
        and tensor.device.type == "cpu"
        and tensor.dtype in (torch.float32, torch.float64)
        and not tensor.is_sparse
        and not (torch.is_grad_enabled() and tensor.requires_grad)
    )


class ExactSqrt(TorchFunctionMode):
    """While active, ``sqrt`` and ``pow(.., 0.5)`` of CPU float tensors are correctly rounded.

    Covers ``torch.sqrt``, ``Tensor.sqrt``/``sqrt_`` and ``torch.pow``/``Tensor.pow``/``pow_``/
    ``**`` with the exponent ``0.5``, on float32/float64 CPU tensors outside autograd. Anything
    else (GPU tensors, which CUDA already rounds correctly; other exponents; ``out=``; tensors
    that need a gradient) runs torch's own kernel unchanged.
    """

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if not kwargs and args and _routable(args[0]):
            base = args[0]
            if func in _SQRT_OUT and len(args) == 1:
                return exact_sqrt(base)
            if func in _SQRT_INPLACE and len(args) == 1:
                return base.copy_(exact_sqrt(base))
            half = len(args) == 2 and isinstance(args[1], (int, float)) and float(args[1]) == 0.5
            if func in _POW_OUT and half:
                return exact_sqrt(base)
            if func in _POW_INPLACE and half:
                return base.copy_(exact_sqrt(base))
        return func(*args, **kwargs)
