"""msjoe.optim: square roots in a training step are correctly rounded on any CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msjoe.optim import ExactSqrt, exact_sqrt


def _values(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.rand(50_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1e3).to(dtype)


def _correctly_rounded(x: torch.Tensor) -> torch.Tensor:
    """sqrt in float64 rounded once to x's dtype (exact for float32: double has > 2*24+2 bits)."""
    ref = np.sqrt(x.double().numpy())
    return torch.from_numpy(ref).to(x.dtype) if x.dtype == torch.float32 else torch.from_numpy(ref)


def test_exact_sqrt_is_correctly_rounded_and_keeps_shape_and_dtype() -> None:
    x = _values().reshape(50, 1000)
    y = exact_sqrt(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.equal(y, _correctly_rounded(x))
    assert exact_sqrt(torch.tensor(2.0)).shape == ()  # 0-dim, as DeepSpeed's global norm


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_spelling_of_a_square_root_is_exact_under_the_mode(dtype: torch.dtype) -> None:
    x = _values(dtype)
    expected = _correctly_rounded(x)
    with ExactSqrt():
        results = {
            "torch.sqrt": torch.sqrt(x),
            "Tensor.sqrt": x.sqrt(),
            "Tensor.sqrt_": x.clone().sqrt_(),
            "torch.pow": torch.pow(x, 0.5),
            "Tensor.pow": x.pow(1.0 / 2.0),
            "Tensor.pow_": x.clone().pow_(0.5),
            "**": x**0.5,
            "0-dim": torch.stack([v.pow(0.5) for v in x[:200]]),
        }
        inplace = x.clone()
        inplace **= 0.5
        results["**="] = inplace
    for name, y in results.items():
        assert torch.equal(y, expected[: len(y)]), name


def test_the_mode_leaves_other_calls_to_torch() -> None:
    x = _values()
    with ExactSqrt():
        cube = x.pow(3.0)
        half = x.to(torch.bfloat16).sqrt()  # numpy has no bfloat16: torch's kernel
        z = torch.tensor([4.0, 9.0], requires_grad=True)
        z.sqrt().sum().backward()  # autograd still works: torch's differentiable sqrt
    assert torch.equal(cube, x.pow(3.0))
    assert torch.equal(half, x.to(torch.bfloat16).sqrt())
    assert torch.allclose(z.grad, torch.tensor([0.25, 1.0 / 6.0]))
