"""Resumable training checkpoints: models, optimisers, schedulers, RNG streams, step.

A long RL run must survive being killed (pre-emption, a Prefect retry) and resume *exactly*:
same parameters, same optimiser moments, same scheduler position and the same random stream,
so a resumed run equals an uninterrupted one. Layout under a run's checkpoint directory::

    latest                  text file naming the newest complete checkpoint ("step_000120")
    step_000120/
        meta.json           step, extra (JSON), what was saved and how; written last. No wall
                            clock or timings: the directory is a DVC output, so its bytes must
                            depend only on the run's settings and inputs
        engines/<name>/     DeepSpeed engine.save_checkpoint (weights, ZeRO optimiser
                            partitions, its lr scheduler; client_state carries the step)
        models/<name>.pt    state_dict of plain torch modules
        optimizers/<name>.pt, schedulers/<name>.pt
        rng/rank_00000.pt   python, numpy (global), torch CPU and CUDA RNG states, per rank

**Atomicity.** Everything is written into ``.tmp-step_000120/`` and renamed into place only
when complete, then ``latest`` is replaced (write + ``os.replace``). A crash mid-save leaves
the previous checkpoint and pointer intact; a stale temporary directory is cleared by the
next save. :func:`load_latest` trusts ``latest`` but falls back to the newest directory that
has a ``meta.json`` if the pointer is missing or dangling.

**Distributed runs.** Every rank calls :func:`save_checkpoint` (ZeRO shards are saved
collectively); rank 0 owns the directory operations, barriers order them, and each rank
saves its own RNG states.

Objects passed under ``models`` may be DeepSpeed engines (recognised by their
``save_checkpoint`` / ``load_checkpoint`` methods) or plain modules. An engine saves its own
optimiser and scheduler: passing those again under ``optimizers`` / ``schedulers`` is an
error rather than a silent double save.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "discard_other_runs",
    "latest_checkpoint",
    "load_latest",
    "read_meta",
    "run_fingerprint",
    "save_checkpoint",
    "step_dirname",
]

log = logging.getLogger(__name__)

_FORMAT = 1
_STEP_RE = re.compile(r"^step_(\d+)$")
_ENGINE_TAG = "state"
_LATEST = "latest"
_META = "meta.json"


def step_dirname(step: int) -> str:
    """Directory name of a step's checkpoint, zero-padded so names sort by step.

    >>> step_dirname(42)
    'step_000042'
    """
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    return f"step_{step:06d}"


def _is_engine(obj: Any) -> bool:
    return callable(getattr(obj, "save_checkpoint", None)) and callable(
        getattr(obj, "load_checkpoint", None)
    )


def _dist() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if _dist()[1] > 1:
        torch.distributed.barrier()


def _check_name(kind: str, name: str) -> None:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"invalid {kind} name {name!r}: it becomes a file name")


def _check_not_engine_owned(
    models: Mapping[str, Any], optimizers: Mapping[str, Any], schedulers: Mapping[str, Any]
) -> None:
    engines = [m for m in models.values() if _is_engine(m)]
    for name, opt in optimizers.items():
        if any(opt is getattr(e, "optimizer", None) for e in engines):
            raise ValueError(f"optimizer {name!r} belongs to a DeepSpeed engine, which saves it")
    for name, sched in schedulers.items():
        if any(sched is getattr(e, "lr_scheduler", None) for e in engines):
            raise ValueError(f"scheduler {name!r} belongs to a DeepSpeed engine, which saves it")


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            log.warning("CUDA device count changed; CUDA RNG states not restored")


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _step_dirs(directory: Path) -> list[tuple[int, Path]]:
    """Complete checkpoint directories (with meta.json), oldest first."""
    found = []
    if directory.is_dir():
        for child in directory.iterdir():
            m = _STEP_RE.match(child.name)
            if m and child.is_dir() and (child / _META).is_file():
                found.append((int(m.group(1)), child))
    return sorted(found)


def _prune(directory: Path, keep: int, protect: Path) -> None:
    dirs = _step_dirs(directory)
    for _, path in dirs[: max(len(dirs) - keep, 0)]:
        if path != protect:
            shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(
    directory: str | Path,
    step: int,
    models: Mapping[str, Any],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    *,
    rng: bool = True,
    extra: Mapping[str, Any] | None = None,
    keep: int | None = 3,
) -> Path:
    """Write ``directory/step_{step:06d}/`` atomically and point ``latest`` at it.

    Args:
        directory: the run's checkpoint directory (created if missing).
        step: training step the state belongs to (the number of completed updates).
        models: name -> DeepSpeed engine or ``torch.nn.Module``.
        optimizers: name -> optimiser of a *plain* module (engines save their own).
        schedulers: name -> object with ``state_dict``/``load_state_dict`` (engines save
            their own).
        rng: also save the python, numpy (global) and torch (CPU, CUDA) RNG states.
        extra: JSON-serialisable run state returned by :func:`read_meta` (counters, metric
            history, a numpy ``Generator``'s ``bit_generator.state``...); deterministic values
            only (no timings), as checkpoint directories are hashed DVC outputs.
        keep: keep only the newest ``keep`` checkpoints (``None`` keeps all).

    Returns:
        The checkpoint's final directory. Saving a step that already exists replaces it.
    """
    optimizers = dict(optimizers or {})
    schedulers = dict(schedulers or {})
    for kind, mapping in (("model", models), ("optimizer", optimizers), ("scheduler", schedulers)):
        for name in mapping:
            _check_name(kind, name)
    _check_not_engine_owned(models, optimizers, schedulers)
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be >= 1 or None, got {keep}")
    extra_json = json.dumps(dict(extra or {}))  # fail early, before anything is written

    root = Path(directory)
    name = step_dirname(step)
    final = root / name
    tmp = root / f".tmp-{name}"
    rank, world = _dist()

    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-step_*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    _barrier()

    kinds: dict[str, str] = {}
    for mname, model in models.items():
        if _is_engine(model):
            kinds[mname] = "engine"
            model.save_checkpoint(
                str(tmp / "engines" / mname),
                tag=_ENGINE_TAG,
                client_state={"msjoe_step": step},
            )
        else:
            kinds[mname] = "module"
            if rank == 0:
                (tmp / "models").mkdir(exist_ok=True)
                torch.save(model.state_dict(), tmp / "models" / f"{mname}.pt")
    if rank == 0:
        for sub, mapping in (("optimizers", optimizers), ("schedulers", schedulers)):
            if mapping:
                (tmp / sub).mkdir(exist_ok=True)
            for oname, obj in mapping.items():
                torch.save(obj.state_dict(), tmp / sub / f"{oname}.pt")
    if rng:
        (tmp / "rng").mkdir(exist_ok=True)
        torch.save(_rng_state(), tmp / "rng" / f"rank_{rank:05d}.pt")
    _barrier()

    if rank == 0:
        meta = {
            "format": _FORMAT,
            "step": step,
            "models": kinds,
            "optimizers": sorted(optimizers),
            "schedulers": sorted(schedulers),
            "rng": rng,
            "world_size": world,
            "extra": json.loads(extra_json),
        }
        _write_text_atomic(tmp / _META, json.dumps(meta, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_text_atomic(root / _LATEST, name + "\n")
        if keep is not None:
            _prune(root, keep, protect=final)
    _barrier()
    log.info("saved checkpoint %s", final)
    return final


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint directory, or None when there is none.

    Follows the ``latest`` pointer when it names a complete checkpoint; otherwise (missing or
    dangling pointer after a crash) the complete ``step_*`` directory with the highest step.
    """
    root = Path(directory)
    pointer = root / _LATEST
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if _STEP_RE.match(target.name) and (target / _META).is_file():
            return target
        log.warning("%s points to an incomplete checkpoint; using the newest complete one", pointer)
    dirs = _step_dirs(root)
    return dirs[-1][1] if dirs else None


def run_fingerprint(settings: Mapping[str, Any], inputs: Mapping[str, Any]) -> str:
    """A short stable id of a training run: its settings and the identities of its inputs.

    Two runs share checkpoints only when they would follow the same trajectory, so
    ``settings`` must leave out pure bookkeeping (how often to checkpoint, when to stop) and
    ``inputs`` must name the *content* of what is loaded (weight identities, file hashes,
    the training questions), not paths.
    """
    import hashlib

    payload = json.dumps({"settings": dict(settings), "inputs": dict(inputs)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def discard_other_runs(directory: str | Path, run: str) -> int:
    """Delete the checkpoints of ``directory`` that belong to another run than ``run``.

    A checkpoint directory outlives its run (DVC keeps it with ``persist: true`` so a killed
    stage resumes), so after a change of settings or inputs it holds a *different* run's
    state: resuming from it would continue the wrong trajectory, or fail on mismatched shapes
    (a re-trained base model with a new vocabulary). Each checkpoint records its run's
    fingerprint in ``extra["run"]``; checkpoints without one are treated as foreign too.
    Returns how many checkpoint directories were removed (rank 0 removes, all ranks wait).
    """
    root = Path(directory)
    foreign = [path for _, path in _step_dirs(root) if read_meta(path).get("extra", {}).get("run") != run]
    _barrier()  # every rank has read the directory before rank 0 changes it
    rank, _ = _dist()
    if foreign and rank == 0:
        log.warning("%s: %d checkpoint(s) of another run (settings or inputs changed); starting afresh",
                    root, len(foreign))
        for path in foreign:
            shutil.rmtree(path)
        if (root / _LATEST).is_file() and latest_checkpoint(root) is None:
            (root / _LATEST).unlink()
    _barrier()
    return len(foreign)


def read_meta(checkpoint: str | Path) -> dict[str, Any]:
    """``meta.json`` of a checkpoint directory: ``step``, ``extra`` and what was saved."""
    return json.loads((Path(checkpoint) / _META).read_text())


def _load(path: Path, map_location: str | torch.device) -> Any:
    return torch.load(path, map_location=map_location, weights_only=True)


def load_latest(
    directory: str | Path,
    models: Mapping[str, Any],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    *,
    rng: bool = True,
    map_location: str | torch.device = "cpu",
) -> int | None:
    """Restore the newest checkpoint into the given objects; its step, or None if none exists.

    The objects must be built the same way as when saving (same architectures, same engine
    configs); names must match the saved ones, and every saved model, optimiser and
    scheduler must be given (a partial restore would resume a different run). Engines
    restore their optimiser and scheduler too. ``map_location`` applies to plain modules'
    files (``load_state_dict`` then copies into the module's own device). With ``rng`` the
    RNG streams continue exactly where the saving run left them; read ``extra`` with
    ``read_meta(latest_checkpoint(directory))``.
    """
    ckpt = latest_checkpoint(directory)
    if ckpt is None:
        return None
    meta = read_meta(ckpt)
    optimizers = dict(optimizers or {})
    schedulers = dict(schedulers or {})
    _check_not_engine_owned(models, optimizers, schedulers)
    if set(models) != set(meta["models"]):
        raise ValueError(f"{ckpt}: saved models {sorted(meta['models'])}, given {sorted(models)}")
    if set(optimizers) != set(meta["optimizers"]):
        raise ValueError(
            f"{ckpt}: saved optimizers {meta['optimizers']}, given {sorted(optimizers)}"
        )
    if set(schedulers) != set(meta["schedulers"]):
        raise ValueError(
            f"{ckpt}: saved schedulers {meta['schedulers']}, given {sorted(schedulers)}"
        )

    for mname, model in models.items():
        saved_kind = meta["models"][mname]
        if saved_kind == "engine":
            if not _is_engine(model):
                raise ValueError(f"model {mname!r} was saved from a DeepSpeed engine")
            path, client = model.load_checkpoint(
                str(ckpt / "engines" / mname),
                tag=_ENGINE_TAG,
                load_optimizer_states=True,
                load_lr_scheduler_states=True,
            )
            if path is None:
                raise FileNotFoundError(f"{ckpt}: engine checkpoint for {mname!r} is missing")
            if client and client.get("msjoe_step") != meta["step"]:
                raise ValueError(f"{ckpt}: engine {mname!r} holds step {client.get('msjoe_step')}")
        else:
            if _is_engine(model):
                raise ValueError(f"model {mname!r} was saved from a plain module, not an engine")
            model.load_state_dict(_load(ckpt / "models" / f"{mname}.pt", map_location))
    for oname, opt in optimizers.items():
        opt.load_state_dict(_load(ckpt / "optimizers" / f"{oname}.pt", map_location))
    for sname, sched in schedulers.items():
        sched.load_state_dict(_load(ckpt / "schedulers" / f"{sname}.pt", map_location))

    if rng and meta.get("rng"):
        rank, _ = _dist()
        rng_file = ckpt / "rng" / f"rank_{rank:05d}.pt"
        if rng_file.is_file():
            _set_rng_state(_load(rng_file, "cpu"))
        else:
            log.warning("%s has no RNG state for rank %d; RNG not restored", ckpt, rank)
    log.info("resumed from %s (step %d)", ckpt, meta["step"])
    return int(meta["step"])
