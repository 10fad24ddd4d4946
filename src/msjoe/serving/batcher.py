"""A micro-batcher: concurrent requests become one batch of model work, after a bounded wait.

Why a batcher of our own rather than BentoML's adaptive batching: a BentoML batchable API
stacks one array-like argument along a batch dimension and returns one output per row. An
MSJoE request is a whole episode: a query turn, then CLIP similarity and frame sampling on its
output, then an answer turn on the frames it chose, with a file upload that must be checked on
its own and may fail on its own. Batching has to happen *per turn inside the episode*
(:meth:`msjoe.pipeline.Pipeline.answer_many`), with failures kept per request. So the service
hands the generation turns of its requests to one :class:`MicroBatcher`, whose single worker
thread owns the MLLM (its generate keeps per-call state on the model, so one thread it is).

How a batch forms: the worker takes the oldest item, then keeps taking items until it has
``max_batch`` or ``max_wait_s`` has passed since it took the first. Under load the queue has
filled while the previous batch ran, so the next batch forms without waiting; a lone request
waits at most ``max_wait_s``. Every submitted item gets its result or its own exception.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["BatchSettings", "MicroBatcher"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BatchSettings:
    """``max_batch`` requests per batch, ``max_wait_s`` for a batch to fill, at most
    ``max_queue`` requests accepted and not yet answered (waiting or running)."""

    max_batch: int = 16
    max_wait_s: float = 0.005
    max_queue: int = 64

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1")
        if not 0 <= self.max_wait_s <= 10:
            raise ValueError("max_wait_s must be in [0, 10] seconds")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> BatchSettings:
        """``MSJOE_MAX_BATCH``, ``MSJOE_MAX_WAIT_MS`` and ``MSJOE_MAX_QUEUE``; unset keeps the default."""
        default = cls()
        values = {}
        for key, name, cast in (("MSJOE_MAX_BATCH", "max_batch", int), ("MSJOE_MAX_WAIT_MS", "max_wait_s", float),
                                ("MSJOE_MAX_QUEUE", "max_queue", int)):
            raw = (environ.get(key) or "").strip()
            if not raw:
                values[name] = getattr(default, name)
                continue
            try:
                value = cast(raw)
            except ValueError:
                raise ValueError(f"{key}={raw!r} is not a valid {cast.__name__}") from None
            values[name] = value / 1000.0 if name == "max_wait_s" else value
        return cls(**values)


class MicroBatcher(Generic[T, R]):
    """Runs ``run(items) -> results`` (one result or exception per item, in order) on batches of
    submitted items, in one worker thread: the only thread that touches what ``run`` uses.

    ``on_batch(size)`` is called before each batch runs (metrics). ``more_coming(size)`` tells
    whether anyone else may still submit soon (the engine knows how many requests are in
    progress); when not, a batch runs without waiting, so a lone request pays no ``max_wait_s``.
    Admission control is the caller's (:class:`BatchSettings` ``max_queue``); the batcher itself
    queues what it is given.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Sequence[R | BaseException]],
        max_batch: int,
        max_wait_s: float,
        on_batch: Callable[[int], None] | None = None,
        name: str = "msjoe-model-worker",
        more_coming: Callable[[int], bool] | None = None,
    ) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_s >= 0")
        self.run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self.more_coming = more_coming
        self._queue: queue.SimpleQueue[tuple[T, Future[R]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T) -> Future[R]:
        """Queue one item; its future gets the result, or the exception ``run`` gave it."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            future: Future[R] = Future()
            self._queue.put((item, future))
        return future

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish what was submitted, then stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            stop = False
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                if self.more_coming is not None and not self.more_coming(len(batch)):
                    remaining = 0.0  # nobody else can join: take what is queued, do not wait
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list[tuple[T, Future[R]]]) -> None:
        items = [item for item, _ in batch]
        if self.on_batch is not None:
            self.on_batch(len(batch))
        try:
            results = list(self.run(items))
            if len(results) != len(items):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        except BaseException as exc:  # noqa: BLE001 - every submitted item gets an answer
            results = [exc] * len(items)
        for (_, future), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
