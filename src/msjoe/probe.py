"""Probe videos in worker processes, so a decoder crash or hang costs one video, not the run.

FFmpeg inside decord is native code: a hostile file can segfault or hang it. Each worker is a
separate process fed one path at a time over a pipe; if it dies or exceeds the timeout, the video
it was holding is reported as failed with that reason and a fresh worker takes its place.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
import time

from msjoe.video import VideoError, VideoInfo, probe_video, sha256_file


@dataclass(frozen=True)
class ProbeResult:
    """Outcome for one video: `info` and `sha256` on success, `error` otherwise."""

    key: str
    path: Path
    info: VideoInfo | None = None
    sha256: str | None = None
    error: str | None = None


ProbeFn = Callable[[Path], tuple[VideoInfo, str]]

#: How long a fresh worker may take to start (spawn, imports) before it picks up its video;
#: only then does the video's own time limit start.
START_TIMEOUT_S = 120.0


def probe_and_hash(path: Path) -> tuple[VideoInfo, str]:
    """The default probe: decord metadata + first/last frame, then the content hash."""
    return probe_video(path), sha256_file(path)


def _worker_loop(conn: Connection, probe: ProbeFn) -> None:
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        key, path = job
        conn.send(("started",))  # the parent's clock for this video starts here, not at spawn
        try:
            info, digest = probe(Path(path))
            conn.send(("done", key, info, digest, None))
        except VideoError as exc:
            conn.send(("done", key, None, None, str(exc)))
        except Exception as exc:  # anything else is still this video's problem, not the run's
            conn.send(("done", key, None, None, f"{path}: probe failed ({type(exc).__name__}: {exc})"))


class _Worker:
    def __init__(self, ctx: mp.context.BaseContext, probe: ProbeFn) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_loop, args=(child, probe), daemon=True)
        self.process.start()
        child.close()
        self.job: tuple[str, Path] | None = None
        self.submitted = 0.0
        self.started: float | None = None  # when the worker took up its job

    def submit(self, key: str, path: Path) -> None:
        """Hand over a job. The video's time limit runs from when the worker says it started
        the job, so a fresh worker's spawn and imports do not count against it; until then
        :data:`START_TIMEOUT_S` applies."""
        self.job = (key, path)
        self.submitted = time.monotonic()
        self.started = None
        self.conn.send((key, str(path)))

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def _crashed(path: Path, process: mp.process.BaseProcess) -> str:
    """The reject reason of a dead worker, with its exit code (a signal is negative).

    Its exit code is only known once it is reaped, which a ready sentinel or closed pipe does
    not do, hence the join.
    """
    process.join(timeout=5.0)
    return f"{path}: decoder crashed while reading this file (worker exit code {process.exitcode})"


def probe_many(
    jobs: Iterable[tuple[str, Path]],
    workers: int = 2,
    timeout_s: float = 300.0,
    probe: ProbeFn = probe_and_hash,
) -> Iterator[ProbeResult]:
    """Probe `(key, path)` jobs in `workers` processes, yielding results as they finish.

    Results come back in completion order; every job yields exactly one result. `probe` must be
    a module-level function (it is sent to spawned workers).
    """
    ctx = mp.get_context("spawn")
    pending = list(jobs)
    pending.reverse()
    pool = [_Worker(ctx, probe) for _ in range(max(1, min(workers, len(pending))))] if pending else []
    try:
        while pending or any(w.job for w in pool):
            for worker in pool:
                if worker.job is None and pending:
                    worker.submit(*pending.pop())
            busy = [w for w in pool if w.job is not None]
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=1.0)
            now = time.monotonic()
            for index, worker in enumerate(pool):
                if worker.job is None:
                    continue
                key, path = worker.job
                if worker.conn in ready or worker.conn.poll():
                    try:
                        message = worker.conn.recv()
                    except (EOFError, OSError):
                        # The worker died; its pipe may close before its exit is seen.
                        error = _crashed(path, worker.process)
                    else:
                        if message[0] == "started":
                            worker.started = time.monotonic()
                            continue
                        _, _, info, digest, error = message
                        worker.job = None
                        yield ProbeResult(key, path, info, digest, error)
                        continue
                elif worker.process.sentinel in ready or not worker.process.is_alive():
                    error = _crashed(path, worker.process)
                elif worker.started is None:
                    if now - worker.submitted <= START_TIMEOUT_S:
                        continue
                    error = f"{path}: the probe worker did not start within {START_TIMEOUT_S:.0f} s (killed)"
                elif now - worker.started > timeout_s:
                    error = f"{path}: decoding took longer than {timeout_s:.0f} s (killed)"
                else:
                    continue
                worker.stop(kill=True)
                pool[index] = _Worker(ctx, probe)
                yield ProbeResult(key, path, None, None, error)
    finally:
        for worker in pool:
            worker.stop()
