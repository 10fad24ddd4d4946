"""What the diagnostics beside ``msjoe pretrain-demo-base`` share with it: the pre-training
world (generated once under a work directory, named by its fingerprint, as the command does)
and the torch settings the command trains under."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from msjoe.mllm.demo_base import DemoBaseConfig


def pretrain_world(cfg: DemoBaseConfig, work_dir: Path) -> Path:
    """The folder of ``cfg``'s pre-training world under ``work_dir``, generated if missing."""
    from msjoe.world.generate import generate_world

    world_dir = Path(work_dir) / f"world-{cfg.world_fingerprint()}"
    if not (world_dir / "summary.json").is_file():
        generate_world(cfg.world, world_dir, progress=False)
    return world_dir


@contextmanager
def recipe_threads(threads: int) -> Iterator[None]:
    """``threads`` torch threads and deterministic algorithms inside; the caller's afterwards."""
    import torch

    saved = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
