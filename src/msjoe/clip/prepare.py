"""The pretrain_clip stage's one call: make the frozen CLIP the pipeline will use, and record it.

With `pretrained` given (a hub tag such as `openai`, or a local checkpoint), the weights are only
resolved and recorded. With `pretrained=None` there are no weights to resolve, so they are learned
on the demo world's training split first (the demo scale); either way the result is a
`clip.json` manifest that every later stage loads through the same `load_clip`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from msjoe.clip.manifest import ClipManifest, identity_for, write_manifest
from msjoe.clip.model import CONFIG_DIR, FrozenClip, create_clip, load_clip
from msjoe.clip.pretrain import ClipTrainConfig, evidence_recall, train_clip
from msjoe.config import from_mapping

log = logging.getLogger(__name__)

CHECKPOINT = "clip.pt"


@dataclass(frozen=True)
class ClipSettings:
    """The ``clip`` params section: the open_clip architecture, where its weights come from (a
    hub tag such as ``openai``, a local checkpoint, or None: learn them on the demo world with
    ``train``), the stage's thread count and the ``k`` of its evidence recall@k check."""

    model: str
    pretrained: str | None = None
    threads: int | None = None
    recall_k: int = 8
    train: ClipTrainConfig = field(default_factory=ClipTrainConfig)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ClipSettings:
        """From a params section; unknown keys (here or under ``train``) are an error."""
        def train(value: Mapping[str, Any] | None) -> ClipTrainConfig:
            return from_mapping(ClipTrainConfig, value or {}, "clip.train")

        return from_mapping(cls, values, "clip", nested={"train": train})


def prepare_clip(
    model: str,
    pretrained: str | None,
    out_dir: Path,
    world_dir: Path | None,
    train: ClipTrainConfig,
    recall_k: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Write `out_dir/clip.json` (+ weights when trained) and return the stage report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"model": model, "pretrained": pretrained}
    custom = CONFIG_DIR / f"{model}.json"
    config_file = None
    if custom.is_file():
        config_file = custom.name
        shutil.copyfile(custom, out_dir / config_file)
    if pretrained is None:
        if world_dir is None:
            raise ValueError("no pretrained weights given and no world to learn them from")
        torch.manual_seed(train.seed)
        clip_model, preprocess, tokenizer = create_clip(model, None)
        clip = FrozenClip(clip_model, preprocess, tokenizer, identity="training")
        training = train_clip(clip, world_dir, train, progress=progress)
        torch.save(clip.model.state_dict(), out_dir / CHECKPOINT)
        report["training"] = {k: v for k, v in training.items() if k != "losses"}
        report["loss_curve"] = training["losses"]
        recorded = CHECKPOINT
        checkpoint: Path | None = out_dir / CHECKPOINT
    else:
        local = Path(pretrained).expanduser()
        checkpoint = local.resolve() if local.is_file() else None
        recorded = str(checkpoint) if checkpoint else pretrained
    manifest = ClipManifest(model, recorded, config_file, identity_for(model, recorded, checkpoint))
    write_manifest(out_dir, manifest)
    report["identity"] = manifest.identity
    if world_dir is not None and (world_dir / "annotations.jsonl").is_file():
        report.update(evidence_recall(load_clip(out_dir), world_dir, "eval", recall_k))
    log.info("clip %s ready: %s", manifest.identity, {k: v for k, v in report.items() if "recall" in k})
    return report
