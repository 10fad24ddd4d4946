"""One instruction set for every CPU kernel, so that results do not depend on which x86-64 CPU runs.

numpy, torch (its own kernels, oneDNN, MKL) and x264 pick their SIMD code at run time from the
CPU's features, and the AVX-512 kernels round differently from the AVX2 ones (they sum in other
orders, use other approximations of ``exp``/``log1p``). Measured on a machine with AVX-512, with
everything else equal: numpy's ``log1p``, torch's attention and ``Linear`` gradients (ATen) and
``Conv1d`` (oneDNN) all differ from their AVX2 results in the last bits, the demo's CLIP loss
differs from its second training step on, and so does every number after it. Pinning numpy,
ATen and oneDNN to AVX2 (x86-64-v3, which every machine we run on has) makes a machine with
AVX-512 compute what a machine with only AVX2 computes. x264 is pinned in
:data:`msjoe.world.generate.X264_PARAMS`.

MKL (torch's ``sgemm`` behind every ``Linear`` and attention product, and its vector maths
behind ``exp``, ``log``, ``tanh`` and ``sqrt``) also picks its code by CPU *vendor*: its
reproducibility branches other than ``AUTO`` and ``COMPATIBLE`` exist on Intel CPUs only, and
on any other CPU ``MKL_CBWR=AVX2`` silently falls back to ``AUTO`` (``MKL_VERBOSE`` prints
``CNR:AUTO`` there), whose kernels round differently from Intel's AVX2 branch. Measured with
``MKL_CBWR=AVX2``: an Intel Xeon trained another demo CLIP than the AMD EPYCs did (losses
differ from the third step on) and reported other accuracies (up to 0.04 apart). ``COMPATIBLE``
(SSE2 code without the ``rcpps``/``rsqrtps`` approximations, whose results differ between
vendors) is the one branch MKL runs the same way on every x86-64 CPU, so it is the pin. One
kernel escapes it: MKL's vector square root (``torch.sqrt``, ``Tensor.pow(0.5)``) starts from
``rsqrtps`` even there, so training keeps it out of its steps (:mod:`msjoe.optim`). Its
SSE2 matrix products are slower: on that Intel Xeon the demo DAG took 13.0 min instead of 9.6
(the MLLM's answer turns 1.7x slower), the price of one set of numbers on every machine.

The pins are environment variables that the libraries read once, when they load, so
:func:`pin_cpu_kernels` must run before numpy or torch are imported. The pipeline's entry points
call it (the DVC stages, ``msjoe pretrain-demo-base``, the test suite); the service and
``msjoe ask`` do not, as they care about speed, not about bit-equality across machines. A value
already in the environment wins, so a user can opt out (``ATEN_CPU_CAPABILITY=avx512``, say).
"""

from __future__ import annotations

import os
import platform
import sys

#: What each library is told, and why (read at load time; x86-64 only).
CPU_KERNEL_PINS: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised kernels (attention, reductions, ...)
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN, which runs torch's convolutions on the CPU
    "MKL_CBWR": "COMPATIBLE",  # MKL's only reproducibility branch that runs alike on Intel and AMD
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # numpy's AVX-512 dispatch targets
}

_LOADED_TOO_EARLY = ("numpy", "torch")


def pin_cpu_kernels() -> dict[str, str]:
    """Set :data:`CPU_KERNEL_PINS` in the environment (where not already set); return what is set.

    Does nothing on other architectures (the pins name x86 instruction sets). Raises
    ``RuntimeError`` when a pin is still unset but numpy or torch is already imported, since
    that library would silently ignore it (a second call, with the pins already in the
    environment, is harmless).
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    loaded = [name for name in _LOADED_TOO_EARLY if name in sys.modules]
    if loaded and any(key not in os.environ for key in CPU_KERNEL_PINS):
        raise RuntimeError(
            f"pin_cpu_kernels() must run before {' and '.join(loaded)} is imported "
            "(the libraries read their instruction-set settings when they load)"
        )
    for key, value in CPU_KERNEL_PINS.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in CPU_KERNEL_PINS}
