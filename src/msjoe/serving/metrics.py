"""Prometheus metrics of the service: requests by status, stage latencies, batch sizes, queue depth.

The metric objects come from a factory module with prometheus_client's ``Counter`` /
``Histogram`` / ``Gauge`` signatures: ``bentoml.metrics`` in the service (so they appear on
BentoML's own ``/metrics`` endpoint, multiprocess-safe), ``prometheus_client`` with a private
registry in tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

__all__ = ["LATENCY_BUCKETS", "ServingMetrics"]

#: seconds; from a cached CPU answer (~0.05 s) to a cold hour-long video on a 7B model
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServingMetrics:
    """``msjoe_requests_total{status,code}``, ``msjoe_stage_seconds{stage}``, ``msjoe_batch_size``,
    ``msjoe_queue_depth`` (requests admitted and not yet answered)."""

    def __init__(self, factory: ModuleType | Any, registry: Any = None, prefix: str = "msjoe") -> None:
        extra = {"registry": registry} if registry is not None else {}
        self.requests = factory.Counter(
            f"{prefix}_requests_total", "Answer requests by HTTP status and error code (ok for 200).",
            labelnames=["status", "code"], **extra)
        self.stage_seconds = factory.Histogram(
            f"{prefix}_stage_seconds",
            "Seconds per request stage: check (hash + probe), wait (queued for the models), the "
            "pipeline's stages (batch-wide) and request (all of it).",
            labelnames=["stage"], buckets=LATENCY_BUCKETS, **extra)
        self.batch_size = factory.Histogram(
            f"{prefix}_batch_size", "Requests per model batch.", buckets=BATCH_BUCKETS, **extra)
        self.queue_depth = factory.Gauge(
            f"{prefix}_queue_depth", "Requests accepted for the models and not yet answered.", **extra)

    def request(self, status: int, code: str = "ok") -> None:
        self.requests.labels(status=str(status), code=code).inc()

    def timings(self, timings: Mapping[str, float]) -> None:
        for stage, seconds in timings.items():
            self.stage_seconds.labels(stage=stage).observe(float(seconds))

