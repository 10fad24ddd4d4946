"""The serving engine: checks an upload, runs its episode, and builds the JSON reply.

Who does what: each request's own thread does everything that is per request (field
validation, content hash, decoder probe, candidate features, decoding previews and chosen
frames, CLIP similarity, the sampler); one :class:`~msjoe.serving.batcher.MicroBatcher`
worker owns the MLLM and runs the two generation turns of all waiting requests as batches
(:meth:`~msjoe.pipeline.Pipeline.query_turns`, :meth:`~msjoe.pipeline.Pipeline.answer_turns`).
So decoding and preprocessing overlap with generation, and the generations share the model.

Admission is bounded: at most ``max_queue`` requests are in their episode at once; the next
one gets a 503 with a retry hint at once, and an admitted request always gets its answer or
its own error. ``timings`` in a reply add ``check`` (hash + probe), ``wait`` (queued for the
model worker, both turns) and ``request`` to the pipeline's stages; ``query`` and ``answer``
are the whole batch's generation time, and ``batch_size`` says how many shared the answer turn.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msjoe.pipeline import FrameCache, Question, QuestionState
from msjoe.serving.batcher import BatchSettings, MicroBatcher
from msjoe.serving.limits import RequestError, check_video_info, limits_from_env, validate_fields
from msjoe.serving.release import ReleaseConfig, load_pipeline, read_release_config, resolve_device
from msjoe.serving.uploads import ProbeRecords, cache_usage, probe_upload, prune_cache
from msjoe.video import VideoError, VideoInfo, sha256_file

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy as np

    from msjoe.pipeline import Pipeline
    from msjoe.serving.metrics import ServingMetrics

__all__ = ["ServingEngine", "thumbnail"]

log = logging.getLogger(__name__)

#: longest side of the thumbnails a ``details`` reply carries (pixels)
THUMBNAIL_SIZE = 160


@dataclass(frozen=True)
class _Turn:
    """One generation turn for the model worker: ``kind`` is ``query`` or ``answer``."""

    kind: str
    state: QuestionState
    submitted: float


class ServingEngine:
    """Answers questions about uploaded videos with one pipeline, within limits, in batches."""

    def __init__(
        self,
        pipeline: Pipeline,
        cfg: ReleaseConfig,
        cache_dir: Path,
        model_tag: str = "",
        device: str = "cpu",
        batching: BatchSettings | None = None,
        metrics: ServingMetrics | None = None,
    ) -> None:
        self.batching = batching or BatchSettings()
        # one generate call per batch: the batch is the generation batch
        pipeline.cfg = replace(pipeline.cfg, batch_size=self.batching.max_batch)
        if cfg.limits.frame_cache_mb > 0:
            pipeline.frame_cache = FrameCache(int(cfg.limits.frame_cache_mb * 1024 * 1024))
        self.pipeline = pipeline
        self.cfg = cfg
        self.limits = cfg.limits
        self.cache_dir = Path(cache_dir)
        self.model_tag = model_tag
        self.device = device
        self.metrics = metrics
        self._probes = ProbeRecords(self.cache_dir / "videos")
        self._probe_slots = threading.BoundedSemaphore(self.limits.probe_concurrency)
        self._stats_lock = threading.Lock()
        self.stats = {"answered": 0, "rejected": 0, "failed": 0, "features_cached": 0, "batches": 0}
        self._admitted = 0
        # the requests' own steps one at a time: on a small CPU, concurrent torch calls from
        # many request threads oversubscribe the cores the model worker needs
        self._own_steps = threading.Lock()
        self._admission = threading.Lock()
        self._seconds_per_request = 0.0  # moving average of admitted requests' time, for the retry hint
        self._batcher: MicroBatcher[_Turn, float] = MicroBatcher(
            self._run_turns, self.batching.max_batch, self.batching.max_wait_s, self._on_batch,
            more_coming=lambda size: self._admitted > size)

    @classmethod
    def from_release(
        cls,
        directory: Path,
        cache_dir: Path,
        model_tag: str = "",
        device: str | None = None,
        environ: Mapping[str, str] | None = None,
        mllm_dtype: str | None = None,
        metrics: ServingMetrics | None = None,
    ) -> ServingEngine:
        """Load a release directory; ``environ`` may override limits (``MSJOE_LIMIT_*``) and
        batching (``MSJOE_MAX_BATCH``, ``MSJOE_MAX_WAIT_MS``, ``MSJOE_MAX_QUEUE``).
        ``mllm_dtype`` None or ``auto``: bfloat16 on CUDA, the checkpoint's float32 on the CPU."""
        cfg = read_release_config(Path(directory))
        batching = BatchSettings()
        if environ is not None:
            cfg = replace(cfg, limits=limits_from_env(cfg.limits, environ))
            batching = BatchSettings.from_env(environ)
        resolved = resolve_device(device)
        if mllm_dtype in (None, "", "auto"):  # bf16 on GPUs (as Qwen2.5-VL is released), fp32 on CPUs
            mllm_dtype = "bfloat16" if resolved.startswith("cuda") else None
        pipeline = load_pipeline(Path(directory), cfg, resolved, Path(cache_dir), mllm_dtype)
        return cls(pipeline, cfg, Path(cache_dir), model_tag, resolved, batching, metrics)

    def close(self) -> None:
        """Finish the turns already queued, then stop the model worker."""
        self._batcher.close()

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n

    def _reject(self, error: RequestError) -> RequestError:
        self._count("rejected")
        if self.metrics is not None:
            self.metrics.request(error.status, error.code)
        return error

    def check_upload(self, path: Path) -> tuple[str, VideoInfo]:
        """Size, content hash, probe (unless this content passed before), duration/resolution."""
        path = Path(path)
        if not path.is_file():
            raise RequestError(400, "missing_video", "no video file was uploaded")
        size = path.stat().st_size
        if size == 0:
            raise RequestError(400, "empty_video", "the uploaded video file is empty")
        if size > self.limits.max_upload_bytes:
            raise RequestError(413, "video_too_large",
                               f"the video has {size} bytes; the limit is {self.limits.max_upload_bytes}")
        sha = sha256_file(path)
        info = self._probes.get(sha)
        if info is None:
            with self._probe_slots:
                info = probe_upload(path, self.limits)
            check_video_info(info, self.limits)
            self._probes.put(sha, info)
        else:
            check_video_info(info, self.limits)
        return sha, info

    def answer(self, video: Path, question: Any, options: Any, budget: Any = None,
               details: bool = False) -> dict[str, Any]:
        """The JSON reply for one request, or a :class:`RequestError` for a client mistake or a
        full queue (503 with ``retry_after_s``).

        ``details`` adds ``similarity`` (query x candidate cosine rows), ``candidate_timestamps``
        and ``thumbnails`` (JPEG data URLs of the chosen frames, in ``frames`` order).
        """
        started = time.perf_counter()
        try:
            question, options, budget = validate_fields(
                question, options, budget, self.limits, self.cfg.default_budget
            )
            sha, info = self.check_upload(Path(video))
        except RequestError as exc:
            raise self._reject(exc) from None
        checked = time.perf_counter()
        self._admit()
        try:
            reply = self._episode(Question(Path(video), question, options, budget, sha), bool(details), str(video))
        finally:
            self._release(time.perf_counter() - checked)
        reply["timings"]["check"] = round(checked - started, 6)
        reply["timings"]["request"] = round(time.perf_counter() - started, 6)
        reply["budget"] = budget
        reply["video"] = {"sha256": sha, **info.to_dict()}
        reply["model"] = self.model_tag
        if self.metrics is not None:
            self.metrics.request(200)
            self.metrics.timings(reply["timings"])
        return reply

    def _admit(self) -> None:
        """Take one of ``max_queue`` places, or refuse with 503 and a retry hint."""
        with self._admission:
            if self._admitted >= self.batching.max_queue:
                retry = max(1, math.ceil(self._admitted * self._seconds_per_request / self.batching.max_batch))
                depth = self._admitted
            else:
                self._admitted += 1
                depth = -1
        if depth >= 0:
            raise self._reject(RequestError(
                503, "overloaded", f"the service is at capacity ({depth} requests in progress); retry in {retry} s",
                retry_after_s=retry))
        if self.metrics is not None:
            self.metrics.queue_depth.set(self._admitted)

    def _release(self, seconds: float) -> None:
        with self._admission:
            self._admitted -= 1
            self._seconds_per_request = seconds if self._seconds_per_request == 0 else (
                0.8 * self._seconds_per_request + 0.2 * seconds)
        if self.metrics is not None:
            self.metrics.queue_depth.set(self._admitted)

    def _episode(self, question: Question, details: bool, upload_name: str) -> dict[str, Any]:
        """One admitted request: own steps here, generation turns on the model worker."""
        pipeline = self.pipeline
        wait = 0.0
        try:
            with self._own_steps:
                state = pipeline.prepare(question)
            if state.query_prompt is not None:
                wait += self._turn("query", state)
            with self._own_steps:
                pipeline.choose_frames(state)
            wait += self._turn("answer", state)
            answer = pipeline.finish(state, details)
        except (VideoError, ValueError) as exc:  # passed the probe, failed deeper in the stream
            raise self._reject(RequestError(
                415, "unsupported_video",
                f"the video could not be decoded: {str(exc).replace(upload_name, 'upload')}")) from exc
        except Exception:
            self._count("failed")
            if self.metrics is not None:
                self.metrics.request(500, "internal")
            raise
        self._after_answer(question.sha256 or "", answer.features_cached)
        reply = answer.to_dict()
        reply["timings"]["wait"] = round(wait, 6)
        if details:
            reply["thumbnails"] = [thumbnail(image) for image in answer.images]
        reply["batch_size"] = state.batch_sizes[-1]
        return reply

    def _turn(self, kind: str, state: QuestionState) -> float:
        """Run one generation turn on the model worker; returns the seconds it waited there."""
        submitted = time.perf_counter()
        started = self._batcher.submit(_Turn(kind, state, submitted)).result()
        return started - submitted

    # ---------------------------------------------------------------- the model worker
    def _on_batch(self, size: int) -> None:
        self._count("batches")
        if self.metrics is not None:
            self.metrics.batch_size.observe(size)

    def _run_turns(self, turns: list[_Turn]) -> list[float]:
        """A batch of turns: the query turns as one generation, the answer turns as another."""
        started = time.perf_counter()
        self.pipeline.query_turns([t.state for t in turns if t.kind == "query"])
        self.pipeline.answer_turns([t.state for t in turns if t.kind == "answer"])
        return [started] * len(turns)

    def _after_answer(self, sha: str, cached: bool) -> None:
        """Counters, LRU refresh and the cache budget (a request whose features were pruned
        between check and load recomputes them)."""
        self._count("answered")
        if cached:
            self._count("features_cached")
            store = self.pipeline.feature_store
            if store is not None:  # refresh for LRU pruning
                try:
                    os.utime(store.path(self.pipeline.feature_key(sha)))
                except FileNotFoundError:
                    pass
        else:
            removed = prune_cache(self.cache_dir, int(self.limits.cache_max_mb * 1024 * 1024))
            if removed:
                log.info("feature cache over budget: removed %d old files", removed)

    def health(self) -> dict[str, Any]:
        """What an operator wants at a glance: which model, where, limits, batching, cache, counters."""
        with self._stats_lock:
            stats = dict(self.stats)
        return {
            "status": "ok",
            "model": self.model_tag,
            "device": self.device,
            "sampler": self.pipeline.sampler.name,
            "clip": self.pipeline.clip.identity,
            "default_budget": self.cfg.default_budget,
            "limits": asdict(self.limits),
            "batching": {**asdict(self.batching), "in_progress": self._admitted},
            "cache": {"dir": str(self.cache_dir), **cache_usage(self.cache_dir)},
            "frame_cache": self.pipeline.frame_cache.usage() if self.pipeline.frame_cache is not None else None,
            "requests": stats,
        }


def thumbnail(image: np.ndarray, size: int = THUMBNAIL_SIZE) -> str:
    """A JPEG data URL of a frame, longest side at most ``size`` pixels (aspect kept)."""
    from PIL import Image

    picture = Image.fromarray(image)
    picture.thumbnail((size, size))
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
