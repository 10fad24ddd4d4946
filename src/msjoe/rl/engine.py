"""DeepSpeed engines that run the same code on one CPU process and on many GPUs.

Training code (stage 1 and 2 of the RL recipe) only ever calls :func:`build_engine` and then
``engine(batch)``, ``engine.backward(loss)``, ``engine.step()``. What differs between the
laptop and a GPU node is settled here, from the environment and the config file, never by an
``if demo:`` branch in the trainer:

* **Process group.** Under the ``deepspeed`` (or ``torchrun``) launcher, RANK / LOCAL_RANK /
  WORLD_SIZE / MASTER_ADDR / MASTER_PORT are set and DeepSpeed joins the NCCL group. Run as a
  plain ``python`` process they are missing and DeepSpeed would try MPI discovery (and fail
  without mpi4py), so :func:`ensure_distributed_env` fills single-process defaults (a free
  local port) and, on a machine without CUDA, selects DeepSpeed's CPU accelerator
  (``DS_ACCELERATOR=cpu``, whose collective backend is gloo).
* **Config.** ``infra/deepspeed/zero{1,2,3}.json`` leave machine-dependent fields as
  ``"auto"``; :func:`load_ds_config` fills them from the caller's overrides (the stage passes
  its ``params.yaml`` values) or safe defaults, and enables bf16 only on CUDA (CPU kernels and
  the tiny demo models train in fp32).
* **Shared-memory collectives.** DeepSpeed's first ``initialize`` JIT-compiles a C++
  shared-memory all-reduce (about 27 s on 2 cores) that only speeds up collectives *between*
  processes on one node. A single process never uses it, so :func:`build_engine` skips the
  build when the world size is 1 (``skip_shm_op``), which keeps each CPU stage run and the
  tests fast.
* **0-dim parameters.** DeepSpeed's initial weight broadcast cannot send scalars (such as the
  sampler's ``prior_scale``); :func:`build_engine` presents them as 1-element views for that
  one call.
* **Exact square roots in the step.** DeepSpeed's optimisers clip with the global gradient norm
  taken as ``total_norm.pow(1 / 2)``; on a CPU that is MKL's square root, whose last bit depends
  on the CPU vendor (``msjoe.optim``), and an Intel Xeon and an AMD EPYC trained other samplers
  from the same inputs. :func:`build_engine` runs every ``engine.step()`` under
  :class:`msjoe.optim.ExactSqrt` (correctly rounded square roots of CPU tensors; GPU tensors
  are left to CUDA, whose ``sqrt`` is already correctly rounded).

Several engines may live in one process (the MLLM and the sampler in joint RL): the process
group is created by the first and reused by the next.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only; deepspeed is heavy to import
    import torch
    from deepspeed import DeepSpeedEngine

__all__ = [
    "AUTO_DEFAULTS",
    "build_engine",
    "dist_info",
    "ds_overrides",
    "ensure_distributed_env",
    "load_ds_config",
    "uses_cuda",
]

log = logging.getLogger(__name__)

#: Values that replace ``"auto"`` when the caller gives no override.
AUTO_DEFAULTS: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": 1,
    "gradient_accumulation_steps": 1,
    "gradient_clipping": 1.0,
}

_LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def uses_cuda() -> bool:
    """Whether DeepSpeed will train on CUDA devices in this process.

    True when a GPU is visible and ``DS_ACCELERATOR`` does not force another accelerator.
    """
    import torch

    forced = os.environ.get("DS_ACCELERATOR")
    return torch.cuda.is_available() and forced in (None, "", "cuda")


def dist_info() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (0, 1 for a plain process)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def ds_overrides(
    micro_batch: int, grad_accum: int, grad_clip: float, zero_stage: int | None, extra: Mapping[str, Any] | None
) -> dict[str, Any]:
    """DeepSpeed config overrides (for :func:`load_ds_config`) from a stage's training parameters.

    >>> ds_overrides(4, 2, 1.0, 3, {"bf16.enabled": False})["zero_optimization.stage"]
    3
    """
    out: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": int(micro_batch),
        "gradient_accumulation_steps": int(grad_accum),
        "gradient_clipping": float(grad_clip),
    }
    if zero_stage is not None:
        out["zero_optimization.stage"] = int(zero_stage)
    out.update(dict(extra or {}))
    return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_distributed_env() -> dict[str, str]:
    """Fill the launcher's environment variables when running as a plain single process.

    Variables already set (by the ``deepspeed`` launcher, ``torchrun`` or the user) are left
    alone. Also sets ``DS_ACCELERATOR=cpu`` when no GPU is visible and none was chosen; this
    must happen before DeepSpeed first resolves its accelerator (on import of most of its
    modules), which is why :func:`build_engine` calls it before importing deepspeed.

    Returns:
        The variables this call set (empty under a launcher).
    """
    import torch

    changed: dict[str, str] = {}
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        changed["DS_ACCELERATOR"] = "cpu"
    if not all(k in os.environ for k in _LAUNCHER_ENV):
        defaults = {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
        }
        for key, value in defaults.items():
            if key not in os.environ:
                changed[key] = value
        if "MASTER_PORT" not in os.environ:
            changed["MASTER_PORT"] = str(_free_port())
    os.environ.update(changed)
    if changed:
        log.debug("single-process distributed defaults: %s", changed)
    return changed


def _set_dotted(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    node = cfg
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _merge(cfg: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        if "." in key:
            _set_dotted(cfg, key, copy.deepcopy(value))
        elif isinstance(value, Mapping) and isinstance(cfg.get(key), dict):
            _merge(cfg[key], value)
        else:
            cfg[key] = copy.deepcopy(value)


def _find_auto(node: Any, path: str = "") -> list[str]:
    if isinstance(node, dict):
        found: list[str] = []
        for key, value in node.items():
            found += _find_auto(value, f"{path}.{key}" if path else key)
        return found
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _find_auto(v, f"{path}[{i}]")]
    return [path] if node == "auto" else []


def load_ds_config(
    path: str | Path | Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    *,
    cuda: bool | None = None,
) -> dict[str, Any]:
    """Read a DeepSpeed JSON config and resolve its ``"auto"`` fields for this machine.

    Args:
        path: a JSON file (``infra/deepspeed/zero2.json``) or an already-loaded dict (copied,
            never modified).
        overrides: values applied before resolution. Keys are top-level names or dotted
            paths (``{"zero_optimization.stage": 1, "gradient_accumulation_steps": 4}``); a
            mapping value for a dict field is merged into it.
        cuda: whether training runs on CUDA; defaults to :func:`uses_cuda`.

    Resolution:
        * ``train_micro_batch_size_per_gpu``, ``gradient_accumulation_steps``,
          ``gradient_clipping``: ``"auto"`` becomes :data:`AUTO_DEFAULTS`.
        * ``train_batch_size``: ``"auto"`` is removed; DeepSpeed derives it as
          micro batch x accumulation x world size.
        * ``bf16.enabled``: ``"auto"`` becomes ``cuda``; bf16 is forced off without CUDA
          (with a warning if the file asked for it). ``fp16.enabled`` ``"auto"`` becomes False.
        * Any other ``"auto"`` left is an error: DeepSpeed itself does not understand it.

    >>> cfg = load_ds_config({"train_micro_batch_size_per_gpu": "auto",
    ...                       "gradient_accumulation_steps": "auto",
    ...                       "bf16": {"enabled": "auto"}},
    ...                      {"gradient_accumulation_steps": 4}, cuda=False)
    >>> cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"], cfg["bf16"]
    (1, 4, {'enabled': False})
    """
    if isinstance(path, Mapping):
        cfg: dict[str, Any] = copy.deepcopy(dict(path))
    else:
        cfg = json.loads(Path(path).read_text())
        if not isinstance(cfg, dict):
            raise ValueError(f"{path}: a DeepSpeed config must be a JSON object")
    if overrides:
        _merge(cfg, overrides)
    if cuda is None:
        cuda = uses_cuda()

    for key, default in AUTO_DEFAULTS.items():
        if cfg.get(key) == "auto":
            cfg[key] = default
    if cfg.get("train_batch_size") == "auto":
        del cfg["train_batch_size"]
    bf16 = cfg.get("bf16")
    if isinstance(bf16, dict):
        if bf16.get("enabled") == "auto":
            bf16["enabled"] = bool(cuda)
        elif bf16.get("enabled") and not cuda:
            log.warning("bf16 requested without CUDA: training in fp32 instead")
            bf16["enabled"] = False
    fp16 = cfg.get("fp16")
    if isinstance(fp16, dict) and fp16.get("enabled") == "auto":
        fp16["enabled"] = False

    left = _find_auto(cfg)
    if left:
        raise ValueError(f"unresolved 'auto' values in DeepSpeed config: {', '.join(left)}")
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        value = cfg.get(key)
        bad = not isinstance(value, int) or isinstance(value, bool) or value < 1
        if value is not None and bad:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return cfg


@contextlib.contextmanager
def _without_shm_op(skip: bool) -> Iterator[None]:
    """Make DeepSpeed's torch comm backend skip its shared-memory op build while active.

    ``deepspeed.comm.torch`` is looked up in ``sys.modules``: ``import deepspeed.comm.torch``
    as a name binds the real ``torch`` package (``deepspeed.comm`` re-exports it).
    """
    if not skip:
        yield
        return
    import deepspeed.comm.torch  # noqa: F401  (registers the submodule)

    module = sys.modules["deepspeed.comm.torch"]
    original = module.build_shm_op
    module.build_shm_op = lambda: None
    try:
        yield
    finally:
        module.build_shm_op = original


@contextlib.contextmanager
def _zero_dim_safe_broadcast(model: torch.nn.Module) -> Iterator[None]:
    """Let DeepSpeed broadcast a model that has 0-dim parameters.

    ``DeepSpeedEngine._broadcast_model`` (0.19.8) sends every parameter as
    ``p.data.view(torch.uint8)``, which raises for 0-dim tensors (the sampler's learnable
    ``prior_scale`` is one). While active, such parameters are presented as shape ``(1,)``
    views of the same storage during the broadcast and restored right after, before the
    optimiser flattens anything. ZeRO itself handles 0-dim parameters.
    """
    zero_dim = [p for p in model.parameters() if p.dim() == 0]
    if not zero_dim:
        yield
        return
    from deepspeed.runtime.engine import DeepSpeedEngine

    original = DeepSpeedEngine._broadcast_model

    def broadcast(self: Any) -> None:
        saved = [p.data for p in zero_dim]
        for p in zero_dim:
            p.data = p.data.reshape(1)  # a view: received values land in the same storage
        try:
            original(self)
        finally:
            for p, data in zip(zero_dim, saved):
                p.data = data

    DeepSpeedEngine._broadcast_model = broadcast  # type: ignore[method-assign]
    try:
        yield
    finally:
        DeepSpeedEngine._broadcast_model = original  # type: ignore[method-assign]


def build_engine(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ds_config: Mapping[str, Any] | str | Path,
    lr_scheduler: Any | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    skip_shm_op: bool | None = None,
) -> DeepSpeedEngine:
    """Wrap ``model`` and a client ``optimizer`` in a DeepSpeed engine.

    Args:
        model: the module to train; DeepSpeed moves it to this rank's device (and to bf16
            when enabled).
        optimizer: a torch optimizer over ``model``'s parameters. A client optimizer (rather
            than one declared in the config) avoids building DeepSpeed's C++ Adam.
        ds_config: path of a JSON config or a dict; resolved with :func:`load_ds_config`.
        lr_scheduler: optional torch scheduler; the engine steps it at each accumulation
            boundary and saves it in its checkpoints.
        overrides: passed to :func:`load_ds_config`.
        skip_shm_op: skip building the shared-memory comm op; default: when WORLD_SIZE is 1.
            Only the process group's first engine builds it, later ones reuse the group.

    Returns:
        The engine: call it like the model, then ``engine.backward(loss)`` and
        ``engine.step()`` every micro-batch (the optimiser steps on accumulation boundaries).
    """
    ensure_distributed_env()
    cfg = load_ds_config(ds_config, overrides)
    import deepspeed

    if skip_shm_op is None:
        skip_shm_op = int(os.environ.get("WORLD_SIZE", "1")) == 1
    with _without_shm_op(skip_shm_op), _zero_dim_safe_broadcast(model):
        engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, config=cfg
        )
    _step_with_exact_sqrt(engine)
    return engine


def _step_with_exact_sqrt(engine: DeepSpeedEngine) -> None:
    """Make ``engine.step()`` run under :class:`~msjoe.optim.ExactSqrt` (module docstring)."""
    from msjoe.optim import ExactSqrt

    step = engine.step

    @functools.wraps(step)
    def exact_step(*args: Any, **kwargs: Any) -> Any:
        with ExactSqrt():
            return step(*args, **kwargs)

    engine.step = exact_step  # type: ignore[method-assign]
