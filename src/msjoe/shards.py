"""Splitting a batch job over the processes of a ``torchrun`` launch (one node or several).

``embed`` and ``evaluate`` are embarrassingly parallel over videos and questions: each rank takes
a fixed share, does it alone, and the ranks meet only at the end (rank 0 merges). Who owns an
item depends on the job's whole key set and the world size only (:func:`owned`), never on timing
or on what is already done, so a rerun gives every rank the same work and a job killed part-way
resumes from what each rank had finished.

Outside a launch (no process group) every helper is the single-process identity: rank 0 of 1,
gathering returns ``[value]``, barriers return at once. A launcher's process group is started
by :func:`init_from_env` (gloo on the CPU, NCCL on CUDA), which the stage scripts call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

__all__ = ["all_gather", "barrier", "close", "init_from_env", "local_device", "owned", "rank_and_world"]

T = TypeVar("T")


def _dist() -> Any:
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def init_from_env(device: str = "cpu") -> tuple[int, int]:
    """Join the process group a launcher (``torchrun``) described in the environment.

    Does nothing without ``WORLD_SIZE`` > 1. Returns ``(rank, world_size)``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and _dist() is None:
        import torch
        import torch.distributed as dist

        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return rank_and_world()


def local_device(device: str) -> str:
    """This rank's device: ``cuda`` becomes ``cuda:<LOCAL_RANK>`` in a launch (one GPU per rank)."""
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def close() -> None:
    """Leave the process group (if any), after a last barrier."""
    dist = _dist()
    if dist is not None:
        dist.barrier()
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside a launch."""
    dist = _dist()
    return (dist.get_rank(), dist.get_world_size()) if dist is not None else (0, 1)


def barrier() -> None:
    """Wait for every rank (no-op outside a launch)."""
    dist = _dist()
    if dist is not None:
        dist.barrier()


def all_gather(value: T) -> list[T]:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    dist = _dist()
    if dist is None:
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def owned(keys: Sequence[str], rank: int, world_size: int) -> list[bool]:
    """Which of ``keys`` this rank does: the distinct keys sorted, dealt round-robin.

    The deal depends on the whole key set and the world size only (not on what is cached or
    on timing), so shares are balanced by count and the same on every rerun.

    >>> owned(["c", "a", "b", "a"], 0, 2), owned(["c", "a", "b", "a"], 1, 2)
    ([True, True, False, True], [False, False, True, False])
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    position = {key: i for i, key in enumerate(sorted(set(keys)))}
    return [position[key] % world_size == rank for key in keys]
