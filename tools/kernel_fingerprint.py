"""Will this machine rebuild `dvc.lock`? Fingerprint the CPU kernels the pipeline runs.

Not a DVC stage: a check to run on two machines and compare, in seconds, before spending a full
`make demo` on finding out. It pins the kernels as every stage does (``msjoe.cpu_kernels``), runs
each operation the demo's models are made of (matrix products, attention, convolutions, the
element-wise maths that MKL, oneDNN and ATen implement) forward and backward on fixed inputs, and
prints one short hash per operation, plus one for all of them::

    python -m tools.kernel_fingerprint            # on each machine; the lines should be identical
    python -m tools.kernel_fingerprint --json     # the same as JSON

Two machines whose fingerprints differ will train other weights from the same data; the
operation that differs names the library to look at (``linear``, ``attention``, ``exp``, ``log``,
``tanh``, ``sqrt``: MKL; ``conv``: oneDNN; the rest: torch's own kernels; ``adamw`` is the
trainers' optimiser, ``msjoe.optim.adamw``; ``engine_step`` is steps of a DeepSpeed engine from
``msjoe.rl.engine.build_engine`` with gradient clipping, as the RL stages train). The bare
``sqrt`` line is expected to differ between CPU vendors (MKL's kernel; ``msjoe.optim`` says why
nothing in the pipeline uses it). Bit-equal fingerprints are necessary, not sufficient: the
stages run other shapes too. Run it from the repository root.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))
import _common  # noqa: E402  (pins the kernels before torch loads, as every stage does)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from msjoe.optim import adamw  # noqa: E402
from msjoe.rl.engine import build_engine  # noqa: E402


def _digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprints() -> dict[str, str]:
    """Hash of (output, input gradients) of each operation on seeded inputs, in a fixed order."""
    _common.deterministic(2, 0)
    g = torch.Generator().manual_seed(0)

    def leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).requires_grad_(True)

    out: dict[str, str] = {}

    def record(name: str, fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> None:
        y = fn(*inputs)
        grads = torch.autograd.grad(y, list(inputs), torch.randn(y.shape, generator=g))
        out[name] = _digest([y, *grads])

    x = leaf(96, 40, scale=3.0)
    h = leaf(96, 17, 128)
    record("exp", torch.exp, x)
    record("log", lambda t: torch.log(t.abs() + 0.1), x)
    record("logsumexp", lambda t: torch.logsumexp(t, 1), x)
    record("softmax", lambda t: torch.softmax(t, -1), x)
    record("gelu", F.gelu, h)
    record("tanh", torch.tanh, h)
    record("sqrt", lambda t: torch.sqrt(t.abs() + 1e-3), h)
    record("rsqrt", lambda t: torch.rsqrt(t.abs() + 1e-3), h)
    record("layer_norm", lambda t, w, b: F.layer_norm(t, (128,), w, b), h, leaf(128), leaf(128))
    record("linear", F.linear, h, leaf(512, 128, scale=0.05), leaf(512))
    q, k, v = leaf(96, 4, 17, 32), leaf(96, 4, 17, 32), leaf(96, 4, 17, 32)
    record("attention", F.scaled_dot_product_attention, q, k, v)
    record("conv2d", lambda a, w: F.conv2d(a, w, stride=16), leaf(96, 3, 64, 64), leaf(128, 3, 16, 16, scale=0.05))
    record("conv1d", lambda a, w: F.conv1d(a, w, padding=2), leaf(8, 5, 240), leaf(16, 5, 5, scale=0.1))
    pos = torch.arange(4096, dtype=torch.float32)[:, None] * torch.logspace(0, -4, 32)[None]
    out["sin_cos"] = _digest([torch.sin(pos), torch.cos(pos)])  # rotary position embeddings
    params = [leaf(256, 128), leaf(128)]
    optimiser = adamw(params, lr=1e-3, weight_decay=0.1)  # the trainers' optimiser
    for _ in range(3):
        optimiser.zero_grad()
        sum((p**2).sum() for p in params).backward()
        optimiser.step()
    out["adamw"] = _digest(params)
    out["engine_step"] = _engine_steps(g)
    out["all"] = hashlib.sha256("".join(out.values()).encode()).hexdigest()[:16]
    return out


def _engine_steps(g: torch.Generator) -> str:
    """Hash of a small model after DeepSpeed ZeRO-1 steps whose gradient norm is clipped."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(), torch.nn.Linear(256, 64))
    config = Path(__file__).resolve().parents[1] / "infra" / "deepspeed" / "zero1.json"
    engine = build_engine(model, adamw(model.parameters(), lr=1e-2, weight_decay=0.0), config, overrides={
        "train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
    })
    for _ in range(20):
        x = torch.randn(8, 64, generator=g) * 3
        engine.backward((engine(x) - x).pow(2).mean() * 100)  # norms of ~400: clipping acts every step
        engine.step()
    return _digest(list(model.parameters()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args()
    result = fingerprints()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, digest in result.items():
            print(f"{name:12s} {digest}")


if __name__ == "__main__":
    main()
