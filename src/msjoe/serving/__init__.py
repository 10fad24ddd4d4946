"""Serving: the release in the BentoML model store, request limits, batching, one reply per upload.

``bento/service.py`` stays a thin BentoML wrapper around this package, so that the rules a
client meets are plain Python, tested without a server. One module per concern:

* :mod:`~msjoe.serving.release`: the self-contained release directory (CLIP, MLLM, sampler,
  ``pipeline.json``), its import into the BentoML model store, and loading it as a pipeline.
* :mod:`~msjoe.serving.limits`: :class:`ServingLimits` and :class:`RequestError`: size,
  duration, resolution, option count, text length and budget, each refused with a 4xx *before*
  the expensive step it protects.
* :mod:`~msjoe.serving.uploads`: untrusted files are probed (header + first and last frame)
  in a separate process with a timeout, so a file that crashes or hangs the decoder costs one
  request a 415, not the server; content that passed before skips the probe; the cache
  directory is pruned least-recently-used above a size budget.
* :mod:`~msjoe.serving.batcher` and :mod:`~msjoe.serving.engine`: checked requests queue
  (bounded: 503 with a retry hint beyond it) for one model worker, which answers them in
  batches (one query-turn generation, one CLIP text encoding, one answer-turn generation).
* :mod:`~msjoe.serving.metrics`: Prometheus counters and histograms on BentoML's ``/metrics``.
* :mod:`~msjoe.serving.guard`: :class:`UploadGuard` caps the body and refuses a ``video``
  field sent as text (BentoML would otherwise download it as a URL).
"""

from msjoe.serving.batcher import BatchSettings, MicroBatcher
from msjoe.serving.engine import ServingEngine, thumbnail
from msjoe.serving.guard import UploadGuard
from msjoe.serving.limits import RequestError, ServingLimits, check_video_info, limits_from_env, validate_fields
from msjoe.serving.release import (
    CLIP_SUBDIR,
    CONFIG_FILE,
    MLLM_SUBDIR,
    MODEL_NAME,
    SAMPLER_FILE,
    ReleaseConfig,
    import_release,
    load_pipeline,
    read_release_config,
    resolve_device,
    write_release,
)
from msjoe.serving.uploads import ProbeRecords, cache_usage, probe_upload, probe_without_hash, prune_cache

__all__ = [
    "CLIP_SUBDIR",
    "CONFIG_FILE",
    "MLLM_SUBDIR",
    "MODEL_NAME",
    "SAMPLER_FILE",
    "BatchSettings",
    "MicroBatcher",
    "ProbeRecords",
    "ReleaseConfig",
    "RequestError",
    "ServingEngine",
    "ServingLimits",
    "UploadGuard",
    "cache_usage",
    "check_video_info",
    "import_release",
    "limits_from_env",
    "load_pipeline",
    "probe_upload",
    "probe_without_hash",
    "prune_cache",
    "read_release_config",
    "resolve_device",
    "thumbnail",
    "validate_fields",
    "write_release",
]
