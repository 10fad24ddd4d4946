"""The DVC side of the flows: which stages exist, in what order, and running one of them.

DVC owns the DAG and decides what is stale; the flows only need the stage list in dependency
order (read from ``dvc.yaml`` so new stages appear in the flow without code changes) and a way
to run ``dvc repro <stage>`` that streams its output and tells apart a stage that ran, one that
DVC found up to date (from ``dvc.lock`` before and after, never from DVC's log wording), a workspace locked by another DVC process (transient: retry later) and a
broken pipeline definition (permanent: retrying cannot help).

Nothing here imports Prefect, so it is usable (and tested) without a Prefect server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from msjoe.store.dvc_lock import lock_entries

#: Lines of DVC output kept for error messages.
TAIL_LINES = 40

#: DVC messages that mean another ``dvc`` process holds the repository (or an output) lock.
_LOCKED = (
    "Unable to acquire lock",
    "another DVC process is running",
    "is busy, it is being blocked by",
)
#: DVC messages that mean the pipeline definition or repository is wrong, not the run.
_PERMANENT = (
    "not found inside",
    "validation failed",
    "not inside of a DVC repository",
    "is not a DVC repository",
    "you are not inside of a DVC repository",
    "circular dependency",
    "does not exist",
)


class DvcError(RuntimeError):
    """``dvc repro`` of a stage exited with an error; ``tail`` holds its last output lines."""

    def __init__(self, stage: str, returncode: int, tail: Sequence[str], reason: str) -> None:
        self.stage = stage
        self.returncode = returncode
        self.tail = list(tail)
        text = "\n".join(self.tail[-15:])
        super().__init__(f"dvc repro {stage} {reason} (exit {returncode}):\n{text}")


class DvcStageError(DvcError):
    """The stage's command (or one DVC ran upstream for it) failed: possibly transient."""


class DvcLockedError(DvcError):
    """Another DVC process holds the repository lock: transient, retry after a delay."""


class DvcConfigError(DvcError):
    """The repository or ``dvc.yaml`` is broken (unknown stage, invalid file): not retryable."""


class DvcTimeoutError(DvcError):
    """The stage ran longer than the allowed time and was killed."""


@dataclass(frozen=True)
class StageSpec:
    """One stage of ``dvc.yaml``: what it runs, reads and writes (paths relative to the root)."""

    name: str
    cmd: str | None
    deps: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()


@dataclass
class ReproOutcome:
    """What one ``dvc repro <stage>`` did, read from ``dvc.lock`` before and after the run.

    ``ran`` lists every stage whose ``dvc.lock`` entry the run changed, upstream stages
    included: DVC rewrites an entry exactly when it ran the stage or restored it from the run
    cache. ``status`` is ``completed`` when the target is among them, ``cached`` when DVC found
    it up to date (a stage re-run only because its outputs had been deleted, with the same
    inputs, leaves its entry as it was and reads as ``cached``).
    """

    stage: str
    status: str
    returncode: int
    seconds: float
    ran: list[str] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)


def _norm(path: str, wdir: str | None = None) -> str:
    joined = PurePosixPath(wdir or ".") / str(path).strip()
    parts: list[str] = []
    for part in joined.parts:
        if part in ("", "."):
            continue
        if part == ".." and parts:
            parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def _paths(entries: Any) -> list[str]:
    """Paths of a dvc.yaml list whose items are strings or one-key ``{path: options}`` maps."""
    found: list[str] = []
    for item in entries or []:
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, Mapping):
            found.extend(str(key) for key in item)
    return found


def load_dvc_yaml(root: Path) -> dict[str, Any]:
    """Parse ``root/dvc.yaml``; a missing or malformed file is a :class:`ValueError`."""
    import yaml

    path = Path(root) / "dvc.yaml"
    if not path.is_file():
        raise ValueError(f"{path} not found: not a DVC pipeline root")
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(spec, Mapping) or not isinstance(spec.get("stages"), Mapping):
        raise ValueError(f"{path} has no 'stages' mapping")
    return dict(spec)


def parse_stages(spec: Mapping[str, Any]) -> list[StageSpec]:
    """Stage specs in file order from a parsed ``dvc.yaml``.

    ``foreach``/``matrix`` groups are kept as one stage (``dvc repro <group>`` runs all their
    items); their templated paths are not resolved, so they only order by file position.
    """
    stages: list[StageSpec] = []
    for name, body in (spec.get("stages") or {}).items():
        if not isinstance(body, Mapping):
            raise ValueError(f"dvc.yaml stage {name!r} is not a mapping")
        templated = "foreach" in body or "matrix" in body
        wdir = None if templated else body.get("wdir")
        cmd = body.get("cmd")
        if isinstance(cmd, list):
            cmd = " && ".join(map(str, cmd))
        metrics = tuple(_norm(p, wdir) for p in _paths(body.get("metrics")))
        outs = tuple(_norm(p, wdir) for p in _paths(body.get("outs")))
        plots = tuple(_norm(p, wdir) for p in _paths(body.get("plots")))
        deps = tuple(_norm(p, wdir) for p in _paths(body.get("deps")))
        stages.append(
            StageSpec(
                name=str(name),
                cmd=str(cmd) if cmd is not None else None,
                deps=() if templated else deps,
                outs=() if templated else outs + metrics + plots,
                metrics=() if templated else metrics,
            )
        )
    return stages


