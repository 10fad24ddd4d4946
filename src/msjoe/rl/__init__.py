"""RL building blocks of MSJoE's joint evolution (docs/design.md section 2).

Light to import (numpy only): the rewards. The torch and DeepSpeed parts load on first use:
advantages (``msjoe.rl.advantages``), the GRPO / REINFORCE losses (``msjoe.rl.grpo``), engine
construction (``msjoe.rl.engine``; imports deepspeed only when an engine is built) and
resumable checkpoints (``msjoe.rl.checkpoint``).
"""

from __future__ import annotations

import importlib
from typing import Any

from msjoe.rl.rewards import (
    InfoReward,
    RewardBreakdown,
    accuracy_reward,
    format_reward,
    info_reward,
    total_reward,
)

_LAZY = {
    "difficulty_advantage": "msjoe.rl.advantages",
    "group_normalised": "msjoe.rl.advantages",
    "grpo_loss": "msjoe.rl.grpo",
    "kl_k3": "msjoe.rl.grpo",
    "reinforce_loss": "msjoe.rl.grpo",
    "build_engine": "msjoe.rl.engine",
    "ensure_distributed_env": "msjoe.rl.engine",
    "load_ds_config": "msjoe.rl.engine",
    "save_checkpoint": "msjoe.rl.checkpoint",
    "load_latest": "msjoe.rl.checkpoint",
    "latest_checkpoint": "msjoe.rl.checkpoint",
    "read_meta": "msjoe.rl.checkpoint",
}

__all__ = [
    "InfoReward",
    "RewardBreakdown",
    "accuracy_reward",
    "format_reward",
    "info_reward",
    "total_reward",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    """Import the torch-backed parts only when they are first used."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
