"""The release: one self-contained directory, stored as a BentoML model, that the service loads::

    clip/clip.json (+ checkpoint, custom architecture json)
    mllm/mllm.json (+ model/ when the weights are local)
    sampler.pt      (optional: the msjoe sampler checkpoint)
    pipeline.json   (ReleaseConfig: PipelineConfig, sampler, default budget, limits)

Identities (CLIP, MLLM, sampler hash) are copied unchanged, so feature caches and lineage keep
working across the copy. Only the package stage writes releases; the service only reads them.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msjoe.config import from_mapping
from msjoe.pipeline import PipelineConfig
from msjoe.serving.limits import ServingLimits
from msjoe.video import sha256_file

if TYPE_CHECKING:
    from msjoe.pipeline import Pipeline

__all__ = [
    "CLIP_SUBDIR", "CONFIG_FILE", "MLLM_SUBDIR", "MODEL_NAME", "SAMPLER_FILE", "ReleaseConfig",
    "import_release", "load_pipeline", "read_release_config", "resolve_device", "write_release",
]

log = logging.getLogger(__name__)

MODEL_NAME = "msjoe"
CLIP_SUBDIR = "clip"
MLLM_SUBDIR = "mllm"
SAMPLER_FILE = "sampler.pt"
CONFIG_FILE = "pipeline.json"

@dataclass(frozen=True)
class ReleaseConfig:
    """``pipeline.json``: how the service runs the released models.

    ``sampler`` is a registry name; ``sampler_params`` its parameters (for ``msjoe`` the
    checkpoint is ``sampler.pt`` in the release, never a path from here); ``queries`` where its
    similarity rows come from (:data:`msjoe.pipeline.QUERY_MODES`; None: the sampler's default,
    :func:`msjoe.pipeline.query_source`), so a baseline evaluated with the question is served
    with the question; ``default_budget`` is K when a request names none.
    """

    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    sampler: str = "msjoe"
    sampler_params: dict[str, Any] = field(default_factory=dict)
    queries: str | None = None
    default_budget: int = 8
    limits: ServingLimits = field(default_factory=ServingLimits)

    def __post_init__(self) -> None:
        if isinstance(self.default_budget, bool) or int(self.default_budget) != self.default_budget:
            raise ValueError("default_budget must be an integer")
        if not 1 <= self.default_budget <= self.limits.max_budget:
            raise ValueError(f"default_budget must be in 1..{self.limits.max_budget}")
        if "checkpoint" in self.sampler_params:
            raise ValueError("sampler_params may not name a checkpoint path; pass sampler_ckpt instead")

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": asdict(self.pipeline),
            "sampler": self.sampler,
            "sampler_params": dict(self.sampler_params),
            "queries": self.queries,
            "default_budget": int(self.default_budget),
            "limits": asdict(self.limits),
        }

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ReleaseConfig:
        """From ``{"pipeline": {...}, "sampler": ..., "sampler_params": {...}, "queries": ...,
        "default_budget": K, "limits": {...}}``; every key optional, unknown keys fail."""
        def nested(kind: Any) -> Any:
            return lambda value: value if isinstance(value, kind) else kind.from_mapping(dict(value or {}))

        return from_mapping(cls, values, "release config", nested={
            "pipeline": nested(PipelineConfig), "limits": nested(ServingLimits),
            "sampler_params": lambda value: dict(value or {}),
        })


def read_release_config(directory: Path) -> ReleaseConfig:
    """``directory/pipeline.json`` of a release."""
    return ReleaseConfig.from_mapping(json.loads((Path(directory) / CONFIG_FILE).read_text()))


def write_release(
    target: Path,
    clip_dir: Path,
    mllm_dir: Path,
    sampler_ckpt: Path | None,
    cfg: ReleaseConfig,
) -> dict[str, Any]:
    """Assemble a self-contained release in ``target``; returns its identities (for metadata).

    Only what the manifests reference is copied (CLIP checkpoint + architecture json; the MLLM
    directory when it is local), so a release never depends on the training workspace. A hub
    id (paper scale, e.g. ``openai`` CLIP weights or ``Qwen/...``) is recorded as is and
    resolved from the local hub cache when the service starts.
    """
    from msjoe.clip.manifest import read_manifest as read_clip_manifest
    from msjoe.clip.manifest import write_manifest as write_clip_manifest
    from msjoe.mllm.manifest import MLLMManifest
    from msjoe.mllm.manifest import read_manifest as read_mllm_manifest
    from msjoe.mllm.manifest import write_manifest as write_mllm_manifest

    target = Path(target)
    if sampler_ckpt is not None and cfg.sampler != "msjoe":
        raise ValueError(f"a sampler checkpoint was given but the release sampler is {cfg.sampler!r}")
    _check_sampler(cfg)

    clip_manifest = read_clip_manifest(Path(clip_dir))
    clip_out = target / CLIP_SUBDIR
    clip_out.mkdir(parents=True, exist_ok=True)
    checkpoint = clip_manifest.checkpoint_path(Path(clip_dir))
    if checkpoint is not None:
        shutil.copy2(checkpoint, clip_out / checkpoint.name)
        clip_manifest = replace(clip_manifest, pretrained=checkpoint.name)
    if clip_manifest.config_file:
        shutil.copy2(Path(clip_dir) / clip_manifest.config_file, clip_out / Path(clip_manifest.config_file).name)
        clip_manifest = replace(clip_manifest, config_file=Path(clip_manifest.config_file).name)
    write_clip_manifest(clip_out, clip_manifest)

    mllm_manifest = read_mllm_manifest(Path(mllm_dir))
    resolved = Path(mllm_manifest.resolve(Path(mllm_dir)))
    mllm_out = target / MLLM_SUBDIR
    if resolved.is_dir():
        shutil.copytree(resolved, mllm_out / "model", dirs_exist_ok=True)
        mllm_manifest = MLLMManifest("model", mllm_manifest.identity)
    write_mllm_manifest(mllm_out, mllm_manifest)

    sampler_sha = None
    if sampler_ckpt is not None:
        shutil.copy2(Path(sampler_ckpt), target / SAMPLER_FILE)
        sampler_sha = sha256_file(target / SAMPLER_FILE)
    elif cfg.sampler == "msjoe":
        log.warning("release without a sampler checkpoint: the msjoe sampler will be untrained")
    (target / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
    return {
        "clip_identity": clip_manifest.identity,
        "mllm_identity": mllm_manifest.identity,
        "sampler": cfg.sampler,
        "sampler_sha256": sampler_sha,
        "default_budget": cfg.default_budget,
    }


def _check_sampler(cfg: ReleaseConfig) -> None:
    """Fail at packaging time, not at serving time, on an unknown sampler, bad parameters or a
    query source the sampler cannot take."""
    from msjoe.pipeline import load_sampler, query_source
    from msjoe.sampling.registry import SAMPLERS

    if cfg.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {cfg.sampler!r}; allowed: {', '.join(sorted(SAMPLERS))}")
    query_source(load_sampler(cfg.sampler, cfg.sampler_params), cfg.queries)


def import_release(
    clip_dir: Path,
    mllm_dir: Path,
    sampler_ckpt: Path | None,
    pipeline_cfg: Mapping[str, Any] | ReleaseConfig,
    labels: Mapping[str, str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    tag: str = MODEL_NAME,
) -> str:
    """Store a release as a BentoML model and return its tag (``tag``: a name, for a new random
    version, or ``name:version``).

    Uses the model store of the current ``BENTOML_HOME``. ``pipeline_cfg`` is a
    :class:`ReleaseConfig` or its mapping form; ``labels`` (str -> str) and ``metadata`` are
    attached to the model (metadata also gets the CLIP / MLLM identities and sampler hash).
    """
    import bentoml

    cfg = pipeline_cfg if isinstance(pipeline_cfg, ReleaseConfig) else ReleaseConfig.from_mapping(pipeline_cfg)
    with tempfile.TemporaryDirectory(prefix="msjoe-release-") as tmp:
        info = write_release(Path(tmp) / "release", clip_dir, mllm_dir, sampler_ckpt, cfg)
        meta = {**{k: v for k, v in info.items() if v is not None}, **dict(metadata or {})}
        with bentoml.models.create(
            tag,
            labels={str(k): str(v) for k, v in (labels or {}).items()},
            metadata=meta,
        ) as model_ref:
            shutil.copytree(Path(tmp) / "release", model_ref.path, dirs_exist_ok=True)
    log.info("imported release %s", model_ref.tag)
    return str(model_ref.tag)


def resolve_device(requested: str | None = None) -> str:
    """``cuda`` when a GPU is visible and nothing else was asked for, else ``cpu``."""
    if requested and requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(directory: Path, cfg: ReleaseConfig, device: str, cache_dir: Path | None,
                  mllm_dtype: str | None = None) -> Pipeline:
    """The inference pipeline of a release on ``device`` with its feature cache."""
    from msjoe.clip.model import load_clip
    from msjoe.features import FeatureStore
    from msjoe.mllm.manifest import load_prepared_mllm
    from msjoe.pipeline import Pipeline, load_sampler

    directory = Path(directory)
    params = dict(cfg.sampler_params)
    if cfg.sampler == "msjoe" and (directory / SAMPLER_FILE).is_file():
        params["checkpoint"] = directory / SAMPLER_FILE
    kwargs: dict[str, Any] = {"device": device}
    if mllm_dtype:
        kwargs["dtype"] = mllm_dtype
    return Pipeline(
        load_clip(directory / CLIP_SUBDIR, device=device),
        load_prepared_mllm(directory / MLLM_SUBDIR, **kwargs),
        load_sampler(cfg.sampler, params),
        FeatureStore(Path(cache_dir) / "features") if cache_dir is not None else None,
        cfg.pipeline,
        queries=cfg.queries,
    )