def _overlaps(a: str, b: str) -> bool:
    """True when one path is the other or contains it (a dep on a directory or a file in it)."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def upstream_edges(stages: Sequence[StageSpec]) -> dict[str, set[str]]:
    """``{stage: stages it depends on}``: B depends on A when a dep of B overlaps an out of A."""
    edges: dict[str, set[str]] = {s.name: set() for s in stages}
    for consumer in stages:
        for producer in stages:
            if producer.name == consumer.name:
                continue
            if any(_overlaps(d, o) for d in consumer.deps for o in producer.outs):
                edges[consumer.name].add(producer.name)
    return edges


def dag_order(stages: Sequence[StageSpec]) -> list[StageSpec]:
    """Topological order that keeps ``dvc.yaml``'s file order wherever the DAG allows.

    Authors list stages in pipeline order, so the flow's task list reads like the file; a stage
    written before one of its producers still runs after it.
    """
    edges = upstream_edges(stages)
    position = {s.name: i for i, s in enumerate(stages)}
    by_name = {s.name: s for s in stages}
    done: list[StageSpec] = []
    remaining = dict(edges)
    while remaining:
        ready = [name for name, ups in remaining.items() if not (ups & remaining.keys())]
        if not ready:
            raise ValueError(f"dvc.yaml stages form a cycle: {sorted(remaining)}")
        first = min(ready, key=position.__getitem__)
        done.append(by_name[first])
        del remaining[first]
    return done


def read_stages(root: Path) -> list[StageSpec]:
    """The stages of ``root/dvc.yaml`` in dependency order."""
    return dag_order(parse_stages(load_dvc_yaml(Path(root))))


def downstream_of(stages: Sequence[StageSpec], names: Iterable[str]) -> set[str]:
    """The named stages plus every stage that (transitively) depends on one of them."""
    edges = upstream_edges(stages)
    closed = {n for n in names if n in edges}
    changed = True
    while changed:
        changed = False
        for name, ups in edges.items():
            if name not in closed and ups & closed:
                closed.add(name)
                changed = True
    return closed


def changed_stages(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Stages whose ``dvc.lock`` entry differs between two reads, in ``after``'s order.

    >>> changed_stages({"a": {"md5": 1}, "b": {"md5": 2}}, {"a": {"md5": 1}, "b": {"md5": 3}, "c": {}})
    ['b', 'c']
    """
    return [name for name, entry in after.items() if before.get(name) != entry]


def classify_error(stage: str, returncode: int, lines: Sequence[str]) -> DvcError:
    """The exception type matching a failed ``dvc repro``'s output (lock, config or stage)."""
    text = "\n".join(lines)
    if any(marker in text for marker in _LOCKED):
        return DvcLockedError(stage, returncode, lines, "could not lock the repository")
    failed_command = "failed to reproduce" in text or "failed to run" in text
    if not failed_command and any(marker in text for marker in _PERMANENT):
        return DvcConfigError(stage, returncode, lines, "cannot run: pipeline definition problem")
    return DvcStageError(stage, returncode, lines, "failed")


def repro_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for ``dvc repro``: this interpreter's ``bin`` first on PATH, unbuffered.

    Stage commands say ``python stages/...``; putting ``sys.executable``'s folder first makes
    them use the same virtualenv as the flow, whatever PATH the worker was started with.
    Progress bars update at most every 10 s so they do not flood the flow log.
    """
    env = dict(os.environ if base is None else base)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")]) if env.get("PATH") else bindir
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TQDM_MININTERVAL", "10")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def repro_command(stage: str) -> list[str]:
    """``dvc repro <stage>`` through this interpreter (no reliance on a ``dvc`` on PATH)."""
    return [sys.executable, "-m", "dvc", "repro", stage]


def _kill_group(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def run_repro(
    root: Path,
    stage: str,
    on_line: Callable[[str], None] | None = None,
    *,
    timeout_s: float | None = None,
    env: Mapping[str, str] | None = None,
) -> ReproOutcome:
    """Run ``dvc repro <stage>`` in ``root``, passing each output line to ``on_line`` as it comes.

    DVC also reproduces stale upstream stages, so a stage never runs on outdated inputs. The
    command runs in its own process group so a timeout or an interrupted flow kills the stage's
    children too. Raises a :class:`DvcError` subclass on failure.
    """
    started = time.perf_counter()
    before = lock_entries(root)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    proc = subprocess.Popen(
        repro_command(stage),
        cwd=Path(root),
        env=dict(env) if env is not None else repro_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,
    )
    timed_out = threading.Event()

    def _expire() -> None:
        timed_out.set()
        _kill_group(proc)

    timer = threading.Timer(timeout_s, _expire) if timeout_s else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if not line:
                continue
            tail.append(line)
            if on_line is not None:
                on_line(line)
        returncode = proc.wait()
    finally:
        if timer is not None:
            timer.cancel()
        _kill_group(proc)
    seconds = time.perf_counter() - started
    if timed_out.is_set():
        raise DvcTimeoutError(stage, returncode, list(tail), f"timed out after {timeout_s:g} s")
    if returncode != 0:
        raise classify_error(stage, returncode, list(tail))
    ran = changed_stages(before, lock_entries(root))
    return ReproOutcome(stage, "completed" if stage in ran else "cached", returncode, seconds, ran, list(tail))
