"""BentoML service: answer a multiple-choice question about an uploaded video with MSJoE.

Serve (repository root)::

    bentoml serve bento.service:MSJoE --host 127.0.0.1 --port 3000

The model is the release stored as ``msjoe:latest`` in the BentoML model store
(``msjoe.serving.import_release``; another tag via ``MSJOE_MODEL_TAG``). Everything a client
can trip over (limits, error codes, batching, feature reuse, decoder isolation) lives in
:mod:`msjoe.serving`; this file only wires it into BentoML.

Endpoints:

* ``GET /``: a page to try the service (upload, question, options; answer, queries, chosen
  frames on a timeline, similarity curves). It calls ``/answer`` like any client.
* ``POST /answer`` (multipart/form-data): ``video`` (file), ``question`` (text), ``options``
  (JSON array of 2-10 strings), optional ``budget`` (frames) and ``details`` (adds similarity
  curves and frame thumbnails). Client errors are 4xx ``{"error", "code", "status"}``; a full
  queue is 503 with ``Retry-After``.
* ``GET /health``: model tag, device, sampler, limits, batching, cache size, request counters.
* ``GET /metrics``: Prometheus (BentoML's own plus ``msjoe_*``); ``GET /livez``, ``GET /readyz``.

Environment (bento/README.md): ``MSJOE_MODEL_TAG``, ``MSJOE_DEVICE``, ``MSJOE_MLLM_DTYPE``,
``MSJOE_MAX_BATCH``, ``MSJOE_MAX_WAIT_MS``, ``MSJOE_MAX_QUEUE``, ``MSJOE_MAX_CONCURRENCY``,
``MSJOE_WORKERS``, ``MSJOE_CACHE_DIR``, ``MSJOE_LIMIT_<FIELD>``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

from msjoe.serving import RequestError, ServingEngine, ServingLimits, UploadGuard, limits_from_env
from msjoe.serving.metrics import ServingMetrics

log = logging.getLogger("msjoe.service")

MODEL_TAG = os.environ.get("MSJOE_MODEL_TAG", "msjoe:latest")
PAGE = Path(__file__).with_name("page.html")
MAX_CONCURRENCY = int(os.environ.get("MSJOE_MAX_CONCURRENCY", "96"))
WORKERS = int(os.environ.get("MSJOE_WORKERS", "1"))
# created once per process, at import (BentoML's multiprocess-safe metrics)
METRICS = ServingMetrics(bentoml.metrics)


def _cache_dir() -> Path:
    explicit = os.environ.get("MSJOE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    home = os.environ.get("BENTOML_HOME") or os.path.join(os.path.expanduser("~"), "bentoml")
    return Path(home) / "msjoe-cache"


def _device() -> str:
    """``MSJOE_DEVICE``; with several workers on as many GPUs, worker i takes GPU i-1 (BentoML's
    worker_index is 1-based), so each worker holds one copy of the models on its own device."""
    requested = os.environ.get("MSJOE_DEVICE", "auto")
    if requested == "auto" and WORKERS > 1:
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() >= WORKERS:
            return f"cuda:{bentoml.server_context.worker_index - 1}"
    return requested


def _current_engine() -> ServingEngine | None:
    try:
        return bentoml.get_current_service().engine
    except (BentoMLException, AttributeError):
        return None


def _request_cap() -> int:
    """Body cap of the upload guard: the loaded release's limits (env defaults before load)."""
    engine = _current_engine()
    limits = engine.limits if engine is not None else limits_from_env(ServingLimits(), os.environ)
    return limits.max_request_bytes


async def _health(_: Request) -> JSONResponse:
    engine = _current_engine()
    if engine is None:
        return JSONResponse({"status": "loading"}, status_code=503)
    return JSONResponse(engine.health())


async def _page(_: Request) -> FileResponse:
    return FileResponse(PAGE, media_type="text/html")


health_app = Starlette(routes=[Route("/", _page, methods=["GET"]), Route("/health", _health, methods=["GET"])])


@bentoml.asgi_app(health_app, path="/")
@bentoml.service(
    name="msjoe",
    resources={"gpu": WORKERS, "memory": "16Gi"},
    workers=WORKERS,
    # a request thread per in-flight request: it checks the upload, then waits for its batch
    threads=MAX_CONCURRENCY,
    traffic={"timeout": 600, "max_concurrency": MAX_CONCURRENCY},
)
class MSJoE:
    """Per worker: one set of weights and one model thread that answers queued requests in batches."""

    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.engine = ServingEngine.from_release(
            Path(self.model.path),
            cache_dir=_cache_dir(),
            model_tag=str(self.model.tag),
            device=_device(),
            environ=os.environ,
            mllm_dtype=os.environ.get("MSJOE_MLLM_DTYPE", "auto"),
            metrics=METRICS,
        )
        log.info("msjoe %s loaded on %s (cache %s, batching %s)", self.model.tag, self.engine.device,
                 self.engine.cache_dir, self.engine.batching)

    @bentoml.on_shutdown
    def _drain(self) -> None:
        self.engine.close()

    @bentoml.api
    def answer(
        self,
        video: Path,
        question: str,
        options: list[str],
        budget: int | None = None,
        details: bool = False,
    ) -> dict[str, Any]:
        """Answer a multiple-choice question about the uploaded video with ``budget`` frames."""
        try:
            return self.engine.answer(video, question, options, budget, details=details)
        except RequestError as exc:
            log.info("rejected request: %s (%s)", exc.code, exc.message)
            return JSONResponse(exc.to_dict(), status_code=exc.status, headers=exc.headers())  # type: ignore[return-value]


MSJoE.add_asgi_middleware(UploadGuard, max_body_bytes=_request_cap, paths=("/answer",), file_fields=("video",))
