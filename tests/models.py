"""Seeded random demo-size models written exactly as the pipeline stages write them."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from msjoe.mllm.build import TinyMLLMConfig


def write_random_clip(directory: Path, seed: int = 0) -> Path:
    """A random-weight `msjoe-tiny-clip` with its manifest, as `pretrain_clip` lays it out."""
    import torch

    from msjoe.clip.manifest import ClipManifest, identity_for, write_manifest
    from msjoe.clip.model import CONFIG_DIR, create_clip

    directory.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _, _ = create_clip("msjoe-tiny-clip")
    torch.save(model.state_dict(), directory / "clip.pt")
    shutil.copyfile(CONFIG_DIR / "msjoe-tiny-clip.json", directory / "msjoe-tiny-clip.json")
    write_manifest(
        directory,
        ClipManifest("msjoe-tiny-clip", "clip.pt", "msjoe-tiny-clip.json",
                     identity_for("msjoe-tiny-clip", "clip.pt", directory / "clip.pt")),
    )
    return directory


def tiny_mllm_config() -> TinyMLLMConfig:
    """The smallest demo Qwen2.5-VL the model and SFT tests build (seconds to train on a CPU)."""
    from msjoe.mllm.build import TinyMLLMConfig

    return TinyMLLMConfig(vocab_size=400, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2,
                          vision_hidden_size=32, vision_intermediate_size=64, vision_depth=1)
