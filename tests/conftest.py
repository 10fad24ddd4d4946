"""Test-wide settings: offline, quiet, deterministic."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from msjoe.cpu_kernels import pin_cpu_kernels

# the stages pin numpy's and torch's CPU kernels to AVX2; tests that compare their outputs with
# computations in this process need the same kernels
pin_cpu_kernels()

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "BENTOML_DO_NOT_TRACK": "True",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
    # small CPU models: two threads on two shared cores thrash (10-50x slower under load)
    "OMP_NUM_THREADS": "1",
}.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread for a module of tiny-model tests (two threads on two shared cores
    thrash), restored afterwards; modules opt in with ``pytest.mark.usefixtures("one_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
